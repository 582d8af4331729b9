//! What the group looks like now: each member's replication state, each
//! Sentinel's view, the master a majority of Sentinels agree on, and the
//! problems `cirkel redis status` and the watcher report.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use serde::Serialize;

use super::{Group, HOLD_DOWN_AFTER_MS};
use crate::resp::Addr;

impl Group {
    /// One member's replication state.
    pub fn probe_member(&self, addr: &Addr) -> MemberState {
        let start = Instant::now();
        let mut st = MemberState { addr: addr.clone(), ..Default::default() };
        let result = self.member(addr).and_then(|mut c| {
            c.cmd(&["PING"])?;
            c.info("replication")
        });
        st.latency_ms = Some(start.elapsed().as_secs_f64() * 1000.0);
        match result {
            Err(e) => st.error = Some(e.to_string()),
            Ok(info) => {
                st.reachable = true;
                st.read_replication_info(&info);
            }
        }
        st
    }

    /// One Sentinel's view of the group.
    pub fn probe_sentinel(&self, addr: &Addr) -> SentinelState {
        let mut st = SentinelState { addr: addr.clone(), ..Default::default() };
        let result = self.sentinel(addr).and_then(|mut c| {
            let master = c.cmd(&["SENTINEL", "MASTER", &self.master_name])?.pairs();
            let ck = c.cmd(&["SENTINEL", "CKQUORUM", &self.master_name]);
            Ok((master, ck))
        });
        match result {
            Err(e) => st.error = Some(e.to_string()),
            Ok((m, ck)) => {
                st.reachable = true;
                st.read_sentinel_master(&m);
                match ck {
                    Ok(v) => {
                        st.quorum_ok = true;
                        st.quorum_message = v.text().unwrap_or_default();
                    }
                    Err(e) => st.quorum_message = e.to_string(),
                }
            }
        }
        st
    }

    /// The master a majority of the configured Sentinels name, if any.
    pub fn agreed_master(&self, sentinels: &[SentinelState]) -> Option<Addr> {
        let mut votes: BTreeMap<&Addr, usize> = BTreeMap::new();
        for s in sentinels {
            if let Some(m) = &s.master {
                *votes.entry(m).or_default() += 1;
            }
        }
        let majority = self.sentinels.len() / 2 + 1;
        votes.into_iter().find(|(_, n)| *n >= majority).map(|(a, _)| a.clone())
    }

