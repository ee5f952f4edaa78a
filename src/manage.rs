//! The administrative operations behind both the command line
//! (`fedgate user ...`, `fedgate app-password ...`, ...) and the admin API
//! (`/api/v1`): users and their MFA states, passwords and app passwords,
//! settings, the sign-in log, the sync status and the admin event log.
//!
//! Each operation is an async function over the store that returns plain
//! data or a [`ManageError`], whose [`ManageError::code`] is the stable
//! machine code both front ends show. It owns no printing and no HTTP:
//! the CLI prints and picks exit codes, the API picks HTTP statuses, each
//! in one place. Every operation that changes something is recorded in the
//! admin event log with its [`Actor`] (and as a tracing event on the
//! `fedgate::audit` target).

use std::path::PathBuf;
use std::sync::Arc;

use base64::Engine as _;
use serde::Serialize;

use crate::app_password::{self, CredentialError};
use crate::model::{
    AdminEvent, AppPassword, AppPasswordLimits, AppPasswordName, AuditRecord, Clock, MfaState, Secret, Settings, Upn,
    User, UserSource,
};
use crate::store::{AuditFilter, BulkApplied, LineError, PushStatus, StateLine, Store, StoreError, SyncLead, SyncPass};

/// Most users one page of a listing holds.
pub const MAX_PAGE: u32 = 1000;
/// Users a page holds unless told otherwise.
pub const DEFAULT_PAGE: u32 = 100;
/// Most records one sign-in log or admin event query returns.
pub const MAX_RECORDS: u32 = 100_000;

/// Why an operation was refused or failed. Every variant but
/// [`ManageError::StoreUnavailable`] and [`ManageError::Internal`] is the
/// caller's to fix, and changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ManageError {
    #[error("no user {upn}")]
    UnknownUser { upn: String },
    #[error("user {upn} already exists")]
    UserExists { upn: String },
    #[error("user {upn} is deleted")]
    UserDeleted { upn: String },
    #[error("{field}: {message}")]
    BadState { field: String, message: String },
    #[error("{field}: {message}")]
    BadRequest { field: String, message: String },
    #[error(
        "no change applied: {} line(s) refused: {}",
        errors.len(),
        errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
    )]
    BulkRejected { errors: Vec<LineError> },
    #[error("{0}")]
    NotCloudUser(String),
    #[error("{0}")]
    AppPasswordLimit(String),
    #[error("{0}")]
    DuplicateName(String),
    #[error("user {upn} has no app password named {name:?}")]
    UnknownAppPassword { upn: String, name: String },
    #[error("no directory sync configured: add [directory] (with bind_dn) and [sync] to the config of the server")]
    SyncNotConfigured,
    #[error("a sync pass is running already: try again when it has finished")]
    SyncBusy,
    #[error("{0}")]
    StoreUnavailable(String),
    /// Logged in full; clients learn only that it failed.
    #[error("{0}")]
    Internal(String),
}

impl ManageError {
    /// The stable machine code of the error, as the CLI's `--json` and the
    /// API's `{"error": ...}` spell it.
    pub fn code(&self) -> &'static str {
        match self {
            ManageError::UnknownUser { .. } => "unknown_user",
            ManageError::UserExists { .. } => "user_exists",
            ManageError::UserDeleted { .. } => "user_deleted",
            ManageError::BadState { .. } => "bad_state",
            ManageError::BadRequest { .. } => "bad_request",
            ManageError::BulkRejected { .. } => "bulk_rejected",
            ManageError::NotCloudUser(_) => "not_cloud_user",
            ManageError::AppPasswordLimit(_) => "app_password_limit",
            ManageError::DuplicateName(_) => "duplicate_name",
            ManageError::UnknownAppPassword { .. } => "unknown_app_password",
            ManageError::SyncNotConfigured => "sync_not_configured",
            ManageError::SyncBusy => "sync_busy",
            ManageError::StoreUnavailable(_) => "store_unavailable",
            ManageError::Internal(_) => "internal",
        }
    }

    /// Whether the caller's input is at fault (the CLI's exit 2), rather
    /// than the server or the store (exit 1).
    pub fn is_input(&self) -> bool {
        !matches!(
            self,
            ManageError::StoreUnavailable(_) | ManageError::Internal(_) | ManageError::SyncBusy
        )
    }

    fn bad(field: &str, message: impl Into<String>) -> ManageError {
        ManageError::BadRequest {
            field: field.to_owned(),
            message: message.into(),
        }
    }
}

