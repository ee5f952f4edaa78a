//! Configuration: the TOML file as operators write it, and the validated
//! [`Config`] the rest of fedgate runs on.
//!
//! Parsing and validation are two steps with two sets of types: `file::*`
//! mirrors the TOML (unknown keys are errors), [`Config`] holds only values
//! that have been checked. Every error names the key it is about, for example
//! `route[1].upstream: invalid URL "htp://x"`. Route indexes count from 0 in
//! the order the `[[route]]` tables appear.
//!
//! This module does not open files other than the config itself: certificate
//! and key paths are checked for shape here and loaded by the listener.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::header::HeaderName;
use http::Uri;
use ipnet::IpNet;

use crate::directory::template::{Placeholder, Template};

mod file;
mod mail;

pub use file::FileConfig;
pub use mail::{MailAuthConfig, MailBackend, MailProtocol};

/// A config problem, always tied to the key it is about.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
}

impl ConfigError {
    fn invalid(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub admin: Option<AdminConfig>,
    pub store: StoreConfig,
    pub auth: AuthConfig,
    /// The on-premises directory; `None` for a cloud-only deployment.
    pub directory: Option<DirectoryConfig>,
    /// The scheduled directory sync; `None` without a directory or when
    /// turned off.
    pub sync: Option<SyncConfig>,
    /// The self-service portal; `None` when off.
    pub portal: Option<PortalConfig>,
    /// Enrolment notices (`fedgate notify`); `None` without `[smtp]`.
    pub smtp: Option<SmtpConfig>,
    /// The forward-auth endpoint for front proxies; `None` when off.
    pub forward_auth: Option<ForwardAuthConfig>,
    pub routes: Vec<RouteConfig>,
    /// The `[[policy]]` tables, checked against the routes.
    pub policies: std::sync::Arc<crate::policy::PolicySet>,
    /// The nginx mail `auth_http` endpoint; `None` without `[mail_auth]`.
    pub mail: Option<MailAuthConfig>,
}

/// How the connection to the mail server is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpTls {
    /// Plain connection upgraded with STARTTLS, which must succeed.
    Starttls,
    /// TLS from the first byte (SMTPS, port 465).
    Implicit,
    /// No encryption: loopback only, unless `allow_plaintext = true`.
    None,
}

impl SmtpTls {
    /// As `[smtp] tls` spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            SmtpTls::Starttls => "starttls",
            SmtpTls::Implicit => "implicit",
            SmtpTls::None => "none",
        }
    }
}

/// `[smtp]`: the mail server enrolment notices go through, and the notice.
#[derive(Debug, Clone)]
pub struct SmtpConfig {
    pub host: String,
    pub port: u16,
    pub tls: SmtpTls,
    /// With `password_file`: AUTH (never over an unencrypted connection).
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
    /// The sender, `Name <address>` or an address.
    pub from: String,
    /// The CA that signed the mail server's certificate, instead of the
    /// system's roots.
    pub ca_file: Option<PathBuf>,
    pub timeout: Duration,
    /// Whether `fedgate serve` sends notices itself, every `interval`.
    pub auto: bool,
    pub interval: Duration,
    pub template: PathBuf,
    pub portal_url: String,
    pub organization: String,
}

/// `[portal]`: second-factor registration, app-password management and
/// browser sign-in for `browser = "mfa"` routes.
#[derive(Debug, Clone)]
pub struct PortalConfig {
    /// Path prefix of the pages on the main listeners, without a trailing
    /// slash (`/portal`).
    pub path: String,
    /// The name authenticator apps show next to the account.
    pub issuer: String,
    /// Key that seals TOTP secrets at rest (created 0600 on first start).
    pub secret_key_file: PathBuf,
    /// A session unused this long ends.
    pub session_idle: Duration,
    /// A session ends this long after sign-in, used or not.
    pub session_absolute: Duration,
}

/// `[forward_auth]`: the endpoint front proxies (nginx `auth_request`,
/// Caddy `forward_auth`, Traefik ForwardAuth, Envoy `ext_authz`) ask for a
/// decision about a request they describe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardAuthConfig {
    /// Path on the main listeners, without a trailing slash
    /// (`/_fedgate/auth`); `path/...` is Envoy's prefix form.
    pub path: String,
    /// The caller secret's file; without it any caller may ask.
    pub secret_file: Option<PathBuf>,
    /// The header the caller secret is expected in.
    pub secret_header: HeaderName,
}

/// Which directory server software: picks defaults for change tracking and
/// account state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirectoryKind {
    OpenLdap,
    ActiveDirectory,
}

/// `[sync] mode`: how directory changes reach fedgate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    /// Told by the directory as changes happen (RFC 4533 content
    /// synchronisation on OpenLDAP, change notifications on AD), where the
    /// directory supports it; passes every `interval` otherwise.
    Push,
    /// Incremental passes every `interval`.
    Poll,
}

impl SyncMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SyncMode::Push => "push",
            SyncMode::Poll => "poll",
        }
    }
}

/// `[sync]`: carrying directory changes into the store.
#[derive(Debug, Clone)]
pub struct SyncConfig {
    pub mode: SyncMode,
    /// Between incremental passes.
    pub interval: Duration,
    /// Between full reconciliations (which find deletions).
    pub full_every: Duration,
    /// Attribute whose value grows with every change (`modifyTimestamp`,
    /// `entryCSN`, `uSNChanged`).
    pub change_attribute: String,
    pub page_size: u32,
    /// Share of synced users a pass may disable or delete before it stops.
    pub max_change_share: f64,
    /// Changes up to this many never trip the guard.
    pub guard_floor: usize,
    pub revoke_on_password_change: bool,
}

/// `[directory]`: where organizational passwords of federated users are
/// checked, and how users are found there.
#[derive(Debug, Clone)]
pub struct DirectoryConfig {
    pub kind: DirectoryKind,
    /// `ldap://` or `ldaps://` URLs, tried in order.
    pub urls: Vec<String>,
    /// Upgrade `ldap://` connections with StartTLS.
    pub starttls: bool,
    /// CA certificates (PEM) the servers are verified against; the system's
    /// roots when unset.
    pub ca_file: Option<PathBuf>,
    pub bind: DirectoryBind,
    pub base_dn: String,
    pub user_filter: Template,
    pub login_filter: Template,
    pub upn_attribute: String,
    pub login_attribute: String,
    pub anchor_attribute: String,
    /// Entries matching this are disabled accounts.
    pub disabled_filter: Option<Template>,
    /// NetBIOS domain accepted in `DOMAIN\login` names (uppercase); any
    /// domain when unset.
    pub domain: Option<String>,
    /// Accept user names that are not ASCII after Unicode folding.
    pub allow_non_ascii_logins: bool,
    /// Bounds one whole sign-in check (connect, search, bind).
    pub timeout: Duration,
    pub connect_timeout: Duration,
    /// Service-account connections kept for searches.
    pub pool_size: usize,
    /// User binds running at once (each on its own connection).
    pub max_binds: usize,
    /// How long a verified org password stays warm; zero turns caching off.
    pub cache_ttl: Duration,
    /// A server that failed is tried last for this long.
    pub failover_backoff: Duration,
    /// Multi-valued attribute listing the groups an entry belongs to.
    pub groups_attribute: String,
    /// When the password last changed: `pwdChangedTime` (OpenLDAP) or
    /// `pwdLastSet` (AD).
    pub password_changed_attribute: String,
}

