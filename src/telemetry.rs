//! Tracing (logs) setup: text for people, JSON for log pipelines.

use tracing_subscriber::EnvFilter;

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the global subscriber. `filter` has RUST_LOG syntax.
pub fn init(filter: &str, format: LogFormat) -> Result<(), Box<dyn std::error::Error>> {
    let filter = EnvFilter::try_new(filter)?;
    match format {
        LogFormat::Text => tracing_subscriber::fmt().with_env_filter(filter).try_init().map_err(|e| e.to_string())?,
        LogFormat::Json => {
            tracing_subscriber::fmt().json().with_env_filter(filter).try_init().map_err(|e| e.to_string())?
        }
    }
    Ok(())
}
