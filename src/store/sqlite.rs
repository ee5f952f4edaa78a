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
    AppliedChanges, AuditFilter, BulkApplied, Change, ChangeKind, DirectoryChange, LastUsed, LineError, NewAppPassword,
    NewTotp, OpenMode, PortalSession, StateLine, Store, StoreError, StoreFuture, StoredTotp, SyncMark, SyncPass,
    TotpLimit, UpsertOutcome, Upserted,
};
use crate::app_password::MAX_APP_PASSWORDS_PER_USER;
use crate::model::{
    audit_text, AppPassword, AppPasswordId, AppPasswordSecretRecord, AuditRecord, Clock, CredentialKind,
    DirectoryAttributes, FederatedUser, MfaState, Reason, Settings, Upn, User, UserId, UserSource,
    MAX_APP_PASSWORD_NAME_CHARS, MAX_AUDIT_IP_CHARS, MAX_AUDIT_UPN_CHARS, MAX_AUDIT_USER_AGENT_CHARS,
};

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
];

/// Directory changes applied per transaction: large enough that a sync of
/// 100,000 users is a hundred commits, small enough that the server's
/// readers never wait long for the write lock.
const SYNC_BATCH: usize = 1000;

/// Sync passes kept per kind.
const SYNC_PASSES_KEPT: i64 = 100;

/// The most changes one [`Store::changes_since`] call returns.
const CHANGES_PAGE: i64 = 10_000;

/// Several processes share the file; a writer waits this long for another
/// to finish before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

const USER_COLUMNS: &str =
    "id, upn, source, enabled, directory_enabled, deleted, mfa_state, registered_at, created_at, password_hash, \
                            dn, login, anchor, display_name, mail, groups, password_changed";
const APP_PASSWORD_COLUMNS: &str = "id, user_id, name, created_at, last_used_at, last_ip, last_user_agent";
const SECRET_COLUMNS: &str = "id, user_id, name, tag, hash";
const AUDIT_COLUMNS: &str = "at, upn_given, user_id, route, credential, app_password_name, \
                             client_ip, user_agent, success, reason, count";

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
        sqlx::raw_sql(migration.sql).execute(&mut *tx).await.map_err(failed)?;
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

fn user_from_row(row: &SqliteRow) -> Result<User, StoreError> {
    let read = || db("read a user");
    let upn: String = row.try_get("upn").map_err(read())?;
    let source: String = row.try_get("source").map_err(read())?;
    let mfa_state: String = row.try_get("mfa_state").map_err(read())?;
    let operator_enabled: bool = row.try_get("enabled").map_err(read())?;
    let directory_enabled: bool = row.try_get("directory_enabled").map_err(read())?;
    let invalid = |e: crate::model::ModelError| corrupt(format!("user {upn:?}: {e}"));
    Ok(User {
        id: UserId(row.try_get("id").map_err(read())?),
        upn: Upn::parse(&upn).map_err(invalid)?,
        source: source.parse::<UserSource>().map_err(invalid)?,
        enabled: operator_enabled && directory_enabled,
        operator_enabled,
        directory_enabled,
        deleted: row.try_get("deleted").map_err(read())?,
        mfa_state: mfa_state.parse::<MfaState>().map_err(invalid)?,
        registered_at: row.try_get("registered_at").map_err(read())?,
        created_at: row.try_get("created_at").map_err(read())?,
        password_hash: row.try_get("password_hash").map_err(read())?,
        directory: match row.try_get::<Option<String>, _>("dn").map_err(read())? {
            None => None,
            Some(dn) => Some(DirectoryAttributes {
                dn,
                login: row.try_get("login").map_err(read())?,
                anchor: row.try_get("anchor").map_err(read())?,
                display_name: row.try_get("display_name").map_err(read())?,
                mail: row.try_get("mail").map_err(read())?,
                groups: row
                    .try_get::<Option<String>, _>("groups")
                    .map_err(read())?
                    .map(|g| g.lines().map(str::to_owned).collect())
                    .unwrap_or_default(),
                password_changed: row.try_get("password_changed").map_err(read())?,
            }),
        },
    })
}

fn app_password_from_row(row: &SqliteRow) -> Result<AppPassword, StoreError> {
    let read = || db("read an app password");
    Ok(AppPassword {
        id: AppPasswordId(row.try_get("id").map_err(read())?),
        user_id: UserId(row.try_get("user_id").map_err(read())?),
        name: row.try_get("name").map_err(read())?,
        created_at: row.try_get("created_at").map_err(read())?,
        last_used_at: row.try_get("last_used_at").map_err(read())?,
        last_ip: row.try_get("last_ip").map_err(read())?,
        last_user_agent: row.try_get("last_user_agent").map_err(read())?,
    })
}

fn secret_from_row(row: &SqliteRow) -> Result<AppPasswordSecretRecord, StoreError> {
    let read = || db("read an app password's tag and hash");
    let id = AppPasswordId(row.try_get("id").map_err(read())?);
    let tag: Vec<u8> = row.try_get("tag").map_err(read())?;
    Ok(AppPasswordSecretRecord {
        id,
        user_id: UserId(row.try_get("user_id").map_err(read())?),
        name: row.try_get("name").map_err(read())?,
        tag: tag
            .try_into()
            .map_err(|_| corrupt(format!("app password {id} has a tag that is not 32 bytes")))?,
        hash: row.try_get("hash").map_err(read())?,
    })
}

fn change_from_row(row: &SqliteRow) -> Result<Change, StoreError> {
    let read = || db("read the change feed");
    let kind: String = row.try_get("kind").map_err(read())?;
    let user_id: Option<i64> = row.try_get("user_id").map_err(read())?;
    Ok(Change {
        seq: row.try_get("seq").map_err(read())?,
        at: row.try_get("at").map_err(read())?,
        kind: ChangeKind::parse(&kind),
        user_id: user_id.map(UserId),
    })
}

fn audit_from_row(row: &SqliteRow) -> Result<AuditRecord, StoreError> {
    let read = || db("read the audit log");
    let credential: String = row.try_get("credential").map_err(read())?;
    let reason: String = row.try_get("reason").map_err(read())?;
    let user_id: Option<i64> = row.try_get("user_id").map_err(read())?;
    Ok(AuditRecord {
        at: row.try_get("at").map_err(read())?,
        upn_given: row.try_get("upn_given").map_err(read())?,
        user_id: user_id.map(UserId),
        route: row.try_get("route").map_err(read())?,
        credential: credential
            .parse::<CredentialKind>()
            .map_err(|e| corrupt(format!("audit record: {e}")))?,
        app_password_name: row.try_get("app_password_name").map_err(read())?,
        client_ip: row.try_get("client_ip").map_err(read())?,
        user_agent: row.try_get("user_agent").map_err(read())?,
        success: row.try_get("success").map_err(read())?,
        reason: reason
            .parse::<Reason>()
            .map_err(|e| corrupt(format!("audit record: {e}")))?,
        count: u32::try_from(row.try_get::<i64, _>("count").map_err(read())?).unwrap_or(u32::MAX),
    })
}

