//! Secrets at rest: values the server must read back (TOTP secrets, unlike
//! passwords, cannot be hashed) are sealed with an AEAD under the portal
//! key before they reach the store.
//!
//! This module owns the sealed format and the key (loaded through
//! [`crate::key_file`], so it is made on first use, 0600, like the server
//! key). It does not know what it seals: callers pass associated data that
//! names the owner and purpose of a value (see
//! [`crate::totp::TotpSecret::seal`]), so a sealed value copied to another
//! user's row, or used for another purpose, does not open. Key rotation is
//! not built: the format's version byte leaves room for it.
//!
//! # Format
//!
//! `version (1 byte, 1) || nonce (12 bytes, random) || ciphertext || tag
//! (16 bytes)`, ChaCha20-Poly1305 (RFC 8439). The version byte is
//! authenticated with the associated data. Random 96-bit nonces are safe
//! for far more seals than fedgate makes under one key (one per TOTP
//! registration).

use std::fmt;
use std::path::{Path, PathBuf};

use rand::rngs::OsRng;
use rand::RngCore;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use zeroize::Zeroizing;

use crate::key_file::{KeyError, KEY_LEN};

/// How the key is named in errors (the `[portal] secret_key_file` setting).
const KEY_NAME: &str = "portal key";

/// The only format version written and read.
const VERSION: u8 = 1;

/// Bytes a sealed value adds to its plaintext: version, nonce, tag.
pub const OVERHEAD: usize = 1 + NONCE_LEN + TAG_LEN;

const TAG_LEN: usize = 16;

/// Longest plaintext sealed. Far above any secret fedgate keeps; it keeps
/// a caller's mistake from sealing megabytes into a database row.
pub const MAX_PLAINTEXT: usize = 64 * 1024;

/// A value could not be sealed or opened.
#[derive(Debug, thiserror::Error)]
pub enum SecretBoxError {
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("cannot seal a value of {len} bytes; at most {MAX_PLAINTEXT} are sealed")]
    TooLong { len: usize },
    #[error("a sealed value is {len} bytes long, shorter than any value fedgate seals: the stored data is damaged")]
    TooShort { len: usize },
    #[error(
        "a sealed value has format version {found}; this fedgate reads version {VERSION}: \
         upgrade fedgate"
    )]
    UnknownVersion { found: u8 },
    #[error(
        "a sealed value does not open with the portal key{}: it was sealed under another key \
         (was the key file replaced or restored from another installation?), belongs to \
         another user, or was altered",
        key_path.as_ref().map(|p| format!(" from {}", p.display())).unwrap_or_default()
    )]
    Open { key_path: Option<PathBuf> },
    #[error("the AEAD refused to seal a value")]
    Seal,
}

/// The portal key, ready to seal and open. `Debug` names the key file, not
/// the key.
pub struct SecretBox {
    key: LessSafeKey,
    path: Option<PathBuf>,
}

impl SecretBox {
    /// Loads the key at `path`, making it (mode 0600, with its directory)
    /// on first use. A file readable by group or others, not a regular
    /// file, or not holding a 32-byte key (64 hex digits or 32 raw bytes)
    /// is refused with an error naming the path.
    pub fn load_or_create(path: &Path) -> Result<SecretBox, SecretBoxError> {
        let bytes = crate::key_file::load_or_create(path, KEY_NAME)?;
        Ok(SecretBox {
            key: Self::aead_key(&bytes),
            path: Some(path.to_owned()),
        })
    }

    /// A box with a given key (tests, or a key held elsewhere).
    pub fn from_bytes(bytes: &[u8; KEY_LEN]) -> SecretBox {
        SecretBox {
            key: Self::aead_key(bytes),
            path: None,
        }
    }

    fn aead_key(bytes: &[u8; KEY_LEN]) -> LessSafeKey {
        // ChaCha20-Poly1305 takes exactly KEY_LEN (32) bytes, so this
        // cannot fail.
        LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, bytes).expect("ChaCha20-Poly1305 takes a 32-byte key"))
    }

    /// Seals `plaintext` with a fresh random nonce. `associated_data` is
    /// not stored; [`SecretBox::open`] needs the same bytes.
    pub fn seal(&self, plaintext: &[u8], associated_data: &[u8]) -> Result<Vec<u8>, SecretBoxError> {
        if plaintext.len() > MAX_PLAINTEXT {
            return Err(SecretBoxError::TooLong { len: plaintext.len() });
        }
        let mut nonce = [0u8; NONCE_LEN];
        OsRng.fill_bytes(&mut nonce);
        // Capacity for the whole result up front: the plaintext is
        // encrypted where it lies, and no reallocation leaves a copy of it
        // behind in freed memory.
        let mut sealed = Vec::with_capacity(OVERHEAD + plaintext.len());
        sealed.push(VERSION);
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(plaintext);
        let tag = self
            .key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(VERSION, associated_data)),
                &mut sealed[1 + NONCE_LEN..],
            )
            .map_err(|_| SecretBoxError::Seal)?;
        sealed.extend_from_slice(tag.as_ref());
        Ok(sealed)
    }

    /// The plaintext of a value [`SecretBox::seal`] made with the same key
    /// and associated data; zeroed when dropped.
    pub fn open(&self, sealed: &[u8], associated_data: &[u8]) -> Result<Zeroizing<Vec<u8>>, SecretBoxError> {
        if sealed.len() < OVERHEAD {
            return Err(SecretBoxError::TooShort { len: sealed.len() });
        }
        let (version, rest) = (sealed[0], &sealed[1..]);
        if version != VERSION {
            return Err(SecretBoxError::UnknownVersion { found: version });
        }
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| self.open_error())?;
        let mut buffer = Zeroizing::new(ciphertext.to_vec());
        let len = self
            .key
            .open_in_place(nonce, Aad::from(aad(version, associated_data)), &mut buffer)
            .map_err(|_| self.open_error())?
            .len();
        buffer.truncate(len);
        Ok(buffer)
    }

    fn open_error(&self) -> SecretBoxError {
        SecretBoxError::Open {
            key_path: self.path.clone(),
        }
    }
}

/// The authenticated header and the caller's associated data.
fn aad(version: u8, associated_data: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(1 + associated_data.len());
    aad.push(version);
    aad.extend_from_slice(associated_data);
    aad
}

impl fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretBox")
            .field("key", &"***")
            .field("path", &self.path)
            .finish()
    }
}

#[cfg(test)]
mod tests;
