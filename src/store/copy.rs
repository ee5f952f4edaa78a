//! Copying a whole store into an empty one (`fedgate store copy`), so that
//! a one-node site on SQLite can move to PostgreSQL, and back, without
//! anyone enrolling again.
//!
//! What a copy moves is described once, here, as tables of typed columns
//! ([`TABLES`]), and so is everything else: the order, the batching, the
//! refusal of a target that holds anything and the report ([`copy`]), and
//! the statements that read and write the rows (`copy/backend.rs`). A
//! backend only begins the two transactions ([`super::StoreCopy`]): a
//! snapshot to read from, and the one transaction the copy is written in.
//!
//! Rows move as stored, ids included. Ids are not cosmetic: a TOTP secret
//! is sealed with its user's id as associated data, and app passwords,
//! portal sessions and the sign-in log name users by id, so a copy that
//! numbered users afresh would lose everyone's second factor.
//!
//! Left behind on purpose ([`LEFT_OUT_TABLES`], [`LEFT_OUT_COLUMNS`]):
//!
//! - the change feed: it tells running servers what changed since they
//!   loaded, in one store's numbering. The target keeps its own feed, and
//!   the copy adds one [`super::ChangeKind::StoreCopied`] row to it,
//!   which makes a server already running on the target reload
//!   everything;
//! - the store id: it names a database, not what the database holds. The
//!   target keeps its own, so that a server that opened the target before
//!   the copy still finds the store it opened, and the source and the
//!   target (two databases that now part ways) are never taken for one
//!   store;
//! - the sync lease and the sync lead: their holders are processes of the
//!   source's site, whose names mean nothing to the target's nodes; and
//!   the push sync's status, which those processes report (its resume
//!   cookie is copied, like the sync mark);
//! - the lockout events: counts of the last hours, which the target's
//!   nodes start afresh, as after a restart of every node;
//! - the schema version: opening brings both stores to this fedgate's
//!   schema (a source made by an older fedgate is migrated first, as by
//!   any command), so both have the same tables and columns.

use std::fmt;
use std::sync::Arc;

use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};

use super::{open_with, redact_url, OpenMode, Store, StoreAccess, StoreError};
use crate::model::Clock;

mod backend;

pub(super) use backend::{CopyDatabase, Snapshot, Writer};

/// How a column's values are read and written: the four kinds of value the
/// schema holds, the same on both backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    Integer,
    Bool,
    Text,
    Blob,
}

/// One column's value as stored, `None` for NULL. Typed even when NULL,
/// since PostgreSQL wants a NULL of the column's type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Integer(Option<i64>),
    Bool(Option<bool>),
    Text(Option<String>),
    Blob(Option<Vec<u8>>),
}

/// One row, its values in the order of [`Table::columns`].
pub type Row = Vec<Value>;

/// A table a copy moves.
#[derive(Debug)]
pub struct Table {
    pub name: &'static str,
    /// Rows are read in this column's order (the primary key), so two
    /// copies of one store read alike.
    pub key: &'static str,
    /// The key is drawn from an identity sequence on PostgreSQL, which the
    /// copy moves past the copied keys.
    pub identity: bool,
    /// The table holds exactly one row (`id = 1`), made with the schema:
    /// the copy updates it rather than inserting one, and does not copy
    /// its `id`.
    pub singleton: bool,
    /// Every column copied, in the order rows hold them.
    pub columns: &'static [(&'static str, ColumnType)],
}

use ColumnType::{Blob, Bool, Integer, Text};

