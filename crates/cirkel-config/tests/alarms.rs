//! `[alarms.NAME]` and `[scrape.NAME]`: built-ins overridden and removed,
//! new alarms, and every refusal reported at its line.

use std::time::Duration;

use cirkel_alarm::{Comparison, Engine, Severity, Statistic, TreatMissing};
use cirkel_config::Config;

/// `text` with a scrape target appended (after its last line, so line
/// numbers hold), which alarms on metrics other than cirkel's need.
fn parse(text: &str) -> Result<Config, String> {
    let text = if text.contains("[scrape.") {
        text.to_string()
    } else {
        format!("{text}\n[scrape.web]\nurl = \"http://127.0.0.1:9100/metrics\"\n")
    };
    Config::parse(&text, "c.toml", None).map_err(|e| e.to_string())
}

#[test]
fn alarm_metrics_must_exist_and_check_periods_fit_the_interval() {
    let bare = |t: &str| Config::parse(t, "c.toml", None).map_err(|e| e.to_string());
    let err = bare("[alarms.x]\nmetric = \"cirkel_rpo_exposure\"\ncomparison = \">\"\nthreshold = 1\n").unwrap_err();
    assert!(err.contains("c.toml:2:") && err.contains("not one of cirkel's metrics; they are"), "{err}");
    let err = bare("[alarms.x]\nmetric = \"node_load1\"\ncomparison = \">\"\nthreshold = 1\n").unwrap_err();
    assert!(err.contains("c.toml:2:") && err.contains("no [scrape.NAME] target"), "{err}");
    let checks = "[checks.api]\nkind = \"http\"\nurl = \"http://127.0.0.1:8080/health\"\n";
    let err = bare(&format!(
        "{checks}[alarms.api-down]\nmetric = 'cirkel_check_up{{check=\"api\"}}'\nperiod = \"45s\"\ncomparison = \"<\"\nthreshold = 1\n"
    ))
    .unwrap_err();
    assert!(
        err.contains("c.toml:6:") && err.contains("not a multiple of check api's interval (10s); use e.g. 50s"),
        "{err}"
    );
    let err = bare(&format!(
        "{checks}[alarms.web-down]\nmetric = 'cirkel_check_up{{check=\"web\"}}'\ncomparison = \"<\"\nthreshold = 1\n"
    ))
    .unwrap_err();
    assert!(err.contains("c.toml:5:") && err.contains("no [checks.web]"), "{err}");
    bare(&format!(
        "{checks}[alarms.api-down]\nmetric = 'cirkel_check_up{{check=\"api\"}}'\nperiod = \"30s\"\ncomparison = \"<\"\nthreshold = 1\n"
    ))
    .unwrap();
}

/// The error text, which must name `c.toml:LINE` and contain `needle`.
fn refused(text: &str, line: usize, needle: &str) {
    let err = parse(text).err().unwrap_or_else(|| panic!("accepted:\n{text}"));
    assert!(err.contains(&format!("c.toml:{line}:")), "expected line {line}:\n{err}");
    assert!(err.contains(needle), "expected `{needle}`:\n{err}");
}

#[test]
fn without_alarm_tables_the_built_ins_apply() {
    let cfg = parse("").unwrap();
    let specs = cfg.alarm_specs();
    let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "rpo-exposure",
            "base-backup-age",
            "standby-lag",
            "failover",
            "member-down",
            "check-down",
            "schedule-missed",
            "copy-lag",
            "verify-failed"
        ]
    );
    assert!(Engine::new(specs).is_ok());
    // Nothing new in `config show` for a file without these sections.
    let bare = Config::parse("", "c.toml", None).unwrap();
    assert!(!bare.to_toml().contains("alarms") && !bare.to_toml().contains("scrape"));
}

