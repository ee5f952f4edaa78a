//! The shared [`Store`] backend: one PostgreSQL database that every fedgate
//! node of a site (and their CLIs) uses, with the same migration history
//! as the SQLite store, in PostgreSQL's terms.
//!
//! Every transaction that writes the change feed first takes one
//! transaction-scoped advisory lock ([`FEED_LOCK`]), as SQLite's writers
//! take its write lock with `BEGIN IMMEDIATE`: change sequence numbers then
//! commit in the order they were drawn, so a node that has read the feed up
//! to `seq` never later finds a smaller one committed behind it. Writes that
//! grant or revoke nothing (the sign-in log, last use of app passwords,
//! portal sessions, TOTP steps) do not take it.
//!
//! Availability is the database's own (streaming replicas, Patroni...):
//! fedgate connects to the URL it is given and never replicates anything
//! itself. A connection that cannot be had within [`ACQUIRE_TIMEOUT`] is an
//! error, so an unreachable database is answered (with 503, by the sign-in
//! path) rather than waited on.

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::TryStreamExt;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgRow, PgSslMode};
use sqlx::{Postgres, QueryBuilder, Row, Transaction};

use super::{
    AdminEventStore, AppPasswordStore, AppliedChanges, AuditFilter, AuditStore, BulkApplied, Change, ChangeFeed,
    ChangeKind, DirectoryChange, LastUsed, NewAppPassword, NewTotp, OpenMode, PortalSession, PushCookie, PushStatus,
    PushStore, SessionStore, SettingsStore, StateLine, Store, StoreAccess, StoreError, StoreFuture, StoredTotp,
    SyncLead, SyncLease, SyncMark, SyncPass, SyncStore, TotpLimit, TotpStore, UpsertOutcome, Upserted, UserStore,
    LOCKOUT_CHANNEL,
};
use crate::app_password::MAX_APP_PASSWORDS_PER_USER;
use crate::model::{
    audit_text, AdminEvent, AppPassword, AppPasswordId, AppPasswordSecretRecord, AuditRecord, Clock, CredentialKind,
    DirectoryAttributes, FederatedUser, MfaState, Reason, Settings, Upn, User, UserId, UserSource,
    MAX_APP_PASSWORD_NAME_CHARS, MAX_AUDIT_IP_CHARS, MAX_AUDIT_UPN_CHARS, MAX_AUDIT_USER_AGENT_CHARS,
};

mod admin_events;
mod app_passwords;
mod audit;
mod copy;
mod feed;
mod lockout;
mod notices;
mod report;
mod sessions;
mod sync;
mod totp;
mod users;

super::rows::row_decoders!(PgRow);
use rows::*;

use users::upsert_in;

/// A schema migration, applied once, in its own transaction.
struct Migration {
    version: i64,
    name: &'static str,
    sql: &'static str,
}

/// Declares the migration list: version, name, file.
macro_rules! migrations {
    ($($version:literal $name:literal $file:literal,)*) => {
        &[$(Migration { version: $version, name: $name, sql: include_str!($file) },)*]
    };
}

/// In version order, step for step the SQLite store's list (same versions,
/// same names): a new migration is a new file and a new line in both.
const MIGRATIONS: &[Migration] = migrations![
    1 "init" "postgres/migrations/0001_init.sql",
    2 "directory" "postgres/migrations/0002_directory.sql",
    3 "sync" "postgres/migrations/0003_sync.sql",
    4 "directory_enabled" "postgres/migrations/0004_directory_enabled.sql",
    5 "totp" "postgres/migrations/0005_totp.sql",
    6 "portal_sessions" "postgres/migrations/0006_portal_sessions.sql",
    7 "totp_failures" "postgres/migrations/0007_totp_failures.sql",
    8 "store_id" "postgres/migrations/0008_store_id.sql",
    9 "sync_lead" "postgres/migrations/0009_sync_lead.sql",
    10 "lockout_events" "postgres/migrations/0010_lockout_events.sql",
    11 "mfa_state_history" "postgres/migrations/0011_mfa_state_history.sql",
    12 "enrolment_notices" "postgres/migrations/0012_enrolment_notices.sql",
    13 "admin_events" "postgres/migrations/0013_admin_events.sql",
    14 "app_password_limits" "postgres/migrations/0014_app_password_limits.sql",
    15 "sync_push" "postgres/migrations/0015_sync_push.sql",
];