/// How a user's entry is found before their password is checked.
#[derive(Debug, Clone)]
pub enum DirectoryBind {
    /// Search with a service account, then bind as the entry found.
    Search { dn: String, password_file: PathBuf },
    /// No service account: bind as the name the template makes (AD takes
    /// the UPN), then read the user's own entry.
    Direct { name: Template },
}

#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// `sqlite://PATH` (created on first start), `sqlite::memory:`, or
    /// `postgres://USER@HOST:PORT/DATABASE` (several nodes on one database).
    pub url: String,
    /// The credentials and TLS of a PostgreSQL store: `store.password_file`
    /// and `store.ca_file`.
    pub access: crate::store::StoreAccess,
    /// The server key (HMAC of app-password lookup tags); created with mode
    /// 0600 on first start. The CLI needs the same file.
    pub key_file: PathBuf,
    /// How old the in-memory view of the store may grow while the store
    /// cannot be read before sign-ins that rely on it are refused.
    pub max_staleness: Duration,
}

#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// The realm named in `WWW-Authenticate: Basic realm="..."`.
    pub basic_realm: String,
    /// How long a verified credential stays warm when unused changes do
    /// not revoke it first.
    pub cache_ttl: Duration,
    pub cache_max_entries: usize,
    /// argon2 verifications running at once.
    pub hash_workers: usize,
    /// argon2 verifications waiting; beyond this requests get 503 at once.
    pub hash_queue: usize,
    /// How long a refused sign-in waits before its answer is sent.
    pub failure_delay: Duration,
    /// `[lockout] threshold`: wrong secrets in a row for one user name from
    /// one address before that pair is refused; 0 turns lockout off.
    pub lockout_threshold: u32,
    /// `[lockout] duration`: how long a first lockout lasts.
    pub lockout_duration: Duration,
    /// `[lockout] max_duration`: the longest a growing lockout gets.
    pub lockout_max_duration: Duration,
    /// `[lockout] source_threshold`: distinct accounts failing from one
    /// source that lock it for unfamiliar accounts; 0 turns it off.
    pub lockout_source_threshold: u32,
    /// `[lockout] source_window`.
    pub lockout_source_window: Duration,
    /// `[lockout] max_entries`: keys kept per lockout map.
    pub lockout_max_entries: usize,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: Vec<SocketAddr>,
    pub listen_plain: Vec<SocketAddr>,
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    pub trusted_proxies: Vec<IpNet>,
    pub limits: ListenerLimits,
    pub shutdown_grace: Duration,
    pub upstream: UpstreamDefaults,
    /// Worker threads serving the listeners (one per core by default).
    pub workers: usize,
}

/// Protection of the listeners against slow, idle and oversized clients.
#[derive(Debug, Clone, Copy)]
pub struct ListenerLimits {
    /// Time allowed for a whole request head to arrive; also bounds the TLS
    /// handshake and a new connection's wait for its first request.
    pub header_read_timeout: Duration,
    /// A keep-alive connection with no request in flight is closed after this.
    pub idle_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_connections: usize,
}

