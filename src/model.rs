//! Plain data shared by the store, the sign-in path and the command line:
//! identifiers, user and app-password records, audit records, secrets and
//! the clock.
//!
//! This module owns the *shape* and the *validation* of these values (what a
//! UPN or an app-password name may look like, how an MFA state is spelled).
//! It owns no I/O and no policy: who may sign in with what is decided by the
//! auth code, and persistence lives in [`crate::store`]. Hashing and the
//! app-password format live in [`crate::app_password`].

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use zeroize::Zeroize;

/// Longest UPN accepted, in bytes of its canonical (lowercased) form.
pub const MAX_UPN_BYTES: usize = 256;
/// Longest app-password name, in characters after trimming.
pub const MAX_APP_PASSWORD_NAME_CHARS: usize = 64;
/// Longest user name kept in an audit record, in characters.
pub const MAX_AUDIT_UPN_CHARS: usize = 256;
/// Longest client address kept, in characters.
pub const MAX_AUDIT_IP_CHARS: usize = 64;
/// Longest user agent kept in an audit record or as an app password's
/// last-used agent, in characters.
pub const MAX_AUDIT_USER_AGENT_CHARS: usize = 512;

/// A value that is not a valid UPN, MFA state, name, ...
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    #[error("user name is empty: expected a UPN such as alice@corp.example.com")]
    UpnEmpty,
    #[error(
        "user name {given:?} is not a UPN: expected exactly one '@' with a name before it \
         and a domain after it, such as alice@corp.example.com"
    )]
    UpnShape { given: String },
    #[error("user name is {len} bytes long; a UPN may be at most {MAX_UPN_BYTES} bytes")]
    UpnTooLong { len: usize },
    #[error("user name {given:?} contains a control or invisible character")]
    UpnControl { given: String },
    #[error("invalid {what} {given:?}: expected {expected}")]
    InvalidValue {
        what: &'static str,
        given: String,
        expected: &'static str,
    },
    #[error("app-password name is empty: give the device a name such as \"alice's phone\"")]
    AppPasswordNameEmpty,
    #[error(
        "app-password name is {chars} characters long; \
         at most {MAX_APP_PASSWORD_NAME_CHARS} are allowed"
    )]
    AppPasswordNameTooLong { chars: usize },
    #[error("app-password name {given:?} contains a control character")]
    AppPasswordNameControl { given: String },
}

/// A user principal name in canonical form: trimmed and lowercased, so that
/// `Alice@Corp.Example.com` and `alice@corp.example.com` are the same user.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(try_from = "String", into = "String")]
#[schema(value_type = String, example = "alice@corp.example.com")]
pub struct Upn(String);

impl Upn {
    /// The canonical UPN of `input`, folded by [`crate::names::normalize`]
    /// (NFKC, lowercase, trimmed) so that every spelling of one name is one
    /// user. Non-ASCII UPNs are kept here (the store may hold them); the
    /// sign-in path refuses them first unless configured.
    pub fn parse(input: &str) -> Result<Upn, ModelError> {
        use crate::names::{normalize, NameError};
        let canonical = normalize(input, true).map_err(|e| match e {
            NameError::Empty => ModelError::UpnEmpty,
            NameError::TooLong(len) => ModelError::UpnTooLong { len },
            NameError::Control | NameError::Unstable | NameError::NonAscii => ModelError::UpnControl {
                given: audit_text(input.trim(), 64),
            },
        })?;
        let mut parts = canonical.split('@');
        let well_formed = match (parts.next(), parts.next(), parts.next()) {
            (Some(local), Some(domain), None) => !local.is_empty() && !domain.is_empty(),
            _ => false,
        };
        if !well_formed {
            return Err(ModelError::UpnShape {
                given: audit_text(input.trim(), 64),
            });
        }
        Ok(Upn(canonical))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The part before the '@'.
    pub fn local_part(&self) -> &str {
        // A parsed Upn always holds exactly one '@'.
        self.0.split_once('@').map_or(&self.0[..], |(local, _)| local)
    }

    /// The part after the '@'.
    pub fn domain(&self) -> &str {
        self.0.split_once('@').map_or("", |(_, domain)| domain)
    }
}

impl fmt::Display for Upn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Upn {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Upn::parse(s)
    }
}

impl TryFrom<String> for Upn {
    type Error = ModelError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Upn::parse(&s)
    }
}

