//! One worker's connections to one upstream: HTTP/1.1 over TCP or TLS,
//! kept alive and reused.
//!
//! A connection goes back to the pool when the response body it carried
//! has been read to its end; a response abandoned half-way takes its
//! connection with it. Everything here belongs to one worker thread, so
//! checking a connection out is a lock nobody else contends and a `Vec` pop.
//!
//! Not here: what is sent (headers, forwarding): that is [`super::forward`].

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("cannot connect to {host}:{port}: {source}")]
    Connect {
        host: String,
        port: u16,
        #[source]
        source: std::io::Error,
    },
    #[error("connecting to {host}:{port} timed out")]
    ConnectTimeout { host: String, port: u16 },
    #[error("TLS with {host}:{port} failed: {source}")]
    Tls {
        host: String,
        port: u16,
        #[source]
        source: std::io::Error,
    },
    #[error("upstream {host}:{port}: {source}")]
    Http {
        host: String,
        port: u16,
        #[source]
        source: hyper::Error,
    },
}

impl PoolError {
    /// Whether the upstream could not be reached at all (as opposed to
    /// failing while answering).
    pub fn is_connect(&self) -> bool {
        !matches!(self, PoolError::Http { .. })
    }

    /// Whether sending failed because the client's request body broke
    /// (hyper reports the body's own error as the cause).
    pub fn is_client_body(&self) -> bool {
        match self {
            PoolError::Http { source, .. } => {
                source.is_user()
                    && std::error::Error::source(source)
                        .is_some_and(|cause| cause.downcast_ref::<hyper::Error>().is_some())
            }
            _ => false,
        }
    }

    pub fn is_timeout(&self) -> bool {
        matches!(self, PoolError::ConnectTimeout { .. })
    }
}

struct Idle {
    sender: SendRequest<Incoming>,
    since: Instant,
}

pub struct Pool {
    host: String,
    port: u16,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_idle: usize,
    idle: Mutex<Vec<Idle>>,
}

