//! A consistent copy of a SQLite store that other processes keep writing:
//! `VACUUM INTO` reads the database in one read transaction (a snapshot
//! that writers in WAL mode do not block and cannot tear) and writes a
//! compact file with no WAL of its own. The copy is then checked on its own
//! (`PRAGMA integrity_check`, schema version) without creating any file
//! beside it.
//!
//! Not here: target names, renaming, modes and what is printed
//! ([`crate::backup`]).

use std::path::Path;
use std::str::FromStr;

use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::Connection;

use super::{db, BUSY_TIMEOUT, MIGRATIONS};
use crate::store::StoreError;

/// What the check of a copy found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyCheck {
    /// `ok`, or the first problems `PRAGMA integrity_check` reports.
    pub integrity: String,
    pub schema_version: i64,
}

/// The newest schema version this fedgate knows.
pub fn latest_schema_version() -> i64 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// Writes a snapshot of the store at `url` into `target` (which must not
/// exist or be empty) and returns the source's schema version. Never
/// writes to the source and never creates it.
pub async fn vacuum_into(url: &str, target: &Path) -> Result<i64, StoreError> {
    let options = SqliteConnectOptions::from_str(url)
        .map_err(|source| StoreError::Open {
            url: url.to_owned(),
            source,
        })?
        .busy_timeout(BUSY_TIMEOUT)
        .create_if_missing(false);
    let path = options.get_filename().to_owned();
    if !path.exists() {
        return Err(StoreError::Missing {
            url: url.to_owned(),
            path: path.display().to_string(),
        });
    }
    let mut conn = SqliteConnection::connect_with(&options)
        .await
        .map_err(|source| StoreError::Open {
            url: url.to_owned(),
            source,
        })?;
    let version: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) FROM schema_version")
        .fetch_one(&mut conn)
        .await
        .map_err(db("read the schema version"))?;
    let target = target
        .to_str()
        .ok_or_else(|| StoreError::Corrupt(format!("the backup path {} is not UTF-8", target.display())))?;
    sqlx::query("VACUUM INTO ?")
        .bind(target)
        .execute(&mut conn)
        .await
        .map_err(db("copy the store (VACUUM INTO)"))?;
    conn.close().await.map_err(db("close the store"))?;
    Ok(version)
}

/// Checks the copy at `path`. Opened immutable: nothing else writes it,
/// and no `-wal` or `-shm` file appears beside it.
pub async fn check_copy(path: &Path) -> Result<CopyCheck, StoreError> {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .immutable(true)
        .read_only(true)
        .create_if_missing(false);
    let url = format!("sqlite://{}", path.display());
    let mut conn = SqliteConnection::connect_with(&options)
        .await
        .map_err(|source| StoreError::Open { url, source })?;
    let problems: Vec<String> = sqlx::query_scalar("PRAGMA integrity_check(10)")
        .fetch_all(&mut conn)
        .await
        .map_err(db("check the copy's integrity"))?;
    let schema_version: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) FROM schema_version")
        .fetch_one(&mut conn)
        .await
        .map_err(db("read the copy's schema version"))?;
    conn.close().await.map_err(db("close the copy"))?;
    Ok(CopyCheck {
        integrity: problems.join("; "),
        schema_version,
    })
}
