//! Tracing set-up: human-readable lines by default, one JSON object per line
//! with `--log-format json`.
//!
//! Worker threads (which write one access-log line per request) keep their
//! lines in a per-thread buffer and write it out in one system call when it
//! fills, when a line arrives 100 ms after the last write, or when the
//! worker's periodic [`flush_this_thread`] runs: like a web server's
//! buffered access log, and without a hand-off to another thread per line.
//! Every other thread writes its lines straight to standard error.
//!
//! Access-log events use the target `fedgate::access`, sign-in records
//! `fedgate::audit`; filter with `RUST_LOG`, e.g.
//! `RUST_LOG=info,fedgate::access=off`.

use std::cell::RefCell;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

const BUFFER_BYTES: usize = 32 * 1024;
const MAX_DELAY: Duration = Duration::from_millis(100);

struct LineBuffer {
    bytes: Vec<u8>,
    last_write: Instant,
}

thread_local! {
    static BUFFER: RefCell<Option<LineBuffer>> = const { RefCell::new(None) };
}

fn write_out(bytes: &[u8]) {
    // A log that cannot be written has nowhere to report that either.
    let _ = std::io::stderr().lock().write_all(bytes);
}

/// Makes the calling thread buffer its log lines. Call
/// [`flush_this_thread`] from the same thread regularly and before it ends.
pub fn buffer_this_thread() {
    BUFFER.with(|b| {
        *b.borrow_mut() = Some(LineBuffer {
            bytes: Vec::with_capacity(BUFFER_BYTES),
            last_write: Instant::now(),
        })
    });
}

/// Writes out what the calling thread has buffered.
pub fn flush_this_thread() {
    BUFFER.with(|b| {
        if let Some(buf) = b.borrow_mut().as_mut() {
            if !buf.bytes.is_empty() {
                write_out(&buf.bytes);
                buf.bytes.clear();
            }
            buf.last_write = Instant::now();
        }
    });
}

/// The writer handed to the formatter: one formatted event per `write`.
pub struct EventWriter;

impl Write for EventWriter {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        let buffered = BUFFER.with(|b| match b.borrow_mut().as_mut() {
            None => false,
            Some(buf) => {
                buf.bytes.extend_from_slice(line);
                if buf.bytes.len() >= BUFFER_BYTES || buf.last_write.elapsed() >= MAX_DELAY {
                    write_out(&buf.bytes);
                    buf.bytes.clear();
                    buf.last_write = Instant::now();
                }
                true
            }
        });
        if !buffered {
            write_out(line);
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[derive(Clone, Copy)]
struct Stderr;

impl<'a> MakeWriter<'a> for Stderr {
    type Writer = EventWriter;

    fn make_writer(&'a self) -> EventWriter {
        EventWriter
    }
}

/// Flushes the calling thread's buffer when dropped (keep it in `main`).
pub struct Guard;

impl Drop for Guard {
    fn drop(&mut self) {
        flush_this_thread();
    }
}

/// Installs the global subscriber.
pub fn init(format: LogFormat, default_level: &str) -> Guard {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(Stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let result = match format {
        LogFormat::Human => builder.with_target(false).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).try_init(),
    };
    // A subscriber may already be installed (tests call into the library
    // several times in one process); the first one stays.
    drop(result);
    Guard
}
