//! The failover drill: a canary writer through Sentinel discovery, the
//! master killed, RTO and lost writes measured, the group made whole again.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use chrono::Utc;
use serde::Serialize;

use crate::events::{SentinelEvent, follow};
use crate::group::Group;
use crate::resp::{Addr, Conn};

/// How a drill runs.
#[derive(Clone, Debug)]
pub struct DrillOptions {
    /// Time between canary writes.
    pub interval: Duration,
    /// How long to wait for the failover and for the rejoin.
    pub timeout: Duration,
    /// Canary writes before the fault.
    pub warmup: Duration,
}

impl Default for DrillOptions {
    fn default() -> Self {
        DrillOptions {
            interval: Duration::from_millis(10),
            timeout: Duration::from_secs(120),
            warmup: Duration::from_secs(1),
        }
    }
}

/// What a drill measured.
pub type DrillReport = cirkel_state::DrillReport<RedisDrill>;

/// What only a Redis drill knows, beside the shared measures; the
/// timeline holds the Sentinel events after the fault: first `+sdown`,
/// `+odown`, … `+switch-master`.
#[derive(Clone, Debug, Serialize)]
pub struct RedisDrill {
    pub group: String,
    pub killed: Addr,
    pub killed_pid: u32,
    pub new_master: Option<Addr>,
    /// Writes the killed master acknowledged after its process was gone (split brain).
    pub acknowledged_by_old_after_kill: usize,
    /// The old master's last offset seen minus the promoted replica's offset at promotion.
    pub lost_bytes_at_least: Option<u64>,
    pub max_lag_bytes: u64,
}

#[derive(Default)]
struct Canary {
    /// (sequence, acknowledged at, by whom)
    acked: Vec<(u64, Instant, Addr)>,
    failed: usize,
}

/// Whether `host` is an address of this machine.
fn is_local(host: &str) -> bool {
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback() || std::net::TcpListener::bind((ip, 0)).is_ok(),
        Err(_) => host == "localhost",
    }
}

