//! The cloud store: users, app passwords, settings, the change feed and the
//! audit log, behind the [`Store`] trait so that a PostgreSQL backend can
//! follow without touching business rules.
//!
//! A backend owns durability and atomicity: every method that returns `Ok`
//! has committed, and every change that can grant or revoke access is
//! written in the same transaction as a row of the change feed, which
//! running servers poll to drop cached decisions. A backend enforces the
//! invariants that need a transaction to be true under concurrency (at most
//! [`MAX_APP_PASSWORDS_PER_USER`] app passwords, unique names, all-or-nothing
//! bulk changes). It has no opinion on who may sign in with what: the
//! decision table lives in the auth code, and the crypto in
//! [`crate::app_password`].

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use serde::Serialize;

use crate::app_password::MAX_APP_PASSWORDS_PER_USER;
use crate::model::{
    AdminEvent, AppPassword, AppPasswordId, AppPasswordLimits, AppPasswordName, AppPasswordSecretRecord, AuditRecord,
    Clock, FederatedUser, MfaState, NoticeStatus, Settings, Upn, User, UserId,
};

pub mod copy;
pub mod health;
mod postgres;
mod rows;
mod rules;
mod sqlite;

pub use health::StoreHealth;
pub use postgres::PgStore;
pub use sqlite::backup as sqlite_backup;
pub use sqlite::SqliteStore;

/// What every [`Store`] method returns: a boxed future, so the trait can be
/// used as `Arc<dyn Store>`.
pub type StoreFuture<'a, T> = BoxFuture<'a, Result<T, StoreError>>;

/// Whether opening may create the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// Create it (and its schema) when missing: `fedgate serve`.
    CreateIfMissing,
    /// Only a store that exists: every admin command, so that a mistyped
    /// path or a store that vanished is an error rather than a new, empty
    /// store.
    Existing,
    /// Only a store that does not exist yet: `fedgate store init`.
    New,
}

/// What opening a store needs besides its URL: `[store] password_file`
/// and `[store] ca_file` (PostgreSQL only).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreAccess {
    /// A file holding the database password (one line), so the URL in the
    /// config carries none.
    pub password_file: Option<PathBuf>,
    /// The CA that signed the database server's certificate: connect over
    /// TLS and check the server against it (and its name).
    pub ca_file: Option<PathBuf>,
}

/// The PostgreSQL channel every committed change-feed row is announced on,
/// so that nodes drop what they cached without waiting for their next poll.
pub const CHANGES_CHANNEL: &str = "fedgate_changes";

/// `url` with any password in it replaced by `***`, for logs and errors.
pub fn redact_url(url: &str) -> String {
    postgres::redact(url)
}

/// Which backend a `[store] url` names, or why none.
pub fn backend_of(url: &str) -> Result<Backend, StoreError> {
    if url.starts_with("sqlite:") {
        Ok(Backend::Sqlite)
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Backend::Postgres)
    } else {
        Err(StoreError::Unsupported {
            url: postgres::redact(url),
            reason: "expected sqlite://PATH, sqlite::memory: or postgres://USER@HOST:PORT/DATABASE",
        })
    }
}

/// The two backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// One node, one file.
    Sqlite,
    /// Any number of nodes on one database.
    Postgres,
}

/// Opens the store named by a `[store] url` from the configuration.
pub async fn open(url: &str, clock: Arc<dyn Clock>, mode: OpenMode) -> Result<Arc<dyn Store>, StoreError> {
    open_with(url, &StoreAccess::default(), clock, mode).await
}

/// Opens the store named by `url` with the credentials and TLS settings of
/// `access`.
pub async fn open_with(
    url: &str,
    access: &StoreAccess,
    clock: Arc<dyn Clock>,
    mode: OpenMode,
) -> Result<Arc<dyn Store>, StoreError> {
    match backend_of(url)? {
        Backend::Sqlite => {
            if access.password_file.is_some() || access.ca_file.is_some() {
                return Err(StoreError::Unsupported {
                    url: url.to_owned(),
                    reason: "store.password_file and store.ca_file are for PostgreSQL; a SQLite store has neither",
                });
            }
            Ok(Arc::new(SqliteStore::open_with(url, clock, mode).await?))
        }
        Backend::Postgres => Ok(Arc::new(PgStore::open_with(url, access, clock, mode).await?)),
    }
}

/// Persistence for the cloud store: every capability below, and the
/// store's own lifecycle. Business code takes the narrowest capability it
/// needs (`Arc<dyn AuditStore>`, say); whoever opens the store holds it
/// as `Arc<dyn Store>` and hands out those parts.
pub trait Store:
    UserStore
    + TotpStore
    + AppPasswordStore
    + SettingsStore
    + ChangeFeed
    + SyncStore
    + SyncLease
    + PushStore
    + SessionStore
    + AuditStore
    + LockoutStore
    + ReportStore
    + NoticeStore
    + StoreCopy
    + AdminEventStore
    + Send
    + Sync
    + fmt::Debug
{
    /// Whether the store answers (for `/readyz`).
    fn ping(&self) -> StoreFuture<'_, ()>;

    /// Whether this is still the store that was opened, and readable: for
    /// SQLite, the file at the path is the same file (device and inode),
    /// its header is a database's, and it holds the store id read at open.
    /// A store found removed or replaced stays failed (its connections
    /// still point at the old file): every later call fails with
    /// [`StoreError::Unavailable`] until fedgate is restarted.
    fn check(&self) -> StoreFuture<'_, ()>;

    /// Closes connections after in-flight work; later calls fail.
    fn close(&self) -> BoxFuture<'_, ()>;
}

