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

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// The target of the one-line-per-request access log.
pub const ACCESS_TARGET: &str = "fedgate::access";

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

/// Writes access-log events (target [`ACCESS_TARGET`]) itself: the general
/// formatter collects every field into a map of JSON values before writing,
/// which is most of what a request's log line would cost; this layer writes
/// the fields straight into the line, in the same shape.
struct AccessLog {
    format: LogFormat,
}

struct LineVisitor<'a> {
    line: &'a mut String,
    format: LogFormat,
    message: Option<String>,
}

fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                use std::fmt::Write as _;
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

impl LineVisitor<'_> {
    fn key(&mut self, field: &Field) {
        match self.format {
            LogFormat::Json => {
                self.line.push(',');
                push_json_str(self.line, field.name());
                self.line.push(':');
            }
            LogFormat::Human => {
                self.line.push(' ');
                self.line.push_str(field.name());
                self.line.push('=');
            }
        }
    }

    fn text(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = Some(value.to_owned());
            return;
        }
        self.key(field);
        match self.format {
            LogFormat::Json => push_json_str(self.line, value),
            LogFormat::Human if value.is_empty() || value.contains([' ', '"', '=']) => {
                use std::fmt::Write as _;
                let _ = write!(self.line, "{value:?}");
            }
            LogFormat::Human => self.line.push_str(value),
        }
    }

    fn number(&mut self, field: &Field, value: impl std::fmt::Display) {
        use std::fmt::Write as _;
        self.key(field);
        let _ = write!(self.line, "{value}");
    }
}

impl Visit for LineVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.text(field, value);
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.number(field, value);
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.number(field, value);
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.number(field, value);
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        if value.is_finite() {
            self.number(field, value);
        } else {
            self.text(field, &value.to_string());
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let text = format!("{value:?}");
        self.text(field, &text);
    }
}

impl<S: Subscriber> Layer<S> for AccessLog {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        if event.metadata().target() != ACCESS_TARGET {
            return;
        }
        let now = humantime::format_rfc3339_micros(std::time::SystemTime::now());
        let level = event.metadata().level();
        let mut line = String::with_capacity(320);
        let mut fields = String::with_capacity(256);
        let mut visitor = LineVisitor {
            line: &mut fields,
            format: self.format,
            message: None,
        };
        event.record(&mut visitor);
        let message = visitor.message.unwrap_or_default();
        match self.format {
            LogFormat::Json => {
                use std::fmt::Write as _;
                let _ = write!(line, "{{\"timestamp\":\"{now}\",\"level\":\"{level}\",\"message\":");
                push_json_str(&mut line, &message);
                line.push_str(&fields);
                line.push_str(",\"target\":\"");
                line.push_str(ACCESS_TARGET);
                line.push_str("\"}\n");
            }
            LogFormat::Human => {
                use std::fmt::Write as _;
                let _ = writeln!(line, "{now} {level:>5} {message}{fields}");
            }
        }
        let _ = EventWriter.write(line.as_bytes());
    }
}

/// Installs the global subscriber.
pub fn init(format: LogFormat, default_level: &str) -> Guard {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let not_access = tracing_subscriber::filter::filter_fn(|meta| meta.target() != ACCESS_TARGET);
    let ansi = std::io::stderr().is_terminal();
    let general: Box<dyn Layer<_> + Send + Sync> = match format {
        LogFormat::Human => tracing_subscriber::fmt::layer()
            .with_writer(Stderr)
            .with_ansi(ansi)
            .with_target(false)
            .with_filter(not_access)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_writer(Stderr)
            .with_filter(not_access)
            .boxed(),
    };
    let result = tracing_subscriber::registry()
        .with(filter)
        .with(general)
        .with(AccessLog { format })
        .try_init();
    // A subscriber may already be installed (tests call into the library
    // several times in one process); the first one stays.
    drop(result);
    Guard
}

#[cfg(test)]
mod tests {
    use super::push_json_str;

    #[test]
    fn json_strings_are_escaped() {
        let mut out = String::new();
        push_json_str(&mut out, "a\"b\\c\nd\u{1}é");
        assert_eq!(out, r#""a\"b\\c\nd\u0001é""#);
        let parsed: String = serde_json::from_str(&out).unwrap();
        assert_eq!(parsed, "a\"b\\c\nd\u{1}é");
    }
}
