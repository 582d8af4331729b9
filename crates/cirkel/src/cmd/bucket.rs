//! `cirkel backup bucket` and `cirkel restore bucket`.

use std::process::ExitCode;

use cirkel_bucket::{BackupOptions, Bucket, DirOptions, RestoreOptions};
use cirkel_config::{Config, S3Config};
use cirkel_repo::backend::S3Options;
use clap::Args;
use indicatif::ProgressBar;
use serde_json::json;

use crate::cli::Global;
use crate::context::{load_config, main_repo};
use crate::output::{bytes_bar, human_bytes, print_json, user_error};

/// Objects read or written at once: S3 answers are latency-bound.
const IO_THREADS: usize = 16;

#[derive(Debug, Args)]
pub struct BackupBucketArgs {
    /// The bucket's name in the configuration ([buckets.NAME]), or an s3://BUCKET[/PREFIX] URL
    /// (reached with the AWS_* environment variables).
    pub name: String,
    /// Tag the snapshot (repeatable; added to the configured tags).
    #[arg(long, value_name = "TAG")]
    pub tag: Vec<String>,
    /// Compare with this snapshot instead of the newest one of the same bucket.
    #[arg(long, value_name = "SNAPSHOT")]
    pub parent: Option<String>,
    /// Read every object, even those unchanged since the parent snapshot.
    #[arg(long)]
    pub force: bool,
    /// Every version and delete marker of a versioned bucket (as `versions = true`).
    #[arg(long)]
    pub versions: bool,
}

#[derive(Debug, Args)]
pub struct RestoreBucketArgs {
    /// Snapshot id, unique prefix, or `latest` (of --bucket, when several buckets are backed up).
    pub snapshot: String,
    /// Where to write: s3://BUCKET[/PREFIX] (reached with the source bucket's settings), the
    /// name of a configured bucket, or a directory (a path with a `/`, e.g. ./restored): one file
    /// per object at its key.
    #[arg(long, value_name = "URL|NAME|DIR")]
    pub to: String,
    /// With `latest`: the newest snapshot of this configured bucket.
    #[arg(long, value_name = "NAME")]
    pub bucket: Option<String>,
    /// Write into a bucket or prefix that already holds objects (same keys are overwritten,
    /// others left alone), or into a directory that already holds files (none is replaced).
    #[arg(long)]
    pub force: bool,
    /// With a directory: also write each object's key, ETag, time, content headers and user
    /// metadata to this new JSON file.
    #[arg(long, value_name = "FILE")]
    pub manifest: Option<std::path::PathBuf>,
    /// Write every recorded version, oldest first, and re-delete keys whose history ends
    /// deleted; otherwise only the current objects.
    #[arg(long)]
    pub all_versions: bool,
}

pub(crate) fn s3_options(s3: Option<&S3Config>) -> S3Options {
    let env_timeout = std::env::var("CIRKEL_S3_RETRY_TIMEOUT").ok().and_then(|s| humantime::parse_duration(&s).ok());
    let Some(s3) = s3 else {
        return S3Options { retry_timeout: env_timeout, ..Default::default() };
    };
    S3Options {
        endpoint: s3.endpoint.clone(),
        region: s3.region.clone(),
        access_key_id: s3.access_key_id.clone(),
        secret_access_key: s3.secret_access_key.as_ref().map(|s| s.expose().to_string()),
        allow_http: s3.allow_http,
        retry_timeout: s3.retry_timeout.or(env_timeout),
    }
}

/// A bucket to back up: its name, location and settings.
struct Source {
    name: String,
    url: String,
    s3: Option<S3Config>,
    versions: bool,
    tags: Vec<String>,
}

/// A configured bucket by name, or an ad-hoc `s3://` URL.
fn source(cfg: &Config, name: &str) -> anyhow::Result<Source> {
    if let Some(b) = cfg.buckets.get(name) {
        return Ok(Source {
            name: name.to_string(),
            url: b.url.clone(),
            s3: Some(b.s3.clone()),
            versions: b.versions,
            tags: b.tags.clone(),
        });
    }
    if name.starts_with("s3://") {
        let (bucket, prefix) = cirkel_bucket::s3::parse_url(name)?;
        let label = if prefix.is_empty() { bucket } else { format!("{bucket}/{}", prefix.trim_end_matches('/')) };
        return Ok(Source { name: label, url: name.to_string(), s3: None, versions: false, tags: Vec::new() });
    }
    let known: Vec<&str> = cfg.buckets.keys().map(String::as_str).collect();
    Err(user_error(
        format!("no bucket named `{name}`"),
        if known.is_empty() {
            "define it as [buckets.NAME] url = \"s3://BUCKET[/PREFIX]\" in the configuration, or pass an s3:// URL"
                .to_string()
        } else {
            format!("configured buckets: {}; or pass an s3:// URL", known.join(", "))
        },
    ))
}

struct Bar {
    bar: ProgressBar,
}

impl cirkel_bucket::Progress for Bar {
    fn listed(&self, _objects: u64, bytes: u64) {
        self.bar.set_length(bytes);
    }

    fn object_done(&self, bytes: u64, _read: bool) {
        self.bar.inc(bytes);
    }
}

