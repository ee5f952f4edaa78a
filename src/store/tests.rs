use std::sync::Arc;

use super::*;

#[path = "pg_cluster.rs"]
mod pg_cluster;
use crate::model::{
    AppPasswordLimits, CredentialKind, DirectoryAttributes, FederatedUser, ManualClock, Reason, UserSource,
};

const T0: i64 = 1_700_000_000_000;

fn upn(s: &str) -> Upn {
    Upn::parse(s).unwrap()
}

/// A directory user as sign-in or sync reports them.
fn federated(upn: &Upn, enabled: bool) -> FederatedUser {
    let login = upn.local_part().to_owned();
    FederatedUser {
        upn: upn.clone(),
        enabled,
        attributes: DirectoryAttributes {
            dn: format!("uid={login},ou=people,dc=example,dc=com"),
            anchor: Some(format!("anchor-{login}")),
            login: Some(login),
            display_name: None,
            mail: Some(upn.to_string()),
            groups: Vec::new(),
            password_changed: None,
        },
    }
}

/// A fresh, empty store of one backend, and its clock: what every test of
/// the shared suite starts from.
struct Fixture {
    store: Arc<dyn Store>,
    clock: Arc<ManualClock>,
    url: String,
    access: StoreAccess,
    /// Holds the SQLite file's directory for the test's length.
    _dir: Option<tempfile::TempDir>,
}

impl Fixture {
    async fn sqlite() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("fedgate.db").display());
        Fixture::open(url, StoreAccess::default(), Some(dir)).await
    }

    /// A new database on the test run's private PostgreSQL cluster, opened
    /// as fedgate opens one: the password from `[store] password_file`.
    async fn postgres() -> Fixture {
        let cluster = pg_cluster::shared();
        let database = cluster.create_database().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let password_file = dir.path().join("store-password");
        std::fs::write(&password_file, format!("{}\n", cluster.password())).unwrap();
        let access = StoreAccess {
            password_file: Some(password_file),
            ca_file: None,
        };
        Fixture::open(cluster.url(&database), access, Some(dir)).await
    }

    async fn open(url: String, access: StoreAccess, dir: Option<tempfile::TempDir>) -> Fixture {
        let clock = Arc::new(ManualClock::new(T0));
        let store = open_with(&url, &access, clock.clone(), OpenMode::CreateIfMissing)
            .await
            .unwrap();
        Fixture {
            store,
            clock,
            url,
            access,
            _dir: dir,
        }
    }

    fn parts(&self) -> (Arc<dyn Store>, Arc<ManualClock>) {
        (self.store.clone(), self.clock.clone())
    }

    /// Another handle on the same store, with its own connections: a
    /// second process or node.
    async fn open_again(&self) -> Arc<dyn Store> {
        open_with(&self.url, &self.access, self.clock.clone(), OpenMode::Existing)
            .await
            .unwrap()
    }
}

/// Takes schema 15 (push sync) back out of a SQLite store, for tests that
/// rebuild what an older fedgate left.
pub(crate) const UNDO_SYNC_PUSH: &str = "ALTER TABLE sync_state DROP COLUMN push_cookie;
     ALTER TABLE sync_state DROP COLUMN push_cookie_server;
     ALTER TABLE sync_state DROP COLUMN push_node;
     ALTER TABLE sync_state DROP COLUMN push_method;
     ALTER TABLE sync_state DROP COLUMN push_server;
     ALTER TABLE sync_state DROP COLUMN push_connected;
     ALTER TABLE sync_state DROP COLUMN push_since;
     ALTER TABLE sync_state DROP COLUMN push_last_change_at;
     ALTER TABLE sync_state DROP COLUMN push_updated_at;
     ALTER TABLE sync_state DROP COLUMN push_error;";

fn new_app_password(user: UserId, name: &str, n: u32) -> NewAppPassword {
    let mut tag = [0u8; 32];
    tag[..4].copy_from_slice(&n.to_be_bytes());
    tag[4..8].copy_from_slice(&(user.0 as u32).to_be_bytes());
    NewAppPassword {
        user_id: user,
        name: AppPasswordName::parse(name).unwrap(),
        tag,
        hash: format!("$argon2id$fake-{n}"),
        limits: AppPasswordLimits::default(),
    }
}

fn some_limits() -> AppPasswordLimits {
    AppPasswordLimits {
        scope: vec!["dav".into(), "mail".into()],
        expires_at: Some(T0 + 90 * 24 * 3600 * 1000),
        networks: vec!["10.0.0.0/8".parse().unwrap(), "2001:db8::/32".parse().unwrap()],
    }
}

async fn kinds_since(store: &dyn Store, seq: i64) -> Vec<(ChangeKind, Option<UserId>)> {
    store
        .changes_since(seq)
        .await
        .unwrap()
        .into_iter()
        .map(|c| (c.kind, c.user_id))
        .collect()
}

fn audit(at: i64, upn_given: &str, user: Option<UserId>, success: bool) -> AuditRecord {
    AuditRecord {
        at,
        upn_given: upn_given.into(),
        user_id: user,
        route: "/Microsoft-Server-ActiveSync".into(),
        credential: CredentialKind::Password,
        app_password_name: None,
        client_ip: "192.0.2.10".into(),
        user_agent: "Apple-iPhone/2102".into(),
        success,
        reason: if success {
            Reason::Password
        } else {
            Reason::BadCredentials
        },
        policy: None,
        count: 1,
    }
}

async fn cloud_users_are_created_and_found_case_insensitively(f: Fixture) {
    let (store, clock) = f.parts();
    let alice = store
        .create_cloud_user(&upn("Alice@Corp.Example.com"), MfaState::Enabled, Some("$h"))
        .await
        .unwrap();
    assert_eq!(alice.upn.as_str(), "alice@corp.example.com");
    assert_eq!(alice.source, UserSource::Cloud);
    assert!(alice.enabled && !alice.deleted);
    assert_eq!(alice.mfa_state, MfaState::Enabled);
    assert_eq!(alice.created_at, T0);
    assert_eq!(alice.registered_at, None);
    assert_eq!(alice.password_hash.as_deref(), Some("$h"));

    let found = store.get_user_by_upn(&upn("ALICE@corp.example.com")).await.unwrap();
    assert_eq!(found.as_ref(), Some(&alice));
    assert_eq!(store.get_user(alice.id).await.unwrap(), Some(alice.clone()));
    assert_eq!(store.get_user(UserId(999)).await.unwrap(), None);
    assert_eq!(store.get_user_by_upn(&upn("bob@corp.example.com")).await.unwrap(), None);

    clock.advance(1);
    let err = store
        .create_cloud_user(&upn("alice@corp.example.com"), MfaState::Disabled, None)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::UserExists { .. }));
    assert!(err.to_string().contains("alice@corp.example.com"));
}

async fn list_filters_by_state_and_hides_deleted_users(f: Fixture) {
    let (store, _) = f.parts();
    for (name, state) in [
        ("carol@x.example", MfaState::Enforced),
        ("alice@x.example", MfaState::Disabled),
        ("bob@x.example", MfaState::Enforced),
        ("dave@x.example", MfaState::Enforced),
    ] {
        store.create_cloud_user(&upn(name), state, None).await.unwrap();
    }
    store.mark_deleted(&upn("dave@x.example")).await.unwrap();

    let all: Vec<String> = store
        .list_users(None)
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.upn.to_string())
        .collect();
    assert_eq!(all, ["alice@x.example", "bob@x.example", "carol@x.example"]);
    let enforced: Vec<String> = store
        .list_users(Some(MfaState::Enforced))
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.upn.to_string())
        .collect();
    assert_eq!(enforced, ["bob@x.example", "carol@x.example"]);

    let everyone = store.load_all_users().await.unwrap();
    assert_eq!(everyone.len(), 4);
    assert!(everyone.iter().any(|u| u.deleted));
}

async fn federated_upsert_creates_updates_and_leaves_alone(f: Fixture) {
    let (store, _) = f.parts();
    let bob = upn("bob@corp.example.com");
    let seq = store.latest_change_seq().await.unwrap();

    let created = store.upsert_federated_user(&federated(&bob, true)).await.unwrap();
    assert_eq!(created.outcome, UpsertOutcome::Created);
    assert_eq!(created.user.source, UserSource::Federated);
    assert_eq!(created.user.mfa_state, MfaState::Disabled);
    let id = created.user.id;

    let same = store.upsert_federated_user(&federated(&bob, true)).await.unwrap();
    assert_eq!(same.outcome, UpsertOutcome::Unchanged);

    let disabled = store.upsert_federated_user(&federated(&bob, false)).await.unwrap();
    assert_eq!(disabled.outcome, UpsertOutcome::Updated);
    assert!(!disabled.user.enabled);

    // A no-op writes no change: sync runs every minute over every user.
    assert_eq!(
        kinds_since(store.as_ref(), seq).await,
        [
            (ChangeKind::UserCreated, Some(id)),
            (ChangeKind::UserDisabled, Some(id)),
        ]
    );
}