impl From<Upn> for String {
    fn from(upn: Upn) -> String {
        upn.0
    }
}

impl AsRef<str> for Upn {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// A user's row id in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(value_type = i64)]
#[serde(transparent)]
pub struct UserId(pub i64);

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// An app password's row id in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(value_type = i64)]
#[serde(transparent)]
pub struct AppPasswordId(pub i64);

impl fmt::Display for AppPasswordId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Declares a fieldless enum spelled in lowercase (snake_case) everywhere:
/// `as_str`, `Display`, `FromStr` (case-insensitive, trimmed), serde and
/// `ALL`. One macro so the spellings cannot drift apart.
macro_rules! named_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident as $what:literal expecting $expected:literal {
            $($(#[$vmeta:meta])* $variant:ident = $text:literal,)+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
        // Every spelling is its variant's name in snake_case; said once
        // more for the schema, which does not read the renames below.
        #[serde(rename_all = "snake_case")]
        $vis enum $name {
            $($(#[$vmeta])* #[serde(rename = $text)] $variant,)+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = ModelError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                let s = s.trim();
                $(if s.eq_ignore_ascii_case($text) {
                    return Ok($name::$variant);
                })+
                Err(ModelError::InvalidValue {
                    what: $what,
                    given: audit_text(s, 64),
                    expected: $expected,
                })
            }
        }
    };
}

named_enum! {
    /// Per-user MFA state (see the decision table in DESIGN.md).
    #[derive(Default)]
    pub enum MfaState as "MFA state" expecting "disabled, enabled or enforced" {
        #[default]
        Disabled = "disabled",
        /// Enrolled, not yet registered: non-browser apps keep working.
        Enabled = "enabled",
        /// Non-browser apps must use app passwords.
        Enforced = "enforced",
    }
}

named_enum! {
    /// Where an enrolment notice stands in the store ([`crate::notify`]).
    pub enum NoticeStatus as "notice status" expecting "sending, sent, failed or no_address" {
        /// Claimed by a run that is sending it (or was, when it died).
        Sending = "sending",
        Sent = "sent",
        /// The mail server refused it or could not be reached; retried.
        Failed = "failed",
        /// The user has no mail address; tried again by the next run.
        NoAddress = "no_address",
    }
}

named_enum! {
    /// Where a user comes from, and so where their org password is checked.
    pub enum UserSource as "user source" expecting "cloud or federated" {
        /// Created in fedgate, with an optional argon2id password hash.
        Cloud = "cloud",
        /// Synchronised from the directory; the password is checked by bind.
        Federated = "federated",
    }
}

named_enum! {
    /// Which kind of secret a sign-in presented.
    pub enum CredentialKind as "credential kind" expecting "none, app_password, password or portal_session" {
        None = "none",
        AppPassword = "app_password",
        Password = "password",
        /// A browser signed in through the portal (password and code).
        PortalSession = "portal_session",
    }
}

named_enum! {
    /// Audit reason codes: one per row of the decision table in DESIGN.md,
    /// plus `overloaded` when the hashing pool refused the work and
    /// `store_unavailable` when a verified directory user could not be
    /// recorded.
    pub enum Reason as "audit reason" expecting "a reason code of the decision table" {
        NoCredentials = "no_credentials",
        Malformed = "malformed",
        AccountDisabled = "account_disabled",
        LockedOut = "locked_out",
        AppPassword = "app_password",
        AppPasswordsNotAllowed = "app_passwords_not_allowed",
        Password = "password",
        AppPasswordRequired = "app_password_required",
        AppPasswordNotValidOnprem = "app_password_not_valid_onprem",
        BadCredentials = "bad_credentials",
        /// A secret of the app-password shape whose check letters are
        /// wrong: refused like `bad_credentials`, never sent to the
        /// directory, and named apart so a helpdesk can tell the user.
        AppPasswordMistyped = "app_password_mistyped",
        /// A right app password on a route outside its scope.
        AppPasswordOutOfScope = "app_password_out_of_scope",
        /// A right app password after its expiry.
        AppPasswordExpired = "app_password_expired",
        /// A right app password from outside its networks.
        AppPasswordNetwork = "app_password_network",
        DirectoryUnavailable = "directory_unavailable",
        Overloaded = "overloaded",
        StoreUnavailable = "store_unavailable",
        /// A `[[policy]]` with `action = "deny"` decided; the record's
        /// `policy` names it (`policy_denied:<name>` in the sign-in log).
        PolicyDenied = "policy_denied",
    }
}

/// A user as the store knows it.
#[derive(Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct User {
    pub id: UserId,
    pub upn: Upn,
    pub source: UserSource,
    /// Whether the account may sign in as far as its enabled flags go:
    /// `operator_enabled && directory_enabled`.
    pub enabled: bool,
    /// Cleared by `fedgate user disable`.
    pub operator_enabled: bool,
    /// Cleared while the directory says the account is disabled (always
    /// set for cloud-only users).
    pub directory_enabled: bool,
    /// Deleted in the directory or by an operator. The row stays so audit
    /// records keep their user and a returning UPN gets the same id.
    pub deleted: bool,
    pub mfa_state: MfaState,
    /// When the user last completed MFA registration (unix ms; RFC 3339
    /// when serialised).
    #[serde(serialize_with = "ser_opt_time")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub registered_at: Option<i64>,
    #[serde(serialize_with = "ser_time")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: i64,
    /// argon2id PHC string; cloud-only users only. Never serialised: a hash
    /// is an offline-guessing target and has no place in `--json` output.
    #[serde(skip_serializing)]
    #[schema(ignore)]
    pub password_hash: Option<String>,
    /// What the directory last said about a federated user.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub directory: Option<DirectoryAttributes>,
}

/// A directory entry's attributes that fedgate keeps for a federated user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct DirectoryAttributes {
    /// Distinguished name, as last seen.
    pub dn: String,
    /// Login name (`sAMAccountName` on AD, `uid` on OpenLDAP).
    pub login: Option<String>,
    /// The entry's immutable id (`objectGUID` as a GUID string, `entryUUID`):
    /// a rename or move keeps it, so the user keeps their app passwords.
    pub anchor: Option<String>,
    pub display_name: Option<String>,
    pub mail: Option<String>,
    /// DNs of the groups the entry belongs to (`memberOf`), sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// When the directory password last changed, as the directory spells it
    /// (`pwdChangedTime`, `pwdLastSet`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_changed: Option<String>,
}

/// A user as the directory describes them, for
/// [`crate::store::UserStore::upsert_federated_user`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FederatedUser {
    pub upn: Upn,
    /// False when the directory says the account is disabled or expired.
    pub enabled: bool,
    pub attributes: DirectoryAttributes,
}

