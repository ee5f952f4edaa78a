//! App passwords with limits: a scope of named routes, networks matched on
//! the client address a trusted proxy forwarded, narrowing while the server
//! runs, the refusal reasons in the sign-in log; and expiry, decided by a
//! clock the test moves (the sign-in path in-process on a real store).

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderValue, StatusCode};

use fedgate::audit::AuditSink;
use fedgate::auth::{Authenticator, Client};
use fedgate::config::Config;
use fedgate::manage::{credential_routes, Actor, LimitsRequest, Manager, NarrowRequest};
use fedgate::model::{Clock, ManualClock, MfaState, Reason, Upn};
use fedgate::shutdown::Shutdown;
use fedgate::store::OpenMode;

use crate::signin::{assert_unauthorized, expect_reasons, signed_in, SignIn};
use crate::support::client::{basic, get_with};
use crate::support::Fedgate;

const ALICE: &str = "alice@contoso.example";
const POLL: Duration = Duration::from_millis(50);

fn create(fg: &Fedgate, name: &str, limits: &[&str]) -> String {
    let mut args = vec!["--json", "app-password", "create", ALICE, "--name", name];
    args.extend_from_slice(limits);
    let created = fg.admin().run(&args).json();
    created["password"]
        .as_str()
        .unwrap_or_else(|| panic!("no password in {created}"))
        .to_owned()
}