#[derive(Debug, Clone, Copy)]
pub struct UpstreamDefaults {
    pub connect_timeout: Duration,
    pub timeout: Duration,
    pub pool_idle_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// `admin.tls`: serve the admin listener over TLS with the server's
    /// certificate (`server.tls_cert`, `server.tls_key`).
    pub tls: bool,
    /// `admin.client_ca_file`: client certificates presented to the admin
    /// listener must chain to this CA, and `/api/` paths require one.
    pub client_ca_file: Option<PathBuf>,
    /// `[admin] token_file`: the bearer tokens of the admin API
    /// (`/api/v1`), one `NAME TOKEN` per line; no API without it.
    pub token_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Realm {
    Cloud,
    Onprem,
    None,
}

impl Realm {
    pub fn as_str(self) -> &'static str {
        match self {
            Realm::Cloud => "cloud",
            Realm::Onprem => "onprem",
            Realm::None => "none",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrowserMode {
    Basic,
    Mfa,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upstream {
    /// An http:// or https:// origin; the request path is appended to its path.
    Http(Uri),
    /// `builtin:whoami`: shows what the proxy established about the request.
    Whoami,
    /// No `upstream`: the route only decides (forward auth, mail); a
    /// request proxied to it is answered 404.
    DecideOnly,
}

impl std::fmt::Display for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Upstream::Http(uri) => write!(f, "{uri}"),
            Upstream::Whoami => f.write_str("builtin:whoami"),
            Upstream::DecideOnly => f.write_str("none (decide only)"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// Position in the file, used in logs and error messages (`route[N]`).
    pub index: usize,
    pub name: String,
    /// Lowercased host without port; `None` matches any host.
    pub host: Option<String>,
    /// Path prefix, always starting with `/`.
    pub path: String,
    pub upstream: Upstream,
    pub upstream_ca_file: Option<PathBuf>,
    pub upstream_timeout: Duration,
    pub upstream_connect_timeout: Duration,
    pub realm: Realm,
    pub identity_header: HeaderName,
    pub forward_authorization: bool,
    pub preserve_host: bool,
    pub browser: BrowserMode,
    /// Match `path` case-sensitively (the default folds ASCII case).
    pub case_sensitive: bool,
    /// Let an encoded slash (`%2F`) through to this route's upstream.
    pub allow_encoded_slashes: bool,
    /// Let path parameters (`;`) through to this route's upstream.
    pub allow_path_parameters: bool,
    /// `Upgrade` protocols tunnelled to the upstream, lower-case.
    pub upgrades: Vec<String>,
}

impl Config {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Parses and validates config text; `origin` names it in error messages.
    pub fn parse(text: &str, origin: &Path) -> Result<Config, ConfigError> {
        let file = FileConfig::parse(text).map_err(|message| ConfigError::Syntax {
            path: origin.to_owned(),
            message,
        })?;
        Config::try_from(file)
    }
}

impl TryFrom<FileConfig> for Config {
    type Error = ConfigError;

    fn try_from(file: FileConfig) -> Result<Self, Self::Error> {
        let s = file.server;
        let listen = parse_addrs("server.listen", &s.listen)?;
        let listen_plain = parse_addrs("server.listen_plain", &s.listen_plain)?;
        if listen.is_empty() && listen_plain.is_empty() {
            return Err(ConfigError::invalid(
                "server.listen",
                "no listener: set server.listen (TLS) or server.listen_plain",
            ));
        }
        let trusted_proxies = s
            .trusted_proxies
            .iter()
            .enumerate()
            .map(|(i, cidr)| {
                parse_cidr(cidr).map_err(|m| ConfigError::invalid(format!("server.trusted_proxies[{i}]"), m))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let limits = ListenerLimits {
            header_read_timeout: duration("server.header_read_timeout", s.header_read_timeout.as_deref(), "15s")?,
            idle_timeout: duration("server.idle_timeout", s.idle_timeout.as_deref(), "75s")?,
            max_header_bytes: bounded("server.max_header_bytes", s.max_header_bytes, 65536, 1024, 1 << 20)?,
            max_connections: bounded("server.max_connections", s.max_connections, 10_000, 1, 1_000_000)?,
        };
        let upstream = UpstreamDefaults {
            connect_timeout: duration(
                "server.upstream_connect_timeout",
                s.upstream_connect_timeout.as_deref(),
                "10s",
            )?,
            timeout: duration("server.upstream_timeout", s.upstream_timeout.as_deref(), "3600s")?,
            pool_idle_timeout: duration(
                "server.upstream_pool_idle_timeout",
                s.upstream_pool_idle_timeout.as_deref(),
                "90s",
            )?,
        };
        let server = ServerConfig {
            listen,
            listen_plain,
            tls_cert: non_empty_path("server.tls_cert", s.tls_cert.as_deref(), "config/tls/cert.pem")?,
            tls_key: non_empty_path("server.tls_key", s.tls_key.as_deref(), "config/tls/key.pem")?,
            trusted_proxies,
            limits,
            shutdown_grace: duration("server.shutdown_grace", s.shutdown_grace.as_deref(), "30s")?,
            upstream,
            workers: match s.workers {
                None | Some(0) => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
                Some(n) => bounded("server.workers", Some(n), 1, 1, 1024)?,
            },
        };

        let admin = match file.admin {
            None => None,
            Some(a) => {
                let tls = a.tls.unwrap_or(false);
                let client_ca_file = match a.client_ca_file.as_deref() {
                    None => None,
                    Some(v) if v.trim().is_empty() => None,
                    Some(_) if !tls => {
                        return Err(ConfigError::invalid(
                            "admin.client_ca_file",
                            "client certificates need TLS: set admin.tls = true, or remove admin.client_ca_file",
                        ))
                    }
                    Some(v) => Some(PathBuf::from(v)),
                };
                Some(AdminConfig {
                    listen: parse_addr("admin.listen", &a.listen)?,
                    tls,
                    client_ca_file,
                    token_file: match a.token_file.as_deref() {
                        None => None,
                        Some(path) => Some(non_empty_path("admin.token_file", Some(path), "")?),
                    },
                })
            }
        };

        let store = match file.store {
            None => StoreConfig {
                url: "sqlite://data/fedgate.db".into(),
                access: Default::default(),
                key_file: PathBuf::from("data/fedgate.key"),
                max_staleness: Duration::from_secs(5),
            },
            Some(st) => StoreConfig {
                url: match st.url.clone() {
                    None => "sqlite://data/fedgate.db".into(),
                    Some(u) => match crate::store::backend_of(&u) {
                        Ok(_) => u,
                        Err(_) => {
                            return Err(ConfigError::invalid(
                                "store.url",
                                format!(
                                    "expected \"sqlite://PATH\", \"sqlite::memory:\" or \
                                     \"postgres://USER@HOST:PORT/DATABASE\", got \"{}\"",
                                    crate::store::redact_url(&u)
                                ),
                            ))
                        }
                    },
                },
                access: {
                    let postgres = st
                        .url
                        .as_deref()
                        .is_some_and(|u| matches!(crate::store::backend_of(u), Ok(crate::store::Backend::Postgres)));
                    let password_file = st
                        .password_file
                        .as_deref()
                        .map(|p| non_empty_path("store.password_file", Some(p), ""))
                        .transpose()?;
                    let ca_file = st
                        .ca_file
                        .as_deref()
                        .map(|p| non_empty_path("store.ca_file", Some(p), ""))
                        .transpose()?;
                    for (key, set) in [
                        ("store.password_file", password_file.is_some()),
                        ("store.ca_file", ca_file.is_some()),
                    ] {
                        if set && !postgres {
                            return Err(ConfigError::invalid(
                                key,
                                "is for a PostgreSQL store (store.url = \"postgres://...\"); a SQLite store has no password or TLS".to_string(),
                            ));
                        }
                    }
                    crate::store::StoreAccess { password_file, ca_file }
                },
                key_file: non_empty_path("store.key_file", st.key_file.as_deref(), "data/fedgate.key")?,
                max_staleness: {
                    let d = duration("store.max_staleness", st.max_staleness.as_deref(), "5s")?;
                    if d < Duration::from_secs(1) {
                        return Err(ConfigError::invalid(
                            "store.max_staleness",
                            "must be at least 1s: the view is refreshed every 200 ms".to_string(),
                        ));
                    }
                    d
                },
            },
        };

        let a = file.auth.unwrap_or(file::AuthFile {
            basic_realm: None,
            cache_ttl: None,
            cache_max_entries: None,
            hash_workers: None,
            hash_queue: None,
            failure_delay: None,
        });
        let lockout_duration = duration(
            "lockout.duration",
            file.lockout.as_ref().and_then(|l| l.duration.as_deref()),
            "60s",
        )?;
        let lockout_max_duration = match file.lockout.as_ref().and_then(|l| l.max_duration.as_deref()) {
            None => lockout_duration.max(Duration::from_secs(3600)),
            Some(v) => {
                let d = duration("lockout.max_duration", Some(v), v)?;
                if d < lockout_duration {
                    return Err(ConfigError::invalid(
                        "lockout.max_duration",
                        format!("must be at least lockout.duration ({lockout_duration:?}), got \"{v}\""),
                    ));
                }
                d
            }
        };
        let auth = AuthConfig {
            basic_realm: match a.basic_realm {
                None => "fedgate".into(),
                Some(r) if !r.is_empty() && r.chars().all(|c| (' '..='~').contains(&c) && c != '"' && c != '\\') => r,
                Some(r) => {
                    return Err(ConfigError::invalid(
                        "auth.basic_realm",
                        format!("printable ASCII without quotes or backslashes expected, got \"{r}\""),
                    ))
                }
            },
            cache_ttl: duration("auth.cache_ttl", a.cache_ttl.as_deref(), "1h")?,
            cache_max_entries: bounded("auth.cache_max_entries", a.cache_max_entries, 100_000, 0, 10_000_000)?,
            hash_workers: match a.hash_workers {
                None | Some(0) => crate::auth::hasher::Hasher::default_workers(),
                Some(n) => bounded("auth.hash_workers", Some(n), 1, 1, 256)?,
            },
            hash_queue: bounded("auth.hash_queue", a.hash_queue, 64, 0, 100_000)?,
            lockout_threshold: u32::try_from(bounded(
                "lockout.threshold",
                file.lockout.as_ref().and_then(|l| l.threshold),
                10,
                0,
                1000,
            )?)
            .unwrap_or(10),
            lockout_duration,
            lockout_max_duration,
            lockout_source_threshold: u32::try_from(bounded(
                "lockout.source_threshold",
                file.lockout.as_ref().and_then(|l| l.source_threshold),
                20,
                0,
                1000,
            )?)
            .unwrap_or(20),
            lockout_source_window: duration(
                "lockout.source_window",
                file.lockout.as_ref().and_then(|l| l.source_window.as_deref()),
                "10m",
            )?,
            lockout_max_entries: bounded(
                "lockout.max_entries",
                file.lockout.as_ref().and_then(|l| l.max_entries),
                100_000,
                16,
                10_000_000,
            )?,
            failure_delay: match a.failure_delay.as_deref().map(str::trim) {
                None => Duration::from_secs(1),
                Some("0" | "0s" | "0ms") => Duration::ZERO,
                Some(v) => {
                    let d = duration("auth.failure_delay", Some(v), v)?;
                    if d > Duration::from_secs(30) {
                        return Err(ConfigError::invalid(
                            "auth.failure_delay",
                            "at most 30s: mail clients time out",
                        ));
                    }
                    d
                }
            },
        };

        let directory = file.directory.map(directory).transpose()?;
        let sync = sync(file.sync, directory.as_ref())?;
        let portal = portal(file.portal)?;
        let smtp = file.smtp.map(|f| smtp(f, portal.as_ref())).transpose()?;
        let forward_auth = file.forward_auth.map(forward_auth).transpose()?;

        let mut routes = Vec::with_capacity(file.route.len());
        for (index, r) in file.route.into_iter().enumerate() {
            routes.push(route(index, r, &server.upstream, directory.is_some())?);
        }
        if let Some(p) = &portal {
            if let Some(r) = routes
                .iter()
                .find(|r| r.path == p.path || r.path.starts_with(&format!("{}/", p.path)))
            {
                return Err(ConfigError::invalid(
                    format!("route[{}].path", r.index),
                    format!(
                        "\"{}\" is under portal.path \"{}\", which the portal serves",
                        r.path, p.path
                    ),
                ));
            }
        }
        if let Some(f) = &forward_auth {
            forward_auth_overlaps(f, portal.as_ref(), &routes)?;
        }
        if portal.is_none() {
            if let Some(r) = routes.iter().find(|r| r.browser == BrowserMode::Mfa) {
                return Err(ConfigError::invalid(
                    format!("route[{}].browser", r.index),
                    "\"mfa\" signs browsers in through the portal: enable [portal]",
                ));
            }
        }
        for (i, a) in routes.iter().enumerate() {
            // Paths that differ only in case are the same route unless both
            // routes match case-sensitively.
            let same_path = |b: &RouteConfig| match a.case_sensitive && b.case_sensitive {
                true => b.path == a.path,
                false => b.path.eq_ignore_ascii_case(&a.path),
            };
            if let Some(b) = routes[..i].iter().find(|b| b.host == a.host && same_path(b)) {
                return Err(ConfigError::invalid(
                    format!("route[{i}].path"),
                    format!("same host and path as route[{}] (\"{}\")", b.index, a.path),
                ));
            }
        }
        let mail = mail::mail(file.mail_auth, file.mail_backend, portal.as_ref(), &routes)?;
        if let (Some(m), Some(f)) = (&mail, &forward_auth) {
            // The forward-auth endpoint answers its path and everything
            // under it (Envoy's prefix form), in any ASCII case.
            let (mp, fp) = (m.path.to_ascii_lowercase(), f.path.to_ascii_lowercase());
            if mp == fp || mp.starts_with(&format!("{}/", fp.trim_end_matches('/'))) {
                return Err(ConfigError::invalid(
                    "mail_auth.path",
                    format!(
                        "\"{}\" is at or under forward_auth.path \"{}\", which the forward-auth endpoint answers",
                        m.path, f.path
                    ),
                ));
            }
        }
        // A mail-only fedgate (the nginx mail endpoint and nothing else)
        // needs no route; anything else without one would serve nothing.
        if routes.is_empty() && mail.is_none() {
            return Err(ConfigError::invalid(
                "route",
                "no [[route]] defined: fedgate would answer 404 to everything",
            ));
        }
        let mut route_names: Vec<&str> = routes.iter().map(|r| r.name.as_str()).collect();
        if mail.is_some() {
            route_names.extend(MailProtocol::ALL.map(MailProtocol::as_str));
        }
        let policies = crate::policy::PolicySet::build(&file.policy, &route_names)
            .map_err(|e| ConfigError::invalid(e.key, e.message))?;
        Ok(Config {
            server,
            admin,
            store,
            auth,
            directory,
            sync,
            portal,
            smtp,
            forward_auth,
            routes,
            policies: std::sync::Arc::new(policies),
            mail,
        })
    }
}

fn smtp(f: file::SmtpFile, portal: Option<&PortalConfig>) -> Result<SmtpConfig, ConfigError> {
    let host = match f.host.as_deref().map(str::trim) {
        Some(h) if !h.is_empty() => h.to_owned(),
        _ => {
            return Err(ConfigError::invalid(
                "smtp.host",
                "the mail server's name or address is required",
            ))
        }
    };
    let tls = match (f.tls.as_deref(), f.starttls) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::invalid(
                "smtp.starttls",
                "set smtp.tls or smtp.starttls, not both (smtp.tls = \"starttls\" | \"implicit\" | \"none\")",
            ))
        }
        (Some("starttls"), None) | (None, Some(true)) | (None, None) => SmtpTls::Starttls,
        (Some("implicit"), None) => SmtpTls::Implicit,
        (Some("none"), None) | (None, Some(false)) => SmtpTls::None,
        (Some(other), None) => {
            return Err(ConfigError::invalid(
                "smtp.tls",
                format!("expected \"starttls\", \"implicit\" or \"none\", got \"{other}\""),
            ))
        }
    };
    let loopback = host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if tls == SmtpTls::None && !loopback && !f.allow_plaintext.unwrap_or(false) {
        return Err(ConfigError::invalid(
            "smtp.tls",
            format!(
                "\"none\" sends mail to {host} unencrypted: allowed to a loopback address only, unless \
                 smtp.allow_plaintext = true"
            ),
        ));
    }
    let default_port = match tls {
        SmtpTls::Starttls => 587,
        SmtpTls::Implicit => 465,
        SmtpTls::None => 25,
    };
    let port =
        u16::try_from(bounded("smtp.port", f.port, usize::from(default_port), 1, 65_535)?).unwrap_or(default_port);
    let password_file = f
        .password_file
        .as_deref()
        .map(|p| non_empty_path("smtp.password_file", Some(p), ""))
        .transpose()?;
    let username = f.username.filter(|u| !u.is_empty());
    match (&username, &password_file) {
        (Some(_), None) => {
            return Err(ConfigError::invalid(
                "smtp.password_file",
                "smtp.username is set: name the file holding its password",
            ))
        }
        (None, Some(_)) => {
            return Err(ConfigError::invalid(
                "smtp.username",
                "smtp.password_file is set: the user name is required too",
            ))
        }
        (Some(_), Some(_)) if tls == SmtpTls::None => {
            return Err(ConfigError::invalid(
                "smtp.username",
                "a password is never sent over an unencrypted connection: use smtp.tls = \"starttls\" or \"implicit\"",
            ))
        }
        _ => {}
    }
    let from = match f.from.as_deref().map(str::trim) {
        Some(from) if from.parse::<lettre::message::Mailbox>().is_ok() => from.to_owned(),
        Some(from) => {
            return Err(ConfigError::invalid(
                "smtp.from",
                format!("expected a mail address such as \"it@corp.example.com\" or \"IT <it@corp.example.com>\", got \"{from}\""),
            ))
        }
        None => return Err(ConfigError::invalid("smtp.from", "the sender's address is required")),
    };
    let portal_url = match f.portal_url.as_deref().map(str::trim) {
        Some(url) if (url.starts_with("https://") || url.starts_with("http://")) && !url.contains(char::is_whitespace) => {
            url.to_owned()
        }
        Some(url) => {
            return Err(ConfigError::invalid(
                "smtp.portal_url",
                format!("expected the portal's address as users reach it, such as \"https://mail.corp.example.com/portal\", got \"{url}\""),
            ))
        }
        None => {
            return Err(ConfigError::invalid(
                "smtp.portal_url",
                "the portal's address as users reach it is required: notices tell users where to go",
            ))
        }
    };
    let organization = match f.organization {
        Some(o) if !o.trim().is_empty() => o.trim().to_owned(),
        Some(_) => return Err(ConfigError::invalid("smtp.organization", "must not be empty")),
        None => portal.map_or_else(|| "IT".to_owned(), |p| p.issuer.clone()),
    };
    Ok(SmtpConfig {
        host,
        port,
        tls,
        username,
        password_file,
        from,
        ca_file: f
            .ca_file
            .as_deref()
            .map(|p| non_empty_path("smtp.ca_file", Some(p), ""))
            .transpose()?,
        timeout: smtp_timeout(f.timeout.as_deref())?,
        auto: f.auto.unwrap_or(false),
        interval: duration("smtp.interval", f.interval.as_deref(), "5m")?,
        template: non_empty_path("smtp.template", f.template.as_deref(), "config/enrolment-notice.txt")?,
        portal_url,
        organization,
    })
}

/// The longest `smtp.timeout`: the mail server's every command may take
/// it, and a whole send (about eight commands) must end well within the
/// claim on its notice ([`crate::notify::CLAIM_FOR`]), or a second run
/// could take the claim over and send the notice again.
const MAX_SMTP_TIMEOUT: Duration = Duration::from_secs(60);

fn smtp_timeout(text: Option<&str>) -> Result<Duration, ConfigError> {
    let timeout = duration("smtp.timeout", text, "30s")?;
    if timeout > MAX_SMTP_TIMEOUT {
        return Err(ConfigError::invalid(
            "smtp.timeout",
            "must be at most 60s (each command of a send may take it; a send must end within \
             the 10 minutes a notice is claimed for)",
        ));
    }
    Ok(timeout)
}

fn forward_auth(f: file::ForwardAuthFile) -> Result<ForwardAuthConfig, ConfigError> {
    let Some(raw) = f.path else {
        return Err(ConfigError::invalid(
            "forward_auth.path",
            "required to turn the endpoint on, for example \"/_fedgate/auth\"",
        ));
    };
    let path = raw.trim_end_matches('/');
    let plain = path.len() >= 2
        && path.starts_with('/')
        && !path.contains(['?', '#'])
        && !path.chars().any(char::is_whitespace)
        && crate::proxy::canonical::canonical_path(path).is_ok_and(|c| c.is_unchanged() && c.is_plain());
    if !plain {
        return Err(ConfigError::invalid(
            "forward_auth.path",
            format!("expected a canonical path below \"/\" such as \"/_fedgate/auth\", got \"{raw}\""),
        ));
    }
    let secret_header = match f.secret_header.as_deref() {
        None => HeaderName::from_static("x-fedgate-secret"),
        Some(h) => HeaderName::from_bytes(h.as_bytes())
            .ok()
            .filter(|n| !crate::proxy::forward_auth::is_reserved_header(n))
            .ok_or_else(|| {
                ConfigError::invalid(
                    "forward_auth.secret_header",
                    format!(
                        "expected a header name of its own such as \"X-Fedgate-Secret\" (not one that \
                         describes the request or carries credentials), got \"{h}\""
                    ),
                )
            })?,
    };
    Ok(ForwardAuthConfig {
        path: path.to_owned(),
        secret_file: match f.secret_file.as_deref() {
            None => None,
            Some(p) => Some(non_empty_path("forward_auth.secret_file", Some(p), "")?),
        },
        secret_header,
    })
}

/// Whether `a` is `b` or lies below it, as paths that fold ASCII case.
fn path_within(a: &str, b: &str) -> bool {
    let Some(head) = a.get(..b.len()) else {
        return false;
    };
    head.eq_ignore_ascii_case(b) && (b.ends_with('/') || a.len() == b.len() || a[b.len()..].starts_with('/'))
}

/// The endpoint is answered before the portal and routes, so nothing they
/// serve may sit at or below its path, and it may not share the portal's.
/// A route above it (`/`, the usual catch-all) is fine: it keeps every
/// other path.
fn forward_auth_overlaps(
    f: &ForwardAuthConfig,
    portal: Option<&PortalConfig>,
    routes: &[RouteConfig],
) -> Result<(), ConfigError> {
    if let Some(p) = portal {
        if path_within(&f.path, &p.path) || path_within(&p.path, &f.path) {
            return Err(ConfigError::invalid(
                "forward_auth.path",
                format!(
                    "\"{}\" overlaps portal.path \"{}\": give the endpoint a path of its own",
                    f.path, p.path
                ),
            ));
        }
    }
    if let Some(r) = routes.iter().find(|r| path_within(&r.path, &f.path)) {
        return Err(ConfigError::invalid(
            format!("route[{}].path", r.index),
            format!(
                "\"{}\" is at or under forward_auth.path \"{}\", which the forward-auth endpoint answers",
                r.path, f.path
            ),
        ));
    }
    Ok(())
}

fn portal(p: Option<file::PortalFile>) -> Result<Option<PortalConfig>, ConfigError> {
    let Some(p) = p else { return Ok(None) };
    if p.enabled == Some(false) {
        return Ok(None);
    }
    let path = p.path.unwrap_or_else(|| "/portal".into());
    let path = path.trim_end_matches('/').to_owned();
    if !path.starts_with('/') || path.len() < 2 || path.contains(['?', '#', ' ', '"', '<', '>', '\'']) {
        return Err(ConfigError::invalid(
            "portal.path",
            format!("expected a path such as \"/portal\", got \"{path}\""),
        ));
    }
    let issuer = p.issuer.unwrap_or_else(|| "fedgate".into()).trim().to_owned();
    if issuer.is_empty() || issuer.len() > 64 || issuer.contains(':') || issuer.chars().any(char::is_control) {
        return Err(ConfigError::invalid(
            "portal.issuer",
            format!("1 to 64 characters without ':' (authenticator apps split on it), got \"{issuer}\""),
        ));
    }
    Ok(Some(PortalConfig {
        path,
        issuer,
        secret_key_file: non_empty_path(
            "portal.secret_key_file",
            p.secret_key_file.as_deref(),
            "data/portal.key",
        )?,
        session_idle: duration("portal.session_idle", p.session_idle.as_deref(), "30m")?,
        session_absolute: duration("portal.session_absolute", p.session_absolute.as_deref(), "12h")?,
    }))
}

fn sync(s: Option<file::SyncFile>, directory: Option<&DirectoryConfig>) -> Result<Option<SyncConfig>, ConfigError> {
    let Some(d) = directory else {
        if s.is_some() {
            return Err(ConfigError::invalid(
                "sync",
                "there is nothing to sync without [directory]",
            ));
        }
        return Ok(None);
    };
    // Direct bind has no account to read the directory with: no sync
    // unless asked for, and then it is an error.
    if s.is_none() && matches!(d.bind, DirectoryBind::Direct { .. }) {
        return Ok(None);
    }
    let s = s.unwrap_or(file::SyncFile {
        enabled: None,
        mode: None,
        interval: None,
        full_every: None,
        change_attribute: None,
        page_size: None,
        max_change_share: None,
        guard_floor: None,
        revoke_on_password_change: None,
    });
    if s.enabled == Some(false) {
        return Ok(None);
    }
    if matches!(d.bind, DirectoryBind::Direct { .. }) {
        return Err(ConfigError::invalid(
            "sync",
            "the directory sync reads every user with the service account: set directory.bind_dn and \
             directory.bind_password_file, or turn the sync off with sync.enabled = false",
        ));
    }
    let ad = d.kind == DirectoryKind::ActiveDirectory;
    let attribute = |key: &str, value: Option<String>, default: &str| -> Result<String, ConfigError> {
        let v = value.unwrap_or_else(|| default.to_owned());
        let v = v.trim();
        if v.is_empty() || !v.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err(ConfigError::invalid(
                format!("sync.{key}"),
                format!("expected an attribute name such as \"{default}\", got \"{v}\""),
            ));
        }
        Ok(v.to_owned())
    };
    let max_change_share = s.max_change_share.unwrap_or(0.10);
    if !(0.0..=1.0).contains(&max_change_share) {
        return Err(ConfigError::invalid(
            "sync.max_change_share",
            format!("a share between 0.0 and 1.0 (0.10 is 10%), got {max_change_share}"),
        ));
    }
    let mode = match s.mode.as_deref().map(str::trim) {
        None | Some("push") => SyncMode::Push,
        Some("poll") => SyncMode::Poll,
        Some(other) => {
            return Err(ConfigError::invalid(
                "sync.mode",
                format!("expected \"push\" or \"poll\", got \"{other}\""),
            ))
        }
    };
    Ok(Some(SyncConfig {
        mode,
        interval: duration("sync.interval", s.interval.as_deref(), "60s")?,
        full_every: duration("sync.full_every", s.full_every.as_deref(), "15m")?,
        change_attribute: attribute(
            "change_attribute",
            s.change_attribute,
            if ad { "uSNChanged" } else { "modifyTimestamp" },
        )?,
        page_size: u32::try_from(bounded("sync.page_size", s.page_size, 500, 1, 100_000)?).unwrap_or(500),
        max_change_share,
        guard_floor: bounded("sync.guard_floor", s.guard_floor, 10, 0, 1_000_000)?,
        revoke_on_password_change: s.revoke_on_password_change.unwrap_or(false),
    }))
}

fn directory(d: file::DirectoryFile) -> Result<DirectoryConfig, ConfigError> {
    let kind = match d.kind.as_deref().map(str::trim) {
        None | Some("openldap") => DirectoryKind::OpenLdap,
        Some("active_directory" | "ad") => DirectoryKind::ActiveDirectory,
        Some(other) => {
            return Err(ConfigError::invalid(
                "directory.kind",
                format!("expected \"openldap\" or \"active_directory\", got \"{other}\""),
            ))
        }
    };
    let ad = kind == DirectoryKind::ActiveDirectory;
    if d.urls.is_empty() {
        return Err(ConfigError::invalid(
            "directory.urls",
            "no server: list at least one URL such as \"ldaps://dc1.corp.example.com\"",
        ));
    }
    let starttls = d.starttls.unwrap_or(false);
    let mut urls = Vec::with_capacity(d.urls.len());
    for (i, url) in d.urls.iter().enumerate() {
        let key = format!("directory.urls[{i}]");
        let url = url.trim();
        let rest = match url.split_once("://") {
            Some(("ldap", rest)) => rest,
            Some(("ldaps", rest)) => {
                if starttls {
                    return Err(ConfigError::invalid(
                        key,
                        format!("\"{url}\" is already TLS: directory.starttls applies to ldap:// URLs only"),
                    ));
                }
                rest
            }
            _ => {
                return Err(ConfigError::invalid(
                    key,
                    format!("expected ldap://HOST[:PORT] or ldaps://HOST[:PORT], got \"{url}\""),
                ))
            }
        };
        let host = rest.trim_end_matches('/');
        if host.is_empty() || host.contains(['/', '?', ' ']) {
            return Err(ConfigError::invalid(
                key,
                format!("expected ldap://HOST[:PORT] or ldaps://HOST[:PORT] without a path, got \"{url}\""),
            ));
        }
        urls.push(url.trim_end_matches('/').to_owned());
    }
    let tls = starttls || urls.iter().any(|u| u.starts_with("ldaps://"));
    let ca_file = match d.ca_file.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(_) if !tls => {
            return Err(ConfigError::invalid(
                "directory.ca_file",
                "only used with ldaps:// URLs or starttls = true",
            ))
        }
        Some(p) => Some(PathBuf::from(p)),
    };
    let text = |v: Option<String>| v.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty());
    let bind = match (text(d.bind_dn), text(d.bind_password_file)) {
        (Some(dn), Some(file)) => {
            if d.bind_name.is_some() {
                return Err(ConfigError::invalid(
                    "directory.bind_name",
                    "only used without a service account (bind_dn): remove one of them",
                ));
            }
            DirectoryBind::Search {
                dn,
                password_file: PathBuf::from(file),
            }
        }
        (Some(_), None) => {
            return Err(ConfigError::invalid(
                "directory.bind_password_file",
                "bind_dn is set: name the file holding its password",
            ))
        }
        (None, Some(_)) => {
            return Err(ConfigError::invalid(
                "directory.bind_dn",
                "bind_password_file is set: give the service account's DN",
            ))
        }
        (None, None) => DirectoryBind::Direct {
            name: Template::bind_name(d.bind_name.as_deref().unwrap_or("{upn}"))
                .map_err(|m| ConfigError::invalid("directory.bind_name", m))?,
        },
    };
    let base_dn = text(d.base_dn).ok_or_else(|| {
        ConfigError::invalid(
            "directory.base_dn",
            "required: the subtree users are searched in, such as \"ou=people,dc=corp,dc=example,dc=com\"",
        )
    })?;
    let attribute = |key: &str, value: Option<String>, default: &str| -> Result<String, ConfigError> {
        let v = value.unwrap_or_else(|| default.to_owned());
        let v = v.trim();
        if v.is_empty()
            || !v
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == ';' || c == '.')
        {
            return Err(ConfigError::invalid(
                format!("directory.{key}"),
                format!("expected an attribute name such as \"{default}\", got \"{v}\""),
            ));
        }
        Ok(v.to_owned())
    };
    let upn_attribute = attribute(
        "upn_attribute",
        d.upn_attribute,
        if ad { "userPrincipalName" } else { "mail" },
    )?;
    let login_attribute = attribute(
        "login_attribute",
        d.login_attribute,
        if ad { "sAMAccountName" } else { "uid" },
    )?;
    let anchor_attribute = attribute(
        "anchor_attribute",
        d.anchor_attribute,
        if ad { "objectGUID" } else { "entryUUID" },
    )?;
    let groups_attribute = attribute("groups_attribute", d.groups_attribute, "memberOf")?;
    let password_changed_attribute = attribute(
        "password_changed_attribute",
        d.password_changed_attribute,
        if ad { "pwdLastSet" } else { "pwdChangedTime" },
    )?;
    let user_filter = Template::filter(
        &d.user_filter.unwrap_or_else(|| format!("({upn_attribute}={{upn}})")),
        Placeholder::Upn,
    )
    .map_err(|m| ConfigError::invalid("directory.user_filter", m))?;
    let login_filter = Template::filter(
        &d.login_filter
            .unwrap_or_else(|| format!("({login_attribute}={{login}})")),
        Placeholder::Login,
    )
    .map_err(|m| ConfigError::invalid("directory.login_filter", m))?;
    let disabled_filter = match d.disabled_filter.as_deref().map(str::trim) {
        // AD's ACCOUNTDISABLE bit; also matches built-in accounts such as
        // Guest and krbtgt, which are never users here.
        None if ad => Some(
            Template::fixed_filter("(userAccountControl:1.2.840.113556.1.4.803:=2)")
                .map_err(|m| ConfigError::invalid("directory.disabled_filter", m))?,
        ),
        None | Some("") => None,
        Some(f) => Some(Template::fixed_filter(f).map_err(|m| ConfigError::invalid("directory.disabled_filter", m))?),
    };
    let domain = match d.domain.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(dom) if dom.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.') => {
            Some(dom.to_ascii_uppercase())
        }
        Some(dom) => {
            return Err(ConfigError::invalid(
                "directory.domain",
                format!("expected a NetBIOS domain name such as \"CORP\", got \"{dom}\""),
            ))
        }
    };
    let timeout = duration("directory.timeout", d.timeout.as_deref(), "5s")?;
    let connect_timeout = match d.connect_timeout.as_deref() {
        None => timeout.min(Duration::from_secs(3)),
        Some(v) => duration("directory.connect_timeout", Some(v), v)?,
    };
    let cache_ttl = match d.cache_ttl.as_deref().map(str::trim) {
        Some("0" | "0s" | "0ms") => Duration::ZERO,
        v => duration("directory.cache_ttl", v, "5m")?,
    };
    Ok(DirectoryConfig {
        kind,
        urls,
        starttls,
        ca_file,
        bind,
        base_dn,
        user_filter,
        login_filter,
        upn_attribute,
        login_attribute,
        anchor_attribute,
        disabled_filter,
        domain,
        allow_non_ascii_logins: d.allow_non_ascii_logins.unwrap_or(false),
        timeout,
        connect_timeout,
        pool_size: bounded("directory.pool_size", d.pool_size, 2, 1, 64)?,
        max_binds: bounded("directory.max_binds", d.max_binds, 16, 1, 1024)?,
        cache_ttl,
        failover_backoff: duration("directory.failover_backoff", d.failover_backoff.as_deref(), "10s")?,
        groups_attribute,
        password_changed_attribute,
    })
}

