//! The dashboard at `/`: one page rendered on the server from the same
//! cached state as the API, with a little plain JavaScript that follows the
//! event stream and fetches the page again when something happens (and
//! every 5 s, for what the collector measures). No build step, no external
//! resources.
//!
//! Signing in: open `/?token=VIEWER_TOKEN` once (or type the token into the
//! form the page shows without one); the page sets an `HttpOnly`,
//! `SameSite=Strict` cookie and sends the browser to `/`, so the token
//! leaves the address bar. The cookie is good for reads only; actions take
//! the operator token as a bearer header.

use std::fmt::Write;
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use serde_json::Value;

use super::view::{DrillView, Objective, SourceView};
use super::{Api, Body, COOKIE, full};
use cirkel_state::EventKind;

/// Escapes text for HTML.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A duration in seconds as people read it.
pub fn human(s: f64) -> String {
    if s < 1.0 {
        format!("{:.0} ms", s * 1000.0)
    } else if s < 120.0 {
        format!("{s:.1} s")
    } else if s < 7200.0 {
        format!("{:.1} min", s / 60.0)
    } else if s < 172_800.0 {
        format!("{:.1} h", s / 3600.0)
    } else {
        format!("{:.1} d", s / 86400.0)
    }
}

fn bytes(b: u64) -> String {
    let b = b as f64;
    if b < 1024.0 * 1024.0 {
        format!("{:.0} KiB", b / 1024.0)
    } else if b < 1024.0 * 1024.0 * 1024.0 {
        format!("{:.1} MiB", b / 1048576.0)
    } else {
        format!("{:.1} GiB", b / 1073741824.0)
    }
}

fn ago(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    format!("{} ago", human((now - t).num_milliseconds().max(0) as f64 / 1000.0))
}

fn objective(o: &Objective, class: &str, source: &str) -> String {
    let value = o.value_s.map(human).unwrap_or_else(|| "unknown".into());
    format!(
        "<span class=\"badge {st} {class}\" data-source=\"{src}\" data-status=\"{st}\" title=\"target {t}\">{v}</span><small> / {t}</small>",
        st = o.status,
        src = esc(source),
        t = human(o.target_s),
        v = esc(&value)
    )
}

impl Api {
    /// `/`: the page, the sign-in form, or the cookie.
    pub(super) fn dashboard(self: &Arc<Self>, req: &Request<Incoming>) -> Response<Body> {
        let query = req.uri().query().unwrap_or("");
        if let Some(t) = super::query_param(query, "token") {
            if self.tokens.role(&t).is_some() {
                let mut r = Response::new(full(""));
                *r.status_mut() = StatusCode::SEE_OTHER;
                r.headers_mut().insert(header::LOCATION, HeaderValue::from_static("/"));
                if let Ok(v) = HeaderValue::from_str(&format!("{COOKIE}={t}; Path=/; HttpOnly; SameSite=Strict")) {
                    r.headers_mut().insert(header::SET_COOKIE, v);
                }
                return r;
            }
            return self.sign_in(req, "That token is not the viewer's or the operator's.");
        }
        let (role, _) = self.role(req, true);
        if role.is_none() {
            return self.sign_in(req, "");
        }
        let now = Utc::now();
        let estate = self.estate.read().map(|e| e.clone()).unwrap_or_default();
        let overview = self.overview(&estate, now);
        let sources = super::view::sources(&self.cfg, &estate, &self.metrics, now);
        let drills = self.events.lock().map(|r| super::view::drills(r.iter().map(|(_, e)| e))).unwrap_or_default();
        let html = page(&render(&overview, &sources, &drills, &estate, now), true);
        let mut r = Response::new(full(html));
        r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
        r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        r.headers_mut().insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(
                "default-src 'self'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src 'self' data:",
            ),
        );
        r
    }

    fn sign_in(&self, req: &Request<Incoming>, why: &str) -> Response<Body> {
        let peer = "dashboard";
        if !why.is_empty() || super::cookie(req, COOKIE).is_some() {
            self.audit(
                EventKind::ApiRefused,
                format!("refused the dashboard: {}", if why.is_empty() { "wrong cookie" } else { "wrong token" }),
                serde_json::json!({ "request": "GET /", "peer": peer, "status": 401, "reason": "wrong token" }),
            );
        }
        let body = format!(
            "<section class=\"card\"><h2>Sign in</h2><p>{}</p><form method=\"get\" action=\"/\">\
             <label>Viewer or operator token <input type=\"password\" name=\"token\" autocomplete=\"current-password\"></label> \
             <button>Open the dashboard</button></form><p><small>The token is in the file of <code>[server] viewer_token_file</code>.</small></p></section>",
            esc(if why.is_empty() { "This dashboard needs the viewer token." } else { why })
        );
        let mut r = Response::new(full(page(&body, false)));
        *r.status_mut() = StatusCode::UNAUTHORIZED;
        r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
        r
    }
}