async fn federated_upsert_does_not_take_over_a_cloud_user(f: Fixture) {
    let (store, _) = f.parts();
    let alice = upn("alice@corp.example.com");
    store
        .create_cloud_user(&alice, MfaState::Disabled, Some("$h"))
        .await
        .unwrap();
    let err = store.upsert_federated_user(&federated(&alice, true)).await.unwrap_err();
    assert!(matches!(err, StoreError::SourceConflict { .. }));
    assert!(err.to_string().contains("alice@corp.example.com"));
}

async fn federated_upsert_follows_a_rename_by_anchor(f: Fixture) {
    let (store, _) = f.parts();
    let bob = upn("bob@corp.example.com");
    let user = store.upsert_federated_user(&federated(&bob, true)).await.unwrap().user;
    store
        .create_app_password(&new_app_password(user.id, "phone", 1))
        .await
        .unwrap();
    let seq = store.latest_change_seq().await.unwrap();

    let mut renamed = federated(&upn("robert@corp.example.com"), true);
    renamed.attributes.anchor = Some("anchor-bob".into());
    let after = store.upsert_federated_user(&renamed).await.unwrap();
    assert_eq!(after.outcome, UpsertOutcome::Updated);
    assert_eq!(after.user.id, user.id);
    assert_eq!(after.user.upn.as_str(), "robert@corp.example.com");
    assert_eq!(after.user.directory.as_ref().unwrap().login.as_deref(), Some("robert"));
    assert_eq!(store.list_app_passwords(user.id).await.unwrap().len(), 1);
    assert!(store.get_user_by_upn(&bob).await.unwrap().is_none());
    assert_eq!(
        kinds_since(store.as_ref(), seq).await,
        [(ChangeKind::UserUpdated, Some(user.id))]
    );

    // A UPN that another user holds is refused, not merged.
    let carol = store
        .upsert_federated_user(&federated(&upn("carol@corp.example.com"), true))
        .await
        .unwrap()
        .user;
    let mut clash = federated(&upn("carol@corp.example.com"), true);
    clash.attributes.anchor = Some("anchor-bob".into());
    let err = store.upsert_federated_user(&clash).await.unwrap_err();
    assert!(
        matches!(err, StoreError::UpnTaken { holder, .. } if holder == carol.id),
        "{err}"
    );
}

async fn sync_lookups_find_users_by_anchor_or_upn_and_count_synced_ones(f: Fixture) {
    let (store, _) = f.parts();
    for name in ["a", "b", "c"] {
        store
            .upsert_federated_user(&federated(&upn(&format!("{name}@corp.example.com")), true))
            .await
            .unwrap();
    }
    store
        .create_cloud_user(&upn("cloud@corp.example.com"), MfaState::Disabled, None)
        .await
        .unwrap();
    store.mark_deleted(&upn("c@corp.example.com")).await.unwrap();
    assert_eq!(store.count_synced_users().await.unwrap(), 2);
    let found = store
        .users_matching(
            &["anchor-a", "anchor-zz"],
            &["b@corp.example.com", "a@corp.example.com"],
        )
        .await
        .unwrap();
    let mut names: Vec<&str> = found.iter().map(|u| u.upn.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["a@corp.example.com", "b@corp.example.com"]);
}

async fn deleted_users_lose_app_passwords_and_come_back_without_them(f: Fixture) {
    let (store, _) = f.parts();
    let bob = upn("bob@corp.example.com");
    let user = store.upsert_federated_user(&federated(&bob, true)).await.unwrap().user;
    store.set_mfa_state(&bob, MfaState::Enforced).await.unwrap();
    store.set_registered_at(&bob, T0 - 5).await.unwrap();
    store
        .create_app_password(&new_app_password(user.id, "phone", 1))
        .await
        .unwrap();

    let seq = store.latest_change_seq().await.unwrap();
    let deleted = store.mark_deleted(&bob).await.unwrap();
    assert!(deleted.deleted);
    assert_eq!(deleted.registered_at, None);
    assert!(store.list_app_passwords(user.id).await.unwrap().is_empty());
    assert!(store.load_all_secrets().await.unwrap().is_empty());
    assert_eq!(
        kinds_since(store.as_ref(), seq).await,
        [(ChangeKind::UserDeleted, Some(user.id))]
    );
    // Sync may report the deletion again.
    assert!(store.mark_deleted(&bob).await.unwrap().deleted);
    assert_eq!(kinds_since(store.as_ref(), seq).await.len(), 1);

    // Mutations on a deleted user say so.
    for err in [
        store.set_mfa_state(&bob, MfaState::Enabled).await.unwrap_err(),
        store.set_enabled(&bob, false).await.unwrap_err(),
        store.require_registration(&bob).await.unwrap_err(),
        store
            .create_app_password(&new_app_password(user.id, "laptop", 2))
            .await
            .unwrap_err(),
    ] {
        assert!(matches!(err, StoreError::UserDeleted { .. }), "{err}");
    }

    let back = store.upsert_federated_user(&federated(&bob, true)).await.unwrap();
    assert_eq!(back.outcome, UpsertOutcome::Updated);
    assert_eq!(back.user.id, user.id);
    assert!(!back.user.deleted);
    assert_eq!(back.user.mfa_state, MfaState::Enforced);
    assert!(store.list_app_passwords(user.id).await.unwrap().is_empty());
}

async fn a_deleted_upn_can_be_added_again_as_a_cloud_user(f: Fixture) {
    let (store, _) = f.parts();
    let carol = upn("carol@corp.example.com");
    let first = store
        .create_cloud_user(&carol, MfaState::Enforced, Some("$old"))
        .await
        .unwrap();
    store.mark_deleted(&carol).await.unwrap();
    let again = store
        .create_cloud_user(&carol, MfaState::Disabled, Some("$new"))
        .await
        .unwrap();
    assert_eq!(again.id, first.id);
    assert!(!again.deleted && again.enabled);
    assert_eq!(again.mfa_state, MfaState::Disabled);
    assert_eq!(again.password_hash.as_deref(), Some("$new"));
}

async fn unknown_users_are_named_in_errors(f: Fixture) {
    let (store, _) = f.parts();
    let ghost = upn("ghost@corp.example.com");
    for err in [
        store.set_mfa_state(&ghost, MfaState::Enabled).await.unwrap_err(),
        store.set_enabled(&ghost, true).await.unwrap_err(),
        store.mark_deleted(&ghost).await.unwrap_err(),
        store.require_registration(&ghost).await.unwrap_err(),
        store.set_registered_at(&ghost, T0).await.unwrap_err(),
        store.set_password_hash(&ghost, None).await.unwrap_err(),
    ] {
        assert!(matches!(err, StoreError::UnknownUser { .. }), "{err}");
        assert_eq!(err.to_string(), "no user ghost@corp.example.com");
    }
    for err in [
        store
            .create_app_password(&new_app_password(UserId(42), "phone", 1))
            .await
            .unwrap_err(),
        store.delete_app_password(UserId(42), "phone").await.unwrap_err(),
        store.revoke_app_passwords(UserId(42)).await.unwrap_err(),
    ] {
        assert!(matches!(err, StoreError::UnknownUserId { .. }), "{err}");
    }
}

async fn user_state_changes_write_the_change_feed(f: Fixture) {
    let (store, clock) = f.parts();
    let alice = upn("alice@corp.example.com");
    let id = store
        .create_cloud_user(&alice, MfaState::Disabled, None)
        .await
        .unwrap()
        .id;

    clock.advance(10);
    let user = store.set_mfa_state(&alice, MfaState::Enforced).await.unwrap();
    assert_eq!(user.mfa_state, MfaState::Enforced);
    // Setting the same state again writes nothing.
    store.set_mfa_state(&alice, MfaState::Enforced).await.unwrap();

    assert!(!store.set_enabled(&alice, false).await.unwrap().enabled);
    store.set_enabled(&alice, false).await.unwrap();
    assert!(store.set_enabled(&alice, true).await.unwrap().enabled);

    let user = store.set_registered_at(&alice, T0 + 5).await.unwrap();
    assert_eq!(user.registered_at, Some(T0 + 5));
    let user = store.require_registration(&alice).await.unwrap();
    assert_eq!(user.registered_at, None);
    assert_eq!(user.mfa_state, MfaState::Enforced);

    let user = store.set_password_hash(&alice, Some("$new")).await.unwrap();
    assert_eq!(user.password_hash.as_deref(), Some("$new"));

    let changes = store.changes_since(0).await.unwrap();
    let kinds: Vec<_> = changes.iter().map(|c| (c.kind.clone(), c.user_id)).collect();
    assert_eq!(
        kinds,
        [
            (ChangeKind::UserCreated, Some(id)),
            (ChangeKind::MfaStateChanged, Some(id)),
            (ChangeKind::UserDisabled, Some(id)),
            (ChangeKind::UserEnabled, Some(id)),
            (ChangeKind::Registered, Some(id)),
            (ChangeKind::RegistrationRequired, Some(id)),
            (ChangeKind::PasswordChanged, Some(id)),
        ]
    );
    assert_eq!(changes[0].at, T0);
    assert_eq!(changes[1].at, T0 + 10);
    assert!(changes.windows(2).all(|w| w[0].seq < w[1].seq));
    assert_eq!(store.latest_change_seq().await.unwrap(), changes.last().unwrap().seq);
    assert_eq!(
        store.changes_since(changes[4].seq).await.unwrap(),
        changes[5..].to_vec()
    );
}

