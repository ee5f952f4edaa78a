//! Worker threads: one single-threaded runtime per core, each accepting on
//! its own `SO_REUSEPORT` socket of every listener, with its own upstream
//! connection pools.
//!
//! A proxied request touches several tasks (client connection, upstream
//! connection, response body); keeping them on one thread turns every
//! hand-off into a queue push instead of a cross-thread wake-up, which is
//! most of what a request costs on a small machine. What is shared between
//! workers (the authenticator, its caches, the hashing pool, the audit
//! queue) is lock-free or sharded.
//!
//! Each worker's routes sit in a [`WorkerRoutes`] slot that a reload
//! replaces whole: a request takes the table current when it starts and
//! finishes on it; the old table (and its upstream pools) goes when the
//! last request holding it ends.
//!
//! Not here: what a connection or a request does ([`super::listener`],
//! [`super::Proxy`]).

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;

use super::listener::Server;
use super::Proxy;
use crate::auth::Authenticator;
use crate::config::Config;
use crate::reload::{Commit, CommitFn, ReloadError, Reloadable};
use crate::shutdown::Shutdown;

/// One configured listener, bound once per worker.
pub struct Bound {
    /// The config key it comes from, for messages.
    pub key: String,
    pub local: SocketAddr,
    pub tls: Option<TlsAcceptor>,
    sockets: Vec<std::net::TcpListener>,
}

fn reuseport_socket(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// Binds `addr` once per worker. Port 0 is resolved by the first socket and
/// the others join that port.
impl Bound {
    /// The descriptors of its sockets, for [`crate::instance::ensure_alone`].
    pub fn raw_fds(&self) -> Vec<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        self.sockets.iter().map(|s| s.as_raw_fd()).collect()
    }
}

pub fn bind(key: String, addr: SocketAddr, tls: Option<TlsAcceptor>, workers: usize) -> std::io::Result<Bound> {
    let first = reuseport_socket(addr)?;
    let local = first.local_addr()?;
    let mut sockets = vec![first];
    for _ in 1..workers {
        sockets.push(reuseport_socket(local)?);
    }
    Ok(Bound {
        key,
        local,
        tls,
        sockets,
    })
}

pub struct Workers {
    threads: Vec<JoinHandle<()>>,
    /// One per worker, for reloads.
    pub routes: Vec<Arc<WorkerRoutes>>,
}

/// One worker's route table and upstream pools, and the tracker of its
/// upgraded (WebSocket) connections, which outlives any one table.
pub struct WorkerRoutes {
    tunnels: TaskTracker,
    mail: Option<Arc<crate::mail_auth::MailAuth>>,
    current: RwLock<Arc<Proxy>>,
}

impl WorkerRoutes {
    fn new(config: &Config, shared: &Shared) -> Result<WorkerRoutes, super::BuildError> {
        let tunnels = TaskTracker::new();
        let proxy = Proxy::new(config, tunnels.clone(), shared.auth.clone(), shared.portal.clone())?
            .with_mail(shared.mail.clone());
        Ok(WorkerRoutes {
            tunnels,
            mail: shared.mail.clone(),
            current: RwLock::new(Arc::new(proxy)),
        })
    }

    /// The table new requests use.
    pub fn current(&self) -> Arc<Proxy> {
        // A poisoned lock still holds a whole table.
        Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Builds a table for `config` for this worker, without using it yet.
    pub fn build(
        &self,
        config: &Config,
        auth: Option<Arc<Authenticator>>,
        portal: Option<Arc<crate::portal::Portal>>,
    ) -> Result<Proxy, super::BuildError> {
        Ok(Proxy::new(config, self.tunnels.clone(), auth, portal)?.with_mail(self.mail.clone()))
    }

    /// Makes `next` the table of every request that starts from now on.
    pub fn replace(&self, next: Proxy) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(next);
    }
}

/// What every worker shares.
pub struct Shared {
    pub config: Arc<Config>,
    pub auth: Option<Arc<Authenticator>>,
    pub portal: Option<Arc<crate::portal::Portal>>,
    /// The mail `auth_http` endpoint, built once (its `[mail_auth]` keys
    /// need a restart).
    pub mail: Option<Arc<crate::mail_auth::MailAuth>>,
    pub connections: Arc<Semaphore>,
    pub shutdown: Shutdown,
}

