//! `tracing` setup: level from `--log-level` (an env-filter directive such as
//! `info` or `kvd=debug,raft=info`), plain or JSON lines on stderr.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Validates a log filter directive without installing it.
pub fn check_filter(level: &str) -> Result<(), String> {
    EnvFilter::try_new(level).map(|_| ()).map_err(|e| format!("log level {level:?} is not a valid filter: {e}"))
}

pub fn init(level: &str, json: bool) {
    let filter = EnvFilter::try_new(level).expect("validated at startup");
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
