//! Whole-store copies between the two backends, on the test run's private
//! PostgreSQL cluster: what goes across (everything, ids included), what
//! is refused (a target that holds anything), and what a node on the
//! target does next (new rows after the copied ones, a view that reloads).

use futures_util::TryStreamExt;

use super::*;
use crate::auth::index::Index;
use crate::secretbox::SecretBox;
use crate::store::copy::{
    copy, copy_store, ColumnType, CopyError, Endpoint, Row, LEFT_OUT_COLUMNS, LEFT_OUT_TABLES, TABLES,
};
use crate::totp::TotpSecret;

/// Every copied table's rows, in copy order: what two stores must agree on
/// after a copy.
async fn dump(store: &dyn Store) -> Vec<(&'static str, Vec<Row>)> {
    let mut reader = store.export().await.unwrap();
    let mut tables = Vec::new();
    for table in TABLES {
        let rows: Vec<Row> = reader.rows(table).try_collect().await.unwrap();
        tables.push((table.name, rows));
    }
    tables
}

/// More federated users than one write batch holds, and more sign-in
/// records, so that copies cross batch boundaries.
const SYNCED_USERS: usize = 600;
const AUDIT_RECORDS: usize = 1_200;

/// The portal key the tests seal TOTP secrets with.
fn portal_key() -> SecretBox {
    SecretBox::from_bytes(&[0x5a; 32])
}

/// A completed sync pass of `kind` (`full` or `incremental`).
fn sync_pass(kind: &str, started_at: i64) -> SyncPass {
    SyncPass {
        kind: kind.into(),
        outcome: "completed".into(),
        started_at,
        duration_ms: 1_234,
        seen: SYNCED_USERS as i64,
        created: 3,
        updated: 2,
        disabled: 1,
        enabled: 0,
        deleted: 0,
        errors: 0,
        server: Some("ldaps://dc1.corp.example.com".into()),
        message: None,
    }
}

/// The SQLite store of `f` opened as itself, for what no store method does.
async fn raw_sqlite(f: &Fixture) -> SqliteStore {
    SqliteStore::open_with(&f.url, f.clock.clone(), OpenMode::Existing)
        .await
        .unwrap()
}

/// What [`fill`] made that a test checks by hand.
struct Filled {
    /// A user with a TOTP secret sealed for their id.
    totp_user: UserId,
    secret: TotpSecret,
    /// Every user, as the source holds them.
    users: Vec<User>,
}

