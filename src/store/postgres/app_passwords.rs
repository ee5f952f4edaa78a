//! App passwords in the PostgreSQL store.

use super::*;
use crate::app_password::limits;
use crate::model::AppPasswordLimits;

impl AppPasswordStore for PgStore {
    fn create_app_password<'a>(&'a self, new: &'a NewAppPassword) -> StoreFuture<'a, AppPassword> {
        Box::pin(async move {
            let now = self.clock.now_ms();
            let mut tx = self.write_tx().await?;
            let user = live_user_by_id(&mut tx, new.user_id).await?;
            let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM app_passwords WHERE user_id = $1")
                .bind(user.id.0)
                .fetch_one(&mut *tx)
                .await
                .map_err(db("count app passwords"))?;
            if count >= MAX_APP_PASSWORDS_PER_USER as i64 {
                return Err(StoreError::TooManyAppPasswords { upn: user.upn });
            }
            let taken: Option<String> =
                sqlx::query_scalar("SELECT name FROM app_passwords WHERE user_id = $1 AND lower(name COLLATE \"C\") = lower($2 COLLATE \"C\")")
                    .bind(user.id.0)
                    .bind(new.name.as_str())
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(db("look up an app password"))?;
            if let Some(name) = taken {
                return Err(StoreError::DuplicateAppPasswordName { upn: user.upn, name });
            }
            let inserted: Result<i64, _> = sqlx::query_scalar(
                "INSERT INTO app_passwords (user_id, name, tag, hash, created_at, scope, expires_at, networks)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
            )
            .bind(user.id.0)
            .bind(new.name.as_str())
            .bind(&new.tag[..])
            .bind(&new.hash)
            .bind(now)
            .bind(limits::list_to_text(&new.limits.scope))
            .bind(new.limits.expires_at)
            .bind(limits::list_to_text(&new.limits.networks))
            .fetch_one(&mut *tx)
            .await;
            let id = match inserted {
                Ok(id) => AppPasswordId(id),
                // The name was checked above under the write lock, so the
                // only unique key left to collide is the tag.
                Err(sqlx::Error::Database(e)) if e.is_unique_violation() => return Err(StoreError::TagCollision),
                Err(e) => return Err(db("create an app password")(e)),
            };
            record_change(&mut tx, now, ChangeKind::AppPasswordCreated, Some(user.id)).await?;
            let row = sqlx::query(&format!(
                "SELECT {APP_PASSWORD_COLUMNS} FROM app_passwords WHERE id = $1"
            ))
            .bind(id.0)
            .fetch_one(&mut *tx)
            .await
            .map_err(db("read back an app password"))?;
            let created = app_password_from_row(&row)?;
            commit(tx).await?;
            Ok(created)
        })
    }

