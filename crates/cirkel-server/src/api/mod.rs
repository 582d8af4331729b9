//! The HTTP API (`/api/v1/…`) and the dashboard (`/`) on `[server] listen`.
//!
//! Every answer comes from cached state (the collector's estate, the
//! metrics, the alarm states, the events kept in memory, the alert store),
//! never from a probe, so a dead member or an unreachable repository does
//! not hold a page up. Reads need the viewer token or the operator token;
//! actions (acknowledge an alert, add a silence, pause, resume, switchover)
//! need the operator token, sent as `Authorization: Bearer TOKEN`. Tokens are
//! read from files at start and compared in constant time (equal-length
//! BLAKE3 digests). Every action, and every refused request, is an event
//! (`api-action`, `api-refused`): the audit log. The document of record is
//! `docs/openapi.json`.

pub mod dashboard;
pub mod estate;
pub mod sse;
pub mod tail;
pub mod view;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use chrono::Utc;
use cirkel_config::Config;
use cirkel_state::control::{Reply, Request as ControlRequest};
use cirkel_state::{Event, EventKind, StateDir};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};
use tokio::sync::broadcast;

use crate::metrics::Metrics;
use crate::monitor::{ALARMS_FILE, Published, PublishedCheck};
use view::EventRing;

pub type Body = BoxBody<Bytes, Infallible>;
/// Carries a control request to the daemon's watchers and returns the reply.
pub type Control = Arc<dyn Fn(ControlRequest) -> Reply + Send + Sync>;

/// The largest request body an action takes.
const MAX_BODY: usize = 64 << 10;
/// The cookie the dashboard keeps its token in.
pub const COOKIE: &str = "cirkel_token";
/// At most this many refused requests are written to the event log per
/// second; the rest are counted in the next one written.
const REFUSALS_PER_SECOND: u32 = 10;

/// Who a request comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Viewer,
    Operator,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
        }
    }
}

/// The tokens, kept as digests so a comparison takes the same time
/// whatever the guess.
#[derive(Default)]
pub struct Tokens {
    viewer: Option<blake3::Hash>,
    operator: Option<blake3::Hash>,
}

impl Tokens {
    pub fn new(viewer: Option<&str>, operator: Option<&str>) -> Tokens {
        Tokens {
            viewer: viewer.map(|t| blake3::hash(t.as_bytes())),
            operator: operator.map(|t| blake3::hash(t.as_bytes())),
        }
    }

    /// The role `given` grants, if any. Both digests are compared every
    /// time; `blake3::Hash`'s equality is constant-time.
    pub fn role(&self, given: &str) -> Option<Role> {
        let h = blake3::hash(given.as_bytes());
        let op = self.operator.is_some_and(|o| o == h);
        let vi = self.viewer.is_some_and(|v| v == h);
        if op {
            Some(Role::Operator)
        } else if vi {
            Some(Role::Viewer)
        } else {
            None
        }
    }

    pub fn configured(&self) -> bool {
        self.viewer.is_some() || self.operator.is_some()
    }
}

/// Everything the API reads, all of it cached.
pub struct Api {
    pub cfg: Arc<Config>,
    pub estate: estate::Shared,
    pub metrics: Arc<Metrics>,
    pub state: StateDir,
    pub events: Arc<Mutex<EventRing>>,
    pub bus: broadcast::Sender<Event>,
    pub tokens: Tokens,
    pub control: Control,
    pub store: Option<Arc<cirkel_notify::Store>>,
    pub notifier: Option<Arc<cirkel_notify::Notifier>>,
    pub checks: Arc<Mutex<Vec<PublishedCheck>>>,
    pub streams: Arc<tokio::sync::Semaphore>,
    refusals: Mutex<(Instant, u32, u64)>,
    /// The cirkel binary and its global arguments, to run drills as the
    /// scheduled jobs run (a child process); `None`: drills are not offered.
    pub drill: Option<(std::path::PathBuf, Vec<String>)>,
    drilling: Arc<std::sync::atomic::AtomicBool>,
}

