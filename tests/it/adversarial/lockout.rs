//! Lockout that cannot be dodged: every spelling of one name spends one
//! budget (counted with slapd's own bind counter), a right password refused
//! as `app_password_required` answers like a wrong one, the user's familiar
//! device keeps signing in while strangers are locked out, a repeated wrong
//! secret counts once, and one address spraying many accounts is stopped.
//!
//! Memory bounds (many long unique names) are shown on the map itself in
//! `src/auth/lockout/tests.rs`: a name over 256 bytes is refused before it
//! gets a key at all, and keys are of fixed size.

use http::{HeaderValue, StatusCode};

use crate::signin::{assert_unauthorized, expect_reasons, signed_in, Answer, SignIn};
use crate::support::client::{basic, get_with};
use crate::support::slapd::Slapd;
use crate::support::Fedgate;

const ALICE_PW: &str = "Alice's directory pw 1";
const BOB_PW: &str = "Bob's directory pw 2";
const PASSWORD: &str = "Correct horse 7";

/// fedgate on a slapd with alice and bob, `threshold = 3`, no `domain`,
/// one service connection and no sync passes so that bind counts are exact.
fn with_directory(slapd: &Slapd) -> Fedgate {
    Fedgate::builder()
        .section(&format!(
            "[directory]\n\
             urls = [\"{}\"]\n\
             bind_dn = \"{}\"\n\
             bind_password_file = \"{}\"\n\
             base_dn = \"{}\"\n\
             user_filter = \"(&(objectClass=inetOrgPerson)(mail={{upn}}))\"\n\
             login_filter = \"(&(objectClass=inetOrgPerson)(uid={{login}}))\"\n\
             pool_size = 1\n\
             [sync]\n\
             enabled = false\n\
             [lockout]\n\
             threshold = 3\n\
             source_threshold = 0\n",
            slapd.url(),
            slapd.service_dn(),
            slapd.service_password_file().display(),
            Slapd::PEOPLE_DN,
        ))
        .cloud_route("/whoami", "builtin:whoami", "")
        .start()
}

/// Adds cloud users with `PASSWORD`, then waits until the server knows
/// the last of them (and so all: the change feed is applied in order).
async fn add_users(fedgate: &Fedgate, users: &[(&str, &str)]) {
    let admin = fedgate.admin();
    for (upn, state) in users {
        admin.add_user(upn, state, Some(PASSWORD));
    }
    admin.add_user("sentinel@contoso.example", "disabled", Some(PASSWORD));
    SignIn::new(fedgate.plain, "sentinel@contoso.example", PASSWORD)
        .until(StatusCode::OK, std::time::Duration::from_millis(50))
        .await;
}

/// A cloud-only fedgate with `[lockout]` set to `lockout`, believing
/// `X-Forwarded-For` from loopback so tests can speak from many addresses.
fn cloud(lockout: &str) -> Fedgate {
    Fedgate::builder()
        .server("trusted_proxies = [\"127.0.0.1/32\"]")
        .section(&format!("[lockout]\n{lockout}\n"))
        .cloud_route("/whoami", "builtin:whoami", "")
        .start()
}

