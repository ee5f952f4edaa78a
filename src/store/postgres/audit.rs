//! The sign-in log in the PostgreSQL store.

use super::*;

impl AuditStore for PgStore {
    fn append_audit<'a>(&'a self, records: &'a [AuditRecord]) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            if records.is_empty() {
                return Ok(());
            }
            let mut tx = self.plain_tx().await?;
            for record in records {
                let record = record.clone().clamped();
                sqlx::query(&format!(
                    "INSERT INTO audit ({AUDIT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
                ))
                .bind(record.at)
                .bind(&record.upn_given)
                .bind(record.user_id.map(|id| id.0))
                .bind(&record.route)
                .bind(record.credential.as_str())
                .bind(&record.app_password_name)
                .bind(&record.client_ip)
                .bind(&record.user_agent)
                .bind(record.success)
                .bind(record.reason.as_str())
                .bind(i64::from(record.count.max(1)))
                .execute(&mut *tx)
                .await
                .map_err(db("append to the audit log"))?;
            }
            commit(tx).await
        })
    }

    fn query_audit<'a>(&'a self, filter: &'a AuditFilter) -> StoreFuture<'a, Vec<AuditRecord>> {
        Box::pin(async move {
            let mut query = QueryBuilder::<Postgres>::new(format!("SELECT {AUDIT_COLUMNS} FROM audit WHERE TRUE"));
            if let Some(upn) = &filter.user {
                query
                    .push(" AND (user_id = (SELECT id FROM users WHERE upn = ")
                    .push_bind(upn.as_str())
                    .push(") OR lower(upn_given COLLATE \"C\") = lower(")
                    .push_bind(upn.as_str())
                    .push(" COLLATE \"C\"))");
            }
            if let Some(since) = filter.since {
                query.push(" AND at >= ").push_bind(since);
            }
            if let Some(success) = filter.success {
                query.push(" AND success = ").push_bind(success);
            }
            query
                .push(" ORDER BY at DESC, id DESC LIMIT ")
                .push_bind(i64::from(filter.limit));
            let rows = query
                .build()
                .fetch_all(self.live_pool()?)
                .await
                .map_err(db("query the audit log"))?;
            rows.iter().map(audit_from_row).collect()
        })
    }
}

const AUDIT_COLUMNS: &str = "at, upn_given, user_id, route, credential, app_password_name, \
                             client_ip, user_agent, success, reason, count";

fn audit_from_row(row: &PgRow) -> Result<AuditRecord, StoreError> {
    let read = || db("read the audit log");
    let credential: String = row.try_get("credential").map_err(read())?;
    let reason: String = row.try_get("reason").map_err(read())?;
    let user_id: Option<i64> = row.try_get("user_id").map_err(read())?;
    Ok(AuditRecord {
        at: row.try_get("at").map_err(read())?,
        upn_given: row.try_get("upn_given").map_err(read())?,
        user_id: user_id.map(UserId),
        route: row.try_get("route").map_err(read())?,
        credential: credential
            .parse::<CredentialKind>()
            .map_err(|e| corrupt(format!("audit record: {e}")))?,
        app_password_name: row.try_get("app_password_name").map_err(read())?,
        client_ip: row.try_get("client_ip").map_err(read())?,
        user_agent: row.try_get("user_agent").map_err(read())?,
        success: row.try_get("success").map_err(read())?,
        reason: reason
            .parse::<Reason>()
            .map_err(|e| corrupt(format!("audit record: {e}")))?,
        count: u32::try_from(row.try_get::<i64, _>("count").map_err(read())?).unwrap_or(u32::MAX),
    })
}