/// The most event streams open at once.
pub const MAX_STREAMS: usize = 200;

impl Api {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cfg: Arc<Config>,
        estate: estate::Shared,
        metrics: Arc<Metrics>,
        state: StateDir,
        events: Arc<Mutex<EventRing>>,
        bus: broadcast::Sender<Event>,
        control: Control,
        notifier: Option<Arc<cirkel_notify::Notifier>>,
        checks: Arc<Mutex<Vec<PublishedCheck>>>,
    ) -> Api {
        let tokens = Tokens::new(
            cfg.server.viewer_token.as_ref().map(|s| s.expose()),
            cfg.server.operator_token.as_ref().map(|s| s.expose()),
        );
        // Without [notify], the store is read if a previous run made one.
        let store = match &notifier {
            Some(n) => Some(n.store.clone()),
            None if state.root().join("cirkel.db").exists() => {
                cirkel_notify::Store::open_in(state.root()).ok().map(Arc::new)
            }
            None => None,
        };
        Api {
            cfg,
            estate,
            metrics,
            state,
            events,
            bus,
            tokens,
            control,
            store,
            notifier,
            checks,
            streams: Arc::new(tokio::sync::Semaphore::new(MAX_STREAMS)),
            refusals: Mutex::new((Instant::now(), 0, 0)),
            drill: None,
            drilling: Arc::default(),
        }
    }

    /// The role of a request's bearer token or dashboard cookie.
    fn role(&self, req: &Request<Incoming>, cookie_ok: bool) -> (Option<Role>, bool) {
        let bearer = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        if let Some(t) = bearer {
            return (self.tokens.role(t), true);
        }
        if cookie_ok && let Some(t) = cookie(req, COOKIE) {
            return (self.tokens.role(&t), true);
        }
        (None, false)
    }

    /// Writes an audit event; refusals beyond the rate are counted instead.
    fn audit(&self, kind: EventKind, message: String, details: Value) {
        let mut details = details;
        if kind == EventKind::ApiRefused {
            let Ok(mut r) = self.refusals.lock() else { return };
            if r.0.elapsed().as_secs() >= 1 {
                *r = (Instant::now(), 0, r.2);
            }
            if r.1 >= REFUSALS_PER_SECOND {
                r.2 += 1;
                return;
            }
            r.1 += 1;
            if r.2 > 0 {
                details["suppressed_before"] = json!(r.2);
                r.2 = 0;
            }
        }
        crate::record(&self.state, &Event::new("api", kind, message).with(details));
    }

    /// Answers one request.
    pub async fn handle(self: &Arc<Self>, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        let path = req.uri().path().to_string();
        let method = req.method().clone();
        if path == "/" || path == "/index.html" {
            return self.dashboard(&req);
        }
        if !path.starts_with("/api/v1/") && path != "/api/v1" {
            return text(StatusCode::NOT_FOUND, "not found: try /, /api/v1/sources, /metrics or /health\n");
        }
        let action = method == Method::POST;
        if !action && method != Method::GET && method != Method::HEAD {
            return problem(StatusCode::METHOD_NOT_ALLOWED, "only GET, HEAD and POST", "reads are GET, actions POST");
        }
        // Actions take the bearer header only: a cookie would let another
        // site's page act with the dashboard's session.
        let (role, presented) = self.role(&req, !action);
        let what = format!("{method} {path}");
        let refuse = |status: StatusCode, why: &str| {
            self.audit(
                EventKind::ApiRefused,
                format!("refused {what} from {}: {why}", peer.ip()),
                json!({ "request": what, "peer": peer.ip().to_string(), "status": status.as_u16(), "reason": why,
                        "role": role.map(|r| r.as_str()) }),
            );
        };
        let Some(role) = role else {
            let why = if !self.tokens.configured() {
                "no tokens are configured"
            } else if presented {
                "wrong token"
            } else {
                "no token"
            };
            refuse(StatusCode::UNAUTHORIZED, why);
            let hint = if self.tokens.configured() {
                "send `Authorization: Bearer TOKEN` with the viewer or operator token ([server] viewer_token_file, operator_token_file)"
            } else {
                "set [server] viewer_token_file and operator_token_file and restart cirkel serve"
            };
            let mut r = problem(StatusCode::UNAUTHORIZED, &format!("unauthorized: {why}"), hint);
            r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"cirkel\""));
            return r;
        };
        if action && role < Role::Operator {
            refuse(StatusCode::FORBIDDEN, "a viewer token cannot act");
            return problem(
                StatusCode::FORBIDDEN,
                "forbidden: this action needs the operator token",
                "use the token of [server] operator_token_file",
            );
        }
        let rest = path.trim_start_matches("/api/v1").trim_start_matches('/').to_string();
        let query = req.uri().query().unwrap_or("").to_string();
        if action {
            let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
                Ok(b) => Ok(b.to_bytes()),
                Err(e) => Err((
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("cannot read the body: {e}"),
                    "send at most 64 KiB of JSON",
                )),
            };
            let body: Result<Value, _> = body.and_then(|b| {
                if b.is_empty() {
                    return Ok(json!({}));
                }
                serde_json::from_slice(&b)
                    .map_err(|e| (StatusCode::BAD_REQUEST, format!("the body is not JSON: {e}"), "send a JSON object"))
            });
            return match body {
                Ok(body) => self.act(&rest, body, peer).await,
                Err((status, error, hint)) => {
                    self.audit(
                        EventKind::ApiAction,
                        format!("api operator tried: POST /api/v1/{rest} from {}", peer.ip()),
                        json!({ "action": rest.split('/').next(), "request": format!("POST /api/v1/{rest}"), "by": "api operator",
                                "peer": peer.ip().to_string(), "role": "operator", "status": status.as_u16(), "error": error }),
                    );
                    problem(status, &error, hint)
                }
            };
        }
        if rest == "events/stream" {
            return sse::stream(self);
        }
        let api = self.clone();
        let head = method == Method::HEAD;
        let r = tokio::task::spawn_blocking(move || api.read(&rest, &query)).await;
        let r = r.unwrap_or_else(|e| Err((StatusCode::INTERNAL_SERVER_ERROR, format!("{e}"), String::new())));
        let mut resp = match r {
            Ok(v) => json_response(StatusCode::OK, &v),
            Err((status, msg, hint)) => problem(status, &msg, &hint),
        };
        if head {
            *resp.body_mut() = Full::new(Bytes::new()).boxed();
        }
        resp
    }

    fn read(&self, rest: &str, query: &str) -> Result<Value, (StatusCode, String, String)> {
        let now = Utc::now();
        let q = |k: &str| query_param(query, k);
        let estate = self.estate.read().map(|e| e.clone()).unwrap_or_default();
        let not_found =
            |what: String| (StatusCode::NOT_FOUND, what, "GET /api/v1/sources lists what there is".to_string());
        let store_err = |e: cirkel_notify::Error| {
            (StatusCode::SERVICE_UNAVAILABLE, format!("the alert store: {e}"), "see the daemon's log".to_string())
        };
        Ok(match rest {
            "" => json!({ "version": 1, "endpoints": [
                "sources", "clusters", "repositories", "backups", "windows", "alarms", "checks", "alerts",
                "incidents", "drills", "events", "events/stream", "overview"] }),
            "overview" => self.overview(&estate, now),
            "sources" => {
                json!({ "updated": estate.updated, "sources": view::sources(&self.cfg, &estate, &self.metrics, now) })
            }
            s if s.starts_with("sources/") => {
                let name = &s["sources/".len()..];
                let v = view::sources(&self.cfg, &estate, &self.metrics, now);
                let src =
                    v.into_iter().find(|x| x.source == name).ok_or_else(|| not_found(format!("no source {name}")))?;
                json!({
                    "source": src,
                    "cluster": estate.clusters.get(name),
                    "backups": estate.backups.get(name).into_iter().flatten().map(|b| {
                        let mut v = json!(b);
                        v["source"] = json!(name);
                        v
                    }).collect::<Vec<_>>(),
                    "windows": estate.windows.get(name).cloned().unwrap_or_default(),
                })
            }
            "clusters" => json!({
                "updated": estate.updated,
                "fresh": view::fresh(&estate, now),
                "clusters": estate.clusters.values().collect::<Vec<_>>(),
            }),
            "repositories" => {
                json!({ "updated": estate.updated, "repositories": estate.repositories.values().collect::<Vec<_>>() })
            }
            "backups" => {
                let list: Vec<_> = estate
                    .backups
                    .iter()
                    .filter(|(s, _)| q("source").is_none_or(|w| &w == *s))
                    .flat_map(|(s, l)| l.iter().map(move |b| json!({ "source": s, "backup": b })))
                    .map(|v| {
                        let mut b = v["backup"].clone();
                        b["source"] = v["source"].clone();
                        b
                    })
                    .collect();
                json!({ "updated": estate.updated, "backups": list })
            }
            "windows" => {
                let list: Vec<Value> = estate
                    .windows
                    .iter()
                    .flat_map(|(s, l)| {
                        l.iter().map(move |w| {
                            let mut v = json!(w);
                            v["source"] = json!(s);
                            v
                        })
                    })
                    .collect();
                json!({ "updated": estate.updated, "windows": list })
            }
            "alarms" => {
                let p = self.published();
                json!({ "updated": p.updated, "alarms": p.alarms })
            }
            "checks" => {
                let checks = self.checks.lock().map(|c| c.clone()).unwrap_or_default();
                json!({ "checks": checks })
            }
            "alerts" => {
                let all = q("all").as_deref() == Some("true");
                let rows = match &self.store {
                    Some(s) => s.alerts(all).map_err(store_err)?,
                    None => Vec::new(),
                };
                json!({ "alerts": rows })
            }
            "incidents" => {
                let all = q("all").as_deref() == Some("true");
                let rows = match &self.store {
                    Some(s) => s.incidents(all).map_err(store_err)?,
                    None => Vec::new(),
                };
                json!({ "incidents": rows })
            }
            "drills" => {
                let ring = self.events.lock().map_err(|_| not_found("events".into()))?;
                json!({ "drills": view::drills(ring.iter().map(|(_, e)| e)) })
            }
            "events" => {
                let limit = q("limit").and_then(|l| l.parse::<usize>().ok()).unwrap_or(100).clamp(1, 1000);
                let before = q("before").and_then(|b| b.parse::<u64>().ok());
                let (kind, source) = (q("kind"), q("source"));
                let keep = |e: &Event| {
                    kind.as_deref().is_none_or(|k| e.kind.as_str() == k)
                        && source.as_deref().is_none_or(|s| e.source == s)
                };
                let ring = self.events.lock().map_err(|_| not_found("events".into()))?;
                let page = ring.page(before, limit, &keep);
                let next = if page.len() == limit { page.last().map(|(s, _)| *s) } else { None };
                json!({
                    "events": page.iter().map(|(seq, e)| {
                        let mut v = json!(e);
                        v["seq"] = json!(seq);
                        v
                    }).collect::<Vec<_>>(),
                    "next_before": next,
                })
            }
            other => return Err(not_found(format!("no endpoint /api/v1/{other}"))),
        })
    }

    fn published(&self) -> Published {
        self.state.load_json::<Published>(ALARMS_FILE).ok().flatten().unwrap_or_default()
    }

    /// Everything the dashboard shows, in one answer.
    pub fn overview(&self, estate: &estate::Estate, now: chrono::DateTime<Utc>) -> Value {
        let published = self.published();
        let alarms: Vec<_> = published.alarms.iter().filter(|a| a.state == "ALARM").collect();
        let alerts = self.store.as_ref().and_then(|s| s.alerts(false).ok()).unwrap_or_default();
        let incidents = self.store.as_ref().and_then(|s| s.incidents(false).ok()).unwrap_or_default();
        let drills = self.events.lock().map(|r| view::drills(r.iter().map(|(_, e)| e))).unwrap_or_default();
        json!({
            "now": now,
            "updated": estate.updated,
            "fresh": view::fresh(estate, now),
            "sources": view::sources(&self.cfg, estate, &self.metrics, now),
            "clusters": estate.clusters.values().collect::<Vec<_>>(),
            "repositories": estate.repositories.values().collect::<Vec<_>>(),
            "alarms": alarms,
            "alerts": alerts,
            "incidents": incidents,
            "drills": drills,
        })
    }

    /// Carries out an action for an operator, audited whatever its outcome.
    async fn act(self: &Arc<Self>, rest: &str, body: Value, peer: SocketAddr) -> Response<Body> {
        let parts: Vec<&str> = rest.split('/').collect();
        let by = body
            .get("by")
            .and_then(|b| b.as_str())
            .map(|b| format!("{b} (api)"))
            .unwrap_or_else(|| "api operator".into());
        let api = self.clone();
        let (action, target) = (parts.first().copied().unwrap_or("").to_string(), rest.to_string());
        let outcome: Result<Value, (StatusCode, String, String)> = match parts.as_slice() {
            ["alerts", id, "ack"] => {
                let Ok(id) = id.parse::<i64>() else {
                    return problem(
                        StatusCode::BAD_REQUEST,
                        &format!("`{id}` is not an alert id"),
                        "GET /api/v1/alerts lists them",
                    );
                };
                let by = by.clone();
                blocking(move || {
                    let r = match (&api.notifier, &api.store) {
                        (Some(n), _) => n.acknowledge(id, &by, Utc::now()),
                        (None, Some(s)) => s.acknowledge(id, &by, Utc::now()),
                        (None, None) => {
                            return Err((
                                StatusCode::NOT_FOUND,
                                "there is no alert store".into(),
                                "configure [notify.NAME]".into(),
                            ));
                        }
                    };
                    r.map(|row| json!({ "alert": row })).map_err(|e| {
                        (
                            StatusCode::NOT_FOUND,
                            format!("cannot acknowledge alert {id}: {e}"),
                            "GET /api/v1/alerts lists the open alerts".into(),
                        )
                    })
                })
                .await
            }
            ["silences"] => {
                let by = by.clone();
                blocking(move || silence(&api, &body, &by)).await
            }
            ["clusters", cluster, "drill"] => self.start_drill(cluster),
            ["clusters", cluster, op @ ("pause" | "resume" | "switchover")] => {
                let cluster = cluster.to_string();
                let req = match *op {
                    "pause" => ControlRequest::Pause { cluster },
                    "resume" => ControlRequest::Resume { cluster },
                    _ => {
                        let to = body.get("to").and_then(|v| v.as_str()).map(String::from);
                        let at = match body.get("at").and_then(|v| v.as_str()) {
                            Some(a) => match chrono::DateTime::parse_from_rfc3339(a) {
                                Ok(t) => Some(t.with_timezone(&Utc)),
                                Err(e) => {
                                    return problem(
                                        StatusCode::BAD_REQUEST,
                                        &format!("`at`: {e}"),
                                        "write an RFC 3339 time, e.g. 2026-12-06T03:00:00Z",
                                    );
                                }
                            },
                            None => None,
                        };
                        ControlRequest::Switchover { cluster, to, at }
                    }
                };
                let control = self.control.clone();
                blocking(move || match control(req) {
                    Reply::Error { message } => Err((StatusCode::CONFLICT, message, "see GET /api/v1/clusters".into())),
                    Reply::Outcome { event } if event.kind == EventKind::SwitchoverFailed => Err((
                        StatusCode::CONFLICT,
                        event.message,
                        "see GET /api/v1/events?kind=switchover-failed".into(),
                    )),
                    r => Ok(json!({ "reply": r })),
                })
                .await
            }
            _ => Err((StatusCode::NOT_FOUND, format!("no action /api/v1/{rest}"), "see docs/openapi.json".into())),
        };
        let (status, ok) = match &outcome {
            Ok(_) => (StatusCode::OK, true),
            Err((s, _, _)) => (*s, false),
        };
        self.audit(
            EventKind::ApiAction,
            format!("{by} {}: POST /api/v1/{target} from {}", if ok { "did" } else { "tried" }, peer.ip()),
            json!({ "action": action, "request": format!("POST /api/v1/{target}"), "by": by, "peer": peer.ip().to_string(),
                    "role": "operator", "status": status.as_u16(),
                    "error": outcome.as_ref().err().map(|(_, m, _)| m.clone()) }),
        );
        match outcome {
            Ok(v) => json_response(StatusCode::OK, &v),
            Err((s, m, h)) => problem(s, &m, &h),
        }
    }
}

