//! `fedgate`: parse the command line, set up logging, run the subcommand.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = fedgate::cli::Cli::parse();
    let _log_guard = fedgate::logging::init(cli.log_format, &cli.log_level);
    fedgate::cli::run(cli)
}
