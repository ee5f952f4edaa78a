//! The embedded [`Store`] backend: one SQLite file shared by the server and
//! the CLI (WAL journal, `synchronous = FULL`, 5 s busy timeout), with
//! versioned migrations embedded in the binary.
//!
//! Every write runs in a `BEGIN IMMEDIATE` transaction: it takes the write
//! lock up front, so two processes never both read and then fail to upgrade
//! to a write (SQLite answers that with SQLITE_BUSY at once, past the busy
//! timeout). It also makes the change feed safe to poll: writers hold the
//! lock from their first read to their commit, so change sequence numbers
//! become visible in order and a poller that has seen `seq` never later
//! finds a smaller one.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::TryStreamExt;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, Sqlite, Transaction};

use super::{
    AdminEventStore, AppPasswordStore, AppliedChanges, AuditFilter, AuditStore, BulkApplied, Change, ChangeFeed,
    ChangeKind, DirectoryChange, LastUsed, NewAppPassword, NewTotp, OpenMode, PortalSession, PushCookie, PushStatus,
    PushStore, SessionStore, SettingsStore, StateLine, Store, StoreError, StoreFuture, StoredTotp, SyncLead, SyncLease,
    SyncMark, SyncPass, SyncStore, TotpLimit, TotpStore, UpsertOutcome, Upserted, UserStore,
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
pub mod backup;
mod copy;
mod feed;
mod lockout;
mod notices;
mod report;
mod sessions;
mod sync;
mod totp;
mod users;

super::rows::row_decoders!(SqliteRow);
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
    ($($version:literal $name:literal $file:literal,)+) => {
        &[$(Migration { version: $version, name: $name, sql: include_str!($file) },)+]
    };
}

/// In version order; a new migration is a new file and a new line here,
/// never an edit to an applied one.
const MIGRATIONS: &[Migration] = migrations![
    1 "init" "migrations/0001_init.sql",
    2 "directory" "migrations/0002_directory.sql",
    3 "sync" "migrations/0003_sync.sql",
    4 "directory_enabled" "migrations/0004_directory_enabled.sql",
    5 "totp" "migrations/0005_totp.sql",
    6 "portal_sessions" "migrations/0006_portal_sessions.sql",
    7 "totp_failures" "migrations/0007_totp_failures.sql",
    8 "store_id" "migrations/0008_store_id.sql",
    9 "sync_lead" "migrations/0009_sync_lead.sql",
    10 "lockout_events" "migrations/0010_lockout_events.sql",
    11 "mfa_state_history" "migrations/0011_mfa_state_history.sql",
    12 "enrolment_notices" "migrations/0012_enrolment_notices.sql",
    13 "admin_events" "migrations/0013_admin_events.sql",
    14 "app_password_limits" "migrations/0014_app_password_limits.sql",
    15 "sync_push" "migrations/0015_sync_push.sql",
];

/// Several processes share the file; a writer waits this long for another
/// to finish before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

const USER_COLUMNS: &str =
    "id, upn, source, enabled, directory_enabled, deleted, mfa_state, registered_at, created_at, password_hash, \
                            dn, login, anchor, display_name, mail, groups, password_changed";

/// The first 16 bytes of every SQLite database file.
const SQLITE_MAGIC: &[u8; 16] = b"SQLite format 3\0";

/// The file a store was opened on, as the kernel names it: a file with
/// another device and inode at the same path is another file, whatever it
/// holds.
#[derive(Debug, Clone, PartialEq, Eq)]
struct OpenedFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

/// A descriptor of the database file for reading its header, opened once
/// and never closed: closing any descriptor of a file drops every POSIX
/// lock the process holds on it, SQLite's included, after which another
/// process may checkpoint and delete the WAL this one still writes to.
struct HeaderReader(std::mem::ManuallyDrop<std::fs::File>);

impl HeaderReader {
    fn open(path: &Path) -> std::io::Result<HeaderReader> {
        Ok(HeaderReader(std::mem::ManuallyDrop::new(std::fs::File::open(path)?)))
    }

    fn read(&self) -> std::io::Result<[u8; 16]> {
        use std::os::unix::fs::FileExt;
        let mut header = [0u8; 16];
        self.0.read_exact_at(&mut header, 0)?;
        Ok(header)
    }
}

