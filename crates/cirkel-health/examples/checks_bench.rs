//! The engine under the plan's load: 1,000 HTTP checks every 10 s.
//!
//! `checks_bench engine` starts a second process (`checks_bench targets`),
//! a hyper HTTP server listening on 1,000 loopback ports, one target per
//! port so that one target can be killed alone. The engine runs in this
//! process only, so its CPU time and memory are the engine's. After the
//! measured window it kills one target and times its Down transition.
//!
//! Usage: checks_bench engine [CHECKS] [INTERVAL_SECS] [DURATION_SECS]
//!        checks_bench targets COUNT   (started by `engine`)

use std::convert::Infallible;
use std::process::Stdio;
use std::time::{Duration, Instant};

use cirkel_health::{CheckSpec, Engine, Kind, State};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

type Error = Box<dyn std::error::Error + Send + Sync>;

fn main() -> Result<(), Error> {
    raise_fd_limit();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, default: u64| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default);
    match args.first().map(String::as_str) {
        Some("targets") => {
            // The targets stay out of the engine's way: one thread.
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(targets(arg(1, 1000) as usize))
        }
        Some("engine") => {
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            rt.block_on(engine(arg(1, 1000) as usize, Duration::from_secs(arg(2, 10)), Duration::from_secs(arg(3, 60))))
        }
        _ => Err("usage: checks_bench engine [CHECKS] [INTERVAL_SECS] [DURATION_SECS]".into()),
    }
}

/// 1,000 listeners and their connections need more descriptors than the usual soft limit.
fn raise_fd_limit() {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// User+system CPU seconds and peak RSS (KiB) of this process.
fn usage() -> (f64, i64) {
    // SAFETY: an all-zero rusage is valid, and getrusage fills it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (secs(ru.ru_utime) + secs(ru.ru_stime), ru.ru_maxrss)
}

async fn targets(count: usize) -> Result<(), Error> {
    let mut ports = Vec::with_capacity(count);
    let mut servers = Vec::with_capacity(count);
    for _ in 0..count {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        ports.push(listener.local_addr()?.port().to_string());
        servers.push(Some(tokio::spawn(async move {
            // Aborting this task drops the listener and, with the set, every connection.
            let mut conns = JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                conns.spawn(async move {
                    let service = service_fn(|_req| async {
                        Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(b"status ok\n"))))
                    });
                    let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
                });
                while conns.try_join_next().is_some() {}
            }
        })));
    }
    println!("ready {}", ports.join(" "));
    // Commands arrive on stdin, read by a plain thread: this runtime has one.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    while let Some(line) = rx.recv().await {
        if let Some(i) = line.strip_prefix("kill ").and_then(|i| i.parse::<usize>().ok())
            && let Some(server) = servers.get_mut(i).and_then(Option::take)
        {
            server.abort();
            // Dead once the task is gone: its listener and connections are closed.
            let _ = server.await;
            println!("killed {i}");
        }
    }
    Ok(())
}

async fn engine(checks: usize, interval: Duration, duration: Duration) -> Result<(), Error> {
    let mut child = tokio::process::Command::new(std::env::current_exe()?)
        .args(["targets", &checks.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut child_in = child.stdin.take().ok_or("no stdin")?;
    let mut child_out = BufReader::new(child.stdout.take().ok_or("no stdout")?).lines();
    let ready = child_out.next_line().await?.ok_or("the targets process ended")?;
    let ports: Vec<&str> = ready.strip_prefix("ready ").ok_or("unexpected greeting")?.split(' ').collect();
    let specs = ports
        .iter()
        .enumerate()
        .map(|(i, port)| {
            let mut s = CheckSpec::http(&format!("check-{i}"), &format!("http://127.0.0.1:{port}/health"))?;
            if let Kind::Http { body_contains, .. } = &mut s.kind {
                *body_contains = Some("ok".into());
            }
            s.interval = interval;
            s.timeout = interval / 2;
            Ok(s)
        })
        .collect::<Result<Vec<_>, Error>>()?;
    let unhealthy = specs[0].unhealthy_threshold;
    let engine = Engine::new(specs).map_err(|e| format!("{e:?}"))?;
    let mut transitions = engine.subscribe();
    let cancel = CancellationToken::new();
    let (cpu0, _) = usage();
    let t0 = Instant::now();
    let handle = engine.start(&tokio::runtime::Handle::current(), cancel.clone());
    tokio::time::sleep(duration).await;
    let wall = t0.elapsed().as_secs_f64();
    let (cpu1, rss_kib) = usage();
    let lags = handle.lag_summary();
    let snapshot = handle.snapshot();
    let up = snapshot.iter().filter(|s| s.state == State::Up).count();
    let probes: u64 = snapshot.iter().map(|s| s.probes_total).sum();
    let failures: u64 = snapshot.iter().map(|s| s.failures_total).sum();
    println!("checks              {checks} HTTP, every {interval:?}, timeout {:?}, window {wall:.1} s", interval / 2);
    println!("probes              {probes} ({failures} failed), {up}/{checks} checks up at the end");
    println!(
        "start jitter        p50 {:.3} ms  p99 {:.3} ms  max {:.3} ms  (over {} probes)",
        ms(lags.p50),
        ms(lags.p99),
        ms(lags.max),
        lags.kept
    );
    println!(
        "engine CPU          {:.2} s user+sys = {:.2} % of one core; max RSS {:.1} MiB",
        cpu1 - cpu0,
        (cpu1 - cpu0) / wall * 100.0,
        rss_kib as f64 / 1024.0
    );
    while transitions.try_recv().is_ok() {}
    child_in.write_all(b"kill 0\n").await?;
    child_in.flush().await?;
    let acked = child_out.next_line().await?.ok_or("the targets process ended")?;
    let killed_at = Instant::now();
    if acked != "killed 0" {
        return Err(format!("unexpected answer: {acked}").into());
    }
    let deadline = interval * (unhealthy + 2);
    let mut others_down = 0;
    let down = tokio::time::timeout(deadline, async {
        loop {
            match transitions.recv().await {
                Ok(t) if t.name == "check-0" && t.to == State::Down => return Some(t),
                Ok(t) if t.to == State::Down => others_down += 1,
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    })
    .await;
    match down {
        Ok(Some(t)) => {
            let took = killed_at.elapsed();
            let bound = interval * unhealthy + Duration::from_secs(1);
            println!(
                "kill → down         {:.3} s (bound {unhealthy} × {interval:?} + 1 s = {:.0} s: {}), after {} failed probes: {}",
                took.as_secs_f64(),
                bound.as_secs_f64(),
                if took <= bound { "within" } else { "OVER" },
                t.failures_total,
                t.error.unwrap_or_default()
            );
        }
        _ => println!("kill → down         not seen within {deadline:?}"),
    }
    println!("other checks down   {others_down}");
    cancel.cancel();
    handle.stopped().await;
    let _ = child.kill().await;
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
