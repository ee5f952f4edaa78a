//! Organizational passwords checked against a real OpenLDAP `slapd`: the
//! decision-table rows that involve them on `cloud` and `onprem` routes,
//! search-then-bind and direct bind, StartTLS and ldaps, failover, an
//! outage and recovery, hostile user names, secrets that must never reach
//! the directory, and servers that answer garbage or nothing at all.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http::{header, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::signin::{assert_unauthorized, expect_reasons, signed_in, SignIn};
use crate::support::admin::Admin;
use crate::support::slapd::Slapd;
use crate::support::Fedgate;

const ALICE: &str = "alice@example.com";
const ALICE_PW: &str = "Alice's directory pw 1";
const BOB: &str = "bob@example.com";
const BOB_PW: &str = "Bob's directory pw 2";
const CLOUD_ONPREM: &str = "/onprem/whoami";

/// A slapd with alice and bob.
fn directory_with_users() -> Slapd {
    let slapd = Slapd::start();
    slapd.add_user("alice", ALICE, ALICE_PW);
    slapd.add_user("bob", BOB, BOB_PW);
    slapd
}

/// The `[directory]` table for `slapd` (search-then-bind with the service
/// account), with `extra` lines appended. One service connection and no
/// sync passes (tests/it/sync.rs covers those), so that bind counts are
/// exact.
pub(crate) fn directory_section(slapd: &Slapd, urls: &[String], extra: &str) -> String {
    let urls: Vec<String> = urls.iter().map(|u| format!("\"{u}\"")).collect();
    format!(
        "[directory]\n\
         urls = [{}]\n\
         bind_dn = \"{}\"\n\
         bind_password_file = \"{}\"\n\
         base_dn = \"{}\"\n\
         user_filter = \"(&(objectClass=inetOrgPerson)(mail={{upn}}))\"\n\
         login_filter = \"(&(objectClass=inetOrgPerson)(uid={{login}}))\"\n\
         disabled_filter = \"{}\"\n\
         domain = \"EXAMPLE\"\n\
         pool_size = 1\n\
         {extra}\n\
         [sync]\n\
         enabled = false\n",
        urls.join(", "),
        slapd.service_dn(),
        slapd.service_password_file().display(),
        Slapd::PEOPLE_DN,
        slapd.disabled_filter(),
    )
}

/// fedgate with a `cloud` route at /whoami and an `onprem` one at
/// /onprem/whoami, both answered by the built-in whoami.
fn fedgate(directory: String) -> Fedgate {
    Fedgate::builder()
        .section(&directory)
        .cloud_route("/whoami", "builtin:whoami", "")
        .route_in("onprem", "/onprem", "builtin:whoami", "")
        .start()
}

fn assert_unavailable(answer: &crate::signin::Answer, case: &str) {
    let (status, headers, body) = answer;
    assert_eq!(
        *status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{case}: {}",
        String::from_utf8_lossy(body)
    );
    assert!(headers.contains_key(header::RETRY_AFTER), "{case}: no Retry-After");
    assert!(
        !headers.contains_key(header::WWW_AUTHENTICATE),
        "{case}: a 503 must not re-prompt"
    );
}

