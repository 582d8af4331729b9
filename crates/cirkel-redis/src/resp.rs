//! A small, blocking RESP2 client: enough to probe members, drive the
//! Sentinels and follow their event channels, with a timeout on every
//! connect and reply.

use std::collections::HashMap;
use std::fmt;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// A `host:port` address of a Redis server or Sentinel.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct Addr {
    pub host: String,
    pub port: u16,
}

impl Addr {
    /// Parses `host:port` or `[v6]:port`.
    pub fn parse(s: &str) -> Result<Addr, String> {
        let (host, port) = s.rsplit_once(':').ok_or_else(|| format!("`{s}` is not host:port"))?;
        let port = port.parse().map_err(|_| format!("`{s}`: `{port}` is not a port number"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(format!("`{s}` has no host"));
        }
        Ok(Addr { host: host.to_string(), port })
    }

    pub fn new(host: &str, port: u16) -> Addr {
        Addr { host: host.to_string(), port }
    }
}

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// A reply.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Nil,
    Status(String),
    Error(String),
    Int(i64),
    Bulk(Vec<u8>),
    Array(Vec<Value>),
}

impl Value {
    /// The reply as text, for status, bulk and integer replies.
    pub fn text(&self) -> Option<String> {
        match self {
            Value::Status(s) => Some(s.clone()),
            Value::Bulk(b) => Some(String::from_utf8_lossy(b).into_owned()),
            Value::Int(i) => Some(i.to_string()),
            _ => None,
        }
    }

    pub fn int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            other => other.text()?.parse().ok(),
        }
    }

    pub fn array(&self) -> &[Value] {
        match self {
            Value::Array(a) => a,
            _ => &[],
        }
    }

    /// A flat `[key, value, key, value, …]` array as a map (SENTINEL MASTER).
    pub fn pairs(&self) -> HashMap<String, String> {
        self.array().chunks(2).filter_map(|kv| Some((kv.first()?.text()?, kv.get(1)?.text()?))).collect()
    }
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum RespError {
    #[error("{addr}: {source}")]
    Io { addr: Addr, source: std::io::Error },
    #[error("{addr}: {message}")]
    Server { addr: Addr, message: String },
    #[error("{addr}: protocol error: {message}")]
    Protocol { addr: Addr, message: String },
}

impl RespError {
    /// The server answered with an error (as opposed to not answering).
    pub fn is_server(&self) -> bool {
        matches!(self, RespError::Server { .. })
    }
}

/// One connection.
pub struct Conn {
    pub addr: Addr,
    reader: BufReader<TcpStream>,
}

impl fmt::Debug for Conn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Conn").field("addr", &self.addr).finish()
    }
}

impl Conn {
    /// Connects with `timeout` for the connection and for every reply, and
    /// authenticates when a password is given.
    pub fn connect(addr: &Addr, timeout: Duration, password: Option<&str>) -> Result<Conn, RespError> {
        let io = |source| RespError::Io { addr: addr.clone(), source };
        let sock = (addr.host.as_str(), addr.port)
            .to_socket_addrs()
            .map_err(io)?
            .next()
            .ok_or_else(|| io(std::io::Error::new(std::io::ErrorKind::NotFound, "no address")))?;
        let stream = TcpStream::connect_timeout(&sock, timeout).map_err(io)?;
        stream.set_nodelay(true).map_err(io)?;
        stream.set_read_timeout(Some(timeout)).map_err(io)?;
        stream.set_write_timeout(Some(timeout)).map_err(io)?;
        let mut conn = Conn { addr: addr.clone(), reader: BufReader::new(stream) };
        if let Some(p) = password {
            conn.cmd(&["AUTH", p])?;
        }
        Ok(conn)
    }

    /// Sends one command and reads its reply; an error reply is an `Err`.
    pub fn cmd(&mut self, args: &[&str]) -> Result<Value, RespError> {
        self.send(args)?;
        match self.read()? {
            Value::Error(message) => Err(RespError::Server { addr: self.addr.clone(), message }),
            v => Ok(v),
        }
    }

    /// Sends one command without reading a reply (pipelining, SUBSCRIBE).
    pub fn send(&mut self, args: &[&str]) -> Result<(), RespError> {
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        self.reader
            .get_mut()
            .write_all(&encode(&args))
            .map_err(|source| RespError::Io { addr: self.addr.clone(), source })
    }

    /// Changes the reply timeout (`None`: wait forever, for event channels).
    pub fn set_timeout(&mut self, timeout: Option<Duration>) -> Result<(), RespError> {
        self.reader
            .get_ref()
            .set_read_timeout(timeout)
            .map_err(|source| RespError::Io { addr: self.addr.clone(), source })
    }

