//! The nginx mail `auth_http` endpoint (`[mail_auth] path`): nginx's mail
//! proxy (IMAP, POP3, SMTP submission) asks it, for every sign-in, whether
//! the user may in and which mail server to hand the connection to.
//!
//! The sign-in itself is the one of every route ([`Authenticator::
//! authenticate_presented`]): the decision table in each protocol's own
//! realm (`[[mail_backend]] realm`), policies, lockout, the argon2 pool,
//! the sign-in log with the protocol as the route, app-password scopes by
//! the protocol's name. This module only reads what nginx describes
//! ([`read_request`]) and says the result in nginx's words ([`answer`],
//! the one place a refusal becomes an `Auth-Status`); it never forwards.
//!
//! The caller is checked before anything else: with `secret_file`, a call
//! without the secret is refused with 403 and nothing is read. `Client-IP`
//! is believed only from a caller in `[server] trusted_proxies`.
//!
//! Not here: reading the configuration ([`crate::config`]), the caller
//! secret's file and comparison ([`crate::proxy::caller`]).

use std::io::Read;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderValue, Response};
use ipnet::IpNet;
use zeroize::Zeroizing;

use crate::auth::basic::Presented;
use crate::auth::refusal::Refusal;
use crate::auth::{self, Authenticator};
use crate::config::{BrowserMode, MailAuthConfig, MailProtocol, Realm, RouteConfig, Upstream};
use crate::key_file::{open_private, PrivateFileError};
use crate::model::Secret;
use crate::proxy::body::{self, AccessRecord, ProxyBody};
use crate::proxy::caller::{CallerSecret, CallerSecretError};
use crate::proxy::error::ProxyError;
use crate::proxy::forward::{canonical_ip, ClientInfo};
use crate::telemetry::RouteMetrics;

/// Why the endpoint cannot be set up; stops start-up (and `check-config`).
#[derive(Debug, thiserror::Error)]
pub enum MailAuthError {
    #[error(transparent)]
    Secret(#[from] CallerSecretError),
    #[error("{key} {}: {message}", path.display())]
    BackendPassword {
        key: String,
        path: PathBuf,
        message: String,
    },
}

/// `Auth-Method`, as nginx names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// PLAIN or LOGIN (nginx sends `plain` for both), or IMAP `LOGIN`,
    /// POP3 `USER`/`PASS`: a name and a password fedgate can check.
    Plain,
    /// SMTP without AUTH: nobody to check.
    None,
    /// APOP, CRAM-MD5, EXTERNAL (or anything else): nothing fedgate can
    /// verify a stored secret against.
    Unsupported,
}

/// What nginx's request says, read once.
#[derive(Debug)]
pub struct MailRequest {
    /// `None`: missing or not one nginx sends.
    pub protocol: Option<MailProtocol>,
    pub method: Method,
    pub presented: Presented,
    /// `Auth-Login-Attempt`, counted from 1.
    pub attempt: u32,
    /// `Client-IP`, if it is an address (believed or not by the caller).
    pub client_ip: Option<IpAddr>,
}

/// Reads nginx's headers. A value that is not what nginx sends is never
/// guessed at: names and passwords that do not decode are `Malformed`,
/// an attempt number that does not parse counts as the last.
pub fn read_request(headers: &HeaderMap) -> MailRequest {
    let text = |name: &str| {
        let mut values = headers.get_all(name).iter();
        match (values.next(), values.next()) {
            (Some(v), None) => v.to_str().ok(),
            _ => None,
        }
    };
    let protocol = text("auth-protocol").and_then(MailProtocol::parse);
    let method = match text("auth-method").map(str::to_ascii_lowercase).as_deref() {
        Some("plain" | "login") => Method::Plain,
        Some("none") => Method::None,
        _ => Method::Unsupported,
    };
    let user = text("auth-user")
        .and_then(unescape)
        .filter(|u| !u.chars().any(char::is_control));
    let pass = text("auth-pass").and_then(unescape);
    let presented = match (user, pass) {
        (Some(user), Some(pass)) if !user.is_empty() => Presented::Basic {
            user,
            secret: Secret::from(pass),
        },
        _ => Presented::Malformed,
    };
    let attempt = match text("auth-login-attempt") {
        None => 1,
        Some(n) => n.parse::<u32>().ok().filter(|n| *n >= 1).unwrap_or(u32::MAX),
    };
    let client_ip = text("client-ip")
        .and_then(|ip| ip.parse::<IpAddr>().ok())
        .map(canonical_ip);
    MailRequest {
        protocol,
        method,
        presented,
        attempt,
        client_ip,
    }
}

