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
                .bind(record.reason_text().into_owned())
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