/// Everything a copy moves, in an order that writes every row after the
/// rows it refers to (users before what names them).
pub const TABLES: &[Table] = &[
    Table {
        name: "users",
        key: "id",
        identity: true,
        singleton: false,
        columns: &[
            ("id", Integer),
            ("upn", Text),
            ("source", Text),
            ("enabled", Bool),
            ("directory_enabled", Bool),
            ("deleted", Bool),
            ("mfa_state", Text),
            ("registered_at", Integer),
            ("created_at", Integer),
            ("updated_at", Integer),
            ("password_hash", Text),
            ("dn", Text),
            ("login", Text),
            ("anchor", Text),
            ("display_name", Text),
            ("mail", Text),
            ("directory_seen_at", Integer),
            ("groups", Text),
            ("password_changed", Text),
            ("totp_secret", Blob),
            ("totp_last_step", Integer),
            ("totp_failures", Integer),
            ("totp_blocked_until", Integer),
        ],
    },
    Table {
        name: "app_passwords",
        key: "id",
        identity: true,
        singleton: false,
        columns: &[
            ("id", Integer),
            ("user_id", Integer),
            ("name", Text),
            ("tag", Blob),
            ("hash", Text),
            ("created_at", Integer),
            ("last_used_at", Integer),
            ("last_ip", Text),
            ("last_user_agent", Text),
            ("scope", Text),
            ("expires_at", Integer),
            ("networks", Text),
        ],
    },
    Table {
        name: "portal_sessions",
        key: "id_hash",
        identity: false,
        singleton: false,
        columns: &[
            ("id_hash", Blob),
            ("user_id", Integer),
            ("stage", Text),
            ("mfa", Bool),
            ("mfa_state", Text),
            ("created_at", Integer),
            ("last_seen_at", Integer),
            ("return_to", Text),
            ("pending_totp", Blob),
            ("failed_codes", Integer),
            ("codes_blocked_until", Integer),
        ],
    },
    Table {
        name: "settings",
        key: "id",
        identity: false,
        singleton: true,
        columns: &[("allow_app_passwords", Bool)],
    },
    Table {
        name: "sync_state",
        key: "id",
        identity: false,
        singleton: true,
        columns: &[
            ("mark", Text),
            ("mark_server", Text),
            ("push_cookie", Text),
            ("push_cookie_server", Text),
        ],
    },
    Table {
        name: "sync_passes",
        key: "id",
        identity: true,
        singleton: false,
        columns: &[
            ("id", Integer),
            ("kind", Text),
            ("outcome", Text),
            ("started_at", Integer),
            ("duration_ms", Integer),
            ("seen", Integer),
            ("created", Integer),
            ("updated", Integer),
            ("disabled", Integer),
            ("enabled", Integer),
            ("deleted", Integer),
            ("errors", Integer),
            ("server", Text),
            ("message", Text),
        ],
    },
    Table {
        name: "mfa_state_history",
        key: "id",
        identity: true,
        singleton: false,
        columns: &[
            ("id", Integer),
            ("user_id", Integer),
            ("at", Integer),
            ("mfa_state", Text),
            ("deleted", Bool),
            ("backfilled", Bool),
        ],
    },
    Table {
        name: "enrolment_notices",
        key: "id",
        identity: true,
        singleton: false,
        columns: &[
            ("id", Integer),
            ("user_id", Integer),
            ("history_id", Integer),
            ("status", Text),
            ("attempts", Integer),
            ("last_error", Text),
            ("address", Text),
            ("claimed_by", Text),
            ("claimed_until", Integer),
            ("created_at", Integer),
            ("updated_at", Integer),
            ("sent_at", Integer),
        ],
    },
    Table {
        name: "audit",
        key: "id",
        identity: true,
        singleton: false,
        columns: &[
            ("id", Integer),
            ("at", Integer),
            ("upn_given", Text),
            ("user_id", Integer),
            ("route", Text),
            ("credential", Text),
            ("app_password_name", Text),
            ("client_ip", Text),
            ("user_agent", Text),
            ("success", Bool),
            ("reason", Text),
            ("count", Integer),
        ],
    },
    Table {
        name: "admin_events",
        key: "id",
        identity: true,
        singleton: false,
        columns: &[
            ("id", Integer),
            ("at", Integer),
            ("actor", Text),
            ("client", Text),
            ("action", Text),
            ("target", Text),
            ("detail", Text),
        ],
    },
];

/// Tables of the schema a copy leaves behind (see the module doc).
pub const LEFT_OUT_TABLES: &[&str] = &["changes", "store_meta", "schema_version", "lockout_events"];

