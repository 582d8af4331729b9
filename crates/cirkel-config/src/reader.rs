//! Reading spanned TOML into typed configuration, collecting every error.

mod checks;
mod coordination;
mod drills;

use std::cell::RefCell;
use std::collections::{BTreeMap, HashSet};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serializer;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

mod alarms;
mod buckets;
mod notify;

use crate::{
    Config, ConfigError, ConfigErrors, FileSetConfig, PgExpireConfig, RepositoryConfig, RetentionConfig, S3Config,
    Secret,
};

struct Cx<'t> {
    text: &'t str,
    file: &'t str,
    base: Option<&'t Path>,
    errors: RefCell<Vec<ConfigError>>,
}

impl Cx<'_> {
    fn error(&self, span: Range<usize>, key: &str, message: impl Into<String>) {
        let before = &self.text[..span.start.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
        self.errors.borrow_mut().push(ConfigError {
            file: self.file.to_string(),
            line,
            column,
            key: key.to_string(),
            message: message.into(),
        });
    }

    fn resolve(&self, p: &str) -> PathBuf {
        let p = PathBuf::from(p);
        match self.base {
            Some(b) if p.is_relative() => b.join(p),
            _ => p,
        }
    }
}

/// A table being read: tracks which keys were used so the rest can be
/// reported as unknown.
struct Table<'a, 'i> {
    cx: &'a Cx<'a>,
    path: String,
    span: Range<usize>,
    entries: Vec<(String, Range<usize>, &'a Spanned<DeValue<'i>>)>,
    used: HashSet<String>,
    known: Vec<&'static str>,
}

impl<'a, 'i> Table<'a, 'i> {
    fn new(cx: &'a Cx<'a>, path: String, span: Range<usize>, t: &'a DeTable<'i>) -> Self {
        let entries = t.iter().map(|(k, v)| (k.get_ref().to_string(), k.span(), v)).collect();
        Table { cx, path, span, entries, used: HashSet::new(), known: Vec::new() }
    }

    fn key_path(&self, key: &str) -> String {
        if self.path.is_empty() { key.to_string() } else { format!("{}.{key}", self.path) }
    }

    fn get(&mut self, key: &'static str) -> Option<&'a Spanned<DeValue<'i>>> {
        self.known.push(key);
        let found = self.entries.iter().find(|(k, _, _)| k == key).map(|(_, _, v)| *v);
        if found.is_some() {
            self.used.insert(key.to_string());
        }
        found
    }

    /// Where `key`'s value is, if present.
    fn value_span(&self, key: &str) -> Option<Range<usize>> {
        self.entries.iter().find(|(k, _, _)| k == key).map(|(_, _, v)| v.span())
    }

    fn wrong(&self, key: &str, v: &Spanned<DeValue<'_>>, expected: &str) {
        self.cx.error(v.span(), &self.key_path(key), format!("expected {expected}, found {}", v.get_ref().type_str()));
    }

    fn string(&mut self, key: &'static str) -> Option<String> {
        let v = self.get(key)?;
        match v.get_ref().as_str() {
            Some(s) => Some(s.to_string()),
            None => {
                self.wrong(key, v, "a string");
                None
            }
        }
    }

    fn required_string(&mut self, key: &'static str, example: &str) -> String {
        let s = self.string(key);
        if s.is_none() && !self.used.contains(key) {
            self.cx.error(self.span.clone(), &self.key_path(key), format!("missing; expected e.g. {key} = {example}"));
        }
        s.unwrap_or_default()
    }

    fn boolean(&mut self, key: &'static str) -> Option<bool> {
        let v = self.get(key)?;
        let b = v.get_ref().as_bool();
        if b.is_none() {
            self.wrong(key, v, "true or false");
        }
        b
    }

    fn integer(&mut self, key: &'static str, range: Range<i64>) -> Option<i64> {
        let v = self.get(key)?;
        let parsed =
            v.get_ref().as_integer().and_then(|i| i64::from_str_radix(&i.as_str().replace('_', ""), i.radix()).ok());
        match parsed {
            Some(n) if range.contains(&n) => Some(n),
            Some(n) => {
                self.cx.error(
                    v.span(),
                    &self.key_path(key),
                    format!("{n} is out of range; expected {}..={}", range.start, range.end - 1),
                );
                None
            }
            // An integer TOML accepts that does not fit in 64 bits.
            None if v.get_ref().as_integer().is_some() => {
                self.cx.error(
                    v.span(),
                    &self.key_path(key),
                    format!("out of range; expected {}..={}", range.start, range.end - 1),
                );
                None
            }
            None => {
                self.wrong(key, v, "an integer");
                None
            }
        }
    }

