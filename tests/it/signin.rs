//! Signing in on `cloud` routes: the decision table of DESIGN.md end to end,
//! with users, MFA states, app passwords and settings managed through the
//! command line while the server runs, revocations reaching it within a
//! second, and the store surviving restarts and SIGKILL.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, StatusCode};
use rand::Rng;
use serde_json::Value;

use crate::support::admin::{Admin, CliOutput};
use crate::support::client::{basic, basic_raw, get_with};
use crate::support::upstream::{self, parse_echo};
use crate::support::Fedgate;

pub(crate) const CHALLENGE: &str = "Basic realm=\"fedgate\", charset=\"UTF-8\"";
const PASSWORD: &str = "Correct horse 7";
/// How often a test asks again while waiting for the server to see a change.
const POLL: Duration = Duration::from_millis(50);
/// DESIGN.md: a revoking change takes effect on a running server within 1 s.
const REVOCATION_LIMIT: Duration = Duration::from_secs(1);

pub(crate) type Answer = (StatusCode, HeaderMap, Bytes);

/// Sign-in requests as one client would send them. The user agent names
/// the test case so that its audit record can be told apart.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SignIn<'a> {
    addr: SocketAddr,
    path: &'a str,
    user: &'a str,
    password: &'a str,
    agent: &'a str,
}

impl<'a> SignIn<'a> {
    pub(crate) fn new(addr: SocketAddr, user: &'a str, password: &'a str) -> Self {
        SignIn {
            addr,
            path: "/whoami",
            user,
            password,
            agent: "fedgate-tests",
        }
    }

    pub(crate) fn agent(self, agent: &'a str) -> Self {
        SignIn { agent, ..self }
    }

    pub(crate) fn path(self, path: &'a str) -> Self {
        SignIn { path, ..self }
    }

    pub(crate) async fn send(&self) -> Answer {
        get_with(
            self.addr,
            self.path,
            &[
                ("authorization", basic(self.user, self.password)),
                ("user-agent", HeaderValue::from_str(self.agent).unwrap()),
            ],
        )
        .await
    }

    /// Repeats the request every `every` until it is answered with `want`;
    /// returns how long that took.
    pub(crate) async fn until(&self, want: StatusCode, every: Duration) -> Duration {
        let start = Instant::now();
        loop {
            let (status, _, body) = self.send().await;
            if status == want {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "{} signing in at {} still answered {status} after 15 s (want {want}): {}",
                self.user,
                self.path,
                String::from_utf8_lossy(&body)
            );
            tokio::time::sleep(every).await;
        }
    }
}

fn agent(name: &'static str) -> (&'static str, HeaderValue) {
    ("user-agent", HeaderValue::from_static(name))
}

pub(crate) fn assert_unauthorized(answer: &Answer, case: &str) {
    let (status, headers, body) = answer;
    assert_eq!(
        *status,
        StatusCode::UNAUTHORIZED,
        "{case}: {}",
        String::from_utf8_lossy(body)
    );
    assert_eq!(headers[header::WWW_AUTHENTICATE], CHALLENGE, "{case}");
}

/// The whoami answer of a successful sign-in.
pub(crate) fn signed_in(answer: &Answer, case: &str) -> Value {
    let (status, _, body) = answer;
    assert_eq!(*status, StatusCode::OK, "{case}: {}", String::from_utf8_lossy(body));
    let who: Value = serde_json::from_slice(body).unwrap();
    assert_eq!(who["authenticated"], true, "{case}: {who}");
    who
}

pub(crate) fn newest_for<'r>(records: &'r [Value], agent: &str) -> Option<&'r Value> {
    // Records come newest first.
    records.iter().find(|r| r["user_agent"] == agent)
}

/// Waits until the newest audit record of each user agent carries the
/// expected reason, then checks its result agrees with the reason.
pub(crate) fn expect_reasons(admin: &Admin, want: &[(&str, &str)]) {
    let records = admin.wait_signins("the expected reasons", |records| {
        want.iter()
            .all(|(agent, reason)| newest_for(records, agent).is_some_and(|r| r["reason"] == *reason))
    });
    for (agent, reason) in want {
        let record = newest_for(&records, agent).unwrap();
        let success = matches!(*reason, "app_password" | "password");
        assert_eq!(record["success"], success, "{agent}: {record}");
    }
}

fn app_password_names(admin: &Admin, upn: &str) -> Vec<String> {
    let list = admin.run(&["--json", "app-password", "list", upn]).json();
    list.as_array()
        .unwrap_or_else(|| panic!("app-password list printed {list}"))
        .iter()
        .map(|a| a["name"].as_str().unwrap().to_owned())
        .collect()
}

