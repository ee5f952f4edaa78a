//! Push sync (`[sync] mode = "push"`): the directory tells fedgate of each
//! change as it happens, over one persistent search that the sync leader
//! keeps open with the service account.
//!
//! - OpenLDAP with `syncprov` (RFC 4533 `refreshAndPersist`): changes are
//!   applied as they arrive, through the same [`plan`](super::plan) and
//!   store writes as a pass, and the cookie that comes with them is saved
//!   after, so a reconnect resumes where the last applied change left
//!   off. The refresh stage at each (re)connect catches up with whatever
//!   happened while the search was down, deletions included (a cookie too
//!   old for the server's session log gets a present phase, which is a
//!   full reconciliation).
//! - Active Directory (change notifications): each notification starts an
//!   incremental `uSNChanged` pass at once, which reads what changed (and
//!   the tombstones of deleted users).
//!
//! The scheduled full pass stays the safety net. While the persistent
//! search is down (refused, cut, or silent past a heartbeat), incremental
//! passes run again: one at once, then every `interval`, until it is back
//! and caught up. Only the leader holds the search; it lets go as soon as
//! it stops leading. The mass-change guard counts what push applied within
//! the last `full_every`, so a mass change that arrives one entry at a time
//! is stopped like one that arrives in a single pass.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;

use super::plan::{self, Guard};
use super::{PassError, Syncer};
use crate::directory::client::push::{NotifiedKind, PushMethod, SyncError, SyncEvent, SyncStream};
use crate::directory::client::SyncSession;
use crate::directory::DirectoryError;
use crate::jobs::Job;
use crate::model::FederatedUser;
use crate::shutdown::Shutdown;
use crate::store::{PushCookie, PushStatus};

/// The first wait before connecting again after a loss; it doubles with
/// each failure up to [`RECONNECT_MAX`].
const RECONNECT_MIN: Duration = Duration::from_millis(500);
const RECONNECT_MAX: Duration = Duration::from_secs(10);
/// The most time between heartbeats (less with a shorter `interval`).
const HEARTBEAT_MAX: Duration = Duration::from_secs(5);
/// How often the push job looks whether it should connect.
const TICK: Duration = Duration::from_millis(250);
/// The most events applied as one batch in the persist stage.
const BATCH: usize = 1000;

/// Push sync's state on this node.
#[derive(Debug, Default)]
pub(super) struct PushState {
    /// What the directory supports, once read from its root DSE: `Some(None)`
    /// when it supports neither method (poll from then on).
    support: Option<Option<PushMethod>>,
    /// Connected and caught up (the refresh stage is over).
    up: bool,
    server: Option<String>,
    since: Option<i64>,
    last_change_at: Option<i64>,
    /// When the search last proved current (caught up, heartbeat), unix ms.
    current_at: Option<i64>,
    error: Option<String>,
    /// Disables and deletions applied by push, with when, for the guard.
    recent: VecDeque<(Instant, usize)>,
    /// Set while the guard holds changes back (unix ms).
    guarded_at: Option<i64>,
    backoff: Duration,
    next_attempt: Option<Instant>,
}

/// Why a persistent search ended.
enum Ended {
    /// Shutdown, or this node no longer leads: not a fault.
    Stopped,
    Lost(DirectoryError),
    /// The cookie cannot be resumed from; start over at once without it.
    Restart,
}

/// Changes received and not applied yet.
#[derive(Debug, Default)]
struct Pending {
    /// By entryUUID; `None` for an entry without a usable UPN.
    changed: HashMap<String, Changed>,
    deleted: HashSet<String>,
    /// Entries a present phase named unchanged.
    present: HashSet<String>,
    present_phase: bool,
    /// The cookie that covers everything above.
    cookie: Option<Vec<u8>>,
}