impl From<StoreError> for ManageError {
    fn from(err: StoreError) -> ManageError {
        match err {
            StoreError::UnknownUser { upn } => ManageError::UnknownUser { upn: upn.to_string() },
            StoreError::UnknownUserId { id } => ManageError::UnknownUser {
                upn: format!("with id {id}"),
            },
            StoreError::UserDeleted { upn } => ManageError::UserDeleted { upn: upn.to_string() },
            StoreError::UserExists { upn } => ManageError::UserExists { upn: upn.to_string() },
            StoreError::BulkRejected { errors } => ManageError::BulkRejected { errors },
            e @ StoreError::NotCloudUser { .. } => ManageError::NotCloudUser(e.to_string()),
            e @ StoreError::SourceConflict { .. } => ManageError::NotCloudUser(e.to_string()),
            e @ StoreError::TooManyAppPasswords { .. } => ManageError::AppPasswordLimit(e.to_string()),
            e @ StoreError::DuplicateAppPasswordName { .. } => ManageError::DuplicateName(e.to_string()),
            StoreError::LimitsWidened { upn, name, error } => ManageError::BadRequest {
                field: error.field().to_owned(),
                message: format!("app password {name:?} of user {upn}: {error}"),
            },
            StoreError::UnknownAppPassword { upn, name } => ManageError::UnknownAppPassword {
                upn: upn.to_string(),
                name,
            },
            e @ (StoreError::Unavailable { .. } | StoreError::Open { .. } | StoreError::Database { .. }) => {
                ManageError::StoreUnavailable(e.to_string())
            }
            other => ManageError::Internal(other.to_string()),
        }
    }
}

impl From<CredentialError> for ManageError {
    fn from(err: CredentialError) -> ManageError {
        match err {
            CredentialError::Store(e) => e.into(),
            e @ (CredentialError::EmptyPassword | CredentialError::PasswordTooLong { .. }) => {
                ManageError::bad("password", e.to_string())
            }
            other => ManageError::Internal(other.to_string()),
        }
    }
}

/// Who asked for a change, for the admin event log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// `token:NAME` (admin API), `cli` or `cli:USER` (command line).
    pub name: String,
    /// The client's address, for the admin API.
    pub client: Option<String>,
    /// Whether the client presented a certificate the admin listener
    /// verified (recorded in the event's detail when it did).
    pub client_cert_verified: bool,
}

impl Actor {
    /// The command line, with the OS user name when the environment says it.
    pub fn cli() -> Actor {
        let user = std::env::var("USER")
            .or_else(|_| std::env::var("LOGNAME"))
            .ok()
            .filter(|u| !u.is_empty());
        Actor {
            name: match user {
                Some(user) => format!("cli:{user}"),
                None => "cli".to_owned(),
            },
            client: None,
            client_cert_verified: false,
        }
    }
}

/// Which users [`Manager::list_users`] returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserQuery {
    pub state: Option<MfaState>,
    pub source: Option<UserSource>,
    /// Whether the account may sign in (`enabled`) or not.
    pub enabled: Option<bool>,
    /// UPNs starting with this (case-insensitive).
    pub prefix: Option<String>,
    /// UPNs containing this (case-insensitive).
    pub contains: Option<String>,
    /// Where the previous page ended ([`UserPage::next_cursor`]).
    pub cursor: Option<String>,
    /// At most this many (1 to [`MAX_PAGE`]); all when `None`.
    pub limit: Option<u32>,
}

