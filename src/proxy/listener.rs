//! Listeners and connections: accept, TLS handshake, HTTP/1.1 and HTTP/2,
//! and the connection-level protections.
//!
//! hyper's own header-read timeout does not cover protocol detection and
//! doubles as the keep-alive idle timeout, so each connection has a watchdog
//! of its own with two clocks:
//! - `header_read_timeout`: a new connection (HTTP/1.1 or HTTP/2) must
//!   deliver a complete request head within it, and so must a kept-alive
//!   HTTP/1.1 connection once the first byte of its next request has
//!   arrived (slowloris);
//! - `idle_timeout`: a connection with no request in flight is closed after
//!   it. A request in flight (an ActiveSync Ping held for an hour) is never
//!   cut by either clock.
//!
//! This module does not know what a request means: it hands each one to the
//! [`Proxy`](super::Proxy) current in its worker's [`WorkerRoutes`].

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;

use super::workers::WorkerRoutes;
use crate::config::ListenerLimits;
use crate::shutdown::Shutdown;

/// What a request knows about the connection it came on.
#[derive(Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub tls: bool,
    state: Arc<ConnState>,
}

impl ConnInfo {
    /// Marks a request as in flight until the returned guard is dropped.
    pub fn begin_request(&self) -> InFlight {
        let state = &self.state;
        state.in_flight.fetch_add(1, Ordering::AcqRel);
        state.head_started_ms.store(0, Ordering::Release);
        state.requests.fetch_add(1, Ordering::Relaxed);
        InFlight {
            state: Arc::clone(&self.state),
        }
    }
}

/// Keeps its connection busy (immune to the idle clock) while alive.
#[derive(Debug)]
pub struct InFlight {
    state: Arc<ConnState>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let now = self.state.elapsed_ms();
        if self.state.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.state.idle_since_ms.store(now, Ordering::Release);
        }
    }
}

/// Shared between a connection's IO wrapper, its requests and its watchdog.
/// Times are milliseconds since the connection was accepted.
#[derive(Debug)]
struct ConnState {
    accepted: Instant,
    in_flight: AtomicUsize,
    requests: AtomicU64,
    idle_since_ms: AtomicU64,
    /// 0 when no request head is being read, else its start time + 1.
    head_started_ms: AtomicU64,
    /// HTTP/2 connections carry control frames while idle; once one has
    /// delivered a request, only the idle clock applies to it.
    http2: AtomicBool,
    first_read_seen: AtomicBool,
}

impl ConnState {
    fn new(http2: bool) -> Self {
        ConnState {
            accepted: Instant::now(),
            in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            idle_since_ms: AtomicU64::new(0),
            head_started_ms: AtomicU64::new(0),
            http2: AtomicBool::new(http2),
            first_read_seen: AtomicBool::new(false),
        }
    }

    fn elapsed_ms(&self) -> u64 {
        self.accepted.elapsed().as_millis() as u64
    }

    fn on_bytes_read(&self, first_bytes: &[u8]) {
        if !self.first_read_seen.swap(true, Ordering::AcqRel) && first_bytes.starts_with(b"PRI ") {
            self.http2.store(true, Ordering::Release);
        }
        if self.in_flight.load(Ordering::Acquire) == 0 && self.head_started_ms.load(Ordering::Acquire) == 0 {
            self.head_started_ms.store(self.elapsed_ms() + 1, Ordering::Release);
        }
    }

    /// When the watchdog must look again, or why the connection must close.
    fn check(&self, limits: &ListenerLimits) -> Result<Duration, Expiry> {
        let now = self.elapsed_ms();
        let header = limits.header_read_timeout.as_millis() as u64;
        let idle = limits.idle_timeout.as_millis() as u64;
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return Ok(limits.idle_timeout);
        }
        let http2 = self.http2.load(Ordering::Acquire);
        let head_started = self.head_started_ms.load(Ordering::Acquire);
        let (deadline, expiry) = if head_started > 0 && !http2 {
            (head_started - 1 + header, Expiry::HeaderTimeout)
        } else if self.requests.load(Ordering::Acquire) == 0 {
            // HTTP/2 too: a connection that sent the preface (and perhaps
            // settings and pings) but no request within the limit is a
            // slowloris all the same.
            (header, Expiry::HeaderTimeout)
        } else {
            (self.idle_since_ms.load(Ordering::Acquire) + idle, Expiry::Idle)
        };
        if now >= deadline {
            Err(expiry)
        } else {
            Ok(Duration::from_millis(deadline - now))
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expiry {
    HeaderTimeout,
    Idle,
}

/// Resolves when the connection has broken one of the limits.
///
/// Requests start and end without waking the watchdog (that would cost every
/// request a task wake-up); instead it looks again at least four times per
/// shortest limit, so a limit is enforced within a quarter of it.
async fn watchdog(state: Arc<ConnState>, limits: ListenerLimits) -> Expiry {
    let recheck = limits.header_read_timeout.min(limits.idle_timeout) / 4;
    loop {
        match state.check(&limits) {
            Ok(wait) => tokio::time::sleep(wait.min(recheck)).await,
            Err(expiry) => return expiry,
        }
    }
}

pin_project_lite::pin_project! {
    /// The client socket, reporting reads to the connection's watchdog.
    struct Watched<IO> {
        #[pin]
        io: IO,
        state: Arc<ConnState>,
    }
}

impl<IO: AsyncRead> AsyncRead for Watched<IO> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let polled = this.io.poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let fresh = &buf.filled()[before..];
            if !fresh.is_empty() {
                this.state.on_bytes_read(fresh);
            }
        }
        polled
    }
}

