//! `cirkel backup files`, `cirkel restore files`, `cirkel snapshots`.

use std::path::Path;
use std::process::ExitCode;

use cirkel_files::{BackupOptions, Excludes, RestoreOptions};
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use indicatif::ProgressBar;
use serde_json::json;

use crate::cli::{BackupCmd, BackupFilesArgs, Global, RestoreCmd, SnapshotsArgs};
use crate::context::{load_config, main_repo, threads};
use crate::output::{bytes_bar, human_bytes, print_json, spinner, user_error};

/// Backup progress on a spinner: files done and bytes seen.
pub(crate) struct BarProgress(pub ProgressBar, pub std::sync::atomic::AtomicU64);

impl BarProgress {
    pub(crate) fn new(bar: ProgressBar) -> Self {
        BarProgress(bar, std::sync::atomic::AtomicU64::new(0))
    }
}

impl cirkel_files::Progress for BarProgress {
    fn file_done(&self, _path: &Path, bytes: u64, _read: bool) {
        let total = self.1.fetch_add(bytes, std::sync::atomic::Ordering::Relaxed) + bytes;
        self.0.inc(1);
        self.0.set_message(format!("backup {}", human_bytes(total)));
    }

    fn error(&self, path: &Path, message: &str) {
        self.0.suspend(|| eprintln!("warning: {}: {message}", path.display()));
    }
}

pub fn backup(global: &Global, cmd: &BackupCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        BackupCmd::Files(args) => backup_files(global, args),
        BackupCmd::Bucket(args) => crate::cmd::bucket::backup(global, args),
    }
}

fn backup_files(global: &Global, args: &BackupFilesArgs) -> anyhow::Result<ExitCode> {
    let cfg = load_config(global)?;
    let mut paths = args.paths.clone();
    let mut patterns = args.exclude.clone();
    let mut markers = args.exclude_if_present.clone();
    let mut tags = args.tag.clone();
    let mut exclude_files = args.exclude_file.clone();
    if let Some(name) = &args.set {
        let set = cfg.files.get(name).ok_or_else(|| {
            user_error(format!("no file set named `{name}`"), "define it as [files.NAME] in the configuration")
        })?;
        paths.extend(set.paths.iter().cloned());
        patterns.extend(set.exclude.iter().cloned());
        markers.extend(set.exclude_if_present.iter().cloned());
        tags.extend(set.tags.iter().cloned());
        exclude_files.extend(set.exclude_file.iter().cloned());
    }
    if paths.is_empty() {
        return Err(user_error("nothing to back up", "name one or more paths, or --set NAME"));
    }
    for f in &exclude_files {
        patterns.extend(Excludes::read_pattern_file(f).map_err(|e| user_error(e, "check --exclude-file"))?);
    }
    let excludes =
        Excludes::new(&patterns, &markers).map_err(|e| user_error(e, "patterns use glob syntax: *, **, ?, [abc]"))?;
    let (repo, _owner) = crate::owner::open_writer(global, &main_repo(global, &cfg)?)?;
    let parent = match &args.parent {
        Some(p) => Some(repo.find_snapshot(p, Some(cirkel_files::KIND))?.0),
        None => None,
    };
    let opts = BackupOptions {
        paths,
        tags,
        excludes,
        parent,
        force: args.force,
        threads: threads(),
        host: args.host.clone(),
        ..Default::default()
    };
    let bar = BarProgress::new(spinner(global, "backup"));
    let outcome = cirkel_files::backup(&repo, &opts, &bar)?;
    bar.0.finish_and_clear();
    let s = &outcome.snapshot;
    if global.json {
        print_json(&json!({ "id": outcome.id, "snapshot": s, "warnings": repo.warnings() }));
    } else {
        println!(
            "snapshot {} saved: {} files, {} dirs, {} ({} files read, {} added to the repository) in {:.1}s",
            outcome.id.short(),
            s.summary.files,
            s.summary.dirs,
            human_bytes(s.summary.bytes),
            s.summary.files_read,
            human_bytes(s.summary.bytes_added),
            s.summary.duration_ms as f64 / 1000.0
        );
    }
    if s.incomplete {
        eprintln!(
            "error: snapshot {} is incomplete: {} path(s) could not be read:",
            outcome.id.short(),
            s.errors.len()
        );
        for e in &s.errors {
            eprintln!("  {}: {}", e.path, e.message);
        }
        eprintln!(
            "hint: fix the permissions or remove the paths, then back up again; the snapshot is marked incomplete"
        );
        return Ok(ExitCode::from(3));
    }
    Ok(ExitCode::SUCCESS)
}

