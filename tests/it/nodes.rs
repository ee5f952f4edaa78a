//! Several fedgate nodes on one PostgreSQL store: what one node (or its
//! CLI) changes, every node enforces; what one creates, every node accepts
//! at once.

use std::time::Duration;

use http::StatusCode;

use crate::signin::{expect_reasons, signed_in, SignIn};
use crate::support::postgres::Database;

const ALICE: &str = "alice@contoso.example";
const BOB: &str = "bob@contoso.example";
const PASSWORD: &str = "Correct horse 7";
/// How often a test asks again while waiting for a node to see a change:
/// often, since the change should be seen within milliseconds.
const POLL: Duration = Duration::from_millis(5);
/// DESIGN.md: a revoking change takes effect on every running server
/// within 1 s. (The distribution, against the 100 ms goal, is measured by
/// `scripts/bench nodes`, not asserted here.)
const REVOCATION_LIMIT: Duration = Duration::from_secs(1);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_one_node_creates_every_node_accepts_at_once() {
    let db = Database::new();
    let a = db.node().start();
    let b = db.node().start();
    let (on_a, on_b) = (a.admin(), b.admin());
    on_a.allow_app_passwords(true);

    // A cloud user added through one node's CLI signs in on the other the
    // moment the command returns: no poll interval to wait out.
    on_a.add_user(ALICE, "enabled", Some(PASSWORD));
    signed_in(
        &SignIn::new(b.plain, ALICE, PASSWORD).agent("new-user").send().await,
        "a user added a moment ago on the other node",
    );
    // Likewise an app password, made for a user the other node knows.
    let app = on_b.create_app_password(ALICE, "phone");
    signed_in(
        &SignIn::new(a.plain, ALICE, &app).agent("new-app-password").send().await,
        "an app password made a moment ago on the other node",
    );
    // And both, for a user and device made one after the other.
    on_b.add_user(BOB, "enforced", None);
    let bob_app = on_b.create_app_password(BOB, "laptop");
    signed_in(
        &SignIn::new(a.plain, BOB, &bob_app).send().await,
        "a new user's new app password",
    );
    // Each node logs its own sign-ins into the one store.
    expect_reasons(&on_b, &[("new-user", "password"), ("new-app-password", "app_password")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_on_one_node_is_enforced_by_the_other() {
    let db = Database::new();
    let a = db.node().start();
    let b = db.node().start();
    let (on_a, on_b) = (a.admin(), b.admin());
    on_a.allow_app_passwords(true);
    on_a.add_user(ALICE, "enabled", Some(PASSWORD));
    on_a.add_user(BOB, "enabled", None);
    let phone = on_a.create_app_password(ALICE, "phone");
    let tablet = on_a.create_app_password(ALICE, "tablet");
    let bob_app = on_a.create_app_password(BOB, "phone");
    let phone_on_b = SignIn::new(b.plain, ALICE, &phone);
    let tablet_on_b = SignIn::new(b.plain, ALICE, &tablet);
    let password_on_b = SignIn::new(b.plain, ALICE, PASSWORD);
    let bob_on_b = SignIn::new(b.plain, BOB, &bob_app);
    // Warm on B: the answers below come from its cache until the change
    // reaches it.
    for sign_in in [phone_on_b, tablet_on_b, password_on_b, bob_on_b] {
        sign_in.until(StatusCode::OK, POLL).await;
        signed_in(&sign_in.send().await, "warm");
    }

    // Each change is made on A (its CLI); B must refuse within the limit.
    let revoked = |what: &str, took: Duration| {
        assert!(took < REVOCATION_LIMIT, "{what} reached the other node after {took:?}");
    };
    on_a.run(&["app-password", "delete", ALICE, "phone"]).success();
    revoked(
        "an app password deleted",
        phone_on_b.until(StatusCode::UNAUTHORIZED, POLL).await,
    );
    signed_in(&tablet_on_b.send().await, "the user's other app password");

    on_a.run(&["user", "set-state", ALICE, "--state", "enforced"]).success();
    revoked(
        "an MFA state enforced",
        password_on_b.until(StatusCode::UNAUTHORIZED, POLL).await,
    );
    signed_in(&tablet_on_b.send().await, "an app password of an enforced user");

    on_a.run(&["settings", "set", "allow-app-passwords", "false"]).success();
    revoked(
        "app passwords turned off",
        tablet_on_b.until(StatusCode::UNAUTHORIZED, POLL).await,
    );
    on_a.allow_app_passwords(true);
    tablet_on_b.until(StatusCode::OK, POLL).await;

    on_a.run(&["user", "disable", ALICE]).success();
    revoked(
        "a user disabled",
        tablet_on_b.until(StatusCode::UNAUTHORIZED, POLL).await,
    );

    on_a.run(&["user", "revoke-app-passwords", BOB]).success();
    revoked(
        "a user's app passwords revoked",
        bob_on_b.until(StatusCode::UNAUTHORIZED, POLL).await,
    );

    expect_reasons(&on_b, &[("fedgate-tests", "bad_credentials")]);
    // B heard of the changes from the store's notifications, not only at
    // its polls of the change feed.
    let notified = metric(b.admin.expect("admin listener"), "fedgate_store_notifications_total").await;
    assert!(notified >= 5.0, "B was notified {notified} times");
    assert_eq!(metric(b.admin.unwrap(), "fedgate_store_listening").await, 1.0);
}

/// A node of `db` with the directory and sync tables `sections`, and an
/// `onprem` route at /onprem.
pub(crate) fn sync_node(db: &Database, sections: &[String]) -> crate::support::fedgate::Builder {
    sections
        .iter()
        .fold(db.node(), |b, s| b.section(s))
        .route_in("onprem", "/onprem", "builtin:whoami", "")
}

/// A metric's value from a node's `/metrics` (summed over its labels).
pub(crate) async fn metric(admin: std::net::SocketAddr, name: &str) -> f64 {
    let (status, _, body) = crate::support::client::get(admin, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    let text = String::from_utf8_lossy(&body);
    text.lines()
        .filter(|line| line.split([' ', '{']).next() == Some(name))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_leads_the_sync_and_another_takes_over_when_it_dies() {
    use crate::support::slapd::Slapd;
    use crate::sync::{directory_section, eventually, sync_section};
    const CAROL: &str = "carol@example.com";
    const CAROL_PW: &str = "Carol's directory pw 3";
    /// The sync interval: the lead runs out one interval after the
    /// leader's last renewal, and the other node tries three times an
    /// interval.
    const INTERVAL: Duration = Duration::from_secs(1);

    let slapd = Slapd::start();
    slapd.add_user("carol", CAROL, CAROL_PW);
    let db = Database::new();
    let sections = [
        directory_section(&slapd, Slapd::PEOPLE_DN, "timeout = \"2s\""),
        sync_section("interval = \"1s\"\nfull_every = \"10m\""),
    ];
    let node = || sync_node(&db, &sections);
    let mut a = node().start();
    a.wait_log(Duration::from_secs(10), |v| {
        v["message"] == "leading the directory sync"
    });
    let b = node().start();
    // Passes run on A alone: several of A's, none of B's.
    a.wait_log(Duration::from_secs(10), |v| {
        v["message"] == "sync pass" && v["kind"] == "incremental"
    });
    let a_passes = || a.events("sync pass").len();
    let seen = a_passes();
    eventually(
        "two more passes on the leader",
        Duration::from_secs(10),
        Some(&a),
        || (a_passes() >= seen + 2).then_some(()),
    )
    .await;
    assert!(
        b.events("sync pass").is_empty(),
        "B ran passes while A led: {}",
        b.raw_logs()
    );
    assert!(b.events("leading the directory sync").is_empty());
    let status = b.admin().run(&["--json", "sync", "status"]).json();
    assert!(
        status["leader"]["node"]
            .as_str()
            .unwrap()
            .ends_with(&format!(":{}", a.pid())),
        "{status}"
    );
    assert_eq!(metric(a.admin.unwrap(), "fedgate_sync_leader").await, 1.0);
    assert_eq!(metric(b.admin.unwrap(), "fedgate_sync_leader").await, 0.0);

    // The leader dies without a word: B takes the lead once A's has run
    // out, and runs a full pass at once.
    a.signal("KILL");
    let killed = std::time::Instant::now();
    a.wait_exit(Duration::from_secs(10)).expect("A exits after SIGKILL");
    b.wait_log(Duration::from_secs(10), |v| {
        v["message"] == "leading the directory sync"
    });
    let took = killed.elapsed();
    assert!(took <= 2 * INTERVAL, "B took the lead {took:?} after A died");
    b.wait_log(Duration::from_secs(10), |v| {
        v["message"] == "sync pass" && v["kind"] == "full" && v["outcome"] == "completed"
    });
    let status = b.admin().run(&["--json", "sync", "status"]).json();
    assert!(
        status["leader"]["node"]
            .as_str()
            .unwrap()
            .ends_with(&format!(":{}", b.pid())),
        "{status}"
    );
    assert_eq!(metric(b.admin.unwrap(), "fedgate_sync_leader").await, 1.0);
    // And it carries the directory's changes: a disable reaches sign-ins.
    let carol = SignIn::new(b.plain, CAROL, CAROL_PW).path("/onprem/whoami");
    carol.until(StatusCode::OK, POLL).await;
    slapd.disable_user("carol");
    carol.until(StatusCode::UNAUTHORIZED, Duration::from_millis(50)).await;
}

/// `/readyz` of a node.
async fn ready(node: &crate::support::Fedgate) -> StatusCode {
    crate::support::client::get(node.admin.expect("admin listener"), "/readyz")
        .await
        .0
}

/// Polls `check` until it holds, at most `timeout`.
async fn wait_for<Fut: std::future::Future<Output = bool>>(
    what: &str,
    timeout: Duration,
    node: &crate::support::Fedgate,
    mut check: impl FnMut() -> Fut,
) {
    let started = std::time::Instant::now();
    while !check().await {
        assert!(
            started.elapsed() < timeout,
            "{what}: not after {timeout:?}; log:\n{}",
            node.raw_logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_stopped_and_restarted_under_load() {
    // A cluster of its own: the test stops it.
    let cluster = crate::support::postgres::Cluster::start().unwrap_or_else(|e| panic!("{e}"));
    let db = Database::on(&cluster);
    // The view stays usable for a database restart: warm sign-ins go on.
    let node = db.node().store("max_staleness = \"60s\"").start();
    let admin = node.admin();
    admin.allow_app_passwords(true);
    admin.add_user(ALICE, "enforced", None);
    let app = admin.create_app_password(ALICE, "phone");
    let revoked = admin.create_app_password(ALICE, "old phone");
    admin.run(&["app-password", "delete", ALICE, "old phone"]).success();
    let alice = SignIn::new(node.plain, ALICE, &app).agent("during-outage");
    let old_phone = SignIn::new(node.plain, ALICE, &revoked).agent("revoked");
    alice.until(StatusCode::OK, POLL).await;
    old_phone.until(StatusCode::UNAUTHORIZED, POLL).await;

    cluster.stop().unwrap();
    wait_for(
        "the node to see the store down",
        Duration::from_secs(10),
        &node,
        || async { ready(&node).await == StatusCode::SERVICE_UNAVAILABLE },
    )
    .await;
    // A bounded load while the database is away: warm sign-ins answered
    // from memory; a revoked app password refused (as the repeat of a
    // secret already refused, or as 503); a name the view does not know
    // answered 503 with Retry-After, since it may have been made a moment
    // ago on another node and only the store could say. Never an allow of
    // what should be refused, never a 500.
    let stranger = SignIn::new(node.plain, "new@contoso.example", PASSWORD).agent("unknown");
    for _ in 0..50 {
        signed_in(&alice.send().await, "a warm sign-in while the database is down");
        let (status, _, body) = old_phone.send().await;
        assert!(
            [StatusCode::UNAUTHORIZED, StatusCode::SERVICE_UNAVAILABLE].contains(&status),
            "a revoked app password: {status} {}",
            String::from_utf8_lossy(&body)
        );
        let (status, headers, body) = stranger.send().await;
        assert_eq!(
            status,
            StatusCode::SERVICE_UNAVAILABLE,
            "an unknown name: {}",
            String::from_utf8_lossy(&body)
        );
        assert!(headers.contains_key("retry-after"), "{headers:?}");
    }
    // The CLI acknowledges nothing it could not write.
    let out = admin.run(&["user", "add", BOB, "--state", "enabled"]);
    assert_ne!(out.code, 0, "user add succeeded with the database down");

    // Back by itself, no restart of fedgate: ready, writing, and the
    // sign-in records of the outage written after it.
    cluster.restart().unwrap();
    wait_for(
        "the node to see the store back",
        Duration::from_secs(20),
        &node,
        || async { ready(&node).await == StatusCode::OK },
    )
    .await;
    admin.add_user(BOB, "enabled", Some(PASSWORD));
    signed_in(
        &SignIn::new(node.plain, BOB, PASSWORD).send().await,
        "a user added after the restart",
    );
    admin.wait_signins("the outage's sign-in records", |records| {
        let count = |agent: &str| {
            records
                .iter()
                .filter(|r| r["user_agent"] == agent)
                .map(|r| r["count"].as_u64().unwrap_or(1))
                .sum::<u64>()
        };
        count("during-outage") >= 51 && count("unknown") >= 50 && count("revoked") >= 51
    });
    let records = admin.signins();
    assert!(
        records
            .iter()
            .filter(|r| r["user_agent"] == "unknown")
            .all(|r| r["reason"] == "store_unavailable" && r["success"] == false),
        "{records:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_loses_nothing_it_acknowledged() {
    let db = Database::new();
    let node = db.node().start();
    let admin = node.admin();
    admin.allow_app_passwords(true);
    admin.add_user(ALICE, "enforced", None);
    let app = admin.create_app_password(ALICE, "phone");
    SignIn::new(node.plain, ALICE, &app).until(StatusCode::OK, POLL).await;
    admin.run(&["user", "set-state", ALICE, "--state", "enabled"]).success();
    let node = node.kill_and_restart();
    let show = admin.run(&["--json", "user", "show", ALICE]).json();
    assert_eq!(show["mfa_state"], "enabled", "{show}");
    signed_in(&SignIn::new(node.plain, ALICE, &app).send().await, "after SIGKILL");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guesser_spreading_over_the_nodes_meets_one_budget() {
    const THRESHOLD: usize = 6;
    let db = Database::new();
    let lockout = format!("[lockout]\nthreshold = {THRESHOLD}\nduration = \"10m\"\n");
    let node = || {
        db.node()
            .section(&lockout)
            .server("trusted_proxies = [\"127.0.0.1/32\"]")
    };
    let (a, b) = (node().start(), node().start());
    a.admin().add_user(ALICE, "enabled", Some(PASSWORD));
    SignIn::new(a.plain, ALICE, PASSWORD).until(StatusCode::OK, POLL).await;
    SignIn::new(b.plain, ALICE, PASSWORD).until(StatusCode::OK, POLL).await;

    // Distinct wrong passwords, half to each node, from an address that
    // never signed Alice in (behind a proxy the nodes trust, as behind a
    // load balancer).
    let guesser = |node: &crate::support::Fedgate, n: usize| {
        let password = format!("wrong password {n}");
        let addr = node.plain;
        async move {
            crate::support::client::get_with(
                addr,
                "/whoami",
                &[
                    ("authorization", crate::support::client::basic(ALICE, &password)),
                    ("x-forwarded-for", http::HeaderValue::from_static("203.0.113.9")),
                ],
            )
            .await
            .0
        }
    };
    for n in 0..THRESHOLD {
        let node = if n % 2 == 0 { &a } else { &b };
        assert_eq!(guesser(node, n).await, StatusCode::UNAUTHORIZED, "guess {n}");
    }
    // Each node saw half the guesses; both count them all.
    for node in [&a, &b] {
        node.wait_log(Duration::from_secs(5), |v| {
            v["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("too many wrong secrets") && m.contains("locked out"))
        });
        assert_eq!(
            guesser(node, 99).await,
            StatusCode::TOO_MANY_REQUESTS,
            "a guess once the budget is spent over both nodes"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_is_reached_over_tls_checked_against_ca_file() {
    use crate::support::postgres::{Cluster, Options};
    let certs = tempfile::tempdir().unwrap();
    crate::support::slapd::write_ca_and_server(certs.path(), "fedgate test DB CA", &["127.0.0.1".into()], "db");
    let cluster = Cluster::start_with(Options {
        tls: Some((certs.path().join("db.pem"), certs.path().join("db.key"))),
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let db = Database::on(&cluster);
    let ca_line = |ca: &std::path::Path| format!("ca_file = \"{}\"", ca.display());
    let node = db.node().store(&ca_line(&certs.path().join("ca.pem"))).start();
    let admin = node.admin();
    admin.add_user(ALICE, "enabled", Some(PASSWORD));
    signed_in(
        &SignIn::new(node.plain, ALICE, PASSWORD).send().await,
        "a node on a TLS database",
    );
    // Every connection of fedgate's (the node's and the CLI's) used TLS.
    let plain = cluster
        .psql(
            &db.name,
            "SELECT count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
             WHERE a.application_name = 'fedgate' AND NOT s.ssl",
        )
        .unwrap();
    assert_eq!(plain.trim(), "0");

    // A server whose certificate another CA signed is refused, by name.
    let other = tempfile::tempdir().unwrap();
    crate::support::slapd::write_ca_and_server(other.path(), "another CA", &["127.0.0.1".into()], "x");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("fedgate.toml");
    let text = db
        .node()
        .store(&ca_line(&other.path().join("ca.pem")))
        .config_text(dir.path());
    std::fs::write(&config, text).unwrap();
    let out = crate::support::admin::Admin::new(&config).run(&["user", "list"]);
    assert_ne!(out.code, 0);
    assert!(
        out.stderr.to_lowercase().contains("certificate") && !out.stderr.contains(cluster.password()),
        "{}",
        out.stderr
    );
}