fn user_json(admin: &Admin, upn: &str) -> serde_json::Value {
    admin.run(&["--json", "user", "show", upn]).json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn org_passwords_follow_the_decision_table_in_both_realms() {
    let slapd = directory_with_users();
    let fedgate = fedgate(directory_section(&slapd, &[slapd.url()], "timeout = \"2s\""));
    let admin = fedgate.admin();
    let addr = fedgate.plain;
    let cloud = |user, pw, agent| SignIn::new(addr, user, pw).agent(agent);
    let onprem = |user, pw, agent| SignIn::new(addr, user, pw).agent(agent).path(CLOUD_ONPREM);

    // First sign-in creates the federated user, MFA state disabled.
    let who = signed_in(&cloud(ALICE, ALICE_PW, "c-pw").send().await, "alice, cloud");
    assert_eq!(who["user"], ALICE, "{who}");
    let alice = user_json(&admin, ALICE);
    assert_eq!(alice["source"], "federated", "{alice}");
    assert_eq!(alice["mfa_state"], "disabled", "{alice}");
    assert_eq!(alice["directory"]["dn"], Slapd::user_dn("alice"), "{alice}");
    assert_eq!(alice["directory"]["login"], "alice", "{alice}");
    assert!(
        alice["directory"]["anchor"].as_str().is_some_and(|a| a.len() == 36),
        "{alice}"
    );

    signed_in(&onprem(ALICE, ALICE_PW, "o-pw").send().await, "alice, onprem");
    // Down-level and bare login names resolve to the UPN.
    for name in ["EXAMPLE\\alice", "example\\Alice", "alice"] {
        let who = signed_in(&onprem(name, ALICE_PW, "o-login").send().await, name);
        assert_eq!(who["user"], ALICE, "{name}: {who}");
    }
    // A login name of a user not yet in the store is found in the directory.
    let who = signed_in(&onprem("EXAMPLE\\bob", BOB_PW, "o-bob").send().await, "bob by login");
    assert_eq!(who["user"], BOB, "{who}");
    assert_eq!(user_json(&admin, BOB)["source"], "federated");
    assert_unauthorized(
        &onprem("OTHER\\alice", ALICE_PW, "o-otherdom").send().await,
        "another domain",
    );

    assert_unauthorized(&cloud(ALICE, "wrong", "c-wrong").send().await, "wrong, cloud");
    assert_unauthorized(&onprem(ALICE, "wrong", "o-wrong").send().await, "wrong, onprem");
    assert_unauthorized(&onprem("nobody@example.com", "x", "o-nobody").send().await, "unknown");
    expect_reasons(
        &admin,
        &[
            ("c-pw", "password"),
            ("o-pw", "password"),
            ("o-login", "password"),
            ("o-bob", "password"),
            ("o-otherdom", "bad_credentials"),
            ("c-wrong", "bad_credentials"),
            ("o-wrong", "bad_credentials"),
            ("o-nobody", "bad_credentials"),
        ],
    );

    // Enabled (enrolled, not registered): org passwords keep working.
    admin.run(&["user", "set-state", "--state", "enabled", ALICE]).success();
    tokio::time::sleep(Duration::from_millis(500)).await;
    signed_in(&cloud(ALICE, ALICE_PW, "c-enabled").send().await, "enabled, cloud");
    signed_in(&onprem(ALICE, ALICE_PW, "o-enabled").send().await, "enabled, onprem");
    expect_reasons(&admin, &[("c-enabled", "password"), ("o-enabled", "password")]);

    // Enforced: the org password is verified, then refused on cloud
    // routes; on-premises it still counts. App passwords: cloud only.
    admin.allow_app_passwords(true);
    admin
        .run(&["user", "set-state", "--state", "enforced", ALICE])
        .success();
    cloud(ALICE, ALICE_PW, "c-enforced")
        .until(StatusCode::UNAUTHORIZED, Duration::from_millis(50))
        .await;
    let app = admin.create_app_password(ALICE, "phone");
    cloud(ALICE, &app, "c-app")
        .until(StatusCode::OK, Duration::from_millis(50))
        .await;
    signed_in(&onprem(ALICE, ALICE_PW, "o-enforced").send().await, "enforced, onprem");
    assert_unauthorized(&onprem(ALICE, &app, "o-app").send().await, "app password onprem");
    expect_reasons(
        &admin,
        &[
            ("c-enforced", "app_password_required"),
            ("c-app", "app_password"),
            ("o-enforced", "password"),
            ("o-app", "app_password_not_valid_onprem"),
        ],
    );

    // Disabled in the directory: refused as such on first sign-in.
    slapd.add_user("carol", "carol@example.com", "Carol pw 3");
    slapd.disable_user("carol");
    assert_unauthorized(
        &onprem("carol@example.com", "Carol pw 3", "o-carol").send().await,
        "disabled in the directory",
    );
    // Disabled in fedgate: refused whatever the password, without a bind.
    admin.run(&["user", "disable", BOB]).success();
    let bob_cloud = cloud(BOB, BOB_PW, "c-bob-disabled");
    bob_cloud
        .until(StatusCode::UNAUTHORIZED, Duration::from_millis(50))
        .await;
    let before = slapd.bind_count();
    assert_unauthorized(&bob_cloud.send().await, "disabled in fedgate");
    assert_eq!(
        slapd.bind_count() - before,
        0,
        "a disabled user's password went to the directory"
    );
    expect_reasons(
        &admin,
        &[("o-carol", "account_disabled"), ("c-bob-disabled", "account_disabled")],
    );

    // A cloud-only user is not known on-premises.
    admin.add_user("dave@example.com", "disabled", Some("Dave cloud pw"));
    cloud("dave@example.com", "Dave cloud pw", "c-dave")
        .until(StatusCode::OK, Duration::from_millis(50))
        .await;
    assert_unauthorized(
        &onprem("dave@example.com", "Dave cloud pw", "o-dave").send().await,
        "cloud user, onprem route",
    );
    expect_reasons(&admin, &[("c-dave", "password"), ("o-dave", "bad_credentials")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verified_passwords_are_cached_until_a_change_and_failures_never() {
    let slapd = directory_with_users();
    let fedgate = fedgate(directory_section(&slapd, &[slapd.url()], "timeout = \"2s\""));
    let admin = fedgate.admin();
    let alice = SignIn::new(fedgate.plain, ALICE, ALICE_PW).path(CLOUD_ONPREM);

    signed_in(&alice.send().await, "first");
    // The user record and the change feed reach the index.
    tokio::time::sleep(Duration::from_millis(500)).await;
    signed_in(&alice.send().await, "second (binds once more: now a known user)");
    let before = slapd.bind_count();
    for i in 0..20 {
        signed_in(&alice.send().await, &format!("warm {i}"));
    }
    assert_eq!(slapd.bind_count() - before, 0, "warm sign-ins bound to the directory");

    // Failed binds are not cached: each new wrong password binds; the
    // same wrong one again is refused without asking (lockout counts it
    // once).
    let before = slapd.bind_count();
    for i in 0..3 {
        let wrong = format!("not it {i}");
        let wrong = SignIn::new(fedgate.plain, ALICE, &wrong).path(CLOUD_ONPREM);
        assert_unauthorized(&wrong.send().await, "wrong");
    }
    assert_eq!(slapd.bind_count() - before, 3);
    let again = SignIn::new(fedgate.plain, ALICE, "not it 0").path(CLOUD_ONPREM);
    assert_unauthorized(&again.send().await, "the same wrong password again");
    assert_eq!(
        slapd.bind_count() - before,
        3,
        "a repeated wrong password reached slapd"
    );

    // A change of MFA state drops the cached verification.
    admin.run(&["user", "set-state", "--state", "enabled", ALICE]).success();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let before = slapd.bind_count();
    signed_in(&alice.send().await, "after state change");
    assert_eq!(
        slapd.bind_count() - before,
        1,
        "the state change did not drop the cache"
    );

    // With cache_ttl = "0s" every sign-in binds.
    let uncached = fedgate_without_cache(&slapd);
    let alice = SignIn::new(uncached.plain, ALICE, ALICE_PW).path(CLOUD_ONPREM);
    signed_in(&alice.send().await, "uncached first");
    let before = slapd.bind_count();
    for _ in 0..5 {
        signed_in(&alice.send().await, "uncached");
    }
    assert_eq!(slapd.bind_count() - before, 5);
}

fn fedgate_without_cache(slapd: &Slapd) -> Fedgate {
    fedgate(directory_section(slapd, &[slapd.url()], "cache_ttl = \"0s\""))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_app_password_shaped_and_hostile_names_never_bind() {
    let slapd = directory_with_users();
    let fedgate = fedgate(directory_section(&slapd, &[slapd.url()], "timeout = \"2s\""));
    let admin = fedgate.admin();
    // Prime the service connection and the bind pool.
    signed_in(
        &SignIn::new(fedgate.plain, ALICE, ALICE_PW)
            .path(CLOUD_ONPREM)
            .send()
            .await,
        "alice",
    );
    signed_in(
        &SignIn::new(fedgate.plain, BOB, BOB_PW).path(CLOUD_ONPREM).send().await,
        "bob",
    );
    // A well-formed app password (its check letters are right) that is
    // not alice's, and one bob deleted.
    let bobs = admin.create_app_password(BOB, "phone");
    let deleted = admin.create_app_password(BOB, "old phone");
    admin.run(&["app-password", "delete", BOB, "old phone"]).success();
    tokio::time::sleep(Duration::from_millis(500)).await;

    let before = slapd.bind_count();
    let mut cases: Vec<(String, String)> = vec![
        (ALICE.into(), String::new()),
        (BOB.into(), String::new()),
        (ALICE.into(), bobs.clone()),
        (ALICE.into(), bobs.to_uppercase().replace('-', " ")),
        (BOB.into(), deleted.clone()),
        ("nobody@example.com".into(), bobs.clone()),
    ];
    for hostile in [
        "*",
        ")(uid=*",
        "*)(|(uid=*",
        "\\",
        "EXAMPLE\\*",
        "alice\0",
        "al\0ice",
        "*@example.com",
        "alice@example.com)(mail=*",
        "a*",
    ] {
        cases.push((hostile.into(), ALICE_PW.into()));
    }
    for (user, password) in &cases {
        for path in ["/whoami", CLOUD_ONPREM] {
            let answer = SignIn::new(fedgate.plain, user, password).path(path).send().await;
            let case = format!("{user:?} / {password:?} at {path}");
            assert_unauthorized(&answer, &case);
            assert_eq!(slapd.bind_count() - before, 0, "{case} reached the directory as a bind");
        }
    }
    // Nothing was created for the hostile names either.
    let users = admin.run(&["--json", "user", "list"]).json();
    assert_eq!(users.as_array().unwrap().len(), 2, "{users}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_and_ldaps_verify_the_server_against_the_ca() {
    let slapd = directory_with_users();
    let ca = slapd.ca_file().display().to_string();
    for (name, urls, extra) in [
        ("ldaps", vec![slapd.ldaps_url()], format!("ca_file = \"{ca}\"")),
        (
            "starttls",
            vec![slapd.url()],
            format!("starttls = true\nca_file = \"{ca}\""),
        ),
    ] {
        let fedgate = fedgate(directory_section(&slapd, &urls, &extra));
        let who = signed_in(
            &SignIn::new(fedgate.plain, ALICE, ALICE_PW)
                .path(CLOUD_ONPREM)
                .send()
                .await,
            name,
        );
        assert_eq!(who["user"], ALICE);
        assert_unauthorized(
            &SignIn::new(fedgate.plain, BOB, "wrong").path(CLOUD_ONPREM).send().await,
            name,
        );
    }
    // Without the CA the server's certificate is not trusted: no password
    // is sent, and the answer is "try later", not a re-prompt.
    let untrusted = fedgate(directory_section(&slapd, &[slapd.ldaps_url()], ""));
    assert_unavailable(
        &SignIn::new(untrusted.plain, ALICE, ALICE_PW)
            .path(CLOUD_ONPREM)
            .send()
            .await,
        "untrusted certificate",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_bind_without_a_service_account() {
    let slapd = directory_with_users();
    let section = format!(
        "[directory]\n\
         urls = [\"{}\"]\n\
         bind_name = \"uid={{login}},{}\"\n\
         base_dn = \"{}\"\n\
         user_filter = \"(&(objectClass=inetOrgPerson)(mail={{upn}}))\"\n\
         login_filter = \"(&(objectClass=inetOrgPerson)(uid={{login}}))\"\n\
         timeout = \"2s\"\n",
        slapd.url(),
        Slapd::PEOPLE_DN,
        Slapd::PEOPLE_DN,
    );
    let fedgate = fedgate(section);
    let admin = fedgate.admin();
    let who = signed_in(
        &SignIn::new(fedgate.plain, ALICE, ALICE_PW)
            .path(CLOUD_ONPREM)
            .send()
            .await,
        "direct bind",
    );
    assert_eq!(who["user"], ALICE);
    assert_eq!(user_json(&admin, ALICE)["directory"]["dn"], Slapd::user_dn("alice"));
    let who = signed_in(
        &SignIn::new(fedgate.plain, "bob", BOB_PW)
            .path(CLOUD_ONPREM)
            .send()
            .await,
        "direct bind by login",
    );
    assert_eq!(who["user"], BOB);
    assert_unauthorized(
        &SignIn::new(fedgate.plain, ALICE, BOB_PW)
            .path(CLOUD_ONPREM)
            .send()
            .await,
        "wrong password",
    );
    // A DN value is escaped: this name is no DN of anyone.
    assert_unauthorized(
        &SignIn::new(fedgate.plain, "alice,ou=people", ALICE_PW)
            .path(CLOUD_ONPREM)
            .send()
            .await,
        "DN injection",
    );
}

/// A loopback port with nothing listening.
fn dead_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_outage_and_recovery() {
    let mut slapd = directory_with_users();
    let dead = format!("ldap://127.0.0.1:{}", dead_port());
    // Caching off, so that every sign-in asks the directory.
    let fedgate = fedgate(directory_section(&slapd, &[dead, slapd.url()], "cache_ttl = \"0s\""));
    let admin = fedgate.admin();
    let alice = SignIn::new(fedgate.plain, ALICE, ALICE_PW).path(CLOUD_ONPREM);

    let started = Instant::now();
    signed_in(&alice.send().await, "failover to the second URL");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "failover took {:?}",
        started.elapsed()
    );
    for _ in 0..5 {
        signed_in(&alice.send().await, "on the second URL");
    }

    // An app password for the outage.
    admin.allow_app_passwords(true);
    let app = admin.create_app_password(ALICE, "phone");
    let alice_app = SignIn::new(fedgate.plain, ALICE, &app).agent("outage-app");
    alice_app.until(StatusCode::OK, Duration::from_millis(50)).await;

    slapd.stop();
    let started = Instant::now();
    let answer = alice.agent("outage-pw").send().await;
    assert_unavailable(&answer, "directory stopped");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "503 took {:?}",
        started.elapsed()
    );
    let answer = alice.path("/whoami").agent("outage-cloud-pw").send().await;
    assert_unavailable(&answer, "directory stopped, cloud route");
    signed_in(&alice_app.send().await, "app password while the directory is down");
    expect_reasons(
        &admin,
        &[
            ("outage-pw", "directory_unavailable"),
            ("outage-cloud-pw", "directory_unavailable"),
            ("outage-app", "app_password"),
        ],
    );

    slapd.restart();
    let took = alice.until(StatusCode::OK, Duration::from_millis(100)).await;
    assert!(took < Duration::from_secs(5), "recovery took {took:?}");
    for _ in 0..5 {
        signed_in(&alice.send().await, "after recovery");
    }
}

/// After a failover, sign-ins go back to the first server once it returns
/// and its back-off is over; pooled connections do not stay on the second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_ins_fail_back_to_the_first_server_when_it_returns() {
    let mut first = directory_with_users();
    let second = directory_with_users();
    // The same service account on both, as replicas would have.
    second.modify(&format!(
        "dn: {}\nchangetype: modify\nreplace: userPassword\nuserPassword: {}\n-\n",
        second.service_dn(),
        first.service_password()
    ));
    let fedgate = fedgate(directory_section(
        &first,
        &[first.url(), second.url()],
        "cache_ttl = \"0s\"\nfailover_backoff = \"1s\"\ntimeout = \"2s\"",
    ));
    let alice = SignIn::new(fedgate.plain, ALICE, ALICE_PW).path(CLOUD_ONPREM);
    // bob signs in by login name: a search on the service connection each time.
    let bob = SignIn::new(fedgate.plain, "bob", BOB_PW).path(CLOUD_ONPREM);
    signed_in(&alice.send().await, "first server");
    signed_in(&bob.send().await, "first server");

    first.stop();
    alice.until(StatusCode::OK, Duration::from_millis(50)).await;
    let on_second = second.bind_count();
    for _ in 0..3 {
        signed_in(&alice.send().await, "second server");
        signed_in(&bob.send().await, "second server");
    }
    assert!(second.bind_count() > on_second, "the second server took no binds");

    first.restart();
    let back_by = Instant::now() + Duration::from_secs(5);
    loop {
        let (first_before, second_before) = (first.bind_count(), second.bind_count());
        for _ in 0..3 {
            signed_in(&alice.send().await, "after the first server returned");
            signed_in(&bob.send().await, "after the first server returned");
        }
        let (first_now, second_now) = (first.bind_count(), second.bind_count());
        // Six sign-ins: six user binds, and a service bind for each new
        // connection; none of it on the second server any more.
        if second_now == second_before && first_now - first_before >= 6 {
            break;
        }
        assert!(
            Instant::now() < back_by,
            "sign-ins still reach the second server 5 s after the first returned"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A server that accepts LDAP connections and answers every request with
/// `reply` (or nothing at all when it is empty).
async fn fake_server(reply: &'static [u8]) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 {
                        return;
                    }
                    if !reply.is_empty() && stream.write_all(reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_silence_and_loose_filters_do_not_hang_or_crash() {
    let slapd = directory_with_users();
    let garbage = fake_server(b"\x30\x84\xff\xff\xff\xff\x02\x01\x01garbage that is not BER").await;
    let silent = fake_server(b"").await;
    let fedgate = fedgate(directory_section(
        &slapd,
        &[format!("ldap://{garbage}"), format!("ldap://{silent}")],
        "timeout = \"1s\"",
    ));
    for _ in 0..3 {
        let started = Instant::now();
        let answer = SignIn::new(fedgate.plain, ALICE, ALICE_PW)
            .path(CLOUD_ONPREM)
            .send()
            .await;
        assert_unavailable(&answer, "garbage, then silence");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "took {:?}",
            started.elapsed()
        );
    }
    // Still serving.
    let (status, _, _) = crate::support::client::get(fedgate.plain, "/whoami").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // A referral under the search base is skipped, not chased (its host
    // does not even resolve).
    slapd.add_users_ldif(&format!(
        "dn: ou=elsewhere,{}\nobjectClass: referral\nobjectClass: extensibleObject\nou: elsewhere\n\
         ref: ldap://dc9.unresolvable.invalid/ou=people,dc=other,dc=example\n",
        Slapd::PEOPLE_DN
    ));
    let referred = fedgate_with_filter(&slapd, "(&(objectClass=inetOrgPerson)(mail={upn}))");
    let who = signed_in(
        &SignIn::new(referred.plain, ALICE, ALICE_PW)
            .path(CLOUD_ONPREM)
            .send()
            .await,
        "search returning a referral",
    );
    assert_eq!(who["user"], ALICE);

    // A filter that matches every user is refused, not answered with the
    // first entry that comes back.
    let loose = fedgate_with_filter(&slapd, "(|(mail={upn})(objectClass=inetOrgPerson))");
    assert_unauthorized(
        &SignIn::new(loose.plain, ALICE, ALICE_PW)
            .path(CLOUD_ONPREM)
            .send()
            .await,
        "ambiguous filter",
    );
}

fn fedgate_with_filter(slapd: &Slapd, user_filter: &str) -> Fedgate {
    let section = directory_section(slapd, &[slapd.url()], "").replace(
        "user_filter = \"(&(objectClass=inetOrgPerson)(mail={upn}))\"",
        &format!("user_filter = \"{user_filter}\""),
    );
    fedgate(section)
}

/// A client that gives up while its password is being checked leaves the
/// bind to finish on its own: the answer is taken, nothing is logged about
/// an answer with nobody to receive it, and the connection serves the next
/// sign-in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_mid_bind_does_not_strand_the_bind() {
    let slapd = directory_with_users();
    let fedgate = fedgate(directory_section(
        &slapd,
        &[slapd.url()],
        "timeout = \"5s\"\ncache_ttl = \"0s\"",
    ));
    // Opens the service connection and a bind connection, and records both
    // users' entries: bob's next sign-in is a bind to his known DN.
    sign_in_each(&fedgate, &[(ALICE, ALICE_PW, "alice"), (BOB, BOB_PW, "bob")]).await;
    let before = slapd.bind_count();

    slapd.pause();
    let mut client = tokio::net::TcpStream::connect(fedgate.plain).await.unwrap();
    let request = format!(
        "GET {CLOUD_ONPREM} HTTP/1.1\r\nhost: localhost\r\nauthorization: {}\r\n\r\n",
        crate::support::client::basic(BOB, BOB_PW).to_str().unwrap()
    );
    client.write_all(request.as_bytes()).await.unwrap();
    // The request is in: fedgate is waiting for the stopped directory.
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(client);
    tokio::time::sleep(Duration::from_millis(200)).await;
    slapd.resume();

    let deadline = Instant::now() + Duration::from_secs(5);
    while slapd.bind_count() - before < 1 {
        assert!(Instant::now() < deadline, "the abandoned sign-in never reached slapd");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Time for an answer that found nobody to be logged.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let logs = fedgate.raw_logs();
    assert!(
        !logs.contains("send error"),
        "an LDAP answer was left without a receiver:\n{logs}"
    );
    sign_in_each(&fedgate, &[(BOB, BOB_PW, "bob"), (ALICE, ALICE_PW, "alice")]).await;
}

/// Signs each `(user, password, expected user)` in on the onprem route.
async fn sign_in_each(fedgate: &Fedgate, users: &[(&str, &str, &str)]) {
    for (user, password, who) in users {
        signed_in(
            &SignIn::new(fedgate.plain, user, password)
                .path(CLOUD_ONPREM)
                .send()
                .await,
            who,
        );
    }
}