impl User {
    /// Whether the account may sign in at all, before any credential check.
    pub fn is_active(&self) -> bool {
        self.enabled && !self.deleted
    }
}

impl fmt::Debug for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("User")
            .field("id", &self.id)
            .field("upn", &self.upn)
            .field("source", &self.source)
            .field("enabled", &self.enabled)
            .field("operator_enabled", &self.operator_enabled)
            .field("directory_enabled", &self.directory_enabled)
            .field("deleted", &self.deleted)
            .field("mfa_state", &self.mfa_state)
            .field("registered_at", &self.registered_at)
            .field("created_at", &self.created_at)
            .field("password_hash", &self.password_hash.as_ref().map(|_| "***"))
            .field("directory", &self.directory)
            .finish()
    }
}

/// The name a user gives an app password (usually the device), trimmed,
/// 1 to [`MAX_APP_PASSWORD_NAME_CHARS`] characters, no control characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AppPasswordName(String);

impl AppPasswordName {
    pub fn parse(input: &str) -> Result<AppPasswordName, ModelError> {
        let name = input.trim();
        if name.is_empty() {
            return Err(ModelError::AppPasswordNameEmpty);
        }
        let chars = name.chars().count();
        if chars > MAX_APP_PASSWORD_NAME_CHARS {
            return Err(ModelError::AppPasswordNameTooLong { chars });
        }
        if name.chars().any(char::is_control) {
            return Err(ModelError::AppPasswordNameControl {
                given: audit_text(name, MAX_APP_PASSWORD_NAME_CHARS),
            });
        }
        Ok(AppPasswordName(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AppPasswordName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for AppPasswordName {
    type Error = ModelError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        AppPasswordName::parse(&s)
    }
}

impl From<AppPasswordName> for String {
    fn from(name: AppPasswordName) -> String {
        name.0
    }
}

/// An app password's metadata, safe to show to its owner and to operators.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct AppPassword {
    pub id: AppPasswordId,
    pub user_id: UserId,
    pub name: String,
    #[serde(serialize_with = "ser_time")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: i64,
    #[serde(serialize_with = "ser_opt_time")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_used_at: Option<i64>,
    pub last_ip: Option<String>,
    pub last_user_agent: Option<String>,
    /// Where, until when and from where it may be used.
    pub limits: AppPasswordLimits,
}

/// What an app password is limited to: the routes it may sign in on (by
/// `[[route]] name`), when it stops working, and the networks it may be
/// used from. Each left empty limits nothing, so an app password made
/// before limits existed works as it always did. Limits are set at
/// creation and can afterwards only be narrowed
/// ([`crate::app_password::limits::narrows`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct AppPasswordLimits {
    /// Route names, sorted; empty: every route.
    pub scope: Vec<String>,
    /// After this instant (unix ms; RFC 3339 when serialised) it is refused.
    #[serde(serialize_with = "ser_opt_time")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<i64>,
    /// Client networks (CIDRs), sorted; empty: anywhere.
    #[serde(serialize_with = "ser_networks")]
    #[schema(value_type = Vec<String>)]
    pub networks: Vec<ipnet::IpNet>,
}

impl AppPasswordLimits {
    /// Whether nothing is limited.
    pub fn is_unlimited(&self) -> bool {
        self.scope.is_empty() && self.expires_at.is_none() && self.networks.is_empty()
    }
}

fn ser_networks<S: serde::Serializer>(networks: &[ipnet::IpNet], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(networks.iter().map(ToString::to_string))
}

/// What the in-memory index needs to verify an app password: its lookup
/// tag and its hash. Kept apart from [`AppPassword`] so metadata listings
/// never carry hashes.
#[derive(Clone, PartialEq, Eq)]
pub struct AppPasswordSecretRecord {
    pub id: AppPasswordId,
    pub user_id: UserId,
    /// Carried so a successful sign-in can name the app password in its
    /// audit record without a database read.
    pub name: String,
    /// HMAC-SHA256 of the canonical app password under the server key.
    pub tag: [u8; 32],
    /// argon2id PHC string.
    pub hash: String,
    /// Checked at every sign-in, warm or not.
    pub limits: std::sync::Arc<AppPasswordLimits>,
}

impl fmt::Debug for AppPasswordSecretRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppPasswordSecretRecord")
            .field("id", &self.id)
            .field("user_id", &self.user_id)
            .field("name", &self.name)
            .field("tag", &"***")
            .field("hash", &"***")
            .field("limits", &self.limits)
            .finish()
    }
}

