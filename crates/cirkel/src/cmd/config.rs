//! `cirkel config check|show`.

use std::process::ExitCode;

use crate::cli::{ConfigCmd, Global};
use crate::context::load_config;
use crate::output::{print_json, user_error};

pub fn run(global: &Global, cmd: &ConfigCmd) -> anyhow::Result<ExitCode> {
    if global.config.is_none() {
        return Err(user_error("no configuration file given", "pass --config FILE or set CIRKEL_CONFIG"));
    }
    match cmd {
        ConfigCmd::Check => match load_config(global) {
            Ok(cfg) => {
                if global.json {
                    print_json(&serde_json::json!({ "ok": true, "errors": [] }));
                } else {
                    println!(
                        "configuration OK: {} repositor{}, {} file set{}",
                        cfg.repository.iter().count() + cfg.repositories.len(),
                        if cfg.repository.iter().count() + cfg.repositories.len() == 1 { "y" } else { "ies" },
                        cfg.files.len(),
                        if cfg.files.len() == 1 { "" } else { "s" }
                    );
                }
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                if let Some(errs) = e.downcast_ref::<cirkel_config::ConfigErrors>() {
                    if global.json {
                        print_json(&serde_json::json!({ "ok": false, "errors": errs.0 }));
                    }
                    eprint!("{errs}");
                    eprintln!("hint: each line names the file, line and column, and what was expected");
                    return Ok(ExitCode::from(1));
                }
                Err(e)
            }
        },
        ConfigCmd::Show => {
            let cfg = load_config(global)?;
            if global.json {
                print_json(&cfg);
            } else {
                print!("{}", cfg.to_toml());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
