//! [`LdapDirectory`]: the [`Directory`] over ldap3.
//!
//! Connections:
//! - *servers* are the configured URLs, tried in order; one that fails to
//!   connect is tried last for `failover_backoff`, so a dead primary costs
//!   one failed connect per back-off period rather than one per sign-in.
//!   Once its back-off is over, pooled connections to later servers are
//!   replaced on their next use, so sign-ins move back to the primary when
//!   it returns;
//! - *service connections* (`pool_size`, bound as `bind_dn`) carry searches;
//!   ldap3 multiplexes operations on one connection, so a handful serve any
//!   load. A connection the server dropped is replaced (and bound again) on
//!   next use;
//! - *bind connections* carry user binds, one at a time each (a bind changes
//!   who the connection is). At most `max_binds` exist; idle ones are kept
//!   and bound again as the next user, which saves a TCP (and TLS) setup per
//!   cold sign-in.
//!
//! Every check runs under one deadline (`timeout`): whatever the servers do
//! (refuse, hang, answer garbage), the caller gets an answer by then.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use ldap3::adapters::PagedResults;
use ldap3::{Ldap, LdapConnAsync, LdapConnSettings, LdapError, ResultEntry, Scope, SearchEntry, SearchOptions};
use tokio::sync::Semaphore;

use super::ad::{self, BindFailure};
use super::template::Values;
use super::{Checked, Directory, DirectoryError, Known, LoginName};
use crate::app_password;
use crate::config::{DirectoryBind, DirectoryConfig};
use crate::model::{DirectoryAttributes, FederatedUser, Secret, Upn};
use crate::telemetry;

pub mod push;

/// LDAP result codes this client tells apart.
mod rc {
    pub const SUCCESS: u32 = 0;
    pub const SIZE_LIMIT_EXCEEDED: u32 = 4;
    pub const REFERRAL: u32 = 10;
    pub const NO_SUCH_OBJECT: u32 = 32;
    pub const STRONG_AUTH_REQUIRED: u32 = 8;
    pub const CONFIDENTIALITY_REQUIRED: u32 = 13;
    pub const INVALID_CREDENTIALS: u32 = 49;
    pub const INSUFFICIENT_ACCESS_RIGHTS: u32 = 50;
}

/// Problems found when the directory client is built from the config.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("cannot read directory.bind_password_file {path}: {source}")]
    PasswordFile {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("directory.bind_password_file {path} is empty")]
    EmptyPassword { path: std::path::PathBuf },
    #[error("directory.ca_file: {0}")]
    Tls(#[from] crate::proxy::tls::TlsError),
}

struct Server {
    url: String,
    /// Until when this server is tried only after the others.
    down_until: Mutex<Option<Instant>>,
    /// Whether the last attempt failed, so that an outage is logged once.
    failing: AtomicBool,
}

impl Server {
    fn backing_off(&self, now: Instant) -> bool {
        lock(&self.down_until).is_some_and(|until| until > now)
    }
}

/// A connection and the server it goes to.
#[derive(Clone)]
struct Conn {
    ldap: Ldap,
    server: usize,
    /// Tells connections apart, to replace the one found broken.
    id: u64,
}

/// Locks a mutex whose data stays valid even if a holder panicked (every
/// critical section here is a plain read or write).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub struct LdapDirectory {
    config: DirectoryConfig,
    servers: Vec<Server>,
    tls: Option<Arc<rustls::ClientConfig>>,
    service_password: Option<Secret>,
    service: Vec<tokio::sync::Mutex<Option<Conn>>>,
    next_service: AtomicUsize,
    next_conn_id: AtomicU64,
    binds: Semaphore,
    idle_binds: Mutex<Vec<Conn>>,
    attributes: Vec<String>,
}

impl std::fmt::Debug for LdapDirectory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LdapDirectory")
            .field("urls", &self.config.urls)
            .field("base_dn", &self.config.base_dn)
            .finish_non_exhaustive()
    }
}

/// What one search for a user found.
enum Found {
    One(Box<SearchEntry>),
    None,
    /// Several entries match: the filter is too loose for this name.
    Ambiguous,
}

/// How a failed operation should be treated.
enum OpError {
    /// The connection is unusable (closed, timed out, garbage): drop it; the
    /// operation may be retried on a new one.
    Connection(String),
    /// The server answered with an error that a retry will not change.
    Answer(String),
}

impl OpError {
    fn from_ldap(err: LdapError) -> OpError {
        match err {
            LdapError::LdapResult { result } => OpError::Answer(format!("result code {}: {}", result.rc, result.text)),
            other => OpError::Connection(other.to_string()),
        }
    }

    fn message(self) -> String {
        match self {
            OpError::Connection(m) | OpError::Answer(m) => m,
        }
    }
}

