//! The forward-auth endpoint: a front proxy (nginx `auth_request`, Caddy
//! `forward_auth`, Traefik ForwardAuth, Envoy `ext_authz`) describes the
//! request it holds, and fedgate answers what it would have done had the
//! request come to it: 200 with the identity headers, or the refusal of
//! the decision table. It only answers; it never forwards.
//!
//! This module owns the pure parts: reading the description
//! ([`describe`]), the caller secret check, and the identity headers of an
//! allowed request ([`identity_headers`]). The decision itself (canonical
//! target, route, policy, sign-in, audit) is the proxy's, shared with
//! proxied requests; the status of each answer is chosen in
//! [`super::error`].
//!
//! Who may describe what: the method and URI headers are believed from any
//! caller, since a caller that can reach fedgate could send that request to
//! the route directly; the client address, proto and host only from
//! `server.trusted_proxies` (through [`super::forward::ClientInfo`]).

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, Ordering};

use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::Method;

use super::caller::{CallerSecret, CallerSecretError};
use crate::config::ForwardAuthConfig;

/// Caddy, Traefik.
pub const X_FORWARDED_METHOD: HeaderName = HeaderName::from_static("x-forwarded-method");
pub const X_FORWARDED_URI: HeaderName = HeaderName::from_static("x-forwarded-uri");
/// nginx `auth_request`, as the documented configuration sets them.
pub const X_ORIGINAL_METHOD: HeaderName = HeaderName::from_static("x-original-method");
pub const X_ORIGINAL_URI: HeaderName = HeaderName::from_static("x-original-uri");

/// The identity headers of a 200, besides the route's own: the names that
/// front proxies' examples copy to the upstream.
pub const REMOTE_USER: HeaderName = HeaderName::from_static("remote-user");
pub const REMOTE_GROUPS: HeaderName = HeaderName::from_static("remote-groups");
pub const REMOTE_EMAIL: HeaderName = HeaderName::from_static("remote-email");
pub const REMOTE_NAME: HeaderName = HeaderName::from_static("remote-name");
pub const X_FEDGATE_CREDENTIAL: HeaderName = HeaderName::from_static("x-fedgate-credential");

/// Whether a header name already means something to the endpoint (it
/// describes the request, carries a credential, or is answered), so it
/// cannot be the caller secret's header.
pub fn is_reserved_header(name: &HeaderName) -> bool {
    let reserved = [
        http::header::AUTHORIZATION,
        http::header::HOST,
        http::header::COOKIE,
        http::header::USER_AGENT,
        X_FORWARDED_METHOD,
        X_FORWARDED_URI,
        X_ORIGINAL_METHOD,
        X_ORIGINAL_URI,
        REMOTE_USER,
        REMOTE_GROUPS,
        REMOTE_EMAIL,
        REMOTE_NAME,
        X_FEDGATE_CREDENTIAL,
    ];
    reserved.contains(name) || name.as_str().starts_with("x-forwarded-") || name.as_str() == "x-real-ip"
}

/// The endpoint as a proxy table holds it.
#[derive(Debug)]
pub struct Endpoint {
    path: String,
    secret: Option<CallerSecret>,
}

impl Endpoint {
    /// Reads the caller secret, if one is configured.
    pub fn load(config: &ForwardAuthConfig) -> Result<Endpoint, CallerSecretError> {
        let secret = match &config.secret_file {
            None => None,
            Some(file) => Some(CallerSecret::load(
                "forward_auth.secret_file",
                file,
                config.secret_header.clone(),
            )?),
        };
        Ok(Endpoint {
            path: config.path.clone(),
            secret,
        })
    }

    /// Whether a request path is the endpoint's: `path` itself or below it
    /// (Envoy's prefix form), ASCII case folded as routes fold it.
    pub fn owns(&self, path: &str) -> bool {
        self.rest(path).is_some()
    }

    /// The part of `path` after the endpoint's path: `""` for the path
    /// itself, `/...` for Envoy's prefix form.
    pub fn rest<'a>(&self, path: &'a str) -> Option<&'a str> {
        let head = path.get(..self.path.len())?;
        let rest = &path[self.path.len()..];
        (head.eq_ignore_ascii_case(&self.path) && (rest.is_empty() || rest.starts_with('/'))).then_some(rest)
    }

    /// Whether the caller proved itself (always, without a secret).
    pub fn admits(&self, headers: &HeaderMap) -> bool {
        self.secret.as_ref().is_none_or(|s| s.admits(headers))
    }
}

