//! The config file exactly as written: every table rejects keys it does not
//! know, and the path of a bad key is reported (`route[1].upstream`).

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub server: ServerFile,
    pub admin: Option<AdminFile>,
    pub store: Option<StoreFile>,
    pub auth: Option<AuthFile>,
    pub directory: Option<DirectoryFile>,
    pub sync: Option<SyncFile>,
    pub portal: Option<PortalFile>,
    pub lockout: Option<LockoutFile>,
    pub smtp: Option<SmtpFile>,
    pub forward_auth: Option<ForwardAuthFile>,
    #[serde(default)]
    pub route: Vec<RouteFile>,
    #[serde(default)]
    pub policy: Vec<crate::policy::PolicyFile>,
    pub mail_auth: Option<super::mail::MailAuthFile>,
    #[serde(default)]
    pub mail_backend: Vec<super::mail::MailBackendFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpFile {
    pub host: Option<String>,
    pub port: Option<i64>,
    pub tls: Option<String>,
    /// DESIGN.md's spelling: `true` is `tls = "starttls"`.
    pub starttls: Option<bool>,
    pub allow_plaintext: Option<bool>,
    pub username: Option<String>,
    pub password_file: Option<String>,
    pub from: Option<String>,
    pub ca_file: Option<String>,
    pub timeout: Option<String>,
    pub auto: Option<bool>,
    pub interval: Option<String>,
    pub template: Option<String>,
    pub portal_url: Option<String>,
    pub organization: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardAuthFile {
    pub path: Option<String>,
    pub secret_file: Option<String>,
    pub secret_header: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreFile {
    pub url: Option<String>,
    pub password_file: Option<String>,
    pub ca_file: Option<String>,
    pub key_file: Option<String>,
    pub max_staleness: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthFile {
    pub basic_realm: Option<String>,
    pub cache_ttl: Option<String>,
    pub cache_max_entries: Option<i64>,
    pub hash_workers: Option<i64>,
    pub hash_queue: Option<i64>,
    pub failure_delay: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectoryFile {
    pub kind: Option<String>,
    #[serde(default)]
    pub urls: Vec<String>,
    pub starttls: Option<bool>,
    pub ca_file: Option<String>,
    pub bind_dn: Option<String>,
    pub bind_password_file: Option<String>,
    pub bind_name: Option<String>,
    pub base_dn: Option<String>,
    pub user_filter: Option<String>,
    pub login_filter: Option<String>,
    pub upn_attribute: Option<String>,
    pub login_attribute: Option<String>,
    pub anchor_attribute: Option<String>,
    pub disabled_filter: Option<String>,
    pub domain: Option<String>,
    pub allow_non_ascii_logins: Option<bool>,
    pub timeout: Option<String>,
    pub connect_timeout: Option<String>,
    pub pool_size: Option<i64>,
    pub max_binds: Option<i64>,
    pub cache_ttl: Option<String>,
    pub failover_backoff: Option<String>,
    pub groups_attribute: Option<String>,
    pub password_changed_attribute: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockoutFile {
    pub threshold: Option<i64>,
    pub duration: Option<String>,
    pub max_duration: Option<String>,
    pub source_threshold: Option<i64>,
    pub source_window: Option<String>,
    pub max_entries: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortalFile {
    pub enabled: Option<bool>,
    pub path: Option<String>,
    pub issuer: Option<String>,
    pub secret_key_file: Option<String>,
    pub session_idle: Option<String>,
    pub session_absolute: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncFile {
    pub enabled: Option<bool>,
    pub mode: Option<String>,
    pub interval: Option<String>,
    pub full_every: Option<String>,
    pub change_attribute: Option<String>,
    pub page_size: Option<i64>,
    pub max_change_share: Option<f64>,
    pub guard_floor: Option<i64>,
    pub revoke_on_password_change: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerFile {
    #[serde(default)]
    pub listen: Vec<String>,
    #[serde(default)]
    pub listen_plain: Vec<String>,
    pub tls_cert: Option<String>,
    pub tls_key: Option<String>,
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    pub header_read_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub max_header_bytes: Option<i64>,
    pub max_connections: Option<i64>,
    pub shutdown_grace: Option<String>,
    pub workers: Option<i64>,
    pub upstream_connect_timeout: Option<String>,
    pub upstream_timeout: Option<String>,
    pub upstream_pool_idle_timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminFile {
    pub listen: String,
    pub tls: Option<bool>,
    pub client_ca_file: Option<String>,
    pub token_file: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteFile {
    pub name: Option<String>,
    pub host: Option<String>,
    pub path: String,
    pub upstream: Option<String>,
    pub upstream_ca_file: Option<String>,
    pub upstream_timeout: Option<String>,
    pub upstream_connect_timeout: Option<String>,
    pub realm: Option<String>,
    pub identity_header: Option<String>,
    pub forward_authorization: Option<bool>,
    pub preserve_host: Option<bool>,
    pub browser: Option<String>,
    pub case_sensitive: Option<bool>,
    pub allow_encoded_slashes: Option<bool>,
    pub allow_path_parameters: Option<bool>,
    pub upgrades: Option<Vec<String>>,
}

impl FileConfig {
    /// Parses TOML text. The error names the offending key path and, where
    /// the TOML parser knows it, the line.
    pub fn parse(text: &str) -> Result<FileConfig, String> {
        let deserializer = toml::Deserializer::new(text);
        serde_path_to_error::deserialize(deserializer).map_err(|err| {
            let path = err.path().to_string();
            let inner = err.into_inner();
            let message = inner.message().to_string();
            let line = inner
                .span()
                .map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1);
            match (path.as_str(), line) {
                (".", Some(line)) | ("", Some(line)) => format!("line {line}: {message}"),
                (".", None) | ("", None) => message,
                (path, Some(line)) => format!("{path}: {message} (line {line})"),
                (path, None) => format!("{path}: {message}"),
            }
        })
    }
}