impl Pool {
    pub fn new(
        host: String,
        port: u16,
        tls: Option<(TlsConnector, ServerName<'static>)>,
        connect_timeout: Duration,
        idle_timeout: Duration,
    ) -> Pool {
        Pool {
            host,
            port,
            tls,
            connect_timeout,
            idle_timeout,
            max_idle: 1024,
            idle: Mutex::new(Vec::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        // The lock guards a Vec push or pop, neither of which panics.
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The most recently used live connection. It may still be finishing
    /// the previous exchange (its response body was read to the end, but
    /// its connection task has not yet run): the caller waits for it.
    fn checkout(&self) -> Option<SendRequest<Incoming>> {
        let mut idle = self.lock();
        while let Some(c) = idle.pop() {
            if c.since.elapsed() < self.idle_timeout && !c.sender.is_closed() {
                return Some(c.sender);
            }
        }
        None
    }

    fn put_back(&self, sender: SendRequest<Incoming>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.lock();
        // The oldest idle connection sits first; once it has outlived the
        // idle timeout, close every connection that has.
        if idle.first().is_some_and(|c| c.since.elapsed() >= self.idle_timeout) {
            let timeout = self.idle_timeout;
            idle.retain(|c| c.since.elapsed() < timeout && !c.sender.is_closed());
        }
        if idle.len() < self.max_idle {
            idle.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }

    async fn connect(&self) -> Result<SendRequest<Incoming>, PoolError> {
        let host = self.host.clone();
        let port = self.port;
        let tcp = tokio::time::timeout(self.connect_timeout, async {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port)).await?.collect();
            let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no address");
            for addr in addrs {
                match TcpStream::connect(addr).await {
                    Ok(s) => return Ok(s),
                    Err(e) => last = e,
                }
            }
            Err(last)
        })
        .await
        .map_err(|_| PoolError::ConnectTimeout {
            host: self.host.clone(),
            port,
        })?
        .map_err(|source| PoolError::Connect {
            host: self.host.clone(),
            port,
            source,
        })?;
        let _ = tcp.set_nodelay(true);
        // Held-open requests (ActiveSync Ping) sit silent for long stretches;
        // TCP keep-alive notices a vanished upstream meanwhile.
        let _ = socket2::SockRef::from(&tcp)
            .set_tcp_keepalive(&socket2::TcpKeepalive::new().with_time(Duration::from_secs(60)));
        let http_err = |source| PoolError::Http {
            host: self.host.clone(),
            port,
            source,
        };
        match &self.tls {
            None => start_connection(tcp).await.map_err(http_err),
            Some((connector, name)) => {
                let tls = tokio::time::timeout(self.connect_timeout, connector.connect(name.clone(), tcp))
                    .await
                    .map_err(|_| PoolError::ConnectTimeout {
                        host: self.host.clone(),
                        port,
                    })?
                    .map_err(|source| PoolError::Tls {
                        host: self.host.clone(),
                        port,
                        source,
                    })?;
                start_connection(tls).await.map_err(http_err)
            }
        }
    }

    /// Sends `req` on a pooled connection, or a new one when none is idle
    /// (or the idle one turns out to be closed before the request left).
    pub async fn send(self: &Arc<Self>, mut req: Request<Incoming>) -> Result<Response<Leased>, PoolError> {
        let mut pooled = self.checkout();
        if let Some(sender) = pooled.as_mut() {
            // Ready at once, or within one turn of its connection task.
            if !matches!(
                tokio::time::timeout(Duration::from_secs(1), sender.ready()).await,
                Ok(Ok(()))
            ) {
                pooled = None;
            }
        }
        loop {
            let fresh = pooled.is_none();
            let mut sender = match pooled.take() {
                Some(s) => s,
                None => self.connect().await?,
            };
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    let upgrade = resp.status() == http::StatusCode::SWITCHING_PROTOCOLS;
                    let (parts, body) = resp.into_parts();
                    let mut lease = (!upgrade).then(|| Lease {
                        sender,
                        pool: Arc::clone(self),
                    });
                    // A response without a body may never be polled: its
                    // connection is free already.
                    if body.is_end_stream() {
                        if let Some(l) = lease.take() {
                            self.put_back(l.sender);
                        }
                    }
                    return Ok(Response::from_parts(parts, Leased { inner: body, lease }));
                }
                Err(mut err) => match err.take_message() {
                    // Never sent (the kept-alive connection had just been
                    // closed by the upstream): safe to send again, once,
                    // on a new connection.
                    Some(unsent) if !fresh => req = unsent,
                    _ => {
                        return Err(PoolError::Http {
                            host: self.host.clone(),
                            port: self.port,
                            source: err.into_error(),
                        })
                    }
                },
            }
        }
    }
}

/// HTTP/1.1 handshake on an open stream; the connection is driven by a
/// task of its own on this worker until either side closes it.
async fn start_connection<IO>(io: IO) -> Result<SendRequest<Incoming>, hyper::Error>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(async move {
        if let Err(err) = conn.with_upgrades().await {
            tracing::debug!(error = %err, "upstream connection ended with an error");
        }
    });
    Ok(sender)
}

struct Lease {
    sender: SendRequest<Incoming>,
    pool: Arc<Pool>,
}

pin_project_lite::pin_project! {
    /// An upstream response body that returns its connection to the pool
    /// once it has been read to the end.
    pub struct Leased {
        #[pin]
        inner: Incoming,
        lease: Option<Lease>,
    }
}

impl Body for Leased {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let mut this = self.project();
        let polled = this.inner.as_mut().poll_frame(cx);
        // The server stops polling once `is_end_stream` says so (a body
        // with a length ends with its last data frame), so the end is
        // noticed here rather than by waiting for `None`.
        let ended = match &polled {
            Poll::Ready(None) => true,
            Poll::Ready(Some(Ok(_))) => this.inner.is_end_stream(),
            _ => false,
        };
        if ended {
            if let Some(lease) = this.lease.take() {
                lease.pool.put_back(lease.sender);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