    /// Reads one reply.
    pub fn read(&mut self) -> Result<Value, RespError> {
        read_reply(&mut self.reader).map_err(|e| match e {
            ReplyError::Io(source) => RespError::Io { addr: self.addr.clone(), source },
            ReplyError::Protocol(message) => RespError::Protocol { addr: self.addr.clone(), message },
        })
    }

    /// `INFO section` as a map of its `key:value` lines.
    pub fn info(&mut self, section: &str) -> Result<HashMap<String, String>, RespError> {
        let text = self.cmd(&["INFO", section])?.text().unwrap_or_default();
        Ok(parse_info(&text))
    }
}

/// Parses INFO text.
pub fn parse_info(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

/// Why a reply could not be read.
#[derive(Debug)]
pub enum ReplyError {
    Io(std::io::Error),
    Protocol(String),
}

/// The longest bulk reply taken (a server's INFO or an RDB-sized value).
pub const MAX_BULK: i64 = 512 << 20;
/// The most elements of one array reply.
pub const MAX_ARRAY: i64 = 1 << 20;
/// The longest reply line (status, error, integer, length).
pub const MAX_LINE: usize = 64 << 10;
/// How deeply arrays may nest.
pub const MAX_DEPTH: usize = 16;

/// Reads one reply. Lengths and counts are checked against the limits
/// above before anything is allocated, and memory grows only with the
/// bytes actually received, so a peer that announces a huge reply and
/// sends little costs little.
pub fn read_reply<R: BufRead>(r: &mut R) -> Result<Value, ReplyError> {
    read_value(r, 0)
}

fn read_value<R: BufRead>(r: &mut R, depth: usize) -> Result<Value, ReplyError> {
    if depth > MAX_DEPTH {
        return Err(ReplyError::Protocol("replies nested too deeply".into()));
    }
    let mut line = Vec::new();
    let n = r.by_ref().take(MAX_LINE as u64).read_until(b'\n', &mut line).map_err(ReplyError::Io)?;
    if n == 0 {
        return Err(ReplyError::Io(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed")));
    }
    if line.len() < 3 || !line.ends_with(b"\r\n") {
        let shown: String = String::from_utf8_lossy(&line).chars().take(80).collect();
        return Err(ReplyError::Protocol(format!("bad reply line {shown:?}")));
    }
    let body = String::from_utf8_lossy(&line[1..line.len() - 2]).into_owned();
    let number = || body.parse::<i64>().map_err(|_| ReplyError::Protocol(format!("bad length `{body}`")));
    match line[0] {
        b'+' => Ok(Value::Status(body)),
        b'-' => Ok(Value::Error(body)),
        b':' => Ok(Value::Int(number()?)),
        b'$' => {
            let len = number()?;
            if len < 0 {
                return Ok(Value::Nil);
            }
            if len > MAX_BULK {
                return Err(ReplyError::Protocol(format!("bulk reply of {len} bytes")));
            }
            let want = len as u64 + 2;
            let mut buf = Vec::with_capacity(want.min(64 << 10) as usize);
            r.by_ref().take(want).read_to_end(&mut buf).map_err(ReplyError::Io)?;
            if buf.len() as u64 != want {
                return Err(ReplyError::Io(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "bulk reply cut short",
                )));
            }
            if !buf.ends_with(b"\r\n") {
                return Err(ReplyError::Protocol("bulk reply not followed by CRLF".into()));
            }
            buf.truncate(len as usize);
            Ok(Value::Bulk(buf))
        }
        b'*' => {
            let len = number()?;
            if len < 0 {
                return Ok(Value::Nil);
            }
            if len > MAX_ARRAY {
                return Err(ReplyError::Protocol(format!("array reply of {len} elements")));
            }
            let mut items = Vec::with_capacity(len.min(1024) as usize);
            for _ in 0..len {
                items.push(read_value(r, depth + 1)?);
            }
            Ok(Value::Array(items))
        }
        other => Err(ReplyError::Protocol(format!("unknown reply type {:?}", other as char))),
    }
}

/// A command encoded as a RESP array of bulk strings.
pub fn encode(args: &[&[u8]]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(64);
    buf.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        buf.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        buf.extend_from_slice(a);
        buf.extend_from_slice(b"\r\n");
    }
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_and_print() {
        assert_eq!(Addr::parse("127.0.0.1:6379").unwrap(), Addr::new("127.0.0.1", 6379));
        assert_eq!(Addr::parse("[::1]:26379").unwrap().to_string(), "[::1]:26379");
        assert!(Addr::parse("nohost").is_err());
        assert!(Addr::parse(":1").is_err());
        assert!(Addr::parse("h:99999").is_err());
    }

    #[test]
    fn info_text_parses() {
        let m = parse_info("# Replication\r\nrole:master\r\nconnected_slaves:1\r\nslave0:ip=a,port=1\r\n");
        assert_eq!(m["role"], "master");
        assert_eq!(m["slave0"], "ip=a,port=1");
    }
}
