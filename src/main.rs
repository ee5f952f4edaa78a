//! `fedgate`: parse the command line, set up logging, run the subcommand.

use std::process::ExitCode;

use clap::Parser;

// The proxy allocates small, short-lived buffers on every request from
// several threads; mimalloc's thread-local free lists suit that pattern.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = fedgate::cli::Cli::parse();
    let _log_guard = fedgate::logging::init(cli.log_format, &cli.log_level);
    fedgate::cli::run(cli)
}
