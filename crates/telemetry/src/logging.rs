//! The global `tracing` subscriber: human-readable for a terminal, JSON lines for machines.

use serde::{Deserialize, Serialize};
use tracing_subscriber::EnvFilter;

/// How log lines are written to standard error.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Coloured, multi-field lines for a person at a terminal.
    #[default]
    Pretty,
    /// One JSON object per line, with span fields (such as `request_id`) included.
    Json,
}

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    #[error("invalid log filter `{filter}`: {reason}")]
    InvalidFilter { filter: String, reason: String },
}

/// Checks a filter without installing anything, so configuration errors surface before
/// start-up does any work.
pub fn validate_filter(filter: &str) -> Result<(), LoggingError> {
    parse_filter(filter).map(drop)
}

fn parse_filter(filter: &str) -> Result<EnvFilter, LoggingError> {
    EnvFilter::builder()
        .parse(filter)
        .map_err(|e| LoggingError::InvalidFilter {
            filter: filter.to_owned(),
            reason: e.to_string(),
        })
}

/// Installs the process-wide subscriber. `filter` uses `RUST_LOG` syntax (`info`,
/// `bazaar_api=debug,info`). Calling it again — as tests do — keeps the first subscriber.
pub fn init(format: LogFormat, filter: &str) -> Result<(), LoggingError> {
    let env_filter = parse_filter(filter)?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(env_filter)
        .with_writer(std::io::stderr);
    // `try_init` fails only when a subscriber is already installed, which is fine.
    let _ = match format {
        LogFormat::Pretty => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
    Ok(())
}
