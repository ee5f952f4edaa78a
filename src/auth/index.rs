//! The in-memory view of the store that the sign-in path reads: users by
//! UPN and id, app-password tags, settings. Loaded once at start, then kept
//! current from the store's change feed, so a sign-in never waits on the
//! database and a change made by any process (the CLI, another node) is
//! seen within one poll interval.
//!
//! Every reload of a user, and every settings change, takes a fresh
//! *generation* from one counter; the verified-credential cache compares
//! generations to know whether an entry predates a change.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;

use crate::model::{AppPasswordSecretRecord, User, UserId};
use crate::store::{Change, ChangeKind, Store, StoreError};

/// Lookups on the sign-in path hash a UPN or a tag per request; foldhash
/// (randomly seeded) does that several times faster than SipHash.
type Hasher = foldhash::fast::RandomState;

#[derive(Debug)]
pub struct UserEntry {
    pub user: User,
    pub generation: u64,
}

#[derive(Debug, Default)]
pub struct Index {
    users_by_upn: DashMap<String, Arc<UserEntry>, Hasher>,
    /// Federated users by lowercased login name, for `CORP\alice` and `alice`.
    users_by_login: DashMap<String, Arc<UserEntry>, Hasher>,
    users_by_id: DashMap<UserId, Arc<UserEntry>, Hasher>,
    tags: DashMap<[u8; 32], Arc<AppPasswordSecretRecord>, Hasher>,
    tags_by_user: DashMap<UserId, Vec<[u8; 32]>>,
    allow_app_passwords: AtomicBool,
    settings_generation: AtomicU64,
    generations: AtomicU64,
    seq: AtomicI64,
}

/// Who was affected by a refresh, so caches can be trimmed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Refreshed {
    pub users: BTreeSet<UserId>,
    pub everything: bool,
}

fn login_key(user: &User) -> Option<String> {
    user.directory
        .as_ref()
        .and_then(|d| d.login.as_deref())
        .map(str::to_lowercase)
}

/// Above this many users changed at once, a refresh reloads everything.
const BULK_RELOAD: usize = 1000;

