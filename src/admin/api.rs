//! The admin API: JSON under `/api/v1` on the admin listener, each endpoint
//! the twin of a CLI command, over the same operations ([`crate::manage`]).
//!
//! This module owns HTTP: the one routing table ([`ROUTES`], from which the
//! OpenAPI document's paths are checked), bearer tokens, bodies (JSON only,
//! at most [`MAX_BODY`] bytes, unknown fields refused), query strings, and
//! the one mapping from errors to HTTP statuses ([`ApiError::status`]).
//! What an operation does, and who may be changed how, is
//! [`crate::manage`]'s.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{header, HeaderValue, Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
use utoipa::{IntoParams, OpenApi, ToSchema};

use super::tokens::TokenSet;
use super::ConnInfo;
use crate::manage::{
    self, Actor, CreatedAppPassword, Deleted, LimitsRequest, ManageError, Manager, NarrowRequest, Revoked, SigninQuery,
    SyncStatus, UserDetail, UserPage, UserQuery,
};
use crate::model::{AdminEvent, AppPassword, AuditRecord, MfaState, Secret, Settings, User, UserSource};
use crate::store::{BulkApplied, LineError, StateLine, SyncPass};
use crate::sync::{PassKind, Syncer};

/// Largest request body accepted, in bytes (1 MiB).
pub const MAX_BODY: usize = 1 << 20;

/// What the admin API needs from the running server.
pub struct Api {
    pub manager: Manager,
    pub tokens: Arc<TokenSet>,
    /// The server's directory sync, when one is configured.
    pub syncer: Option<Arc<Syncer>>,
}

/// A request refused or failed. [`ApiError::status`] is the one place an
/// error becomes an HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Manage(#[from] ManageError),
    #[error("missing or wrong bearer token: send \"Authorization: Bearer TOKEN\" with a token of [admin] token_file")]
    Unauthorized,
    #[error("the admin API is off: set [admin] token_file to a file of \"NAME TOKEN\" lines (mode 0600) and restart")]
    Disabled,
    #[error("no such endpoint: {0} (see /api/v1/openapi.json)")]
    NotFound(String),
    #[error("{path} does not answer {method}; it answers {allow}")]
    MethodNotAllowed {
        method: String,
        path: String,
        allow: String,
    },
    #[error("the body must be JSON: send \"Content-Type: application/json\"")]
    UnsupportedMediaType,
    #[error("the body is larger than the limit of {MAX_BODY} bytes (1 MiB)")]
    PayloadTooLarge,
    #[error("{field}: {message}")]
    BadBody { field: String, message: String },
    #[error("cannot read the request body: {0}")]
    Body(String),
}

impl ApiError {
    /// The HTTP status of every refusal and failure, in one place.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Manage(err) => match err {
                ManageError::UnknownUser { .. }
                | ManageError::UserDeleted { .. }
                | ManageError::UnknownAppPassword { .. } => StatusCode::NOT_FOUND,
                ManageError::UserExists { .. }
                | ManageError::NotCloudUser(_)
                | ManageError::AppPasswordLimit(_)
                | ManageError::DuplicateName(_)
                | ManageError::SyncNotConfigured
                | ManageError::SyncBusy => StatusCode::CONFLICT,
                ManageError::BadState { .. } | ManageError::BadRequest { .. } => StatusCode::BAD_REQUEST,
                ManageError::BulkRejected { .. } => StatusCode::UNPROCESSABLE_ENTITY,
                ManageError::StoreUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
                ManageError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            },
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Disabled | ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BadBody { .. } | ApiError::Body(_) => StatusCode::BAD_REQUEST,
        }
    }

    /// The machine code in `{"error": ...}`.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Manage(err) => err.code(),
            ApiError::Unauthorized => "unauthorized",
            ApiError::Disabled => "api_disabled",
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed { .. } => "method_not_allowed",
            ApiError::UnsupportedMediaType => "unsupported_media_type",
            ApiError::PayloadTooLarge => "payload_too_large",
            ApiError::BadBody { .. } | ApiError::Body(_) => "bad_request",
        }
    }

    /// The JSON body: clients learn the code and a message they can act
    /// on; a server failure's detail goes to the log only.
    pub fn body(&self) -> ErrorBody {
        let message = match self {
            ApiError::Manage(ManageError::Internal(_)) => "internal error: see the server log".to_owned(),
            other => other.to_string(),
        };
        let field = match self {
            ApiError::Manage(ManageError::BadRequest { field, .. } | ManageError::BadState { field, .. })
            | ApiError::BadBody { field, .. } => Some(field.clone()),
            _ => None,
        };
        let errors = match self {
            ApiError::Manage(ManageError::BulkRejected { errors }) => Some(errors.clone()),
            _ => None,
        };
        ErrorBody {
            error: self.code().to_owned(),
            message,
            field,
            errors,
        }
    }
}

