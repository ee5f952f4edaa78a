//! `fedgate backup PATH`: a checked, private copy of a running SQLite store
//! that appears at PATH only once complete.
//!
//! The steps: refuse a PATH that exists; create a temporary file (mode
//! 0600, before any row is in it) in PATH's directory; snapshot the store
//! into it; check the copy (integrity, the same schema version as the
//! store, one this fedgate knows); flush it to disk; link it to PATH (which
//! fails, rather than replaces, if PATH appeared meanwhile); remove the
//! temporary name. Any failure removes the temporary file and leaves PATH
//! absent.
//!
//! Not here: how SQLite copies and checks ([`crate::store::sqlite_backup`]).
//! A PostgreSQL store is refused: `pg_dump` is its backup tool.

use std::fs;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::config::Config;
use crate::store::{backend_of, redact_url, sqlite_backup, Backend, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(
        "store.url is a PostgreSQL store ({url}): back it up with pg_dump (or copy it into a SQLite file with \
         `fedgate store copy --from {url} --to sqlite://PATH`); fedgate backup copies SQLite stores"
    )]
    Postgres { url: String },
    #[error("store.url is an in-memory database ({url}): there is no file to back up")]
    InMemory { url: String },
    #[error("{path} exists: fedgate backup never replaces a file; name a new one")]
    Exists { path: PathBuf },
    #[error("{path}: the directory {dir} does not exist")]
    NoDirectory { path: PathBuf, dir: PathBuf },
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the copy failed its check ({reason}); nothing was written to {path}")]
    Check { path: PathBuf, reason: String },
}

impl BackupError {
    /// Exit 2 for what the operator must change (the store kind, the
    /// path, a missing store); 1 for what failed on the way.
    pub fn is_input(&self) -> bool {
        matches!(
            self,
            BackupError::Postgres { .. }
                | BackupError::InMemory { .. }
                | BackupError::Exists { .. }
                | BackupError::NoDirectory { .. }
                | BackupError::Store(StoreError::Missing { .. })
        )
    }
}

/// What a finished backup is, and what must be kept with it.
#[derive(Debug, Clone, Serialize)]
pub struct BackupReport {
    pub path: PathBuf,
    pub bytes: u64,
    pub schema_version: i64,
    /// Files not in the store that the store is useless without, each with
    /// the key it comes from and why.
    pub keep_with_it: Vec<KeptFile>,
}

#[derive(Debug, Clone, Serialize)]
pub struct KeptFile {
    pub key: &'static str,
    pub path: PathBuf,
    pub why: &'static str,
}

/// Takes the backup of `config`'s store into `path`.
pub async fn backup(config: &Config, path: &Path) -> Result<BackupReport, BackupError> {
    let url = &config.store.url;
    match backend_of(url)? {
        Backend::Postgres => return Err(BackupError::Postgres { url: redact_url(url) }),
        Backend::Sqlite if url.contains(":memory:") || url.contains("mode=memory") => {
            return Err(BackupError::InMemory { url: url.clone() })
        }
        Backend::Sqlite => {}
    }
    if path.symlink_metadata().is_ok() {
        return Err(BackupError::Exists { path: path.to_owned() });
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    if !dir.is_dir() {
        return Err(BackupError::NoDirectory {
            path: path.to_owned(),
            dir,
        });
    }
    let temp = temp_name(&dir, path);
    let result = write_checked(url, &temp, path).await;
    // On success the temporary name is gone already; on failure the partial
    // copy goes (a file that may hold secrets is not left lying about).
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    let schema_version = result?;
    let bytes = fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let mut keep_with_it = vec![KeptFile {
        key: "store.key_file",
        path: config.store.key_file.clone(),
        why: "app passwords are found through tags keyed with it: without it none signs in",
    }];
    if let Some(portal) = &config.portal {
        keep_with_it.push(KeptFile {
            key: "portal.secret_key_file",
            path: portal.secret_key_file.clone(),
            why: "TOTP secrets are sealed with it: without it no authenticator code is accepted",
        });
    }
    Ok(BackupReport {
        path: path.to_owned(),
        bytes,
        schema_version,
        keep_with_it,
    })
}

/// `.NAME.partial-PID` beside the target: the same file system, so the
/// final link is atomic, and a name no reader mistakes for a backup.
fn temp_name(dir: &Path, path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    dir.join(format!(".{name}.partial-{}", std::process::id()))
}

async fn write_checked(url: &str, temp: &Path, path: &Path) -> Result<i64, BackupError> {
    let io_err = |action: &'static str, p: &Path| {
        let p = p.to_owned();
        move |source| BackupError::Io {
            action,
            path: p,
            source,
        }
    };
    // Created empty and private first: SQLite fills an empty file and keeps
    // its mode, so the rows are never readable by others.
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(temp)
        .map_err(io_err("create", temp))?;
    let source_version = sqlite_backup::vacuum_into(url, temp).await?;
    let check = sqlite_backup::check_copy(temp).await?;
    let known = sqlite_backup::latest_schema_version();
    let reason = if check.integrity != "ok" {
        Some(format!("integrity_check: {}", check.integrity))
    } else if check.schema_version != source_version {
        Some(format!(
            "schema version {} in the copy, {source_version} in the store",
            check.schema_version
        ))
    } else if check.schema_version > known {
        Some(format!(
            "schema version {} is newer than this fedgate knows ({known}): back up with the fedgate that serves the store",
            check.schema_version
        ))
    } else {
        None
    };
    if let Some(reason) = reason {
        return Err(BackupError::Check {
            path: path.to_owned(),
            reason,
        });
    }
    fs::File::open(temp)
        .and_then(|f| f.sync_all())
        .map_err(io_err("flush", temp))?;
    // A link, not a rename: it fails if PATH appeared meanwhile instead of
    // replacing it.
    fs::hard_link(temp, path).map_err(|source| match source.kind() {
        io::ErrorKind::AlreadyExists => BackupError::Exists { path: path.to_owned() },
        _ => BackupError::Io {
            action: "write",
            path: path.to_owned(),
            source,
        },
    })?;
    fs::remove_file(temp).map_err(io_err("remove", temp))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        // The new directory entry survives a power cut too.
        let _ = fs::File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(check.schema_version)
}

#[cfg(test)]
mod tests;