    fn count(&mut self, key: &'static str) -> u32 {
        self.integer(key, 0..1_000_001).unwrap_or(0) as u32
    }

    fn duration(&mut self, key: &'static str) -> Option<Duration> {
        let v = self.get(key)?;
        let Some(s) = v.get_ref().as_str() else {
            self.wrong(key, v, "a duration string such as \"30s\", \"15m\" or \"7d\"");
            return None;
        };
        match humantime::parse_duration(s) {
            Ok(d) => Some(d),
            Err(e) => {
                self.cx.error(
                    v.span(),
                    &self.key_path(key),
                    format!("`{s}` is not a duration ({e}); expected e.g. \"30s\", \"15m\", \"7d\""),
                );
                None
            }
        }
    }

    /// A cron schedule, checked now.
    fn schedule(&mut self, key: &'static str) -> Option<String> {
        let s = self.string(key)?;
        match crate::cron::Schedule::parse(&s) {
            Ok(_) => Some(s),
            Err(e) => {
                let span = self.value_span(key).unwrap_or(0..0);
                self.cx.error(span, &self.key_path(key), e);
                None
            }
        }
    }

    fn strings(&mut self, key: &'static str) -> Vec<String> {
        let Some(v) = self.get(key) else {
            return Vec::new();
        };
        let Some(arr) = v.get_ref().as_array() else {
            self.wrong(key, v, "an array of strings");
            return Vec::new();
        };
        let mut out = Vec::new();
        for item in arr.iter() {
            match item.get_ref().as_str() {
                Some(s) => out.push(s.to_string()),
                None => self.wrong(key, item, "a string"),
            }
        }
        out
    }

    /// A secret: only `<key>_file` is accepted in the file.
    fn secret_file(&mut self, key: &'static str, file_key: &'static str) -> (Option<Secret>, Option<PathBuf>) {
        // A literal secret is refused with a pointer to the safe form.
        self.known.push(key);
        if let Some((_, span, _)) = self.entries.iter().find(|(k, _, _)| k == key) {
            self.used.insert(key.to_string());
            self.cx.error(
                span.clone(),
                &self.key_path(key),
                format!("secrets are not written in the configuration; use {file_key} = \"/path/to/file\" or the environment"),
            );
        }
        let Some(path) = self.string(file_key) else {
            return (None, None);
        };
        let resolved = self.cx.resolve(&path);
        match crate::read_bounded(&resolved, crate::SECRET_FILE_MAX) {
            Ok(s) => (Some(Secret::new(s.trim_end_matches(['\n', '\r']).to_string())), Some(resolved)),
            Err(e) => {
                let span = self.value_span(file_key).unwrap_or(0..0);
                self.cx.error(span, &self.key_path(file_key), format!("cannot read {}: {e}", resolved.display()));
                (None, Some(resolved))
            }
        }
    }

    fn table(&mut self, key: &'static str) -> Option<Table<'a, 'i>> {
        let v = self.get(key)?;
        match v.get_ref().as_table() {
            Some(t) => Some(Table::new(self.cx, self.key_path(key), v.span(), t)),
            None => {
                self.wrong(key, v, "a table");
                None
            }
        }
    }

    /// `[key.NAME]` tables.
    fn named_tables(&mut self, key: &'static str) -> Vec<(String, Table<'a, 'i>)> {
        let Some(mut outer) = self.table(key) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let entries = std::mem::take(&mut outer.entries);
        for (name, _, v) in entries {
            match v.get_ref().as_table() {
                Some(t) => out.push((name.clone(), Table::new(self.cx, format!("{key}.{name}"), v.span(), t))),
                None => self.wrong(&format!("{key}.{name}"), v, "a table"),
            }
        }
        out
    }