/// Users: cloud-only ones made here and federated ones from the directory.
/// Users are addressed by UPN (what operators type) or by id (what the
/// portal and the sign-in path hold).
pub trait UserStore: Send + Sync {
    /// Creates a cloud-only user. A deleted user with this UPN is brought
    /// back as a new cloud user (same id, no app passwords, not registered).
    fn create_cloud_user<'a>(
        &'a self,
        upn: &'a Upn,
        state: MfaState,
        password_hash: Option<&'a str>,
    ) -> StoreFuture<'a, User>;

    /// Creates or updates a user from the directory, matched by anchor
    /// first (a renamed entry stays the same user) and then by UPN; brings
    /// back a deleted one. Refuses to take over a cloud-only user of the
    /// same UPN, and a UPN another user holds.
    fn upsert_federated_user<'a>(&'a self, user: &'a FederatedUser) -> StoreFuture<'a, Upserted>;

    fn get_user_by_upn<'a>(&'a self, upn: &'a Upn) -> StoreFuture<'a, Option<User>>;

    fn get_user(&self, id: UserId) -> StoreFuture<'_, Option<User>>;

    /// Users not deleted, by UPN, optionally only those in one MFA state.
    fn list_users(&self, state: Option<MfaState>) -> StoreFuture<'_, Vec<User>>;

    /// Every user, deleted ones included, for the in-memory index.
    fn load_all_users(&self) -> StoreFuture<'_, Vec<User>>;

    fn set_mfa_state<'a>(&'a self, upn: &'a Upn, state: MfaState) -> StoreFuture<'a, User>;

    /// Applies every line or none. Lines are validated here (UPN, state,
    /// user known and not deleted, UPN not listed twice) so that one report
    /// names every bad line: [`StoreError::BulkRejected`].
    fn set_mfa_states<'a>(&'a self, lines: &'a [StateLine]) -> StoreFuture<'a, BulkApplied>;

    /// Creates a cloud-only user (no password) per line, every line or
    /// none, in one transaction. A line's state may be empty (`disabled`).
    /// Lines are judged here (UPN, state, UPN not listed twice, no live user
    /// of that UPN) so one report names every bad line:
    /// [`StoreError::BulkRejected`]. Each user is created as
    /// [`UserStore::create_cloud_user`] creates one.
    fn create_cloud_users<'a>(&'a self, lines: &'a [StateLine]) -> StoreFuture<'a, Vec<User>>;

    fn set_enabled<'a>(&'a self, upn: &'a Upn, enabled: bool) -> StoreFuture<'a, User>;

    /// Replaces (or with `None` removes) a cloud-only user's password hash.
    fn set_password_hash<'a>(&'a self, upn: &'a Upn, password_hash: Option<&'a str>) -> StoreFuture<'a, User>;

    /// Marks the user deleted, and deletes their app passwords, password
    /// hash and TOTP secret: a UPN that comes back later must not bring old
    /// devices or factors back.
    fn mark_deleted<'a>(&'a self, upn: &'a Upn) -> StoreFuture<'a, User>;

    /// Makes the user register their second factor again: clears
    /// `registered_at` and the TOTP secret.
    fn require_registration<'a>(&'a self, upn: &'a Upn) -> StoreFuture<'a, User>;

    fn set_registered_at<'a>(&'a self, upn: &'a Upn, at: i64) -> StoreFuture<'a, User>;
}

/// The second factor (TOTP). The store keeps the secret sealed and never
/// sees it: sealing and code checks are [`crate::totp`]'s.
pub trait TotpStore: Send + Sync {
    /// Registers (`Some`) or removes (`None`) the user's TOTP.
    ///
    /// Registering replaces any earlier secret, sets `registered_at` to now
    /// and records the step of the code that confirmed the secret as used,
    /// so that code cannot also sign in. Removing clears the secret, the
    /// last step and `registered_at` (TOTP is the only second factor).
    /// Refuses an unknown or deleted user.
    fn set_totp<'a>(&'a self, user: UserId, totp: Option<&'a NewTotp>) -> StoreFuture<'a, User>;

    /// The user's sealed TOTP secret and the newest step a code was
    /// accepted for; `None` when the user has no TOTP (a deleted user has
    /// none). Refuses an unknown user.
    fn totp(&self, user: UserId) -> StoreFuture<'_, Option<StoredTotp>>;

    /// Records `step` as used if it is newer than the stored one, as one
    /// compare-and-set, so that of two nodes checking the same code at
    /// once only one is told `true`. `false` when the step is not newer
    /// (the code, or a newer one, was used already) or the user has no
    /// TOTP or is deleted. Writes no change-feed row: it neither grants
    /// nor revokes.
    fn use_totp_step(&self, user: UserId, step: u64) -> StoreFuture<'_, bool>;

    /// Until when (unix ms) the user's codes are refused after repeated
    /// wrong ones; `None` when they are not.
    fn totp_blocked_until(&self, user: UserId) -> StoreFuture<'_, Option<i64>>;