#[test]
fn built_ins_are_overridden_key_by_key_and_removed_by_name() {
    let cfg = parse(
        "[alarms.rpo-exposure]\n\
         threshold = 120\n\
         evaluation_periods = 3\n\
         [alarms.failover]\n\
         enabled = false\n\
         [alarms.standby-lag]\n\
         evaluation_periods = 5\n\
         datapoints_to_alarm = 3\n\
         severity = \"critical\"\n",
    )
    .unwrap();
    let specs = cfg.alarm_specs();
    assert!(!specs.iter().any(|s| s.name == "failover"));
    assert_eq!(specs.len(), 8);
    let rpo = specs.iter().find(|s| s.name == "rpo-exposure").unwrap();
    assert_eq!(rpo.threshold, 120.0);
    assert_eq!((rpo.evaluation_periods, rpo.datapoints_to_alarm), (3, 3));
    assert_eq!(rpo.metric.to_string(), "cirkel_rpo_exposure_seconds");
    assert_eq!(rpo.severity, Severity::Critical);
    let lag = specs.iter().find(|s| s.name == "standby-lag").unwrap();
    assert_eq!((lag.evaluation_periods, lag.datapoints_to_alarm, lag.severity), (5, 3, Severity::Critical));
    assert_eq!(lag.threshold, 60.0);
    assert!(Engine::new(specs).is_ok());
    let shown = cfg.to_toml();
    assert!(shown.contains("[alarms.rpo-exposure]") && shown.contains("threshold = 120"), "{shown}");
}

#[test]
fn a_new_alarm_takes_the_documented_defaults() {
    let cfg = parse(
        "[alarms.disk-full]\n\
         metric = 'node_filesystem_avail_bytes{scrape=\"web\",mountpoint=\"/\"}'\n\
         comparison = \"<\"\n\
         threshold = 1e9\n\
         description = \"The root file system is almost full.\"\n\
         [alarms.slow]\n\
         metric = \"http_latency\"\n\
         statistic = \"p99\"\n\
         period = \"5m\"\n\
         evaluation_periods = 3\n\
         datapoints_to_alarm = 2\n\
         comparison = \"GreaterThanOrEqualToThreshold\"\n\
         threshold = 0.5\n\
         treat_missing_data = \"notBreaching\"\n\
         severity = \"low\"\n",
    )
    .unwrap();
    let specs = cfg.alarm_specs();
    assert_eq!(specs.len(), 11);
    let disk = specs.iter().find(|s| s.name == "disk-full").unwrap();
    assert_eq!(disk.statistic, Statistic::Maximum);
    assert_eq!(disk.period, Duration::from_secs(60));
    assert_eq!((disk.evaluation_periods, disk.datapoints_to_alarm), (1, 1));
    assert_eq!(disk.comparison, Comparison::LessThanThreshold);
    assert_eq!(disk.threshold, 1e9);
    assert_eq!(disk.treat_missing_data, TreatMissing::Missing);
    assert_eq!(disk.severity, Severity::High);
    assert_eq!(disk.metric.matchers.len(), 2);
    let slow = specs.iter().find(|s| s.name == "slow").unwrap();
    assert_eq!(slow.statistic, Statistic::Percentile(99.0));
    assert_eq!(slow.period, Duration::from_secs(300));
    assert_eq!((slow.evaluation_periods, slow.datapoints_to_alarm), (3, 2));
    assert_eq!(slow.treat_missing_data, TreatMissing::NotBreaching);
    assert_eq!(slow.severity, Severity::Low);
    assert!(Engine::new(specs).is_ok());
}

