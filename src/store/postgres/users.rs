//! Users in the PostgreSQL store.

use super::*;
use crate::store::rules::{self, UpsertPlan};

impl UserStore for PgStore {
    fn create_cloud_user<'a>(
        &'a self,
        upn: &'a Upn,
        state: MfaState,
        password_hash: Option<&'a str>,
    ) -> StoreFuture<'a, User> {
        Box::pin(async move {
            let now = self.clock.now_ms();
            let mut tx = self.write_tx().await?;
            let id = insert_cloud_user(&mut tx, upn, state, password_hash, now).await?;
            let user = reread(&mut tx, id).await?;
            commit(tx).await?;
            Ok(user)
        })
    }

    fn upsert_federated_user<'a>(&'a self, new: &'a FederatedUser) -> StoreFuture<'a, Upserted> {
        Box::pin(async move {
            let now = self.clock.now_ms();
            let mut tx = self.write_tx().await?;
            let (id, outcome, kind) = upsert_in(&mut tx, new, now).await?;
            if let Some(kind) = kind {
                record_change(&mut tx, now, kind, Some(id)).await?;
            }
            let user = reread(&mut tx, id).await?;
            commit(tx).await?;
            Ok(Upserted { user, outcome })
        })
    }

    fn get_user_by_upn<'a>(&'a self, upn: &'a Upn) -> StoreFuture<'a, Option<User>> {
        Box::pin(async move {
            let mut conn = self.live_pool()?.acquire().await.map_err(db("connect"))?;
            user_by_upn(&mut conn, upn).await
        })
    }

    fn get_user(&self, id: UserId) -> StoreFuture<'_, Option<User>> {
        Box::pin(async move {
            let mut conn = self.live_pool()?.acquire().await.map_err(db("connect"))?;
            user_by_id(&mut conn, id).await
        })
    }

    fn list_users(&self, state: Option<MfaState>) -> StoreFuture<'_, Vec<User>> {
        Box::pin(async move {
            let mut query =
                QueryBuilder::<Postgres>::new(format!("SELECT {USER_COLUMNS} FROM users WHERE deleted = FALSE"));
            if let Some(state) = state {
                query.push(" AND mfa_state = ").push_bind(state.as_str());
            }
            query.push(" ORDER BY upn");
            let rows = query
                .build()
                .fetch_all(self.live_pool()?)
                .await
                .map_err(db("list users"))?;
            rows.iter().map(user_from_row).collect()
        })
    }

    fn load_all_users(&self) -> StoreFuture<'_, Vec<User>> {
        Box::pin(async move {
            // Row by row: 100,000 rows held at once as well as the users
            // made from them would double what a sync pass needs.
            let query = format!("SELECT {USER_COLUMNS} FROM users ORDER BY id");
            let mut rows = sqlx::query(&query).fetch(self.live_pool()?);
            let mut users = Vec::new();
            while let Some(row) = rows.try_next().await.map_err(db("load all users"))? {
                users.push(user_from_row(&row)?);
            }
            Ok(users)
        })
    }

    fn set_mfa_state<'a>(&'a self, upn: &'a Upn, state: MfaState) -> StoreFuture<'a, User> {
        Box::pin(async move {
            let now = self.clock.now_ms();
            let mut tx = self.write_tx().await?;
            let user = live_user(&mut tx, upn).await?;
            if user.mfa_state == state {
                return Ok(user);
            }
            update_mfa_state(&mut tx, user.id, state, now).await?;
            let user = reread(&mut tx, user.id).await?;
            commit(tx).await?;
            Ok(user)
        })
    }

    fn set_mfa_states<'a>(&'a self, lines: &'a [StateLine]) -> StoreFuture<'a, BulkApplied> {
        Box::pin(async move {
            let now = self.clock.now_ms();
            // The write lock is held from validation to commit, so no user
            // can be deleted between being found and being changed.
            let mut tx = self.write_tx().await?;
            let mut found = std::collections::HashMap::new();
            for upn in rules::state_line_upns(lines) {
                if let Some(user) = user_by_upn(&mut tx, &upn).await? {
                    found.insert(upn, user);
                }
            }
            // Dropping the transaction on a refusal rolls it back: nothing
            // was written.
            let accepted = rules::plan_state_lines(lines, &found)?;
            let mut applied = BulkApplied {
                changed: 0,
                unchanged: 0,
            };
            for (user, state) in accepted {
                if user.mfa_state == state {
                    applied.unchanged += 1;
                } else {
                    update_mfa_state(&mut tx, user.id, state, now).await?;
                    applied.changed += 1;
                }
            }
            commit(tx).await?;
            Ok(applied)
        })
    }

    fn create_cloud_users<'a>(&'a self, lines: &'a [StateLine]) -> StoreFuture<'a, Vec<User>> {
        Box::pin(async move {
            let now = self.clock.now_ms();
            // One transaction from validation to commit: every user or none.
            let mut tx = self.write_tx().await?;
            let mut found = std::collections::HashMap::new();
            for upn in rules::state_line_upns(lines) {
                if let Some(user) = user_by_upn(&mut tx, &upn).await? {
                    found.insert(upn, user);
                }
            }
            let accepted = rules::plan_import_lines(lines, &found)?;
            let mut created = Vec::with_capacity(accepted.len());
            for (upn, state) in accepted {
                let id = insert_cloud_user(&mut tx, &upn, state, None, now).await?;
                created.push(reread(&mut tx, id).await?);
            }
            commit(tx).await?;
            Ok(created)
        })
    }

    fn set_enabled<'a>(&'a self, upn: &'a Upn, enabled: bool) -> StoreFuture<'a, User> {
        Box::pin(async move {
            let now = self.clock.now_ms();
            let mut tx = self.write_tx().await?;
            let user = live_user(&mut tx, upn).await?;
            if user.operator_enabled == enabled {
                return Ok(user);
            }
            sqlx::query("UPDATE users SET enabled = $1, updated_at = $2 WHERE id = $3")
                .bind(enabled)
                .bind(now)
                .bind(user.id.0)
                .execute(&mut *tx)
                .await
                .map_err(db("enable or disable a user"))?;
            let kind = if enabled {
                ChangeKind::UserEnabled
            } else {
                ChangeKind::UserDisabled
            };
            finish_user_change(tx, now, kind, user.id).await
        })
    }

    fn set_password_hash<'a>(&'a self, upn: &'a Upn, password_hash: Option<&'a str>) -> StoreFuture<'a, User> {
        Box::pin(async move {
            let now = self.clock.now_ms();
            let mut tx = self.write_tx().await?;
            let user = live_user(&mut tx, upn).await?;
            if user.source != UserSource::Cloud {
                return Err(StoreError::NotCloudUser { upn: upn.clone() });
            }
            sqlx::query("UPDATE users SET password_hash = $1, updated_at = $2 WHERE id = $3")
                .bind(password_hash)
                .bind(now)
                .bind(user.id.0)
                .execute(&mut *tx)
                .await
                .map_err(db("set a user's password"))?;
            finish_user_change(tx, now, ChangeKind::PasswordChanged, user.id).await
        })
    }

    fn mark_deleted<'a>(&'a self, upn: &'a Upn) -> StoreFuture<'a, User> {
        Box::pin(async move {
            let now = self.clock.now_ms();
            let mut tx = self.write_tx().await?;
            let user = match user_by_upn(&mut tx, upn).await? {
                None => return Err(StoreError::UnknownUser { upn: upn.clone() }),
                // Sync may report a deletion more than once.
                Some(user) if user.deleted => return Ok(user),
                Some(user) => user,
            };
            sqlx::query(
                "UPDATE users SET deleted = TRUE, password_hash = NULL, registered_at = NULL,
                     totp_secret = NULL, totp_last_step = NULL, updated_at = $1
                 WHERE id = $2",
            )
            .bind(now)
            .bind(user.id.0)
            .execute(&mut *tx)
            .await
            .map_err(db("delete a user"))?;
            sqlx::query("DELETE FROM app_passwords WHERE user_id = $1")
                .bind(user.id.0)
                .execute(&mut *tx)
                .await
                .map_err(db("delete a deleted user's app passwords"))?;
            record_state(&mut tx, user.id, user.mfa_state, true, now).await?;
            finish_user_change(tx, now, ChangeKind::UserDeleted, user.id).await
        })
    }

    fn require_registration<'a>(&'a self, upn: &'a Upn) -> StoreFuture<'a, User> {
        Box::pin(async move {
            let now = self.clock.now_ms();
            let mut tx = self.write_tx().await?;
            let user = live_user(&mut tx, upn).await?;
            // The old second factor goes too: registering again must mean a
            // new secret, not the one that may have leaked.
            clear_second_factor(&mut tx, user.id, now, "require registration").await?;
            finish_user_change(tx, now, ChangeKind::RegistrationRequired, user.id).await
        })
    }

    fn set_registered_at<'a>(&'a self, upn: &'a Upn, at: i64) -> StoreFuture<'a, User> {
        Box::pin(async move {
            let now = self.clock.now_ms();
            let mut tx = self.write_tx().await?;
            let user = live_user(&mut tx, upn).await?;
            sqlx::query("UPDATE users SET registered_at = $1, updated_at = $2 WHERE id = $3")
                .bind(at)
                .bind(now)
                .bind(user.id.0)
                .execute(&mut *tx)
                .await
                .map_err(db("record a registration"))?;
            finish_user_change(tx, now, ChangeKind::Registered, user.id).await
        })
    }
}