async fn federated_users_have_no_fedgate_password(f: Fixture) {
    let (store, _) = f.parts();
    let bob = upn("bob@corp.example.com");
    store.upsert_federated_user(&federated(&bob, true)).await.unwrap();
    let err = store.set_password_hash(&bob, Some("$h")).await.unwrap_err();
    assert!(matches!(err, StoreError::NotCloudUser { .. }), "{err}");
}

async fn bulk_state_change_applies_every_line(f: Fixture) {
    let (store, _) = f.parts();
    for name in ["a@x.example", "b@x.example", "c@x.example"] {
        store
            .create_cloud_user(&upn(name), MfaState::Disabled, None)
            .await
            .unwrap();
    }
    let lines = StateLine::parse_csv(
        "upn,state\n\
         # rollout wave 1\n\
         A@x.example, enforced\n\
         \n\
         b@x.example,Enabled\n\
         c@x.example,disabled\n",
    );
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0].line, 3);
    let seq = store.latest_change_seq().await.unwrap();
    let applied = store.set_mfa_states(&lines).await.unwrap();
    assert_eq!(
        applied,
        BulkApplied {
            changed: 2,
            unchanged: 1
        }
    );
    let a = store.get_user_by_upn(&upn("a@x.example")).await.unwrap().unwrap();
    assert_eq!(a.mfa_state, MfaState::Enforced);
    assert_eq!(kinds_since(store.as_ref(), seq).await.len(), 2);
}

async fn bulk_state_change_is_all_or_nothing_and_reports_every_bad_line(f: Fixture) {
    let (store, _) = f.parts();
    for name in ["a@x.example", "b@x.example", "gone@x.example"] {
        store
            .create_cloud_user(&upn(name), MfaState::Disabled, None)
            .await
            .unwrap();
    }
    store.mark_deleted(&upn("gone@x.example")).await.unwrap();
    let seq = store.latest_change_seq().await.unwrap();

    let lines = StateLine::parse_csv(
        "a@x.example,enforced\n\
         nobody@x.example,enforced\n\
         b@x.example,required\n\
         not-a-upn,enabled\n\
         A@X.example,enabled\n\
         gone@x.example,enabled\n\
         b@x.example\n",
    );
    let err = store.set_mfa_states(&lines).await.unwrap_err();
    let StoreError::BulkRejected { errors } = &err else {
        panic!("expected BulkRejected, got {err}");
    };
    let report: Vec<(usize, &str)> = errors.iter().map(|e| (e.line, e.reason.as_str())).collect();
    assert_eq!(report.len(), 6, "{report:?}");
    assert_eq!(report[0], (2, "no user nobody@x.example"));
    assert_eq!(report[1].0, 3);
    assert!(report[1].1.contains("\"required\""), "{}", report[1].1);
    assert_eq!(report[2].0, 4);
    assert!(report[2].1.contains("not-a-upn"), "{}", report[2].1);
    assert_eq!(report[3], (5, "user a@x.example is already listed on line 1"));
    assert_eq!(report[4], (6, "user gone@x.example is deleted"));
    assert_eq!(report[5].0, 7);
    assert!(report[5].1.contains("already listed on line 3"), "{}", report[5].1);
    assert!(report[5].1.contains("MFA state \"\""), "{}", report[5].1);
    assert!(err
        .to_string()
        .starts_with("no change applied: 6 line(s) refused: line 2: "));

    // Line 1 was valid, but nothing was applied.
    let a = store.get_user_by_upn(&upn("a@x.example")).await.unwrap().unwrap();
    assert_eq!(a.mfa_state, MfaState::Disabled);
    assert!(kinds_since(store.as_ref(), seq).await.is_empty());
}

async fn bulk_import_creates_every_user_in_one_transaction_or_none(f: Fixture) {
    let (store, _) = f.parts();
    store
        .create_cloud_user(&upn("taken@x.example"), MfaState::Disabled, None)
        .await
        .unwrap();
    store
        .create_cloud_user(&upn("gone@x.example"), MfaState::Enforced, None)
        .await
        .unwrap();
    store.mark_deleted(&upn("gone@x.example")).await.unwrap();
    let seq = store.latest_change_seq().await.unwrap();

    let bad = StateLine::parse_csv(
        "upn,state\n\
         new@x.example,enforced\n\
         taken@x.example,enabled\n\
         not-a-upn,enabled\n\
         other@x.example,required\n\
         NEW@x.example\n",
    );
    let err = store.create_cloud_users(&bad).await.unwrap_err();
    let StoreError::BulkRejected { errors } = &err else {
        panic!("expected BulkRejected, got {err}");
    };
    let lines: Vec<usize> = errors.iter().map(|e| e.line).collect();
    assert_eq!(lines, [3, 4, 5, 6], "{errors:?}");
    assert_eq!(errors[0].reason, "user taken@x.example already exists");
    assert!(
        errors[3].reason.contains("already listed on line 2"),
        "{}",
        errors[3].reason
    );
    assert!(store.get_user_by_upn(&upn("new@x.example")).await.unwrap().is_none());
    assert!(kinds_since(store.as_ref(), seq).await.is_empty());

    // A deleted user's UPN may be imported: it comes back as a cloud user.
    let good = StateLine::parse_csv("new@x.example,enforced\ngone@x.example,\nthird@x.example,enabled\n");
    let created = store.create_cloud_users(&good).await.unwrap();
    let states: Vec<(&str, MfaState)> = created.iter().map(|u| (u.upn.as_str(), u.mfa_state)).collect();
    assert_eq!(
        states,
        [
            ("new@x.example", MfaState::Enforced),
            ("gone@x.example", MfaState::Disabled),
            ("third@x.example", MfaState::Enabled)
        ]
    );
    assert!(created.iter().all(|u| !u.deleted && u.source == UserSource::Cloud));
    assert_eq!(kinds_since(store.as_ref(), seq).await.len(), 3);
}

async fn admin_events_are_kept_newest_first_and_paged(f: Fixture) {
    let (store, _) = f.parts();
    for i in 0..5 {
        let event = AdminEvent {
            id: 0,
            at: 1_000 + i,
            actor: "token:ops".into(),
            client: Some("127.0.0.1:5000".into()),
            action: "user.add".into(),
            target: Some(format!("u{i}@x.example")),
            detail: serde_json::json!({"n": i}),
        };
        store.append_admin_event(&event).await.unwrap();
    }
    let newest = store.admin_events(2, None).await.unwrap();
    assert_eq!(newest.len(), 2);
    assert_eq!(newest[0].target.as_deref(), Some("u4@x.example"));
    assert_eq!(newest[0].detail, serde_json::json!({"n": 4}));
    assert_eq!(newest[0].client.as_deref(), Some("127.0.0.1:5000"));
    let next = store.admin_events(10, Some(newest[1].id)).await.unwrap();
    let targets: Vec<_> = next.iter().map(|e| e.target.clone().unwrap()).collect();
    assert_eq!(targets, ["u2@x.example", "u1@x.example", "u0@x.example"]);
}