    /// Counts a wrong code (a right one resets the count); at
    /// `limit.max_failures` in a row codes are refused for
    /// `limit.block_ms`, and the time they are refused until is returned.
    /// Counted per user, so a new browser session buys no more tries.
    fn note_totp_result<'a>(
        &'a self,
        user: UserId,
        accepted: bool,
        limit: &'a TotpLimit,
    ) -> StoreFuture<'a, Option<i64>>;
}

/// App passwords, addressed by their owner's id.
pub trait AppPasswordStore: Send + Sync {
    /// Refuses a user's 41st app password ([`StoreError::TooManyAppPasswords`])
    /// and a name the user already has, compared case-insensitively
    /// ([`StoreError::DuplicateAppPasswordName`]).
    fn create_app_password<'a>(&'a self, new: &'a NewAppPassword) -> StoreFuture<'a, AppPassword>;

    /// The user's app passwords, oldest first.
    fn list_app_passwords(&self, user: UserId) -> StoreFuture<'_, Vec<AppPassword>>;

    /// Replaces the limits of the user's app password of that name
    /// (case-insensitive) with `limits`, which must only narrow them
    /// ([`StoreError::LimitsWidened`] otherwise; checked under the write
    /// lock, so two narrowings at once cannot add up to a widening).
    /// Written to the change feed, so every node drops what it cached.
    fn narrow_app_password<'a>(
        &'a self,
        user: UserId,
        name: &'a str,
        limits: &'a AppPasswordLimits,
    ) -> StoreFuture<'a, AppPassword>;

    /// Deletes the user's app password of that name (case-insensitive).
    fn delete_app_password<'a>(&'a self, user: UserId, name: &'a str) -> StoreFuture<'a, ()>;

    /// Deletes every app password of the user; returns how many there were.
    fn revoke_app_passwords(&self, user: UserId) -> StoreFuture<'_, u64>;

    /// Every app password's tag and hash, for the in-memory index.
    fn load_all_secrets(&self) -> StoreFuture<'_, Vec<AppPasswordSecretRecord>>;

    /// One user's app-password tags and hashes, to refresh the index after
    /// a change to that user.
    fn load_user_secrets(&self, user: UserId) -> StoreFuture<'_, Vec<AppPasswordSecretRecord>>;

    /// Records when and from where app passwords were last used, in one
    /// transaction. Called by a periodic flush, never per request. A use
    /// older than the one recorded is ignored (batches from several nodes
    /// may arrive out of order); unknown ids are ignored (deleted since).
    fn record_last_used<'a>(&'a self, uses: &'a [LastUsed]) -> StoreFuture<'a, ()>;
}

/// Settings that operators change while fedgate runs.
pub trait SettingsStore: Send + Sync {
    fn get_settings(&self) -> StoreFuture<'_, Settings>;

    fn set_allow_app_passwords(&self, allow: bool) -> StoreFuture<'_, Settings>;
}

/// The change feed: every change that can grant or revoke access, in
/// commit order, which running servers follow to drop cached decisions.
pub trait ChangeFeed: Send + Sync {
    /// Changes with a sequence number above `seq`, oldest first.
    fn changes_since(&self, seq: i64) -> StoreFuture<'_, Vec<Change>>;

    /// The newest sequence number, 0 on an empty feed. A server reads it
    /// before loading its caches and then polls [`ChangeFeed::changes_since`].
    fn latest_change_seq(&self) -> StoreFuture<'_, i64>;

    /// Notified when another process or node may have committed changes,
    /// so a server reads the feed at once instead of at its next poll:
    /// PostgreSQL's `LISTEN`/`NOTIFY` on [`CHANGES_CHANNEL`]. Also notified
    /// when the listening connection comes back after a loss, since
    /// announcements made meanwhile were not heard. SQLite has no such
    /// channel: it is notified when this process applied directory
    /// changes (the sync's own writes), and other processes' writes wait
    /// for the poll. `None` where polling is the only way.
    fn change_signal(&self) -> Option<Arc<tokio::sync::Notify>> {
        None
    }
}

/// What the directory sync keeps between passes.
pub trait SyncStore: Send + Sync {
    /// Applies a sync pass's changes, in batches of one transaction each
    /// (a failure leaves earlier batches applied; the next pass redoes the
    /// rest, every change being idempotent).
    fn apply_directory_changes<'a>(&'a self, changes: &'a [DirectoryChange]) -> StoreFuture<'a, AppliedChanges>;

    /// Records a finished pass, moves the high-water mark (when given) and
    /// prunes old records.
    fn record_sync_pass<'a>(&'a self, pass: &'a SyncPass, mark: Option<&'a SyncMark>) -> StoreFuture<'a, ()>;

    /// The newest pass of each kind (incremental, full).
    fn last_sync_passes(&self) -> StoreFuture<'_, (Option<SyncPass>, Option<SyncPass>)>;

    fn sync_mark(&self) -> StoreFuture<'_, Option<SyncMark>>;

    /// Users (deleted ones included) with one of these anchors or UPNs:
    /// what an incremental pass compares its entries with.
    fn users_matching<'a>(&'a self, anchors: &'a [&'a str], upns: &'a [&'a str]) -> StoreFuture<'a, Vec<User>>;

    /// Federated users not deleted: what the mass-change guard's share is
    /// of.
    fn count_synced_users(&self) -> StoreFuture<'_, usize>;
}

