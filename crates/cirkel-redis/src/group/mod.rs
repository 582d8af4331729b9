//! A Redis replication group and its Sentinels: probing members, agreeing on
//! the master, configuring the Sentinels, holding a failover back, and
//! planned switchovers. Sentinel does the failing over; cirkel configures,
//! watches, limits and measures it.
//!
//! This file holds the group as configured and the connections to its nodes;
//! `probe` reads what the members and Sentinels say, `sentinel_config` tells
//! the Sentinels what to watch and holds or releases a failover, and
//! `switchover` moves the master on purpose (or puts a stray one back).

mod probe;
mod sentinel_config;
mod switchover;

use std::time::Duration;

use cirkel_config::{OnLag, RedisGroupConfig};

use crate::resp::{Addr, Conn, RespError};

pub use probe::{GroupStatus, MemberState, SentinelState};
pub use sentinel_config::HOLD_DOWN_AFTER_MS;
pub use switchover::Switchover;

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
}
