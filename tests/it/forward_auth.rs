//! The forward-auth endpoint behind the real front proxies: nginx
//! `auth_request` and Caddy `forward_auth` in front of an echo upstream,
//! with the configurations the README gives; and asked directly the way
//! Envoy's `ext_authz` and a misbehaving caller would. Every spoofing
//! attempt is tried: identity headers sent by the client, forwarded
//! headers from a caller fedgate does not trust, a caller without the
//! shared secret.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderValue, StatusCode};
use serde_json::Value;

use crate::support::caddy::Caddy;
use crate::support::client::{basic, get_with};
use crate::support::nginx::Nginx;
use crate::support::upstream::{echo, parse_echo};
use crate::support::Fedgate;

const ALICE: &str = "alice@contoso.example";
const BOB: &str = "bob@contoso.example";
const BOB_PW: &str = "correct horse battery staple";
const SECRET: &str = "f0rward-auth-caller-secret-0123456789abcdef";
const ENDPOINT: &str = "/_fedgate/auth";
/// Spoofed identities a client sends to the front proxy.
const ADMIN: &str = "admin@contoso.example";

fn h(value: &str) -> HeaderValue {
    HeaderValue::from_str(value).unwrap()
}

/// The caller secret file, 0600, in a directory the test keeps.
fn secret_file(dir: &Path) -> PathBuf {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join("forward-auth.secret");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .expect("secret file");
    std::io::Write::write_all(&mut file, format!("{SECRET}\n").as_bytes()).unwrap();
    path
}

/// fedgate with the endpoint (and a caller secret), a decide-only cloud
/// route `/mail`, a pass-through route `/public`, lockout after 3 failures
/// and `extra` config; alice with an app password, bob with a password.
struct Setup {
    fg: Fedgate,
    app_password: String,
    _secret_dir: tempfile::TempDir,
}

fn setup(server: &str, extra: &str) -> Setup {
    let secret_dir = tempfile::tempdir().unwrap();
    let secret = secret_file(secret_dir.path());
    let fg = Fedgate::builder()
        .server(server)
        .section(&format!(
            "[forward_auth]\npath = \"{ENDPOINT}\"\nsecret_file = \"{}\"\n\n[lockout]\nthreshold = 3\nduration = \"60s\"\n{extra}",
            secret.display()
        ))
        .section("[[route]]\nname = \"mail\"\npath = \"/mail\"\nrealm = \"cloud\"\n")
        .route("/public", "builtin:whoami", "name = \"public\"")
        .admin()
        .start();
    let admin = fg.admin();
    admin.allow_app_passwords(true);
    admin.add_user(ALICE, "enforced", None);
    admin.add_user(BOB, "disabled", Some(BOB_PW));
    let app_password = admin.create_app_password(ALICE, "phone");
    // The running server learns of the users within a change-feed poll.
    let asks = [
        ("authorization", basic(ALICE, &app_password)),
        ("x-original-uri", h("/mail")),
        ("x-fedgate-secret", h(SECRET)),
    ];
    let deadline = Instant::now() + Duration::from_secs(10);
    while get_with_blocking(fg.plain, ENDPOINT, &asks) != StatusCode::OK {
        assert!(Instant::now() < deadline, "the users never reached the server's view");
        std::thread::sleep(Duration::from_millis(50));
    }
    Setup {
        fg,
        app_password,
        _secret_dir: secret_dir,
    }
}

/// A request on a runtime of its own, for set-up outside the test's.
fn get_with_blocking(addr: SocketAddr, path: &str, headers: &[(&str, HeaderValue)]) -> StatusCode {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(get_with(addr, path, headers)).0
            })
            .join()
            .unwrap()
    })
}