#[test]
fn alarm_mistakes_are_reported_at_their_line() {
    let new = "[alarms.x]\nmetric = \"m\"\ncomparison = \">\"\nthreshold = 1\n";
    refused(&format!("{new}statistic = \"median\"\n"), 5, "unknown statistic `median`");
    refused(
        "[alarms.x]\nmetric = \"m{a=~\\\"b\\\"}\"\ncomparison = \">\"\nthreshold = 1\n",
        2,
        "=~, !~) are not supported",
    );
    refused("[alarms.x]\nmetric = \"m{a\"\ncomparison = \">\"\nthreshold = 1\n", 2, "not a metric selector");
    refused(&format!("{new}period = \"1500ms\"\n"), 5, "not a whole number of seconds");
    refused(&format!("{new}period = \"5s\"\n"), 5, "shorter than 10s");
    // A check's series is sampled at every probe: short periods are allowed on it.
    let checked = "[checks.web]\nkind = \"tcp\"\naddress = \"127.0.0.1:1\"\ninterval = \"1s\"\ntimeout = \"500ms\"\n";
    let cfg = parse(&format!("{checked}[alarms.check-down]\nperiod = \"2s\"\n")).unwrap();
    let spec = cfg.alarm_specs().into_iter().find(|s| s.name == "check-down").unwrap();
    assert_eq!(spec.period, std::time::Duration::from_secs(2));
    refused(&format!("{checked}[alarms.check-down]\nperiod = \"0s\"\n"), 7, "at least 1s");
    refused(&format!("{new}period = \"soon\"\n"), 5, "not a duration");
    refused(&format!("{new}evaluation_periods = 2\ndatapoints_to_alarm = 3\n"), 6, "is more than evaluation_periods");
    refused(&format!("{new}evaluation_periods = 0\n"), 5, "out of range");
    refused(&format!("{new}period = \"1h\"\nevaluation_periods = 25\n"), 6, "over a day");
    refused(&format!("{new}severity = \"page\"\n"), 5, "unknown severity");
    refused(&format!("{new}treat_missing_data = \"zero\"\n"), 5, "unknown treatment");
    refused(&format!("{new}colour = \"red\"\n"), 5, "unknown key");
    refused("[alarms.x]\nmetric = \"m\"\ncomparison = \"=>\"\nthreshold = 1\n", 3, "unknown comparison");
    refused("[alarms.x]\nmetric = \"m\"\ncomparison = \">\"\nthreshold = \"high\"\n", 4, "expected a number");
    refused("[alarms.x]\nmetric = \"m\"\ncomparison = \">\"\nthreshold = nan\n", 4, "finite number");
    refused("[alarms.x]\nmetric = \"m\"\ncomparison = \">\"\n", 1, "`alarms.x.threshold`: missing");
    refused("[alarms.x]\nmetric = \"m\"\nthreshold = 1\n", 1, "`alarms.x.comparison`: missing");
    refused("[alarms.x]\ncomparison = \">\"\nthreshold = 1\n", 1, "`alarms.x.metric`: missing");
    refused("\n[alarms.nothing]\nenabled = false\n", 3, "there is none named `nothing`");
    refused("[alarms.\"a b\"]\nmetric = \"m\"\ncomparison = \">\"\nthreshold = 1\n", 1, "not an alarm name");
    // Negative thresholds only where the metric cannot go negative.
    refused("[alarms.x]\nmetric = \"lag_seconds\"\ncomparison = \"<\"\nthreshold = -1\n", 4, "never negative");
    refused("[alarms.rpo-exposure]\nthreshold = -5\n", 2, "never negative");
    refused("[alarms.x]\nmetric = \"size_bytes\"\ncomparison = \"<\"\nthreshold = -1\n", 4, "never negative");
    assert!(parse("[alarms.x]\nmetric = \"temperature\"\ncomparison = \"<\"\nthreshold = -10\n").is_ok());
    // A built-in override that makes M more than N.
    refused("[alarms.member-down]\ndatapoints_to_alarm = 2\n", 2, "is more than evaluation_periods");
}

#[test]
fn every_problem_is_reported_at_once() {
    let err = parse(
        "[alarms.a]\nmetric = \"m\"\ncomparison = \">\"\nthreshold = 1\nstatistic = \"x\"\n\
         [alarms.b]\nmetric = \"m\"\ncomparison = \">\"\nthreshold = 1\nperiod = \"1s\"\n\
         [scrape.web]\nurl = \"https://x\"\n",
    )
    .unwrap_err();
    assert!(err.starts_with("3 problems"), "{err}");
}

