//! Whole-store copies in the SQLite store: reading runs in one read
//! transaction (in WAL mode, a snapshot that writers do not disturb), and
//! writing in one `BEGIN IMMEDIATE` transaction, which keeps every other
//! writer out until the copy has committed or rolled back.

use super::*;
use crate::store::copy::{CopyDatabase, CopySource, CopyTarget, Snapshot, Writer};
use crate::store::StoreCopy;

impl StoreCopy for SqliteStore {
    fn store_id(&self) -> &str {
        &self.store_id
    }

    fn export(&self) -> StoreFuture<'_, Box<dyn CopySource>> {
        Box::pin(async move {
            let mut tx = self.live_pool()?.begin().await.map_err(db("begin reading the store"))?;
            // A deferred transaction takes its snapshot at its first read.
            sqlx::query("SELECT 1 FROM settings")
                .execute(&mut *tx)
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

impl CopyDatabase for Sqlite {
    /// Integer primary keys take any value given.
    const OVERRIDING: &'static str = "";

    fn finish(mut tx: Transaction<'static, Sqlite>, now: i64) -> BoxFuture<'static, Result<(), StoreError>> {
        Box::pin(async move {
            // Nothing to move past the copied keys: SQLite gives a new row
            // the largest key plus one.
            record_change(&mut tx, now, ChangeKind::StoreCopied, None).await?;
            commit(tx).await
        })
    }
}