async fn app_passwords_are_created_listed_and_deleted(f: Fixture) {
    let (store, clock) = f.parts();
    let alice = upn("alice@corp.example.com");
    let user = store.create_cloud_user(&alice, MfaState::Enforced, None).await.unwrap();
    let seq = store.latest_change_seq().await.unwrap();

    let phone = store
        .create_app_password(&new_app_password(user.id, " Alice's iPhone ", 1))
        .await
        .unwrap();
    assert_eq!(phone.name, "Alice's iPhone");
    assert_eq!(phone.user_id, user.id);
    assert_eq!(phone.created_at, T0);
    assert_eq!(phone.last_used_at, None);
    clock.advance(1);
    store
        .create_app_password(&new_app_password(user.id, "Thunderbird", 2))
        .await
        .unwrap();

    let names: Vec<String> = store
        .list_app_passwords(user.id)
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(names, ["Alice's iPhone", "Thunderbird"]);

    let secrets = store.load_all_secrets().await.unwrap();
    assert_eq!(secrets.len(), 2);
    assert_eq!(secrets[0].id, phone.id);
    assert_eq!(secrets[0].name, "Alice's iPhone");
    assert_eq!(secrets[0].tag, new_app_password(user.id, "x", 1).tag);
    assert_eq!(secrets[0].hash, "$argon2id$fake-1");
    assert_eq!(store.load_user_secrets(user.id).await.unwrap(), secrets);
    assert!(store.load_user_secrets(UserId(999)).await.unwrap().is_empty());

    // Deletion by name ignores case and surrounding spaces.
    store.delete_app_password(user.id, " alice's IPHONE").await.unwrap();
    let err = store.delete_app_password(user.id, "Alice's iPhone").await.unwrap_err();
    assert!(matches!(err, StoreError::UnknownAppPassword { .. }));
    assert_eq!(
        err.to_string(),
        "user alice@corp.example.com has no app password named \"Alice's iPhone\""
    );

    assert_eq!(store.revoke_app_passwords(user.id).await.unwrap(), 1);
    assert_eq!(store.revoke_app_passwords(user.id).await.unwrap(), 0);
    assert!(store.list_app_passwords(user.id).await.unwrap().is_empty());

    assert_eq!(
        kinds_since(store.as_ref(), seq).await,
        [
            (ChangeKind::AppPasswordCreated, Some(user.id)),
            (ChangeKind::AppPasswordCreated, Some(user.id)),
            (ChangeKind::AppPasswordDeleted, Some(user.id)),
            (ChangeKind::AppPasswordsRevoked, Some(user.id)),
        ]
    );
}

async fn app_password_limits_are_kept_and_only_narrowed(f: Fixture) {
    let (store, _) = f.parts();
    let user = store
        .create_cloud_user(&upn("alice@corp.example.com"), MfaState::Enforced, None)
        .await
        .unwrap();
    let old = store
        .create_app_password(&new_app_password(user.id, "old phone", 1))
        .await
        .unwrap();
    assert!(old.limits.is_unlimited());
    let limited = store
        .create_app_password(&NewAppPassword {
            limits: some_limits(),
            ..new_app_password(user.id, "Thunderbird", 2)
        })
        .await
        .unwrap();
    assert_eq!(limited.limits, some_limits());
    let listed = store.list_app_passwords(user.id).await.unwrap();
    assert_eq!(listed[0].limits, AppPasswordLimits::default());
    assert_eq!(listed[1].limits, some_limits());
    let secrets = store.load_user_secrets(user.id).await.unwrap();
    assert_eq!(*secrets[1].limits, some_limits());
    assert!(secrets[0].limits.is_unlimited());

    // Narrowed: one route, an earlier expiry, a smaller network; fed.
    let seq = store.latest_change_seq().await.unwrap();
    let narrower = AppPasswordLimits {
        scope: vec!["mail".into()],
        expires_at: Some(T0 + 1000),
        networks: vec!["10.1.0.0/16".parse().unwrap()],
    };
    let narrowed = store
        .narrow_app_password(user.id, "THUNDERBIRD", &narrower)
        .await
        .unwrap();
    assert_eq!(narrowed.name, "Thunderbird");
    assert_eq!(narrowed.limits, narrower);
    assert_eq!(store.list_app_passwords(user.id).await.unwrap()[1].limits, narrower);
    assert_eq!(*store.load_all_secrets().await.unwrap()[1].limits, narrower);
    assert_eq!(
        kinds_since(store.as_ref(), seq).await,
        [(ChangeKind::AppPasswordNarrowed, Some(user.id))]
    );

    // Widening any limit back is refused and changes nothing.
    let seq = store.latest_change_seq().await.unwrap();
    let err = store
        .narrow_app_password(user.id, "Thunderbird", &some_limits())
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::LimitsWidened { .. }), "{err}");
    assert!(err.to_string().contains("limits can only be narrowed"), "{err}");
    assert_eq!(store.list_app_passwords(user.id).await.unwrap()[1].limits, narrower);
    assert!(kinds_since(store.as_ref(), seq).await.is_empty());
    // An unlimited one can be limited.
    store
        .narrow_app_password(user.id, "old phone", &narrower)
        .await
        .unwrap();
    let err = store
        .narrow_app_password(user.id, "no such", &narrower)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::UnknownAppPassword { .. }), "{err}");
}

async fn the_41st_app_password_is_refused(f: Fixture) {
    let (store, _) = f.parts();
    let alice = upn("alice@corp.example.com");
    let user = store.create_cloud_user(&alice, MfaState::Enforced, None).await.unwrap();
    for n in 0..MAX_APP_PASSWORDS_PER_USER as u32 {
        store
            .create_app_password(&new_app_password(user.id, &format!("device {n}"), n))
            .await
            .unwrap();
    }
    let err = store
        .create_app_password(&new_app_password(user.id, "one too many", 99))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::TooManyAppPasswords { .. }), "{err}");
    let message = err.to_string();
    assert!(message.contains("alice@corp.example.com"), "{message}");
    assert!(message.contains("40"), "{message}");
    assert!(message.contains("delete one first"), "{message}");
    assert_eq!(store.list_app_passwords(user.id).await.unwrap().len(), 40);

    // Another user is not affected by alice's count.
    let bob = store
        .create_cloud_user(&upn("bob@corp.example.com"), MfaState::Enforced, None)
        .await
        .unwrap();
    store
        .create_app_password(&new_app_password(bob.id, "device 0", 0))
        .await
        .unwrap();

    // Deleting one makes room.
    store.delete_app_password(user.id, "device 7").await.unwrap();
    store
        .create_app_password(&new_app_password(user.id, "one too many", 99))
        .await
        .unwrap();
}

async fn duplicate_names_and_tags_are_refused(f: Fixture) {
    let (store, _) = f.parts();
    let user = store
        .create_cloud_user(&upn("alice@corp.example.com"), MfaState::Enforced, None)
        .await
        .unwrap();
    store
        .create_app_password(&new_app_password(user.id, "iPhone", 1))
        .await
        .unwrap();
    let err = store
        .create_app_password(&new_app_password(user.id, "IPHONE", 2))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::DuplicateAppPasswordName { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        "user alice@corp.example.com already has an app password named \"iPhone\": \
         choose another name"
    );

    let mut same_tag = new_app_password(user.id, "iPad", 1);
    same_tag.tag = new_app_password(user.id, "x", 1).tag;
    let err = store.create_app_password(&same_tag).await.unwrap_err();
    assert!(matches!(err, StoreError::TagCollision), "{err}");
    assert_eq!(store.list_app_passwords(user.id).await.unwrap().len(), 1);
}

async fn last_use_is_recorded_in_batches_and_only_moves_forward(f: Fixture) {
    let (store, _) = f.parts();
    let user = store
        .create_cloud_user(&upn("alice@corp.example.com"), MfaState::Enforced, None)
        .await
        .unwrap();
    let phone = store
        .create_app_password(&new_app_password(user.id, "phone", 1))
        .await
        .unwrap();
    let laptop = store
        .create_app_password(&new_app_password(user.id, "laptop", 2))
        .await
        .unwrap();
    let seq = store.latest_change_seq().await.unwrap();

    let used = |id, at, ip: &str| LastUsed {
        id,
        at,
        ip: ip.into(),
        user_agent: "Outlook-iOS/2.0\n".into(),
    };
    store
        .record_last_used(&[
            used(phone.id, T0 + 100, "192.0.2.1"),
            used(laptop.id, T0 + 50, "192.0.2.2"),
            used(AppPasswordId(999), T0, "192.0.2.3"),
        ])
        .await
        .unwrap();
    // An older report arriving late does not move the time back.
    store
        .record_last_used(&[used(phone.id, T0 + 10, "198.51.100.1")])
        .await
        .unwrap();
    store.record_last_used(&[]).await.unwrap();

    let listed = store.list_app_passwords(user.id).await.unwrap();
    assert_eq!(listed[0].last_used_at, Some(T0 + 100));
    assert_eq!(listed[0].last_ip.as_deref(), Some("192.0.2.1"));
    assert_eq!(listed[0].last_user_agent.as_deref(), Some("Outlook-iOS/2.0\u{FFFD}"));
    assert_eq!(listed[1].last_used_at, Some(T0 + 50));
    // Use is not a grant or a revocation.
    assert!(kinds_since(store.as_ref(), seq).await.is_empty());
}

async fn settings_default_off_and_changes_are_fed(f: Fixture) {
    let (store, _) = f.parts();
    assert!(!store.get_settings().await.unwrap().allow_app_passwords);
    let seq = store.latest_change_seq().await.unwrap();
    assert!(store.set_allow_app_passwords(true).await.unwrap().allow_app_passwords);
    assert!(store.get_settings().await.unwrap().allow_app_passwords);
    store.set_allow_app_passwords(true).await.unwrap();
    store.set_allow_app_passwords(false).await.unwrap();
    assert_eq!(
        kinds_since(store.as_ref(), seq).await,
        [(ChangeKind::SettingsChanged, None), (ChangeKind::SettingsChanged, None),]
    );
}