#[test]
fn scrape_targets() {
    let cfg = parse(
        "[scrape.web]\nurl = \"http://127.0.0.1:9100/metrics\"\n\
         [scrape.db]\nurl = \"http://[::1]:9187/metrics\"\ninterval = \"30s\"\ntimeout = \"10s\"\n",
    )
    .unwrap();
    let web = &cfg.scrape["web"];
    assert_eq!((web.interval, web.timeout), (Duration::from_secs(15), Duration::from_secs(5)));
    assert_eq!(cfg.scrape["db"].interval, Duration::from_secs(30));
    assert!(cfg.to_toml().contains("[scrape.web]"));
    assert!(parse("[scrape.h]\nurl = \"http://exporter.internal/metrics\"\n").is_ok());

    refused("[scrape.web]\nurl = \"https://x/metrics\"\n", 2, "https:// is not supported");
    refused("[scrape.web]\nurl = \"ftp://x\"\n", 2, "not an http:// URL");
    refused("[scrape.web]\nurl = \"http://user:pw@x/metrics\"\n", 2, "credentials");
    refused("[scrape.web]\nurl = \"http:///metrics\"\n", 2, "no host");
    refused("[scrape.web]\nurl = \"http://x:99999/metrics\"\n", 2, "not a port");
    refused("[scrape.web]\nurl = \"http://[::1/metrics\"\n", 2, "no host");
    refused("[scrape.web]\n", 1, "`scrape.web.url`: missing");
    refused("[scrape.web]\nurl = \"http://x\"\ninterval = \"10s\"\ntimeout = \"20s\"\n", 4, "at most the interval");
    refused("[scrape.web]\nurl = \"http://x\"\ninterval = \"0s\"\n", 3, "zero");
    refused("[scrape.web]\nurl = \"http://x\"\nevery = \"1s\"\n", 3, "unknown key");
}

#[test]
fn what_config_show_prints_reads_back() {
    let cfg = parse(
        "[alarms.rpo-exposure]\nthreshold = 120\n[alarms.failover]\nenabled = false\n\
         [alarms.slow]\nmetric = 'lat{a=\"x\\\\y\"}'\nstatistic = \"p99.9\"\ncomparison = \">=\"\nthreshold = 0.25\n\
         [scrape.web]\nurl = \"http://x/m\"\ninterval = \"1m\"\n",
    )
    .unwrap();
    let shown = cfg.to_toml();
    let again = parse(&shown).unwrap_or_else(|e| panic!("{e}\n{shown}"));
    assert_eq!(again.alarms, cfg.alarms);
    assert_eq!(again.scrape, cfg.scrape);
    assert_eq!(again.alarm_specs(), cfg.alarm_specs());
    refused("[alarms.slow]\nname = \"fast\"\n", 2, "the table's name");
}

const SAMPLE: &str = r#"[alarms.rpo-exposure]
threshold = 120
evaluation_periods = 3
datapoints_to_alarm = 2
[alarms.failover]
enabled = false
[alarms.slow]
metric = 'lat{scrape="web",path!="/health"}'
statistic = "p99"
period = "30s"
comparison = ">="
threshold = 0.5
treat_missing_data = "notBreaching"
severity = "low"
[scrape.web]
url = "http://127.0.0.1:9100/metrics"
interval = "15s"
timeout = "5s"
"#;

fn mutated() -> impl proptest::strategy::Strategy<Value = String> {
    use proptest::prelude::*;
    let ops = proptest::collection::vec((0usize..SAMPLE.len(), any::<u8>(), 0u8..3), 1..8);
    ops.prop_map(|ops| {
        let mut b = SAMPLE.as_bytes().to_vec();
        for (at, byte, op) in ops {
            let at = at.min(b.len().saturating_sub(1));
            match op {
                0 => b[at] = byte,
                1 => b.insert(at, byte),
                _ => {
                    b.remove(at);
                }
            }
        }
        String::from_utf8_lossy(&b).into_owned()
    })
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 2000, ..Default::default() })]

    /// Broken alarm tables give errors, never a panic, and whatever loads
    /// is a set of alarms the engine takes.
    #[test]
    fn mutated_alarm_tables_load_into_the_engine_or_fail_with_errors(text in mutated()) {
        match Config::parse(&text, "fuzz.toml", None) {
            Ok(cfg) => {
                let specs = cfg.alarm_specs();
                proptest::prop_assert!(Engine::new(specs).is_ok(), "{}", text);
            }
            Err(errs) => proptest::prop_assert!(errs.0.iter().all(|e| !e.message.is_empty() && e.line > 0)),
        }
    }
}
