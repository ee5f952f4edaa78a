//! See [`super`]: refusals and their timing. A name that is not a cloud
//! user is refused after the same work as a cloud user's wrong password
//! (one argon2); `failure_delay` pads a refusal to a fixed total from the
//! start of the sign-in; 503 and 429 are answered at once.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http::{header, HeaderValue, StatusCode};

use crate::directory::directory_section;
use crate::signin::{assert_unauthorized, expect_reasons, signed_in, SignIn};
use crate::support::client::{self, basic, get_with};
use crate::support::slapd::Slapd;
use crate::support::Fedgate;

const CLOUD_PW: &str = "Cloud pw 7";
const DIRECTORY_PW: &str = "Directory pw 7";
const WRONG: &str = "Wrong horse 9";
/// A second wrong password: the lockout counts a repeated one once.
const OTHER_WRONG: &str = "Wrong horse 10";

/// fedgate with `[directory]` on `slapd`, lockout off, a cloud route at
/// /whoami, `failure_delay` as given, and the admin endpoint (metrics).
fn fedgate(slapd: &Slapd, failure_delay: &str, lockout: &str) -> Fedgate {
    Fedgate::builder()
        .admin()
        .auth(&format!("failure_delay = \"{failure_delay}\""))
        .section(&directory_section(slapd, &[slapd.url()], "timeout = \"5s\""))
        .section(lockout)
        .cloud_route("/whoami", "builtin:whoami", "")
        .start()
}

const NO_LOCKOUT: &str = "[lockout]\nthreshold = 0\n";

