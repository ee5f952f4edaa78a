//! The scheduled directory sync: carries disables, deletions, renames and
//! new users from the directory into the store, so that a departed user's
//! app passwords stop working within one `[sync] interval`.
//!
//! A pass reads first and writes last: it pages through the directory
//! (RFC 2696), works out every change against the store ([`plan`], a pure
//! function), checks the mass-change guard, and only then applies the
//! changes. A pass that fails while reading (directory down, timeout)
//! changes nothing; the next one starts again from the same mark.
//!
//! - *incremental*: entries whose change attribute (`modifyTimestamp`,
//!   `entryCSN`, AD's `uSNChanged`) is at or past the last pass's mark;
//! - *full*: every entry, which also finds the users that are gone.
//!
//! One pass at a time across processes: a lease in the store. And with
//! several nodes on one store, one node schedules passes, the *leader*:
//! the lead is a lease of one `interval` that the leader renews three times
//! an interval and the other nodes try to take as often; when the leader
//! dies, another takes the lead within an interval and a third, and starts
//! with a full pass at once.

pub mod plan;
mod push;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::{DirectoryKind, SyncConfig, SyncMode};
use crate::directory::client::{attribute, LdapDirectory, SyncSession};
use crate::directory::template::Template;
use crate::directory::DirectoryError;
use crate::jobs::Job;
use crate::model::{Clock, FederatedUser};
use crate::shutdown::Shutdown;
use crate::store::{Store, StoreError, SyncMark, SyncPass};
use plan::{Guard, Plan};

/// How long a pass may hold the lease before another process may take
/// over (a process that died mid-pass).
const LEASE: Duration = Duration::from_secs(30);
/// How often a running pass renews its lease.
const LEASE_RENEW: Duration = Duration::from_secs(10);
/// How long `fedgate sync run` waits for a pass of another process.
const LEASE_WAIT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PassKind {
    Full,
    Incremental,
}

impl PassKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PassKind::Full => "full",
            PassKind::Incremental => "incremental",
        }
    }
}

/// This node's view of the sync lead.
#[derive(Debug, Default)]
struct Lead {
    /// Until when (unix ms) this node holds the lead, as last renewed;
    /// `None` when it does not lead.
    until: Option<i64>,
    /// The leader this node took the lead from (its lead had run out, so
    /// it is dead or cut off): a pass lease it still holds may be taken.
    took_over_from: Option<String>,
}

