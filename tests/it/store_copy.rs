//! `fedgate store copy`, as an operator moving a one-node site to
//! PostgreSQL runs it: the SQLite node stopped, its store copied into an
//! empty database, and a node on that database, holding the old node's
//! server key, signing everyone in as before.

use std::time::Duration;

use crate::signin::{assert_unauthorized, expect_reasons, signed_in, SignIn};
use crate::support::fedgate::run_cli;
use crate::support::postgres::{shared, Database};
use crate::support::Fedgate;

const ALICE: &str = "alice@contoso.example";
const BOB: &str = "bob@contoso.example";
const CAROL: &str = "carol@contoso.example";
const BOB_PASSWORD: &str = "Correct horse 7";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_node_site_moves_to_postgres_and_signs_everyone_in_as_before() {
    // The one node, on its SQLite store: alice signs in with an app
    // password (MFA enforced), bob, who has no second factor, with his
    // password.
    let mut old = Fedgate::builder()
        .admin()
        .cloud_route("/whoami", "builtin:whoami", "")
        .start();
    let on_old = old.admin();
    on_old.allow_app_passwords(true);
    on_old.add_user(ALICE, "enforced", None);
    on_old.add_user(BOB, "enabled", Some(BOB_PASSWORD));
    let phone = on_old.create_app_password(ALICE, "phone");
    signed_in(
        &SignIn::new(old.plain, ALICE, &phone)
            .agent("before-the-move")
            .send()
            .await,
        "alice on the old node",
    );
    expect_reasons(&on_old, &[("before-the-move", "app_password")]);
    old.signal("TERM");
    let stopped = old.wait_exit(Duration::from_secs(30)).expect("the old node stops");
    assert!(stopped.success(), "{stopped}");

    let db = Database::new();
    let from = format!("sqlite://{}", old.store_path().display());
    let password_file = db.password_file.display().to_string();
    let copy = |to: &str, password_file: Option<&str>| {
        let mut args = vec!["--json", "store", "copy", "--from", &from, "--to", to];
        if let Some(file) = password_file {
            args.extend(["--to-password-file", file]);
        }
        run_cli(&args)
    };
    let (code, out, err) = copy(&db.url, Some(&password_file));
    assert_eq!(code, 0, "{out}{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(report["tables"]["users"], 2, "{report}");
    assert_eq!(report["tables"]["app_passwords"], 1, "{report}");
    assert_eq!(report["to"], db.url.as_str(), "{report}");

    // A second copy into the same database is refused, and says so
    // without repeating a password given in the URL.
    let cluster = shared();
    let database = db.url.rsplit('/').next().unwrap();
    let (code, out, err) = copy(&cluster.url_with_password(database), None);
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("not empty") && err.contains("nothing was changed"),
        "{err}"
    );
    assert!(!err.contains(cluster.password()), "{err}");

    // The server key travels with the store: the new node holds the old
    // node's, so the old app password's lookup tag is found.
    std::fs::copy(old.dir.path().join("data/fedgate.key"), &db.key_file).unwrap();
    let new = db.node().start();
    signed_in(
        &SignIn::new(new.plain, ALICE, &phone)
            .agent("after-the-move")
            .send()
            .await,
        "alice's old app password on the new node",
    );
    signed_in(
        &SignIn::new(new.plain, BOB, BOB_PASSWORD).send().await,
        "bob's password on the new node",
    );
    assert_unauthorized(
        &SignIn::new(new.plain, BOB, "Wrong horse 7").send().await,
        "a wrong password on the new node",
    );
    // What the old node logged came along, and the new node logs on.
    let on_new = new.admin();
    expect_reasons(
        &on_new,
        &[("before-the-move", "app_password"), ("after-the-move", "app_password")],
    );

    // New users and app passwords get ids of their own, past the copied
    // ones.
    on_new.add_user(CAROL, "enforced", None);
    let carol_phone = on_new.create_app_password(CAROL, "phone");
    let alice_tablet = on_new.create_app_password(ALICE, "tablet");
    for (user, password) in [(CAROL, &carol_phone), (ALICE, &alice_tablet), (ALICE, &phone)] {
        signed_in(
            &SignIn::new(new.plain, user, password).send().await,
            "a user and app passwords made after the move",
        );
    }
}

#[test]
fn a_copy_from_nowhere_is_refused_and_makes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let missing = format!("sqlite://{}", dir.path().join("missing.db").display());
    let target = dir.path().join("target.db");
    let (code, out, err) = run_cli(&[
        "store",
        "copy",
        "--from",
        &missing,
        "--to",
        &format!("sqlite://{}", target.display()),
    ]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("no store to copy") && err.contains(&missing), "{err}");
    assert!(!target.exists());
}