/// Fills `store` with some of everything a running fedgate keeps: cloud
/// and directory users in every state (deleted, disabled, with a password,
/// registered, with a TOTP secret, with failed codes), app passwords with
/// and without last use (one deleted, leaving a gap in the ids), settings,
/// portal sessions, the sign-in log, sync passes, the sync mark and a
/// sync lease.
async fn fill(store: &dyn Store, clock: &ManualClock) -> Filled {
    let alice = store
        .create_cloud_user(
            &upn("alice@corp.example.com"),
            MfaState::Enforced,
            Some("$argon2id$v=19$alice"),
        )
        .await
        .unwrap();
    let mut changes: Vec<DirectoryChange> = (0..SYNCED_USERS)
        .map(|n| DirectoryChange::Upsert {
            user: federated(&upn(&format!("user{n}@corp.example.com")), n % 7 != 0),
            revoke_app_passwords: false,
        })
        .collect();
    let mut carol = federated(&upn("carol@corp.example.com"), true);
    carol.attributes.display_name = Some("Carol Ø'Brien".into());
    carol.attributes.groups = vec!["cn=mail,ou=groups,dc=example,dc=com".into(), "cn=vpn,ou=groups".into()];
    carol.attributes.password_changed = Some("20240101120000Z".into());
    changes.push(DirectoryChange::Upsert {
        user: carol,
        revoke_app_passwords: false,
    });
    store.apply_directory_changes(&changes).await.unwrap();
    let carol = store
        .get_user_by_upn(&upn("carol@corp.example.com"))
        .await
        .unwrap()
        .unwrap();

    let secret = TotpSecret::generate();
    let sealed = secret.seal(&portal_key(), carol.id).unwrap();
    store
        .set_totp(
            carol.id,
            Some(&NewTotp {
                sealed_secret: sealed,
                confirmed_step: 1_000,
            }),
        )
        .await
        .unwrap();
    assert!(store.use_totp_step(carol.id, 1_002).await.unwrap());
    let limit = TotpLimit {
        max_failures: 5,
        block_ms: 60_000,
    };
    store.note_totp_result(carol.id, false, &limit).await.unwrap();
    let dave = store
        .create_cloud_user(&upn("dave@corp.example.com"), MfaState::Enabled, None)
        .await
        .unwrap();
    for _ in 0..limit.max_failures {
        store.note_totp_result(dave.id, false, &limit).await.unwrap();
    }
    store
        .set_registered_at(&upn("dave@corp.example.com"), T0 - 5)
        .await
        .unwrap();
    store.set_enabled(&upn("dave@corp.example.com"), false).await.unwrap();
    store
        .create_cloud_user(&upn("erin@corp.example.com"), MfaState::Disabled, Some("$h"))
        .await
        .unwrap();
    store.mark_deleted(&upn("erin@corp.example.com")).await.unwrap();

    clock.advance(1_000);
    for (n, name) in ["iPhone Mail", "old laptop", "Outlook"].into_iter().enumerate() {
        store
            .create_app_password(&new_app_password(alice.id, name, n as u32))
            .await
            .unwrap();
    }
    store.delete_app_password(alice.id, "old laptop").await.unwrap();
    store
        .narrow_app_password(alice.id, "Outlook", &some_limits())
        .await
        .unwrap();
    let phone = store.list_app_passwords(alice.id).await.unwrap()[0].id;
    store
        .record_last_used(&[LastUsed {
            id: phone,
            at: T0 + 2_000,
            ip: "2001:db8::7".into(),
            user_agent: "Apple-iPhone/2102".into(),
        }])
        .await
        .unwrap();
    store.set_allow_app_passwords(true).await.unwrap();

    store
        .put_portal_session(&PortalSession {
            id_hash: [3; 32],
            user_id: carol.id,
            signed_in: false,
            mfa: false,
            mfa_state: MfaState::Disabled,
            created_at: T0,
            last_seen_at: T0 + 10,
            return_to: Some("/portal/app-passwords?x=1".into()),
            pending_totp: Some(vec![0, 1, 2, 255]),
        })
        .await
        .unwrap();
    store
        .put_portal_session(&PortalSession {
            id_hash: [1; 32],
            user_id: alice.id,
            signed_in: true,
            mfa: true,
            mfa_state: MfaState::Enforced,
            created_at: T0,
            last_seen_at: T0 + 20,
            return_to: None,
            pending_totp: None,
        })
        .await
        .unwrap();

    let records: Vec<AuditRecord> = (0..AUDIT_RECORDS)
        .map(|n| {
            let mut record = audit(T0 + n as i64, "Alice@Corp.Example.com", Some(alice.id), n % 3 != 0);
            if n % 5 == 0 {
                record.user_id = None;
                record.upn_given = format!("nobody{n}");
                record.app_password_name = Some("iPhone Mail".into());
                record.credential = CredentialKind::AppPassword;
                record.count = 4;
            }
            record
        })
        .collect();
    store.append_audit(&records).await.unwrap();

    store.record_sync_pass(&sync_pass("full", T0), None).await.unwrap();
    let mark = SyncMark {
        value: "123456".into(),
        server: "dc1.corp.example.com".into(),
    };
    store
        .record_sync_pass(&sync_pass("incremental", T0 + 60_000), Some(&mark))
        .await
        .unwrap();
    assert!(store.take_sync_lease("node-a:4242", T0 + 120_000, None).await.unwrap());

    Filled {
        totp_user: carol.id,
        secret,
        users: store.load_all_users().await.unwrap(),
    }
}

