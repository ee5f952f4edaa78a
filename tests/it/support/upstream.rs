//! In-process upstream servers on loopback port 0.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use super::client::{full, TestBody};

pub struct Upstream {
    pub addr: SocketAddr,
    /// Connections accepted so far (plain upstreams only).
    pub accepted: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves every request with `handler` (HTTP/1.1 and HTTP/2, with upgrades).
pub async fn serve<F, Fut>(handler: F) -> Upstream
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<TestBody>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handler = Arc::new(handler);
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = Arc::clone(&accepted);
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let handler = Arc::clone(&handler);
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let handler = Arc::clone(&handler);
                    async move { Ok::<_, Infallible>(handler(req).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Upstream { addr, accepted, task }
}

/// Answers with a JSON description of the request it received: method, URI,
/// version, headers (name -> list of values) and the body's length.
pub async fn echo() -> Upstream {
    serve(|req: Request<Incoming>| async move {
        let (parts, body) = req.into_parts();
        let mut len: u64 = 0;
        let mut body = body;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(f) => len += f.data_ref().map(|d| d.len() as u64).unwrap_or(0),
                Err(_) => break,
            }
        }
        let mut headers = serde_json::Map::new();
        for (k, v) in &parts.headers {
            let entry = headers
                .entry(k.as_str().to_string())
                .or_insert_with(|| serde_json::Value::Array(vec![]));
            if let serde_json::Value::Array(a) = entry {
                a.push(serde_json::Value::String(
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                ));
            }
        }
        let json = serde_json::json!({
            "method": parts.method.as_str(),
            "uri": parts.uri.to_string(),
            "version": format!("{:?}", parts.version),
            "headers": headers,
            "body_len": len,
        });
        Response::builder()
            .header("content-type", "application/json")
            .header("connection", "x-upstream-hop")
            .header("x-upstream-hop", "secret")
            .header("keep-alive", "timeout=5")
            .body(full(Bytes::from(json.to_string())))
            .unwrap()
    })
    .await
}

/// Parses an echo() answer.
pub fn parse_echo(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body).expect("echo JSON")
}

/// A loopback address where nothing listens (bound then closed).
pub async fn dead_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

/// Like [`serve`], over TLS with a fresh self-signed certificate for
/// `localhost`; returns the upstream and the certificate's PEM path.
pub async fn serve_tls<F, Fut>(dir: &std::path::Path, handler: F) -> (Upstream, std::path::PathBuf)
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<TestBody>> + Send + 'static,
{
    use rustls::pki_types::pem::PemObject;
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert_path = dir.join("upstream-ca.pem");
    std::fs::write(&cert_path, certified.cert.pem()).unwrap();
    let cert = rustls::pki_types::CertificateDer::from_pem_slice(certified.cert.pem().as_bytes()).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(certified.key_pair.serialize_pem().as_bytes()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handler = Arc::new(handler);
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let handler = Arc::clone(&handler);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else { return };
                let service = service_fn(move |req| {
                    let handler = Arc::clone(&handler);
                    async move { Ok::<_, Infallible>(handler(req).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    (Upstream { addr, accepted, task }, cert_path)
}