/// Undoes nginx's escaping of `Auth-User` / `Auth-Pass` (`%XX`, once).
/// `None` for a malformed escape, a NUL, or bytes that are not UTF-8.
pub fn unescape(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Zeroizing::new(Vec::with_capacity(bytes.len()));
    let mut i = 0;
    while i < bytes.len() {
        let b = match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                i += 2;
                u8::from_str_radix(hex, 16)
                    .ok()
                    .filter(|_| hex.bytes().all(|h| h.is_ascii_hexdigit()))?
            }
            b => b,
        };
        if b == 0 {
            return None;
        }
        out.push(b);
        i += 1;
    }
    String::from_utf8(out.to_vec()).ok()
}

/// Which client address the sign-in is decided, logged and counted for:
/// `Client-IP` when the caller is a trusted proxy, else the caller itself.
pub fn signing_in_from(caller: &ClientInfo, client_ip: Option<IpAddr>, trusted: &[IpNet]) -> (IpAddr, bool) {
    let trusted_caller = trusted.iter().any(|net| net.contains(&caller.ip));
    match (trusted_caller, client_ip) {
        (true, Some(ip)) => (ip, false),
        // A trusted proxy that did not say who: its own address stands
        // for everyone behind it.
        (true, None) => (caller.ip, true),
        (false, _) => (caller.ip, caller.ip_is_proxy),
    }
}

/// Why a mail sign-in was refused, as far as the answer is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MailRefusal {
    /// The decision of the sign-in.
    SignIn(Refusal),
    /// `Auth-Method: none`: SMTP without AUTH.
    NoAuth,
    /// A method with no password fedgate can check.
    Method,
    /// No `[[mail_backend]]` for this protocol.
    NoBackend,
    /// No protocol nginx speaks.
    BadRequest,
}

/// nginx's answer to one sign-in.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    Ok {
        server: SocketAddr,
        /// `Auth-User`: the canonical UPN (`rewrite_user`).
        user: Option<String>,
        /// `Auth-Pass`: the backend's own secret instead of the user's.
        pass: Option<Arc<str>>,
    },
    Refused {
        /// `Auth-Status`: nginx puts it after `NO` (IMAP), `-ERR` (POP3) or
        /// the error code (SMTP), so IMAP and POP3 clients also get the
        /// response code that tells them whether to ask for the password.
        status: &'static str,
        /// `Auth-Wait` seconds: nginx waits, then lets the client try
        /// again; without it nginx closes the connection.
        wait: Option<u64>,
        /// `Auth-Error-Code` (SMTP only).
        error_code: Option<&'static str>,
    },
}

