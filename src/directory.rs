//! The on-premises directory (LDAP / Active Directory): where federated
//! users' organizational passwords are checked, with a bind.
//!
//! [`Directory`] is the small trait the sign-in path calls;
//! [`client::LdapDirectory`] implements it over ldap3 with failover between
//! servers, TLS (ldaps:// or StartTLS) on rustls, a pool of service-account
//! connections for searches and a bounded pool of connections for user
//! binds. [`template`] renders the configured filters with every value
//! escaped; [`ad`] knows Active Directory's encodings (bind diagnostic
//! sub-codes, `objectGUID`).
//!
//! Nothing here decides who gets in: a check reports what the directory
//! said, and the decision table in [`crate::auth::decision`] acts on it.

pub mod ad;
pub mod client;
pub mod template;

use std::fmt;

use futures_util::future::BoxFuture;

use crate::model::{FederatedUser, Secret, Upn};

pub use client::LdapDirectory;

/// A user name as given at sign-in, in one of the forms the directory
/// resolves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginName {
    /// `alice@corp.example.com`
    Upn(Upn),
    /// `CORP\alice` (domain checked, then dropped) or bare `alice`.
    Login(String),
}

impl LoginName {
    /// Parses what a client sent as its user name, folded once by
    /// [`crate::names::normalize`] (so `ａlice`, `ALICE` and `alice` are one
    /// login, and that login is what the directory is sent). `domain`, when
    /// set, is the only NetBIOS domain accepted before a backslash; without
    /// it any domain is dropped, so `X1\alice` is the login `alice` and
    /// shares its lockout budget. `None` for a name that can be no user
    /// (empty, control or invisible characters, too long, not ASCII unless
    /// `allow_non_ascii`, another domain): such a name is refused without
    /// asking anyone.
    pub fn parse(given: &str, domain: Option<&str>, allow_non_ascii: bool) -> Option<LoginName> {
        let given = crate::names::normalize(given, allow_non_ascii).ok()?;
        if given.contains('@') {
            return Upn::parse(&given).ok().map(LoginName::Upn);
        }
        let login = match given.split_once('\\') {
            Some((dom, login)) => {
                if dom.is_empty() || login.contains('\\') {
                    return None;
                }
                if domain.is_some_and(|d| !d.eq_ignore_ascii_case(dom)) {
                    return None;
                }
                login.trim()
            }
            None => &given,
        };
        (!login.is_empty()).then(|| LoginName::Login(login.to_owned()))
    }

    /// The login part for a `{login}` placeholder: the name itself, or a
    /// UPN's local part.
    pub fn login(&self) -> &str {
        match self {
            LoginName::Upn(upn) => upn.local_part(),
            LoginName::Login(login) => login,
        }
    }
}

impl fmt::Display for LoginName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoginName::Upn(upn) => upn.fmt(f),
            LoginName::Login(login) => f.write_str(login),
        }
    }
}

/// What fedgate already knows about the user, which saves a search.
#[derive(Debug, Clone, Copy)]
pub struct Known<'a> {
    pub upn: &'a Upn,
    pub dn: &'a str,
}

/// What the directory said about a password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checked {
    /// The bind succeeded. `entry` holds the entry as just read, when the
    /// check searched for it (first sign-in, or the known DN was stale).
    Valid { entry: Option<FederatedUser> },
    /// Wrong password, or no such user (the two are not told apart).
    Invalid,
    /// The account is disabled or expired in the directory.
    Disabled,
    /// The directory locked the account out after failed attempts.
    LockedOut,
}

/// The directory could not give an answer. The message names the server.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DirectoryError {
    #[error("directory {server}: {reason}")]
    Unavailable { server: String, reason: String },
    #[error("no directory answered within {0:?}")]
    Timeout(std::time::Duration),
    #[error("directory: too many sign-ins waiting for a bind")]
    Busy,
    #[error("directory {server}: the service account {dn} cannot bind ({reason}); check directory.bind_dn and directory.bind_password_file")]
    ServiceBind { server: String, dn: String, reason: String },
}

impl DirectoryError {
    /// Every [`DirectoryError::kind`], for metrics that must exist at start.
    pub const KINDS: &'static [&'static str] = &["unavailable", "timeout", "busy", "service_bind"];

    /// The error's kind, as the `kind` label of `fedgate_directory_errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            DirectoryError::Unavailable { .. } => "unavailable",
            DirectoryError::Timeout(_) => "timeout",
            DirectoryError::Busy => "busy",
            DirectoryError::ServiceBind { .. } => "service_bind",
        }
    }
}

/// Checks organizational passwords against the directory.
pub trait Directory: Send + Sync + fmt::Debug {
    /// Binds as the user `name` with `password`. The caller has already
    /// refused empty passwords and app-password-shaped secrets; this
    /// refuses them again, without a bind.
    fn check_password<'a>(
        &'a self,
        name: &'a LoginName,
        known: Option<Known<'a>>,
        password: &'a Secret,
    ) -> BoxFuture<'a, Result<Checked, DirectoryError>>;

    /// The NetBIOS domain accepted in `DOMAIN\login` names.
    fn domain(&self) -> Option<&str>;

    /// Whether user names outside ASCII (after folding) are accepted:
    /// `directory.allow_non_ascii_logins`.
    fn allow_non_ascii_logins(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_names_take_the_forms_windows_clients_send() {
        assert_eq!(
            LoginName::parse("Alice@Corp.Example.com", None, false),
            Some(LoginName::Upn(Upn::parse("alice@corp.example.com").unwrap()))
        );
        assert_eq!(
            LoginName::parse("CORP\\alice", None, false),
            Some(LoginName::Login("alice".into()))
        );
        assert_eq!(
            LoginName::parse("corp\\alice", Some("CORP"), false),
            Some(LoginName::Login("alice".into()))
        );
        assert_eq!(LoginName::parse("OTHER\\alice", Some("CORP"), false), None);
        assert_eq!(
            LoginName::parse("alice", Some("CORP"), false),
            Some(LoginName::Login("alice".into()))
        );
        for bad in [
            "",
            " ",
            "\\alice",
            "CORP\\",
            "a\\b\\c",
            "nul\0",
            "a@b@c",
            &"x".repeat(300),
        ] {
            assert_eq!(LoginName::parse(bad, None, true), None, "{bad:?}");
        }
        assert_eq!(LoginName::Upn(Upn::parse("bob@x.org").unwrap()).login(), "bob");
        // Look-alikes are the login they look like, or no login at all.
        for alike in [
            "\u{FF41}lice",
            "a\u{FF4C}ice",
            "\u{1D41A}lice",
            "\u{AA}lice",
            "X1\\ALICE",
            "Q9\\alice",
        ] {
            assert_eq!(
                LoginName::parse(alike, None, false),
                Some(LoginName::Login("alice".into())),
                "{alike:?}"
            );
        }
        assert_eq!(LoginName::parse("AL\u{130}CE", None, false), None);
        assert_eq!(
            LoginName::parse("AL\u{130}CE", None, true),
            Some(LoginName::Login("ali\u{307}ce".into()))
        );
        assert_eq!(
            LoginName::parse("\u{212A}ate@x.example", None, false)
                .unwrap()
                .to_string(),
            "kate@x.example"
        );
    }
}
