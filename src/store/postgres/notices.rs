//! Enrolment notices in the PostgreSQL store.

use super::*;
use crate::model::NoticeStatus;
use crate::store::{NoticeCandidate, NoticeClaim, NoticeDone, NoticeRecord, NoticeState, NoticeStore};

impl NoticeStore for PgStore {
    fn notice_candidates(&self) -> StoreFuture<'_, Vec<NoticeCandidate>> {
        Box::pin(async move {
            let rows = sqlx::query(
                "SELECT u.id, u.upn, u.source, u.display_name, u.mail, h.id AS history_id, h.at AS enabled_at,
                        n.status, n.attempts, n.claimed_until
                 FROM users u
                 JOIN mfa_state_history h
                   ON h.id = (SELECT MAX(l.id) FROM mfa_state_history l WHERE l.user_id = u.id)
                 LEFT JOIN enrolment_notices n ON n.history_id = h.id
                 WHERE u.deleted = FALSE AND u.mfa_state = 'enabled'
                   AND h.mfa_state = 'enabled' AND h.deleted = FALSE AND h.backfilled = FALSE
                   AND (n.status IS NULL OR n.status <> 'sent')
                 ORDER BY u.upn",
            )
            .fetch_all(self.live_pool()?)
            .await
            .map_err(db("find users due an enrolment notice"))?;
            rows.iter().map(candidate_from_row).collect()
        })
    }

    fn claim_notice<'a>(&'a self, claim: &'a NoticeClaim) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let done = sqlx::query(
                "INSERT INTO enrolment_notices (user_id, history_id, status, attempts, address, claimed_by,
                                                claimed_until, created_at, updated_at)
                 VALUES ($1, $2, 'sending', 1, $3, $4, $5, $6, $6)
                 ON CONFLICT (history_id) DO UPDATE SET
                     status = 'sending', attempts = enrolment_notices.attempts + 1,
                     address = excluded.address, claimed_by = excluded.claimed_by,
                     claimed_until = excluded.claimed_until, updated_at = excluded.updated_at
                 WHERE enrolment_notices.status IN ('failed', 'no_address')
                    OR (enrolment_notices.status = 'sending' AND enrolment_notices.claimed_until < $6)",
            )
            .bind(claim.user_id.0)
            .bind(claim.history_id)
            .bind(&claim.address)
            .bind(&claim.holder)
            .bind(claim.until)
            .bind(claim.now)
            .execute(self.live_pool()?)
            .await
            .map_err(db("claim an enrolment notice"))?;
            Ok(done.rows_affected() == 1)
        })
    }

    fn finish_notice<'a>(&'a self, finished: &'a NoticeDone) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let done = sqlx::query(
                "UPDATE enrolment_notices SET status = $1, last_error = $2,
                     sent_at = CASE WHEN $1::TEXT = 'sent' THEN $3 ELSE sent_at END,
                     claimed_until = NULL, updated_at = $3
                 WHERE history_id = $4 AND claimed_by = $5 AND status = 'sending'",
            )
            .bind(finished.status.as_str())
            .bind(&finished.error)
            .bind(finished.now)
            .bind(finished.history_id)
            .bind(&finished.holder)
            .execute(self.live_pool()?)
            .await
            .map_err(db("record how an enrolment notice went"))?;
            Ok(done.rows_affected() == 1)
        })
    }

    fn list_notices(&self) -> StoreFuture<'_, Vec<NoticeRecord>> {
        Box::pin(async move {
            let rows = sqlx::query(
                "SELECT user_id, history_id, status, attempts, last_error, address, created_at, sent_at
                 FROM enrolment_notices ORDER BY id",
            )
            .fetch_all(self.live_pool()?)
            .await
            .map_err(db("list enrolment notices"))?;
            rows.iter().map(notice_from_row).collect()
        })
    }
}

fn status_of(text: &str) -> Result<NoticeStatus, StoreError> {
    text.parse().map_err(|e| corrupt(format!("enrolment notice: {e}")))
}

fn candidate_from_row(row: &PgRow) -> Result<NoticeCandidate, StoreError> {
    let read = || db("read users due an enrolment notice");
    let upn: String = row.try_get("upn").map_err(read())?;
    let source: String = row.try_get("source").map_err(read())?;
    let status: Option<String> = row.try_get("status").map_err(read())?;
    let notice = match status {
        None => None,
        Some(status) => Some(NoticeState {
            status: status_of(&status)?,
            attempts: row.try_get("attempts").map_err(read())?,
            claimed_until: row.try_get("claimed_until").map_err(read())?,
        }),
    };
    Ok(NoticeCandidate {
        user_id: UserId(row.try_get("id").map_err(read())?),
        upn: Upn::parse(&upn).map_err(|e| corrupt(format!("user {upn:?}: {e}")))?,
        source: source.parse().map_err(|e| corrupt(format!("user {upn}: {e}")))?,
        display_name: row.try_get("display_name").map_err(read())?,
        mail: row.try_get("mail").map_err(read())?,
        history_id: row.try_get("history_id").map_err(read())?,
        enabled_at: row.try_get("enabled_at").map_err(read())?,
        notice,
    })
}

fn notice_from_row(row: &PgRow) -> Result<NoticeRecord, StoreError> {
    let read = || db("read enrolment notices");
    let status: String = row.try_get("status").map_err(read())?;
    Ok(NoticeRecord {
        user_id: UserId(row.try_get("user_id").map_err(read())?),
        history_id: row.try_get("history_id").map_err(read())?,
        status: status_of(&status)?,
        attempts: row.try_get("attempts").map_err(read())?,
        last_error: row.try_get("last_error").map_err(read())?,
        address: row.try_get("address").map_err(read())?,
        created_at: row.try_get("created_at").map_err(read())?,
        sent_at: row.try_get("sent_at").map_err(read())?,
    })
}