/// `fedgate_argon2_total` summed over its labels, from /metrics.
pub(super) async fn argon2_total(admin: SocketAddr) -> u64 {
    let (status, _, body) = client::get(admin, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    String::from_utf8_lossy(&body)
        .lines()
        .filter(|l| l.starts_with("fedgate_argon2_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Every refusal of a secret costs exactly one argon2 verification, whether
/// the name is a cloud user (the real hash), unknown (a dummy) or a
/// directory user (the bind, then a dummy); a warm success costs none, and
/// neither does a 503 when the directory is down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refused_secret_costs_one_argon2() {
    let mut slapd = Slapd::start();
    slapd.add_user("dora", "dora@example.com", DIRECTORY_PW);
    let fg = fedgate(&slapd, "0s", NO_LOCKOUT);
    let metrics = fg.admin.unwrap();
    let admin = fg.admin();
    admin.add_user("carl@example.com", "disabled", Some(CLOUD_PW));
    admin.add_user("enid@example.com", "enforced", Some(CLOUD_PW));
    admin.add_user("olga@example.com", "disabled", Some(CLOUD_PW));
    SignIn::new(fg.plain, "carl@example.com", CLOUD_PW)
        .until(StatusCode::OK, Duration::from_millis(50))
        .await;
    signed_in(
        &SignIn::new(fg.plain, "dora@example.com", DIRECTORY_PW).send().await,
        "dora",
    );
    admin.run(&["user", "disable", "olga@example.com"]).success();
    SignIn::new(fg.plain, "olga@example.com", CLOUD_PW)
        .until(StatusCode::UNAUTHORIZED, Duration::from_millis(50))
        .await;
    let app_shaped = "kqvh-wrtm-zpcd-nlxe";

    for (case, user, password, agent, reason) in [
        (
            "unknown name",
            "nobody@example.com",
            WRONG,
            "t-unknown",
            "bad_credentials",
        ),
        (
            "unknown login",
            "EXAMPLE\\nobody",
            WRONG,
            "t-unknown-login",
            "bad_credentials",
        ),
        (
            "cloud user, wrong password",
            "carl@example.com",
            WRONG,
            "t-cloud",
            "bad_credentials",
        ),
        (
            "directory user, wrong password",
            "dora@example.com",
            WRONG,
            "t-dir",
            "bad_credentials",
        ),
        (
            "directory login, wrong password",
            "dora",
            WRONG,
            "t-dir-login",
            "bad_credentials",
        ),
        (
            "disabled user",
            "olga@example.com",
            CLOUD_PW,
            "t-disabled",
            "account_disabled",
        ),
        (
            "app-password shape, wrong check letters",
            "carl@example.com",
            app_shaped,
            "t-app",
            "app_password_mistyped",
        ),
        (
            "enforced, right password",
            "enid@example.com",
            CLOUD_PW,
            "t-enforced",
            "app_password_required",
        ),
        // The right password is cached now: the refusal still costs one.
        (
            "enforced, right password again",
            "enid@example.com",
            CLOUD_PW,
            "t-enforced-warm",
            "app_password_required",
        ),
    ] {
        let before = argon2_total(metrics).await;
        let answer = SignIn::new(fg.plain, user, password).agent(agent).send().await;
        assert_unauthorized(&answer, case);
        assert_eq!(argon2_total(metrics).await - before, 1, "{case}: argon2 runs");
        expect_reasons(&admin, &[(agent, reason)]);
    }

    let before = argon2_total(metrics).await;
    for (user, password) in [("carl@example.com", CLOUD_PW), ("dora@example.com", DIRECTORY_PW)] {
        signed_in(&SignIn::new(fg.plain, user, password).send().await, user);
    }
    assert_eq!(argon2_total(metrics).await - before, 0, "warm sign-ins hash nothing");

    slapd.stop();
    let before = argon2_total(metrics).await;
    let (status, _, _) = SignIn::new(fg.plain, "nobody@example.com", WRONG).send().await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(argon2_total(metrics).await - before, 0, "a 503 hashes nothing");
}

/// `failure_delay` holds back only the refusals that answer a guess; 503
/// and 429 go at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_and_locked_out_are_answered_at_once() {
    const DELAY: Duration = Duration::from_millis(1500);
    let mut slapd = Slapd::start();
    slapd.add_user("dora", "dora@example.com", DIRECTORY_PW);
    let fg = fedgate(&slapd, "1500ms", "[lockout]\nthreshold = 2\nduration = \"60s\"\n");
    let admin = fg.admin();
    admin.add_user("carl@example.com", "disabled", Some(CLOUD_PW));
    SignIn::new(fg.plain, "carl@example.com", CLOUD_PW)
        .until(StatusCode::OK, Duration::from_millis(50))
        .await;
    let timed = |user: &'static str, password: &'static str, agent: &'static str| {
        let addr = fg.plain;
        async move {
            let start = Instant::now();
            let answer = SignIn::new(addr, user, password).agent(agent).send().await;
            (answer, start.elapsed())
        }
    };

    // Two different wrong passwords: a repeat of one counts once.
    for (agent, wrong) in [("a-wrong-1", WRONG), ("a-wrong-2", OTHER_WRONG)] {
        let (answer, took) = timed("carl@example.com", wrong, agent).await;
        assert_unauthorized(&answer, agent);
        assert!(took >= DELAY, "{agent}: a wrong password answered after {took:?}");
    }
    let (answer, took) = timed("carl@example.com", CLOUD_PW, "a-locked").await;
    assert_eq!(answer.0, StatusCode::TOO_MANY_REQUESTS);
    // The wait left on the lockout, which began when the second wrong
    // password was counted (before its delayed answer).
    let left: u64 = answer.1[header::RETRY_AFTER].to_str().unwrap().parse().unwrap();
    assert!((55..=60).contains(&left), "Retry-After {left}");
    assert_eq!(answer.1[header::CACHE_CONTROL], "no-store");
    assert!(took < Duration::from_millis(700), "429 answered after {took:?}");

    slapd.stop();
    let (answer, took) = timed("dora@example.com", DIRECTORY_PW, "a-down").await;
    assert_eq!(answer.0, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer.1[header::RETRY_AFTER], "5");
    assert!(!answer.1.contains_key(header::WWW_AUTHENTICATE));
    assert!(took < Duration::from_millis(700), "503 answered after {took:?}");
    expect_reasons(
        &admin,
        &[
            ("a-wrong-2", "bad_credentials"),
            ("a-locked", "locked_out"),
            ("a-down", "directory_unavailable"),
        ],
    );
}

/// The delay is a fixed total from the start of the sign-in, not a sleep
/// added after the work: a directory that takes 900 ms to refuse a
/// password does not make the answer come 900 ms later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_delay_pads_to_a_fixed_total() {
    const DELAY: Duration = Duration::from_millis(1500);
    let slapd = Slapd::start();
    slapd.add_user("dora", "dora@example.com", DIRECTORY_PW);
    let fg = fedgate(&slapd, "1500ms", NO_LOCKOUT);
    // Opens the service connection, so that the slow part below is the
    // directory's answer and nothing else.
    let addr = fg.plain;
    signed_in(
        &SignIn::new(addr, "dora@example.com", DIRECTORY_PW).send().await,
        "dora",
    );

    slapd.pause();
    let start = Instant::now();
    let refused = tokio::spawn(async move {
        let answer = get_with(addr, "/whoami", &[("authorization", basic("dora@example.com", WRONG))]).await;
        (answer, start.elapsed())
    });
    // The directory answers after 900 ms of the 1500 ms.
    tokio::time::sleep(Duration::from_millis(900)).await;
    slapd.resume();
    let (answer, took) = refused.await.unwrap();
    assert_unauthorized(&answer, "slow directory");
    assert!(took >= DELAY, "answered after {took:?}");
    assert!(
        took < Duration::from_millis(2200),
        "answered after {took:?}: the delay was added to the directory's 900 ms"
    );
}