    fn finish(self) {
        for (k, span, _) in &self.entries {
            if !self.used.contains(k) {
                let mut known = self.known.clone();
                known.sort();
                known.dedup();
                self.cx.error(
                    span.clone(),
                    &self.key_path(k),
                    format!("unknown key; expected one of: {}", known.join(", ")),
                );
            }
        }
    }
}

pub(crate) fn parse(text: &str, file: &str, base: Option<&Path>) -> Result<Config, ConfigErrors> {
    let cx = Cx { text, file, base, errors: RefCell::new(Vec::new()) };
    let (doc, parse_errors) = DeTable::parse_recoverable(text);
    for e in parse_errors {
        let span = e.span().unwrap_or(0..0);
        cx.error(span, "", format!("TOML syntax: {}", e.message()));
    }
    let mut root = Table::new(&cx, String::new(), doc.span(), doc.get_ref());
    let mut cfg = Config {
        repository: root.table("repository").map(read_repository),
        retention: root.table("retention").map(read_retention),
        ..Default::default()
    };
    cfg.repositories = root.named_tables("repositories").into_iter().map(|(n, t)| (n, read_repository(t))).collect();
    let mut copy_spans = BTreeMap::new();
    for (name, t) in root.named_tables("files") {
        let (set, span) = read_fileset(t);
        copy_spans.insert(format!("files.{name}"), span);
        cfg.files.insert(name, set);
    }
    for (name, mut t) in root.named_tables("postgres") {
        let pc = crate::PostgresConfig {
            pgdata: t.string("pgdata").map(|p| t.cx.resolve(&p)),
            host: t.string("host"),
            port: t.integer("port", 1..65536).map(|p| p as u16),
            user: t.string("user"),
            database: t.string("database"),
            bindir: t.string("bindir").map(PathBuf::from),
            schedule: t.schedule("schedule"),
            weekly_schedule: t.schedule("weekly_schedule"),
            copy_to: t.strings("copy_to"),
            members: t
                .named_tables("members")
                .into_iter()
                .map(|(n, mut m)| {
                    let member = crate::PgMemberConfig {
                        host: m.required_string("host", "\"10.0.0.1\""),
                        port: m.integer("port", 1..65536).map(|p| p as u16).unwrap_or(5432),
                        zone: m.string("zone").unwrap_or_default(),
                        priority: m.integer("priority", 0..1_000_001).map(|p| p as u32).unwrap_or(100),
                        pgdata: m.string("pgdata").map(|p| m.cx.resolve(&p)),
                        api_listen: m.string("api_listen"),
                        node: m.string("node"),
                    };
                    if let (Some(n), Some(span)) = (&member.node, m.value_span("node"))
                        && let Err(e) = coordination::check_name(n)
                    {
                        m.cx.error(span, &m.key_path("node"), e);
                    }
                    m.finish();
                    (n, member)
                })
                .collect(),
            health: t.table("health").map(read_health).unwrap_or_default(),
            max_lag_bytes: t.integer("max_lag_bytes", 0..i64::MAX).map(|n| n as u64).unwrap_or(1 << 20),
            auto_failover: t.boolean("auto_failover").unwrap_or(true),
            proxy_listen: t.string("proxy_listen"),
            proxy_listen_ro: t.string("proxy_listen_ro"),
            proxy_max_connections: t.integer("proxy_max_connections", 1..1_000_001).map(|n| n as usize).unwrap_or(1000),
            on_role_change: t.string("on_role_change"),
            synchronous: t.boolean("synchronous").unwrap_or(false),
            stream_wal: t.boolean("stream_wal").unwrap_or(false),
        };
        t.finish();
        cfg.postgres.insert(name, pc);
    }
    for (name, t) in root.named_tables("redis") {
        let (group, span) = read_redis(name.clone(), t);
        copy_spans.insert(format!("redis.{name}"), span);
        cfg.redis.insert(name, group);
    }
    for (name, t) in root.named_tables("buckets") {
        let (b, span) = buckets::read_bucket(t);
        copy_spans.insert(format!("buckets.{name}"), span);
        cfg.buckets.insert(name, b);
    }
    if let Some(mut t) = root.table("state") {
        cfg.state.dir = t.string("dir").map(|p| t.cx.resolve(&p));
        t.finish();
    }
    cfg.scrape = alarms::read_scrapes(root.named_tables("scrape"));
    cfg.checks = root.named_tables("checks").into_iter().map(|(n, t)| (n, checks::read_check(t))).collect();
    cfg.server = root.table("server").map(checks::read_server).unwrap_or_default();
    let known = alarms::Known {
        scrapes: cfg.scrape.keys().map(String::as_str).collect(),
        checks: cfg.checks.iter().map(|(n, c)| (n.as_str(), c.interval)).collect(),
    };
    let read = alarms::read_alarms(root.named_tables("alarms"), &known);
    cfg.alarms = read;
    cfg.notifications = notify::read(&mut root);
    cfg.coordination = root.table("coordination").map(coordination::read_coordination);
    let mut drill_spans = BTreeMap::new();
    for (name, t) in root.named_tables("drills") {
        drill_spans.insert(name.clone(), t.span.clone());
        cfg.drills.insert(name, drills::read_drill(t));
    }
    for (name, d) in &cfg.drills {
        let span = drill_spans.get(name).cloned().unwrap_or(0..0);
        let (names, what): (Vec<&String>, &str) = match d.kind {
            k if k.targets_postgres() => (
                cfg.postgres.iter().filter(|(_, c)| !c.members.is_empty()).map(|(n, _)| n).collect(),
                "postgres cluster with members",
            ),
            crate::DrillKind::RedisFailover => (cfg.redis.keys().collect(), "redis group"),
            crate::DrillKind::Region => (cfg.repositories.keys().collect(), "repository ([repositories.NAME])"),
            // A scenario's target is its name, checked when read.
            crate::DrillKind::Scenario => continue,
            _ => {
                if d.target.is_some() {
                    cx.error(
                        span,
                        &format!("drills.{name}.target"),
                        "a restore drill restores the newest base backup of the main repository; remove `target`",
                    );
                }
                continue;
            }
        };
        match &d.target {
            Some(t) if !names.contains(&t) => {
                cx.error(span, &format!("drills.{name}.target"), format!("names `{t}`, which is no configured {what}"))
            }
            None if names.len() != 1 => cx.error(
                span,
                &format!("drills.{name}.target"),
                format!("missing: {} {what}s are configured; name the one to drill", names.len()),
            ),
            _ => {}
        }
    }
    let copy_targets = cfg
        .files
        .iter()
        .map(|(n, s)| (format!("files.{n}"), &s.copy_to))
        .chain(cfg.redis.iter().map(|(n, g)| (format!("redis.{n}"), &g.copy_to)))
        .chain(cfg.postgres.iter().map(|(n, p)| (format!("postgres.{n}"), &p.copy_to)))
        .chain(cfg.buckets.iter().map(|(n, b)| (format!("buckets.{n}"), &b.copy_to)));
    for (name, copy_to) in copy_targets {
        for target in copy_to {
            if !cfg.repositories.contains_key(target) {
                cx.error(
                    copy_spans.get(&name).cloned().unwrap_or(0..0),
                    &format!("{name}.copy_to"),
                    format!("names repository `{target}`, which no [repositories.{target}] table defines"),
                );
            }
        }
    }
    root.finish();
    let mut errors = cx.errors.into_inner();
    errors.sort_by_key(|e| (e.line, e.column));
    if errors.is_empty() { Ok(cfg) } else { Err(ConfigErrors(errors)) }
}