async fn user_by_upn(conn: &mut SqliteConnection, upn: &Upn) -> Result<Option<User>, StoreError> {
    let row = sqlx::query(&format!("SELECT {USER_COLUMNS} FROM users WHERE upn = ?"))
        .bind(upn.as_str())
        .fetch_optional(conn)
        .await
        .map_err(db("look up a user"))?;
    row.as_ref().map(user_from_row).transpose()
}

async fn user_by_anchor(conn: &mut SqliteConnection, anchor: &str) -> Result<Option<User>, StoreError> {
    let row = sqlx::query(&format!("SELECT {USER_COLUMNS} FROM users WHERE anchor = ?"))
        .bind(anchor)
        .fetch_optional(conn)
        .await
        .map_err(db("look up a user by directory anchor"))?;
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

fn sync_pass_from_row(row: &SqliteRow) -> Result<SyncPass, StoreError> {
    let read = || db("read a sync pass");
    Ok(SyncPass {
        kind: row.try_get("kind").map_err(read())?,
        outcome: row.try_get("outcome").map_err(read())?,
        started_at: row.try_get("started_at").map_err(read())?,
        duration_ms: row.try_get("duration_ms").map_err(read())?,
        seen: row.try_get("seen").map_err(read())?,
        created: row.try_get("created").map_err(read())?,
        updated: row.try_get("updated").map_err(read())?,
        disabled: row.try_get("disabled").map_err(read())?,
        enabled: row.try_get("enabled").map_err(read())?,
        deleted: row.try_get("deleted").map_err(read())?,
        errors: row.try_get("errors").map_err(read())?,
        server: row.try_get("server").map_err(read())?,
        message: row.try_get("message").map_err(read())?,
    })
}

type SqliteQuery<'q> = sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments<'q>>;

/// Binds a user's directory attributes, in the order both the insert and
/// the update of [`upsert_in`] list them first: dn, login, anchor,
/// display_name, mail, groups, password_changed.
fn bind_directory<'q>(query: SqliteQuery<'q>, attrs: &'q DirectoryAttributes) -> SqliteQuery<'q> {
    let groups = (!attrs.groups.is_empty()).then(|| attrs.groups.join("\n"));
    query
        .bind(&attrs.dn)
        .bind(&attrs.login)
        .bind(&attrs.anchor)
        .bind(&attrs.display_name)
        .bind(&attrs.mail)
        .bind(groups)
        .bind(&attrs.password_changed)
}

/// Creates or updates one directory user inside `tx`; returns what happened
/// and the change-feed entry to write (none when nothing changed).
async fn upsert_in(
    tx: &mut SqliteConnection,
    new: &FederatedUser,
    now: i64,
) -> Result<(UserId, UpsertOutcome, Option<ChangeKind>), StoreError> {
    let attrs = &new.attributes;
    // The anchor survives renames and moves: match on it first, so a
    // renamed user keeps their id, MFA state and app passwords.
    let by_anchor = match &attrs.anchor {
        Some(anchor) => user_by_anchor(tx, anchor).await?,
        None => None,
    };
    let by_upn = user_by_upn(tx, &new.upn).await?;
    if let (Some(a), Some(u)) = (&by_anchor, &by_upn) {
        if a.id != u.id {
            return Err(StoreError::UpnTaken {
                upn: new.upn.clone(),
                holder: u.id,
            });
        }
    }
    let (id, outcome, kind) = match by_anchor.or(by_upn) {
        None => {
            let insert = sqlx::query(
                "INSERT INTO users (dn, login, anchor, display_name, mail, groups, password_changed,
                                    upn, source, directory_enabled, created_at, updated_at, directory_seen_at)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'federated', ?, ?, ?, ?)",
            );
            let done = bind_directory(insert, attrs)
                .bind(new.upn.as_str())
                .bind(new.enabled)
                .bind(now)
                .bind(now)
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(db("create a user"))?;
            let id = UserId(done.last_insert_rowid());
            (id, UpsertOutcome::Created, Some(ChangeKind::UserCreated))
        }
        Some(user) if user.source == UserSource::Cloud && !user.deleted => {
            return Err(StoreError::SourceConflict { upn: new.upn.clone() });
        }
        Some(user) => {
            let kind = if user.deleted {
                // The MFA state is kept: a returning user who had to
                // use app passwords still has to.
                Some(ChangeKind::UserUpdated)
            } else if user.directory_enabled != new.enabled {
                Some(if new.enabled {
                    ChangeKind::UserEnabled
                } else {
                    ChangeKind::UserDisabled
                })
            } else if user.upn != new.upn || user.directory.as_ref() != Some(attrs) {
                Some(ChangeKind::UserUpdated)
            } else {
                None
            };
            if kind.is_none() {
                // Nothing to write: a sync pass revisits every user.
                return Ok((user.id, UpsertOutcome::Unchanged, None));
            }
            let update = sqlx::query(
                "UPDATE users SET dn = ?, login = ?, anchor = COALESCE(?, anchor), display_name = ?,
                     mail = ?, groups = ?, password_changed = ?,
                     upn = ?, source = 'federated', directory_enabled = ?, deleted = 0,
                     registered_at = CASE WHEN deleted = 1 THEN NULL ELSE registered_at END,
                     totp_secret = CASE WHEN deleted = 1 THEN NULL ELSE totp_secret END,
                     totp_last_step = CASE WHEN deleted = 1 THEN NULL ELSE totp_last_step END,
                     password_hash = NULL, directory_seen_at = ?, updated_at = ?
                 WHERE id = ?",
            );
            bind_directory(update, attrs)
                .bind(new.upn.as_str())
                .bind(new.enabled)
                .bind(now)
                .bind(now)
                .bind(user.id.0)
                .execute(&mut *tx)
                .await
                .map_err(db("update a user from the directory"))?;
            (user.id, UpsertOutcome::Updated, kind)
        }
    };
    Ok((id, outcome, kind))
}