/// The right to run sync passes: one holder at a time, for a while.
pub trait SyncLease: Send + Sync {
    /// Takes (or renews) the right to run sync passes until `until` (unix
    /// ms); false when another holder has it. `replacing` names a holder
    /// known to be dead, whose lease may be taken before it expires.
    fn take_sync_lease<'a>(&'a self, holder: &'a str, until: i64, replacing: Option<&'a str>) -> StoreFuture<'a, bool>;

    /// Who holds the sync lease, and until when.
    fn sync_lease(&self) -> StoreFuture<'_, Option<(String, i64)>>;

    /// When the newest completed pass (of either kind) ended, unix ms.
    fn last_completed_sync_at(&self) -> StoreFuture<'_, Option<i64>>;

    fn release_sync_lease<'a>(&'a self, holder: &'a str) -> StoreFuture<'a, ()>;

    /// Takes or renews the lead of the directory sync for `node` until
    /// `until` (unix ms): true when `node` leads afterwards (it led
    /// already, or the lead was free or had run out). The time the lead
    /// was taken is kept across renewals. One compare-and-set, so of nodes
    /// trying at once exactly one is told `true`.
    fn take_sync_lead<'a>(&'a self, node: &'a str, until: i64) -> StoreFuture<'a, bool>;

    /// Who leads the directory sync, since when and until when; `None`
    /// when nobody ever did or the last leader gave the lead up.
    fn sync_lead(&self) -> StoreFuture<'_, Option<SyncLead>>;

    /// Gives the lead up (a node shutting down), so another node takes it
    /// at its next try instead of waiting for it to run out.
    fn release_sync_lead<'a>(&'a self, node: &'a str) -> StoreFuture<'a, ()>;
}

/// What the persistent search of push sync keeps in the store: where it
/// resumes, and how it is doing (for `fedgate sync status`, read by
/// processes other than the sync leader's).
pub trait PushStore: Send + Sync {
    /// Where the persistent search resumes; `None` when it must start
    /// from scratch.
    fn push_cookie(&self) -> StoreFuture<'_, Option<PushCookie>>;

    /// Saves (or, with `None`, forgets) the resume point. Saved after the
    /// changes up to it are applied, so a crash in between replays them
    /// (every change being idempotent) and never skips one.
    fn save_push_cookie<'a>(&'a self, cookie: Option<&'a PushCookie>) -> StoreFuture<'a, ()>;

    fn record_push_status<'a>(&'a self, status: &'a PushStatus) -> StoreFuture<'a, ()>;

    /// The last status a leader reported; `None` when none ever did.
    fn push_status(&self) -> StoreFuture<'_, Option<PushStatus>>;
}

/// An RFC 4533 sync cookie, and the server that gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushCookie {
    pub value: Vec<u8>,
    pub server: String,
}

/// The persistent search of push sync, as its node last reported it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct PushStatus {
    /// The node holding (or trying to hold) the persistent search.
    pub node: String,
    /// `syncrepl` (RFC 4533) or `notification` (AD).
    pub method: String,
    /// The server it is connected to, or was last.
    pub server: Option<String>,
    pub connected: bool,
    /// Connected since, or down since (unix ms; RFC 3339 when serialised).
    #[serde(serialize_with = "crate::model::ser_opt_time")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub since: Option<i64>,
    /// When the directory last told of a change.
    #[serde(serialize_with = "crate::model::ser_opt_time")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_change_at: Option<i64>,
    /// When this status was written; a status much older than the
    /// heartbeat is from a node that is gone.
    #[serde(serialize_with = "crate::model::ser_time")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: i64,
    /// Why it is down, when it is.
    pub error: Option<String>,
}

/// Which node leads the directory sync (see [`SyncLease::take_sync_lead`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct SyncLead {
    pub node: String,
    /// When it took the lead, unix ms (RFC 3339 when serialised).
    #[serde(serialize_with = "crate::model::ser_time")]
    #[schema(value_type = String, format = DateTime)]
    pub since: i64,
    /// When the lead runs out unless renewed, unix ms.
    #[serde(serialize_with = "crate::model::ser_time")]
    #[schema(value_type = String, format = DateTime)]
    pub until: i64,
}

/// What nodes' lockouts counted, shared between the nodes of one store
/// (see [`crate::auth::lockout`]).
pub trait LockoutStore: Send + Sync {
    /// Appends events in one transaction; announces them to the other
    /// nodes (PostgreSQL: on [`LOCKOUT_CHANNEL`]).
    fn append_lockout_events<'a>(&'a self, events: &'a [LockoutEvent]) -> StoreFuture<'a, ()>;

    /// Events with a sequence number above `seq`, oldest first, at most
    /// `limit`.
    fn lockout_events_since(&self, seq: i64, limit: u32) -> StoreFuture<'_, Vec<(i64, LockoutEvent)>>;

    /// The newest sequence number, 0 when there is none.
    fn latest_lockout_seq(&self) -> StoreFuture<'_, i64>;

    /// The sequence number of the first event at or after `at` (unix ms),
    /// minus one: where a node starting now begins to read, so it counts
    /// what the others counted lately.
    fn lockout_seq_before(&self, at: i64) -> StoreFuture<'_, i64>;

    /// Deletes events older than `before` (unix ms); returns how many.
    fn prune_lockout_events(&self, before: i64) -> StoreFuture<'_, u64>;

