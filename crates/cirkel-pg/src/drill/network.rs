//! The network drill: one member's network degraded for a while (packets
//! lost, every byte delayed, or the member cut off) under the canary
//! writer. A cluster that is well tuned rides it out: no failover, no
//! acknowledged write lost, writes still going through, and healthy again
//! once the network is. What clients saw (write latency before and during,
//! the longest pause) and how far the standbys fell behind are measured.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use cirkel_config::{NetFault, PostgresConfig};
use cirkel_state::DrillReport;
use serde::Serialize;

use super::{Ack, Canary, LEFTOVER_FILE, Leftover, count_lost, endpoint, longest_pause};
use crate::conn::PgConn;
use crate::failover::member_conninfo;
use crate::members::status;
use crate::netfault::{Target, inject, table_name};

/// How a network drill's leftover fault starts (`network loss=10%`).
pub const NETWORK: &str = "network";

/// What a network drill measured, beside [`DrillReport`]'s measures.
pub type NetworkReport = DrillReport<NetDrill>;

#[derive(Clone, Debug, Serialize)]
pub struct NetDrill {
    pub cluster: String,
    /// The member whose network was degraded.
    pub member: String,
    /// `partition`, `loss=PCT%` or `latency=DURATION`.
    pub fault: String,
    /// How long the fault was in place.
    pub held_s: f64,
    pub primary_before: String,
    /// The primary once the network was back: the same one, unless the
    /// cluster failed over.
    pub primary_after: Option<String>,
    pub failed_over: bool,
    /// Latency: connections to the member ended so that they come back
    /// through the slowed path (those made before the fault are not).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connections_ended: Option<i64>,
    /// Canary writes (one every 10 ms through the endpoint): median and
    /// 99th percentile of their latency before the fault and during it
    /// (once it applies to every connection).
    pub write_ms_before: Option<Percentiles>,
    pub write_ms_during: Option<Percentiles>,
    pub writes_during: usize,
    /// The longest gap between two acknowledged writes from the fault until
    /// the cluster was healthy again.
    pub write_pause_s: Option<f64>,
    /// The most a standby's replay trailed the primary meanwhile.
    pub max_lag_bytes: Option<u64>,
    /// From the fault's removal until the cluster was healthy (every
    /// standby streaming).
    pub healthy_after_s: Option<f64>,
}

#[derive(Clone, Copy, Debug, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p99: f64,
    pub n: usize,
}

fn percentiles(acked: &[Ack], from: Instant, to: Instant) -> Option<Percentiles> {
    let mut ms: Vec<f64> =
        acked.iter().filter(|a| a.at >= from && a.at < to).map(|a| a.took.as_secs_f64() * 1e3).collect();
    if ms.is_empty() {
        return None;
    }
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
    Some(Percentiles { p50: at(0.5), p99: at(0.99), n: ms.len() })
}

/// What a network drill is asked to do.
pub struct NetworkDrill<'a> {
    /// The member (default: the primary).
    pub member: Option<&'a str>,
    pub fault: NetFault,
    /// How long the fault stays.
    pub hold: Duration,
    /// Longest wait for the cluster to be healthy again afterwards.
    pub timeout: Duration,
}