fn read_repository(mut t: Table<'_, '_>) -> RepositoryConfig {
    let url = t.required_string("url", "\"/var/lib/cirkel/repo\" or \"s3://bucket/prefix\"");
    let (password, password_file) = t.secret_file("password", "password_file");
    let compression_level = t.integer("compression_level", 0..23).map(|n| n as i32);
    let s3 = t.table("s3").map(read_s3).unwrap_or_default();
    let continuous = t.boolean("continuous").unwrap_or(false);
    let drill_schedule = t.schedule("drill_schedule");
    let on_recovered = t.string("on_recovered");
    let pg_expire = t.table("pg_expire").map(read_pg_expire);
    t.finish();
    RepositoryConfig {
        url,
        password,
        password_file,
        compression_level,
        s3,
        continuous,
        drill_schedule,
        on_recovered,
        pg_expire,
    }
}

fn read_pg_expire(mut t: Table<'_, '_>) -> PgExpireConfig {
    let cfg = PgExpireConfig {
        daily: t.duration("daily"),
        weekly: t.duration("weekly"),
        pre_deploy: t.duration("pre_deploy"),
        wal: t.duration("wal"),
    };
    t.finish();
    cfg
}

fn read_s3(mut t: Table<'_, '_>) -> S3Config {
    let cfg = S3Config {
        endpoint: t.string("endpoint").filter(|e| {
            let credentials =
                e.split_once("://").is_some_and(|(_, rest)| rest.split('/').next().is_some_and(|a| a.contains('@')));
            if credentials {
                let span = t.value_span("endpoint").unwrap_or(0..0);
                t.cx.error(
                    span,
                    &t.key_path("endpoint"),
                    "the URL contains credentials; remove them and use access_key_id and secret_access_key_file",
                );
            }
            !credentials
        }),
        region: t.string("region"),
        access_key_id: t.string("access_key_id"),
        secret_access_key: t.secret_file("secret_access_key", "secret_access_key_file").0,
        allow_http: t.boolean("allow_http"),
        retry_timeout: t.duration("retry_timeout"),
    };
    t.finish();
    cfg
}

