//! The decision table of DESIGN.md as a pure function: given what the
//! credential check found and the user's state, who gets in and why not.
//! No I/O, no clock; the caller gathers the facts and acts on the result.

pub use super::refusal::Refusal;
use crate::config::Realm;
use crate::model::{AppPasswordId, AppPasswordLimits, CredentialKind, MfaState, Reason, User};

/// What checking the presented secret established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verified {
    /// One of the user's app passwords (by name), with its limits.
    AppPassword {
        id: AppPasswordId,
        name: std::sync::Arc<str>,
        limits: std::sync::Arc<AppPasswordLimits>,
    },
    /// The user's organizational password (argon2 for cloud-only users,
    /// directory bind for federated ones).
    Password,
    /// Wrong secret, unknown user, or an empty password.
    Invalid,
    /// The app-password shape with wrong check letters: never looked up,
    /// never sent to the directory.
    Mistyped,
    /// The directory could not be asked.
    DirectoryUnavailable,
    /// The directory says the account is disabled or expired.
    AccountDisabled,
    /// The directory locked the account out.
    LockedOut,
    /// The password was right but the store could not record the user.
    StoreUnavailable,
    /// The hashing pool refused the work.
    Overloaded,
}

/// The facts one decision is made from.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    pub realm: Realm,
    pub verified: &'a Verified,
    /// The user the name resolved to, if any.
    pub user: Option<&'a User>,
    pub allow_app_passwords: bool,
    pub locked_out: bool,
    /// What a verified app password's limits said of this use
    /// ([`crate::app_password::limits::check`]): the refusal, if any.
    pub outside_limits: Option<Reason>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow { credential: CredentialKind, reason: Reason },
    Deny { refusal: Refusal, reason: Reason },
}

impl Decision {
    pub fn reason(&self) -> Reason {
        match self {
            Decision::Allow { reason, .. } | Decision::Deny { reason, .. } => *reason,
        }
    }

    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allow { .. })
    }
}

fn deny(refusal: Refusal, reason: Reason) -> Decision {
    Decision::Deny { refusal, reason }
}

/// Rows are checked in the table's order of precedence: account state and
/// lockout first (whatever the secret), then infrastructure failures, then
/// what the credential is worth on this realm for this user.
pub fn decide(f: Facts<'_>) -> Decision {
    if let Some(user) = f.user {
        if !user.is_active() {
            return deny(Refusal::Unauthorized, Reason::AccountDisabled);
        }
    }
    if f.locked_out {
        return deny(Refusal::TooManyAttempts, Reason::LockedOut);
    }
    let user = match (f.verified, f.user) {
        (Verified::AccountDisabled, _) => return deny(Refusal::Unauthorized, Reason::AccountDisabled),
        (Verified::LockedOut, _) => return deny(Refusal::TooManyAttempts, Reason::LockedOut),
        (Verified::StoreUnavailable, _) => return deny(Refusal::Unavailable, Reason::StoreUnavailable),
        (Verified::Overloaded, _) => return deny(Refusal::Unavailable, Reason::Overloaded),
        (Verified::DirectoryUnavailable, _) => return deny(Refusal::Unavailable, Reason::DirectoryUnavailable),
        (Verified::Mistyped, _) => return deny(Refusal::Unauthorized, Reason::AppPasswordMistyped),
        (Verified::Invalid, _) | (_, None) => return deny(Refusal::Unauthorized, Reason::BadCredentials),
        (_, Some(user)) => user,
    };
    match (f.realm, f.verified) {
        (Realm::Cloud, Verified::AppPassword { .. }) => match (f.allow_app_passwords, f.outside_limits) {
            (false, _) => deny(Refusal::Unauthorized, Reason::AppPasswordsNotAllowed),
            (true, Some(reason)) => deny(Refusal::Unauthorized, reason),
            (true, None) => Decision::Allow {
                credential: CredentialKind::AppPassword,
                reason: Reason::AppPassword,
            },
        },
        (Realm::Cloud, Verified::Password) => {
            if user.mfa_state == MfaState::Enforced {
                deny(Refusal::Unauthorized, Reason::AppPasswordRequired)
            } else {
                Decision::Allow {
                    credential: CredentialKind::Password,
                    reason: Reason::Password,
                }
            }
        }
        (Realm::Onprem, Verified::AppPassword { .. }) => deny(Refusal::Unauthorized, Reason::AppPasswordNotValidOnprem),
        (Realm::Onprem, Verified::Password) => Decision::Allow {
            credential: CredentialKind::Password,
            reason: Reason::Password,
        },
        // A pass-through route never asks for a decision; refuse rather than
        // let a wiring mistake through.
        (Realm::None, _) => deny(Refusal::Unauthorized, Reason::BadCredentials),
        (
            _,
            Verified::Invalid
            | Verified::Mistyped
            | Verified::DirectoryUnavailable
            | Verified::Overloaded
            | Verified::AccountDisabled
            | Verified::LockedOut
            | Verified::StoreUnavailable,
        ) => deny(Refusal::Unauthorized, Reason::BadCredentials),
    }
}

#[cfg(test)]
mod tests;