impl Workers {
    /// Starts one thread per socket of each listener. Each builds its own
    /// [`Proxy`] (upstream pools belong to the thread that drives them) and
    /// serves until shutdown, then drains its connections for at most
    /// `server.shutdown_grace`.
    pub fn start(shared: Arc<Shared>, listeners: Vec<Bound>, workers: usize) -> Result<Workers, WorkerError> {
        let mut routes = Vec::with_capacity(workers);
        for _ in 0..workers {
            routes.push(Arc::new(WorkerRoutes::new(&shared.config, &shared)?));
        }
        let mut per_worker: Vec<Vec<(std::net::TcpListener, Option<TlsAcceptor>, String)>> =
            (0..workers).map(|_| Vec::new()).collect();
        for bound in listeners {
            for (i, socket) in bound.sockets.into_iter().enumerate() {
                per_worker[i].push((socket, bound.tls.clone(), bound.key.clone()));
            }
        }
        let mut threads = Vec::with_capacity(workers);
        for (i, sockets) in per_worker.into_iter().enumerate() {
            let shared = Arc::clone(&shared);
            let mine = Arc::clone(&routes[i]);
            let handle = std::thread::Builder::new()
                .name(format!("fedgate-worker-{i}"))
                .spawn(move || run_worker(shared, mine, sockets))
                .map_err(WorkerError::Threads)?;
            threads.push(handle);
        }
        Ok(Workers { threads, routes })
    }

    /// Waits for every worker to finish draining (after shutdown).
    pub async fn join(self) {
        for handle in self.threads {
            let joined = tokio::task::spawn_blocking(move || handle.join()).await;
            if !matches!(joined, Ok(Ok(()))) {
                tracing::error!("a worker thread ended abnormally");
            }
        }
    }
}

/// Every worker's route table, as one reloadable part: a reload builds a
/// new table per worker (checking every route: upstream URLs, CA files)
/// before any worker gets its new one.
pub struct RouteTables {
    pub routes: Vec<Arc<WorkerRoutes>>,
    pub auth: Option<Arc<Authenticator>>,
    pub portal: Option<Arc<crate::portal::Portal>>,
}

impl Reloadable for RouteTables {
    fn name(&self) -> &'static str {
        "routes"
    }

    fn prepare(&self, new: &Config) -> Result<Box<dyn Commit>, ReloadError> {
        let mut tables = Vec::with_capacity(self.routes.len());
        for worker in &self.routes {
            let table = worker
                .build(new, self.auth.clone(), self.portal.clone())
                .map_err(|err| ReloadError::part("routes", err))?;
            tables.push((Arc::clone(worker), table));
        }
        Ok(Box::new(CommitFn(move || {
            for (worker, table) in tables {
                worker.replace(table);
            }
        })))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("cannot start worker threads: {0}")]
    Threads(std::io::Error),
    #[error(transparent)]
    Routes(#[from] super::BuildError),
}

fn run_worker(
    shared: Arc<Shared>,
    routes: Arc<WorkerRoutes>,
    sockets: Vec<(std::net::TcpListener, Option<TlsAcceptor>, String)>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(err) => {
            tracing::error!(error = %err, "cannot start a worker runtime; shutting down");
            shared.shutdown.trigger();
            return;
        }
    };
    crate::logging::buffer_this_thread();
    runtime.block_on(async move {
        let flusher = tokio::spawn(async {
            let mut tick = tokio::time::interval(std::time::Duration::from_millis(100));
            loop {
                tick.tick().await;
                crate::logging::flush_this_thread();
            }
        });
        let tracker = routes.tunnels.clone();
        let server = Server::new(
            routes,
            shared.config.server.limits,
            Arc::clone(&shared.connections),
            tracker.clone(),
            shared.shutdown.clone(),
        );
        let mut loops = Vec::new();
        for (socket, tls, key) in sockets {
            match tokio::net::TcpListener::from_std(socket) {
                Ok(listener) => loops.push(tokio::spawn(server.clone().accept_loop(listener, tls))),
                Err(err) => {
                    tracing::error!(%key, error = %err, "cannot use the listening socket; shutting down");
                    shared.shutdown.trigger();
                }
            }
        }
        shared.shutdown.wait().await;
        for l in loops {
            let _ = l.await;
        }
        tracker.close();
        if tokio::time::timeout(shared.config.server.shutdown_grace, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                open_connections = tracker.len(),
                "server.shutdown_grace elapsed: closing the remaining connections"
            );
        }
        flusher.abort();
    });
    drop(runtime);
    crate::logging::flush_this_thread();
}