const STYLE: &str = r#"
*{box-sizing:border-box}body{font:15px/1.4 system-ui,sans-serif;margin:0;background:#f4f5f7;color:#1d2330}
header{background:#1d2330;color:#fff;padding:.6rem 1rem;display:flex;flex-wrap:wrap;gap:.5rem 1.5rem;align-items:baseline}
header h1{font-size:1.1rem;margin:0}main{padding:.8rem;max-width:1200px;margin:auto}
.card{background:#fff;border-radius:8px;padding:.8rem 1rem;margin:0 0 .8rem;box-shadow:0 1px 2px #0002}
.card h2{font-size:1rem;margin:0 0 .5rem}.scroll{overflow-x:auto}
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:.3rem .5rem;border-bottom:1px solid #e3e5ea;white-space:nowrap}
th{font-weight:600;font-size:.85rem;color:#555}
.badge{display:inline-block;padding:.05rem .5rem;border-radius:1rem;font-weight:600}
.green{background:#d8f5df;color:#12652b}.amber{background:#ffedc2;color:#7a5200}.red{background:#ffd9d6;color:#9b1c12}
.unknown{background:#e5e7eb;color:#444}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(320px,1fr));gap:.8rem}
.cal{display:grid;grid-template-columns:repeat(7,1fr);gap:3px;max-width:280px}.cal div{height:22px;border-radius:3px;background:#eceef2;font-size:.65rem;text-align:center;line-height:22px;color:#777}
.cal .b1{background:#9be2ad;color:#12652b}.cal .b2{background:#3fbf68;color:#fff}
small{color:#666}.live{font-size:.8rem}.muted{color:#888}svg{width:100%;max-width:520px;height:auto;display:block;margin:.3rem 0}
@media(max-width:600px){th,td{padding:.25rem .3rem;font-size:.85rem}main{padding:.4rem}}
"#;

const SCRIPT: &str = r#"
(function(){
  var pending=null, live=document.getElementById('live-state');
  function refresh(){
    pending=null;
    fetch('/',{credentials:'same-origin',cache:'no-store'}).then(function(r){return r.ok?r.text():null}).then(function(t){
      if(!t)return;var d=new DOMParser().parseFromString(t,'text/html');var n=d.getElementById('live');
      if(n){document.getElementById('live').innerHTML=n.innerHTML;}
    }).catch(function(){});
  }
  function soon(){if(!pending)pending=setTimeout(refresh,300);}
  setInterval(refresh,5000);
  if(window.EventSource){
    var es=new EventSource('/api/v1/events/stream');
    es.addEventListener('event',function(){soon();});
    es.onopen=function(){if(live)live.textContent='live';};
    es.onerror=function(){if(live)live.textContent='reconnecting';};
  }
})();
"#;

fn page(body: &str, live: bool) -> String {
    let script = if live { SCRIPT } else { "" };
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>cirkel: recoverability</title><style>{STYLE}</style></head><body>\
         <header><h1>cirkel · recoverability</h1><span class=\"live\" id=\"live-state\">…</span></header>\
         <main>{body}</main><script>{script}</script></body></html>"
    )
}

fn render(
    o: &Value,
    sources: &[SourceView],
    drills: &[DrillView],
    estate: &super::estate::Estate,
    now: DateTime<Utc>,
) -> String {
    let mut h = String::new();
    let fresh = o["fresh"].as_bool().unwrap_or(false);
    let _ = write!(h, "<div id=\"live\">");
    let updated = estate.updated.map(|t| ago(t, now)).unwrap_or_else(|| "not yet".into());
    let _ = write!(
        h,
        "<p class=\"muted\" id=\"updated\">Measured {}{}.</p>",
        esc(&updated),
        if fresh { "" } else { " — <span class=\"badge unknown\">stale: shown as unknown</span>" }
    );
    // One row per source.
    let _ = write!(
        h,
        "<section class=\"card\"><h2>Sources: if it failed now</h2><div class=\"scroll\"><table id=\"sources\">\
         <tr><th>Source</th><th>Data lost (RPO)</th><th>Back in (RTO)</th><th>Newest backup</th><th>Recoverable from</th><th>Health</th></tr>"
    );
    for s in sources {
        let health = match s.healthy {
            Some(true) => "<span class=\"badge green\">healthy</span>".to_string(),
            Some(false) => "<span class=\"badge red\">degraded</span>".to_string(),
            None if s.kind == "files" => "<span class=\"muted\">—</span>".to_string(),
            None => "<span class=\"badge unknown\">unknown</span>".to_string(),
        };
        let _ = write!(
            h,
            "<tr data-source=\"{src}\"><td><b>{src}</b></td><td>{rpo}</td><td>{rto}{kind}</td><td>{newest}</td><td>{win}</td><td>{health}</td></tr>",
            src = esc(&s.source),
            rpo = objective(&s.rpo, "rpo", &s.source),
            rto = objective(&s.rto, "rto", &s.source),
            kind = s.rto_kind.as_deref().map(|k| format!(" <small>({})</small>", esc(k))).unwrap_or_default(),
            newest = s
                .newest_backup
                .map(|t| esc(&ago(t, now)))
                .unwrap_or_else(|| "<span class=\"badge red\">none</span>".into()),
            win = s
                .window
                .as_ref()
                .and_then(|w| w.earliest)
                .map(|t| esc(&t.format("%Y-%m-%d %H:%M").to_string()))
                .unwrap_or_else(|| "—".into()),
        );
    }
    let _ = write!(h, "</table></div></section>");

    // Members.
    let _ = write!(
        h,
        "<section class=\"card\"><h2>Members</h2><div class=\"scroll\"><table id=\"members\"><tr><th>Cluster</th><th>Member</th><th>Role</th><th>Zone</th><th>Lag</th><th>Health</th></tr>"
    );
    for c in estate.clusters.values() {
        for m in &c.members {
            let lag = match (m.lag_bytes, m.lag_seconds) {
                _ if m.role == "primary" => "—".to_string(),
                (Some(b), Some(s)) => format!("{} · {}", bytes(b), human(s)),
                (Some(b), None) => bytes(b),
                _ => "unknown".into(),
            };
            let health = if !fresh {
                "<span class=\"badge unknown\">unknown</span>".to_string()
            } else if m.reachable {
                "<span class=\"badge green\">up</span>".to_string()
            } else {
                format!("<span class=\"badge red\" title=\"{}\">down</span>", esc(m.error.as_deref().unwrap_or("")))
            };
            let role = if fresh { m.role.as_str() } else { "unknown" };
            let _ = write!(
                h,
                "<tr class=\"member\" data-member=\"{name}\" data-role=\"{role}\"><td>{c}</td><td><b>{name}</b></td><td>{role}</td><td>{zone}</td><td>{lag}</td><td>{health}</td></tr>",
                c = esc(&c.source),
                name = esc(&m.name),
                role = esc(role),
                zone = esc(m.zone.as_deref().unwrap_or("—")),
                lag = esc(&lag),
            );
        }
    }
    let _ = write!(h, "</table></div></section>");

    // Windows and calendars, per source.
    let _ = write!(h, "<div class=\"grid\">");
    for s in sources {
        let backups = estate.backups.get(&s.source).cloned().unwrap_or_default();
        let windows = estate.windows.get(&s.source).cloned().unwrap_or_default();
        let _ = write!(h, "<section class=\"card\"><h2>{}</h2>", esc(&s.source));
        let _ = write!(h, "{}", timeline(&windows, &backups, now));
        let _ = write!(h, "{}", calendar(&backups, now));
        let _ = write!(h, "</section>");
    }
    let _ = write!(h, "</div>");

    // Alarms, incidents, alerts.
    let _ = write!(
        h,
        "<div class=\"grid\"><section class=\"card\"><h2>Active alarms</h2><div class=\"scroll\"><table id=\"alarms\">"
    );
    let alarms = o["alarms"].as_array().cloned().unwrap_or_default();
    if alarms.is_empty() {
        let _ = write!(h, "<tr><td class=\"muted\">none</td></tr>");
    }
    for a in &alarms {
        let cls = if a["state"] == "ALARM" { "red" } else { "unknown" };
        let labels = a["labels"]
            .as_object()
            .map(|l| l.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or(""))).collect::<Vec<_>>().join(" "))
            .unwrap_or_default();
        let _ = write!(
            h,
            "<tr><td><span class=\"badge {cls}\">{}</span></td><td><b>{}</b> <small>{}</small></td><td>{}</td></tr>",
            esc(a["state"].as_str().unwrap_or("")),
            esc(a["alarm"].as_str().unwrap_or("")),
            esc(&labels),
            esc(a["reason"].as_str().unwrap_or(""))
        );
    }
    let _ = write!(
        h,
        "</table></div></section><section class=\"card\"><h2>Incidents and alerts</h2><div class=\"scroll\"><table id=\"incidents\">"
    );
    let incidents = o["incidents"].as_array().cloned().unwrap_or_default();
    let alerts = o["alerts"].as_array().cloned().unwrap_or_default();
    if incidents.is_empty() && alerts.is_empty() {
        let _ = write!(h, "<tr><td class=\"muted\">none open</td></tr>");
    }
    for i in &incidents {
        let _ = write!(
            h,
            "<tr><td><span class=\"badge red\">{}</span></td><td><b>{}</b></td><td>{}</td></tr>",
            esc(i["priority"].as_str().unwrap_or("")),
            esc(i["title"].as_str().unwrap_or("")),
            esc(i["phase"].as_str().unwrap_or(""))
        );
    }
    for a in &alerts {
        let _ = write!(
            h,
            "<tr><td><span class=\"badge amber\">{}</span></td><td>#{} {}</td><td>{}</td></tr>",
            esc(a["severity"].as_str().unwrap_or("")),
            a["id"],
            esc(a["summary"].as_str().unwrap_or("")),
            if a["acknowledged_by"].is_string() { "acknowledged" } else { "open" }
        );
    }
    let _ = write!(h, "</table></div></section></div>");

    // Drills.
    let _ = write!(
        h,
        "<section class=\"card\"><h2>Drills</h2>{}<div class=\"scroll\"><table id=\"drills\"><tr><th>When</th><th>Source</th><th>Drill</th><th>Result</th><th>RTO</th></tr>",
        trend(drills)
    );
    if drills.is_empty() {
        let _ = write!(
            h,
            "<tr><td colspan=\"5\" class=\"muted\">no drill yet: try <code>cirkel drill failover</code></td></tr>"
        );
    }
    for d in drills.iter().take(20) {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td><span class=\"badge {}\">{}</span></td><td class=\"drill-rto\">{}</td></tr>",
            esc(&d.time.format("%Y-%m-%d %H:%M:%S").to_string()),
            esc(&d.source),
            esc(&d.drill),
            if d.passed { "green" } else { "red" },
            if d.passed { "passed" } else { "failed" },
            d.rto_s.map(human).unwrap_or_else(|| "—".into())
        );
    }
    let _ = write!(h, "</table></div></section>");
    let _ = write!(h, "</div>");
    h
}

/// The recoverable window of each repository over the last 35 days, with now at the right.
fn timeline(
    windows: &[super::estate::WindowView],
    backups: &[super::estate::BackupView],
    now: DateTime<Utc>,
) -> String {
    let span = Duration::days(35);
    let start = now - span;
    let x = |t: DateTime<Utc>| -> f64 {
        let f = (t - start).num_seconds() as f64 / span.num_seconds() as f64;
        (f.clamp(0.0, 1.0) * 340.0) + 10.0
    };
    let mut svg = String::from("<svg class=\"timeline\" viewBox=\"0 0 360 ");
    let rows = windows.len().max(1);
    let height = 14 + rows * 18;
    let _ = write!(svg, "{height}\" role=\"img\" aria-label=\"recoverable window\">");
    if windows.is_empty() {
        let _ = write!(svg, "<text x=\"10\" y=\"22\" font-size=\"11\" fill=\"#888\">no recoverable point known</text>");
    }
    for (i, w) in windows.iter().enumerate() {
        let y = 6 + i * 18;
        let _ = write!(svg, "<rect x=\"10\" y=\"{y}\" width=\"340\" height=\"12\" fill=\"#eceef2\"/>");
        if let (Some(a), Some(b)) = (w.earliest, w.latest) {
            let (xa, xb) = (x(a), x(b));
            let _ = write!(
                svg,
                "<rect x=\"{xa:.1}\" y=\"{y}\" width=\"{:.1}\" height=\"12\" fill=\"#3fbf68\"><title>{}: {} → {}</title></rect>",
                (xb - xa).max(2.0),
                esc(&w.repository),
                a.format("%Y-%m-%d %H:%M"),
                b.format("%Y-%m-%d %H:%M")
            );
        }
        for b in backups.iter().filter(|b| b.repository == w.repository) {
            let _ =
                write!(svg, "<rect x=\"{:.1}\" y=\"{y}\" width=\"1.5\" height=\"12\" fill=\"#12652b\"/>", x(b.time));
        }
        let _ = write!(
            svg,
            "<text x=\"12\" y=\"{}\" font-size=\"9\" fill=\"#1d2330\">{}</text>",
            y + 10,
            esc(&w.repository)
        );
    }
    let _ = write!(
        svg,
        "<text x=\"10\" y=\"{}\" font-size=\"9\" fill=\"#888\">35 days ago</text><text x=\"350\" y=\"{}\" font-size=\"9\" fill=\"#888\" text-anchor=\"end\">now</text></svg>",
        height - 1,
        height - 1
    );
    svg
}

/// A 35-day calendar: one cell per day, darker with more backups.
fn calendar(backups: &[super::estate::BackupView], now: DateTime<Utc>) -> String {
    let today = now.date_naive();
    let mut s = String::from("<div class=\"cal\" aria-label=\"backups in the last 35 days\">");
    for i in (0..35).rev() {
        let day = today - chrono::Days::new(i);
        let n = backups.iter().filter(|b| b.time.date_naive() == day).count();
        let cls = match n {
            0 => "",
            1 => "b1",
            _ => "b2",
        };
        let _ = write!(s, "<div class=\"{cls}\" title=\"{day}: {n} backup(s)\">{}</div>", day.format("%d"));
    }
    s.push_str("</div>");
    s
}

/// The RTO of the passed drills, oldest to newest.
fn trend(drills: &[DrillView]) -> String {
    let points: Vec<f64> = drills.iter().rev().filter(|d| d.passed).filter_map(|d| d.rto_s).collect();
    if points.len() < 2 {
        return String::new();
    }
    let max = points.iter().cloned().fold(0.0_f64, f64::max).max(1.0);
    let step = 340.0 / (points.len() - 1) as f64;
    let coords: Vec<String> = points
        .iter()
        .enumerate()
        .map(|(i, v)| format!("{:.1},{:.1}", 10.0 + i as f64 * step, 70.0 - v / max * 60.0))
        .collect();
    format!(
        "<svg id=\"rto-trend\" viewBox=\"0 0 360 80\" role=\"img\" aria-label=\"RTO of the drills\"><polyline fill=\"none\" stroke=\"#2563eb\" stroke-width=\"2\" points=\"{}\"/>\
         <text x=\"10\" y=\"9\" font-size=\"9\" fill=\"#888\">RTO, max {}</text></svg>",
        coords.join(" "),
        esc(&human(max))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped() {
        assert_eq!(esc("<a href=\"x\">'&'</a>"), "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;");
    }

    #[test]
    fn durations_read_as_people_say_them() {
        assert_eq!(human(0.25), "250 ms");
        assert_eq!(human(3.04), "3.0 s");
        assert_eq!(human(600.0), "10.0 min");
    }
}