impl LdapDirectory {
    pub fn new(config: DirectoryConfig) -> Result<LdapDirectory, SetupError> {
        let service_password = match &config.bind {
            DirectoryBind::Search { password_file, .. } => {
                let text = std::fs::read_to_string(password_file).map_err(|source| SetupError::PasswordFile {
                    path: password_file.clone(),
                    source,
                })?;
                // A trailing newline is what editors and `echo` leave.
                let password = text.strip_suffix('\n').unwrap_or(&text);
                let password = password.strip_suffix('\r').unwrap_or(password);
                if password.is_empty() {
                    return Err(SetupError::EmptyPassword {
                        path: password_file.clone(),
                    });
                }
                Some(Secret::from(password))
            }
            DirectoryBind::Direct { .. } => None,
        };
        let uses_tls = config.starttls || config.urls.iter().any(|u| u.starts_with("ldaps://"));
        let tls = if uses_tls {
            let extra = config.ca_file.as_deref().map(|p| ("directory.ca_file", p));
            Some(Arc::new(crate::proxy::tls::client_config(extra)?))
        } else {
            None
        };
        let servers = config
            .urls
            .iter()
            .map(|url| Server {
                url: url.clone(),
                down_until: Mutex::new(None),
                failing: AtomicBool::new(false),
            })
            .collect();
        let mut attributes: Vec<String> = vec![
            config.upn_attribute.clone(),
            config.login_attribute.clone(),
            config.anchor_attribute.clone(),
            config.groups_attribute.clone(),
            config.password_changed_attribute.clone(),
            "displayName".into(),
            "mail".into(),
        ];
        attributes.sort_by_key(|a| a.to_ascii_lowercase());
        attributes.dedup_by(|a, b| a.eq_ignore_ascii_case(b));
        Ok(LdapDirectory {
            service: (0..config.pool_size).map(|_| tokio::sync::Mutex::new(None)).collect(),
            next_service: AtomicUsize::new(0),
            next_conn_id: AtomicU64::new(0),
            binds: Semaphore::new(config.max_binds),
            idle_binds: Mutex::new(Vec::new()),
            servers,
            tls,
            service_password,
            attributes,
            config,
        })
    }

