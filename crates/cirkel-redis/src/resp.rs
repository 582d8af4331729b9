//! A small, blocking RESP2 client: enough to probe members, drive the
//! Sentinels and follow their event channels, with a timeout on every
//! connect and reply.

use std::collections::HashMap;
use std::fmt;
use std::io::{BufRead, BufReader, Write};
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
        let mut buf = Vec::with_capacity(64);
        buf.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for a in args {
            buf.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            buf.extend_from_slice(a.as_bytes());
            buf.extend_from_slice(b"\r\n");
        }
        self.reader.get_mut().write_all(&buf).map_err(|source| RespError::Io { addr: self.addr.clone(), source })
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
        read_value(&mut self.reader, 0).map_err(|e| match e {
            ReadError::Io(source) => RespError::Io { addr: self.addr.clone(), source },
            ReadError::Protocol(message) => RespError::Protocol { addr: self.addr.clone(), message },
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

enum ReadError {
    Io(std::io::Error),
    Protocol(String),
}

const MAX_BULK: i64 = 512 << 20;

fn read_value(r: &mut BufReader<TcpStream>, depth: usize) -> Result<Value, ReadError> {
    if depth > 16 {
        return Err(ReadError::Protocol("replies nested too deeply".into()));
    }
    let mut line = Vec::new();
    let n = r.read_until(b'\n', &mut line).map_err(ReadError::Io)?;
    if n == 0 {
        return Err(ReadError::Io(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed")));
    }
    if line.len() < 3 || !line.ends_with(b"\r\n") {
        return Err(ReadError::Protocol(format!("bad reply line {:?}", String::from_utf8_lossy(&line))));
    }
    let body = String::from_utf8_lossy(&line[1..line.len() - 2]).into_owned();
    let number = || body.parse::<i64>().map_err(|_| ReadError::Protocol(format!("bad length `{body}`")));
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
                return Err(ReadError::Protocol(format!("bulk reply of {len} bytes")));
            }
            let mut buf = vec![0; len as usize + 2];
            std::io::Read::read_exact(r, &mut buf).map_err(ReadError::Io)?;
            buf.truncate(len as usize);
            Ok(Value::Bulk(buf))
        }
        b'*' => {
            let len = number()?;
            if len < 0 {
                return Ok(Value::Nil);
            }
            (0..len.min(1 << 20)).map(|_| read_value(r, depth + 1)).collect::<Result<_, _>>().map(Value::Array)
        }
        other => Err(ReadError::Protocol(format!("unknown reply type {:?}", other as char))),
    }
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