/// What nginx is told for a refusal: the status text per protocol, whether
/// another attempt is allowed, and the SMTP code. Only a wrong credential
/// (while attempts remain) lets the client try again; a lockout or a
/// server problem closes the connection with a response code that tells
/// the client not to ask the user for another password.
pub fn answer(
    refusal: MailRefusal,
    protocol: Option<MailProtocol>,
    attempt: u32,
    max_attempts: u32,
    wait: u64,
) -> Answer {
    use MailProtocol::{Imap, Pop3, Smtp};
    const TEMPORARY: (&str, &str, &str, &str) = (
        "[UNAVAILABLE] Temporary server problem, try again later",
        "[SYS/TEMP] Temporary server problem, try again later",
        "Temporary server problem, try again later",
        "451 4.3.0",
    );
    // (IMAP text, POP3 text, SMTP text, SMTP code), whether it may retry.
    let ((imap, pop3, smtp, code), retry) = match refusal {
        MailRefusal::SignIn(Refusal::Unauthorized) => (
            (
                "[AUTHENTICATIONFAILED] Invalid login or password",
                "[AUTH] Invalid login or password",
                "Invalid login or password",
                "535 5.7.8",
            ),
            true,
        ),
        MailRefusal::SignIn(Refusal::TooManyAttempts) => (
            (
                "[UNAVAILABLE] Too many failed sign-ins, try again later",
                "[SYS/TEMP] Too many failed sign-ins, try again later",
                "Too many failed sign-ins, try again later",
                "454 4.7.0",
            ),
            false,
        ),
        // Never asked of a password sign-in; refused like a wrong one, once.
        MailRefusal::SignIn(Refusal::Forbidden) => (
            (
                "[AUTHENTICATIONFAILED] Not allowed",
                "[AUTH] Not allowed",
                "Not allowed",
                "535 5.7.8",
            ),
            false,
        ),
        MailRefusal::SignIn(Refusal::Unavailable) | MailRefusal::BadRequest => (TEMPORARY, false),
        MailRefusal::NoAuth => (
            (
                "Authentication required",
                "Authentication required",
                "Authentication required",
                "530 5.7.0",
            ),
            false,
        ),
        MailRefusal::Method => (
            (
                "Authentication method not supported",
                "Authentication method not supported",
                "Authentication method not supported",
                "504 5.5.4",
            ),
            false,
        ),
        MailRefusal::NoBackend => (
            (
                "[UNAVAILABLE] This service is not offered here",
                "[SYS/PERM] This service is not offered here",
                "This service is not offered here",
                "554 5.7.0",
            ),
            false,
        ),
    };
    let (status, error_code) = match protocol {
        Some(Imap) => (imap, None),
        Some(Pop3) => (pop3, None),
        Some(Smtp) => (smtp, Some(code)),
        None => (TEMPORARY.2, None),
    };
    Answer::Refused {
        status,
        wait: (retry && attempt < max_attempts).then_some(wait),
        error_code,
    }
}

impl Answer {
    /// Always 200: nginx reads only the headers.
    pub fn into_response(self) -> Response<ProxyBody> {
        let mut resp = Response::new(body::empty());
        let h = resp.headers_mut();
        h.insert(http::header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        match self {
            Answer::Ok { server, user, pass } => {
                h.insert("auth-status", HeaderValue::from_static("OK"));
                // An address's text is always a valid header value.
                if let Ok(v) = HeaderValue::from_str(&server.ip().to_string()) {
                    h.insert("auth-server", v);
                }
                h.insert("auth-port", HeaderValue::from(server.port()));
                // A UPN beyond ASCII goes as its UTF-8 bytes.
                if let Some(v) = user.and_then(|u| HeaderValue::from_bytes(u.as_bytes()).ok()) {
                    h.insert("auth-user", v);
                }
                if let Some(mut v) = pass.and_then(|p| HeaderValue::from_str(&p).ok()) {
                    v.set_sensitive(true);
                    h.insert("auth-pass", v);
                }
            }
            Answer::Refused {
                status,
                wait,
                error_code,
            } => {
                h.insert("auth-status", HeaderValue::from_static(status));
                if let Some(wait) = wait {
                    h.insert("auth-wait", HeaderValue::from(wait));
                }
                if let Some(code) = error_code {
                    h.insert("auth-error-code", HeaderValue::from_static(code));
                }
            }
        }
        resp
    }
}

/// One protocol's backend, ready to answer with.
struct Backend {
    address: SocketAddr,
    pass: Option<Arc<str>>,
}

/// One protocol as a route: what the sign-in, the log and the metrics see.
struct ProtocolRoute {
    config: RouteConfig,
    name: Arc<str>,
    metrics: Arc<RouteMetrics>,
    user_agent: &'static str,
    backend: Option<Backend>,
}

/// The endpoint, built once at start.
pub struct MailAuth {
    path: String,
    secret: Option<CallerSecret>,
    rewrite_user: bool,
    max_attempts: u32,
    wait: u64,
    /// In [`MailProtocol::ALL`] order.
    protocols: Vec<(MailProtocol, ProtocolRoute)>,
    auth: Arc<Authenticator>,
    refused_callers: metrics::Counter,
}

impl MailAuth {
    /// Reads the caller secret and the backends' password files.
    pub fn new(config: &MailAuthConfig, auth: Arc<Authenticator>) -> Result<MailAuth, MailAuthError> {
        let (secret, mut passwords) = read_files(config)?;
        let mut protocols = Vec::with_capacity(MailProtocol::ALL.len());
        for protocol in MailProtocol::ALL {
            let found = config.backends.iter().enumerate().find(|(_, b)| b.protocol == protocol);
            let backend = found.map(|(i, b)| Backend {
                address: b.address,
                pass: passwords[i].take(),
            });
            let realm = found.map_or(Realm::Cloud, |(_, b)| b.realm);
            protocols.push((
                protocol,
                ProtocolRoute {
                    config: protocol_route(protocol, realm),
                    name: Arc::from(protocol.as_str()),
                    metrics: Arc::new(RouteMetrics::new(protocol.as_str())),
                    user_agent: match protocol {
                        MailProtocol::Imap => "nginx-mail/imap",
                        MailProtocol::Pop3 => "nginx-mail/pop3",
                        MailProtocol::Smtp => "nginx-mail/smtp",
                    },
                    backend,
                },
            ));
        }
        Ok(MailAuth {
            path: config.path.clone(),
            secret,
            rewrite_user: config.rewrite_user,
            max_attempts: config.max_attempts,
            wait: config.wait.as_secs(),
            protocols,
            auth,
            refused_callers: metrics::counter!("fedgate_mail_auth_callers_refused_total"),
        })
    }

