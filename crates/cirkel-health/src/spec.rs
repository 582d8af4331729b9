//! What a check is: its target and its cadence, validated before the engine
//! runs it, so a check that could never pass is refused at start instead of
//! failing forever.

use std::collections::BTreeMap;
use std::ops::RangeInclusive;
use std::time::Duration;

use cirkel_config::{CheckConfig, CheckKindConfig};
use url::Url;

/// Any 2xx or 3xx answer is good unless a check names one status.
pub const DEFAULT_EXPECT_STATUS: RangeInclusive<u16> = 200..=399;

/// One health check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckSpec {
    /// Unique among the engine's checks; events and states are keyed by it.
    pub name: String,
    pub kind: Kind,
    pub interval: Duration,
    /// Must be shorter than `interval`: a probe still running at its
    /// timeout is abandoned and counts as failed, so it never overlaps the
    /// next probe of the same check.
    pub timeout: Duration,
    /// Good probes in a row that make the check `Up`.
    pub healthy_threshold: u32,
    /// Bad probes in a row that make the check `Down`.
    pub unhealthy_threshold: u32,
}

/// What a probe does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `GET url` over plain HTTP/1.1, one fresh connection per probe; good
    /// when the status is in `expect_status` and, if set, the body (up to
    /// 1 MiB) contains `body_contains`.
    Http { url: Url, expect_status: RangeInclusive<u16>, body_contains: Option<String> },
    /// Good when a TCP connection to `address` (`host:port`) opens.
    Tcp { address: String },
}

/// A check the engine refuses to run.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("check `{name}`: {message}")]
    Invalid { name: String, message: String },
    #[error("check `{0}` is defined twice; give each check its own name")]
    Duplicate(String),
}

impl CheckSpec {
    /// An HTTP check with the plan's cadence (every 10 s, 5 s timeout, 2/3).
    pub fn http(name: &str, url: &str) -> Result<CheckSpec, SpecError> {
        let url = parse_url(name, url)?;
        Ok(CheckSpec::with_defaults(
            name,
            Kind::Http { url, expect_status: DEFAULT_EXPECT_STATUS, body_contains: None },
        ))
    }

    /// A TCP check with the plan's cadence.
    pub fn tcp(name: &str, address: &str) -> CheckSpec {
        CheckSpec::with_defaults(name, Kind::Tcp { address: address.to_string() })
    }

    fn with_defaults(name: &str, kind: Kind) -> CheckSpec {
        CheckSpec {
            name: name.to_string(),
            kind,
            interval: cirkel_config::checks::DEFAULT_INTERVAL,
            timeout: cirkel_config::checks::DEFAULT_TIMEOUT,
            healthy_threshold: cirkel_config::checks::DEFAULT_HEALTHY_THRESHOLD,
            unhealthy_threshold: cirkel_config::checks::DEFAULT_UNHEALTHY_THRESHOLD,
        }
    }

    /// The check `[checks.NAME]` describes.
    pub fn from_config(name: &str, cfg: &CheckConfig) -> Result<CheckSpec, SpecError> {
        let kind = match &cfg.kind {
            CheckKindConfig::Http { url, expect_status, body_contains } => Kind::Http {
                url: parse_url(name, url)?,
                expect_status: expect_status.map_or(DEFAULT_EXPECT_STATUS, |s| s..=s),
                body_contains: body_contains.clone(),
            },
            CheckKindConfig::Tcp { address } => Kind::Tcp { address: address.clone() },
        };
        let spec = CheckSpec {
            name: name.to_string(),
            kind,
            interval: cfg.interval,
            timeout: cfg.timeout,
            healthy_threshold: cfg.healthy_threshold,
            unhealthy_threshold: cfg.unhealthy_threshold,
        };
        spec.validate()?;
        Ok(spec)
    }

    /// Refuses what could never run as described.
    pub fn validate(&self) -> Result<(), SpecError> {
        let invalid = |message: String| Err(SpecError::Invalid { name: self.name.clone(), message });
        if self.name.is_empty() {
            return invalid("the name is empty; name every check".into());
        }
        if self.interval.is_zero() || self.timeout.is_zero() {
            return invalid("interval and timeout must be longer than 0".into());
        }
        if self.timeout >= self.interval {
            return invalid(format!(
                "timeout {:?} reaches the next probe (interval {:?}); make it shorter than the interval",
                self.timeout, self.interval
            ));
        }
        if self.healthy_threshold == 0 || self.unhealthy_threshold == 0 {
            return invalid("thresholds must be at least 1".into());
        }
        match &self.kind {
            Kind::Http { url, expect_status, .. } => {
                parse_url(&self.name, url.as_str())?;
                if expect_status.is_empty() {
                    return invalid(format!("expect_status {expect_status:?} matches no status"));
                }
            }
            Kind::Tcp { address } => {
                if split_host_port(address).is_none() {
                    return invalid(format!("`{address}` is not host:port; expected e.g. \"10.0.0.1:5432\""));
                }
            }
        }
        Ok(())
    }
}