    fn list_app_passwords(&self, user: UserId) -> StoreFuture<'_, Vec<AppPassword>> {
        Box::pin(async move {
            let rows = sqlx::query(&format!(
                "SELECT {APP_PASSWORD_COLUMNS} FROM app_passwords WHERE user_id = $1
                 ORDER BY created_at, id"
            ))
            .bind(user.0)
            .fetch_all(self.live_pool()?)
            .await
            .map_err(db("list app passwords"))?;
            rows.iter().map(app_password_from_row).collect()
        })
    }

    fn narrow_app_password<'a>(
        &'a self,
        user: UserId,
        name: &'a str,
        limits: &'a AppPasswordLimits,
    ) -> StoreFuture<'a, AppPassword> {
        Box::pin(async move {
            let now = self.clock.now_ms();
            let mut tx = self.write_tx().await?;
            let owner = user_by_id(&mut tx, user)
                .await?
                .ok_or(StoreError::UnknownUserId { id: user })?;
            let row = sqlx::query(&format!("SELECT {APP_PASSWORD_COLUMNS} FROM app_passwords WHERE user_id = $1 AND lower(name COLLATE \"C\") = lower($2 COLLATE \"C\")"))
                .bind(user.0)
                .bind(name.trim())
                .fetch_optional(&mut *tx)
                .await
                .map_err(db("look up an app password"))?;
            let Some(row) = row else {
                return Err(StoreError::UnknownAppPassword {
                    upn: owner.upn,
                    name: audit_text(name.trim(), MAX_APP_PASSWORD_NAME_CHARS),
                });
            };
            let current = app_password_from_row(&row)?;
            limits::narrows(&current.limits, limits).map_err(|error| StoreError::LimitsWidened {
                upn: owner.upn.clone(),
                name: current.name.clone(),
                error,
            })?;
            sqlx::query("UPDATE app_passwords SET scope = $1, expires_at = $2, networks = $3 WHERE id = $4")
                .bind(limits::list_to_text(&limits.scope))
                .bind(limits.expires_at)
                .bind(limits::list_to_text(&limits.networks))
                .bind(current.id.0)
                .execute(&mut *tx)
                .await
                .map_err(db("narrow an app password"))?;
            record_change(&mut tx, now, ChangeKind::AppPasswordNarrowed, Some(user)).await?;
            commit(tx).await?;
            Ok(AppPassword {
                limits: limits.clone(),
                ..current
            })
        })
    }

    fn delete_app_password<'a>(&'a self, user: UserId, name: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let now = self.clock.now_ms();
            let mut tx = self.write_tx().await?;
            let owner = user_by_id(&mut tx, user)
                .await?
                .ok_or(StoreError::UnknownUserId { id: user })?;
            let done = sqlx::query(
                "DELETE FROM app_passwords WHERE user_id = $1 AND lower(name COLLATE \"C\") = lower($2 COLLATE \"C\")",
            )
            .bind(user.0)
            .bind(name.trim())
            .execute(&mut *tx)
            .await
            .map_err(db("delete an app password"))?;
            if done.rows_affected() == 0 {
                return Err(StoreError::UnknownAppPassword {
                    upn: owner.upn,
                    name: audit_text(name.trim(), MAX_APP_PASSWORD_NAME_CHARS),
                });
            }
            record_change(&mut tx, now, ChangeKind::AppPasswordDeleted, Some(user)).await?;
            commit(tx).await
        })
    }

    fn revoke_app_passwords(&self, user: UserId) -> StoreFuture<'_, u64> {
        Box::pin(async move {
            let now = self.clock.now_ms();
            let mut tx = self.write_tx().await?;
            if user_by_id(&mut tx, user).await?.is_none() {
                return Err(StoreError::UnknownUserId { id: user });
            }
            let revoked = sqlx::query("DELETE FROM app_passwords WHERE user_id = $1")
                .bind(user.0)
                .execute(&mut *tx)
                .await
                .map_err(db("revoke app passwords"))?
                .rows_affected();
            if revoked > 0 {
                record_change(&mut tx, now, ChangeKind::AppPasswordsRevoked, Some(user)).await?;
            }
            commit(tx).await?;
            Ok(revoked)
        })
    }

    fn load_all_secrets(&self) -> StoreFuture<'_, Vec<AppPasswordSecretRecord>> {
        Box::pin(async move {
            let rows = sqlx::query(&format!("SELECT {SECRET_COLUMNS} FROM app_passwords ORDER BY id"))
                .fetch_all(self.live_pool()?)
                .await
                .map_err(db("load app-password tags"))?;
            rows.iter().map(secret_from_row).collect()
        })
    }

    fn load_user_secrets(&self, user: UserId) -> StoreFuture<'_, Vec<AppPasswordSecretRecord>> {
        Box::pin(async move {
            let rows = sqlx::query(&format!(
                "SELECT {SECRET_COLUMNS} FROM app_passwords WHERE user_id = $1 ORDER BY id"
            ))
            .bind(user.0)
            .fetch_all(self.live_pool()?)
            .await
            .map_err(db("load a user's app-password tags"))?;
            rows.iter().map(secret_from_row).collect()
        })
    }

    fn record_last_used<'a>(&'a self, uses: &'a [LastUsed]) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            if uses.is_empty() {
                return Ok(());
            }
            let mut tx = self.plain_tx().await?;
            for used in uses {
                sqlx::query(
                    "UPDATE app_passwords
                     SET last_used_at = $1, last_ip = $2, last_user_agent = $3
                     WHERE id = $4 AND (last_used_at IS NULL OR last_used_at < $5)",
                )
                .bind(used.at)
                .bind(audit_text(&used.ip, MAX_AUDIT_IP_CHARS))
                .bind(audit_text(&used.user_agent, MAX_AUDIT_USER_AGENT_CHARS))
                .bind(used.id.0)
                .bind(used.at)
                .execute(&mut *tx)
                .await
                .map_err(db("record app-password use"))?;
            }
            commit(tx).await
        })
    }
}

const APP_PASSWORD_COLUMNS: &str =
    "id, user_id, name, created_at, last_used_at, last_ip, last_user_agent, scope, expires_at, networks";

const SECRET_COLUMNS: &str = "id, user_id, name, tag, hash, scope, expires_at, networks";
