//! A small S3 client for the calls a bucket backup needs: listing objects
//! and their versions, reading an object with its metadata in one answer,
//! and writing objects back (whole or in parts).
//!
//! It speaks S3's REST API directly, signed with SigV4, rather than through
//! `object_store` (which the repository backend uses): `object_store` maps
//! keys onto its own path type, which cannot hold keys S3 allows (`a//b`, a
//! trailing or leading `/`, `.` segments), and has no call for versions.
//! Listings ask for URL-encoded keys so that any key round-trips.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use cirkel_repo::backend::S3Options;
use reqwest::{Method, StatusCode};

use crate::Error;
use crate::xml;

/// Headers kept with an object besides its user metadata.
pub const STANDARD_HEADERS: [&str; 6] =
    ["content-type", "content-encoding", "content-disposition", "content-language", "cache-control", "expires"];

/// An object or an object version, as a listing or a read describes it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObjectEntry {
    pub key: String,
    pub size: u64,
    /// The ETag without its quotes.
    pub etag: String,
    pub modified: Option<DateTime<Utc>>,
    /// Set in versioned listings.
    pub version_id: Option<String>,
    pub is_latest: bool,
    pub delete_marker: bool,
}

/// What a read or HEAD returns about an object besides its bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObjectHead {
    pub size: u64,
    pub etag: String,
    pub modified: Option<DateTime<Utc>>,
    pub version_id: Option<String>,
    /// [`STANDARD_HEADERS`] that were set, by their lower-case name.
    pub headers: BTreeMap<String, String>,
    /// User metadata (`x-amz-meta-NAME`), by NAME.
    pub metadata: BTreeMap<String, String>,
}

struct Credentials {
    key_id: String,
    secret: String,
    token: Option<String>,
}

/// A bucket (and an optional key prefix) on an S3-compatible server.
pub struct Bucket {
    http: reqwest::Client,
    /// `scheme://host[:port]` plus `/bucket` for path-style addressing.
    base: url::Url,
    host: String,
    region: String,
    credentials: Option<Credentials>,
    retry_timeout: Duration,
    pub name: String,
    /// Keys below this prefix are the bucket's objects ("" or ending in `/`).
    pub prefix: String,
}

impl fmt::Debug for Bucket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bucket").field("name", &self.name).field("prefix", &self.prefix).finish()
    }
}

/// `s3://bucket[/prefix]` → (bucket, prefix ending in `/` or empty).
pub fn parse_url(url: &str) -> Result<(String, String), Error> {
    let rest = url
        .strip_prefix("s3://")
        .or_else(|| url.strip_prefix("S3://"))
        .ok_or_else(|| Error::config(format!("`{url}` is not an s3:// URL"), "write it as s3://BUCKET[/PREFIX]"))?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(Error::config(format!("`{url}` names no bucket"), "write it as s3://BUCKET[/PREFIX]"));
    }
    let prefix = prefix.trim_matches('/');
    let prefix = if prefix.is_empty() { String::new() } else { format!("{prefix}/") };
    Ok((bucket.to_string(), prefix))
}

impl Bucket {
    /// Connects (lazily) to the bucket an `s3://` URL names. Settings left
    /// unset come from `AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY` and `AWS_SESSION_TOKEN`.
    pub fn open(url: &str, opts: &S3Options) -> Result<Bucket, Error> {
        let (name, prefix) = parse_url(url)?;
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let endpoint = opts.endpoint.clone().or_else(|| env("AWS_ENDPOINT_URL")).or_else(|| env("AWS_ENDPOINT"));
        let region = opts
            .region
            .clone()
            .or_else(|| env("AWS_REGION"))
            .or_else(|| env("AWS_DEFAULT_REGION"))
            .unwrap_or_else(|| "us-east-1".into());
        let base = match &endpoint {
            Some(e) => {
                let mut u = url::Url::parse(e).map_err(|err| {
                    Error::config(
                        format!("the S3 endpoint `{e}` is not a URL: {err}"),
                        "write it as http(s)://HOST[:PORT]",
                    )
                })?;
                if !u.username().is_empty() || u.password().is_some() {
                    return Err(Error::config(
                        "the S3 endpoint URL contains credentials",
                        "remove them from the URL and set access_key_id and secret_access_key_file",
                    ));
                }
                let allow_http = opts.allow_http.unwrap_or(true);
                if u.scheme() == "http" && !allow_http {
                    return Err(Error::config(
                        format!("the S3 endpoint {e} is plain HTTP and allow_http is false"),
                        "use an https:// endpoint, or set allow_http = true for a private network",
                    ));
                }
                let path = format!("{}/{}", u.path().trim_end_matches('/'), encode_key(&name));
                u.set_path(&path);
                u
            }
            None => url::Url::parse(&format!("https://{name}.s3.{region}.amazonaws.com")).map_err(|e| {
                Error::config(format!("bucket `{name}` gives no valid URL: {e}"), "check the bucket name")
            })?,
        };
        let host = match (base.host_str(), base.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_string(),
            (None, _) => return Err(Error::config("the S3 endpoint has no host", "write it as http(s)://HOST[:PORT]")),
        };
        let credentials = match (
            opts.access_key_id.clone().or_else(|| env("AWS_ACCESS_KEY_ID")),
            opts.secret_access_key.clone().or_else(|| env("AWS_SECRET_ACCESS_KEY")),
        ) {
            (Some(key_id), Some(secret)) => Some(Credentials { key_id, secret, token: env("AWS_SESSION_TOKEN") }),
            _ => None,
        };
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .read_timeout(Duration::from_secs(120))
            .pool_max_idle_per_host(64)
            .build()
            .map_err(|e| Error::config(format!("start the HTTP client: {e}"), "check the system's TLS setup"))?;
        Ok(Bucket {
            http,
            base,
            host,
            region,
            credentials,
            retry_timeout: opts.retry_timeout.unwrap_or(Duration::from_secs(120)),
            name,
            prefix,
        })
    }

