//! `/metrics` on the admin listener as an operator's alerts read it: every
//! series a dashboard needs is there on a fresh server, before any traffic,
//! and moves with what happens: a sign-in that succeeds and one that fails
//! on a named route, argon2 work, a lockout and the refusals it causes,
//! directory health and binds, sync passes against a real slapd.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http::StatusCode;

use crate::signin::SignIn;
use crate::support::client;
use crate::support::slapd::Slapd;
use crate::support::Fedgate;
use crate::sync::{directory_section, sync_section};

const ALICE: &str = "alice@example.com";
const ALICE_PW: &str = "Alice's directory pw 1";
const CAROL: &str = "carol@contoso.example";
const CAROL_PW: &str = "Carol's cloud pw 3";

/// One sample of the Prometheus text: `name{labels} value`.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let value = value.parse().ok()?;
            let (name, labels) = match series.split_once('{') {
                None => (series.to_owned(), Vec::new()),
                Some((name, rest)) => {
                    let labels = rest
                        .trim_end_matches('}')
                        .split("\",")
                        .filter_map(|pair| {
                            let (k, v) = pair.split_once("=\"")?;
                            Some((k.to_owned(), v.trim_end_matches('"').to_owned()))
                        })
                        .collect();
                    (name.to_owned(), labels)
                }
            };
            Some(Sample { name, labels, value })
        })
        .collect()
}

/// The value of the series `name` with (at least) `labels`, if listed.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .map(|s| s.value)
}

