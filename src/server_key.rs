//! The server key: 32 random bytes in a file readable by its owner only,
//! made on first use. It keys the app-password lookup tags (and any other
//! MAC fedgate needs, each under its own domain label).
//!
//! This module owns the MAC. The file (creation, permission and length
//! checks) is [`crate::key_file`]'s; where it lives is configuration's.
//! Keys are not rotated: a new key makes every stored lookup tag
//! unfindable, i.e. revokes every app password.

use std::fmt;
use std::path::Path;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroize;

pub use crate::key_file::{KeyError, KEY_LEN};

/// How the server key is named in errors.
const KEY_NAME: &str = "server key";

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
        ServerKey(*crate::key_file::generate())
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

/// Loads the key at `path`, making it first if there is no file (see
/// [`crate::key_file::load_or_create`]).
pub fn load_or_create(path: &Path) -> Result<ServerKey, KeyError> {
    crate::key_file::load_or_create(path, KEY_NAME).map(|bytes| ServerKey(*bytes))
}

/// Loads an existing key file, refusing one that others can read.
pub fn load(path: &Path) -> Result<ServerKey, KeyError> {
    crate::key_file::load(path, KEY_NAME).map(|bytes| ServerKey(*bytes))
}

#[cfg(test)]
mod tests;
