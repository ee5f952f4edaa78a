//! TLS for both sides: the listeners' server certificate (loaded, or
//! generated self-signed on first start, and swappable by a reload), the
//! admin listener's optional client-certificate check, and the rustls
//! client used for https:// upstreams. One rustls, with the ring provider,
//! everywhere.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::config::Config;
use crate::reload::{Commit, CommitFn, ReloadError, Reloadable};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("server.tls_cert {cert} exists but server.tls_key {key} does not (or the reverse): provide both, or remove both to have a self-signed pair generated")]
    HalfPair { cert: PathBuf, key: PathBuf },
    #[error("cannot read {what} {path}: {message}")]
    Read {
        what: &'static str,
        path: PathBuf,
        message: String,
    },
    #[error("cannot write generated {what} {path}: {source}")]
    Write {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot generate a self-signed certificate: {0}")]
    Generate(String),
    #[error("server.tls_cert {cert} / server.tls_key {key} rejected by rustls: {source}")]
    Rejected {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("{key}: no certificate found in {path}")]
    NoCaCerts { key: String, path: PathBuf },
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Creates a self-signed certificate for localhost when neither file exists.
/// Returns true when it generated one.
pub fn ensure_certificate(cert: &Path, key: &Path) -> Result<bool, TlsError> {
    match (cert.exists(), key.exists()) {
        (true, true) => return Ok(false),
        (false, false) => {}
        _ => {
            return Err(TlsError::HalfPair {
                cert: cert.to_owned(),
                key: key.to_owned(),
            })
        }
    }
    let names = vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()];
    let certified = rcgen::generate_simple_self_signed(names).map_err(|e| TlsError::Generate(e.to_string()))?;
    write_new(key, certified.key_pair.serialize_pem().as_bytes(), 0o600, "private key")?;
    write_new(cert, certified.cert.pem().as_bytes(), 0o644, "certificate")?;
    Ok(true)
}

fn write_new(path: &Path, bytes: &[u8], mode: u32, what: &'static str) -> Result<(), TlsError> {
    let err = |source| TlsError::Write {
        what,
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(err)?;
    }
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(err)?;
    file.write_all(bytes).map_err(err)?;
    file.sync_all().map_err(err)
}

fn read_certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let read_err = |message: String| TlsError::Read {
        what,
        path: path.to_owned(),
        message,
    };
    CertificateDer::pem_file_iter(path)
        .map_err(|e| read_err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| read_err(e.to_string()))
}

/// Loads the certificate chain and private key of `server.tls_cert` and
/// `server.tls_key`, checking that they belong together.
pub fn load_certified_key(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
    let certs = read_certs("server.tls_cert", cert)?;
    if certs.is_empty() {
        return Err(TlsError::Read {
            what: "server.tls_cert",
            path: cert.to_owned(),
            message: "no PEM certificate in it".into(),
        });
    }
    let private_key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Read {
        what: "server.tls_key",
        path: key.to_owned(),
        message: e.to_string(),
    })?;
    let certified = CertifiedKey::from_der(certs, private_key, &provider()).map_err(|source| TlsError::Rejected {
        cert: cert.to_owned(),
        key: key.to_owned(),
        source,
    })?;
    Ok(Arc::new(certified))
}

/// The server certificate every TLS listener (the admin one included)
/// presents, swapped whole by a reload: a handshake that starts after
/// [`CertSlot::set`] gets the new pair, connections made before keep the
/// session they have.
#[derive(Debug)]
pub struct CertSlot {
    current: RwLock<Arc<CertifiedKey>>,
}

impl CertSlot {
    pub fn new(first: Arc<CertifiedKey>) -> Arc<CertSlot> {
        Arc::new(CertSlot {
            current: RwLock::new(first),
        })
    }

    pub fn set(&self, next: Arc<CertifiedKey>) {
        // A poisoned lock still holds a whole Arc: take it over.
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = next;
    }

    fn get(&self) -> Arc<CertifiedKey> {
        Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()))
    }
}

impl ResolvesServerCert for CertSlot {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }
}

/// A reload reads the pair named by the new `server.tls_cert` and
/// `server.tls_key` (the same paths, usually, with new contents) and swaps
/// it in whole. Unlike the first start, a reload never generates a pair.
pub struct CertReload(pub Arc<CertSlot>);

impl Reloadable for CertReload {
    fn name(&self) -> &'static str {
        "tls certificate"
    }

    fn prepare(&self, new: &Config) -> Result<Box<dyn Commit>, ReloadError> {
        let next = load_certified_key(&new.server.tls_cert, &new.server.tls_key)
            .map_err(|err| ReloadError::part("tls certificate", err))?;
        let slot = Arc::clone(&self.0);
        Ok(Box::new(CommitFn(move || slot.set(next))))
    }
}

/// The listeners' rustls configuration: TLS 1.2 and 1.3, ALPN h2 and
/// http/1.1, the certificate from `certs`.
pub fn server_config(certs: &Arc<CertSlot>) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Generate(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::clone(certs) as Arc<dyn ResolvesServerCert>);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The admin listener's rustls configuration: the listeners' certificate;
/// with `client_ca` (`admin.client_ca_file`), client certificates are asked
/// for and any one presented must chain to that CA (else the handshake
/// fails), but a client without one is let through: the admin handler
/// decides per path (probes on /healthz rarely have one).
pub fn admin_server_config(certs: &Arc<CertSlot>, client_ca: Option<&Path>) -> Result<Arc<ServerConfig>, TlsError> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Generate(e.to_string()))?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let mut roots = RootCertStore::empty();
            let certs = read_certs("admin.client_ca_file", path)?;
            if certs.is_empty() {
                return Err(TlsError::NoCaCerts {
                    key: "admin.client_ca_file".into(),
                    path: path.to_owned(),
                });
            }
            for cert in certs {
                roots.add(cert).map_err(|e| TlsError::Read {
                    what: "admin.client_ca_file",
                    path: path.to_owned(),
                    message: e.to_string(),
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .allow_unauthenticated()
                .build()
                .map_err(|e| TlsError::Read {
                    what: "admin.client_ca_file",
                    path: path.to_owned(),
                    message: e.to_string(),
                })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_cert_resolver(Arc::clone(certs) as Arc<dyn ResolvesServerCert>);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The client configuration for https:// upstreams: the webpki roots plus
/// the certificates of `extra_ca` (the route's `upstream_ca_file`).
pub fn client_config(extra_ca: Option<(&str, &Path)>) -> Result<ClientConfig, TlsError> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some((key, path)) = extra_ca {
        let certs = read_certs("CA file", path)?;
        if certs.is_empty() {
            return Err(TlsError::NoCaCerts {
                key: key.to_string(),
                path: path.to_owned(),
            });
        }
        for cert in certs {
            roots.add(cert).map_err(|e| TlsError::Read {
                what: "CA file",
                path: path.to_owned(),
                message: e.to_string(),
            })?;
        }
    }
    // ALPN is left empty: the connector sets it from the protocols it enables.
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Generate(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}
