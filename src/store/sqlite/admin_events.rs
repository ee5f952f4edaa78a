//! The admin event log in the SQLite store.

use super::*;

const ADMIN_EVENT_COLUMNS: &str = "id, at, actor, client, action, target, detail";

impl AdminEventStore for SqliteStore {
    fn append_admin_event<'a>(&'a self, event: &'a AdminEvent) -> StoreFuture<'a, i64> {
        Box::pin(async move {
            let mut tx = self.write_tx().await?;
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO admin_events (at, actor, client, action, target, detail)
                 VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
            )
            .bind(event.at)
            .bind(audit_text(&event.actor, MAX_AUDIT_UPN_CHARS))
            .bind(event.client.as_deref().map(|c| audit_text(c, MAX_AUDIT_IP_CHARS)))
            .bind(&event.action)
            .bind(event.target.as_deref().map(|t| audit_text(t, MAX_AUDIT_UPN_CHARS)))
            .bind(event.detail.to_string())
            .fetch_one(&mut *tx)
            .await
            .map_err(db("append to the admin event log"))?;
            commit(tx).await?;
            Ok(id)
        })
    }

    fn admin_events(&self, limit: u32, before: Option<i64>) -> StoreFuture<'_, Vec<AdminEvent>> {
        Box::pin(async move {
            let rows = sqlx::query(&format!(
                "SELECT {ADMIN_EVENT_COLUMNS} FROM admin_events WHERE id < ? ORDER BY id DESC LIMIT ?"
            ))
            .bind(before.unwrap_or(i64::MAX))
            .bind(i64::from(limit))
            .fetch_all(self.live_pool()?)
            .await
            .map_err(db("read the admin event log"))?;
            rows.iter()
                .map(|row| {
                    let detail: String = row.try_get("detail").map_err(db("read the admin event log"))?;
                    Ok(AdminEvent {
                        id: row.try_get("id").map_err(db("read the admin event log"))?,
                        at: row.try_get("at").map_err(db("read the admin event log"))?,
                        actor: row.try_get("actor").map_err(db("read the admin event log"))?,
                        client: row.try_get("client").map_err(db("read the admin event log"))?,
                        action: row.try_get("action").map_err(db("read the admin event log"))?,
                        target: row.try_get("target").map_err(db("read the admin event log"))?,
                        detail: serde_json::from_str(&detail)
                            .map_err(|e| StoreError::Corrupt(format!("admin event detail: {e}")))?,
                    })
                })
                .collect()
        })
    }
}