/// Store-wide settings an operator switches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Settings {
    /// Whether users may create and sign in with app passwords. Off by
    /// default (DESIGN.md).
    pub allow_app_passwords: bool,
}

/// One sign-in decision, as written to the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct AuditRecord {
    /// unix ms (RFC 3339 when serialised)
    #[serde(serialize_with = "ser_time")]
    #[schema(value_type = String, format = DateTime)]
    pub at: i64,
    /// The user name exactly as the client sent it (see [`audit_text`]).
    pub upn_given: String,
    /// The user it resolved to, if any.
    pub user_id: Option<UserId>,
    /// The matched route's path (or name).
    pub route: String,
    pub credential: CredentialKind,
    pub app_password_name: Option<String>,
    pub client_ip: String,
    pub user_agent: String,
    pub success: bool,
    pub reason: Reason,
    /// The `[[policy]]` that decided (its reason name), for
    /// `policy_denied`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// How many identical decisions this record stands for (the audit
    /// writer folds repeats within one flush window); `at` is the first.
    pub count: u32,
}

/// The reason as the sign-in log and the store spell it:
/// `policy_denied:<name>` when a policy decided, else the code.
pub fn reason_text(reason: Reason, policy: Option<&str>) -> std::borrow::Cow<'static, str> {
    match policy {
        Some(name) => std::borrow::Cow::Owned(format!("{}:{name}", reason.as_str())),
        None => std::borrow::Cow::Borrowed(reason.as_str()),
    }
}

/// Reads what [`reason_text`] wrote.
pub fn parse_reason_text(text: &str) -> Result<(Reason, Option<String>), ModelError> {
    match text.split_once(':') {
        Some((reason, policy)) => Ok((reason.parse()?, Some(policy.to_owned()))),
        None => Ok((text.parse()?, None)),
    }
}