/// Every error answer: `{"error": code, "message": ...}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// A stable machine code, such as `unknown_user` or `bad_request`.
    pub error: String,
    /// What went wrong, for a person; names the field at fault.
    pub message: String,
    /// The field or parameter at fault, when one is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// `bulk_rejected`: every refused line, and why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<LineError>>,
}

/// One request, as a handler sees it.
pub struct Call {
    /// The path's `{...}` parts, percent-decoded, in order.
    pub params: Vec<String>,
    pub query: Vec<(String, String)>,
    pub content_type: Option<String>,
    pub body: Bytes,
    pub actor: Actor,
}

/// A handler's answer: a status and a JSON body.
pub struct Reply {
    pub status: StatusCode,
    pub body: serde_json::Value,
}

fn ok<T: Serialize>(value: &T) -> Result<Reply, ApiError> {
    reply(StatusCode::OK, value)
}

fn reply<T: Serialize>(status: StatusCode, value: &T) -> Result<Reply, ApiError> {
    let body = serde_json::to_value(value).map_err(|e| ManageError::Internal(format!("serialising: {e}")))?;
    Ok(Reply { status, body })
}

impl Call {
    fn param(&self, i: usize) -> &str {
        // Invariant: the router captured one part per `{...}` of the path.
        self.params.get(i).map_or("", String::as_str)
    }

    /// The body as `T`: JSON only, unknown fields refused, a bad one named
    /// by its path in the document.
    fn json<T: DeserializeOwned>(&self) -> Result<T, ApiError> {
        let json = self
            .content_type
            .as_deref()
            .and_then(|ct| ct.split(';').next())
            .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"));
        if !json {
            return Err(ApiError::UnsupportedMediaType);
        }
        let mut de = serde_json::Deserializer::from_slice(&self.body);
        let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let path = e.path().to_string();
            let field = if path == "." { "body".to_owned() } else { path };
            ApiError::BadBody {
                message: format!("{}", e.inner()),
                field,
            }
        })?;
        de.end().map_err(|e| ApiError::BadBody {
            field: "body".into(),
            message: e.to_string(),
        })?;
        Ok(value)
    }

    /// The query parameters, refusing any not in `known` and any given
    /// twice.
    fn query(&self, known: &[&str]) -> Result<Query<'_>, ApiError> {
        for (i, (name, _)) in self.query.iter().enumerate() {
            if !known.contains(&name.as_str()) {
                return Err(bad(
                    name,
                    format!("unknown query parameter (known: {})", known.join(", ")),
                ));
            }
            if self.query[..i].iter().any(|(n, _)| n == name) {
                return Err(bad(name, "given more than once".to_owned()));
            }
        }
        Ok(Query(&self.query))
    }
}

fn bad(field: &str, message: String) -> ApiError {
    ManageError::BadRequest {
        field: field.to_owned(),
        message,
    }
    .into()
}

struct Query<'a>(&'a [(String, String)]);

impl Query<'_> {
    fn text(&self, name: &str) -> Option<String> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone())
    }

    fn parsed<T: std::str::FromStr>(&self, name: &str, expected: &str) -> Result<Option<T>, ApiError> {
        match self.0.iter().find(|(n, _)| n == name) {
            None => Ok(None),
            Some((_, v)) => v
                .parse::<T>()
                .map(Some)
                .map_err(|_| bad(name, format!("expected {expected}, got {v:?}"))),
        }
    }

    fn flag(&self, name: &str) -> Result<Option<bool>, ApiError> {
        match self.0.iter().find(|(n, _)| n == name) {
            None => Ok(None),
            Some((_, v)) => manage::parse_bool(name, v).map(Some).map_err(ApiError::from),
        }
    }
}

/// A handler: the API, the request.
pub type Handler = for<'a> fn(&'a Api, Call) -> BoxFuture<'a, Result<Reply, ApiError>>;

/// One endpoint: method, path (`{name}` for a part), handler, and whether
/// it reads a JSON body.
pub struct Route {
    pub method: Method,
    pub path: &'static str,
    pub handler: Handler,
}

