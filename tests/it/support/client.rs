//! A small HTTP client speaking HTTP/1.1 or HTTP/2 (by ALPN over TLS, or
//! prior knowledge over plain TCP) on one connection, so tests control and
//! observe exactly which protocol and connection are used.

use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use base64::Engine;
use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, Uri};
use http_body::{Body, Frame};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type TestBody = UnsyncBoxBody<Bytes, BoxError>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    H1,
    H2,
}

enum Sender {
    H1(http1::SendRequest<TestBody>),
    H2(http2::SendRequest<TestBody>),
}

pub struct Client {
    sender: Sender,
    authority: String,
    scheme: &'static str,
}

pub fn empty() -> TestBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

pub fn full(bytes: impl Into<Bytes>) -> TestBody {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed_unsync()
}

/// A body of `total` bytes made on the fly, so a huge upload costs the test
/// no memory.
pub struct Generated {
    chunk: Bytes,
    remaining: u64,
}

impl Generated {
    pub fn new(total: u64) -> Self {
        Generated {
            chunk: Bytes::from(vec![b'x'; 64 * 1024]),
            remaining: total,
        }
    }

    pub fn boxed(total: u64) -> TestBody {
        Generated::new(total).boxed_unsync()
    }
}

impl Body for Generated {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let n = self.remaining.min(self.chunk.len() as u64) as usize;
        self.remaining -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..n)))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.remaining)
    }
}

pub fn tls_config(cert: &Path, alpn: &[&[u8]]) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(cert).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config
}

impl Client {
    pub async fn plain(addr: SocketAddr, proto: Proto) -> Client {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        tcp.set_nodelay(true).unwrap();
        Client::handshake(TokioIo::new(tcp), proto, addr.to_string(), "http").await
    }

    /// TLS with ALPN offering only `proto`; asserts the server agreed.
    pub async fn tls(addr: SocketAddr, cert: &Path, proto: Proto) -> Client {
        let alpn: &[u8] = match proto {
            Proto::H1 => b"http/1.1",
            Proto::H2 => b"h2",
        };
        let connector = tokio_rustls::TlsConnector::from(Arc::new(tls_config(cert, &[alpn])));
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let tls = connector
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .expect("TLS handshake");
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(alpn), "ALPN");
        Client::handshake(TokioIo::new(tls), proto, format!("localhost:{}", addr.port()), "https").await
    }

    async fn handshake<IO>(io: TokioIo<IO>, proto: Proto, authority: String, scheme: &'static str) -> Client
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let sender = match proto {
            Proto::H1 => {
                let (sender, conn) = http1::handshake(io).await.expect("h1 handshake");
                tokio::spawn(conn.with_upgrades());
                Sender::H1(sender)
            }
            Proto::H2 => {
                let (sender, conn) = http2::handshake(TokioExecutor::new(), io).await.expect("h2 handshake");
                tokio::spawn(conn);
                Sender::H2(sender)
            }
        };
        Client {
            sender,
            authority,
            scheme,
        }
    }

    /// Sends `req`, whose URI is a path; fills in what each protocol needs.
    pub async fn send(&mut self, mut req: Request<TestBody>) -> Result<Response<Incoming>, hyper::Error> {
        match &mut self.sender {
            Sender::H1(s) => {
                if !req.headers().contains_key(header::HOST) {
                    req.headers_mut()
                        .insert(header::HOST, HeaderValue::from_str(&self.authority).unwrap());
                }
                s.ready().await?;
                s.send_request(req).await
            }
            Sender::H2(s) => {
                let pq = req
                    .uri()
                    .path_and_query()
                    .map(|p| p.as_str().to_string())
                    .unwrap_or("/".into());
                *req.uri_mut() = Uri::builder()
                    .scheme(self.scheme)
                    .authority(self.authority.as_str())
                    .path_and_query(pq)
                    .build()
                    .unwrap();
                s.ready().await?;
                s.send_request(req).await
            }
        }
    }

    pub async fn get(&mut self, path: &str) -> (StatusCode, HeaderMap, Bytes) {
        let req = Request::get(path).body(empty()).unwrap();
        let resp = self.send(req).await.expect("request");
        let (parts, body) = resp.into_parts();
        (
            parts.status,
            parts.headers,
            body.collect().await.expect("body").to_bytes(),
        )
    }
}

/// One GET on a fresh plain HTTP/1.1 connection.
pub async fn get(addr: SocketAddr, path: &str) -> (StatusCode, HeaderMap, Bytes) {
    Client::plain(addr, Proto::H1).await.get(path).await
}

/// An `Authorization: Basic` value for `user` and `password`.
pub fn basic(user: &str, password: &str) -> HeaderValue {
    basic_raw(format!("{user}:{password}").as_bytes())
}

/// An `Authorization: Basic` value carrying `credentials` as given, so a
/// test can send what no well-behaved client would (no colon, not UTF-8).
pub fn basic_raw(credentials: &[u8]) -> HeaderValue {
    let token = base64::engine::general_purpose::STANDARD.encode(credentials);
    HeaderValue::from_str(&format!("Basic {token}")).unwrap()
}

/// One GET with `headers` (appended in order, so a name may repeat) on a
/// fresh plain HTTP/1.1 connection.
pub async fn get_with(addr: SocketAddr, path: &str, headers: &[(&str, HeaderValue)]) -> (StatusCode, HeaderMap, Bytes) {
    let mut req = Request::get(path).body(empty()).unwrap();
    for (name, value) in headers {
        req.headers_mut()
            .append(HeaderName::from_bytes(name.as_bytes()).unwrap(), value.clone());
    }
    let resp = Client::plain(addr, Proto::H1).await.send(req).await.expect("request");
    let (parts, body) = resp.into_parts();
    (
        parts.status,
        parts.headers,
        body.collect().await.expect("body").to_bytes(),
    )
}
