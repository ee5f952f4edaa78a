//! Tracing set-up: human-readable lines by default, one JSON object per line
//! with `--log-format json`. Events are written by a background thread so a
//! slow terminal or disk never stalls request handling.
//!
//! Access-log events use the target `fedgate::access`; filter with
//! `RUST_LOG`, e.g. `RUST_LOG=info,fedgate::access=off`.

use std::io::IsTerminal;

use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

/// Installs the global subscriber. Keep the guard alive until exit: dropping
/// it flushes the events still queued.
pub fn init(format: LogFormat, default_level: &str) -> WorkerGuard {
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .buffered_lines_limit(64 * 1024)
        .lossy(true)
        // The worker drains every queued event, then flushes: one write per
        // batch instead of one per line when the log is busy.
        .finish(std::io::BufWriter::with_capacity(64 * 1024, std::io::stderr()));
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(std::io::stderr().is_terminal());
    let result = match format {
        LogFormat::Human => builder.with_target(false).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).try_init(),
    };
    // A subscriber may already be installed (tests call into the library
    // several times in one process); the first one stays.
    drop(result);
    guard
}
