//! A blocking PostgreSQL session, configured like libpq: an explicit
//! connection string, or `PGHOST`, `PGPORT`, `PGUSER`, `PGDATABASE` and
//! `PGPASSWORD` from the environment.

use cirkel_repo::runtime::Shared;
use tokio_postgres::{Client, NoTls, Row};

pub struct PgConn {
    rt: Shared,
    client: Client,
    pub describe: String,
}

/// The effective connection settings, for messages (never the password).
fn settings(conninfo: Option<&str>) -> anyhow::Result<(tokio_postgres::Config, String)> {
    let mut cfg: tokio_postgres::Config = match conninfo {
        Some(s) => s.parse().map_err(|e| anyhow::anyhow!("bad connection string: {e}"))?,
        None => tokio_postgres::Config::new(),
    };
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    if cfg.get_hosts().is_empty() {
        let host = env("PGHOST").unwrap_or_else(|| "/var/run/postgresql".into());
        for h in host.split(',') {
            if h.starts_with('/') {
                cfg.host_path(h);
            } else {
                cfg.host(h);
            }
        }
    }
    if cfg.get_ports().is_empty() {
        let port = env("PGPORT").map(|p| p.parse::<u16>()).transpose().map_err(|e| anyhow::anyhow!("PGPORT: {e}"))?;
        cfg.port(port.unwrap_or(5432));
    }
    if cfg.get_user().is_none() {
        cfg.user(env("PGUSER").or_else(|| env("USER")).unwrap_or_else(|| "postgres".into()));
    }
    if cfg.get_dbname().is_none() {
        cfg.dbname(env("PGDATABASE").or_else(|| cfg.get_user().map(String::from)).unwrap_or_else(|| "postgres".into()));
    }
    if cfg.get_password().is_none()
        && let Some(p) = env("PGPASSWORD")
    {
        cfg.password(p);
    }
    cfg.application_name("cirkel");
    let hosts: Vec<String> = cfg
        .get_hosts()
        .iter()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(s) => s.clone(),
            tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
        })
        .collect();
    let describe = format!(
        "{}:{} as {}",
        hosts.join(","),
        cfg.get_ports().first().copied().unwrap_or(5432),
        cfg.get_user().unwrap_or("?")
    );
    Ok((cfg, describe))
}

impl PgConn {
    pub fn connect(conninfo: Option<&str>) -> anyhow::Result<PgConn> {
        let (cfg, describe) = settings(conninfo)?;
        let rt = Shared::get()?;
        let (client, connection) = rt.block_on(cfg.connect(NoTls)).map_err(|e| {
            anyhow::Error::new(ConnectError { describe: describe.clone(), detail: cirkel_repo::error_chain(&e) })
        })?;
        rt.handle().spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("postgres connection ended: {e}");
            }
        });
        Ok(PgConn { rt, client, describe })
    }

    pub fn query(&self, sql: &str) -> anyhow::Result<Vec<Row>> {
        self.rt
            .block_on(self.client.query(sql, &[]))
            .map_err(|e| anyhow::anyhow!("{sql}: {}", cirkel_repo::error_chain(&e)))
    }

    pub fn query_one(&self, sql: &str) -> anyhow::Result<Row> {
        self.rt
            .block_on(self.client.query_one(sql, &[]))
            .map_err(|e| anyhow::anyhow!("{sql}: {}", cirkel_repo::error_chain(&e)))
    }

    pub fn query_one_text(&self, sql: &str, param: &str) -> anyhow::Result<Row> {
        self.rt
            .block_on(self.client.query_one(sql, &[&param]))
            .map_err(|e| anyhow::anyhow!("{sql}: {}", cirkel_repo::error_chain(&e)))
    }

    pub fn execute(&self, sql: &str) -> anyhow::Result<()> {
        self.rt
            .block_on(self.client.batch_execute(sql))
            .map_err(|e| anyhow::anyhow!("{sql}: {}", cirkel_repo::error_chain(&e)))
    }
}

/// The server could not be reached or refused us.
#[derive(Debug, thiserror::Error)]
#[error("cannot connect to PostgreSQL at {describe}: {detail}")]
pub struct ConnectError {
    pub describe: String,
    pub detail: String,
}