macro_rules! route {
    ($method:ident $path:literal => $handler:ident) => {
        Route {
            method: Method::$method,
            path: $path,
            handler: |api, call| Box::pin($handler(api, call)),
        }
    };
}

/// Every endpoint. The OpenAPI document lists exactly these (a test holds
/// the two together).
pub static ROUTES: &[Route] = &[
    route!(GET "/api/v1/openapi.json" => openapi_document),
    route!(GET "/api/v1/users" => list_users),
    route!(POST "/api/v1/users" => add_user),
    route!(GET "/api/v1/users/{upn}" => show_user),
    route!(DELETE "/api/v1/users/{upn}" => delete_user),
    route!(PUT "/api/v1/users/{upn}/state" => set_state),
    route!(POST "/api/v1/users/{upn}/disable" => disable_user),
    route!(POST "/api/v1/users/{upn}/enable" => enable_user),
    route!(POST "/api/v1/users/{upn}/require-registration" => require_registration),
    route!(PUT "/api/v1/users/{upn}/password" => set_password),
    route!(DELETE "/api/v1/users/{upn}/password" => clear_password),
    route!(POST "/api/v1/users/{upn}/revoke-app-passwords" => revoke_app_passwords),
    route!(GET "/api/v1/users/{upn}/app-passwords" => list_app_passwords),
    route!(POST "/api/v1/users/{upn}/app-passwords" => create_app_password),
    route!(PATCH "/api/v1/users/{upn}/app-passwords/{name}" => narrow_app_password),
    route!(DELETE "/api/v1/users/{upn}/app-passwords/{name}" => delete_app_password),
    route!(POST "/api/v1/bulk/user-states" => set_states),
    route!(POST "/api/v1/bulk/user-import" => import_users),
    route!(GET "/api/v1/settings" => show_settings),
    route!(PUT "/api/v1/settings" => set_settings),
    route!(GET "/api/v1/signins" => signins),
    route!(GET "/api/v1/reports/usage" => usage_report),
    route!(GET "/api/v1/sync" => sync_status),
    route!(POST "/api/v1/sync/run" => sync_run),
    route!(GET "/api/v1/admin-events" => admin_events),
];

/// What the router found for a path and method.
pub enum Found {
    Route(&'static Route, Vec<String>),
    /// The path exists, with these methods.
    WrongMethod(Vec<&'static Method>),
    None,
}

/// Matches `path` (as sent, percent-encoded) against [`ROUTES`].
pub fn find(method: &Method, path: &str) -> Found {
    let parts: Vec<&str> = path.split('/').collect();
    let mut methods = Vec::new();
    for route in ROUTES {
        let pattern: Vec<&str> = route.path.split('/').collect();
        if pattern.len() != parts.len() {
            continue;
        }
        let mut params = Vec::new();
        let matched = pattern.iter().zip(&parts).all(|(p, s)| {
            if p.starts_with('{') {
                let decoded = percent_encoding::percent_decode_str(s).decode_utf8();
                match decoded {
                    Ok(text) if !text.is_empty() => {
                        params.push(text.into_owned());
                        true
                    }
                    _ => false,
                }
            } else {
                p == s
            }
        });
        if !matched {
            continue;
        }
        if route.method == *method {
            return Found::Route(route, params);
        }
        methods.push(&route.method);
    }
    if methods.is_empty() {
        Found::None
    } else {
        Found::WrongMethod(methods)
    }
}

/// Checks the bearer token; the actor is `token:NAME`.
pub fn authenticate(
    tokens: &TokenSet,
    authorization: Option<&HeaderValue>,
    conn: &ConnInfo,
) -> Result<Actor, ApiError> {
    let presented = authorization
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
        .ok_or(ApiError::Unauthorized)?;
    let current = tokens.current();
    let name = current.check(presented.as_bytes()).ok_or(ApiError::Unauthorized)?;
    Ok(Actor {
        name: format!("token:{name}"),
        client: Some(conn.peer.to_string()),
        client_cert_verified: conn.client_cert_verified,
    })
}

/// The JSON answer to an error, with `WWW-Authenticate` on 401 and
/// `Allow` on 405.
pub fn error_response(err: &ApiError) -> (StatusCode, Vec<(header::HeaderName, String)>, serde_json::Value) {
    let status = err.status();
    if status.is_server_error() {
        tracing::error!(error = %err, "admin API request failed");
    }
    let mut headers = Vec::new();
    match err {
        ApiError::Unauthorized => headers.push((header::WWW_AUTHENTICATE, "Bearer realm=\"fedgate admin\"".into())),
        ApiError::MethodNotAllowed { allow, .. } => headers.push((header::ALLOW, allow.clone())),
        _ => {}
    }
    let body = serde_json::to_value(err.body()).unwrap_or_default();
    (status, headers, body)
}

// ---- request and response types -------------------------------------------

/// `POST /api/v1/users`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    #[schema(example = "alice@corp.example.com")]
    pub upn: String,
    /// `disabled` unless given.
    #[schema(value_type = Option<MfaState>)]
    #[serde(default)]
    pub state: Option<String>,
    /// The user's password; none: app passwords only.
    #[serde(default)]
    pub password: Option<String>,
}

/// An MFA state to set.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewState {
    #[schema(value_type = MfaState)]
    pub state: String,
}

