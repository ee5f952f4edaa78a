//! The lockout while the in-memory view lags the store: a directory user's
//! first sign-in records them in the store, and the view learns of it at
//! its next refresh. A name the view does not know is counted under the
//! name, one it knows under the account; a sign-in in between must not
//! spend a budget of its own.
//!
//! The sign-in path runs in-process on a real SQLite store and a real
//! slapd with no refresh job at all, so the view learns of a user only
//! when a sign-in that missed it catches up: the window that a running
//! server keeps open for one poll stays open for as long as the test needs.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Instant;

use fedgate::audit::AuditSink;
use fedgate::auth::refusal::Refusal;
use fedgate::auth::{Authenticator, Client, Outcome};
use fedgate::config::Config;
use fedgate::directory::{Directory, LdapDirectory};
use fedgate::model::{Clock, Reason, Secret, SystemClock};
use fedgate::shutdown::Shutdown;
use fedgate::store::OpenMode;

use crate::support::client::basic;
use crate::support::slapd::Slapd;

const ALICE: &str = "alice@example.com";
const ALICE_PW: &str = "Alice's directory pw 1";

/// An authenticator on `slapd` with `threshold = 3` and no jobs started.
async fn without_refreshes(slapd: &Slapd, dir: &std::path::Path) -> (Authenticator, Config) {
    let text = format!(
        "[server]\nlisten_plain = [\"127.0.0.1:0\"]\n\
         [store]\nurl = \"sqlite://{0}/fedgate.db\"\nkey_file = \"{0}/fedgate.key\"\n\
         [auth]\nfailure_delay = \"0s\"\n\
         [directory]\n\
         urls = [\"{1}\"]\n\
         bind_dn = \"{2}\"\n\
         bind_password_file = \"{3}\"\n\
         base_dn = \"{4}\"\n\
         user_filter = \"(&(objectClass=inetOrgPerson)(mail={{upn}}))\"\n\
         login_filter = \"(&(objectClass=inetOrgPerson)(uid={{login}}))\"\n\
         pool_size = 1\n\
         cache_ttl = \"0s\"\n\
         [sync]\nenabled = false\n\
         [lockout]\nthreshold = 3\nsource_threshold = 0\n\
         [[route]]\nname = \"mail\"\npath = \"/mail\"\nupstream = \"builtin:whoami\"\nrealm = \"cloud\"\n",
        dir.display(),
        slapd.url(),
        slapd.service_dn(),
        slapd.service_password_file().display(),
        Slapd::PEOPLE_DN,
    );
    let config = Config::parse(&text, &dir.join("fedgate.toml")).unwrap();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let store = fedgate::store::open_with(
        &config.store.url,
        &config.store.access,
        Arc::clone(&clock),
        OpenMode::CreateIfMissing,
    )
    .await
    .unwrap();
    // The audit writer is never stopped: nothing here reads the records.
    let (audit, _writer) = AuditSink::start(store.clone(), Shutdown::new());
    let key = fedgate::server_key::load_or_create(&config.store.key_file).unwrap();
    let directory = config.directory.clone().unwrap();
    let ttl = directory.cache_ttl;
    let directory: Arc<dyn Directory> = Arc::new(LdapDirectory::new(directory).unwrap());
    let auth = Authenticator::new(store, key, audit, &config.auth, Some((directory, ttl)), clock)
        .await
        .unwrap();
    (auth, config)
}

fn client(from: Ipv4Addr) -> Client {
    Client {
        ip: IpAddr::V4(from),
        ip_is_proxy: false,
        started: Instant::now(),
    }
}

async fn sign_in(auth: &Authenticator, config: &Config, from: Ipv4Addr, password: &str) -> Outcome {
    let head = http::Request::builder()
        .uri("/mail")
        .header("authorization", basic(ALICE, password))
        .body(())
        .unwrap()
        .into_parts()
        .0;
    auth.authenticate(&config.routes[0], &head, client(from)).await
}

/// alice's first sign-in records her; the view does not have her yet. A
/// stranger's three wrong passwords then lock her account's counter for
/// strangers, though the first of them found her only by catching up (it
/// used to be counted under her name, a budget nobody consults once the
/// view has her, so a fourth guess went to the directory), and the fourth
/// is refused with 429 without a bind. Her own device, a familiar source,
/// keeps its own budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_the_view_has_not_caught_up_with_is_counted_as_the_account() {
    let slapd = Slapd::start();
    slapd.add_user("alice", ALICE, ALICE_PW);
    let dir = tempfile::tempdir().unwrap();
    let (auth, config) = without_refreshes(&slapd, dir.path()).await;
    let phone = Ipv4Addr::new(192, 0, 2, 10);
    let stranger = Ipv4Addr::new(198, 51, 100, 7);

    assert!(sign_in(&auth, &config, phone, ALICE_PW).await.is_ok());
    assert!(
        auth.user_by_upn(ALICE).is_none(),
        "the view has alice already: the test no longer opens the window it is about"
    );

    let binds_before = slapd.bind_count();
    for i in 0..3 {
        let refused = sign_in(&auth, &config, stranger, &format!("wrong password {i}"))
            .await
            .unwrap_err();
        assert_eq!(refused.reason, Reason::BadCredentials, "guess {i}");
    }
    assert!(auth.user_by_upn(ALICE).is_some(), "the guesses caught the view up");
    let refused = sign_in(&auth, &config, stranger, "wrong password 3").await.unwrap_err();
    assert_eq!(
        (refused.refusal, refused.reason),
        (Refusal::TooManyAttempts, Reason::LockedOut),
        "three wrong passwords for alice did not lock her account's counter"
    );
    assert!(refused.retry_after.is_some());
    assert_eq!(
        slapd.bind_count() - binds_before,
        3,
        "only the three counted guesses may reach the directory"
    );
    // Her phone signed her in: it is familiar, and has a counter of its own.
    assert!(sign_in(&auth, &config, phone, ALICE_PW).await.is_ok());
}

/// The portal's password step the same way: it used to look nobody up
/// again, so its guesses in the window were counted under the name until
/// the view's refresh, and under the account after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_portal_guess_before_the_view_has_the_user_is_counted_as_the_account() {
    let slapd = Slapd::start();
    slapd.add_user("alice", ALICE, ALICE_PW);
    let dir = tempfile::tempdir().unwrap();
    let (auth, config) = without_refreshes(&slapd, dir.path()).await;
    let stranger = Ipv4Addr::new(198, 51, 100, 7);
    let portal = |password: &str| {
        let password = Secret::from(password);
        let auth = &auth;
        async move { auth.portal_password(ALICE, &password, client(stranger), "test").await }
    };

    assert!(sign_in(&auth, &config, Ipv4Addr::new(192, 0, 2, 10), ALICE_PW)
        .await
        .is_ok());
    assert!(auth.user_by_upn(ALICE).is_none(), "the view has alice already");
    let refused = portal("wrong password 0").await.unwrap_err();
    assert_eq!(refused.reason, Reason::BadCredentials);
    // The view's refresh, as the job would run it a moment later.
    auth.refresh().await.unwrap();
    assert!(auth.user_by_upn(ALICE).is_some());
    for i in 1..3 {
        let refused = portal(&format!("wrong password {i}")).await.unwrap_err();
        assert_eq!(refused.reason, Reason::BadCredentials, "guess {i}");
    }
    let refused = portal("wrong password 3").await.unwrap_err();
    assert_eq!(
        (refused.refusal, refused.reason),
        (Refusal::TooManyAttempts, Reason::LockedOut),
        "three wrong portal passwords for alice did not lock her account's counter"
    );
}
