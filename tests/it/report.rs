//! `fedgate report usage` against a store with sign-ins and state changes
//! on past days, written through the store API under a clock the test
//! sets: the exact counts per day, and the shapes of `--json` and `--csv`.

use std::sync::Arc;

use fedgate::model::{
    AppPasswordName, AuditRecord, Clock, CredentialKind, ManualClock, MfaState, Reason, SystemClock, Upn, UserId,
};
use fedgate::store::{NewAppPassword, OpenMode};
use serde_json::Value;

use crate::support::Fedgate;

const DAY: i64 = 86_400_000;
const HOUR: i64 = 3_600_000;
const ALICE: &str = "alice@contoso.example";
const BOB: &str = "bob@contoso.example";

fn upn(s: &str) -> Upn {
    Upn::parse(s).unwrap()
}

fn signin(at: i64, user: Option<UserId>, credential: CredentialKind, success: bool, count: u32) -> AuditRecord {
    AuditRecord {
        at,
        upn_given: ALICE.into(),
        user_id: user,
        route: "/Microsoft-Server-ActiveSync".into(),
        credential,
        app_password_name: None,
        client_ip: "192.0.2.7".into(),
        user_agent: "Mail/1.0".into(),
        success,
        reason: if success {
            Reason::Password
        } else {
            Reason::BadCredentials
        },
        policy: None,
        count,
    }
}

fn date(ms: i64) -> String {
    // YYYY-MM-DD of a unix time, as the report prints it.
    fedgate::model::rfc3339(ms)[..10].to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_usage_report_counts_past_days_exactly() {
    let fedgate = Fedgate::builder().cloud_route("/whoami", "builtin:whoami", "").start();
    let now = SystemClock.now_ms();
    let today = now - now.rem_euclid(DAY);
    // Day n of the test: d(1) is nine days ago, d(6) four.
    let d = |n: i64| today - (10 - n) * DAY;
    let clock = Arc::new(ManualClock::new(now - 120 * DAY));
    let url = format!("sqlite://{}", fedgate.store_path().display());
    let store = fedgate::store::open(&url, clock.clone(), OpenMode::Existing)
        .await
        .unwrap();

    // Alice, enabled 120 days ago, with an app password never used since.
    let alice = store
        .create_cloud_user(&upn(ALICE), MfaState::Enabled, None)
        .await
        .unwrap();
    store
        .create_app_password(&NewAppPassword {
            user_id: alice.id,
            name: AppPasswordName::parse("old phone").unwrap(),
            tag: [7; 32],
            hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g".into(),
            limits: Default::default(),
        })
        .await
        .unwrap();
    clock.set(d(1) + 9 * HOUR);
    let bob = store
        .create_cloud_user(&upn(BOB), MfaState::Disabled, None)
        .await
        .unwrap();
    clock.set(d(2) + 12 * HOUR);
    store.set_mfa_state(&upn(BOB), MfaState::Enforced).await.unwrap();
    // Alice disabled and enabled again within day 3: counted that day.
    clock.set(d(3) + 10 * HOUR);
    store.set_mfa_state(&upn(ALICE), MfaState::Disabled).await.unwrap();
    clock.set(d(3) + 11 * HOUR);
    store.set_mfa_state(&upn(ALICE), MfaState::Enabled).await.unwrap();
    // Bob deleted on day 4 (counted that day, not after).
    clock.set(d(4) + 8 * HOUR);
    store.mark_deleted(&upn(BOB)).await.unwrap();
    clock.set(d(5) + 10 * HOUR);
    store.set_mfa_state(&upn(ALICE), MfaState::Disabled).await.unwrap();

    store
        .append_audit(&[
            signin(d(1) + HOUR, Some(alice.id), CredentialKind::Password, true, 3),
            signin(d(1) + 2 * HOUR, None, CredentialKind::Password, false, 1),
            signin(d(2) + HOUR, Some(alice.id), CredentialKind::AppPassword, true, 5),
            signin(d(4) + 23 * HOUR, Some(alice.id), CredentialKind::AppPassword, false, 2),
            // outside the range
            signin(d(0) + HOUR, Some(alice.id), CredentialKind::Password, true, 100),
        ])
        .await
        .unwrap();
    store.close().await;

    let (from, to) = (date(d(1)), date(d(6)));
    let admin = fedgate.admin();
    let report = admin
        .run(&["--json", "report", "usage", "--from", &from, "--to", &to])
        .json();
    let days = report["days"].as_array().unwrap();
    assert_eq!(days.len(), 6);
    let enabled: Vec<i64> = days.iter().map(|d| d["enabled_users"].as_i64().unwrap()).collect();
    assert_eq!(enabled, [1, 2, 2, 2, 1, 0]);
    let totals: Vec<i64> = days.iter().map(|d| d["signins_total"].as_i64().unwrap()).collect();
    assert_eq!(totals, [4, 5, 0, 2, 0, 0]);
    assert_eq!(
        days[0]["signins"]["password"],
        serde_json::json!({"success": 3, "failure": 1})
    );
    assert_eq!(
        days[1]["signins"]["app_password"],
        serde_json::json!({"success": 5, "failure": 0})
    );
    assert_eq!(days[3]["signins"]["app_password"]["failure"], 2);
    assert_eq!(days[0]["date"], from.as_str());
    assert_eq!(report["signins_total"], 11);
    assert_eq!(report["enabled_users"], 2);
    assert_eq!(report["history_begins"], Value::Null);
    let stale = report["stale_app_passwords"].as_array().unwrap();
    assert_eq!(stale.len(), 1, "{report}");
    assert_eq!(stale[0]["upn"], ALICE);
    assert_eq!(stale[0]["name"], "old phone");
    assert_eq!(stale[0]["last_used_at"], Value::Null);
    let _ = bob;

    // CSV: the days, a blank line, the clean-up list.
    let csv = admin
        .run(&["report", "usage", "--from", &from, "--to", &to, "--csv"])
        .success();
    let sections: Vec<&str> = csv.split("\n\n").collect();
    assert_eq!(sections.len(), 2, "{csv}");
    let rows: Vec<&str> = sections[0].lines().collect();
    assert_eq!(rows.len(), 7);
    assert!(
        rows[0].starts_with("date,app_password_success,app_password_failure,"),
        "{}",
        rows[0]
    );
    assert_eq!(rows[2], format!("{},5,0,0,0,0,0,0,0,5,2,false", date(d(2))));
    let stale_rows: Vec<&str> = sections[1].lines().collect();
    assert_eq!(stale_rows[0], "upn,app_password,created_at,last_used_at");
    assert!(
        stale_rows[1].starts_with("alice@contoso.example,old phone,"),
        "{}",
        stale_rows[1]
    );

    // Human tables name the same numbers.
    let table = admin.run(&["report", "usage", "--from", &from, "--to", &to]).success();
    assert!(table.contains("App passwords not used for 90 days (1):"), "{table}");
    assert!(table.contains("old phone"), "{table}");

    // Bad ranges are input errors, exit 2.
    for args in [
        vec!["report", "usage", "--from", &to, "--to", &from],
        vec!["report", "usage", "--from", "2020-01-01", "--to", "2021-06-01"],
        vec!["report", "usage", "--from", "2024-02-30"],
        vec!["--json", "report", "usage", "--csv"],
    ] {
        let out = admin.run(&args);
        assert_eq!(out.code, 2, "{args:?}: {}{}", out.stdout, out.stderr);
    }
}