/// One line of a bulk change.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserLine {
    pub upn: String,
    /// Required for a state change; `disabled` when an import leaves it out.
    #[schema(value_type = Option<MfaState>)]
    #[serde(default)]
    pub state: Option<String>,
}

/// `POST /api/v1/bulk/user-states` and `/api/v1/bulk/user-import`: every
/// line or none; lines are numbered from 1 in the error report.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserLines {
    pub lines: Vec<UserLine>,
}

impl UserLines {
    fn state_lines(self) -> Vec<StateLine> {
        self.lines
            .into_iter()
            .enumerate()
            .map(|(i, l)| StateLine {
                line: i + 1,
                upn: l.upn,
                state: l.state.unwrap_or_default(),
            })
            .collect()
    }
}

/// A password to set.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewPassword {
    pub password: String,
}

/// An app password to create.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewAppPassword {
    /// The device it is for (1 to 64 characters, unique per user).
    #[schema(example = "iPhone Mail")]
    pub name: String,
    /// Route names (`[[route]] name`) it may sign in on; none: every route.
    #[serde(default)]
    #[schema(example = json!(["mail"]))]
    pub scope: Vec<String>,
    /// How long it works, such as `90d`; none: until deleted.
    #[serde(default)]
    #[schema(example = "90d")]
    pub expires: Option<String>,
    /// Client networks (CIDRs) it may be used from; none: anywhere.
    #[serde(default)]
    #[schema(example = json!(["192.0.2.0/24"]))]
    pub from: Vec<String>,
}

/// A narrowing of an app password's limits: each limit given replaces the
/// current one and must not widen it; those left out stay as they are.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NarrowAppPassword {
    #[serde(default)]
    pub scope: Option<Vec<String>>,
    #[serde(default)]
    pub expires: Option<String>,
    #[serde(default)]
    pub from: Option<Vec<String>>,
}

/// Settings to change; those left out stay as they are.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SettingsChange {
    #[serde(default)]
    pub allow_app_passwords: Option<bool>,
}

/// A deleted app password.
#[derive(Serialize, ToSchema)]
pub struct DeletedAppPassword {
    pub upn: String,
    pub deleted: String,
}

/// Query of `GET /api/v1/users`.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct UsersParams {
    /// Only users in this MFA state.
    state: Option<MfaState>,
    /// Only users from here.
    source: Option<UserSource>,
    /// Only users who may sign in (`true`) or may not (`false`).
    enabled: Option<bool>,
    /// Only UPNs starting with this (case-insensitive).
    prefix: Option<String>,
    /// Only UPNs containing this (case-insensitive).
    contains: Option<String>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
    /// Users per page, 1 to 1000 (100 by default).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

/// Query of `GET /api/v1/reports/usage`.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct UsageParams {
    /// First UTC day, `YYYY-MM-DD` (default: 29 days before `to`).
    from: Option<String>,
    /// Last UTC day, included, `YYYY-MM-DD` (default: today). At most 366 days in all.
    to: Option<String>,
}

/// Query of `GET /api/v1/signins`.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct SigninsParams {
    /// Only this user's sign-ins (and attempts under that name).
    user: Option<String>,
    /// Only the last DURATION, such as `1h`, `30m`, `7d`.
    since: Option<String>,
    /// `success` or `failure`.
    result: Option<SigninResult>,
    /// At most this many records, 1 to 100000 (100 by default).
    #[param(minimum = 1, maximum = 100000)]
    limit: Option<u32>,
}

