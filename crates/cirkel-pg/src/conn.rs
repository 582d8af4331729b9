//! A blocking PostgreSQL session, configured like libpq: an explicit
//! connection string, or `PGHOST`, `PGPORT`, `PGUSER`, `PGDATABASE` and
//! `PGPASSWORD` from the environment.

use tokio::runtime::Runtime;
use tokio_postgres::{Client, NoTls, Row};

pub struct PgConn {
    rt: Runtime,
    client: Client,
    pub describe: String,
}

/// The effective connection settings, for messages (never the password).
fn settings(conninfo: Option<&str>) -> anyhow::Result<(tokio_postgres::Config, String)> {
    let mut cfg: tokio_postgres::Config = match conninfo {
        Some(s) => s.parse().map_err(|e| anyhow::anyhow!("bad connection string: {e}"))?,
        None => tokio_postgres::Config::new(),
    };
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    if cfg.get_hosts().is_empty() {
        let host = env("PGHOST").unwrap_or_else(|| "/var/run/postgresql".into());
        for h in host.split(',') {
            if h.starts_with('/') {
                cfg.host_path(h);
            } else {
                cfg.host(h);
            }
        }
    }
    if cfg.get_ports().is_empty() {
        let port = env("PGPORT").map(|p| p.parse::<u16>()).transpose().map_err(|e| anyhow::anyhow!("PGPORT: {e}"))?;
        cfg.port(port.unwrap_or(5432));
    }
    if cfg.get_user().is_none() {
        cfg.user(env("PGUSER").or_else(|| env("USER")).unwrap_or_else(|| "postgres".into()));
    }
    if cfg.get_dbname().is_none() {
        cfg.dbname(env("PGDATABASE").or_else(|| cfg.get_user().map(String::from)).unwrap_or_else(|| "postgres".into()));
    }
    if cfg.get_password().is_none()
        && let Some(p) = env("PGPASSWORD")
    {
        cfg.password(p);
    }
    cfg.application_name("cirkel");
    let hosts: Vec<String> = cfg
        .get_hosts()
        .iter()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(s) => s.clone(),
            tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
        })
        .collect();
    let describe = format!(
        "{}:{} as {}",
        hosts.join(","),
        cfg.get_ports().first().copied().unwrap_or(5432),
        cfg.get_user().unwrap_or("?")
    );
    Ok((cfg, describe))
}

impl PgConn {
    pub fn connect(conninfo: Option<&str>) -> anyhow::Result<PgConn> {
        let (cfg, describe) = settings(conninfo)?;
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let (client, connection) = rt.block_on(cfg.connect(NoTls)).map_err(|e| {
            anyhow::Error::new(ConnectError { describe: describe.clone(), detail: cirkel_repo::error_chain(&e) })
        })?;
        rt.spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("postgres connection ended: {e}");
            }
        });
        Ok(PgConn { rt, client, describe })
    }

    pub fn query(&self, sql: &str) -> anyhow::Result<Vec<Row>> {
        self.rt
            .block_on(self.client.query(sql, &[]))
            .map_err(|e| anyhow::anyhow!("{sql}: {}", cirkel_repo::error_chain(&e)))
    }

    pub fn query_one(&self, sql: &str) -> anyhow::Result<Row> {
        self.rt
            .block_on(self.client.query_one(sql, &[]))
            .map_err(|e| anyhow::anyhow!("{sql}: {}", cirkel_repo::error_chain(&e)))
    }

    pub fn query_one_text(&self, sql: &str, param: &str) -> anyhow::Result<Row> {
        self.rt
            .block_on(self.client.query_one(sql, &[&param]))
            .map_err(|e| anyhow::anyhow!("{sql}: {}", cirkel_repo::error_chain(&e)))
    }

    pub fn execute(&self, sql: &str) -> anyhow::Result<()> {
        self.rt
            .block_on(self.client.batch_execute(sql))
            .map_err(|e| anyhow::anyhow!("{sql}: {}", cirkel_repo::error_chain(&e)))
    }
}

/// The server could not be reached or refused us.
#[derive(Debug, thiserror::Error)]
#[error("cannot connect to PostgreSQL at {describe}: {detail}")]
pub struct ConnectError {
    pub describe: String,
    pub detail: String,
}

/// Parses `X/Y` LSN text.
pub fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_round_trip() {
        assert_eq!(parse_lsn("1/3000028"), Some(0x1_0300_0028));
        assert_eq!(format_lsn(0x1_0300_0028), "1/3000028");
        assert_eq!(parse_lsn("nope"), None);
    }
}
