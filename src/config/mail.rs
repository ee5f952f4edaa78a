//! `[mail_auth]` and `[[mail_backend]]`: the nginx mail `auth_http`
//! endpoint (IMAP, POP3, SMTP submission) and the mail server each
//! protocol's sign-ins are handed to. Parsed from the file tables here into
//! [`MailAuthConfig`]; the endpoint itself is [`crate::mail_auth`].
//!
//! Like the rest of the configuration, nothing here opens a file: the
//! secret files are read when the server starts (and by `check-config`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::header::HeaderName;
use serde::Deserialize;

use super::{duration, non_empty_path, ConfigError, PortalConfig, Realm, RouteConfig};

/// `[mail_auth]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MailAuthFile {
    pub path: Option<String>,
    pub secret_file: Option<String>,
    pub secret_header: Option<String>,
    pub rewrite_user: Option<bool>,
    pub max_attempts: Option<i64>,
    pub wait: Option<String>,
}

/// One `[[mail_backend]]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MailBackendFile {
    pub protocol: String,
    pub address: String,
    pub realm: Option<String>,
    pub password_file: Option<String>,
}

/// A mail protocol nginx's mail proxy asks about (`Auth-Protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MailProtocol {
    Imap,
    Pop3,
    Smtp,
}

impl MailProtocol {
    pub const ALL: [MailProtocol; 3] = [MailProtocol::Imap, MailProtocol::Pop3, MailProtocol::Smtp];

    /// As nginx spells it in `Auth-Protocol`, and as the sign-in log,
    /// policies and app-password scopes name it.
    pub fn as_str(self) -> &'static str {
        match self {
            MailProtocol::Imap => "imap",
            MailProtocol::Pop3 => "pop3",
            MailProtocol::Smtp => "smtp",
        }
    }

    /// Exactly as nginx sends it (lower-case).
    pub fn parse(text: &str) -> Option<MailProtocol> {
        MailProtocol::ALL.into_iter().find(|p| p.as_str() == text)
    }
}

/// Where the sign-ins of one protocol are handed once allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailBackend {
    pub protocol: MailProtocol,
    /// `Auth-Server` and `Auth-Port`: nginx needs an address, not a name.
    pub address: SocketAddr,
    /// Which credentials count for this protocol (`cloud` or `onprem`).
    pub realm: Realm,
    /// The secret handed to the backend as `Auth-Pass` instead of the
    /// user's own password.
    pub password_file: Option<PathBuf>,
}

/// The validated `[mail_auth]` with its backends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailAuthConfig {
    /// The endpoint's path on the main listeners (`auth_http` points here).
    pub path: String,
    /// The shared secret nginx proves itself with (`auth_http_header`).
    pub secret_file: Option<PathBuf>,
    pub secret_header: HeaderName,
    /// Answer with `Auth-User: <canonical UPN>`.
    pub rewrite_user: bool,
    /// From this `Auth-Login-Attempt` on, a refusal carries no `Auth-Wait`
    /// and nginx closes the connection.
    pub max_attempts: u32,
    /// `Auth-Wait` in whole seconds.
    pub wait: Duration,
    /// In file order; at most one per protocol.
    pub backends: Vec<MailBackend>,
}

impl MailAuthConfig {
    pub fn backend(&self, protocol: MailProtocol) -> Option<&MailBackend> {
        self.backends.iter().find(|b| b.protocol == protocol)
    }
}

/// Most attempts in one connection: nginx keeps each attempt's memory
/// until the session ends and asks servers to stop at 10 to 20.
const MAX_ATTEMPTS: i64 = 20;
/// Longest `Auth-Wait`: fedgate already holds refusals back by
/// `failure_delay`; clients time out beyond this.
const MAX_WAIT: Duration = Duration::from_secs(30);