async fn update_mfa_state(conn: &mut PgConnection, user: UserId, state: MfaState, now: i64) -> Result<(), StoreError> {
    sqlx::query("UPDATE users SET mfa_state = $1, updated_at = $2 WHERE id = $3")
        .bind(state.as_str())
        .bind(now)
        .bind(user.0)
        .execute(&mut *conn)
        .await
        .map_err(db("change a user's MFA state"))?;
    record_state(&mut *conn, user, state, false, now).await?;
    record_change(conn, now, ChangeKind::MfaStateChanged, Some(user)).await
}

type PgQuery<'q> = sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>;

/// Binds a user's directory attributes, in the order both the insert and
/// the update of [`upsert_in`] list them first: dn, login, anchor,
/// display_name, mail, groups, password_changed.
fn bind_directory<'q>(query: PgQuery<'q>, attrs: &'q DirectoryAttributes) -> PgQuery<'q> {
    let groups = (!attrs.groups.is_empty()).then(|| attrs.groups.join("\n"));
    query
        .bind(&attrs.dn)
        .bind(&attrs.login)
        .bind(&attrs.anchor)
        .bind(&attrs.display_name)
        .bind(&attrs.mail)
        .bind(groups)
        .bind(&attrs.password_changed)
}

/// Creates or updates one directory user inside `tx`; returns what happened
/// and the change-feed entry to write (none when nothing changed).
pub(super) async fn upsert_in(
    tx: &mut PgConnection,
    new: &FederatedUser,
    now: i64,
) -> Result<(UserId, UpsertOutcome, Option<ChangeKind>), StoreError> {
    let attrs = &new.attributes;
    let by_anchor = match &attrs.anchor {
        Some(anchor) => user_by_anchor(tx, anchor).await?,
        None => None,
    };
    let by_upn = user_by_upn(tx, &new.upn).await?;
    // A deleted user coming back is a change of existence for the history.
    let returning: Vec<(UserId, MfaState)> = [&by_anchor, &by_upn]
        .into_iter()
        .flatten()
        .filter(|user| user.deleted)
        .map(|user| (user.id, user.mfa_state))
        .collect();
    match rules::plan_upsert(by_anchor, by_upn, new)? {
        UpsertPlan::Insert => {
            let insert = sqlx::query(
                "INSERT INTO users (dn, login, anchor, display_name, mail, groups, password_changed,
                                    upn, source, directory_enabled, created_at, updated_at, directory_seen_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'federated', $9, $10, $11, $12)
                 RETURNING id",
            );
            let row = bind_directory(insert, attrs)
                .bind(new.upn.as_str())
                .bind(new.enabled)
                .bind(now)
                .bind(now)
                .bind(now)
                .fetch_one(&mut *tx)
                .await
                .map_err(db("create a user"))?;
            let id = UserId(row.try_get(0).map_err(db("read a new user's id"))?);
            record_state(&mut *tx, id, MfaState::default(), false, now).await?;
            Ok((id, UpsertOutcome::Created, Some(ChangeKind::UserCreated)))
        }
        UpsertPlan::Unchanged(id) => Ok((id, UpsertOutcome::Unchanged, None)),
        UpsertPlan::Update { id, kind } => {
            let update = sqlx::query(
                "UPDATE users SET dn = $1, login = $2, anchor = COALESCE($3, anchor), display_name = $4,
                     mail = $5, groups = $6, password_changed = $7,
                     upn = $8, source = 'federated', directory_enabled = $9, deleted = FALSE,
                     registered_at = CASE WHEN deleted = TRUE THEN NULL ELSE registered_at END,
                     totp_secret = CASE WHEN deleted = TRUE THEN NULL ELSE totp_secret END,
                     totp_last_step = CASE WHEN deleted = TRUE THEN NULL ELSE totp_last_step END,
                     password_hash = NULL, directory_seen_at = $10, updated_at = $11
                 WHERE id = $12",
            );
            bind_directory(update, attrs)
                .bind(new.upn.as_str())
                .bind(new.enabled)
                .bind(now)
                .bind(now)
                .bind(id.0)
                .execute(&mut *tx)
                .await
                .map_err(db("update a user from the directory"))?;
            if let Some((_, state)) = returning.iter().find(|(returned, _)| *returned == id) {
                record_state(&mut *tx, id, *state, false, now).await?;
            }
            Ok((id, UpsertOutcome::Updated, Some(kind)))
        }
    }
}

