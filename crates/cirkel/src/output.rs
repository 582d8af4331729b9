//! How results, errors, logs and progress reach the user.

use std::fmt;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use crate::cli::Global;

/// An error meant for the user, with a hint on what to do.
#[derive(Debug)]
pub struct UserError {
    pub message: String,
    pub hint: Option<String>,
}

impl fmt::Display for UserError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for UserError {}

pub fn user_error(message: impl Into<String>, hint: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(UserError { message: message.into(), hint: Some(hint.into()) })
}

/// What is shown when a command fails.
#[derive(Debug, Serialize)]
pub struct Failure {
    pub error: String,
    pub hint: Option<String>,
}

impl From<&anyhow::Error> for Failure {
    fn from(e: &anyhow::Error) -> Self {
        let mut hint = None;
        for cause in e.chain() {
            if let Some(u) = cause.downcast_ref::<UserError>() {
                hint = u.hint.clone();
            } else if let Some(r) = cause.downcast_ref::<cirkel_repo::Error>() {
                hint = r.hint();
            } else if let Some(b) = cause.downcast_ref::<cirkel_bucket::Error>() {
                hint = b.hint();
            } else if let Some(b) = cause.downcast_ref::<cirkel_repo::BackendError>() {
                hint = b.hint();
            } else if cause.downcast_ref::<cirkel_files::SourceError>().is_some() {
                hint = Some("check the path exists and is readable by this user".into());
            } else if cause.downcast_ref::<cirkel_config::ConfigErrors>().is_some() {
                hint = Some("fix the lines above; `cirkel config check` lists every problem".into());
            }
            if hint.is_some() {
                break;
            }
        }
        // anyhow's alternate form joins the context chain: "open repo: wrong passphrase".
        let error = format!("{e:#}");
        // Whatever command met it, a Redis authentication error has one remedy.
        if error.contains("NOAUTH") {
            hint = Some(
                "the Redis server requires a password: set password_file (and user, for an ACL user) in the \
                 [redis.NAME] table and pass --group NAME, or export REDISCLI_AUTH; see README \"Redis authentication\""
                    .into(),
            );
        } else if error.contains("WRONGPASS") {
            hint = Some(
                "Redis refused the password or ACL user: check password_file and user in the [redis.NAME] table \
                 (or REDISCLI_AUTH) against the server's requirepass / ACL; see README \"Redis authentication\""
                    .into(),
            );
        }
        Failure { error, hint }
    }
}

pub fn report_failure(global: &Global, f: &Failure) {
    if global.json {
        print_json(f);
    }
    eprintln!("error: {}", f.error.trim_end());
    if let Some(h) = &f.hint {
        eprintln!("hint: {h}");
    }
}

/// Makes a closed stdout (`cirkel status | head`) a quiet exit instead of a
/// panic, for every command: `println!` panics on EPIPE, and the hook ends
/// the process with the status a shell expects from a broken pipe.
pub fn quiet_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let text = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if text.contains("failed printing to stdout") && text.contains("Broken pipe") {
            std::process::exit(141);
        }
        default(info);
    }));
}

pub fn print_json<T: Serialize + ?Sized>(value: &T) {
    match serde_json::to_string_pretty(value) {
        Ok(s) => println!("{s}"),
        Err(e) => eprintln!("error: cannot render JSON: {e}"),
    }
}

pub fn init_logging(global: &Global) {
    let level = if global.quiet {
        "error"
    } else {
        match global.verbose {
            0 => "warn",
            1 => "info",
            _ => "debug",
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("CIRKEL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    if global.log_format == crate::cli::LogFormat::Json {
        let _ = tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_target(false)
            .try_init();
        return;
    }
    // Colour codes only for a terminal: logs redirected to a file stay plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(ansi)
        .try_init();
}

/// A byte-counting progress bar on stderr, hidden for --json, -q and non-terminals.
pub fn bytes_bar(global: &Global, total: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    if global.json || global.quiet {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar.set_style(
        ProgressStyle::with_template("{msg:>10} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// A spinner with a counter, for work whose total is unknown.
pub fn spinner(global: &Global, what: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    if global.json || global.quiet {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg} in {pos} files, {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.set_message(what.to_string());
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

pub fn human_bytes(n: u64) -> String {
    indicatif::HumanBytes(n).to_string()
}