    fn remaining(deadline: Instant) -> Option<Duration> {
        deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero())
    }

    /// Opens a connection to the first server that accepts one: servers not
    /// backing off first, in the configured order, then the others.
    async fn connect(&self, deadline: Instant) -> Result<Conn, DirectoryError> {
        let now = Instant::now();
        let (mut order, later): (Vec<usize>, Vec<usize>) =
            (0..self.servers.len()).partition(|&i| !self.servers[i].backing_off(now));
        order.extend(later);
        let mut last = None;
        for index in order {
            let server = &self.servers[index];
            let Some(remaining) = Self::remaining(deadline) else {
                break;
            };
            let mut settings = LdapConnSettings::new().set_conn_timeout(self.config.connect_timeout.min(remaining));
            if let Some(tls) = &self.tls {
                settings = settings.set_config(Arc::clone(tls)).set_starttls(self.config.starttls);
            }
            let attempt = tokio::time::timeout(remaining, LdapConnAsync::with_settings(settings, &server.url)).await;
            let reason = match attempt {
                Ok(Ok((conn, ldap))) => {
                    telemetry::directory_connection();
                    let url = server.url.clone();
                    tokio::spawn(async move {
                        if let Err(err) = conn.drive().await {
                            tracing::debug!(server = %url, error = %err, "directory connection ended");
                        }
                    });
                    *lock(&server.down_until) = None;
                    telemetry::directory_up(&server.url, true);
                    if server.failing.swap(false, Ordering::AcqRel) {
                        tracing::info!(server = %server.url, "directory server reachable again");
                    }
                    return Ok(Conn {
                        ldap,
                        server: index,
                        id: self.next_conn_id.fetch_add(1, Ordering::Relaxed),
                    });
                }
                Ok(Err(err)) => err.to_string(),
                Err(_) => format!("no connection within {remaining:?}"),
            };
            *lock(&server.down_until) = Some(Instant::now() + self.config.failover_backoff);
            telemetry::directory_up(&server.url, false);
            if !server.failing.swap(true, Ordering::AcqRel) {
                tracing::warn!(
                    server = %server.url,
                    error = %reason,
                    backoff = ?self.config.failover_backoff,
                    "directory server unreachable; trying the next one"
                );
            }
            last = Some(DirectoryError::Unavailable {
                server: server.url.clone(),
                reason,
            });
        }
        Err(last.unwrap_or(DirectoryError::Timeout(self.config.timeout)))
    }

    /// Connects to every server once (within `connect_timeout`) and
    /// says in `fedgate_directory_up` which answered, so the gauge is
    /// current on a quiet server too. It changes no failover state: that
    /// is for the connections sign-ins use.
    pub async fn probe(&self) {
        for server in &self.servers {
            let mut settings = LdapConnSettings::new().set_conn_timeout(self.config.connect_timeout);
            if let Some(tls) = &self.tls {
                settings = settings.set_config(Arc::clone(tls)).set_starttls(self.config.starttls);
            }
            let attempt = tokio::time::timeout(
                self.config.connect_timeout,
                LdapConnAsync::with_settings(settings, &server.url),
            )
            .await;
            let up = match attempt {
                Ok(Ok((conn, mut ldap))) => {
                    telemetry::directory_connection();
                    // Bounded, so a server that stops answering after the
                    // connect cannot hold the probe (or shutdown) up.
                    let driver = tokio::spawn(conn.drive());
                    telemetry::directory_operation("unbind");
                    let _ = tokio::time::timeout(self.config.connect_timeout, ldap.unbind()).await;
                    driver.abort();
                    true
                }
                Ok(Err(err)) => {
                    tracing::debug!(server = %server.url, error = %err, "directory probe failed");
                    false
                }
                Err(_) => false,
            };
            telemetry::directory_up(&server.url, up);
        }
    }

    /// Whether a connection to `server` should make way for a new one: a
    /// server listed before it is not backing off (it never failed, or its
    /// back-off is over and it may be back), and [`Self::connect`] tries
    /// servers in order. While that server stays down, this costs one
    /// failed connect per back-off period, as for any new connection.
    fn should_fail_back(&self, server: usize) -> bool {
        let now = Instant::now();
        self.servers[..server].iter().any(|s| !s.backing_off(now))
    }

    fn url(&self, conn: &Conn) -> &str {
        &self.servers[conn.server].url
    }

    fn unavailable(&self, conn: &Conn, reason: String) -> DirectoryError {
        DirectoryError::Unavailable {
            server: self.url(conn).to_owned(),
            reason,
        }
    }

    /// A connection bound as the service account, from the pool. The slot's
    /// lock is held while a replacement connects, so a burst of sign-ins
    /// after an outage opens one connection per slot, not one per sign-in.
    async fn service_conn(&self, deadline: Instant, replace: Option<&Conn>) -> Result<Conn, DirectoryError> {
        let DirectoryBind::Search { dn, .. } = &self.config.bind else {
            unreachable!("service connections exist only with a service account");
        };
        let slot = self.next_service.fetch_add(1, Ordering::Relaxed) % self.service.len();
        let mut guard = self.service[slot].lock().await;
        if let Some(conn) = guard.as_mut() {
            let broken = replace.is_some_and(|r| r.id == conn.id);
            if !broken && !conn.ldap.is_closed() && !self.should_fail_back(conn.server) {
                return Ok(conn.clone());
            }
        }
        *guard = None;
        let mut conn = self.connect(deadline).await?;
        let remaining = Self::remaining(deadline).ok_or(DirectoryError::Timeout(self.config.timeout))?;
        // Invariant: a Search bind always has its password (read in `new`).
        let password = self.service_password.as_ref().map_or("", Secret::expose);
        telemetry::directory_operation("bind");
        let result = conn.ldap.with_timeout(remaining).simple_bind(dn, password).await;
        match result {
            Ok(r) if r.rc == rc::SUCCESS => {
                *guard = Some(conn.clone());
                Ok(conn)
            }
            Ok(r) => {
                let err = DirectoryError::ServiceBind {
                    server: self.url(&conn).to_owned(),
                    dn: dn.clone(),
                    reason: bind_refused(r.rc, &r.text),
                };
                tracing::error!(error = %err, "directory service account refused");
                Err(err)
            }
            Err(err) => Err(self.unavailable(&conn, err.to_string())),
        }
    }

    /// Searches `base_dn` for the one entry matching `filter`.
    async fn search_user(&self, ldap: &mut Ldap, filter: &str, deadline: Instant) -> Result<Found, OpError> {
        self.search_one(ldap, &self.config.base_dn, Scope::Subtree, filter, deadline)
            .await
    }

    /// Searches for the one entry matching `filter` at or under `base`.
    async fn search_one(
        &self,
        ldap: &mut Ldap,
        base: &str,
        scope: Scope,
        filter: &str,
        deadline: Instant,
    ) -> Result<Found, OpError> {
        let remaining = Self::remaining(deadline).ok_or_else(|| OpError::Connection("timed out".into()))?;
        telemetry::directory_operation("search");
        let result = ldap
            .with_timeout(remaining)
            .with_search_options(
                SearchOptions::new()
                    .sizelimit(2)
                    .timelimit(i32::try_from(remaining.as_secs().max(1)).unwrap_or(i32::MAX)),
            )
            .search(base, scope, filter, &self.attributes)
            .await
            .map_err(OpError::from_ldap)?;
        let (entries, result) = (result.0, result.1);
        match result.rc {
            rc::SUCCESS | rc::SIZE_LIMIT_EXCEEDED => {}
            // The base is elsewhere: referrals are not chased (their hosts
            // often do not resolve from here).
            rc::REFERRAL => return Ok(Found::None),
            rc::NO_SUCH_OBJECT if scope == Scope::Base => return Ok(Found::None),
            rc::NO_SUCH_OBJECT => {
                return Err(OpError::Answer(format!(
                "directory.base_dn \"{base}\" does not exist on this server (or the account searching may not see it)"
            )))
            }
            code => {
                return Err(OpError::Answer(format!(
                    "search failed with result code {code}: {}",
                    result.text
                )))
            }
        }
        let mut found: Vec<SearchEntry> = Vec::with_capacity(1);
        for entry in entries.into_iter().filter(|e| !e.is_ref() && !e.is_intermediate()) {
            found.push(construct(entry).ok_or_else(|| OpError::Connection("malformed search entry".into()))?);
        }
        Ok(match found.len() {
            0 if result.rc == rc::SIZE_LIMIT_EXCEEDED => Found::Ambiguous,
            0 => Found::None,
            1 if result.rc == rc::SUCCESS => Found::One(Box::new(found.remove(0))),
            _ => Found::Ambiguous,
        })
    }

    /// Whether the entry at `dn` matches `disabled_filter`.
    async fn is_disabled(&self, ldap: &mut Ldap, dn: &str, deadline: Instant) -> Result<bool, OpError> {
        let Some(filter) = &self.config.disabled_filter else {
            return Ok(false);
        };
        let remaining = Self::remaining(deadline).ok_or_else(|| OpError::Connection("timed out".into()))?;
        let filter = filter.render(Values { upn: "", login: "" });
        telemetry::directory_operation("search");
        let result = ldap
            .with_timeout(remaining)
            .search(dn, Scope::Base, &filter, ["1.1"])
            .await
            .map_err(OpError::from_ldap)?;
        match result.1.rc {
            rc::SUCCESS => Ok(result.0.iter().any(|e| !e.is_ref())),
            // Gone since the search: nothing to say it is disabled; the bind
            // will fail anyway.
            rc::NO_SUCH_OBJECT => Ok(false),
            code => Err(OpError::Answer(format!(
                "search failed with result code {code}: {}",
                result.1.text
            ))),
        }
    }

    async fn disabled_check(&self, dn: &str, deadline: Instant) -> Result<bool, DirectoryError> {
        if self.config.disabled_filter.is_none() {
            return Ok(false);
        }
        self.with_service(deadline, |mut ldap| async move {
            self.is_disabled(&mut ldap, dn, deadline).await
        })
        .await
    }

    /// Runs `op` on a service connection, once more on a fresh connection
    /// if the first one turns out to be broken.
    async fn with_service<T, F, Fut>(&self, deadline: Instant, op: F) -> Result<T, DirectoryError>
    where
        F: Fn(Ldap) -> Fut,
        Fut: Future<Output = Result<T, OpError>>,
    {
        let mut conn = self.service_conn(deadline, None).await?;
        match op(conn.ldap.clone()).await {
            Ok(v) => return Ok(v),
            Err(OpError::Answer(m)) => return Err(self.unavailable(&conn, m)),
            Err(OpError::Connection(m)) => {
                tracing::debug!(server = %self.url(&conn), error = %m, "directory connection broken; reconnecting");
            }
        }
        conn = self.service_conn(deadline, Some(&conn)).await?;
        op(conn.ldap.clone())
            .await
            .map_err(|e| self.unavailable(&conn, e.message()))
    }

    /// Binds as `name` on a bind connection. `Ok(None)` is a refused bind
    /// (with why); the connection goes back to the pool either way unless
    /// it broke.
    async fn bind_as(
        &self,
        name: &str,
        password: &Secret,
        deadline: Instant,
    ) -> Result<(Result<(), BindFailure>, Conn), DirectoryError> {
        let remaining = Self::remaining(deadline).ok_or(DirectoryError::Timeout(self.config.timeout))?;
        let _permit = tokio::time::timeout(remaining, self.binds.acquire())
            .await
            .map_err(|_| DirectoryError::Busy)?
            .map_err(|_| DirectoryError::Busy)?;
        let mut reused = true;
        loop {
            let idle = lock(&self.idle_binds).pop();
            let mut conn = match idle {
                Some(mut conn) => {
                    if conn.ldap.is_closed() {
                        continue;
                    }
                    if self.should_fail_back(conn.server) {
                        // This idle connection goes; the new one may be to
                        // the same server again if the earlier one is
                        // still down.
                        drop(conn);
                        reused = false;
                        self.connect(deadline).await?
                    } else {
                        conn
                    }
                }
                None => {
                    reused = false;
                    self.connect(deadline).await?
                }
            };
            let remaining = Self::remaining(deadline).ok_or(DirectoryError::Timeout(self.config.timeout))?;
            let started = Instant::now();
            telemetry::directory_operation("bind");
            let bound = conn
                .ldap
                .with_timeout(remaining)
                .simple_bind(name, password.expose())
                .await;
            telemetry::directory_bind(self.url(&conn), started.elapsed().as_secs_f64());
            match bound {
                Ok(r) => {
                    let outcome = match r.rc {
                        rc::SUCCESS => Ok(()),
                        rc::INVALID_CREDENTIALS => Err(ad::bind_failure(&r.text)),
                        code => {
                            return Err(
                                self.unavailable(&conn, format!("bind failed with {}", bind_refused(code, &r.text)))
                            )
                        }
                    };
                    return Ok((outcome, conn));
                }
                Err(err) if reused => {
                    // The server may have closed an idle connection: try
                    // once more on a new one.
                    tracing::debug!(server = %self.url(&conn), error = %err, "idle directory connection broken");
                    reused = false;
                    if lock(&self.idle_binds).is_empty() {
                        continue;
                    }
                }
                Err(err) => return Err(self.unavailable(&conn, err.to_string())),
            }
        }
    }

    fn return_bind_conn(&self, conn: Conn) {
        let mut idle = lock(&self.idle_binds);
        if idle.len() < self.config.max_binds {
            idle.push(conn);
        }
    }

    /// Opens a connection of its own, bound as the service account, for a
    /// sync pass: bulk reads must not hold up sign-ins on the pooled ones.
    pub async fn sync_session(&self) -> Result<SyncSession<'_>, DirectoryError> {
        let DirectoryBind::Search { dn, .. } = &self.config.bind else {
            return Err(DirectoryError::Unavailable {
                server: self.config.urls.join(", "),
                reason: "the sync needs a service account (directory.bind_dn)".into(),
            });
        };
        let deadline = Instant::now() + self.config.timeout;
        let mut conn = self.connect(deadline).await?;
        let password = self.service_password.as_ref().map_or("", Secret::expose);
        let server = self.url(&conn).to_owned();
        telemetry::directory_operation("bind");
        match conn
            .ldap
            .with_timeout(self.config.timeout)
            .simple_bind(dn, password)
            .await
        {
            Ok(r) if r.rc == rc::SUCCESS => Ok(SyncSession {
                directory: self,
                ldap: conn.ldap,
                server,
            }),
            Ok(r) => Err(DirectoryError::ServiceBind {
                server,
                dn: dn.clone(),
                reason: bind_refused(r.rc, &r.text),
            }),
            Err(err) => Err(DirectoryError::Unavailable {
                server,
                reason: err.to_string(),
            }),
        }
    }

    /// The attributes read for every user (sign-in and sync alike).
    pub fn user_attributes(&self) -> &[String] {
        &self.attributes
    }

    pub fn config(&self) -> &DirectoryConfig {
        &self.config
    }

    /// Reads the UPN and directory attributes of a found entry; `None` when
    /// it has no usable UPN (a group or computer matched a loose filter).
    pub fn federated_user(&self, entry: &SearchEntry, enabled: bool) -> Option<FederatedUser> {
        let upn = attribute(entry, &self.config.upn_attribute).and_then(|v| Upn::parse(&v).ok())?;
        let anchor = anchor_of(entry, &self.config.anchor_attribute);
        Some(FederatedUser {
            upn,
            enabled,
            attributes: DirectoryAttributes {
                dn: entry.dn.clone(),
                login: attribute(entry, &self.config.login_attribute),
                anchor,
                display_name: attribute(entry, "displayName"),
                mail: attribute(entry, "mail"),
                groups: {
                    let mut groups = all_values(entry, &self.config.groups_attribute);
                    groups.sort_unstable_by_key(|g| g.to_ascii_lowercase());
                    groups
                },
                password_changed: attribute(entry, &self.config.password_changed_attribute),
            },
        })
    }

    fn filter_for(&self, name: &LoginName) -> String {
        match name {
            LoginName::Upn(upn) => self.config.user_filter.render(Values {
                upn: upn.as_str(),
                login: upn.local_part(),
            }),
            LoginName::Login(login) => self.config.login_filter.render(Values { upn: "", login }),
        }
    }

    async fn check_search_mode(
        &self,
        name: &LoginName,
        known: Option<Known<'_>>,
        password: &Secret,
        deadline: Instant,
    ) -> Result<Checked, DirectoryError> {
        // A user fedgate knows is bound by DN straight away; the search
        // runs only when it fails (the entry may have moved) or for users
        // seen for the first time.
        if let Some(known) = known {
            match self.bind_checked(known.dn, password, deadline).await? {
                Ok(()) => return Ok(Checked::Valid { entry: None }),
                Err(Checked::Invalid) => {}
                Err(other) => return Ok(other),
            }
        }
        let filter = self.filter_for(name);
        let filter_ref = filter.as_str();
        let found = self
            .with_service(deadline, |mut ldap| async move {
                self.search_user(&mut ldap, filter_ref, deadline).await
            })
            .await?;
        let entry = match found {
            Found::One(entry) => entry,
            Found::None => return Ok(Checked::Invalid),
            Found::Ambiguous => {
                tracing::warn!(
                    user = %name,
                    filter = %filter,
                    "several directory entries match this user name: refused; make directory.user_filter / login_filter match one entry"
                );
                return Ok(Checked::Invalid);
            }
        };
        if known.is_some_and(|k| k.dn.eq_ignore_ascii_case(&entry.dn)) {
            // Same entry, already bound and refused: the password is wrong.
            return Ok(Checked::Invalid);
        }
        match self.bind_checked(&entry.dn, password, deadline).await? {
            Ok(()) => match self.federated_user(&entry, true) {
                Some(user) => Ok(Checked::Valid { entry: Some(user) }),
                None => {
                    tracing::warn!(
                        dn = %entry.dn,
                        attribute = %self.config.upn_attribute,
                        "directory entry has no usable UPN attribute: refused"
                    );
                    Ok(Checked::Invalid)
                }
            },
            Err(refusal) => Ok(refusal),
        }
    }

    /// Binds as `dn` and, at the same time, checks `disabled_filter` on it:
    /// `Err` holds the refusal (disabled first, whatever the bind said).
    async fn bind_checked(
        &self,
        dn: &str,
        password: &Secret,
        deadline: Instant,
    ) -> Result<Result<(), Checked>, DirectoryError> {
        let (bound, disabled) = tokio::join!(self.bind_as(dn, password, deadline), self.disabled_check(dn, deadline));
        let (outcome, conn) = bound?;
        self.return_bind_conn(conn);
        if disabled? {
            return Ok(Err(Checked::Disabled));
        }
        Ok(outcome.map_err(refused))
    }

    /// No service account: bind as the name the template makes, then read
    /// the user's own entry over the same connection.
    async fn check_direct_mode(
        &self,
        name: &LoginName,
        known: Option<Known<'_>>,
        password: &Secret,
        deadline: Instant,
    ) -> Result<Checked, DirectoryError> {
        let DirectoryBind::Direct { name: template } = &self.config.bind else {
            unreachable!("direct mode without a bind_name");
        };
        let upn = match (name, known) {
            (LoginName::Upn(upn), _) => Some(upn),
            (LoginName::Login(_), Some(k)) => Some(k.upn),
            (LoginName::Login(_), None) => None,
        };
        let upn = match upn {
            Some(upn) => upn.as_str(),
            None if template.uses(super::template::Placeholder::Upn) => {
                // Nothing to bind as: the UPN is not known yet.
                tracing::debug!(user = %name, "direct bind needs a UPN; refused a login name not seen before");
                return Ok(Checked::Invalid);
            }
            None => "",
        };
        let bind_name = template.render(Values {
            upn,
            login: name.login(),
        });
        let (outcome, mut conn) = self.bind_as(&bind_name, password, deadline).await?;
        if let Err(failure) = outcome {
            self.return_bind_conn(conn);
            return Ok(refused(failure));
        }
        // A DN template names the entry itself: read it. Otherwise (a UPN
        // bind on AD) search for it like a service account would.
        let filter = self.filter_for(name);
        let search = if template.is_dn() {
            self.search_one(&mut conn.ldap, &bind_name, Scope::Base, &filter, deadline)
                .await
        } else {
            self.search_user(&mut conn.ldap, &filter, deadline).await
        };
        let looked_up = match search {
            Ok(Found::One(entry)) => match self.is_disabled(&mut conn.ldap, &entry.dn, deadline).await {
                Ok(true) => Ok(Checked::Disabled),
                Ok(false) => Ok(Checked::Valid {
                    entry: known.is_none().then(|| self.federated_user(&entry, true)).flatten(),
                }),
                Err(e) => Err(e),
            },
            // The bind succeeded but the user cannot read their own entry:
            // the bind is what counts.
            Ok(Found::None | Found::Ambiguous) if known.is_some() => Ok(Checked::Valid { entry: None }),
            Ok(Found::None | Found::Ambiguous) => {
                tracing::warn!(
                    user = %name,
                    filter = %filter,
                    "bound, but cannot read exactly one own entry with directory.user_filter: refused"
                );
                Ok(Checked::Invalid)
            }
            Err(e) => Err(e),
        };
        match looked_up {
            Ok(checked) => {
                self.return_bind_conn(conn);
                Ok(checked)
            }
            Err(e) => Err(self.unavailable(&conn, e.message())),
        }
    }
}