/// Why a description cannot be read. Each is answered with 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DescribeError {
    #[error("no X-Forwarded-Uri, X-Original-URI or path below the endpoint names the original request")]
    NoOriginalUri,
    #[error("{0} appears more than once")]
    Repeated(&'static str),
    #[error("{0} is not a method name")]
    BadMethod(&'static str),
    #[error("{0} is not a path (with an optional query) starting with \"/\"")]
    NotOriginForm(&'static str),
    /// Two conventions at once: one of them was written by the client
    /// (a front proxy sets its own family and passes the client's other
    /// headers through), and which is unknowable.
    #[error("the request is described twice ({0}); a front proxy sets one convention only")]
    Mixed(&'static str),
}

impl DescribeError {
    /// The reason the log line gives.
    pub fn reason(&self) -> &'static str {
        match self {
            DescribeError::NoOriginalUri => "forward_auth_no_original_uri",
            _ => "forward_auth_bad_description",
        }
    }
}

/// The original request as the front proxy describes it, not yet canonical.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Described<'a> {
    pub method: Method,
    /// Origin form: a path starting with `/`, then an optional `?query`.
    pub uri: Cow<'a, str>,
}

impl Described<'_> {
    /// The path and the query (without `?`), split.
    pub fn split(&self) -> (&str, Option<&str>) {
        match self.uri.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (&self.uri, None),
        }
    }
}

/// The one value of a header, if present; two are refused rather than
/// one picked.
fn single<'a>(
    headers: &'a HeaderMap,
    name: &HeaderName,
    label: &'static str,
) -> Result<Option<&'a str>, DescribeError> {
    let mut values = headers.get_all(name).iter();
    match (values.next(), values.next()) {
        (None, _) => Ok(None),
        (Some(_), Some(_)) => Err(DescribeError::Repeated(label)),
        (Some(v), None) => v.to_str().map(Some).map_err(|_| DescribeError::NotOriginForm(label)),
    }
}

/// Reads the original method and URI from one of three conventions:
/// `X-Forwarded-Method` / `X-Forwarded-Uri` (Caddy, Traefik),
/// `X-Original-Method` / `X-Original-URI` (nginx), or the endpoint
/// request's own method and the path below the endpoint (`rest`, with the
/// request's `query`: Envoy).
///
/// A description in two conventions at once is refused: front proxies pass
/// the client's own headers to the auth request, so a client behind nginx
/// can add `X-Forwarded-Uri` (or one behind Caddy `X-Original-URI`, or one
/// behind Envoy either) to have another request decided than the one that
/// is proxied.
pub fn describe<'a>(
    headers: &'a HeaderMap,
    own_method: &Method,
    rest: &'a str,
    query: Option<&'a str>,
) -> Result<Described<'a>, DescribeError> {
    let forwarded = headers.contains_key(&X_FORWARDED_METHOD) || headers.contains_key(&X_FORWARDED_URI);
    let original = headers.contains_key(&X_ORIGINAL_METHOD) || headers.contains_key(&X_ORIGINAL_URI);
    match (forwarded, original, rest.is_empty()) {
        (true, true, _) => {
            return Err(DescribeError::Mixed(
                "X-Forwarded-Method/-Uri and X-Original-Method/-URI",
            ))
        }
        (true, false, false) => {
            return Err(DescribeError::Mixed(
                "X-Forwarded-Method/-Uri and a path below the endpoint",
            ))
        }
        (false, true, false) => {
            return Err(DescribeError::Mixed(
                "X-Original-Method/-URI and a path below the endpoint",
            ))
        }
        _ => {}
    }
    let method = match single(headers, &X_FORWARDED_METHOD, "X-Forwarded-Method")? {
        Some(m) => Some((m, "X-Forwarded-Method")),
        None => single(headers, &X_ORIGINAL_METHOD, "X-Original-Method")?.map(|m| (m, "X-Original-Method")),
    };
    let method = match method {
        None => own_method.clone(),
        Some((m, label)) => Method::from_bytes(m.trim().as_bytes()).map_err(|_| DescribeError::BadMethod(label))?,
    };
    let uri = match single(headers, &X_FORWARDED_URI, "X-Forwarded-Uri")? {
        Some(u) => Some((u, "X-Forwarded-Uri")),
        None => single(headers, &X_ORIGINAL_URI, "X-Original-URI")?.map(|u| (u, "X-Original-URI")),
    };
    let uri = match (uri, rest) {
        (Some((u, label)), _) => {
            if !u.starts_with('/') || u.contains('#') {
                return Err(DescribeError::NotOriginForm(label));
            }
            Cow::Borrowed(u)
        }
        (None, "") => return Err(DescribeError::NoOriginalUri),
        (None, rest) => match query {
            Some(q) => Cow::Owned(format!("{rest}?{q}")),
            None => Cow::Borrowed(rest),
        },
    };
    Ok(Described { method, uri })
}