async fn user_by_anchor(conn: &mut PgConnection, anchor: &str) -> Result<Option<User>, StoreError> {
    let row = sqlx::query(&format!("SELECT {USER_COLUMNS} FROM users WHERE anchor = $1"))
        .bind(anchor)
        .fetch_optional(conn)
        .await
        .map_err(db("look up a user by directory anchor"))?;
    row.as_ref().map(user_from_row).transpose()
}

/// Inserts one cloud-only user (or brings back a deleted one of that UPN)
/// and writes its change-feed row, inside the caller's transaction: the one
/// place a cloud user is created, alone or in bulk.
async fn insert_cloud_user(
    tx: &mut PgConnection,
    upn: &Upn,
    state: MfaState,
    password_hash: Option<&str>,
    now: i64,
) -> Result<UserId, StoreError> {
    let id = match user_by_upn(tx, upn).await? {
        Some(user) if !user.deleted => return Err(StoreError::UserExists { upn: upn.clone() }),
        Some(user) => {
            sqlx::query(
                "UPDATE users SET source = 'cloud', enabled = TRUE, directory_enabled = TRUE, deleted = FALSE,
                     mfa_state = $1, registered_at = NULL, totp_secret = NULL,
                     totp_last_step = NULL, created_at = $2,
                     updated_at = $3, password_hash = $4
                 WHERE id = $5",
            )
            .bind(state.as_str())
            .bind(now)
            .bind(now)
            .bind(password_hash)
            .bind(user.id.0)
            .execute(&mut *tx)
            .await
            .map_err(db("bring back a deleted user"))?;
            // Deleting a user deleted these already; a row written by
            // an older version must not bring devices back either.
            sqlx::query("DELETE FROM app_passwords WHERE user_id = $1")
                .bind(user.id.0)
                .execute(&mut *tx)
                .await
                .map_err(db("delete a returning user's old app passwords"))?;
            user.id
        }
        None => {
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO users (upn, source, mfa_state, created_at, updated_at,
                     password_hash)
                 VALUES ($1, 'cloud', $2, $3, $4, $5) RETURNING id",
            )
            .bind(upn.as_str())
            .bind(state.as_str())
            .bind(now)
            .bind(now)
            .bind(password_hash)
            .fetch_one(&mut *tx)
            .await
            .map_err(db("create a user"))?;
            UserId(id)
        }
    };
    record_state(&mut *tx, id, state, false, now).await?;
    record_change(tx, now, ChangeKind::UserCreated, Some(id)).await?;
    Ok(id)
}