/// A sign-in's outcome, as a filter.
#[derive(ToSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum SigninResult {
    Success,
    Failure,
}

/// Query of `GET /api/v1/admin-events`.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct EventsParams {
    /// At most this many events, 1 to 100000 (100 by default).
    #[param(minimum = 1, maximum = 100000)]
    limit: Option<u32>,
    /// Only events with an id below this (the next page: the last id seen).
    before: Option<i64>,
}

/// Query of `POST /api/v1/sync/run`.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct SyncRunParams {
    /// Only entries changed since the last pass (else a full pass).
    incremental: Option<bool>,
    /// Apply the pass even if the mass-change guard would stop it.
    force: Option<bool>,
}

// ---- handlers ---------------------------------------------------------------

#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "meta",
    responses((status = 200, description = "This document", content_type = "application/json", body = Object)))]
async fn openapi_document(_: &Api, call: Call) -> Result<Reply, ApiError> {
    call.query(&[])?;
    ok(&document())
}

#[utoipa::path(get, path = "/api/v1/users", tag = "users", params(UsersParams),
    responses((status = 200, description = "One page of users, by UPN", body = UserPage)))]
async fn list_users(api: &Api, call: Call) -> Result<Reply, ApiError> {
    let q = call.query(&["state", "source", "enabled", "prefix", "contains", "cursor", "limit"])?;
    let state = q.text("state").map(|s| manage::parse_state("state", &s)).transpose()?;
    let query = UserQuery {
        state,
        source: q.parsed("source", "cloud or federated")?,
        enabled: q.flag("enabled")?,
        prefix: q.text("prefix"),
        contains: q.text("contains"),
        cursor: q.text("cursor"),
        limit: Some(
            q.parsed("limit", "a number from 1 to 1000")?
                .unwrap_or(manage::DEFAULT_PAGE),
        ),
    };
    ok(&api.manager.list_users(&query).await?)
}

#[utoipa::path(post, path = "/api/v1/users", tag = "users", request_body = NewUser,
    responses((status = 201, description = "The new cloud-only user", body = User),
        (status = 409, description = "A user of that UPN exists", body = ErrorBody)))]
async fn add_user(api: &Api, call: Call) -> Result<Reply, ApiError> {
    call.query(&[])?;
    let new: NewUser = call.json()?;
    let state = match new.state.as_deref() {
        None => MfaState::Disabled,
        Some(s) => manage::parse_state("state", s)?,
    };
    let user = api
        .manager
        .add_user(&call.actor, &new.upn, state, new.password.map(Secret::from))
        .await?;
    reply(StatusCode::CREATED, &user)
}

#[utoipa::path(get, path = "/api/v1/users/{upn}", tag = "users", params(("upn" = String, Path, description = "The user's UPN")),
    responses((status = 200, description = "The user and their app passwords", body = UserDetail),
        (status = 404, description = "No such user", body = ErrorBody)))]
async fn show_user(api: &Api, call: Call) -> Result<Reply, ApiError> {
    call.query(&[])?;
    ok(&api.manager.show_user(call.param(0)).await?)
}

#[utoipa::path(delete, path = "/api/v1/users/{upn}", tag = "users", params(("upn" = String, Path, description = "The user's UPN")),
    responses((status = 200, description = "The user is marked deleted, their app passwords revoked; a directory user returns at the next sync if the directory still has them", body = Deleted),
        (status = 404, description = "No such user", body = ErrorBody)))]
async fn delete_user(api: &Api, call: Call) -> Result<Reply, ApiError> {
    call.query(&[])?;
    ok(&api.manager.delete_user(&call.actor, call.param(0)).await?)
}

#[utoipa::path(put, path = "/api/v1/users/{upn}/state", tag = "users", params(("upn" = String, Path, description = "The user's UPN")),
    request_body = NewState,
    responses((status = 200, description = "The user in their new MFA state", body = User),
        (status = 404, description = "No such user", body = ErrorBody)))]
async fn set_state(api: &Api, call: Call) -> Result<Reply, ApiError> {
    call.query(&[])?;
    let body: NewState = call.json()?;
    let state = manage::parse_state("state", &body.state)?;
    ok(&api.manager.set_state(&call.actor, call.param(0), state).await?)
}

#[utoipa::path(post, path = "/api/v1/users/{upn}/disable", tag = "users", params(("upn" = String, Path, description = "The user's UPN")),
    responses((status = 200, description = "Every sign-in of the user is refused", body = User),
        (status = 404, description = "No such user", body = ErrorBody)))]
