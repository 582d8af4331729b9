//! The daemon's HTTP server (`[server] listen`): `/metrics` for Prometheus
//! (OpenMetrics when the client asks for it, else the Prometheus text format)
//! and `/health` for whoever watches cirkel itself, without a token; the
//! API (`/api/v1/…`) and the dashboard (`/`) behind tokens (`crate::api`).
//! One task per connection, at most [`MAX_CONNECTIONS`] at once, each with
//! a deadline for its request head and for its whole life (an event stream
//! lives on until the client leaves or the daemon stops), so a slow client
//! cannot hold the server.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio_util::sync::CancellationToken;

use crate::api::{Api, Body, full};
use crate::metrics::Metrics;

pub const MAX_CONNECTIONS: usize = 256;
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Serves until `cancel`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    api: Option<Arc<Api>>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::debug!("metrics endpoint accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = cancel.cancelled() => return Ok(()),
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!("{MAX_CONNECTIONS} connections open, closing one from {peer}");
            continue;
        };
        let (metrics, api, cancel, tls) = (metrics.clone(), api.clone(), cancel.clone(), tls.clone());
        let streaming = Arc::new(AtomicBool::new(false));
        tokio::spawn(async move {
            // The handshake gets the same deadline as a request's head.
            let io = match tls {
                None => Conn::Plain(stream),
                Some(acceptor) => match tokio::time::timeout(HEAD_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(s)) => Conn::Tls(Box::new(s)),
                    Ok(Err(e)) => {
                        tracing::debug!("TLS handshake with {peer}: {e}");
                        return;
                    }
                    Err(_) => return,
                },
            };
            let flag = streaming.clone();
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let (metrics, api, flag) = (metrics.clone(), api.clone(), flag.clone());
                async move {
                    let response = match respond(&req, &metrics) {
                        Some(r) => r,
                        None => match &api {
                            Some(api) => {
                                if req.uri().path() == "/api/v1/events/stream" {
                                    flag.store(true, Ordering::Relaxed);
                                }
                                api.handle(req, peer).await
                            }
                            None => not_found(),
                        },
                    };
                    Ok::<_, Infallible>(response)
                }
            });
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new()).header_read_timeout(HEAD_TIMEOUT).max_buf_size(16 * 1024).half_close(true);
            let connection = http.serve_connection(TokioIo::new(io), service);
            tokio::pin!(connection);
            let result = tokio::select! {
                r = &mut connection => Some(r),
                _ = tokio::time::sleep(CONNECTION_TIMEOUT) => None,
                _ = cancel.cancelled() => None,
            };
            // An event stream outlives the deadline, until the client leaves or the daemon stops.
            let result = match result {
                None if streaming.load(Ordering::Relaxed) && !cancel.is_cancelled() => tokio::select! {
                    r = &mut connection => Some(r),
                    _ = cancel.cancelled() => None,
                },
                r => r,
            };
            if let Some(Err(e)) = result {
                tracing::debug!("http connection from {peer}: {e}");
            }
            drop(slot);
        });
    }
}

/// A connection, in the clear or over TLS.
enum Conn {
    Plain(tokio::net::TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>),
}

impl tokio::io::AsyncRead for Conn {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for Conn {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => std::pin::Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Binds `addr`, with an error that says what to change.
pub fn bind(addr: SocketAddr) -> anyhow::Result<std::net::TcpListener> {
    let l = std::net::TcpListener::bind(addr)
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr} ([server] listen): {e}"))?;
    l.set_nonblocking(true)?;
    Ok(l)
}

fn not_found() -> Response<Body> {
    let mut r = Response::new(full("not found: try /metrics or /health (the API needs [server] tokens)\n"));
    *r.status_mut() = StatusCode::NOT_FOUND;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}

/// `/metrics` and `/health`; `None` for everything else.
fn respond(req: &Request<Incoming>, metrics: &Arc<Metrics>) -> Option<Response<Body>> {
    let (status, kind, body) = match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/metrics") => {
            let open = req
                .headers()
                .get(header::ACCEPT)
                .and_then(|a| a.to_str().ok())
                .is_some_and(|a| a.contains("application/openmetrics-text"));
            if open {
                (StatusCode::OK, OPENMETRICS, metrics.encode())
            } else {
                (StatusCode::OK, PROMETHEUS_TEXT, metrics.encode_text())
            }
        }
        (&Method::GET | &Method::HEAD, "/health") => {
            (StatusCode::OK, "application/json", r#"{"status":"ok"}"#.to_string())
        }
        (_, "/metrics" | "/health") => (StatusCode::METHOD_NOT_ALLOWED, "text/plain", "only GET and HEAD\n".into()),
        _ => return None,
    };
    let body = if req.method() == Method::HEAD { String::new() } else { body };
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    Some(r)
}

/// Fetches `url` (http:// only) and returns the status and at most 16 MiB
/// of body, for scraping a Prometheus endpoint. The caller bounds the time.
pub async fn get(url: &str) -> anyhow::Result<(u16, String)> {
    use http_body_util::{BodyExt, Empty, Limited};
    let u = url::Url::parse(url).map_err(|e| anyhow::anyhow!("bad URL {url}: {e}"))?;
    anyhow::ensure!(u.scheme() == "http", "only http:// URLs can be scraped, not {url}");
    let host = u.host_str().ok_or_else(|| anyhow::anyhow!("{url} names no host"))?.to_string();
    let port = u.port_or_known_default().unwrap_or(80);
    let addr_host = host.trim_start_matches('[').trim_end_matches(']').to_string();
    let stream = tokio::net::TcpStream::connect((addr_host.as_str(), port))
        .await
        .map_err(|e| anyhow::anyhow!("connect to {host}:{port}: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let path = match u.query() {
        Some(q) => format!("{}?{q}", u.path()),
        None => u.path().to_string(),
    };
    let req = Request::get(path)
        .header(header::HOST, format!("{host}:{port}"))
        .header(header::USER_AGENT, "cirkel")
        .header(header::ACCEPT, "text/plain;version=0.0.4")
        .header(header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())?;
    let resp = sender.send_request(req).await?;
    let status = resp.status().as_u16();
    let body = Limited::new(resp.into_body(), 16 << 20)
        .collect()
        .await
        .map_err(|e| anyhow::anyhow!("read the body of {url}: {e}"))?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}