async fn from(fedgate: &Fedgate, ip: &str, user: &str, password: &str, agent: &str) -> Answer {
    get_with(
        fedgate.plain,
        "/whoami",
        &[
            ("authorization", basic(user, password)),
            ("x-forwarded-for", HeaderValue::from_str(ip).unwrap()),
            ("user-agent", HeaderValue::from_str(agent).unwrap()),
        ],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_spelling_of_a_name_spends_one_budget() {
    let slapd = Slapd::start();
    slapd.add_user("alice", "alice@example.com", ALICE_PW);
    slapd.add_user("bob", "bob@example.com", BOB_PW);
    let fedgate = with_directory(&slapd);
    // The service account binds once, on the first sign-in.
    signed_in(&SignIn::new(fedgate.plain, "bob", BOB_PW).send().await, "bob");
    let before = slapd.bind_count();

    let spellings = [
        "alice@example.com",
        "alice",
        "ALICE",
        "EXAMPLE\\alice",
        "X1\\alice",
        "X2\\alice",
        " alice ",
        "\u{FF41}lice",
        "a\u{FF4C}ice",
        "\u{1D41A}lice",
        "\u{AA}lice",
        "alice\u{FF20}example.com",
    ];
    let mut statuses = Vec::new();
    for (i, user) in spellings.iter().enumerate() {
        for j in 0..3 {
            let (status, _, _) = SignIn::new(fedgate.plain, user, &format!("guess {i}.{j}")).send().await;
            statuses.push(status);
        }
    }
    let binds = slapd.bind_count() - before;
    assert!(
        binds <= 3,
        "{binds} binds for one account with threshold 3: {statuses:?}"
    );
    assert_eq!(statuses[..3], [StatusCode::UNAUTHORIZED; 3]);
    assert!(
        statuses[3..].iter().all(|s| *s == StatusCode::TOO_MANY_REQUESTS),
        "{statuses:?}"
    );

    // The right password in yet another spelling is refused unchecked.
    let (status, _, _) = SignIn::new(fedgate.plain, "Q9\\alice", ALICE_PW).send().await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "Q9\\alice");
    for alike in ["\u{FF41}lice", "\u{1D41A}lice", "\u{AA}lice"] {
        let (status, _, _) = SignIn::new(fedgate.plain, alike, ALICE_PW).send().await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{alike:?}");
    }
    // A dotted capital I is no ASCII letter: refused outright, never asked.
    assert_unauthorized(
        &SignIn::new(fedgate.plain, "AL\u{130}CE", ALICE_PW).send().await,
        "ALİCE",
    );
    assert_eq!(
        slapd.bind_count() - before,
        binds,
        "a locked or refused name reached slapd"
    );
    // Bob was never part of it.
    signed_in(
        &SignIn::new(fedgate.plain, "bob@example.com", BOB_PW).send().await,
        "bob",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_right_password_refused_for_mfa_answers_like_a_wrong_one() {
    let fedgate = cloud("threshold = 3");
    let admin = fedgate.admin();
    add_users(
        &fedgate,
        &[
            ("right@contoso.example", "enforced"),
            ("wrong@contoso.example", "enforced"),
        ],
    )
    .await;
    let mut answers = Vec::new();
    for (user, third) in [("right@contoso.example", PASSWORD), ("wrong@contoso.example", "w3")] {
        let mut statuses = Vec::new();
        for (i, password) in ["w1", "w2", third, PASSWORD].into_iter().enumerate() {
            let agent = format!("mfa-{user}-{i}");
            statuses.push(from(&fedgate, "10.0.0.66", user, password, &agent).await.0);
        }
        answers.push(statuses);
    }
    assert_eq!(answers[0], answers[1], "w1 w2 RIGHT probe against w1 w2 wrong probe");
    assert_eq!(answers[1][3], StatusCode::TOO_MANY_REQUESTS);
    expect_reasons(
        &admin,
        &[
            ("mfa-right@contoso.example-2", "app_password_required"),
            ("mfa-right@contoso.example-3", "locked_out"),
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kelvin_sign_and_other_ks_are_the_same_cloud_user() {
    let fedgate = cloud("threshold = 3");
    fedgate
        .admin()
        .add_user("kate@contoso.example", "disabled", Some(PASSWORD));
    let kelvin = "\u{212A}ate@contoso.example";
    SignIn::new(fedgate.plain, kelvin, PASSWORD)
        .until(StatusCode::OK, std::time::Duration::from_millis(50))
        .await;
    // The Kelvin sign, a fullwidth and a mathematical k: one user.
    for (i, user) in [kelvin, "\u{FF4B}ate@contoso.example", "\u{1D424}ate@contoso.example"]
        .into_iter()
        .enumerate()
    {
        assert_unauthorized(
            &from(&fedgate, "10.0.0.66", user, &format!("w{i}"), "kelvin").await,
            user,
        );
    }
    let (status, _, _) = from(&fedgate, "10.0.0.66", "KATE@contoso.example", PASSWORD, "kate").await;
    assert_eq!(
        status,
        StatusCode::TOO_MANY_REQUESTS,
        "the Kelvin sign had a budget of its own"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_users_phone_keeps_signing_in_while_strangers_are_locked_out() {
    let fedgate = cloud("threshold = 3");
    let admin = fedgate.admin();
    admin.add_user("alice@contoso.example", "disabled", Some(PASSWORD));
    let phone = "192.0.2.7";
    // The phone signs in: its address is familiar from now on.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while from(&fedgate, phone, "alice@contoso.example", PASSWORD, "phone")
        .await
        .0
        != StatusCode::OK
    {
        assert!(std::time::Instant::now() < deadline, "alice never became known");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // Someone elsewhere guesses, spread over addresses: one shared budget.
    for (i, ip) in ["10.0.0.66", "10.0.0.67", "10.0.0.68"].iter().enumerate() {
        let answer = from(&fedgate, ip, "alice@contoso.example", &format!("w{i}"), "stranger").await;
        assert_unauthorized(&answer, ip);
    }
    for ip in ["10.0.0.66", "10.0.0.99"] {
        let (status, _, _) = from(&fedgate, ip, "alice@contoso.example", PASSWORD, "stranger-right").await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{ip}");
    }
    signed_in(
        &from(&fedgate, phone, "alice@contoso.example", PASSWORD, "phone-after").await,
        "the familiar phone",
    );
    expect_reasons(&admin, &[("stranger-right", "locked_out"), ("phone-after", "password")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_wrong_secret_repeated_counts_once() {
    let fedgate = cloud("threshold = 3");
    add_users(&fedgate, &[("alice@contoso.example", "disabled")]).await;
    // A phone still holding the old password, retrying.
    for _ in 0..8 {
        assert_unauthorized(
            &from(&fedgate, "10.0.0.66", "alice@contoso.example", "old password", "stale").await,
            "the old password again",
        );
    }
    signed_in(
        &from(&fedgate, "10.0.0.66", "alice@contoso.example", PASSWORD, "updated").await,
        "after the old password was retried",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_spraying_many_users_is_stopped() {
    let fedgate = cloud("threshold = 10\nsource_threshold = 5\nsource_window = \"10m\"");
    let admin = fedgate.admin();
    let users: Vec<String> = (0..7).map(|i| format!("user{i}@contoso.example")).collect();
    for user in &users {
        admin.add_user(user, "disabled", Some(PASSWORD));
    }
    SignIn::new(fedgate.plain, &users[6], PASSWORD)
        .until(StatusCode::OK, std::time::Duration::from_millis(50))
        .await;
    let sprayer = "203.0.113.9";
    let mut statuses = Vec::new();
    for user in &users[..6] {
        statuses.push(from(&fedgate, sprayer, user, "Summer2026!", "spray").await.0);
    }
    assert_eq!(statuses[..5], [StatusCode::UNAUTHORIZED; 5]);
    assert_eq!(statuses[5], StatusCode::TOO_MANY_REQUESTS, "{statuses:?}");
    // Even a right password from there, for an account it never signed in.
    let (status, _, _) = from(&fedgate, sprayer, &users[6], PASSWORD, "spray-right").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    // The accounts themselves are not locked for anyone else.
    signed_in(
        &from(&fedgate, "10.0.0.7", &users[0], PASSWORD, "elsewhere").await,
        "another address",
    );
}

/// A repeat of a wrong secret is refused unchecked. From the address that
/// sent it first it costs nothing (that client knows it repeated itself,
/// and a loop of it cannot fill the hashing pool); from any other address
/// it costs the argon2 a guess costs, so the answer does not tell a
/// stranger what someone else tried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeat_is_free_only_from_the_address_that_sent_it_first() {
    let fedgate = Fedgate::builder()
        .admin()
        .server("trusted_proxies = [\"127.0.0.1/32\"]")
        .section("[lockout]\nthreshold = 10\n")
        .cloud_route("/whoami", "builtin:whoami", "")
        .start();
    let metrics = fedgate.admin.expect("admin listener");
    let admin = fedgate.admin();
    admin.add_user("rita@contoso.example", "disabled", Some(PASSWORD));
    SignIn::new(fedgate.plain, "rita@contoso.example", PASSWORD)
        .until(StatusCode::OK, std::time::Duration::from_millis(50))
        .await;
    let argon2 = || super::refusal::argon2_total(metrics);
    let mut costs = Vec::new();
    for (ip, agent) in [
        ("192.0.2.1", "first"),
        ("192.0.2.1", "repeat-same"),
        ("192.0.2.1", "repeat-same-2"),
        ("198.51.100.7", "repeat-elsewhere"),
    ] {
        let before = argon2().await;
        let answer = from(&fedgate, ip, "rita@contoso.example", "Wrong horse 3", agent).await;
        assert_unauthorized(&answer, agent);
        costs.push((agent, argon2().await - before));
    }
    assert_eq!(
        costs,
        [
            ("first", 1),
            ("repeat-same", 0),
            ("repeat-same-2", 0),
            ("repeat-elsewhere", 1)
        ]
    );
    expect_reasons(
        &admin,
        &[
            ("first", "bad_credentials"),
            ("repeat-same", "bad_credentials"),
            ("repeat-elsewhere", "bad_credentials"),
        ],
    );
}