async fn audit_is_appended_and_queried_newest_first(f: Fixture) {
    let (store, _) = f.parts();
    let alice = store
        .create_cloud_user(&upn("alice@corp.example.com"), MfaState::Enforced, None)
        .await
        .unwrap();
    let mut app = audit(T0 + 3, "Alice@Corp.Example.com", Some(alice.id), true);
    app.credential = CredentialKind::AppPassword;
    app.app_password_name = Some("phone".into());
    app.reason = Reason::AppPassword;
    // A policy's denial keeps the policy's name.
    let mut denied = audit(T0 + 2, "mallory@corp.example.com", None, false);
    denied.reason = Reason::PolicyDenied;
    denied.policy = Some("corp-only".into());
    let records = [
        audit(T0 + 1, "alice@corp.example.com", Some(alice.id), false),
        denied.clone(),
        app.clone(),
        audit(T0 + 4, "ALICE@corp.example.com", None, false),
    ];
    store.append_audit(&records).await.unwrap();
    store.append_audit(&[]).await.unwrap();

    let all = store.query_audit(&AuditFilter::default()).await.unwrap();
    let times: Vec<i64> = all.iter().map(|r| r.at - T0).collect();
    assert_eq!(times, [4, 3, 2, 1]);
    assert_eq!(all[1], app);
    assert_eq!(all[2], denied);

    // By user: records resolved to her, and attempts under her name.
    let hers = store
        .query_audit(&AuditFilter {
            user: Some(upn("alice@corp.example.com")),
            ..AuditFilter::default()
        })
        .await
        .unwrap();
    let times: Vec<i64> = hers.iter().map(|r| r.at - T0).collect();
    assert_eq!(times, [4, 3, 1]);

    let recent_failures = store
        .query_audit(&AuditFilter {
            since: Some(T0 + 2),
            success: Some(false),
            ..AuditFilter::default()
        })
        .await
        .unwrap();
    let times: Vec<i64> = recent_failures.iter().map(|r| r.at - T0).collect();
    assert_eq!(times, [4, 2]);

    let newest = store
        .query_audit(&AuditFilter {
            limit: 1,
            ..AuditFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(newest.len(), 1);
    assert_eq!(newest[0].at, T0 + 4);
}

async fn audit_text_from_clients_is_clamped_on_write(f: Fixture) {
    let (store, _) = f.parts();
    let mut record = audit(T0, &"u".repeat(5000), None, false);
    record.user_agent = "evil\r\nX-Forged: 1".into();
    store.append_audit(&[record]).await.unwrap();
    let stored = &store.query_audit(&AuditFilter::default()).await.unwrap()[0];
    assert_eq!(stored.upn_given.len(), 256);
    assert_eq!(stored.user_agent, "evil\u{FFFD}\u{FFFD}X-Forged: 1");
}

#[tokio::test]
async fn file_store_is_created_with_its_directory_and_reopens_idempotently() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data/sub/fedgate.db");
    let url = format!("sqlite://{}", path.display());
    let clock = Arc::new(ManualClock::new(T0));

    let first = SqliteStore::open(&url, clock.clone()).await.unwrap();
    assert!(path.exists());
    let (journal, synchronous, foreign_keys): (String, i64, i64) = {
        let mut conn = first.pool().acquire().await.unwrap();
        let journal = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        let synchronous = sqlx::query_scalar("PRAGMA synchronous")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        let foreign_keys = sqlx::query_scalar("PRAGMA foreign_keys")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        (journal, synchronous, foreign_keys)
    };
    assert_eq!(journal, "wal");
    assert_eq!(synchronous, 2, "synchronous = FULL");
    assert_eq!(foreign_keys, 1);
    let alice = upn("alice@corp.example.com");
    first.create_cloud_user(&alice, MfaState::Enforced, None).await.unwrap();
    first.set_allow_app_passwords(true).await.unwrap();
    first.close().await;

    for _ in 0..2 {
        let again = SqliteStore::open(&url, clock.clone()).await.unwrap();
        let latest = sqlite::migration_versions().last().unwrap().0;
        assert_eq!(again.schema_version().await.unwrap(), latest);
        let applied: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM schema_version")
            .fetch_one(again.pool())
            .await
            .unwrap();
        assert_eq!(applied, sqlx_migrations().len() as i64);
        assert!(again.get_user_by_upn(&alice).await.unwrap().is_some());
        assert!(again.get_settings().await.unwrap().allow_app_passwords);
        again.close().await;
    }
}

fn sqlx_migrations() -> Vec<(i64, &'static str)> {
    sqlite::migration_versions()
}

#[test]
fn migrations_are_numbered_from_one_without_gaps() {
    let versions: Vec<i64> = sqlx_migrations().iter().map(|(v, _)| *v).collect();
    let expected: Vec<i64> = (1..=versions.len() as i64).collect();
    assert_eq!(versions, expected);
}

#[test]
fn both_backends_have_the_same_migration_history() {
    assert_eq!(postgres::migration_versions(), sqlite::migration_versions());
}

#[tokio::test]
async fn a_store_from_a_newer_fedgate_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("fedgate.db").display());
    let clock = Arc::new(ManualClock::new(T0));
    let store = SqliteStore::open(&url, clock.clone()).await.unwrap();
    sqlx::query("INSERT INTO schema_version (version, name, applied_at) VALUES (99, 'future', 0)")
        .execute(store.pool())
        .await
        .unwrap();
    store.close().await;
    let err = SqliteStore::open(&url, clock).await.unwrap_err();
    assert!(matches!(err, StoreError::SchemaTooNew { found: 99, .. }), "{err}");
    assert!(err.to_string().contains("upgrade fedgate"));
}

async fn two_processes_sharing_a_store_see_each_others_changes(f: Fixture) {
    // The server and the CLI (or two nodes) each open their own pool on
    // the same store.
    let cli = f.open_again().await;
    let server = f.store;

    let seen = server.latest_change_seq().await.unwrap();
    let bob = upn("bob@corp.example.com");
    let user = cli.upsert_federated_user(&federated(&bob, true)).await.unwrap().user;
    cli.set_mfa_state(&bob, MfaState::Enforced).await.unwrap();

    let changes = server.changes_since(seen).await.unwrap();
    assert_eq!(changes.len(), 2);
    assert!(changes.iter().all(|c| c.user_id == Some(user.id)));
    assert_eq!(
        server.get_user(user.id).await.unwrap().unwrap().mfa_state,
        MfaState::Enforced
    );

    // Concurrent writers from both sides all commit.
    let writes = (0..20).map(|n| {
        let store = if n % 2 == 0 { &*server } else { &*cli };
        let name = upn(&format!("user{n}@corp.example.com"));
        async move { store.upsert_federated_user(&federated(&name, true)).await.map(|_| ()) }
    });
    for result in futures_util::future::join_all(writes).await {
        result.unwrap();
    }
    assert_eq!(cli.list_users(None).await.unwrap().len(), 21);
}

#[tokio::test]
async fn only_sqlite_and_postgres_urls_open() {
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(T0));
    for url in ["mysql://x", "postgres:/nohost", "file:///tmp/x"] {
        let err = open(url, clock.clone(), OpenMode::Existing).await.unwrap_err();
        assert!(matches!(err, StoreError::Unsupported { .. }), "{url}: {err}");
    }
    // A password in an unsupported URL is not repeated in the error.
    let err = open("mysql://fedgate:hunter2@db/x", clock.clone(), OpenMode::Existing)
        .await
        .unwrap_err();
    assert!(!err.to_string().contains("hunter2"), "{err}");
    let access = StoreAccess {
        password_file: Some("/nonexistent".into()),
        ca_file: None,
    };
    let err = open_with("sqlite::memory:", &access, clock, OpenMode::CreateIfMissing)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("store.password_file"), "{err}");
}