/// One page of users, by UPN.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct UserPage {
    pub users: Vec<User>,
    /// Pass it as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// A user and their app passwords.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct UserDetail {
    #[serde(flatten)]
    pub user: User,
    pub app_passwords: Vec<AppPassword>,
}

/// What deleting a user did.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Deleted {
    pub upn: Upn,
    /// App passwords deleted with the user.
    pub revoked: u64,
    /// A directory user returns at the next sync pass if the directory
    /// still has them.
    pub federated: bool,
}

/// How many app passwords were revoked.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Revoked {
    pub upn: Upn,
    pub revoked: u64,
}

/// A new app password and the password itself, shown once.
#[derive(Serialize, utoipa::ToSchema)]
pub struct CreatedAppPassword {
    pub upn: Upn,
    #[serde(flatten)]
    pub app_password: AppPassword,
    /// The generated password: shown this once, never again.
    pub password: String,
}

/// The directory sync as the store records it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SyncStatus {
    /// `[sync] mode` of the configuration that answers (`push` or `poll`);
    /// absent where it has no `[sync]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<&'static str>,
    /// The node scheduling passes, unless its lead has run out.
    pub leader: Option<SyncLead>,
    pub incremental: Option<SyncPass>,
    pub full: Option<SyncPass>,
    /// Seconds since the store was last known current with the directory:
    /// the last completed pass, or the last heartbeat of a connected push
    /// search.
    pub lag_seconds: Option<i64>,
    /// Push sync's persistent search, as its node last reported it; `None`
    /// when no node ever ran one (`[sync] mode = "poll"`). A report older
    /// than [`PUSH_REPORT_STALE_MS`] is shown as not connected.
    pub push: Option<PushStatus>,
}

/// How old a push sync report may be before it is taken as from a node
/// that is gone (the search reports at least every 5 s).
pub const PUSH_REPORT_STALE_MS: i64 = 30_000;

/// Which sign-in records [`Manager::signins`] returns, as an operator
/// writes them.
#[derive(Debug, Clone, Default)]
pub struct SigninQuery {
    pub user: Option<String>,
    /// A duration back from now, such as `1h` or `30m`.
    pub since: Option<String>,
    /// `success` or `failure`.
    pub result: Option<String>,
    pub limit: Option<u32>,
}

/// The operations, over one store.
pub struct Manager {
    pub store: Arc<dyn Store>,
    /// `[store] key_file`: app passwords are tagged with the server key.
    pub key_file: PathBuf,
    pub clock: Arc<dyn Clock>,
    /// Names of the routes that ask for credentials: what an app
    /// password's scope may name.
    pub routes: Vec<String>,
}

/// Names of the routes that ask for credentials (`[[route]] name`, or the
/// path of a route without one), in file order, then the mail protocols
/// (`imap`, `pop3`, `smtp`) when the mail endpoint is configured.
pub fn credential_routes(config: &crate::config::Config) -> Vec<String> {
    let mail = config.mail.iter().flat_map(|_| crate::config::MailProtocol::ALL);
    config
        .routes
        .iter()
        .filter(|r| r.realm != crate::config::Realm::None)
        .map(|r| r.name.clone())
        .chain(mail.map(|p| p.as_str().to_owned()))
        .collect()
}

/// Limits asked for with a new app password or a narrowing, as typed: route
/// names, a duration such as `90d`, CIDRs.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize, utoipa::ToSchema)]
pub struct LimitsRequest {
    #[serde(default)]
    pub scope: Vec<String>,
    pub expires: Option<String>,
    #[serde(default)]
    pub from: Vec<String>,
}

/// A narrowing of an app password's limits: each limit given replaces the
/// current one (and must not widen it); each left out stays as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NarrowRequest {
    pub scope: Option<Vec<String>>,
    /// A duration from now, such as `30d`.
    pub expires: Option<String>,
    pub from: Option<Vec<String>>,
}

fn parse_upn(field: &str, text: &str) -> Result<Upn, ManageError> {
    Upn::parse(text).map_err(|e| ManageError::bad(field, e.to_string()))
}