/// The nginx server of the README: `auth_request` to fedgate, the
/// identity headers copied over the client's, 429 and 503 given to the
/// client with their `Retry-After`, the upstream `upstream`.
fn nginx_site(listen: SocketAddr, fedgate: SocketAddr, upstream: SocketAddr) -> String {
    format!(
        r#"
    upstream app {{ server {upstream}; keepalive 16; }}
    upstream fedgate {{ server {fedgate}; keepalive 16; }}
    server {{
        listen {listen};
        location / {{
            auth_request /_fedgate_auth;
            auth_request_set $fedgate_user $upstream_http_remote_user;
            auth_request_set $fedgate_groups $upstream_http_remote_groups;
            auth_request_set $fedgate_email $upstream_http_remote_email;
            auth_request_set $fedgate_name $upstream_http_remote_name;
            auth_request_set $fedgate_identity $upstream_http_x_remote_user;
            auth_request_set $fedgate_credential $upstream_http_x_fedgate_credential;
            auth_request_set $fedgate_status $upstream_status;
            auth_request_set $fedgate_retry_after $upstream_http_retry_after;
            error_page 500 = @fedgate_error;
            proxy_set_header Remote-User $fedgate_user;
            proxy_set_header Remote-Groups $fedgate_groups;
            proxy_set_header Remote-Email $fedgate_email;
            proxy_set_header Remote-Name $fedgate_name;
            proxy_set_header X-Remote-User $fedgate_identity;
            proxy_set_header X-Fedgate-Credential $fedgate_credential;
            proxy_set_header Authorization "";
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_pass http://app;
        }}
        location = /_fedgate_auth {{
            internal;
            proxy_pass http://fedgate{ENDPOINT};
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_set_header X-Original-URI $request_uri;
            proxy_set_header X-Original-Method $request_method;
            proxy_set_header X-Forwarded-Uri "";
            proxy_set_header X-Forwarded-Method "";
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $host;
            proxy_set_header X-Fedgate-Secret "{SECRET}";
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
        location @fedgate_error {{
            if ($fedgate_status = 429) {{
                add_header Retry-After $fedgate_retry_after always;
                return 429;
            }}
            if ($fedgate_status = 503) {{
                add_header Retry-After $fedgate_retry_after always;
                return 503;
            }}
            return 500;
        }}
    }}
"#
    )
}

/// What the echo upstream behind a front proxy received, or the refusal.
async fn through(front: SocketAddr, path: &str, headers: &[(&str, HeaderValue)]) -> (StatusCode, HeaderMap, Value) {
    let (status, headers, body) = get_with(front, path, headers).await;
    let seen = match status {
        StatusCode::OK => parse_echo(&body),
        _ => Value::Null,
    };
    (status, headers, seen)
}

fn header<'a>(echoed: &'a Value, name: &str) -> Vec<&'a str> {
    echoed["headers"][name]
        .as_array()
        .map(|a| a.iter().map(|v| v.as_str().unwrap()).collect())
        .unwrap_or_default()
}

