//! Enrolment notices (`fedgate notify`, and `[smtp] auto` in `fedgate
//! serve`): the mail a user gets once an operator puts them in MFA state
//! `enabled`, saying what changes for their apps and where the portal is.
//!
//! This module owns who is due a notice and where it goes ([`plan`], pure),
//! the run that claims, sends and records each one ([`Notifier`]), and the
//! job. The template is [`template`]'s; the mail transport sits behind
//! [`Mailer`] (SMTP in [`smtp`]); the store keeps the notices
//! ([`NoticeStore`]) and says who is due one.
//!
//! Each notice is for one change of state (a row of the MFA state
//! history): a user enabled again after being disabled gets a new one, and
//! one change never gets two. A run claims a notice in the store before
//! sending it, so two runs (or two nodes with `auto`) never both send it;
//! a failure is recorded and retried by the next run. A claim runs out
//! after [`CLAIM_FOR`]: a run killed in the middle of a send leaves its
//! notice claimed, and the next run after that time sends it again (the
//! mail server may or may not have taken the first: a second notice is
//! preferred to none).

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde::Serialize;

use crate::model::{rfc3339, Clock, NoticeStatus, UserSource};
use crate::store::{NoticeCandidate, NoticeClaim, NoticeDone, NoticeStore, StoreError};

pub mod smtp;
pub mod template;

pub use template::{Template, TemplateError};

/// How long a claim holds: longer than any send can take (a send gives up
/// after `[smtp] timeout`, at most a few minutes).
pub const CLAIM_FOR: Duration = Duration::from_secs(600);

/// One mail to send.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mail {
    pub to: String,
    pub subject: String,
    pub body: String,
}

/// Why a mail was not sent; the message is the mail server's or the
/// network's, for the operator and the notice's record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SendError(pub String);

/// Sends mail.
pub trait Mailer: Send + Sync {
    fn send<'a>(&'a self, mail: &'a Mail) -> BoxFuture<'a, Result<(), SendError>>;
}

/// A notice run could not start or go on.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("configuration error: {0}")]
    Config(String),
    #[error("configuration error: {0}")]
    Template(#[from] TemplateError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl NotifyError {
    /// Errors of configuration are the operator's input (exit 2).
    pub fn is_input(&self) -> bool {
        matches!(self, NotifyError::Config(_) | NotifyError::Template(_))
    }
}

/// Where a user's notice goes: the directory's `mail` attribute for a
/// directory user, the UPN for a cloud-only user (their sign-in name is
/// their address). `Err` says why there is none.
pub fn address_of(candidate: &NoticeCandidate) -> Result<String, String> {
    let (address, what) = match candidate.source {
        UserSource::Federated => match candidate.mail.as_deref().map(str::trim) {
            Some(mail) if !mail.is_empty() => (mail.to_owned(), "the directory's mail attribute"),
            _ => return Err("no mail attribute in the directory".into()),
        },
        UserSource::Cloud => (candidate.upn.to_string(), "the UPN"),
    };
    match address.parse::<lettre::Address>() {
        Ok(_) => Ok(address),
        Err(_) => Err(format!("{what} {address:?} is not a mail address")),
    }
}

/// What a run does for one candidate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Planned {
    /// Claim it and send it to this address.
    Send {
        candidate: NoticeCandidate,
        address: String,
    },
    /// Claim it and record that there is no address to send it to.
    NoAddress { candidate: NoticeCandidate, reason: String },
    /// Another run holds it (claimed, not run out): leave it.
    Busy { candidate: NoticeCandidate },
}

/// Decides each candidate ([`NoticeStore::notice_candidates`]) at `now`
/// (unix ms).
pub fn plan(candidates: Vec<NoticeCandidate>, now: i64) -> Vec<Planned> {
    candidates
        .into_iter()
        .map(|candidate| {
            let busy = candidate.notice.as_ref().is_some_and(|n| {
                n.status == NoticeStatus::Sending && n.claimed_until.is_some_and(|until| until >= now)
            });
            if busy {
                return Planned::Busy { candidate };
            }
            match address_of(&candidate) {
                Ok(address) => Planned::Send { candidate, address },
                Err(reason) => Planned::NoAddress { candidate, reason },
            }
        })
        .collect()
}

/// What the template's placeholders other than the user's own hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoticeSettings {
    pub portal_url: String,
    pub organization: String,
}

/// One user in a run's report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NoticeEntry {
    pub upn: String,
    pub address: Option<String>,
    /// When the user was put in state `enabled`.
    pub enabled_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What one run did (or, with `dry_run`, would do).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct NotifyReport {
    pub dry_run: bool,
    pub sent: Vec<NoticeEntry>,
    pub failed: Vec<NoticeEntry>,
    /// Users due a notice without a mail address (recorded; tried again
    /// by the next run).
    pub no_address: Vec<NoticeEntry>,
    /// Notices another run holds.
    pub busy: Vec<NoticeEntry>,
    /// With `dry_run`: each message that would be sent.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub messages: Vec<Mail>,
}

/// Sends the notices due: [`Notifier::run`].
pub struct Notifier {
    store: Arc<dyn NoticeStore>,
    mailer: Arc<dyn Mailer>,
    template: Template,
    settings: NoticeSettings,
    clock: Arc<dyn Clock>,
    /// Who claims (this process).
    holder: String,
}