pub fn restore(global: &Global, cmd: &RestoreCmd) -> anyhow::Result<ExitCode> {
    let args = match cmd {
        RestoreCmd::Files(args) => args,
        RestoreCmd::Bucket(args) => return crate::cmd::bucket::restore(global, args),
    };
    let cfg = load_config(global)?;
    let repo = main_repo(global, &cfg)?.open()?;
    let (id, snap) = repo.find_snapshot(&args.snapshot, Some(cirkel_files::KIND))?;
    let bar = bytes_bar(global, snap.summary.bytes, "restore");
    let report = cirkel_files::restore(
        &repo,
        &snap,
        &RestoreOptions { target: args.to.clone(), threads: threads() * 2 },
        &|n| bar.inc(n),
    )?;
    bar.finish_and_clear();
    if global.json {
        print_json(&json!({ "snapshot": id, "report": report, "warnings": repo.warnings() }));
    } else {
        println!(
            "restored snapshot {} to {}: {} files, {} dirs, {} symlinks, {}",
            id.short(),
            args.to.display(),
            report.files,
            report.dirs,
            report.symlinks,
            human_bytes(report.bytes)
        );
    }
    if !global.quiet {
        for (p, why) in &report.notes {
            eprintln!("note: {p}: {why}");
        }
    }
    if !report.errors.is_empty() {
        for (p, e) in &report.errors {
            eprintln!("  {p}: {e}");
        }
        return Err(user_error(
            format!("{} path(s) could not be restored (listed above); everything else was", report.errors.len()),
            "run `cirkel repo verify --read-data` to see the damage; restore those files from a second repository",
        ));
    }
    Ok(ExitCode::SUCCESS)
}

pub fn snapshots(global: &Global, args: &SnapshotsArgs) -> anyhow::Result<ExitCode> {
    let cfg = load_config(global)?;
    let repo = main_repo(global, &cfg)?.open()?;
    let snaps: Vec<_> = repo
        .snapshots()?
        .into_iter()
        .filter(|(_, s)| args.tag.as_ref().is_none_or(|t| s.tags.contains(t)))
        .filter(|(_, s)| args.kind.as_ref().is_none_or(|k| &s.kind == k))
        .collect();
    if global.json {
        let list: Vec<_> =
            snaps.iter().map(|(id, s)| json!({ "id": id, "short_id": id.short(), "snapshot": s })).collect();
        print_json(&list);
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED);
    table.set_header(["ID", "Time (UTC)", "Host", "Kind", "Tags", "Paths", "Size", "Added"]);
    for (id, s) in &snaps {
        table.add_row([
            format!("{}{}", id.short(), if s.incomplete { " !" } else { "" }),
            s.time.format("%Y-%m-%d %H:%M:%S").to_string(),
            s.host.clone(),
            s.kind.clone(),
            s.tags.join(","),
            s.paths.join("\n"),
            human_bytes(s.summary.bytes),
            human_bytes(s.summary.bytes_added),
        ]);
    }
    println!("{table}");
    println!(
        "{} snapshot(s){}",
        snaps.len(),
        if snaps.iter().any(|(_, s)| s.incomplete) { "; ! = incomplete" } else { "" }
    );
    Ok(ExitCode::SUCCESS)
}
