//! Directory sync state and the sync lease in the SQLite store.

use super::*;

impl SyncStore for SqliteStore {
    fn users_matching<'a>(&'a self, anchors: &'a [&'a str], upns: &'a [&'a str]) -> StoreFuture<'a, Vec<User>> {
        Box::pin(async move {
            // SQLite allows 32766 parameters a statement; stay well under.
            const CHUNK: usize = 500;
            let mut users: Vec<User> = Vec::new();
            let mut ids = std::collections::HashSet::new();
            let mut conn = self.live_pool()?.acquire().await.map_err(db("connect"))?;
            for (column, values) in [("anchor", anchors), ("upn", upns)] {
                for chunk in values.chunks(CHUNK) {
                    let mut query =
                        QueryBuilder::<Sqlite>::new(format!("SELECT {USER_COLUMNS} FROM users WHERE {column} IN ("));
                    let mut list = query.separated(", ");
                    for value in chunk {
                        list.push_bind(*value);
                    }
                    query.push(")");
                    let rows = query
                        .build()
                        .fetch_all(&mut *conn)
                        .await
                        .map_err(db("look up users for a sync pass"))?;
                    for row in &rows {
                        let user = user_from_row(row)?;
                        if ids.insert(user.id) {
                            users.push(user);
                        }
                    }
                }
            }
            Ok(users)
        })
    }

    fn count_synced_users(&self) -> StoreFuture<'_, usize> {
        Box::pin(async move {
            let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users WHERE source = 'federated' AND deleted = 0")
                .fetch_one(self.live_pool()?)
                .await
                .map_err(db("count synced users"))?;
            Ok(usize::try_from(n).unwrap_or(0))
        })
    }

    fn apply_directory_changes<'a>(&'a self, changes: &'a [DirectoryChange]) -> StoreFuture<'a, AppliedChanges> {
        Box::pin(async move {
            let mut applied = AppliedChanges::default();
            for batch in changes.chunks(SYNC_BATCH) {
                let now = self.clock.now_ms();
                let mut tx = self.write_tx().await?;
                for change in batch {
                    match change {
                        DirectoryChange::Upsert {
                            user,
                            revoke_app_passwords,
                        } => {
                            let (id, _, kind) = match upsert_in(&mut tx, user, now).await {
                                Ok(done) => done,
                                Err(err @ (StoreError::SourceConflict { .. } | StoreError::UpnTaken { .. })) => {
                                    tracing::warn!(error = %err, dn = %user.attributes.dn, "directory user not synced");
                                    applied.errors += 1;
                                    continue;
                                }
                                Err(err) => return Err(err),
                            };
                            if let Some(kind) = kind {
                                match kind {
                                    ChangeKind::UserCreated => applied.created += 1,
                                    ChangeKind::UserEnabled => applied.enabled += 1,
                                    ChangeKind::UserDisabled => applied.disabled += 1,
                                    _ => applied.updated += 1,
                                }
                                record_change(&mut tx, now, kind, Some(id)).await?;
                            }
                            if *revoke_app_passwords {
                                let done = sqlx::query("DELETE FROM app_passwords WHERE user_id = ?")
                                    .bind(id.0)
                                    .execute(&mut *tx)
                                    .await
                                    .map_err(db("revoke app passwords after a password change"))?;
                                if done.rows_affected() > 0 {
                                    applied.revoked += 1;
                                    record_change(&mut tx, now, ChangeKind::AppPasswordsRevoked, Some(id)).await?;
                                }
                            }
                        }
                        DirectoryChange::Delete { id } => {
                            let state: Option<String> = sqlx::query_scalar(
                                "UPDATE users SET deleted = 1, password_hash = NULL, registered_at = NULL,
                                     totp_secret = NULL, totp_last_step = NULL, updated_at = ?
                                 WHERE id = ? AND deleted = 0 AND source = 'federated'
                                 RETURNING mfa_state",
                            )
                            .bind(now)
                            .bind(id.0)
                            .fetch_optional(&mut *tx)
                            .await
                            .map_err(db("delete a user gone from the directory"))?;
                            let Some(state) = state else {
                                continue;
                            };
                            let state: MfaState = state.parse().map_err(|e| corrupt(format!("user {id}: {e}")))?;
                            record_state(&mut tx, *id, state, true, now).await?;
                            sqlx::query("DELETE FROM app_passwords WHERE user_id = ?")
                                .bind(id.0)
                                .execute(&mut *tx)
                                .await
                                .map_err(db("delete a deleted user's app passwords"))?;
                            record_change(&mut tx, now, ChangeKind::UserDeleted, Some(*id)).await?;
                            applied.deleted += 1;
                        }
                    }
                }
                commit(tx).await?;
                self.changed.notify_one();
            }
            Ok(applied)
        })
    }

    fn record_sync_pass<'a>(&'a self, pass: &'a SyncPass, mark: Option<&'a SyncMark>) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let mut tx = self.write_tx().await?;
            sqlx::query(
                "INSERT INTO sync_passes (kind, outcome, started_at, duration_ms, seen, created, updated,
                                          disabled, enabled, deleted, errors, server, message)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(&pass.kind)
            .bind(&pass.outcome)
            .bind(pass.started_at)
            .bind(pass.duration_ms)
            .bind(pass.seen)
            .bind(pass.created)
            .bind(pass.updated)
            .bind(pass.disabled)
            .bind(pass.enabled)
            .bind(pass.deleted)
            .bind(pass.errors)
            .bind(&pass.server)
            .bind(&pass.message)
            .execute(&mut *tx)
            .await
            .map_err(db("record a sync pass"))?;
            sqlx::query(
                "DELETE FROM sync_passes WHERE kind = ? AND id NOT IN
                     (SELECT id FROM sync_passes WHERE kind = ? ORDER BY id DESC LIMIT ?)",
            )
            .bind(&pass.kind)
            .bind(&pass.kind)
            .bind(SYNC_PASSES_KEPT)
            .execute(&mut *tx)
            .await
            .map_err(db("prune old sync passes"))?;
            if let Some(mark) = mark {
                sqlx::query("UPDATE sync_state SET mark = ?, mark_server = ? WHERE id = 1")
                    .bind(&mark.value)
                    .bind(&mark.server)
                    .execute(&mut *tx)
                    .await
                    .map_err(db("move the sync mark"))?;
            }
            commit(tx).await
        })
    }

    fn last_sync_passes(&self) -> StoreFuture<'_, (Option<SyncPass>, Option<SyncPass>)> {
        Box::pin(async move {
            let mut conn = self.live_pool()?.acquire().await.map_err(db("connect"))?;
            let last = |kind: &'static str| {
                sqlx::query(
                    "SELECT kind, outcome, started_at, duration_ms, seen, created, updated, disabled, enabled,
                            deleted, errors, server, message
                     FROM sync_passes WHERE kind = ? ORDER BY id DESC LIMIT 1",
                )
                .bind(kind)
            };
            let incremental = last("incremental")
                .fetch_optional(&mut *conn)
                .await
                .map_err(db("read sync passes"))?;
            let full = last("full")
                .fetch_optional(&mut *conn)
                .await
                .map_err(db("read sync passes"))?;
            Ok((
                incremental.as_ref().map(sync_pass_from_row).transpose()?,
                full.as_ref().map(sync_pass_from_row).transpose()?,
            ))
        })
    }

    fn sync_mark(&self) -> StoreFuture<'_, Option<SyncMark>> {
        Box::pin(async move {
            let row: Option<(Option<String>, Option<String>)> =
                sqlx::query_as("SELECT mark, mark_server FROM sync_state WHERE id = 1")
                    .fetch_optional(self.live_pool()?)
                    .await
                    .map_err(db("read the sync mark"))?;
            Ok(match row {
                Some((Some(value), Some(server))) => Some(SyncMark { value, server }),
                _ => None,
            })
        })
    }
}

