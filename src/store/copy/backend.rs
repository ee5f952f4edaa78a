//! The part of a copy that speaks SQL, written once for both backends:
//! statements are made from [`Table`]s, values are read and bound by their
//! [`ColumnType`](super::ColumnType), and the two transactions of a copy
//! are wrapped as [`CopySource`] and [`CopyTarget`]. A backend adds only
//! what differs ([`CopyDatabase`]): which transactions it begins, how an
//! insert keeps identity keys, and how a copy ends.

use futures_util::future::BoxFuture;
use futures_util::stream::{BoxStream, StreamExt};
use sqlx::{Arguments, ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Row as _, Transaction, Type};

use super::ColumnType::{Blob, Bool, Integer, Text};
use super::{CopySource, CopyTarget, Row, Table, Value, TABLES};
use crate::store::{StoreError, StoreFuture};

/// What a backend adds to the shared copy code.
pub trait CopyDatabase: Database {
    /// Goes between an insert's column list and `VALUES` when the table's
    /// key is drawn from an identity sequence (PostgreSQL's `OVERRIDING
    /// SYSTEM VALUE`, without which it refuses keys it did not draw).
    const OVERRIDING: &'static str;

    /// Ends a copy: moves whatever must follow the copied keys, writes the
    /// change-feed row that makes running servers reload, and commits.
    fn finish(tx: Transaction<'static, Self>, now: i64) -> BoxFuture<'static, Result<(), StoreError>>;
}

/// Statements are kept under this many bound values: SQLite allows 32,766
/// a statement and PostgreSQL 65,535.
const BATCH_VALUES: usize = 10_000;

impl Table {
    /// Every row, in key order.
    fn select_sql(&self) -> String {
        let columns: Vec<&str> = self.columns.iter().map(|(name, _)| *name).collect();
        format!("SELECT {} FROM {} ORDER BY {}", columns.join(", "), self.name, self.key)
    }

    /// Rows written by one statement.
    pub(super) fn batch_rows(&self) -> usize {
        (BATCH_VALUES / self.columns.len()).max(1)
    }

    /// The statement that writes `rows`, and its arguments: an `INSERT`
    /// of them all, or for a one-row table an `UPDATE` of its row with the
    /// (only) row given.
    fn write_statement<'q, DB>(&self, rows: Vec<Row>) -> Result<(String, DB::Arguments<'q>), sqlx::Error>
    where
        DB: CopyDatabase,
        Option<i64>: Encode<'q, DB> + Type<DB>,
        Option<bool>: Encode<'q, DB> + Type<DB>,
        Option<String>: Encode<'q, DB> + Type<DB>,
        Option<Vec<u8>>: Encode<'q, DB> + Type<DB>,
    {
        let mut arguments = DB::Arguments::default();
        let mut sql = String::new();
        // Adds a value and writes its placeholder (`?`, or `$N` where
        // the backend numbers them).
        let mut bind = |sql: &mut String, value: Value| -> Result<(), sqlx::Error> {
            match value {
                Value::Integer(v) => arguments.add(v),
                Value::Bool(v) => arguments.add(v),
                Value::Text(v) => arguments.add(v),
                Value::Blob(v) => arguments.add(v),
            }
            .map_err(sqlx::Error::Encode)?;
            arguments
                .format_placeholder(sql)
                .map_err(|err| sqlx::Error::Encode(err.into()))
        };
        let names = self.columns.iter().map(|(name, _)| *name);
        if self.singleton {
            sql.push_str(&format!("UPDATE {} SET ", self.name));
            for (n, (name, value)) in names.zip(rows.into_iter().flatten()).enumerate() {
                if n > 0 {
                    sql.push_str(", ");
                }
                sql.push_str(&format!("{name} = "));
                bind(&mut sql, value)?;
            }
            sql.push_str(" WHERE id = 1");
        } else {
            let overriding = if self.identity { DB::OVERRIDING } else { "" };
            let names: Vec<&str> = names.collect();
            sql.push_str(&format!(
                "INSERT INTO {} ({}) {overriding} VALUES ",
                self.name,
                names.join(", ")
            ));
            for (r, row) in rows.into_iter().enumerate() {
                sql.push_str(if r > 0 { ", (" } else { "(" });
                for (n, value) in row.into_iter().enumerate() {
                    if n > 0 {
                        sql.push_str(", ");
                    }
                    bind(&mut sql, value)?;
                }
                sql.push(')');
            }
        }
        Ok((sql, arguments))
    }
}