impl Store for SqliteStore {
    fn create_cloud_user<'a>(
        &'a self,
        upn: &'a Upn,
        state: MfaState,
        password_hash: Option<&'a str>,
    ) -> StoreFuture<'a, User> {
        Box::pin(async move {
            let now = self.clock.now_ms();
            let mut tx = self.write_tx().await?;
            let id = match user_by_upn(&mut tx, upn).await? {
                Some(user) if !user.deleted => return Err(StoreError::UserExists { upn: upn.clone() }),
                Some(user) => {
                    sqlx::query(
                        "UPDATE users SET source = 'cloud', enabled = 1, directory_enabled = 1, deleted = 0,
                             mfa_state = ?, registered_at = NULL, totp_secret = NULL,
                             totp_last_step = NULL, created_at = ?,
                             updated_at = ?, password_hash = ?
                         WHERE id = ?",
                    )
                    .bind(state.as_str())
                    .bind(now)
                    .bind(now)
                    .bind(password_hash)
                    .bind(user.id.0)
                    .execute(&mut *tx)
                    .await
                    .map_err(db("bring back a deleted user"))?;
                    // Deleting a user deleted these already; a row written by
                    // an older version must not bring devices back either.
                    sqlx::query("DELETE FROM app_passwords WHERE user_id = ?")
                        .bind(user.id.0)
                        .execute(&mut *tx)
                        .await
                        .map_err(db("delete a returning user's old app passwords"))?;
                    user.id
                }
                None => {
                    let done = sqlx::query(
                        "INSERT INTO users (upn, source, mfa_state, created_at, updated_at,
                             password_hash)
                         VALUES (?, 'cloud', ?, ?, ?, ?)",
                    )
                    .bind(upn.as_str())
                    .bind(state.as_str())
                    .bind(now)
                    .bind(now)
                    .bind(password_hash)
                    .execute(&mut *tx)
                    .await
                    .map_err(db("create a user"))?;
                    UserId(done.last_insert_rowid())
                }
            };
            record_change(&mut tx, now, ChangeKind::UserCreated, Some(id)).await?;
            let user = reread(&mut tx, id).await?;
            commit(tx).await?;
            Ok(user)
        })
    }

    fn upsert_federated_user<'a>(&'a self, new: &'a FederatedUser) -> StoreFuture<'a, Upserted> {
        Box::pin(async move {
            let now = self.clock.now_ms();
            let mut tx = self.write_tx().await?;
            let (id, outcome, kind) = upsert_in(&mut tx, new, now).await?;
            if let Some(kind) = kind {
                record_change(&mut tx, now, kind, Some(id)).await?;
            }
            let user = reread(&mut tx, id).await?;
            commit(tx).await?;
            Ok(Upserted { user, outcome })
        })
    }

    fn get_user_by_upn<'a>(&'a self, upn: &'a Upn) -> StoreFuture<'a, Option<User>> {
        Box::pin(async move {
            let mut conn = self.live_pool()?.acquire().await.map_err(db("connect"))?;
            user_by_upn(&mut conn, upn).await
        })
    }

    fn get_user(&self, id: UserId) -> StoreFuture<'_, Option<User>> {
        Box::pin(async move {
            let mut conn = self.live_pool()?.acquire().await.map_err(db("connect"))?;
            user_by_id(&mut conn, id).await
        })
    }

    fn list_users(&self, state: Option<MfaState>) -> StoreFuture<'_, Vec<User>> {
        Box::pin(async move {
            let mut query = QueryBuilder::<Sqlite>::new(format!("SELECT {USER_COLUMNS} FROM users WHERE deleted = 0"));
            if let Some(state) = state {
                query.push(" AND mfa_state = ").push_bind(state.as_str());
            }
            query.push(" ORDER BY upn");
            let rows = query
                .build()
                .fetch_all(self.live_pool()?)
                .await
                .map_err(db("list users"))?;
            rows.iter().map(user_from_row).collect()
        })
    }

    fn load_all_users(&self) -> StoreFuture<'_, Vec<User>> {
        Box::pin(async move {
            // Row by row: 100,000 rows held at once as well as the users
            // made from them would double what a sync pass needs.
            let query = format!("SELECT {USER_COLUMNS} FROM users ORDER BY id");
            let mut rows = sqlx::query(&query).fetch(self.live_pool()?);
            let mut users = Vec::new();
            while let Some(row) = rows.try_next().await.map_err(db("load all users"))? {
                users.push(user_from_row(&row)?);
            }
            Ok(users)
        })
    }

    fn users_matching<'a>(&'a self, anchors: &'a [&'a str], upns: &'a [&'a str]) -> StoreFuture<'a, Vec<User>> {
        Box::pin(async move {
            // SQLite allows 32766 parameters a statement; stay well under.
            const CHUNK: usize = 500;
            let mut users: Vec<User> = Vec::new();
            let mut ids = std::collections::HashSet::new();
            let mut conn = self.live_pool()?.acquire().await.map_err(db("connect"))?;
            for (column, values) in [("anchor", anchors), ("upn", upns)] {
                for chunk in values.chunks(CHUNK) {
                    let mut query =
                        QueryBuilder::<Sqlite>::new(format!("SELECT {USER_COLUMNS} FROM users WHERE {column} IN ("));
                    let mut list = query.separated(", ");
                    for value in chunk {
                        list.push_bind(*value);
                    }
                    query.push(")");
                    let rows = query
                        .build()
                        .fetch_all(&mut *conn)
                        .await
                        .map_err(db("look up users for a sync pass"))?;
                    for row in &rows {
                        let user = user_from_row(row)?;
                        if ids.insert(user.id) {
                            users.push(user);
                        }
                    }
                }
            }
            Ok(users)
        })
    }

    fn count_synced_users(&self) -> StoreFuture<'_, usize> {
        Box::pin(async move {
            let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users WHERE source = 'federated' AND deleted = 0")
                .fetch_one(self.live_pool()?)
                .await
                .map_err(db("count synced users"))?;
            Ok(usize::try_from(n).unwrap_or(0))
        })
    }

    fn set_mfa_state<'a>(&'a self, upn: &'a Upn, state: MfaState) -> StoreFuture<'a, User> {
        Box::pin(async move {
            let now = self.clock.now_ms();
            let mut tx = self.write_tx().await?;
            let user = live_user(&mut tx, upn).await?;
            if user.mfa_state == state {
                return Ok(user);
            }
            update_mfa_state(&mut tx, user.id, state, now).await?;
            let user = reread(&mut tx, user.id).await?;
            commit(tx).await?;
            Ok(user)
        })
    }

    fn set_mfa_states<'a>(&'a self, lines: &'a [StateLine]) -> StoreFuture<'a, BulkApplied> {
        Box::pin(async move {
            let now = self.clock.now_ms();
            // The write lock is held from validation to commit, so no user
            // can be deleted between being found and being changed.
            let mut tx = self.write_tx().await?;
            let mut errors = Vec::new();
            let mut accepted: Vec<(User, MfaState)> = Vec::with_capacity(lines.len());
            let mut seen: std::collections::HashMap<Upn, usize> = Default::default();
            for line in lines {
                let mut reasons = Vec::new();
                let state = line
                    .state
                    .parse::<MfaState>()
                    .map_err(|e| reasons.push(e.to_string()))
                    .ok();
                let user = match Upn::parse(&line.upn) {
                    Err(e) => {
                        reasons.push(e.to_string());
                        None
                    }
                    Ok(upn) => match seen.insert(upn.clone(), line.line) {
                        Some(first) => {
                            reasons.push(format!("user {upn} is already listed on line {first}"));
                            None
                        }
                        None => match user_by_upn(&mut tx, &upn).await? {
                            None => {
                                reasons.push(format!("no user {upn}"));
                                None
                            }
                            Some(user) if user.deleted => {
                                reasons.push(format!("user {upn} is deleted"));
                                None
                            }
                            Some(user) => Some(user),
                        },
                    },
                };
                match (user, state) {
                    (Some(user), Some(state)) if reasons.is_empty() => {
                        accepted.push((user, state));
                    }
                    _ => errors.push(LineError {
                        line: line.line,
                        upn: audit_text(&line.upn, MAX_AUDIT_UPN_CHARS),
                        reason: reasons.join("; "),
                    }),
                }
            }
            if !errors.is_empty() {
                // Dropping the transaction rolls it back; nothing was written.
                return Err(StoreError::BulkRejected { errors });
            }
            let mut applied = BulkApplied {
                changed: 0,
                unchanged: 0,
            };
            for (user, state) in accepted {
                if user.mfa_state == state {
                    applied.unchanged += 1;
                } else {
                    update_mfa_state(&mut tx, user.id, state, now).await?;
                    applied.changed += 1;
                }
            }
            commit(tx).await?;
            Ok(applied)
        })
    }

    fn set_enabled<'a>(&'a self, upn: &'a Upn, enabled: bool) -> StoreFuture<'a, User> {
        Box::pin(async move {
            let now = self.clock.now_ms();
            let mut tx = self.write_tx().await?;
            let user = live_user(&mut tx, upn).await?;
            if user.operator_enabled == enabled {
                return Ok(user);
            }
            sqlx::query("UPDATE users SET enabled = ?, updated_at = ? WHERE id = ?")
                .bind(enabled)
                .bind(now)
                .bind(user.id.0)
                .execute(&mut *tx)
                .await
                .map_err(db("enable or disable a user"))?;
            let kind = if enabled {
                ChangeKind::UserEnabled
            } else {
                ChangeKind::UserDisabled
            };
            finish_user_change(tx, now, kind, user.id).await
        })
    }

    fn set_password_hash<'a>(&'a self, upn: &'a Upn, password_hash: Option<&'a str>) -> StoreFuture<'a, User> {
        Box::pin(async move {
            let now = self.clock.now_ms();
            let mut tx = self.write_tx().await?;
            let user = live_user(&mut tx, upn).await?;
            if user.source != UserSource::Cloud {
                return Err(StoreError::NotCloudUser { upn: upn.clone() });
            }
            sqlx::query("UPDATE users SET password_hash = ?, updated_at = ? WHERE id = ?")
                .bind(password_hash)
                .bind(now)
                .bind(user.id.0)
                .execute(&mut *tx)
                .await
                .map_err(db("set a user's password"))?;
            finish_user_change(tx, now, ChangeKind::PasswordChanged, user.id).await
        })
    }

    fn mark_deleted<'a>(&'a self, upn: &'a Upn) -> StoreFuture<'a, User> {
        Box::pin(async move {
            let now = self.clock.now_ms();
            let mut tx = self.write_tx().await?;
            let user = match user_by_upn(&mut tx, upn).await? {
                None => return Err(StoreError::UnknownUser { upn: upn.clone() }),
                // Sync may report a deletion more than once.
                Some(user) if user.deleted => return Ok(user),
                Some(user) => user,
            };
            sqlx::query(
                "UPDATE users SET deleted = 1, password_hash = NULL, registered_at = NULL,
                     totp_secret = NULL, totp_last_step = NULL, updated_at = ?
                 WHERE id = ?",
            )
            .bind(now)
            .bind(user.id.0)
            .execute(&mut *tx)
            .await
            .map_err(db("delete a user"))?;
            sqlx::query("DELETE FROM app_passwords WHERE user_id = ?")
                .bind(user.id.0)
                .execute(&mut *tx)
                .await
                .map_err(db("delete a deleted user's app passwords"))?;
            finish_user_change(tx, now, ChangeKind::UserDeleted, user.id).await
        })
    }

    fn require_registration<'a>(&'a self, upn: &'a Upn) -> StoreFuture<'a, User> {
        Box::pin(async move {
            let now = self.clock.now_ms();
            let mut tx = self.write_tx().await?;
            let user = live_user(&mut tx, upn).await?;
            // The old second factor goes too: registering again must mean a
            // new secret, not the one that may have leaked.
            clear_second_factor(&mut tx, user.id, now, "require registration").await?;
            finish_user_change(tx, now, ChangeKind::RegistrationRequired, user.id).await
        })
    }

    fn set_registered_at<'a>(&'a self, upn: &'a Upn, at: i64) -> StoreFuture<'a, User> {
        Box::pin(async move {
            let now = self.clock.now_ms();
            let mut tx = self.write_tx().await?;
            let user = live_user(&mut tx, upn).await?;
            sqlx::query("UPDATE users SET registered_at = ?, updated_at = ? WHERE id = ?")
                .bind(at)
                .bind(now)
                .bind(user.id.0)
                .execute(&mut *tx)
                .await
                .map_err(db("record a registration"))?;
            finish_user_change(tx, now, ChangeKind::Registered, user.id).await
        })
    }

    fn set_totp<'a>(&'a self, user: UserId, totp: Option<&'a NewTotp>) -> StoreFuture<'a, User> {
        Box::pin(async move {
            let now = self.clock.now_ms();
            let confirmed_step = totp.map(|t| step_value(t.confirmed_step)).transpose()?;
            let mut tx = self.write_tx().await?;
            let user = live_user_by_id(&mut tx, user).await?;
            let kind = match totp {
                Some(totp) => {
                    sqlx::query(
                        "UPDATE users SET totp_secret = ?, totp_last_step = ?, registered_at = ?,
                             updated_at = ?
                         WHERE id = ?",
                    )
                    .bind(&totp.sealed_secret)
                    .bind(confirmed_step)
                    .bind(now)
                    .bind(now)
                    .bind(user.id.0)
                    .execute(&mut *tx)
                    .await
                    .map_err(db("register a TOTP secret"))?;
                    ChangeKind::TotpRegistered
                }
                None => {
                    clear_second_factor(&mut tx, user.id, now, "remove a TOTP secret").await?;
                    ChangeKind::TotpRemoved
                }
            };
            finish_user_change(tx, now, kind, user.id).await
        })
    }

    fn totp(&self, user: UserId) -> StoreFuture<'_, Option<StoredTotp>> {
        Box::pin(async move {
            let row: Option<(Option<Vec<u8>>, Option<i64>, bool)> =
                sqlx::query_as("SELECT totp_secret, totp_last_step, deleted FROM users WHERE id = ?")
                    .bind(user.0)
                    .fetch_optional(self.live_pool()?)
                    .await
                    .map_err(db("read a user's TOTP secret"))?;
            match row {
                None => Err(StoreError::UnknownUserId { id: user }),
                Some((Some(sealed_secret), last_step, false)) => Ok(Some(StoredTotp {
                    sealed_secret,
                    last_step: last_step
                        .map(|step| {
                            u64::try_from(step)
                                .map_err(|_| corrupt(format!("user {user} has a negative TOTP step {step}")))
                        })
                        .transpose()?,
                })),
                Some(_) => Ok(None),
            }
        })
    }

    fn totp_blocked_until(&self, user: UserId) -> StoreFuture<'_, Option<i64>> {
        Box::pin(async move {
            sqlx::query_scalar("SELECT totp_blocked_until FROM users WHERE id = ?")
                .bind(user.0)
                .fetch_optional(self.live_pool()?)
                .await
                .map_err(db("read second-factor failures"))
                .map(Option::flatten)
        })
    }

    fn note_totp_result<'a>(
        &'a self,
        user: UserId,
        accepted: bool,
        limit: &'a TotpLimit,
    ) -> StoreFuture<'a, Option<i64>> {
        Box::pin(async move {
            let now = self.clock.now_ms();
            let mut tx = self.write_tx().await?;
            if accepted {
                sqlx::query("UPDATE users SET totp_failures = 0, totp_blocked_until = NULL WHERE id = ?")
                    .bind(user.0)
                    .execute(&mut *tx)
                    .await
                    .map_err(db("reset second-factor failures"))?;
                commit(tx).await?;
                return Ok(None);
            }
            let failures: i64 = sqlx::query_scalar(
                "UPDATE users SET totp_failures = totp_failures + 1 WHERE id = ? RETURNING totp_failures",
            )
            .bind(user.0)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db("count a second-factor failure"))?
            .unwrap_or(0);
            let blocked = if failures >= i64::from(limit.max_failures) {
                let until = now + limit.block_ms;
                sqlx::query("UPDATE users SET totp_failures = 0, totp_blocked_until = ? WHERE id = ?")
                    .bind(until)
                    .bind(user.0)
                    .execute(&mut *tx)
                    .await
                    .map_err(db("block second-factor codes"))?;
                Some(until)
            } else {
                None
            };
            commit(tx).await?;
            Ok(blocked)
        })
    }

    fn use_totp_step(&self, user: UserId, step: u64) -> StoreFuture<'_, bool> {
        Box::pin(async move {
            let step = step_value(step)?;
            let mut tx = self.write_tx().await?;
            // One statement is the compare-and-set: whichever writer gets
            // the lock first moves the step, and the other's condition is
            // then false.
            let done = sqlx::query(
                "UPDATE users SET totp_last_step = ?
                 WHERE id = ? AND deleted = 0 AND totp_secret IS NOT NULL
                     AND (totp_last_step IS NULL OR totp_last_step < ?)",
            )
            .bind(step)
            .bind(user.0)
            .bind(step)
            .execute(&mut *tx)
            .await
            .map_err(db("record a used TOTP step"))?;
            commit(tx).await?;
            Ok(done.rows_affected() == 1)
        })
    }

    fn create_app_password<'a>(&'a self, new: &'a NewAppPassword) -> StoreFuture<'a, AppPassword> {
        Box::pin(async move {
            let now = self.clock.now_ms();
            let mut tx = self.write_tx().await?;
            let user = live_user_by_id(&mut tx, new.user_id).await?;
            let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM app_passwords WHERE user_id = ?")
                .bind(user.id.0)
                .fetch_one(&mut *tx)
                .await
                .map_err(db("count app passwords"))?;
            if count >= MAX_APP_PASSWORDS_PER_USER as i64 {
                return Err(StoreError::TooManyAppPasswords { upn: user.upn });
            }
            let taken: Option<String> =
                sqlx::query_scalar("SELECT name FROM app_passwords WHERE user_id = ? AND name = ? COLLATE NOCASE")
                    .bind(user.id.0)
                    .bind(new.name.as_str())
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(db("look up an app password"))?;
            if let Some(name) = taken {
                return Err(StoreError::DuplicateAppPasswordName { upn: user.upn, name });
            }
            let inserted = sqlx::query(
                "INSERT INTO app_passwords (user_id, name, tag, hash, created_at)
                 VALUES (?, ?, ?, ?, ?)",
            )
            .bind(user.id.0)
            .bind(new.name.as_str())
            .bind(&new.tag[..])
            .bind(&new.hash)
            .bind(now)
            .execute(&mut *tx)
            .await;
            let id = match inserted {
                Ok(done) => AppPasswordId(done.last_insert_rowid()),
                // The name was checked above under the write lock, so the
                // only unique key left to collide is the tag.
                Err(sqlx::Error::Database(e)) if e.is_unique_violation() => return Err(StoreError::TagCollision),
                Err(e) => return Err(db("create an app password")(e)),
            };
            record_change(&mut tx, now, ChangeKind::AppPasswordCreated, Some(user.id)).await?;
            let row = sqlx::query(&format!(
                "SELECT {APP_PASSWORD_COLUMNS} FROM app_passwords WHERE id = ?"
            ))
            .bind(id.0)
            .fetch_one(&mut *tx)
            .await
            .map_err(db("read back an app password"))?;
            let created = app_password_from_row(&row)?;
            commit(tx).await?;
            Ok(created)
        })
    }

    fn list_app_passwords(&self, user: UserId) -> StoreFuture<'_, Vec<AppPassword>> {
        Box::pin(async move {
            let rows = sqlx::query(&format!(
                "SELECT {APP_PASSWORD_COLUMNS} FROM app_passwords WHERE user_id = ?
                 ORDER BY created_at, id"
            ))
            .bind(user.0)
            .fetch_all(self.live_pool()?)
            .await
            .map_err(db("list app passwords"))?;
            rows.iter().map(app_password_from_row).collect()
        })
    }

    fn delete_app_password<'a>(&'a self, user: UserId, name: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let now = self.clock.now_ms();
            let mut tx = self.write_tx().await?;
            let owner = user_by_id(&mut tx, user)
                .await?
                .ok_or(StoreError::UnknownUserId { id: user })?;
            let done = sqlx::query("DELETE FROM app_passwords WHERE user_id = ? AND name = ? COLLATE NOCASE")
                .bind(user.0)
                .bind(name.trim())
                .execute(&mut *tx)
                .await
                .map_err(db("delete an app password"))?;
            if done.rows_affected() == 0 {
                return Err(StoreError::UnknownAppPassword {
                    upn: owner.upn,
                    name: audit_text(name.trim(), MAX_APP_PASSWORD_NAME_CHARS),
                });
            }
            record_change(&mut tx, now, ChangeKind::AppPasswordDeleted, Some(user)).await?;
            commit(tx).await
        })
    }

    fn revoke_app_passwords(&self, user: UserId) -> StoreFuture<'_, u64> {
        Box::pin(async move {
            let now = self.clock.now_ms();
            let mut tx = self.write_tx().await?;
            if user_by_id(&mut tx, user).await?.is_none() {
                return Err(StoreError::UnknownUserId { id: user });
            }
            let revoked = sqlx::query("DELETE FROM app_passwords WHERE user_id = ?")
                .bind(user.0)
                .execute(&mut *tx)
                .await
                .map_err(db("revoke app passwords"))?
                .rows_affected();
            if revoked > 0 {
                record_change(&mut tx, now, ChangeKind::AppPasswordsRevoked, Some(user)).await?;
            }
            commit(tx).await?;
            Ok(revoked)
        })
    }

    fn load_all_secrets(&self) -> StoreFuture<'_, Vec<AppPasswordSecretRecord>> {
        Box::pin(async move {
            let rows = sqlx::query(&format!("SELECT {SECRET_COLUMNS} FROM app_passwords ORDER BY id"))
                .fetch_all(self.live_pool()?)
                .await
                .map_err(db("load app-password tags"))?;
            rows.iter().map(secret_from_row).collect()
        })
    }

    fn load_user_secrets(&self, user: UserId) -> StoreFuture<'_, Vec<AppPasswordSecretRecord>> {
        Box::pin(async move {
            let rows = sqlx::query(&format!(
                "SELECT {SECRET_COLUMNS} FROM app_passwords WHERE user_id = ? ORDER BY id"
            ))
            .bind(user.0)
            .fetch_all(self.live_pool()?)
            .await
            .map_err(db("load a user's app-password tags"))?;
            rows.iter().map(secret_from_row).collect()
        })
    }

    fn record_last_used<'a>(&'a self, uses: &'a [LastUsed]) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            if uses.is_empty() {
                return Ok(());
            }
            let mut tx = self.write_tx().await?;
            for used in uses {
                sqlx::query(
                    "UPDATE app_passwords
                     SET last_used_at = ?, last_ip = ?, last_user_agent = ?
                     WHERE id = ? AND (last_used_at IS NULL OR last_used_at < ?)",
                )
                .bind(used.at)
                .bind(audit_text(&used.ip, MAX_AUDIT_IP_CHARS))
                .bind(audit_text(&used.user_agent, MAX_AUDIT_USER_AGENT_CHARS))
                .bind(used.id.0)
                .bind(used.at)
                .execute(&mut *tx)
                .await
                .map_err(db("record app-password use"))?;
            }
            commit(tx).await
        })
    }

    fn get_settings(&self) -> StoreFuture<'_, Settings> {
        Box::pin(async move {
            let allow: bool = sqlx::query_scalar("SELECT allow_app_passwords FROM settings WHERE id = 1")
                .fetch_one(self.live_pool()?)
                .await
                .map_err(db("read settings"))?;
            Ok(Settings {
                allow_app_passwords: allow,
            })
        })
    }

    fn set_allow_app_passwords(&self, allow: bool) -> StoreFuture<'_, Settings> {
        Box::pin(async move {
            let now = self.clock.now_ms();
            let mut tx = self.write_tx().await?;
            let changed = sqlx::query(
                "UPDATE settings SET allow_app_passwords = ? WHERE id = 1
                     AND allow_app_passwords <> ?",
            )
            .bind(allow)
            .bind(allow)
            .execute(&mut *tx)
            .await
            .map_err(db("change settings"))?
            .rows_affected();
            if changed > 0 {
                record_change(&mut tx, now, ChangeKind::SettingsChanged, None).await?;
            }
            commit(tx).await?;
            Ok(Settings {
                allow_app_passwords: allow,
            })
        })
    }

    fn changes_since(&self, seq: i64) -> StoreFuture<'_, Vec<Change>> {
        Box::pin(async move {
            let rows = sqlx::query("SELECT seq, at, kind, user_id FROM changes WHERE seq > ? ORDER BY seq LIMIT ?")
                .bind(seq)
                .bind(CHANGES_PAGE)
                .fetch_all(self.live_pool()?)
                .await
                .map_err(db("read the change feed"))?;
            rows.iter().map(change_from_row).collect()
        })
    }

    fn latest_change_seq(&self) -> StoreFuture<'_, i64> {
        Box::pin(async move {
            sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM changes")
                .fetch_one(self.live_pool()?)
                .await
                .map_err(db("read the change feed"))
        })
    }

    fn apply_directory_changes<'a>(&'a self, changes: &'a [DirectoryChange]) -> StoreFuture<'a, AppliedChanges> {
        Box::pin(async move {
            let mut applied = AppliedChanges::default();
            for batch in changes.chunks(SYNC_BATCH) {
                let now = self.clock.now_ms();
                let mut tx = self.write_tx().await?;
                for change in batch {
                    match change {
                        DirectoryChange::Upsert {
                            user,
                            revoke_app_passwords,
                        } => {
                            let (id, _, kind) = match upsert_in(&mut tx, user, now).await {
                                Ok(done) => done,
                                Err(err @ (StoreError::SourceConflict { .. } | StoreError::UpnTaken { .. })) => {
                                    tracing::warn!(error = %err, dn = %user.attributes.dn, "directory user not synced");
                                    applied.errors += 1;
                                    continue;
                                }
                                Err(err) => return Err(err),
                            };
                            if let Some(kind) = kind {
                                match kind {
                                    ChangeKind::UserCreated => applied.created += 1,
                                    ChangeKind::UserEnabled => applied.enabled += 1,
                                    ChangeKind::UserDisabled => applied.disabled += 1,
                                    _ => applied.updated += 1,
                                }
                                record_change(&mut tx, now, kind, Some(id)).await?;
                            }
                            if *revoke_app_passwords {
                                let done = sqlx::query("DELETE FROM app_passwords WHERE user_id = ?")
                                    .bind(id.0)
                                    .execute(&mut *tx)
                                    .await
                                    .map_err(db("revoke app passwords after a password change"))?;
                                if done.rows_affected() > 0 {
                                    applied.revoked += 1;
                                    record_change(&mut tx, now, ChangeKind::AppPasswordsRevoked, Some(id)).await?;
                                }
                            }
                        }
                        DirectoryChange::Delete { id } => {
                            let done = sqlx::query(
                                "UPDATE users SET deleted = 1, password_hash = NULL, registered_at = NULL,
                                     totp_secret = NULL, totp_last_step = NULL, updated_at = ?
                                 WHERE id = ? AND deleted = 0 AND source = 'federated'",
                            )
                            .bind(now)
                            .bind(id.0)
                            .execute(&mut *tx)
                            .await
                            .map_err(db("delete a user gone from the directory"))?;
                            if done.rows_affected() == 0 {
                                continue;
                            }
                            sqlx::query("DELETE FROM app_passwords WHERE user_id = ?")
                                .bind(id.0)
                                .execute(&mut *tx)
                                .await
                                .map_err(db("delete a deleted user's app passwords"))?;
                            record_change(&mut tx, now, ChangeKind::UserDeleted, Some(*id)).await?;
                            applied.deleted += 1;
                        }
                    }
                }
                commit(tx).await?;
            }
            Ok(applied)
        })
    }

    fn record_sync_pass<'a>(&'a self, pass: &'a SyncPass, mark: Option<&'a SyncMark>) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let mut tx = self.write_tx().await?;
            sqlx::query(
                "INSERT INTO sync_passes (kind, outcome, started_at, duration_ms, seen, created, updated,
                                          disabled, enabled, deleted, errors, server, message)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(&pass.kind)
            .bind(&pass.outcome)
            .bind(pass.started_at)
            .bind(pass.duration_ms)
            .bind(pass.seen)
            .bind(pass.created)
            .bind(pass.updated)
            .bind(pass.disabled)
            .bind(pass.enabled)
            .bind(pass.deleted)
            .bind(pass.errors)
            .bind(&pass.server)
            .bind(&pass.message)
            .execute(&mut *tx)
            .await
            .map_err(db("record a sync pass"))?;
            sqlx::query(
                "DELETE FROM sync_passes WHERE kind = ? AND id NOT IN
                     (SELECT id FROM sync_passes WHERE kind = ? ORDER BY id DESC LIMIT ?)",
            )
            .bind(&pass.kind)
            .bind(&pass.kind)
            .bind(SYNC_PASSES_KEPT)
            .execute(&mut *tx)
            .await
            .map_err(db("prune old sync passes"))?;
            if let Some(mark) = mark {
                sqlx::query("UPDATE sync_state SET mark = ?, mark_server = ? WHERE id = 1")
                    .bind(&mark.value)
                    .bind(&mark.server)
                    .execute(&mut *tx)
                    .await
                    .map_err(db("move the sync mark"))?;
            }
            commit(tx).await
        })
    }

    fn last_sync_passes(&self) -> StoreFuture<'_, (Option<SyncPass>, Option<SyncPass>)> {
        Box::pin(async move {
            let mut conn = self.live_pool()?.acquire().await.map_err(db("connect"))?;
            let last = |kind: &'static str| {
                sqlx::query(
                    "SELECT kind, outcome, started_at, duration_ms, seen, created, updated, disabled, enabled,
                            deleted, errors, server, message
                     FROM sync_passes WHERE kind = ? ORDER BY id DESC LIMIT 1",
                )
                .bind(kind)
            };
            let incremental = last("incremental")
                .fetch_optional(&mut *conn)
                .await
                .map_err(db("read sync passes"))?;
            let full = last("full")
                .fetch_optional(&mut *conn)
                .await
                .map_err(db("read sync passes"))?;
            Ok((
                incremental.as_ref().map(sync_pass_from_row).transpose()?,
                full.as_ref().map(sync_pass_from_row).transpose()?,
            ))
        })
    }

    fn sync_mark(&self) -> StoreFuture<'_, Option<SyncMark>> {
        Box::pin(async move {
            let row: Option<(Option<String>, Option<String>)> =
                sqlx::query_as("SELECT mark, mark_server FROM sync_state WHERE id = 1")
                    .fetch_optional(self.live_pool()?)
                    .await
                    .map_err(db("read the sync mark"))?;
            Ok(match row {
                Some((Some(value), Some(server))) => Some(SyncMark { value, server }),
                _ => None,
            })
        })
    }

    fn take_sync_lease<'a>(&'a self, holder: &'a str, until: i64, replacing: Option<&'a str>) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let now = self.clock.now_ms();
            let mut tx = self.write_tx().await?;
            let done = sqlx::query(
                "UPDATE sync_state SET lease_holder = ?, lease_until = ?
                 WHERE id = 1 AND (lease_holder IS NULL OR lease_holder = ? OR lease_until < ?
                                   OR lease_holder = ?)",
            )
            .bind(holder)
            .bind(until)
            .bind(holder)
            .bind(now)
            .bind(replacing)
            .execute(&mut *tx)
            .await
            .map_err(db("take the sync lease"))?;
            commit(tx).await?;
            Ok(done.rows_affected() == 1)
        })
    }

    fn sync_lease(&self) -> StoreFuture<'_, Option<(String, i64)>> {
        Box::pin(async move {
            let row: Option<(Option<String>, Option<i64>)> =
                sqlx::query_as("SELECT lease_holder, lease_until FROM sync_state WHERE id = 1")
                    .fetch_optional(self.live_pool()?)
                    .await
                    .map_err(db("read the sync lease"))?;
            Ok(match row {
                Some((Some(holder), Some(until))) => Some((holder, until)),
                _ => None,
            })
        })
    }

    fn last_completed_sync_at(&self) -> StoreFuture<'_, Option<i64>> {
        Box::pin(async move {
            sqlx::query_scalar("SELECT MAX(started_at + duration_ms) FROM sync_passes WHERE outcome = 'completed'")
                .fetch_one(self.live_pool()?)
                .await
                .map_err(db("read sync passes"))
        })
    }

    fn release_sync_lease<'a>(&'a self, holder: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let mut tx = self.write_tx().await?;
            sqlx::query(
                "UPDATE sync_state SET lease_holder = NULL, lease_until = NULL WHERE id = 1 AND lease_holder = ?",
            )
            .bind(holder)
            .execute(&mut *tx)
            .await
            .map_err(db("release the sync lease"))?;
            commit(tx).await
        })
    }

    fn put_portal_session<'a>(&'a self, session: &'a PortalSession) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let mut tx = self.write_tx().await?;
            sqlx::query(
                "INSERT INTO portal_sessions (id_hash, user_id, stage, mfa, mfa_state, created_at, last_seen_at,
                                              return_to, pending_totp)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
                 ON CONFLICT (id_hash) DO UPDATE SET
                     stage = excluded.stage, mfa = excluded.mfa, mfa_state = excluded.mfa_state,
                     last_seen_at = excluded.last_seen_at, return_to = excluded.return_to,
                     pending_totp = excluded.pending_totp",
            )
            .bind(&session.id_hash[..])
            .bind(session.user_id.0)
            .bind(if session.signed_in { "signed_in" } else { "password" })
            .bind(session.mfa)
            .bind(session.mfa_state.as_str())
            .bind(session.created_at)
            .bind(session.last_seen_at)
            .bind(&session.return_to)
            .bind(&session.pending_totp)
            .execute(&mut *tx)
            .await
            .map_err(db("save a portal session"))?;
            commit(tx).await
        })
    }

    fn portal_session<'a>(&'a self, id_hash: &'a [u8; 32]) -> StoreFuture<'a, Option<PortalSession>> {
        Box::pin(async move {
            let row = sqlx::query(
                "SELECT id_hash, user_id, stage, mfa, mfa_state, created_at, last_seen_at, return_to,
                        pending_totp
                 FROM portal_sessions WHERE id_hash = ?",
            )
            .bind(&id_hash[..])
            .fetch_optional(self.live_pool()?)
            .await
            .map_err(db("read a portal session"))?;
            let Some(row) = row else { return Ok(None) };
            let read = || db("read a portal session");
            let stage: String = row.try_get("stage").map_err(read())?;
            let state: String = row.try_get("mfa_state").map_err(read())?;
            Ok(Some(PortalSession {
                id_hash: *id_hash,
                user_id: UserId(row.try_get("user_id").map_err(read())?),
                signed_in: stage == "signed_in",
                mfa: row.try_get("mfa").map_err(read())?,
                mfa_state: state.parse().map_err(|e| corrupt(format!("portal session: {e}")))?,
                created_at: row.try_get("created_at").map_err(read())?,
                last_seen_at: row.try_get("last_seen_at").map_err(read())?,
                return_to: row.try_get("return_to").map_err(read())?,
                pending_totp: row.try_get("pending_totp").map_err(read())?,
            }))
        })
    }

    fn delete_portal_session<'a>(&'a self, id_hash: &'a [u8; 32]) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let mut tx = self.write_tx().await?;
            sqlx::query("DELETE FROM portal_sessions WHERE id_hash = ?")
                .bind(&id_hash[..])
                .execute(&mut *tx)
                .await
                .map_err(db("end a portal session"))?;
            commit(tx).await
        })
    }

    fn prune_portal_sessions(&self, before: i64) -> StoreFuture<'_, u64> {
        Box::pin(async move {
            let mut tx = self.write_tx().await?;
            let done = sqlx::query("DELETE FROM portal_sessions WHERE last_seen_at < ?")
                .bind(before)
                .execute(&mut *tx)
                .await
                .map_err(db("prune portal sessions"))?;
            commit(tx).await?;
            Ok(done.rows_affected())
        })
    }

    fn append_audit<'a>(&'a self, records: &'a [AuditRecord]) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            if records.is_empty() {
                return Ok(());
            }
            let mut tx = self.write_tx().await?;
            for record in records {
                let record = record.clone().clamped();
                sqlx::query(&format!(
                    "INSERT INTO audit ({AUDIT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                ))
                .bind(record.at)
                .bind(&record.upn_given)
                .bind(record.user_id.map(|id| id.0))
                .bind(&record.route)
                .bind(record.credential.as_str())
                .bind(&record.app_password_name)
                .bind(&record.client_ip)
                .bind(&record.user_agent)
                .bind(record.success)
                .bind(record.reason.as_str())
                .bind(i64::from(record.count.max(1)))
                .execute(&mut *tx)
                .await
                .map_err(db("append to the audit log"))?;
            }
            commit(tx).await
        })
    }

    fn query_audit<'a>(&'a self, filter: &'a AuditFilter) -> StoreFuture<'a, Vec<AuditRecord>> {
        Box::pin(async move {
            let mut query = QueryBuilder::<Sqlite>::new(format!("SELECT {AUDIT_COLUMNS} FROM audit WHERE 1"));
            if let Some(upn) = &filter.user {
                query
                    .push(" AND (user_id = (SELECT id FROM users WHERE upn = ")
                    .push_bind(upn.as_str())
                    .push(") OR upn_given = ")
                    .push_bind(upn.as_str())
                    .push(" COLLATE NOCASE)");
            }
            if let Some(since) = filter.since {
                query.push(" AND at >= ").push_bind(since);
            }
            if let Some(success) = filter.success {
                query.push(" AND success = ").push_bind(success);
            }
            query
                .push(" ORDER BY at DESC, id DESC LIMIT ")
                .push_bind(i64::from(filter.limit));
            let rows = query
                .build()
                .fetch_all(self.live_pool()?)
                .await
                .map_err(db("query the audit log"))?;
            rows.iter().map(audit_from_row).collect()
        })
    }

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

/// A TOTP step as SQLite stores it (a signed 64-bit integer).
fn step_value(step: u64) -> Result<i64, StoreError> {
    i64::try_from(step).map_err(|_| StoreError::TotpStepOutOfRange { step })
}

async fn update_mfa_state(
    conn: &mut SqliteConnection,
    user: UserId,
    state: MfaState,
    now: i64,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE users SET mfa_state = ?, updated_at = ? WHERE id = ?")
        .bind(state.as_str())
        .bind(now)
        .bind(user.0)
        .execute(&mut *conn)
        .await
        .map_err(db("change a user's MFA state"))?;
    record_change(conn, now, ChangeKind::MfaStateChanged, Some(user)).await
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