impl OpenedFile {
    fn stat(path: &Path) -> std::io::Result<OpenedFile> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path)?;
        Ok(OpenedFile {
            path: path.to_owned(),
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }
}

/// The SQLite store; share it as `Arc<dyn Store>` (see [`super::open`]).
pub struct SqliteStore {
    pool: SqlitePool,
    clock: Arc<dyn Clock>,
    url: String,
    /// `None` for an in-memory database.
    file: Option<(OpenedFile, HeaderReader)>,
    store_id: String,
    /// Set once the file was found removed or replaced: the pool's
    /// connections still read the old file, so nothing they say is true of
    /// the store any more.
    lost: std::sync::OnceLock<String>,
    /// Notified after this process applied directory changes, so its
    /// sign-in view picks them up at once instead of at the next poll of
    /// the change feed (other processes' writes are found by that poll).
    changed: Arc<tokio::sync::Notify>,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating if missing, with its directory) the database at
    /// `url` (`sqlite://PATH` or `sqlite::memory:`) and brings its schema
    /// up to date.
    pub async fn open(url: &str, clock: Arc<dyn Clock>) -> Result<SqliteStore, StoreError> {
        SqliteStore::open_with(url, clock, OpenMode::CreateIfMissing).await
    }

    /// Opens the database at `url`, creating it only as `mode` allows, and
    /// brings its schema up to date.
    pub async fn open_with(url: &str, clock: Arc<dyn Clock>, mode: OpenMode) -> Result<SqliteStore, StoreError> {
        let open_err = |source| StoreError::Open {
            url: url.to_owned(),
            source,
        };
        let options = SqliteConnectOptions::from_str(url)
            .map_err(open_err)?
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);

        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        let path = options.get_filename().to_owned();
        if !in_memory {
            let exists = path.exists();
            let shown = || path.display().to_string();
            match mode {
                OpenMode::Existing if !exists => {
                    return Err(StoreError::Missing {
                        url: url.to_owned(),
                        path: shown(),
                    })
                }
                OpenMode::New if exists => {
                    return Err(StoreError::Exists {
                        url: url.to_owned(),
                        path: shown(),
                    })
                }
                _ => {}
            }
            if !exists {
                create_parent_dir(url, &path)?;
                // The one place the file is created: the pool below never
                // creates one, so a file removed under a running server is
                // not silently replaced by an empty database.
                let conn =
                    <SqliteConnection as sqlx::Connection>::connect_with(&options.clone().create_if_missing(true))
                        .await
                        .map_err(open_err)?;
                sqlx::Connection::close(conn).await.map_err(open_err)?;
            }
        }
        // An in-memory database lives as long as one connection to it: keep
        // exactly one, forever.
        let pool_options = if in_memory {
            SqlitePoolOptions::new()
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
        } else {
            SqlitePoolOptions::new().max_connections(8)
        };
        let pool = pool_options
            .connect_with(options.create_if_missing(in_memory))
            .await
            .map_err(open_err)?;
        migrate(&pool, clock.now_ms()).await?;
        let store_id = read_store_id(&pool)
            .await?
            .ok_or_else(|| corrupt("the store has no store id"))?;
        let file = if in_memory {
            None
        } else {
            let unreadable = |source: std::io::Error| StoreError::Unavailable {
                url: url.to_owned(),
                reason: format!("cannot read {}: {source}", path.display()),
            };
            Some((
                OpenedFile::stat(&path).map_err(unreadable)?,
                HeaderReader::open(&path).map_err(unreadable)?,
            ))
        };
        Ok(SqliteStore {
            pool,
            clock,
            url: url.to_owned(),
            file,
            store_id,
            lost: std::sync::OnceLock::new(),
            changed: Arc::new(tokio::sync::Notify::new()),
        })
    }

    /// The pool, unless the file it reads was found removed or replaced.
    fn live_pool(&self) -> Result<&SqlitePool, StoreError> {
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

    /// Marks the store lost for good (see [`SqliteStore::lost`]).
    fn lose(&self, reason: String) -> StoreError {
        let reason = self
            .lost
            .get_or_init(|| format!("{reason}; restart fedgate once the store is back"))
            .clone();
        self.unavailable(reason)
    }

    /// The file checks of [`Store::check`]: same file, database header.
    fn check_file(&self, file: &OpenedFile, reader: &HeaderReader) -> Result<(), StoreError> {
        let shown = file.path.display();
        match OpenedFile::stat(&file.path) {
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                return Err(self.lose(format!("the database file {shown} was removed")))
            }
            Err(err) => return Err(self.unavailable(format!("cannot read {shown}: {err}"))),
            Ok(now) if now != *file => {
                return Err(self.lose(format!("the database file {shown} was replaced by another file")))
            }
            Ok(_) => {}
        }
        // The opened file, which the check above found still at the path.
        let header = reader
            .read()
            .map_err(|err| self.unavailable(format!("cannot read {shown}: {err}")))?;
        if &header != SQLITE_MAGIC {
            // Connections that read the damaged page stay broken after it
            // is repaired, so this is not waited out either.
            return Err(self.lose(format!(
                "{shown} is not a SQLite database any more (its header is damaged): restore it from a backup"
            )));
        }
        Ok(())
    }

    /// The schema version the database is at.
    pub async fn schema_version(&self) -> Result<i64, StoreError> {
        current_version(&self.pool).await
    }

    async fn write_tx(&self) -> Result<Transaction<'static, Sqlite>, StoreError> {
        self.live_pool()?
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db("begin a write transaction"))
    }
}