/// One sign-in form post to the portal at `addr`, as a browser would send
/// it after loading the sign-in page: every cookie the page set, and its
/// form token unless `token` is false.
async fn portal_sign_in(addr: SocketAddr, upn: &str, password: &str, token: bool) -> crate::signin::Answer {
    let (status, headers, page) = client::get(addr, "/portal/sign-in").await;
    assert_eq!(status, StatusCode::OK);
    let cookies: Vec<&str> = headers
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok()?.split(';').next())
        .collect();
    let page = String::from_utf8_lossy(&page);
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a form token on the sign-in page");
    let mut form = form_urlencoded::Serializer::new(String::new());
    form.append_pair("upn", upn)
        .append_pair("password", password)
        .append_pair("return", "");
    if token {
        form.append_pair("csrf", csrf);
    }
    let req = http::Request::post("/portal/sign-in")
        .header(header::HOST, "localhost")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(header::COOKIE, cookies.join("; "))
        .body(client::full(form.finish()))
        .unwrap();
    let resp = client::Client::plain(addr, client::Proto::H1)
        .await
        .send(req)
        .await
        .expect("request");
    let (parts, body) = resp.into_parts();
    let body = http_body_util::BodyExt::collect(body).await.expect("body").to_bytes();
    (parts.status, parts.headers, body)
}

/// The portal's refusals are the same values as the Basic ones, turned
/// into responses in the same place: a wrong password 401 (without a Basic
/// challenge, which would open the browser's own dialog), a locked-out
/// name 429 with `Retry-After`, a form without its token 403; each a page,
/// never cached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn portal_refusals_are_mapped_like_basic_ones() {
    let keys = tempfile::tempdir().expect("temp dir");
    let fg = Fedgate::builder()
        .section(&format!(
            "[portal]\nenabled = true\npath = \"/portal\"\nissuer = \"Contoso\"\nsecret_key_file = \"{}\"\n",
            keys.path().join("portal.key").display()
        ))
        .section("[lockout]\nthreshold = 2\nduration = \"60s\"\n")
        .cloud_route("/whoami", "builtin:whoami", "")
        .start();
    fg.admin().add_user("carl@example.com", "disabled", Some(CLOUD_PW));
    SignIn::new(fg.plain, "carl@example.com", CLOUD_PW)
        .until(StatusCode::OK, Duration::from_millis(50))
        .await;
    let page = |answer: &crate::signin::Answer, want: StatusCode, case: &str| {
        let (status, headers, body) = answer;
        assert_eq!(*status, want, "{case}: {}", String::from_utf8_lossy(body));
        assert!(!headers.contains_key(header::WWW_AUTHENTICATE), "{case}");
        assert_eq!(headers[header::CACHE_CONTROL], "no-store", "{case}");
        assert!(
            headers[header::CONTENT_TYPE].to_str().unwrap().starts_with("text/html"),
            "{case}"
        );
        String::from_utf8_lossy(body).into_owned()
    };

    let refused = portal_sign_in(fg.plain, "carl@example.com", CLOUD_PW, false).await;
    page(&refused, StatusCode::FORBIDDEN, "no form token");
    for (case, wrong) in [("wrong 1", WRONG), ("wrong 2", OTHER_WRONG)] {
        let refused = portal_sign_in(fg.plain, "carl@example.com", wrong, true).await;
        page(&refused, StatusCode::UNAUTHORIZED, case);
    }
    let refused = portal_sign_in(fg.plain, "carl@example.com", CLOUD_PW, true).await;
    let text = page(&refused, StatusCode::TOO_MANY_REQUESTS, "locked out");
    assert_eq!(refused.1[header::RETRY_AFTER], "60");
    assert!(text.contains("Too many sign-in attempts: wait 60 seconds"), "{text}");
}

