//! The second factor in the PostgreSQL store.

use super::*;

impl TotpStore for PgStore {
    fn set_totp<'a>(&'a self, user: UserId, totp: Option<&'a NewTotp>) -> StoreFuture<'a, User> {
        Box::pin(async move {
            let now = self.clock.now_ms();
            let confirmed_step = totp.map(|t| step_value(t.confirmed_step)).transpose()?;
            let mut tx = self.write_tx().await?;
            let user = live_user_by_id(&mut tx, user).await?;
            let kind = match totp {
                Some(totp) => {
                    sqlx::query(
                        "UPDATE users SET totp_secret = $1, totp_last_step = $2, registered_at = $3,
                             updated_at = $4
                         WHERE id = $5",
                    )
                    .bind(&totp.sealed_secret)
                    .bind(confirmed_step)
                    .bind(now)
                    .bind(now)
                    .bind(user.id.0)
                    .execute(&mut *tx)
                    .await
                    .map_err(db("register a TOTP secret"))?;
                    ChangeKind::TotpRegistered
                }
                None => {
                    clear_second_factor(&mut tx, user.id, now, "remove a TOTP secret").await?;
                    ChangeKind::TotpRemoved
                }
            };
            finish_user_change(tx, now, kind, user.id).await
        })
    }

    fn totp(&self, user: UserId) -> StoreFuture<'_, Option<StoredTotp>> {
        Box::pin(async move {
            let row: Option<(Option<Vec<u8>>, Option<i64>, bool)> =
                sqlx::query_as("SELECT totp_secret, totp_last_step, deleted FROM users WHERE id = $1")
                    .bind(user.0)
                    .fetch_optional(self.live_pool()?)
                    .await
                    .map_err(db("read a user's TOTP secret"))?;
            match row {
                None => Err(StoreError::UnknownUserId { id: user }),
                Some((Some(sealed_secret), last_step, false)) => Ok(Some(StoredTotp {
                    sealed_secret,
                    last_step: last_step
                        .map(|step| {
                            u64::try_from(step)
                                .map_err(|_| corrupt(format!("user {user} has a negative TOTP step {step}")))
                        })
                        .transpose()?,
                })),
                Some(_) => Ok(None),
            }
        })
    }

    fn totp_blocked_until(&self, user: UserId) -> StoreFuture<'_, Option<i64>> {
        Box::pin(async move {
            sqlx::query_scalar("SELECT totp_blocked_until FROM users WHERE id = $1")
                .bind(user.0)
                .fetch_optional(self.live_pool()?)
                .await
                .map_err(db("read second-factor failures"))
                .map(Option::flatten)
        })
    }

    fn note_totp_result<'a>(
        &'a self,
        user: UserId,
        accepted: bool,
        limit: &'a TotpLimit,
    ) -> StoreFuture<'a, Option<i64>> {
        Box::pin(async move {
            let now = self.clock.now_ms();
            let mut tx = self.plain_tx().await?;
            if accepted {
                sqlx::query("UPDATE users SET totp_failures = 0, totp_blocked_until = NULL WHERE id = $1")
                    .bind(user.0)
                    .execute(&mut *tx)
                    .await
                    .map_err(db("reset second-factor failures"))?;
                commit(tx).await?;
                return Ok(None);
            }
            let failures: i64 = sqlx::query_scalar(
                "UPDATE users SET totp_failures = totp_failures + 1 WHERE id = $1 RETURNING totp_failures",
            )
            .bind(user.0)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db("count a second-factor failure"))?
            .unwrap_or(0);
            let blocked = if failures >= i64::from(limit.max_failures) {
                let until = now + limit.block_ms;
                sqlx::query("UPDATE users SET totp_failures = 0, totp_blocked_until = $1 WHERE id = $2")
                    .bind(until)
                    .bind(user.0)
                    .execute(&mut *tx)
                    .await
                    .map_err(db("block second-factor codes"))?;
                Some(until)
            } else {
                None
            };
            commit(tx).await?;
            Ok(blocked)
        })
    }

    fn use_totp_step(&self, user: UserId, step: u64) -> StoreFuture<'_, bool> {
        Box::pin(async move {
            let step = step_value(step)?;
            let mut tx = self.plain_tx().await?;
            // One statement is the compare-and-set: whichever writer gets
            // the lock first moves the step, and the other's condition is
            // then false.
            let done = sqlx::query(
                "UPDATE users SET totp_last_step = $1
                 WHERE id = $2 AND deleted = FALSE AND totp_secret IS NOT NULL
                     AND (totp_last_step IS NULL OR totp_last_step < $3)",
            )
            .bind(step)
            .bind(user.0)
            .bind(step)
            .execute(&mut *tx)
            .await
            .map_err(db("record a used TOTP step"))?;
            commit(tx).await?;
            Ok(done.rows_affected() == 1)
        })
    }
}

/// A TOTP step as PostgreSQL stores it (a signed 64-bit integer).
fn step_value(step: u64) -> Result<i64, StoreError> {
    i64::try_from(step).map_err(|_| StoreError::TotpStepOutOfRange { step })
}
