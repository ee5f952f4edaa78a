//! `fedgate report usage`: the usage report of [`crate::report`], printed
//! as aligned tables, one JSON document (`--json`) or CSV sections
//! (`--csv`).

use std::process::ExitCode;
use std::sync::Arc;

use super::output::outln;
use super::{command_runtime, load, Cli, UsageArgs};
use crate::model::{Clock, SystemClock};
use crate::report::{self, Day, DayRange, ReportError};
use crate::store::OpenMode;

pub fn usage(cli: &Cli, args: &UsageArgs) -> ExitCode {
    if cli.json && args.csv {
        eprintln!("fedgate: --json and --csv: choose one");
        return ExitCode::from(2);
    }
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let now = clock.now_ms();
    // The range is checked before the config and the store are touched.
    let range = match parse_range(args, now) {
        Ok(range) => range,
        Err(err) => {
            eprintln!("fedgate: {err}");
            return ExitCode::from(2);
        }
    };
    let config = match load(cli) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let runtime = match command_runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let result = runtime.block_on(async {
        let store = crate::store::open_with(&config.store.url, &config.store.access, clock, OpenMode::Existing).await?;
        let result = report::usage(store.as_ref(), range, now).await;
        store.close().await;
        result
    });
    match result {
        Ok(report) => {
            if cli.json {
                // Invariant: the report is plain data that serializes.
                outln!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
            } else if args.csv {
                outln!("{}", report::to_csv(&report).trim_end());
            } else {
                outln!("{}", report::to_table(&report).trim_end());
            }
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("fedgate: {err}");
            match err {
                ReportError::Input(_) | ReportError::Store(crate::store::StoreError::Missing { .. }) => {
                    ExitCode::from(2)
                }
                ReportError::Store(_) => ExitCode::from(1),
            }
        }
    }
}

fn parse_range(args: &UsageArgs, now: i64) -> Result<DayRange, ReportError> {
    let from = args.from.as_deref().map(Day::parse).transpose()?;
    let to = args.to.as_deref().map(Day::parse).transpose()?;
    DayRange::new(from, to, now)
}
