//! `topgun-node`: parse the configuration, set up logging, run the node. The only place that
//! turns errors into exit codes: 2 for a configuration problem, 1 for anything else.
use std::process::ExitCode;

use topgun_node::config::Config;
use topgun_node::node::{self, StartError};
use topgun_node::telemetry::logging::Logging;

/// jemalloc: its statistics feed `topgun_memory_usage_bytes`, and it holds up better than the
/// system allocator under many small per-connection allocations.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The one stderr line of a node that cannot start: the error's stable code, then its message.
fn fail(e: impl std::fmt::Display, code: &str, exit: u8) -> ExitCode {
    eprintln!("topgun-node: error [{code}]: {e}");
    ExitCode::from(exit)
}

fn main() -> ExitCode {
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    match args.get(1).and_then(|a| a.to_str()) {
        Some("check-config") => {
            args.remove(1);
            return match Config::check_from(args) {
                Ok(checked) => {
                    print!("{}", node::commands::render_check(&checked));
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&e, e.code(), 2),
            };
        }
        Some("healthcheck") => {
            let url = args.get(2).and_then(|a| a.to_str());
            return match node::commands::healthcheck(url) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(&e, "unhealthy", 1),
            };
        }
        _ => {}
    }
    let config = match Config::load_from(args) {
        Ok(c) => c,
        Err(e) => return fail(&e, e.code(), 2),
    };
    let node_id = match node::resolve_node_id(&config) {
        Ok(id) => id,
        Err(e) => return fail(&e, e.code(), 1),
    };
    let logging = match Logging::init(
        &config.log_dest,
        config.log_level,
        config.log_buffer,
        &node_id,
    ) {
        Ok(l) => l,
        Err(source) => {
            let dest = config.log_dest.to_string();
            let e = StartError::LogDest { dest, source };
            return fail(&e, e.code(), 1);
        }
    };
    match node::run(config, logging, node_id) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e, e.code(), e.exit_code()),
    }
}
