//! App-password limits as pure functions over plain data: reading what an
//! operator or a user asked for (`--scope`, `--expires`, `--from`) into an
//! [`AppPasswordLimits`], checking a sign-in against them, telling whether
//! a change only narrows, and the text form the store keeps.
//!
//! This module does not store anything and does not decide anything else
//! about a sign-in: the decision table (`crate::auth::decision`) places the
//! verdict of [`check`] among its rows, and only once the app password was
//! verified, so a guesser never learns what an app password is limited to.

use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;

use crate::model::{AppPasswordLimits, Reason};

/// Most routes one app password may name.
pub const MAX_SCOPE: usize = 32;
/// Most networks one app password may name.
pub const MAX_NETWORKS: usize = 32;
/// Longest route name accepted in a scope.
const MAX_ROUTE_NAME_CHARS: usize = 128;
/// The furthest expiry accepted: about ten years.
pub const MAX_EXPIRY: Duration = Duration::from_secs(3650 * 24 * 3600);

/// Limits asked for that cannot be set. Nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitsError {
    #[error("no route is named \"{given}\" (routes that ask for credentials: {known})")]
    UnknownRoute { given: String, known: String },
    #[error("a route name must be 1 to {MAX_ROUTE_NAME_CHARS} characters without control characters")]
    BadRouteName,
    #[error("at most {max} {what} may be named")]
    TooMany { what: &'static str, max: usize },
    #[error("expected a duration such as \"90d\", \"12h\" or \"30m\", got \"{given}\"")]
    BadDuration { given: String },
    #[error("the expiry must be in the future and at most 3650 days away")]
    ExpiryOutOfRange,
    #[error("expected a CIDR such as \"192.0.2.0/24\" or an IP address, got \"{given}\"")]
    BadNetwork { given: String },
    #[error("{0}: limits can only be narrowed")]
    Widens(&'static str),
}

impl LimitsError {
    /// The request field at fault: `scope`, `expires` or `from`.
    pub fn field(&self) -> &'static str {
        match self {
            LimitsError::UnknownRoute { .. } | LimitsError::BadRouteName => "scope",
            LimitsError::TooMany { what, .. } | LimitsError::Widens(what) => match *what {
                "routes" | "scope" => "scope",
                "expiry" => "expires",
                _ => "from",
            },
            LimitsError::BadDuration { .. } | LimitsError::ExpiryOutOfRange => "expires",
            LimitsError::BadNetwork { .. } => "from",
        }
    }
}

/// What was asked for, as typed: route names, a duration from now, CIDRs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Requested<'a> {
    pub scope: &'a [String],
    pub expires: Option<&'a str>,
    pub from: &'a [String],
}

/// Reads `requested` into limits. `routes` are the names of the routes
/// that ask for credentials; a scope naming another is refused (a typo
/// would make an app password that works nowhere). Names are compared
/// exactly, as `[[route]] name` is spelled; scope and networks come out
/// sorted and without repeats.
pub fn parse(requested: &Requested<'_>, routes: &[String], now_ms: i64) -> Result<AppPasswordLimits, LimitsError> {
    let mut scope = Vec::with_capacity(requested.scope.len());
    for given in requested.scope {
        let name = given.trim();
        let chars = name.chars().count();
        if chars == 0 || chars > MAX_ROUTE_NAME_CHARS || name.chars().any(char::is_control) {
            return Err(LimitsError::BadRouteName);
        }
        if !routes.iter().any(|r| r == name) {
            return Err(LimitsError::UnknownRoute {
                given: name.to_owned(),
                known: if routes.is_empty() {
                    "none".to_owned()
                } else {
                    routes.join(", ")
                },
            });
        }
        scope.push(name.to_owned());
    }
    scope.sort();
    scope.dedup();
    if scope.len() > MAX_SCOPE {
        return Err(LimitsError::TooMany {
            what: "routes",
            max: MAX_SCOPE,
        });
    }
    let expires_at = requested.expires.map(|text| expiry(text, now_ms)).transpose()?;
    let networks = networks(requested.from)?;
    Ok(AppPasswordLimits {
        scope,
        expires_at,
        networks,
    })
}

/// `now_ms` plus a duration such as `90d`, refused unless it is in the
/// future and within [`MAX_EXPIRY`].
pub fn expiry(text: &str, now_ms: i64) -> Result<i64, LimitsError> {
    let duration = humantime::parse_duration(text.trim()).map_err(|_| LimitsError::BadDuration {
        given: crate::model::audit_text(text, 40),
    })?;
    if duration.is_zero() || duration > MAX_EXPIRY {
        return Err(LimitsError::ExpiryOutOfRange);
    }
    // Bounded by MAX_EXPIRY above, so the milliseconds fit in an i64.
    Ok(now_ms.saturating_add(duration.as_millis() as i64))
}

