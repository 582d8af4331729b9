//! `cirkel`: parse the command line, dispatch, render the outcome.

mod cli;
mod cmd;
mod context;
mod output;
mod owner;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};
use crate::output::{Failure, report_failure};

fn main() -> ExitCode {
    output::quiet_broken_pipe();
    let cli = Cli::parse();
    output::init_logging(&cli.global);
    let result = match &cli.command {
        Command::Config(c) => cmd::config::run(&cli.global, c),
        Command::Repo(c) => cmd::repo::run(&cli.global, c),
        Command::Backup(c) => cmd::files::backup(&cli.global, c),
        Command::Restore(c) => cmd::files::restore(&cli.global, c),
        Command::Snapshots(c) => cmd::files::snapshots(&cli.global, c),
        Command::Pg(c) => cmd::pg::run(&cli.global, c),
        Command::Redis(c) => cmd::redis::run(&cli.global, c),
        Command::Status(c) => cmd::redis::status(&cli.global, c),
        Command::Events(c) => cmd::redis::events(&cli.global, c),
        Command::Alarms(c) => cmd::alarms::run(&cli.global, c),
        Command::Alerts(c) => cmd::notify::alerts(&cli.global, c),
        Command::Silence(c) => cmd::notify::silence(&cli.global, c),
        Command::Incident(c) => cmd::notify::incident(&cli.global, c),
        Command::Drill(c) => cmd::redis::drill(&cli.global, c),
        Command::Serve(args) => cmd::serve::serve(&cli.global, args),
        Command::Lab(c) => cmd::lab::run(&cli.global, c),
        Command::Recover(c) => cmd::recover::run(&cli.global, c),
        Command::WalPush(c) => cmd::pg::wal_push(&cli.global, c),
        Command::WalFetch(c) => cmd::pg::wal_fetch(&cli.global, c),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            report_failure(&cli.global, &Failure::from(&e));
            ExitCode::from(1)
        }
    }
}