/// Columns of copied tables a copy leaves behind: the one-row tables' `id`
/// (always 1), the sync lease, the sync lead and the push status (see the
/// module doc).
pub const LEFT_OUT_COLUMNS: &[(&str, &str)] = &[
    ("settings", "id"),
    ("sync_state", "id"),
    ("sync_state", "lease_holder"),
    ("sync_state", "lease_until"),
    ("sync_state", "leader"),
    ("sync_state", "leader_since"),
    ("sync_state", "leader_until"),
    ("sync_state", "push_node"),
    ("sync_state", "push_method"),
    ("sync_state", "push_server"),
    ("sync_state", "push_connected"),
    ("sync_state", "push_since"),
    ("sync_state", "push_last_change_at"),
    ("sync_state", "push_updated_at"),
    ("sync_state", "push_error"),
];

/// A consistent view of a store being copied from: what every table held
/// at one moment, whatever is written meanwhile.
pub trait CopySource: Send {
    /// Every row of `table`, in key order, read as they are needed.
    fn rows(&mut self, table: &'static Table) -> futures_util::stream::BoxStream<'_, Result<Row, StoreError>>;
}

/// The one transaction a copy is written in. Nothing of it is seen before
/// [`CopyTarget::commit`]; dropping it rolls everything back.
pub trait CopyTarget: Send {
    /// The names of the tables (of those a copy fills with rows) that hold
    /// rows already.
    fn occupied(&mut self) -> super::StoreFuture<'_, Vec<&'static str>>;

    /// Writes `rows` of `table`: inserted, or for a one-row table, its
    /// row updated.
    fn write(&mut self, table: &'static Table, rows: Vec<Row>) -> super::StoreFuture<'_, ()>;

    /// Moves identity sequences past the copied keys (PostgreSQL), writes
    /// the [`super::ChangeKind::StoreCopied`] change, and commits.
    fn commit(self: Box<Self>) -> super::StoreFuture<'static, ()>;
}

/// A store to copy from or to: its `[store] url` and what opening it
/// needs besides.
#[derive(Debug, Clone, Copy)]
pub struct Endpoint<'a> {
    pub url: &'a str,
    pub access: &'a StoreAccess,
}

/// What a copy moved: rows per table, in copy order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CopyReport {
    /// The source's URL, without any password.
    pub from: String,
    /// The target's URL, without any password.
    pub to: String,
    #[serde(serialize_with = "tables_as_map")]
    pub tables: Vec<(&'static str, u64)>,
}

impl CopyReport {
    /// Rows copied into `table`.
    pub fn rows(&self, table: &str) -> Option<u64> {
        self.tables.iter().find(|(name, _)| *name == table).map(|(_, n)| *n)
    }
}

/// `{"users": 3, ...}` in copy order, for `jq .tables.users`.
fn tables_as_map<S: Serializer>(tables: &[(&'static str, u64)], serializer: S) -> Result<S::Ok, S::Error> {
    let mut map = serializer.serialize_map(Some(tables.len()))?;
    for (name, rows) in tables {
        map.serialize_entry(name, rows)?;
    }
    map.end()
}

/// Which end of a copy an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Source,
    Target,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Source => "source (--from)",
            Side::Target => "target (--to)",
        })
    }
}

/// Why a copy did not happen. Every message names the store concerned, by
/// its URL without a password, and says that the target was left as it
/// was.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("there is no store to copy at {path} (--from {url}): check the URL; nothing was changed")]
    SourceMissing { url: String, path: String },
    #[error("{side} store {url}: {source}; nothing was changed")]
    Open {
        side: Side,
        url: String,
        #[source]
        source: StoreError,
    },
    #[error(
        "{from} and {to} are the same store (store id {id}): a store cannot be copied into itself; \
         nothing was changed"
    )]
    SameStore { from: String, to: String, id: String },
    #[error(
        "the target store {url} is not empty (rows in {}): nothing was changed. Copy into a new \
         SQLite file or an empty PostgreSQL database",
        tables.join(", ")
    )]
    NotEmpty { url: String, tables: Vec<&'static str> },
    #[error("cannot copy table {table} from {from} to {to}: {source}; nothing was changed in {to}")]
    Table {
        table: &'static str,
        from: String,
        to: String,
        #[source]
        source: StoreError,
    },
    #[error("cannot {action} the copy in {url}: {source}; nothing was changed in {url}")]
    Target {
        action: &'static str,
        url: String,
        #[source]
        source: StoreError,
    },
}