/// Two routes by name, as `--scope` names them.
fn two_routes() -> crate::support::fedgate::Builder {
    Fedgate::builder()
        .cloud_route("/mail", "builtin:whoami", "name = \"mail\"")
        .cloud_route("/dav", "builtin:whoami", "name = \"dav\"")
        .auth("failure_delay = \"0s\"")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scoped_app_password_signs_in_on_its_routes_only() {
    let fg = two_routes().start();
    let admin = fg.admin();
    admin.allow_app_passwords(true);
    admin.add_user(ALICE, "enforced", None);
    let mail_only = create(&fg, "phone", &["--scope", "mail"]);
    let anywhere = create(&fg, "laptop", &[]);

    let on = |path, password, agent| SignIn::new(fg.plain, ALICE, password).path(path).agent(agent);
    signed_in(
        &on("/mail", &mail_only, "scoped-on-mail").send().await,
        "scoped, on its route",
    );
    assert_unauthorized(
        &on("/dav", &mail_only, "scoped-on-dav").send().await,
        "scoped, elsewhere",
    );
    // Warm now on /mail: the cached verification is no pass to /dav.
    signed_in(&on("/mail", &mail_only, "scoped-on-mail").send().await, "scoped, warm");
    assert_unauthorized(
        &on("/dav", &mail_only, "scoped-on-dav").send().await,
        "scoped, warm, elsewhere",
    );
    // An app password without limits works as it always did.
    signed_in(&on("/mail", &anywhere, "unscoped-on-mail").send().await, "unscoped");
    signed_in(&on("/dav", &anywhere, "unscoped-on-dav").send().await, "unscoped");
    expect_reasons(
        &admin,
        &[
            ("scoped-on-mail", "app_password"),
            ("scoped-on-dav", "app_password_out_of_scope"),
            ("unscoped-on-mail", "app_password"),
            ("unscoped-on-dav", "app_password"),
        ],
    );
    let records = admin.signins();
    let refused = records.iter().find(|r| r["user_agent"] == "scoped-on-dav").unwrap();
    // Refused as the app password it is, named, on the route it tried.
    assert_eq!(refused["credential"], "app_password", "{refused}");
    assert_eq!(refused["app_password_name"], "phone", "{refused}");
    assert_eq!(refused["route"], "dav", "{refused}");

    // A right secret out of scope is not a guess: many of them lock nobody out.
    for _ in 0..12 {
        assert_unauthorized(&on("/dav", &mail_only, "scoped-on-dav").send().await, "again");
    }
    signed_in(
        &on("/mail", &mail_only, "scoped-on-mail").send().await,
        "after many refusals",
    );

    // The listing shows the limits.
    let list = admin.run(&["--json", "app-password", "list", ALICE]).json();
    let phone = list.as_array().unwrap().iter().find(|a| a["name"] == "phone").unwrap();
    assert_eq!(phone["limits"]["scope"], serde_json::json!(["mail"]), "{phone}");
    let table = admin.run(&["app-password", "list", ALICE]).success();
    assert!(table.contains("limits: scope mail"), "{table}");
    assert_eq!(table.matches("limits:").count(), 1, "only the limited one: {table}");
    // A scope naming no route is refused, naming the routes there are.
    let out = admin.run(&["app-password", "create", ALICE, "--name", "typo", "--scope", "mial"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr.contains("--scope") && out.stderr.contains("\"mial\"") && out.stderr.contains("mail, dav"),
        "{out:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn networks_are_matched_on_the_address_a_trusted_proxy_forwarded() {
    let fg = two_routes().server("trusted_proxies = [\"127.0.0.1/32\"]").start();
    let admin = fg.admin();
    admin.allow_app_passwords(true);
    admin.add_user(ALICE, "enforced", None);
    let corporate = create(&fg, "desktop", &["--from", "203.0.113.0/24", "2001:db8::/32"]);

    let from = |forwarded: Option<&'static str>, agent: &'static str| {
        let mut headers = vec![
            ("authorization", basic(ALICE, &corporate)),
            ("user-agent", HeaderValue::from_static(agent)),
        ];
        if let Some(ip) = forwarded {
            headers.push(("x-forwarded-for", HeaderValue::from_static(ip)));
        }
        async move { get_with(fg.plain, "/mail", &headers).await }
    };
    signed_in(&from(Some("203.0.113.9"), "inside").await, "from inside the network");
    assert_unauthorized(&from(Some("198.51.100.7"), "outside").await, "from outside");
    // The proxy forwarded no client: where it is is not known, so no.
    assert_unauthorized(&from(None, "unknown").await, "no client address");
    // A forged entry before the proxy's own does not help.
    signed_in(
        &from(Some("198.51.100.7, 203.0.113.9"), "forged-then-inside").await,
        "the proxy's entry counts",
    );
    assert_unauthorized(
        &from(Some("203.0.113.9, 198.51.100.7"), "forged-inside").await,
        "a forged inside address",
    );
    expect_reasons(
        &admin,
        &[
            ("inside", "app_password"),
            ("outside", "app_password_network"),
            ("unknown", "app_password_network"),
            ("forged-then-inside", "app_password"),
            ("forged-inside", "app_password_network"),
        ],
    );
    let records = admin.signins();
    let outside = records.iter().find(|r| r["user_agent"] == "outside").unwrap();
    assert_eq!(outside["client_ip"], "198.51.100.7", "{outside}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn narrowing_reaches_a_running_server_and_widening_is_refused() {
    let fg = two_routes().start();
    let admin = fg.admin();
    admin.allow_app_passwords(true);
    admin.add_user(ALICE, "enforced", None);
    let password = create(&fg, "tablet", &[]);
    let dav = SignIn::new(fg.plain, ALICE, &password)
        .path("/dav")
        .agent("narrowed-on-dav");
    // Warm: the next sign-in on /dav is answered from the cache.
    signed_in(&dav.send().await, "before narrowing");
    signed_in(&dav.send().await, "before narrowing, warm");

    let out = admin
        .run(&["--json", "app-password", "narrow", ALICE, "TABLET", "--scope", "mail"])
        .json();
    assert_eq!(out["limits"]["scope"], serde_json::json!(["mail"]), "{out}");
    let took = dav.until(StatusCode::UNAUTHORIZED, POLL).await;
    assert!(
        took < Duration::from_secs(1),
        "narrowing took {took:?} to reach the server"
    );
    let mail = SignIn::new(fg.plain, ALICE, &password)
        .path("/mail")
        .agent("narrowed-on-mail");
    signed_in(&mail.send().await, "on the route left");
    expect_reasons(
        &admin,
        &[
            ("narrowed-on-dav", "app_password_out_of_scope"),
            ("narrowed-on-mail", "app_password"),
        ],
    );

    // Back to every route would widen it: refused, nothing changed.
    let out = admin.run(&["app-password", "narrow", ALICE, "tablet", "--scope", "mail", "dav"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("limits can only be narrowed"), "{out:?}");
    assert_unauthorized(&dav.send().await, "still narrowed");
}

/// The sign-in path in-process, on a real SQLite store, with a clock the
/// test moves: 90 days pass without anybody waiting for them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_password_expires_when_the_clock_says_so_warm_or_not() {
    const DAY_MS: i64 = 24 * 3600 * 1000;
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[server]\nlisten_plain = [\"127.0.0.1:0\"]\n\
         [store]\nurl = \"sqlite://{0}/fedgate.db\"\nkey_file = \"{0}/fedgate.key\"\n\
         [auth]\nfailure_delay = \"0s\"\n\
         [[route]]\nname = \"mail\"\npath = \"/mail\"\nupstream = \"builtin:whoami\"\nrealm = \"cloud\"\n",
        dir.path().display()
    );
    let config_path = dir.path().join("fedgate.toml");
    let config = Config::parse(&text, &config_path).unwrap();
    let clock = Arc::new(ManualClock::new(1_700_000_000_000));
    let dyn_clock: Arc<dyn Clock> = clock.clone();
    let store = fedgate::store::open_with(
        &config.store.url,
        &config.store.access,
        Arc::clone(&dyn_clock),
        OpenMode::CreateIfMissing,
    )
    .await
    .unwrap();
    let manager = Manager::new(
        Arc::clone(&store),
        config.store.key_file.clone(),
        Arc::clone(&dyn_clock),
    )
    .with_routes(credential_routes(&config));
    let actor = Actor {
        name: "cli".into(),
        client: None,
        client_cert_verified: false,
    };
    store
        .create_cloud_user(&Upn::parse(ALICE).unwrap(), MfaState::Enforced, None)
        .await
        .unwrap();
    store.set_allow_app_passwords(true).await.unwrap();
    let limits = LimitsRequest {
        expires: Some("90d".into()),
        ..LimitsRequest::default()
    };
    let (created, shown) = manager
        .create_app_password(&actor, ALICE, "phone", &limits)
        .await
        .unwrap();
    assert_eq!(
        created.app_password.limits.expires_at,
        Some(clock.now_ms() + 90 * DAY_MS)
    );

    let stop = Shutdown::new();
    let (audit, writer) = AuditSink::start(store.clone(), stop.clone());
    let key = fedgate::server_key::load_or_create(&config.store.key_file).unwrap();
    let auth = Authenticator::new(
        Arc::clone(&store),
        key,
        audit,
        &config.auth,
        None,
        Arc::clone(&dyn_clock),
    )
    .await
    .unwrap();
    let route = &config.routes[0];
    let sign_in = || {
        let head = http::Request::builder()
            .uri("/mail")
            .header("authorization", basic(ALICE, shown.expose()))
            .body(())
            .unwrap()
            .into_parts()
            .0;
        let client = Client {
            ip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10)),
            ip_is_proxy: false,
            started: Instant::now(),
        };
        let auth = &auth;
        async move { auth.authenticate(route, &head, client).await }
    };
    assert!(sign_in().await.is_ok(), "a day before its expiry");
    clock.advance(90 * DAY_MS - 1);
    // Warm by now: the cache keeps the verification, not the verdict.
    assert!(sign_in().await.is_ok(), "a millisecond before its expiry");
    clock.advance(1);
    let refused = sign_in().await.unwrap_err();
    assert_eq!(refused.reason, Reason::AppPasswordExpired);
    // Still refused once cold, and after a restart of the view.
    auth.refresh().await.unwrap();
    assert_eq!(sign_in().await.unwrap_err().reason, Reason::AppPasswordExpired);

    // Narrowing an expiry is allowed; dropping it is widening.
    let err = manager
        .narrow_app_password(
            &actor,
            ALICE,
            "phone",
            &NarrowRequest {
                expires: Some("3650d".into()),
                ..NarrowRequest::default()
            },
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("limits can only be narrowed"), "{err}");

    // The audit writer writes what it holds when it stops.
    stop.trigger();
    writer.await.unwrap();
    let records = store
        .query_audit(&fedgate::store::AuditFilter::default())
        .await
        .unwrap();
    let count = |reason: Reason| -> u32 { records.iter().filter(|r| r.reason == reason).map(|r| r.count).sum() };
    assert_eq!(count(Reason::AppPassword), 2, "{records:?}");
    assert_eq!(count(Reason::AppPasswordExpired), 2, "{records:?}");
}
