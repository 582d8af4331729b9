//! `cirkel repo ...`: init, verify, prune, forget, repair, copy, unlock, keys.

use std::process::ExitCode;

use anyhow::Context as _;
use cirkel_repo::crypto::KdfParams;
use cirkel_repo::prune::{PruneOptions, prune};
use cirkel_repo::retention::{Policy, unmatched_keep_tags};
use cirkel_repo::verify::{VerifyOptions, verify};
use cirkel_repo::{Cipher, InitOptions, Repository, copy, repair};
use serde_json::json;

use cirkel_state::{Event, EventKind};

use crate::cli::{CipherArg, Global, InitArgs, KeyCmd, PolicyArgs, PruneArgs, RepairCmd, RepoCmd};
use crate::context::{load_config, main_repo, read_password_file, resolve};
use crate::output::{bytes_bar, human_bytes, print_json, user_error};

pub fn run(global: &Global, cmd: &RepoCmd) -> anyhow::Result<ExitCode> {
    let cfg = load_config(global)?;
    match cmd {
        RepoCmd::Init(args) => init(global, &cfg, args),
        RepoCmd::Verify(args) => {
            let repo = main_repo(global, &cfg)?.open()?;
            let bar = bytes_bar(global, 0, "verify");
            let report = verify(&repo, &VerifyOptions { read_data: args.read_data }, &|done, total| {
                bar.set_length(total);
                bar.set_position(done);
            })?;
            bar.finish_and_clear();
            // The daemon's metrics and alarms read the outcome from the event log.
            let (kind, what) = if report.ok() {
                (EventKind::Verified, "intact".to_string())
            } else {
                (EventKind::VerifyFailed, format!("{} error(s)", report.errors.len()))
            };
            let event = Event::new(&format!("repository/{}", repo.location()), kind, format!("verify: {what}")).with(
                json!({ "repository": repo.location(), "errors": report.errors.len(), "read_data": args.read_data }),
            );
            if let Err(e) = crate::context::state_dir(&cfg).record(&event) {
                tracing::warn!("the verify result was not recorded in the event log: {e:#}");
            }
            if global.json {
                print_json(&json!({ "ok": report.ok(), "report": report, "warnings": repo.warnings() }));
            } else {
                println!(
                    "checked {} snapshots, {} packs, {} blobs{}",
                    report.snapshots,
                    report.packs,
                    report.blobs,
                    if args.read_data { format!(", read {}", human_bytes(report.bytes_read)) } else { String::new() }
                );
                for n in &report.notes {
                    println!("note: {n}");
                }
                for e in &report.errors {
                    println!("error: {e}");
                }
                for d in &report.damaged {
                    println!("damaged snapshot {}:", d.snapshot.short());
                    for p in &d.paths {
                        println!("  {p}");
                    }
                }
            }
            if report.ok() {
                if !global.json {
                    println!("no errors found");
                }
                Ok(ExitCode::SUCCESS)
            } else {
                Err(user_error(
                    format!("the repository has {} error(s)", report.errors.len()),
                    "the damaged snapshots and files are listed above; restore them from a second repository, or remove the damaged snapshots and back up again",
                ))
            }
        }
        RepoCmd::Prune(args) => prune_cmd(global, &cfg, args),
        RepoCmd::Copy(args) if args.follow => crate::cmd::follow::run(global, &cfg, args),
        RepoCmd::Copy(args) => {
            let src = main_repo(global, &cfg)?.open()?;
            let dst_pw = args.to_password_file.as_deref().or(global.password_file.as_deref());
            let dst = resolve(&cfg, Some(&args.to), dst_pw)?;
            let _owner = crate::owner::check_writer(global, &dst)?;
            let dst = dst.open().context("open the destination of the copy")?;
            let mut ids = Vec::new();
            for s in &args.snapshots {
                ids.push(src.find_snapshot(s, None)?.0);
            }
            if let Some(tag) = &args.tag {
                let tagged = src.snapshots()?.into_iter().filter(|(_, s)| s.tags.contains(tag)).map(|(id, _)| id);
                if ids.is_empty() {
                    ids = tagged.collect();
                    if ids.is_empty() {
                        return Err(user_error(
                            format!("no snapshot is tagged `{tag}`"),
                            "list tags with `cirkel snapshots`",
                        ));
                    }
                } else {
                    let tagged: Vec<_> = tagged.collect();
                    ids.retain(|id| tagged.contains(id));
                    if ids.is_empty() {
                        return Err(user_error(
                            format!("none of the named snapshots is tagged `{tag}`"),
                            "drop --tag or name other snapshots",
                        ));
                    }
                }
            }
            let bar = bytes_bar(global, 0, "copy");
            let report = copy::copy(&src, &dst, &ids, !args.no_wal, &|done, total| {
                bar.set_length(total);
                bar.set_position(done);
            })?;
            bar.finish_and_clear();
            if global.json {
                print_json(&report);
            } else {
                println!(
                    "copied {} snapshot(s) to {} ({} already there); {} new blobs, {} transferred; {} WAL/stream object(s), {}",
                    report.copied.len(),
                    dst.location(),
                    report.already_present.len(),
                    report.stats.blobs_new,
                    human_bytes(report.stats.bytes_new_stored),
                    report.streams_copied,
                    human_bytes(report.stream_bytes)
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        RepoCmd::Unlock => {
            let repo = main_repo(global, &cfg)?.open()?;
            let n = repo.remove_stale_locks()?;
            let live = repo.locks()?;
            if global.json {
                print_json(&json!({ "removed": n, "live": live.iter().map(|(_, l)| l).collect::<Vec<_>>() }));
            } else {
                println!("removed {n} stale lock(s); {} live lock(s) remain", live.len());
                for (_, l) in live {
                    println!("  {} by pid {} on {} since {}", l.operation, l.pid, l.host, l.time);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        RepoCmd::Key(KeyCmd::List) => {
            let repo = main_repo(global, &cfg)?.open()?;
            let keys = repo.keys()?;
            if global.json {
                print_json(&keys);
            } else {
                for k in &keys {
                    let made = match (&k.created, &k.host) {
                        (Some(t), Some(h)) => format!(
                            "created {} on {h}{}",
                            t.format("%Y-%m-%d %H:%M:%S"),
                            k.user.as_ref().map(|u| format!(" by {u}")).unwrap_or_default()
                        ),
                        _ => String::new(),
                    };
                    println!(
                        "{} {}  {made}{}",
                        if k.in_use { "*" } else { " " },
                        &k.id[..k.id.len().min(16)],
                        k.damaged.as_ref().map(|d| format!("DAMAGED: {d}")).unwrap_or_default()
                    );
                }
                println!("{} key(s); * = opened with this passphrase", keys.len());
            }
            Ok(ExitCode::SUCCESS)
        }
        RepoCmd::Key(KeyCmd::Remove(args)) => {
            let repo = main_repo(global, &cfg)?.open()?;
            let id = repo.remove_key(&args.id, args.force)?;
            if global.json {
                print_json(&json!({ "removed": id }));
            } else {
                println!("removed key {id}");
            }
            Ok(ExitCode::SUCCESS)
        }
        RepoCmd::Repair(RepairCmd::Config) => {
            let target = main_repo(global, &cfg)?;
            let _owner = crate::owner::check_writer(global, &target)?;
            let mut repo = target.open()?;
            let password = target.password.clone().unwrap_or_default();
            let changed = repo.repair_config(password.as_bytes(), KdfParams::default())?;
            if global.json {
                print_json(&json!({ "authenticated": changed }));
            } else if changed {
                println!("the config is now authenticated by the master key");
            } else {
                println!("the config was already authenticated; nothing to do");
            }
            Ok(ExitCode::SUCCESS)
        }
        RepoCmd::Forget(args) => {
            let repo = main_repo(global, &cfg)?.open()?;
            let ids = repair::forget(&repo, &args.snapshots, args.dry_run)?;
            if global.json {
                print_json(&json!({ "forgotten": ids, "dry_run": args.dry_run }));
            } else {
                let verb = if args.dry_run { "would forget" } else { "forgot" };
                for id in &ids {
                    println!("{verb} snapshot {}", id.short());
                }
                if !args.dry_run {
                    println!("`cirkel repo prune` removes the data only they used");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        RepoCmd::Repair(RepairCmd::Index(args)) => {
            let (repo, _owner) = crate::owner::open_writer(global, &main_repo(global, &cfg)?)?;
            let report = repair::repair_index(&repo, args.dry_run)?;
            if global.json {
                print_json(&report);
            } else {
                for p in &report.unreadable_packs {
                    println!("warning: left out: {p}");
                }
                println!(
                    "{} an index of {} pack(s) and {} blob(s), replacing {} index object(s)",
                    if args.dry_run { "would write" } else { "wrote" },
                    report.packs,
                    report.blobs,
                    report.old_indexes
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        RepoCmd::Repair(RepairCmd::Snapshots(args)) => {
            let (repo, _owner) = crate::owner::open_writer(global, &main_repo(global, &cfg)?)?;
            let report = repair::repair_snapshots(&repo, args.dry_run, args.read_data)?;
            let unrepairable = report.snapshots.iter().filter(|s| s.error.is_some()).count();
            if global.json {
                print_json(&json!({ "report": report, "warnings": repo.warnings() }));
            } else {
                for s in &report.snapshots {
                    match (&s.error, s.repaired) {
                        (Some(e), _) => println!("snapshot {}: cannot be repaired: {e}", s.original.short()),
                        (None, Some(new)) => {
                            println!(
                                "snapshot {} repaired as {} (tag `{}`)",
                                s.original.short(),
                                new.short(),
                                repair::REPAIRED_TAG
                            )
                        }
                        (None, None) => println!("snapshot {} would be repaired", s.original.short()),
                    }
                    for p in s.dropped.iter().filter(|_| s.error.is_none()) {
                        println!("  dropped {p}");
                    }
                }
                if report.snapshots.is_empty() {
                    println!("every snapshot's data is present; nothing to repair");
                }
            }
            if unrepairable > 0 {
                return Err(user_error(
                    format!("{unrepairable} snapshot(s) cannot be repaired"),
                    "forget them with `cirkel repo forget ID`, listed above",
                ));
            }
            Ok(ExitCode::SUCCESS)
        }
        RepoCmd::AddKey(args) => {
            let (repo, _owner) = crate::owner::open_writer(global, &main_repo(global, &cfg)?)?;
            let pw = read_password_file(&args.new_password_file)?;
            if pw.is_empty() {
                return Err(user_error(
                    format!("the new password file {} is empty", args.new_password_file.display()),
                    "an empty passphrase is refused: put the passphrase in the file (one line)",
                ));
            }
            let name = repo.add_key(pw.as_bytes(), KdfParams::default())?;
            if global.json {
                print_json(&json!({ "key": name }));
            } else {
                println!("added {name}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn init(global: &Global, cfg: &cirkel_config::Config, args: &InitArgs) -> anyhow::Result<ExitCode> {
    let target = main_repo(global, cfg)?;
    let mut opts = InitOptions { encrypt: !args.no_encryption, ..Default::default() };
    match args.cipher {
        CipherArg::Auto => {}
        CipherArg::Aes256Gcm => opts.cipher = Cipher::Aes256Gcm,
        CipherArg::Xchacha20Poly1305 => opts.cipher = Cipher::XChaCha20Poly1305,
    }
    if let Some(level) = args.compression_level.or(target.compression_level) {
        opts.compression_level = level;
    }
    if opts.encrypt && target.password.as_deref() == Some("") {
        return Err(user_error(
            "an empty passphrase is refused",
            "put the passphrase in the password file (one line), or set CIRKEL_PASSWORD",
        ));
    }
    if opts.encrypt && target.password.is_none() {
        return Err(user_error(
            "a new encrypted repository needs a passphrase",
            "pass --password-file FILE (or set CIRKEL_PASSWORD_FILE / CIRKEL_PASSWORD); or --no-encryption to store data in the clear",
        ));
    }
    if let Some(src) = &args.copy_keys_from {
        let pw = args.from_password_file.as_deref().or(global.password_file.as_deref());
        let src = resolve(cfg, Some(src), pw)?.open().context("open the --copy-keys-from repository")?;
        match src.crypto().master_key() {
            Some(k) if opts.encrypt => {
                // Sealed blobs move verbatim between the two, so they share the cipher too.
                if let Some(cipher) = src.crypto().cipher() {
                    if args.cipher != CipherArg::Auto && cipher != opts.cipher {
                        return Err(user_error(
                            "--cipher differs from the --copy-keys-from repository's",
                            format!("drop --cipher: the new repository takes {}", cipher.config_name()),
                        ));
                    }
                    opts.cipher = cipher;
                }
                opts.master_key = Some(k.clone());
            }
            _ => {
                return Err(user_error(
                    "--copy-keys-from needs both repositories encrypted",
                    "drop --no-encryption, or copy from an encrypted repository",
                ));
            }
        }
        opts.chunker = src.config().chunker;
    }
    let repo = Repository::init(target.backend()?, target.password.as_deref().map(str::as_bytes), opts)?;
    if global.json {
        print_json(
            &json!({ "location": repo.location(), "id": repo.config().id, "encryption": repo.config().encryption }),
        );
    } else if !global.quiet {
        println!(
            "created repository {} at {} ({})",
            repo.config().id.short(),
            repo.location(),
            match repo.crypto().cipher() {
                Some(Cipher::Aes256Gcm) => "encrypted with AES-256-GCM",
                Some(Cipher::XChaCha20Poly1305) => "encrypted with XChaCha20-Poly1305",
                None => "NOT encrypted",
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn policy_from(args: &PolicyArgs, cfg: Option<&cirkel_config::RetentionConfig>) -> Policy {
    let from_flags = Policy {
        keep_last: args.keep_last.unwrap_or(0),
        keep_hourly: args.keep_hourly.unwrap_or(0),
        keep_daily: args.keep_daily.unwrap_or(0),
        keep_weekly: args.keep_weekly.unwrap_or(0),
        keep_monthly: args.keep_monthly.unwrap_or(0),
        keep_yearly: args.keep_yearly.unwrap_or(0),
        keep_within: args.keep_within,
        keep_tags: args.keep_tags.clone(),
    };
    if !from_flags.is_empty() {
        return from_flags;
    }
    match cfg {
        Some(r) => Policy {
            keep_last: r.keep_last,
            keep_hourly: r.keep_hourly,
            keep_daily: r.keep_daily,
            keep_weekly: r.keep_weekly,
            keep_monthly: r.keep_monthly,
            keep_yearly: r.keep_yearly,
            keep_within: r.keep_within,
            keep_tags: r.keep_tags.clone(),
        },
        None => from_flags,
    }
}

fn prune_cmd(global: &Global, cfg: &cirkel_config::Config, args: &PruneArgs) -> anyhow::Result<ExitCode> {
    let (repo, _owner) = crate::owner::open_writer(global, &main_repo(global, cfg)?)?;
    let policy = policy_from(&args.policy, cfg.retention.as_ref());
    if !(0.0..=100.0).contains(&args.max_unused) {
        return Err(user_error("--max-unused must be a percentage from 0 to 100", "e.g. --max-unused 20"));
    }
    let opts =
        PruneOptions { policy, only_tag: args.tag.clone(), dry_run: args.dry_run, max_unused: args.max_unused / 100.0 };
    let report = prune(&repo, &opts)?;
    for tag in unmatched_keep_tags(&opts.policy, &report.decisions) {
        eprintln!(
            "warning: --keep-tag {tag}: no snapshot carries this tag; check its spelling (`cirkel snapshots` lists tags)"
        );
    }
    if global.json {
        print_json(&report);
    } else {
        if opts.policy.is_empty() {
            println!("no retention policy given: keeping every snapshot, removing unused data only");
        }
        for d in &report.decisions {
            println!(
                "{} {}  {}",
                if d.keep { "keep  " } else { "forget" },
                d.id.short(),
                if d.reasons.is_empty() { String::new() } else { d.reasons.join(", ") }
            );
        }
        let verb = if report.dry_run { "would remove" } else { "removed" };
        println!(
            "{verb} {} snapshot(s), {} pack(s) ({} repacked, {} left by interrupted writes), freeing {}",
            report.snapshots_removed,
            report.packs_removed + report.orphan_packs_removed,
            report.packs_repacked,
            report.orphan_packs_removed,
            human_bytes(report.bytes_freed)
        );
        if let Some(d) = &report.deferred {
            println!("note: data removal deferred: {d}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