impl CopyError {
    /// Whether the operator named something that cannot be copied (as
    /// opposed to a database that failed along the way).
    pub fn is_input(&self) -> bool {
        matches!(
            self,
            CopyError::SourceMissing { .. }
                | CopyError::SameStore { .. }
                | CopyError::NotEmpty { .. }
                | CopyError::Open {
                    source: StoreError::Unsupported { .. },
                    ..
                }
        )
    }
}

/// Opens the source (which must exist, and is only read) and the target
/// (created with its schema when missing: a SQLite file, or the schema in
/// an empty PostgreSQL database), copies, and closes both.
pub async fn copy_store(from: Endpoint<'_>, to: Endpoint<'_>, clock: Arc<dyn Clock>) -> Result<CopyReport, CopyError> {
    let source = open_with(from.url, from.access, clock.clone(), OpenMode::Existing)
        .await
        .map_err(|err| match err {
            StoreError::Missing { path, .. } => CopyError::SourceMissing {
                url: redact_url(from.url),
                path,
            },
            source => CopyError::Open {
                side: Side::Source,
                url: redact_url(from.url),
                source,
            },
        })?;
    let target = match open_with(to.url, to.access, clock, OpenMode::CreateIfMissing).await {
        Ok(target) => target,
        Err(err) => {
            source.close().await;
            return Err(CopyError::Open {
                side: Side::Target,
                url: redact_url(to.url),
                source: err,
            });
        }
    };
    let report = copy(&*source, &*target, &redact_url(from.url), &redact_url(to.url)).await;
    source.close().await;
    target.close().await;
    report
}

/// Copies every table of [`TABLES`] from `source` into `target`, which
/// must hold no row of them, in one transaction on the target; `from` and
/// `to` name the two stores in the report and in errors.
pub async fn copy(source: &dyn Store, target: &dyn Store, from: &str, to: &str) -> Result<CopyReport, CopyError> {
    if source.store_id() == target.store_id() {
        return Err(CopyError::SameStore {
            from: from.to_owned(),
            to: to.to_owned(),
            id: source.store_id().to_owned(),
        });
    }
    let mut reader = source.export().await.map_err(|source| CopyError::Open {
        side: Side::Source,
        url: from.to_owned(),
        source,
    })?;
    let at_target = |action: &'static str| {
        move |source| CopyError::Target {
            action,
            url: to.to_owned(),
            source,
        }
    };
    let mut writer = target.import().await.map_err(at_target("begin"))?;
    let occupied = writer.occupied().await.map_err(at_target("begin"))?;
    if !occupied.is_empty() {
        return Err(CopyError::NotEmpty {
            url: to.to_owned(),
            tables: occupied,
        });
    }
    let mut report = CopyReport {
        from: from.to_owned(),
        to: to.to_owned(),
        tables: Vec::with_capacity(TABLES.len()),
    };
    for table in TABLES {
        let failed = |source| CopyError::Table {
            table: table.name,
            from: from.to_owned(),
            to: to.to_owned(),
            source,
        };
        let rows = copy_table(&mut *reader, &mut *writer, table).await.map_err(failed)?;
        report.tables.push((table.name, rows));
    }
    drop(reader);
    writer.commit().await.map_err(at_target("commit"))?;
    Ok(report)
}

/// Streams one table across in batches; returns how many rows it moved.
async fn copy_table(
    reader: &mut dyn CopySource,
    writer: &mut dyn CopyTarget,
    table: &'static Table,
) -> Result<u64, StoreError> {
    use futures_util::TryStreamExt;
    let batch_rows = table.batch_rows();
    let mut copied = 0u64;
    let mut rows = reader.rows(table);
    let mut batch = Vec::with_capacity(batch_rows);
    while let Some(row) = rows.try_next().await? {
        batch.push(row);
        if batch.len() == batch_rows {
            copied += batch.len() as u64;
            writer.write(table, std::mem::take(&mut batch)).await?;
        }
    }
    if !batch.is_empty() {
        copied += batch.len() as u64;
        writer.write(table, batch).await?;
    }
    Ok(copied)
}