/// Why a pass did not complete.
#[derive(Debug, thiserror::Error)]
enum PassError {
    #[error("{0}")]
    Directory(#[from] DirectoryError),
    #[error("{0}")]
    Store(#[from] StoreError),
}

/// A pass that was not run because another process holds the lease.
#[derive(Debug, thiserror::Error)]
#[error("another process is running a sync pass; try again later")]
pub struct Busy;

pub struct Syncer {
    directory: Arc<LdapDirectory>,
    store: Arc<dyn Store>,
    config: SyncConfig,
    clock: Arc<dyn Clock>,
    holder: String,
    last_full: Mutex<Option<Instant>>,
    lead: Mutex<Lead>,
    /// Runs a scheduled pass at once: notified when this node takes the
    /// lead, when the push connection goes down, and when AD notifies a
    /// change.
    wake: Arc<tokio::sync::Notify>,
    /// An incremental pass is wanted even though push sync is up (an AD
    /// notification, a push connection that just went down).
    pass_wanted: AtomicBool,
    /// A full pass is wanted at the next wake (push sync was told of a
    /// deletion it cannot match without `entryUUID` anchors).
    full_wanted: AtomicBool,
    /// One pass or push batch at a time in this process (the store's lease
    /// keeps other processes out; this process holds it under one name).
    applying: tokio::sync::Mutex<()>,
    /// Push sync's state on this node.
    push: Mutex<push::PushState>,
    /// AD: whether the service account could read `CN=Deleted Objects`
    /// when last checked (each full pass), so a change is logged once.
    tombstones_readable: Mutex<Option<bool>>,
}

impl Syncer {
    pub fn new(
        directory: Arc<LdapDirectory>,
        store: Arc<dyn Store>,
        config: SyncConfig,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Syncer {
            directory,
            store,
            config,
            clock,
            holder: crate::model::this_node(),
            last_full: Mutex::new(None),
            lead: Mutex::new(Lead::default()),
            wake: Arc::new(tokio::sync::Notify::new()),
            pass_wanted: AtomicBool::new(false),
            full_wanted: AtomicBool::new(false),
            applying: tokio::sync::Mutex::new(()),
            push: Mutex::new(push::PushState::default()),
            tombstones_readable: Mutex::new(None),
        }
    }

    /// Runs one pass unless another process holds the lease; with `wait`,
    /// waits up to a minute for it first.
    pub async fn run(&self, kind: PassKind, force: bool, wait: bool) -> Result<SyncPass, Busy> {
        let _applying = self.applying.lock().await;
        let started = Instant::now();
        match self.take_lease(wait).await {
            Ok(true) => {}
            Ok(false) => return Err(Busy),
            Err(err) => {
                // Without the lease nothing is written; report the pass
                // as failed like any other store failure.
                let pass = self.failed(kind, self.clock.now_ms(), started, None, &PassError::Store(err));
                log_pass(&pass);
                return Ok(pass);
            }
        }
        // Renewed while the pass runs, so a long pass keeps it and a
        // process that died loses it within LEASE.
        let renew = async {
            loop {
                tokio::time::sleep(LEASE_RENEW).await;
                let until = self.clock.now_ms() + LEASE.as_millis() as i64;
                if let Err(err) = self.store.take_sync_lease(&self.holder, until, None).await {
                    tracing::warn!(error = %err, "cannot renew the sync lease");
                }
            }
        };
        let pass = tokio::select! {
            pass = self.pass(kind, force) => pass,
            () = renew => unreachable!("the renewal loop never ends"),
        };
        if let Err(err) = self.store.release_sync_lease(&self.holder).await {
            tracing::warn!(error = %err, "cannot release the sync lease; it expires by itself");
        }
        Ok(pass)
    }

    /// Takes the sync lease; with `wait`, waits up to [`LEASE_WAIT`] while
    /// another process holds it. False when it is still held. A holder
    /// that is gone (its process dead on this host, or a node this one took
    /// the lead from) is taken over at once.
    async fn take_lease(&self, wait: bool) -> Result<bool, StoreError> {
        let started = Instant::now();
        loop {
            let until = self.clock.now_ms() + LEASE.as_millis() as i64;
            let dead = match self.dead_holder().await {
                Some(dead) => Some(dead),
                None => self
                    .lead
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .took_over_from
                    .clone(),
            };
            if self.store.take_sync_lease(&self.holder, until, dead.as_deref()).await? {
                self.lead.lock().unwrap_or_else(|p| p.into_inner()).took_over_from = None;
                return Ok(true);
            }
            if !wait || started.elapsed() >= LEASE_WAIT {
                return Ok(false);
            }
            // The holder renews every LEASE_RENEW and releases when done:
            // a short retry finds the release soon after it happens.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// A lease holder on this host whose process is gone (killed mid-pass):
    /// its lease need not be waited out.
    async fn dead_holder(&self) -> Option<String> {
        let (holder, _) = self.store.sync_lease().await.ok()??;
        let (host, pid) = holder.rsplit_once(':')?;
        let (my_host, _) = self.holder.rsplit_once(':')?;
        let pid: u32 = pid.parse().ok()?;
        let alive = std::path::Path::new(&format!("/proc/{pid}")).exists();
        (host == my_host && holder != self.holder && !alive).then_some(holder)
    }

    /// Gives the lease back at once (a `sync run` interrupted by Ctrl-C).
    pub async fn release(&self) {
        let _ = self.store.release_sync_lease(&self.holder).await;
    }

    async fn pass(&self, requested: PassKind, force: bool) -> SyncPass {
        let started_at = self.clock.now_ms();
        let started = Instant::now();
        let mark = match self.store.sync_mark().await {
            Ok(mark) => mark,
            Err(err) => {
                return self
                    .finish(self.failed(requested, started_at, started, None, &err.into()), None)
                    .await
            }
        };
        let mut session = match self.directory.sync_session().await {
            Ok(session) => session,
            Err(err) => {
                return self
                    .finish(self.failed(requested, started_at, started, None, &err.into()), None)
                    .await
            }
        };
        let server = session.server().to_owned();
        // USNs are per domain controller: an incremental pass against
        // another one than the mark came from must start over.
        let kind = match (&mark, requested) {
            (None, _) => PassKind::Full,
            (Some(m), PassKind::Incremental)
                if self.directory.config().kind == DirectoryKind::ActiveDirectory && m.server != server =>
            {
                tracing::info!(from = %m.server, to = %server, "sync moved to another domain controller: full pass");
                PassKind::Full
            }
            (_, kind) => kind,
        };
        // Tombstones are read only when passes run on USNs.
        if kind == PassKind::Full
            && self.directory.config().kind == DirectoryKind::ActiveDirectory
            && self.config.change_attribute.eq_ignore_ascii_case("uSNChanged")
        {
            self.check_tombstone_access(&mut session).await;
        }
        let outcome = self.read_and_apply(&mut session, kind, mark.as_ref(), force).await;
        session.close().await;
        let (pass, new_mark) = match outcome {
            Ok((plan, applied, new_mark)) => {
                let mut pass = self.pass_record(kind, started_at, started, Some(server.clone()));
                pass.seen = plan.seen as i64;
                pass.errors = plan.errors as i64;
                match applied {
                    Ok(applied) => {
                        pass.outcome = "completed".into();
                        pass.created = applied.created as i64;
                        pass.updated = applied.updated as i64;
                        pass.disabled = applied.disabled as i64;
                        pass.enabled = applied.enabled as i64;
                        pass.deleted = applied.deleted as i64;
                        pass.errors += applied.errors as i64;
                        if applied.revoked > 0 {
                            pass.message = Some(format!(
                                "revoked the app passwords of {} users whose password changed",
                                applied.revoked
                            ));
                        }
                        if kind == PassKind::Full {
                            *self.last_full.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
                        }
                        (pass, new_mark.map(|value| SyncMark { value, server }))
                    }
                    Err(guard) => {
                        pass.outcome = "guarded".into();
                        pass.disabled = guard.disables as i64;
                        pass.deleted = guard.deletes as i64;
                        pass.message = Some(guard.message());
                        (pass, None)
                    }
                }
            }
            Err(err) => (self.failed(kind, started_at, started, Some(server), &err), None),
        };
        self.finish(pass, new_mark).await
    }

    /// AD: incremental passes see deletions through tombstones, which only
    /// accounts allowed to list `CN=Deleted Objects` can read (by default,
    /// administrators). Says so when that changes, naming the right to
    /// grant; a failed check is left to the pass itself to report.
    async fn check_tombstone_access(&self, session: &mut SyncSession<'_>) {
        let (readable, container) = match session.can_read_tombstones().await {
            Ok(Some(answer)) => answer,
            Ok(None) => return,
            Err(err) => {
                tracing::debug!(error = %err, "could not check access to CN=Deleted Objects");
                return;
            }
        };
        let previous = self
            .tombstones_readable
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .replace(readable);
        let account = match &self.directory.config().bind {
            crate::config::DirectoryBind::Search { dn, .. } => dn.as_str(),
            crate::config::DirectoryBind::Direct { .. } => "",
        };
        match (previous, readable) {
            (Some(true) | None, false) => tracing::warn!(
                account = %account,
                container = %container,
                full_every = ?self.config.full_every,
                fix = "grant the account List Contents and Read Property on the container: dsacls \"<container>\" /takeownership, then dsacls \"<container>\" /G <DOMAIN>\\<account>:LCRP",
                "the sync's service account cannot read CN=Deleted Objects: users deleted in the directory are noticed only by full passes"
            ),
            (Some(false), true) => tracing::info!(
                account = %account,
                container = %container,
                "the sync's service account can read CN=Deleted Objects again: incremental passes see deletions"
            ),
            _ => {}
        }
    }

    /// Reads the directory, plans, guards, applies. The inner `Err` is a
    /// pass the guard stopped.
    async fn read_and_apply(
        &self,
        session: &mut SyncSession<'_>,
        kind: PassKind,
        mark: Option<&SyncMark>,
        force: bool,
    ) -> Result<(Plan, Result<crate::store::AppliedChanges, Guard>, Option<String>), PassError> {
        let dir = self.directory.config();
        let ad = dir.kind == DirectoryKind::ActiveDirectory;
        let all = dir.user_filter.render_any();
        let change_attribute = &self.config.change_attribute;
        let filter = match (kind, mark) {
            (PassKind::Incremental, Some(mark)) => Template::and(
                &all,
                &format!("({change_attribute}>={})", ldap3::ldap_escape(mark.value.as_str())),
            ),
            _ => all,
        };
        // AD: the domain controller's current USN, read before the scan, is
        // where the next pass starts (a change during the scan is seen
        // again, never missed).
        let usn_mark = if ad && change_attribute.eq_ignore_ascii_case("uSNChanged") {
            session.root_attribute("highestCommittedUSN").await?
        } else {
            None
        };
        let mut attributes = self.directory.user_attributes().to_vec();
        attributes.push(change_attribute.clone());
        if ad {
            attributes.extend(["userAccountControl".to_owned(), "accountExpires".to_owned()]);
        }
        // Each user entry is converted the moment it arrives and then
        // dropped. AD says in the entry itself whether it is disabled.
        let now_ms = self.clock.now_ms();
        let mut found: Vec<FederatedUser> = Vec::new();
        let mut errors = 0usize;
        let mut highest: Option<String> = None;
        let seen = session
            .scan(&filter, &attributes, self.config.page_size, |entry| {
                if let Some(value) = attribute(&entry, change_attribute) {
                    if highest.as_ref().is_none_or(|h| later(&value, h)) {
                        highest = Some(value);
                    }
                }
                let disabled = ad && ad_account_off(&entry, now_ms);
                match self.directory.federated_user(&entry, !disabled) {
                    Some(user) => found.push(user),
                    None => {
                        errors += 1;
                        tracing::debug!(dn = %entry.dn, "directory entry without a usable UPN: not synced");
                    }
                }
            })
            .await?;
        // Then the entries `disabled_filter` matches (DNs only). After the
        // users, not before: an entry disabled between the two reads is
        // then taken as disabled in this pass. Read the other way round,
        // it was taken as enabled, the mark moved past its change, and
        // only the next pass (which reads it again, the mark being
        // inclusive) disabled it.
        if let Some(disabled) = &dir.disabled_filter {
            let disabled_filter = Template::and(&filter, &disabled.render_any());
            let mut dns = HashSet::new();
            session
                .scan(&disabled_filter, &["1.1".to_owned()], self.config.page_size, |e| {
                    dns.insert(e.dn.to_ascii_lowercase());
                })
                .await?;
            for user in &mut found {
                if dns.contains(&user.attributes.dn.to_ascii_lowercase()) {
                    user.enabled = false;
                }
            }
        }
        // AD keeps tombstones: an incremental pass sees deletions too.
        let gone = match (kind, mark, &usn_mark) {
            (PassKind::Incremental, Some(mark), Some(_)) => {
                session.deleted_anchors(&mark.value, self.config.page_size).await?
            }
            _ => Vec::new(),
        };
        // A full pass compares with every user; an incremental one only
        // with those its entries can match, so it costs what changed.
        let (existing, synced_users) = match kind {
            PassKind::Full => (self.store.load_all_users().await?, None),
            PassKind::Incremental => {
                let mut anchors: Vec<&str> = found.iter().filter_map(|u| u.attributes.anchor.as_deref()).collect();
                anchors.extend(gone.iter().map(String::as_str));
                let upns: Vec<&str> = found.iter().map(|u| u.upn.as_str()).collect();
                let users = self.store.users_matching(&anchors, &upns).await?;
                (users, Some(self.store.count_synced_users().await?))
            }
        };
        let mut plan = plan::plan(
            kind == PassKind::Full,
            &existing,
            found,
            &gone,
            self.config.revoke_on_password_change,
        );
        drop(existing);
        if let Some(total) = synced_users {
            plan.synced_users = total;
        }
        plan.seen = seen;
        plan.errors = errors;
        // Passes AD's change notifications start run as changes come, so a
        // mass change arrives as many small passes: counted together, as
        // push counts its batches. While the guard holds, every pass counts
        // them, so that what it held back is not let through piecemeal by a
        // pass that sees only the rest (a full pass, polling while push is
        // down). Once a pass completed after the guard tripped (`sync run
        // --force`, in this process or another), they no longer count.
        let holds = self.guard_holds().await;
        let notified = kind == PassKind::Incremental && self.notified();
        let recent = if holds || notified {
            self.recent_destructive()
        } else {
            0
        };
        if let Some(guard) = plan.guard_after(recent, self.config.max_change_share, self.config.guard_floor) {
            if !force {
                if holds || notified {
                    self.note_guarded(&guard).await;
                }
                return Ok((plan, Err(guard), None));
            }
            tracing::warn!(message = %guard.message(), "mass-change guard overridden with --force");
        }
        let applied = self.store.apply_directory_changes(&plan.changes).await?;
        if force {
            // The operator has seen the change: what came before it no
            // longer counts against the next ones.
            self.forget_destructive();
        } else if notified {
            self.note_destructive(applied.disabled + applied.deleted);
        }
        let new_mark = usn_mark.or(highest).or_else(|| mark.map(|m| m.value.clone()));
        Ok((plan, Ok(applied), new_mark))
    }

    fn pass_record(&self, kind: PassKind, started_at: i64, started: Instant, server: Option<String>) -> SyncPass {
        SyncPass {
            kind: kind.as_str().into(),
            outcome: "failed".into(),
            started_at,
            duration_ms: started.elapsed().as_millis() as i64,
            seen: 0,
            created: 0,
            updated: 0,
            disabled: 0,
            enabled: 0,
            deleted: 0,
            errors: 0,
            server,
            message: None,
        }
    }

    fn failed(
        &self,
        kind: PassKind,
        started_at: i64,
        started: Instant,
        server: Option<String>,
        err: &PassError,
    ) -> SyncPass {
        if let PassError::Directory(err) = err {
            crate::telemetry::directory_error(err);
        }
        let mut pass = self.pass_record(kind, started_at, started, server);
        pass.errors = 1;
        pass.message = Some(err.to_string());
        pass
    }

    async fn finish(&self, pass: SyncPass, mark: Option<SyncMark>) -> SyncPass {
        log_pass(&pass);
        crate::telemetry::sync_pass_run(&pass);
        if let Err(err) = self.store.record_sync_pass(&pass, mark.as_ref()).await {
            tracing::error!(error = %err, "cannot record the sync pass");
        }
        pass
    }

    /// Whether the next scheduled pass should be a full one.
    fn full_due(&self) -> bool {
        match *self.last_full.lock().unwrap_or_else(|p| p.into_inner()) {
            None => true,
            Some(at) => at.elapsed() >= self.config.full_every,
        }
    }

    /// The length of the lead: one interval. Renewed three times as often,
    /// so two failed renewals in a row (a database that is slow for a
    /// moment) do not lose it.
    fn lead_length(&self) -> Duration {
        self.config.interval
    }

    /// Takes or renews the lead; says so in the log and the metrics when
    /// that changes. A store that cannot be reached leaves the lead as it
    /// was until it runs out: a leader that cannot renew stops scheduling
    /// passes once another node could have taken over.
    async fn try_lead(&self) {
        let now = self.clock.now_ms();
        let until = now + self.lead_length().as_millis() as i64;
        let before = self.store.sync_lead().await.ok().flatten();
        let taken = self.store.take_sync_lead(&self.holder, until).await;
        let mut lead = self.lead.lock().unwrap_or_else(|p| p.into_inner());
        let was_leading = lead.until.is_some_and(|at| at > now);
        match taken {
            Ok(true) => {
                lead.until = Some(until);
                if !was_leading {
                    let from = before.filter(|l| l.node != self.holder);
                    tracing::info!(
                        node = %self.holder,
                        previous = from.as_ref().map_or("none", |l| l.node.as_str()),
                        "leading the directory sync"
                    );
                    lead.took_over_from = from.map(|l| l.node);
                    metrics::gauge!("fedgate_sync_leader", "node" => self.holder.clone()).set(1.0);
                    metrics::gauge!("fedgate_sync_leader_since_seconds", "node" => self.holder.clone())
                        .set(now as f64 / 1000.0);
                    self.wake.notify_one();
                }
            }
            Ok(false) => {
                if was_leading {
                    tracing::warn!(
                        node = %self.holder,
                        leader = before.as_ref().map_or("none", |l| l.node.as_str()),
                        "lost the lead of the directory sync"
                    );
                }
                lead.until = None;
                metrics::gauge!("fedgate_sync_leader", "node" => self.holder.clone()).set(0.0);
            }
            Err(err) => {
                if was_leading {
                    tracing::warn!(error = %err, "cannot renew the sync lead");
                }
            }
        }
    }

    /// Whether this node leads now (its last renewal has not run out).
    fn leading(&self) -> bool {
        let lead = self.lead.lock().unwrap_or_else(|p| p.into_inner());
        lead.until.is_some_and(|at| at > self.clock.now_ms())
    }

    /// Gives up the lead at shutdown.
    pub async fn give_up_lead(&self) {
        let leading = self
            .lead
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .until
            .take()
            .is_some();
        if leading {
            if let Err(err) = self.store.release_sync_lead(&self.holder).await {
                tracing::warn!(error = %err, "cannot give up the sync lead; it runs out by itself");
            }
            metrics::gauge!("fedgate_sync_leader", "node" => self.holder.clone()).set(0.0);
        }
    }

    /// The scheduled passes of `fedgate serve`: the lead job, and on the
    /// leader a full pass as soon as it takes the lead, then incremental
    /// ones every `interval` and a full one every `full_every`.
    /// `[sync] mode`.
    pub fn mode(&self) -> SyncMode {
        self.config.mode
    }

    pub fn start_jobs(self: &Arc<Self>, shutdown: &Shutdown) -> Vec<Job> {
        let lead = {
            let this = Arc::clone(self);
            let every = (self.lead_length() / 3).max(Duration::from_millis(100));
            Job::now_and_every("sync.lead", every, shutdown.clone(), move || {
                let this = Arc::clone(&this);
                async move { this.try_lead().await }
            })
        };
        let this = Arc::clone(self);
        let stop = shutdown.clone();
        let wake = Some(Arc::clone(&self.wake));
        let passes = Job::every_or_when("sync", this.config.interval, wake, shutdown.clone(), move || {
            let (this, stop) = (Arc::clone(&this), stop.clone());
            async move {
                if !this.leading() {
                    return;
                }
                let wanted = this.pass_wanted.swap(false, Ordering::SeqCst);
                let kind = if this.full_due() || this.full_wanted.swap(false, Ordering::SeqCst) {
                    PassKind::Full
                } else {
                    PassKind::Incremental
                };
                // While the directory pushes its changes, incremental
                // passes run only when a notification asks for one.
                if kind == PassKind::Incremental && this.push_up() && !wanted {
                    return;
                }
                // A pass cut short by shutdown has applied whole batches
                // only (each is one transaction); the next one redoes the
                // rest. The lease is handed back so a restart need not wait.
                tokio::select! {
                    result = this.run(kind, false, false) => {
                        if let Err(Busy) = result {
                            tracing::debug!("sync pass skipped: another process holds the lease");
                        }
                    }
                    _ = stop.wait() => this.release().await,
                }
            }
        });
        let mut jobs = vec![lead, passes];
        match self.config.mode {
            SyncMode::Push => jobs.push(self.start_push(shutdown)),
            SyncMode::Poll => tracing::info!(
                mode = "poll",
                method = "none",
                reason = "sync.mode = \"poll\"",
                interval = ?self.config.interval,
                "sync mode"
            ),
        }
        let this = Arc::clone(self);
        let status = Job::now_and_every("sync.status", this.config.interval, shutdown.clone(), move || {
            let this = Arc::clone(&this);
            async move { this.publish_status().await }
        });
        jobs.push(status);
        jobs
    }

    /// Shows the newest passes in the store (whichever node ran them) in
    /// the sync gauges, so every node reports the sync's state and a
    /// restarted one does not start from "never".
    async fn publish_status(&self) {
        match self.store.last_sync_passes().await {
            Ok((incremental, full)) => {
                for pass in [incremental, full].iter().flatten() {
                    crate::telemetry::sync_pass_seen(pass);
                }
            }
            Err(err) => tracing::debug!(error = %err, "cannot read the last sync passes for the metrics"),
        }
        // A persistent search that is up holds the store as current as a
        // pass that just completed would.
        let pushed = self.push_current_at();
        match (self.store.last_completed_sync_at().await, pushed) {
            (Ok(at), Some(pushed)) => crate::telemetry::sync_completed_at(at.unwrap_or(0).max(pushed)),
            (Ok(Some(at)), None) => crate::telemetry::sync_completed_at(at),
            _ => {}
        }
    }
}

/// One `sync pass` event: at info when the pass completed, else at warn.
fn log_pass(pass: &SyncPass) {
    macro_rules! event {
        ($level:ident) => {
            tracing::$level!(
                kind = %pass.kind, outcome = %pass.outcome, started_at = pass.started_at,
                duration_ms = pass.duration_ms, seen = pass.seen, created = pass.created,
                updated = pass.updated, disabled = pass.disabled, enabled = pass.enabled,
                deleted = pass.deleted, errors = pass.errors,
                server = pass.server.as_deref().unwrap_or(""),
                detail = pass.message.as_deref().unwrap_or(""), "sync pass"
            )
        };
    }
    if pass.outcome == "completed" {
        event!(info)
    } else {
        event!(warn)
    }
}

/// Whether change-attribute value `a` is past `b`: numerically for USNs,
/// as text for generalized times and CSNs (fixed-width, so text order is
/// time order).
fn later(a: &str, b: &str) -> bool {
    match (a.parse::<u128>(), b.parse::<u128>()) {
        (Ok(a), Ok(b)) => a > b,
        _ => a > b,
    }
}

/// AD: the ACCOUNTDISABLE bit of `userAccountControl`, or an
/// `accountExpires` in the past (100 ns ticks since 1601; 0 and
/// 0x7FFFFFFFFFFFFFFF mean never).
fn ad_account_off(entry: &ldap3::SearchEntry, now_ms: i64) -> bool {
    let disabled = attribute(entry, "userAccountControl")
        .and_then(|v| v.parse::<i64>().ok())
        .is_some_and(|uac| uac & 2 != 0);
    disabled
        || attribute(entry, "accountExpires")
            .and_then(|v| v.parse::<i64>().ok())
            .is_some_and(|ticks| ad_expired(ticks, now_ms))
}

fn ad_expired(ticks: i64, now_ms: i64) -> bool {
    const EPOCH_DIFFERENCE_MS: i64 = 11_644_473_600_000;
    if ticks <= 0 || ticks == i64::MAX {
        return false;
    }
    ticks / 10_000 - EPOCH_DIFFERENCE_MS < now_ms
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn change_marks_compare_as_numbers_or_times() {
        assert!(later("10", "9"));
        assert!(!later("9", "10"));
        assert!(later("20261128174502Z", "20261128174501Z"));
        assert!(later(
            "20261128174501.000002Z#000000#000#000000",
            "20261128174501.000001Z#000000#000#000000"
        ));
    }

    #[test]
    fn account_expiry_in_ad_ticks() {
        let now_ms = 1_800_000_000_000;
        let ticks = |ms: i64| (ms + 11_644_473_600_000) * 10_000;
        assert!(ad_expired(ticks(now_ms - 1000), now_ms));
        assert!(!ad_expired(ticks(now_ms + 60_000), now_ms));
        assert!(!ad_expired(0, now_ms));
        assert!(!ad_expired(i64::MAX, now_ms));
    }
}