type Outcome = Result<Value, (StatusCode, String, String)>;

impl Api {
    /// Starts `cirkel drill failover --cluster NAME` as a child process; its
    /// report arrives as a `drill` event (GET /api/v1/drills). One at a time.
    fn start_drill(&self, cluster: &str) -> Outcome {
        use std::sync::atomic::Ordering;
        let Some((exe, global)) = &self.drill else {
            return Err((
                StatusCode::NOT_FOUND,
                "this daemon runs no drills".into(),
                "run `cirkel drill failover`".into(),
            ));
        };
        if self.cfg.postgres.get(cluster).is_none_or(|c| c.members.is_empty()) {
            return Err((
                StatusCode::NOT_FOUND,
                format!("no postgres cluster `{cluster}` with members"),
                "GET /api/v1/clusters lists them".into(),
            ));
        }
        if self.drilling.swap(true, Ordering::SeqCst) {
            return Err((
                StatusCode::CONFLICT,
                "a drill is running".into(),
                "wait for its event in GET /api/v1/drills".into(),
            ));
        }
        let mut c = std::process::Command::new(exe);
        c.args(global).args(["drill", "failover", "--cluster", cluster]);
        c.stdin(std::process::Stdio::null()).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped());
        let child = match c.spawn() {
            Ok(ch) => ch,
            Err(e) => {
                self.drilling.store(false, Ordering::SeqCst);
                return Err((
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("cannot start the drill: {e}"),
                    "see the daemon's log".into(),
                ));
            }
        };
        let (pid, drilling, cluster) = (child.id(), self.drilling.clone(), cluster.to_string());
        std::thread::spawn(move || {
            match child.wait_with_output() {
                Ok(out) if !out.status.success() => {
                    tracing::warn!("the drill of {cluster} failed: {}", String::from_utf8_lossy(&out.stderr).trim())
                }
                Err(e) => tracing::warn!("the drill of {cluster}: {e}"),
                Ok(_) => {}
            }
            drilling.store(false, Ordering::SeqCst);
        });
        Ok(json!({ "started": true, "pid": pid }))
    }
}

