//! Moving the master on purpose: a planned switchover that loses no
//! acknowledged write, a failover asked of a Sentinel, waiting for the
//! Sentinels to name the new master, and putting a stray master back under
//! the agreed one.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::{Group, GroupStatus, MemberState, SentinelState};
use crate::resp::{Addr, Conn};

impl Group {
    /// Asks one Sentinel to fail over now (`SENTINEL FAILOVER`).
    pub fn sentinel_failover(&self) -> anyhow::Result<Addr> {
        let mut last = None;
        for a in &self.sentinels {
            match self.sentinel(a).and_then(|mut c| c.cmd(&["SENTINEL", "FAILOVER", &self.master_name])) {
                Ok(_) => return Ok(a.clone()),
                Err(e) => last = Some(e),
            }
        }
        Err(last.map(anyhow::Error::from).unwrap_or_else(|| anyhow::anyhow!("no sentinels are listed")))
    }

    /// Waits until a majority of Sentinels name a master other than `old`.
    pub fn wait_for_new_master(&self, old: &Addr, timeout: Duration) -> Option<Addr> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(m) = self.current_master()
                && &m != old
            {
                return Some(m);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Planned switchover. The other replicas get priority 0 (and the
    /// Sentinel is given time to see it), writes on the master are paused,
    /// the chosen replica catches up to the master's offset, Sentinel fails
    /// over, the old master is made a replica of the new one, and only then
    /// are writes released: they fail over there with READONLY instead of
    /// landing on the old master. No acknowledged write is lost.
    pub fn switchover(&self, to: Option<&Addr>, max_pause: Duration) -> anyhow::Result<Switchover> {
        let status = self.status();
        let SwitchoverPlan { old, sentinel, replicas, target: target_addr } = SwitchoverPlan::of(&status, to)?;
        let mut restore = Vec::new();
        let result = (|| -> anyhow::Result<Switchover> {
            let mut changed = Vec::new();
            for m in &replicas {
                let want = if m.addr == target_addr { m.priority.filter(|&p| p > 0).unwrap_or(100) } else { 0 };
                if m.priority != Some(want) {
                    self.member(&m.addr)?.cmd(&["CONFIG", "SET", "replica-priority", &want.to_string()])?;
                    restore.push((m.addr.clone(), m.priority.unwrap_or(100).to_string()));
                    changed.push((m.addr.clone(), want.to_string()));
                }
            }
            if !changed.is_empty() {
                self.wait_for_sentinel_priorities(&sentinel, &changed, Duration::from_secs(30))?;
            }
            // A Sentinel that last saw the target run as a master (a
            // restarted old master) turns it back into a replica the moment
            // it is promoted, unless it has seen it as a replica since.
            self.wait_seen_as_replica(&target_addr, Duration::from_secs(30))?;
            let mut mc = self.member(&old)?;
            let mut tc = self.member(&target_addr)?;
            let start = Instant::now();
            let pause_ms = (max_pause + self.failover_timeout).as_millis().to_string();
            mc.cmd(&["CLIENT", "PAUSE", &pause_ms, "WRITE"])?;
            let offset = |c: &mut Conn, key: &str| -> anyhow::Result<u64> {
                Ok(c.info("replication")?.get(key).and_then(|v| v.parse().ok()).unwrap_or(0))
            };
            let master_offset = offset(&mut mc, "master_repl_offset")?;
            while offset(&mut tc, "slave_repl_offset")? < master_offset {
                if start.elapsed() > max_pause / 2 {
                    let _ = mc.cmd(&["CLIENT", "UNPAUSE"]);
                    anyhow::bail!(
                        "{target_addr} did not catch up with the master within {:?}; nothing was changed",
                        max_pause / 2
                    );
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            let caught_up = start.elapsed();
            let switched = self
                .sentinel(&sentinel)
                .and_then(|mut c| c.cmd(&["SENTINEL", "FAILOVER", &self.master_name]))
                .map_err(anyhow::Error::from)
                .and_then(|_| {
                    self.wait_for_new_master(&old, max_pause.max(self.failover_timeout))
                        .ok_or_else(|| anyhow::anyhow!("the sentinels did not switch in time"))
                });
            let new = match switched {
                Ok(n) => n,
                Err(e) => {
                    let _ = mc.cmd(&["CLIENT", "UNPAUSE"]);
                    return Err(e);
                }
            };
            // Fence the old master before its paused clients go on.
            mc.cmd(&["REPLICAOF", &new.host, &new.port.to_string()])?;
            let pause = start.elapsed();
            mc.cmd(&["CLIENT", "UNPAUSE"])?;
            Ok(Switchover {
                old: old.clone(),
                new,
                caught_up_after_ms: caught_up.as_millis() as u64,
                write_pause_ms: pause.as_millis() as u64,
                master_offset,
            })
        })();
        for (addr, p) in restore {
            if let Ok(mut c) = self.member(&addr) {
                let _ = c.cmd(&["CONFIG", "SET", "replica-priority", &p]);
            }
        }
        result
    }

    /// Waits until every Sentinel reports `target` as a replica.
    fn wait_seen_as_replica(&self, target: &Addr, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let all = self.sentinels.iter().all(|a| {
                let Ok(v) = self.sentinel(a).and_then(|mut c| c.cmd(&["SENTINEL", "REPLICAS", &self.master_name]))
                else {
                    return false;
                };
                v.array().iter().map(|r| r.pairs()).any(|r| {
                    r.get("ip").map(String::as_str) == Some(target.host.as_str())
                        && r.get("port").and_then(|p| p.parse::<u16>().ok()) == Some(target.port)
                        && r.get("role-reported").map(String::as_str) == Some("slave")
                })
            });
            if all {
                return Ok(());
            }
            if Instant::now() > deadline {
                anyhow::bail!("not every sentinel sees {target} as a replica yet (within {timeout:?})");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until `sentinel` sees the replica priorities just set (it
    /// reads a replica's INFO only every 10 s).
    fn wait_for_sentinel_priorities(
        &self,
        sentinel: &Addr,
        want: &[(Addr, String)],
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let replicas = self.sentinel(sentinel)?.cmd(&["SENTINEL", "REPLICAS", &self.master_name])?;
            let seen: Vec<(Addr, String)> = replicas
                .array()
                .iter()
                .map(|r| r.pairs())
                .filter_map(|r| {
                    let addr = Addr::new(r.get("ip")?, r.get("port")?.parse().ok()?);
                    Some((addr, r.get("slave-priority")?.clone()))
                })
                .collect();
            if want.iter().all(|w| seen.contains(w)) {
                return Ok(());
            }
            if Instant::now() > deadline {
                anyhow::bail!("sentinel {sentinel} did not see the new replica priorities within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Turns a member that runs as a master while the Sentinels agree on
    /// another (or a replica that follows some other node) into a replica
    /// of the agreed master. Returns true if it did.
    ///
    /// Only when that is certainly right: the agreed master answers as a
    /// master, no Sentinel is failing over or sees it down, and the stray
    /// was not just promoted from it (its previous replication id would be
    /// the agreed master's: a promotion the Sentinels have not announced yet).
    pub fn demote_stray_master(&self, stray: &MemberState, agreed: &Addr) -> bool {
        if !stray.strays_from(agreed) {
            return false;
        }
        let master = self.probe_member(agreed);
        if master.role.as_deref() != Some("master") {
            return false;
        }
        if stray.promoted_from(&master) {
            return false;
        }
        let busy = self.sentinels.iter().map(|a| self.probe_sentinel(a)).any(|s| s.unsettled_on(agreed));
        if busy {
            return false;
        }
        match self.member(&stray.addr).and_then(|mut c| c.cmd(&["REPLICAOF", &agreed.host, &agreed.port.to_string()])) {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!("could not demote stray master {}: {e}", stray.addr);
                false
            }
        }
    }
}

impl MemberState {
    /// Runs as a master, or follows another node, while the Sentinels
    /// agree on `agreed`.
    fn strays_from(&self, agreed: &Addr) -> bool {
        let astray = match self.role.as_deref() {
            Some("master") => true,
            Some("slave") => self.master.as_ref() != Some(agreed),
            _ => false,
        };
        self.addr != *agreed && astray
    }

    /// Was promoted from `master`: its previous replication id is the
    /// master's, a promotion the Sentinels have not announced yet.
    fn promoted_from(&self, master: &MemberState) -> bool {
        master.replid.is_some() && self.replid2 == master.replid
    }
}

impl SentinelState {
    /// Cannot vouch for `agreed` now: unreachable, naming another master,
    /// seeing it down, or failing over.
    fn unsettled_on(&self, agreed: &Addr) -> bool {
        !self.reachable
            || self.master.as_ref() != Some(agreed)
            || self.flags.split(',').any(|f| matches!(f, "s_down" | "o_down" | "failover_in_progress"))
    }
}

/// Who a planned switchover involves, chosen from the group's status alone.
struct SwitchoverPlan<'a> {
    /// The master the Sentinels agree on.
    old: Addr,
    /// A Sentinel that can authorise the failover.
    sentinel: Addr,
    /// The reachable replicas of `old` whose link is up.
    replicas: Vec<&'a MemberState>,
    /// The replica to promote: the one asked for, else the most advanced
    /// one that may be promoted.
    target: Addr,
}

impl<'a> SwitchoverPlan<'a> {
    fn of(status: &'a GroupStatus, to: Option<&Addr>) -> anyhow::Result<SwitchoverPlan<'a>> {
        let old = status.master.clone().ok_or_else(|| anyhow::anyhow!("the sentinels do not agree on a master"))?;
        let sentinel = status.sentinels.iter().find(|s| s.quorum_ok).map(|s| s.addr.clone()).ok_or_else(|| {
            let why: Vec<String> = status.sentinels.iter().map(|s| s.quorum_message.clone()).collect();
            anyhow::anyhow!("the sentinels cannot authorise a failover: {}", why.join("; "))
        })?;
        let replicas: Vec<&MemberState> = status
            .members
            .iter()
            .filter(|m| {
                m.reachable
                    && m.role.as_deref() == Some("slave")
                    && m.master.as_ref() == Some(&old)
                    && m.link_up == Some(true)
            })
            .collect();
        let target = match to {
            Some(t) => replicas
                .iter()
                .find(|m| &m.addr == t)
                .ok_or_else(|| anyhow::anyhow!("{t} is not a healthy replica of {old}"))?,
            None => replicas
                .iter()
                .filter(|m| m.priority != Some(0))
                .max_by_key(|m| m.offset)
                .ok_or_else(|| anyhow::anyhow!("no healthy replica of {old} to switch to"))?,
        };
        let target = target.addr.clone();
        Ok(SwitchoverPlan { old, sentinel, replicas, target })
    }
}

/// A finished switchover.
#[derive(Clone, Debug, Serialize)]
pub struct Switchover {
    pub old: Addr,
    pub new: Addr,
    pub caught_up_after_ms: u64,
    pub write_pause_ms: u64,
    pub master_offset: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: &str = "10.0.0.1:6379";

    fn addr(s: &str) -> Addr {
        Addr::parse(s).unwrap()
    }

    fn replica(at: &str, offset: u64, priority: u64) -> MemberState {
        MemberState {
            addr: addr(at),
            reachable: true,
            role: Some("slave".into()),
            offset: Some(offset),
            master: Some(addr(M)),
            link_up: Some(true),
            priority: Some(priority),
            ..Default::default()
        }
    }

    fn status(members: Vec<MemberState>) -> GroupStatus {
        let sentinel = |at: &str, ok: bool, msg: &str| SentinelState {
            addr: addr(at),
            reachable: true,
            master: Some(addr(M)),
            quorum_ok: ok,
            quorum_message: msg.into(),
            ..Default::default()
        };
        let mut all = vec![MemberState {
            addr: addr(M),
            reachable: true,
            role: Some("master".into()),
            offset: Some(1000),
            ..Default::default()
        }];
        all.extend(members);
        GroupStatus {
            group: "g".into(),
            master: Some(addr(M)),
            healthy: true,
            held: false,
            max_lag_bytes: 1 << 20,
            problems: Vec::new(),
            members: all,
            sentinels: vec![sentinel("10.0.1.1:26379", false, "NOQUORUM"), sentinel("10.0.1.2:26379", true, "OK 3")],
        }
    }

    fn plan_error(status: &GroupStatus, to: Option<&Addr>) -> String {
        match SwitchoverPlan::of(status, to) {
            Ok(p) => panic!("planned a switchover to {}", p.target),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn the_most_advanced_promotable_replica_is_chosen() {
        let st = status(vec![
            replica("10.0.0.2:6379", 900, 100),
            replica("10.0.0.3:6379", 1000, 0),
            replica("10.0.0.4:6379", 950, 10),
        ]);
        let p = SwitchoverPlan::of(&st, None).unwrap();
        assert_eq!(p.old, addr(M));
        assert_eq!(p.sentinel, addr("10.0.1.2:26379"));
        // Priority 0 means never promote, however far ahead.
        assert_eq!(p.target, addr("10.0.0.4:6379"));
        assert_eq!(p.replicas.len(), 3);
    }

    #[test]
    fn the_replica_asked_for_is_chosen_even_with_priority_zero() {
        let st = status(vec![replica("10.0.0.2:6379", 1000, 100), replica("10.0.0.3:6379", 900, 0)]);
        let p = SwitchoverPlan::of(&st, Some(&addr("10.0.0.3:6379"))).unwrap();
        assert_eq!(p.target, addr("10.0.0.3:6379"));
    }

    #[test]
    fn only_reachable_linked_replicas_of_the_master_take_part() {
        let mut down = replica("10.0.0.3:6379", 1000, 100);
        down.link_up = Some(false);
        let mut elsewhere = replica("10.0.0.4:6379", 1000, 100);
        elsewhere.master = Some(addr("10.0.0.9:6379"));
        let mut gone = replica("10.0.0.5:6379", 1000, 100);
        gone.reachable = false;
        let st = status(vec![replica("10.0.0.2:6379", 10, 100), down, elsewhere, gone]);
        let p = SwitchoverPlan::of(&st, None).unwrap();
        assert_eq!(p.replicas.iter().map(|m| m.addr.clone()).collect::<Vec<_>>(), vec![addr("10.0.0.2:6379")]);
        assert_eq!(p.target, addr("10.0.0.2:6379"));
        assert_eq!(
            plan_error(&st, Some(&addr("10.0.0.3:6379"))),
            format!("10.0.0.3:6379 is not a healthy replica of {M}")
        );
    }

    #[test]
    fn no_switchover_without_a_master_a_quorum_or_a_replica() {
        let mut st = status(vec![replica("10.0.0.2:6379", 900, 100)]);
        st.master = None;
        assert_eq!(plan_error(&st, None), "the sentinels do not agree on a master");
        let mut st = status(vec![replica("10.0.0.2:6379", 900, 100)]);
        st.sentinels[1].quorum_ok = false;
        st.sentinels[1].quorum_message = "NOQUORUM 1 usable".into();
        assert_eq!(plan_error(&st, None), "the sentinels cannot authorise a failover: NOQUORUM; NOQUORUM 1 usable");
        let st = status(vec![replica("10.0.0.2:6379", 900, 0)]);
        assert_eq!(plan_error(&st, None), format!("no healthy replica of {M} to switch to"));
    }

    #[test]
    fn a_stray_runs_as_master_or_follows_another_node() {
        let agreed = addr(M);
        let mut old_master = replica("10.0.0.2:6379", 0, 100);
        old_master.role = Some("master".into());
        old_master.master = None;
        assert!(old_master.strays_from(&agreed));
        let mut elsewhere = replica("10.0.0.3:6379", 0, 100);
        elsewhere.master = Some(addr("10.0.0.9:6379"));
        assert!(elsewhere.strays_from(&agreed));
        assert!(!replica("10.0.0.4:6379", 0, 100).strays_from(&agreed));
        // The agreed master itself, or a member whose role is unknown, is no stray.
        let mut itself = old_master.clone();
        itself.addr = agreed.clone();
        assert!(!itself.strays_from(&agreed));
        let unknown = MemberState { addr: addr("10.0.0.5:6379"), ..Default::default() };
        assert!(!unknown.strays_from(&agreed));
    }

    #[test]
    fn a_member_promoted_from_the_master_is_not_taken_for_a_stray() {
        let master = MemberState { replid: Some("aaa".into()), ..Default::default() };
        let promoted = MemberState { replid: Some("bbb".into()), replid2: Some("aaa".into()), ..Default::default() };
        let other = MemberState { replid: Some("ccc".into()), replid2: Some("ddd".into()), ..Default::default() };
        assert!(promoted.promoted_from(&master));
        assert!(!other.promoted_from(&master));
        // Without the master's id nothing can be told apart.
        let no_id = MemberState::default();
        assert!(!MemberState::default().promoted_from(&no_id));
    }

    #[test]
    fn a_sentinel_is_unsettled_while_it_cannot_vouch_for_the_master() {
        let agreed = addr(M);
        let settled = SentinelState {
            reachable: true,
            master: Some(agreed.clone()),
            flags: "master".into(),
            ..Default::default()
        };
        assert!(!settled.unsettled_on(&agreed));
        for flags in ["master,s_down", "master,o_down", "master,failover_in_progress"] {
            assert!(SentinelState { flags: flags.into(), ..settled.clone() }.unsettled_on(&agreed), "{flags}");
        }
        assert!(SentinelState { reachable: false, ..settled.clone() }.unsettled_on(&agreed));
        assert!(SentinelState { master: Some(addr("10.0.0.9:6379")), ..settled.clone() }.unsettled_on(&agreed));
    }
}
