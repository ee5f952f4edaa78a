//! `fedgate notify [--dry-run]`: one run of [`crate::notify::Notifier`]
//! against the configured store and `[smtp]` server. Exit 1 when any
//! notice failed (it is retried by the next run), 2 on a configuration
//! error.

use std::process::ExitCode;
use std::sync::Arc;

use super::output::outln;
use super::{command_runtime, load, Cli, NotifyArgs};
use crate::model::{Clock, SystemClock};
use crate::notify::smtp::SmtpMailer;
use crate::notify::{NoticeSettings, Notifier, NotifyError, NotifyReport, Template};
use crate::store::OpenMode;

pub fn run(cli: &Cli, args: &NotifyArgs) -> ExitCode {
    let config = match load(cli) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let Some(smtp) = config.smtp.clone() else {
        eprintln!("fedgate: configuration error: smtp: no [smtp] section: notices need a mail server (see README, \"Notifying users\")");
        return ExitCode::from(2);
    };
    let runtime = match command_runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let result = runtime.block_on(async {
        let template = Template::load(&smtp.template)?;
        let mailer = Arc::new(SmtpMailer::new(&smtp)?);
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let store = crate::store::open_with(
            &config.store.url,
            &config.store.access,
            Arc::clone(&clock),
            OpenMode::Existing,
        )
        .await?;
        let notifier = Notifier::new(
            store.clone(),
            mailer,
            template,
            NoticeSettings {
                portal_url: smtp.portal_url.clone(),
                organization: smtp.organization.clone(),
            },
            clock,
        );
        let result = notifier.run(args.dry_run).await;
        store.close().await;
        result
    });
    match result {
        Ok(report) => {
            if cli.json {
                // Invariant: the report is plain data that serializes.
                outln!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
            } else {
                print_human(&report);
            }
            if report.failed.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(err) => {
            eprintln!("fedgate: {err}");
            match err {
                NotifyError::Store(crate::store::StoreError::Missing { .. }) => ExitCode::from(2),
                err if err.is_input() => ExitCode::from(2),
                _ => ExitCode::from(1),
            }
        }
    }
}

fn print_human(report: &NotifyReport) {
    if report.dry_run {
        for mail in &report.messages {
            outln!("To: {}", mail.to);
            outln!("Subject: {}", mail.subject);
            outln!("");
            outln!("{}", mail.body.trim_end());
            outln!("----");
        }
    }
    let verb = if report.dry_run { "would send" } else { "sent" };
    for e in &report.sent {
        outln!("{verb:<10}  {}  {}", e.upn, e.address.as_deref().unwrap_or(""));
    }
    for e in &report.failed {
        outln!(
            "failed      {}  {}  {}",
            e.upn,
            e.address.as_deref().unwrap_or(""),
            e.error.as_deref().unwrap_or("")
        );
    }
    for e in &report.no_address {
        outln!("no address  {}  {}", e.upn, e.error.as_deref().unwrap_or(""));
    }
    for e in &report.busy {
        outln!("busy        {}  (another run is sending it)", e.upn);
    }
    outln!(
        "{} {verb}, {} failed, {} without a mail address, {} held by another run{}",
        report.sent.len(),
        report.failed.len(),
        report.no_address.len(),
        report.busy.len(),
        if report.dry_run {
            " (dry run: nothing sent or recorded)"
        } else {
            ""
        }
    );
}