#[derive(Debug)]
struct Changed {
    user: Option<FederatedUser>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.changed.is_empty() && self.deleted.is_empty() && !self.present_phase
    }

    fn len(&self) -> usize {
        self.changed.len() + self.deleted.len()
    }

    /// Takes in one event (`user` reads a changed entry); `true` when it
    /// ends the refresh stage.
    fn add(&mut self, event: SyncEvent, user: impl FnOnce(&ldap3::SearchEntry) -> Option<FederatedUser>) -> bool {
        match event {
            SyncEvent::Changed { uuid, entry, .. } => {
                let uuid = uuid.to_ascii_lowercase();
                self.deleted.remove(&uuid);
                let user = user(&entry);
                if user.is_none() {
                    tracing::debug!(dn = %entry.dn, "directory entry without a usable UPN: not synced");
                }
                self.changed.insert(uuid, Changed { user });
            }
            SyncEvent::Deleted { uuid } => {
                let uuid = uuid.to_ascii_lowercase();
                self.changed.remove(&uuid);
                self.present.remove(&uuid);
                self.deleted.insert(uuid);
            }
            SyncEvent::Present { uuid } => {
                self.present_phase = true;
                self.present.insert(uuid.to_ascii_lowercase());
            }
            SyncEvent::IdSet { uuids, deleted } => {
                for uuid in uuids {
                    let uuid = uuid.to_ascii_lowercase();
                    if deleted {
                        self.changed.remove(&uuid);
                        self.present.remove(&uuid);
                        self.deleted.insert(uuid);
                    } else {
                        self.present_phase = true;
                        self.present.insert(uuid);
                    }
                }
            }
            SyncEvent::Cookie(cookie) => self.cookie = Some(cookie),
            SyncEvent::PhaseEnd { present, done } => {
                self.present_phase |= present;
                return done;
            }
        }
        false
    }
}

/// What one applied batch changed, for the log and the metrics.
#[derive(Debug, Default)]
struct BatchCounts {
    added: usize,
    modified: usize,
    renamed: usize,
    deleted: usize,
    disabled: usize,
    enabled: usize,
    /// Disables and deletions, for the guard's window.
    destructive: usize,
}

/// What a batch's changes are, by kind: a user the store did not have is
/// added; one whose DN or UPN changes is renamed; any other update is a
/// modify. Entries the directory reported without a change that matters
/// here (a `pwdFailureTime` after a failed bind) plan to nothing and are
/// not counted.
fn count_changes(changes: &[crate::store::DirectoryChange], existing: &[crate::model::User]) -> BatchCounts {
    use crate::store::DirectoryChange;
    let by_anchor: HashMap<&str, &crate::model::User> = existing
        .iter()
        .filter_map(|u| u.directory.as_ref().and_then(|d| d.anchor.as_deref()).map(|a| (a, u)))
        .collect();
    let by_upn: HashMap<&str, &crate::model::User> = existing.iter().map(|u| (u.upn.as_str(), u)).collect();
    let mut counts = BatchCounts::default();
    for change in changes {
        match change {
            DirectoryChange::Delete { .. } => counts.deleted += 1,
            DirectoryChange::Upsert { user, .. } => {
                let current = user
                    .attributes
                    .anchor
                    .as_deref()
                    .and_then(|a| by_anchor.get(a))
                    .or_else(|| by_upn.get(user.upn.as_str()));
                match current {
                    None => counts.added += 1,
                    Some(current)
                        if current.upn != user.upn
                            || current
                                .directory
                                .as_ref()
                                .is_some_and(|d| !d.dn.eq_ignore_ascii_case(&user.attributes.dn)) =>
                    {
                        counts.renamed += 1
                    }
                    Some(_) => counts.modified += 1,
                }
            }
        }
    }
    counts
}

impl Syncer {
    /// The push job: connects (on the leader), and keeps one persistent
    /// search open while it leads.
    pub(super) fn start_push(self: &Arc<Self>, shutdown: &crate::shutdown::Shutdown) -> Job {
        let this = Arc::clone(self);
        let stop = shutdown.clone();
        Job::now_and_every("sync.push", TICK, shutdown.clone(), move || {
            let (this, stop) = (Arc::clone(&this), stop.clone());
            async move { this.push_step(&stop).await }
        })
    }

    /// Whether push sync covers what incremental passes would find: its
    /// search is connected and caught up.
    pub(super) fn push_up(&self) -> bool {
        self.push.lock().unwrap_or_else(|p| p.into_inner()).up
    }

    /// When the persistent search last proved the store current, while it
    /// is up.
    pub(super) fn push_current_at(&self) -> Option<i64> {
        let push = self.push.lock().unwrap_or_else(|p| p.into_inner());
        push.up.then_some(push.current_at).flatten()
    }

    fn heartbeat_every(&self) -> Duration {
        self.config.interval.clamp(Duration::from_millis(200), HEARTBEAT_MAX)
    }

