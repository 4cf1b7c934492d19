//! Logs go to stderr: JSON lines when it is not a terminal (CloudWatch parses them), text on a
//! terminal. Stdout is reserved for results (summary lines, listings, plans).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;
use crate::config::ConfigError;

/// Fails (exit 2) on a filter that does not parse, instead of quietly logging at `info`.
pub fn init(format: LogFormat, filter: &str) -> Result<(), ConfigError> {
    let filter = EnvFilter::try_new(filter).map_err(|e| {
        ConfigError::invalid(
            "BACKHAUL_LOG",
            format!(
                "{} is not a log filter ({e}): use e.g. info, debug or backhaul=debug,aws=warn",
                crate::config::quoted(filter)
            ),
        )
    })?;
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init();
    } else {
        builder
            .with_target(false)
            .with_ansi(std::io::stderr().is_terminal())
            .init();
    }
    Ok(())
}
