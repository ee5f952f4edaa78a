//! The admin listener: `/healthz` (the process answers), `/readyz` (all
//! listeners are bound, the server is not draining and the store is
//! healthy; else 503 with the reason), `/metrics` (Prometheus text
//! format), all three open, and the admin API under `/api/v1` ([`api`]),
//! which needs a bearer token of `[admin] token_file` ([`tokens`]). Keep it
//! on a loopback or management address.
//!
//! With `[admin] tls = true` it speaks TLS with the server's certificate
//! (swapped by a reload like the main listeners'). With
//! `[admin] client_ca_file` the TLS layer asks for a client certificate and
//! refuses any presented one that does not chain to that CA; a client with
//! none is let through, so probes reach `/healthz`, `/readyz` and
//! `/metrics`, but every `/api/` path then requires a verified certificate
//! and answers 403 `client_certificate_required` without one. What a
//! connection proved is handed to the handler as [`ConnInfo`].

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

use tokio_rustls::TlsAcceptor;

use crate::model::Clock;
use crate::proxy::body::{full, ProxyBody};
use crate::shutdown::Shutdown;
use crate::store::StoreHealth;

pub mod api;
pub mod tokens;

/// What one admin connection is: who is on the other end, and whether they
/// presented a client certificate that chains to `admin.client_ca_file`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnInfo {
    pub peer: std::net::SocketAddr,
    pub client_cert_verified: bool,
}

#[derive(Clone)]
pub struct Admin {
    pub ready: Arc<AtomicBool>,
    /// The store's health, when there is a store to report on.
    pub store: Option<Arc<StoreHealth>>,
    pub clock: Arc<dyn Clock>,
    pub metrics: Option<PrometheusHandle>,
    /// `admin.client_ca_file` is set: `/api/` paths need a verified client
    /// certificate.
    pub api_needs_client_cert: bool,
    /// The admin API; `None` without `[admin] token_file`.
    pub api: Option<Arc<api::Api>>,
}

/// How long a client has for the TLS handshake and for each request head.
const HEAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// How long one admin connection may stay open, whatever it does.
const CONNECTION_LIMIT: std::time::Duration = std::time::Duration::from_secs(15 * 60);

/// The admin API's paths; the probes and metrics stay open.
fn is_api(path: &str) -> bool {
    path == "/api" || path.starts_with("/api/")
}

fn json_error(status: StatusCode, code: &str, message: &str) -> Response<ProxyBody> {
    json_response(
        status,
        Vec::new(),
        &serde_json::json!({ "error": code, "message": message }),
    )
}

fn json_response(
    status: StatusCode,
    headers: Vec<(header::HeaderName, String)>,
    body: &serde_json::Value,
) -> Response<ProxyBody> {
    // Invariant: a serde_json::Value always serialises.
    let mut text = serde_json::to_string_pretty(body).unwrap_or_default();
    text.push('\n');
    let mut resp = Response::new(full(text));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    for (name, value) in headers {
        if let Ok(value) = HeaderValue::from_str(&value) {
            resp.headers_mut().insert(name, value);
        }
    }
    resp
}

impl Admin {
    async fn route(&self, req: Request<Incoming>, conn: ConnInfo) -> Response<ProxyBody> {
        // Before anything else: without a verified client certificate
        // (where one is required) nothing of the API is read or routed.
        if self.api_needs_client_cert && is_api(req.uri().path()) && !conn.client_cert_verified {
            tracing::info!(peer = %conn.peer, path = %req.uri().path(), "admin API refused: no verified client certificate");
            return json_error(
                StatusCode::FORBIDDEN,
                "client_certificate_required",
                "this path needs a client certificate signed by the CA of admin.client_ca_file",
            );
        }
        if req.uri().path() == "/api/v1" || req.uri().path().starts_with("/api/v1/") {
            let path = req.uri().path().to_owned();
            let (status, headers, body) = match self.api_call(req, conn).await {
                Ok(reply) => (reply.status, Vec::new(), reply.body),
                Err(err) => {
                    if matches!(err, api::ApiError::Unauthorized) {
                        // Someone guessing tokens shows in the log and on /metrics.
                        metrics::counter!("fedgate_admin_api_unauthorized_total").increment(1);
                        tracing::warn!(peer = %conn.peer, %path, "admin API refused: no valid bearer token");
                    }
                    api::error_response(&err)
                }
            };
            return json_response(status, headers, &body);
        }
        self.handle(&req)
    }

