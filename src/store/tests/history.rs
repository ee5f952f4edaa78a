//! The MFA state history, the report's queries and enrolment notices, on
//! both backends.

use super::*;
use crate::model::NoticeStatus;

/// Every history row, as (user, state, deleted, time after T0).
async fn history(store: &dyn Store) -> Vec<(UserId, MfaState, bool, i64)> {
    store
        .state_history(0, i64::MAX)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.user_id, r.state, r.deleted, r.at - T0))
        .collect()
}

async fn every_change_of_state_or_existence_is_in_the_history(f: Fixture) {
    let (store, clock) = f.parts();
    let alice = store
        .create_cloud_user(&upn("alice@corp.example.com"), MfaState::Enabled, None)
        .await
        .unwrap();
    clock.advance(10);
    store
        .set_mfa_state(&upn("alice@corp.example.com"), MfaState::Enforced)
        .await
        .unwrap();
    // Unchanged: nothing recorded.
    store
        .set_mfa_state(&upn("alice@corp.example.com"), MfaState::Enforced)
        .await
        .unwrap();
    clock.advance(10);
    let bob = store
        .upsert_federated_user(&federated(&upn("bob@corp.example.com"), true))
        .await
        .unwrap()
        .user;
    clock.advance(10);
    let lines = [StateLine {
        line: 1,
        upn: "bob@corp.example.com".into(),
        state: "enabled".into(),
    }];
    store.set_mfa_states(&lines).await.unwrap();
    clock.advance(10);
    store
        .apply_directory_changes(&[DirectoryChange::Delete { id: bob.id }])
        .await
        .unwrap();
    clock.advance(10);
    // Back from the directory, state kept.
    store
        .upsert_federated_user(&federated(&upn("bob@corp.example.com"), true))
        .await
        .unwrap();
    clock.advance(10);
    store.mark_deleted(&upn("alice@corp.example.com")).await.unwrap();
    store.mark_deleted(&upn("alice@corp.example.com")).await.unwrap();
    assert_eq!(
        history(store.as_ref()).await,
        [
            (alice.id, MfaState::Enabled, false, 0),
            (alice.id, MfaState::Enforced, false, 10),
            (alice.id, MfaState::Enforced, true, 60),
            (bob.id, MfaState::Disabled, false, 20),
            (bob.id, MfaState::Enabled, false, 30),
            (bob.id, MfaState::Enabled, true, 40),
            (bob.id, MfaState::Enabled, false, 50),
        ]
    );
    // A range starting later gets each user's row in force at its start.
    let from_35: Vec<(UserId, i64)> = store
        .state_history(T0 + 35, T0 + 55)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.user_id, r.at - T0))
        .collect();
    assert_eq!(from_35, [(alice.id, 10), (bob.id, 30), (bob.id, 40), (bob.id, 50)]);
    assert_eq!(
        store.history_begins().await.unwrap(),
        None,
        "a new store's history is complete"
    );
}

