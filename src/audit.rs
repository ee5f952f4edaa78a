//! Audit records of sign-in decisions: emitted as tracing events at once,
//! and written to the store in batches by a background task so the sign-in
//! path never waits on the database.
//!
//! Identical decisions within one flush window (same user name, route,
//! credential, app password, client, user agent, result and reason) are
//! written as one record with a count: a phone syncing every few seconds
//! with the same app password is one line per window, not thousands, and a
//! flood of identical failures cannot outgrow the store.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::model::{AuditRecord, CredentialKind, Reason, UserId};
use crate::shutdown::Shutdown;
use crate::store::Store;

/// How long records are gathered before a batch is written.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// Records waiting for the writer; beyond this, records are counted as
/// dropped rather than slowing sign-ins.
const QUEUE: usize = 65_536;

#[derive(Debug, Clone)]
pub struct AuditSink {
    tx: mpsc::Sender<AuditRecord>,
}

impl AuditSink {
    /// Starts the writer. Trigger `stop` once nothing records any more (after
    /// the drain), then await the handle: the writer writes what it still
    /// holds and ends.
    pub fn start(store: Arc<dyn Store>, stop: Shutdown) -> (AuditSink, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let handle = tokio::spawn(writer(store, rx, stop));
        (AuditSink { tx }, handle)
    }

    pub fn record(&self, record: AuditRecord) {
        tracing::info!(
            target: "fedgate::audit",
            user = %record.upn_given,
            user_id = record.user_id.map(|u| u.0),
            route = %record.route,
            credential = record.credential.as_str(),
            app_password = record.app_password_name.as_deref().unwrap_or("-"),
            client = %record.client_ip,
            user_agent = %record.user_agent,
            success = record.success,
            reason = record.reason.as_str(),
            "sign-in"
        );
        if self.tx.try_send(record).is_err() {
            metrics::counter!("fedgate_audit_dropped_total").increment(1);
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    upn_given: String,
    user_id: Option<UserId>,
    route: String,
    credential: CredentialKind,
    app_password_name: Option<String>,
    client_ip: String,
    user_agent: String,
    success: bool,
    reason: Reason,
}

fn key(r: &AuditRecord) -> Key {
    Key {
        upn_given: r.upn_given.clone(),
        user_id: r.user_id,
        route: r.route.clone(),
        credential: r.credential,
        app_password_name: r.app_password_name.clone(),
        client_ip: r.client_ip.clone(),
        user_agent: r.user_agent.clone(),
        success: r.success,
        reason: r.reason,
    }
}

/// Records of one flush window, identical decisions folded into one record
/// with a count, in first-seen order.
#[derive(Debug, Default)]
pub struct Batch {
    records: Vec<AuditRecord>,
    seen: HashMap<Key, usize>,
}

impl Batch {
    pub fn push(&mut self, r: AuditRecord) {
        let k = key(&r);
        match self.seen.get(&k) {
            Some(&i) => self.records[i].count += r.count,
            None => {
                self.seen.insert(k, self.records.len());
                self.records.push(r);
            }
        }
    }

    pub fn take(&mut self) -> Vec<AuditRecord> {
        self.seen.clear();
        std::mem::take(&mut self.records)
    }
}

async fn writer(store: Arc<dyn Store>, mut rx: mpsc::Receiver<AuditRecord>, shutdown: Shutdown) {
    let mut tick = tokio::time::interval(FLUSH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut pending = Batch::default();
    loop {
        tokio::select! {
            received = rx.recv() => match received {
                Some(r) => pending.push(r),
                None => break,
            },
            _ = tick.tick() => flush(&*store, &mut pending).await,
            _ = shutdown.wait() => break,
        }
    }
    while let Ok(r) = rx.try_recv() {
        pending.push(r);
    }
    flush(&*store, &mut pending).await;
}

async fn flush(store: &dyn Store, pending: &mut Batch) {
    let batch = pending.take();
    if batch.is_empty() {
        return;
    }
    if let Err(err) = store.append_audit(&batch).await {
        // The events were logged already; the store copy is lost for this
        // batch, which the metric and the log make visible.
        metrics::counter!("fedgate_audit_dropped_total").increment(batch.len() as u64);
        tracing::error!(error = %err, records = batch.len(), "cannot write audit records to the store");
    }
}
