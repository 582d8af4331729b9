//! Reading `[drills.NAME]`.

use std::time::Duration;

use super::Table;
use crate::drills::{DrillConfig, DrillKind, Scenario};

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
    if let Some(f) = &fault
        && let Some(span) = t.value_span("fault")
    {
        if kind != DrillKind::Failover {
            t.cx.error(span, &t.key_path("fault"), "only a failover drill takes a fault; remove it");
        } else if !matches!(f.as_str(), "kill" | "stop" | "zone" | "disk-full") {
            t.cx.error(
                span,
                &t.key_path("fault"),
                format!("`{f}` is not a fault; expected \"kill\", \"stop\", \"zone\" or \"disk-full\""),
            );
        }
    }
    t.finish();
    DrillConfig { kind, schedule, target, rto_target, timeout, fault }
}