    async fn push_step(&self, stop: &Shutdown) {
        if !self.leading() {
            return;
        }
        {
            let push = self.push.lock().unwrap_or_else(|p| p.into_inner());
            if matches!(push.support, Some(None)) || push.next_attempt.is_some_and(|at| Instant::now() < at) {
                return;
            }
        }
        let session = match self.directory.sync_session().await {
            Ok(session) => session,
            Err(err) => return self.push_lost(None, &err).await,
        };
        let server = session.server().to_owned();
        let ended = self.push_session(session, stop).await;
        match ended {
            Ended::Stopped => self.push_down(None).await,
            Ended::Restart => {
                let mut push = self.push.lock().unwrap_or_else(|p| p.into_inner());
                push.next_attempt = None;
            }
            Ended::Lost(err) => self.push_lost(Some(server), &err).await,
        }
    }

    async fn push_session(&self, mut session: SyncSession<'_>, stop: &Shutdown) -> Ended {
        let method = match self.detect(&mut session).await {
            Ok(Some(method)) => method,
            Ok(None) => {
                session.close().await;
                return Ended::Stopped;
            }
            Err(err) => {
                session.close().await;
                return Ended::Lost(err);
            }
        };
        match method {
            PushMethod::Syncrepl => self.content_sync(session, stop).await,
            PushMethod::Notification => self.notifications(session, stop).await,
        }
    }

    /// Reads once what the directory supports and says which mode runs.
    async fn detect(&self, session: &mut SyncSession<'_>) -> Result<Option<PushMethod>, DirectoryError> {
        if let Some(support) = self.push.lock().unwrap_or_else(|p| p.into_inner()).support {
            return Ok(support);
        }
        let controls = session.supported_controls().await?;
        let method = PushMethod::of(&controls);
        match method {
            Some(method) => tracing::info!(
                mode = "push",
                method = method.as_str(),
                reason = match method {
                    PushMethod::Syncrepl =>
                        "the directory supports RFC 4533 content synchronisation (1.3.6.1.4.1.4203.1.9.1.1)",
                    PushMethod::Notification => "the directory supports change notifications (1.2.840.113556.1.4.528)",
                },
                server = %session.server(),
                "sync mode"
            ),
            None => {
                tracing::warn!(
                    mode = "poll",
                    method = "none",
                    reason = "sync.mode = \"push\", but the directory advertises neither RFC 4533 content \
                              synchronisation (1.3.6.1.4.1.4203.1.9.1.1: OpenLDAP's syncprov overlay) nor change \
                              notifications (1.2.840.113556.1.4.528: Active Directory) in its root DSE's \
                              supportedControl",
                    interval = ?self.config.interval,
                    server = %session.server(),
                    "sync mode"
                );
                self.pass_wanted.store(true, Ordering::SeqCst);
                self.wake.notify_one();
            }
        }
        self.push.lock().unwrap_or_else(|p| p.into_inner()).support = Some(method);
        Ok(method)
    }

    /// OpenLDAP: one `refreshAndPersist` search for as long as it lasts.
    async fn content_sync(&self, mut session: SyncSession<'_>, stop: &Shutdown) -> Ended {
        let server = session.server().to_owned();
        let cookie = match self.store.push_cookie().await {
            Ok(cookie) => cookie.filter(|c| c.server == server).map(|c| c.value),
            Err(err) => {
                tracing::warn!(error = %err, "cannot read the push sync cookie; the search starts from scratch");
                None
            }
        };
        let resumed = cookie.is_some();
        let mut attributes = self.directory.user_attributes().to_vec();
        if !attributes.iter().any(|a| a.eq_ignore_ascii_case("entryUUID")) {
            attributes.push("entryUUID".to_owned());
        }
        let mut stream = match session.content_sync(cookie, attributes).await {
            Ok(stream) => stream,
            Err(err) => {
                session.close().await;
                return Ended::Lost(err);
            }
        };
        let ended = self
            .content_sync_events(&mut session, &mut stream, &server, resumed, stop)
            .await;
        stream.close().await;
        session.close().await;
        ended
    }