/// The client's own copies of the identity headers, which must never
/// reach the upstream.
fn spoofed() -> Vec<(&'static str, HeaderValue)> {
    vec![
        ("remote-user", h(ADMIN)),
        ("x-remote-user", h(ADMIN)),
        ("remote-groups", h("Domain Admins")),
        ("x-fedgate-credential", h("password")),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_auth_request_passes_the_identity_and_never_the_clients_copy() {
    let s = setup("trusted_proxies = [\"127.0.0.1/32\"]", "");
    let app = echo().await;
    let nginx = Nginx::start(|listen| nginx_site(listen, s.fg.plain, app.addr));

    let mut asks = spoofed();
    asks.push(("authorization", basic(ALICE, &s.app_password)));
    asks.push(("user-agent", h("nginx-app-password")));
    let (status, _, seen) = through(nginx.addr, "/mail/inbox?folder=1", &asks).await;
    assert_eq!(status, StatusCode::OK, "{}", nginx.output());
    assert_eq!(seen["uri"], "/mail/inbox?folder=1");
    assert_eq!(header(&seen, "remote-user"), [ALICE], "{seen}");
    assert_eq!(header(&seen, "x-remote-user"), [ALICE], "{seen}");
    assert_eq!(header(&seen, "remote-groups"), Vec::<&str>::new(), "{seen}");
    assert_eq!(header(&seen, "x-fedgate-credential"), ["app_password"], "{seen}");
    assert!(
        header(&seen, "x-fedgate-secret").is_empty(),
        "the secret stays between nginx and fedgate"
    );
    assert!(header(&seen, "authorization").is_empty());

    // No credentials: the client is prompted (nginx passes the challenge).
    let (status, headers, _) = through(nginx.addr, "/mail/inbox", &spoofed()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let challenge = headers[http::header::WWW_AUTHENTICATE].to_str().unwrap();
    assert!(challenge.starts_with("Basic realm="), "{challenge}");
    // A client describing another request (a pass-through route) in the
    // convention nginx does not set: its copies are dropped by the
    // documented config, and fedgate would refuse the mix anyway.
    for (name, value) in [("x-forwarded-uri", "/public"), ("x-forwarded-method", "OPTIONS")] {
        let (status, _, _) = through(nginx.addr, "/mail/inbox", &[(name, h(value))]).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{name}");
    }
    let (status, _, _) = get_with(
        s.fg.plain,
        ENDPOINT,
        &[
            ("x-fedgate-secret", h(SECRET)),
            ("x-original-uri", h("/mail/inbox")),
            ("x-forwarded-uri", h("/public")),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "two descriptions are never decided");
    // A path no route decides is refused, not let through.
    let no_route = [("authorization", basic(ALICE, &s.app_password))];
    let (status, _, _) = through(nginx.addr, "/elsewhere", &no_route).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let line = s.fg.wait_log(Duration::from_secs(10), |v| v["reason"] == "no_route");
    assert_eq!(line["path"], "/elsewhere", "{line}");
    assert_eq!(line["upstream"], "forward_auth", "{line}");

    // Three wrong passwords lock bob out; nginx gives the client the 429
    // and its Retry-After instead of its own 500.
    for n in 0..3 {
        // Distinct: a repeated wrong secret counts once.
        let wrong = [("authorization", basic(BOB, &format!("wrong password {n}")))];
        let (status, _, _) = through(nginx.addr, "/mail", &wrong).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let right = [
        ("authorization", basic(BOB, BOB_PW)),
        ("user-agent", h("nginx-locked-out")),
    ];
    let (status, headers, _) = through(nginx.addr, "/mail", &right).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{}", nginx.output());
    let retry: u64 = headers[http::header::RETRY_AFTER].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");

    // The sign-in log records the endpoint's sign-ins as proxied ones are.
    let records = s.fg.admin().wait_signins("both sign-ins", |r| {
        ["nginx-app-password", "nginx-locked-out"]
            .iter()
            .all(|agent| r.iter().any(|x| x["user_agent"] == *agent))
    });
    let ok = records
        .iter()
        .find(|r| r["user_agent"] == "nginx-app-password")
        .unwrap();
    assert_eq!(ok["route"], "mail", "{ok}");
    assert_eq!(ok["reason"], "app_password", "{ok}");
    let locked = records.iter().find(|r| r["user_agent"] == "nginx-locked-out").unwrap();
    assert_eq!(locked["reason"], "locked_out", "{locked}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caddy_forward_auth_overwrites_the_clients_identity_headers() {
    let s = setup("trusted_proxies = [\"127.0.0.1/32\"]", "");
    let app = echo().await;
    let fedgate = s.fg.plain;
    let caddy = Caddy::start(|listen| {
        format!(
            r#"http://{listen} {{
    forward_auth {fedgate} {{
        uri {ENDPOINT}
        header_up X-Fedgate-Secret "{SECRET}"
        copy_headers Remote-User Remote-Groups Remote-Email Remote-Name X-Remote-User X-Fedgate-Credential
    }}
    request_header -Authorization
    reverse_proxy {upstream}
}}
"#,
            upstream = app.addr
        )
    });
    let mut asks = spoofed();
    asks.push(("authorization", basic(BOB, BOB_PW)));
    let (status, _, seen) = through(caddy.addr, "/mail/sync?cmd=ping", &asks).await;
    assert_eq!(status, StatusCode::OK, "{}", caddy.output());
    assert_eq!(seen["uri"], "/mail/sync?cmd=ping");
    assert_eq!(header(&seen, "remote-user"), [BOB], "{seen}");
    assert_eq!(header(&seen, "x-remote-user"), [BOB], "{seen}");
    assert_eq!(header(&seen, "x-fedgate-credential"), ["password"], "{seen}");
    // Sent empty by fedgate, so Caddy 2.6 replaces the client's copy
    // instead of passing it on.
    assert_eq!(header(&seen, "remote-groups"), [""], "{seen}");
    assert!(header(&seen, "x-fedgate-secret").is_empty());

    // A realm = "none" route: allowed, and still nobody's identity.
    let (status, _, seen) = through(caddy.addr, "/public", &spoofed()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(header(&seen, "remote-user"), [""], "{seen}");
    assert_eq!(header(&seen, "x-remote-user"), [""], "{seen}");

    // Refusals reach the client as fedgate gave them.
    let (status, headers, _) = through(caddy.addr, "/mail", &spoofed()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(headers[http::header::WWW_AUTHENTICATE]
        .to_str()
        .unwrap()
        .starts_with("Basic realm="));
    // Caddy's X-Forwarded-* are its own, not the client's: a client naming
    // another address or host gets nothing from it.
    let forged = [
        ("authorization", basic(ALICE, &s.app_password)),
        ("x-forwarded-for", h("203.0.113.66")),
        ("x-forwarded-uri", h("/public")),
        ("user-agent", h("caddy-forged")),
    ];
    let (status, _, seen) = through(caddy.addr, "/mail/x", &forged).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(header(&seen, "remote-user"), [ALICE], "decided for /mail, not /public");
    let records =
        s.fg.admin()
            .wait_signins("caddy-forged", |r| r.iter().any(|x| x["user_agent"] == "caddy-forged"));
    let forged = records.iter().find(|r| r["user_agent"] == "caddy-forged").unwrap();
    assert_eq!(forged["client_ip"], "127.0.0.1", "{forged}");
    assert_eq!(forged["route"], "mail", "{forged}");
}

/// Asks the endpoint directly, as a caller on 127.0.0.1.
async fn ask(fg: &Fedgate, path: &str, headers: &[(&str, HeaderValue)]) -> (StatusCode, HeaderMap) {
    let (status, headers, _) = get_with(fg.plain, path, headers).await;
    (status, headers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_without_the_secret_is_refused_with_403_and_logged() {
    let s = setup("", "");
    let creds = ("authorization", basic(ALICE, &s.app_password));
    for secret in [None, Some("wrong-secret-wrong-secret-wrong-secret"), Some(&SECRET[1..])] {
        let mut asks = vec![creds.clone(), ("x-original-uri", h("/mail"))];
        if let Some(secret) = secret {
            asks.push(("x-fedgate-secret", h(secret)));
        }
        let (status, headers) = ask(&s.fg, ENDPOINT, &asks).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{secret:?}");
        assert!(!headers.contains_key("www-authenticate"), "never a prompt");
        assert!(!headers.contains_key("remote-user"));
    }
    let warned =
        s.fg.wait_events("forward auth: refused a caller without the caller secret", 3);
    assert_eq!(warned[0]["caller"], "127.0.0.1", "{}", warned[0]);
    let logs = s.fg.raw_logs();
    assert!(!logs.contains("wrong-secret"), "a presented value is never logged");
    assert!(!logs.contains(SECRET), "nor the secret");
    let (_, _, metrics) = crate::support::client::get(s.fg.admin.unwrap(), "/metrics").await;
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(
        metrics.contains("fedgate_forward_auth_callers_refused_total 3"),
        "{metrics}"
    );
    // With the secret, the same call is decided.
    let asks = [creds, ("x-original-uri", h("/mail")), ("x-fedgate-secret", h(SECRET))];
    let (status, headers) = ask(&s.fg, ENDPOINT, &asks).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["remote-user"], ALICE);
    assert_eq!(headers["cache-control"], "no-store");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_addresses_count_only_from_trusted_callers_and_policies_apply() {
    let policy = "[[policy]]\nname = \"outside\"\nnetworks = [\"203.0.113.0/24\"]\naction = \"deny\"\n";
    let trusted = setup("trusted_proxies = [\"127.0.0.1/32\"]", policy);
    let untrusted = setup("", policy);
    let asks = |agent: &str| {
        vec![
            ("authorization", basic(BOB, BOB_PW)),
            ("x-fedgate-secret", h(SECRET)),
            ("x-forwarded-method", h("PROPFIND")),
            ("x-forwarded-uri", h("/mail/folder")),
            ("x-forwarded-for", h("203.0.113.9")),
            ("user-agent", h(agent)),
        ]
    };
    // From a trusted caller the forwarded address is the client's, and
    // the policy denies it.
    let (status, _) = ask(&trusted.fg, ENDPOINT, &asks("trusted")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // From any other caller it is only a header: the caller is the client.
    let (status, headers) = ask(&untrusted.fg, ENDPOINT, &asks("untrusted")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["remote-user"], BOB);
    let one = |fg: &Fedgate, agent: &str| {
        let records = fg
            .admin()
            .wait_signins(agent, |r| r.iter().any(|x| x["user_agent"] == agent));
        records.into_iter().find(|r| r["user_agent"] == agent).unwrap()
    };
    let denied = one(&trusted.fg, "trusted");
    assert_eq!(denied["client_ip"], "203.0.113.9", "{denied}");
    assert_eq!(denied["reason"], "policy_denied", "{denied}");
    assert_eq!(denied["policy"], "outside", "{denied}");
    let allowed = one(&untrusted.fg, "untrusted");
    assert_eq!(allowed["client_ip"], "127.0.0.1", "{allowed}");
    assert_eq!(allowed["route"], "mail", "{allowed}");
    let line = untrusted.fg.wait_log(Duration::from_secs(10), |v| {
        v["message"] == "request" && v["user"] == BOB
    });
    assert_eq!(line["method"], "PROPFIND", "{line}");
    assert_eq!(line["path"], "/mail/folder", "{line}");
    assert_eq!(line["route"], "mail", "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoys_prefix_form_and_descriptions_that_cannot_be_decided() {
    let s = setup("", "");
    let fg = &s.fg;
    let secret = ("x-fedgate-secret", h(SECRET));
    let alice = ("authorization", basic(ALICE, &s.app_password));
    // Envoy: the original path below the endpoint, its own method and Host.
    let (status, headers) = ask(
        fg,
        "/_fedgate/auth/MAIL/sync?Cmd=Ping",
        &[secret.clone(), alice.clone()],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-remote-user"], ALICE);
    for name in ["remote-email", "remote-name", "remote-groups"] {
        assert_eq!(headers[name], "", "{name} is sent even when unknown");
    }
    // The original path is canonicalised like a proxied one: what climbs
    // above the root or hides a separator is refused.
    for bad in ["/mail/../../etc", "/mail/%2e%2e/%2e%2e/x", "/mail%2Fx", "/mail\\x"] {
        let asks = [secret.clone(), alice.clone(), ("x-original-uri", h(bad))];
        let (status, _) = ask(fg, ENDPOINT, &asks).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
    }
    let (status, _) = ask(
        fg,
        "/_fedgate/auth/%2e%2e/%2e%2e/mail",
        &[secret.clone(), alice.clone()],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // Nothing names the original request.
    let (status, _) = ask(fg, ENDPOINT, &[secret.clone(), alice.clone()]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    fg.wait_log(Duration::from_secs(10), |v| {
        v["reason"] == "forward_auth_no_original_uri"
    });
    // A decide-only route is never proxied, nor handed to a broader route.
    let (status, _, _) = get_with(fg.plain, "/mail/inbox", &[alice]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // check-config says the endpoint is on and needs the secret.
    let out = fg.cli(&["check-config"]).success();
    assert!(
        out.contains("forward_auth  on at /_fedgate/auth") && out.contains("secret in x-fedgate-secret"),
        "{out}"
    );
    assert!(out.contains("none (decide only)"), "{out}");
}