    /// Whether `path` (canonical) is the endpoint's.
    pub fn owns(&self, path: &str) -> bool {
        path == self.path
    }

    /// Answers one `auth_http` request. `caller` is the client as the
    /// listener resolved it (nginx, or a proxy in front of fedgate).
    pub async fn handle(
        &self,
        headers: &HeaderMap,
        caller: &ClientInfo,
        trusted: &[IpNet],
        record: &mut AccessRecord,
    ) -> Response<ProxyBody> {
        if let Some(secret) = &self.secret {
            if !secret.admits(headers) {
                self.refused_callers.increment(1);
                tracing::warn!(
                    caller = %caller.ip,
                    header = %secret.header(),
                    "mail auth_http call without the mail_auth.secret_file secret: refused"
                );
                return ProxyError::CallerRefused.into_response();
            }
        }
        let request = read_request(headers);
        let route = request
            .protocol
            .and_then(|p| self.protocols.iter().find(|(q, _)| *q == p))
            .map(|(_, r)| r);
        if let Some(route) = route {
            record.route = Some(Arc::clone(&route.name));
            record.metrics = Some(Arc::clone(&route.metrics));
        }
        let refused = |why| answer(why, request.protocol, request.attempt, self.max_attempts, self.wait);
        let (route, backend) = match (route, request.method) {
            (None, _) => {
                tracing::warn!(caller = %caller.ip, "mail auth_http request without a known Auth-Protocol: refused");
                return refused(MailRefusal::BadRequest).into_response();
            }
            (Some(_), Method::None) => return refused(MailRefusal::NoAuth).into_response(),
            (Some(route), Method::Unsupported) => {
                tracing::info!(
                    protocol = %route.name,
                    "mail sign-in with an authentication method fedgate cannot check (only plain and login): refused"
                );
                return refused(MailRefusal::Method).into_response();
            }
            (Some(route), Method::Plain) => match &route.backend {
                Some(backend) => (route, backend),
                None => {
                    tracing::warn!(
                        protocol = %route.name,
                        "mail sign-in for a protocol without a [[mail_backend]]: refused"
                    );
                    return refused(MailRefusal::NoBackend).into_response();
                }
            },
        };
        let (ip, ip_is_proxy) = signing_in_from(caller, request.client_ip, trusted);
        record.client_ip = ip;
        let client = auth::Client {
            ip,
            ip_is_proxy,
            started: record.started,
        };
        let outcome = self
            .auth
            .authenticate_presented(&route.config, request.presented, route.user_agent, client)
            .await;
        match outcome {
            Ok(identity) => {
                let upn = identity.user().map(str::to_owned);
                record.user = upn.clone();
                // The backend is told the canonical user or nothing at all:
                // never the name as typed in its place.
                let sendable = upn
                    .as_deref()
                    .is_some_and(|u| HeaderValue::from_bytes(u.as_bytes()).is_ok());
                if self.rewrite_user && !sendable {
                    tracing::warn!(user = ?upn, "mail sign-in allowed, but its user cannot be sent to nginx as Auth-User");
                    return refused(MailRefusal::SignIn(Refusal::Unavailable)).into_response();
                }
                Answer::Ok {
                    server: backend.address,
                    user: upn.filter(|_| self.rewrite_user),
                    pass: backend.pass.clone(),
                }
                .into_response()
            }
            Err(refusal) => refused(MailRefusal::SignIn(refusal.refusal)).into_response(),
        }
    }