    async fn content_sync_events(
        &self,
        session: &mut SyncSession<'_>,
        stream: &mut SyncStream,
        server: &str,
        resumed: bool,
        stop: &Shutdown,
    ) -> Ended {
        let mut heartbeat = tokio::time::interval(self.heartbeat_every());
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        heartbeat.reset();
        let mut pending = Pending::default();
        let mut persisting = false;
        loop {
            let event = tokio::select! {
                event = stream.next() => event,
                _ = heartbeat.tick() => {
                    if !self.leading() {
                        tracing::info!(server = %server, "sync push stopped: this node no longer leads the sync");
                        return Ended::Stopped;
                    }
                    if let Err(err) = session.heartbeat().await {
                        return Ended::Lost(err);
                    }
                    if persisting {
                        // Held back by the guard: applied once a pass
                        // completed (`sync run --force`).
                        if !pending.is_empty() {
                            if let Err(ended) = self.apply_pending(session, &mut pending, server).await {
                                return ended;
                            }
                        }
                        self.push_current(server).await;
                    }
                    continue;
                }
                _ = stop.wait() => return Ended::Stopped,
            };
            let event = match event {
                Ok(event) => event,
                Err(SyncError::RefreshRequired) => {
                    tracing::info!(server = %server, "the directory cannot resume from the stored cookie: the push search starts from scratch");
                    if let Err(err) = self.store.save_push_cookie(None).await {
                        tracing::warn!(error = %err, "cannot forget the push sync cookie");
                    }
                    return Ended::Restart;
                }
                Err(SyncError::Directory(err)) => return Ended::Lost(err),
            };
            let done = pending.add(event, |e| self.directory.federated_user(e, true));
            if let Some(cookie) = stream.take_cookie() {
                pending.cookie = Some(cookie);
            }
            if !persisting {
                if !done {
                    continue;
                }
                // The refresh stage is over: apply it whole (a present
                // phase needs every entry it named), then persist.
                if let Err(ended) = self.apply_pending(session, &mut pending, server).await {
                    return ended;
                }
                persisting = true;
                self.push_connected(server, resumed).await;
                continue;
            }
            // Persist stage: whatever else has already arrived goes in the
            // same batch.
            while pending.len() < BATCH {
                let Some(next) = stream.next().now_or_never() else {
                    break;
                };
                match next {
                    Ok(event) => {
                        pending.add(event, |e| self.directory.federated_user(e, true));
                        if let Some(cookie) = stream.take_cookie() {
                            pending.cookie = Some(cookie);
                        }
                    }
                    Err(SyncError::RefreshRequired) => return Ended::Restart,
                    Err(SyncError::Directory(err)) => return Ended::Lost(err),
                }
            }
            if let Err(ended) = self.apply_pending(session, &mut pending, server).await {
                return ended;
            }
        }
    }

    /// Applies what is pending (unless the guard holds it back) and then
    /// saves its cookie. `Err` ends the search.
    async fn apply_pending(
        &self,
        session: &mut SyncSession<'_>,
        pending: &mut Pending,
        server: &str,
    ) -> Result<(), Ended> {
        if self.guard_holds().await {
            return Ok(());
        }
        let counts = if pending.is_empty() {
            BatchCounts::default()
        } else {
            match self.apply_batch(session, pending).await {
                Ok(Ok(counts)) => counts,
                Ok(Err(guard)) => {
                    self.hold(&guard, server).await;
                    return Ok(());
                }
                Err(PassError::Directory(err)) => return Err(Ended::Lost(err)),
                Err(PassError::Store(err)) => {
                    // Nothing is lost: the cookie stays where it was, and
                    // the search resumes from it.
                    tracing::warn!(error = %err, "cannot apply pushed directory changes; the push search starts again");
                    return Err(Ended::Lost(DirectoryError::Unavailable {
                        server: server.to_owned(),
                        reason: format!("the store failed: {err}"),
                    }));
                }
            }
        };
        let cookie = pending.cookie.take();
        *pending = Pending::default();
        if let Some(value) = cookie {
            let cookie = PushCookie {
                value,
                server: server.to_owned(),
            };
            if let Err(err) = self.store.save_push_cookie(Some(&cookie)).await {
                tracing::warn!(error = %err, "cannot save the push sync cookie; a reconnect replays the changes since the last one");
            }
        }
        if counts.added + counts.modified + counts.renamed + counts.deleted > 0 {
            self.changes_received(&counts, server).await;
        }
        Ok(())
    }

