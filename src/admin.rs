//! The admin listener: `/healthz` (the process answers), `/readyz` (all
//! listeners are bound, the server is not draining and the store is
//! healthy; else 503 with the reason) and `/metrics` (Prometheus text
//! format). Keep it on a loopback or management address.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

use crate::model::Clock;
use crate::proxy::body::{full, ProxyBody};
use crate::shutdown::Shutdown;
use crate::store::StoreHealth;

#[derive(Clone)]
pub struct Admin {
    pub ready: Arc<AtomicBool>,
    /// The store's health, when there is a store to report on.
    pub store: Option<Arc<StoreHealth>>,
    pub clock: Arc<dyn Clock>,
    pub metrics: Option<PrometheusHandle>,
}

impl Admin {
    fn handle(&self, req: &Request<Incoming>) -> Response<ProxyBody> {
        let (status, content_type, body) = match (req.method(), req.uri().path()) {
            (&Method::GET | &Method::HEAD, "/healthz") => (StatusCode::OK, "text/plain", "ok\n".to_string()),
            (&Method::GET | &Method::HEAD, "/readyz") => {
                let store = match &self.store {
                    Some(health) => health.readiness(self.clock.now_ms()),
                    None => Ok(()),
                };
                match (self.ready.load(Ordering::Acquire), store) {
                    (true, Ok(())) => (StatusCode::OK, "text/plain", "ready\n".to_string()),
                    (_, Err(reason)) => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "text/plain",
                        format!("not ready: {reason}\n"),
                    ),
                    (false, Ok(())) => (StatusCode::SERVICE_UNAVAILABLE, "text/plain", "not ready\n".to_string()),
                }
            }
            (&Method::GET, "/metrics") => match &self.metrics {
                Some(handle) => (StatusCode::OK, "text/plain; version=0.0.4", handle.render()),
                None => (
                    StatusCode::NOT_FOUND,
                    "text/plain",
                    "metrics are not enabled\n".to_string(),
                ),
            },
            _ => (StatusCode::NOT_FOUND, "text/plain", "not found\n".to_string()),
        };
        let mut resp = Response::new(full(body));
        *resp.status_mut() = status;
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        resp
    }

    pub async fn serve(self, listener: TcpListener, shutdown: Shutdown) {
        loop {
            let (stream, _) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(err) => {
                        tracing::warn!(error = %err, "admin accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = shutdown.wait() => return,
            };
            let admin = self.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let resp = admin.handle(&req);
                    async move { Ok::<_, Infallible>(resp) }
                });
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let conn = builder.serve_connection(TokioIo::new(stream), service);
                // Admin requests are short; a stuck client only holds its own socket.
                let _ = tokio::time::timeout(std::time::Duration::from_secs(30), conn).await;
            });
        }
    }
}
