//! Audit records of sign-in decisions, gathered in memory and written to
//! the store (and emitted as `fedgate::audit` log events) once a second by
//! a background writer, so the sign-in path never waits on a database or a
//! log formatter.
//!
//! Identical decisions within one window (same user name, route,
//! credential, app password, client, user agent, result and reason) become
//! one record with a count: a phone syncing every few seconds with the same
//! app password is one line per window, not thousands, and a flood of
//! identical failures cannot outgrow the store. Folding happens as records
//! arrive and costs a hash and a comparison; only a new kind of record
//! allocates.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::model::{
    audit_text, AuditRecord, CredentialKind, Reason, UserId, MAX_AUDIT_UPN_CHARS, MAX_AUDIT_USER_AGENT_CHARS,
};
use crate::shutdown::Shutdown;
use crate::store::AuditStore;

/// How long decisions are gathered before they are written.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// Distinct records held per window; beyond this, records are counted as
/// dropped rather than letting a flood of unique user names grow memory.
const MAX_PENDING: usize = 100_000;
/// Records kept for the store while it cannot be written (a database
/// restarting, a failover): about a minute of a busy site's distinct
/// records, a few tens of MiB at most. Beyond this the oldest are dropped
/// (each was logged as a `fedgate::audit` event when it was made).
const MAX_QUEUED: usize = 200_000;
/// Records written per store call when catching up, so a long queue is
/// many small transactions rather than one huge one.
const WRITE_CHUNK: usize = 1_000;

/// One decision as the sign-in path sees it: borrowed, nothing allocated.
#[derive(Debug, Clone, Copy)]
pub struct Event<'a> {
    pub at: i64,
    pub upn_given: &'a str,
    pub user_id: Option<UserId>,
    pub route: &'a str,
    pub credential: CredentialKind,
    pub app_password_name: Option<&'a str>,
    pub client_ip: IpAddr,
    pub user_agent: &'a str,
    pub success: bool,
    pub reason: Reason,
    /// The `[[policy]]` that decided, by its reason name.
    pub policy: Option<&'a str>,
}

impl Event<'_> {
    fn fingerprint(&self, state: &foldhash::fast::RandomState) -> u64 {
        let mut h = state.build_hasher();
        self.upn_given.hash(&mut h);
        self.user_id.hash(&mut h);
        self.route.hash(&mut h);
        self.credential.as_str().hash(&mut h);
        self.app_password_name.hash(&mut h);
        self.client_ip.hash(&mut h);
        self.user_agent.hash(&mut h);
        self.success.hash(&mut h);
        self.reason.as_str().hash(&mut h);
        self.policy.hash(&mut h);
        h.finish()
    }

    fn matches(&self, r: &Pending) -> bool {
        self.upn_given == r.record.upn_given
            && self.user_id == r.record.user_id
            && self.route == r.record.route
            && self.credential == r.record.credential
            && self.app_password_name == r.record.app_password_name.as_deref()
            && self.client_ip == r.ip
            && self.user_agent == r.raw_user_agent
            && self.success == r.record.success
            && self.reason == r.record.reason
            && self.policy == r.record.policy.as_deref()
    }

    fn to_pending(self) -> Pending {
        Pending {
            ip: self.client_ip,
            raw_user_agent: self.user_agent.to_owned(),
            record: AuditRecord {
                at: self.at,
                upn_given: audit_text(self.upn_given, MAX_AUDIT_UPN_CHARS),
                user_id: self.user_id,
                route: self.route.to_owned(),
                credential: self.credential,
                app_password_name: self.app_password_name.map(str::to_owned),
                client_ip: self.client_ip.to_string(),
                user_agent: audit_text(self.user_agent, MAX_AUDIT_USER_AGENT_CHARS),
                success: self.success,
                reason: self.reason,
                policy: self.policy.map(str::to_owned),
                count: 1,
            },
        }
    }
}

#[derive(Debug)]
struct Pending {
    ip: IpAddr,
    raw_user_agent: String,
    record: AuditRecord,
}

