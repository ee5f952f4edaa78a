//! Lockout events in the SQLite store.

use super::*;
use crate::store::{LockoutEvent, LockoutEventKind, LockoutStore};

impl LockoutStore for SqliteStore {
    fn append_lockout_events<'a>(&'a self, events: &'a [LockoutEvent]) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            if events.is_empty() {
                return Ok(());
            }
            let mut tx = self.write_tx().await?;
            for event in events {
                let (kind, reason) = match event.kind {
                    LockoutEventKind::Failed(reason) => ("failed", Some(reason.as_str())),
                    LockoutEventKind::SignedIn => ("signed_in", None),
                };
                sqlx::query(
                    "INSERT INTO lockout_events (at, node, kind, user_id, name, client_ip, reason)
                     VALUES (?, ?, ?, ?, ?, ?, ?)",
                )
                .bind(event.at)
                .bind(&event.node)
                .bind(kind)
                .bind(event.user_id.map(|id| id.0))
                .bind(&event.name)
                .bind(&event.client_ip)
                .bind(reason)
                .execute(&mut *tx)
                .await
                .map_err(db("record lockout events"))?;
            }
            commit(tx).await
        })
    }

    fn lockout_events_since(&self, seq: i64, limit: u32) -> StoreFuture<'_, Vec<(i64, LockoutEvent)>> {
        Box::pin(async move {
            let rows = sqlx::query(
                "SELECT seq, at, node, kind, user_id, name, client_ip, reason FROM lockout_events
                 WHERE seq > ? ORDER BY seq LIMIT ?",
            )
            .bind(seq)
            .bind(i64::from(limit))
            .fetch_all(self.live_pool()?)
            .await
            .map_err(db("read lockout events"))?;
            rows.iter().map(lockout_event_from_row).collect()
        })
    }

    fn latest_lockout_seq(&self) -> StoreFuture<'_, i64> {
        Box::pin(async move {
            sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM lockout_events")
                .fetch_one(self.live_pool()?)
                .await
                .map_err(db("read lockout events"))
        })
    }

    fn lockout_seq_before(&self, at: i64) -> StoreFuture<'_, i64> {
        Box::pin(async move {
            sqlx::query_scalar(
                "SELECT COALESCE(MIN(seq) - 1, (SELECT COALESCE(MAX(seq), 0) FROM lockout_events))
                 FROM lockout_events WHERE at >= ?",
            )
            .bind(at)
            .fetch_one(self.live_pool()?)
            .await
            .map_err(db("read lockout events"))
        })
    }

    fn prune_lockout_events(&self, before: i64) -> StoreFuture<'_, u64> {
        Box::pin(async move {
            let done = sqlx::query("DELETE FROM lockout_events WHERE at < ?")
                .bind(before)
                .execute(self.live_pool()?)
                .await
                .map_err(db("prune lockout events"))?;
            Ok(done.rows_affected())
        })
    }
}