fn route(
    index: usize,
    r: file::RouteFile,
    defaults: &UpstreamDefaults,
    has_directory: bool,
) -> Result<RouteConfig, ConfigError> {
    let key = |k: &str| format!("route[{index}].{k}");
    if !r.path.starts_with('/') {
        return Err(ConfigError::invalid(
            key("path"),
            format!("must start with \"/\", got \"{}\"", r.path),
        ));
    }
    if r.path.contains(['?', '#']) || r.path.chars().any(char::is_whitespace) {
        return Err(ConfigError::invalid(
            key("path"),
            format!("must be a plain path prefix, got \"{}\"", r.path),
        ));
    }
    match crate::proxy::canonical::canonical_path(&r.path) {
        Ok(c) if c.is_unchanged() && c.is_plain() => {}
        Ok(c) if c.is_plain() => {
            return Err(ConfigError::invalid(
                key("path"),
                format!("not in canonical form: \"{}\" (write \"{}\")", r.path, c.as_str()),
            ))
        }
        Ok(_) => {
            return Err(ConfigError::invalid(
                key("path"),
                format!("must not hold \";\" or an encoded slash, got \"{}\"", r.path),
            ))
        }
        Err(refusal) => {
            return Err(ConfigError::invalid(
                key("path"),
                format!("not a canonical path ({refusal}): \"{}\"", r.path),
            ))
        }
    }
    let upgrades = match r.upgrades {
        None => vec!["websocket".to_owned()],
        Some(list) => {
            let mut upgrades = Vec::with_capacity(list.len());
            for token in list {
                let token = token.to_ascii_lowercase();
                let valid = !token.is_empty()
                    && token
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
                if !valid {
                    return Err(ConfigError::invalid(
                        key("upgrades"),
                        format!("expected protocol names such as \"websocket\", got \"{token}\""),
                    ));
                }
                if token == "h2c" {
                    return Err(ConfigError::invalid(
                        key("upgrades"),
                        "\"h2c\" cannot be tunnelled: it would carry requests past sign-in and header hygiene",
                    ));
                }
                upgrades.push(token);
            }
            upgrades
        }
    };
    let host = match r.host.as_deref().map(str::trim) {
        None | Some("") | Some("*") => None,
        Some(h) => {
            let h = h.to_ascii_lowercase();
            if h.contains(['/', ':', ' ']) {
                return Err(ConfigError::invalid(
                    key("host"),
                    format!("expected a host name without port, got \"{h}\""),
                ));
            }
            Some(h)
        }
    };
    let upstream = match r.upstream.as_deref() {
        None => Upstream::DecideOnly,
        Some(u) => parse_upstream(u).map_err(|m| ConfigError::invalid(key("upstream"), m))?,
    };
    let upstream_ca_file = match r.upstream_ca_file.as_deref() {
        None | Some("") => None,
        Some(p) => {
            if !matches!(&upstream, Upstream::Http(u) if u.scheme_str() == Some("https")) {
                return Err(ConfigError::invalid(
                    key("upstream_ca_file"),
                    "only meaningful with an https:// upstream",
                ));
            }
            Some(PathBuf::from(p))
        }
    };
    let realm = match r.realm.as_deref().unwrap_or("cloud") {
        "cloud" => Realm::Cloud,
        "onprem" => Realm::Onprem,
        "none" => Realm::None,
        other => {
            return Err(ConfigError::invalid(
                key("realm"),
                format!("expected \"cloud\", \"onprem\" or \"none\", got \"{other}\""),
            ))
        }
    };
    if realm == Realm::Onprem && !has_directory {
        return Err(ConfigError::invalid(
            key("realm"),
            "realm \"onprem\" checks passwords against the directory: configure [directory]",
        ));
    }
    let identity_header_name = r.identity_header.as_deref().unwrap_or("X-Remote-User");
    let identity_header = HeaderName::from_bytes(identity_header_name.as_bytes()).map_err(|_| {
        ConfigError::invalid(
            key("identity_header"),
            format!("not a valid header name: \"{identity_header_name}\""),
        )
    })?;
    let browser = match r.browser.as_deref().unwrap_or("basic") {
        "basic" => BrowserMode::Basic,
        "mfa" => BrowserMode::Mfa,
        other => {
            return Err(ConfigError::invalid(
                key("browser"),
                format!("expected \"basic\" or \"mfa\", got \"{other}\""),
            ))
        }
    };
    if browser == BrowserMode::Mfa && realm == Realm::None {
        return Err(ConfigError::invalid(
            key("browser"),
            "\"mfa\" signs browsers in; a realm = \"none\" route signs nobody in",
        ));
    }
    Ok(RouteConfig {
        index,
        name: r.name.unwrap_or_else(|| r.path.clone()),
        host,
        path: r.path,
        upstream,
        upstream_ca_file,
        upstream_timeout: optional_duration(&key("upstream_timeout"), r.upstream_timeout.as_deref())?
            .unwrap_or(defaults.timeout),
        upstream_connect_timeout: optional_duration(
            &key("upstream_connect_timeout"),
            r.upstream_connect_timeout.as_deref(),
        )?
        .unwrap_or(defaults.connect_timeout),
        realm,
        identity_header,
        forward_authorization: r.forward_authorization.unwrap_or(false),
        preserve_host: r.preserve_host.unwrap_or(true),
        case_sensitive: r.case_sensitive.unwrap_or(false),
        allow_encoded_slashes: r.allow_encoded_slashes.unwrap_or(false),
        allow_path_parameters: r.allow_path_parameters.unwrap_or(false),
        upgrades,
        browser,
    })
}

