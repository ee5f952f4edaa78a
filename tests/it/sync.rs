//! The scheduled directory sync against a real OpenLDAP `slapd`: disables
//! reaching every credential within two seconds, deletions at the next full
//! pass with the audit history kept, renames keeping the user and their app
//! passwords, thousands of users read through paged results past an
//! Active-Directory-like size limit, the mass-change guard (on demand and in
//! the server's passes), passes that fail midway changing nothing, `sync
//! status`, `[sync]` on by default and off on request, revocation on a
//! password change; and what a sync must not do: undo an operator's
//! `user disable`, or let an interrupted `sync run` hold up later passes.
//!
//! Tests that time the server's own passes run `fedgate serve`; the others
//! drive `fedgate sync run` alone against a store no server uses, so that
//! no scheduled pass races with the one under test.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use http::StatusCode;
use serde_json::Value;

use crate::signin::{expect_reasons, signed_in, SignIn};
use crate::support::admin::{Admin, CliOutput};
use crate::support::slapd::Slapd;
use crate::support::Fedgate;

const ALICE: &str = "alice@example.com";
const ALICE_PW: &str = "Alice's directory pw 1";
const BOB: &str = "bob@example.com";
const BOB_PW: &str = "Bob's directory pw 2";
const CAROL: &str = "carol@example.com";
const CAROLINE: &str = "caroline@example.com";
const CAROL_PW: &str = "Carol's directory pw 3";
const GENERATED_PW: &str = "Generated directory pw 4";
const ONPREM: &str = "/onprem/whoami";
const POLL: Duration = Duration::from_millis(50);
/// The contract: a directory disable reaches every credential within this.
const DISABLE_LIMIT: Duration = Duration::from_secs(2);
/// The numbers every pass reports, in `sync run --json`, `sync status` and
/// the "sync pass" log event.
const COUNTERS: [&str; 8] = [
    "duration_ms",
    "seen",
    "created",
    "updated",
    "disabled",
    "enabled",
    "deleted",
    "errors",
];

/// The `[directory]` table for `slapd` (search-then-bind with the service
/// account) searching under `base_dn`, with `extra` lines appended.
pub(crate) fn directory_section(slapd: &Slapd, base_dn: &str, extra: &str) -> String {
    format!(
        "[directory]\n\
         kind = \"openldap\"\n\
         urls = [\"{}\"]\n\
         bind_dn = \"{}\"\n\
         bind_password_file = \"{}\"\n\
         base_dn = \"{base_dn}\"\n\
         user_filter = \"(&(objectClass=inetOrgPerson)(mail={{upn}}))\"\n\
         login_filter = \"(&(objectClass=inetOrgPerson)(uid={{login}}))\"\n\
         disabled_filter = \"{}\"\n\
         domain = \"EXAMPLE\"\n\
         {extra}\n",
        slapd.url(),
        slapd.service_dn(),
        slapd.service_password_file().display(),
        slapd.disabled_filter(),
    )
}

pub(crate) fn sync_section(lines: &str) -> String {
    format!("[sync]\nenabled = true\n{lines}\n")
}

/// A slapd with alice and bob.
fn directory_with_alice_and_bob() -> Slapd {
    let slapd = Slapd::start();
    slapd.add_user("alice", ALICE, ALICE_PW);
    slapd.add_user("bob", BOB, BOB_PW);
    slapd
}

/// The sections of a server syncing `slapd` every second, with a full
/// pass every two.
fn fast_sync(slapd: &Slapd) -> [String; 2] {
    [
        directory_section(slapd, Slapd::PEOPLE_DN, "timeout = \"2s\""),
        sync_section("interval = \"1s\"\nfull_every = \"2s\""),
    ]
}

/// A config with `sections` plus a `cloud` route at /whoami and an `onprem`
/// one at /onprem/whoami.
pub(crate) fn builder(sections: &[String]) -> crate::support::fedgate::Builder {
    sections
        .iter()
        .fold(Fedgate::builder(), |b, s| b.section(s))
        .cloud_route("/whoami", "builtin:whoami", "")
        .route_in("onprem", "/onprem", "builtin:whoami", "")
}

/// `fedgate serve` with `sections`.
fn serve(sections: &[String]) -> Fedgate {
    builder(sections).start()
}

/// A store no server runs on, for `sync run` alone: the config file is
/// written to `name` in the directory, so several configs (say, with
/// different base DNs) can share one store.
struct Offline {
    dir: tempfile::TempDir,
}

impl Offline {
    fn new() -> Offline {
        Offline {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    fn config(&self, name: &str, sections: &[String]) -> Admin {
        let path: PathBuf = self.dir.path().join(name);
        std::fs::write(&path, builder(sections).config_text(self.dir.path())).expect("write config");
        let admin = Admin::new(&path);
        // No server creates this store: the first config creates it, as an
        // operator would before a first `sync run`.
        if !self.dir.path().join("data/fedgate.db").exists() {
            admin.run(&["store", "init"]).success();
        }
        admin
    }
}

/// How one `fedgate --json sync run` ended: its exit code and the pass it
/// printed.
struct Run {
    out: CliOutput,
    pass: Value,
}

impl Run {
    fn assert(&self, code: i32, kind: &str, outcome: &str) -> &Value {
        assert_eq!(
            self.out.code, code,
            "`fedgate {}` exit code:\n{}{}",
            self.out.command, self.out.stdout, self.out.stderr
        );
        check_pass(&self.pass, kind, outcome);
        &self.pass
    }

    /// The pass's message and standard error, for "what does it say".
    fn said(&self) -> String {
        format!("{} {}", self.pass["message"].as_str().unwrap_or(""), self.out.stderr)
    }
}

fn sync_run(admin: &Admin, flags: &[&str]) -> Run {
    let mut args = vec!["--json", "sync", "run"];
    args.extend_from_slice(flags);
    let out = admin.run(&args);
    parse_run(out)
}

fn parse_run(out: CliOutput) -> Run {
    let pass: Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "`fedgate {}` exited {} without printing a pass object ({e}):\n{}{}",
            out.command, out.code, out.stdout, out.stderr
        )
    });
    Run { out, pass }
}

fn counter(pass: &Value, name: &str) -> u64 {
    pass[name].as_u64().unwrap_or_else(|| panic!("no {name} in {pass}"))
}