    /// Asks the Sentinels which member is the master (fast: one command each).
    pub fn current_master(&self) -> Option<Addr> {
        let answers: Vec<SentinelState> = self
            .sentinels
            .iter()
            .map(|a| {
                let mut st = SentinelState { addr: a.clone(), ..Default::default() };
                if let Ok(v) = self
                    .sentinel(a)
                    .and_then(|mut c| c.cmd(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", &self.master_name]))
                {
                    let parts = v.array();
                    if let (Some(h), Some(p)) =
                        (parts.first().and_then(|v| v.text()), parts.get(1).and_then(|v| v.int()))
                    {
                        st.master = Some(Addr::new(&h, p as u16));
                    }
                }
                st
            })
            .collect();
        self.agreed_master(&answers)
    }

    /// Everything about the group now, with what is wrong with it.
    pub fn status(&self) -> GroupStatus {
        let sentinels: Vec<SentinelState> = std::thread::scope(|s| {
            let hs: Vec<_> = self.sentinels.iter().map(|a| s.spawn(|| self.probe_sentinel(a))).collect();
            hs.into_iter().filter_map(|h| h.join().ok()).collect()
        });
        let members: Vec<MemberState> = std::thread::scope(|s| {
            let hs: Vec<_> = self.members.iter().map(|a| s.spawn(|| self.probe_member(a))).collect();
            hs.into_iter().filter_map(|h| h.join().ok()).collect()
        });
        self.assess(members, sentinels)
    }

    /// The status the probes add up to: each replica's lag behind the agreed
    /// master, and every problem with the group. No I/O, so every problem
    /// can be tested from the states alone.
    fn assess(&self, mut members: Vec<MemberState>, sentinels: Vec<SentinelState>) -> GroupStatus {
        let master = self.agreed_master(&sentinels);
        let master_offset = members
            .iter()
            .find(|m| Some(&m.addr) == master.as_ref() && m.role.as_deref() == Some("master"))
            .and_then(|m| m.offset);
        for m in &mut members {
            if m.role.as_deref() == Some("slave")
                && let (Some(mo), Some(o)) = (master_offset, m.offset)
            {
                m.lag_bytes = Some(mo.saturating_sub(o));
            }
        }
        let mut problems = Vec::new();
        let reachable = sentinels.iter().filter(|s| s.reachable).count();
        for s in sentinels.iter().filter(|s| !s.reachable) {
            problems.push(format!("sentinel {} unreachable: {}", s.addr, s.error.as_deref().unwrap_or("")));
        }
        if (reachable as u32) < self.quorum.max(self.sentinels.len() as u32 / 2 + 1) {
            problems.push(format!(
                "only {reachable} of {} sentinels reachable: no failover can be authorised",
                self.sentinels.len()
            ));
        }
        match &master {
            None => problems.push("the sentinels do not agree on a master".into()),
            Some(addr) => {
                if !members.iter().any(|m| &m.addr == addr) {
                    problems.push(format!("the sentinels name {addr} as master, which is not in `members`"));
                }
            }
        }
        for m in &members {
            match (m.reachable, m.role.as_deref()) {
                (false, _) => {
                    problems.push(format!("member {} unreachable: {}", m.addr, m.error.as_deref().unwrap_or("")))
                }
                (true, Some("master")) if Some(&m.addr) != master.as_ref() => problems.push(format!(
                    "member {} runs as a master but the sentinels name {}",
                    m.addr,
                    master.as_ref().map(ToString::to_string).unwrap_or_else(|| "none".into())
                )),
                (true, Some("slave")) if m.link_up != Some(true) => {
                    problems.push(format!("replica {} has its master link down", m.addr))
                }
                (true, Some("slave")) if m.master.is_some() && m.master != master => problems.push(format!(
                    "replica {} follows {} instead of the master",
                    m.addr,
                    m.master.as_ref().map(|a| a.to_string()).unwrap_or_default()
                )),
                _ => {}
            }
        }
        let held = sentinels.iter().any(|s| s.down_after_ms == Some(HOLD_DOWN_AFTER_MS));
        if held {
            problems.push("a failover is held back: the best replica is beyond the loss limit".into());
        }
        GroupStatus {
            group: self.name.clone(),
            master,
            healthy: problems.is_empty(),
            held,
            max_lag_bytes: self.max_lag_bytes,
            problems,
            members,
            sentinels,
        }
    }

    /// Finds the one master among the members: every reachable member must
    /// be either it or a replica of it.
    pub fn discover_master(&self) -> anyhow::Result<Addr> {
        let states: Vec<MemberState> = self.members.iter().map(|a| self.probe_member(a)).collect();
        if let Some(m) = states.iter().find(|m| !m.reachable) {
            anyhow::bail!("member {} is unreachable: {}", m.addr, m.error.as_deref().unwrap_or(""));
        }
        let masters: Vec<&Addr> =
            states.iter().filter(|m| m.role.as_deref() == Some("master")).map(|m| &m.addr).collect();
        match masters.as_slice() {
            [one] => Ok((*one).clone()),
            [] => anyhow::bail!("no member runs as a master"),
            many => anyhow::bail!(
                "{} members run as masters ({}); a group has exactly one",
                many.len(),
                many.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", ")
            ),
        }
    }
}

/// One data node, as probed.
#[derive(Clone, Debug, Default, Serialize)]
pub struct MemberState {
    pub addr: Addr,
    pub reachable: bool,
    pub error: Option<String>,
    /// `master` or `slave`, as Redis says.
    pub role: Option<String>,
    /// Replication offset: the master's, or how far a replica has processed.
    pub offset: Option<u64>,
    /// Bytes a replica is behind the agreed master.
    pub lag_bytes: Option<u64>,
    pub master: Option<Addr>,
    pub link_up: Option<bool>,
    pub priority: Option<u64>,
    pub connected_replicas: Option<u64>,
    /// For a promoted replica: the offset it had when it was promoted.
    pub promoted_at_offset: Option<u64>,
    /// Replication id, and the previous one of a promoted replica.
    pub replid: Option<String>,
    pub replid2: Option<String>,
    pub latency_ms: Option<f64>,
}

impl MemberState {
    /// Fills in what `INFO replication` says about the member.
    fn read_replication_info(&mut self, info: &HashMap<String, String>) {
        self.role = info.get("role").cloned();
        let num = |k: &str| info.get(k).and_then(|v| v.parse::<u64>().ok());
        if self.role.as_deref() == Some("master") {
            self.offset = num("master_repl_offset");
            self.connected_replicas = num("connected_slaves");
        } else {
            self.offset = num("slave_repl_offset");
            self.link_up = Some(info.get("master_link_status").map(String::as_str) == Some("up"));
            self.priority = num("slave_priority");
            if let (Some(h), Some(p)) = (info.get("master_host"), num("master_port")) {
                self.master = Some(Addr::new(h, p as u16));
            }
        }
        self.promoted_at_offset = num("second_repl_offset").filter(|&o| o > 0).map(|o| o - 1);
        self.replid = info.get("master_replid").cloned();
        self.replid2 = info.get("master_replid2").cloned().filter(|r| r.chars().any(|c| c != '0'));
    }
}

impl Default for Addr {
    fn default() -> Self {
        Addr::new("", 0)
    }
}

/// One Sentinel's view.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SentinelState {
    pub addr: Addr,
    pub reachable: bool,
    pub error: Option<String>,
    pub master: Option<Addr>,
    pub flags: String,
    pub quorum: Option<u32>,
    pub quorum_ok: bool,
    pub quorum_message: String,
    pub down_after_ms: Option<u64>,
    pub failover_timeout_ms: Option<u64>,
    pub other_sentinels: Option<u32>,
    pub replicas: Option<u32>,
    pub epoch: Option<u64>,
}