/// What `target` must say after a copy of a store [`fill`] made.
async fn check_copied(target: &dyn Store, filled: &Filled) {
    assert_eq!(target.load_all_users().await.unwrap(), filled.users);
    let totp = target.totp(filled.totp_user).await.unwrap().expect("TOTP copied");
    assert_eq!(totp.last_step, Some(1_002));
    // Sealed for the user's id, which the copy kept: it still opens.
    let opened = TotpSecret::open(&portal_key(), &totp.sealed_secret, filled.totp_user).unwrap();
    assert_eq!(opened.expose(), filled.secret.expose());
    let dave = target
        .get_user_by_upn(&upn("dave@corp.example.com"))
        .await
        .unwrap()
        .unwrap();
    assert!(target.totp_blocked_until(dave.id).await.unwrap().is_some());
    assert!(target.get_settings().await.unwrap().allow_app_passwords);
    let alice = target
        .get_user_by_upn(&upn("alice@corp.example.com"))
        .await
        .unwrap()
        .unwrap();
    let names: Vec<String> = target
        .list_app_passwords(alice.id)
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.name)
        .collect();
    assert_eq!(names, ["iPhone Mail", "Outlook"]);
    let secrets = target.load_all_secrets().await.unwrap();
    assert_eq!(secrets.len(), 2);
    assert!(secrets[0].limits.is_unlimited());
    assert_eq!(*secrets[1].limits, some_limits());
    let session = target.portal_session(&[3; 32]).await.unwrap().expect("session copied");
    assert_eq!(session.pending_totp.as_deref(), Some(&[0, 1, 2, 255][..]));
    let log = target
        .query_audit(&AuditFilter {
            limit: u32::MAX,
            ..AuditFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(log.len(), AUDIT_RECORDS);
    assert_eq!(target.sync_mark().await.unwrap().unwrap().value, "123456");
    let (incremental, full) = target.last_sync_passes().await.unwrap();
    assert!(incremental.is_some() && full.is_some());
    // The lease holder is a process of the source's site: not copied.
    assert_eq!(target.sync_lease().await.unwrap(), None);
    // One change tells servers already running on the target to reload.
    let changes = target.changes_since(0).await.unwrap();
    let last = changes.last().expect("a change row");
    assert_eq!((&last.kind, last.user_id), (&ChangeKind::StoreCopied, None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_goes_to_postgres_and_back_unchanged() {
    let sqlite = Fixture::sqlite().await;
    let filled = fill(&*sqlite.store, &sqlite.clock).await;
    let original = dump(&*sqlite.store).await;

    let pg = Fixture::postgres().await;
    let report = copy(&*sqlite.store, &*pg.store, &sqlite.url, &pg.url).await.unwrap();
    let users = filled.users.len() as u64;
    assert_eq!(report.rows("users"), Some(users));
    assert_eq!(report.rows("app_passwords"), Some(2));
    assert_eq!(report.rows("portal_sessions"), Some(2));
    assert_eq!(report.rows("audit"), Some(AUDIT_RECORDS as u64));
    assert_eq!(report.rows("sync_passes"), Some(2));
    assert_eq!(report.rows("settings"), Some(1));
    assert_eq!(dump(&*pg.store).await, original);
    check_copied(&*pg.store, &filled).await;
    // The source is only read: its lease and its feed are as they were.
    assert!(sqlite.store.sync_lease().await.unwrap().is_some());
    assert_ne!(
        sqlite.store.changes_since(0).await.unwrap().last().unwrap().kind,
        ChangeKind::StoreCopied
    );

    // Back into a SQLite file that does not exist yet: the copy makes it.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/back.db");
    let back_url = format!("sqlite://{}", path.display());
    let none = StoreAccess::default();
    let report = copy_store(
        Endpoint {
            url: &pg.url,
            access: &pg.access,
        },
        Endpoint {
            url: &back_url,
            access: &none,
        },
        sqlite.clock.clone(),
    )
    .await
    .unwrap();
    assert_eq!(report.rows("users"), Some(users));
    let back = open_with(&back_url, &none, sqlite.clock.clone(), OpenMode::Existing)
        .await
        .unwrap();
    assert_eq!(dump(&*back).await, original);
    check_copied(&*back, &filled).await;
    // Carol's one wrong code came along: four more block her codes, not
    // five.
    let limit = TotpLimit {
        max_failures: 5,
        block_ms: 60_000,
    };
    for _ in 0..3 {
        assert_eq!(
            back.note_totp_result(filled.totp_user, false, &limit).await.unwrap(),
            None
        );
    }
    assert!(back
        .note_totp_result(filled.totp_user, false, &limit)
        .await
        .unwrap()
        .is_some());
    // Each database keeps the store id it was made with.
    let ids = [sqlite.store.store_id(), pg.store.store_id(), back.store_id()];
    assert!(ids[0] != ids[1] && ids[1] != ids[2] && ids[0] != ids[2], "{ids:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_holds_anything_is_refused_and_left_unchanged() {
    let source = Fixture::sqlite().await;
    source
        .store
        .create_cloud_user(&upn("alice@corp.example.com"), MfaState::Enabled, None)
        .await
        .unwrap();
    let record = audit(T0, "someone", None, false);
    let pass = sync_pass("full", T0);
    for postgres in [false, true] {
        // One target per kind of row that makes a store not empty.
        for (kind, expected) in [
            // A user comes with the history of their state.
            ("user", &["users", "mfa_state_history"][..]),
            ("app password", &["users", "app_passwords", "mfa_state_history"][..]),
            ("session", &["users", "portal_sessions", "mfa_state_history"][..]),
            ("audit", &["audit"][..]),
            ("sync pass", &["sync_passes"][..]),
        ] {
            let target = if postgres {
                Fixture::postgres().await
            } else {
                Fixture::sqlite().await
            };
            let store = &*target.store;
            if expected.contains(&"users") {
                let bob = store
                    .create_cloud_user(&upn("bob@corp.example.com"), MfaState::Disabled, None)
                    .await
                    .unwrap();
                if kind == "app password" {
                    store
                        .create_app_password(&new_app_password(bob.id, "phone", 1))
                        .await
                        .unwrap();
                }
                if kind == "session" {
                    store
                        .put_portal_session(&PortalSession {
                            id_hash: [9; 32],
                            user_id: bob.id,
                            signed_in: true,
                            mfa: false,
                            mfa_state: MfaState::Disabled,
                            created_at: T0,
                            last_seen_at: T0,
                            return_to: None,
                            pending_totp: None,
                        })
                        .await
                        .unwrap();
                }
            }
            if kind == "audit" {
                store.append_audit(std::slice::from_ref(&record)).await.unwrap();
            }
            if kind == "sync pass" {
                store.record_sync_pass(&pass, None).await.unwrap();
            }
            let before = dump(store).await;
            let seq = store.latest_change_seq().await.unwrap();

            let err = copy(&*source.store, store, &source.url, &target.url).await.unwrap_err();
            let CopyError::NotEmpty { tables, .. } = &err else {
                panic!("a target with a {kind}: {err}");
            };
            assert_eq!(tables, expected, "a target with a {kind}");
            let message = err.to_string();
            assert!(message.contains(&target.url), "{message}");
            assert!(message.contains("nothing was changed"), "{message}");
            assert!(err.is_input());
            assert_eq!(dump(store).await, before, "a target with a {kind}");
            assert_eq!(store.latest_change_seq().await.unwrap(), seq);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copied_ids_are_kept_and_new_rows_follow_them() {
    let source = Fixture::sqlite().await;
    // A first user with a high id, as a store that has seen many users
    // come and go would have: later ones follow it.
    let raw = raw_sqlite(&source).await;
    sqlx::query(
        "INSERT INTO users (id, upn, source, mfa_state, created_at, updated_at)
         VALUES (41, 'first@corp.example.com', 'cloud', 'enabled', 1, 1)",
    )
    .execute(raw.pool())
    .await
    .unwrap();
    raw.close().await;
    let store = &*source.store;
    let alice = store
        .create_cloud_user(&upn("alice@corp.example.com"), MfaState::Enforced, None)
        .await
        .unwrap();
    assert_eq!(alice.id, UserId(42));
    for n in 0..3 {
        store
            .create_app_password(&new_app_password(alice.id, &format!("device {n}"), n))
            .await
            .unwrap();
    }
    store.delete_app_password(alice.id, "device 1").await.unwrap();
    store
        .append_audit(&[audit(T0, "alice", Some(alice.id), true)])
        .await
        .unwrap();
    let pass = sync_pass("full", T0);
    store.record_sync_pass(&pass, None).await.unwrap();
    let copied_passwords: Vec<AppPasswordId> = store
        .list_app_passwords(alice.id)
        .await
        .unwrap()
        .iter()
        .map(|a| a.id)
        .collect();
    assert_eq!(copied_passwords, [AppPasswordId(1), AppPasswordId(3)]);

    for target in [Fixture::postgres().await, Fixture::sqlite().await] {
        copy(store, &*target.store, &source.url, &target.url).await.unwrap();
        let on = &*target.store;
        let ids: Vec<UserId> = on.load_all_users().await.unwrap().iter().map(|u| u.id).collect();
        assert_eq!(ids, [UserId(41), UserId(42)], "{}", target.url);
        let kept: Vec<AppPasswordId> = on
            .list_app_passwords(alice.id)
            .await
            .unwrap()
            .iter()
            .map(|a| a.id)
            .collect();
        assert_eq!(kept, copied_passwords, "{}", target.url);

        // New rows of every kind whose key the database draws: none of
        // them may collide with a copied key.
        let bob = on
            .create_cloud_user(&upn("bob@corp.example.com"), MfaState::Enabled, None)
            .await
            .unwrap();
        assert_eq!(bob.id, UserId(43), "{}", target.url);
        let device = on
            .create_app_password(&new_app_password(bob.id, "phone", 9))
            .await
            .unwrap();
        assert_eq!(device.id, AppPasswordId(4), "{}", target.url);
        on.append_audit(&[audit(T0 + 1, "bob", Some(bob.id), true)])
            .await
            .unwrap();
        on.record_sync_pass(&pass, None).await.unwrap();
        let log = on.query_audit(&AuditFilter::default()).await.unwrap();
        assert_eq!(log.len(), 2, "{}", target.url);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_already_running_on_the_target_reloads_after_a_copy() {
    let source = Fixture::sqlite().await;
    let alice = source
        .store
        .create_cloud_user(&upn("alice@corp.example.com"), MfaState::Enforced, None)
        .await
        .unwrap();
    let device = new_app_password(alice.id, "phone", 1);
    source.store.create_app_password(&device).await.unwrap();
    source.store.set_allow_app_passwords(true).await.unwrap();

    let target = Fixture::postgres().await;
    // A node started on the empty database before the copy.
    let view = Index::load(&*target.store).await.unwrap();
    assert_eq!(view.user_count(), 0);
    copy(&*source.store, &*target.store, &source.url, &target.url)
        .await
        .unwrap();
    let refreshed = view.refresh(&*target.store).await.unwrap();
    assert!(refreshed.everything);
    assert_eq!(view.user_count(), 1);
    assert!(view.user_by_upn("alice@corp.example.com").is_some());
    assert!(view.app_password_by_tag(&device.tag).is_some());
    assert!(view.allow_app_passwords());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_copy_leaves_the_target_empty() {
    let source = Fixture::sqlite().await;
    let alice = source
        .store
        .create_cloud_user(&upn("alice@corp.example.com"), MfaState::Enabled, None)
        .await
        .unwrap();
    let mut refused = audit(T0, "alice", Some(alice.id), true);
    refused.route = "/refused".into();
    source.store.append_audit(&[refused]).await.unwrap();
    let target = Fixture::postgres().await;
    // The last table copied cannot be written: everything before it was
    // written in the same transaction, and must be gone too.
    let database = target.url.rsplit('/').next().unwrap();
    pg_cluster::shared()
        .psql(
            database,
            "ALTER TABLE audit ADD CONSTRAINT no_refused CHECK (route <> '/refused')",
        )
        .unwrap();
    let before = dump(&*target.store).await;
    let err = copy(&*source.store, &*target.store, &source.url, &target.url)
        .await
        .unwrap_err();
    assert!(matches!(err, CopyError::Table { table: "audit", .. }), "{err}");
    assert!(err.to_string().contains("nothing was changed"), "{err}");
    assert_eq!(dump(&*target.store).await, before);
    assert_eq!(target.store.latest_change_seq().await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_cannot_be_copied_is_refused_before_anything_is_written() {
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(T0));
    let dir = tempfile::tempdir().unwrap();
    let none = StoreAccess::default();
    let sqlite = |name: &str| format!("sqlite://{}", dir.path().join(name).display());
    let endpoint = |url| Endpoint { url, access: &none };

    // No source: no target is made either.
    let (missing, target) = (sqlite("missing.db"), sqlite("target.db"));
    let err = copy_store(endpoint(&missing), endpoint(&target), clock.clone())
        .await
        .unwrap_err();
    assert!(matches!(err, CopyError::SourceMissing { .. }), "{err}");
    assert!(err.to_string().contains(&missing), "{err}");
    assert!(!dir.path().join("target.db").exists());
    // An empty PostgreSQL database holds no store to copy either.
    let pg = Fixture::postgres().await;
    let cluster = pg_cluster::shared();
    let empty = cluster.url(&cluster.create_database().unwrap());
    let err = copy_store(
        Endpoint {
            url: &empty,
            access: &pg.access,
        },
        endpoint(&target),
        clock.clone(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, CopyError::SourceMissing { .. }), "{err}");

    // One store under two spellings is one store.
    let f = Fixture::sqlite().await;
    let other_spelling = f.url.replace("/fedgate.db", "/./fedgate.db");
    let err = copy_store(endpoint(&f.url), endpoint(&other_spelling), clock.clone())
        .await
        .unwrap_err();
    assert!(matches!(err, CopyError::SameStore { .. }), "{err}");

    // A password in a URL is never repeated.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let with_password = format!("postgres://fedgate:hunter2@127.0.0.1:{port}/x");
    let err = copy_store(endpoint(&f.url), endpoint(&with_password), clock.clone())
        .await
        .unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("target (--to)") && message.contains("fedgate:***@"),
        "{message}"
    );
    assert!(!message.contains("hunter2"), "{message}");
    let err = copy_store(endpoint(&with_password), endpoint(&target), clock)
        .await
        .unwrap_err();
    assert!(!err.to_string().contains("hunter2"), "{err}");
}

/// The schema's tables and columns, and the type each column is declared
/// with, as `(table, column, type)`.
fn check_coverage(schema: &[(String, String, String)], declared: fn(ColumnType) -> &'static str, backend: &str) {
    for (table, column, kind) in schema {
        if LEFT_OUT_TABLES.contains(&table.as_str()) || LEFT_OUT_COLUMNS.contains(&(table.as_str(), column.as_str())) {
            continue;
        }
        let copied = TABLES
            .iter()
            .find(|t| t.name == table)
            .unwrap_or_else(|| panic!("{backend}: table {table} is neither copied nor left out on purpose"));
        let (_, ty) = copied
            .columns
            .iter()
            .find(|(name, _)| name == column)
            .unwrap_or_else(|| panic!("{backend}: column {table}.{column} is neither copied nor left out on purpose"));
        assert_eq!(kind, declared(*ty), "{backend}: {table}.{column}");
    }
    for table in TABLES {
        for (column, _) in table.columns {
            assert!(
                schema.iter().any(|(t, c, _)| t == table.name && c == column),
                "{backend}: {}.{column} is copied but not in the schema",
                table.name
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_column_of_the_schema_is_copied_or_left_out_on_purpose() {
    let f = Fixture::sqlite().await;
    let raw = raw_sqlite(&f).await;
    let schema: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT m.name, p.name, p.type FROM sqlite_master m, pragma_table_info(m.name) p
         WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%'",
    )
    .fetch_all(raw.pool())
    .await
    .unwrap();
    assert!(schema.len() > 40, "{schema:?}");
    check_coverage(
        &schema,
        |ty| match ty {
            ColumnType::Integer | ColumnType::Bool => "INTEGER",
            ColumnType::Text => "TEXT",
            ColumnType::Blob => "BLOB",
        },
        "SQLite",
    );

    let pg = Fixture::postgres().await;
    let out = pg_cluster::shared()
        .psql(
            pg.url.rsplit('/').next().unwrap(),
            "SELECT table_name, column_name, data_type FROM information_schema.columns
             WHERE table_schema = current_schema()",
        )
        .unwrap();
    let schema: Vec<(String, String, String)> = out
        .lines()
        .map(|line| {
            let mut parts = line.split('|').map(str::to_owned);
            let mut next = || parts.next().unwrap_or_default();
            (next(), next(), next())
        })
        .collect();
    assert!(schema.len() > 40, "{out}");
    check_coverage(
        &schema,
        |ty| match ty {
            ColumnType::Integer => "bigint",
            ColumnType::Bool => "boolean",
            ColumnType::Text => "text",
            ColumnType::Blob => "bytea",
        },
        "PostgreSQL",
    );
}