    /// Notified when another node appended events (PostgreSQL's NOTIFY);
    /// `None` where polling is the only way.
    fn lockout_signal(&self) -> Option<Arc<tokio::sync::Notify>> {
        None
    }
}

/// The PostgreSQL channel lockout events are announced on.
pub const LOCKOUT_CHANNEL: &str = "fedgate_lockout";

/// One thing a node's lockout counted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockoutEvent {
    pub at: i64,
    pub node: String,
    pub kind: LockoutEventKind,
    /// Whom it counted against: the user, or a name that resolved to
    /// nobody (its canonical login part).
    pub user_id: Option<UserId>,
    pub name: Option<String>,
    pub client_ip: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockoutEventKind {
    /// A refused secret was counted, for this reason.
    Failed(crate::model::Reason),
    /// The source signed the user in: it is familiar from now on.
    SignedIn,
}

/// Portal sessions, addressed by the hash of the cookie's id.
pub trait SessionStore: Send + Sync {
    fn put_portal_session<'a>(&'a self, session: &'a PortalSession) -> StoreFuture<'a, ()>;

    fn portal_session<'a>(&'a self, id_hash: &'a [u8; 32]) -> StoreFuture<'a, Option<PortalSession>>;

    fn delete_portal_session<'a>(&'a self, id_hash: &'a [u8; 32]) -> StoreFuture<'a, ()>;

    /// Deletes sessions last seen before `before` (unix ms); returns how
    /// many.
    fn prune_portal_sessions(&self, before: i64) -> StoreFuture<'_, u64>;
}

/// The sign-in log.
pub trait AuditStore: Send + Sync {
    /// Appends sign-in records in one transaction. Client-supplied text is
    /// clamped ([`AuditRecord::clamped`]).
    fn append_audit<'a>(&'a self, records: &'a [AuditRecord]) -> StoreFuture<'a, ()>;

    /// Matching records, newest first.
    fn query_audit<'a>(&'a self, filter: &'a AuditFilter) -> StoreFuture<'a, Vec<AuditRecord>>;
}

/// The log of administrative changes (admin API calls and CLI commands
/// that change something): who, from where, what. Never a secret.
pub trait AdminEventStore: Send + Sync {
    /// Appends one event; returns its id.
    fn append_admin_event<'a>(&'a self, event: &'a AdminEvent) -> StoreFuture<'a, i64>;

    /// The newest events first, at most `limit`, only those with an id
    /// below `before` when given (the next page).
    fn admin_events(&self, limit: u32, before: Option<i64>) -> StoreFuture<'_, Vec<AdminEvent>>;
}

/// What the usage report ([`crate::report`]) reads, aggregated by the
/// database where it can be.
pub trait ReportStore: Send + Sync {
    /// Sign-ins at or after `from` and before `to` (unix ms), summed
    /// (each record's `count`) per UTC day, credential kind and result.
    /// Grouped in SQL over the `audit_at` index: the log is not read into
    /// memory.
    fn daily_signins(&self, from: i64, to: i64) -> StoreFuture<'_, Vec<DailySignins>>;

    /// The MFA state history that says what users held during `[from,
    /// to)`: for each user, their newest row before `from` (what they held
    /// when the range began) and every row in the range; by user, then in
    /// time order.
    fn state_history(&self, from: i64, to: i64) -> StoreFuture<'_, Vec<StateRecord>>;

    /// When the history was backfilled by the upgrade that began it (unix
    /// ms); `None` when no user existed then, so it is complete.
    fn history_begins(&self) -> StoreFuture<'_, Option<i64>>;

    /// App passwords of users not deleted that were not used since
    /// `before` (unix ms): last used before it, or never used and created
    /// before it. By UPN and name.
    fn stale_app_passwords(&self, before: i64) -> StoreFuture<'_, Vec<StaleAppPassword>>;
}

/// One group of [`ReportStore::daily_signins`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DailySignins {
    /// Days since 1970-01-01, UTC.
    pub day: i64,
    pub credential: String,
    pub success: bool,
    pub count: i64,
}

/// One row of the MFA state history: from `at` on, the user holds `state`
/// and is deleted or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateRecord {
    pub id: i64,
    pub user_id: UserId,
    pub at: i64,
    pub state: MfaState,
    pub deleted: bool,
}

/// An app password [`ReportStore::stale_app_passwords`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaleAppPassword {
    pub upn: Upn,
    pub name: String,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
}

/// Enrolment notices ([`crate::notify`]): which users are due one, and
/// the claim that makes sure one notice is sent by one run.
pub trait NoticeStore: Send + Sync {
    /// Users in MFA state `enabled` now (not deleted) whose newest change
    /// of state, the one into `enabled`, has no notice sent: with the
    /// notice recorded for that change so far, if any. Changes backfilled
    /// by the upgrade that began the history are not due a notice. By UPN.
    fn notice_candidates(&self) -> StoreFuture<'_, Vec<NoticeCandidate>>;

    /// Claims the notice for a change until `claim.until`, as one
    /// compare-and-set: true when this caller holds it now (no notice was
    /// recorded for the change, or it failed, or it found no address, or
    /// an earlier claim ran out). Counts an attempt.
    fn claim_notice<'a>(&'a self, claim: &'a NoticeClaim) -> StoreFuture<'a, bool>;

    /// Records how a claimed notice went; a notice claimed by another
    /// holder since is left alone (false).
    fn finish_notice<'a>(&'a self, done: &'a NoticeDone) -> StoreFuture<'a, bool>;