pub fn backup(global: &Global, args: &BackupBucketArgs) -> anyhow::Result<ExitCode> {
    let cfg = load_config(global)?;
    let Source { name, url, s3, versions, mut tags } = source(&cfg, &args.name)?;
    tags.extend(args.tag.iter().cloned());
    let bucket = Bucket::open(&url, &s3_options(s3.as_ref()))?;
    let (repo, _owner) = crate::owner::open_writer(global, &main_repo(global, &cfg)?)?;
    let parent = match &args.parent {
        Some(p) => Some(repo.find_snapshot(p, Some(cirkel_bucket::KIND))?),
        None => None,
    };
    let opts = BackupOptions {
        name: name.clone(),
        versions: versions || args.versions,
        tags,
        parent,
        force: args.force,
        threads: IO_THREADS,
    };
    let bar = Bar { bar: bytes_bar(global, 0, "backup") };
    let outcome = cirkel_bucket::backup(&repo, &bucket, &opts, &bar)?;
    bar.bar.finish_and_clear();
    let s = &outcome.snapshot;
    if global.json {
        print_json(&json!({
            "id": outcome.id,
            "snapshot": s,
            "stats": outcome.stats,
            "parent": outcome.parent,
            "warnings": repo.warnings(),
        }));
    } else {
        let st = &outcome.stats;
        println!(
            "snapshot {} of bucket {name} saved: {} objects, {} ({} read, {} unchanged, {} vanished while listed; {} added to the repository) in {:.1}s",
            outcome.id.short(),
            st.objects,
            human_bytes(s.summary.bytes),
            st.read,
            st.reused,
            st.vanished,
            human_bytes(s.summary.bytes_added),
            s.summary.duration_ms as f64 / 1000.0
        );
    }
    if s.incomplete {
        eprintln!(
            "error: snapshot {} is incomplete: {} object(s) could not be read:",
            outcome.id.short(),
            s.errors.len()
        );
        for e in s.errors.iter().take(20) {
            eprintln!("  {}: {}", e.path, e.message);
        }
        eprintln!(
            "hint: give the credentials read access to those keys, then back up again; the snapshot is marked incomplete"
        );
        return Ok(ExitCode::from(3));
    }
    Ok(ExitCode::SUCCESS)
}

pub fn restore(global: &Global, args: &RestoreBucketArgs) -> anyhow::Result<ExitCode> {
    let cfg = load_config(global)?;
    let repo = main_repo(global, &cfg)?.open()?;
    // The target's settings: a configured bucket's, else the source bucket's.
    let (url, s3) = match cfg.buckets.get(&args.to) {
        Some(b) => (b.url.clone(), Some(&b.s3)),
        None if args.to.starts_with("s3://") => (args.to.clone(), None),
        None if args.to.contains('/') => (String::new(), None),
        None => {
            return Err(user_error(
                format!("`{}` is neither an s3:// URL, a configured bucket nor a directory", args.to),
                format!(
                    "pass --to s3://BUCKET[/PREFIX], the name of a [buckets.NAME] table, or a directory as a path (./{})",
                    args.to
                ),
            ));
        }
    };
    if args.manifest.is_some() && !url.is_empty() {
        return Err(user_error(
            "--manifest is for a restore into a directory",
            "leave it out: a bucket keeps each object's headers and metadata itself",
        ));
    }
    let (id, snap) = if args.snapshot == "latest" {
        let mut snaps: Vec<_> = repo
            .snapshots()?
            .into_iter()
            .filter(|(_, s)| s.kind == cirkel_bucket::KIND)
            .filter(|(_, s)| args.bucket.as_deref().is_none_or(|b| s.meta["bucket"] == b))
            .collect();
        snaps.sort_by_key(|(_, s)| s.time);
        let sources: std::collections::BTreeSet<String> =
            snaps.iter().map(|(_, s)| s.meta["bucket"].as_str().unwrap_or_default().to_string()).collect();
        if sources.len() > 1 {
            return Err(user_error(
                format!("the repository holds snapshots of {} buckets", sources.len()),
                format!("name one with --bucket: {}", sources.into_iter().collect::<Vec<_>>().join(", ")),
            ));
        }
        snaps.pop().ok_or_else(|| {
            user_error(
                "no bucket snapshot in the repository",
                "take one with `cirkel backup bucket NAME`; `cirkel snapshots --kind bucket` lists them",
            )
        })?
    } else {
        repo.find_snapshot(&args.snapshot, Some(cirkel_bucket::KIND))?
    };
    let bar = bytes_bar(global, snap.summary.bytes, "restore");
    let (report, location) = if url.is_empty() {
        if args.all_versions {
            return Err(user_error(
                "--all-versions needs a bucket to write the versions into",
                "restore into an s3:// URL, or leave --all-versions out to get the current objects as files",
            ));
        }
        let dir = std::path::PathBuf::from(&args.to);
        let opts = DirOptions { threads: IO_THREADS, force: args.force, manifest: args.manifest.clone() };
        (cirkel_bucket::restore_to_dir(&repo, &snap, &dir, &opts, &|n| bar.inc(n))?, dir.display().to_string())
    } else {
        let s3 = s3.or_else(|| cfg.buckets.get(snap.meta["bucket"].as_str().unwrap_or_default()).map(|b| &b.s3));
        let target = Bucket::open(&url, &s3_options(s3))?;
        let opts = RestoreOptions { threads: IO_THREADS, force: args.force, all_versions: args.all_versions };
        (cirkel_bucket::restore(&repo, &snap, &target, &opts, &|n| bar.inc(n))?, target.location())
    };
    bar.finish_and_clear();
    if global.json {
        print_json(&json!({ "snapshot": id, "target": location, "report": report, "warnings": repo.warnings() }));
    } else {
        println!(
            "restored snapshot {} to {}: {} objects, {}{}",
            id.short(),
            location,
            report.objects,
            human_bytes(report.bytes),
            if report.deleted > 0 { format!(", {} keys deleted again", report.deleted) } else { String::new() }
        );
    }
    Ok(ExitCode::SUCCESS)
}
