//! Key files: 32 random bytes in a file readable by its owner only, made on
//! first use. The server key ([`crate::server_key`]) and the portal key
//! ([`crate::secretbox`]) are both kept this way.
//!
//! This module owns the file: creation (atomic, private, synced), the
//! permission, type and length checks, and the two spellings accepted (64
//! hex digits, as written here, or 32 raw bytes). It does not decide where
//! a file lives (configuration does), what the key is for, or how keys are
//! rotated.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rand::rngs::OsRng;
use rand::RngCore;
use zeroize::{Zeroize, Zeroizing};

/// Length of a key in bytes.
pub const KEY_LEN: usize = 32;

/// A key file could not be made or used. `key` names which key ("server
/// key", "portal key") so the operator knows which setting to look at.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{key} file {}: {action}: {source}", path.display())]
    Io {
        key: &'static str,
        path: PathBuf,
        action: &'static str,
        source: io::Error,
    },
    #[error(
        "{key} file {} has permissions {mode:04o}; it must not be readable by group \
         or others: run `chmod 600 {}`",
        path.display(),
        path.display()
    )]
    Permissions {
        key: &'static str,
        path: PathBuf,
        mode: u32,
    },
    #[error("{key} file {} is not a regular file", path.display())]
    NotAFile { key: &'static str, path: PathBuf },
    #[error(
        "{key} file {} holds {len} bytes; expected {KEY_LEN} raw bytes or {} hex digits",
        path.display(),
        KEY_LEN * 2
    )]
    WrongLength { key: &'static str, path: PathBuf, len: u64 },
    #[error("{key} file {} is not valid hex", path.display())]
    BadHex { key: &'static str, path: PathBuf },
}

/// Key bytes, zeroed when dropped.
pub type KeyBytes = Zeroizing<[u8; KEY_LEN]>;

/// Fresh key bytes from the OS random source.
pub fn generate() -> KeyBytes {
    let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
    OsRng.fill_bytes(&mut bytes[..]);
    bytes
}

/// Loads the key at `path`, making it first if there is no file; `key`
/// names it in errors.
///
/// A new key is written as 64 hex digits and a newline to a private
/// temporary file, synced, then linked into place, so a process starting
/// at the same moment (the server and the CLI share keys) sees either no
/// file or a whole one, never half a key. The directory is synced too: a
/// key lost in a crash would be replaced by a new one, silently making
/// everything made under the old one unusable.
pub fn load_or_create(path: &Path, key: &'static str) -> Result<KeyBytes, KeyError> {
    match load(path, key) {
        Err(KeyError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
        other => return other,
    }
    let bytes = generate();
    match install(path, key, &bytes) {
        Ok(()) => Ok(bytes),
        // Another process made it first; use theirs.
        Err(KeyError::Io { source, .. }) if source.kind() == io::ErrorKind::AlreadyExists => load(path, key),
        Err(e) => Err(e),
    }
}

/// Maps an I/O error on the key file to a [`KeyError`] naming the key, the
/// path and what was being done.
fn io_error<'a>(
    key: &'static str,
    path: &'a Path,
    action: &'static str,
) -> impl FnOnce(std::io::Error) -> KeyError + 'a {
    move |source| KeyError::Io {
        key,
        path: path.to_owned(),
        action,
        source,
    }
}

/// Why a file that must be private (a key, the admin tokens, a caller
/// secret) cannot be used; each owner turns it into its own error, which
/// names its config key.
#[derive(Debug)]
pub enum PrivateFileError {
    Open(io::Error),
    Metadata(io::Error),
    NotAFile,
    /// Readable (or writable) by group or others: the permission bits.
    Permissions(u32),
}

/// Opens `path` for reading if it is a regular file that neither group nor
/// others may read or write.
pub fn open_private(path: &Path) -> Result<(File, fs::Metadata), PrivateFileError> {
    let file = File::open(path).map_err(PrivateFileError::Open)?;
    let meta = file.metadata().map_err(PrivateFileError::Metadata)?;
    if !meta.is_file() {
        return Err(PrivateFileError::NotAFile);
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(PrivateFileError::Permissions(mode));
    }
    Ok((file, meta))
}

/// Loads an existing key file, refusing one that others can read.
pub fn load(path: &Path, key: &'static str) -> Result<KeyBytes, KeyError> {
    let io_err = |action| io_error(key, path, action);
    let (mut file, meta) = open_private(path).map_err(|e| match e {
        PrivateFileError::Open(source) => io_err("cannot open")(source),
        PrivateFileError::Metadata(source) => io_err("cannot read metadata")(source),
        PrivateFileError::NotAFile => KeyError::NotAFile {
            key,
            path: path.to_owned(),
        },
        PrivateFileError::Permissions(mode) => KeyError::Permissions {
            key,
            path: path.to_owned(),
            mode,
        },
    })?;
    // Read at most a little more than the longest valid form, so a wrong
    // file named by mistake is not read whole.
    let mut contents = Zeroizing::new(Vec::with_capacity(KEY_LEN * 2 + 3));
    (&mut file)
        .take((KEY_LEN * 2 + 3) as u64)
        .read_to_end(&mut contents)
        .map_err(io_err("cannot read"))?;
    parse(path, key, &contents, meta.len())
}

/// The key in `contents`; `file_len` is the file's whole length, for the
/// error message (`contents` may be cut short).
fn parse(path: &Path, key: &'static str, contents: &[u8], file_len: u64) -> Result<KeyBytes, KeyError> {
    let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
    if contents.len() == KEY_LEN {
        bytes.copy_from_slice(contents);
        return Ok(bytes);
    }
    let text = contents.trim_ascii();
    if text.len() != KEY_LEN * 2 {
        return Err(KeyError::WrongLength {
            key,
            path: path.to_owned(),
            len: file_len,
        });
    }
    for (byte, pair) in bytes.iter_mut().zip(text.chunks_exact(2)) {
        match (hex_value(pair[0]), hex_value(pair[1])) {
            (Some(hi), Some(lo)) => *byte = hi << 4 | lo,
            _ => {
                return Err(KeyError::BadHex {
                    key,
                    path: path.to_owned(),
                })
            }
        }
    }
    Ok(bytes)
}

fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

fn install(path: &Path, key: &'static str, bytes: &[u8; KEY_LEN]) -> Result<(), KeyError> {
    let io_err = |action| io_error(key, path, action);
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
    let written = write_new(&tmp, bytes).map_err(io_err("cannot write a new key"));
    let linked = written.and_then(|()| fs::hard_link(&tmp, path).map_err(io_err("cannot create")));
    // The temporary name has served its purpose whether or not the link
    // was made; a failure to remove it leaves a private file, not a hazard.
    let _ = fs::remove_file(&tmp);
    linked?;
    File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("cannot sync its directory"))
}

fn write_new(tmp: &Path, bytes: &[u8; KEY_LEN]) -> io::Result<()> {
    let mut file = OpenOptions::new().write(true).create_new(true).mode(0o600).open(tmp)?;
    let mut text = String::with_capacity(KEY_LEN * 2 + 1);
    for byte in bytes {
        text.push(char::from(HEX[usize::from(byte >> 4)]));
        text.push(char::from(HEX[usize::from(byte & 0xf)]));
    }
    text.push('\n');
    let result = file.write_all(text.as_bytes()).and_then(|()| file.sync_all());
    text.zeroize();
    result
}

const HEX: &[u8; 16] = b"0123456789abcdef";
