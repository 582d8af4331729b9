//! Reading `[drills.NAME]`.

use std::time::Duration;

use super::Table;
use crate::drills::{DrillConfig, DrillKind, NetFault, Scenario};

pub(super) fn read_drill(mut t: Table<'_, '_>) -> DrillConfig {
    let kinds: Vec<&str> = DrillKind::ALL.iter().map(|(n, _)| *n).collect();
    let kind = match t.string("kind") {
        Some(k) => match DrillKind::ALL.iter().find(|(n, _)| *n == k) {
            Some((_, kind)) => *kind,
            None => {
                let span = t.value_span("kind").unwrap_or(0..0);
                t.cx.error(
                    span,
                    &t.key_path("kind"),
                    format!("`{k}` is not a drill kind; expected one of {}", kinds.join(", ")),
                );
                DrillKind::Failover
            }
        },
        None => {
            t.cx.error(t.span.clone(), &t.key_path("kind"), format!("missing; expected one of {}", kinds.join(", ")));
            DrillKind::Failover
        }
    };
    let schedule = t.schedule("schedule");
    let target = t.string("target");
    let scenario = if kind == DrillKind::Scenario {
        match target.as_deref().map(|n| (n, Scenario::parse(n))) {
            Some((_, Some(s))) => Some(s),
            Some((n, None)) => {
                let span = t.value_span("target").unwrap_or(0..0);
                t.cx.error(
                    span,
                    &t.key_path("target"),
                    format!("`{n}` is not a scenario; expected one of {}", Scenario::names()),
                );
                None
            }
            None => {
                t.cx.error(
                    t.span.clone(),
                    &t.key_path("target"),
                    format!("missing: a scenario drill names its scenario, one of {}", Scenario::names()),
                );
                None
            }
        }
    } else {
        None
    };
    let rto_target =
        t.duration("rto_target").unwrap_or_else(|| scenario.map_or_else(|| kind.plan_rto(), Scenario::plan_rto));
    let timeout = t.duration("timeout").unwrap_or(match scenario {
        Some(Scenario::Region) => Duration::from_secs(30 * 60),
        _ => Duration::from_secs(120),
    });
    for (key, d) in [("rto_target", rto_target), ("timeout", timeout)] {
        if d.is_zero()
            && let Some(span) = t.value_span(key)
        {
            t.cx.error(span, &t.key_path(key), "must be longer than 0s");
        }
    }
    let fault = t.string("fault");
    if kind == DrillKind::Network {
        match (&fault, t.value_span("fault")) {
            (Some(f), Some(span)) => {
                if let Err(e) = f.parse::<NetFault>() {
                    t.cx.error(span, &t.key_path("fault"), e);
                }
            }
            _ => t.cx.error(
                t.span.clone(),
                &t.key_path("fault"),
                "missing: a network drill names its fault, \"partition\", \"loss=PCT%\" or \"latency=DURATION\"",
            ),
        }
    } else if let Some(f) = &fault
        && let Some(span) = t.value_span("fault")
    {
        if kind != DrillKind::Failover {
            t.cx.error(span, &t.key_path("fault"), "only a failover or network drill takes a fault; remove it");
        } else if !matches!(f.as_str(), "kill" | "stop" | "zone" | "disk-full" | "partition") {
            t.cx.error(
                span,
                &t.key_path("fault"),
                format!("`{f}` is not a fault; expected \"kill\", \"stop\", \"zone\", \"disk-full\" or \"partition\""),
            );
        }
    }
    let hold = t.duration("hold").unwrap_or(Duration::from_secs(20));
    if let Some(span) = t.value_span("hold") {
        if kind != DrillKind::Network {
            t.cx.error(span, &t.key_path("hold"), "only a network drill holds its fault for a while; remove it");
        } else if hold.is_zero() || hold > Duration::from_secs(3600) {
            t.cx.error(span, &t.key_path("hold"), "must be between 1s and 1h");
        }
    }
    let member = t.string("member");
    if let Some(span) = t.value_span("member")
        && kind != DrillKind::Network
    {
        t.cx.error(span, &t.key_path("member"), "only a network drill faults a chosen member; remove it");
    }
    t.finish();
    DrillConfig { kind, schedule, target, rto_target, timeout, fault, hold, member }
}
