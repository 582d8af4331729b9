//! The engine against real targets on loopback: HTTP servers this test
//! starts (answering well, hanging, resetting, failing, slow, wrong body),
//! a port nobody listens on, and a server killed and restarted on its port.
//! Every assertion is a count (probes and failures at a transition), never
//! a duration; waits have generous deadlines for a loaded machine.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::time::Duration;

use cirkel_health::{CheckSpec, Engine, EngineHandle, Kind, SpecError, State, Transition};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

const INTERVAL: Duration = Duration::from_millis(200);
const TIMEOUT: Duration = Duration::from_millis(100);
/// How long a wait for a transition may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Mode {
    Good,
    /// Reads the request and never answers.
    Hang,
    /// Reads the request and resets the connection.
    Reset,
    Status500,
    /// Answers well, long after the probe's timeout.
    Slow,
    /// 200, without the text the check looks for.
    WrongBody,
    /// 200 with a body cut short of its announced length.
    TruncatedBody,
}

impl Mode {
    fn from_u8(n: u8) -> Mode {
        [Mode::Good, Mode::Hang, Mode::Reset, Mode::Status500, Mode::Slow, Mode::WrongBody, Mode::TruncatedBody]
            [n as usize]
    }
}

/// A small HTTP/1.1 server whose behaviour the test switches.
struct Server {
    addr: SocketAddr,
    mode: Arc<AtomicU8>,
    /// Connections open right now.
    open: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Server {
    async fn start(mode: Mode) -> Server {
        Server::on(TcpListener::bind("127.0.0.1:0").await.unwrap(), mode)
    }

    fn on(listener: TcpListener, mode: Mode) -> Server {
        let addr = listener.local_addr().unwrap();
        let mode = Arc::new(AtomicU8::new(mode as u8));
        let open = Arc::new(AtomicUsize::new(0));
        let (m, o) = (mode.clone(), open.clone());
        // Dropping the JoinSet (when the task is aborted) ends every connection too.
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                o.fetch_add(1, Ordering::SeqCst);
                let (m, o) = (m.clone(), o.clone());
                conns.spawn(async move {
                    answer(stream, &m).await;
                    o.fetch_sub(1, Ordering::SeqCst);
                });
                while conns.try_join_next().is_some() {}
            }
        });
        Server { addr, mode, open, task }
    }

    fn set(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::SeqCst);
    }

    fn url(&self) -> String {
        format!("http://{}/health", self.addr)
    }

    /// Stops listening and drops every connection, like a killed process.
    async fn kill(self) -> SocketAddr {
        self.task.abort();
        let _ = self.task.await;
        self.addr
    }
}

async fn answer(mut stream: TcpStream, mode: &AtomicU8) {
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    let ok = "HTTP/1.1 200 OK\r\nContent-Length: 9\r\nConnection: close\r\n\r\nstatus ok";
    match Mode::from_u8(mode.load(Ordering::SeqCst)) {
        Mode::Good => {
            let _ = stream.write_all(ok.as_bytes()).await;
        }
        Mode::Hang => {
            // Until the client gives up and closes.
            while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
        }
        Mode::Reset => {
            let _ = stream.set_zero_linger();
            drop(stream);
        }
        Mode::Status500 => {
            let _ = stream.write_all(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n").await;
        }
        Mode::Slow => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            let _ = stream.write_all(ok.as_bytes()).await;
        }
        Mode::WrongBody => {
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nstarting").await;
        }
        Mode::TruncatedBody => {
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nstat").await;
        }
    }
}

fn spec(name: &str, kind: Kind) -> CheckSpec {
    CheckSpec {
        name: name.into(),
        kind,
        interval: INTERVAL,
        timeout: TIMEOUT,
        healthy_threshold: 2,
        unhealthy_threshold: 3,
    }
}

fn http(name: &str, url: &str) -> CheckSpec {
    let mut s = CheckSpec::http(name, url).unwrap();
    if let Kind::Http { body_contains, .. } = &mut s.kind {
        *body_contains = Some("ok".into());
    }
    CheckSpec { interval: INTERVAL, timeout: TIMEOUT, ..s }
}

fn start(specs: Vec<CheckSpec>) -> (EngineHandle, broadcast::Receiver<Transition>, CancellationToken) {
    let engine = Engine::new(specs).unwrap();
    let rx = engine.subscribe();
    let cancel = CancellationToken::new();
    let handle = engine.start(&tokio::runtime::Handle::current(), cancel.clone());
    (handle, rx, cancel)
}

