//! Real receivers for the tests: an HTTP server on a free loopback port
//! that records every request and answers as told, and a real SMTP server
//! (aiosmtpd) writing the mail it accepts to a directory.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use chrono::{DateTime, Utc};
use cirkel_notify::{AlertInput, Labels, Severity, Status, alert_key};

/// How the server answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Ok,
    Status(u16),
    /// Never answers.
    Hang,
}

#[derive(Clone, Debug)]
pub struct Request {
    pub path: String,
    pub headers: BTreeMap<String, String>,
    pub body: String,
}

impl Request {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap()
    }

    pub fn form(&self) -> Vec<(String, String)> {
        url_decode_form(&self.body)
    }
}

fn url_decode_form(s: &str) -> Vec<(String, String)> {
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 3 <= bytes.len() => {
                out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

pub struct HttpReceiver {
    pub addr: SocketAddr,
    pub mode: Arc<Mutex<Mode>>,
    pub requests: Arc<Mutex<Vec<Request>>>,
    task: Option<JoinHandle<()>>,
}

impl HttpReceiver {
    pub async fn start() -> HttpReceiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut r = HttpReceiver {
            addr: listener.local_addr().unwrap(),
            mode: Arc::new(Mutex::new(Mode::Ok)),
            requests: Arc::default(),
            task: None,
        };
        r.serve(listener);
        r
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }

    /// Stops listening: connections are refused until [`HttpReceiver::restart`].
    pub fn stop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }

    /// Listens again on the same port.
    pub async fn restart(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("rebind {}: {e}", self.addr),
            }
        };
        self.serve(listener);
    }

    fn serve(&mut self, listener: TcpListener) {
        let (mode, requests) = (self.mode.clone(), self.requests.clone());
        self.task = Some(tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let (mode, requests) = (mode.clone(), requests.clone());
                conns.spawn(async move {
                    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let (mode, requests) = (mode.clone(), requests.clone());
                        async move {
                            let path = req.uri().path().to_string();
                            let headers = req
                                .headers()
                                .iter()
                                .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
                                .collect();
                            let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                            let body = String::from_utf8_lossy(&body).to_string();
                            requests.lock().unwrap().push(Request { path, headers, body });
                            let m = *mode.lock().unwrap();
                            let status = match m {
                                Mode::Ok => 200,
                                Mode::Status(s) => s,
                                Mode::Hang => {
                                    std::future::pending::<()>().await;
                                    200
                                }
                            };
                            Ok::<_, std::convert::Infallible>(
                                hyper::Response::builder().status(status).body(Full::new(Bytes::from("ok"))).unwrap(),
                            )
                        }
                    });
                    let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
                });
            }
        }));
    }
}

impl Drop for HttpReceiver {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits for `cond`, up to a generous deadline.
pub async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A real SMTP server (aiosmtpd) on a free loopback port.
pub struct SmtpServer {
    pub port: u16,
    pub dir: PathBuf,
    child: Child,
    _tmp: tempfile::TempDir,
}

const SMTP_SCRIPT: &str = r#"
import sys, time, pathlib, itertools, warnings
warnings.simplefilter("ignore")
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
port, out, auth = int(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3]
counter = itertools.count()
class Handler:
    async def handle_DATA(self, server, session, envelope):
        (out / f"{next(counter):04}.eml").write_bytes(envelope.content)
        return "250 OK"
def authenticator(server, session, envelope, mechanism, auth_data):
    ok = auth == "accept" and auth_data.login == b"cirkel" and auth_data.password == b"s3cret"
    return AuthResult(success=ok, handled=False)
kwargs = {}
if auth != "none":
    kwargs = dict(authenticator=authenticator, auth_require_tls=False, auth_required=True, auth_exclude_mechanism=["LOGIN"])
c = Controller(Handler(), hostname="127.0.0.1", port=port, **kwargs)
c.start()
print("ready", flush=True)
while True:
    time.sleep(3600)
"#;

impl SmtpServer {
    /// `auth`: "none", "accept" (user cirkel, password s3cret) or "reject".
    pub fn start(auth: &str) -> SmtpServer {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("mail");
        std::fs::create_dir(&dir).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut child = Command::new("python3")
            .args(["-c", SMTP_SCRIPT, &port.to_string(), dir.to_str().unwrap(), auth])
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 with aiosmtpd (pip install aiosmtpd) is required");
        let mut line = String::new();
        use std::io::BufRead;
        std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready", "aiosmtpd did not start; is it installed (pip install aiosmtpd)?");
        SmtpServer { port, dir, child, _tmp: tmp }
    }

    pub fn mails(&self) -> Vec<String> {
        let mut names: Vec<_> = std::fs::read_dir(&self.dir).unwrap().map(|e| e.unwrap().path()).collect();
        names.sort();
        names.iter().map(|p| std::fs::read_to_string(p).unwrap()).collect()
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn path_exists(p: &Path) -> bool {
    p.exists()
}

/// An alert about `name` on the PostgreSQL cluster `cluster`.
pub fn input(name: &str, cluster: &str, severity: Severity, status: Status, at: DateTime<Utc>) -> AlertInput {
    let source = format!("postgres/{cluster}");
    let labels: Labels = BTreeMap::from([
        ("alertname".to_string(), name.to_string()),
        ("cluster".to_string(), cluster.to_string()),
        ("source".to_string(), source.clone()),
    ]);
    AlertInput {
        key: alert_key(name, &labels),
        name: name.to_string(),
        source,
        severity,
        labels,
        summary: format!("{name} on {cluster}"),
        status,
        at,
        details: serde_json::Value::Null,
    }
}
