//! Telling the Sentinels what to watch (`SENTINEL MONITOR`/`SET` with the
//! configured settings) and holding a failover back while the best replica
//! would lose more than the loss limit allows.

use super::{Group, MemberState};
use crate::resp::Addr;

/// `down-after-milliseconds` while a failover is held back: one hour. If
/// nothing releases the hold (cirkel itself is gone), Sentinel fails over
/// after it anyway.
pub const HOLD_DOWN_AFTER_MS: u64 = 3_600_000;

impl Group {
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
}