impl SentinelState {
    /// Fills in what `SENTINEL MASTER` says about the group.
    fn read_sentinel_master(&mut self, m: &HashMap<String, String>) {
        let num = |k: &str| m.get(k).and_then(|v| v.parse::<u64>().ok());
        if let (Some(h), Some(p)) = (m.get("ip"), num("port")) {
            self.master = Some(Addr::new(h, p as u16));
        }
        self.flags = m.get("flags").cloned().unwrap_or_default();
        self.quorum = num("quorum").map(|q| q as u32);
        self.down_after_ms = num("down-after-milliseconds");
        self.failover_timeout_ms = num("failover-timeout");
        self.other_sentinels = num("num-other-sentinels").map(|n| n as u32);
        self.replicas = num("num-slaves").map(|n| n as u32);
        self.epoch = num("config-epoch");
    }
}

/// A group's status.
#[derive(Clone, Debug, Serialize)]
pub struct GroupStatus {
    pub group: String,
    pub master: Option<Addr>,
    pub healthy: bool,
    /// A failover is being held back by the loss limit.
    pub held: bool,
    pub max_lag_bytes: u64,
    pub problems: Vec<String>,
    pub members: Vec<MemberState>,
    pub sentinels: Vec<SentinelState>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: &str = "10.0.0.1:6379";
    const R1: &str = "10.0.0.2:6379";
    const R2: &str = "10.0.0.3:6379";

    fn addr(s: &str) -> Addr {
        Addr::parse(s).unwrap()
    }

    fn group() -> Group {
        let cfg = cirkel_config::Config::parse(
            &format!(
                "[redis.g]\nmembers = [\"{M}\", \"{R1}\", \"{R2}\"]\n\
                 sentinels = [\"10.0.1.1:26379\", \"10.0.1.2:26379\", \"10.0.1.3:26379\"]\n"
            ),
            "c.toml",
            None,
        )
        .unwrap();
        Group::from_config("g", &cfg.redis["g"]).unwrap()
    }