/// Parses an MFA state named by `field`.
pub fn parse_state(field: &str, text: &str) -> Result<MfaState, ManageError> {
    text.parse::<MfaState>().map_err(|e| ManageError::BadState {
        field: field.to_owned(),
        message: e.to_string(),
    })
}

/// The opaque cursor after `upn`.
fn cursor_after(upn: &Upn) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("u:{upn}"))
}

fn parse_cursor(text: &str) -> Result<Upn, ManageError> {
    let bad = || ManageError::bad("cursor", "not a cursor this server gave out: start again without one");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|_| bad())?;
    let text = String::from_utf8(bytes).map_err(|_| bad())?;
    let upn = text.strip_prefix("u:").ok_or_else(bad)?;
    Upn::parse(upn).map_err(|_| bad())
}

/// The users of `all` (sorted by UPN) that `query` asks for, and where the
/// next page starts. Keyset pagination by UPN: a user added meanwhile
/// before the cursor is not shown, and no user is shown twice.
pub fn page_users(all: Vec<User>, query: &UserQuery) -> Result<UserPage, ManageError> {
    let after = query.cursor.as_deref().map(parse_cursor).transpose()?;
    let limit = match query.limit {
        None => usize::MAX,
        Some(n) if (1..=MAX_PAGE).contains(&n) => n as usize,
        Some(n) => {
            return Err(ManageError::bad(
                "limit",
                format!("{n} is out of range: 1 to {MAX_PAGE}"),
            ))
        }
    };
    let prefix = query.prefix.as_deref().map(str::to_lowercase);
    let contains = query.contains.as_deref().map(str::to_lowercase);
    let mut users: Vec<User> = all
        .into_iter()
        .filter(|u| after.as_ref().is_none_or(|a| u.upn > *a))
        .filter(|u| query.state.is_none_or(|s| u.mfa_state == s))
        .filter(|u| query.source.is_none_or(|s| u.source == s))
        .filter(|u| query.enabled.is_none_or(|e| u.is_active() == e))
        .filter(|u| prefix.as_deref().is_none_or(|p| u.upn.as_str().starts_with(p)))
        .filter(|u| contains.as_deref().is_none_or(|c| u.upn.as_str().contains(c)))
        .collect();
    users.sort_by(|a, b| a.upn.cmp(&b.upn));
    let next_cursor = if users.len() > limit {
        users.truncate(limit);
        users.last().map(|u| cursor_after(&u.upn))
    } else {
        None
    };
    Ok(UserPage { users, next_cursor })
}

/// Checks a password an operator sets and hashes it (off the reactor).
async fn hash_new_password(password: Secret) -> Result<String, ManageError> {
    if password.expose().is_empty() {
        return Err(ManageError::bad("password", "the password is empty"));
    }
    if app_password::is_app_password_shaped(password.expose()) {
        return Err(ManageError::bad(
            "password",
            "this password has the shape of an app password (16 letters, run together or in four groups of four), \
             which fedgate reserves for generated app passwords: choose another",
        ));
    }
    tokio::task::spawn_blocking(move || app_password::hash_password(&password))
        .await
        .map_err(|e| ManageError::Internal(format!("hashing failed: {e}")))?
        .map_err(ManageError::from)
}

/// Parses `allow-app-passwords`'s value.
pub fn parse_bool(field: &str, value: &str) -> Result<bool, ManageError> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "on" | "yes" => Ok(true),
        "false" | "off" | "no" => Ok(false),
        other => Err(ManageError::bad(
            field,
            format!("expected true or false, got {other:?}"),
        )),
    }
}

impl Manager {
    pub fn new(store: Arc<dyn Store>, key_file: PathBuf, clock: Arc<dyn Clock>) -> Manager {
        Manager {
            store,
            key_file,
            clock,
            routes: Vec::new(),
        }
    }