/// The advisory lock (transaction-scoped) that writers of the change feed
/// hold to their commit. Any fixed 64-bit number fedgate alone uses: the
/// ASCII of "fedgate" and a 1.
const FEED_LOCK: i64 = 0x6665_6467_6174_6501;

/// The advisory lock that migrations hold, so nodes starting together
/// migrate one at a time.
const MIGRATE_LOCK: i64 = 0x6665_6467_6174_6502;

/// The advisory lock that appenders of lockout events hold to their
/// commit, so those sequence numbers commit in order too.
const LOCKOUT_LOCK: i64 = 0x6665_6467_6174_6503;

/// How long a query waits for a connection before failing.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// Connections per node: sign-ins that miss the cache, the CLI and portal
/// writes, the audit flush and the sync share them.
const MAX_CONNECTIONS: u32 = 16;

const USER_COLUMNS: &str =
    "id, upn, source, enabled, directory_enabled, deleted, mfa_state, registered_at, created_at, password_hash, \
                            dn, login, anchor, display_name, mail, groups, password_changed";

/// The PostgreSQL store; share it as `Arc<dyn Store>` (see [`super::open`]).
pub struct PgStore {
    pool: PgPool,
    clock: Arc<dyn Clock>,
    /// The URL as configured, without any password in it.
    url: String,
    store_id: String,
    /// Set once the database was found to hold another store (or none):
    /// nothing it says is true of the store that was opened.
    lost: std::sync::OnceLock<String>,
    /// Notified for every change another connection commits (see
    /// [`listen`]).
    signal: Arc<tokio::sync::Notify>,
    /// Notified for every batch of lockout events another node commits.
    lockout_signal: Arc<tokio::sync::Notify>,
    listener: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl fmt::Debug for PgStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgStore")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl PgStore {
    /// Opens the database at `url` (`postgres://USER@HOST:PORT/DB`),
    /// creating the schema only as `mode` allows, and brings it up to date.
    pub async fn open_with(
        url: &str,
        access: &StoreAccess,
        clock: Arc<dyn Clock>,
        mode: OpenMode,
    ) -> Result<PgStore, StoreError> {
        let shown = redact(url);
        let options = connect_options(url, &shown, access)?;
        let open_err = |source| StoreError::Open {
            url: shown.clone(),
            source,
        };
        // One connection first, so that a refused connection, a wrong
        // password or a certificate that does not check is reported as
        // itself rather than as a pool that timed out.
        let first = <PgConnection as sqlx::Connection>::connect_with(&options)
            .await
            .map_err(open_err)?;
        sqlx::Connection::close(first).await.map_err(open_err)?;
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(open_err)?;
        let database = || {
            url.rsplit_once('/')
                .map(|(_, db)| db.split('?').next().unwrap_or(db).to_owned())
                .unwrap_or_default()
        };
        let existing = read_store_id(&pool).await?;
        match (mode, &existing) {
            (OpenMode::Existing, None) => {
                return Err(StoreError::Missing {
                    url: shown,
                    path: format!("database {}", database()),
                })
            }
            (OpenMode::New, Some(_)) => {
                return Err(StoreError::Exists {
                    url: shown,
                    path: format!("database {}", database()),
                })
            }
            _ => {}
        }
        migrate(&pool, clock.now_ms()).await?;
        let store_id = read_store_id(&pool)
            .await?
            .ok_or_else(|| corrupt("the store has no store id"))?;
        let signal = Arc::new(tokio::sync::Notify::new());
        let lockout_signal = Arc::new(tokio::sync::Notify::new());
        let listener = tokio::spawn(listen(
            pool.clone(),
            [signal.clone(), lockout_signal.clone()],
            shown.clone(),
        ));
        Ok(PgStore {
            pool,
            clock,
            url: shown,
            store_id,
            lost: std::sync::OnceLock::new(),
            signal,
            lockout_signal,
            listener: std::sync::Mutex::new(Some(listener)),
        })
    }

