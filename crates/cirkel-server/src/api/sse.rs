//! `/api/v1/events/stream`: the daemon's events as server-sent events, one
//! `data:` line of JSON each, as they are recorded. Each client has its own
//! receiver on the broadcast channel and a small queue; a client that reads
//! too slowly misses events (a `lagged` event says how many) and never
//! slows the watchers, whose only cost is the channel's send. A comment
//! every 15 s keeps proxies from closing an idle stream.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Frame;
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};
use tokio::sync::{OwnedSemaphorePermit, broadcast, mpsc};

use super::{Api, Body};

const KEEPALIVE: Duration = Duration::from_secs(15);

/// A body fed by a task that follows the event channel.
struct Stream {
    rx: mpsc::Receiver<Bytes>,
}

impl hyper::body::Body for Stream {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}

/// Starts a stream for one client.
pub fn stream(api: &Arc<Api>) -> Response<Body> {
    let Ok(permit) = api.streams.clone().try_acquire_owned() else {
        return super::problem(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("{} event streams are open already", super::MAX_STREAMS),
            "close another dashboard, or poll GET /api/v1/events",
        );
    };
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let events = api.bus.subscribe();
    tokio::spawn(follow(events, tx, permit));
    let mut r = Response::new(Stream { rx }.boxed());
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

async fn follow(
    mut events: broadcast::Receiver<cirkel_state::Event>,
    tx: mpsc::Sender<Bytes>,
    _permit: OwnedSemaphorePermit,
) {
    if tx.send(Bytes::from_static(b"retry: 3000\n: connected\n\n")).await.is_err() {
        return;
    }
    let mut keepalive = tokio::time::interval(KEEPALIVE);
    keepalive.tick().await;
    loop {
        let chunk = tokio::select! {
            e = events.recv() => match e {
                Ok(e) => match serde_json::to_string(&e) {
                    Ok(j) => format!("event: event\ndata: {j}\n\n"),
                    Err(_) => continue,
                },
                Err(broadcast::error::RecvError::Lagged(n)) => format!("event: lagged\ndata: {{\"missed\":{n}}}\n\n"),
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = keepalive.tick() => ": keepalive\n\n".to_string(),
            _ = tx.closed() => return,
        };
        // A full queue means the client does not read: drop it rather than wait.
        match tx.try_send(Bytes::from(chunk)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {}
            Err(mpsc::error::TrySendError::Closed(_)) => return,
        }
    }
}
