//! The directory's side of push sync: persistent searches through which
//! the directory tells of changes as they happen.
//!
//! - OpenLDAP (`syncprov`): one RFC 4533 `refreshAndPersist` search. The
//!   refresh stage brings fedgate up to date from a cookie (or from
//!   nothing: every entry), the persist stage then reports each add,
//!   modify, rename (a modify under the new DN) and delete, with the
//!   entry's `entryUUID`.
//! - Active Directory: change notifications (1.2.840.113556.1.4.528) on
//!   the users' base (subtree) and on `CN=Deleted Objects` (one level,
//!   with Show Deleted). A notification says only that an object changed;
//!   an incremental `uSNChanged` pass then reads what.
//!
//! The control parsers of ldap3 panic on a value they cannot decode; a
//! server sending one ends the search with an error, never a thread.

use std::panic::AssertUnwindSafe;

use ldap3::controls::{
    parse_syncinfo, EntryState, RawControl, RefreshMode, SyncDone, SyncInfo, SyncRequest, SyncState,
};
use ldap3::{Scope, SearchStream};

use super::{attribute, construct, domain_root, rc, show_deleted, SyncSession};
use crate::directory::DirectoryError;
use crate::telemetry;

/// RFC 4533's sync request control, which `syncprov` advertises.
pub const SYNC_REQUEST_OID: &str = "1.3.6.1.4.1.4203.1.9.1.1";
/// AD's change notification control.
pub const NOTIFICATION_OID: &str = "1.2.840.113556.1.4.528";
const SYNC_STATE_OID: &str = "1.3.6.1.4.1.4203.1.9.1.2";
const SYNC_DONE_OID: &str = "1.3.6.1.4.1.4203.1.9.1.3";
/// RFC 4533 `e-syncRefreshRequired`: the cookie is too old, start over.
const SYNC_REFRESH_REQUIRED: u32 = 4096;

/// How the directory can push changes, read from the root DSE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushMethod {
    /// RFC 4533 content synchronisation.
    Syncrepl,
    /// AD change notifications.
    Notification,
}

impl PushMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            PushMethod::Syncrepl => "syncrepl",
            PushMethod::Notification => "notification",
        }
    }

    /// The method a server advertising `controls` supports; AD's
    /// notifications first (AD does not implement RFC 4533).
    pub fn of(controls: &[String]) -> Option<PushMethod> {
        let has = |oid: &str| controls.iter().any(|c| c.trim() == oid);
        if has(NOTIFICATION_OID) {
            Some(PushMethod::Notification)
        } else if has(SYNC_REQUEST_OID) {
            Some(PushMethod::Syncrepl)
        } else {
            None
        }
    }
}

/// One thing an RFC 4533 search reported.
#[derive(Debug)]
pub enum SyncEvent {
    /// An entry added or changed (a rename too), with its attributes.
    Changed {
        uuid: String,
        entry: ldap3::SearchEntry,
        added: bool,
    },
    /// An entry unchanged since the cookie (refresh stage, present phase).
    Present { uuid: String },
    /// An entry deleted, or no longer matching the search.
    Deleted { uuid: String },
    /// Many entries at once (`syncIdSet`): deleted, or else present.
    IdSet { uuids: Vec<String>, deleted: bool },
    /// Where a later search resumes, once what came before is applied.
    Cookie(Vec<u8>),
    /// The end of a refresh phase. `present`: it was a present phase
    /// (entries not reported present or changed are gone); `done`: the
    /// refresh stage is over and the persist stage begins.
    PhaseEnd { present: bool, done: bool },
}

/// Why an RFC 4533 search ended.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The cookie cannot be resumed from: search again without one.
    #[error("the directory needs a refresh from scratch (e-syncRefreshRequired)")]
    RefreshRequired,
    #[error(transparent)]
    Directory(#[from] DirectoryError),
}

/// An open RFC 4533 `refreshAndPersist` search.
pub struct SyncStream {
    stream: SearchStream<'static, String, Vec<String>>,
    server: String,
    /// The newest cookie that came with an event, not yet taken.
    pending_cookie: Option<Vec<u8>>,
}

/// An open set of AD change notification searches.
pub struct NotificationStream {
    streams: Vec<SearchStream<'static, String, Vec<String>>>,
    server: String,
    /// When the domain's root is watched for a `base_dn` below it: that
    /// base ([`dn_key`]), outside which the users' stream is ignored.
    within: Option<String>,
}