impl<IO: AsyncWrite> AsyncWrite for Watched<IO> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.project().io.poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().io.poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Everything the accept loops share.
#[derive(Clone)]
pub struct Server {
    /// Read per request: a reload changes what the next request uses.
    pub routes: Arc<WorkerRoutes>,
    pub limits: ListenerLimits,
    pub connections: Arc<Semaphore>,
    pub tracker: TaskTracker,
    pub shutdown: Shutdown,
    builder: Arc<auto::Builder<TokioExecutor>>,
}

impl Server {
    /// `connections` bounds open connections across all listeners and workers.
    pub fn new(
        routes: Arc<WorkerRoutes>,
        limits: ListenerLimits,
        connections: Arc<Semaphore>,
        tracker: TaskTracker,
        shutdown: Shutdown,
    ) -> Self {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(None)
            .max_buf_size(limits.max_header_bytes.max(8192))
            .keep_alive(true);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
            .max_concurrent_streams(256);
        Server {
            routes,
            limits,
            connections,
            tracker,
            shutdown,
            builder: Arc::new(builder),
        }
    }

    /// Accepts until shutdown. `tls` is `None` for a plain listener.
    pub async fn accept_loop(self, listener: TcpListener, tls: Option<TlsAcceptor>) {
        let local = match listener.local_addr() {
            Ok(addr) => addr,
            Err(err) => {
                tracing::error!(error = %err, "listener has no local address");
                return;
            }
        };
        loop {
            let (stream, peer) = tokio::select! {
                biased;
                _ = self.shutdown.wait() => return,
                accepted = listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(err) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(listener = %local, error = %err, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            if self.shutdown.is_triggered() {
                // Accepted in the same instant shutdown began: not served.
                return;
            }
            // At the limit, this connection waits (unserved) for a slot and
            // the loop accepts nothing more meanwhile: further clients stay
            // in the kernel's backlog. The slot is taken after accepting so
            // an idle worker never holds one that a busy worker needs.
            let permit = match Arc::clone(&self.connections).try_acquire_owned() {
                Ok(p) => p,
                Err(_) => {
                    metrics::counter!("fedgate_connections_at_limit_total").increment(1);
                    tracing::debug!(listener = %local, %peer, "server.max_connections reached: waiting for a free slot");
                    tokio::select! {
                        permit = Arc::clone(&self.connections).acquire_owned() => match permit {
                            Ok(p) => p,
                            Err(_) => return,
                        },
                        _ = self.shutdown.wait() => return,
                    }
                }
            };
            let _ = stream.set_nodelay(true);
            let server = self.clone();
            let tls = tls.clone();
            self.tracker.spawn(async move {
                server.serve_connection(stream, peer, local, tls).await;
                drop(permit);
            });
        }
    }

    async fn serve_connection(self, stream: TcpStream, peer: SocketAddr, local: SocketAddr, tls: Option<TlsAcceptor>) {
        metrics::gauge!("fedgate_connections_open").increment(1.0);
        match tls {
            None => {
                let state = Arc::new(ConnState::new(false));
                self.serve_http(
                    Watched {
                        io: stream,
                        state: Arc::clone(&state),
                    },
                    state,
                    peer,
                    local,
                    false,
                )
                .await
            }
            Some(acceptor) => {
                let handshake = tokio::time::timeout(self.limits.header_read_timeout, acceptor.accept(stream));
                let tls_stream = tokio::select! {
                    res = handshake => match res {
                        Ok(Ok(s)) => Some(s),
                        Ok(Err(err)) => {
                            tracing::debug!(%peer, error = %err, "TLS handshake failed");
                            None
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            None
                        }
                    },
                    _ = self.shutdown.wait() => None,
                };
                if let Some(s) = tls_stream {
                    let http2 = s.get_ref().1.alpn_protocol() == Some(b"h2");
                    let state = Arc::new(ConnState::new(http2));
                    self.serve_http(
                        Watched {
                            io: s,
                            state: Arc::clone(&state),
                        },
                        state,
                        peer,
                        local,
                        true,
                    )
                    .await
                }
            }
        }
        metrics::gauge!("fedgate_connections_open").decrement(1.0);
    }

    async fn serve_http<IO>(
        &self,
        io: Watched<IO>,
        state: Arc<ConnState>,
        peer: SocketAddr,
        local: SocketAddr,
        tls: bool,
    ) where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let info = Arc::new(ConnInfo {
            peer,
            local,
            tls,
            state: Arc::clone(&state),
        });
        let routes = Arc::clone(&self.routes);
        let service = service_fn(move |req| {
            let proxy = routes.current();
            let info = Arc::clone(&info);
            async move { Ok::<_, Infallible>(proxy.handle(info, req).await) }
        });
        let conn = self.builder.serve_connection_with_upgrades(TokioIo::new(io), service);
        tokio::pin!(conn);
        let dog = watchdog(Arc::clone(&state), self.limits);
        tokio::pin!(dog);
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(err) = res {
                    tracing::debug!(%peer, error = %err, "connection ended with an error");
                }
                return;
            }
            expiry = &mut dog => match expiry {
                Expiry::HeaderTimeout => {
                    tracing::debug!(%peer, "closing connection: request head not complete within server.header_read_timeout");
                    metrics::counter!("fedgate_connections_closed_total", "reason" => "header_timeout").increment(1);
                    return;
                }
                Expiry::Idle => {
                    tracing::debug!(%peer, "closing connection: idle for server.idle_timeout");
                    conn.as_mut().graceful_shutdown()
                }
            },
            _ = self.shutdown.wait() => conn.as_mut().graceful_shutdown(),
        }
        // Draining: the connection finishes what it is serving; the process-wide
        // grace period bounds how long that may take.
        if let Err(err) = conn.await {
            tracing::debug!(%peer, error = %err, "connection ended with an error while closing");
        }
    }
}
