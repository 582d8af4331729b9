//! The control socket: how commands reach a running `cirkel serve`.
//!
//! Requests used to be files dropped in the state directory and answers were
//! found by polling the event log, so anyone who could write there steered
//! the daemon and every caller waited on a timer. Instead the daemon listens
//! on `control.sock` in the state directory (0600 in a 0700 directory), checks
//! each caller's credentials with `SO_PEERCRED` (only its own user and root
//! are served) and answers each request on the same connection once it is
//! done.
//!
//! The protocol is one JSON object a line each way, each with the protocol
//! version `v`, and a line is read up to [`MAX_LINE`] bytes: a caller cannot
//! make the daemon hold more than that.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{Event, StateDir};

/// The protocol version this build speaks.
pub const VERSION: u32 = 1;

/// The longest request or reply line, newline included.
pub const MAX_LINE: usize = 64 * 1024;

/// Connections served at once; more are told to come back.
pub const MAX_CONNECTIONS: usize = 32;

/// The socket's name in the state directory.
pub const SOCKET: &str = "control.sock";

/// What a command asks of the daemon.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    /// Who the daemon is and what it watches.
    Status,
    /// Stops automatic action on a PostgreSQL cluster (durably).
    Pause { cluster: String },
    /// Lets the watcher act on a cluster again.
    Resume { cluster: String },
    /// A planned switchover, now or at `at`.
    Switchover { cluster: String, to: Option<String>, at: Option<DateTime<Utc>> },
}

/// The daemon's answer to one request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Reply {
    Status {
        pid: u32,
        config: Option<PathBuf>,
        clusters: Vec<String>,
        groups: Vec<String>,
    },
    /// A request carried out, in a sentence.
    Done {
        message: String,
    },
    /// A switchover that will happen at `at`.
    Scheduled {
        at: DateTime<Utc>,
    },
    /// The event a switchover recorded: `switchover` or `switchover-failed`.
    Outcome {
        event: Event,
    },
    /// The request was not understood or could not be carried out.
    Error {
        message: String,
    },
    /// The caller may not use this socket.
    Refused {
        message: String,
    },
}

#[derive(Serialize, Deserialize)]
struct Envelope<T> {
    v: u32,
    #[serde(flatten)]
    body: T,
}

/// Why a line could not be read.
#[derive(Debug)]
pub enum FrameError {
    Io(std::io::Error),
    /// More than [`MAX_LINE`] bytes without a newline.
    TooLong,
    /// Not a line of the protocol.
    Malformed(String),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::Io(e) => write!(f, "{e}"),
            FrameError::TooLong => write!(f, "line longer than {MAX_LINE} bytes"),
            FrameError::Malformed(why) => write!(f, "malformed request: {why}"),
        }
    }
}