fn create_parent_dir(url: &str, file: &Path) -> Result<(), StoreError> {
    match file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
                url: url.to_owned(),
                dir: dir.display().to_string(),
                source,
            })
        }
        _ => Ok(()),
    }
}

async fn read_store_id(pool: &SqlitePool) -> Result<Option<String>, StoreError> {
    sqlx::query_scalar("SELECT value FROM store_meta WHERE key = 'store_id'")
        .fetch_optional(pool)
        .await
        .map_err(db("read the store id"))
}

async fn current_version(pool: &SqlitePool) -> Result<i64, StoreError> {
    sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) FROM schema_version")
        .fetch_one(pool)
        .await
        .map_err(db("read the schema version"))
}

async fn migrate(pool: &SqlitePool, now: i64) -> Result<(), StoreError> {
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS schema_version (
             version    INTEGER PRIMARY KEY,
             name       TEXT    NOT NULL,
             applied_at INTEGER NOT NULL
         )",
    )
    .execute(pool)
    .await
    .map_err(db("create the schema_version table"))?;

    let known = MIGRATIONS.last().map_or(0, |m| m.version);
    let found = current_version(pool).await?;
    if found > known {
        return Err(StoreError::SchemaTooNew { found, known });
    }
    for migration in MIGRATIONS.iter().filter(|m| m.version > found) {
        let failed = |source| StoreError::Migration {
            version: migration.version,
            name: migration.name,
            source,
        };
        let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.map_err(failed)?;
        // Another process may have applied it since we looked.
        let applied: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM schema_version WHERE version = ?")
            .bind(migration.version)
            .fetch_one(&mut *tx)
            .await
            .map_err(failed)?;
        if applied > 0 {
            continue;
        }
        let sql = super::rules::migration_sql(migration.sql, now);
        sqlx::raw_sql(&sql).execute(&mut *tx).await.map_err(failed)?;
        sqlx::query(
            "INSERT INTO schema_version (version, name, applied_at)
             VALUES (?, ?, ?)",
        )
        .bind(migration.version)
        .bind(migration.name)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(failed)?;
        tx.commit().await.map_err(failed)?;
        tracing::info!(
            version = migration.version,
            name = migration.name,
            "store schema migrated"
        );
    }
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

async fn user_by_upn(conn: &mut SqliteConnection, upn: &Upn) -> Result<Option<User>, StoreError> {
    let row = sqlx::query(&format!("SELECT {USER_COLUMNS} FROM users WHERE upn = ?"))
        .bind(upn.as_str())
        .fetch_optional(conn)
        .await
        .map_err(db("look up a user"))?;
    row.as_ref().map(user_from_row).transpose()
}