async fn blocking(f: impl FnOnce() -> Outcome + Send + 'static) -> Outcome {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err((StatusCode::INTERNAL_SERVER_ERROR, format!("{e}"), "see the daemon's log".into())))
}

fn silence(api: &Api, body: &Value, by: &str) -> Outcome {
    let bad = |m: String| {
        (
            StatusCode::BAD_REQUEST,
            m,
            "send {\"matchers\": [\"cluster=main\"], \"duration\": \"2h\", \"reason\": \"…\"}".to_string(),
        )
    };
    let Some(store) = &api.store else {
        return Err((StatusCode::NOT_FOUND, "there is no alert store".into(), "configure [notify.NAME]".into()));
    };
    let matchers: Vec<cirkel_notify::route::Matcher> = body
        .get("matchers")
        .and_then(|m| m.as_array())
        .ok_or_else(|| bad("`matchers` is missing".into()))?
        .iter()
        .map(|m| {
            let s = m.as_str().ok_or_else(|| bad("each matcher is a string".into()))?;
            cirkel_notify::route::Matcher::parse(s).map_err(|e| bad(format!("matcher `{s}`: {e}")))
        })
        .collect::<Result<_, _>>()?;
    if matchers.is_empty() {
        return Err(bad("a silence needs at least one matcher".into()));
    }
    let duration = body.get("duration").and_then(|d| d.as_str()).ok_or_else(|| bad("`duration` is missing".into()))?;
    let d = humantime::parse_duration(duration).map_err(|e| bad(format!("duration `{duration}`: {e}")))?;
    let now = Utc::now();
    let until = now + chrono::Duration::from_std(d).map_err(|e| bad(format!("duration: {e}")))?;
    let reason = body.get("reason").and_then(|r| r.as_str()).unwrap_or("silenced through the API");
    let id = store.add_silence(&matchers, until, reason, by, now).map_err(|e| {
        (StatusCode::SERVICE_UNAVAILABLE, format!("cannot add the silence: {e}"), "see the daemon's log".to_string())
    })?;
    Ok(json!({ "id": id, "until": until }))
}

