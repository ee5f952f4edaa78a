//! Wires a validated [`Config`] into a running server: opens (on the first
//! start, creates) the store, binds every listener (failing fast with the
//! address and key at fault), starts the admin endpoint, reports readiness
//! (listeners bound, not draining, store healthy: one
//! [`StoreHealth`] shared with the sign-in path), and on shutdown drains
//! within the grace period.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;

use std::time::{Duration, Instant};

use crate::admin::Admin;
use crate::audit::AuditSink;
use crate::auth::Authenticator;
use crate::config::Config;
use crate::directory::{Directory, LdapDirectory};
use crate::jobs::Job;
use crate::model::{Clock, SystemClock};
use crate::portal::Portal;
use crate::proxy::tls::CertSlot;
use crate::proxy::workers::{self, Bound, RouteTables, Shared, Workers};
use crate::proxy::{tls, Proxy};
use crate::reload::{Registry, ReloadError};
use crate::shutdown::Shutdown;
use crate::store::{OpenMode, StoreHealth};
use crate::sync::Syncer;
use std::path::Path;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::Semaphore;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{key}: cannot listen on {addr}: {source}")]
    Bind {
        key: String,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    Routes(#[from] crate::proxy::BuildError),
    #[error(transparent)]
    Workers(#[from] workers::WorkerError),
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("store.url: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("store.key_file: {0}")]
    Key(#[from] crate::server_key::KeyError),
    #[error("{0}")]
    Directory(#[from] crate::directory::client::SetupError),
    #[error("{0}")]
    Portal(#[from] crate::portal::PortalError),
    #[error(transparent)]
    InUse(#[from] crate::instance::InUse),
    #[error("{0}")]
    Tokens(#[from] crate::admin::tokens::TokenError),
    #[error("smtp: {0}")]
    Notify(#[from] crate::notify::NotifyError),
    #[error("{0}")]
    MailAuth(#[from] crate::mail_auth::MailAuthError),
}

/// Serves SIGHUP until shutdown: each one reloads (when there is a file to
/// read) on a blocking thread, one at a time.
fn spawn_reloads(
    registry: Registry,
    from_file: bool,
    mut hangup: Signal,
    shutdown: Shutdown,
) -> tokio::task::JoinHandle<()> {
    let registry = Arc::new(registry);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                got = hangup.recv() => if got.is_none() { return },
                _ = shutdown.wait() => return,
            }
            if !from_file {
                tracing::warn!("SIGHUP ignored: this server was not started from a config file");
                continue;
            }
            tracing::info!(signal = "SIGHUP", "reloading the configuration");
            let registry = Arc::clone(&registry);
            // Reading files and building route tables is blocking work.
            let _ = tokio::task::spawn_blocking(move || registry.reload()).await;
        }
    })
}

/// How often every directory server is connected to for
/// `fedgate_directory_up`, traffic or not.
const DIRECTORY_PROBE: Duration = Duration::from_secs(30);

impl ServeError {
    /// A file the configuration names that cannot be used as it is (a
    /// token file others can read, a bad notice template, a forward-auth
    /// secret file): exit 2, as for
    /// any configuration error, not 1.
    pub fn is_configuration(&self) -> bool {
        matches!(self, ServeError::Tokens(_) | ServeError::MailAuth(_))
            || matches!(self, ServeError::Notify(err) if err.is_input())
            || matches!(self, ServeError::Routes(crate::proxy::BuildError::CallerSecret(_)))
    }
}

fn bind(key: String, addr: SocketAddr, tls: Option<TlsAcceptor>, workers: usize) -> Result<Bound, ServeError> {
    workers::bind(key.clone(), addr, tls, workers).map_err(|source| ServeError::Bind { key, addr, source })
}

/// Every address `serve` listens on, with the key it comes from.
fn config_addresses(config: &Config) -> Vec<(String, SocketAddr)> {
    let mut all = Vec::new();
    for (i, addr) in config.server.listen.iter().enumerate() {
        all.push((format!("server.listen[{i}]"), *addr));
    }
    for (i, addr) in config.server.listen_plain.iter().enumerate() {
        all.push((format!("server.listen_plain[{i}]"), *addr));
    }
    if let Some(admin) = &config.admin {
        all.push(("admin.listen".to_owned(), admin.listen));
    }
    all
}

/// Runs until `shutdown` is triggered (by a signal or by the caller), then
/// drains in-flight requests for at most `server.shutdown_grace`. With no
/// config file to read again, SIGHUP is logged and ignored.
pub async fn serve(config: Config, shutdown: Shutdown) -> Result<(), ServeError> {
    serve_inner(config, None, shutdown).await
}

/// [`serve`] for a configuration read from `path`: SIGHUP reads it again
/// and applies what can change while running (see [`crate::reload`]).
pub async fn serve_file(config: Config, path: &Path, shutdown: Shutdown) -> Result<(), ServeError> {
    serve_inner(config, Some(path), shutdown).await
}

async fn serve_inner(config: Config, path: Option<&Path>, shutdown: Shutdown) -> Result<(), ServeError> {
    // First of all: SIGHUP's default action ends the process, and one sent
    // during start-up must not.
    let hangup = signal(SignalKind::hangup()).map_err(ServeError::Signals)?;
    // Before anything is opened: a second fedgate on these addresses stops
    // here, whatever store it names.
    for (key, addr) in config_addresses(&config) {
        crate::instance::ensure_free(&key, addr)?;
    }
    let metrics = crate::telemetry::install(&config);

    let admin_tls = config.admin.as_ref().is_some_and(|a| a.tls);
    let certs = if config.server.listen.is_empty() && !admin_tls {
        None
    } else {
        let (cert, key) = (&config.server.tls_cert, &config.server.tls_key);
        if tls::ensure_certificate(cert, key)? {
            tracing::warn!(
                cert = %cert.display(),
                key = %key.display(),
                "no TLS certificate configured: generated a self-signed one for localhost; replace it with a real certificate for production"
            );
        }
        Some(CertSlot::new(tls::load_certified_key(cert, key)?))
    };
    let tls_acceptor = match &certs {
        Some(certs) if !config.server.listen.is_empty() => Some(TlsAcceptor::from(tls::server_config(certs)?)),
        _ => None,
    };
    let admin_acceptor = match (&certs, &config.admin) {
        (Some(certs), Some(admin)) if admin.tls => Some(TlsAcceptor::from(tls::admin_server_config(
            certs,
            admin.client_ca_file.as_deref(),
        )?)),
        _ => None,
    };

    // A bad token file stops start-up before anything listens.
    let tokens = match config.admin.as_ref().and_then(|a| a.token_file.as_ref()) {
        None => None,
        Some(path) => {
            let tokens = Arc::new(crate::admin::tokens::TokenSet::load(path)?);
            tracing::info!(file = %path.display(), tokens = tokens.current().len(), "admin API enabled");
            Some(tokens)
        }
    };
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    // The first start on a new machine creates the store; every admin
    // command needs one that exists.
    let store = crate::store::open_with(
        &config.store.url,
        &config.store.access,
        Arc::clone(&clock),
        OpenMode::CreateIfMissing,
    )
    .await?;
    // Just opened, so up; the sign-in path's reads keep it current.
    metrics::gauge!("fedgate_store_up").set(1.0);
    let key = crate::server_key::load_or_create(&config.store.key_file)?;
    // The audit writer outlives the drain: requests finishing during the
    // grace period still produce records.
    let audit_stop = Shutdown::new();
    let (audit, audit_writer) = AuditSink::start(store.clone(), audit_stop.clone());
    let ldap = match &config.directory {
        None => None,
        Some(d) => Some(Arc::new(LdapDirectory::new(d.clone())?)),
    };
    let directory = match (&config.directory, &ldap) {
        (Some(d), Some(ldap)) => {
            let client: Arc<dyn Directory> = Arc::clone(ldap) as Arc<dyn Directory>;
            if !d.starttls && d.urls.iter().any(|u| u.starts_with("ldap://")) {
                tracing::warn!(
                    urls = ?d.urls,
                    "directory.urls has ldap:// without starttls: passwords cross the network unencrypted; use ldaps:// or starttls = true"
                );
            }
            tracing::info!(urls = ?d.urls, base_dn = %d.base_dn, "directory configured");
            Some((client, d.cache_ttl))
        }
        _ => None,
    };
    let auth = Authenticator::new(
        Arc::clone(&store),
        key,
        audit,
        &config.auth,
        directory,
        Arc::clone(&clock),
    )
    .await?;
    let health = Arc::new(StoreHealth::new(
        config.store.max_staleness,
        Instant::now(),
        clock.now_ms(),
    ));
    let auth = Arc::new(auth.with_store_health(Arc::clone(&health)));
    auth.set_policies(Arc::clone(&config.policies));
    let mut jobs = auth.start_jobs(&shutdown);
    let portal = Portal::new(&config, Arc::clone(&auth), Arc::clone(&store), Arc::new(SystemClock))?.map(Arc::new);
    if let Some(portal) = &portal {
        let portal = Arc::clone(portal);
        jobs.push(Job::every(
            "portal.prune",
            Duration::from_secs(300),
            shutdown.clone(),
            move || {
                let portal = Arc::clone(&portal);
                async move { portal.prune().await }
            },
        ));
        tracing::info!(path = %config.portal.as_ref().map_or("", |p| p.path.as_str()), "portal enabled");
    }
    if let Some(ldap) = &ldap {
        let ldap = Arc::clone(ldap);
        jobs.push(Job::now_and_every(
            "directory.probe",
            DIRECTORY_PROBE,
            shutdown.clone(),
            move || {
                let ldap = Arc::clone(&ldap);
                async move { ldap.probe().await }
            },
        ));
    }
    let mut sync_lead = None;
    if let (Some(sync), Some(ldap)) = (&config.sync, &ldap) {
        let syncer = Arc::new(Syncer::new(
            Arc::clone(ldap),
            Arc::clone(&store),
            sync.clone(),
            Arc::new(SystemClock),
        ));
        tracing::info!(interval = ?sync.interval, full_every = ?sync.full_every, "directory sync scheduled");
        jobs.extend(syncer.start_jobs(&shutdown));
        sync_lead = Some(syncer);
    }
    if let Some(smtp) = config.smtp.as_ref().filter(|s| s.auto) {
        jobs.push(crate::notify::start_job(
            Arc::new(crate::notify::Notifier::new(
                store.clone(),
                Arc::new(crate::notify::smtp::SmtpMailer::new(smtp)?),
                crate::notify::Template::load(&smtp.template).map_err(crate::notify::NotifyError::from)?,
                crate::notify::NoticeSettings {
                    portal_url: smtp.portal_url.clone(),
                    organization: smtp.organization.clone(),
                },
                Arc::clone(&clock),
            )),
            smtp.interval,
            shutdown.clone(),
        ));
        tracing::info!(interval = ?smtp.interval, server = %smtp.host, "enrolment notices scheduled");
    }
    if let Some(handle) = metrics.clone() {
        // Histograms keep their samples until upkeep folds them in.
        jobs.push(Job::every(
            "metrics.upkeep",
            Duration::from_secs(5),
            shutdown.clone(),
            move || {
                let handle = handle.clone();
                async move { handle.run_upkeep() }
            },
        ));
    }
    tracing::info!(store = %crate::store::redact_url(&config.store.url), "store opened");
    let mail = match &config.mail {
        None => None,
        Some(m) => {
            let mail = crate::mail_auth::MailAuth::new(m, Arc::clone(&auth))?;
            for line in crate::mail_auth::MailAuth::describe(m) {
                tracing::info!(path = %m.path, caller_secret = m.secret_file.is_some(), "mail auth_http: {line}");
            }
            Some(Arc::new(mail))
        }
    };

    // Build the routes once here so that a bad route (an unreadable
    // upstream_ca_file) stops start-up with its message; each worker then
    // builds its own copy with its own upstream pools.
    Proxy::new(&config, TaskTracker::new(), None, None)?;
    let workers = config.server.workers;
    let mut bound = Vec::new();
    for (i, addr) in config.server.listen.iter().enumerate() {
        bound.push(bind(
            format!("server.listen[{i}]"),
            *addr,
            tls_acceptor.clone(),
            workers,
        )?);
    }
    for (i, addr) in config.server.listen_plain.iter().enumerate() {
        bound.push(bind(format!("server.listen_plain[{i}]"), *addr, None, workers)?);
    }
    for b in &bound {
        crate::instance::ensure_alone(&b.key, b.local, &b.raw_fds())?;
    }
    for b in &bound {
        let kind = if b.tls.is_some() { "tls" } else { "plain" };
        tracing::info!(addr = %b.local, kind, workers, "listening");
    }
    let config = Arc::new(config);
    let shared = Arc::new(Shared {
        config: Arc::clone(&config),
        auth: Some(Arc::clone(&auth)),
        portal: portal.clone(),
        mail,
        connections: Arc::new(Semaphore::new(config.server.limits.max_connections)),
        shutdown: shutdown.clone(),
    });
    let worker_threads = Workers::start(shared, bound, workers)?;

    let ready = Arc::new(AtomicBool::new(false));
    let admin_task = match &config.admin {
        None => None,
        Some(admin) => {
            let listener = TcpListener::bind(admin.listen)
                .await
                .map_err(|source| ServeError::Bind {
                    key: "admin.listen".into(),
                    addr: admin.listen,
                    source,
                })?;
            let local = listener.local_addr().unwrap_or(admin.listen);
            tracing::info!(
                addr = %local,
                kind = "admin",
                tls = admin.tls,
                client_certificates = admin.client_ca_file.is_some(),
                "listening"
            );
            let api = tokens.clone().map(|tokens| {
                Arc::new(crate::admin::api::Api {
                    manager: crate::manage::Manager::new(
                        Arc::clone(&store),
                        config.store.key_file.clone(),
                        Arc::clone(&clock),
                    )
                    .with_routes(crate::manage::credential_routes(&config)),
                    tokens,
                    syncer: sync_lead.clone(),
                })
            });
            let handler = Admin {
                ready: Arc::clone(&ready),
                store: Some(Arc::clone(&health)),
                clock: Arc::clone(&clock),
                metrics,
                api_needs_client_cert: admin.client_ca_file.is_some(),
                api,
            };
            Some(tokio::spawn(handler.serve(listener, admin_acceptor, shutdown.clone())))
        }
    };
    let mut registry = Registry::new(path.unwrap_or(Path::new("")), Arc::clone(&config), Arc::clone(&clock));
    if let Some(certs) = &certs {
        registry.register(Arc::new(tls::CertReload(Arc::clone(certs))));
    }
    registry.register(Arc::new(crate::auth::PolicyReload(Arc::clone(&auth))));
    registry.register(Arc::new(RouteTables {
        routes: worker_threads.routes.clone(),
        auth: Some(Arc::clone(&auth)),
        portal: portal.clone(),
    }));
    // Parts that check and apply in one call register last. The admin
    // API's bearer tokens: the file named by the new `[admin] token_file`
    // (the API itself is turned on or off only by a restart).
    if let Some(tokens) = tokens {
        registry.register_one_step("admin tokens", move |config| {
            // Without a token file in the new config the running tokens
            // stay: turning the API off is one of the restart keys.
            match config.admin.as_ref().and_then(|a| a.token_file.as_deref()) {
                None => Ok("kept".to_owned()),
                Some(path) => {
                    let n = tokens.reload(path).map_err(|e| ReloadError::part("admin tokens", e))?;
                    Ok(format!("{n} tokens"))
                }
            }
        });
    }
    registry.start_metrics();
    let reloads = spawn_reloads(registry, path.is_some(), hangup, shutdown.clone());
    shutdown.trigger_on_signals().map_err(ServeError::Signals)?;
    ready.store(true, Ordering::Release);
    tracing::info!(routes = config.routes.len(), "fedgate ready");

    shutdown.wait().await;
    ready.store(false, Ordering::Release);
    tracing::info!(grace = ?config.server.shutdown_grace, "draining");
    worker_threads.join().await;
    let _ = reloads.await;
    if let Some(task) = admin_task {
        let _ = task.await;
    }
    for job in jobs {
        job.join().await;
    }
    // Another node takes the lead at its next try, not when it runs out.
    if let Some(syncer) = sync_lead {
        syncer.give_up_lead().await;
    }
    auth.flush().await;
    audit_stop.trigger();
    if let Err(err) = audit_writer.await {
        tracing::error!(error = %err, "audit writer ended abnormally");
    }
    store.close().await;
    tracing::info!("fedgate stopped");
    Ok(())
}