    /// The routes an app password's scope may name (see
    /// [`credential_routes`]); without them, no scope can be set.
    pub fn with_routes(mut self, routes: Vec<String>) -> Manager {
        self.routes = routes;
        self
    }

    /// Reads limits asked for into what the store keeps.
    pub fn limits(&self, requested: &LimitsRequest) -> Result<AppPasswordLimits, ManageError> {
        let asked = app_password::limits::Requested {
            scope: &requested.scope,
            expires: requested.expires.as_deref(),
            from: &requested.from,
        };
        app_password::limits::parse(&asked, &self.routes, self.clock.now_ms())
            .map_err(|e| ManageError::bad(e.field(), e.to_string()))
    }

    /// The live user of that UPN.
    pub async fn user(&self, upn: &str) -> Result<User, ManageError> {
        let upn = parse_upn("upn", upn)?;
        match self.store.get_user_by_upn(&upn).await? {
            Some(u) if !u.deleted => Ok(u),
            Some(_) => Err(ManageError::UserDeleted { upn: upn.to_string() }),
            None => Err(ManageError::UnknownUser { upn: upn.to_string() }),
        }
    }

    /// Records a change in the admin event log and on the audit target.
    /// The change is made already: a failure to record it is logged, not
    /// returned.
    async fn record(&self, actor: &Actor, action: &str, target: Option<&str>, mut detail: serde_json::Value) {
        if actor.client_cert_verified {
            if let Some(map) = detail.as_object_mut() {
                map.insert("client_cert_verified".into(), true.into());
            }
        }
        let event = AdminEvent {
            id: 0,
            at: self.clock.now_ms(),
            actor: actor.name.clone(),
            client: actor.client.clone(),
            action: action.to_owned(),
            target: target.map(str::to_owned),
            detail,
        };
        tracing::info!(
            target: "fedgate::audit",
            actor = %event.actor,
            client = event.client.as_deref().unwrap_or("-"),
            action = %event.action,
            target_name = event.target.as_deref().unwrap_or("-"),
            detail = %event.detail,
            "admin change"
        );
        if let Err(err) = self.store.append_admin_event(&event).await {
            tracing::error!(error = %err, action, "cannot record the admin event");
        }
    }

    pub async fn list_users(&self, query: &UserQuery) -> Result<UserPage, ManageError> {
        let all = self.store.list_users(query.state).await?;
        page_users(all, query)
    }

    pub async fn show_user(&self, upn: &str) -> Result<UserDetail, ManageError> {
        let user = self.user(upn).await?;
        let app_passwords = self.store.list_app_passwords(user.id).await?;
        Ok(UserDetail { user, app_passwords })
    }

    /// Creates a cloud-only user, with a password when one is given.
    pub async fn add_user(
        &self,
        actor: &Actor,
        upn: &str,
        state: MfaState,
        password: Option<Secret>,
    ) -> Result<User, ManageError> {
        let upn = parse_upn("upn", upn)?;
        let hash = match password {
            Some(password) => Some(hash_new_password(password).await?),
            None => None,
        };
        let user = self.store.create_cloud_user(&upn, state, hash.as_deref()).await?;
        self.record(
            actor,
            "user.add",
            Some(user.upn.as_str()),
            serde_json::json!({"state": state, "password": hash.is_some()}),
        )
        .await;
        Ok(user)
    }

    pub async fn set_state(&self, actor: &Actor, upn: &str, state: MfaState) -> Result<User, ManageError> {
        let upn = parse_upn("upn", upn)?;
        let before = self.user(upn.as_str()).await?;
        let user = self.store.set_mfa_state(&upn, state).await?;
        self.record(
            actor,
            "user.set_state",
            Some(upn.as_str()),
            serde_json::json!({"from": before.mfa_state, "to": state}),
        )
        .await;
        Ok(user)
    }