/// What an AD change notification says about the object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotifiedKind {
    Add,
    Modify,
    Delete,
}

impl SyncSession<'_> {
    /// The root DSE's `supportedControl` values.
    pub async fn supported_controls(&mut self) -> Result<Vec<String>, DirectoryError> {
        telemetry::directory_operation("search");
        let result = self
            .ldap
            .with_timeout(self.directory.config.timeout)
            .search("", Scope::Base, "(objectClass=*)", ["supportedControl"])
            .await
            .and_then(|r| r.success())
            .map_err(|e| self.unavailable(e.to_string()))?;
        Ok(result
            .0
            .into_iter()
            .filter(|e| !e.is_ref())
            .filter_map(construct)
            .flat_map(|e| {
                e.attrs
                    .into_iter()
                    .filter(|(k, _)| k.eq_ignore_ascii_case("supportedControl"))
                    .flat_map(|(_, v)| v)
            })
            .collect())
    }

    /// A root DSE read that must be answered within `directory.timeout`:
    /// TCP alone cannot tell a server that stopped answering (paused,
    /// wedged) from one with nothing to say.
    pub async fn heartbeat(&mut self) -> Result<(), DirectoryError> {
        telemetry::directory_operation("search");
        self.ldap
            .with_timeout(self.directory.config.timeout)
            .search("", Scope::Base, "(objectClass=*)", ["1.1"])
            .await
            .and_then(|r| r.success())
            .map(|_| ())
            .map_err(|e| self.unavailable(format!("no answer to a heartbeat: {e}")))
    }

    /// Starts the RFC 4533 search over the users (`user_filter` with any
    /// value, under `base_dn`), resuming from `cookie` when given.
    pub async fn content_sync(
        &mut self,
        cookie: Option<Vec<u8>>,
        attributes: Vec<String>,
    ) -> Result<SyncStream, DirectoryError> {
        let config = &self.directory.config;
        let control = RawControl::from(SyncRequest {
            mode: RefreshMode::RefreshAndPersist,
            cookie,
            reload_hint: false,
        });
        let mut ldap = self.ldap.clone();
        ldap.with_controls(vec![RawControl { crit: true, ..control }]);
        telemetry::directory_operation("search");
        let stream = ldap
            .streaming_search(
                &config.base_dn,
                Scope::Subtree,
                &config.user_filter.render_any(),
                attributes,
            )
            .await
            .map_err(|e| self.unavailable(e.to_string()))?;
        Ok(SyncStream {
            stream,
            server: self.server.clone(),
            pending_cookie: None,
        })
    }

    /// Of these entries (by `entryUUID`), those `disabled_filter` matches:
    /// one search, however many.
    pub async fn disabled_among(
        &mut self,
        uuids: &[String],
    ) -> Result<std::collections::HashSet<String>, DirectoryError> {
        let mut disabled = std::collections::HashSet::new();
        let Some(filter) = &self.directory.config.disabled_filter else {
            return Ok(disabled);
        };
        let filter = filter.render_any();
        let page_size = 500;
        for chunk in uuids.chunks(200) {
            let any: String = chunk
                .iter()
                .map(|u| format!("(entryUUID={})", ldap3::ldap_escape(u.as_str())))
                .collect();
            let base = self.directory.config.base_dn.clone();
            let wanted = format!("(&{filter}(|{any}))");
            self.scan_under(&base, &wanted, &["entryUUID".to_owned()], page_size, Vec::new(), |e| {
                if let Some(uuid) = attribute(&e, "entryUUID") {
                    disabled.insert(uuid.to_ascii_lowercase());
                }
            })
            .await?;
        }
        Ok(disabled)
    }

    /// Starts AD's change notifications: on the users' base (subtree) and,
    /// when the account may read it, on `CN=Deleted Objects` (one level,
    /// Show Deleted), where deleted users go. `false` in the second place
    /// when deletions are not notified (they are still found by the
    /// incremental passes notifications start, when tombstones are
    /// readable, and by full passes).
    pub async fn notifications(&mut self) -> Result<(NotificationStream, bool), DirectoryError> {
        let config = &self.directory.config;
        let attributes = vec!["uSNCreated".to_owned(), "uSNChanged".to_owned(), "isDeleted".to_owned()];
        let base = config.base_dn.clone();
        let root = domain_root(&base);
        // Windows takes a subtree notification only on a naming context's
        // root (ERROR_DS_SUBTREE_NOTIFY_NOT_NC_HEAD otherwise): for a base
        // below it, the domain's root is watched and the rest ignored.
        let (watched, within) = match &root {
            Some(root) if dn_key(root) != dn_key(&base) => (root.clone(), Some(dn_key(&self.server_dn(&base).await?))),
            _ => (base.clone(), None),
        };
        let users = self
            .notification(&watched, Scope::Subtree, false, attributes.clone())
            .await?;
        let mut streams = vec![users];
        let mut deletions = false;
        if let Some(root) = root {
            let container = format!("CN=Deleted Objects,{root}");
            match self.notification(&container, Scope::OneLevel, true, attributes).await {
                Ok(mut stream) => {
                    // A refused notification ends at once with its result;
                    // an accepted one stays open. Wait briefly to tell.
                    match tokio::time::timeout(std::time::Duration::from_millis(200), stream.next()).await {
                        Err(_) => {
                            streams.push(stream);
                            deletions = true;
                        }
                        Ok(Ok(Some(_))) => {
                            streams.push(stream);
                            deletions = true;
                        }
                        Ok(Ok(None)) => {
                            let result = stream.finish().await;
                            tracing::debug!(container = %container, rc = result.rc, text = %result.text, "no change notifications on the deleted objects");
                        }
                        Ok(Err(err)) => {
                            tracing::debug!(container = %container, error = %err, "no change notifications on the deleted objects")
                        }
                    }
                }
                Err(err) => {
                    tracing::debug!(container = %container, error = %err, "no change notifications on the deleted objects")
                }
            }
        }
        Ok((
            NotificationStream {
                streams,
                server: self.server.clone(),
                within,
            },
            deletions,
        ))
    }

    /// `dn` as the server spells it (its own case, spacing and escapes),
    /// for comparing with the DNs notifications carry.
    async fn server_dn(&mut self, dn: &str) -> Result<String, DirectoryError> {
        telemetry::directory_operation("search");
        let result = self
            .ldap
            .with_timeout(self.directory.config.timeout)
            .search(dn, Scope::Base, "(objectClass=*)", ["1.1"])
            .await
            .and_then(|r| r.success())
            .map_err(|e| self.unavailable(format!("cannot read base_dn {dn}: {e}")))?;
        Ok(result
            .0
            .into_iter()
            .next()
            .and_then(construct)
            .map_or_else(|| dn.to_owned(), |e| e.dn))
    }

    async fn notification(
        &mut self,
        base: &str,
        scope: Scope,
        deleted: bool,
        attributes: Vec<String>,
    ) -> Result<SearchStream<'static, String, Vec<String>>, DirectoryError> {
        let mut controls = vec![RawControl {
            ctype: NOTIFICATION_OID.into(),
            crit: true,
            val: None,
        }];
        if deleted {
            controls.push(show_deleted());
        }
        let mut ldap = self.ldap.clone();
        ldap.with_controls(controls);
        // AD accepts only this filter on a notification search.
        telemetry::directory_operation("search");
        ldap.streaming_search(base, scope, "(objectClass=*)", attributes)
            .await
            .map_err(|e| self.unavailable(e.to_string()))
    }

    fn unavailable(&self, reason: String) -> DirectoryError {
        DirectoryError::Unavailable {
            server: self.server.clone(),
            reason,
        }
    }
}