/// A pass object as the contract spells it.
fn check_pass(pass: &Value, kind: &str, outcome: &str) {
    assert_eq!(pass["kind"], kind, "{pass}");
    assert_eq!(pass["outcome"], outcome, "{pass}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    // Times in --json output are RFC 3339 UTC, seconds precision.
    let started = pass["started_at"]
        .as_str()
        .and_then(|t| humantime::parse_rfc3339(t).ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as i64);
    assert!(
        started.is_some_and(|t| t > now - 3_600_000 && t <= now + 1_000),
        "started_at is no recent RFC 3339 time: {pass}"
    );
    for name in COUNTERS {
        counter(pass, name);
    }
    assert!(pass["message"].is_null() || pass["message"].is_string(), "{pass}");
    if outcome != "completed" {
        assert!(pass["message"].is_string(), "a {outcome} pass says why: {pass}");
    }
}

fn assert_counts(pass: &Value, want: &[(&str, u64)]) {
    for (name, value) in want {
        assert_eq!(counter(pass, name), *value, "{name} in {pass}");
    }
}

/// Non-deleted users by UPN, from `user list`.
pub(crate) fn users(admin: &Admin) -> BTreeMap<String, Value> {
    let list = admin.run(&["--json", "user", "list"]).json();
    list.as_array()
        .unwrap_or_else(|| panic!("user list printed {list}"))
        .iter()
        .map(|u| (u["upn"].as_str().unwrap().to_owned(), u.clone()))
        .collect()
}

pub(crate) fn user_show(admin: &Admin, upn: &str) -> Value {
    admin.run(&["--json", "user", "show", upn]).json()
}

/// Whether the store holds `upn` as deleted: `user show` either shows the
/// record with `"deleted": true` or refuses, saying it is deleted. Panics
/// when the store has no such user at all.
pub(crate) fn is_deleted(admin: &Admin, upn: &str) -> bool {
    let out = admin.run(&["--json", "user", "show", upn]);
    if out.code == 0 {
        let user: Value = serde_json::from_str(&out.stdout).expect("user show JSON");
        if user["deleted"] == true {
            let apps = user["app_passwords"].as_array().map_or(0, Vec::len);
            assert_eq!(apps, 0, "a deleted user kept app passwords: {user}");
        }
        return user["deleted"] == true;
    }
    assert!(
        out.stderr.contains("deleted"),
        "user show {upn} failed otherwise:\n{}{}",
        out.stdout,
        out.stderr
    );
    true
}

fn app_password_count(admin: &Admin, upn: &str) -> usize {
    let list = admin.run(&["--json", "app-password", "list", upn]).json();
    list.as_array()
        .unwrap_or_else(|| panic!("app-password list printed {list}"))
        .len()
}

/// Polls `check` every 100 ms until it returns `Some`; panics naming
/// `what` (and with the server's log, if any) after `timeout`.
pub(crate) async fn eventually<T>(
    what: &str,
    timeout: Duration,
    fedgate: Option<&Fedgate>,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = check() {
            return v;
        }
        if start.elapsed() > timeout {
            panic!(
                "{what}: not after {timeout:?}; fedgate log:\n{}",
                fedgate.map(|f| f.raw_logs()).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The server's first pass, a full one run at start, completed.
pub(crate) fn wait_first_pass(fedgate: &Fedgate) -> Value {
    fedgate.wait_log(Duration::from_secs(20), |v| {
        v["message"] == "sync pass" && v["kind"] == "full" && v["outcome"] == "completed"
    })
}

pub(crate) fn passes(fedgate: &Fedgate) -> Vec<Value> {
    fedgate.events("sync pass")
}

/// Waits until the passes the server logs from now on satisfy `done`;
/// returns them.
async fn passes_until(fedgate: &Fedgate, what: &str, timeout: Duration, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let before = passes(fedgate).len();
    eventually(what, timeout, Some(fedgate), || {
        let later = passes(fedgate).split_off(before);
        done(&later).then_some(later)
    })
    .await
}

fn full_passes(passes: &[Value]) -> usize {
    passes.iter().filter(|p| p["kind"] == "full").count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_disable_revokes_every_credential_within_two_seconds_and_enable_restores_them() {
    let slapd = directory_with_alice_and_bob();
    let fedgate = serve(&[
        directory_section(&slapd, Slapd::PEOPLE_DN, "timeout = \"2s\""),
        sync_section("interval = \"1s\"\nfull_every = \"10m\""),
    ]);
    let admin = fedgate.admin();
    let first = wait_first_pass(&fedgate);
    assert_counts(&first, &[("seen", 2), ("created", 2), ("errors", 0)]);
    let alice = user_show(&admin, ALICE);
    assert_eq!(alice["source"], "federated", "{alice}");
    assert_eq!(alice["enabled"], true, "{alice}");
    assert_eq!(alice["directory"]["dn"], Slapd::user_dn("alice"), "{alice}");
    assert_eq!(alice["directory"]["login"], "alice", "{alice}");
    assert_eq!(alice["directory"]["anchor"], slapd.entry_uuid("alice"), "{alice}");

    let addr = fedgate.plain;
    let alice_org = SignIn::new(addr, ALICE, ALICE_PW).path(ONPREM).agent("alice-org");
    let bob_org = SignIn::new(addr, BOB, BOB_PW).path(ONPREM).agent("bob-org");
    signed_in(&alice_org.send().await, "alice, org password");
    signed_in(&bob_org.send().await, "bob, org password");
    admin.allow_app_passwords(true);
    let app = admin.create_app_password(ALICE, "phone");
    let alice_app = SignIn::new(addr, ALICE, &app).agent("alice-app");
    alice_app.until(StatusCode::OK, POLL).await;
    // Verified org passwords are cached now: the disable must drop them.
    signed_in(&alice_org.send().await, "alice, org password, cached");

    slapd.disable_user("alice");
    let start = Instant::now();
    let (mut app_refused, mut org_refused) = (None, None);
    while app_refused.is_none() || org_refused.is_none() {
        if app_refused.is_none() && alice_app.send().await.0 == StatusCode::UNAUTHORIZED {
            app_refused = Some(start.elapsed());
        }
        if org_refused.is_none() && alice_org.send().await.0 == StatusCode::UNAUTHORIZED {
            org_refused = Some(start.elapsed());
        }
        signed_in(&bob_org.send().await, "bob while alice is being disabled");
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "alice still signs in 10 s after the directory disabled her (app refused after {app_refused:?}, \
             org password after {org_refused:?}); fedgate log:\n{}",
            fedgate.raw_logs()
        );
        tokio::time::sleep(POLL).await;
    }
    let took = app_refused.max(org_refused).unwrap();
    eprintln!(
        "directory disable refused alice's app password after {app_refused:?}, her org password after {org_refused:?}"
    );
    assert!(
        took < DISABLE_LIMIT,
        "disable took {took:?} (app password {app_refused:?}, org password {org_refused:?})"
    );

    // Refused as disabled, whatever the credential; bob is untouched; the
    // app password is kept.
    assert_eq!(
        alice_org.agent("alice-org-disabled").send().await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        SignIn::new(addr, ALICE, &app)
            .agent("alice-app-disabled")
            .send()
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
    signed_in(&bob_org.agent("bob-still").send().await, "bob");
    expect_reasons(
        &admin,
        &[
            ("alice-org-disabled", "account_disabled"),
            ("alice-app-disabled", "account_disabled"),
            ("bob-still", "password"),
        ],
    );
    let alice = user_show(&admin, ALICE);
    assert_eq!(alice["enabled"], false, "{alice}");
    assert_eq!(alice["deleted"], false, "{alice}");
    assert_eq!(alice["app_passwords"].as_array().map(Vec::len), Some(1), "{alice}");
    assert_eq!(user_show(&admin, BOB)["enabled"], true);
    assert!(
        passes(&fedgate)
            .iter()
            .any(|p| p["kind"] == "incremental" && p["outcome"] == "completed" && p["disabled"] == 1),
        "no incremental pass reported the disable: {:?}",
        passes(&fedgate)
    );

    // Enabled again in the directory: both credentials work again.
    slapd.enable_user("alice");
    let took = alice_app.until(StatusCode::OK, POLL).await;
    assert!(took < Duration::from_secs(4), "re-enable took {took:?}");
    signed_in(&alice_org.send().await, "alice, org password, re-enabled");
    let alice = user_show(&admin, ALICE);
    assert_eq!(alice["enabled"], true, "{alice}");
    assert_eq!(alice["app_passwords"].as_array().map(Vec::len), Some(1), "{alice}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_deleted_in_the_directory_is_deleted_at_the_next_full_pass_with_history_kept() {
    let slapd = directory_with_alice_and_bob();
    let fedgate = serve(&fast_sync(&slapd));
    let admin = fedgate.admin();
    wait_first_pass(&fedgate);
    let bob_id = user_show(&admin, BOB)["id"].clone();

    admin.allow_app_passwords(true);
    let app = admin.create_app_password(BOB, "laptop");
    let bob_app = SignIn::new(fedgate.plain, BOB, &app).agent("bob-app");
    bob_app.until(StatusCode::OK, POLL).await;
    signed_in(
        &SignIn::new(fedgate.plain, BOB, BOB_PW)
            .path(ONPREM)
            .agent("bob-org")
            .send()
            .await,
        "bob, org password",
    );
    expect_reasons(&admin, &[("bob-app", "app_password"), ("bob-org", "password")]);

    slapd.delete_user("bob");
    let start = Instant::now();
    eventually(
        "bob deleted in the store",
        Duration::from_secs(8),
        Some(&fedgate),
        || is_deleted(&admin, BOB).then_some(()),
    )
    .await;
    let took = start.elapsed();
    assert!(took < Duration::from_secs(5), "deletion took {took:?}");

    // Deleted by a full pass; incremental passes cannot see deletions.
    let all = passes(&fedgate);
    let deleting: Vec<&Value> = all.iter().filter(|p| counter(p, "deleted") > 0).collect();
    assert!(
        !deleting.is_empty() && deleting.iter().all(|p| p["kind"] == "full"),
        "deletions reported by: {deleting:?}"
    );
    assert!(!users(&admin).contains_key(BOB), "user list shows a deleted user");
    assert!(users(&admin).contains_key(ALICE));
    // The running server drops the app password as it would any
    // revocation, within a second of the store change.
    let took = bob_app
        .agent("bob-app-deleted")
        .until(StatusCode::UNAUTHORIZED, POLL)
        .await;
    assert!(
        took < Duration::from_secs(1),
        "the deleted user's app password worked for {took:?} more"
    );

    // The audit history stays, and so does the user's id in it.
    let history = admin.run(&["--json", "signins", "--user", BOB]).json();
    let history = history
        .as_array()
        .unwrap_or_else(|| panic!("signins printed {history}"));
    for agent in ["bob-app", "bob-org"] {
        assert!(
            history.iter().any(|r| r["user_agent"] == agent && r["success"] == true),
            "bob's {agent} sign-in is gone from the audit log: {history:?}"
        );
    }
    // A deleted user shown as such keeps the id.
    let shown = admin.run(&["--json", "user", "show", BOB]);
    if shown.code == 0 {
        assert_eq!(shown.json()["id"], bob_id);
    }

    // Later full passes neither resurrect nor delete again.
    let later = passes_until(&fedgate, "two more full passes", Duration::from_secs(8), |later| {
        full_passes(later) >= 2
    })
    .await;
    for p in &later {
        assert_eq!(p["outcome"], "completed", "{p}");
        assert_counts(p, &[("deleted", 0), ("created", 0)]);
    }
    assert!(is_deleted(&admin, BOB));

    // Back in the directory (a new entry, so a new anchor): the same user
    // returns, with no app passwords, and the old one stays dead.
    slapd.add_user("bob", BOB, "Bob's new pw");
    let back = eventually("bob back in the store", Duration::from_secs(5), Some(&fedgate), || {
        users(&admin).get(BOB).cloned()
    })
    .await;
    assert_eq!(back["id"], bob_id, "a returning UPN gets the same id: {back}");
    assert_eq!(back["enabled"], true, "{back}");
    assert_eq!(back["directory"]["anchor"], slapd.entry_uuid("bob"), "{back}");
    assert_eq!(app_password_count(&admin, BOB), 0);
    assert_eq!(
        bob_app.agent("bob-app-returned").send().await.0,
        StatusCode::UNAUTHORIZED
    );
    // The server sees the returning user as it sees any store change.
    let took = SignIn::new(fedgate.plain, BOB, "Bob's new pw")
        .path(ONPREM)
        .agent("bob-org-returned")
        .until(StatusCode::OK, POLL)
        .await;
    assert!(took < Duration::from_secs(2), "the returning user waited {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renamed_user_keeps_id_and_app_passwords_under_the_new_upn() {
    let slapd = Slapd::start();
    slapd.add_user("alice", ALICE, ALICE_PW);
    slapd.add_user("carol", CAROL, CAROL_PW);
    let uuid = slapd.entry_uuid("carol");
    let fedgate = serve(&[
        directory_section(&slapd, Slapd::PEOPLE_DN, "timeout = \"2s\""),
        sync_section("interval = \"1s\"\nfull_every = \"3s\""),
    ]);
    let admin = fedgate.admin();
    wait_first_pass(&fedgate);
    let carol = user_show(&admin, CAROL);
    assert_eq!(carol["directory"]["anchor"], uuid, "{carol}");
    admin.allow_app_passwords(true);
    let app = admin.create_app_password(CAROL, "tablet");
    SignIn::new(fedgate.plain, CAROL, &app)
        .until(StatusCode::OK, POLL)
        .await;

    // The MFA state is fedgate's, not the directory's: a rename keeps it.
    admin
        .run(&["user", "set-state", "--state", "enforced", CAROL])
        .success();
    slapd.rename_user("carol", "caroline");
    slapd.modify(&format!(
        "dn: {}\nchangetype: modify\nreplace: mail\nmail: {CAROLINE}\n-\n",
        Slapd::user_dn("caroline")
    ));
    assert_eq!(slapd.entry_uuid("caroline"), uuid);

    let caroline = eventually(
        "the new UPN in the store",
        Duration::from_secs(8),
        Some(&fedgate),
        || {
            let out = admin.run(&["--json", "user", "show", CAROLINE]);
            (out.code == 0).then(|| out.json())
        },
    )
    .await;
    assert_eq!(caroline["id"], carol["id"], "a rename made a new user: {caroline}");
    assert_eq!(caroline["source"], "federated", "{caroline}");
    assert_eq!(caroline["enabled"], true, "{caroline}");
    assert_eq!(caroline["deleted"], false, "{caroline}");
    assert_eq!(caroline["directory"]["anchor"], uuid, "{caroline}");
    assert_eq!(caroline["mfa_state"], "enforced", "{caroline}");
    // The mail change may land a pass after the rename.
    eventually("the new DN and login", Duration::from_secs(5), Some(&fedgate), || {
        let c = user_show(&admin, CAROLINE);
        (c["directory"]["dn"] == Slapd::user_dn("caroline") && c["directory"]["login"] == "caroline").then_some(())
    })
    .await;
    assert_eq!(app_password_count(&admin, CAROLINE), 1);
    let old = admin.run(&["--json", "user", "show", CAROL]);
    assert_ne!(old.code, 0, "the old UPN is still a user:\n{}", old.stdout);

    // The app password works under the new UPN, not the old one; the org
    // password by the new UPN and login name.
    let took = SignIn::new(fedgate.plain, CAROLINE, &app)
        .agent("caroline-app")
        .until(StatusCode::OK, POLL)
        .await;
    assert!(took < Duration::from_secs(3), "the renamed app password took {took:?}");
    assert_eq!(
        SignIn::new(fedgate.plain, CAROL, &app)
            .agent("carol-app")
            .send()
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
    for name in [CAROLINE, "EXAMPLE\\caroline"] {
        let who = signed_in(
            &SignIn::new(fedgate.plain, name, CAROL_PW).path(ONPREM).send().await,
            name,
        );
        assert_eq!(who["user"], CAROLINE, "{who}");
    }

    // A full pass after the rename neither deletes nor creates anybody.
    let run = sync_run(&admin, &[]);
    let pass = run.assert(0, "full", "completed");
    assert_counts(
        pass,
        &[
            ("seen", 2),
            ("created", 0),
            ("deleted", 0),
            ("disabled", 0),
            ("errors", 0),
        ],
    );
    let all = users(&admin);
    assert_eq!(all.keys().collect::<Vec<_>>(), [ALICE, CAROLINE], "{all:?}");
    assert_eq!(all[CAROLINE]["id"], carol["id"]);
    assert_eq!(app_password_count(&admin, CAROLINE), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paged_sync_reads_2500_users_past_an_ad_like_size_limit() {
    let slapd = Slapd::start_with_size_limit(1000);
    slapd.add_user("alice", ALICE, ALICE_PW);
    slapd.add_generated_users("p", 2500, GENERATED_PW);
    let store = Offline::new();
    let admin = store.config(
        "fedgate.toml",
        &[
            directory_section(&slapd, Slapd::PEOPLE_DN, "timeout = \"5s\""),
            sync_section("page_size = 500"),
        ],
    );

    let run = sync_run(&admin, &[]);
    let pass = run.assert(0, "full", "completed");
    assert_counts(
        pass,
        &[
            ("seen", 2501),
            ("created", 2501),
            ("disabled", 0),
            ("deleted", 0),
            ("errors", 0),
        ],
    );
    let all = users(&admin);
    assert_eq!(all.len(), 2501);
    let last = &all["p2499@example.com"];
    assert_eq!(last["source"], "federated", "{last}");
    assert_eq!(last["enabled"], true, "{last}");
    let shown = user_show(&admin, "p1234@example.com");
    assert_eq!(shown["directory"]["dn"], Slapd::user_dn("p1234"), "{shown}");
    assert_eq!(shown["directory"]["login"], "p1234", "{shown}");
    // Paged by page_size: 2,501 entries take at least six pages.
    let pages = searches_under(&slapd.log(), Slapd::PEOPLE_DN);
    assert!(pages >= 6, "{pages} searches for 2,501 entries in pages of 500");
    // The searches were paged: unpaged ones would have stopped at 1,000.
    assert!(!slapd.log().contains("err=4 "), "a search ran into the size limit");

    // Nothing changed: the next full pass sees everybody and writes nothing.
    let again = sync_run(&admin, &[]);
    let pass = again.assert(0, "full", "completed");
    assert_counts(
        pass,
        &[
            ("seen", 2501),
            ("created", 0),
            ("updated", 0),
            ("disabled", 0),
            ("enabled", 0),
            ("deleted", 0),
            ("errors", 0),
        ],
    );
    assert_eq!(users(&admin).len(), 2501);
}

/// `uid`s `from..to` of the generated users, disabled (or enabled) in one
/// call each.
pub(crate) fn set_disabled(slapd: &Slapd, prefix: &str, range: std::ops::Range<usize>, disabled: bool) {
    for n in range {
        let uid = format!("{prefix}{n}");
        if disabled {
            slapd.disable_user(&uid);
        } else {
            slapd.enable_user(&uid);
        }
    }
}

pub(crate) fn disabled_upns(admin: &Admin) -> Vec<String> {
    users(admin)
        .into_iter()
        .filter(|(_, u)| u["enabled"] == false)
        .map(|(upn, _)| upn)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mass_disable_or_deletion_is_guarded_until_forced() {
    let slapd = Slapd::start();
    slapd.add_generated_users("g", 40, GENERATED_PW);
    let store = Offline::new();
    let section = |base: &str| {
        [
            directory_section(&slapd, base, "timeout = \"2s\""),
            sync_section("max_change_share = 0.10\nguard_floor = 10"),
        ]
    };
    let admin = store.config("fedgate.toml", &section(Slapd::PEOPLE_DN));
    let pass = sync_run(&admin, &[]);
    assert_counts(pass.assert(0, "full", "completed"), &[("seen", 40), ("created", 40)]);
    let synced = users(&admin);
    assert_eq!(synced.len(), 40);

    // Half of them disabled at once: every kind of pass stops, changing
    // nothing, and says how to go ahead.
    set_disabled(&slapd, "g", 0..20, true);
    for flags in [&[][..], &["--incremental"][..]] {
        let kind = if flags.is_empty() { "full" } else { "incremental" };
        let run = sync_run(&admin, flags);
        run.assert(1, kind, "guarded");
        assert!(run.said().contains("--force"), "{kind}: {}", run.said());
        assert_eq!(
            disabled_upns(&admin),
            Vec::<String>::new(),
            "{kind}: the guarded pass disabled users"
        );
    }
    // Without --json, too.
    let plain = admin.run(&["sync", "run"]);
    assert_eq!(plain.code, 1, "{}{}", plain.stdout, plain.stderr);
    assert!(
        format!("{}{}", plain.stdout, plain.stderr).contains("--force"),
        "{}{}",
        plain.stdout,
        plain.stderr
    );
    assert!(disabled_upns(&admin).is_empty());

    let forced = sync_run(&admin, &["--force"]);
    assert_counts(
        forced.assert(0, "full", "completed"),
        &[("seen", 40), ("disabled", 20), ("deleted", 0), ("created", 0)],
    );
    let mut want: Vec<String> = (0..20).map(|n| format!("g{n}@example.com")).collect();
    want.sort();
    assert_eq!(disabled_upns(&admin), want);

    // Up to guard_floor changes never trip the guard, though 5 of 40 is
    // more than 10 %. Enabling is never guarded.
    set_disabled(&slapd, "g", 20..25, true);
    let small = sync_run(&admin, &["--incremental"]);
    assert_counts(small.assert(0, "incremental", "completed"), &[("disabled", 5)]);
    assert_eq!(disabled_upns(&admin).len(), 25);
    set_disabled(&slapd, "g", 0..25, false);
    let enabling = sync_run(&admin, &[]);
    assert_counts(
        enabling.assert(0, "full", "completed"),
        &[("enabled", 25), ("disabled", 0)],
    );
    assert!(disabled_upns(&admin).is_empty());

    // A base DN holding no users, or none at all, would delete everybody:
    // stopped, nothing deleted.
    let before = users(&admin);
    for (name, base) in [
        ("empty-ou.toml", format!("ou=services,{}", Slapd::BASE_DN)),
        ("missing-ou.toml", format!("ou=nobody,{}", Slapd::BASE_DN)),
    ] {
        let mistyped = store.config(name, &section(&base));
        let run = sync_run(&mistyped, &[]);
        assert_eq!(run.out.code, 1, "{base}: {}{}", run.out.stdout, run.out.stderr);
        let outcome = run.pass["outcome"].as_str().unwrap_or("").to_owned();
        assert!(outcome == "guarded" || outcome == "failed", "{base}: {}", run.pass);
        check_pass(&run.pass, "full", &outcome);
        if outcome == "failed" {
            assert_eq!(counter(&run.pass, "deleted"), 0, "{base}: {}", run.pass);
        }
        let after = users(&admin);
        assert_eq!(after.len(), 40, "{base}: users were deleted");
        assert_eq!(after, before, "{base}: the store changed");
    }
    // The right base still syncs cleanly afterwards.
    let pass = sync_run(&admin, &[]);
    assert_counts(
        pass.assert(0, "full", "completed"),
        &[("seen", 40), ("deleted", 0), ("created", 0), ("disabled", 0)],
    );
    assert_eq!(identities(&users(&admin)), identities(&synced));
}

/// Who is in the store, by UPN: id, enabled, deleted and directory DN.
fn identities(users: &BTreeMap<String, Value>) -> BTreeMap<String, [Value; 4]> {
    users
        .iter()
        .map(|(upn, u)| {
            let fields = [
                u["id"].clone(),
                u["enabled"].clone(),
                u["deleted"].clone(),
                u["directory"]["dn"].clone(),
            ];
            (upn.clone(), fields)
        })
        .collect()
}

/// Lines in `log` asking for entries under `base`.
pub(crate) fn searches_under(log: &str, base: &str) -> usize {
    let needle = format!("SRCH base=\"{base}\"");
    log.lines().filter(|l| l.contains(&needle)).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pass_failing_midway_changes_nothing_and_the_next_pass_retries() {
    let mut slapd = Slapd::start_with_size_limit(1000);
    slapd.add_generated_users("u", 2500, GENERATED_PW);
    let store = Offline::new();
    let admin = store.config(
        "fedgate.toml",
        &[
            directory_section(&slapd, Slapd::PEOPLE_DN, "timeout = \"1s\"\nconnect_timeout = \"1s\""),
            sync_section("page_size = 50"),
        ],
    );
    let first = sync_run(&admin, &[]);
    assert_counts(
        first.assert(0, "full", "completed"),
        &[("seen", 2500), ("created", 2500)],
    );

    // Changes a completed pass would apply (under the guard floor).
    set_disabled(&slapd, "u", 1..4, true);
    slapd.delete_user("u4");
    slapd.delete_user("u5");
    let before = users(&admin);

    // The directory stops answering after the pass's first page.
    let log_start = slapd.log().len();
    let mut child = admin
        .command(&["--json", "sync", "run"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sync run");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if searches_under(&slapd.log()[log_start..], Slapd::PEOPLE_DN) >= 2 {
            slapd.pause();
            break;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "sync run ended ({status}) before the directory could be paused midway; slapd log:\n{}",
                &slapd.log()[log_start..]
            );
        }
        assert!(Instant::now() < deadline, "the pass never searched the directory");
        std::thread::sleep(Duration::from_millis(1));
    }
    let paused_at = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if paused_at.elapsed() > Duration::from_secs(20) {
            slapd.resume();
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "sync run still ran 20 s after the directory stopped answering (timeout 1s):\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let failed_after = paused_at.elapsed();
    let (mut stdout, mut stderr) = (String::new(), String::new());
    child.stdout.take().unwrap().read_to_string(&mut stdout).unwrap();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    slapd.resume();
    let failed = parse_run(CliOutput {
        command: "--json sync run (paused directory)".into(),
        code: status.code().unwrap_or(-1),
        stdout,
        stderr,
    });
    failed.assert(1, "full", "failed");
    assert!(failed_after < Duration::from_secs(10), "failing took {failed_after:?}");
    assert_eq!(users(&admin), before, "a failed pass changed the store");
    let status = admin.run(&["--json", "sync", "status"]).json();
    assert_eq!(status["full"]["outcome"], "failed", "{status}");

    // The next pass retries and applies everything.
    let retry = sync_run(&admin, &[]);
    assert_counts(
        retry.assert(0, "full", "completed"),
        &[("seen", 2498), ("disabled", 3), ("deleted", 2), ("created", 0)],
    );
    let after = users(&admin);
    assert_eq!(after.len(), 2498);
    assert_eq!(after["u1@example.com"]["enabled"], false);
    assert!(is_deleted(&admin, "u4@example.com"));

    // A directory that is down: the pass fails at once, naming the server.
    slapd.stop();
    let port = slapd.url().rsplit(':').next().unwrap().to_owned();
    let down = admin.run(&["sync", "run"]);
    assert_eq!(down.code, 1, "{}{}", down.stdout, down.stderr);
    let said = format!("{}{}", down.stdout, down.stderr);
    assert!(
        said.contains(&format!("127.0.0.1:{port}")),
        "the message names no server: {said}"
    );
    let down = sync_run(&admin, &["--incremental"]);
    down.assert(1, "incremental", "failed");
    assert!(down.said().contains(&port), "{}", down.said());
    assert_eq!(users(&admin), after);
    slapd.restart();
    let back = sync_run(&admin, &["--incremental"]);
    back.assert(0, "incremental", "completed");
}

fn lag(status: &Value) -> f64 {
    status["lag_seconds"]
        .as_f64()
        .unwrap_or_else(|| panic!("no lag_seconds in {status}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_status_reports_the_last_pass_of_each_kind_and_the_lag() {
    let slapd = directory_with_alice_and_bob();
    let sections = fast_sync(&slapd);

    // On demand: nothing before the first pass, then each kind's last.
    let store = Offline::new();
    let admin = store.config("fedgate.toml", &sections);
    let status = admin.run(&["--json", "sync", "status"]).json();
    assert!(status["incremental"].is_null(), "{status}");
    assert!(status["full"].is_null(), "{status}");
    assert!(status["lag_seconds"].is_null(), "{status}");
    let human = admin.run(&["sync", "status"]).success();
    assert!(!human.trim().is_empty());

    let full = sync_run(&admin, &[]).pass;
    let full_done = Instant::now();
    let status = admin.run(&["--json", "sync", "status"]).json();
    check_pass(&status["full"], "full", "completed");
    assert_eq!(status["full"]["started_at"], full["started_at"], "{status}");
    assert_counts(&status["full"], &[("seen", 2), ("created", 2)]);
    assert!(status["incremental"].is_null(), "{status}");
    assert!((0.0..5.0).contains(&lag(&status)), "{status}");

    // Three seconds on, an incremental pass: the lag counts from it, the
    // newest completed pass.
    std::thread::sleep(Duration::from_secs(3));
    slapd.disable_user("bob");
    let incremental = sync_run(&admin, &["--incremental"]);
    incremental.assert(0, "incremental", "completed");
    let incremental_done = Instant::now();
    let status = admin.run(&["--json", "sync", "status"]).json();
    check_pass(&status["incremental"], "incremental", "completed");
    assert_eq!(status["incremental"]["started_at"], incremental.pass["started_at"]);
    assert_counts(&status["incremental"], &[("disabled", 1)]);
    assert_eq!(status["full"]["started_at"], full["started_at"], "{status}");
    assert!((0.0..2.0).contains(&lag(&status)), "{status}");

    // The server's passes: both kinds, as log events and in the status.
    let fedgate = serve(&sections);
    let server_admin = fedgate.admin();
    wait_first_pass(&fedgate);
    fedgate.wait_log(Duration::from_secs(10), |v| {
        v["message"] == "sync pass" && v["kind"] == "incremental" && v["outcome"] == "completed"
    });
    let start_full = passes(&fedgate).iter().filter(|p| p["kind"] == "full").count();
    eventually("a second full pass", Duration::from_secs(8), Some(&fedgate), || {
        (passes(&fedgate).iter().filter(|p| p["kind"] == "full").count() > start_full).then_some(())
    })
    .await;
    // The log events carry the pass's kind, outcome and numbers (their
    // "message" is the event's own, and their time the event's).
    for event in passes(&fedgate) {
        assert!(event["kind"] == "full" || event["kind"] == "incremental", "{event}");
        assert_eq!(event["outcome"], "completed", "{event}");
        for name in COUNTERS {
            counter(&event, name);
        }
        assert_eq!(counter(&event, "errors"), 0, "{event}");
    }
    let status = server_admin.run(&["--json", "sync", "status"]).json();
    check_pass(&status["full"], "full", "completed");
    check_pass(&status["incremental"], "incremental", "completed");
    assert_counts(&status["full"], &[("seen", 2)]);
    assert!((0.0..3.0).contains(&lag(&status)), "{status}");
    // A fresh store: bob, disabled in the directory, arrives disabled.
    let all = users(&server_admin);
    assert_eq!(all[BOB]["enabled"], false);
    assert_eq!(all[ALICE]["enabled"], true);

    // A failed pass is the last of its kind, but the lag still counts from
    // the last completed pass, whatever its kind: the incremental one, not
    // the older full one; and it stays a number when the last pass of
    // each kind failed (a directory down for hours is when it matters).
    let since_full = full_done.elapsed().as_secs_f64();
    let mut slapd = slapd;
    slapd.stop();
    sync_run(&admin, &["--incremental"]).assert(1, "incremental", "failed");
    sync_run(&admin, &[]).assert(1, "full", "failed");
    let status = admin.run(&["--json", "sync", "status"]).json();
    assert_eq!(status["incremental"]["outcome"], "failed", "{status}");
    assert_eq!(status["full"]["outcome"], "failed", "{status}");
    let since_incremental = incremental_done.elapsed().as_secs_f64();
    assert!(
        status["lag_seconds"]
            .as_f64()
            .is_some_and(|l| l <= since_incremental + 0.5),
        "the last completed pass ended {since_incremental:.1} s ago (the last full one {since_full:.1} s ago), \
         but sync status says: {status}"
    );
    slapd.restart();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_disable_of_a_federated_user_outlasts_sync_passes() {
    let slapd = directory_with_alice_and_bob();
    let fedgate = serve(&fast_sync(&slapd));
    let admin = fedgate.admin();
    wait_first_pass(&fedgate);
    admin.allow_app_passwords(true);
    let app = admin.create_app_password(ALICE, "phone");
    let alice_app = SignIn::new(fedgate.plain, ALICE, &app).agent("alice-app");
    alice_app.until(StatusCode::OK, POLL).await;

    // `fedgate user disable` blocks a federated user whom the directory
    // still has enabled; the sync must not undo it, neither in full passes
    // nor when a change to her entry brings her into incremental ones.
    admin.run(&["user", "disable", ALICE]).success();
    alice_app.until(StatusCode::UNAUTHORIZED, POLL).await;
    slapd.modify(&format!(
        "dn: {}\nchangetype: modify\nreplace: displayName\ndisplayName: Alice Renamed\n-\n",
        Slapd::user_dn("alice")
    ));
    let later = passes_until(
        &fedgate,
        "two full passes after the disable",
        Duration::from_secs(8),
        |later| full_passes(later) >= 2 && later.iter().any(|p| p["kind"] == "incremental"),
    )
    .await;
    let alice = user_show(&admin, ALICE);
    assert_eq!(
        alice["enabled"], false,
        "a sync pass re-enabled a user an operator disabled: {alice}\npasses: {later:?}"
    );
    assert_eq!(
        alice_app.agent("alice-app-still-disabled").send().await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        SignIn::new(fedgate.plain, ALICE, ALICE_PW)
            .path(ONPREM)
            .agent("alice-org-still-disabled")
            .send()
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
    expect_reasons(
        &admin,
        &[
            ("alice-app-still-disabled", "account_disabled"),
            ("alice-org-still-disabled", "account_disabled"),
        ],
    );

    // The operator's enable restores her.
    admin.run(&["user", "enable", ALICE]).success();
    alice_app.until(StatusCode::OK, POLL).await;
}

/// Runs `sync run` as a child, holds the directory paused while the pass
/// is under way, sends `sig` to the child and waits for it to end.
fn interrupt_sync_run(slapd: &Slapd, admin: &Admin, sig: &str) {
    slapd.pause();
    let mut child = admin
        .command(&["sync", "run"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn sync run");
    // By now it runs its pass, waiting on the paused directory.
    std::thread::sleep(Duration::from_millis(700));
    assert!(
        child.try_wait().unwrap().is_none(),
        "sync run ended against a paused directory"
    );
    let ok = std::process::Command::new("kill")
        .args([&format!("-{sig}"), &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let deadline = Instant::now() + Duration::from_secs(5);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            slapd.resume();
            let _ = child.kill();
            panic!("sync run still ran 5 s after SIG{sig}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    slapd.resume();
}

/// How the next `sync run` went, if it ended within `limit`.
fn next_run_within(admin: &Admin, limit: Duration) -> Result<Run, String> {
    let mut child = admin
        .command(&["--json", "sync", "run"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sync run");
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let (mut stdout, mut stderr) = (String::new(), String::new());
            child.stdout.take().unwrap().read_to_string(&mut stdout).unwrap();
            child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
            return Ok(parse_run(CliOutput {
                command: "--json sync run".into(),
                code: status.code().unwrap_or(-1),
                stdout,
                stderr,
            }));
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("the next `sync run` still waited after {limit:?}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Interrupts a `sync run` that hangs on a paused directory with `signal`,
/// then checks that the next pass runs at once (the lease is handed back,
/// or taken over from the dead process).
fn interrupted_pass_does_not_hold_up_the_next(signal: &str) {
    let slapd = Slapd::start();
    slapd.add_user("alice", ALICE, ALICE_PW);
    let store = Offline::new();
    let admin = store.config(
        "fedgate.toml",
        &[
            directory_section(&slapd, Slapd::PEOPLE_DN, "timeout = \"20s\""),
            sync_section(""),
        ],
    );
    sync_run(&admin, &[]).assert(0, "full", "completed");
    interrupt_sync_run(&slapd, &admin, signal);
    slapd.add_user("bob", BOB, BOB_PW);
    let next = next_run_within(&admin, Duration::from_secs(10)).unwrap_or_else(|e| panic!("after SIG{signal}: {e}"));
    assert_counts(next.assert(0, "full", "completed"), &[("seen", 2), ("created", 1)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_run_stopped_with_ctrl_c_does_not_hold_up_the_next_pass() {
    // An operator's Ctrl-C on a pass that hangs.
    interrupted_pass_does_not_hold_up_the_next("INT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_run_killed_mid_pass_does_not_stall_the_next_pass() {
    // A process that dies mid-pass (SIGKILL, as a crash or the OOM killer)
    // on this host: the next pass need not wait for its lease to expire.
    interrupted_pass_does_not_hold_up_the_next("KILL");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_passes_stop_at_the_guard_until_sync_run_force() {
    let slapd = Slapd::start();
    slapd.add_generated_users("g", 40, GENERATED_PW);
    let fedgate = serve(&fast_sync(&slapd));
    let admin = fedgate.admin();
    assert_counts(&wait_first_pass(&fedgate), &[("seen", 40), ("created", 40)]);
    admin.allow_app_passwords(true);
    let app = admin.create_app_password("g0@example.com", "phone");
    let g0 = SignIn::new(fedgate.plain, "g0@example.com", &app).agent("g0-app");
    g0.until(StatusCode::OK, POLL).await;

    set_disabled(&slapd, "g", 0..20, true);
    let guarded = fedgate.wait_log(Duration::from_secs(10), |v| {
        v["message"] == "sync pass" && v["outcome"] == "guarded"
    });
    assert!(
        guarded["detail"].as_str().is_some_and(|d| d.contains("--force")),
        "{guarded}"
    );
    // Every scheduled pass stops there; nobody is disabled meanwhile.
    let later = passes_until(&fedgate, "more scheduled passes", Duration::from_secs(8), |later| {
        full_passes(later) >= 1
    })
    .await;
    for p in &later {
        assert_eq!(p["outcome"], "guarded", "{p}");
    }
    assert!(disabled_upns(&admin).is_empty());
    signed_in(&g0.send().await, "g0 while the guard holds");

    // An operator forces the pass while the server runs.
    let forced = sync_run(&admin, &["--force"]);
    assert_counts(forced.assert(0, "full", "completed"), &[("disabled", 20)]);
    let took = g0.until(StatusCode::UNAUTHORIZED, POLL).await;
    assert!(
        took < Duration::from_secs(1),
        "the forced disable took {took:?} to reach the server"
    );
    assert_eq!(disabled_upns(&admin).len(), 20);
    // The server's next passes complete again.
    passes_until(
        &fedgate,
        "a completed scheduled pass",
        Duration::from_secs(5),
        |later| later.iter().any(|p| p["outcome"] == "completed"),
    )
    .await;
    assert_eq!(disabled_upns(&admin).len(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_is_on_by_default_with_a_directory_and_off_when_disabled() {
    let slapd = directory_with_alice_and_bob();

    // No [sync] table: the first full pass runs at start all the same.
    let on = serve(&[directory_section(&slapd, Slapd::PEOPLE_DN, "timeout = \"2s\"")]);
    assert_counts(&wait_first_pass(&on), &[("seen", 2), ("created", 2)]);
    assert_eq!(users(&on.admin()).len(), 2);
    drop(on);

    // enabled = false: no passes, and `sync run` says there is no sync.
    let off = serve(&[
        directory_section(&slapd, Slapd::PEOPLE_DN, "timeout = \"2s\""),
        "[sync]\nenabled = false\ninterval = \"1s\"\n".to_string(),
    ]);
    let admin = off.admin();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(passes(&off).is_empty(), "{:?}", passes(&off));
    assert!(users(&admin).is_empty());
    let run = admin.run(&["sync", "run"]);
    assert_ne!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("sync"), "{}", run.stderr);
    // Sign-ins still create federated users as before.
    signed_in(
        &SignIn::new(off.plain, ALICE, ALICE_PW).path(ONPREM).send().await,
        "alice without the sync",
    );
    assert_eq!(users(&admin).keys().collect::<Vec<_>>(), [ALICE]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_change_revokes_app_passwords_only_when_asked() {
    let slapd = Slapd::start();
    if slapd.disabled_filter() != "(pwdAccountLockedTime=*)" {
        eprintln!("skipped: pwdChangedTime needs the ppolicy module");
        return;
    }
    slapd.add_user("alice", ALICE, ALICE_PW);
    slapd.add_user("bob", BOB, BOB_PW);
    for revoke in [false, true] {
        let fedgate = serve(&[
            directory_section(&slapd, Slapd::PEOPLE_DN, "timeout = \"2s\""),
            sync_section(&format!(
                "interval = \"1s\"\nfull_every = \"10m\"\nrevoke_on_password_change = {revoke}"
            )),
        ]);
        let admin = fedgate.admin();
        wait_first_pass(&fedgate);
        admin.allow_app_passwords(true);
        let alice_app = admin.create_app_password(ALICE, "phone");
        let bob_app = admin.create_app_password(BOB, "phone");
        let alice = SignIn::new(fedgate.plain, ALICE, &alice_app);
        let bob = SignIn::new(fedgate.plain, BOB, &bob_app);
        alice.until(StatusCode::OK, POLL).await;
        bob.until(StatusCode::OK, POLL).await;

        let new_pw = format!("Alice's new pw {revoke}");
        // pwdChangedTime has whole seconds: a change within the second of
        // the one before (alice's creation, say) would not show. Set again
        // until it does.
        let changed_time = || {
            let ldif = slapd.admin_search(&Slapd::user_dn("alice"), "base", "(objectClass=*)", &["pwdChangedTime"]);
            ldif.lines()
                .find(|l| l.starts_with("pwdChangedTime:"))
                .map(str::to_owned)
        };
        let before = changed_time();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            slapd.set_password("alice", &new_pw);
            if changed_time() != before {
                break;
            }
            assert!(Instant::now() < deadline, "pwdChangedTime stayed {before:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Wait for an incremental pass that saw the change (passes are a
        // second apart; the deadline is for a busy machine, not a figure:
        // `scripts/bench revoke` measures how fast changes arrive).
        fedgate.wait_log(Duration::from_secs(20), |v| {
            v["message"] == "sync pass" && v["kind"] == "incremental" && v["updated"].as_u64() >= Some(1)
        });
        if revoke {
            alice.until(StatusCode::UNAUTHORIZED, POLL).await;
            assert_eq!(app_password_count(&admin, ALICE), 0);
        } else {
            signed_in(&alice.send().await, "alice's app password, kept");
            assert_eq!(app_password_count(&admin, ALICE), 1);
        }
        signed_in(&bob.send().await, "bob's app password");
        assert_eq!(app_password_count(&admin, BOB), 1);
        assert_eq!(user_show(&admin, ALICE)["enabled"], true);
        signed_in(
            &SignIn::new(fedgate.plain, ALICE, &new_pw).path(ONPREM).send().await,
            "alice's new org password",
        );
    }
}
