//! Buckets in `cirkel recover`: one step per bucket, `bucket/NAME`, that
//! restores the newest complete snapshot of it the repository holds (every
//! `[buckets.NAME]` configured must have one). A bucket's own URL is in the
//! region that was lost, so by default its current objects become files
//! below `--to` (`buckets/NAME/`, one file per object at its key, with
//! `buckets/NAME.objects.json` keeping each object's headers and metadata);
//! `--bucket-to NAME=s3://BUCKET[/PREFIX]` writes it into a live bucket
//! instead, reached with the bucket's own `[buckets.NAME.s3]` settings, and
//! `--bucket-to NAME=OTHER` into the configured `[buckets.OTHER]` (its URL
//! and settings: how a bucket in the second region, with its own endpoint
//! and credentials, is described; a bucket named as a target is not itself
//! recovered). A target that already holds objects is refused before
//! anything is restored, unless `--force`.

use std::collections::BTreeMap;
use std::path::Path;

use chrono::{DateTime, Utc};
use cirkel_config::Config;
use cirkel_repo::{Id, Repository, Snapshot};

use super::{Checked, RecoverArgs, Step, newest, safe};
use crate::output::user_error;

/// The directory below `--to` that holds the buckets.
const DIR: &str = "buckets";

/// The bucket a snapshot is of (its `[buckets.NAME]`, or the label of an
/// `s3://` URL backed up without one).
fn bucket_of(s: &Snapshot) -> String {
    s.meta["bucket"].as_str().unwrap_or_default().to_string()
}

/// `--bucket-to NAME=s3://BUCKET[/PREFIX]` or `NAME=OTHER`, by bucket name.
fn targets(cfg: &Config, args: &RecoverArgs) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for t in &args.bucket_to {
        let Some((name, url)) = t
            .split_once('=')
            .filter(|(n, u)| !n.is_empty() && (u.starts_with("s3://") || (cfg.buckets.contains_key(*u) && u != n)))
        else {
            return Err(user_error(
                format!("--bucket-to `{t}` is not NAME=s3://BUCKET[/PREFIX] or NAME=OTHER (another [buckets.OTHER])"),
                "name the bucket as in [buckets.NAME] and where to write it, e.g. --bucket-to uploads=s3://uploads-dr",
            ));
        };
        if url.starts_with("s3://") {
            cirkel_bucket::s3::parse_url(url)
                .map_err(|e| user_error(format!("--bucket-to {t}: {e}"), "write it as s3://BUCKET[/PREFIX]"))?;
        }
        if out.insert(name.to_string(), url.to_string()).is_some() {
            return Err(user_error(format!("--bucket-to names bucket `{name}` twice"), "give each bucket one target"));
        }
    }
    Ok(out)
}

/// One step per bucket: the newest complete snapshot of every bucket the
/// repository holds and of every one configured.
pub(super) fn steps(
    snaps: &[(Id, Snapshot)],
    cfg: &Config,
    args: &RecoverArgs,
    location: &str,
    now: DateTime<Utc>,
) -> anyhow::Result<Vec<Step>> {
    let mut targets = targets(cfg, args)?;
    // A configured bucket written into is a destination, not a source.
    let destinations: Vec<&String> = targets.values().filter(|t| cfg.buckets.contains_key(*t)).collect();
    let source = |n: &String| !destinations.contains(&n);
    let mut by_bucket: BTreeMap<String, Vec<&(Id, Snapshot)>> =
        cfg.buckets.keys().filter(|n| source(n)).map(|n| (n.clone(), Vec::new())).collect();
    for e in snaps.iter().filter(|(_, s)| s.kind == cirkel_bucket::KIND) {
        let name = bucket_of(&e.1);
        if source(&name) {
            by_bucket.entry(name).or_default().push(e);
        }
    }
    if let Some(name) = targets.keys().find(|n| !by_bucket.contains_key(*n)) {
        return Err(user_error(
            format!("--bucket-to names `{name}`, which is no bucket the repository holds or the configuration names"),
            format!(
                "buckets to recover: {}",
                if by_bucket.is_empty() {
                    "none".into()
                } else {
                    by_bucket.keys().cloned().collect::<Vec<_>>().join(", ")
                }
            ),
        ));
    }
    let mut steps = Vec::new();
    for (name, list) in &by_bucket {
        let Some((id, s)) = newest(list.iter().copied()) else {
            return Err(user_error(
                format!("bucket `{name}` has no complete snapshot in {location}"),
                format!(
                    "back it up (`cirkel backup bucket {name}`) and let the copy carry it to the second region; \
                     `cirkel --repo REPO snapshots --kind bucket` lists what the repository holds; if it is where \
                     another bucket goes, say so with --bucket-to OTHER={name}; to recover without it, use a \
                     configuration without [buckets.{name}]"
                ),
            ));
        };
        let target = targets.remove(name);
        let mut argv = vec!["restore".into(), "bucket".into(), id.to_string()];
        if target.is_some() && args.force {
            argv.push("--force".into());
        }
        steps.push(Step {
            source: format!("bucket/{name}"),
            snapshot: *id,
            data_time: s.time,
            rpo_s: ((now - s.time).num_milliseconds() as f64 / 1000.0).max(0.0),
            bytes: s.summary.bytes,
            predicted_s: s.summary.bytes as f64 / super::ASSUMED_BYTES_PER_S + 2.0,
            dir: if target.is_some() { String::new() } else { format!("{DIR}/{}", safe(name)) },
            target,
            standbys: Vec::new(),
            standby_of: None,
            pg_user: String::new(),
            cluster: None,
            primary_member: None,
            argv,
            seconds: None,
            error: None,
        });
    }
    Ok(steps)
}