async fn disable_user(api: &Api, call: Call) -> Result<Reply, ApiError> {
    call.query(&[])?;
    ok(&api.manager.set_enabled(&call.actor, call.param(0), false).await?)
}

#[utoipa::path(post, path = "/api/v1/users/{upn}/enable", tag = "users", params(("upn" = String, Path, description = "The user's UPN")),
    responses((status = 200, description = "The user may sign in again", body = User),
        (status = 404, description = "No such user", body = ErrorBody)))]
async fn enable_user(api: &Api, call: Call) -> Result<Reply, ApiError> {
    call.query(&[])?;
    ok(&api.manager.set_enabled(&call.actor, call.param(0), true).await?)
}

#[utoipa::path(post, path = "/api/v1/users/{upn}/require-registration", tag = "users", params(("upn" = String, Path, description = "The user's UPN")),
    responses((status = 200, description = "The user registers their second factor again", body = User),
        (status = 404, description = "No such user", body = ErrorBody)))]
async fn require_registration(api: &Api, call: Call) -> Result<Reply, ApiError> {
    call.query(&[])?;
    ok(&api.manager.require_registration(&call.actor, call.param(0)).await?)
}

#[utoipa::path(put, path = "/api/v1/users/{upn}/password", tag = "users", params(("upn" = String, Path, description = "The user's UPN")),
    request_body = NewPassword,
    responses((status = 200, description = "The cloud-only user's password is set", body = User),
        (status = 404, description = "No such user", body = ErrorBody),
        (status = 409, description = "A directory user: the directory checks their password", body = ErrorBody)))]
async fn set_password(api: &Api, call: Call) -> Result<Reply, ApiError> {
    call.query(&[])?;
    let body: NewPassword = call.json()?;
    let user = api
        .manager
        .set_password(&call.actor, call.param(0), Some(Secret::from(body.password)))
        .await?;
    ok(&user)
}

#[utoipa::path(delete, path = "/api/v1/users/{upn}/password", tag = "users", params(("upn" = String, Path, description = "The user's UPN")),
    responses((status = 200, description = "The cloud-only user has no password: app passwords only", body = User),
        (status = 404, description = "No such user", body = ErrorBody),
        (status = 409, description = "A directory user", body = ErrorBody)))]
async fn clear_password(api: &Api, call: Call) -> Result<Reply, ApiError> {
    call.query(&[])?;
    ok(&api.manager.set_password(&call.actor, call.param(0), None).await?)
}

#[utoipa::path(post, path = "/api/v1/users/{upn}/revoke-app-passwords", tag = "app passwords", params(("upn" = String, Path, description = "The user's UPN")),
    responses((status = 200, description = "Every app password of the user is deleted", body = Revoked),
        (status = 404, description = "No such user", body = ErrorBody)))]
async fn revoke_app_passwords(api: &Api, call: Call) -> Result<Reply, ApiError> {
    call.query(&[])?;
    ok(&api.manager.revoke_app_passwords(&call.actor, call.param(0)).await?)
}

#[utoipa::path(get, path = "/api/v1/users/{upn}/app-passwords", tag = "app passwords", params(("upn" = String, Path, description = "The user's UPN")),
    responses((status = 200, description = "The user's app passwords (never the passwords)", body = Vec<AppPassword>),
        (status = 404, description = "No such user", body = ErrorBody)))]
async fn list_app_passwords(api: &Api, call: Call) -> Result<Reply, ApiError> {
    call.query(&[])?;
    ok(&api.manager.app_passwords(call.param(0)).await?)
}

#[utoipa::path(post, path = "/api/v1/users/{upn}/app-passwords", tag = "app passwords", params(("upn" = String, Path, description = "The user's UPN")),
    request_body = NewAppPassword,
    responses((status = 201, description = "The new app password; `password` is shown this once", body = CreatedAppPassword),
        (status = 404, description = "No such user", body = ErrorBody),
        (status = 409, description = "The name is taken, or the user has the most app passwords allowed", body = ErrorBody)))]
async fn create_app_password(api: &Api, call: Call) -> Result<Reply, ApiError> {
    call.query(&[])?;
    let body: NewAppPassword = call.json()?;
    let (created, _shown) = api
        .manager
        .create_app_password(
            &call.actor,
            call.param(0),
            &body.name,
            &LimitsRequest {
                scope: body.scope,
                expires: body.expires,
                from: body.from,
            },
        )
        .await?;
    reply(StatusCode::CREATED, &created)
}