fn read_retention(mut t: Table<'_, '_>) -> RetentionConfig {
    let cfg = RetentionConfig {
        keep_last: t.count("keep_last"),
        keep_hourly: t.count("keep_hourly"),
        keep_daily: t.count("keep_daily"),
        keep_weekly: t.count("keep_weekly"),
        keep_monthly: t.count("keep_monthly"),
        keep_yearly: t.count("keep_yearly"),
        keep_within: t.duration("keep_within").filter(|d| {
            if d.is_zero() {
                let span = t.value_span("keep_within").unwrap_or(0..0);
                t.cx.error(span, &t.key_path("keep_within"), "a duration of 0 keeps nothing; expected e.g. \"7d\"");
            }
            !d.is_zero()
        }),
        keep_tags: t.strings("keep_tags"),
    };
    t.finish();
    cfg
}

fn read_fileset(mut t: Table<'_, '_>) -> (FileSetConfig, Range<usize>) {
    let paths: Vec<PathBuf> = t.strings("paths").into_iter().map(PathBuf::from).collect();
    if paths.is_empty() && !t.used.contains("paths") {
        t.cx.error(t.span.clone(), &t.key_path("paths"), "missing; expected e.g. paths = [\"/srv/static\"]");
    }
    let exclude = t.strings("exclude");
    if let Some(span) = t.value_span("exclude") {
        for p in &exclude {
            if let Err(e) = crate::exclude::check_pattern(p) {
                t.cx.error(span.clone(), &t.key_path("exclude"), e);
            }
        }
    }
    let exclude_file = t.string("exclude_file").map(|p| t.cx.resolve(&p));
    if let (Some(file), Some(span)) = (&exclude_file, t.value_span("exclude_file")) {
        match crate::exclude::read_pattern_file(file) {
            Ok(patterns) => {
                for p in &patterns {
                    if let Err(e) = crate::exclude::check_pattern(p) {
                        t.cx.error(span.clone(), &t.key_path("exclude_file"), format!("{}: {e}", file.display()));
                    }
                }
            }
            Err(e) => t.cx.error(span, &t.key_path("exclude_file"), e),
        }
    }
    let cfg = FileSetConfig {
        paths,
        exclude,
        exclude_file,
        exclude_if_present: t.strings("exclude_if_present"),
        tags: t.strings("tags"),
        schedule: t.schedule("schedule"),
        copy_to: t.strings("copy_to"),
        retention: t.table("retention").map(read_retention),
    };
    retention_needs_tags(&t, cfg.retention.is_some(), &cfg.tags);
    let copy_span = t.value_span("copy_to").unwrap_or(t.span.clone());
    t.finish();
    (cfg, copy_span)
}