async fn scrape(admin: SocketAddr) -> Vec<Sample> {
    let (status, _, body) = client::get(admin, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    parse(&String::from_utf8_lossy(&body))
}

/// Scrapes until `ready` holds for the samples, for at most 15 s.
async fn until(admin: SocketAddr, what: &str, ready: impl Fn(&[Sample]) -> bool) -> Vec<Sample> {
    let start = Instant::now();
    loop {
        let samples = scrape(admin).await;
        if ready(&samples) {
            return samples;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "still not {what} after 15 s: {samples:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// fedgate with the admin listener, a named cloud route `mail` at /whoami,
/// slapd as its directory, `[sync]` with `interval`, and lockout after
/// three wrong secrets.
fn server(slapd: &Slapd, interval: &str) -> Fedgate {
    Fedgate::builder()
        .admin()
        .section(&directory_section(slapd, Slapd::PEOPLE_DN, "timeout = \"2s\""))
        .section(&sync_section(&format!("interval = \"{interval}\"")))
        .section("[lockout]\nthreshold = 3\nsource_threshold = 0\n")
        .cloud_route("/whoami", "builtin:whoami", "name = \"mail\"")
        .start()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_series_is_listed_on_a_fresh_server() {
    let slapd = Slapd::start();
    let fg = server(&slapd, "1h");
    let samples = scrape(fg.admin.unwrap()).await;
    let url = slapd.url();
    let want: &[(&str, &[(&str, &str)])] = &[
        ("fedgate_requests_total", &[("route", "mail"), ("status", "2xx")]),
        ("fedgate_requests_total", &[("route", "mail"), ("status", "5xx")]),
        ("fedgate_requests_total", &[("route", "none"), ("status", "4xx")]),
        ("fedgate_request_duration_seconds_count", &[("route", "mail")]),
        (
            "fedgate_signins_total",
            &[
                ("credential", "password"),
                ("result", "success"),
                ("reason", "password"),
            ],
        ),
        (
            "fedgate_signins_total",
            &[
                ("credential", "app_password"),
                ("result", "failure"),
                ("reason", "bad_credentials"),
            ],
        ),
        ("fedgate_credential_cache_total", &[("result", "hit")]),
        ("fedgate_credential_cache_total", &[("result", "miss")]),
        ("fedgate_argon2_queue", &[]),
        ("fedgate_argon2_wait_seconds_count", &[]),
        ("fedgate_argon2_seconds_count", &[]),
        ("fedgate_directory_up", &[("server", &url)]),
        ("fedgate_directory_bind_seconds_count", &[("server", &url)]),
        ("fedgate_directory_errors_total", &[("kind", "unavailable")]),
        ("fedgate_directory_errors_total", &[("kind", "timeout")]),
        ("fedgate_directory_operations_total", &[("op", "bind")]),
        ("fedgate_directory_operations_total", &[("op", "search")]),
        ("fedgate_directory_operations_total", &[("op", "abandon")]),
        ("fedgate_directory_operations_total", &[("op", "unbind")]),
        ("fedgate_directory_connections_total", &[]),
        ("fedgate_sync_passes_total", &[("kind", "full"), ("outcome", "failed")]),
        (
            "fedgate_sync_passes_total",
            &[("kind", "incremental"), ("outcome", "completed")],
        ),
        ("fedgate_sync_last_completed_timestamp_seconds", &[]),
        ("fedgate_sync_last_pass", &[("kind", "full"), ("count", "seen")]),
        (
            "fedgate_sync_last_pass",
            &[("kind", "incremental"), ("count", "errors")],
        ),
        (
            "fedgate_sync_last_pass_outcome",
            &[("kind", "full"), ("outcome", "guarded")],
        ),
        ("fedgate_sync_last_pass_duration_seconds", &[("kind", "incremental")]),
        ("fedgate_lockouts_total", &[("scope", "account")]),
        ("fedgate_lockouts_total", &[("scope", "source")]),
        ("fedgate_lockout_entries", &[("scope", "account")]),
        ("fedgate_lockout_refusals_total", &[]),
        ("fedgate_store_up", &[]),
        ("fedgate_audit_queued", &[]),
        ("fedgate_audit_dropped_total", &[]),
    ];
    let missing: Vec<String> = want
        .iter()
        .filter(|(name, labels)| value(&samples, name, labels).is_none())
        .map(|(name, labels)| format!("{name}{labels:?}"))
        .collect();
    assert!(
        missing.is_empty(),
        "missing on a fresh server: {missing:#?}\n{samples:#?}"
    );
    assert_eq!(
        value(
            &samples,
            "fedgate_requests_total",
            &[("route", "mail"), ("status", "2xx")]
        ),
        Some(0.0)
    );
    // Every series described, so an operator reading /metrics learns what
    // each one means.
    let (_, _, body) = client::get(fg.admin.unwrap(), "/metrics").await;
    let text = String::from_utf8_lossy(&body);
    for name in samples.iter().map(|s| {
        s.name
            .trim_end_matches("_count")
            .trim_end_matches("_sum")
            .trim_end_matches("_bucket")
    }) {
        assert!(text.contains(&format!("# HELP {name} ")), "{name} has no description");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn series_move_with_sign_ins_lockouts_and_sync_passes() {
    let slapd = Slapd::start();
    slapd.add_user("alice", ALICE, ALICE_PW);
    let fg = server(&slapd, "1s");
    let admin = fg.admin.unwrap();
    let url = slapd.url();

    // The leader's first pass, against slapd: alice seen and created.
    let samples = until(admin, "a completed full pass", |s| {
        value(
            s,
            "fedgate_sync_passes_total",
            &[("kind", "full"), ("outcome", "completed")],
        ) >= Some(1.0)
    })
    .await;
    assert!(
        value(
            &samples,
            "fedgate_sync_last_pass",
            &[("kind", "full"), ("count", "seen")]
        ) >= Some(1.0)
    );
    assert_eq!(
        value(
            &samples,
            "fedgate_sync_last_pass_outcome",
            &[("kind", "full"), ("outcome", "completed")]
        ),
        Some(1.0)
    );
    let completed = value(&samples, "fedgate_sync_last_completed_timestamp_seconds", &[]).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        (now - completed).abs() < 60.0,
        "last completed pass at {completed}, now {now}"
    );
    until(admin, "the directory probed up", |s| {
        value(s, "fedgate_directory_up", &[("server", &url)]) == Some(1.0)
    })
    .await;

    // A directory sign-in that succeeds and one that fails, on route `mail`.
    SignIn::new(fg.plain, ALICE, ALICE_PW)
        .until(StatusCode::OK, Duration::from_millis(50))
        .await;
    let (status, _, _) = SignIn::new(fg.plain, ALICE, "not alice's password").send().await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // A cloud user: argon2 work, then three wrong secrets lock the account
    // and the next attempt is refused as locked out.
    fg.admin().add_user(CAROL, "disabled", Some(CAROL_PW));
    SignIn::new(fg.plain, CAROL, CAROL_PW)
        .until(StatusCode::OK, Duration::from_millis(50))
        .await;
    for wrong in ["wrong one 1", "wrong two 2", "wrong three 3"] {
        let (status, _, _) = SignIn::new(fg.plain, CAROL, wrong).send().await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{wrong}");
    }
    let (status, _, _) = SignIn::new(fg.plain, CAROL, CAROL_PW).send().await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);

    let samples = until(admin, "the sign-ins counted", |s| {
        value(
            s,
            "fedgate_signins_total",
            &[
                ("credential", "password"),
                ("result", "failure"),
                ("reason", "locked_out"),
            ],
        ) >= Some(1.0)
    })
    .await;
    let at_least_one: &[(&str, &[(&str, &str)])] = &[
        ("fedgate_requests_total", &[("route", "mail"), ("status", "2xx")]),
        ("fedgate_requests_total", &[("route", "mail"), ("status", "4xx")]),
        ("fedgate_request_duration_seconds_count", &[("route", "mail")]),
        (
            "fedgate_signins_total",
            &[
                ("credential", "password"),
                ("result", "success"),
                ("reason", "password"),
            ],
        ),
        (
            "fedgate_signins_total",
            &[
                ("credential", "password"),
                ("result", "failure"),
                ("reason", "bad_credentials"),
            ],
        ),
        ("fedgate_argon2_seconds_count", &[]),
        ("fedgate_argon2_wait_seconds_count", &[]),
        ("fedgate_directory_bind_seconds_count", &[("server", &url)]),
        ("fedgate_directory_operations_total", &[("op", "search")]),
        ("fedgate_directory_connections_total", &[]),
        ("fedgate_lockouts_total", &[("scope", "account")]),
        ("fedgate_lockout_refusals_total", &[]),
        ("fedgate_lockout_entries", &[("scope", "account")]),
    ];
    let unmoved: Vec<String> = at_least_one
        .iter()
        .filter(|(name, labels)| value(&samples, name, labels).unwrap_or(0.0) < 1.0)
        .map(|(name, labels)| format!("{name}{labels:?} = {:?}", value(&samples, name, labels)))
        .collect();
    assert!(unmoved.is_empty(), "did not move: {unmoved:#?}");
    // No series carries a user name or a client address.
    let (_, _, body) = client::get(admin, "/metrics").await;
    let text = String::from_utf8_lossy(&body);
    for secret in [ALICE, CAROL, "127.0.0.1\""] {
        assert!(!text.contains(secret), "/metrics names {secret}");
    }
}

/// `fedgate_directory_operations_total` is what the directory sees: the
/// binds it counts match slapd's own count (`cn=Monitor`) exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_operations_count_what_the_directory_counts() {
    let slapd = Slapd::start();
    slapd.add_user("alice", ALICE, ALICE_PW);
    let fg = server(&slapd, "1h");
    let admin = fg.admin.unwrap();
    // After the first full pass, nothing else binds until the sign-ins.
    until(admin, "a completed full pass", |s| {
        value(
            s,
            "fedgate_sync_passes_total",
            &[("kind", "full"), ("outcome", "completed")],
        ) >= Some(1.0)
    })
    .await;
    let binds = |s: &[Sample]| value(s, "fedgate_directory_operations_total", &[("op", "bind")]).unwrap();
    let fedgate_before = binds(&scrape(admin).await);
    let slapd_before = slapd.bind_count();

    // A directory password (cold: verified by a bind) and two wrong ones
    // (each a bind of its own; none cached).
    SignIn::new(fg.plain, ALICE, ALICE_PW)
        .until(StatusCode::OK, Duration::from_millis(50))
        .await;
    for wrong in ["not alice 1", "not alice 2"] {
        let (status, _, _) = SignIn::new(fg.plain, ALICE, wrong).send().await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{wrong}");
    }
    let slapd_binds = slapd.bind_count() - slapd_before;
    let fedgate_binds = binds(&scrape(admin).await) - fedgate_before;
    assert!(slapd_binds >= 3, "slapd counted {slapd_binds} binds for three sign-ins");
    assert_eq!(
        fedgate_binds, slapd_binds as f64,
        "fedgate counted {fedgate_binds} binds, slapd {slapd_binds}"
    );
}