    /// Sets the MFA state of every line or none.
    pub async fn set_states(&self, actor: &Actor, lines: &[StateLine]) -> Result<BulkApplied, ManageError> {
        if lines.is_empty() {
            return Err(ManageError::bad("lines", "no line given"));
        }
        let applied = self.store.set_mfa_states(lines).await?;
        self.record(
            actor,
            "user.set_states",
            None,
            serde_json::json!({"lines": lines.len(), "changed": applied.changed, "unchanged": applied.unchanged}),
        )
        .await;
        Ok(applied)
    }

    /// Creates a cloud-only user per line (`upn,state`), every one or none.
    pub async fn import_users(&self, actor: &Actor, lines: &[StateLine]) -> Result<Vec<User>, ManageError> {
        if lines.is_empty() {
            return Err(ManageError::bad("lines", "no line given"));
        }
        let created = self.store.create_cloud_users(lines).await?;
        self.record(
            actor,
            "user.import",
            None,
            serde_json::json!({"created": created.len()}),
        )
        .await;
        Ok(created)
    }

    /// Marks the user deleted and deletes their app passwords, password
    /// and second factor.
    pub async fn delete_user(&self, actor: &Actor, upn: &str) -> Result<Deleted, ManageError> {
        let user = self.user(upn).await?;
        let revoked = self.store.list_app_passwords(user.id).await?.len() as u64;
        let deleted = self.store.mark_deleted(&user.upn).await?;
        let federated = deleted.source == UserSource::Federated;
        self.record(
            actor,
            "user.delete",
            Some(user.upn.as_str()),
            serde_json::json!({"revoked": revoked, "federated": federated}),
        )
        .await;
        Ok(Deleted {
            upn: deleted.upn,
            revoked,
            federated,
        })
    }

    pub async fn set_enabled(&self, actor: &Actor, upn: &str, enabled: bool) -> Result<User, ManageError> {
        let upn = parse_upn("upn", upn)?;
        let user = self.store.set_enabled(&upn, enabled).await?;
        let action = if enabled { "user.enable" } else { "user.disable" };
        self.record(actor, action, Some(upn.as_str()), serde_json::json!({}))
            .await;
        Ok(user)
    }

    pub async fn require_registration(&self, actor: &Actor, upn: &str) -> Result<User, ManageError> {
        let upn = parse_upn("upn", upn)?;
        let user = self.store.require_registration(&upn).await?;
        self.record(
            actor,
            "user.require_registration",
            Some(upn.as_str()),
            serde_json::json!({}),
        )
        .await;
        Ok(user)
    }

    /// Sets (`Some`) or clears (`None`) a cloud-only user's password;
    /// refused for directory users.
    pub async fn set_password(&self, actor: &Actor, upn: &str, password: Option<Secret>) -> Result<User, ManageError> {
        let user = self.user(upn).await?;
        if user.source != UserSource::Cloud {
            return Err(StoreError::NotCloudUser { upn: user.upn }.into());
        }
        let hash = match password {
            Some(password) => Some(hash_new_password(password).await?),
            None => None,
        };
        let user = self.store.set_password_hash(&user.upn, hash.as_deref()).await?;
        let action = if hash.is_some() {
            "user.set_password"
        } else {
            "user.clear_password"
        };
        self.record(actor, action, Some(user.upn.as_str()), serde_json::json!({}))
            .await;
        Ok(user)
    }

    pub async fn revoke_app_passwords(&self, actor: &Actor, upn: &str) -> Result<Revoked, ManageError> {
        let user = self.user(upn).await?;
        let revoked = self.store.revoke_app_passwords(user.id).await?;
        self.record(
            actor,
            "user.revoke_app_passwords",
            Some(user.upn.as_str()),
            serde_json::json!({"revoked": revoked}),
        )
        .await;
        Ok(Revoked { upn: user.upn, revoked })
    }

    pub async fn app_passwords(&self, upn: &str) -> Result<Vec<AppPassword>, ManageError> {
        let user = self.user(upn).await?;
        Ok(self.store.list_app_passwords(user.id).await?)
    }