/// A connection string without its password, and the password, so that a
/// PostgreSQL program gets the password in `PGPASSWORD` (its environment,
/// readable only by its owner) instead of in its arguments, which every
/// local user reads in `/proc/*/cmdline`. Handles `key=value` strings
/// (quoted values included) and `postgres://user:password@…?password=…`
/// URIs; anything else is returned unchanged.
pub fn split_password(conninfo: &str) -> (String, Option<String>) {
    if conninfo.starts_with("postgres://") || conninfo.starts_with("postgresql://") {
        return split_uri_password(conninfo);
    }
    let mut rest = conninfo;
    let mut kept: Vec<&str> = Vec::new();
    let mut password = None;
    loop {
        rest = rest.trim_start();
        if rest.is_empty() {
            break;
        }
        let start = conninfo.len() - rest.len();
        let Some(eq) = rest.find('=') else { return (conninfo.to_string(), None) };
        let key = rest[..eq].trim();
        let mut value = rest[eq + 1..].trim_start();
        let mut text = String::new();
        if let Some(quoted) = value.strip_prefix('\'') {
            let mut chars = quoted.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => match chars.next() {
                        Some((_, e)) => text.push(e),
                        None => return (conninfo.to_string(), None),
                    },
                    '\'' => {
                        end = Some(i + 1);
                        break;
                    }
                    c => text.push(c),
                }
            }
            let Some(end) = end else { return (conninfo.to_string(), None) };
            value = &quoted[end..];
        } else {
            let end = value.find(char::is_whitespace).unwrap_or(value.len());
            text.push_str(&value[..end]);
            value = &value[end..];
        }
        let pair = &conninfo[start..conninfo.len() - value.len()];
        if key == "password" {
            password = Some(text);
        } else {
            kept.push(pair);
        }
        rest = value;
    }
    (kept.join(" "), password)
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok());
        match (b[i], hex) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn split_uri_password(uri: &str) -> (String, Option<String>) {
    let Some((scheme, after)) = uri.split_once("://") else { return (uri.to_string(), None) };
    let authority_end = after.find(['/', '?']).unwrap_or(after.len());
    let (authority, tail) = after.split_at(authority_end);
    let mut password = None;
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => match userinfo.split_once(':') {
            Some((user, pw)) => {
                password = Some(percent_decode(pw));
                format!("{user}@{hosts}")
            }
            None => authority.to_string(),
        },
        None => authority.to_string(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let params: Vec<&str> = query
                .split('&')
                .filter(|kv| match kv.strip_prefix("password=") {
                    Some(pw) => {
                        password = Some(percent_decode(pw));
                        false
                    }
                    None => true,
                })
                .collect();
            if params.is_empty() { path.to_string() } else { format!("{path}?{}", params.join("&")) }
        }
        None => tail.to_string(),
    };
    (format!("{scheme}://{authority}{tail}"), password)
}

/// Parses `X/Y` LSN text.
pub fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_round_trip() {
        assert_eq!(parse_lsn("1/3000028"), Some(0x1_0300_0028));
        assert_eq!(format_lsn(0x1_0300_0028), "1/3000028");
        assert_eq!(parse_lsn("nope"), None);
    }

    #[test]
    fn passwords_are_split_from_connection_strings() {
        let split = |s: &str| split_password(s);
        assert_eq!(split("host=a password=s3 user=u"), ("host=a user=u".into(), Some("s3".into())));
        assert_eq!(
            split("host = a password = 'it\\'s a secret' dbname=x"),
            ("host = a dbname=x".into(), Some("it's a secret".into()))
        );
        assert_eq!(split("host=a user=u"), ("host=a user=u".into(), None));
        assert_eq!(split("postgres"), ("postgres".into(), None));
        assert_eq!(
            split("postgresql://u:p%40ss@h:5432/db?sslmode=disable"),
            ("postgresql://u@h:5432/db?sslmode=disable".into(), Some("p@ss".into()))
        );
        assert_eq!(
            split("postgres://h/db?password=x&application_name=y"),
            ("postgres://h/db?application_name=y".into(), Some("x".into()))
        );
        assert_eq!(split("password='unterminated"), ("password='unterminated".into(), None));
    }
}
