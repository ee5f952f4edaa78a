//! Standard output for the command line. Rust's `println!` panics when a
//! write fails, as it does when the reader of a pipe has gone
//! (`fedgate ... | head -1`); a command that has just changed the store
//! must not die half-way through telling the operator about it. Lines go
//! through [`line`] instead: the first failed write is remembered, later
//! lines are skipped, and the command decides what a lost line means
//! ([`failure`]): nothing for most output, "undo" for a secret shown once.

use std::fmt;
use std::io::{self, Write};
use std::sync::OnceLock;

/// The first write to standard output that failed, if any.
static FAILED: OnceLock<(io::ErrorKind, String)> = OnceLock::new();

/// Exit status after standard output was closed by its reader: what a
/// shell reports for a program ended by SIGPIPE (128 + 13), so pipelines
/// with `pipefail` see what they see for any other tool.
pub const CLOSED_PIPE_EXIT: u8 = 141;

/// Writes one line to standard output (flushed, standard output being
/// line-buffered); after a failed write, does nothing.
pub fn line(args: fmt::Arguments<'_>) {
    if FAILED.get().is_some() {
        return;
    }
    let mut out = io::stdout().lock();
    if let Err(err) = out
        .write_fmt(args)
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush())
    {
        let _ = FAILED.set((err.kind(), err.to_string()));
    }
}

/// Whether every line so far reached standard output's reader (as far as
/// the kernel can tell: written into the pipe or file).
pub fn failure() -> Option<&'static (io::ErrorKind, String)> {
    let _ = io::stdout()
        .lock()
        .flush()
        .map_err(|err| FAILED.set((err.kind(), err.to_string())));
    FAILED.get()
}

/// Prints like `println!`, through [`line`].
macro_rules! outln {
    () => {
        $crate::cli::output::line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::cli::output::line(format_args!($($arg)*))
    };
}
pub(crate) use outln;