    /// Plans and applies one batch, under this process's apply lock and the
    /// store's lease. The inner `Err` is a batch the guard stopped.
    async fn apply_batch(
        &self,
        session: &mut SyncSession<'_>,
        pending: &Pending,
    ) -> Result<Result<BatchCounts, Guard>, PassError> {
        let uuids: Vec<String> = pending
            .changed
            .iter()
            .filter(|(_, c)| c.user.is_some())
            .map(|(u, _)| u.clone())
            .collect();
        let disabled = if uuids.is_empty() {
            HashSet::new()
        } else {
            session.disabled_among(&uuids).await?
        };
        let mut found: Vec<FederatedUser> = Vec::with_capacity(uuids.len());
        for (uuid, changed) in &pending.changed {
            let Some(user) = &changed.user else { continue };
            let mut user = user.clone();
            user.enabled = !disabled.contains(uuid);
            found.push(user);
        }
        let by_uuid = self
            .directory
            .config()
            .anchor_attribute
            .eq_ignore_ascii_case("entryUUID");
        if !by_uuid && !pending.deleted.is_empty() {
            // Deletions name entryUUIDs, which the store does not keep:
            // only a full pass can find who is gone.
            self.full_wanted.store(true, Ordering::SeqCst);
            self.wake.notify_one();
        }
        let _applying = self.applying.lock().await;
        if !self.take_lease(true).await? {
            return Err(PassError::Directory(DirectoryError::Unavailable {
                server: "sync lease".into(),
                reason: "another process held the sync lease for a minute: pushed changes wait for it".into(),
            }));
        }
        let result = self.plan_and_apply(pending, found, by_uuid).await;
        if let Err(err) = self.store.release_sync_lease(&self.holder).await {
            tracing::warn!(error = %err, "cannot release the sync lease; it expires by itself");
        }
        result
    }

    async fn plan_and_apply(
        &self,
        pending: &Pending,
        found: Vec<FederatedUser>,
        by_uuid: bool,
    ) -> Result<Result<BatchCounts, Guard>, PassError> {
        let mut gone: Vec<String> = if by_uuid {
            pending.deleted.iter().cloned().collect()
        } else {
            Vec::new()
        };
        let existing = if pending.present_phase {
            // Everything the refresh did not name is gone.
            let all = self.store.load_all_users().await?;
            let mut named: HashSet<String> = pending.present.clone();
            named.extend(pending.changed.keys().cloned());
            for user in &found {
                if let Some(anchor) = &user.attributes.anchor {
                    named.insert(anchor.to_ascii_lowercase());
                }
            }
            gone.extend(plan::absent(&all, &named));
            all
        } else {
            let mut anchors: Vec<&str> = found.iter().filter_map(|u| u.attributes.anchor.as_deref()).collect();
            anchors.extend(gone.iter().map(String::as_str));
            let upns: Vec<&str> = found.iter().map(|u| u.upn.as_str()).collect();
            self.store.users_matching(&anchors, &upns).await?
        };
        let mut plan = plan::plan(false, &existing, found, &gone, self.config.revoke_on_password_change);
        let mut counts = count_changes(&plan.changes, &existing);
        drop(existing);
        plan.synced_users = self.store.count_synced_users().await?;
        let recent = self.recent_destructive();
        if let Some(guard) = plan.guard_after(recent, self.config.max_change_share, self.config.guard_floor) {
            return Ok(Err(guard));
        }
        let applied = self.store.apply_directory_changes(&plan.changes).await?;
        counts.disabled = applied.disabled;
        counts.enabled = applied.enabled;
        counts.destructive = applied.disabled + applied.deleted;
        self.note_destructive(counts.destructive);
        if applied.revoked > 0 {
            tracing::info!(
                users = applied.revoked,
                "revoked the app passwords of users whose directory password changed"
            );
        }
        Ok(Ok(counts))
    }

    /// Counts disables and deletions push (or a pass a notification
    /// started) applied, for the guard.
    pub(super) fn note_destructive(&self, n: usize) {
        if n > 0 {
            let mut push = self.push.lock().unwrap_or_else(|p| p.into_inner());
            push.recent.push_back((Instant::now(), n));
        }
    }

    /// The guard stopped a push batch or a pass: changes wait from now
    /// until a pass completes, see [`Syncer::guard_holds`]. The first trip
    /// counts, so that a pass completing after it (`sync run --force` in
    /// another process) ends the hold even when later passes met the guard
    /// again before they learnt of it.
    pub(super) async fn note_guarded(&self, guard: &Guard) {
        {
            let now = self.clock.now_ms();
            let mut push = self.push.lock().unwrap_or_else(|p| p.into_inner());
            push.guarded_at.get_or_insert(now);
            push.error = Some(guard.message());
        }
        self.record_push().await;
    }

    /// Forgets them (a forced pass completed).
    pub(super) fn forget_destructive(&self) {
        self.push.lock().unwrap_or_else(|p| p.into_inner()).recent.clear();
    }

