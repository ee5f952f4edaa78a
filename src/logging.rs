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
//! `RUST_LOG=info,fedgate::access=off`. Both formats show every line's
//! target (human: after the level, `INFO fedgate::sync: sync pass ...`;
//! JSON: the `target` field), so what a line shows is what to filter on.

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
    message: &'a mut String,
    /// Where a human-format value is rendered before it is known whether
    /// it needs quoting.
    value: &'a mut String,
}

/// Per-thread buffers an access-log line is assembled in, reused from one
/// line to the next.
#[derive(Default)]
struct Scratch {
    line: String,
    fields: String,
    message: String,
    value: String,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
    /// The whole-second part of the last timestamp written on this thread.
    static CLOCK: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

/// Appends the current time as RFC 3339 with microseconds
/// (`2026-11-28T19:30:00.123456Z`); the part up to the seconds is formatted
/// once a second.
fn push_timestamp(out: &mut String) {
    let now = std::time::SystemTime::now();
    let since = now.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    CLOCK.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != since.as_secs() {
            let whole = std::time::UNIX_EPOCH + Duration::from_secs(since.as_secs());
            c.1 = humantime::format_rfc3339_seconds(whole).to_string();
            // Without the closing 'Z': the fraction goes before it.
            c.1.pop();
            c.0 = since.as_secs();
        }
        out.push_str(&c.1);
    });
    use std::fmt::Write as _;
    let _ = write!(out, ".{:06}Z", since.subsec_micros());
}

fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    push_json_escaped(out, s);
    out.push('"');
}

/// Which bytes JSON requires escaping inside a string: controls, `"` and `\\`.
const NEEDS_ESCAPE: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = true;
        b += 1;
    }
    table[b'"' as usize] = true;
    table[b'\\' as usize] = true;
    table
};

/// The body of a JSON string: runs of plain text are copied as they are,
/// only the characters JSON requires escaping are rewritten.
fn push_json_escaped(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = s.as_bytes();
    let mut plain = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if !NEEDS_ESCAPE[usize::from(b)] {
            continue;
        }
        // Escaped bytes are ASCII, so `i` is a character boundary.
        out.push_str(&s[plain..i]);
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            _ => {
                out.push_str("\\u00");
                out.push(char::from(HEX[usize::from(b >> 4)]));
                out.push(char::from(HEX[usize::from(b & 0xf)]));
            }
        }
        plain = i + 1;
    }
    out.push_str(&s[plain..]);
}

/// Formats a value straight into a JSON string body, escaping as it goes.
struct JsonEscaping<'a>(&'a mut String);

impl std::fmt::Write for JsonEscaping<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        push_json_escaped(self.0, s);
        Ok(())
    }
}

impl LineVisitor<'_> {
    fn key(&mut self, field: &Field) {
        match self.format {
            // Field names are identifiers: nothing in them needs escaping.
            LogFormat::Json => {
                self.line.push_str(",\"");
                self.line.push_str(field.name());
                self.line.push_str("\":");
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
            self.message.push_str(value);
            return;
        }
        self.key(field);
        match self.format {
            LogFormat::Json => push_json_str(self.line, value),
            LogFormat::Human => push_human_value(self.line, value),
        }
    }

    fn number(&mut self, field: &Field, value: impl std::fmt::Display) {
        use std::fmt::Write as _;
        self.key(field);
        let _ = write!(self.line, "{value}");
    }
}

/// `value` as a whole number of thousandths, when it is exactly one (as a
/// duration in milliseconds rounded to the microsecond is) and small enough
/// for the integer to be exact.
fn whole_thousandths(value: f64) -> Option<i64> {
    let scaled = (value * 1e3).round();
    (scaled.abs() < 1e15 && scaled / 1e3 == value).then_some(scaled as i64)
}

/// Writes thousandths as a decimal without trailing zeros, as `f64`'s own
/// `Display` would write the same number (`1.25`, `0.005`, `3`), without its
/// general float formatting.
fn push_thousandths(out: &mut String, thousandths: i64) {
    use std::fmt::Write as _;
    let whole = thousandths / 1000;
    let mut frac = (thousandths % 1000).unsigned_abs();
    if thousandths < 0 && whole == 0 {
        out.push('-');
    }
    let _ = write!(out, "{whole}");
    if frac == 0 {
        return;
    }
    let mut digits = 3;
    while frac % 10 == 0 {
        frac /= 10;
        digits -= 1;
    }
    let _ = write!(out, ".{frac:0digits$}");
}