/// One sync pass's connection to the directory.
pub struct SyncSession<'d> {
    directory: &'d LdapDirectory,
    ldap: Ldap,
    server: String,
}

impl SyncSession<'_> {
    /// The URL of the server this session reads from.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// Hands every entry matching `filter` under `base_dn` to `each` as it
    /// arrives (so a pass over 100,000 users never holds them all as LDAP
    /// entries), in pages of
    /// `page_size` (RFC 2696: AD refuses unpaged searches past 1000
    /// entries). Referrals are skipped, not chased. Each page must arrive
    /// within `directory.timeout`.
    pub async fn scan(
        &mut self,
        filter: &str,
        attributes: &[String],
        page_size: u32,
        each: impl FnMut(SearchEntry),
    ) -> Result<usize, DirectoryError> {
        let base = self.directory.config.base_dn.clone();
        self.scan_under(&base, filter, attributes, page_size, Vec::new(), each)
            .await
    }

    /// AD: the anchors (`objectGUID`) of user objects deleted at or after
    /// USN `since`, read from the tombstones under the domain root with the
    /// Show Deleted control. Deleted objects move out of `base_dn` (to
    /// `CN=Deleted Objects`), so a search there would not see them.
    pub async fn deleted_anchors(&mut self, since: &str, page_size: u32) -> Result<Vec<String>, DirectoryError> {
        let config = &self.directory.config;
        let Some(root) = domain_root(&config.base_dn) else {
            return Ok(Vec::new());
        };
        let filter = format!(
            "(&(isDeleted=TRUE)(objectClass=user)(uSNChanged>={}))",
            ldap3::ldap_escape(since)
        );
        let anchor = config.anchor_attribute.clone();
        let mut anchors = Vec::new();
        self.scan_under(
            &root,
            &filter,
            std::slice::from_ref(&anchor),
            page_size,
            vec![show_deleted()],
            |e| {
                if let Some(a) = anchor_of(&e, &anchor) {
                    anchors.push(a);
                }
            },
        )
        .await?;
        Ok(anchors)
    }

    /// AD: whether this session's account can read `CN=Deleted Objects`
    /// under the domain root (its own attributes, with the Show Deleted
    /// control). By default only administrators can; an account that
    /// cannot sees no tombstones, and deletions wait for a full pass.
    /// `None` when the base DN has no domain root.
    pub async fn can_read_tombstones(&mut self) -> Result<Option<(bool, String)>, DirectoryError> {
        let Some(root) = domain_root(&self.directory.config.base_dn) else {
            return Ok(None);
        };
        let container = format!("CN=Deleted Objects,{root}");
        let ldap = self.ldap.with_timeout(self.directory.config.timeout);
        ldap.with_controls(vec![show_deleted()]);
        telemetry::directory_operation("search");
        let result = ldap
            .search(&container, Scope::Base, "(objectClass=*)", ["isDeleted"])
            .await
            .map_err(|e| DirectoryError::Unavailable {
                server: self.server.clone(),
                reason: e.to_string(),
            })?;
        let readable = match result.1.rc {
            rc::SUCCESS => result
                .0
                .into_iter()
                .filter(|e| !e.is_ref())
                .filter_map(construct)
                .any(|e| attribute(&e, "isDeleted").is_some()),
            // Not visible to this account, or refused outright.
            rc::NO_SUCH_OBJECT | rc::INSUFFICIENT_ACCESS_RIGHTS => false,
            code => {
                return Err(DirectoryError::Unavailable {
                    server: self.server.clone(),
                    reason: format!("reading {container} failed with result code {code}: {}", result.1.text),
                })
            }
        };
        Ok(Some((readable, container)))
    }

    async fn scan_under(
        &mut self,
        base: &str,
        filter: &str,
        attributes: &[String],
        page_size: u32,
        controls: Vec<ldap3::controls::RawControl>,
        mut each: impl FnMut(SearchEntry),
    ) -> Result<usize, DirectoryError> {
        let config = &self.directory.config;
        let unavailable = |reason: String| DirectoryError::Unavailable {
            server: self.server.clone(),
            reason,
        };
        let page = i32::try_from(page_size).unwrap_or(i32::MAX);
        let ldap = self.ldap.with_timeout(config.timeout);
        if !controls.is_empty() {
            ldap.with_controls(controls);
        }
        telemetry::directory_operation("search");
        let mut stream = ldap
            .streaming_search_with(
                PagedResults::new(page),
                base,
                Scope::Subtree,
                filter,
                attributes.to_vec(),
            )
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        let mut count = 0;
        loop {
            match stream.next().await {
                Ok(Some(entry)) => {
                    if entry.is_ref() || entry.is_intermediate() {
                        continue;
                    }
                    each(construct(entry).ok_or_else(|| unavailable("malformed search entry".into()))?);
                    count += 1;
                }
                Ok(None) => break,
                Err(err) => return Err(unavailable(err.to_string())),
            }
        }
        let result = stream.finish().await;
        match result.rc {
            rc::SUCCESS => Ok(count),
            rc::NO_SUCH_OBJECT => Err(unavailable(format!(
                "the search base \"{base}\" does not exist on this server (check directory.base_dn)"
            ))),
            code => Err(unavailable(format!(
                "search for {filter} failed with result code {code}: {}",
                result.text
            ))),
        }
    }

    /// One attribute of the root DSE (`highestCommittedUSN` on AD).
    pub async fn root_attribute(&mut self, name: &str) -> Result<Option<String>, DirectoryError> {
        telemetry::directory_operation("search");
        let result = self
            .ldap
            .with_timeout(self.directory.config.timeout)
            .search("", Scope::Base, "(objectClass=*)", [name])
            .await
            .and_then(|r| r.success())
            .map_err(|e| DirectoryError::Unavailable {
                server: self.server.clone(),
                reason: e.to_string(),
            })?;
        Ok(result
            .0
            .into_iter()
            .filter(|e| !e.is_ref())
            .find_map(|e| construct(e).and_then(|e| attribute(&e, name))))
    }

    pub async fn close(mut self) {
        // Not sent (and not counted) when a stream of this session has
        // ended the connection already.
        if self.ldap.unbind().await.is_ok() {
            telemetry::directory_operation("unbind");
        }
    }
}