#[utoipa::path(patch, path = "/api/v1/users/{upn}/app-passwords/{name}", tag = "app passwords",
    params(("upn" = String, Path, description = "The user's UPN"), ("name" = String, Path, description = "The app password's name")),
    request_body = NarrowAppPassword,
    responses((status = 200, description = "The app password with its narrowed limits", body = AppPassword),
        (status = 404, description = "No such user or app password", body = ErrorBody)))]
async fn narrow_app_password(api: &Api, call: Call) -> Result<Reply, ApiError> {
    call.query(&[])?;
    let body: NarrowAppPassword = call.json()?;
    let narrow = NarrowRequest {
        scope: body.scope,
        expires: body.expires,
        from: body.from,
    };
    ok(&api
        .manager
        .narrow_app_password(&call.actor, call.param(0), call.param(1), &narrow)
        .await?)
}

#[utoipa::path(delete, path = "/api/v1/users/{upn}/app-passwords/{name}", tag = "app passwords",
    params(("upn" = String, Path, description = "The user's UPN"), ("name" = String, Path, description = "The app password's name")),
    responses((status = 200, description = "The app password is deleted", body = DeletedAppPassword),
        (status = 404, description = "No such user or app password", body = ErrorBody)))]
async fn delete_app_password(api: &Api, call: Call) -> Result<Reply, ApiError> {
    call.query(&[])?;
    let user = api.manager.user(call.param(0)).await?;
    api.manager
        .delete_app_password(&call.actor, user.upn.as_str(), call.param(1))
        .await?;
    ok(&DeletedAppPassword {
        upn: user.upn.to_string(),
        deleted: call.param(1).to_owned(),
    })
}

#[utoipa::path(post, path = "/api/v1/bulk/user-states", tag = "users", request_body = UserLines,
    responses((status = 200, description = "Every line applied", body = BulkApplied),
        (status = 422, description = "No line applied: every refused line, by number", body = ErrorBody)))]
async fn set_states(api: &Api, call: Call) -> Result<Reply, ApiError> {
    call.query(&[])?;
    let body: UserLines = call.json()?;
    ok(&api.manager.set_states(&call.actor, &body.state_lines()).await?)
}

#[utoipa::path(post, path = "/api/v1/bulk/user-import", tag = "users", request_body = UserLines,
    responses((status = 201, description = "Every user created (cloud-only, no password)", body = Vec<User>),
        (status = 422, description = "No user created: every refused line, by number", body = ErrorBody)))]
async fn import_users(api: &Api, call: Call) -> Result<Reply, ApiError> {
    call.query(&[])?;
    let body: UserLines = call.json()?;
    reply(
        StatusCode::CREATED,
        &api.manager.import_users(&call.actor, &body.state_lines()).await?,
    )
}

#[utoipa::path(get, path = "/api/v1/settings", tag = "settings",
    responses((status = 200, description = "Store-wide settings", body = Settings)))]
async fn show_settings(api: &Api, call: Call) -> Result<Reply, ApiError> {
    call.query(&[])?;
    ok(&api.manager.settings().await?)
}

#[utoipa::path(put, path = "/api/v1/settings", tag = "settings", request_body = SettingsChange,
    responses((status = 200, description = "The settings after the change", body = Settings)))]
async fn set_settings(api: &Api, call: Call) -> Result<Reply, ApiError> {
    call.query(&[])?;
    let change: SettingsChange = call.json()?;
    let settings = match change.allow_app_passwords {
        Some(allow) => api.manager.set_allow_app_passwords(&call.actor, allow).await?,
        None => api.manager.settings().await?,
    };
    ok(&settings)
}

#[utoipa::path(get, path = "/api/v1/signins", tag = "sign-ins", params(SigninsParams),
    responses((status = 200, description = "Sign-in records, newest first", body = Vec<AuditRecord>)))]
async fn signins(api: &Api, call: Call) -> Result<Reply, ApiError> {
    let q = call.query(&["user", "since", "result", "limit"])?;
    let query = SigninQuery {
        user: q.text("user"),
        since: q.text("since"),
        result: q.text("result"),
        limit: q.parsed("limit", "a number from 1 to 100000")?,
    };
    ok(&api.manager.signins(&query).await?)
}

#[utoipa::path(get, path = "/api/v1/reports/usage", tag = "reports", params(UsageParams),
    responses((status = 200, description = "Per UTC day: sign-ins by credential kind and result, users enabled or enforced; and the app passwords not used for 90 days", body = crate::report::UsageReport)))]