    /// Whether AD's change notifications are what starts passes now.
    pub(super) fn notified(&self) -> bool {
        let push = self.push.lock().unwrap_or_else(|p| p.into_inner());
        push.up && push.support == Some(Some(PushMethod::Notification))
    }

    /// Disables and deletions push applied within the last `full_every`.
    pub(super) fn recent_destructive(&self) -> usize {
        let mut push = self.push.lock().unwrap_or_else(|p| p.into_inner());
        let window = self.config.full_every;
        while push.recent.front().is_some_and(|(at, _)| at.elapsed() > window) {
            push.recent.pop_front();
        }
        push.recent.iter().map(|(_, n)| n).sum()
    }

    /// Whether the guard still holds push changes back: until a pass
    /// completes after it tripped (`fedgate sync run --force`, or a pass
    /// that found the directory back to normal).
    pub(super) async fn guard_holds(&self) -> bool {
        let Some(since) = self.push.lock().unwrap_or_else(|p| p.into_inner()).guarded_at else {
            return false;
        };
        match self.store.last_completed_sync_at().await {
            Ok(Some(at)) if at >= since => {
                let mut push = self.push.lock().unwrap_or_else(|p| p.into_inner());
                push.guarded_at = None;
                push.recent.clear();
                push.error = None;
                tracing::info!("a sync pass completed: push sync applies changes again");
                false
            }
            _ => true,
        }
    }

    async fn hold(&self, guard: &Guard, server: &str) {
        tracing::warn!(server = %server, detail = %guard.message(), "sync push guarded");
        self.note_guarded(guard).await;
    }

    /// AD: change notifications for as long as they last; each starts an
    /// incremental pass.
    async fn notifications(&self, mut session: SyncSession<'_>, stop: &Shutdown) -> Ended {
        let server = session.server().to_owned();
        let (mut stream, deletions) = match session.notifications().await {
            Ok(streams) => streams,
            Err(err) => {
                session.close().await;
                return Ended::Lost(err);
            }
        };
        if !deletions {
            tracing::info!(
                server = %server,
                "no change notifications for CN=Deleted Objects (the service account cannot list it): deletions are \
                 noticed by the pass the next other change starts, or by a full pass"
            );
        }
        // Whatever changed while there was no search: an incremental pass
        // from the mark finds it.
        let resumed = matches!(self.store.sync_mark().await, Ok(Some(_)));
        self.pass_wanted.store(true, Ordering::SeqCst);
        self.wake.notify_one();
        self.push_connected(&server, resumed).await;
        let mut heartbeat = tokio::time::interval(self.heartbeat_every());
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        heartbeat.reset();
        let mut recorded: Option<Instant> = None;
        let ended = loop {
            tokio::select! {
                notified = stream.next() => match notified {
                    Ok(kind) => {
                        let kind = match kind {
                            NotifiedKind::Add => "add",
                            NotifiedKind::Modify => "modify",
                            NotifiedKind::Delete => "delete",
                        };
                        crate::telemetry::sync_changes_received(kind, 1);
                        tracing::debug!(server = %server, kind, "directory change notified");
                        self.push.lock().unwrap_or_else(|p| p.into_inner()).last_change_at = Some(self.clock.now_ms());
                        self.pass_wanted.store(true, Ordering::SeqCst);
                        self.wake.notify_one();
                        // For `sync status` in other processes, as a
                        // syncrepl batch records it; at most every second
                        // (the heartbeat records it too).
                        if recorded.is_none_or(|at: Instant| at.elapsed() >= Duration::from_secs(1)) {
                            self.record_push().await;
                            recorded = Some(Instant::now());
                        }
                    }
                    Err(err) => break Ended::Lost(err),
                },
                _ = heartbeat.tick() => {
                    if !self.leading() {
                        tracing::info!(server = %server, "sync push stopped: this node no longer leads the sync");
                        break Ended::Stopped;
                    }
                    if let Err(err) = session.heartbeat().await {
                        break Ended::Lost(err);
                    }
                    self.push_current(&server).await;
                }
                _ = stop.wait() => break Ended::Stopped,
            }
        };
        stream.close().await;
        session.close().await;
        ended
    }