/// The records of one window, identical decisions folded, in first-seen order.
#[derive(Debug, Default)]
struct Batch {
    records: Vec<Pending>,
    by_fingerprint: HashMap<u64, Vec<usize>>,
    dropped: u64,
}

impl Batch {
    fn push(&mut self, event: &Event<'_>, state: &foldhash::fast::RandomState) {
        let fp = event.fingerprint(state);
        let slots = self.by_fingerprint.entry(fp).or_default();
        for &i in slots.iter() {
            if event.matches(&self.records[i]) {
                let r = &mut self.records[i].record;
                r.count = r.count.saturating_add(1);
                return;
            }
        }
        if self.records.len() >= MAX_PENDING {
            self.dropped += 1;
            return;
        }
        slots.push(self.records.len());
        self.records.push(event.to_pending());
    }
}

#[derive(Debug, Default)]
struct Shared {
    batch: Mutex<Batch>,
    state: foldhash::fast::RandomState,
}

#[derive(Debug, Clone)]
pub struct AuditSink {
    shared: Arc<Shared>,
}

impl AuditSink {
    /// Starts the writer. Trigger `stop` once nothing records any more (after
    /// the drain), then await the handle: the writer writes what it still
    /// holds and ends.
    pub fn start(store: Arc<dyn AuditStore>, stop: Shutdown) -> (AuditSink, JoinHandle<()>) {
        let shared = Arc::new(Shared::default());
        let handle = tokio::spawn(writer(store, Arc::clone(&shared), stop));
        (AuditSink { shared }, handle)
    }

    pub fn record(&self, event: &Event<'_>) {
        crate::telemetry::signin(event.credential, event.success, event.reason);
        // Invariant: the lock is held only for a push or a swap, neither of
        // which panics; a poisoned lock still holds a consistent batch.
        let mut batch = self.shared.batch.lock().unwrap_or_else(|p| p.into_inner());
        batch.push(event, &self.shared.state);
    }
}