    /// Every notice recorded, oldest first.
    fn list_notices(&self) -> StoreFuture<'_, Vec<NoticeRecord>>;
}

/// What [`NoticeStore::notice_candidates`] returns for one user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoticeCandidate {
    pub user_id: UserId,
    pub upn: Upn,
    pub source: crate::model::UserSource,
    pub display_name: Option<String>,
    /// The directory's `mail` attribute.
    pub mail: Option<String>,
    /// The history row of the change into `enabled`, and its time.
    pub history_id: i64,
    pub enabled_at: i64,
    /// The notice recorded for that change so far.
    pub notice: Option<NoticeState>,
}

/// Where a recorded notice stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoticeState {
    pub status: NoticeStatus,
    pub attempts: i64,
    /// Until when a `sending` notice is claimed (unix ms).
    pub claimed_until: Option<i64>,
}

/// A claim for [`NoticeStore::claim_notice`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoticeClaim {
    pub user_id: UserId,
    pub history_id: i64,
    /// Who claims it (one run of `fedgate notify`, or one node's job).
    pub holder: String,
    pub address: Option<String>,
    pub now: i64,
    pub until: i64,
}

/// How a claimed notice went, for [`NoticeStore::finish_notice`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoticeDone {
    pub history_id: i64,
    pub holder: String,
    pub status: NoticeStatus,
    pub error: Option<String>,
    pub now: i64,
}

/// One notice as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NoticeRecord {
    pub user_id: UserId,
    pub history_id: i64,
    pub status: NoticeStatus,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub address: Option<String>,
    pub created_at: i64,
    pub sent_at: Option<i64>,
}

/// Whole-store copies ([`copy`], `fedgate store copy`): one consistent
/// snapshot to read every copied table from, and one transaction to write
/// them into.
pub trait StoreCopy: Send + Sync {
    /// The random id written when the store was created: it tells two
    /// databases apart however their URLs are spelled.
    fn store_id(&self) -> &str;

    /// Starts reading the store as it is now: what is written after this
    /// call is not read. Writes nothing.
    fn export(&self) -> StoreFuture<'_, Box<dyn copy::CopySource>>;

    /// Starts the transaction a copy is written in. It holds the store's
    /// write lock (SQLite) or change-feed lock (PostgreSQL) until it is
    /// committed or dropped, so no other writer slips a row in between the
    /// check that the store is empty and the commit.
    fn import(&self) -> StoreFuture<'_, Box<dyn copy::CopyTarget>>;
}

/// How many wrong second-factor codes in a row are allowed, and how long
/// codes are refused after that.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TotpLimit {
    pub max_failures: u32,
    pub block_ms: i64,
}

/// A browser's session with the portal. The cookie holds a random id; the
/// store holds its hash.
#[derive(Clone, PartialEq, Eq)]
pub struct PortalSession {
    pub id_hash: [u8; 32],
    pub user_id: UserId,
    /// False while a second factor is still due.
    pub signed_in: bool,
    /// Whether a TOTP code was checked in this session.
    pub mfa: bool,
    /// The user's MFA state when the session began.
    pub mfa_state: MfaState,
    pub created_at: i64,
    pub last_seen_at: i64,
    pub return_to: Option<String>,
    /// A TOTP secret being registered, sealed.
    pub pending_totp: Option<Vec<u8>>,
}

impl fmt::Debug for PortalSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PortalSession")
            .field("user_id", &self.user_id)
            .field("signed_in", &self.signed_in)
            .field("mfa", &self.mfa)
            .field("created_at", &self.created_at)
            .finish_non_exhaustive()
    }
}

/// One change a sync pass makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirectoryChange {
    /// Create or update the user; with `revoke_app_passwords`, their app
    /// passwords are deleted in the same transaction (the directory
    /// password changed).
    Upsert {
        user: FederatedUser,
        revoke_app_passwords: bool,
    },
    /// The entry is gone from the directory.
    Delete { id: UserId },
}

/// What [`SyncStore::apply_directory_changes`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct AppliedChanges {
    pub created: usize,
    pub updated: usize,
    pub disabled: usize,
    pub enabled: usize,
    pub deleted: usize,
    pub revoked: usize,
    /// Changes refused (a UPN held by another user, a cloud user of the
    /// same UPN); each is logged.
    pub errors: usize,
}

/// One sync pass, as `fedgate sync status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct SyncPass {
    /// `full` or `incremental`.
    pub kind: String,
    /// `completed`, `guarded` (stopped by the mass-change guard) or
    /// `failed`.
    pub outcome: String,
    #[serde(serialize_with = "crate::model::ser_time")]
    #[schema(value_type = String, format = DateTime)]
    pub started_at: i64,
    pub duration_ms: i64,
    pub seen: i64,
    pub created: i64,
    pub updated: i64,
    pub disabled: i64,
    pub enabled: i64,
    pub deleted: i64,
    pub errors: i64,
    pub server: Option<String>,
    pub message: Option<String>,
}

/// Where the next incremental pass starts: the change attribute's highest
/// value seen, on the server it was read from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SyncMark {
    pub value: String,
    pub server: String,
}

/// A federated user after [`UserStore::upsert_federated_user`], and what
/// happened to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upserted {
    pub user: User,
    pub outcome: UpsertOutcome,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UpsertOutcome {
    Created,
    /// Enabled flag or directory attributes changed, or a deleted user
    /// came back.
    Updated,
    Unchanged,
}