/// The value of `key` in a query string (`+` and `%XX` decoded).
pub fn query_param(query: &str, key: &str) -> Option<String> {
    query.split('&').filter_map(|p| p.split_once('=')).find(|(k, _)| *k == key).map(|(_, v)| decode(v))
}

fn decode(v: &str) -> String {
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16) {
                    Ok(x) => {
                        out.push(x);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The value of cookie `name`.
fn cookie(req: &Request<Incoming>, name: &str) -> Option<String> {
    req.headers().get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).find_map(|v| {
        v.split(';')
            .map(str::trim)
            .filter_map(|c| c.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    })
}

pub fn full(body: impl Into<Bytes>) -> Body {
    Full::new(body.into()).boxed()
}

pub fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

fn json_response(status: StatusCode, v: &Value) -> Response<Body> {
    let mut r = Response::new(full(serde_json::to_vec(v).unwrap_or_default()));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// An error as JSON: what went wrong and what to do.
fn problem(status: StatusCode, error: &str, hint: &str) -> Response<Body> {
    json_response(status, &json!({ "error": error, "hint": hint }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_grant_their_role_and_nothing_else() {
        let t = Tokens::new(Some("viewer-token-0123456789"), Some("operator-token-0123456789"));
        assert_eq!(t.role("viewer-token-0123456789"), Some(Role::Viewer));
        assert_eq!(t.role("operator-token-0123456789"), Some(Role::Operator));
        assert_eq!(t.role("viewer-token-012345678"), None);
        assert_eq!(t.role(""), None);
        assert!(Role::Viewer < Role::Operator);
        let none = Tokens::default();
        assert_eq!(none.role(""), None);
        assert!(!none.configured());
    }

    #[test]
    fn query_parameters_decode() {
        assert_eq!(query_param("a=1&source=postgres%2Fmain&b=x+y", "source").as_deref(), Some("postgres/main"));
        assert_eq!(query_param("b=x+y", "b").as_deref(), Some("x y"));
        assert_eq!(query_param("b=%zz%", "b").as_deref(), Some("%zz%"));
        assert_eq!(query_param("", "b"), None);
    }
}