impl Notifier {
    pub fn new(
        store: Arc<dyn NoticeStore>,
        mailer: Arc<dyn Mailer>,
        template: Template,
        settings: NoticeSettings,
        clock: Arc<dyn Clock>,
    ) -> Notifier {
        Notifier {
            store,
            mailer,
            template,
            settings,
            clock,
            holder: crate::model::this_node(),
        }
    }

    fn mail(&self, candidate: &NoticeCandidate, address: &str) -> Mail {
        let upn = candidate.upn.to_string();
        let display_name = candidate
            .display_name
            .as_deref()
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .unwrap_or(&upn);
        let rendered = self.template.render(&template::Values {
            display_name,
            upn: &upn,
            mail: address,
            portal_url: &self.settings.portal_url,
            organization: &self.settings.organization,
        });
        Mail {
            to: address.to_owned(),
            subject: rendered.subject,
            body: rendered.body,
        }
    }

    /// Mails every user due a notice once. With `dry_run`, reads only:
    /// the report holds each message that would be sent.
    pub async fn run(&self, dry_run: bool) -> Result<NotifyReport, NotifyError> {
        let now = self.clock.now_ms();
        let candidates = self.store.notice_candidates().await?;
        let mut report = NotifyReport {
            dry_run,
            ..NotifyReport::default()
        };
        let entry = |c: &NoticeCandidate, address: Option<&str>, error: Option<String>| NoticeEntry {
            upn: c.upn.to_string(),
            address: address.map(str::to_owned),
            enabled_at: rfc3339(c.enabled_at),
            error,
        };
        for planned in plan(candidates, now) {
            match planned {
                Planned::Busy { candidate } => report.busy.push(entry(&candidate, None, None)),
                Planned::NoAddress { candidate, reason } => {
                    if !dry_run {
                        if !self.claim(&candidate, None).await? {
                            report.busy.push(entry(&candidate, None, None));
                            continue;
                        }
                        self.finish(&candidate, NoticeStatus::NoAddress, Some(reason.clone()))
                            .await?;
                    }
                    report.no_address.push(entry(&candidate, None, Some(reason)));
                }
                Planned::Send { candidate, address } => {
                    let mail = self.mail(&candidate, &address);
                    if dry_run {
                        report.sent.push(entry(&candidate, Some(&address), None));
                        report.messages.push(mail);
                        continue;
                    }
                    if !self.claim(&candidate, Some(&address)).await? {
                        report.busy.push(entry(&candidate, Some(&address), None));
                        continue;
                    }
                    match self.mailer.send(&mail).await {
                        Ok(()) => {
                            self.finish(&candidate, NoticeStatus::Sent, None).await?;
                            tracing::info!(upn = %candidate.upn, to = %address, "enrolment notice sent");
                            report.sent.push(entry(&candidate, Some(&address), None));
                        }
                        Err(err) => {
                            self.finish(&candidate, NoticeStatus::Failed, Some(err.0.clone()))
                                .await?;
                            tracing::warn!(upn = %candidate.upn, to = %address, error = %err, "enrolment notice not sent; the next run tries again");
                            report.failed.push(entry(&candidate, Some(&address), Some(err.0)));
                        }
                    }
                }
            }
        }
        Ok(report)
    }

    async fn claim(&self, candidate: &NoticeCandidate, address: Option<&str>) -> Result<bool, StoreError> {
        let now = self.clock.now_ms();
        let claim_ms = i64::try_from(CLAIM_FOR.as_millis()).unwrap_or(i64::MAX);
        self.store
            .claim_notice(&NoticeClaim {
                user_id: candidate.user_id,
                history_id: candidate.history_id,
                holder: self.holder.clone(),
                address: address.map(str::to_owned),
                now,
                until: now.saturating_add(claim_ms),
            })
            .await
    }

    async fn finish(
        &self,
        candidate: &NoticeCandidate,
        status: NoticeStatus,
        error: Option<String>,
    ) -> Result<(), StoreError> {
        let recorded = self
            .store
            .finish_notice(&NoticeDone {
                history_id: candidate.history_id,
                holder: self.holder.clone(),
                status,
                error,
                now: self.clock.now_ms(),
            })
            .await?;
        if !recorded {
            tracing::warn!(upn = %candidate.upn, "enrolment notice claimed by another run meanwhile; its outcome was not recorded here");
        }
        Ok(())
    }
}

/// `[smtp] auto`: the same run as `fedgate notify`, every `interval`,
/// until shutdown. On several nodes each notice is sent by one of them
/// (the claim).
pub fn start_job(notifier: Arc<Notifier>, interval: Duration, shutdown: crate::shutdown::Shutdown) -> crate::jobs::Job {
    crate::jobs::Job::now_and_every("notify", interval, shutdown, move || {
        let notifier = Arc::clone(&notifier);
        async move {
            match notifier.run(false).await {
                Ok(report) => {
                    // Users without an address come back every run: not news.
                    if !(report.sent.is_empty() && report.failed.is_empty()) {
                        tracing::info!(
                            sent = report.sent.len(),
                            failed = report.failed.len(),
                            no_address = report.no_address.len(),
                            "enrolment notices run"
                        );
                    }
                }
                Err(err) => tracing::warn!(error = %err, "enrolment notices not sent; the next run tries again"),
            }
        }
    })
}

#[cfg(test)]
mod tests;