/// Not run by default: prints the mean time to refuse 200 unknown names,
/// 200 wrong passwords of cloud users and 200 wrong passwords of directory
/// users (`failure_delay = "0s"`, lockout off), interleaved so that any
/// drift of the machine touches the three alike. `bench/timing.sh` runs it
/// on a release build.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check: bench/timing.sh runs it on a release build"]
async fn timing_figures() {
    const ROUNDS: usize = 200;
    const CLOUD_USERS: usize = 20;
    const WARM_UP: usize = 10;
    let slapd = Slapd::start();
    let uids = slapd.add_generated_users("dir", ROUNDS, DIRECTORY_PW);
    let fg = fedgate(&slapd, "0s", NO_LOCKOUT);
    let admin = fg.admin();
    let cloud: Vec<String> = (0..CLOUD_USERS).map(|n| format!("cloud{n}@example.com")).collect();
    for upn in &cloud {
        admin.add_user(upn, "disabled", Some(CLOUD_PW));
    }
    SignIn::new(fg.plain, &cloud[CLOUD_USERS - 1], CLOUD_PW)
        .until(StatusCode::OK, Duration::from_millis(50))
        .await;

    let refuse = |user: String| {
        let addr = fg.plain;
        async move {
            let start = Instant::now();
            let (status, _, _) = get_with(
                addr,
                "/whoami",
                &[
                    ("authorization", basic(&user, WRONG)),
                    ("user-agent", HeaderValue::from_static("timing")),
                ],
            )
            .await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{user}");
            start.elapsed()
        }
    };
    let mut took: [Vec<Duration>; 3] = Default::default();
    for n in 0..WARM_UP + ROUNDS {
        let names = [
            format!("nobody{n}@example.com"),
            cloud[n % CLOUD_USERS].clone(),
            format!("{}@example.com", uids[n % ROUNDS]),
        ];
        for (group, name) in names.into_iter().enumerate() {
            let t = refuse(name).await;
            if n >= WARM_UP {
                took[group].push(t);
            }
        }
    }
    let mean = |d: &[Duration]| d.iter().map(Duration::as_secs_f64).sum::<f64>() * 1000.0 / d.len() as f64;
    let median = |d: &[Duration]| {
        let mut d = d.to_vec();
        d.sort();
        d[d.len() / 2].as_secs_f64() * 1000.0
    };
    for (what, f) in [("means", &mean as &dyn Fn(&[Duration]) -> f64), ("medians", &median)] {
        let [unknown, cloud, directory] = [f(&took[0]), f(&took[1]), f(&took[2])];
        println!(
            "refusal {what} over {ROUNDS} each (ms): unknown name {unknown:.2}, cloud user {cloud:.2}, directory user {directory:.2}"
        );
        println!(
            "differences of the {what} (ms): cloud - unknown {:.2}, cloud - directory {:.2}, directory - unknown {:.2}",
            cloud - unknown,
            cloud - directory,
            directory - unknown
        );
    }
}