/// Opens `url` with the cluster's password in a file, as `[store]
/// password_file` does.
async fn open_postgres(url: &str, mode: OpenMode) -> Result<Arc<dyn Store>, StoreError> {
    let dir = tempfile::tempdir().unwrap();
    let password_file = dir.path().join("pw");
    std::fs::write(&password_file, pg_cluster::shared().password()).unwrap();
    let access = StoreAccess {
        password_file: Some(password_file),
        ca_file: None,
    };
    open_with(url, &access, Arc::new(ManualClock::new(T0)), mode).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_store_is_created_only_where_allowed() {
    let cluster = pg_cluster::shared();
    let url = cluster.url(&cluster.create_database().unwrap());
    // An empty database is no store for the CLI...
    let err = open_postgres(&url, OpenMode::Existing).await.unwrap_err();
    assert!(matches!(err, StoreError::Missing { .. }), "{err}");
    assert!(err.to_string().contains("fedgate store init"), "{err}");
    // ...`store init` makes one, once...
    let store = open_postgres(&url, OpenMode::New).await.unwrap();
    store
        .create_cloud_user(&upn("a@corp.example.com"), MfaState::Enabled, None)
        .await
        .unwrap();
    let err = open_postgres(&url, OpenMode::New).await.unwrap_err();
    assert!(matches!(err, StoreError::Exists { .. }), "{err}");
    // ...and opening it again migrates nothing and keeps what it holds.
    let again = open_postgres(&url, OpenMode::Existing).await.unwrap();
    assert_eq!(again.list_users(None).await.unwrap().len(), 1);
    let versions = cluster
        .psql(
            url.rsplit('/').next().unwrap(),
            "SELECT count(*), max(version) FROM schema_version",
        )
        .unwrap();
    let latest = sqlite::migration_versions().last().unwrap().0;
    assert_eq!(versions.trim(), format!("{latest}|{latest}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_starting_together_migrate_once() {
    let cluster = pg_cluster::shared();
    let url = cluster.url(&cluster.create_database().unwrap());
    let opens = (0..4).map(|_| open_postgres(&url, OpenMode::CreateIfMissing));
    for store in futures_util::future::join_all(opens).await {
        store.unwrap();
    }
    let rows = cluster
        .psql(url.rsplit('/').next().unwrap(), "SELECT count(*) FROM schema_version")
        .unwrap();
    assert_eq!(rows.trim(), sqlite::migration_versions().len().to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_open_errors_say_what_is_wrong() {
    let cluster = pg_cluster::shared();
    let database = cluster.create_database().unwrap();
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(T0));
    let dir = tempfile::tempdir().unwrap();
    let wrong = dir.path().join("wrong");
    std::fs::write(&wrong, "not-the-password\n").unwrap();
    let access = |password_file: &std::path::Path| StoreAccess {
        password_file: Some(password_file.to_owned()),
        ca_file: None,
    };
    // A wrong password is the server's refusal, not a pool timeout.
    let err = open_with(
        &cluster.url(&database),
        &access(&wrong),
        clock.clone(),
        OpenMode::Existing,
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("password authentication failed"), "{err}");
    // The password is in the file or in the URL, never both; the error does
    // not repeat it.
    let err = open_with(
        &cluster.url_with_password(&database),
        &access(&wrong),
        clock.clone(),
        OpenMode::Existing,
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("store.password_file"), "{err}");
    assert!(!err.to_string().contains(cluster.password()), "{err}");
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "\n").unwrap();
    let err = open_with(
        &cluster.url(&database),
        &access(&empty),
        clock.clone(),
        OpenMode::Existing,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, StoreError::EmptyFile { .. }), "{err}");
    let err = open_with(
        &cluster.url(&database),
        &access(&dir.path().join("missing")),
        clock.clone(),
        OpenMode::Existing,
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("store.password_file"), "{err}");
    // A server that is not there is named as refusing the connection.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = open_with(
        &format!("postgres://fedgate@127.0.0.1:{port}/x"),
        &StoreAccess::default(),
        clock,
        OpenMode::Existing,
    )
    .await
    .unwrap_err();
    assert!(err.to_string().to_lowercase().contains("refused"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_database_under_a_running_postgres_store_is_noticed() {
    let f = Fixture::postgres().await;
    f.store.check().await.unwrap();
    let database = f.url.rsplit('/').next().unwrap().to_owned();
    // The store is recreated behind the server's back (a restore of
    // another site's dump, say): same database, another store id.
    pg_cluster::shared()
        .psql(
            &database,
            "UPDATE store_meta SET value = 'another' WHERE key = 'store_id'",
        )
        .unwrap();
    let err = f.store.check().await.unwrap_err();
    assert!(err.to_string().contains("another store"), "{err}");
    // Lost for good: the next call fails too, without asking the database.
    assert!(matches!(
        f.store.list_users(None).await.unwrap_err(),
        StoreError::Unavailable { .. }
    ));
}

#[test]
fn csv_lines_keep_their_numbers_and_malformed_lines() {
    let lines = StateLine::parse_csv("\u{FEFF}UPN,State\r\na@x.example,enabled\r\njunk\r\n");
    assert_eq!(
        lines,
        [
            StateLine {
                line: 2,
                upn: "a@x.example".into(),
                state: "enabled".into()
            },
            StateLine {
                line: 3,
                upn: "junk".into(),
                state: "".into()
            },
        ]
    );
}

#[test]
fn change_kinds_round_trip_and_unknown_kinds_survive() {
    for kind in [
        ChangeKind::UserCreated,
        ChangeKind::AppPasswordsRevoked,
        ChangeKind::SettingsChanged,
    ] {
        assert_eq!(ChangeKind::parse(kind.as_str()), kind);
    }
    assert_eq!(
        ChangeKind::parse("totp_reset"),
        ChangeKind::Unknown("totp_reset".into())
    );
}

fn new_totp(sealed: &[u8], confirmed_step: u64) -> NewTotp {
    NewTotp {
        sealed_secret: sealed.to_vec(),
        confirmed_step,
    }
}

async fn totp_registration_is_stored_fed_and_removed(f: Fixture) {
    let (store, clock) = f.parts();
    let alice = upn("alice@corp.example.com");
    let id = store
        .create_cloud_user(&alice, MfaState::Enabled, None)
        .await
        .unwrap()
        .id;
    assert_eq!(store.totp(id).await.unwrap(), None);
    assert!(!store.use_totp_step(id, 1).await.unwrap(), "no TOTP, no step");

    clock.advance(7);
    let user = store.set_totp(id, Some(&new_totp(b"sealed-1", 100))).await.unwrap();
    assert_eq!(user.registered_at, Some(T0 + 7));
    assert_eq!(
        store.totp(id).await.unwrap(),
        Some(StoredTotp {
            sealed_secret: b"sealed-1".to_vec(),
            last_step: Some(100),
        })
    );
    // Neither the secret nor the step shows in the user's Debug or JSON.
    assert!(!format!("{user:?}").contains("sealed"));
    assert!(!serde_json::to_string(&user).unwrap().contains("totp"));

    // Registering again replaces the secret and starts from its own step.
    store.set_totp(id, Some(&new_totp(b"sealed-2", 90))).await.unwrap();
    let stored = store.totp(id).await.unwrap().unwrap();
    assert_eq!(stored.sealed_secret, b"sealed-2");
    assert_eq!(stored.last_step, Some(90));
    assert!(!format!("{stored:?}").contains("sealed-2"));

    let user = store.set_totp(id, None).await.unwrap();
    assert_eq!(user.registered_at, None);
    assert_eq!(store.totp(id).await.unwrap(), None);
    assert!(!store.use_totp_step(id, 1000).await.unwrap());

    assert_eq!(
        kinds_since(store.as_ref(), 0).await,
        [
            (ChangeKind::UserCreated, Some(id)),
            (ChangeKind::TotpRegistered, Some(id)),
            (ChangeKind::TotpRegistered, Some(id)),
            (ChangeKind::TotpRemoved, Some(id)),
        ]
    );
}

async fn a_totp_step_is_used_once_and_only_moves_forward(f: Fixture) {
    let (store, _) = f.parts();
    let alice = upn("alice@corp.example.com");
    let id = store
        .create_cloud_user(&alice, MfaState::Enabled, None)
        .await
        .unwrap()
        .id;
    store.set_totp(id, Some(&new_totp(b"sealed", 100))).await.unwrap();
    let seq = store.latest_change_seq().await.unwrap();

    // The confirming code's step is used already.
    assert!(!store.use_totp_step(id, 100).await.unwrap());
    assert!(!store.use_totp_step(id, 99).await.unwrap());
    assert!(store.use_totp_step(id, 101).await.unwrap());
    assert!(!store.use_totp_step(id, 101).await.unwrap());
    assert!(store.use_totp_step(id, 103).await.unwrap());
    assert!(!store.use_totp_step(id, 102).await.unwrap());
    assert_eq!(store.totp(id).await.unwrap().unwrap().last_step, Some(103));
    // Sign-ins are not changes: the feed stays quiet.
    assert!(kinds_since(store.as_ref(), seq).await.is_empty());

    let err = store.use_totp_step(id, u64::MAX).await.unwrap_err();
    assert!(matches!(err, StoreError::TotpStepOutOfRange { .. }), "{err}");
    let err = store
        .set_totp(id, Some(&new_totp(b"sealed", u64::MAX)))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::TotpStepOutOfRange { .. }), "{err}");
}

async fn two_nodes_cannot_both_accept_one_code(f: Fixture) {
    let node_b = f.open_again().await;
    let node_a = f.store;
    let id = node_a
        .create_cloud_user(&upn("alice@corp.example.com"), MfaState::Enforced, None)
        .await
        .unwrap()
        .id;
    node_a.set_totp(id, Some(&new_totp(b"sealed", 10))).await.unwrap();

    for step in 11..31 {
        let attempts = (0..6).map(|n| {
            let node = if n % 2 == 0 { &*node_a } else { &*node_b };
            node.use_totp_step(id, step)
        });
        let accepted = futures_util::future::join_all(attempts)
            .await
            .into_iter()
            .map(Result::unwrap)
            .filter(|&accepted| accepted)
            .count();
        assert_eq!(accepted, 1, "step {step}");
    }
    assert_eq!(node_b.totp(id).await.unwrap().unwrap().last_step, Some(30));
}

async fn totp_goes_with_required_registration_and_deletion(f: Fixture) {
    let (store, _) = f.parts();
    let alice = upn("alice@corp.example.com");
    let bob = upn("bob@corp.example.com");
    let carol = upn("carol@corp.example.com");
    let a = store
        .create_cloud_user(&alice, MfaState::Enforced, None)
        .await
        .unwrap()
        .id;
    let b = store
        .upsert_federated_user(&federated(&bob, true))
        .await
        .unwrap()
        .user
        .id;
    let c = store
        .upsert_federated_user(&federated(&carol, true))
        .await
        .unwrap()
        .user
        .id;
    for id in [a, b, c] {
        store.set_totp(id, Some(&new_totp(b"sealed", 5))).await.unwrap();
    }

    // An operator makes alice register again: her old secret is gone.
    let seq = store.latest_change_seq().await.unwrap();
    let user = store.require_registration(&alice).await.unwrap();
    assert_eq!(user.registered_at, None);
    assert_eq!(store.totp(a).await.unwrap(), None);
    assert!(!store.use_totp_step(a, 6).await.unwrap());
    assert_eq!(
        kinds_since(store.as_ref(), seq).await,
        [(ChangeKind::RegistrationRequired, Some(a))]
    );

    // Deleted by an operator, or gone from the directory: no TOTP, and a
    // returning user does not bring it back.
    store.mark_deleted(&bob).await.unwrap();
    store
        .apply_directory_changes(&[DirectoryChange::Delete { id: c }])
        .await
        .unwrap();
    for id in [b, c] {
        assert_eq!(store.totp(id).await.unwrap(), None);
        let err = store.set_totp(id, Some(&new_totp(b"sealed", 6))).await.unwrap_err();
        assert!(matches!(err, StoreError::UserDeleted { .. }), "{err}");
    }
    let back = store.upsert_federated_user(&federated(&bob, true)).await.unwrap().user;
    assert_eq!(back.registered_at, None);
    assert_eq!(store.totp(b).await.unwrap(), None);
    let back = store.create_cloud_user(&carol, MfaState::Enabled, None).await.unwrap();
    assert_eq!(back.id, c);
    assert_eq!(store.totp(c).await.unwrap(), None);

    // Unknown users.
    let err = store.set_totp(UserId(999), None).await.unwrap_err();
    assert!(matches!(err, StoreError::UnknownUserId { .. }), "{err}");
    let err = store.totp(UserId(999)).await.unwrap_err();
    assert!(matches!(err, StoreError::UnknownUserId { .. }), "{err}");
    assert!(!store.use_totp_step(UserId(999), 1).await.unwrap());
}

#[tokio::test]
async fn a_returning_user_never_brings_an_old_totp_back() {
    // Deletion clears the secret; a row deleted without clearing it (by an
    // older fedgate, or by hand) must still not bring it back.
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("fedgate.db").display());
    let store = SqliteStore::open(&url, Arc::new(ManualClock::new(T0))).await.unwrap();
    let bob = upn("bob@corp.example.com");
    let carol = upn("carol@corp.example.com");
    let b = store
        .upsert_federated_user(&federated(&bob, true))
        .await
        .unwrap()
        .user
        .id;
    let c = store
        .create_cloud_user(&carol, MfaState::Enabled, None)
        .await
        .unwrap()
        .id;
    for id in [b, c] {
        store.set_totp(id, Some(&new_totp(b"sealed", 5))).await.unwrap();
        sqlx::query("UPDATE users SET deleted = 1 WHERE id = ?")
            .bind(id.0)
            .execute(store.pool())
            .await
            .unwrap();
    }
    store.upsert_federated_user(&federated(&bob, true)).await.unwrap();
    store.create_cloud_user(&carol, MfaState::Enabled, None).await.unwrap();
    for id in [b, c] {
        assert_eq!(store.totp(id).await.unwrap(), None);
        assert!(!store.use_totp_step(id, 6).await.unwrap());
    }
}

#[test]
fn totp_change_kinds_round_trip() {
    for kind in [
        ChangeKind::RegistrationRequired,
        ChangeKind::Registered,
        ChangeKind::TotpRegistered,
        ChangeKind::TotpRemoved,
    ] {
        assert_eq!(ChangeKind::parse(kind.as_str()), kind);
    }
}

async fn wrong_codes_block_per_user_and_a_right_one_resets(f: Fixture) {
    let (store, clock) = f.parts();
    let user = store
        .create_cloud_user(&upn("heidi@corp.example.com"), MfaState::Enabled, None)
        .await
        .unwrap();
    let limit = TotpLimit {
        max_failures: 3,
        block_ms: 30_000,
    };
    assert_eq!(store.note_totp_result(user.id, false, &limit).await.unwrap(), None);
    // A right code resets the count.
    assert_eq!(store.note_totp_result(user.id, true, &limit).await.unwrap(), None);
    for _ in 0..2 {
        assert_eq!(store.note_totp_result(user.id, false, &limit).await.unwrap(), None);
    }
    let until = store.note_totp_result(user.id, false, &limit).await.unwrap();
    assert_eq!(until, Some(clock.now_ms() + 30_000));
    assert_eq!(store.totp_blocked_until(user.id).await.unwrap(), until);
}

async fn portal_sessions_round_trip_update_and_prune(f: Fixture) {
    let (store, _) = f.parts();
    let user = store
        .create_cloud_user(&upn("ivan@corp.example.com"), MfaState::Enabled, None)
        .await
        .unwrap();
    let mut session = PortalSession {
        id_hash: [7; 32],
        user_id: user.id,
        signed_in: false,
        mfa: false,
        mfa_state: MfaState::Enabled,
        created_at: T0,
        last_seen_at: T0,
        return_to: Some("/app/x?y=1".into()),
        pending_totp: Some(vec![1, 2, 3]),
    };
    store.put_portal_session(&session).await.unwrap();
    assert_eq!(store.portal_session(&[7; 32]).await.unwrap().as_ref(), Some(&session));
    session.signed_in = true;
    session.mfa = true;
    session.pending_totp = None;
    session.last_seen_at = T0 + 10;
    store.put_portal_session(&session).await.unwrap();
    assert_eq!(store.portal_session(&[7; 32]).await.unwrap().as_ref(), Some(&session));
    assert_eq!(store.prune_portal_sessions(T0 + 5).await.unwrap(), 0);
    assert_eq!(store.prune_portal_sessions(T0 + 11).await.unwrap(), 1);
    assert_eq!(store.portal_session(&[7; 32]).await.unwrap(), None);
}

#[tokio::test]
async fn only_serve_and_store_init_create_a_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data/fedgate.db");
    let url = format!("sqlite://{}", path.display());
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(T0));
    let err = open(&url, clock.clone(), OpenMode::Existing).await.unwrap_err();
    assert!(matches!(err, StoreError::Missing { .. }), "{err}");
    assert!(err.to_string().contains("fedgate store init"), "{err}");
    assert!(!path.exists(), "an admin command created {}", path.display());
    open(&url, clock.clone(), OpenMode::New).await.unwrap().close().await;
    let err = open(&url, clock.clone(), OpenMode::New).await.unwrap_err();
    assert!(matches!(err, StoreError::Exists { .. }), "{err}");
    let store = open(&url, clock, OpenMode::Existing).await.unwrap();
    store.check().await.unwrap();
}