/// Every `[checks.NAME]` of a configuration, in name order; every problem
/// is reported.
pub fn specs_from_config(checks: &BTreeMap<String, CheckConfig>) -> Result<Vec<CheckSpec>, Vec<SpecError>> {
    let (specs, errors): (Vec<_>, Vec<_>) =
        checks.iter().map(|(name, cfg)| CheckSpec::from_config(name, cfg)).partition(Result::is_ok);
    if errors.is_empty() {
        Ok(specs.into_iter().filter_map(Result::ok).collect())
    } else {
        Err(errors.into_iter().filter_map(Result::err).collect())
    }
}

/// `host:port` (IPv6 hosts in brackets), port not 0.
pub(crate) fn split_host_port(address: &str) -> Option<(&str, u16)> {
    let (host, port) = address.rsplit_once(':')?;
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    let port = port.parse::<u16>().ok().filter(|p| *p != 0)?;
    (!host.is_empty()).then_some((host, port))
}

fn parse_url(name: &str, url: &str) -> Result<Url, SpecError> {
    let invalid = |message: String| SpecError::Invalid { name: name.to_string(), message };
    let parsed = Url::parse(url).map_err(|e| invalid(format!("`{url}` is not a URL ({e})")))?;
    match parsed.scheme() {
        "http" => {}
        "https" => {
            return Err(invalid(format!(
                "`{url}`: https is not supported; probe the service's plain-http port or use a TCP check"
            )));
        }
        other => return Err(invalid(format!("`{url}`: scheme `{other}` is not supported; use an http:// URL"))),
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(invalid(format!("`{url}` names no host")));
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_and_other_schemes_are_refused() {
        let e = CheckSpec::http("a", "https://x/health").unwrap_err().to_string();
        assert!(e.contains("https is not supported"), "{e}");
        assert!(CheckSpec::http("a", "ftp://x/").unwrap_err().to_string().contains("scheme `ftp`"));
        assert!(CheckSpec::http("a", "nope").unwrap_err().to_string().contains("is not a URL"));
        assert!(CheckSpec::http("a", "http://127.0.0.1:1/h").is_ok());
    }

    #[test]
    fn a_timeout_at_the_interval_and_zero_thresholds_are_refused() {
        let mut s = CheckSpec::tcp("a", "127.0.0.1:1");
        assert!(s.validate().is_ok());
        s.timeout = s.interval;
        assert!(s.validate().unwrap_err().to_string().contains("shorter than the interval"));
        s.timeout = Duration::from_secs(1);
        s.unhealthy_threshold = 0;
        assert!(s.validate().unwrap_err().to_string().contains("at least 1"));
        assert!(CheckSpec::tcp("a", "nohost").validate().is_err());
        assert!(CheckSpec::tcp("a", "[::1]:80").validate().is_ok());
    }

    #[test]
    fn a_configured_check_keeps_its_settings() {
        let cfg = CheckConfig {
            kind: CheckKindConfig::Http {
                url: "http://127.0.0.1:8080/health".into(),
                expect_status: Some(204),
                body_contains: Some("ok".into()),
            },
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            healthy_threshold: 1,
            unhealthy_threshold: 4,
            restart_command: None,
        };
        let s = CheckSpec::from_config("api", &cfg).unwrap();
        assert_eq!(
            s.kind,
            Kind::Http {
                url: Url::parse("http://127.0.0.1:8080/health").unwrap(),
                expect_status: 204..=204,
                body_contains: Some("ok".into())
            }
        );
        assert_eq!((s.healthy_threshold, s.unhealthy_threshold), (1, 4));
        let all = BTreeMap::from([("api".to_string(), cfg.clone()), ("b".to_string(), cfg)]);
        let names: Vec<String> = specs_from_config(&all).unwrap().into_iter().map(|s| s.name).collect();
        assert_eq!(names, ["api", "b"]);
    }

    #[test]
    fn a_configuration_read_elsewhere_is_still_checked() {
        let cfg = CheckConfig {
            kind: CheckKindConfig::Http { url: "https://x/".into(), expect_status: None, body_contains: None },
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(2),
            healthy_threshold: 1,
            unhealthy_threshold: 1,
            restart_command: None,
        };
        let all = BTreeMap::from([
            ("a".to_string(), cfg.clone()),
            ("b".to_string(), CheckConfig { kind: CheckKindConfig::Tcp { address: "h:1".into() }, ..cfg }),
        ]);
        let errors = specs_from_config(&all).unwrap_err();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].to_string().contains("https is not supported"));
        assert!(errors[1].to_string().contains("shorter than the interval"));
    }
}