impl SyncStream {
    /// The next event; `Ok(None)` never comes from a healthy server in the
    /// persist stage, so the search ending is an error too.
    pub async fn next(&mut self) -> Result<SyncEvent, SyncError> {
        loop {
            let entry = match self.stream.next().await {
                Ok(Some(entry)) => entry,
                Ok(None) => return Err(self.ended().await),
                Err(err) => return Err(self.unavailable(err.to_string()).into()),
            };
            if entry.is_ref() {
                continue;
            }
            if entry.is_intermediate() {
                let info = std::panic::catch_unwind(AssertUnwindSafe(|| parse_syncinfo(entry)))
                    .map_err(|_| self.unavailable("malformed sync info message".into()))?;
                return Ok(match info {
                    SyncInfo::NewCookie(cookie) => SyncEvent::Cookie(cookie),
                    SyncInfo::RefreshDelete { cookie, refresh_done } => self.phase_end(cookie, false, refresh_done),
                    SyncInfo::RefreshPresent { cookie, refresh_done } => self.phase_end(cookie, true, refresh_done),
                    SyncInfo::SyncIdSet {
                        cookie,
                        refresh_deletes,
                        sync_uuids,
                    } => {
                        if let Some(cookie) = cookie {
                            self.pending_cookie = Some(cookie);
                        }
                        SyncEvent::IdSet {
                            uuids: sync_uuids.iter().map(|u| uuid_string(u)).collect(),
                            deleted: refresh_deletes,
                        }
                    }
                });
            }
            let state = entry
                .1
                .iter()
                .find(|c| c.1.ctype == SYNC_STATE_OID)
                .map(|c| {
                    std::panic::catch_unwind(AssertUnwindSafe(|| c.1.parse::<SyncState>()))
                        .map_err(|_| self.unavailable("malformed sync state control".into()))
                })
                .transpose()?;
            let Some(state) = state else {
                // Not part of the synchronisation (a server that ignored
                // the control would have refused it, being critical).
                continue;
            };
            if let Some(cookie) = state.cookie {
                self.pending_cookie = Some(cookie);
            }
            let uuid = uuid_string(&state.entry_uuid);
            return Ok(match state.state {
                EntryState::Present => SyncEvent::Present { uuid },
                EntryState::Delete => SyncEvent::Deleted { uuid },
                EntryState::Add | EntryState::Modify => {
                    let added = matches!(state.state, EntryState::Add);
                    let entry = construct(entry).ok_or_else(|| self.unavailable("malformed search entry".into()))?;
                    SyncEvent::Changed { uuid, entry, added }
                }
            });
        }
    }