impl SyncLease for SqliteStore {
    fn take_sync_lease<'a>(&'a self, holder: &'a str, until: i64, replacing: Option<&'a str>) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let now = self.clock.now_ms();
            let mut tx = self.write_tx().await?;
            let done = sqlx::query(
                "UPDATE sync_state SET lease_holder = ?, lease_until = ?
                 WHERE id = 1 AND (lease_holder IS NULL OR lease_holder = ? OR lease_until < ?
                                   OR lease_holder = ?)",
            )
            .bind(holder)
            .bind(until)
            .bind(holder)
            .bind(now)
            .bind(replacing)
            .execute(&mut *tx)
            .await
            .map_err(db("take the sync lease"))?;
            commit(tx).await?;
            Ok(done.rows_affected() == 1)
        })
    }

    fn sync_lease(&self) -> StoreFuture<'_, Option<(String, i64)>> {
        Box::pin(async move {
            let row: Option<(Option<String>, Option<i64>)> =
                sqlx::query_as("SELECT lease_holder, lease_until FROM sync_state WHERE id = 1")
                    .fetch_optional(self.live_pool()?)
                    .await
                    .map_err(db("read the sync lease"))?;
            Ok(match row {
                Some((Some(holder), Some(until))) => Some((holder, until)),
                _ => None,
            })
        })
    }

    fn last_completed_sync_at(&self) -> StoreFuture<'_, Option<i64>> {
        Box::pin(async move {
            sqlx::query_scalar("SELECT MAX(started_at + duration_ms) FROM sync_passes WHERE outcome = 'completed'")
                .fetch_one(self.live_pool()?)
                .await
                .map_err(db("read sync passes"))
        })
    }

    fn release_sync_lease<'a>(&'a self, holder: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let mut tx = self.write_tx().await?;
            sqlx::query(
                "UPDATE sync_state SET lease_holder = NULL, lease_until = NULL WHERE id = 1 AND lease_holder = ?",
            )
            .bind(holder)
            .execute(&mut *tx)
            .await
            .map_err(db("release the sync lease"))?;
            commit(tx).await
        })
    }

    fn take_sync_lead<'a>(&'a self, node: &'a str, until: i64) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let now = self.clock.now_ms();
            let mut tx = self.write_tx().await?;
            let done = sqlx::query(
                "UPDATE sync_state SET leader = ?, leader_until = ?,
                     leader_since = CASE WHEN leader = ? THEN leader_since ELSE ? END
                 WHERE id = 1 AND (leader IS NULL OR leader = ? OR leader_until < ?)",
            )
            .bind(node)
            .bind(until)
            .bind(node)
            .bind(now)
            .bind(node)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(db("take the sync lead"))?;
            commit(tx).await?;
            Ok(done.rows_affected() == 1)
        })
    }

    fn sync_lead(&self) -> StoreFuture<'_, Option<SyncLead>> {
        Box::pin(async move {
            let row: Option<(Option<String>, Option<i64>, Option<i64>)> =
                sqlx::query_as("SELECT leader, leader_since, leader_until FROM sync_state WHERE id = 1")
                    .fetch_optional(self.live_pool()?)
                    .await
                    .map_err(db("read the sync lead"))?;
            Ok(match row {
                Some((Some(node), Some(since), Some(until))) => Some(SyncLead { node, since, until }),
                _ => None,
            })
        })
    }

    fn release_sync_lead<'a>(&'a self, node: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let mut tx = self.write_tx().await?;
            sqlx::query(
                "UPDATE sync_state SET leader = NULL, leader_since = NULL, leader_until = NULL
                 WHERE id = 1 AND leader = ?",
            )
            .bind(node)
            .execute(&mut *tx)
            .await
            .map_err(db("give up the sync lead"))?;
            commit(tx).await
        })
    }
}