/// A human-format value: bare, or quoted when it is empty or holds a space,
/// a quote or an equals sign.
fn push_human_value(out: &mut String, value: &str) {
    if value.is_empty() || value.contains([' ', '"', '=']) {
        use std::fmt::Write as _;
        let _ = write!(out, "{value:?}");
    } else {
        out.push_str(value);
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
        if let Some(thousandths) = whole_thousandths(value) {
            self.key(field);
            push_thousandths(self.line, thousandths);
        } else if value.is_finite() {
            self.number(field, value);
        } else {
            self.text(field, &value.to_string());
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write as _;
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
            return;
        }
        self.key(field);
        match self.format {
            // Rendered straight into the line, escaped on the way.
            LogFormat::Json => {
                self.line.push('"');
                let _ = write!(JsonEscaping(self.line), "{value:?}");
                self.line.push('"');
            }
            LogFormat::Human => {
                self.value.clear();
                let _ = write!(self.value, "{value:?}");
                push_human_value(self.line, self.value);
            }
        }
    }
}

impl AccessLog {
    fn write_line(&self, event: &Event<'_>, s: &mut Scratch) {
        let Scratch {
            line,
            fields,
            message,
            value,
        } = s;
        line.clear();
        fields.clear();
        message.clear();
        let mut visitor = LineVisitor {
            line: fields,
            format: self.format,
            message,
            value,
        };
        event.record(&mut visitor);
        let level = event.metadata().level();
        match self.format {
            LogFormat::Json => {
                line.push_str("{\"timestamp\":\"");
                push_timestamp(line);
                line.push_str("\",\"level\":\"");
                line.push_str(level.as_str());
                line.push_str("\",\"message\":");
                push_json_str(line, message);
                line.push_str(fields);
                line.push_str(",\"target\":\"");
                line.push_str(ACCESS_TARGET);
                line.push_str("\"}\n");
            }
            LogFormat::Human => {
                use std::fmt::Write as _;
                push_timestamp(line);
                let _ = writeln!(line, " {level:>5} {ACCESS_TARGET}: {message}{fields}");
            }
        }
        let _ = EventWriter.write(line.as_bytes());
    }
}

impl<S: Subscriber> Layer<S> for AccessLog {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        if event.metadata().target() != ACCESS_TARGET {
            return;
        }
        SCRATCH.with(|s| match s.try_borrow_mut() {
            Ok(mut s) => self.write_line(event, &mut s),
            // A value whose formatting logs an access event itself: give
            // the inner line buffers of its own.
            Err(_) => self.write_line(event, &mut Scratch::default()),
        });
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
            .with_target(true)
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
    use super::{push_json_str, push_thousandths, whole_thousandths};

    #[test]
    fn json_strings_are_escaped() {
        let mut out = String::new();
        push_json_str(&mut out, "a\"b\\c\nd\u{1}é");
        assert_eq!(out, r#""a\"b\\c\nd\u0001é""#);
        let parsed: String = serde_json::from_str(&out).unwrap();
        assert_eq!(parsed, "a\"b\\c\nd\u{1}é");
    }

    #[test]
    fn every_control_character_is_escaped_and_text_around_it_kept() {
        let mut out = String::new();
        let text: String = (0u8..0x80).map(char::from).chain("é✓𝄞".chars()).collect();
        push_json_str(&mut out, &text);
        let parsed: String = serde_json::from_str(&out).unwrap();
        assert_eq!(parsed, text);
        assert!(!out.bytes().any(|b| b < 0x20));
    }

    #[test]
    fn durations_are_written_as_f64_would_write_them() {
        for micros in (0i64..5000).chain([12_345, 999_999, 1_000_000, 86_400_000_000]) {
            let value = (micros as f64) / 1e3;
            let mut out = String::new();
            push_thousandths(&mut out, whole_thousandths(value).unwrap());
            assert_eq!(out, value.to_string(), "{micros} µs");
        }
        assert_eq!(whole_thousandths(0.0001), None);
        assert_eq!(whole_thousandths(f64::NAN), None);
        assert_eq!(whole_thousandths(f64::INFINITY), None);
        let mut out = String::new();
        push_thousandths(&mut out, whole_thousandths(-0.25).unwrap());
        assert_eq!(out, "-0.25");
    }
}