async fn usage_report(api: &Api, call: Call) -> Result<Reply, ApiError> {
    let q = call.query(&["from", "to"])?;
    let (from, to) = (q.text("from"), q.text("to"));
    ok(&api.manager.usage_report(from.as_deref(), to.as_deref()).await?)
}

#[utoipa::path(get, path = "/api/v1/sync", tag = "sync",
    responses((status = 200, description = "The last pass of each kind, the lag and the leader", body = SyncStatus)))]
async fn sync_status(api: &Api, call: Call) -> Result<Reply, ApiError> {
    call.query(&[])?;
    ok(&api
        .manager
        .sync_status(api.syncer.as_ref().map(|s| s.mode().as_str()))
        .await?)
}

#[utoipa::path(post, path = "/api/v1/sync/run", tag = "sync", params(SyncRunParams),
    responses((status = 200, description = "The pass, as it ended (see `outcome`)", body = SyncPass),
        (status = 409, description = "No sync configured, or a pass is running", body = ErrorBody)))]
async fn sync_run(api: &Api, call: Call) -> Result<Reply, ApiError> {
    let q = call.query(&["incremental", "force"])?;
    let kind = if q.flag("incremental")?.unwrap_or(false) {
        PassKind::Incremental
    } else {
        PassKind::Full
    };
    let force = q.flag("force")?.unwrap_or(false);
    let syncer = Arc::clone(api.syncer.as_ref().ok_or(ManageError::SyncNotConfigured)?);
    // On a task of its own: a client that goes away (or a connection that
    // reaches its limit) does not cut a pass short; its record is written
    // and `GET /api/v1/sync` shows it.
    let pass = tokio::spawn(async move { syncer.run(kind, force, false).await })
        .await
        .map_err(|err| ManageError::Internal(format!("the sync pass ended abnormally: {err}")))?
        .map_err(|_| ManageError::SyncBusy)?;
    api.manager.record_sync_run(&call.actor, &pass).await;
    ok(&pass)
}

#[utoipa::path(get, path = "/api/v1/admin-events", tag = "admin events", params(EventsParams),
    responses((status = 200, description = "Administrative changes, newest first", body = Vec<AdminEvent>)))]
async fn admin_events(api: &Api, call: Call) -> Result<Reply, ApiError> {
    let q = call.query(&["limit", "before"])?;
    let limit = q.parsed("limit", "a number from 1 to 100000")?;
    let before = q.parsed("before", "an event id")?;
    ok(&api.manager.admin_events(limit, before).await?)
}

// ---- the OpenAPI document ---------------------------------------------------

#[derive(OpenApi)]
#[openapi(
    info(title = "fedgate admin API", description = "Users, MFA states, app passwords, settings, the sign-in log, the directory sync and the admin event log. Every error is a JSON ErrorBody."),
    paths(
        openapi_document, list_users, add_user, show_user, delete_user, set_state, disable_user, enable_user,
        require_registration, set_password, clear_password, revoke_app_passwords, list_app_passwords,
        create_app_password, narrow_app_password, delete_app_password, set_states, import_users, show_settings, set_settings,
        signins, usage_report, sync_status, sync_run, admin_events,
    ),
    components(schemas(ErrorBody, SigninResult)),
    modifiers(&Common),
    security(("bearer" = [])),
)]
struct ApiDoc;

/// Adds what every operation shares: the bearer scheme and the error
/// answers any request can get.
struct Common;

impl utoipa::Modify for Common {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme("bearer", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
        let error = |description: &str| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("ErrorBody")))
                        .build(),
                )
                .build()
        };
        let common = [
            (
                "400",
                "Bad input: the message names the field or parameter; nothing changed",
            ),
            ("401", "Missing or wrong bearer token; nothing changed"),
            ("413", "The body is larger than 1 MiB; nothing changed"),
            ("415", "The body is not application/json; nothing changed"),
            ("500", "Internal error (see the server log)"),
            ("503", "The store is unavailable; retry"),
        ];
        for item in doc.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ];
            for op in operations.into_iter().flatten() {
                for (status, description) in common {
                    op.responses
                        .responses
                        .entry(status.to_owned())
                        .or_insert_with(|| error(description).into());
                }
            }
        }
    }
}

/// The OpenAPI document of [`ROUTES`].
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

#[cfg(test)]
mod tests;
