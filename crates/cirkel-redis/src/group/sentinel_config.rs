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
        let quorum = self.quorum.to_string();
        let (shown, set) = self.sentinel_set();
        let set: Vec<&str> = set.iter().map(String::as_str).collect();
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
            actions.push(format!("{addr}: {shown}"));
            if !dry_run {
                c.cmd(&set)?;
            }
        }
        Ok(actions)
    }

    /// The `SENTINEL SET` that gives a Sentinel the group's settings: as
    /// shown (without credentials, so what `configure` reports can be
    /// pasted anywhere) and as sent (with the data nodes' credentials, which
    /// the Sentinels need to reach them).
    fn sentinel_set(&self) -> (String, Vec<String>) {
        let mut args: Vec<String> = vec![
            "SENTINEL".into(),
            "SET".into(),
            self.master_name.clone(),
            "down-after-milliseconds".into(),
            self.down_after.as_millis().to_string(),
            "failover-timeout".into(),
            self.failover_timeout.as_millis().to_string(),
            "parallel-syncs".into(),
            self.parallel_syncs.to_string(),
            "quorum".into(),
            self.quorum.to_string(),
        ];
        let shown = args.join(" ");
        if let Some(u) = &self.user {
            args.extend(["auth-user".into(), u.clone()]);
        }
        if let Some(p) = &self.password {
            args.extend(["auth-pass".into(), p.clone()]);
        }
        (shown, args)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn group(extra: &str) -> (Group, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("redis-password");
        std::fs::write(&secret, "s3cret-pass\n").unwrap();
        let cfg = cirkel_config::Config::parse(
            &format!(
                "[redis.g]\nmaster_name = \"mymaster\"\nmembers = [\"10.0.0.1:6379\", \"10.0.0.2:6379\"]\n\
                 sentinels = [\"10.0.1.1:26379\", \"10.0.1.2:26379\", \"10.0.1.3:26379\"]\n\
                 down_after = \"5s\"\nfailover_timeout = \"1m\"\nparallel_syncs = 2\n{extra}\n",
            ),
            "c.toml",
            Some(dir.path()),
        )
        .unwrap();
        (Group::from_config("g", &cfg.redis["g"]).unwrap(), dir)
    }

    const SET: &str =
        "SENTINEL SET mymaster down-after-milliseconds 5000 failover-timeout 60000 parallel-syncs 2 quorum 2";

    #[test]
    fn sentinel_set_sends_the_configured_settings() {
        let (g, _dir) = group("");
        let (shown, sent) = g.sentinel_set();
        assert_eq!(shown, SET);
        // REDISCLI_AUTH, if set where the tests run, is the data nodes' password.
        let auth: Vec<String> = match std::env::var("REDISCLI_AUTH") {
            Ok(p) => vec!["auth-pass".into(), p],
            Err(_) => Vec::new(),
        };
        assert_eq!(sent, SET.split(' ').map(String::from).chain(auth).collect::<Vec<_>>());
    }

    #[test]
    fn sentinel_set_sends_credentials_but_never_shows_them() {
        let (g, _dir) = group("user = \"cirkel\"\npassword_file = \"redis-password\"");
        let (shown, sent) = g.sentinel_set();
        assert_eq!(shown, SET);
        assert!(!shown.contains("s3cret-pass") && !shown.contains("auth-"));
        assert_eq!(sent[sent.len() - 4..], ["auth-user", "cirkel", "auth-pass", "s3cret-pass"]);
        assert_eq!(sent[..sent.len() - 4].join(" "), SET);
    }
}
