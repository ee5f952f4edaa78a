//! Whole-store copies in the PostgreSQL store: reading runs in one
//! `REPEATABLE READ READ ONLY` transaction (one snapshot for every table),
//! and writing in one transaction that holds the change-feed lock, so
//! that nodes already running on the target see the copy all at once when
//! it commits, and no other writer of the feed slips in between the check
//! that the store is empty and the commit.

use super::*;
use crate::store::copy::{CopyDatabase, CopySource, CopyTarget, Snapshot, Writer, TABLES};
use crate::store::StoreCopy;

impl StoreCopy for PgStore {
    fn store_id(&self) -> &str {
        &self.store_id
    }

    fn export(&self) -> StoreFuture<'_, Box<dyn CopySource>> {
        Box::pin(async move {
            let tx = self
                .live_pool()?
                .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                .await
                .map_err(db("begin reading the store"))?;
            Ok(Box::new(Snapshot::new(tx)) as Box<dyn CopySource>)
        })
    }

    fn import(&self) -> StoreFuture<'_, Box<dyn CopyTarget>> {
        Box::pin(async move {
            let tx = self.write_tx().await?;
            Ok(Box::new(Writer::new(tx, self.clock.now_ms())) as Box<dyn CopyTarget>)
        })
    }
}

impl CopyDatabase for Postgres {
    const OVERRIDING: &'static str = "OVERRIDING SYSTEM VALUE";

    fn finish(mut tx: Transaction<'static, Postgres>, now: i64) -> BoxFuture<'static, Result<(), StoreError>> {
        Box::pin(async move {
            // The next key drawn is past every copied one. On an empty
            // table `max` is NULL and `setval` (strict) leaves the sequence
            // as it is.
            for table in TABLES.iter().filter(|t| t.identity) {
                sqlx::query(&format!(
                    "SELECT setval(pg_get_serial_sequence($1, $2), max({key})) FROM {name}",
                    key = table.key,
                    name = table.name
                ))
                .bind(table.name)
                .bind(table.key)
                .execute(&mut *tx)
                .await
                .map_err(db("move identity sequences past the copied keys"))?;
            }
            record_change(&mut tx, now, ChangeKind::StoreCopied, None).await?;
            commit(tx).await
        })
    }
}