    /// What `check-config` and the start-up log say: each protocol, its
    /// backend and realm.
    pub fn describe(config: &MailAuthConfig) -> Vec<String> {
        MailProtocol::ALL
            .into_iter()
            .map(|p| match config.backend(p) {
                Some(b) => format!(
                    "{} -> {} (realm {}{})",
                    p.as_str(),
                    b.address,
                    b.realm.as_str(),
                    if b.password_file.is_some() {
                        ", backend password from password_file"
                    } else {
                        ", user's own password passed on"
                    }
                ),
                None => format!("{} refused (no [[mail_backend]])", p.as_str()),
            })
            .collect()
    }
}

/// The caller secret and each backend's password (in `backends` order),
/// read as `serve` reads them; `check-config` reads them too.
#[allow(clippy::type_complexity)]
pub fn read_files(config: &MailAuthConfig) -> Result<(Option<CallerSecret>, Vec<Option<Arc<str>>>), MailAuthError> {
    let secret = config
        .secret_file
        .as_deref()
        .map(|path| CallerSecret::load("mail_auth.secret_file", path, config.secret_header.clone()))
        .transpose()?;
    let passwords = config
        .backends
        .iter()
        .enumerate()
        .map(|(i, b)| {
            b.password_file
                .as_deref()
                .map(|p| backend_password(&format!("mail_backend[{i}].password_file"), p))
                .transpose()
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((secret, passwords))
}

/// The route a protocol's sign-ins are decided on. Its path is empty, so
/// policies name it only by its name (`routes = ["imap"]`), never by a
/// path prefix meant for HTTP routes.
fn protocol_route(protocol: MailProtocol, realm: Realm) -> RouteConfig {
    RouteConfig {
        index: 0,
        name: protocol.as_str().to_owned(),
        host: None,
        path: String::new(),
        upstream: Upstream::DecideOnly,
        upstream_ca_file: None,
        upstream_timeout: Duration::from_secs(60),
        upstream_connect_timeout: Duration::from_secs(10),
        realm,
        identity_header: http::header::HeaderName::from_static("x-remote-user"),
        forward_authorization: false,
        preserve_host: false,
        browser: BrowserMode::Basic,
        case_sensitive: true,
        allow_encoded_slashes: false,
        allow_path_parameters: false,
        upgrades: Vec::new(),
    }
}

/// Reads a backend's password file: a regular file only its owner can
/// read, one line of printable ASCII without spaces (it goes into nginx's
/// `PASS` / `LOGIN` command to the backend).
fn backend_password(key: &str, path: &Path) -> Result<Arc<str>, MailAuthError> {
    let fail = |message: String| MailAuthError::BackendPassword {
        key: key.to_owned(),
        path: path.to_owned(),
        message,
    };
    let (mut file, meta) = open_private(path).map_err(|e| match e {
        PrivateFileError::Open(e) | PrivateFileError::Metadata(e) => fail(format!("cannot read: {e}")),
        PrivateFileError::NotAFile => fail("must be a regular file of one line".into()),
        PrivateFileError::Permissions(mode) => fail(format!(
            "has permissions {mode:04o}; it must not be readable by group or others: run `chmod 600 {}`",
            path.display()
        )),
    })?;
    if meta.len() > 4096 {
        return Err(fail("must be a regular file of one line".into()));
    }
    let mut text = Zeroizing::new(String::new());
    file.read_to_string(&mut text)
        .map_err(|e| fail(format!("cannot read: {e}")))?;
    let line = text.trim_end_matches(['\n', '\r']);
    if line.len() < 16 || !line.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(fail(
            "must hold one line of at least 16 printable ASCII characters without spaces".into(),
        ));
    }
    Ok(Arc::from(line))
}

#[cfg(test)]
mod tests;