/// A server's store, and a path to play tricks with under it.
async fn file_store() -> (tempfile::TempDir, std::path::PathBuf, Arc<dyn Store>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fedgate.db");
    let url = format!("sqlite://{}", path.display());
    let store = open(&url, Arc::new(ManualClock::new(T0)), OpenMode::CreateIfMissing)
        .await
        .unwrap();
    store.check().await.unwrap();
    (dir, path, store)
}

fn remove_database(path: &std::path::Path) {
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}

#[tokio::test]
async fn a_removed_file_is_lost_for_good() {
    let (_dir, path, store) = file_store().await;
    remove_database(&path);
    let err = store.check().await.unwrap_err();
    assert!(err.to_string().contains("was removed"), "{err}");
    // Its connections still read the unlinked file: nothing may use them.
    let err = store.list_users(None).await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable { .. }), "{err}");
    assert!(!path.exists(), "the store recreated {}", path.display());
}

#[tokio::test]
async fn another_store_at_the_same_path_is_noticed() {
    let (dir, path, store) = file_store().await;
    remove_database(&path);
    let url = format!("sqlite://{}", path.display());
    open(&url, Arc::new(ManualClock::new(T0)), OpenMode::New)
        .await
        .unwrap()
        .close()
        .await;
    let err = store.check().await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains("replaced") || text.contains("another store"), "{text}");
    drop(dir);
}