    /// Generates an app password; the password is in the answer, once.
    pub async fn create_app_password(
        &self,
        actor: &Actor,
        upn: &str,
        name: &str,
        limits: &LimitsRequest,
    ) -> Result<(CreatedAppPassword, Secret), ManageError> {
        let user = self.user(upn).await?;
        let name = AppPasswordName::parse(name).map_err(|e| ManageError::bad("name", e.to_string()))?;
        let limits = self.limits(limits)?;
        let key = crate::server_key::load_or_create(&self.key_file)
            .map_err(|e| ManageError::Internal(format!("store.key_file: {e}")))?;
        let (created, shown) = app_password::issue(&*self.store, &key, user.id, name, limits).await?;
        self.record(
            actor,
            "app_password.create",
            Some(user.upn.as_str()),
            serde_json::json!({"name": created.name, "limits": created.limits}),
        )
        .await;
        Ok((
            CreatedAppPassword {
                upn: user.upn,
                app_password: created,
                password: shown.expose().to_owned(),
            },
            shown,
        ))
    }

    /// Narrows an app password's limits: those given are read as for a new
    /// one and replace the current ones, the others stay. Refused, with
    /// nothing changed, if that would widen any.
    pub async fn narrow_app_password(
        &self,
        actor: &Actor,
        upn: &str,
        name: &str,
        narrow: &NarrowRequest,
    ) -> Result<AppPassword, ManageError> {
        let user = self.user(upn).await?;
        // Names compare as the store compares them: ASCII case folded.
        let current = self
            .store
            .list_app_passwords(user.id)
            .await?
            .into_iter()
            .find(|a| a.name.eq_ignore_ascii_case(name.trim()))
            .ok_or_else(|| ManageError::UnknownAppPassword {
                upn: user.upn.to_string(),
                name: crate::model::audit_text(name.trim(), crate::model::MAX_APP_PASSWORD_NAME_CHARS),
            })?;
        let given = self.limits(&LimitsRequest {
            scope: narrow.scope.clone().unwrap_or_default(),
            expires: narrow.expires.clone(),
            from: narrow.from.clone().unwrap_or_default(),
        })?;
        let limits = AppPasswordLimits {
            scope: if narrow.scope.is_some() {
                given.scope
            } else {
                current.limits.scope
            },
            expires_at: if narrow.expires.is_some() {
                given.expires_at
            } else {
                current.limits.expires_at
            },
            networks: if narrow.from.is_some() {
                given.networks
            } else {
                current.limits.networks
            },
        };
        let narrowed = self.store.narrow_app_password(user.id, &current.name, &limits).await?;
        self.record(
            actor,
            "app_password.narrow",
            Some(user.upn.as_str()),
            serde_json::json!({"name": narrowed.name, "limits": narrowed.limits}),
        )
        .await;
        Ok(narrowed)
    }

    pub async fn delete_app_password(&self, actor: &Actor, upn: &str, name: &str) -> Result<(), ManageError> {
        let user = self.user(upn).await?;
        self.store.delete_app_password(user.id, name).await?;
        self.record(
            actor,
            "app_password.delete",
            Some(user.upn.as_str()),
            serde_json::json!({"name": name}),
        )
        .await;
        Ok(())
    }

    pub async fn settings(&self) -> Result<Settings, ManageError> {
        Ok(self.store.get_settings().await?)
    }

    pub async fn set_allow_app_passwords(&self, actor: &Actor, allow: bool) -> Result<Settings, ManageError> {
        let settings = self.store.set_allow_app_passwords(allow).await?;
        self.record(
            actor,
            "settings.set",
            Some("allow_app_passwords"),
            serde_json::json!({"allow_app_passwords": allow}),
        )
        .await;
        Ok(settings)
    }