fn read_health(mut t: Table<'_, '_>) -> crate::HealthConfig {
    let d = crate::HealthConfig::default();
    let cfg = crate::HealthConfig {
        interval: t.duration("interval").unwrap_or(d.interval),
        timeout: t.duration("timeout").unwrap_or(d.timeout),
        healthy_threshold: t.integer("healthy_threshold", 1..1001).map(|n| n as u32).unwrap_or(d.healthy_threshold),
        unhealthy_threshold: t
            .integer("unhealthy_threshold", 1..1001)
            .map(|n| n as u32)
            .unwrap_or(d.unhealthy_threshold),
    };
    t.finish();
    cfg
}

fn read_redis(name: String, mut t: Table<'_, '_>) -> (crate::RedisGroupConfig, Range<usize>) {
    let members = t.strings("members");
    if members.is_empty() && !t.used.contains("members") {
        t.cx.error(
            t.span.clone(),
            &t.key_path("members"),
            "missing; expected e.g. members = [\"10.0.0.1:6379\", \"10.0.0.2:6379\"]",
        );
    }
    let sentinels = t.strings("sentinels");
    let majority = (sentinels.len() / 2 + 1) as u32;
    let quorum_span = t.value_span("quorum");
    let quorum = t.integer("quorum", 1..101).map(|n| n as u32).unwrap_or(majority);
    if let Some(span) = quorum_span
        && quorum as usize > sentinels.len()
    {
        t.cx.error(
            span,
            &t.key_path("quorum"),
            format!("{quorum} is more than the {} sentinels listed; no failover could ever happen", sentinels.len()),
        );
    }
    for addr in members.iter().chain(&sentinels) {
        if addr.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok()).is_none() {
            t.cx.error(t.span.clone(), &t.key_path("members"), format!("`{addr}` is not host:port"));
        }
    }
    let on_lag = match t.string("on_lag").as_deref() {
        None | Some("refuse") => crate::OnLag::Refuse,
        Some("warn") => crate::OnLag::Warn,
        Some(other) => {
            let span = t.value_span("on_lag").unwrap_or(0..0);
            t.cx.error(span, &t.key_path("on_lag"), format!("`{other}`: expected \"refuse\" or \"warn\""));
            crate::OnLag::Refuse
        }
    };
    let (password, password_file) = t.secret_file("password", "password_file");
    let cfg = crate::RedisGroupConfig {
        master_name: t.string("master_name").unwrap_or_else(|| name.clone()),
        members,
        sentinels,
        quorum,
        down_after: t.duration("down_after").unwrap_or(Duration::from_secs(1)),
        failover_timeout: t.duration("failover_timeout").unwrap_or(Duration::from_secs(10)),
        parallel_syncs: t.integer("parallel_syncs", 1..1001).map(|n| n as u32).unwrap_or(1),
        max_lag_bytes: t.integer("max_lag_bytes", 0..i64::MAX).map(|n| n as u64).unwrap_or(1 << 20),
        on_lag,
        password,
        password_file,
        user: t.string("user"),
        health: t.table("health").map(read_health).unwrap_or_default(),
        restart_command: t.string("restart_command"),
        tags: t.strings("tags"),
        schedule: t.schedule("schedule"),
        copy_to: t.strings("copy_to"),
        retention: t.table("retention").map(read_retention),
    };
    retention_needs_tags(&t, cfg.retention.is_some(), &cfg.tags);
    let copy_span = t.value_span("copy_to").unwrap_or(t.span.clone());
    t.finish();
    (cfg, copy_span)
}

/// A scheduled backup's retention judges only the snapshots carrying its
/// first tag, so that it never forgets another set's snapshots; without a
/// tag it could never run, which must not pass unnoticed.
fn retention_needs_tags(t: &Table<'_, '_>, has_retention: bool, tags: &[String]) {
    if has_retention && tags.is_empty() {
        let span = t.value_span("retention").unwrap_or(t.span.clone());
        let name = t.path.rsplit('.').next().unwrap_or("NAME");
        t.cx.error(
            span,
            &t.key_path("retention"),
            format!("a retention needs a tag to select the snapshots it judges; add tags = [\"{name}\"]"),
        );
    }
}

/// `90s` → "1m 30s", as humantime writes it.
pub fn duration_to_string(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

pub(crate) fn ser_duration<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&duration_to_string(*d))
}

pub(crate) fn ser_opt_duration<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_str(&duration_to_string(*d)),
        None => s.serialize_none(),
    }
}
