//! The shared secret a front proxy proves itself with when it asks the
//! forward-auth or mail auth_http endpoint for a decision: a header whose
//! value is read from a file (`secret_file`), so only the proxy that was
//! given the file can call the endpoint.
//!
//! The secret is kept as its SHA-256 and compared in constant time, so
//! neither the length presented nor how much of it matched shows in the
//! time an answer takes. It is never logged.

use std::io::Read;
use std::path::{Path, PathBuf};

use http::header::{HeaderMap, HeaderName};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::key_file::{open_private, PrivateFileError};

/// Shortest secret accepted: a guessable one protects nothing.
pub const MIN_SECRET_CHARS: usize = 32;
const MAX_FILE_BYTES: u64 = 4096;

/// Why a caller secret file cannot be used. `key` names the config key
/// (`forward_auth.secret_file`, `mail_auth.secret_file`).
#[derive(Debug, thiserror::Error)]
pub enum CallerSecretError {
    #[error("{key} {}: cannot read: {source}", path.display())]
    Read {
        key: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{key} {} has permissions {mode:04o}; it must not be readable by group or others: \
         run `chmod 600 {}`",
        path.display(),
        path.display()
    )]
    Permissions {
        key: &'static str,
        path: PathBuf,
        mode: u32,
    },
    #[error("{key} {} is not a regular file", path.display())]
    NotAFile { key: &'static str, path: PathBuf },
    #[error("{key} {} is larger than 4 KiB; it should hold one line, the secret", path.display())]
    TooLarge { key: &'static str, path: PathBuf },
    #[error(
        "{key} {}: the secret must be one line of at least {MIN_SECRET_CHARS} printable ASCII \
         characters without spaces (for example `openssl rand -hex 32`)",
        path.display()
    )]
    BadSecret { key: &'static str, path: PathBuf },
}

/// The header and secret an endpoint expects from its caller.
pub struct CallerSecret {
    header: HeaderName,
    digest: [u8; 32],
}

impl std::fmt::Debug for CallerSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallerSecret")
            .field("header", &self.header)
            .finish_non_exhaustive()
    }
}

impl CallerSecret {
    /// Reads the secret from `path`: a regular file not readable by group
    /// or others, holding one line (a final newline is allowed).
    pub fn load(key: &'static str, path: &Path, header: HeaderName) -> Result<CallerSecret, CallerSecretError> {
        let read = |source| CallerSecretError::Read {
            key,
            path: path.to_owned(),
            source,
        };
        let (mut file, meta) = open_private(path).map_err(|e| match e {
            PrivateFileError::Open(source) | PrivateFileError::Metadata(source) => read(source),
            PrivateFileError::NotAFile => CallerSecretError::NotAFile {
                key,
                path: path.to_owned(),
            },
            PrivateFileError::Permissions(mode) => CallerSecretError::Permissions {
                key,
                path: path.to_owned(),
                mode,
            },
        })?;
        if meta.len() > MAX_FILE_BYTES {
            return Err(CallerSecretError::TooLarge {
                key,
                path: path.to_owned(),
            });
        }
        let mut bytes = Zeroizing::new(Vec::new());
        file.read_to_end(&mut bytes).map_err(read)?;
        CallerSecret::from_file_bytes(key, path, &bytes, header)
    }

    fn from_file_bytes(
        key: &'static str,
        path: &Path,
        bytes: &[u8],
        header: HeaderName,
    ) -> Result<CallerSecret, CallerSecretError> {
        let line = bytes.strip_suffix(b"\n").unwrap_or(bytes);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        // It goes into a proxy's config as a header value: printable
        // ASCII, no spaces (a header value's edges would be trimmed).
        let printable = line.iter().all(|b| b.is_ascii_graphic());
        if line.len() < MIN_SECRET_CHARS || !printable {
            return Err(CallerSecretError::BadSecret {
                key,
                path: path.to_owned(),
            });
        }
        Ok(CallerSecret {
            header,
            digest: digest(line),
        })
    }

    /// The header the secret is expected in.
    pub fn header(&self) -> &HeaderName {
        &self.header
    }

    /// Whether the request carries the secret: exactly one such header,
    /// equal to the secret. The comparison is of digests, in constant time.
    pub fn admits(&self, headers: &HeaderMap) -> bool {
        let mut values = headers.get_all(&self.header).iter();
        let (Some(value), None) = (values.next(), values.next()) else {
            return false;
        };
        digest(value.as_bytes()).ct_eq(&self.digest).into()
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn header() -> HeaderName {
        HeaderName::from_static("x-fedgate-secret")
    }

    fn file(contents: &[u8], mode: u32) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(contents).unwrap();
        std::fs::set_permissions(f.path(), std::fs::Permissions::from_mode(mode)).unwrap();
        f
    }

    #[test]
    fn admits_only_the_one_exact_secret() {
        let f = file(format!("{SECRET}\n").as_bytes(), 0o600);
        let secret = CallerSecret::load("forward_auth.secret_file", f.path(), header()).unwrap();
        let mut h = HeaderMap::new();
        assert!(!secret.admits(&h), "no header");
        h.insert("x-fedgate-secret", HeaderValue::from_static(SECRET));
        assert!(secret.admits(&h));
        h.append("x-fedgate-secret", HeaderValue::from_static(SECRET));
        assert!(!secret.admits(&h), "two copies are refused");
        for wrong in [
            &SECRET[1..],
            "0123456789abcdef0123456789abcdeF",
            "",
            "0123456789abcdef0123456789abcdef0",
        ] {
            let mut h = HeaderMap::new();
            h.insert("x-fedgate-secret", HeaderValue::from_str(wrong).unwrap());
            assert!(!secret.admits(&h), "{wrong:?}");
        }
        assert!(!format!("{secret:?}").contains(SECRET), "never printed");
    }

    #[test]
    fn refuses_files_others_can_read_and_weak_secrets() {
        let f = file(SECRET.as_bytes(), 0o640);
        let err = CallerSecret::load("mail_auth.secret_file", f.path(), header()).unwrap_err();
        assert!(
            matches!(err, CallerSecretError::Permissions { mode: 0o640, .. }),
            "{err}"
        );
        assert!(err.to_string().starts_with("mail_auth.secret_file "), "{err}");
        for weak in [
            &b"short\n"[..],
            b"0123456789abcdef 0123456789abcdef",
            b"",
            b"0123456789abcdef0123456789abcdef\nmore",
        ] {
            let f = file(weak, 0o600);
            let err = CallerSecret::load("mail_auth.secret_file", f.path(), header()).unwrap_err();
            assert!(matches!(err, CallerSecretError::BadSecret { .. }), "{weak:?}: {err}");
        }
        let err = CallerSecret::load("mail_auth.secret_file", Path::new("/nonexistent/x"), header()).unwrap_err();
        assert!(matches!(err, CallerSecretError::Read { .. }), "{err}");
    }
}