    async fn push_connected(&self, server: &str, resumed: bool) {
        let method = self.method_name();
        tracing::info!(server = %server, method, resumed, "sync push connected");
        let after_loss = {
            let now = self.clock.now_ms();
            let mut push = self.push.lock().unwrap_or_else(|p| p.into_inner());
            let after_loss = !push.backoff.is_zero();
            push.up = true;
            push.server = Some(server.to_owned());
            push.since = Some(now);
            push.current_at = Some(now);
            if push.guarded_at.is_none() {
                push.error = None;
            }
            push.backoff = Duration::ZERO;
            push.next_attempt = None;
            after_loss
        };
        // A resumed refresh reports the deletions the server's session log
        // holds, and a slapd that was killed lost the log's newest part
        // (it lives in memory): a full pass after every reconnect finds
        // who is gone. (AD's reconnect pass reads the tombstones instead.)
        if after_loss && resumed && self.method_name() == "syncrepl" {
            tracing::info!(server = %server, "sync push resumed after a loss: a full pass follows, for deletions the directory may not have kept");
            self.full_wanted.store(true, Ordering::SeqCst);
            self.wake.notify_one();
        }
        crate::telemetry::sync_push_connected(true);
        self.record_push().await;
    }

    /// A heartbeat answered: the store is as current as the directory.
    async fn push_current(&self, _server: &str) {
        self.push.lock().unwrap_or_else(|p| p.into_inner()).current_at = Some(self.clock.now_ms());
        self.record_push().await;
    }

    async fn changes_received(&self, counts: &BatchCounts, server: &str) {
        crate::telemetry::sync_changes_received("add", counts.added);
        crate::telemetry::sync_changes_received("modify", counts.modified);
        crate::telemetry::sync_changes_received("rename", counts.renamed);
        crate::telemetry::sync_changes_received("delete", counts.deleted);
        tracing::info!(
            server = %server,
            added = counts.added,
            modified = counts.modified,
            renamed = counts.renamed,
            deleted = counts.deleted,
            disabled = counts.disabled,
            enabled = counts.enabled,
            "sync push applied"
        );
        self.push.lock().unwrap_or_else(|p| p.into_inner()).last_change_at = Some(self.clock.now_ms());
        self.record_push().await;
    }

    /// The search ended by a fault: polling takes over at once (an
    /// incremental pass now, then every `interval`) until it is back.
    async fn push_lost(&self, server: Option<String>, err: &DirectoryError) {
        let retry_in = {
            let mut push = self.push.lock().unwrap_or_else(|p| p.into_inner());
            push.backoff = if push.backoff.is_zero() {
                RECONNECT_MIN
            } else {
                (push.backoff * 2).min(RECONNECT_MAX)
            };
            push.next_attempt = Some(Instant::now() + push.backoff);
            push.backoff
        };
        let server = server.unwrap_or_else(|| self.directory.config().urls.join(", "));
        tracing::warn!(
            server = %server,
            error = %err,
            retry_in_ms = retry_in.as_millis() as u64,
            "sync push lost"
        );
        crate::telemetry::directory_error(err);
        self.push_down(Some(err.to_string())).await;
    }

    async fn push_down(&self, error: Option<String>) {
        let was_up = {
            let mut push = self.push.lock().unwrap_or_else(|p| p.into_inner());
            let was_up = push.up;
            if was_up || push.since.is_none() {
                push.since = Some(self.clock.now_ms());
            }
            push.up = false;
            if push.guarded_at.is_none() {
                push.error = error;
            }
            was_up
        };
        crate::telemetry::sync_push_connected(false);
        if was_up {
            self.pass_wanted.store(true, Ordering::SeqCst);
            self.wake.notify_one();
        }
        self.record_push().await;
    }

