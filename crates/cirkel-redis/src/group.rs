//! A Redis replication group and its Sentinels: probing members, agreeing on
//! the master, configuring the Sentinels, holding a failover back, and
//! planned switchovers. Sentinel does the failing over; cirkel configures,
//! watches, limits and measures it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cirkel_config::{OnLag, RedisGroupConfig};
use serde::Serialize;

use crate::resp::{Addr, Conn, RespError};

/// `down-after-milliseconds` while a failover is held back: one hour. If
/// nothing releases the hold (cirkel itself is gone), Sentinel fails over
/// after it anyway.
pub const HOLD_DOWN_AFTER_MS: u64 = 3_600_000;

/// A group, resolved from its configuration.
#[derive(Clone)]
pub struct Group {
    pub name: String,
    pub master_name: String,
    pub members: Vec<Addr>,
    pub sentinels: Vec<Addr>,
    pub quorum: u32,
    pub down_after: Duration,
    pub failover_timeout: Duration,
    pub parallel_syncs: u32,
    pub max_lag_bytes: u64,
    pub on_lag: OnLag,
    pub timeout: Duration,
    pub health: cirkel_config::HealthConfig,
    pub restart_command: Option<String>,
    password: Option<String>,
    /// The ACL user `password` belongs to.
    user: Option<String>,
}

impl std::fmt::Debug for Group {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Group")
            .field("name", &self.name)
            .field("members", &self.members)
            .field("sentinels", &self.sentinels)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

impl Group {
    pub fn from_config(name: &str, c: &RedisGroupConfig) -> anyhow::Result<Group> {
        let parse = |v: &[String]| -> anyhow::Result<Vec<Addr>> {
            v.iter().map(|s| Addr::parse(s).map_err(anyhow::Error::msg)).collect()
        };
        let password =
            c.password.as_ref().map(|s| s.expose().to_string()).or_else(|| std::env::var("REDISCLI_AUTH").ok());
        Ok(Group {
            name: name.to_string(),
            master_name: c.master_name.clone(),
            members: parse(&c.members)?,
            sentinels: parse(&c.sentinels)?,
            quorum: c.quorum,
            down_after: c.down_after,
            failover_timeout: c.failover_timeout,
            parallel_syncs: c.parallel_syncs,
            max_lag_bytes: c.max_lag_bytes,
            on_lag: c.on_lag,
            timeout: c.health.timeout,
            health: c.health.clone(),
            restart_command: c.restart_command.clone(),
            password,
            user: c.user.clone(),
        })
    }

    /// The event source name: `redis/NAME`.
    pub fn source(&self) -> String {
        format!("redis/{}", self.name)
    }

    pub fn member(&self, addr: &Addr) -> Result<Conn, RespError> {
        match (&self.user, &self.password) {
            (Some(user), Some(p)) => {
                let mut c = Conn::connect(addr, self.timeout, None)?;
                c.cmd(&["AUTH", user, p])?;
                Ok(c)
            }
            _ => Conn::connect(addr, self.timeout, self.password.as_deref()),
        }
    }

    /// The credentials for the data nodes: (ACL user, password).
    pub fn credentials(&self) -> (Option<&str>, Option<&str>) {
        (self.user.as_deref(), self.password.as_deref())
    }

    pub fn sentinel(&self, addr: &Addr) -> Result<Conn, RespError> {
        Conn::connect(addr, self.timeout, None)
    }

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