/// CIDRs (or bare addresses, as a /32 or /128), host bits cleared, sorted,
/// without repeats.
pub fn networks(given: &[String]) -> Result<Vec<IpNet>, LimitsError> {
    let mut networks = Vec::with_capacity(given.len());
    for text in given {
        let text = text.trim();
        let net = match text.parse::<IpNet>() {
            Ok(net) => net.trunc(),
            Err(_) => text
                .parse::<IpAddr>()
                .map(IpNet::from)
                .map_err(|_| LimitsError::BadNetwork {
                    given: crate::model::audit_text(text, 60),
                })?,
        };
        networks.push(net);
    }
    networks.sort();
    networks.dedup();
    if networks.len() > MAX_NETWORKS {
        return Err(LimitsError::TooMany {
            what: "networks",
            max: MAX_NETWORKS,
        });
    }
    Ok(networks)
}

/// One sign-in as the limits see it.
#[derive(Debug, Clone, Copy)]
pub struct Use<'a> {
    /// `[[route]] name` of the route signed in on.
    pub route: &'a str,
    /// The client's address, resolved through `[server] trusted_proxies`.
    pub client: IpAddr,
    /// `client` is a trusted proxy's own address (it forwarded none), so
    /// where the client is is not known.
    pub client_unknown: bool,
    pub now_ms: i64,
}

/// Whether a verified app password may be used here and now: the expiry
/// first (an expired one is refused wherever it is tried), then the scope,
/// then the networks. A client whose address is not known is outside any
/// network: limits fail closed.
pub fn check(limits: &AppPasswordLimits, used: Use<'_>) -> Result<(), Reason> {
    if limits.expires_at.is_some_and(|at| used.now_ms >= at) {
        return Err(Reason::AppPasswordExpired);
    }
    if !limits.scope.is_empty() && !limits.scope.iter().any(|r| r == used.route) {
        return Err(Reason::AppPasswordOutOfScope);
    }
    if !limits.networks.is_empty()
        && (used.client_unknown || !limits.networks.iter().any(|n| n.contains(&canonical(used.client))))
    {
        return Err(Reason::AppPasswordNetwork);
    }
    Ok(())
}

/// An IPv4 client on a dual-stack socket arrives as `::ffff:a.b.c.d`; it
/// is matched as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Whether `new` allows nothing that `old` does not: every route of its
/// scope in the old one (or the old one unscoped), an expiry no later
/// (and none dropped), every network inside an old one. The first widened
/// limit is named in the error.
pub fn narrows(old: &AppPasswordLimits, new: &AppPasswordLimits) -> Result<(), LimitsError> {
    let scope_ok = old.scope.is_empty() || (!new.scope.is_empty() && new.scope.iter().all(|r| old.scope.contains(r)));
    if !scope_ok {
        return Err(LimitsError::Widens("scope"));
    }
    let expiry_ok = match (old.expires_at, new.expires_at) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(old), Some(new)) => new <= old,
    };
    if !expiry_ok {
        return Err(LimitsError::Widens("expiry"));
    }
    let networks_ok = old.networks.is_empty()
        || (!new.networks.is_empty() && new.networks.iter().all(|n| old.networks.iter().any(|o| o.contains(n))));
    if !networks_ok {
        return Err(LimitsError::Widens("networks"));
    }
    Ok(())
}

/// The store's text form of a scope or a network list: a JSON array of
/// strings, or `None` (SQL NULL) when it limits nothing.
pub fn list_to_text<T: ToString>(items: &[T]) -> Option<String> {
    if items.is_empty() {
        return None;
    }
    let strings: Vec<String> = items.iter().map(ToString::to_string).collect();
    // Serialising a Vec<String> to JSON cannot fail.
    Some(serde_json::to_string(&strings).expect("a list of strings serialises"))
}

/// Reads a stored scope back; `Err` names what is wrong with the text.
pub fn scope_from_text(text: Option<&str>) -> Result<Vec<String>, String> {
    match text {
        None => Ok(Vec::new()),
        Some(text) => serde_json::from_str(text).map_err(|e| format!("scope is not a JSON list of names: {e}")),
    }
}

/// Reads stored networks back; `Err` names what is wrong with the text.
pub fn networks_from_text(text: Option<&str>) -> Result<Vec<IpNet>, String> {
    let Some(text) = text else {
        return Ok(Vec::new());
    };
    let strings: Vec<String> =
        serde_json::from_str(text).map_err(|e| format!("networks are not a JSON list of CIDRs: {e}"))?;
    strings
        .iter()
        .map(|s| s.parse::<IpNet>().map_err(|_| format!("\"{s}\" is not a CIDR")))
        .collect()
}

#[cfg(test)]
mod tests;