impl PushStore for SqliteStore {
    fn push_cookie(&self) -> StoreFuture<'_, Option<PushCookie>> {
        Box::pin(async move {
            let row: Option<(Option<String>, Option<String>)> =
                sqlx::query_as("SELECT push_cookie, push_cookie_server FROM sync_state WHERE id = 1")
                    .fetch_optional(self.live_pool()?)
                    .await
                    .map_err(db("read the push sync cookie"))?;
            Ok(match row {
                Some((Some(value), Some(server))) => {
                    use base64::Engine as _;
                    // A cookie that does not decode is no resume point:
                    // the search starts from scratch.
                    base64::engine::general_purpose::STANDARD
                        .decode(value)
                        .ok()
                        .map(|value| PushCookie { value, server })
                }
                _ => None,
            })
        })
    }

    fn save_push_cookie<'a>(&'a self, cookie: Option<&'a PushCookie>) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            use base64::Engine as _;
            let value = cookie.map(|c| base64::engine::general_purpose::STANDARD.encode(&c.value));
            let mut tx = self.write_tx().await?;
            sqlx::query("UPDATE sync_state SET push_cookie = ?, push_cookie_server = ? WHERE id = 1")
                .bind(value)
                .bind(cookie.map(|c| c.server.as_str()))
                .execute(&mut *tx)
                .await
                .map_err(db("save the push sync cookie"))?;
            commit(tx).await
        })
    }

    fn record_push_status<'a>(&'a self, status: &'a PushStatus) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let mut tx = self.write_tx().await?;
            sqlx::query(
                "UPDATE sync_state SET push_node = ?, push_method = ?, push_server = ?, push_connected = ?,
                     push_since = ?, push_last_change_at = ?, push_updated_at = ?, push_error = ?
                 WHERE id = 1",
            )
            .bind(&status.node)
            .bind(&status.method)
            .bind(&status.server)
            .bind(status.connected)
            .bind(status.since)
            .bind(status.last_change_at)
            .bind(status.updated_at)
            .bind(&status.error)
            .execute(&mut *tx)
            .await
            .map_err(db("record the push sync status"))?;
            commit(tx).await
        })
    }

    fn push_status(&self) -> StoreFuture<'_, Option<PushStatus>> {
        Box::pin(async move {
            type Row = (
                Option<String>,
                Option<String>,
                Option<String>,
                bool,
                Option<i64>,
                Option<i64>,
                Option<i64>,
                Option<String>,
            );
            let row: Option<Row> = sqlx::query_as(
                "SELECT push_node, push_method, push_server, push_connected, push_since, push_last_change_at,
                        push_updated_at, push_error
                 FROM sync_state WHERE id = 1",
            )
            .fetch_optional(self.live_pool()?)
            .await
            .map_err(db("read the push sync status"))?;
            Ok(match row {
                Some((Some(node), Some(method), server, connected, since, last_change_at, Some(updated_at), error)) => {
                    Some(PushStatus {
                        node,
                        method,
                        server,
                        connected,
                        since,
                        last_change_at,
                        updated_at,
                        error,
                    })
                }
                _ => None,
            })
        })
    }
}

/// Directory changes applied per transaction: large enough that a sync of
/// 100,000 users is a hundred commits, small enough that the server's
/// readers never wait long for the write lock.
const SYNC_BATCH: usize = 1000;

/// Sync passes kept per kind.
const SYNC_PASSES_KEPT: i64 = 100;
