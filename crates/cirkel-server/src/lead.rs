//! Which agent runs the daemon's once-per-estate duties when agents on
//! several hosts share one configuration (`[coordination]`): scheduled
//! backups and drills, WAL streaming, alarm evaluation and notifications.
//! Every agent watches and keeps its own members; only the holder of the
//! `daemon` lease in etcd does these, so a backup runs once and a page is
//! sent once, and they move to another agent within the TTL when the
//! holder's host dies. Alone, the daemon always leads.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cirkel_config::CoordinationConfig;
use cirkel_failover::{Leadership, Lease};
use cirkel_state::{Event, EventKind, StateDir};
use serde_json::json;

/// The etcd scope of the daemon's own lease.
pub const SCOPE: &str = "daemon";

/// Whether this daemon leads now; shared by the parts that only the leader
/// runs.
#[derive(Clone, Debug)]
pub struct Leading(Arc<AtomicBool>);

impl Leading {
    /// Leading for good: a daemon on its own.
    pub fn always() -> Leading {
        Leading(Arc::new(AtomicBool::new(true)))
    }

    /// Not leading until the lease is taken.
    pub fn contended() -> Leading {
        Leading(Arc::new(AtomicBool::new(false)))
    }

    pub fn now(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    fn set(&self, v: bool) {
        self.0.store(v, Ordering::SeqCst);
    }
}

/// Contends for the daemon's lease until `stop`, keeping `leading` true
/// exactly while it is held (checked every `every`).
pub fn contend(
    cfg: &CoordinationConfig,
    state: &StateDir,
    leading: &Leading,
    every: Duration,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    let mut election =
        cirkel_election::EtcdElection::connect(cfg, SCOPE).map_err(|e| anyhow::anyhow!("daemon lease: {e}"))?;
    let node = election.node().to_string();
    let mut lease: Option<Lease> = None;
    {
        while !stop.load(Ordering::Relaxed) {
            if let Some(l) = &lease {
                let held = election.still_held(l).unwrap_or(false);
                if !held {
                    leading.set(false);
                    let msg = format!(
                        "agent {node} no longer leads (epoch {}): backups, streaming and notifications stop here",
                        l.epoch
                    );
                    crate::record(
                        state,
                        &Event::new("serve", EventKind::LeadershipLost, msg).with(json!({ "epoch": l.epoch })),
                    );
                    lease = None;
                }
            }
            if lease.is_none() {
                match election.acquire() {
                    Ok(Some(l)) => {
                        let msg = format!(
                            "agent {node} leads (epoch {}): it runs the schedules, WAL streaming, alarms and notifications",
                            l.epoch
                        );
                        crate::record(
                            state,
                            &Event::new("serve", EventKind::LeadershipAcquired, msg)
                                .with(json!({ "epoch": l.epoch, "node": node })),
                        );
                        leading.set(true);
                        lease = Some(l);
                    }
                    Ok(None) => {}
                    Err(e) => tracing::warn!("daemon lease: {e}"),
                }
            }
            std::thread::sleep(every);
        }
    }
    leading.set(false);
    if let Some(l) = lease.take() {
        election.release(l);
    }
    Ok(())
}

/// Runs `work` while this daemon leads, until `stop`: it is started when
/// leadership is taken and asked to stop (its `halt` flag) when it is lost,
/// then started again at the next lead.
pub fn while_leading(
    leading: &Leading,
    stop: &AtomicBool,
    work: impl Fn(&AtomicBool) -> anyhow::Result<()> + Sync,
) -> anyhow::Result<()> {
    while !stop.load(Ordering::Relaxed) {
        if !leading.now() {
            std::thread::sleep(Duration::from_millis(200));
            continue;
        }
        let halt = AtomicBool::new(false);
        std::thread::scope(|s| -> anyhow::Result<()> {
            let worker = s.spawn(|| work(&halt));
            while !worker.is_finished() {
                if stop.load(Ordering::Relaxed) || !leading.now() {
                    halt.store(true, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            worker.join().map_err(|_| anyhow::anyhow!("the worker panicked"))?
        })?;
    }
    Ok(())
}