    fn info(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn master(offset: u64) -> MemberState {
        MemberState {
            addr: addr(M),
            reachable: true,
            role: Some("master".into()),
            offset: Some(offset),
            ..Default::default()
        }
    }

    fn replica(at: &str, offset: u64) -> MemberState {
        MemberState {
            addr: addr(at),
            reachable: true,
            role: Some("slave".into()),
            offset: Some(offset),
            master: Some(addr(M)),
            link_up: Some(true),
            ..Default::default()
        }
    }

    fn sentinels_naming(names: &[Option<&str>]) -> Vec<SentinelState> {
        names
            .iter()
            .enumerate()
            .map(|(i, m)| SentinelState {
                addr: addr(&format!("10.0.1.{}:26379", i + 1)),
                reachable: true,
                master: m.map(addr),
                down_after_ms: Some(5000),
                ..Default::default()
            })
            .collect()
    }

    fn healthy() -> (Vec<MemberState>, Vec<SentinelState>) {
        (vec![master(1000), replica(R1, 900), replica(R2, 1000)], sentinels_naming(&[Some(M), Some(M), Some(M)]))
    }

    #[test]
    fn a_master_reads_its_offset_and_replicas() {
        let mut st = MemberState::default();
        st.read_replication_info(&info(&[
            ("role", "master"),
            ("master_repl_offset", "4242"),
            ("connected_slaves", "2"),
            ("master_replid", "abc"),
            ("master_replid2", "0000000000000000000000000000000000000000"),
            ("second_repl_offset", "-1"),
        ]));
        assert_eq!(st.role.as_deref(), Some("master"));
        assert_eq!((st.offset, st.connected_replicas), (Some(4242), Some(2)));
        assert_eq!((st.link_up, st.master.as_ref(), st.priority), (None, None, None));
        assert_eq!(st.replid.as_deref(), Some("abc"));
        // An all-zero previous id means the member was never promoted.
        assert_eq!((st.replid2, st.promoted_at_offset), (None, None));
    }

    #[test]
    fn a_promoted_master_reads_where_it_was_promoted() {
        let mut st = MemberState::default();
        st.read_replication_info(&info(&[
            ("role", "master"),
            ("master_replid2", "def"),
            ("second_repl_offset", "101"),
        ]));
        assert_eq!(st.replid2.as_deref(), Some("def"));
        assert_eq!(st.promoted_at_offset, Some(100));
    }

    #[test]
    fn a_replica_reads_its_master_link_and_priority() {
        let mut st = MemberState::default();
        st.read_replication_info(&info(&[
            ("role", "slave"),
            ("master_host", "10.0.0.1"),
            ("master_port", "6379"),
            ("master_link_status", "up"),
            ("slave_repl_offset", "900"),
            ("slave_priority", "0"),
        ]));
        assert_eq!(st.master, Some(addr(M)));
        assert_eq!((st.link_up, st.offset, st.priority), (Some(true), Some(900), Some(0)));
        let mut down = MemberState::default();
        down.read_replication_info(&info(&[("role", "slave"), ("master_link_status", "down")]));
        assert_eq!((down.link_up, down.master), (Some(false), None));
    }

    #[test]
    fn a_sentinel_reads_the_master_it_watches() {
        let mut st = SentinelState::default();
        st.read_sentinel_master(&info(&[
            ("ip", "10.0.0.1"),
            ("port", "6379"),
            ("flags", "master,s_down"),
            ("quorum", "2"),
            ("down-after-milliseconds", "5000"),
            ("failover-timeout", "60000"),
            ("num-other-sentinels", "2"),
            ("num-slaves", "2"),
            ("config-epoch", "7"),
        ]));
        assert_eq!(st.master, Some(addr(M)));
        assert_eq!(st.flags, "master,s_down");
        assert_eq!((st.quorum, st.other_sentinels, st.replicas), (Some(2), Some(2), Some(2)));
        assert_eq!((st.down_after_ms, st.failover_timeout_ms, st.epoch), (Some(5000), Some(60000), Some(7)));
        let mut bare = SentinelState::default();
        bare.read_sentinel_master(&info(&[("ip", "10.0.0.1"), ("port", "not a port")]));
        assert_eq!((bare.master, bare.flags.as_str(), bare.quorum), (None, "", None));
    }

    #[test]
    fn the_master_is_the_one_a_majority_of_configured_sentinels_name() {
        let g = group();
        assert_eq!(g.agreed_master(&sentinels_naming(&[Some(M), Some(M), Some(R1)])), Some(addr(M)));
        assert_eq!(g.agreed_master(&sentinels_naming(&[Some(M), Some(R1), Some(R2)])), None);
        assert_eq!(g.agreed_master(&sentinels_naming(&[Some(M), None, None])), None);
        // Two answers are a majority of three configured Sentinels; one is not.
        assert_eq!(g.agreed_master(&sentinels_naming(&[Some(R1), Some(R1)])), Some(addr(R1)));
        assert_eq!(g.agreed_master(&sentinels_naming(&[Some(M)])), None);
    }

    #[test]
    fn a_healthy_group_has_no_problems_and_knows_each_replicas_lag() {
        let (members, sentinels) = healthy();
        let st = group().assess(members, sentinels);
        assert!(st.healthy && st.problems.is_empty(), "{:?}", st.problems);
        assert_eq!(st.master, Some(addr(M)));
        assert!(!st.held);
        let lags: Vec<Option<u64>> = st.members.iter().map(|m| m.lag_bytes).collect();
        assert_eq!(lags, vec![None, Some(100), Some(0)]);
    }

    fn problems(members: Vec<MemberState>, sentinels: Vec<SentinelState>) -> Vec<String> {
        let st = group().assess(members, sentinels);
        assert_eq!(st.healthy, st.problems.is_empty());
        st.problems
    }

    #[test]
    fn unreachable_sentinels_are_problems_and_too_few_stop_failovers() {
        let (members, mut sentinels) = healthy();
        sentinels[2] = SentinelState {
            addr: sentinels[2].addr.clone(),
            error: Some("connection refused".into()),
            ..Default::default()
        };
        assert_eq!(
            problems(members.clone(), sentinels.clone()),
            vec!["sentinel 10.0.1.3:26379 unreachable: connection refused"]
        );
        sentinels[1] = SentinelState { addr: sentinels[1].addr.clone(), ..Default::default() };
        let p = problems(members, sentinels);
        assert!(p.contains(&"only 1 of 3 sentinels reachable: no failover can be authorised".into()), "{p:?}");
        assert!(p.contains(&"the sentinels do not agree on a master".into()), "{p:?}");
    }

    #[test]
    fn a_master_outside_the_members_is_a_problem() {
        let (members, _) = healthy();
        let other = "10.0.0.9:6379";
        let p = problems(members, sentinels_naming(&[Some(other), Some(other), Some(other)]));
        assert!(p.contains(&format!("the sentinels name {other} as master, which is not in `members`")), "{p:?}");
        assert!(p.contains(&format!("member {M} runs as a master but the sentinels name {other}")), "{p:?}");
    }

    #[test]
    fn replicas_that_do_not_follow_the_master_are_problems() {
        let (mut members, sentinels) = healthy();
        members[1].link_up = Some(false);
        members[2].master = Some(addr(R1));
        members.push(MemberState { addr: addr("10.0.0.4:6379"), error: Some("timeout".into()), ..Default::default() });
        assert_eq!(
            problems(members, sentinels),
            vec![
                format!("replica {R1} has its master link down"),
                format!("replica {R2} follows {R1} instead of the master"),
                "member 10.0.0.4:6379 unreachable: timeout".to_string(),
            ]
        );
    }

    #[test]
    fn a_raised_down_after_is_a_failover_held_back() {
        let (members, mut sentinels) = healthy();
        sentinels[0].down_after_ms = Some(HOLD_DOWN_AFTER_MS);
        let st = group().assess(members, sentinels);
        assert!(st.held && !st.healthy);
        assert_eq!(st.problems, vec!["a failover is held back: the best replica is beyond the loss limit"]);
    }
}