    /// A cookie that came with the last event (on an entry, or a
    /// `syncIdSet`), taken once.
    pub fn take_cookie(&mut self) -> Option<Vec<u8>> {
        self.pending_cookie.take()
    }

    fn phase_end(&mut self, cookie: Option<Vec<u8>>, present: bool, done: bool) -> SyncEvent {
        if let Some(cookie) = cookie {
            self.pending_cookie = Some(cookie);
        }
        SyncEvent::PhaseEnd { present, done }
    }

    async fn ended(&mut self) -> SyncError {
        let result = self.stream.finish().await;
        if result.rc == SYNC_REFRESH_REQUIRED {
            return SyncError::RefreshRequired;
        }
        let done = result
            .ctrls
            .iter()
            .find(|c| c.1.ctype == SYNC_DONE_OID)
            .and_then(|c| std::panic::catch_unwind(AssertUnwindSafe(|| c.1.parse::<SyncDone>())).ok());
        let reason = match result.rc {
            rc::SUCCESS => "the server ended the persistent search".to_owned(),
            rc::SIZE_LIMIT_EXCEEDED => "the sync search hit the server's size limit: give the service account \
                                        `limits dn.exact=\"<bind_dn>\" size=unlimited` in slapd.conf"
                .to_owned(),
            code => format!("the sync search ended with result code {code}: {}", result.text),
        };
        if let Some(done) = done {
            tracing::debug!(refresh_deletes = done.refresh_deletes, "sync done control received");
        }
        self.unavailable(reason).into()
    }

    /// Ends the search (abandons it on the server) and the connection.
    pub async fn close(mut self) {
        let id = self.stream.ldap_handle().last_id();
        telemetry::directory_operation("abandon");
        let _ = self.stream.ldap_handle().abandon(id).await;
        if self.stream.ldap_handle().unbind().await.is_ok() {
            telemetry::directory_operation("unbind");
        }
    }

    fn unavailable(&self, reason: String) -> DirectoryError {
        DirectoryError::Unavailable {
            server: self.server.clone(),
            reason,
        }
    }
}

/// A DN compared as AD compares them for this purpose: RDNs trimmed,
/// case folded. Both sides come from the server (see
/// [`SyncSession::server_dn`]), so its spelling is the same on both.
fn dn_key(dn: &str) -> String {
    dn.split(',')
        .map(|rdn| rdn.trim().to_lowercase())
        .collect::<Vec<_>>()
        .join(",")
}

/// Whether the DN `key` is `base` or under it (both [`dn_key`]s).
fn is_within(key: &str, base: &str) -> bool {
    key == base || key.strip_suffix(base).is_some_and(|head| head.ends_with(','))
}