    /// The pool, unless the database was found to hold another store.
    fn live_pool(&self) -> Result<&PgPool, StoreError> {
        match self.lost.get() {
            None => Ok(&self.pool),
            Some(reason) => Err(self.unavailable(reason.clone())),
        }
    }

    fn unavailable(&self, reason: String) -> StoreError {
        StoreError::Unavailable {
            url: self.url.clone(),
            reason,
        }
    }

    /// Marks the store lost for good (see [`PgStore::lost`]).
    fn lose(&self, reason: String) -> StoreError {
        let reason = self
            .lost
            .get_or_init(|| format!("{reason}; restart fedgate once the store is back"))
            .clone();
        self.unavailable(reason)
    }

    /// The schema version the database is at.
    pub async fn schema_version(&self) -> Result<i64, StoreError> {
        current_version(&self.pool).await
    }

    /// A transaction that writes the change feed: it holds [`FEED_LOCK`]
    /// from its start to its commit.
    async fn write_tx(&self) -> Result<Transaction<'static, Postgres>, StoreError> {
        let mut tx = self
            .live_pool()?
            .begin()
            .await
            .map_err(db("begin a write transaction"))?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(FEED_LOCK)
            .execute(&mut *tx)
            .await
            .map_err(db("take the change-feed lock"))?;
        Ok(tx)
    }

    /// A transaction that appends lockout events: it holds
    /// [`LOCKOUT_LOCK`] to its commit.
    async fn lockout_tx(&self) -> Result<Transaction<'static, Postgres>, StoreError> {
        let mut tx = self.plain_tx().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(LOCKOUT_LOCK)
            .execute(&mut *tx)
            .await
            .map_err(db("take the lockout-events lock"))?;
        Ok(tx)
    }

    /// A transaction that writes nothing the change feed reports.
    async fn plain_tx(&self) -> Result<Transaction<'static, Postgres>, StoreError> {
        self.live_pool()?.begin().await.map_err(db("begin a transaction"))
    }
}

/// How long the listener waits before connecting again after a failure,
/// at most.
const LISTEN_RETRY_MAX: Duration = Duration::from_secs(5);

/// Keeps one connection listening on [`super::CHANGES_CHANNEL`] and
/// [`super::LOCKOUT_CHANNEL`] for as long as the pool is open, and notifies
/// the signal of the channel (`signals`, in that order) for every
/// announcement, and both once more each time listening starts (announcements made while it was
/// not listening were not heard; the poll of the change feed finds those
/// rows, and the extra notification makes it look at once).
async fn listen(pool: PgPool, signals: [Arc<tokio::sync::Notify>; 2], url: String) {
    let mut retry = Duration::from_millis(100);
    let mut failing = false;
    while !pool.is_closed() {
        let Err(err) = listen_once(&pool, &signals, &url, &mut failing).await;
        metrics::gauge!("fedgate_store_listening").set(0.0);
        if pool.is_closed() {
            break;
        }
        if !std::mem::replace(&mut failing, true) {
            tracing::warn!(
                store = %url,
                error = %err,
                "cannot listen for store changes: other nodes' changes are seen at the next poll of the change feed"
            );
        }
        tokio::time::sleep(retry).await;
        retry = (retry * 2).min(LISTEN_RETRY_MAX);
    }
}

/// One listening connection, until a reconnection fails.
async fn listen_once(
    pool: &PgPool,
    signals: &[Arc<tokio::sync::Notify>; 2],
    url: &str,
    failing: &mut bool,
) -> Result<std::convert::Infallible, sqlx::Error> {
    let mut listener = sqlx::postgres::PgListener::connect_with(pool).await?;
    listener
        .listen_all([super::CHANGES_CHANNEL, super::LOCKOUT_CHANNEL])
        .await?;
    if std::mem::take(failing) {
        tracing::info!(store = %url, "listening for store changes again");
    }
    loop {
        metrics::gauge!("fedgate_store_listening").set(1.0);
        for signal in signals {
            signal.notify_one();
        }
        // `try_recv` says `None` when the connection was lost, and
        // reconnects (and listens again) at its next call; an error is a
        // reconnection that failed.
        while let Some(announced) = listener.try_recv().await? {
            metrics::counter!("fedgate_store_notifications_total").increment(1);
            let lockout = announced.channel() == super::LOCKOUT_CHANNEL;
            signals[usize::from(lockout)].notify_one();
        }
        metrics::gauge!("fedgate_store_listening").set(0.0);
        tracing::warn!(store = %url, "lost the connection listening for store changes; reconnecting");
    }
}