async fn sign_ins_are_summed_per_day_and_stale_app_passwords_found(f: Fixture) {
    let (store, clock) = f.parts();
    let day = 86_400_000;
    let alice = store
        .create_cloud_user(&upn("alice@corp.example.com"), MfaState::Enforced, None)
        .await
        .unwrap();
    let day0 = T0 - T0.rem_euclid(day);
    let mut app = audit(day0 + 5, "alice@corp.example.com", Some(alice.id), true);
    app.credential = CredentialKind::AppPassword;
    app.count = 4;
    let mut app2 = app.clone();
    app2.at = day0 + 6;
    app2.count = 3;
    let mut next_day = app.clone();
    next_day.at = day0 + day + 1;
    next_day.count = 2;
    let refused = audit(day0 + 7, "mallory@corp.example.com", None, false);
    store.append_audit(&[app, app2, next_day, refused]).await.unwrap();
    let groups = store.daily_signins(day0, day0 + 2 * day).await.unwrap();
    let groups: Vec<(i64, String, bool, i64)> = groups
        .into_iter()
        .map(|g| (g.day - day0 / day, g.credential, g.success, g.count))
        .collect();
    assert_eq!(
        groups,
        [
            (0, "app_password".into(), true, 7),
            (0, "password".into(), false, 1),
            (1, "app_password".into(), true, 2),
        ]
    );
    assert!(store
        .daily_signins(day0 + 2 * day, day0 + 3 * day)
        .await
        .unwrap()
        .is_empty());

    // Created at T0; one used at T0 + 10 days; the check is as of 100 days.
    store
        .create_app_password(&new_app_password(alice.id, "old phone", 1))
        .await
        .unwrap();
    let used = store
        .create_app_password(&new_app_password(alice.id, "tablet", 2))
        .await
        .unwrap();
    store
        .record_last_used(&[LastUsed {
            id: used.id,
            at: T0 + 10 * day,
            ip: "192.0.2.1".into(),
            user_agent: "Mail".into(),
        }])
        .await
        .unwrap();
    clock.advance(95 * day);
    store
        .create_app_password(&new_app_password(alice.id, "new phone", 3))
        .await
        .unwrap();
    let stale = store.stale_app_passwords(T0 + 5 * day).await.unwrap();
    let names: Vec<&str> = stale.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["old phone"], "used at 10 days, not stale as of 5");
    let stale = store.stale_app_passwords(T0 + 11 * day).await.unwrap();
    let names: Vec<(&str, Option<i64>)> = stale.iter().map(|s| (s.name.as_str(), s.last_used_at)).collect();
    assert_eq!(names, [("old phone", None), ("tablet", Some(T0 + 10 * day))]);
    assert_eq!(stale[0].upn, upn("alice@corp.example.com"));
    store.mark_deleted(&upn("alice@corp.example.com")).await.unwrap();
    assert!(store.stale_app_passwords(i64::MAX).await.unwrap().is_empty());
}

fn claim(c: &NoticeCandidate, holder: &str, now: i64) -> NoticeClaim {
    NoticeClaim {
        user_id: c.user_id,
        history_id: c.history_id,
        holder: holder.into(),
        address: Some(c.upn.to_string()),
        now,
        until: now + 1_000,
    }
}

fn done(c: &NoticeCandidate, holder: &str, status: NoticeStatus, now: i64) -> NoticeDone {
    NoticeDone {
        history_id: c.history_id,
        holder: holder.into(),
        status,
        error: (status != NoticeStatus::Sent).then(|| "421 try later".into()),
        now,
    }
}