/// Reads one row of `table` as the backend returned it.
fn decode_row<'r, R>(row: &'r R, table: &Table) -> Result<Row, StoreError>
where
    R: sqlx::Row,
    usize: ColumnIndex<R>,
    Option<i64>: Decode<'r, R::Database> + Type<R::Database>,
    Option<bool>: Decode<'r, R::Database> + Type<R::Database>,
    Option<String>: Decode<'r, R::Database> + Type<R::Database>,
    Option<Vec<u8>>: Decode<'r, R::Database> + Type<R::Database>,
{
    let read = |source| StoreError::Database {
        action: "read a row to copy",
        source,
    };
    table
        .columns
        .iter()
        .enumerate()
        .map(|(index, (_, kind))| {
            Ok(match kind {
                Integer => Value::Integer(row.try_get(index).map_err(read)?),
                Bool => Value::Bool(row.try_get(index).map_err(read)?),
                Text => Value::Text(row.try_get(index).map_err(read)?),
                Blob => Value::Blob(row.try_get(index).map_err(read)?),
            })
        })
        .collect()
}

/// A store being copied from, read in one transaction that the backend
/// began as a snapshot.
pub struct Snapshot<DB: Database> {
    tx: Transaction<'static, DB>,
    /// The statement being streamed, which the stream borrows.
    sql: String,
}

impl<DB: Database> Snapshot<DB> {
    pub fn new(tx: Transaction<'static, DB>) -> Snapshot<DB> {
        Snapshot { tx, sql: String::new() }
    }
}

impl<DB> CopySource for Snapshot<DB>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    usize: ColumnIndex<DB::Row>,
    for<'r> Option<i64>: Decode<'r, DB> + Type<DB>,
    for<'r> Option<bool>: Decode<'r, DB> + Type<DB>,
    for<'r> Option<String>: Decode<'r, DB> + Type<DB>,
    for<'r> Option<Vec<u8>>: Decode<'r, DB> + Type<DB>,
{
    fn rows(&mut self, table: &'static Table) -> BoxStream<'_, Result<Row, StoreError>> {
        self.sql = table.select_sql();
        let read = |source| StoreError::Database {
            action: "read a table to copy",
            source,
        };
        sqlx::query(&self.sql)
            .fetch(&mut *self.tx)
            .map(move |row| decode_row(&row.map_err(read)?, table))
            .boxed()
    }
}

/// A store being copied into: the one transaction, begun by the backend
/// with whatever lock keeps other writers out, that every row is written
/// in.
pub struct Writer<DB: Database> {
    tx: Transaction<'static, DB>,
    /// When the copy began, for its change-feed row.
    now: i64,
}

impl<DB: Database> Writer<DB> {
    pub fn new(tx: Transaction<'static, DB>, now: i64) -> Writer<DB> {
        Writer { tx, now }
    }
}

impl<DB> CopyTarget for Writer<DB>
where
    DB: CopyDatabase,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    usize: ColumnIndex<DB::Row>,
    for<'r> bool: Decode<'r, DB> + Type<DB>,
    for<'q> Option<i64>: Encode<'q, DB> + Type<DB>,
    for<'q> Option<bool>: Encode<'q, DB> + Type<DB>,
    for<'q> Option<String>: Encode<'q, DB> + Type<DB>,
    for<'q> Option<Vec<u8>>: Encode<'q, DB> + Type<DB>,
{
    fn occupied(&mut self) -> StoreFuture<'_, Vec<&'static str>> {
        Box::pin(async move {
            let mut occupied = Vec::new();
            for table in TABLES.iter().filter(|t| !t.singleton) {
                let sql = format!("SELECT EXISTS (SELECT 1 FROM {})", table.name);
                let check = |source| StoreError::Database {
                    action: "check that the target is empty",
                    source,
                };
                let row = sqlx::query(&sql).fetch_one(&mut *self.tx).await.map_err(check)?;
                if row.try_get::<bool, _>(0).map_err(check)? {
                    occupied.push(table.name);
                }
            }
            Ok(occupied)
        })
    }

    fn write(&mut self, table: &'static Table, rows: Vec<Row>) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let failed = |source| StoreError::Database {
                action: "write copied rows",
                source,
            };
            let (sql, arguments) = table.write_statement::<DB>(rows).map_err(failed)?;
            sqlx::query_with(&sql, arguments)
                .execute(&mut *self.tx)
                .await
                .map_err(failed)?;
            Ok(())
        })
    }

    fn commit(self: Box<Self>) -> StoreFuture<'static, ()> {
        DB::finish(self.tx, self.now)
    }
}