    /// An admin API request: the token first (nothing is read or routed
    /// for a caller without one), then the route, then the body.
    async fn api_call(&self, req: Request<Incoming>, conn: ConnInfo) -> Result<api::Reply, api::ApiError> {
        use http_body_util::BodyExt;
        let api = self.api.as_ref().ok_or(api::ApiError::Disabled)?;
        let actor = api::authenticate(&api.tokens, req.headers().get(header::AUTHORIZATION), &conn)?;
        let path = req.uri().path().to_owned();
        let (route, params) = match api::find(req.method(), &path) {
            api::Found::Route(route, params) => (route, params),
            api::Found::WrongMethod(methods) => {
                return Err(api::ApiError::MethodNotAllowed {
                    method: req.method().to_string(),
                    path,
                    allow: methods.iter().map(|m| m.as_str()).collect::<Vec<_>>().join(", "),
                })
            }
            api::Found::None => return Err(api::ApiError::NotFound(path)),
        };
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > api::MAX_BODY as u64) {
            return Err(api::ApiError::PayloadTooLarge);
        }
        let query = req
            .uri()
            .query()
            .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
            .unwrap_or_default();
        let content_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = http_body_util::Limited::new(req.into_body(), api::MAX_BODY)
            .collect()
            .await
            .map_err(|err| {
                if err.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
                    api::ApiError::PayloadTooLarge
                } else {
                    api::ApiError::Body(err.to_string())
                }
            })?
            .to_bytes();
        let call = api::Call {
            params,
            query,
            content_type,
            body,
            actor,
        };
        (route.handler)(api, call).await
    }

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

    /// Serves connections until shutdown; `tls` is `None` for plain HTTP.
    pub async fn serve(self, listener: TcpListener, tls: Option<TlsAcceptor>, shutdown: Shutdown) {
        loop {
            let (stream, peer) = tokio::select! {
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
            let tls = tls.clone();
            tokio::spawn(async move {
                // A stuck client only holds its own socket, and not for ever;
                // a request may take long (a sync pass), so this is no
                // request timeout.
                let limit = CONNECTION_LIMIT;
                match tls {
                    None => {
                        let conn = ConnInfo {
                            peer,
                            client_cert_verified: false,
                        };
                        let _ = tokio::time::timeout(limit, admin.serve_connection(stream, conn)).await;
                    }
                    Some(acceptor) => {
                        let _ = tokio::time::timeout(limit, async move {
                            let stream = match tokio::time::timeout(HEAD_TIMEOUT, acceptor.accept(stream)).await {
                                Ok(Ok(s)) => s,
                                Err(_) => {
                                    tracing::info!(%peer, "admin TLS handshake not complete within 30 s");
                                    return;
                                }
                                Ok(Err(err)) => {
                                    tracing::info!(%peer, error = %err, "admin TLS handshake failed");
                                    return;
                                }
                            };
                            // The verifier refused every certificate that does not
                            // chain to the CA: one present here was verified.
                            let client_cert_verified = admin.api_needs_client_cert
                                && stream.get_ref().1.peer_certificates().is_some_and(|c| !c.is_empty());
                            let conn = ConnInfo {
                                peer,
                                client_cert_verified,
                            };
                            admin.serve_connection(stream, conn).await
                        })
                        .await;
                    }
                }
            });
        }
    }

    async fn serve_connection<IO>(self, io: IO, conn: ConnInfo)
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let service = service_fn(move |req| {
            let admin = self.clone();
            async move { Ok::<_, Infallible>(admin.route(req, conn).await) }
        });
        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(HEAD_TIMEOUT);
        let _ = builder.serve_connection(TokioIo::new(io), service).await;
    }
}