/// Reads `[mail_auth]` and `[[mail_backend]]`; the endpoint's path must
/// not be one the portal or a route answers.
pub(super) fn mail(
    file: Option<MailAuthFile>,
    backends: Vec<MailBackendFile>,
    portal: Option<&PortalConfig>,
    routes: &[RouteConfig],
) -> Result<Option<MailAuthConfig>, ConfigError> {
    let Some(m) = file else {
        if !backends.is_empty() {
            return Err(ConfigError::invalid(
                "mail_backend",
                "[[mail_backend]] tables need [mail_auth] (with its path) to be used",
            ));
        }
        return Ok(None);
    };
    let path = endpoint_path(m.path.as_deref(), portal, routes)?;
    // Sign-ins of a protocol are logged, scoped and matched by policies
    // under its name: a route of that name would be the same one.
    if let Some(r) = routes.iter().find(|r| MailProtocol::parse(&r.name).is_some()) {
        return Err(ConfigError::invalid(
            format!("route[{}].name", r.index),
            format!(
                "\"{}\" names the mail sign-ins of [mail_auth]: give the route another name",
                r.name
            ),
        ));
    }
    let secret_file = m
        .secret_file
        .as_deref()
        .map(|p| non_empty_path("mail_auth.secret_file", Some(p), ""))
        .transpose()?;
    let header_text = m.secret_header.as_deref().unwrap_or("X-Fedgate-Secret");
    let secret_header = HeaderName::from_bytes(header_text.as_bytes()).map_err(|_| {
        ConfigError::invalid(
            "mail_auth.secret_header",
            format!("not a valid header name: \"{header_text}\""),
        )
    })?;
    // nginx's own headers describe the sign-in; the secret cannot be one.
    let reserved = ["host", "client-ip", "client-host", "connection", "content-length"];
    if secret_header.as_str().starts_with("auth-") || reserved.contains(&secret_header.as_str()) {
        return Err(ConfigError::invalid(
            "mail_auth.secret_header",
            format!("\"{header_text}\" is a header nginx sends to describe the sign-in: choose another name"),
        ));
    }
    if m.secret_header.is_some() && secret_file.is_none() {
        return Err(ConfigError::invalid(
            "mail_auth.secret_header",
            "names the header of mail_auth.secret_file, which is not set",
        ));
    }
    let max_attempts = match m.max_attempts {
        None => 3,
        Some(n @ 1..=MAX_ATTEMPTS) => n as u32,
        Some(n) => {
            return Err(ConfigError::invalid(
                "mail_auth.max_attempts",
                format!("must be between 1 and {MAX_ATTEMPTS}, got {n}"),
            ))
        }
    };
    let wait = duration("mail_auth.wait", m.wait.as_deref(), "2s")?;
    if wait > MAX_WAIT || wait.subsec_nanos() != 0 {
        return Err(ConfigError::invalid(
            "mail_auth.wait",
            "whole seconds, at most 30s (nginx's Auth-Wait counts seconds)",
        ));
    }
    let mut parsed: Vec<MailBackend> = Vec::with_capacity(backends.len());
    for (i, b) in backends.into_iter().enumerate() {
        let backend = backend(i, b)?;
        if parsed.iter().any(|p| p.protocol == backend.protocol) {
            return Err(ConfigError::invalid(
                format!("mail_backend[{i}].protocol"),
                format!("a second backend for {}: one per protocol", backend.protocol.as_str()),
            ));
        }
        parsed.push(backend);
    }
    let rewrite_user = m.rewrite_user.unwrap_or(false);
    // A backend secret opens every mailbox: it goes only to the caller
    // that proves to be nginx, and only with the identity fedgate decided.
    if let Some(i) = parsed.iter().position(|b| b.password_file.is_some()) {
        let key = format!("mail_backend[{i}].password_file");
        if secret_file.is_none() {
            return Err(ConfigError::invalid(
                key,
                "the backend's secret would be answered to whoever calls the endpoint (it is on every \
                 main listener): set mail_auth.secret_file so that only nginx can ask",
            ));
        }
        if !rewrite_user {
            return Err(ConfigError::invalid(
                key,
                "with the backend's secret, the backend must be told the canonical user, not the name \
                 as typed: set mail_auth.rewrite_user = true",
            ));
        }
    }
    Ok(Some(MailAuthConfig {
        path,
        secret_file,
        secret_header,
        rewrite_user,
        max_attempts,
        wait,
        backends: parsed,
    }))
}

fn endpoint_path(
    path: Option<&str>,
    portal: Option<&PortalConfig>,
    routes: &[RouteConfig],
) -> Result<String, ConfigError> {
    let key = "mail_auth.path";
    let Some(path) = path else {
        return Err(ConfigError::invalid(
            key,
            "required: the path nginx's auth_http points to, such as \"/_fedgate/mail\"",
        ));
    };
    let plain = matches!(crate::proxy::canonical::canonical_path(path), Ok(c) if c.is_unchanged() && c.is_plain());
    if !path.starts_with('/') || path.len() < 2 || path.ends_with('/') || !plain || path.contains(['?', '#']) {
        return Err(ConfigError::invalid(
            key,
            format!("expected a canonical path such as \"/_fedgate/mail\", got \"{path}\""),
        ));
    }
    if let Some(p) = portal {
        if path == p.path || path.starts_with(&format!("{}/", p.path)) {
            return Err(ConfigError::invalid(
                key,
                format!(
                    "\"{path}\" is under portal.path \"{}\", which the portal serves",
                    p.path
                ),
            ));
        }
    }
    if let Some(r) = routes.iter().find(|r| r.path.eq_ignore_ascii_case(path)) {
        return Err(ConfigError::invalid(
            key,
            format!(
                "\"{path}\" is route[{}].path too: give the endpoint a path of its own",
                r.index
            ),
        ));
    }
    Ok(path.to_owned())
}

fn backend(i: usize, b: MailBackendFile) -> Result<MailBackend, ConfigError> {
    let key = |k: &str| format!("mail_backend[{i}].{k}");
    let protocol = MailProtocol::parse(&b.protocol).ok_or_else(|| {
        ConfigError::invalid(
            key("protocol"),
            format!("expected \"imap\", \"pop3\" or \"smtp\", got \"{}\"", b.protocol),
        )
    })?;
    let address: SocketAddr = b.address.parse().map_err(|_| {
        ConfigError::invalid(
            key("address"),
            format!(
                "expected IP:port such as \"127.0.0.1:1143\", got \"{}\" (nginx needs an address in \
                 Auth-Server, not a host name)",
                b.address
            ),
        )
    })?;
    let realm = match b.realm.as_deref() {
        None | Some("cloud") => Realm::Cloud,
        Some("onprem") => Realm::Onprem,
        Some(other) => {
            return Err(ConfigError::invalid(
                key("realm"),
                format!("expected \"cloud\" or \"onprem\", got \"{other}\""),
            ))
        }
    };
    let password_file = b
        .password_file
        .as_deref()
        .map(|p| non_empty_path(&key("password_file"), Some(p), ""))
        .transpose()?;
    Ok(MailBackend {
        protocol,
        address,
        realm,
        password_file,
    })
}

#[cfg(test)]
mod tests;