    /// `s3://bucket/prefix`, for messages.
    pub fn location(&self) -> String {
        format!("s3://{}/{}", self.name, self.prefix.trim_end_matches('/'))
    }

    fn url(&self, key: Option<&str>, query: &str) -> String {
        let mut s = self.base.as_str().trim_end_matches('/').to_string();
        s.push('/');
        if let Some(k) = key {
            s.push_str(&encode_key(k));
        }
        if !query.is_empty() {
            s.push('?');
            s.push_str(query);
        }
        s
    }

    /// Sends a signed request, retrying connection failures, 5xx and 429
    /// answers with backoff until the retry timeout; other answers return.
    async fn send(
        &self,
        method: Method,
        key: Option<&str>,
        query: &[(&str, &str)],
        headers: &[(String, String)],
        body: Bytes,
    ) -> Result<reqwest::Response, Error> {
        let mut q: Vec<(String, String)> = query.iter().map(|(k, v)| (encode(k), encode(v))).collect();
        q.sort();
        let query_string = q.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&");
        let url = self.url(key, &query_string);
        let what = format!("{method} {}", key.map(|k| self.display_key(k)).unwrap_or_else(|| self.location()));
        let start = Instant::now();
        let mut pause = Duration::from_millis(100);
        loop {
            let mut req = self.http.request(method.clone(), &url).body(body.clone());
            for (k, v) in headers {
                req = req.header(k.as_str(), v.as_str());
            }
            for (k, v) in self.sign(&method, key, &query_string, headers) {
                req = req.header(k, v);
            }
            let retry_detail = match req.send().await {
                Ok(resp) if resp.status().is_server_error() || resp.status() == StatusCode::TOO_MANY_REQUESTS => {
                    format!("the server answered {}", resp.status())
                }
                Ok(resp) => return Ok(resp),
                Err(e) => error_chain(&e),
            };
            if start.elapsed() + pause > self.retry_timeout {
                return Err(Error::Unavailable { what, detail: retry_detail });
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(5));
        }
    }