/// A refused bind's result, with what to change when the server wants TLS
/// (AD requires it for simple binds once LDAP signing is enforced).
fn bind_refused(code: u32, text: &str) -> String {
    match code {
        rc::STRONG_AUTH_REQUIRED | rc::CONFIDENTIALITY_REQUIRED => format!(
            "result code {code}: {text} (the server requires a protected connection for password binds: use \
             an ldaps:// URL or directory.starttls = true)"
        ),
        _ => format!("result code {code}: {text}"),
    }
}

/// AD's Show Deleted control: tombstones are returned too.
fn show_deleted() -> ldap3::controls::RawControl {
    ldap3::controls::RawControl {
        ctype: "1.2.840.113556.1.4.417".into(),
        crit: true,
        val: None,
    }
}

/// The `DC=` components of `base_dn` (the domain's root, where AD keeps
/// `CN=Deleted Objects`), or `None` if it has none.
fn domain_root(base_dn: &str) -> Option<String> {
    let root: Vec<&str> = base_dn
        .split(',')
        .map(str::trim)
        .filter(|rdn| rdn.len() > 3 && rdn[..3].eq_ignore_ascii_case("dc="))
        .collect();
    (!root.is_empty()).then(|| root.join(","))
}

/// The entry's anchor. AD's `objectGUID` is 16 raw bytes, which land among
/// the text attributes when they happen to be valid UTF-8: read as bytes
/// wherever they are, never trimmed.
fn anchor_of(entry: &SearchEntry, name: &str) -> Option<String> {
    if name.eq_ignore_ascii_case("objectGUID") {
        let bytes = binary_attribute(entry, name).or_else(|| {
            entry
                .attrs
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .and_then(|(_, v)| v.first())
                .map(|v| v.as_bytes().to_vec())
        })?;
        return Some(ad::guid_string(&bytes).unwrap_or_else(|| bytes.iter().map(|b| format!("{b:02x}")).collect()));
    }
    attribute(entry, name).or_else(|| {
        binary_attribute(entry, name)
            .map(|bytes| ad::guid_string(&bytes).unwrap_or_else(|| bytes.iter().map(|b| format!("{b:02x}")).collect()))
    })
}

