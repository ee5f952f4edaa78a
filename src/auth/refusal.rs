//! Refusals as values: why a sign-in (or a portal form) was refused and
//! when the client may come back, without saying how HTTP spells it.
//! [`crate::proxy::error`] is the one place a refusal becomes a status,
//! headers and a body.
//!
//! Also the rules that depend only on the refusal: which refusals answer a
//! guess and so cost one argon2 verification and wait `failure_delay`, and
//! which go at once.

use std::time::Duration;

use crate::model::Reason;

/// The class of a refusal: what the client should do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Ask for (other) credentials: 401 with the Basic challenge.
    Unauthorized,
    /// Too many wrong secrets: 429, come back after `retry_after`.
    TooManyAttempts,
    /// fedgate cannot decide now (directory, store, hashing pool): 503,
    /// try again later and do not ask the user again.
    Unavailable,
    /// Signed in, or presenting a form, but not allowed this: 403.
    Forbidden,
}

/// How long a client is told to wait after fedgate's own overload.
pub const RETRY_OVERLOADED: Duration = Duration::from_secs(1);
/// How long a client is told to wait while the directory or the store
/// cannot answer.
pub const RETRY_UNAVAILABLE: Duration = Duration::from_secs(5);

/// A refused sign-in: the class, the audit reason, and when to come back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignInRefusal {
    pub refusal: Refusal,
    pub reason: Reason,
    pub retry_after: Option<Duration>,
}

/// A wait in whole seconds, as `Retry-After` and the portal's page say
/// it: rounded up, so a client that comes back on time finds it over; at
/// least one.
pub fn retry_after_seconds(wait: Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

impl SignInRefusal {
    /// See [`answers_a_guess`].
    pub fn answers_a_guess(&self) -> bool {
        answers_a_guess(self.refusal, self.reason)
    }
}

/// Whether a refusal answers a guess (a secret, or a name and a secret,
/// that fedgate read and turned down). Those cost one argon2 verification
/// and are held back to `failure_delay`, so that they all look alike
/// whoever the name is. The bare challenge (no credentials), 429 and 503
/// tell a guesser nothing about the secret and go at once; so does 403,
/// which refuses a session or a form, not a secret.
pub fn answers_a_guess(refusal: Refusal, reason: Reason) -> bool {
    refusal == Refusal::Unauthorized && reason != Reason::NoCredentials
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(refusal: Refusal, reason: Reason) -> SignInRefusal {
        SignInRefusal {
            refusal,
            reason,
            retry_after: None,
        }
    }

    #[test]
    fn only_refused_guesses_wait() {
        for reason in [
            Reason::BadCredentials,
            Reason::Malformed,
            Reason::AccountDisabled,
            Reason::AppPasswordRequired,
            Reason::AppPasswordsNotAllowed,
            Reason::AppPasswordNotValidOnprem,
        ] {
            assert!(refusal(Refusal::Unauthorized, reason).answers_a_guess(), "{reason:?}");
        }
        for (class, reason) in [
            (Refusal::Unauthorized, Reason::NoCredentials),
            (Refusal::TooManyAttempts, Reason::LockedOut),
            (Refusal::Unavailable, Reason::Overloaded),
            (Refusal::Unavailable, Reason::DirectoryUnavailable),
            (Refusal::Unavailable, Reason::StoreUnavailable),
            (Refusal::Forbidden, Reason::BadCredentials),
        ] {
            assert!(!refusal(class, reason).answers_a_guess(), "{class:?} {reason:?}");
        }
    }
}