/// Runs the drill on a healthy group.
pub fn drill(group: &Group, opts: &DrillOptions) -> anyhow::Result<DrillReport> {
    let before = group.status();
    if !before.healthy {
        anyhow::bail!("the group is not healthy, so a drill would prove nothing: {}", before.problems.join("; "));
    }
    let old = before.master.clone().ok_or_else(|| anyhow::anyhow!("no agreed master"))?;
    if !is_local(&old.host) {
        anyhow::bail!("the master {old} is on another host; a drill kills it with a signal and must run there");
    }
    let pid: u32 = group
        .member(&old)?
        .info("server")?
        .get("process_id")
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("{old} does not report its process id"))?;
    let started = Utc::now();
    let run = format!("{:08x}", rand::random::<u32>());
    let stop = Arc::new(AtomicBool::new(false));

    let (tx, rx) = mpsc::channel::<SentinelEvent>();
    let followers: Vec<_> = group
        .sentinels
        .iter()
        .map(|s| {
            let (s, tx, stop) = (s.clone(), tx.clone(), stop.clone());
            std::thread::spawn(move || follow(s, tx, stop))
        })
        .collect();
    drop(tx);

    // The master's offset, read until it stops answering.
    let last_offset = Arc::new(Mutex::new(None::<u64>));
    let poller = {
        let (g, old, stop, last) = (group.clone(), old.clone(), stop.clone(), last_offset.clone());
        std::thread::spawn(move || {
            let Ok(mut c) = g.member(&old) else { return };
            while !stop.load(Ordering::Relaxed) {
                match c.info("replication") {
                    Ok(i) => {
                        if let Some(o) = i.get("master_repl_offset").and_then(|v| v.parse().ok())
                            && let Ok(mut l) = last.lock()
                        {
                            *l = Some(o);
                        }
                    }
                    Err(_) => return,
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };

    let canary = Arc::new(Mutex::new(Canary::default()));
    let writer = {
        let (g, canary, stop, run, interval) =
            (group.clone(), canary.clone(), stop.clone(), run.clone(), opts.interval);
        std::thread::spawn(move || canary_loop(&g, &canary, &stop, &run, interval))
    };

    std::thread::sleep(opts.warmup);
    let fault = Instant::now();
    let fault_time = Utc::now();
    // SAFETY: kill(2) with a pid Redis reported for itself; no memory is involved.
    if unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) } != 0 {
        stop.store(true, Ordering::Relaxed);
        let _ = writer.join();
        anyhow::bail!("cannot kill {old} (pid {pid}): {}", std::io::Error::last_os_error());
    }

    // kill(2) returns before the process is gone: a write already inside it
    // may still be acknowledged. The fault counts from its death.
    let dead = wait_dead(pid, Duration::from_secs(5));
    let mut failures = Vec::new();
    let mut first_new_ack = None;
    while fault.elapsed() < opts.timeout {
        if let Ok(c) = canary.lock()
            && let Some((_, t, a)) = c.acked.iter().find(|(_, t, a)| *t > fault && *a != old)
        {
            first_new_ack = Some((*t, a.clone()));
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    if first_new_ack.is_none() {
        failures.push(format!("no write was accepted by a new master within {:?}", opts.timeout));
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let _ = writer.join();
    let _ = poller.join();
    for f in followers {
        let _ = f.join();
    }
    let mut timeline = BTreeMap::new();
    for ev in rx.try_iter().filter(|e| e.concerns(&group.master_name)) {
        let key = match (ev.channel.as_str(), ev.is_master()) {
            ("+sdown", true) => "sdown",
            ("+odown", _) => "odown",
            ("+try-failover", _) => "try_failover",
            ("+elected-leader", _) => "elected_leader",
            ("+selected-slave", _) => "selected_replica",
            ("+promoted-slave", _) => "promoted",
            ("+switch-master", _) => "switch_master",
            ("+failover-end", _) => "failover_end",
            _ => continue,
        };
        let s = (ev.time - fault_time).num_milliseconds() as f64 / 1000.0;
        timeline.entry(format!("{key}_s")).or_insert(s);
    }

    let canary = std::mem::take(&mut *canary.lock().map_err(|_| anyhow::anyhow!("canary thread panicked"))?);
    let new_master = first_new_ack.as_ref().map(|(_, a)| a.clone());
    let mut lost = 0;
    let mut lost_bytes = None;
    if let Some(new) = &new_master {
        let mut c = group.member(new)?;
        for chunk in canary.acked.chunks(500) {
            let keys: Vec<String> = chunk.iter().map(|(seq, _, _)| key(&run, *seq)).collect();
            let mut args = vec!["EXISTS"];
            args.extend(keys.iter().map(String::as_str));
            let present = c.cmd(&args)?.int().unwrap_or(0) as usize;
            lost += keys.len() - present.min(keys.len());
        }
        let promoted_at = group.probe_member(new).promoted_at_offset;
        let last = *last_offset.lock().map_err(|_| anyhow::anyhow!("poller panicked"))?;
        lost_bytes = last.zip(promoted_at).map(|(l, p)| l.saturating_sub(p));
    }
    let by_old_after = canary.acked.iter().filter(|(_, t, a)| *t > dead && *a == old).count();
    if by_old_after > 0 {
        failures.push(format!("{by_old_after} writes were acknowledged by the killed master after the kill"));
    }
    if let Some(b) = lost_bytes
        && b > group.max_lag_bytes
    {
        failures.push(format!("the failover lost {b} bytes, above the limit of {} bytes", group.max_lag_bytes));
    }

    // Bring the old master back as a replica of the new one.
    let mut rejoin_s = None;
    match (&group.restart_command, &new_master) {
        (Some(cmd), Some(new)) => match rejoin(group, &old, new, cmd, opts.timeout) {
            Ok(s) => rejoin_s = Some(s),
            Err(e) => failures.push(format!("rejoin of {old}: {e:#}")),
        },
        (None, _) => failures.push(format!(
            "{old} was not restarted: set restart_command in [redis.{}] so drills can bring it back",
            group.name
        )),
        _ => {}
    }
    if let Some(new) = &new_master
        && let Ok(mut c) = group.member(new)
    {
        for chunk in canary.acked.chunks(500) {
            let keys: Vec<String> = chunk.iter().map(|(seq, _, _)| key(&run, *seq)).collect();
            let mut args = vec!["DEL"];
            args.extend(keys.iter().map(String::as_str));
            let _ = c.cmd(&args);
        }
    }
    let after = wait_healthy(group, Duration::from_secs(30));
    if !after.healthy {
        failures.push(format!("the group is not healthy afterwards: {}", after.problems.join("; ")));
    }
    Ok(DrillReport {
        kind: "redis-failover".into(),
        started,
        passed: failures.is_empty(),
        failures,
        engine: RedisDrill {
            group: group.name.clone(),
            killed: old,
            killed_pid: pid,
            new_master,
            acknowledged_by_old_after_kill: by_old_after,
            lost_bytes_at_least: lost_bytes,
            max_lag_bytes: group.max_lag_bytes,
        },
        rto_s: first_new_ack.map(|(t, _)| (t - fault).as_secs_f64()),
        writes_acknowledged: canary.acked.len(),
        writes_failed: canary.failed,
        writes_lost: lost,
        timeline_s: timeline,
        rejoin_s,
        healthy_after: after.healthy,
        problems_after: after.problems,
    })
}

/// When the process `pid` is gone (or a zombie), at the latest after `timeout`.
fn wait_dead(pid: u32, timeout: Duration) -> Instant {
    let start = Instant::now();
    while start.elapsed() < timeout {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => break,
            Ok(stat) => {
                // The state follows the parenthesised command name.
                let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next());
                if matches!(state, Some("Z" | "X")) {
                    break;
                }
            }
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    Instant::now()
}

fn key(run: &str, seq: u64) -> String {
    format!("cirkel:drill:{run}:{seq}")
}

/// The masters the Sentinels name, most named first.
fn master_candidates(group: &Group) -> Vec<Addr> {
    let mut votes: BTreeMap<Addr, usize> = BTreeMap::new();
    for s in &group.sentinels {
        let Ok(v) =
            group.sentinel(s).and_then(|mut c| c.cmd(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", &group.master_name]))
        else {
            continue;
        };
        let p = v.array();
        if let (Some(h), Some(port)) = (p.first().and_then(|v| v.text()), p.get(1).and_then(|v| v.int())) {
            *votes.entry(Addr::new(&h, port as u16)).or_default() += 1;
        }
    }
    let mut v: Vec<_> = votes.into_iter().collect();
    v.sort_by_key(|x| std::cmp::Reverse(x.1));
    v.into_iter().map(|(a, _)| a).collect()
}

fn canary_loop(group: &Group, canary: &Mutex<Canary>, stop: &AtomicBool, run: &str, interval: Duration) {
    let mut conn: Option<Conn> = None;
    let mut seq = 0u64;
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now < next {
            std::thread::sleep(next - now);
        }
        next += interval;
        seq += 1;
        let k = key(run, seq);
        let v = seq.to_string();
        let mut acked = None;
        if let Some(c) = conn.as_mut() {
            match c.cmd(&["SET", &k, &v]) {
                Ok(_) => acked = Some(c.addr.clone()),
                Err(_) => conn = None,
            }
        } else {
            for addr in master_candidates(group) {
                let Ok(mut c) = group.member(&addr) else { continue };
                if c.cmd(&["SET", &k, &v]).is_ok() {
                    acked = Some(addr);
                    conn = Some(c);
                    break;
                }
            }
        }
        if let Ok(mut c) = canary.lock() {
            match acked {
                Some(a) => c.acked.push((seq, Instant::now(), a)),
                None => c.failed += 1,
            }
        }
    }
}

/// Restarts `old` and waits until it replicates from the group's master:
/// `new`, or whichever member Sentinel promoted after it (under load
/// Sentinel sometimes fails over a second time before the old master is back).
fn rejoin(group: &Group, old: &Addr, new: &Addr, command: &str, timeout: Duration) -> anyhow::Result<f64> {
    let cmd = command.replace("{host}", &old.host).replace("{port}", &old.port.to_string());
    let start = Instant::now();
    let out = std::process::Command::new("sh").args(["-c", &cmd]).output()?;
    if !out.status.success() {
        anyhow::bail!("restart_command `{cmd}` failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let mut master = new.clone();
    while start.elapsed() < timeout {
        let m = group.probe_member(old);
        if m.reachable {
            // The master the Sentinels agree on now, if they do.
            let agreed = group.current_master().filter(|c| c != old);
            if let Some(a) = &agreed {
                master = a.clone();
            }
            let follows = m.role.as_deref() == Some("slave") && m.master.as_ref() == Some(&master);
            if follows && m.link_up == Some(true) {
                return Ok(start.elapsed().as_secs_f64());
            }
            if !follows && agreed.is_some() {
                group.demote_stray_master(&m, &master);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    anyhow::bail!("{old} did not replicate from the group's master ({master}) within {timeout:?}")
}

fn wait_healthy(group: &Group, timeout: Duration) -> crate::group::GroupStatus {
    let start = Instant::now();
    loop {
        let s = group.status();
        if s.healthy || start.elapsed() > timeout {
            return s;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