/// MFA state by UPN, from `user list`.
fn mfa_states(admin: &Admin) -> BTreeMap<String, String> {
    let users = admin.run(&["--json", "user", "list"]).json();
    users
        .as_array()
        .unwrap_or_else(|| panic!("user list printed {users}"))
        .iter()
        .map(|u| {
            (
                u["upn"].as_str().unwrap().to_owned(),
                u["mfa_state"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn states(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(u, s)| (u.to_string(), s.to_string())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloud_realm_follows_the_decision_table() {
    const ALICE: &str = "alice@contoso.example";
    const ERIN: &str = "erin@contoso.example";
    const EDDIE: &str = "eddie@contoso.example";
    let up = upstream::echo().await;
    let fg = Fedgate::builder()
        .cloud_route("/whoami", "builtin:whoami", "")
        .cloud_route("/echo", &up.url(), "")
        .cloud_route("/forwarded", &up.url(), "forward_authorization = true")
        .start();
    let admin = fg.admin();
    admin.add_user(ALICE, "disabled", Some(PASSWORD));
    admin.add_user(ERIN, "enabled", Some(PASSWORD));
    admin.add_user(EDDIE, "enforced", Some(PASSWORD));
    let app = admin.create_app_password(EDDIE, "Eddie's phone");
    admin.allow_app_passwords(true);
    // The setting is the newest change: once the app password works, the
    // server has applied everything above.
    SignIn::new(fg.plain, EDDIE, &app).until(StatusCode::OK, POLL).await;
    let addr = fg.plain;

    let answer = get_with(addr, "/whoami", &[agent("no-credentials")]).await;
    assert_unauthorized(&answer, "no credentials");
    let answer = get_with(
        addr,
        "/whoami",
        &[
            agent("malformed"),
            ("authorization", HeaderValue::from_static("Basic !!!")),
        ],
    )
    .await;
    assert_unauthorized(&answer, "malformed");

    let who = signed_in(
        &SignIn::new(addr, EDDIE, &app).agent("app-password").send().await,
        "app password of an enforced user",
    );
    assert_eq!(who["user"], EDDIE);
    assert_eq!(who["credential"], "app_password");
    assert_eq!(who["realm"], "cloud");
    assert_eq!(who["route"], "/whoami");
    assert_eq!(who["client_ip"], "127.0.0.1");

    for (user, case) in [(ALICE, "password-mfa-disabled"), (ERIN, "password-mfa-enabled")] {
        let who = signed_in(&SignIn::new(addr, user, PASSWORD).agent(case).send().await, case);
        assert_eq!(who["user"], user);
        assert_eq!(who["credential"], "password");
    }
    let answer = SignIn::new(addr, EDDIE, PASSWORD)
        .agent("password-mfa-enforced")
        .send()
        .await;
    assert_unauthorized(&answer, "org password of an enforced user");

    let wrong = SignIn::new(addr, ALICE, "Wrong horse 7")
        .agent("wrong-password")
        .send()
        .await;
    let unknown = SignIn::new(addr, "nobody@contoso.example", PASSWORD)
        .agent("unknown-user")
        .send()
        .await;
    assert_unauthorized(&wrong, "wrong password");
    assert_unauthorized(&unknown, "unknown user");
    assert_eq!(wrong.2, unknown.2, "a guesser learns nothing from the body");
    assert_eq!(wrong.1.get(header::CONTENT_TYPE), unknown.1.get(header::CONTENT_TYPE));
    // A well-formed app password (check letters right) that was never issued.
    let never_issued = fedgate::app_password::generate().display_form().expose().to_owned();
    let answer = SignIn::new(addr, ALICE, &never_issued)
        .agent("unmatched-app-password")
        .send()
        .await;
    assert_unauthorized(&answer, "app-password-shaped secret that matches nothing");

    // Identity to the upstream: canonical UPN, the client's copies removed,
    // Authorization only where the route asks for it.
    let sent = basic("Alice@Contoso.Example", PASSWORD);
    for (path, forwards_authorization) in [("/echo", false), ("/forwarded", true)] {
        let (status, _, body) = get_with(
            addr,
            path,
            &[
                ("authorization", sent.clone()),
                ("x-remote-user", HeaderValue::from_static("admin@contoso.example")),
                ("x_remote_user", HeaderValue::from_static("admin@contoso.example")),
                agent("mixed-case-upn"),
            ],
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{path}");
        let echo = parse_echo(&body);
        let headers = &echo["headers"];
        assert_eq!(headers["x-remote-user"], serde_json::json!([ALICE]), "{path}: {echo}");
        assert!(headers.get("x_remote_user").is_none(), "{path}: {echo}");
        if forwards_authorization {
            assert_eq!(
                headers["authorization"],
                serde_json::json!([sent.to_str().unwrap()]),
                "{path}: {echo}"
            );
        } else {
            assert!(headers.get("authorization").is_none(), "{path}: {echo}");
        }
    }

    fg.cli(&["user", "disable", ERIN]).success();
    let disabled = SignIn::new(addr, ERIN, PASSWORD).agent("account-disabled");
    disabled.until(StatusCode::UNAUTHORIZED, POLL).await;
    assert_unauthorized(&disabled.send().await, "disabled account");
    fg.cli(&["user", "enable", ERIN]).success();
    SignIn::new(addr, ERIN, PASSWORD)
        .agent("account-enabled-again")
        .until(StatusCode::OK, POLL)
        .await;

    admin.allow_app_passwords(false);
    let off = SignIn::new(addr, EDDIE, &app).agent("app-passwords-off");
    off.until(StatusCode::UNAUTHORIZED, POLL).await;
    assert_unauthorized(&off.send().await, "app passwords switched off");

    expect_reasons(
        &admin,
        &[
            ("no-credentials", "no_credentials"),
            ("malformed", "malformed"),
            ("app-password", "app_password"),
            ("password-mfa-disabled", "password"),
            ("password-mfa-enabled", "password"),
            ("password-mfa-enforced", "app_password_required"),
            ("wrong-password", "bad_credentials"),
            ("unknown-user", "bad_credentials"),
            ("unmatched-app-password", "bad_credentials"),
            ("mixed-case-upn", "password"),
            ("account-disabled", "account_disabled"),
            ("account-enabled-again", "password"),
            ("app-passwords-off", "app_passwords_not_allowed"),
        ],
    );
    let records = admin.signins();
    let app_record = newest_for(&records, "app-password").unwrap();
    assert_eq!(app_record["credential"], "app_password");
    assert_eq!(app_record["app_password_name"], "Eddie's phone");
    assert_eq!(app_record["upn_given"], EDDIE);
    assert!(app_record["user_id"].is_number());
    let unknown_record = newest_for(&records, "unknown-user").unwrap();
    assert!(unknown_record["user_id"].is_null(), "{unknown_record}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_or_app_password_made_by_the_cli_signs_in_at_once() {
    // As the README tells a new user to: `user add`, then sign in. The
    // server has not polled the change feed yet; it looks before refusing.
    const ALICE: &str = "alice@contoso.example";
    let fg = Fedgate::builder().cloud_route("/whoami", "builtin:whoami", "").start();
    let admin = fg.admin();
    admin.allow_app_passwords(true);
    for n in 0..5 {
        let user = format!("user{n}@contoso.example");
        admin.add_user(&user, "enabled", Some(PASSWORD));
        signed_in(
            &SignIn::new(fg.plain, &user, PASSWORD).send().await,
            "a user added a moment ago",
        );
    }
    admin.add_user(ALICE, "enforced", None);
    for n in 0..5 {
        let app = admin.create_app_password(ALICE, &format!("device {n}"));
        signed_in(
            &SignIn::new(fg.plain, ALICE, &app).send().await,
            "an app password made a moment ago",
        );
    }
    let records = admin.wait_signins("ten sign-ins", |records| records.len() >= 10);
    assert!(records.iter().all(|r| r["success"] == true), "{records:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_41st_app_password_is_refused_until_one_is_deleted() {
    const DANA: &str = "dana@contoso.example";
    let fg = Fedgate::builder().cloud_route("/whoami", "builtin:whoami", "").start();
    let admin = fg.admin();
    admin.add_user(DANA, "enforced", None);
    tokio::task::block_in_place(|| {
        std::thread::scope(|s| {
            for worker in 0..4 {
                let admin = &admin;
                s.spawn(move || {
                    for n in (1..=40).filter(|n| n % 4 == worker) {
                        admin.create_app_password(DANA, &format!("device-{n}"));
                    }
                });
            }
        })
    });
    assert_eq!(app_password_names(&admin, DANA).len(), 40);

    let refused = admin.run(&["app-password", "create", DANA, "--name", "device-41"]);
    assert_ne!(refused.code, 0, "the 41st was created: {}", refused.stdout);
    assert!(refused.stderr.contains("delete one"), "{}", refused.stderr);
    assert!(
        refused.stdout.trim().is_empty(),
        "no password printed: {}",
        refused.stdout
    );
    assert!(!app_password_names(&admin, DANA).contains(&"device-41".to_owned()));

    admin.run(&["app-password", "delete", DANA, "device-7"]).success();
    let password = admin.create_app_password(DANA, "device-41");
    let names = app_password_names(&admin, DANA);
    assert_eq!(names.len(), 40);
    assert!(names.contains(&"device-41".to_owned()) && !names.contains(&"device-7".to_owned()));

    admin.allow_app_passwords(true);
    SignIn::new(fg.plain, DANA, &password).until(StatusCode::OK, POLL).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocations_reach_a_running_server_within_a_second() {
    const DELETED: &str = "deleted@contoso.example";
    const REVOKED: &str = "revoked@contoso.example";
    const DISABLED: &str = "disabled@contoso.example";
    const ENFORCED: &str = "enforced@contoso.example";
    const BOB: &str = "bob@contoso.example";
    let fg = Fedgate::builder().cloud_route("/whoami", "builtin:whoami", "").start();
    let admin = fg.admin();
    for user in [DELETED, REVOKED, DISABLED, BOB] {
        admin.add_user(user, "disabled", None);
    }
    admin.add_user(ENFORCED, "enabled", Some(PASSWORD));
    let deleted_pw = admin.create_app_password(DELETED, "phone");
    let revoked_pw = admin.create_app_password(REVOKED, "phone");
    let revoked_tablet_pw = admin.create_app_password(REVOKED, "tablet");
    let disabled_pw = admin.create_app_password(DISABLED, "phone");
    let bob_pw = admin.create_app_password(BOB, "laptop");
    admin.allow_app_passwords(true);
    let addr = fg.plain;
    SignIn::new(addr, BOB, &bob_pw).until(StatusCode::OK, POLL).await;

    // Bob is not touched by any change below: his sign-ins must keep working.
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let bystander = {
        let stop = std::sync::Arc::clone(&stop);
        let bob_pw = bob_pw.clone();
        tokio::spawn(async move {
            let mut ok = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let answer = SignIn::new(addr, BOB, &bob_pw).agent("bystander").send().await;
                signed_in(&answer, "bystander");
                ok += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            ok
        })
    };

    let mut measured: Vec<(&str, Duration)> = Vec::new();
    let cases: [(&str, Vec<&str>, SignIn<'_>); 4] = [
        (
            "app-password delete",
            vec!["app-password", "delete", DELETED, "phone"],
            SignIn::new(addr, DELETED, &deleted_pw).agent("after-delete"),
        ),
        (
            "user revoke-app-passwords",
            vec!["user", "revoke-app-passwords", REVOKED],
            SignIn::new(addr, REVOKED, &revoked_pw).agent("after-revoke"),
        ),
        (
            "user disable",
            vec!["user", "disable", DISABLED],
            SignIn::new(addr, DISABLED, &disabled_pw).agent("after-disable"),
        ),
        (
            "user set-state --state enforced",
            vec!["user", "set-state", "--state", "enforced", ENFORCED],
            SignIn::new(addr, ENFORCED, PASSWORD).agent("after-enforce"),
        ),
    ];
    for (change, args, probe) in &cases {
        measured.push((change, revoke_and_measure(&admin, args, probe).await));
    }
    // Every app password of the user went, not only the one in use.
    let tablet = SignIn::new(addr, REVOKED, &revoked_tablet_pw).send().await;
    assert_unauthorized(&tablet, "the revoked user's other app password");

    stop.store(true, Ordering::Relaxed);
    let bystander_ok = bystander.await.expect("bystander sign-ins all succeeded");
    assert!(bystander_ok > 0);

    // Last, as it turns off app passwords for everybody.
    let bob = SignIn::new(addr, BOB, &bob_pw).agent("after-setting-off");
    let args = ["settings", "set", "allow-app-passwords", "false"];
    measured.push((
        "settings set allow-app-passwords false",
        revoke_and_measure(&admin, &args, &bob).await,
    ));

    for (change, took) in &measured {
        eprintln!(
            "revocation: {change}: refused {} ms after the CLI exited",
            took.as_millis()
        );
    }
    for (change, took) in &measured {
        assert!(
            *took < REVOCATION_LIMIT,
            "{change}: refused only after {took:?}; all: {measured:?}"
        );
    }
    expect_reasons(
        &admin,
        &[
            ("after-delete", "bad_credentials"),
            ("after-revoke", "bad_credentials"),
            ("after-disable", "account_disabled"),
            ("after-enforce", "app_password_required"),
            ("after-setting-off", "app_passwords_not_allowed"),
            ("bystander", "app_password"),
        ],
    );
}

/// Signs in twice (so the credential is cached), runs the revoking
/// command, and returns how long after the command's exit the same
/// sign-in was first refused.
async fn revoke_and_measure(admin: &Admin, args: &[&str], probe: &SignIn<'_>) -> Duration {
    for _ in 0..2 {
        signed_in(&probe.send().await, probe.agent);
    }
    tokio::task::block_in_place(|| admin.run(args).success());
    let took = probe.until(StatusCode::UNAUTHORIZED, POLL).await;
    assert_unauthorized(&probe.send().await, probe.agent);
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_users_states_app_passwords_settings_and_sign_ins() {
    const ALICE: &str = "alice@contoso.example";
    const BOB: &str = "bob@contoso.example";
    let fg = Fedgate::builder().cloud_route("/whoami", "builtin:whoami", "").start();
    let admin = fg.admin();
    admin.add_user(ALICE, "enabled", Some(PASSWORD));
    admin.add_user(BOB, "enforced", None);
    let bob_pw = admin.create_app_password(BOB, "Bob's phone");
    admin.allow_app_passwords(true);
    SignIn::new(fg.plain, BOB, &bob_pw).until(StatusCode::OK, POLL).await;
    // Signed in just before the stop: its audit record is still in the
    // writer's batch, which shutdown must flush.
    let answer = SignIn::new(fg.plain, BOB, &bob_pw)
        .agent("just-before-restart")
        .send()
        .await;
    signed_in(&answer, "just before the restart");

    let fg = fg.restart();

    assert_eq!(mfa_states(&admin), states(&[(ALICE, "enabled"), (BOB, "enforced")]));
    assert_eq!(app_password_names(&admin, BOB), ["Bob's phone"]);
    assert_eq!(
        admin.run(&["--json", "settings", "show"]).json()["allow_app_passwords"],
        true
    );
    // Loaded at start: no waiting for the change feed.
    let who = signed_in(
        &SignIn::new(fg.plain, BOB, &bob_pw).agent("after-restart").send().await,
        "app password after restart",
    );
    assert_eq!(who["user"], BOB);
    assert_eq!(who["credential"], "app_password");
    let who = signed_in(
        &SignIn::new(fg.plain, ALICE, PASSWORD).send().await,
        "password after restart",
    );
    assert_eq!(who["credential"], "password");
    let answer = SignIn::new(fg.plain, BOB, PASSWORD).send().await;
    assert_unauthorized(&answer, "bob has no org password");

    let records = admin.signins();
    let before = newest_for(&records, "just-before-restart").expect("the record flushed at shutdown");
    assert_eq!(before["reason"], "app_password");
    assert_eq!(before["app_password_name"], "Bob's phone");
    expect_reasons(
        &admin,
        &[
            ("just-before-restart", "app_password"),
            ("after-restart", "app_password"),
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_app_password_creation_loses_nothing_acknowledged() {
    const KIM: &str = "kim@contoso.example";
    const WORKERS: usize = 3;
    const PER_WORKER: usize = 7;
    // A creation takes some 50 ms; random kills within that window land at
    // different steps (start-up, hashing, the transaction). Kept small
    // enough that everything fits under the 40-per-user limit.
    const KILL_ATTEMPTS: usize = 15;
    const KILLED_WANTED: usize = 3;
    let fg = Fedgate::builder().cloud_route("/whoami", "builtin:whoami", "").start();
    let admin = fg.admin();
    admin.add_user(KIM, "enforced", None);
    admin.allow_app_passwords(true);
    let seed = admin.create_app_password(KIM, "seed");
    SignIn::new(fg.plain, KIM, &seed).until(StatusCode::OK, POLL).await;

    let acknowledged: Mutex<Vec<(String, String)>> = Mutex::new(vec![("seed".into(), seed.clone())]);
    let failed: Mutex<Vec<CliOutput>> = Mutex::default();
    let killed: Mutex<Vec<String>> = Mutex::default();
    let stop_traffic = AtomicBool::new(false);
    let old_addr = fg.plain;
    let fg = tokio::task::block_in_place(|| {
        std::thread::scope(|s| {
            let (acknowledged, failed, killed, stop_traffic) = (&acknowledged, &failed, &killed, &stop_traffic);
            // Sign-ins keep the server writing audit records and last-use
            // times when it is killed.
            let traffic = s.spawn(|| sign_in_until_stopped(old_addr, KIM, &seed, stop_traffic));
            for worker in 0..WORKERS {
                let admin = admin.clone();
                s.spawn(move || {
                    for n in 0..PER_WORKER {
                        let name = format!("worker-{worker}-{n}");
                        let out = admin.run(&["--json", "app-password", "create", KIM, "--name", &name]);
                        match acknowledged_password(&out) {
                            Some(password) => acknowledged.lock().unwrap().push((name, password)),
                            None => failed.lock().unwrap().push(out),
                        }
                    }
                });
            }
            let admin = admin.clone();
            s.spawn(move || {
                for k in 0..KILL_ATTEMPTS {
                    if killed.lock().unwrap().len() >= KILLED_WANTED {
                        break;
                    }
                    let name = format!("killed-{k}");
                    let mut child = admin
                        .command(&["--json", "app-password", "create", KIM, "--name", &name])
                        .stdout(Stdio::piped())
                        .stderr(Stdio::piped())
                        .spawn()
                        .expect("spawn fedgate");
                    let delay = rand::thread_rng().gen_range(5..60);
                    std::thread::sleep(Duration::from_millis(delay));
                    // SIGKILL; a no-op if it has exited already.
                    let _ = child.kill();
                    let out = child.wait_with_output().expect("wait for the killed CLI");
                    let by_signal = out.status.code().is_none();
                    let out = CliOutput::from_output(name.clone(), out);
                    match acknowledged_password(&out) {
                        Some(password) => acknowledged.lock().unwrap().push((name, password)),
                        None if by_signal => killed.lock().unwrap().push(name),
                        None => failed.lock().unwrap().push(out),
                    }
                }
            });
            // Kill the server once the burst is well under way.
            let deadline = Instant::now() + Duration::from_secs(60);
            while acknowledged.lock().unwrap().len() < 5 {
                assert!(Instant::now() < deadline, "creations do not get through");
                std::thread::sleep(Duration::from_millis(20));
            }
            let fg = fg.kill_and_restart();
            stop_traffic.store(true, Ordering::Relaxed);
            assert!(traffic.join().unwrap() > 0, "no sign-in got through before the kill");
            fg
        })
    });

    let failed = failed.into_inner().unwrap();
    assert!(
        failed.is_empty(),
        "creations not killed yet not acknowledged: {failed:#?}"
    );
    let acknowledged = acknowledged.into_inner().unwrap();
    let killed = killed.into_inner().unwrap();
    let listed = app_password_names(&admin, KIM);
    eprintln!(
        "sigkill: {} acknowledged, {} CLI runs killed, {} listed",
        acknowledged.len(),
        killed.len(),
        listed.len()
    );
    for (name, _) in &acknowledged {
        assert!(listed.contains(name), "acknowledged {name} is lost; listed: {listed:?}");
    }
    for name in &listed {
        assert!(
            acknowledged.iter().any(|(n, _)| n == name) || killed.contains(name),
            "{name} listed but neither acknowledged nor killed in flight"
        );
    }
    assert!(listed.len() <= acknowledged.len() + killed.len());
    assert!(!killed.is_empty(), "no CLI run was killed before it finished");
    let shown = admin.run(&["--json", "user", "show", KIM]).json();
    assert_eq!(shown["app_passwords"].as_array().unwrap().len(), listed.len());

    for (name, password) in &acknowledged {
        let probe = SignIn::new(fg.plain, KIM, password).agent(name);
        probe.until(StatusCode::OK, POLL).await;
        let who = signed_in(&probe.send().await, name);
        assert_eq!(who["credential"], "app_password", "{name}");
    }
    assert!(
        !fg.raw_logs().contains("panicked"),
        "the restarted server panicked:\n{}",
        fg.raw_logs()
    );
}

/// The password printed by a successful `--json app-password create`.
fn acknowledged_password(out: &CliOutput) -> Option<String> {
    if out.code != 0 {
        return None;
    }
    let created: Value = serde_json::from_str(&out.stdout).ok()?;
    created["password"].as_str().map(str::to_owned)
}

/// Signs in over blocking sockets until `stop` is set; counts the 200s.
/// Connection errors are expected once the server is killed.
fn sign_in_until_stopped(addr: SocketAddr, user: &str, password: &str, stop: &AtomicBool) -> usize {
    let authorization = basic(user, password);
    let request = format!(
        "GET /whoami HTTP/1.1\r\nHost: localhost\r\nAuthorization: {}\r\nUser-Agent: traffic\r\nConnection: close\r\n\r\n",
        authorization.to_str().unwrap()
    );
    let mut ok = 0;
    while !stop.load(Ordering::Relaxed) {
        if let Ok(mut stream) = TcpStream::connect(addr) {
            let mut answer = String::new();
            if stream.write_all(request.as_bytes()).is_ok() && stream.read_to_string(&mut answer).is_ok() {
                ok += usize::from(answer.starts_with("HTTP/1.1 200"));
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_credentials_get_401_and_the_server_keeps_serving() {
    const COLIN: &str = "colin@contoso.example";
    const COLON_PASSWORD: &str = "pa:ss:word 9";
    let fg = Fedgate::builder().cloud_route("/whoami", "builtin:whoami", "").start();
    let admin = fg.admin();
    admin.add_user(COLIN, "enabled", Some(COLON_PASSWORD));
    let addr = fg.plain;
    SignIn::new(addr, COLIN, COLON_PASSWORD)
        .until(StatusCode::OK, POLL)
        .await;

    let long_user = format!("{}@contoso.example", "a".repeat(10 * 1024));
    let cases: Vec<(&str, Vec<HeaderValue>, &str)> = vec![
        (
            "bad-base64",
            vec![HeaderValue::from_static("Basic !!!not-base64!!!")],
            "malformed",
        ),
        ("no-colon", vec![basic_raw(COLIN.as_bytes())], "malformed"),
        (
            "colon-in-wrong-password",
            vec![basic(COLIN, "pa:ss:wrong 9")],
            "bad_credentials",
        ),
        (
            "not-utf8-after-base64",
            vec![basic_raw(b"colin@contoso.example:\xff\xfe\xfd")],
            "malformed",
        ),
        (
            "not-utf8-header-bytes",
            vec![HeaderValue::from_bytes(b"Basic \xff\xfe\x80").unwrap()],
            "malformed",
        ),
        ("ten-kb-user-name", vec![basic(&long_user, PASSWORD)], "bad_credentials"),
        ("empty-password", vec![basic(COLIN, "")], "bad_credentials"),
        (
            "basic-without-token",
            vec![HeaderValue::from_static("Basic")],
            "malformed",
        ),
        (
            "two-authorization-headers",
            vec![basic(COLIN, COLON_PASSWORD), basic(COLIN, COLON_PASSWORD)],
            "malformed",
        ),
        (
            "bearer-token",
            vec![HeaderValue::from_static("Bearer eyJhbGciOiJub25lIn0.e30.")],
            "no_credentials",
        ),
    ];
    for (case, authorization, _) in &cases {
        let mut headers: Vec<(&str, HeaderValue)> =
            authorization.iter().map(|v| ("authorization", v.clone())).collect();
        headers.push(("user-agent", HeaderValue::from_str(case).unwrap()));
        let answer = get_with(addr, "/whoami", &headers).await;
        assert_unauthorized(&answer, case);
    }

    let who = signed_in(
        &SignIn::new(addr, COLIN, COLON_PASSWORD)
            .agent("colons-in-password")
            .send()
            .await,
        "a password with colons",
    );
    assert_eq!(who["user"], COLIN);
    assert_eq!(who["credential"], "password");

    let mut want: Vec<(&str, &str)> = cases.iter().map(|(case, _, reason)| (*case, *reason)).collect();
    want.push(("colons-in-password", "password"));
    expect_reasons(&admin, &want);
    let records = admin.signins();
    let long = newest_for(&records, "ten-kb-user-name").unwrap();
    assert!(
        long["upn_given"].as_str().unwrap().chars().count() <= 256,
        "the audit log keeps a bounded user name"
    );
    assert!(
        !fg.raw_logs().contains("panicked"),
        "the server panicked:\n{}",
        fg.raw_logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_state_change_from_csv_is_all_or_nothing() {
    const ANN: &str = "ann@contoso.example";
    const BEN: &str = "ben@contoso.example";
    const CAT: &str = "cat@contoso.example";
    let fg = Fedgate::builder().cloud_route("/whoami", "builtin:whoami", "").start();
    let admin = fg.admin();
    admin.add_user(ANN, "disabled", Some(PASSWORD));
    admin.add_user(BEN, "enabled", None);
    admin.add_user(CAT, "disabled", None);
    let before = states(&[(ANN, "disabled"), (BEN, "enabled"), (CAT, "disabled")]);
    SignIn::new(fg.plain, ANN, PASSWORD).until(StatusCode::OK, POLL).await;

    let dir = fg.config_path().parent().unwrap();
    let bad = dir.join("bad.csv");
    std::fs::write(
        &bad,
        "upn,state\n\
         ann@contoso.example,enforced\n\
         nobody@contoso.example,enabled\n\
         ben@contoso.example,sometimes\n\
         cat@contoso.example,enabled\n",
    )
    .unwrap();
    let bad = bad.to_str().unwrap();
    let refused = admin.run(&["user", "set-state", "--csv", bad]);
    assert_eq!(refused.code, 2, "{}{}", refused.stdout, refused.stderr);
    assert!(
        refused.stderr.contains("line 3: nobody@contoso.example"),
        "{}",
        refused.stderr
    );
    assert!(
        refused.stderr.contains("line 4: ben@contoso.example"),
        "{}",
        refused.stderr
    );
    assert!(
        !refused.stderr.contains("line 2:") && !refused.stderr.contains("line 5:"),
        "only the bad lines are reported: {}",
        refused.stderr
    );
    let refused = admin.run(&["--json", "user", "set-state", "--csv", bad]);
    assert_eq!(refused.code, 2);
    let report: Value = serde_json::from_str(&refused.stdout).unwrap();
    assert_eq!(report["applied"], false);
    let lines: Vec<&Value> = report["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["line"])
        .collect();
    assert_eq!(lines, [3, 4]);
    assert_eq!(mfa_states(&admin), before, "nothing applied");

    let good = dir.join("good.csv");
    std::fs::write(
        &good,
        "# after the pilot\n\
         ann@contoso.example,enforced\n\
         Ben@Contoso.Example,disabled\n\
         cat@contoso.example,enabled\n",
    )
    .unwrap();
    let applied = admin
        .run(&["--json", "user", "set-state", "--csv", good.to_str().unwrap()])
        .json();
    assert_eq!(applied["changed"], 3);
    assert_eq!(
        mfa_states(&admin),
        states(&[(ANN, "enforced"), (BEN, "disabled"), (CAT, "enabled")])
    );
    // The running server applies it too: Ann's org password no longer
    // opens a cloud route.
    let ann = SignIn::new(fg.plain, ANN, PASSWORD).agent("after-bulk-enforce");
    ann.until(StatusCode::UNAUTHORIZED, POLL).await;
    expect_reasons(&admin, &[("after-bulk-enforce", "app_password_required")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_delayed_but_the_challenge_and_sign_ins_are_not() {
    const FRAN: &str = "fran@contoso.example";
    let fg = Fedgate::builder()
        .auth("failure_delay = \"700ms\"")
        .cloud_route("/whoami", "builtin:whoami", "")
        .start();
    let admin = fg.admin();
    admin.add_user(FRAN, "disabled", Some(PASSWORD));
    SignIn::new(fg.plain, FRAN, PASSWORD).until(StatusCode::OK, POLL).await;

    let timed = |sign_in: SignIn<'static>| async move {
        let start = Instant::now();
        let (status, _, _) = sign_in.send().await;
        (status, start.elapsed())
    };
    let (status, took) = timed(SignIn::new(fg.plain, FRAN, PASSWORD)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(took < Duration::from_millis(500), "a good sign-in took {took:?}");
    for (user, password) in [(FRAN, "wrong password"), ("nobody@contoso.example", PASSWORD)] {
        let (status, took) = timed(SignIn::new(fg.plain, user, password)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(took >= Duration::from_millis(700), "{user}: refused after {took:?}");
    }
    let start = Instant::now();
    let (status, _, _) = get_with(fg.plain, "/whoami", &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        start.elapsed() < Duration::from_millis(500),
        "the Basic challenge was delayed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lockout_refuses_an_account_without_locking_out_its_familiar_devices() {
    let fedgate = Fedgate::builder()
        .server("trusted_proxies = [\"127.0.0.1/32\"]")
        .section("[lockout]\nthreshold = 3\nduration = \"2s\"\n")
        .cloud_route("/whoami", "builtin:whoami", "")
        .start();
    let admin = fedgate.admin();
    admin.add_user("alice@contoso.example", "disabled", Some(PASSWORD));
    let from = |ip: &'static str, password: &str, agent: &'static str| {
        let addr = fedgate.plain;
        let password = password.to_owned();
        async move {
            get_with(
                addr,
                "/whoami",
                &[
                    ("authorization", basic("alice@contoso.example", &password)),
                    ("x-forwarded-for", HeaderValue::from_static(ip)),
                    ("user-agent", HeaderValue::from_static(agent)),
                ],
            )
            .await
        }
    };
    // The user must be known to the server before the count means anything.
    SignIn::new(fedgate.plain, "alice@contoso.example", PASSWORD)
        .until(StatusCode::OK, POLL)
        .await;
    // The real user's device: a familiar source from now on.
    signed_in(&from("10.0.0.7", PASSWORD, "lock-familiar").await, "the user's device");

    // Three different guesses (a repeated one would count once).
    for guess in ["guess 1", "guess 2", "guess 3"] {
        assert_unauthorized(&from("10.0.0.66", guess, "lock-guess").await, "wrong password");
    }
    // Locked: even the right password gets no answer about itself.
    let (status, headers, _) = from("10.0.0.66", PASSWORD, "lock-locked").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(headers[header::RETRY_AFTER], "2");
    // So is any other address the user never signed in from: the count is
    // the account's.
    let (status, _, _) = from("10.0.0.8", PASSWORD, "lock-stranger").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    // The real user's device is not locked out.
    signed_in(
        &from("10.0.0.7", PASSWORD, "lock-elsewhere").await,
        "a familiar address",
    );
    expect_reasons(
        &admin,
        &[
            ("lock-guess", "bad_credentials"),
            ("lock-locked", "locked_out"),
            ("lock-elsewhere", "password"),
        ],
    );
    // And it runs out by itself.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    signed_in(&from("10.0.0.66", PASSWORD, "lock-after").await, "after the lockout");
}
