//! The server key: 32 random bytes in a file readable by its owner only,
//! made on first use. It keys the app-password lookup tags (and any other
//! MAC fedgate needs, each under its own domain label).
//!
//! This module owns the file (creation, permission and length checks) and
//! the MAC. It does not decide where the file lives (configuration does)
//! and does not rotate keys: a new key makes every stored lookup tag
//! unfindable, i.e. revokes every app password.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use rand::rngs::OsRng;
use rand::RngCore;
use sha2::Sha256;
use zeroize::Zeroize;

/// Length of the key in bytes.
pub const KEY_LEN: usize = 32;

/// The server key file could not be made or used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("server key file {}: {action}: {source}", path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        source: io::Error,
    },
    #[error(
        "server key file {} has permissions {mode:04o}; it must not be readable by group \
         or others: run `chmod 600 {}`",
        path.display(),
        path.display()
    )]
    Permissions { path: PathBuf, mode: u32 },
    #[error("server key file {} is not a regular file", path.display())]
    NotAFile { path: PathBuf },
    #[error(
        "server key file {} holds {len} bytes; expected {KEY_LEN} raw bytes or {} hex digits",
        path.display(),
        KEY_LEN * 2
    )]
    WrongLength { path: PathBuf, len: u64 },
    #[error("server key file {} is not valid hex", path.display())]
    BadHex { path: PathBuf },
}

/// The server's secret key. `Debug` prints `***`; zeroed on drop.
#[derive(Clone)]
pub struct ServerKey([u8; KEY_LEN]);

impl ServerKey {
    /// A key from given bytes (tests, or a key held elsewhere).
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> ServerKey {
        ServerKey(bytes)
    }

    /// A fresh key from the OS random source.
    pub fn generate() -> ServerKey {
        let mut bytes = [0u8; KEY_LEN];
        OsRng.fill_bytes(&mut bytes);
        ServerKey(bytes)
    }

    /// HMAC-SHA256 of `data` under this key, separated by `domain` so that
    /// a MAC made for one purpose is never valid for another. `domain` is a
    /// constant label such as `"fedgate/app-password-tag/v1"`; it must not
    /// contain a NUL byte, which separates it from `data`.
    pub fn mac(&self, domain: &str, data: &[u8]) -> [u8; 32] {
        debug_assert!(!domain.contains('\0'), "domain labels must not contain NUL");
        // HMAC accepts a key of any length, so this cannot fail.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC-SHA256 accepts a 32-byte key");
        mac.update(domain.as_bytes());
        mac.update(&[0]);
        mac.update(data);
        mac.finalize().into_bytes().into()
    }
}

impl Drop for ServerKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for ServerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ServerKey(***)")
    }
}

/// Loads the key at `path`, making it first if there is no file.
///
/// A new key is written as 64 hex digits and a newline to a private
/// temporary file, synced, then linked into place, so a process starting
/// at the same moment (the server and the CLI share the key) sees either no
/// file or a whole one, never half a key. The directory is synced too: a
/// key lost in a crash would be replaced by a new one, silently revoking
/// every app password.
pub fn load_or_create(path: &Path) -> Result<ServerKey, KeyError> {
    match load(path) {
        Err(KeyError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
        other => return other,
    }
    let key = ServerKey::generate();
    match install(path, &key) {
        Ok(()) => Ok(key),
        // Another process made it first; use theirs.
        Err(KeyError::Io { source, .. }) if source.kind() == io::ErrorKind::AlreadyExists => load(path),
        Err(e) => Err(e),
    }
}

/// Loads an existing key file, refusing one that others can read.
pub fn load(path: &Path) -> Result<ServerKey, KeyError> {
    let io_err = |action| {
        move |source| KeyError::Io {
            path: path.to_owned(),
            action,
            source,
        }
    };
    let mut file = File::open(path).map_err(io_err("cannot open"))?;
    let meta = file.metadata().map_err(io_err("cannot read metadata"))?;
    if !meta.is_file() {
        return Err(KeyError::NotAFile { path: path.to_owned() });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(KeyError::Permissions {
            path: path.to_owned(),
            mode,
        });
    }
    // Read at most a little more than the longest valid form, so a wrong
    // file named by mistake is not read whole.
    let mut contents = Vec::with_capacity(KEY_LEN * 2 + 2);
    (&mut file)
        .take((KEY_LEN * 2 + 3) as u64)
        .read_to_end(&mut contents)
        .map_err(io_err("cannot read"))?;
    let key = parse(path, &contents, meta.len());
    contents.zeroize();
    key
}

/// The key in `contents`; `file_len` is the file's whole length, for the
/// error message (`contents` may be cut short).
fn parse(path: &Path, contents: &[u8], file_len: u64) -> Result<ServerKey, KeyError> {
    let mut bytes = [0u8; KEY_LEN];
    if contents.len() == KEY_LEN {
        bytes.copy_from_slice(contents);
        return Ok(ServerKey(bytes));
    }
    let text = contents.trim_ascii();
    if text.len() != KEY_LEN * 2 {
        return Err(KeyError::WrongLength {
            path: path.to_owned(),
            len: file_len,
        });
    }
    for (byte, pair) in bytes.iter_mut().zip(text.chunks_exact(2)) {
        match (hex_value(pair[0]), hex_value(pair[1])) {
            (Some(hi), Some(lo)) => *byte = hi << 4 | lo,
            _ => {
                bytes.zeroize();
                return Err(KeyError::BadHex { path: path.to_owned() });
            }
        }
    }
    Ok(ServerKey(bytes))
}

fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

fn install(path: &Path, key: &ServerKey) -> Result<(), KeyError> {
    let io_err = |action| {
        move |source| KeyError::Io {
            path: path.to_owned(),
            action,
            source,
        }
    };
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(io_err("cannot create its directory"))?;

    // Unique per attempt: two threads or processes creating the key at
    // once must not write into each other's temporary file.
    let mut file_name = path.file_name().unwrap_or_default().to_owned();
    file_name.push(format!(".tmp.{}.{:016x}", std::process::id(), OsRng.next_u64()));
    let tmp = dir.join(file_name);
    let written = write_new(&tmp, key).map_err(io_err("cannot write a new key"));
    let linked = written.and_then(|()| fs::hard_link(&tmp, path).map_err(io_err("cannot create")));
    // The temporary name has served its purpose whether or not the link
    // was made; a failure to remove it leaves a private file, not a hazard.
    let _ = fs::remove_file(&tmp);
    linked?;
    File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("cannot sync its directory"))
}

fn write_new(tmp: &Path, key: &ServerKey) -> io::Result<()> {
    let mut file = OpenOptions::new().write(true).create_new(true).mode(0o600).open(tmp)?;
    let mut text = String::with_capacity(KEY_LEN * 2 + 1);
    for byte in key.0 {
        text.push(char::from(HEX[usize::from(byte >> 4)]));
        text.push(char::from(HEX[usize::from(byte & 0xf)]));
    }
    text.push('\n');
    let result = file.write_all(text.as_bytes()).and_then(|()| file.sync_all());
    text.zeroize();
    result
}

const HEX: &[u8; 16] = b"0123456789abcdef";

#[cfg(test)]
mod tests;
