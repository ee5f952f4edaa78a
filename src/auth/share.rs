//! The lockout's counts shared between the nodes of one store: what this
//! node counts is queued here and sent through the store in batches; what
//! the other nodes sent is counted here too ([`Lockout::failed_elsewhere`],
//! [`Lockout::succeeded`]). A guesser spreading attempts over the nodes
//! behind a load balancer then meets one budget per account, and a phone
//! that signed in on one node is familiar on all.
//!
//! Nothing of this is on the warm path: a queued event is a push under a
//! lock, made only when the lockout counted a refusal or a source became
//! familiar (at most once a minute per source). Sending and reading run in
//! a background job, woken at once by the store's announcement where the
//! store has one (PostgreSQL's NOTIFY), and every [`SHARE_INTERVAL`]
//! otherwise.

use std::net::IpAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::lockout::{Lockout, Subject};
use crate::model::{Clock, Reason, UserId};
use crate::store::{LockoutEvent, LockoutEventKind, LockoutStore, StoreError};

/// How often events are sent and read when nothing announces them.
pub const SHARE_INTERVAL: Duration = Duration::from_millis(200);
/// Events waiting to be sent; beyond this (a store down during a spray)
/// the newest are dropped and counted: the node still counts them itself.
const MAX_OUTBOX: usize = 50_000;
/// Events read per store call.
const READ_PAGE: u32 = 1_000;
/// How long events are kept in the store: longer than any lockout run or
/// spray window a node starting now must know of.
pub const KEPT: Duration = Duration::from_secs(2 * 3600);

pub struct Sharing {
    /// This process, as its events name it; its own events read back are
    /// skipped.
    node: String,
    clock: Arc<dyn Clock>,
    outbox: Mutex<Vec<LockoutEvent>>,
    /// The newest event read.
    seq: AtomicI64,
}

impl Sharing {
    /// Starts reading at the events of the last `window`, so a node that
    /// starts (or restarts) counts what the others counted lately.
    pub async fn start(
        store: &dyn LockoutStore,
        node: String,
        clock: Arc<dyn Clock>,
        window: Duration,
    ) -> Result<Sharing, StoreError> {
        let since = clock.now_ms() - window.as_millis() as i64;
        let seq = store.lockout_seq_before(since).await?;
        Ok(Sharing {
            node,
            clock,
            outbox: Mutex::new(Vec::new()),
            seq: AtomicI64::new(seq),
        })
    }

    fn queue(&self, kind: LockoutEventKind, subject: Subject<'_>, ip: IpAddr) {
        let (user_id, name) = match subject {
            Subject::User(id) => (Some(id), None),
            Subject::Name(name) => (None, Some(name.to_owned())),
        };
        let event = LockoutEvent {
            at: self.clock.now_ms(),
            node: self.node.clone(),
            kind,
            user_id,
            name,
            client_ip: ip.to_string(),
        };
        let mut outbox = self.outbox.lock().unwrap_or_else(|p| p.into_inner());
        if outbox.len() < MAX_OUTBOX {
            outbox.push(event);
        } else {
            metrics::counter!("fedgate_lockout_events_dropped_total").increment(1);
        }
    }

    /// A refusal this node counted.
    pub fn failed(&self, subject: Subject<'_>, ip: IpAddr, reason: Reason) {
        self.queue(LockoutEventKind::Failed(reason), subject, ip);
    }

    /// A source that became familiar to `user` here.
    pub fn signed_in(&self, user: UserId, ip: IpAddr) {
        self.queue(LockoutEventKind::SignedIn, Subject::User(user), ip);
    }

    /// Sends what is queued, then counts what the other nodes sent. What
    /// the store refuses stays queued for the next time.
    pub async fn exchange(&self, store: &dyn LockoutStore, lockout: &Lockout) -> Result<(), StoreError> {
        let batch = std::mem::take(&mut *self.outbox.lock().unwrap_or_else(|p| p.into_inner()));
        if let Err(err) = store.append_lockout_events(&batch).await {
            let mut outbox = self.outbox.lock().unwrap_or_else(|p| p.into_inner());
            let room = MAX_OUTBOX.saturating_sub(outbox.len());
            let kept = batch.len().min(room);
            metrics::counter!("fedgate_lockout_events_dropped_total").increment((batch.len() - kept) as u64);
            // Oldest first, ahead of what was queued meanwhile.
            outbox.splice(0..0, batch.into_iter().take(kept));
            return Err(err);
        }
        loop {
            let since = self.seq.load(Ordering::Acquire);
            let events = store.lockout_events_since(since, READ_PAGE).await?;
            let Some((last, _)) = events.last() else {
                return Ok(());
            };
            let last = *last;
            let now_ms = self.clock.now_ms();
            let now = Instant::now();
            for (_, event) in events.iter().filter(|(_, e)| e.node != self.node) {
                self.apply(lockout, event, now, now_ms);
            }
            self.seq.store(last, Ordering::Release);
            if events.len() < READ_PAGE as usize {
                return Ok(());
            }
        }
    }

    /// Counts another node's event as of when it happened.
    fn apply(&self, lockout: &Lockout, event: &LockoutEvent, now: Instant, now_ms: i64) {
        let Ok(ip) = event.client_ip.parse::<IpAddr>() else {
            return;
        };
        let age = Duration::from_millis(now_ms.saturating_sub(event.at).max(0) as u64);
        let at = now.checked_sub(age).unwrap_or(now);
        let subject = match (&event.user_id, &event.name) {
            (Some(id), _) => Subject::User(*id),
            (None, Some(name)) => Subject::Name(name),
            (None, None) => return,
        };
        match event.kind {
            LockoutEventKind::Failed(reason) => {
                let failed = lockout.failed_elsewhere(subject, ip, reason, at);
                if let Some(length) = failed.locked {
                    tracing::warn!(client = %ip, node = %event.node, lockout = ?length, "too many wrong secrets, counted over the nodes: account locked out for a while");
                }
            }
            LockoutEventKind::SignedIn => {
                if let Subject::User(user) = subject {
                    lockout.succeeded(user, ip, true, at);
                }
            }
        }
    }
}
