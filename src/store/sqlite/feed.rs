//! Settings and the change feed in the SQLite store.

use super::*;

impl SettingsStore for SqliteStore {
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
}

impl ChangeFeed for SqliteStore {
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

    fn change_signal(&self) -> Option<Arc<tokio::sync::Notify>> {
        Some(Arc::clone(&self.changed))
    }
}

/// The most changes one [`super::ChangeFeed::changes_since`] call returns.
const CHANGES_PAGE: i64 = 10_000;
