//! What the usage report reads from the SQLite store.

use super::*;
use crate::store::{DailySignins, ReportStore, StaleAppPassword, StateRecord};

impl ReportStore for SqliteStore {
    fn daily_signins(&self, from: i64, to: i64) -> StoreFuture<'_, Vec<DailySignins>> {
        Box::pin(async move {
            // A range scan of the `audit_at` index, grouped as it is read.
            let rows = sqlx::query(
                "SELECT at / 86400000 AS day, credential, success, SUM(count) AS total
                 FROM audit WHERE at >= ?1 AND at < ?2
                 GROUP BY day, credential, success ORDER BY day, credential, success",
            )
            .bind(from)
            .bind(to)
            .fetch_all(self.live_pool()?)
            .await
            .map_err(db("count sign-ins per day"))?;
            let read = || db("read sign-ins per day");
            rows.iter()
                .map(|row| {
                    Ok(DailySignins {
                        day: row.try_get("day").map_err(read())?,
                        credential: row.try_get("credential").map_err(read())?,
                        success: row.try_get("success").map_err(read())?,
                        count: row.try_get("total").map_err(read())?,
                    })
                })
                .collect()
        })
    }

    fn state_history(&self, from: i64, to: i64) -> StoreFuture<'_, Vec<StateRecord>> {
        Box::pin(async move {
            let rows = sqlx::query(
                "SELECT h.id, h.user_id, h.at, h.mfa_state, h.deleted FROM mfa_state_history h
                 WHERE h.at < ?2
                   AND (h.at >= ?1
                        OR h.id = (SELECT p.id FROM mfa_state_history p
                                   WHERE p.user_id = h.user_id AND p.at < ?1
                                   ORDER BY p.at DESC, p.id DESC LIMIT 1))
                 ORDER BY h.user_id, h.at, h.id",
            )
            .bind(from)
            .bind(to)
            .fetch_all(self.live_pool()?)
            .await
            .map_err(db("read the MFA state history"))?;
            rows.iter().map(state_record_from_row).collect()
        })
    }

    fn history_begins(&self) -> StoreFuture<'_, Option<i64>> {
        Box::pin(async move {
            sqlx::query_scalar("SELECT MIN(at) FROM mfa_state_history WHERE backfilled = 1")
                .fetch_one(self.live_pool()?)
                .await
                .map_err(db("read when the MFA state history begins"))
        })
    }

    fn stale_app_passwords(&self, before: i64) -> StoreFuture<'_, Vec<StaleAppPassword>> {
        Box::pin(async move {
            let rows = sqlx::query(
                "SELECT u.upn, a.name, a.created_at, a.last_used_at
                 FROM app_passwords a JOIN users u ON u.id = a.user_id
                 WHERE u.deleted = 0
                   AND ((a.last_used_at IS NULL AND a.created_at < ?1) OR a.last_used_at < ?1)
                 ORDER BY u.upn, a.name",
            )
            .bind(before)
            .fetch_all(self.live_pool()?)
            .await
            .map_err(db("list app passwords not used lately"))?;
            rows.iter().map(stale_from_row).collect()
        })
    }
}

fn state_record_from_row(row: &SqliteRow) -> Result<StateRecord, StoreError> {
    let read = || db("read the MFA state history");
    let state: String = row.try_get("mfa_state").map_err(read())?;
    Ok(StateRecord {
        id: row.try_get("id").map_err(read())?,
        user_id: UserId(row.try_get("user_id").map_err(read())?),
        at: row.try_get("at").map_err(read())?,
        state: state.parse().map_err(|e| corrupt(format!("MFA state history: {e}")))?,
        deleted: row.try_get("deleted").map_err(read())?,
    })
}

fn stale_from_row(row: &SqliteRow) -> Result<StaleAppPassword, StoreError> {
    let read = || db("read app passwords");
    let upn: String = row.try_get("upn").map_err(read())?;
    Ok(StaleAppPassword {
        upn: Upn::parse(&upn).map_err(|e| corrupt(format!("user {upn:?}: {e}")))?,
        name: row.try_get("name").map_err(read())?,
        created_at: row.try_get("created_at").map_err(read())?,
        last_used_at: row.try_get("last_used_at").map_err(read())?,
    })
}