/// The connect options for `url`, with the password from
/// `[store] password_file` and TLS from `[store] ca_file`.
fn connect_options(url: &str, shown: &str, access: &StoreAccess) -> Result<PgConnectOptions, StoreError> {
    let open_err = |source| StoreError::Open {
        url: shown.to_owned(),
        source,
    };
    let mut options = PgConnectOptions::from_str(url).map_err(open_err)?;
    if let Some(file) = &access.password_file {
        if url_has_password(url) {
            return Err(StoreError::Unsupported {
                url: shown.to_owned(),
                reason: "store.url holds a password and store.password_file is set: keep the password in the file only",
            });
        }
        let text = std::fs::read_to_string(file).map_err(|source| StoreError::ReadFile {
            key: "store.password_file",
            path: file.display().to_string(),
            source,
        })?;
        let password = text.trim_end_matches(['\r', '\n']);
        if password.is_empty() {
            return Err(StoreError::EmptyFile {
                key: "store.password_file",
                path: file.display().to_string(),
            });
        }
        options = options.password(password);
    }
    if let Some(ca) = &access.ca_file {
        if let Err(source) = std::fs::metadata(ca) {
            return Err(StoreError::ReadFile {
                key: "store.ca_file",
                path: ca.display().to_string(),
                source,
            });
        }
        // A CA named by the operator means they want the server checked:
        // the certificate must chain to it and name the host.
        options = options.ssl_mode(PgSslMode::VerifyFull).ssl_root_cert(Path::new(ca));
    }
    Ok(options.application_name("fedgate"))
}

fn url_has_password(url: &str) -> bool {
    let in_userinfo = url
        .split_once("://")
        .and_then(|(_, rest)| rest.split_once('@'))
        .is_some_and(|(userinfo, _)| userinfo.contains(':'));
    in_userinfo || query_password(url).is_some()
}

/// Where a `password=` query parameter's value is in `url`, if it has one.
fn query_password(url: &str) -> Option<std::ops::Range<usize>> {
    let query = url.find('?')? + 1;
    let mut at = query;
    for pair in url[query..].split('&') {
        if let Some(value) = pair.strip_prefix("password=") {
            let start = at + "password=".len();
            return Some(start..start + value.len());
        }
        at += pair.len() + 1;
    }
    None
}

/// `url` with any password (in the user part or as a `password=` query
/// parameter) replaced by `***`, for logs and errors.
pub(super) fn redact(url: &str) -> String {
    let mut shown = url.to_owned();
    if let Some(range) = query_password(&shown) {
        shown.replace_range(range, "***");
    }
    let Some((scheme, rest)) = shown.split_once("://") else {
        return shown;
    };
    match rest.split_once('@') {
        Some((userinfo, host)) if userinfo.contains(':') => {
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{scheme}://{user}:***@{host}")
        }
        _ => shown,
    }
}

#[cfg(test)]
#[test]
fn passwords_are_redacted_wherever_a_url_holds_them() {
    assert_eq!(
        redact("postgres://fedgate:s3cret@db:5432/x"),
        "postgres://fedgate:***@db:5432/x"
    );
    assert_eq!(
        redact("postgres://fedgate@db/x?sslmode=require&password=s3cret&application_name=y"),
        "postgres://fedgate@db/x?sslmode=require&password=***&application_name=y"
    );
    assert_eq!(redact("postgres://fedgate@db/x"), "postgres://fedgate@db/x");
    assert!(url_has_password("postgres://u@db/x?password=p"));
    assert!(!url_has_password("postgres://u@db/x?sslmode=require"));
}