fn parse_upstream(s: &str) -> Result<Upstream, String> {
    if let Some(name) = s.strip_prefix("builtin:") {
        return match name {
            "whoami" => Ok(Upstream::Whoami),
            _ => Err(format!("unknown built-in upstream \"{s}\" (known: \"builtin:whoami\")")),
        };
    }
    let uri: Uri = s.parse().map_err(|_| format!("invalid URL \"{s}\""))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => return Err(format!("invalid URL \"{s}\": scheme must be http:// or https://")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("invalid URL \"{s}\": no host"));
    }
    if uri.query().is_some() {
        return Err(format!("invalid URL \"{s}\": an upstream cannot carry a query"));
    }
    Ok(Upstream::Http(uri))
}

fn parse_addr(key: &str, s: &str) -> Result<SocketAddr, ConfigError> {
    s.parse().map_err(|_| {
        ConfigError::invalid(
            key,
            format!("expected IP:PORT such as \"127.0.0.1:8443\" or \"[::]:443\", got \"{s}\""),
        )
    })
}

fn parse_addrs(key: &str, list: &[String]) -> Result<Vec<SocketAddr>, ConfigError> {
    let mut out: Vec<SocketAddr> = Vec::with_capacity(list.len());
    for (i, s) in list.iter().enumerate() {
        let addr = parse_addr(&format!("{key}[{i}]"), s)?;
        if addr.port() != 0 && out.contains(&addr) {
            return Err(ConfigError::invalid(
                format!("{key}[{i}]"),
                format!("{addr} is listed twice"),
            ));
        }
        out.push(addr);
    }
    Ok(out)
}