    fn display_key(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.name)
    }

    /// SigV4 headers for a request whose payload is not signed.
    fn sign(
        &self,
        method: &Method,
        key: Option<&str>,
        query: &str,
        headers: &[(String, String)],
    ) -> Vec<(String, String)> {
        let Some(c) = &self.credentials else {
            return Vec::new();
        };
        let now = Utc::now();
        let amz_date = now.format("%Y%m%dT%H%M%SZ").to_string();
        let day = now.format("%Y%m%d").to_string();
        let payload = "UNSIGNED-PAYLOAD";
        let mut signed: Vec<(String, String)> = vec![
            ("host".into(), self.host.clone()),
            ("x-amz-content-sha256".into(), payload.into()),
            ("x-amz-date".into(), amz_date.clone()),
        ];
        if let Some(t) = &c.token {
            signed.push(("x-amz-security-token".into(), t.clone()));
        }
        for (k, v) in headers {
            signed.push((k.to_ascii_lowercase(), v.trim().to_string()));
        }
        signed.sort();
        let mut path = self.base.path().trim_end_matches('/').to_string();
        path.push('/');
        if let Some(k) = key {
            path.push_str(&encode_key(k));
        }
        let canonical_headers: String = signed.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
        let signed_names = signed.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>().join(";");
        let canonical = format!("{method}\n{path}\n{query}\n{canonical_headers}\n{signed_names}\n{payload}");
        let scope = format!("{day}/{}/s3/aws4_request", self.region);
        let to_sign = format!(
            "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
            hex::encode(ring::digest::digest(&ring::digest::SHA256, canonical.as_bytes()))
        );
        let mac = |key: &[u8], data: &str| {
            ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key), data.as_bytes()).as_ref().to_vec()
        };
        let k = mac(format!("AWS4{}", c.secret).as_bytes(), &day);
        let k = mac(&k, &self.region);
        let k = mac(&k, "s3");
        let k = mac(&k, "aws4_request");
        let signature = hex::encode(mac(&k, &to_sign));
        let mut out = vec![
            ("x-amz-content-sha256".to_string(), payload.to_string()),
            ("x-amz-date".to_string(), amz_date),
            (
                "authorization".to_string(),
                format!(
                    "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_names}, Signature={signature}",
                    c.key_id
                ),
            ),
        ];
        if let Some(t) = &c.token {
            out.push(("x-amz-security-token".into(), t.clone()));
        }
        out
    }

    /// Turns an answer that is not a success into an error naming `what`.
    async fn check(&self, what: &str, resp: reqwest::Response) -> Result<reqwest::Response, Error> {
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let body = resp.text().await.unwrap_or_default();
        let code = xml::parse(&body)
            .ok()
            .map(|e| format!("{}: {}", e.text_of("Code").unwrap_or_default(), e.text_of("Message").unwrap_or_default()))
            .unwrap_or_else(|| body.chars().take(200).collect());
        let detail = format!("{status} {code}");
        Err(match status {
            StatusCode::NOT_FOUND if !code.starts_with("NoSuchBucket") => Error::NotFound { what: what.into() },
            _ => Error::Refused { what: what.into(), detail },
        })
    }

    /// Every current object below the prefix, in key order.
    pub async fn list(&self) -> Result<Vec<ObjectEntry>, Error> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        let what = format!("list {}", self.location());
        loop {
            let mut q = vec![("list-type", "2"), ("encoding-type", "url"), ("prefix", self.prefix.as_str())];
            if let Some(t) = &token {
                q.push(("continuation-token", t.as_str()));
            }
            let resp = self.send(Method::GET, None, &q, &[], Bytes::new()).await?;
            let doc = self.read_xml(&what, resp).await?;
            for c in doc.children_named("Contents") {
                let key = decode(c.text_of("Key").unwrap_or_default());
                out.push(ObjectEntry {
                    size: c.text_of("Size").and_then(|s| s.parse().ok()).unwrap_or(0),
                    etag: unquote(c.text_of("ETag").unwrap_or_default()),
                    modified: c.text_of("LastModified").and_then(parse_iso),
                    key,
                    version_id: None,
                    is_latest: true,
                    delete_marker: false,
                });
            }
            match (doc.text_of("IsTruncated"), doc.text_of("NextContinuationToken")) {
                (Some("true"), Some(t)) if !t.is_empty() => token = Some(t.to_string()),
                _ => break,
            }
        }
        Ok(out)
    }

    /// Every version and delete marker below the prefix, in S3's order: by
    /// key, newest version first.
    pub async fn list_versions(&self) -> Result<Vec<ObjectEntry>, Error> {
        let mut out = Vec::new();
        let mut markers: Option<(String, String)> = None;
        let what = format!("list versions of {}", self.location());
        loop {
            let mut q = vec![("versions", ""), ("encoding-type", "url"), ("prefix", self.prefix.as_str())];
            if let Some((k, v)) = &markers {
                q.push(("key-marker", k.as_str()));
                q.push(("version-id-marker", v.as_str()));
            }
            let resp = self.send(Method::GET, None, &q, &[], Bytes::new()).await?;
            let doc = self.read_xml(&what, resp).await?;
            for c in &doc.children {
                let delete_marker = match c.name.as_str() {
                    "Version" => false,
                    "DeleteMarker" => true,
                    _ => continue,
                };
                out.push(ObjectEntry {
                    key: decode(c.text_of("Key").unwrap_or_default()),
                    size: c.text_of("Size").and_then(|s| s.parse().ok()).unwrap_or(0),
                    etag: unquote(c.text_of("ETag").unwrap_or_default()),
                    modified: c.text_of("LastModified").and_then(parse_iso),
                    version_id: c.text_of("VersionId").map(String::from),
                    is_latest: c.text_of("IsLatest") == Some("true"),
                    delete_marker,
                });
            }
            match (doc.text_of("IsTruncated"), doc.text_of("NextKeyMarker")) {
                (Some("true"), Some(k)) => {
                    markers = Some((decode(k), doc.text_of("NextVersionIdMarker").unwrap_or_default().to_string()))
                }
                _ => break,
            }
        }
        Ok(out)
    }

    async fn read_xml(&self, what: &str, resp: reqwest::Response) -> Result<xml::Element, Error> {
        let resp = self.check(what, resp).await?;
        let text = resp.text().await.map_err(|e| Error::Unavailable { what: what.into(), detail: error_chain(&e) })?;
        xml::parse(&text).map_err(|e| Error::Refused { what: what.into(), detail: format!("unreadable answer: {e}") })
    }

    /// Starts reading an object (a version of it, if given): its head, and
    /// the answer whose body is read with [`Bucket::next_chunk`]. One answer
    /// carries one version of the object, never a mix.
    pub async fn get(&self, key: &str, version: Option<&str>) -> Result<(ObjectHead, reqwest::Response), Error> {
        self.fetch(Method::GET, key, version).await
    }

    /// An object's head alone.
    pub async fn head(&self, key: &str, version: Option<&str>) -> Result<ObjectHead, Error> {
        Ok(self.fetch(Method::HEAD, key, version).await?.0)
    }

    async fn fetch(
        &self,
        method: Method,
        key: &str,
        version: Option<&str>,
    ) -> Result<(ObjectHead, reqwest::Response), Error> {
        let full = format!("{}{key}", self.prefix);
        let q: Vec<(&str, &str)> = version.map(|v| vec![("versionId", v)]).unwrap_or_default();
        let what = format!("read {}", self.display_key(&full));
        let resp = self.send(method, Some(&full), &q, &[], Bytes::new()).await?;
        let resp = self.check(&what, resp).await?;
        let h = resp.headers();
        let text = |name: &str| h.get(name).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        let mut head = ObjectHead {
            size: text("content-length").and_then(|s| s.parse().ok()).unwrap_or(0),
            etag: unquote(&text("etag").unwrap_or_default()),
            modified: text("last-modified")
                .and_then(|s| DateTime::parse_from_rfc2822(&s).ok())
                .map(|d| d.with_timezone(&Utc)),
            version_id: text("x-amz-version-id").filter(|v| v != "null"),
            ..ObjectHead::default()
        };
        for name in STANDARD_HEADERS {
            if let Some(v) = text(name) {
                head.headers.insert(name.to_string(), v);
            }
        }
        for (name, value) in h {
            if let Some(m) = name.as_str().strip_prefix("x-amz-meta-") {
                head.metadata.insert(m.to_string(), String::from_utf8_lossy(value.as_bytes()).into_owned());
            }
        }
        Ok((head, resp))
    }

    /// The next piece of an object being read; `None` at its end.
    pub async fn next_chunk(&self, key: &str, resp: &mut reqwest::Response) -> Result<Option<Bytes>, Error> {
        resp.chunk().await.map_err(|e| Error::Unavailable {
            what: format!("read {}", self.display_key(&format!("{}{key}", self.prefix))),
            detail: error_chain(&e),
        })
    }

    fn write_headers(head: &ObjectHead) -> Vec<(String, String)> {
        let mut h: Vec<(String, String)> = head.headers.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        h.extend(head.metadata.iter().map(|(k, v)| (format!("x-amz-meta-{k}"), v.clone())));
        h
    }

    /// Writes an object whole, with the head's content headers and metadata.
    pub async fn put(&self, key: &str, head: &ObjectHead, body: Bytes) -> Result<(), Error> {
        let full = format!("{}{key}", self.prefix);
        let what = format!("write {}", self.display_key(&full));
        let resp = self.send(Method::PUT, Some(&full), &[], &Self::write_headers(head), body).await?;
        self.check(&what, resp).await?;
        Ok(())
    }

    /// Starts a multipart upload; returns its id.
    pub async fn start_upload(&self, key: &str, head: &ObjectHead) -> Result<String, Error> {
        let full = format!("{}{key}", self.prefix);
        let what = format!("start writing {}", self.display_key(&full));
        let resp =
            self.send(Method::POST, Some(&full), &[("uploads", "")], &Self::write_headers(head), Bytes::new()).await?;
        let doc = self.read_xml(&what, resp).await?;
        doc.text_of("UploadId")
            .map(String::from)
            .ok_or_else(|| Error::Refused { what, detail: "the answer holds no UploadId".into() })
    }

    /// Uploads part `number` (from 1); returns its ETag.
    pub async fn put_part(&self, key: &str, upload: &str, number: u32, body: Bytes) -> Result<String, Error> {
        let full = format!("{}{key}", self.prefix);
        let what = format!("write part {number} of {}", self.display_key(&full));
        let n = number.to_string();
        let resp =
            self.send(Method::PUT, Some(&full), &[("partNumber", n.as_str()), ("uploadId", upload)], &[], body).await?;
        let resp = self.check(&what, resp).await?;
        let etag = resp.headers().get("etag").map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        etag.ok_or_else(|| Error::Refused { what, detail: "the answer holds no ETag".into() })
    }

    /// Completes a multipart upload from its parts' ETags, in order.
    pub async fn finish_upload(&self, key: &str, upload: &str, etags: &[String]) -> Result<(), Error> {
        let full = format!("{}{key}", self.prefix);
        let what = format!("complete {}", self.display_key(&full));
        let mut body = String::from("<CompleteMultipartUpload>");
        for (i, e) in etags.iter().enumerate() {
            body.push_str(&format!("<Part><PartNumber>{}</PartNumber><ETag>{}</ETag></Part>", i + 1, escape(e)));
        }
        body.push_str("</CompleteMultipartUpload>");
        let resp =
            self.send(Method::POST, Some(&full), &[("uploadId", upload)], &[], Bytes::from(body.into_bytes())).await?;
        // S3 may answer 200 with an error document when completion fails late.
        let doc = self.read_xml(&what, resp).await?;
        if doc.name == "Error" {
            return Err(Error::Refused { what, detail: doc.text_of("Message").unwrap_or("failed").to_string() });
        }
        Ok(())
    }

    /// Abandons a multipart upload (its parts are freed).
    pub async fn abort_upload(&self, key: &str, upload: &str) -> Result<(), Error> {
        let full = format!("{}{key}", self.prefix);
        let what = format!("abort writing {}", self.display_key(&full));
        let resp = self.send(Method::DELETE, Some(&full), &[("uploadId", upload)], &[], Bytes::new()).await?;
        self.check(&what, resp).await?;
        Ok(())
    }

    /// Deletes an object (in a versioned bucket: adds a delete marker).
    pub async fn delete(&self, key: &str) -> Result<(), Error> {
        let full = format!("{}{key}", self.prefix);
        let what = format!("delete {}", self.display_key(&full));
        let resp = self.send(Method::DELETE, Some(&full), &[], &[], Bytes::new()).await?;
        self.check(&what, resp).await?;
        Ok(())
    }

    /// Whether any object is below the prefix (one listing page).
    pub async fn is_empty(&self) -> Result<bool, Error> {
        let what = format!("list {}", self.location());
        let q = [("list-type", "2"), ("encoding-type", "url"), ("prefix", self.prefix.as_str()), ("max-keys", "1")];
        let resp = self.send(Method::GET, None, &q, &[], Bytes::new()).await?;
        let doc = self.read_xml(&what, resp).await?;
        Ok(doc.child("Contents").is_none())
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// URI-encodes everything but S3's unreserved characters.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if unreserved(b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A key in a URL path: every byte encoded but unreserved ones and `/`,
/// except that a key with a `.` or `..` segment (which URL handling would
/// fold away) has its slashes encoded too.
fn encode_key(key: &str) -> String {
    if key.split('/').any(|s| s == "." || s == "..") {
        return encode(key);
    }
    key.split('/').map(encode).collect::<Vec<_>>().join("/")
}

/// Decodes a URL-encoded key from a listing (`encoding-type=url`).
fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
            continue;
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn unquote(s: &str) -> String {
    s.trim().trim_matches('"').to_string()
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn parse_iso(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s).ok().map(|d| d.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_encode_and_decode_byte_for_byte() {
        for k in ["a b/c+d", "a//b/", "/lead", "ü/ñ?#&=%", "x/../y", "./z", "~tilde_-."] {
            assert_eq!(decode(&encode(k)), k);
        }
        assert_eq!(encode_key("a b//c"), "a%20b//c");
        assert_eq!(encode_key("x/../y"), "x%2F..%2Fy");
        assert_eq!(decode("a+b%2B"), "a b+");
        assert_eq!(parse_url("s3://b/p/q/").unwrap(), ("b".to_string(), "p/q/".to_string()));
        assert_eq!(parse_url("s3://b").unwrap(), ("b".to_string(), String::new()));
        assert!(parse_url("http://b").is_err());
        assert!(parse_url("s3:///p").is_err());
    }
}