impl Index {
    fn next_generation(&self) -> u64 {
        self.generations.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Loads everything. The change-feed position is read first, so a change
    /// committed during the load is applied again by the next refresh
    /// rather than missed.
    pub async fn load(store: &dyn Store) -> Result<Index, StoreError> {
        let index = Index::default();
        index.seq.store(store.latest_change_seq().await?, Ordering::Release);
        for user in store.load_all_users().await? {
            index.put_user(user);
        }
        for record in store.load_all_secrets().await? {
            index.tags_by_user.entry(record.user_id).or_default().push(record.tag);
            index.tags.insert(record.tag, Arc::new(record));
        }
        let settings = store.get_settings().await?;
        index
            .allow_app_passwords
            .store(settings.allow_app_passwords, Ordering::Release);
        index
            .settings_generation
            .store(index.next_generation(), Ordering::Release);
        Ok(index)
    }

    fn put_user(&self, user: User) -> Arc<UserEntry> {
        let entry = Arc::new(UserEntry {
            user,
            generation: self.next_generation(),
        });
        if let Some(old) = self.users_by_id.get(&entry.user.id).map(|e| Arc::clone(&e)) {
            self.forget_names(&old);
        }
        self.users_by_upn
            .insert(entry.user.upn.as_str().to_owned(), Arc::clone(&entry));
        if let Some(login) = login_key(&entry.user) {
            self.users_by_login.insert(login, Arc::clone(&entry));
        }
        self.users_by_id.insert(entry.user.id, Arc::clone(&entry));
        entry
    }

    /// Removes the UPN and login mappings that still point at this entry
    /// (a rename may have handed a name to another user since).
    fn forget_names(&self, old: &Arc<UserEntry>) {
        self.users_by_upn
            .remove_if(old.user.upn.as_str(), |_, e| e.user.id == old.user.id);
        if let Some(login) = login_key(&old.user) {
            self.users_by_login.remove_if(&login, |_, e| e.user.id == old.user.id);
        }
    }

    fn put_secrets(&self, user: UserId, records: Vec<AppPasswordSecretRecord>) {
        if let Some((_, old)) = self.tags_by_user.remove(&user) {
            for tag in old {
                self.tags.remove(&tag);
            }
        }
        let tags: Vec<[u8; 32]> = records.iter().map(|r| r.tag).collect();
        for record in records {
            self.tags.insert(record.tag, Arc::new(record));
        }
        if !tags.is_empty() {
            self.tags_by_user.insert(user, tags);
        }
    }

    /// Applies the changes committed since the last refresh.
    pub async fn refresh(&self, store: &dyn Store) -> Result<Refreshed, StoreError> {
        let since = self.seq.load(Ordering::Acquire);
        let changes: Vec<Change> = store.changes_since(since).await?;
        let Some(last) = changes.last().map(|c| c.seq) else {
            return Ok(Refreshed::default());
        };
        let mut refreshed = Refreshed::default();
        // A change naming no user is about the settings, or (a copied
        // store, a kind a newer fedgate wrote) about everything at once.
        let mut reload = false;
        for change in &changes {
            match change.user_id {
                Some(id) => {
                    refreshed.users.insert(id);
                }
                None => {
                    refreshed.everything = true;
                    reload |= change.kind != ChangeKind::SettingsChanged;
                }
            }
        }
        if refreshed.everything {
            let settings = store.get_settings().await?;
            self.allow_app_passwords
                .store(settings.allow_app_passwords, Ordering::Release);
            self.settings_generation
                .store(self.next_generation(), Ordering::Release);
        }
        if reload || refreshed.users.len() > BULK_RELOAD {
            // A copied store, or a sync pass that created or changed
            // thousands of users: one read of everything beats a query pair
            // per user.
            self.reload_all(store).await?;
            refreshed.everything = true;
            self.seq.store(last, Ordering::Release);
            return Ok(refreshed);
        }
        for id in &refreshed.users {
            match store.get_user(*id).await? {
                Some(user) => {
                    let secrets = store.load_user_secrets(*id).await?;
                    // Tags first: a request that sees the user's new
                    // generation must also see the new set of tags, or it
                    // could verify a just-revoked app password and cache it
                    // under the new generation.
                    self.put_secrets(*id, secrets);
                    self.put_user(user);
                }
                None => {
                    if let Some((_, entry)) = self.users_by_id.remove(id) {
                        self.forget_names(&entry);
                    }
                    self.put_secrets(*id, Vec::new());
                }
            }
        }
        self.seq.store(last, Ordering::Release);
        Ok(refreshed)
    }

    async fn reload_all(&self, store: &dyn Store) -> Result<(), StoreError> {
        let users = store.load_all_users().await?;
        let mut secrets: std::collections::HashMap<UserId, Vec<AppPasswordSecretRecord>> =
            std::collections::HashMap::new();
        for record in store.load_all_secrets().await? {
            secrets.entry(record.user_id).or_default().push(record);
        }
        for user in users {
            self.put_secrets(user.id, secrets.remove(&user.id).unwrap_or_default());
            self.put_user(user);
        }
        Ok(())
    }

    pub fn user_by_upn(&self, upn: &str) -> Option<Arc<UserEntry>> {
        self.users_by_upn.get(upn).map(|e| Arc::clone(&e))
    }

    /// A federated user by login name, compared case-insensitively.
    pub fn user_by_login(&self, login: &str) -> Option<Arc<UserEntry>> {
        self.users_by_login.get(&login.to_lowercase()).map(|e| Arc::clone(&e))
    }

    pub fn user_by_id(&self, id: UserId) -> Option<Arc<UserEntry>> {
        self.users_by_id.get(&id).map(|e| Arc::clone(&e))
    }

    pub fn app_password_by_tag(&self, tag: &[u8; 32]) -> Option<Arc<AppPasswordSecretRecord>> {
        self.tags.get(tag).map(|e| Arc::clone(&e))
    }

    pub fn allow_app_passwords(&self) -> bool {
        self.allow_app_passwords.load(Ordering::Acquire)
    }

    pub fn settings_generation(&self) -> u64 {
        self.settings_generation.load(Ordering::Acquire)
    }

    pub fn user_count(&self) -> usize {
        self.users_by_id.len()
    }
}