/// Runs the drill; `abort` ends the fault at once. With `leftovers`, the
/// fault is on record (`drill-fault.json`) until it is undone.
pub fn run(
    cluster: &str,
    c: &PostgresConfig,
    d: &NetworkDrill,
    abort: &AtomicBool,
    leftovers: Option<(&cirkel_state::StateDir, Option<String>)>,
) -> anyhow::Result<NetworkReport> {
    let ep = endpoint(c)?;
    let before = status(cluster, c);
    if !before.healthy {
        anyhow::bail!("the cluster is not healthy, so a drill would prove nothing: {}", before.problems.join("; "));
    }
    let primary = before.primary.clone().ok_or_else(|| anyhow::anyhow!("no primary"))?;
    let member = d.member.unwrap_or(&primary).to_string();
    let m = c.members.get(&member).ok_or_else(|| {
        anyhow::anyhow!(
            "no member `{member}` in cluster {cluster} (members: {})",
            c.members.keys().cloned().collect::<Vec<_>>().join(", ")
        )
    })?;
    if d.fault == NetFault::Partition && member == primary {
        anyhow::bail!(
            "cutting the primary {primary} off fails it over, which this drill holds for a failure: \
             run `cirkel drill failover --fault partition` to measure that failover"
        );
    }
    let target = Target::resolve(&member, &m.host, m.port)?;
    let table = table_name(std::process::id());
    let started = Utc::now();
    let canary = Canary::start(c, &ep)?;
    let baseline = Instant::now();
    std::thread::sleep(Duration::from_secs(2));

    if let Some((state, name)) = &leftovers {
        let left = Leftover {
            pid: std::process::id(),
            name: name.clone(),
            cluster: cluster.to_string(),
            member: member.clone(),
            fault: format!("{NETWORK} {}", d.fault),
            postmaster: None,
            frozen: Vec::new(),
            balloon: None,
            nft_table: Some(table.clone()),
            started,
        };
        state.save_json(LEFTOVER_FILE, &left)?;
    }
    let forget = || {
        if let Some((state, _)) = &leftovers {
            let _ = std::fs::remove_file(state.root().join(LEFTOVER_FILE));
        }
    };
    let injected = match inject(d.fault, &target, &table) {
        Ok(i) => i,
        Err(e) => {
            let _ = canary.stop();
            forget();
            return Err(e);
        }
    };
    let fault_at = Instant::now();
    let mut failures = Vec::new();
    // Connections made before a redirect keep their direct path: ended,
    // they come back through the relay (the watcher's, the standbys',
    // the endpoint's).
    let connections_ended = match d.fault {
        NetFault::Latency(_) => {
            let sql = "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                       WHERE pid <> pg_backend_pid() AND backend_type IN ('client backend', 'walsender')";
            match PgConn::connect(Some(&member_conninfo(c, m, Duration::from_secs(5))))
                .and_then(|k| k.query_one(sql).map(|r| r.get::<_, i64>(0)))
            {
                Ok(n) => Some(n),
                Err(e) => {
                    failures.push(format!("could not end the connections to {member} made before the fault: {e:#}"));
                    None
                }
            }
        }
        _ => None,
    };
    // Measured from here: the fault now applies to every connection.
    let effective_at = Instant::now();
    let mut max_lag: Option<u64> = None;
    let mut primaries = vec![primary.clone()];
    let sample = |max_lag: &mut Option<u64>, primaries: &mut Vec<String>| {
        let s = status(cluster, c);
        if let Some(p) = s.primary
            && !primaries.contains(&p)
        {
            primaries.push(p);
        }
        for lag in s.members.iter().filter_map(|m| m.lag_bytes) {
            *max_lag = Some(max_lag.map_or(lag, |l| l.max(lag)));
        }
    };
    while fault_at.elapsed() < d.hold && !abort.load(Ordering::Relaxed) {
        sample(&mut max_lag, &mut primaries);
        std::thread::sleep(Duration::from_millis(500).min(d.hold.saturating_sub(fault_at.elapsed())));
    }
    let held = fault_at.elapsed();
    let undo_at = Instant::now();
    if let Err(e) = injected.undo() {
        failures.push(format!("{e:#}; the drill's rules are still in place: `nft delete table inet {table}`"));
    }
    forget();
    let mut healthy_at = None;
    let mut after = status(cluster, c);
    while undo_at.elapsed() < d.timeout && !abort.load(Ordering::Relaxed) {
        sample(&mut max_lag, &mut primaries);
        after = status(cluster, c);
        let streaming = after
            .members
            .iter()
            .filter(|m| m.role.as_deref() == Some("standby"))
            .all(|m| m.receiver.as_deref().is_some_and(|r| r.starts_with("streaming")));
        if after.healthy && streaming {
            healthy_at = Some(Instant::now());
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    let run = canary.run.clone();
    let (acked, writes_failed) = canary.stop()?;
    let end = healthy_at.unwrap_or_else(Instant::now);
    let writes_during = acked.iter().filter(|a| a.at >= effective_at && a.at < undo_at).count();
    let lost = match PgConn::connect(Some(&member_conninfo(c, &ep, Duration::from_secs(5)))) {
        Ok(conn) => count_lost(&conn, &run, &acked)?,
        Err(e) => {
            failures
                .push(format!("the endpoint did not answer after the drill, so lost writes were not counted: {e:#}"));
            0
        }
    };
    let failed_over = primaries.len() > 1;
    if abort.load(Ordering::Relaxed) {
        failures.push("aborted before the end".into());
    }
    if failed_over {
        failures.push(format!(
            "the cluster failed over ({}) under {}: its health checks gave up on a member that was only slow; \
             raise [postgres.{cluster}.health] timeout or unhealthy_threshold",
            primaries.join(" → "),
            d.fault
        ));
    }
    if lost > 0 {
        failures.push(format!("{lost} acknowledged writes were lost"));
    }
    if writes_during == 0 && !abort.load(Ordering::Relaxed) {
        failures.push(format!("no write went through while {member} had {}", d.fault));
    }
    if healthy_at.is_none() && !abort.load(Ordering::Relaxed) {
        failures.push(format!(
            "the cluster was not healthy {:?} after the network came back: {}",
            d.timeout,
            after.problems.join("; ")
        ));
    }
    let write_pause_s = longest_pause(&acked, fault_at, end);
    let healthy_after_s = healthy_at.map(|t| (t - undo_at).as_secs_f64());
    Ok(DrillReport {
        kind: "postgres-network".into(),
        started,
        passed: failures.is_empty(),
        failures,
        engine: NetDrill {
            cluster: cluster.to_string(),
            member,
            fault: d.fault.to_string(),
            held_s: held.as_secs_f64(),
            primary_before: primary,
            primary_after: after.primary.clone(),
            failed_over,
            connections_ended,
            write_ms_before: percentiles(&acked, baseline, fault_at),
            write_ms_during: percentiles(&acked, effective_at, undo_at),
            writes_during,
            write_pause_s,
            max_lag_bytes: max_lag,
            healthy_after_s,
        },
        // What clients saw: the longest pause between acknowledged writes.
        rto_s: write_pause_s,
        writes_acknowledged: acked.len(),
        writes_failed,
        writes_lost: lost,
        timeline_s: [
            ("network-back", Some(held.as_secs_f64())),
            ("healthy", healthy_at.map(|t| (t - fault_at).as_secs_f64())),
        ]
        .into_iter()
        .filter_map(|(k, v)| Some((k.to_string(), v?)))
        .collect(),
        rejoin_s: None,
        healthy_after: after.healthy,
        problems_after: after.problems,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_cover_only_the_window() {
        let t0 = Instant::now();
        let acked: Vec<Ack> = (0..100u64)
            .map(|i| Ack {
                seq: i,
                at: t0 + Duration::from_millis(i * 10),
                took: Duration::from_millis(if i < 50 { 1 } else { 200 + i }),
                port: "5432".into(),
            })
            .collect();
        let before = percentiles(&acked, t0, t0 + Duration::from_millis(500)).unwrap();
        assert_eq!((before.n, before.p50, before.p99), (50, 1.0, 1.0));
        let during = percentiles(&acked, t0 + Duration::from_millis(500), t0 + Duration::from_secs(2)).unwrap();
        assert_eq!(during.n, 50);
        assert_eq!(during.p50, 275.0);
        assert_eq!(during.p99, 299.0);
        assert!(percentiles(&acked, t0 + Duration::from_secs(5), t0 + Duration::from_secs(6)).is_none());
    }
}