    /// Makes every Sentinel monitor the group with the configured settings.
    /// Nothing is changed unless every Sentinel and member answers and
    /// there is exactly one master.
    pub fn configure(&self, dry_run: bool) -> anyhow::Result<Vec<String>> {
        if self.sentinels.is_empty() {
            anyhow::bail!("no sentinels are listed for the group");
        }
        let mut conns = Vec::new();
        for a in &self.sentinels {
            conns.push(self.sentinel(a).map_err(|e| anyhow::anyhow!("sentinel unreachable: {e}"))?);
        }
        let master = match self.current_master() {
            Some(m) => m,
            None => self.discover_master()?,
        };
        let states: Vec<MemberState> = self.members.iter().map(|a| self.probe_member(a)).collect();
        if let Some(m) = states.iter().find(|m| !m.reachable) {
            anyhow::bail!("member {} is unreachable: {}", m.addr, m.error.as_deref().unwrap_or(""));
        }
        if let Some(m) = states.iter().find(|m| m.role.as_deref() == Some("master") && m.addr != master) {
            anyhow::bail!("two masters: {} and {}; make one a replica of the other first", master, m.addr);
        }
        let majority = self.sentinels.len() as u32 / 2 + 1;
        let mut actions = Vec::new();
        if self.quorum < majority {
            actions.push(format!(
                "note: quorum {} is below a majority ({majority}): more sentinels may flag the master down, but a failover still needs {majority} votes",
                self.quorum
            ));
        }
        let down_after = self.down_after.as_millis().to_string();
        let failover_timeout = self.failover_timeout.as_millis().to_string();
        let parallel = self.parallel_syncs.to_string();
        let quorum = self.quorum.to_string();
        for c in &mut conns {
            let addr = c.addr.clone();
            match c.cmd(&["SENTINEL", "MASTER", &self.master_name]) {
                Ok(v) => {
                    let m = v.pairs();
                    let watched =
                        m.get("ip").zip(m.get("port").and_then(|p| p.parse().ok())).map(|(h, p)| Addr::new(h, p));
                    if watched.as_ref() != Some(&master) {
                        anyhow::bail!(
                            "sentinel {addr} watches `{}` at {}, the others at {master}; run SENTINEL RESET there or fix it by hand",
                            self.master_name,
                            watched.as_ref().map(ToString::to_string).unwrap_or_else(|| "nothing".into())
                        );
                    }
                }
                Err(e) if e.is_server() => {
                    actions.push(format!(
                        "{addr}: SENTINEL MONITOR {} {} {} {quorum}",
                        self.master_name, master.host, master.port
                    ));
                    if !dry_run {
                        c.cmd(&[
                            "SENTINEL",
                            "MONITOR",
                            &self.master_name,
                            &master.host,
                            &master.port.to_string(),
                            &quorum,
                        ])?;
                    }
                }
                Err(e) => return Err(e.into()),
            }
            let mut args = vec![
                "SENTINEL",
                "SET",
                &self.master_name,
                "down-after-milliseconds",
                &down_after,
                "failover-timeout",
                &failover_timeout,
                "parallel-syncs",
                &parallel,
                "quorum",
                &quorum,
            ];
            actions.push(format!("{addr}: {}", args.join(" ")));
            if let Some(u) = &self.user {
                args.extend(["auth-user", u.as_str()]);
            }
            if let Some(p) = &self.password {
                args.extend(["auth-pass", p.as_str()]);
            }
            if !dry_run {
                c.cmd(&args)?;
            }
        }
        Ok(actions)
    }

    fn set_down_after(&self, ms: u64) -> Vec<String> {
        let ms = ms.to_string();
        let mut failed = Vec::new();
        for a in &self.sentinels {
            if let Err(e) = self
                .sentinel(a)
                .and_then(|mut c| c.cmd(&["SENTINEL", "SET", &self.master_name, "down-after-milliseconds", &ms]))
            {
                failed.push(e.to_string());
            }
        }
        failed
    }

    /// Holds every reachable Sentinel back from failing over; returns the
    /// Sentinels that could not be told.
    pub fn hold(&self) -> Vec<String> {
        self.set_down_after(HOLD_DOWN_AFTER_MS)
    }

    /// Gives the Sentinels their configured `down-after` back.
    pub fn release(&self) -> Vec<String> {
        self.set_down_after(self.down_after.as_millis() as u64)
    }

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
        let target_addr = target.addr.clone();
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
        let astray = match stray.role.as_deref() {
            Some("master") => true,
            Some("slave") => stray.master.as_ref() != Some(agreed),
            _ => false,
        };
        if stray.addr == *agreed || !astray {
            return false;
        }
        let master = self.probe_member(agreed);
        if master.role.as_deref() != Some("master") {
            return false;
        }
        if master.replid.is_some() && stray.replid2 == master.replid {
            return false;
        }
        let busy = self.sentinels.iter().map(|a| self.probe_sentinel(a)).any(|s| {
            !s.reachable
                || s.master.as_ref() != Some(agreed)
                || s.flags.split(',').any(|f| matches!(f, "s_down" | "o_down" | "failover_in_progress"))
        });
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

/// A finished switchover.
#[derive(Clone, Debug, Serialize)]
pub struct Switchover {
    pub old: Addr,
    pub new: Addr,
    pub caught_up_after_ms: u64,
    pub write_pause_ms: u64,
    pub master_offset: u64,
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