/// One line of a bulk MFA-state change, as the operator wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateLine {
    /// 1-based line number (or argument position) for the report.
    pub line: usize,
    pub upn: String,
    pub state: String,
}

impl StateLine {
    /// Lines of a `upn,state` CSV file. Blank lines, `#` comments and a
    /// `upn,state` header are skipped; anything else becomes a line, even
    /// if malformed, so that validation can report it by number.
    pub fn parse_csv(text: &str) -> Vec<StateLine> {
        let mut lines = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let raw = raw.trim().trim_start_matches('\u{FEFF}');
            if raw.is_empty() || raw.starts_with('#') {
                continue;
            }
            let (upn, state) = raw.split_once(',').unwrap_or((raw, ""));
            let (upn, state) = (upn.trim(), state.trim());
            if lines.is_empty() && upn.eq_ignore_ascii_case("upn") && state.eq_ignore_ascii_case("state") {
                continue;
            }
            lines.push(StateLine {
                line: index + 1,
                upn: upn.to_owned(),
                state: state.to_owned(),
            });
        }
        lines
    }
}

/// A line a bulk change refused, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct LineError {
    pub line: usize,
    pub upn: String,
    pub reason: String,
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.reason)
    }
}

/// What an accepted bulk change did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct BulkApplied {
    /// Users whose state changed.
    pub changed: usize,
    /// Users already in the requested state.
    pub unchanged: usize,
}

/// A new app password, already hashed and tagged by
/// [`crate::app_password`].
#[derive(Clone)]
pub struct NewAppPassword {
    pub user_id: UserId,
    pub name: AppPasswordName,
    pub tag: [u8; 32],
    pub hash: String,
    pub limits: AppPasswordLimits,
}

impl fmt::Debug for NewAppPassword {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewAppPassword")
            .field("user_id", &self.user_id)
            .field("name", &self.name)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// A TOTP registration for [`TotpStore::set_totp`]: the secret sealed by
/// [`crate::totp::TotpSecret::seal`], and the step of the code the user
/// confirmed it with.
#[derive(Clone, PartialEq, Eq)]
pub struct NewTotp {
    pub sealed_secret: Vec<u8>,
    pub confirmed_step: u64,
}

impl fmt::Debug for NewTotp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewTotp")
            .field("sealed_secret", &"***")
            .field("confirmed_step", &self.confirmed_step)
            .finish()
    }
}

/// A user's TOTP as stored, for [`crate::totp::TotpSecret::open`] and
/// [`crate::totp::TotpSecret::verify`].
#[derive(Clone, PartialEq, Eq)]
pub struct StoredTotp {
    pub sealed_secret: Vec<u8>,
    /// The newest step a code was accepted for.
    pub last_step: Option<u64>,
}

impl fmt::Debug for StoredTotp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredTotp")
            .field("sealed_secret", &"***")
            .field("last_step", &self.last_step)
            .finish()
    }
}

/// One app password's last use, for [`AppPasswordStore::record_last_used`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastUsed {
    pub id: AppPasswordId,
    pub at: i64,
    pub ip: String,
    pub user_agent: String,
}

/// What a change-feed entry is about. Each one that names a user means
/// "drop what you cached about this user"; [`ChangeKind::SettingsChanged`]
/// means "read the settings again and drop every cached decision";
/// [`ChangeKind::StoreCopied`] and [`ChangeKind::Unknown`] mean "drop
/// everything and read every user again".
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    UserCreated,
    /// Federated user's enabled flag changed or a deleted user came back.
    UserUpdated,
    MfaStateChanged,
    UserEnabled,
    UserDisabled,
    UserDeleted,
    PasswordChanged,
    /// Second factor cleared by an operator: the user registers again.
    RegistrationRequired,
    Registered,
    /// The user registered a TOTP secret (and so is registered).
    TotpRegistered,
    /// The user's TOTP secret was removed.
    TotpRemoved,
    AppPasswordCreated,
    /// An app password's limits were narrowed.
    AppPasswordNarrowed,
    AppPasswordDeleted,
    AppPasswordsRevoked,
    SettingsChanged,
    /// The whole store was written by `fedgate store copy`: reload
    /// everything.
    StoreCopied,
    /// Written by a newer fedgate; treated as "drop everything".
    Unknown(String),
}

impl ChangeKind {
    pub fn as_str(&self) -> &str {
        match self {
            ChangeKind::UserCreated => "user_created",
            ChangeKind::UserUpdated => "user_updated",
            ChangeKind::MfaStateChanged => "mfa_state_changed",
            ChangeKind::UserEnabled => "user_enabled",
            ChangeKind::UserDisabled => "user_disabled",
            ChangeKind::UserDeleted => "user_deleted",
            ChangeKind::PasswordChanged => "password_changed",
            ChangeKind::RegistrationRequired => "registration_required",
            ChangeKind::Registered => "registered",
            ChangeKind::TotpRegistered => "totp_registered",
            ChangeKind::TotpRemoved => "totp_removed",
            ChangeKind::AppPasswordCreated => "app_password_created",
            ChangeKind::AppPasswordNarrowed => "app_password_narrowed",
            ChangeKind::AppPasswordDeleted => "app_password_deleted",
            ChangeKind::AppPasswordsRevoked => "app_passwords_revoked",
            ChangeKind::SettingsChanged => "settings_changed",
            ChangeKind::StoreCopied => "store_copied",
            ChangeKind::Unknown(kind) => kind,
        }
    }

