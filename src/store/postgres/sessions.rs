//! Portal sessions in the PostgreSQL store.

use super::*;

impl SessionStore for PgStore {
    fn put_portal_session<'a>(&'a self, session: &'a PortalSession) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let mut tx = self.plain_tx().await?;
            sqlx::query(
                "INSERT INTO portal_sessions (id_hash, user_id, stage, mfa, mfa_state, created_at, last_seen_at,
                                              return_to, pending_totp)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                 ON CONFLICT (id_hash) DO UPDATE SET
                     stage = excluded.stage, mfa = excluded.mfa, mfa_state = excluded.mfa_state,
                     last_seen_at = excluded.last_seen_at, return_to = excluded.return_to,
                     pending_totp = excluded.pending_totp",
            )
            .bind(&session.id_hash[..])
            .bind(session.user_id.0)
            .bind(if session.signed_in { "signed_in" } else { "password" })
            .bind(session.mfa)
            .bind(session.mfa_state.as_str())
            .bind(session.created_at)
            .bind(session.last_seen_at)
            .bind(&session.return_to)
            .bind(&session.pending_totp)
            .execute(&mut *tx)
            .await
            .map_err(db("save a portal session"))?;
            commit(tx).await
        })
    }

    fn portal_session<'a>(&'a self, id_hash: &'a [u8; 32]) -> StoreFuture<'a, Option<PortalSession>> {
        Box::pin(async move {
            let row = sqlx::query(
                "SELECT id_hash, user_id, stage, mfa, mfa_state, created_at, last_seen_at, return_to,
                        pending_totp
                 FROM portal_sessions WHERE id_hash = $1",
            )
            .bind(&id_hash[..])
            .fetch_optional(self.live_pool()?)
            .await
            .map_err(db("read a portal session"))?;
            let Some(row) = row else { return Ok(None) };
            let read = || db("read a portal session");
            let stage: String = row.try_get("stage").map_err(read())?;
            let state: String = row.try_get("mfa_state").map_err(read())?;
            Ok(Some(PortalSession {
                id_hash: *id_hash,
                user_id: UserId(row.try_get("user_id").map_err(read())?),
                signed_in: stage == "signed_in",
                mfa: row.try_get("mfa").map_err(read())?,
                mfa_state: state.parse().map_err(|e| corrupt(format!("portal session: {e}")))?,
                created_at: row.try_get("created_at").map_err(read())?,
                last_seen_at: row.try_get("last_seen_at").map_err(read())?,
                return_to: row.try_get("return_to").map_err(read())?,
                pending_totp: row.try_get("pending_totp").map_err(read())?,
            }))
        })
    }

    fn delete_portal_session<'a>(&'a self, id_hash: &'a [u8; 32]) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let mut tx = self.plain_tx().await?;
            sqlx::query("DELETE FROM portal_sessions WHERE id_hash = $1")
                .bind(&id_hash[..])
                .execute(&mut *tx)
                .await
                .map_err(db("end a portal session"))?;
            commit(tx).await
        })
    }

    fn prune_portal_sessions(&self, before: i64) -> StoreFuture<'_, u64> {
        Box::pin(async move {
            let mut tx = self.plain_tx().await?;
            let done = sqlx::query("DELETE FROM portal_sessions WHERE last_seen_at < $1")
                .bind(before)
                .execute(&mut *tx)
                .await
                .map_err(db("prune portal sessions"))?;
            commit(tx).await?;
            Ok(done.rows_affected())
        })
    }
}