async fn read_store_id(pool: &PgPool) -> Result<Option<String>, StoreError> {
    // Before migration 8 (or on an empty database) there is no table.
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('store_meta') IS NOT NULL")
        .fetch_one(pool)
        .await
        .map_err(db("look for the store"))?;
    if !exists {
        return Ok(None);
    }
    sqlx::query_scalar("SELECT value FROM store_meta WHERE key = 'store_id'")
        .fetch_optional(pool)
        .await
        .map_err(db("read the store id"))
}

async fn current_version(pool: &PgPool) -> Result<i64, StoreError> {
    sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) FROM schema_version")
        .fetch_one(pool)
        .await
        .map_err(db("read the schema version"))
}

async fn migrate(pool: &PgPool, now: i64) -> Result<(), StoreError> {
    let known = MIGRATIONS.last().map_or(0, |m| m.version);
    let failed_at = |version, name| move |source| StoreError::Migration { version, name, source };
    // Held across every step, so two nodes starting at once do not both
    // apply one: the second finds the work done.
    let mut tx = pool.begin().await.map_err(failed_at(0, "lock"))?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(MIGRATE_LOCK)
        .execute(&mut *tx)
        .await
        .map_err(failed_at(0, "lock"))?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS schema_version (
             version    BIGINT PRIMARY KEY,
             name       TEXT   NOT NULL,
             applied_at BIGINT NOT NULL
         )",
    )
    .execute(&mut *tx)
    .await
    .map_err(db("create the schema_version table"))?;
    let found: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) FROM schema_version")
        .fetch_one(&mut *tx)
        .await
        .map_err(db("read the schema version"))?;
    if found > known {
        return Err(StoreError::SchemaTooNew { found, known });
    }
    for migration in MIGRATIONS.iter().filter(|m| m.version > found) {
        let failed = failed_at(migration.version, migration.name);
        let sql = super::rules::migration_sql(migration.sql, now);
        sqlx::raw_sql(&sql).execute(&mut *tx).await.map_err(failed)?;
        sqlx::query("INSERT INTO schema_version (version, name, applied_at) VALUES ($1, $2, $3)")
            .bind(migration.version)
            .bind(migration.name)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(failed_at(migration.version, migration.name))?;
        tracing::info!(
            version = migration.version,
            name = migration.name,
            "store schema migrated"
        );
    }
    tx.commit().await.map_err(failed_at(known, "commit"))?;
    Ok(())
}

/// Maps a database error to [`StoreError::Database`] saying what was being
/// done.
fn db(action: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| StoreError::Database { action, source }
}

fn corrupt(what: impl fmt::Display) -> StoreError {
    StoreError::Corrupt(what.to_string())
}

async fn user_by_upn(conn: &mut PgConnection, upn: &Upn) -> Result<Option<User>, StoreError> {
    let row = sqlx::query(&format!("SELECT {USER_COLUMNS} FROM users WHERE upn = $1"))
        .bind(upn.as_str())
        .fetch_optional(conn)
        .await
        .map_err(db("look up a user"))?;
    row.as_ref().map(user_from_row).transpose()
}

async fn user_by_id(conn: &mut PgConnection, id: UserId) -> Result<Option<User>, StoreError> {
    let row = sqlx::query(&format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1"))
        .bind(id.0)
        .fetch_optional(conn)
        .await
        .map_err(db("look up a user"))?;
    row.as_ref().map(user_from_row).transpose()
}

/// The user named `upn`, which must exist and not be deleted.
async fn live_user(conn: &mut PgConnection, upn: &Upn) -> Result<User, StoreError> {
    match user_by_upn(conn, upn).await? {
        None => Err(StoreError::UnknownUser { upn: upn.clone() }),
        Some(user) if user.deleted => Err(StoreError::UserDeleted { upn: upn.clone() }),
        Some(user) => Ok(user),
    }
}

/// The user with `id`, which must exist and not be deleted.
async fn live_user_by_id(conn: &mut PgConnection, id: UserId) -> Result<User, StoreError> {
    match user_by_id(conn, id).await? {
        None => Err(StoreError::UnknownUserId { id }),
        Some(user) if user.deleted => Err(StoreError::UserDeleted { upn: user.upn }),
        Some(user) => Ok(user),
    }
}

/// Re-reads a user inside the transaction that just changed it.
async fn reread(conn: &mut PgConnection, id: UserId) -> Result<User, StoreError> {
    user_by_id(conn, id)
        .await?
        .ok_or_else(|| corrupt(format!("user {id} vanished inside its own transaction")))
}

/// Writes a change-feed row; the transaction must hold [`FEED_LOCK`]
/// ([`PgStore::write_tx`]). The commit wakes every node listening on
/// [`super::CHANGES_CHANNEL`].
async fn record_change(
    conn: &mut PgConnection,
    at: i64,
    kind: ChangeKind,
    user: Option<UserId>,
) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO changes (at, kind, user_id) VALUES ($1, $2, $3)")
        .bind(at)
        .bind(kind.as_str())
        .bind(user.map(|id| id.0))
        .execute(&mut *conn)
        .await
        .map_err(db("record a change"))?;
    // Delivered at commit, once per distinct payload per transaction.
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(super::CHANGES_CHANNEL)
        .execute(conn)
        .await
        .map_err(db("notify the other nodes"))?;
    Ok(())
}