    fn method_name(&self) -> &'static str {
        match self.push.lock().unwrap_or_else(|p| p.into_inner()).support {
            Some(Some(method)) => method.as_str(),
            _ => "none",
        }
    }

    /// Writes this node's push state to the store, for `fedgate sync
    /// status` in other processes.
    async fn record_push(&self) {
        let status = {
            let push = self.push.lock().unwrap_or_else(|p| p.into_inner());
            let method = match push.support {
                Some(Some(method)) => method.as_str(),
                _ => "none",
            };
            PushStatus {
                node: self.holder.clone(),
                method: method.to_owned(),
                server: push.server.clone(),
                connected: push.up,
                since: push.since,
                last_change_at: push.last_change_at,
                updated_at: self.clock.now_ms(),
                error: push.error.clone(),
            }
        };
        if let Err(err) = self.store.record_push_status(&status).await {
            tracing::debug!(error = %err, "cannot record the push sync status");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{DirectoryAttributes, MfaState, Upn, User, UserId, UserSource};
    use crate::store::DirectoryChange;

    fn federated(login: &str, dn: &str) -> FederatedUser {
        FederatedUser {
            upn: Upn::parse(&format!("{login}@example.com")).unwrap(),
            enabled: true,
            attributes: DirectoryAttributes {
                dn: dn.into(),
                login: Some(login.into()),
                anchor: Some(format!("uuid-{login}")),
                display_name: None,
                mail: None,
                groups: Vec::new(),
                password_changed: None,
            },
        }
    }

    fn stored(id: i64, user: &FederatedUser) -> User {
        User {
            id: UserId(id),
            upn: user.upn.clone(),
            source: UserSource::Federated,
            enabled: true,
            operator_enabled: true,
            directory_enabled: true,
            deleted: false,
            mfa_state: MfaState::Disabled,
            registered_at: None,
            created_at: 0,
            password_hash: None,
            directory: Some(user.attributes.clone()),
        }
    }

    #[test]
    fn changes_are_counted_by_what_they_do_to_the_store() {
        let alice = federated("alice", "uid=alice,ou=people");
        let bob = federated("bob", "uid=bob,ou=people");
        let existing = vec![stored(1, &alice), stored(2, &bob)];
        let moved = FederatedUser {
            attributes: DirectoryAttributes {
                dn: "uid=alice,ou=staff".into(),
                ..alice.attributes.clone()
            },
            ..alice.clone()
        };
        let disabled = FederatedUser {
            enabled: false,
            ..bob.clone()
        };
        let carol = federated("carol", "uid=carol,ou=people");
        let changes = vec![
            DirectoryChange::Upsert {
                user: moved,
                revoke_app_passwords: false,
            },
            DirectoryChange::Upsert {
                user: disabled,
                revoke_app_passwords: false,
            },
            DirectoryChange::Upsert {
                user: carol,
                revoke_app_passwords: false,
            },
            DirectoryChange::Delete { id: UserId(2) },
        ];
        let counts = count_changes(&changes, &existing);
        assert_eq!(
            (counts.added, counts.modified, counts.renamed, counts.deleted),
            (1, 1, 1, 1),
            "{counts:?}"
        );
    }

    #[test]
    fn pending_changes_keep_the_last_word_on_each_entry() {
        let entry = |dn: &str| ldap3::SearchEntry {
            dn: dn.into(),
            attrs: Default::default(),
            bin_attrs: Default::default(),
        };
        let read = |e: &ldap3::SearchEntry| Some(federated("x", &e.dn));
        let changed = |uuid: &str| SyncEvent::Changed {
            uuid: uuid.into(),
            entry: entry("uid=x"),
            added: false,
        };
        let mut pending = Pending::default();
        assert!(pending.is_empty());
        // Changed, then deleted: deleted. Deleted, then added back: changed.
        assert!(!pending.add(changed("U1"), read));
        assert!(!pending.add(SyncEvent::Deleted { uuid: "u1".into() }, read));
        assert!(!pending.add(SyncEvent::Deleted { uuid: "u2".into() }, read));
        assert!(!pending.add(changed("u2"), read));
        assert!(pending.deleted.contains("u1") && !pending.changed.contains_key("u1"));
        assert!(pending.changed.contains_key("u2") && !pending.deleted.contains("u2"));
        assert_eq!(pending.len(), 2);
        // A present phase, by entry and by set; a deleting set.
        assert!(!pending.present_phase);
        pending.add(SyncEvent::Present { uuid: "U3".into() }, read);
        pending.add(
            SyncEvent::IdSet {
                uuids: vec!["u4".into()],
                deleted: false,
            },
            read,
        );
        pending.add(
            SyncEvent::IdSet {
                uuids: vec!["u2".into()],
                deleted: true,
            },
            read,
        );
        assert!(pending.present_phase);
        assert!(pending.present.contains("u3") && pending.present.contains("u4"));
        assert!(pending.deleted.contains("u2") && !pending.changed.contains_key("u2"));
        // Only the end of the refresh stage says so.
        assert!(!pending.add(SyncEvent::Cookie(b"c1".to_vec()), read));
        assert_eq!(pending.cookie.as_deref(), Some(&b"c1"[..]));
        assert!(!pending.add(
            SyncEvent::PhaseEnd {
                present: false,
                done: false
            },
            read
        ));
        assert!(pending.add(
            SyncEvent::PhaseEnd {
                present: false,
                done: true
            },
            read
        ));
    }
}