    /// The usage report (`fedgate report usage`) for the UTC days `from`
    /// to `to` (`YYYY-MM-DD`, both included; see [`crate::report::DayRange`]
    /// for the defaults).
    pub async fn usage_report(
        &self,
        from: Option<&str>,
        to: Option<&str>,
    ) -> Result<crate::report::UsageReport, ManageError> {
        use crate::report::{Day, DayRange, ReportError};
        let input = |field: &str| {
            let field = field.to_owned();
            move |err: ReportError| match err {
                ReportError::Input(message) => ManageError::bad(&field, message),
                ReportError::Store(err) => err.into(),
            }
        };
        let from = from.map(Day::parse).transpose().map_err(input("from"))?;
        let to = to.map(Day::parse).transpose().map_err(input("to"))?;
        let now = self.clock.now_ms();
        let range = DayRange::new(from, to, now).map_err(input("from"))?;
        crate::report::usage(self.store.as_ref(), range, now)
            .await
            .map_err(input("from"))
    }

    /// The sign-in log, newest first.
    pub async fn signins(&self, query: &SigninQuery) -> Result<Vec<AuditRecord>, ManageError> {
        let user = query.user.as_deref().map(|u| parse_upn("user", u)).transpose()?;
        let since = match query.since.as_deref() {
            None => None,
            Some(text) => {
                let d = humantime::parse_duration(text).map_err(|_| {
                    ManageError::bad("since", format!("expected a duration such as 1h or 30m, got {text:?}"))
                })?;
                let back = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
                Some(self.clock.now_ms().saturating_sub(back))
            }
        };
        let success = match query.result.as_deref() {
            None => None,
            Some("success") => Some(true),
            Some("failure") => Some(false),
            Some(other) => {
                return Err(ManageError::bad(
                    "result",
                    format!("expected success or failure, got {other:?}"),
                ))
            }
        };
        let limit = match query.limit {
            None => 100,
            Some(n) if (1..=MAX_RECORDS).contains(&n) => n,
            Some(n) => {
                return Err(ManageError::bad(
                    "limit",
                    format!("{n} is out of range: 1 to {MAX_RECORDS}"),
                ))
            }
        };
        Ok(self
            .store
            .query_audit(&AuditFilter {
                user,
                since,
                success,
                limit,
            })
            .await?)
    }

    /// `mode`: `[sync] mode` of the configuration that answers.
    pub async fn sync_status(&self, mode: Option<&'static str>) -> Result<SyncStatus, ManageError> {
        let (incremental, full) = self.store.last_sync_passes().await?;
        let now = self.clock.now_ms();
        let last_completed = self.store.last_completed_sync_at().await?;
        let leader = self.store.sync_lead().await?.filter(|lead| lead.until > now);
        let push = self.store.push_status().await?.map(|mut push| {
            if push.connected && now - push.updated_at > PUSH_REPORT_STALE_MS {
                push.connected = false;
                push.error = Some(format!(
                    "no report from {} for {} s",
                    push.node,
                    (now - push.updated_at) / 1000
                ));
            }
            push
        });
        let current_at = match push.as_ref().filter(|p| p.connected) {
            Some(p) => Some(last_completed.map_or(p.updated_at, |at| at.max(p.updated_at))),
            None => last_completed,
        };
        Ok(SyncStatus {
            mode,
            leader,
            lag_seconds: current_at.map(|at| (now - at).max(0) / 1000),
            incremental,
            full,
            push,
        })
    }

    /// Records a sync pass run on an operator's request.
    pub async fn record_sync_run(&self, actor: &Actor, pass: &SyncPass) {
        self.record(
            actor,
            "sync.run",
            None,
            serde_json::json!({"kind": pass.kind, "outcome": pass.outcome}),
        )
        .await;
    }

    /// The admin event log, newest first.
    pub async fn admin_events(&self, limit: Option<u32>, before: Option<i64>) -> Result<Vec<AdminEvent>, ManageError> {
        let limit = match limit {
            None => 100,
            Some(n) if (1..=MAX_RECORDS).contains(&n) => n,
            Some(n) => {
                return Err(ManageError::bad(
                    "limit",
                    format!("{n} is out of range: 1 to {MAX_RECORDS}"),
                ))
            }
        };
        Ok(self.store.admin_events(limit, before).await?)
    }
}

#[cfg(test)]
mod tests;
