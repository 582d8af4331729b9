//! Reading `[coordination]`: kept apart from the other tables so each kind
//! of setting reads in its own file.

use std::time::Duration;

use super::Table;
use crate::coordination::{CoordinationConfig, DEFAULT_PREFIX, DEFAULT_TTL, MAX_TTL, MIN_TTL, check_etcd_url};

pub(super) fn read_coordination(mut t: Table<'_, '_>) -> CoordinationConfig {
    let etcd = read_endpoints(&mut t);
    let ttl = read_ttl(&mut t);
    let node = t.string("node");
    if let (Some(n), Some(span)) = (&node, t.value_span("node"))
        && let Err(e) = check_name(n)
    {
        t.cx.error(span, &t.key_path("node"), e);
    }
    let prefix = t.string("prefix").unwrap_or_else(|| DEFAULT_PREFIX.to_string());
    if let Some(span) = t.value_span("prefix")
        && (!prefix.starts_with('/') || prefix.len() < 2 || prefix.ends_with('/') || prefix.contains("//"))
    {
        t.cx.error(
            span,
            &t.key_path("prefix"),
            format!("`{prefix}` is not a key prefix; expected a path such as \"/cirkel\" or \"/prod/cirkel\""),
        );
    }
    t.finish();
    CoordinationConfig { etcd, ttl, node, prefix }
}

fn read_endpoints(t: &mut Table<'_, '_>) -> Vec<String> {
    let example = "etcd = [\"http://10.0.0.1:2379\", \"http://10.0.0.2:2379\"]";
    let Some(v) = t.get("etcd") else {
        t.cx.error(t.span.clone(), &t.key_path("etcd"), format!("missing; expected e.g. {example}"));
        return Vec::new();
    };
    let Some(items) = v.get_ref().as_array() else {
        t.wrong("etcd", v, "an array of URLs");
        return Vec::new();
    };
    if items.is_empty() {
        t.cx.error(v.span(), &t.key_path("etcd"), format!("lists no endpoint; expected e.g. {example}"));
    }
    let mut out = Vec::new();
    for item in items.iter() {
        match item.get_ref().as_str() {
            Some(url) => {
                if let Err(e) = check_etcd_url(url) {
                    t.cx.error(item.span(), &t.key_path("etcd"), e);
                }
                out.push(url.to_string());
            }
            None => t.wrong("etcd", item, "a URL string"),
        }
    }
    out
}

fn read_ttl(t: &mut Table<'_, '_>) -> Duration {
    let Some(ttl) = t.duration("ttl") else {
        return DEFAULT_TTL;
    };
    let span = t.value_span("ttl").unwrap_or(0..0);
    let shown = crate::duration_to_string(ttl);
    if ttl < MIN_TTL {
        t.cx.error(
            span,
            &t.key_path("ttl"),
            format!("{shown} is too short: etcd grants no lease under 2s; expected e.g. \"10s\" (at least \"2s\")"),
        );
    } else if ttl > MAX_TTL {
        t.cx.error(span, &t.key_path("ttl"), format!("{shown} is longer than etcd's longest lease (9000000s)"));
    } else if ttl.subsec_nanos() != 0 {
        t.cx.error(span, &t.key_path("ttl"), format!("{shown}: etcd leases last whole seconds; expected e.g. \"10s\""));
    } else {
        return ttl;
    }
    DEFAULT_TTL
}

pub(super) fn check_name(n: &str) -> Result<(), String> {
    crate::coordination::check_node_name(n)
}