async fn user_by_id(conn: &mut SqliteConnection, id: UserId) -> Result<Option<User>, StoreError> {
    let row = sqlx::query(&format!("SELECT {USER_COLUMNS} FROM users WHERE id = ?"))
        .bind(id.0)
        .fetch_optional(conn)
        .await
        .map_err(db("look up a user"))?;
    row.as_ref().map(user_from_row).transpose()
}

/// The user named `upn`, which must exist and not be deleted.
async fn live_user(conn: &mut SqliteConnection, upn: &Upn) -> Result<User, StoreError> {
    match user_by_upn(conn, upn).await? {
        None => Err(StoreError::UnknownUser { upn: upn.clone() }),
        Some(user) if user.deleted => Err(StoreError::UserDeleted { upn: upn.clone() }),
        Some(user) => Ok(user),
    }
}

/// The user with `id`, which must exist and not be deleted.
async fn live_user_by_id(conn: &mut SqliteConnection, id: UserId) -> Result<User, StoreError> {
    match user_by_id(conn, id).await? {
        None => Err(StoreError::UnknownUserId { id }),
        Some(user) if user.deleted => Err(StoreError::UserDeleted { upn: user.upn }),
        Some(user) => Ok(user),
    }
}

/// Re-reads a user inside the transaction that just changed it.
async fn reread(conn: &mut SqliteConnection, id: UserId) -> Result<User, StoreError> {
    user_by_id(conn, id)
        .await?
        .ok_or_else(|| corrupt(format!("user {id} vanished inside its own transaction")))
}

async fn record_change(
    conn: &mut SqliteConnection,
    at: i64,
    kind: ChangeKind,
    user: Option<UserId>,
) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO changes (at, kind, user_id) VALUES (?, ?, ?)")
        .bind(at)
        .bind(kind.as_str())
        .bind(user.map(|id| id.0))
        .execute(conn)
        .await
        .map_err(db("record a change"))?;
    Ok(())
}

/// Records that `user` holds `state` (and is deleted or not) from `at` on:
/// the one writer of the MFA state history, called in the transaction of
/// every change of a user's MFA state or existence.
pub(super) async fn record_state(
    conn: &mut SqliteConnection,
    user: UserId,
    state: MfaState,
    deleted: bool,
    at: i64,
) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO mfa_state_history (user_id, at, mfa_state, deleted) VALUES (?, ?, ?, ?)")
        .bind(user.0)
        .bind(at)
        .bind(state.as_str())
        .bind(deleted)
        .execute(conn)
        .await
        .map_err(db("record a change of MFA state"))?;
    Ok(())
}

async fn commit(tx: Transaction<'static, Sqlite>) -> Result<(), StoreError> {
    tx.commit().await.map_err(db("commit"))
}

/// The common end of a change to one user: the change-feed row in the same
/// transaction, the user as committed, the commit.
/// Forgets a user's TOTP secret and registration: the next sign-in to
/// the portal registers a second factor anew.
async fn clear_second_factor(
    conn: &mut SqliteConnection,
    user: UserId,
    now: i64,
    action: &'static str,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE users SET totp_secret = NULL, totp_last_step = NULL, registered_at = NULL, updated_at = ?
         WHERE id = ?",
    )
    .bind(now)
    .bind(user.0)
    .execute(conn)
    .await
    .map_err(db(action))?;
    Ok(())
}

async fn finish_user_change(
    mut tx: Transaction<'static, Sqlite>,
    now: i64,
    kind: ChangeKind,
    id: UserId,
) -> Result<User, StoreError> {
    record_change(&mut tx, now, kind, Some(id)).await?;
    let user = reread(&mut tx, id).await?;
    commit(tx).await?;
    Ok(user)
}

impl Store for SqliteStore {
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
            if let Some((file, reader)) = &self.file {
                self.check_file(file, reader)?;
            }
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
        Box::pin(self.pool.close())
    }
}

#[cfg(test)]
impl SqliteStore {
    pub(super) fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

#[cfg(test)]
pub(super) fn migration_versions() -> Vec<(i64, &'static str)> {
    MIGRATIONS.iter().map(|m| (m.version, m.name)).collect()
}