#[tokio::test]
async fn a_damaged_header_is_noticed() {
    use std::io::{Seek, Write};
    let (_dir, path, store) = file_store().await;
    let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.seek(std::io::SeekFrom::Start(0)).unwrap();
    f.write_all(b"not a database!!").unwrap();
    drop(f);
    let err = store.check().await.unwrap_err();
    assert!(err.to_string().contains("header is damaged"), "{err}");
}

async fn one_node_leads_until_its_lead_runs_out_or_is_given_up(f: Fixture) {
    let (store, clock) = f.parts();
    let other = f.open_again().await;
    assert_eq!(store.sync_lead().await.unwrap(), None);
    assert!(store.take_sync_lead("node-a", T0 + 1000).await.unwrap());
    // Held: another node is refused, the leader renews and keeps its start.
    assert!(!other.take_sync_lead("node-b", T0 + 1000).await.unwrap());
    clock.advance(500);
    assert!(store.take_sync_lead("node-a", T0 + 1500).await.unwrap());
    let lead = other.sync_lead().await.unwrap().unwrap();
    assert_eq!((lead.node.as_str(), lead.since, lead.until), ("node-a", T0, T0 + 1500));
    // Run out: the other node takes it, from now.
    clock.advance(1001);
    assert!(other.take_sync_lead("node-b", T0 + 3000).await.unwrap());
    assert!(!store.take_sync_lead("node-a", T0 + 3000).await.unwrap());
    let lead = store.sync_lead().await.unwrap().unwrap();
    assert_eq!((lead.node.as_str(), lead.since), ("node-b", T0 + 1501));
    // Given up: free at once. Only its holder can give it up.
    store.release_sync_lead("node-a").await.unwrap();
    assert_eq!(store.sync_lead().await.unwrap().unwrap().node, "node-b");
    other.release_sync_lead("node-b").await.unwrap();
    assert_eq!(store.sync_lead().await.unwrap(), None);
    // Of nodes trying at once, exactly one leads.
    let tries = (0..8).map(|n| {
        let store = if n % 2 == 0 { &*store } else { &*other };
        let node = format!("node-{n}");
        async move { store.take_sync_lead(&node, T0 + 9000).await.unwrap() }
    });
    let won = futures_util::future::join_all(tries)
        .await
        .into_iter()
        .filter(|&won| won)
        .count();
    assert_eq!(won, 1);
}

async fn lockout_events_are_kept_in_order_and_pruned(f: Fixture) {
    use crate::store::{LockoutEvent, LockoutEventKind};
    let (store, _) = f.parts();
    let other = f.open_again().await;
    assert_eq!(store.latest_lockout_seq().await.unwrap(), 0);
    let event = |at: i64, node: &str, kind: LockoutEventKind, user: Option<UserId>, name: Option<&str>| LockoutEvent {
        at,
        node: node.into(),
        kind,
        user_id: user,
        name: name.map(str::to_owned),
        client_ip: "192.0.2.7".into(),
    };
    let first = [
        event(
            T0,
            "a",
            LockoutEventKind::Failed(Reason::BadCredentials),
            Some(UserId(7)),
            None,
        ),
        event(
            T0 + 10,
            "a",
            LockoutEventKind::Failed(Reason::AppPasswordRequired),
            None,
            Some("nobody"),
        ),
    ];
    store.append_lockout_events(&first).await.unwrap();
    other
        .append_lockout_events(&[event(T0 + 20, "b", LockoutEventKind::SignedIn, Some(UserId(7)), None)])
        .await
        .unwrap();
    let read = other.lockout_events_since(0, 100).await.unwrap();
    let seqs: Vec<i64> = read.iter().map(|(seq, _)| *seq).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    let events: Vec<LockoutEvent> = read.into_iter().map(|(_, e)| e).collect();
    assert_eq!(events[..2], first);
    assert_eq!(events[2].kind, LockoutEventKind::SignedIn);
    // Paged, and from a position.
    assert_eq!(store.lockout_events_since(seqs[0], 1).await.unwrap()[0].0, seqs[1]);
    assert_eq!(store.latest_lockout_seq().await.unwrap(), seqs[2]);
    // Where a node starting at T0 + 10 begins: just before the event at
    // T0 + 10; after everything, the newest.
    assert_eq!(store.lockout_seq_before(T0 + 10).await.unwrap(), seqs[0]);
    assert_eq!(store.lockout_seq_before(T0 + 999).await.unwrap(), seqs[2]);
    assert_eq!(store.prune_lockout_events(T0 + 15).await.unwrap(), 2);
    assert_eq!(store.lockout_events_since(0, 100).await.unwrap().len(), 1);
}

/// Runs each named test (an `async fn(Fixture)`) once on each backend:
/// `on_sqlite::NAME` and `on_postgres::NAME`.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod on_sqlite {
            $(#[tokio::test]
            async fn $name() {
                super::$name(super::Fixture::sqlite().await).await
            })*
        }
        mod on_postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                super::$name(super::Fixture::postgres().await).await
            })*
        }
    };
}

on_both_backends!(
    bulk_import_creates_every_user_in_one_transaction_or_none,
    admin_events_are_kept_newest_first_and_paged,
    lockout_events_are_kept_in_order_and_pruned,
    one_node_leads_until_its_lead_runs_out_or_is_given_up,
    cloud_users_are_created_and_found_case_insensitively,
    list_filters_by_state_and_hides_deleted_users,
    federated_upsert_creates_updates_and_leaves_alone,
    federated_upsert_does_not_take_over_a_cloud_user,
    federated_upsert_follows_a_rename_by_anchor,
    sync_lookups_find_users_by_anchor_or_upn_and_count_synced_ones,
    deleted_users_lose_app_passwords_and_come_back_without_them,
    a_deleted_upn_can_be_added_again_as_a_cloud_user,
    unknown_users_are_named_in_errors,
    user_state_changes_write_the_change_feed,
    federated_users_have_no_fedgate_password,
    bulk_state_change_applies_every_line,
    bulk_state_change_is_all_or_nothing_and_reports_every_bad_line,
    app_passwords_are_created_listed_and_deleted,
    app_password_limits_are_kept_and_only_narrowed,
    the_41st_app_password_is_refused,
    duplicate_names_and_tags_are_refused,
    last_use_is_recorded_in_batches_and_only_moves_forward,
    settings_default_off_and_changes_are_fed,
    audit_is_appended_and_queried_newest_first,
    audit_text_from_clients_is_clamped_on_write,
    totp_registration_is_stored_fed_and_removed,
    a_totp_step_is_used_once_and_only_moves_forward,
    totp_goes_with_required_registration_and_deletion,
    wrong_codes_block_per_user_and_a_right_one_resets,
    portal_sessions_round_trip_update_and_prune,
    two_processes_sharing_a_store_see_each_others_changes,
    two_nodes_cannot_both_accept_one_code,
);

mod copying;
mod history;

/// Schema 14 adds the limit columns: app passwords made before keep
/// working with no limits.
#[tokio::test]
async fn app_passwords_from_before_limits_come_through_the_upgrade_unlimited() {
    let f = Fixture::sqlite().await;
    let (store, _) = f.parts();
    let user = store
        .create_cloud_user(&upn("alice@corp.example.com"), MfaState::Enforced, None)
        .await
        .unwrap();
    store
        .create_app_password(&new_app_password(user.id, "old phone", 1))
        .await
        .unwrap();
    store.close().await;
    // Back to schema 13, as an older fedgate left it.
    let pool = sqlx::SqlitePool::connect(&f.url).await.unwrap();
    sqlx::raw_sql(
        "ALTER TABLE app_passwords DROP COLUMN scope;
         ALTER TABLE app_passwords DROP COLUMN expires_at;
         ALTER TABLE app_passwords DROP COLUMN networks;
         DELETE FROM schema_version WHERE version >= 14;",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::raw_sql(UNDO_SYNC_PUSH).execute(&pool).await.unwrap();
    pool.close().await;
    let store = f.open_again().await;
    let listed = store.list_app_passwords(user.id).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert!(listed[0].limits.is_unlimited(), "{listed:?}");
    assert!(store.load_all_secrets().await.unwrap()[0].limits.is_unlimited());
}