/// What fedgate knows about the allowed user, for the identity headers.
#[derive(Debug, Clone, Copy, Default)]
pub struct IdentityFacts<'a> {
    pub upn: &'a str,
    pub email: Option<&'a str>,
    pub name: Option<&'a str>,
    /// Group DNs (or names), as the directory gave them.
    pub groups: &'a [String],
    pub credential: &'a str,
}

/// The name a group goes by: the value of its DN's first RDN when that is
/// `cn=...` (escapes resolved), else the whole value.
pub fn group_name(dn: &str) -> Cow<'_, str> {
    let bytes = dn.as_bytes();
    let Some(eq) = dn.find('=') else {
        return Cow::Borrowed(dn);
    };
    if !dn[..eq].trim().eq_ignore_ascii_case("cn") {
        return Cow::Borrowed(dn);
    }
    let mut out = Vec::with_capacity(dn.len() - eq);
    let mut i = eq + 1;
    while i < bytes.len() {
        match bytes[i] {
            b',' | b'+' => break,
            b'\\' => {
                let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                    }
                    None => {
                        out.extend(bytes.get(i + 1).copied());
                        i += 2;
                    }
                }
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    match String::from_utf8(out) {
        Ok(s) => Cow::Owned(s.trim().to_owned()),
        Err(_) => Cow::Borrowed(dn),
    }
}

/// The identity headers of a 200: the route's identity header, `Remote-User`,
/// `Remote-Email`, `Remote-Name`, `Remote-Groups` and `X-Fedgate-Credential`,
/// every one always present (empty when unknown, or for a `realm = "none"`
/// route: `facts` is `None`), so that a front proxy copying them always
/// overwrites whatever copy the client sent. Group names holding a comma
/// are left out: the list is comma-separated.
pub fn identity_headers(route_header: &HeaderName, facts: Option<&IdentityFacts<'_>>) -> HeaderMap {
    let f = facts.copied().unwrap_or_default();
    let groups = f
        .groups
        .iter()
        .map(|dn| group_name(dn))
        .filter(|g| !g.is_empty() && !g.contains(','))
        .collect::<Vec<_>>()
        .join(",");
    let mut headers = HeaderMap::with_capacity(6);
    let values: [(&HeaderName, &str); 6] = [
        (&REMOTE_USER, f.upn),
        (&REMOTE_EMAIL, f.email.unwrap_or("")),
        (&REMOTE_NAME, f.name.unwrap_or("")),
        (&REMOTE_GROUPS, &groups),
        (&X_FEDGATE_CREDENTIAL, if facts.is_some() { f.credential } else { "" }),
        // Last, so the route's header holds the UPN whatever it is named.
        (route_header, f.upn),
    ];
    for (name, value) in values {
        headers.insert(name.clone(), header_value(name, value));
    }
    headers
}

/// `value` as a header value, or empty (logged once per process) when it
/// cannot be one: values come from the store and the directory, which
/// should never hold control characters, but a front proxy must still get
/// the header.
fn header_value(name: &HeaderName, value: &str) -> HeaderValue {
    static LOGGED: AtomicBool = AtomicBool::new(false);
    HeaderValue::from_str(value).unwrap_or_else(|_| {
        if !LOGGED.swap(true, Ordering::Relaxed) {
            tracing::warn!(header = %name, "forward auth: a user attribute holds a character a header cannot carry; sent empty");
        }
        HeaderValue::from_static("")
    })
}

#[cfg(test)]
mod tests;
