//! What the group looks like now: each member's replication state, each
//! Sentinel's view, the master a majority of Sentinels agree on, and the
//! problems `cirkel redis status` and the watcher report.

use std::collections::BTreeMap;
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
                st.role = info.get("role").cloned();
                let num = |k: &str| info.get(k).and_then(|v| v.parse::<u64>().ok());
                if st.role.as_deref() == Some("master") {
                    st.offset = num("master_repl_offset");
                    st.connected_replicas = num("connected_slaves");
                } else {
                    st.offset = num("slave_repl_offset");
                    st.link_up = Some(info.get("master_link_status").map(String::as_str) == Some("up"));
                    st.priority = num("slave_priority");
                    if let (Some(h), Some(p)) = (info.get("master_host"), num("master_port")) {
                        st.master = Some(Addr::new(h, p as u16));
                    }
                }
                st.promoted_at_offset = num("second_repl_offset").filter(|&o| o > 0).map(|o| o - 1);
                st.replid = info.get("master_replid").cloned();
                st.replid2 = info.get("master_replid2").cloned().filter(|r| r.chars().any(|c| c != '0'));
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
                let num = |k: &str| m.get(k).and_then(|v| v.parse::<u64>().ok());
                if let (Some(h), Some(p)) = (m.get("ip"), num("port")) {
                    st.master = Some(Addr::new(h, p as u16));
                }
                st.flags = m.get("flags").cloned().unwrap_or_default();
                st.quorum = num("quorum").map(|q| q as u32);
                st.down_after_ms = num("down-after-milliseconds");
                st.failover_timeout_ms = num("failover-timeout");
                st.other_sentinels = num("num-other-sentinels").map(|n| n as u32);
                st.replicas = num("num-slaves").map(|n| n as u32);
                st.epoch = num("config-epoch");
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
        let mut members: Vec<MemberState> = std::thread::scope(|s| {
            let hs: Vec<_> = self.members.iter().map(|a| s.spawn(|| self.probe_member(a))).collect();
            hs.into_iter().filter_map(|h| h.join().ok()).collect()
        });
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
