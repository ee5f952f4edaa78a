//! A one-request TLS client that reports what the server presented and
//! can present a client certificate.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;

pub type TlsStream = tokio_rustls::client::TlsStream<TcpStream>;

/// Connects to `addr` trusting only the certificates in `roots`, and
/// presenting `client` (certificate and key files) when given.
pub async fn connect(addr: SocketAddr, roots: &Path, client: Option<(&Path, &Path)>) -> std::io::Result<TlsStream> {
    let mut store = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(roots).unwrap() {
        store.add(cert.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(store);
    let mut config = match client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .unwrap()
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            builder
                .with_client_auth_cert(chain, PrivateKeyDer::from_pem_file(key).unwrap())
                .unwrap()
        }
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = TcpStream::connect(addr).await?;
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
}

/// The end-entity certificate the server presented on `stream`.
pub fn presented(stream: &TlsStream) -> Vec<u8> {
    stream.get_ref().1.peer_certificates().expect("server certificate")[0].to_vec()
}

/// The first certificate in a PEM file, as DER.
pub fn der_of(pem: &Path) -> Vec<u8> {
    CertificateDer::pem_file_iter(pem)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .to_vec()
}

/// A keep-alive HTTP/1.1 connection over `stream`.
pub struct Conn {
    sender: http1::SendRequest<Empty<bytes::Bytes>>,
}

impl Conn {
    pub async fn new(stream: TlsStream) -> Result<Conn, hyper::Error> {
        let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        Ok(Conn { sender })
    }

    pub async fn get(&mut self, path: &str) -> Result<(StatusCode, String), hyper::Error> {
        self.sender.ready().await?;
        let req = Request::get(path)
            .header("host", "localhost")
            .body(Empty::new())
            .unwrap();
        let resp = self.sender.send_request(req).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
}

/// One GET on a new connection; any TLS or HTTP failure as text.
pub async fn get_once(
    addr: SocketAddr,
    roots: &Path,
    client: Option<(&Path, &Path)>,
    path: &str,
) -> Result<(StatusCode, String), String> {
    let stream = connect(addr, roots, client).await.map_err(|e| e.to_string())?;
    let mut conn = Conn::new(stream).await.map_err(|e| e.to_string())?;
    conn.get(path).await.map_err(|e| e.to_string())
}