async fn each_change_into_enabled_is_noticed_once(f: Fixture) {
    let (store, _) = f.parts();
    store
        .create_cloud_user(&upn("alice@corp.example.com"), MfaState::Enabled, None)
        .await
        .unwrap();
    store
        .create_cloud_user(&upn("bob@corp.example.com"), MfaState::Enforced, None)
        .await
        .unwrap();
    store
        .create_cloud_user(&upn("carol@corp.example.com"), MfaState::Disabled, None)
        .await
        .unwrap();
    let due = store.notice_candidates().await.unwrap();
    assert_eq!(due.len(), 1, "{due:?}");
    let alice = due[0].clone();
    assert_eq!(alice.upn, upn("alice@corp.example.com"));
    assert_eq!(alice.notice, None);

    // One claim wins; a second holder is refused while it holds.
    assert!(store.claim_notice(&claim(&alice, "a", T0)).await.unwrap());
    let other = f.open_again().await;
    assert!(!other.claim_notice(&claim(&alice, "b", T0 + 1)).await.unwrap());
    // A failure is recorded, and may be claimed again by the next run.
    assert!(store
        .finish_notice(&done(&alice, "a", NoticeStatus::Failed, T0 + 2))
        .await
        .unwrap());
    let due = store.notice_candidates().await.unwrap();
    assert_eq!(
        due[0].notice.as_ref().map(|n| (n.status, n.attempts)),
        Some((NoticeStatus::Failed, 1))
    );
    assert!(other.claim_notice(&claim(&alice, "b", T0 + 3)).await.unwrap());
    // The first holder's late word is not taken.
    assert!(!store
        .finish_notice(&done(&alice, "a", NoticeStatus::Sent, T0 + 4))
        .await
        .unwrap());
    assert!(other
        .finish_notice(&done(&alice, "b", NoticeStatus::Sent, T0 + 5))
        .await
        .unwrap());
    assert!(store.notice_candidates().await.unwrap().is_empty(), "sent once");
    assert!(
        !store.claim_notice(&claim(&alice, "c", T0 + 6)).await.unwrap(),
        "never twice"
    );
    let notices = store.list_notices().await.unwrap();
    assert_eq!(notices.len(), 1);
    assert_eq!(
        (notices[0].status, notices[0].attempts, notices[0].sent_at),
        (NoticeStatus::Sent, 2, Some(T0 + 5))
    );
    assert_eq!(notices[0].last_error, None);

    // Disabled and enabled again: a new change, a new notice.
    store
        .set_mfa_state(&upn("alice@corp.example.com"), MfaState::Disabled)
        .await
        .unwrap();
    assert!(store.notice_candidates().await.unwrap().is_empty());
    store
        .set_mfa_state(&upn("alice@corp.example.com"), MfaState::Enabled)
        .await
        .unwrap();
    let again = store.notice_candidates().await.unwrap();
    assert_eq!(again.len(), 1);
    assert_ne!(again[0].history_id, alice.history_id);
    // A claim whose run died is taken over once it runs out.
    assert!(store.claim_notice(&claim(&again[0], "dead", T0 + 10)).await.unwrap());
    assert!(!store.claim_notice(&claim(&again[0], "next", T0 + 500)).await.unwrap());
    assert!(store.claim_notice(&claim(&again[0], "next", T0 + 1_011)).await.unwrap());
    // Deleted users are due nothing.
    store.mark_deleted(&upn("alice@corp.example.com")).await.unwrap();
    assert!(store.notice_candidates().await.unwrap().is_empty());
}

on_both_backends!(
    every_change_of_state_or_existence_is_in_the_history,
    sign_ins_are_summed_per_day_and_stale_app_passwords_found,
    each_change_into_enabled_is_noticed_once,
);

/// The upgrade to schema 11 on a store with users: one backfilled row per
/// user, as they are at the migration, and no notice due for them.
#[tokio::test]
async fn the_upgrade_backfills_each_user_as_they_are_then() {
    let f = Fixture::sqlite().await;
    let (store, clock) = f.parts();
    let alice = store
        .create_cloud_user(&upn("alice@corp.example.com"), MfaState::Enabled, None)
        .await
        .unwrap();
    let bob = store
        .create_cloud_user(&upn("bob@corp.example.com"), MfaState::Enforced, None)
        .await
        .unwrap();
    store.mark_deleted(&upn("bob@corp.example.com")).await.unwrap();
    store.close().await;
    // Back to schema 10, as an older fedgate left it.
    let pool = sqlx::SqlitePool::connect(&f.url).await.unwrap();
    sqlx::raw_sql(
        "DROP TABLE admin_events; DROP TABLE enrolment_notices; DROP TABLE mfa_state_history;
         ALTER TABLE app_passwords DROP COLUMN scope;
         ALTER TABLE app_passwords DROP COLUMN expires_at;
         ALTER TABLE app_passwords DROP COLUMN networks;
         DELETE FROM schema_version WHERE version >= 11;",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::raw_sql(super::UNDO_SYNC_PUSH).execute(&pool).await.unwrap();
    pool.close().await;
    clock.set(T0 + 5_000);
    let store = f.open_again().await;
    assert_eq!(
        history(store.as_ref()).await,
        [
            (alice.id, MfaState::Enabled, false, 5_000),
            (bob.id, MfaState::Enforced, true, 5_000),
        ]
    );
    assert_eq!(store.history_begins().await.unwrap(), Some(T0 + 5_000));
    assert!(store.notice_candidates().await.unwrap().is_empty());
}
