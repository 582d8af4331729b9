//! The S3-compatible backend, through the `object_store` crate.
//!
//! Create-if-absent maps to a conditional PUT (`If-None-Match: *`); a server
//! that answers "already exists" makes the write a no-op, as on local disk.
//! Transient failures (connection refused, 5xx, 429) are retried with
//! backoff by `object_store` up to the configured timeout, then reported as
//! [`BackendError::Unavailable`].

use std::fmt;
use std::ops::Range;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::TryStreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as StorePath;
use object_store::{
    BackoffConfig, ClientOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, RetryConfig,
};

use super::{Backend, BackendError, Created, ObjectInfo};

/// Connection settings for S3. Anything left `None` comes from the standard
/// `AWS_*` environment variables.
#[derive(Clone, Default)]
pub struct S3Options {
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    /// Permit plain-HTTP endpoints (local test servers, private networks).
    pub allow_http: Option<bool>,
    /// How long transient errors are retried before a request fails.
    pub retry_timeout: Option<Duration>,
}

impl fmt::Debug for S3Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Options")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &self.secret_access_key.as_ref().map(|_| "<redacted>"))
            .field("allow_http", &self.allow_http)
            .field("retry_timeout", &self.retry_timeout)
            .finish()
    }
}

/// An endpoint URL with a user or password in it would carry a secret into
/// every error message and log line that names the endpoint: refused, with
/// the place credentials belong. The URL itself is not repeated.
fn refuse_credentials_in_url(endpoint: &str, bucket: &str, prefix: &str) -> Result<(), BackendError> {
    let has_userinfo = url::Url::parse(endpoint).is_ok_and(|u| !u.username().is_empty() || u.password().is_some());
    if has_userinfo {
        return Err(BackendError::Fatal {
            location: format!("s3://{bucket}/{prefix}"),
            op: "open",
            key: String::new(),
            detail: "the S3 endpoint URL contains credentials; remove them from the URL and set access_key_id and secret_access_key_file (or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)".into(),
        });
    }
    Ok(())
}

pub struct S3Backend {
    store: AmazonS3,
    bucket: String,
    prefix: String,
}

impl fmt::Debug for S3Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Backend").field("bucket", &self.bucket).field("prefix", &self.prefix).finish()
    }
}

impl S3Backend {
    pub fn new(bucket: &str, prefix: &str, opts: &S3Options) -> Result<Self, BackendError> {
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
        let env_endpoint = std::env::var("AWS_ENDPOINT_URL").or_else(|_| std::env::var("AWS_ENDPOINT")).ok();
        if let Some(e) = opts.endpoint.as_ref().or(env_endpoint.as_ref()) {
            refuse_credentials_in_url(e, bucket, prefix)?;
        }
        if let Some(e) = &opts.endpoint {
            builder = builder.with_endpoint(e);
        }
        let endpoint_is_http = opts
            .endpoint
            .clone()
            .or_else(|| std::env::var("AWS_ENDPOINT_URL").ok())
            .or_else(|| std::env::var("AWS_ENDPOINT").ok())
            .is_some_and(|e| e.starts_with("http://"));
        let env_allow = std::env::var("AWS_ALLOW_HTTP").is_ok_and(|v| v == "true" || v == "1");
        let allow_http = opts.allow_http.unwrap_or(env_allow || endpoint_is_http);
        if std::env::var("AWS_REGION").is_err() && std::env::var("AWS_DEFAULT_REGION").is_err() {
            builder = builder.with_region(opts.region.clone().unwrap_or_else(|| "us-east-1".into()));
        } else if let Some(r) = &opts.region {
            builder = builder.with_region(r);
        }
        if let Some(k) = &opts.access_key_id {
            builder = builder.with_access_key_id(k);
        }
        if let Some(s) = &opts.secret_access_key {
            builder = builder.with_secret_access_key(s);
        }
        let retry_timeout = opts.retry_timeout.unwrap_or(Duration::from_secs(120));
        builder = builder
            .with_retry(RetryConfig {
                backoff: BackoffConfig {
                    init_backoff: Duration::from_millis(100),
                    max_backoff: Duration::from_secs(5),
                    base: 2.0,
                },
                max_retries: 10,
                retry_timeout,
            })
            .with_client_options(
                ClientOptions::new()
                    .with_allow_http(allow_http)
                    .with_connect_timeout(Duration::from_secs(5))
                    .with_timeout(Duration::from_secs(300)),
            );
        let store = builder.build().map_err(|e| BackendError::Fatal {
            location: format!("s3://{bucket}/{prefix}"),
            op: "open",
            key: String::new(),
            detail: e.to_string(),
        })?;
        Ok(S3Backend { store, bucket: bucket.into(), prefix: prefix.into() })
    }

    fn path(&self, key: &str) -> StorePath {
        if self.prefix.is_empty() { StorePath::from(key) } else { StorePath::from(format!("{}/{key}", self.prefix)) }
    }

    fn err(&self, op: &'static str, key: &str, e: object_store::Error) -> BackendError {
        let location = self.location();
        match e {
            object_store::Error::NotFound { .. } => BackendError::NotFound { location, key: key.into() },
            object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. }
            | object_store::Error::NotSupported { .. }
            | object_store::Error::InvalidPath { .. } => {
                BackendError::Fatal { location, op, key: key.into(), detail: crate::error::chain(&e) }
            }
            other => BackendError::Unavailable { location, op, key: key.into(), detail: crate::error::chain(&other) },
        }
    }
}

#[async_trait]
impl Backend for S3Backend {
    fn location(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{}", self.bucket, self.prefix)
        }
    }

    async fn create(&self, key: &str, data: Bytes) -> Result<Created, BackendError> {
        let opts = PutOptions { mode: PutMode::Create, ..Default::default() };
        match self.store.put_opts(&self.path(key), PutPayload::from_bytes(data), opts).await {
            Ok(_) => Ok(Created::New),
            Err(object_store::Error::AlreadyExists { .. }) | Err(object_store::Error::Precondition { .. }) => {
                Ok(Created::Existed)
            }
            Err(e) => Err(self.err("create", key, e)),
        }
    }

    async fn replace(&self, key: &str, data: Bytes) -> Result<(), BackendError> {
        // A PUT replaces an S3 object atomically.
        self.store.put(&self.path(key), PutPayload::from_bytes(data)).await.map_err(|e| self.err("replace", key, e))?;
        Ok(())
    }

    async fn read(&self, key: &str) -> Result<Bytes, BackendError> {
        let res = self.store.get(&self.path(key)).await.map_err(|e| self.err("read", key, e))?;
        res.bytes().await.map_err(|e| self.err("read", key, e))
    }

    async fn read_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, BackendError> {
        self.store.get_range(&self.path(key), range).await.map_err(|e| self.err("read", key, e))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, BackendError> {
        let full = self.path(prefix.trim_end_matches('/'));
        let strip = if self.prefix.is_empty() { String::new() } else { format!("{}/", self.prefix) };
        let metas: Vec<_> =
            self.store.list(Some(&full)).try_collect().await.map_err(|e| self.err("list", prefix, e))?;
        let mut out: Vec<ObjectInfo> = metas
            .into_iter()
            .filter_map(|m| {
                let key = m.location.as_ref().strip_prefix(&strip)?.to_string();
                Some(ObjectInfo { key, size: m.size, modified: Some(m.last_modified) })
            })
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn delete(&self, key: &str) -> Result<(), BackendError> {
        match self.store.delete(&self.path(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.err("delete", key, e)),
        }
    }
}