fn refused(failure: BindFailure) -> Checked {
    match failure {
        BindFailure::InvalidCredentials | BindFailure::PasswordExpired => Checked::Invalid,
        BindFailure::Disabled => Checked::Disabled,
        BindFailure::LockedOut => Checked::LockedOut,
    }
}

/// ldap3 panics on an entry it cannot decode; a server sending one must
/// not take a worker thread down.
fn construct(entry: ResultEntry) -> Option<SearchEntry> {
    std::panic::catch_unwind(AssertUnwindSafe(|| SearchEntry::construct(entry))).ok()
}

/// An attribute's first value, matching its name case-insensitively
/// (servers answer `entryuuid` to a request for `entryUUID`).
pub fn attribute(entry: &SearchEntry, name: &str) -> Option<String> {
    entry
        .attrs
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .and_then(|(_, v)| v.first())
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

fn all_values(entry: &SearchEntry, name: &str) -> Vec<String> {
    entry
        .attrs
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.clone())
        .unwrap_or_default()
}

fn binary_attribute(entry: &SearchEntry, name: &str) -> Option<Vec<u8>> {
    entry
        .bin_attrs
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .and_then(|(_, v)| v.first())
        .cloned()
}

impl Directory for LdapDirectory {
    fn check_password<'a>(
        &'a self,
        name: &'a LoginName,
        known: Option<Known<'a>>,
        password: &'a Secret,
    ) -> BoxFuture<'a, Result<Checked, DirectoryError>> {
        Box::pin(async move {
            // An empty password is an unauthenticated bind that servers
            // accept; nothing of the app-password shape (check letters
            // right or wrong) is a directory password, and a failed bind
            // would count toward the account's lockout.
            if password.expose().is_empty() || app_password::is_app_password_shaped(password.expose()) {
                return Ok(Checked::Invalid);
            }
            let deadline = Instant::now() + self.config.timeout;
            let check = async {
                match self.config.bind {
                    DirectoryBind::Search { .. } => self.check_search_mode(name, known, password, deadline).await,
                    DirectoryBind::Direct { .. } => self.check_direct_mode(name, known, password, deadline).await,
                }
            };
            let result = match tokio::time::timeout(self.config.timeout, check).await {
                Ok(result) => result,
                Err(_) => Err(DirectoryError::Timeout(self.config.timeout)),
            };
            if let Err(err) = &result {
                telemetry::directory_error(err);
            }
            result
        })
    }

    fn domain(&self) -> Option<&str> {
        self.config.domain.as_deref()
    }

    fn allow_non_ascii_logins(&self) -> bool {
        self.config.allow_non_ascii_logins
    }
}