async fn writer(store: Arc<dyn AuditStore>, shared: Arc<Shared>, stop: Shutdown) {
    let mut tick = tokio::time::interval(FLUSH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut queue = Queue::default();
    loop {
        tokio::select! {
            _ = tick.tick() => flush(&*store, &shared, &mut queue).await,
            _ = stop.wait() => break,
        }
    }
    flush(&*store, &shared, &mut queue).await;
    if !queue.records.is_empty() {
        tracing::error!(
            records = queue.records.len(),
            "stopping with sign-in records the store could not take; they are in this log only"
        );
    }
}

/// Records on their way to the store, oldest first: the window just
/// closed, behind whatever earlier windows the store could not take.
#[derive(Default)]
struct Queue {
    records: std::collections::VecDeque<AuditRecord>,
    /// Whether the last write failed, so a store that stays broken is one
    /// error in the log (and counters that keep growing), not one a second.
    failing: bool,
}

impl Queue {
    /// Adds a window's records, dropping the oldest beyond [`MAX_QUEUED`].
    fn push(&mut self, records: Vec<AuditRecord>) {
        self.records.extend(records);
        let over = self.records.len().saturating_sub(MAX_QUEUED);
        if over > 0 {
            self.records.drain(..over);
            metrics::counter!("fedgate_audit_dropped_total").increment(over as u64);
        }
    }
}

/// Logs the window's records and writes them, after any that earlier
/// flushes could not write, in chunks. What the store refuses stays queued
/// for the next flush. A chunk leaves the queue once the store said its
/// transaction committed, so nothing acknowledged is written twice; only a
/// connection lost during the commit itself leaves it unknown whether the
/// chunk was written, and it is written again.
async fn flush(store: &dyn AuditStore, shared: &Shared, queue: &mut Queue) {
    let batch = {
        let mut guard = shared.batch.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::take(&mut *guard)
    };
    if batch.dropped > 0 {
        metrics::counter!("fedgate_audit_dropped_total").increment(batch.dropped);
        tracing::warn!(
            dropped = batch.dropped,
            "too many distinct sign-in records in one second: some were not kept"
        );
    }
    let records: Vec<AuditRecord> = batch.records.into_iter().map(|p| p.record).collect();
    for r in &records {
        tracing::info!(
            target: "fedgate::audit",
            user = %r.upn_given,
            user_id = r.user_id.map(|u| u.0),
            route = %r.route,
            credential = r.credential.as_str(),
            app_password = r.app_password_name.as_deref().unwrap_or("-"),
            client = %r.client_ip,
            user_agent = %r.user_agent,
            success = r.success,
            reason = %r.reason_text(),
            count = r.count,
            "sign-in"
        );
    }
    let fresh = records.len();
    queue.push(records);
    while !queue.records.is_empty() {
        let n = queue.records.len().min(WRITE_CHUNK);
        let chunk: Vec<AuditRecord> = queue.records.iter().take(n).cloned().collect();
        match store.append_audit(&chunk).await {
            Ok(()) => {
                queue.records.drain(..n);
            }
            Err(err) => {
                metrics::counter!("fedgate_audit_unwritten_total").increment(fresh as u64);
                if !queue.failing {
                    tracing::error!(
                        error = %err,
                        queued = queue.records.len(),
                        "cannot write sign-in records to the store; they wait in memory (fedgate_audit_queued, at most {MAX_QUEUED}, the oldest dropped beyond)"
                    );
                }
                queue.failing = true;
                break;
            }
        }
    }
    if queue.records.is_empty() && queue.failing {
        queue.failing = false;
        tracing::warn!("sign-in records are written to the store again, the ones that waited included");
    }
    metrics::gauge!("fedgate_audit_queued").set(queue.records.len() as f64);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event<'a>(user: &'a str, ua: &'a str, success: bool) -> Event<'a> {
        Event {
            at: 1,
            upn_given: user,
            user_id: None,
            route: "/EWS",
            credential: CredentialKind::Password,
            app_password_name: None,
            client_ip: "192.0.2.1".parse().unwrap(),
            user_agent: ua,
            success,
            reason: if success {
                Reason::Password
            } else {
                Reason::BadCredentials
            },
            policy: None,
        }
    }

    #[test]
    fn identical_decisions_fold_into_one_record() {
        let state = foldhash::fast::RandomState::default();
        let mut b = Batch::default();
        for _ in 0..3 {
            b.push(&event("alice@x.example", "iPhone", true), &state);
        }
        b.push(&event("alice@x.example", "Outlook", true), &state);
        b.push(&event("alice@x.example", "iPhone", false), &state);
        let counts: Vec<u32> = b.records.iter().map(|p| p.record.count).collect();
        assert_eq!(counts, vec![3, 1, 1]);
    }

    #[test]
    fn denials_by_different_policies_stay_apart() {
        let state = foldhash::fast::RandomState::default();
        let mut b = Batch::default();
        let denied = |policy| Event {
            reason: Reason::PolicyDenied,
            policy: Some(policy),
            ..event("alice@x.example", "iPhone", false)
        };
        b.push(&denied("corp-only"), &state);
        b.push(&denied("corp-only"), &state);
        b.push(&denied("no-eas"), &state);
        let kept: Vec<(Option<&str>, u32)> = b
            .records
            .iter()
            .map(|p| (p.record.policy.as_deref(), p.record.count))
            .collect();
        assert_eq!(kept, vec![(Some("corp-only"), 2), (Some("no-eas"), 1)]);
        assert_eq!(b.records[0].record.reason_text(), "policy_denied:corp-only");
    }

    #[test]
    fn client_text_is_clamped_and_made_printable() {
        let state = foldhash::fast::RandomState::default();
        let mut b = Batch::default();
        let long = "a".repeat(10_000);
        b.push(&event(&long, "evil\nagent", false), &state);
        let r = &b.records[0].record;
        assert_eq!(r.upn_given.chars().count(), MAX_AUDIT_UPN_CHARS);
        assert!(!r.user_agent.contains('\n'));
    }
}