fn parse_cidr(s: &str) -> Result<IpNet, String> {
    if let Ok(net) = s.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    s.parse::<std::net::IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("expected a CIDR such as \"10.0.0.0/8\" or an IP address, got \"{s}\""))
}

/// Parses a duration string; an absent value takes `default`.
fn duration(key: &str, value: Option<&str>, default: &str) -> Result<Duration, ConfigError> {
    let text = value.unwrap_or(default);
    let d = humantime::parse_duration(text.trim()).map_err(|_| {
        ConfigError::invalid(
            key,
            format!("expected a duration such as \"90s\", \"5m\" or \"1h\", got \"{text}\""),
        )
    })?;
    if d.is_zero() {
        return Err(ConfigError::invalid(key, "must be greater than zero"));
    }
    Ok(d)
}

fn optional_duration(key: &str, value: Option<&str>) -> Result<Option<Duration>, ConfigError> {
    value.map(|v| duration(key, Some(v), v)).transpose()
}

fn bounded(key: &str, value: Option<i64>, default: usize, min: usize, max: usize) -> Result<usize, ConfigError> {
    let Some(v) = value else { return Ok(default) };
    match usize::try_from(v) {
        Ok(v) if (min..=max).contains(&v) => Ok(v),
        _ => Err(ConfigError::invalid(
            key,
            format!("must be between {min} and {max}, got {v}"),
        )),
    }
}

fn non_empty_path(key: &str, value: Option<&str>, default: &str) -> Result<PathBuf, ConfigError> {
    match value {
        None => Ok(PathBuf::from(default)),
        Some(v) if v.trim().is_empty() => Err(ConfigError::invalid(key, "must not be empty")),
        Some(v) => Ok(PathBuf::from(v)),
    }
}

#[cfg(test)]
mod tests;
