//! Log lines: text or JSON on stderr. The default filter shows flightlog's
//! own `info` lines and only `warn` and above from dependencies (the Delta
//! kernel logs ~15 `info` lines per commit); `RUST_LOG` overrides it.

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// The filter used when `RUST_LOG` is not set.
/// (deltalake's "skipping statistics of a binary column" warning comes with
/// every flush of a table that has one: expected, so only errors of it.)
pub const DEFAULT_FILTER: &str = "warn,flightlog=info,deltalake_core::writer::stats=error";

/// Installs the global subscriber (once per process; later calls do nothing).
pub fn init(format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
