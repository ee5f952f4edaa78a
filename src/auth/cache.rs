//! The verified-credential cache: what a warm sign-in costs instead of
//! argon2 or a directory bind.
//!
//! Keys are HMAC-SHA256 of (realm, user, secret) under a key made fresh at
//! each start, so neither the secret nor anything that could be checked
//! offline against it sits in memory. An entry remembers the generations of
//! its user and of the settings when its verification *started*; any change
//! that can revoke bumps a generation, so an entry made before (or during)
//! a revocation never matches again. Entries also expire after a TTL.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use dashmap::DashMap;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::config::Realm;
use crate::model::{AppPasswordId, AppPasswordLimits, UserId};

pub type CacheKey = [u8; 32];

/// What was verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CachedCredential {
    /// With the limits as they were when it was verified: a change of
    /// them bumps the user's generation, so the entry stops matching.
    AppPassword {
        id: AppPasswordId,
        name: Arc<str>,
        limits: Arc<AppPasswordLimits>,
    },
    Password,
}

#[derive(Debug, Clone)]
pub struct Entry {
    pub user: UserId,
    pub credential: CachedCredential,
    pub user_generation: u64,
    pub settings_generation: u64,
    pub expires: Instant,
}

pub struct VerifiedCache {
    /// Keyed once: cloning the keyed state saves re-deriving the HMAC pads
    /// on every request.
    mac: Hmac<Sha256>,
    map: DashMap<CacheKey, Entry, foldhash::fast::RandomState>,
    max_entries: usize,
    len_hint: AtomicUsize,
}

impl std::fmt::Debug for VerifiedCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifiedCache")
            .field("entries", &self.map.len())
            .finish()
    }
}

impl VerifiedCache {
    pub fn new(max_entries: usize) -> VerifiedCache {
        VerifiedCache {
            // Invariant: HMAC takes keys of any length.
            mac: <Hmac<Sha256> as Mac>::new_from_slice(&rand::random::<[u8; 32]>())
                .expect("HMAC accepts any key length"),
            map: DashMap::default(),
            max_entries,
            len_hint: AtomicUsize::new(0),
        }
    }

    /// The keyed hash of one credential. Length-prefixed fields, so no two
    /// (user, secret) pairs can collide by moving bytes between them.
    pub fn key(&self, realm: Realm, user: &str, secret: &str) -> CacheKey {
        let mut mac = self.mac.clone();
        mac.update(realm.as_str().as_bytes());
        mac.update(&(user.len() as u64).to_le_bytes());
        mac.update(user.as_bytes());
        mac.update(&(secret.len() as u64).to_le_bytes());
        mac.update(secret.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// The entry, if present and not expired. The caller checks generations.
    pub fn get(&self, key: &CacheKey, now: Instant) -> Option<Entry> {
        let entry = self.map.get(key)?;
        if entry.expires <= now {
            drop(entry);
            self.map.remove(key);
            return None;
        }
        Some(entry.clone())
    }

    pub fn insert(&self, key: CacheKey, entry: Entry) {
        if self.len_hint.load(Ordering::Relaxed) >= self.max_entries {
            // Full: make room from expired entries; if there is none, this
            // credential simply stays cold.
            self.sweep(Instant::now());
            if self.map.len() >= self.max_entries {
                return;
            }
        }
        self.map.insert(key, entry);
        self.len_hint.store(self.map.len(), Ordering::Relaxed);
    }

    pub fn remove(&self, key: &CacheKey) {
        self.map.remove(key);
    }

    /// Drops every entry of `user` (memory hygiene after a revocation; the
    /// generation check already makes them unusable).
    pub fn drop_user(&self, user: UserId) {
        self.map.retain(|_, e| e.user != user);
        self.len_hint.store(self.map.len(), Ordering::Relaxed);
    }

    pub fn clear(&self) {
        self.map.clear();
        self.len_hint.store(0, Ordering::Relaxed);
    }

    /// Removes expired entries; returns how many remain.
    pub fn sweep(&self, now: Instant) -> usize {
        self.map.retain(|_, e| e.expires > now);
        let len = self.map.len();
        self.len_hint.store(len, Ordering::Relaxed);
        len
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn entry(user: i64, expires: Instant) -> Entry {
        Entry {
            user: UserId(user),
            credential: CachedCredential::Password,
            user_generation: 0,
            settings_generation: 0,
            expires,
        }
    }

    #[test]
    fn keys_depend_on_every_field_and_the_process_key() {
        let c = VerifiedCache::new(10);
        let k = c.key(Realm::Cloud, "alice", "secret");
        assert_eq!(k, c.key(Realm::Cloud, "alice", "secret"));
        assert_ne!(k, c.key(Realm::Onprem, "alice", "secret"));
        assert_ne!(k, c.key(Realm::Cloud, "alic", "esecret"));
        assert_ne!(k, c.key(Realm::Cloud, "alice", "secreT"));
        assert_ne!(k, VerifiedCache::new(10).key(Realm::Cloud, "alice", "secret"));
    }

    #[test]
    fn expiry_capacity_and_per_user_drop() {
        let c = VerifiedCache::new(2);
        let now = Instant::now();
        c.insert([1; 32], entry(1, now + Duration::from_secs(60)));
        c.insert([2; 32], entry(2, now + Duration::from_millis(1)));
        assert!(c.get(&[2; 32], now + Duration::from_secs(1)).is_none(), "expired");
        c.insert([3; 32], entry(1, now + Duration::from_secs(60)));
        c.insert([4; 32], entry(3, now + Duration::from_secs(60)));
        assert!(c.len() <= 2, "bounded");
        c.drop_user(UserId(1));
        assert!(c.get(&[1; 32], now).is_none());
        assert!(c.get(&[3; 32], now).is_none());
    }
}