/// Reads one line of at most [`MAX_LINE`] bytes; `None` at a clean end.
pub fn read_line(r: &mut impl BufRead) -> Result<Option<Vec<u8>>, FrameError> {
    let mut line = Vec::new();
    loop {
        let buf = r.fill_buf().map_err(FrameError::Io)?;
        if buf.is_empty() {
            return if line.is_empty() {
                Ok(None)
            } else {
                Err(FrameError::Malformed("the line ends without a newline".into()))
            };
        }
        let (take, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        if line.len() + take > MAX_LINE {
            return Err(FrameError::TooLong);
        }
        line.extend_from_slice(&buf[..take]);
        r.consume(take);
        if done {
            line.pop();
            return Ok(Some(line));
        }
    }
}

/// Decodes one line: the version first, then the body.
pub fn decode<T: serde::de::DeserializeOwned>(line: &[u8]) -> Result<T, FrameError> {
    #[derive(Deserialize)]
    struct Version {
        v: Option<u32>,
    }
    let v: Version = serde_json::from_slice(line).map_err(|e| FrameError::Malformed(e.to_string()))?;
    match v.v {
        Some(VERSION) => {}
        Some(other) => {
            return Err(FrameError::Malformed(format!("protocol version {other}; this cirkel speaks {VERSION}")));
        }
        None => return Err(FrameError::Malformed("no protocol version `v`".into())),
    }
    let e: Envelope<T> = serde_json::from_slice(line).map_err(|e| FrameError::Malformed(e.to_string()))?;
    Ok(e.body)
}

/// Encodes one line, newline included.
pub fn encode<T: Serialize>(body: &T) -> Vec<u8> {
    let mut line = serde_json::to_vec(&Envelope { v: VERSION, body }).unwrap_or_default();
    line.push(b'\n');
    line
}

/// The peer's process, user and group ids, as the kernel saw them at connect.
pub fn peer_cred(s: &UnixStream) -> std::io::Result<(u32, u32, u32)> {
    let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for writes of the size given.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((cred.pid as u32, cred.uid, cred.gid))
}

/// Whether a peer of `uid` may use a daemon running as `own`.
pub fn allowed(uid: u32, own: u32) -> bool {
    uid == own || uid == 0
}

pub fn socket_path(state: &StateDir) -> PathBuf {
    state.root().join(SOCKET)
}

/// The daemon's side: a bound socket, served by [`Server::run`].
pub struct Server {
    listener: UnixListener,
    path: PathBuf,
}

impl Server {
    /// Binds `control.sock`. A socket file nobody answers on is a daemon's
    /// leftover and is replaced; one a daemon answers on is refused.
    pub fn bind(state: &StateDir) -> anyhow::Result<Server> {
        state.ensure()?;
        let path = socket_path(state);
        if let Ok(meta) = std::fs::symlink_metadata(&path) {
            if !meta.file_type().is_socket() {
                anyhow::bail!("{} exists and is not a socket", path.display());
            }
            if UnixStream::connect(&path).is_ok() {
                anyhow::bail!("another cirkel serve answers on {}", path.display());
            }
            std::fs::remove_file(&path).map_err(|e| anyhow::anyhow!("remove stale {}: {e}", path.display()))?;
        }
        let listener = UnixListener::bind(&path).map_err(|e| anyhow::anyhow!("listen on {}: {e}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| anyhow::anyhow!("chmod {}: {e}", path.display()))?;
        listener.set_nonblocking(true)?;
        Ok(Server { listener, path })
    }

    /// Serves connections until `stop`, one thread each: `handle` answers a
    /// request (it may block, e.g. until a switchover is done); `refused`
    /// hears of every caller turned away (its pid and uid).
    pub fn run(
        &self,
        stop: Arc<AtomicBool>,
        handle: &(dyn Fn(Request) -> Reply + Sync),
        refused: &(dyn Fn(u32, u32) + Sync),
    ) {
        // SAFETY: geteuid cannot fail.
        let own = unsafe { libc::geteuid() };
        let open = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            while !stop.load(Ordering::Relaxed) {
                match self.listener.accept() {
                    Ok((mut conn, _)) if open.load(Ordering::SeqCst) >= MAX_CONNECTIONS => {
                        let _ = conn.set_nonblocking(false);
                        let _ = conn.set_write_timeout(Some(Duration::from_secs(1)));
                        let busy = Reply::Error { message: "too many control connections; try again".into() };
                        let _ = conn.write_all(&encode(&busy));
                    }
                    Ok((conn, _)) => {
                        open.fetch_add(1, Ordering::SeqCst);
                        let open = &open;
                        s.spawn(move || {
                            serve_one(conn, own, handle, refused);
                            open.fetch_sub(1, Ordering::SeqCst);
                        });
                    }
                    // Nothing waiting (or a connection gone before its
                    // accept): look again shortly.
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        });
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn serve_one(
    conn: UnixStream,
    own: u32,
    handle: &(dyn Fn(Request) -> Reply + Sync),
    refused: &(dyn Fn(u32, u32) + Sync),
) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_write_timeout(Some(Duration::from_secs(10)));
    let mut w = match conn.try_clone() {
        Ok(w) => w,
        Err(_) => return,
    };
    match peer_cred(&conn) {
        Ok((pid, uid, _)) if !allowed(uid, own) => {
            refused(pid, uid);
            let msg = format!("uid {uid} may not control this cirkel serve (it serves uid {own} and root)");
            let _ = w.write_all(&encode(&Reply::Refused { message: msg }));
            return;
        }
        Ok(_) => {}
        Err(e) => {
            let _ = w.write_all(&encode(&Reply::Refused { message: format!("cannot check the caller: {e}") }));
            return;
        }
    }
    // A request must arrive promptly; its answer may take as long as the work.
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let mut r = BufReader::new(conn);
    loop {
        let reply = match read_line(&mut r) {
            Ok(None) => return,
            Ok(Some(line)) => match decode::<Request>(&line) {
                Ok(req) => handle(req),
                Err(e) => Reply::Error { message: e.to_string() },
            },
            Err(FrameError::Io(_)) => return,
            Err(e) => {
                // The rest of an oversized line cannot be told from a request.
                let _ = w.write_all(&encode(&Reply::Error { message: e.to_string() }));
                return;
            }
        };
        if w.write_all(&encode(&reply)).is_err() {
            return;
        }
    }
}

/// The caller's side: a connection to the daemon of a state directory.
pub struct Client {
    stream: UnixStream,
}

impl Client {
    /// Connects when a daemon answers; `None` when none does (no socket,
    /// or a stale one) or none can be reached (a directory or socket this
    /// user may not enter: no daemon of theirs, so they act alone, as far
    /// as their own rights go).
    pub fn connect(state: &StateDir) -> anyhow::Result<Option<Client>> {
        let path = socket_path(state);
        match UnixStream::connect(&path) {
            Ok(stream) => Ok(Some(Client { stream })),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound
                        | std::io::ErrorKind::ConnectionRefused
                        | std::io::ErrorKind::PermissionDenied
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(anyhow::anyhow!("connect to {}: {e}", path.display())),
        }
    }

    /// Sends `req` and waits up to `timeout` (forever with `None`) for the reply.
    pub fn call(&mut self, req: &Request, timeout: Option<Duration>) -> anyhow::Result<Reply> {
        self.stream.set_read_timeout(timeout)?;
        self.stream.write_all(&encode(req)).map_err(|e| anyhow::anyhow!("send to cirkel serve: {e}"))?;
        let mut r = BufReader::new(&self.stream);
        match read_line(&mut r) {
            Ok(Some(line)) => decode(&line).map_err(|e| anyhow::anyhow!("reply of cirkel serve: {e}")),
            Ok(None) => anyhow::bail!("cirkel serve closed the connection without a reply"),
            Err(FrameError::Io(e))
                if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) =>
            {
                anyhow::bail!("cirkel serve did not answer within {timeout:?}")
            }
            Err(e) => anyhow::bail!("reply of cirkel serve: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_state() -> (tempfile::TempDir, StateDir) {
        let d = tempfile::tempdir().unwrap();
        let s = StateDir::new(d.path().join("state"));
        (d, s)
    }

    #[test]
    fn requests_and_replies_round_trip_with_their_version() {
        let req = Request::Switchover { cluster: "main".into(), to: Some("b".into()), at: None };
        let line = encode(&req);
        assert!(line.ends_with(b"\n"));
        let text = std::str::from_utf8(&line).unwrap();
        assert!(text.contains("\"v\":1") && text.contains("\"type\":\"switchover\""), "{text}");
        let back: Request = decode(&line[..line.len() - 1]).unwrap();
        assert_eq!(back, req);
        let reply = Reply::Done { message: "ok".into() };
        let line = encode(&reply);
        assert_eq!(decode::<Reply>(&line[..line.len() - 1]).unwrap(), reply);
    }

    #[test]
    fn bad_lines_are_refused() {
        assert!(matches!(decode::<Request>(b"{\"type\":\"status\"}"), Err(FrameError::Malformed(_))));
        assert!(matches!(decode::<Request>(b"{\"v\":9,\"type\":\"status\"}"), Err(FrameError::Malformed(_))));
        assert!(matches!(decode::<Request>(b"{\"v\":1,\"type\":\"explode\"}"), Err(FrameError::Malformed(_))));
        assert!(matches!(decode::<Request>(b"not json"), Err(FrameError::Malformed(_))));
        let long = vec![b'x'; MAX_LINE + 1];
        assert!(matches!(read_line(&mut &long[..]), Err(FrameError::TooLong)));
        let mut two: &[u8] = b"a\nb\n";
        assert_eq!(read_line(&mut two).unwrap().unwrap(), b"a");
        assert_eq!(read_line(&mut two).unwrap().unwrap(), b"b");
        assert!(read_line(&mut two).unwrap().is_none());
    }

    #[test]
    fn the_peer_is_known_and_only_the_owner_and_root_are_allowed() {
        let (a, _b) = UnixStream::pair().unwrap();
        let (pid, uid, _) = peer_cred(&a).unwrap();
        assert_eq!(pid, std::process::id());
        assert_eq!(uid, unsafe { libc::geteuid() });
        assert!(allowed(1000, 1000) && allowed(0, 1000) && !allowed(65534, 1000) && !allowed(1000, 0));
    }

    #[test]
    fn a_server_answers_survives_bad_requests_and_keeps_its_socket() {
        let (_d, state) = temp_state();
        // A leftover socket nobody answers on is replaced.
        state.ensure().unwrap();
        drop(UnixListener::bind(socket_path(&state)).unwrap());
        let server = Server::bind(&state).unwrap();
        let mode = std::fs::metadata(socket_path(&state)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let stop = Arc::new(AtomicBool::new(false));
        std::thread::scope(|s| {
            let st = stop.clone();
            s.spawn(move || {
                server.run(
                    st,
                    &|req| match req {
                        Request::Status => Reply::Done { message: "here".into() },
                        _ => Reply::Error { message: "no".into() },
                    },
                    &|_, _| {},
                )
            });
            // A second daemon does not take the socket.
            let second = Server::bind(&state).err().unwrap().to_string();
            assert!(second.contains("another cirkel serve"), "{second}");
            let mut raw = UnixStream::connect(socket_path(&state)).unwrap();
            raw.write_all(&vec![b'x'; MAX_LINE + 10]).unwrap();
            let reply = read_line(&mut BufReader::new(&raw)).unwrap().unwrap();
            assert!(matches!(decode::<Reply>(&reply).unwrap(), Reply::Error { .. }));
            let mut c = Client::connect(&state).unwrap().unwrap();
            assert_eq!(c.call(&Request::Status, None).unwrap(), Reply::Done { message: "here".into() });
            stop.store(true, Ordering::Relaxed);
        });
        assert!(Client::connect(&state).unwrap().is_none());
    }
}
