//! How a row of each table becomes a model value, written once for both
//! backends: the columns and their types are the same on both (the two
//! migration histories keep them so), only the row type differs.
//! `row_decoders!(SqliteRow)` in a backend's module defines the functions
//! in a `rows` module there, with what the backend's module imports.

macro_rules! row_decoders {
    ($row:ty) => {
        mod rows {
            use super::*;
            use crate::store::{LockoutEvent, LockoutEventKind};

            pub(super) fn user_from_row(row: &$row) -> Result<User, StoreError> {
                let read = || db("read a user");
                let upn: String = row.try_get("upn").map_err(read())?;
                let source: String = row.try_get("source").map_err(read())?;
                let mfa_state: String = row.try_get("mfa_state").map_err(read())?;
                let operator_enabled: bool = row.try_get("enabled").map_err(read())?;
                let directory_enabled: bool = row.try_get("directory_enabled").map_err(read())?;
                let invalid = |e: crate::model::ModelError| corrupt(format!("user {upn:?}: {e}"));
                Ok(User {
                    id: UserId(row.try_get("id").map_err(read())?),
                    upn: Upn::parse(&upn).map_err(invalid)?,
                    source: source.parse::<UserSource>().map_err(invalid)?,
                    enabled: operator_enabled && directory_enabled,
                    operator_enabled,
                    directory_enabled,
                    deleted: row.try_get("deleted").map_err(read())?,
                    mfa_state: mfa_state.parse::<MfaState>().map_err(invalid)?,
                    registered_at: row.try_get("registered_at").map_err(read())?,
                    created_at: row.try_get("created_at").map_err(read())?,
                    password_hash: row.try_get("password_hash").map_err(read())?,
                    directory: match row.try_get::<Option<String>, _>("dn").map_err(read())? {
                        None => None,
                        Some(dn) => Some(DirectoryAttributes {
                            dn,
                            login: row.try_get("login").map_err(read())?,
                            anchor: row.try_get("anchor").map_err(read())?,
                            display_name: row.try_get("display_name").map_err(read())?,
                            mail: row.try_get("mail").map_err(read())?,
                            groups: row
                                .try_get::<Option<String>, _>("groups")
                                .map_err(read())?
                                .map(|g| g.lines().map(str::to_owned).collect())
                                .unwrap_or_default(),
                            password_changed: row.try_get("password_changed").map_err(read())?,
                        }),
                    },
                })
            }

            pub(super) fn sync_pass_from_row(row: &$row) -> Result<SyncPass, StoreError> {
                let read = || db("read a sync pass");
                Ok(SyncPass {
                    kind: row.try_get("kind").map_err(read())?,
                    outcome: row.try_get("outcome").map_err(read())?,
                    started_at: row.try_get("started_at").map_err(read())?,
                    duration_ms: row.try_get("duration_ms").map_err(read())?,
                    seen: row.try_get("seen").map_err(read())?,
                    created: row.try_get("created").map_err(read())?,
                    updated: row.try_get("updated").map_err(read())?,
                    disabled: row.try_get("disabled").map_err(read())?,
                    enabled: row.try_get("enabled").map_err(read())?,
                    deleted: row.try_get("deleted").map_err(read())?,
                    errors: row.try_get("errors").map_err(read())?,
                    server: row.try_get("server").map_err(read())?,
                    message: row.try_get("message").map_err(read())?,
                })
            }

            pub(super) fn audit_from_row(row: &$row) -> Result<AuditRecord, StoreError> {
                let read = || db("read the audit log");
                let credential: String = row.try_get("credential").map_err(read())?;
                let reason: String = row.try_get("reason").map_err(read())?;
                let user_id: Option<i64> = row.try_get("user_id").map_err(read())?;
                let (reason, policy) =
                    crate::model::parse_reason_text(&reason).map_err(|e| corrupt(format!("audit record: {e}")))?;
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
                    reason,
                    policy,
                    count: u32::try_from(row.try_get::<i64, _>("count").map_err(read())?).unwrap_or(u32::MAX),
                })
            }

            pub(super) fn app_password_from_row(row: &$row) -> Result<AppPassword, StoreError> {
                let read = || db("read an app password");
                Ok(AppPassword {
                    id: AppPasswordId(row.try_get("id").map_err(read())?),
                    user_id: UserId(row.try_get("user_id").map_err(read())?),
                    name: row.try_get("name").map_err(read())?,
                    created_at: row.try_get("created_at").map_err(read())?,
                    last_used_at: row.try_get("last_used_at").map_err(read())?,
                    last_ip: row.try_get("last_ip").map_err(read())?,
                    last_user_agent: row.try_get("last_user_agent").map_err(read())?,
                    limits: limits_from_row(row)?,
                })
            }

            /// The three limit columns, present in every query of app
            /// passwords.
            fn limits_from_row(row: &$row) -> Result<crate::model::AppPasswordLimits, StoreError> {
                let read = || db("read an app password's limits");
                let id: i64 = row.try_get("id").map_err(read())?;
                let scope: Option<String> = row.try_get("scope").map_err(read())?;
                let networks: Option<String> = row.try_get("networks").map_err(read())?;
                let bad = |e: String| corrupt(format!("app password {}: {e}", AppPasswordId(id)));
                Ok(crate::model::AppPasswordLimits {
                    scope: crate::app_password::limits::scope_from_text(scope.as_deref()).map_err(bad)?,
                    expires_at: row.try_get("expires_at").map_err(read())?,
                    networks: crate::app_password::limits::networks_from_text(networks.as_deref()).map_err(bad)?,
                })
            }

            pub(super) fn secret_from_row(row: &$row) -> Result<AppPasswordSecretRecord, StoreError> {
                let read = || db("read an app password's tag and hash");
                let id = AppPasswordId(row.try_get("id").map_err(read())?);
                let tag: Vec<u8> = row.try_get("tag").map_err(read())?;
                Ok(AppPasswordSecretRecord {
                    id,
                    user_id: UserId(row.try_get("user_id").map_err(read())?),
                    name: row.try_get("name").map_err(read())?,
                    tag: tag
                        .try_into()
                        .map_err(|_| corrupt(format!("app password {id} has a tag that is not 32 bytes")))?,
                    hash: row.try_get("hash").map_err(read())?,
                    limits: std::sync::Arc::new(limits_from_row(row)?),
                })
            }

            pub(super) fn change_from_row(row: &$row) -> Result<Change, StoreError> {
                let read = || db("read the change feed");
                let kind: String = row.try_get("kind").map_err(read())?;
                let user_id: Option<i64> = row.try_get("user_id").map_err(read())?;
                Ok(Change {
                    seq: row.try_get("seq").map_err(read())?,
                    at: row.try_get("at").map_err(read())?,
                    kind: ChangeKind::parse(&kind),
                    user_id: user_id.map(UserId),
                })
            }

            pub(super) fn lockout_event_from_row(row: &$row) -> Result<(i64, LockoutEvent), StoreError> {
                let read = || db("read a lockout event");
                let kind: String = row.try_get("kind").map_err(read())?;
                let reason: Option<String> = row.try_get("reason").map_err(read())?;
                let kind = match (kind.as_str(), reason) {
                    ("signed_in", _) => LockoutEventKind::SignedIn,
                    ("failed", Some(reason)) => LockoutEventKind::Failed(
                        reason
                            .parse::<Reason>()
                            .map_err(|e| corrupt(format!("lockout event: {e}")))?,
                    ),
                    (kind, _) => return Err(corrupt(format!("lockout event of kind {kind:?}"))),
                };
                Ok((
                    row.try_get("seq").map_err(read())?,
                    LockoutEvent {
                        at: row.try_get("at").map_err(read())?,
                        node: row.try_get("node").map_err(read())?,
                        kind,
                        user_id: row
                            .try_get::<Option<i64>, _>("user_id")
                            .map_err(read())?
                            .map(UserId),
                        name: row.try_get("name").map_err(read())?,
                        client_ip: row.try_get("client_ip").map_err(read())?,
                    },
                ))
            }
        }
    };
}

pub(super) use row_decoders;