fn manifest(dir: &str) -> String {
    format!("{dir}.objects.json")
}

/// What a bucket step makes below `--to`: its directory and manifest, or
/// nothing when it goes into a bucket.
pub(super) fn made_paths(s: &Step) -> Vec<String> {
    if s.target.is_some() { Vec::new() } else { vec![s.dir.clone(), manifest(&s.dir)] }
}

/// The arguments after the step's own that say where it writes.
pub(super) fn destination(s: &Step, dir: &Path) -> Vec<std::ffi::OsString> {
    match &s.target {
        Some(target) => vec!["--to".into(), target.into()],
        None => vec!["--to".into(), dir.into(), "--manifest".into(), manifest(&dir.to_string_lossy()).into()],
    }
}

/// Refuses, before anything is restored, a `--bucket-to` target that
/// already holds objects (unless `--force`) or cannot be reached.
pub(super) fn check_targets(cfg: &Config, steps: &[Step], force: bool) -> anyhow::Result<()> {
    for s in steps {
        let (Some(target), Some(name)) = (&s.target, s.source.strip_prefix("bucket/")) else { continue };
        // As `restore bucket --to` reaches it: a configured bucket with its
        // settings, else the URL with the source bucket's.
        let (url, s3) = match cfg.buckets.get(target) {
            Some(b) => (&b.url, Some(&b.s3)),
            None => (target, cfg.buckets.get(name).map(|b| &b.s3)),
        };
        let s3 = crate::cmd::bucket::s3_options(s3);
        let bucket = cirkel_bucket::Bucket::open(url, &s3)
            .map_err(|e| user_error(format!("--bucket-to {name}={target}: {e}"), e.hint().unwrap_or_default()))?;
        let empty = cirkel_repo::runtime::block_on(bucket.is_empty())?
            .map_err(|e| user_error(format!("--bucket-to {name}={target}: {e}"), e.hint().unwrap_or_default()))?;
        if !empty && !force {
            return Err(user_error(
                format!("{} already holds objects", bucket.location()),
                "write the bucket into an empty bucket or prefix, or pass --force to write into it (objects of the same keys are replaced, others left alone); nothing was restored",
            ));
        }
    }
    Ok(())
}

/// Where the dry run says a bucket goes.
pub(super) fn describe(s: &Step, to: Option<&Path>) -> String {
    match &s.target {
        Some(url) if url.starts_with("s3://") => {
            format!("  then {}: written into {url} (with its [buckets.NAME.s3] settings)", s.source)
        }
        Some(other) => format!("  then {}: written into [buckets.{other}] (its url and settings)", s.source),
        None => {
            let dir = to.map_or_else(|| format!("DIR/{}", s.dir), |t| t.join(&s.dir).display().to_string());
            format!("  then {}: its objects as files below {dir}/ (headers in {})", s.source, manifest(&s.dir))
        }
    }
}

/// A drill's check of a bucket restored into `dir`: one file per current
/// object of the snapshot.
pub(super) fn check(repo: &Repository, s: &Step, dir: &Path) -> Checked {
    let mut c = Checked::default();
    let want = repo.load_snapshot(&s.snapshot).map_err(anyhow::Error::from).and_then(|snap| {
        let index = repo.load_index()?;
        let records = cirkel_bucket::records(repo, &index, &snap)?;
        Ok(records.iter().filter(|r| r.is_latest && !r.delete_marker && !r.key.ends_with('/')).count() as i64)
    });
    let files = super::count_files(dir);
    c.counts.insert("objects".into(), files);
    match want {
        Ok(n) if n == files => {}
        Ok(n) => c.problems.push(format!("{files} objects restored, the snapshot holds {n}")),
        Err(e) => c.problems.push(format!("{e:#}")),
    }
    c.ok = c.problems.is_empty();
    c
}