impl NotificationStream {
    /// Waits for the next notification.
    pub async fn next(&mut self) -> Result<NotifiedKind, DirectoryError> {
        use futures_util::future::select_all;
        loop {
            let (entry, index, _) = select_all(self.streams.iter_mut().map(|s| Box::pin(s.next()))).await;
            let entry = match entry {
                Ok(Some(entry)) => entry,
                Ok(None) => {
                    let result = self.streams[index].finish().await;
                    return Err(self.unavailable(format!(
                        "the server ended a change notification search (result code {}: {})",
                        result.rc, result.text
                    )));
                }
                Err(err) => return Err(self.unavailable(err.to_string())),
            };
            if entry.is_ref() || entry.is_intermediate() {
                continue;
            }
            let Some(entry) = construct(entry) else {
                return Err(self.unavailable("malformed notification entry".into()));
            };
            // The users' stream is the first; tombstones have left the base.
            if index == 0
                && self
                    .within
                    .as_deref()
                    .is_some_and(|base| !is_within(&dn_key(&entry.dn), base))
            {
                continue;
            }
            let deleted = attribute(&entry, "isDeleted").is_some_and(|v| v.eq_ignore_ascii_case("TRUE"));
            let created = attribute(&entry, "uSNCreated");
            let changed = attribute(&entry, "uSNChanged");
            return Ok(if deleted {
                NotifiedKind::Delete
            } else if created.is_some() && created == changed {
                NotifiedKind::Add
            } else {
                NotifiedKind::Modify
            });
        }
    }

    pub async fn close(mut self) {
        for stream in &mut self.streams {
            let id = stream.ldap_handle().last_id();
            telemetry::directory_operation("abandon");
            let _ = stream.ldap_handle().abandon(id).await;
        }
        if let Some(stream) = self.streams.first_mut() {
            if stream.ldap_handle().unbind().await.is_ok() {
                telemetry::directory_operation("unbind");
            }
        }
    }

    fn unavailable(&self, reason: String) -> DirectoryError {
        DirectoryError::Unavailable {
            server: self.server.clone(),
            reason,
        }
    }
}

/// An `entryUUID` as RFC 4533 sends it (16 bytes, RFC 4122 order) in the
/// text form slapd gives the attribute (lowercase 8-4-4-4-12), so it
/// matches the anchor stored from a search.
pub fn uuid_string(bytes: &[u8]) -> String {
    if bytes.len() != 16 {
        return bytes.iter().map(|b| format!("{b:02x}")).collect();
    }
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_uuids_print_as_slapd_prints_them() {
        let bytes = [
            0x3f, 0x1b, 0x6a, 0x52, 0x9c, 0x0e, 0x10, 0x3f, 0x8a, 0x6b, 0x1f, 0x2e, 0x4d, 0x5c, 0x6b, 0x7a,
        ];
        assert_eq!(uuid_string(&bytes), "3f1b6a52-9c0e-103f-8a6b-1f2e4d5c6b7a");
        assert_eq!(uuid_string(&[0xab, 0x01]), "ab01");
    }

    #[test]
    fn the_method_follows_the_advertised_controls() {
        let controls = |list: &[&str]| list.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            PushMethod::of(&controls(&["1.2.840.113556.1.4.319", SYNC_REQUEST_OID])),
            Some(PushMethod::Syncrepl)
        );
        assert_eq!(
            PushMethod::of(&controls(&[NOTIFICATION_OID, "1.2.840.113556.1.4.841"])),
            Some(PushMethod::Notification)
        );
        assert_eq!(PushMethod::of(&controls(&["1.2.840.113556.1.4.319"])), None);
    }

    #[test]
    fn notifications_under_the_base_are_told_from_the_rest_of_the_domain() {
        let base = dn_key("OU=Staff, DC=corp,DC=Example,DC=com");
        assert_eq!(base, "ou=staff,dc=corp,dc=example,dc=com");
        for dn in [
            "CN=alice,OU=Staff,DC=corp,DC=example,DC=com",
            "cn=bob,ou=Team,ou=staff,dc=corp,dc=example,dc=com",
            "OU=Staff,DC=corp,DC=example,DC=com",
        ] {
            assert!(is_within(&dn_key(dn), &base), "{dn}");
        }
        for dn in [
            "CN=carol,CN=Users,DC=corp,DC=example,DC=com",
            "CN=dave,OU=OldStaff,DC=corp,DC=example,DC=com",
            "DC=corp,DC=example,DC=com",
        ] {
            assert!(!is_within(&dn_key(dn), &base), "{dn}");
        }
    }
}