impl AuditRecord {
    /// See [`reason_text`].
    pub fn reason_text(&self) -> std::borrow::Cow<'static, str> {
        reason_text(self.reason, self.policy.as_deref())
    }

    /// The record with its client-supplied text bounded and made printable.
    /// The store applies this on write, so callers need not.
    pub fn clamped(mut self) -> AuditRecord {
        self.upn_given = audit_text(&self.upn_given, MAX_AUDIT_UPN_CHARS);
        self.user_agent = audit_text(&self.user_agent, MAX_AUDIT_USER_AGENT_CHARS);
        self.route = audit_text(&self.route, MAX_AUDIT_USER_AGENT_CHARS);
        self.client_ip = audit_text(&self.client_ip, MAX_AUDIT_IP_CHARS);
        self.app_password_name = self
            .app_password_name
            .map(|name| audit_text(&name, MAX_APP_PASSWORD_NAME_CHARS));
        self
    }
}

/// Client-supplied text made safe to keep and to print: at most `max_chars`
/// characters, control characters replaced by U+FFFD. A user name is chosen
/// by whoever is knocking; a newline in it must not forge a line in
/// `fedgate signins` output or a log.
pub fn audit_text(input: &str, max_chars: usize) -> String {
    input
        .chars()
        .take(max_chars)
        .map(|c| if c.is_control() { '\u{FFFD}' } else { c })
        .collect()
}

/// A secret string (password, app password, token). `Debug` and `Display`
/// print `***`; the bytes are zeroed when it is dropped; equality takes the
/// same time wherever the first difference is.
#[derive(Clone, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Secret {
        Secret(value)
    }

    /// The secret itself. Named so that every use is easy to find.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Secret {
        Secret(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Secret {
        Secret(value.to_owned())
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Secret) -> bool {
        self.0.as_bytes().ct_eq(other.0.as_bytes()).into()
    }
}

impl Eq for Secret {}

impl Drop for Secret {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// The time source for anything that decides by time, so tests can move
/// time instead of sleeping.
pub trait Clock: Send + Sync {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> i64;
}

/// The wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        // A clock set before 1970 reads as the epoch rather than failing:
        // timestamps are for display and ordering, not for security.
        let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX)
    }
}

/// A clock that only moves when told to; for tests.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    pub fn new(now_ms: i64) -> ManualClock {
        ManualClock(AtomicI64::new(now_ms))
    }

    pub fn set(&self, now_ms: i64) {
        self.0.store(now_ms, Ordering::SeqCst);
    }

    pub fn advance(&self, by_ms: i64) {
        self.0.fetch_add(by_ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests;

/// Serialises unix milliseconds as RFC 3339 UTC (`serialize_with`): every
/// time in `--json` output and in the admin API is spelled this way.
pub fn ser_time<S: serde::Serializer>(ms: &i64, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&rfc3339(*ms))
}

/// [`ser_time`] for a time that may be missing (`null`).
pub fn ser_opt_time<S: serde::Serializer>(ms: &Option<i64>, serializer: S) -> Result<S::Ok, S::Error> {
    match ms {
        Some(ms) => serializer.serialize_str(&rfc3339(*ms)),
        None => serializer.serialize_none(),
    }
}

/// One administrative change (an admin API call or a CLI command that
/// changed something), as kept in the admin event log. `detail` is a
/// small JSON object that never holds a secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct AdminEvent {
    /// Assigned by the store; 0 before it is written.
    pub id: i64,
    /// unix ms (RFC 3339 when serialised)
    #[serde(serialize_with = "ser_time")]
    #[schema(value_type = String, format = DateTime)]
    pub at: i64,
    /// Who: `token:NAME` for the admin API, `cli` or `cli:USER` for the
    /// command line.
    pub actor: String,
    /// The client's address (admin API), if any.
    pub client: Option<String>,
    /// What was done, such as `user.add` or `app_password.delete`.
    pub action: String,
    /// What it was done to (usually a UPN).
    pub target: Option<String>,
    #[schema(value_type = Object)]
    pub detail: serde_json::Value,
}

/// Unix milliseconds as RFC 3339 UTC, seconds precision.
pub fn rfc3339(ms: i64) -> String {
    let t = UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_seconds(t).to_string()
}

/// This process as the other nodes of a store see it (`host:pid`): the
/// holder of the sync lease and lead, the sender of lockout events.
pub fn this_node() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{}:{}", host.trim(), std::process::id())
}