/// Records that `user` holds `state` (and is deleted or not) from `at` on:
/// the one writer of the MFA state history, called in the transaction of
/// every change of a user's MFA state or existence.
pub(super) async fn record_state(
    conn: &mut PgConnection,
    user: UserId,
    state: MfaState,
    deleted: bool,
    at: i64,
) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO mfa_state_history (user_id, at, mfa_state, deleted) VALUES ($1, $2, $3, $4)")
        .bind(user.0)
        .bind(at)
        .bind(state.as_str())
        .bind(deleted)
        .execute(conn)
        .await
        .map_err(db("record a change of MFA state"))?;
    Ok(())
}

async fn commit(tx: Transaction<'static, Postgres>) -> Result<(), StoreError> {
    tx.commit().await.map_err(db("commit"))
}

/// Forgets a user's TOTP secret and registration: the next sign-in to
/// the portal registers a second factor anew.
async fn clear_second_factor(
    conn: &mut PgConnection,
    user: UserId,
    now: i64,
    action: &'static str,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE users SET totp_secret = NULL, totp_last_step = NULL, registered_at = NULL, updated_at = $1
         WHERE id = $2",
    )
    .bind(now)
    .bind(user.0)
    .execute(conn)
    .await
    .map_err(db(action))?;
    Ok(())
}

/// The common end of a change to one user: the change-feed row in the same
/// transaction, the user as committed, the commit.
async fn finish_user_change(
    mut tx: Transaction<'static, Postgres>,
    now: i64,
    kind: ChangeKind,
    id: UserId,
) -> Result<User, StoreError> {
    record_change(&mut tx, now, kind, Some(id)).await?;
    let user = reread(&mut tx, id).await?;
    commit(tx).await?;
    Ok(user)
}

impl Drop for PgStore {
    fn drop(&mut self) {
        if let Some(listener) = self.listener.get_mut().unwrap_or_else(|e| e.into_inner()).take() {
            listener.abort();
        }
    }
}

impl Store for PgStore {
    fn ping(&self) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            sqlx::query("SELECT 1")
                .execute(self.live_pool()?)
                .await
                .map_err(db("reach the database"))?;
            Ok(())
        })
    }

    fn check(&self) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let pool = self.live_pool()?;
            let found = read_store_id(pool)
                .await
                .map_err(|err| self.unavailable(err.to_string()))?;
            match found {
                Some(id) if id == self.store_id => Ok(()),
                Some(id) => Err(self.lose(format!(
                    "the database holds another store (store id {id}, opened as {})",
                    self.store_id
                ))),
                None => Err(self.lose("the database has no store id: it is not the store that was opened".into())),
            }
        })
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        if let Some(listener) = self.listener.lock().unwrap_or_else(|e| e.into_inner()).take() {
            listener.abort();
        }
        Box::pin(self.pool.close())
    }
}

#[cfg(test)]
pub(super) fn migration_versions() -> Vec<(i64, &'static str)> {
    MIGRATIONS.iter().map(|m| (m.version, m.name)).collect()
}