    pub fn parse(text: &str) -> ChangeKind {
        const KNOWN: &[ChangeKind] = &[
            ChangeKind::UserCreated,
            ChangeKind::UserUpdated,
            ChangeKind::MfaStateChanged,
            ChangeKind::UserEnabled,
            ChangeKind::UserDisabled,
            ChangeKind::UserDeleted,
            ChangeKind::PasswordChanged,
            ChangeKind::RegistrationRequired,
            ChangeKind::Registered,
            ChangeKind::TotpRegistered,
            ChangeKind::TotpRemoved,
            ChangeKind::AppPasswordCreated,
            ChangeKind::AppPasswordNarrowed,
            ChangeKind::AppPasswordDeleted,
            ChangeKind::AppPasswordsRevoked,
            ChangeKind::SettingsChanged,
            ChangeKind::StoreCopied,
        ];
        KNOWN
            .iter()
            .find(|kind| kind.as_str() == text)
            .cloned()
            .unwrap_or_else(|| ChangeKind::Unknown(text.to_owned()))
    }
}

impl fmt::Display for ChangeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One entry of the change feed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    pub seq: i64,
    pub at: i64,
    pub kind: ChangeKind,
    pub user_id: Option<UserId>,
}

/// Which audit records [`AuditStore::query_audit`] returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditFilter {
    /// Records resolved to this user, or whose given name is this UPN
    /// (failed attempts for unknown users have no user id).
    pub user: Option<Upn>,
    /// At or after this time (unix ms).
    pub since: Option<i64>,
    pub success: Option<bool>,
    /// At most this many, newest first.
    pub limit: u32,
}

impl Default for AuditFilter {
    fn default() -> Self {
        AuditFilter {
            user: None,
            since: None,
            success: None,
            limit: 100,
        }
    }
}

/// A store operation failed. Messages name the user, app password or file
/// concerned so an operator can act on them.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store {url}: {reason}")]
    Unsupported { url: String, reason: &'static str },
    #[error("cannot open store {url}: {source}")]
    Open {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    #[error(
        "no store at {path} (store.url = \"{url}\"): create it with `fedgate store init`, or start \
         `fedgate serve` once; check store.url if the store should exist"
    )]
    Missing { url: String, path: String },
    #[error("a store already exists at {path} (store.url = \"{url}\"): nothing changed")]
    Exists { url: String, path: String },
    #[error("store {url} is unavailable: {reason}")]
    Unavailable { url: String, reason: String },
    #[error("cannot create the directory {dir} for store {url}: {source}")]
    CreateDir {
        url: String,
        dir: String,
        #[source]
        source: std::io::Error,
    },
    #[error("store migration {version:04} ({name}) failed: {source}")]
    Migration {
        version: i64,
        name: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error(
        "the store is at schema version {found}, newer than this fedgate knows ({known}): \
         upgrade fedgate"
    )]
    SchemaTooNew { found: i64, known: i64 },
    #[error("store: cannot {action}: {source}")]
    Database {
        action: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error("cannot read {path} ({key}): {source}")]
    ReadFile {
        key: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} ({key}) is empty")]
    EmptyFile { key: &'static str, path: String },
    #[error("store holds an invalid value: {0}")]
    Corrupt(String),
    #[error("no user {upn}")]
    UnknownUser { upn: Upn },
    #[error("no user with id {id}")]
    UnknownUserId { id: UserId },
    #[error("user {upn} is deleted")]
    UserDeleted { upn: Upn },
    #[error("user {upn} already exists")]
    UserExists { upn: Upn },
    #[error(
        "user {upn} is a cloud-only user in fedgate; the directory has a user of the same \
         UPN. Delete one of them"
    )]
    SourceConflict { upn: Upn },
    #[error(
        "the directory renamed a user to {upn}, but user id {holder} already has that UPN in \
         fedgate: delete one of them"
    )]
    UpnTaken { upn: Upn, holder: UserId },
    #[error(
        "user {upn} comes from the directory: their password is checked by the directory, \
         not by fedgate"
    )]
    NotCloudUser { upn: Upn },
    #[error(
        "user {upn} already has {MAX_APP_PASSWORDS_PER_USER} app passwords, the most allowed: \
         delete one first (fedgate app-password delete {upn} NAME)"
    )]
    TooManyAppPasswords { upn: Upn },
    #[error("user {upn} already has an app password named {name:?}: choose another name")]
    DuplicateAppPasswordName { upn: Upn, name: String },
    #[error("user {upn} has no app password named {name:?}")]
    UnknownAppPassword { upn: Upn, name: String },
    #[error("app password {name:?} of user {upn}: {error}")]
    LimitsWidened {
        upn: Upn,
        name: String,
        error: crate::app_password::limits::LimitsError,
    },
    #[error("TOTP time step {step} is out of range: check the server clock")]
    TotpStepOutOfRange { step: u64 },
    #[error("the generated app password collides with an existing one: generate another")]
    TagCollision,
    #[error(
        "no change applied: {} line(s) refused: {}",
        errors.len(),
        errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
    )]
    BulkRejected { errors: Vec<LineError> },
}

#[cfg(test)]
mod tests;