/// The next transition of `name`.
async fn next(rx: &mut broadcast::Receiver<Transition>, name: &str) -> Transition {
    let wait = async {
        loop {
            let t = rx.recv().await.unwrap();
            if t.name == name {
                return t;
            }
        }
    };
    tokio::time::timeout(DEADLINE, wait).await.unwrap_or_else(|_| panic!("no transition of {name} in {DEADLINE:?}"))
}

/// Up after 2 good probes, Down after exactly 3 bad ones in `mode`, Up
/// again after exactly 2 good ones once fixed.
async fn down_in(mode: Mode, error_says: &str) {
    let server = Server::start(Mode::Good).await;
    let (handle, mut rx, cancel) = start(vec![http("api", &server.url())]);
    let up = next(&mut rx, "api").await;
    assert_eq!((up.from, up.to, up.probes_total, up.failures_total), (State::Unknown, State::Up, 2, 0));
    server.set(mode);
    let down = next(&mut rx, "api").await;
    assert_eq!((down.from, down.to), (State::Up, State::Down));
    assert_eq!(down.failures_total, 3, "down after exactly unhealthy_threshold failed probes: {down:?}");
    let error = down.error.clone().unwrap_or_default();
    assert!(error.contains(error_says), "{mode:?}: {error}");
    server.set(Mode::Good);
    let again = next(&mut rx, "api").await;
    assert_eq!((again.from, again.to), (State::Down, State::Up));
    let good = |t: &Transition| t.probes_total - t.failures_total;
    assert_eq!(good(&again), good(&down) + 2, "up after exactly healthy_threshold good probes: {again:?}");
    let status = handle.status("api").unwrap();
    assert_eq!(status.state, State::Up);
    assert!(status.probes_total >= again.probes_total);
    cancel.cancel();
    tokio::time::timeout(DEADLINE, handle.stopped()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_never_answers_goes_down_and_back_up() {
    down_in(Mode::Hang, "no answer within").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_resets_goes_down_and_back_up() {
    down_in(Mode::Reset, "GET /health").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_answering_500_goes_down_and_back_up() {
    down_in(Mode::Status500, "answered 500, expected 200..=399").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_slower_than_the_timeout_goes_down_and_back_up() {
    down_in(Mode::Slow, "no answer within").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_without_the_expected_text_goes_down_and_back_up() {
    down_in(Mode::WrongBody, "does not contain `ok`").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_cut_short_goes_down_and_back_up() {
    down_in(Mode::TruncatedBody, "reading the body").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ipv6_target_is_reached() {
    let server = Server::on(TcpListener::bind("[::1]:0").await.unwrap(), Mode::Good);
    let url = server.url();
    assert!(url.starts_with("http://[::1]:"), "{url}");
    let (handle, mut rx, cancel) =
        start(vec![http("v6", &url), spec("v6-tcp", Kind::Tcp { address: server.addr.to_string() })]);
    for name in ["v6", "v6-tcp"] {
        let up = next(&mut rx, name).await;
        assert_eq!((up.to, up.probes_total), (State::Up, 2), "{up:?}");
    }
    cancel.cancel();
    handle.stopped().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exact_status_is_required_when_configured() {
    let server = Server::start(Mode::Good).await;
    let mut s = http("api", &server.url());
    if let Kind::Http { expect_status, .. } = &mut s.kind {
        *expect_status = 204..=204;
    }
    let (handle, mut rx, cancel) = start(vec![s]);
    let down = next(&mut rx, "api").await;
    assert_eq!((down.from, down.to, down.probes_total), (State::Unknown, State::Down, 3));
    assert!(down.error.unwrap_or_default().contains("answered 200, expected 204"));
    cancel.cancel();
    handle.stopped().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_nobody_listens_on_is_down_after_the_threshold_and_never_up_before() {
    let port = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let (handle, mut rx, cancel) = start(vec![spec("db", Kind::Tcp { address: port.to_string() })]);
    let down = next(&mut rx, "db").await;
    assert_eq!((down.from, down.to, down.probes_total, down.failures_total), (State::Unknown, State::Down, 3, 3));
    assert!(down.error.unwrap_or_default().contains("connect to 127.0.0.1"));
    // Listening now: up after exactly two good probes.
    let _listener = TcpListener::bind(port).await.unwrap();
    let up = next(&mut rx, "db").await;
    assert_eq!((up.from, up.to, up.probes_total - up.failures_total), (State::Down, State::Up, 2));
    cancel.cancel();
    handle.stopped().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_and_restarted_server_goes_down_then_up() {
    let server = Server::start(Mode::Good).await;
    let (handle, mut rx, cancel) =
        start(vec![http("api", &server.url()), spec("tcp", Kind::Tcp { address: server.addr.to_string() })]);
    for name in ["api", "tcp"] {
        assert_eq!(next(&mut rx, name).await.to, State::Up);
    }
    let addr = server.kill().await;
    for name in ["api", "tcp"] {
        let down = next(&mut rx, name).await;
        assert_eq!((down.to, down.failures_total), (State::Down, 3), "{down:?}");
        assert!(down.error.unwrap_or_default().contains("connect to"));
    }
    let _server = Server::on(TcpListener::bind(addr).await.unwrap(), Mode::Good);
    for name in ["api", "tcp"] {
        let up = next(&mut rx, name).await;
        assert_eq!((up.from, up.to), (State::Down, State::Up));
    }
    cancel.cancel();
    handle.stopped().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_targets_never_delay_a_healthy_check() {
    let healthy = Server::start(Mode::Good).await;
    let hanging = Server::start(Mode::Hang).await;
    let mut specs = vec![http("healthy", &healthy.url())];
    specs.extend((0..50).map(|i| http(&format!("hang-{i}"), &hanging.url())));
    let (handle, mut rx, cancel) = start(specs);
    // Wait for every hanging check to be down and a good number of rounds.
    let mut down = 0;
    while down < 50 {
        let t = tokio::time::timeout(DEADLINE, rx.recv()).await.unwrap().unwrap();
        if t.name.starts_with("hang-") {
            assert_eq!((t.to, t.probes_total), (State::Down, 3));
            down += 1;
        }
    }
    let waited = tokio::time::timeout(DEADLINE, async {
        while handle.status("healthy").unwrap().probes_total < 20 {
            tokio::time::sleep(INTERVAL).await;
        }
    });
    waited.await.unwrap();
    let snapshot = handle.snapshot();
    let healthy_status = &snapshot[0];
    assert_eq!((healthy_status.state, healthy_status.failures_total), (State::Up, 0), "{healthy_status:?}");
    // Same interval, so every check has had the same number of rounds, give
    // or take the one its phase puts on either side of this instant.
    for s in &snapshot[1..] {
        assert!(s.probes_total.abs_diff(healthy_status.probes_total) <= 1, "{s:?} vs {healthy_status:?}");
        assert_eq!(s.failures_total, s.probes_total);
    }
    // A timed-out probe closes its connection: at most one per hanging check is open.
    assert!(hanging.open.load(Ordering::SeqCst) <= 50, "{} connections left open", hanging.open.load(Ordering::SeqCst));
    let lags = handle.lag_summary();
    // The healthy check has had 20 rounds; each hanging one at least one fewer.
    assert!(lags.total >= 20 + 50 * 19 && lags.kept as u64 == lags.total, "{lags:?}");
    cancel.cancel();
    tokio::time::timeout(DEADLINE, handle.stopped()).await.unwrap();
}

#[test]
fn invalid_and_duplicate_checks_are_all_reported() {
    let mut bad = spec("slow", Kind::Tcp { address: "127.0.0.1:1".into() });
    bad.timeout = bad.interval;
    let errors = match Engine::new(vec![
        spec("a", Kind::Tcp { address: "127.0.0.1:1".into() }),
        spec("a", Kind::Tcp { address: "127.0.0.1:2".into() }),
        bad,
        spec("b", Kind::Tcp { address: "no-port".into() }),
    ]) {
        Ok(_) => panic!("accepted"),
        Err(e) => e,
    };
    assert_eq!(errors.len(), 3, "{errors:?}");
    assert_eq!(errors[0], SpecError::Duplicate("a".into()));
    assert!(errors[1].to_string().contains("shorter than the interval"));
    assert!(errors[2].to_string().contains("not host:port"));
}

/// A runtime blocked for many intervals (a stalled machine) gets one late
/// probe per check afterwards, not one for every round it missed.
#[test]
fn a_stalled_runtime_gives_no_burst_of_probes() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let interval = Duration::from_secs(1);
        let mut s = spec("db", Kind::Tcp { address: listener.local_addr().unwrap().to_string() });
        (s.interval, s.timeout, s.healthy_threshold) = (interval, Duration::from_millis(500), 1);
        let (handle, mut rx, cancel) = start(vec![s]);
        assert_eq!(next(&mut rx, "db").await.to, State::Up);
        // The only thread of the runtime: no task runs during this.
        std::thread::sleep(interval * 6);
        let before = handle.status("db").unwrap().probes_total;
        tokio::time::sleep(interval / 10).await;
        let after = handle.status("db").unwrap().probes_total;
        // The late round, and at most the next one if it fell due meanwhile.
        assert!(after - before <= 2, "{} probes right after the stall", after - before);
        assert!(handle.lag_summary().max >= interval * 4, "the stall shows in the lags");
        cancel.cancel();
        handle.stopped().await;
    });
}
