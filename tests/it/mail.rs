//! The nginx mail `auth_http` endpoint with real servers: nginx's mail
//! proxy in front of Dovecot (IMAP, POP3) and Postfix (SMTP submission
//! with XCLIENT, delivering to Dovecot over LMTP), Python's imaplib,
//! poplib and smtplib as the mail clients. An enforced user reads and
//! sends mail with an app password, not with the organizational one; a
//! deleted app password stops at once; wrong passwords lock the account
//! out without the backend ever being asked. And the endpoint on its own:
//! callers without the shared secret, `Client-IP` from a caller that is
//! not a trusted proxy, methods and protocols it cannot check.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::admin::Admin;
use crate::support::mail::{client, Dovecot, NginxMail, Postfix};
use crate::support::Fedgate;

const ALICE: &str = "alice@corp.example.com";
/// How Alice types her name: the backend sees the canonical UPN.
const ALICE_TYPED: &str = "Alice@Corp.Example.COM";
const ALICE_PASSWORD: &str = "Organizational-Pass-7";
const BACKEND_SECRET: &str = "dovecot-backend-secret-0123456789";
const CALLER_SECRET: &str = "nginx-caller-secret-0123456789abcdef";
const PATH: &str = "/_fedgate/mail";
/// Mail routes are named in policies by their protocol.
const POLICY: &str = "[[policy]]\nname = \"no-smtp-from-test-net-3\"\nroutes = [\"smtp\"]\n\
                      networks = [\"203.0.113.0/24\"]\naction = \"deny\"\n";
const DENIED_NET_CLIENT: &str = "203.0.113.5";

fn private_file(path: &Path, text: &str) {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .expect("secret file");
    std::io::Write::write_all(&mut f, format!("{text}\n").as_bytes()).expect("write secret");
}

/// fedgate with the mail endpoint: IMAP and POP3 handed to `dovecot` with
/// the backend secret, SMTP to `smtp` (no password: XCLIENT says who).
/// `lockout` is `[lockout] threshold`.
fn fedgate(
    imap: Option<SocketAddr>,
    pop3: Option<SocketAddr>,
    smtp: Option<SocketAddr>,
    trusted: &str,
    lockout: u32,
) -> Fedgate {
    Fedgate::start_with(|dir| {
        private_file(&dir.join("caller.secret"), CALLER_SECRET);
        private_file(&dir.join("backend.password"), BACKEND_SECRET);
        let mut mail = format!(
            "[mail_auth]\npath = \"{PATH}\"\nsecret_file = \"{}\"\nrewrite_user = true\nmax_attempts = 3\nwait = \"1s\"\n",
            dir.join("caller.secret").display()
        );
        for (protocol, addr, password) in [("imap", imap, true), ("pop3", pop3, true), ("smtp", smtp, false)] {
            let Some(addr) = addr else { continue };
            mail.push_str(&format!(
                "[[mail_backend]]\nprotocol = \"{protocol}\"\naddress = \"{addr}\"\n"
            ));
            if password {
                mail.push_str(&format!(
                    "password_file = \"{}\"\n",
                    dir.join("backend.password").display()
                ));
            }
        }
        Fedgate::builder()
            .server(&format!("trusted_proxies = [{trusted}]"))
            .section(&format!("[lockout]\nthreshold = {lockout}\nduration = \"60s\"\n"))
            .section(&mail)
            .section(POLICY)
            .cloud_route("/whoami", "builtin:whoami", "")
            .config_text(dir)
    })
}

fn enforced_alice(admin: &Admin) -> String {
    admin.allow_app_passwords(true);
    admin.add_user(ALICE, "enforced", Some(ALICE_PASSWORD));
    admin.create_app_password(ALICE, "phone")
}

fn imap(nginx: &NginxMail, user: &str, password: &str) -> Value {
    client(&["imap", "127.0.0.1", &nginx.imap.port().to_string(), user, password])
}

fn pop3(nginx: &NginxMail, user: &str, password: &str) -> Value {
    client(&["pop3", "127.0.0.1", &nginx.pop3.port().to_string(), user, password])
}

fn smtp(nginx: &NginxMail, user: &str, password: &str, subject: &str) -> Value {
    client(&[
        "smtp",
        "127.0.0.1",
        &nginx.smtp.port().to_string(),
        user,
        password,
        ALICE,
        subject,
    ])
}

fn refused_with(result: &Value, text: &str, case: &str) {
    assert_eq!(result["ok"], false, "{case}: {result}");
    let error = result["error"].as_str().unwrap_or_default();
    assert!(error.contains(text), "{case}: expected {text:?} in {result}");
}

fn mail_records(admin: &Admin, n: usize) -> Vec<Value> {
    admin.wait_signins("the mail sign-ins", |records| {
        records
            .iter()
            .filter(|r| r["user_agent"].as_str().is_some_and(|a| a.starts_with("nginx-mail/")))
            .count()
            >= n
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enforced_user_reads_and_sends_mail_through_nginx_with_an_app_password_only() {
    let dovecot = Dovecot::start(BACKEND_SECRET);
    let postfix = Postfix::start("corp.example.com", dovecot.lmtp, dovecot.auth);
    let fg = fedgate(
        Some(dovecot.imap),
        Some(dovecot.pop3),
        Some(postfix.smtp),
        "\"127.0.0.1/32\"",
        10,
    );
    let admin = fg.admin();
    let app_password = enforced_alice(&admin);
    let nginx = NginxMail::start(&format!("{}{PATH}", fg.plain), CALLER_SECRET);

    // Sent through nginx and Postfix, delivered by LMTP, read over IMAP.
    let sent = smtp(&nginx, ALICE_TYPED, &app_password, "through the proxy");
    assert_eq!(sent["ok"], true, "{sent}\npostfix:\n{}", postfix.log());
    let deadline = Instant::now() + Duration::from_secs(20);
    let read = loop {
        let read = imap(&nginx, ALICE_TYPED, &app_password);
        assert_eq!(read["ok"], true, "{read}\nnginx:\n{}", nginx.error_log());
        if read["subjects"].as_array().is_some_and(|s| !s.is_empty()) || Instant::now() > deadline {
            break read;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        read["subjects"],
        serde_json::json!(["through the proxy"]),
        "{}",
        postfix.log()
    );
    let popped = pop3(&nginx, ALICE_TYPED, &app_password);
    assert_eq!(popped["ok"], true, "{popped}");
    assert_eq!(popped["count"], 1, "{popped}");
    // The backend was told the canonical name, and relayed for it only
    // because XCLIENT said who signed in.
    let logins = dovecot.logins();
    assert!(
        !logins.is_empty() && logins.iter().all(|l| l.contains(&format!("user=<{ALICE}>"))),
        "{logins:?}"
    );
    assert!(
        postfix.log().contains(&format!("sasl_username={ALICE}")),
        "{}",
        postfix.log()
    );

    // The organizational password is verified, then refused: enforced.
    let before = dovecot.login_service_lines().len();
    refused_with(
        &imap(&nginx, ALICE_TYPED, ALICE_PASSWORD),
        "[AUTHENTICATIONFAILED]",
        "imap, org password",
    );
    refused_with(
        &pop3(&nginx, ALICE_TYPED, ALICE_PASSWORD),
        "[AUTH]",
        "pop3, org password",
    );
    let org = smtp(&nginx, ALICE_TYPED, ALICE_PASSWORD, "never sent");
    assert_eq!(org["code"], 535, "{org}");
    assert!(org["error"].as_str().unwrap().starts_with("5.7.8 "), "{org}");
    let never_asked = |before: usize, case: &str| {
        assert_eq!(
            dovecot.login_service_lines().len(),
            before,
            "{case}: a refused sign-in reached Dovecot:\n{}",
            dovecot.log()
        );
    };
    never_asked(before, "org password");

    // Deleted: refused as soon as the running server knows (under a
    // second), never handed to the backend.
    admin.run(&["app-password", "delete", ALICE, "phone"]).success();
    // Timed by when the refused probe began: each goes through a new
    // Python process, nginx and fedgate, which a loaded machine slows.
    let deleted = Instant::now();
    loop {
        let began = deleted.elapsed();
        let before = dovecot.login_service_lines().len();
        let r = imap(&nginx, ALICE_TYPED, &app_password);
        if r["ok"] == false {
            refused_with(&r, "[AUTHENTICATIONFAILED]", "deleted app password");
            never_asked(before, "deleted app password");
            eprintln!(
                "mail: a sign-in begun {} ms after the delete was refused",
                began.as_millis()
            );
            break;
        }
        assert!(
            began < Duration::from_secs(1),
            "a sign-in begun {began:?} after the delete still went through"
        );
    }

    // The sign-in log: the protocol as the route, the client nginx saw.
    let records = mail_records(&admin, 7);
    let mail: Vec<&Value> = records
        .iter()
        .filter(|r| r["user_agent"].as_str().is_some_and(|a| a.starts_with("nginx-mail/")))
        .collect();
    for (route, reason) in [
        ("smtp", "app_password"),
        ("imap", "app_password"),
        ("pop3", "app_password"),
        ("imap", "app_password_required"),
        ("pop3", "app_password_required"),
        ("smtp", "app_password_required"),
        ("imap", "bad_credentials"),
    ] {
        let found = mail.iter().find(|r| r["route"] == route && r["reason"] == reason);
        let r = found.unwrap_or_else(|| panic!("no {route} {reason} record in {mail:#?}"));
        assert_eq!(r["user_agent"], format!("nginx-mail/{route}"), "{r}");
        assert_eq!(r["client_ip"], "127.0.0.1", "{r}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_passwords_lock_the_account_out_without_the_backend_being_asked() {
    let dovecot = Dovecot::start(BACKEND_SECRET);
    let fg = fedgate(Some(dovecot.imap), Some(dovecot.pop3), None, "\"127.0.0.1/32\"", 3);
    let admin = fg.admin();
    let app_password = enforced_alice(&admin);
    let nginx = NginxMail::start(&format!("{}{PATH}", fg.plain), CALLER_SECRET);

    // One connection: nginx waits Auth-Wait and lets the client try again,
    // until the last attempt, after which it closes the connection.
    let tries = client(&[
        "imap",
        "127.0.0.1",
        &nginx.imap.port().to_string(),
        ALICE_TYPED,
        "wrong",
        "--tries",
        "5",
    ]);
    assert_eq!(tries["ok"], false, "{tries}");
    assert_eq!(tries["closed"], true, "nginx closes after max_attempts: {tries}");
    assert_eq!(tries["tries"], 4, "three refusals, then closed: {tries}");

    // Locked out (threshold 3): even the right app password is refused,
    // with a text that does not ask for another password, and the
    // connection is closed.
    let locked = imap(&nginx, ALICE_TYPED, &app_password);
    refused_with(&locked, "[UNAVAILABLE] Too many failed sign-ins", "locked out, imap");
    assert_eq!(locked["closed"], true, "{locked}");
    refused_with(
        &pop3(&nginx, ALICE_TYPED, &app_password),
        "[SYS/TEMP]",
        "locked out, pop3",
    );
    // SMTP has no backend here: refused as not offered.
    let smtp = smtp(&nginx, ALICE_TYPED, &app_password, "never sent");
    assert_eq!(smtp["ok"], false, "{smtp}");
    assert_eq!(smtp["code"], 554, "{smtp}\n{}", nginx.error_log());

    // An nginx without the caller secret is refused by fedgate (403);
    // nginx takes that for a server error and closes the connection.
    let stranger = NginxMail::start(&format!("{}{PATH}", fg.plain), "nginx-caller-secret-0123456789abcdeX");
    let refused = client(&[
        "imap",
        "127.0.0.1",
        &stranger.imap.port().to_string(),
        ALICE,
        &app_password,
    ]);
    assert_eq!(
        (&refused["ok"], &refused["closed"]),
        (&false.into(), &true.into()),
        "{refused}"
    );
    fg.wait_events(
        "mail auth_http call without the mail_auth.secret_file secret: refused",
        1,
    );

    assert_eq!(dovecot.login_service_lines(), Vec::<String>::new(), "Dovecot was asked");
    let records = mail_records(&admin, 5);
    let reasons: Vec<&str> = records.iter().filter_map(|r| r["reason"].as_str()).collect();
    assert_eq!(
        reasons.iter().filter(|r| **r == "bad_credentials").count(),
        3,
        "{reasons:?}"
    );
    assert!(reasons.contains(&"locked_out"), "{reasons:?}");
    assert!(
        fg.raw_logs()
            .contains("mail sign-in for a protocol without a [[mail_backend]]"),
        "the refused protocol is logged"
    );
}

/// One `auth_http` request as nginx sends it (HTTP/1.0, headers only),
/// from the loopback address `from`; returns the status and headers.
async fn ask(fg: &Fedgate, from: &str, headers: &[(&str, &str)]) -> (u16, Vec<(String, String)>) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(from.parse::<IpAddr>().unwrap(), 0))
        .unwrap();
    let mut stream = socket.connect(fg.plain).await.expect("connect");
    let mut req = format!("GET {PATH} HTTP/1.0\r\nHost: localhost\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    let mut lines = answer.split("\r\n");
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers = lines
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_owned()))
        .collect();
    (status, headers)
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

fn nginx_headers<'a>(user: &'a str, pass: &'a str, protocol: &'a str, client_ip: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("Auth-Method", "plain"),
        ("Auth-User", user),
        ("Auth-Pass", pass),
        ("Auth-Protocol", protocol),
        ("Auth-Login-Attempt", "1"),
        ("Client-IP", client_ip),
        ("X-Fedgate-Secret", CALLER_SECRET),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_endpoint_refuses_callers_without_the_secret_and_believes_client_ip_from_trusted_proxies_only() {
    // Nothing listens at the backend: these sign-ins are only answered.
    let backend: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let fg = fedgate(Some(backend), None, Some(backend), "\"127.0.0.2/32\"", 10);
    let admin = fg.admin();
    let app_password = enforced_alice(&admin);

    // No secret, a wrong one, two copies: 403, nothing decided or logged.
    let good = nginx_headers(ALICE, &app_password, "imap", "198.51.100.7");
    let without: Vec<_> = good.iter().copied().filter(|(k, _)| *k != "X-Fedgate-Secret").collect();
    let mut wrong = without.clone();
    wrong.push(("X-Fedgate-Secret", "nginx-caller-secret-0123456789abcdeX"));
    let mut twice = good.clone();
    twice.push(("X-Fedgate-Secret", CALLER_SECRET));
    for (case, headers) in [("none", &without), ("wrong", &wrong), ("twice", &twice)] {
        let (status, h) = ask(&fg, "127.0.0.2", headers).await;
        assert_eq!(status, 403, "{case}: {h:?}");
        assert_eq!(header(&h, "auth-status"), None, "{case}");
    }
    let warned = fg.wait_events(
        "mail auth_http call without the mail_auth.secret_file secret: refused",
        3,
    );
    assert_eq!(warned.len(), 3, "{warned:?}");
    assert!(!fg.raw_logs().contains("0123456789abcde"), "a secret reached the log");

    // From the trusted proxy: allowed, Client-IP believed, the user's
    // name rewritten to the canonical UPN, the backend's secret as the
    // password.
    let typed = nginx_headers("Alice%40Corp.Example.COM", &app_password, "imap", "198.51.100.7");
    let (status, h) = ask(&fg, "127.0.0.2", &typed).await;
    assert_eq!(status, 200);
    assert_eq!(header(&h, "auth-status"), Some("OK"), "{h:?}");
    assert_eq!(header(&h, "auth-server"), Some("127.0.0.1"));
    assert_eq!(header(&h, "auth-port"), Some("9"));
    assert_eq!(header(&h, "auth-user"), Some(ALICE));
    assert_eq!(header(&h, "auth-pass"), Some(BACKEND_SECRET));

    // From anyone else the claimed address is not believed: the sign-in is
    // logged (and counted) for the caller's own.
    let spoofed = nginx_headers(ALICE, "wrong-password", "smtp", "198.51.100.66");
    let (status, h) = ask(&fg, "127.0.0.1", &spoofed).await;
    assert_eq!(status, 200);
    assert_eq!(header(&h, "auth-status"), Some("Invalid login or password"), "{h:?}");
    assert_eq!(header(&h, "auth-wait"), Some("1"));
    assert_eq!(header(&h, "auth-error-code"), Some("535 5.7.8"));

    // Methods nothing can be checked with, a protocol without a backend,
    // a name that does not decode.
    for (method, protocol, status, code) in [
        (
            "cram-md5",
            "smtp",
            "Authentication method not supported",
            Some("504 5.5.4"),
        ),
        ("none", "smtp", "Authentication required", Some("530 5.7.0")),
        ("plain", "pop3", "[SYS/PERM] This service is not offered here", None),
    ] {
        let mut headers = nginx_headers(ALICE, &app_password, protocol, "198.51.100.7");
        headers[0] = ("Auth-Method", method);
        let (_, h) = ask(&fg, "127.0.0.2", &headers).await;
        assert_eq!(header(&h, "auth-status"), Some(status), "{method} {protocol}: {h:?}");
        assert_eq!(header(&h, "auth-wait"), None, "{method} {protocol}: closed, no retry");
        assert_eq!(header(&h, "auth-error-code"), code, "{method} {protocol}");
    }
    let (_, h) = ask(&fg, "127.0.0.2", &nginx_headers("alice%4", "x", "imap", "198.51.100.8")).await;
    assert_eq!(
        header(&h, "auth-status"),
        Some("[AUTHENTICATIONFAILED] Invalid login or password")
    );

    // An app password scoped to IMAP is refused for SMTP.
    let scoped = admin
        .run(&[
            "--json",
            "app-password",
            "create",
            ALICE,
            "--name",
            "imap-only",
            "--scope",
            "imap",
        ])
        .json()["password"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, h) = ask(&fg, "127.0.0.2", &nginx_headers(ALICE, &scoped, "imap", "198.51.100.7")).await;
    assert_eq!(header(&h, "auth-status"), Some("OK"), "scoped, on imap: {h:?}");
    let (_, h) = ask(&fg, "127.0.0.2", &nginx_headers(ALICE, &scoped, "smtp", "198.51.100.7")).await;
    assert_eq!(
        header(&h, "auth-error-code"),
        Some("535 5.7.8"),
        "scoped, on smtp: {h:?}"
    );

    // A policy naming smtp denies it from its network, IMAP not.
    let (_, h) = ask(
        &fg,
        "127.0.0.2",
        &nginx_headers(ALICE, &app_password, "smtp", DENIED_NET_CLIENT),
    )
    .await;
    assert_eq!(
        header(&h, "auth-error-code"),
        Some("535 5.7.8"),
        "smtp from a denied network: {h:?}"
    );
    let (_, h) = ask(
        &fg,
        "127.0.0.2",
        &nginx_headers(ALICE, &app_password, "imap", DENIED_NET_CLIENT),
    )
    .await;
    assert_eq!(header(&h, "auth-status"), Some("OK"), "imap from that network: {h:?}");

    // check-config shows the endpoint and reads its secret files.
    let shown = fg.cli(&["check-config"]).success();
    for line in [
        format!("mail_auth  {PATH} (nginx auth_http); callers must send"),
        "mail_auth  imap -> 127.0.0.1:9 (realm cloud, backend password from password_file)".to_owned(),
        "mail_auth  pop3 refused (no [[mail_backend]])".to_owned(),
        "mail_auth  smtp -> 127.0.0.1:9 (realm cloud, user's own password passed on)".to_owned(),
    ] {
        assert!(shown.contains(&line), "{line:?} not in:\n{shown}");
    }
    let secret = fg.dir.path().join("caller.secret");
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let open = fg.cli(&["check-config"]);
    assert_eq!(open.code, 2, "{open:?}");
    assert!(open.stderr.contains("mail_auth.secret_file "), "{open:?}");

    let records = mail_records(&admin, 7);
    for (route, reason) in [("smtp", "app_password_out_of_scope"), ("smtp", "policy_denied")] {
        assert!(
            records.iter().any(|r| r["route"] == route && r["reason"] == reason),
            "no {route} {reason} in {records:#?}"
        );
    }
    let denied = records.iter().find(|r| r["reason"] == "policy_denied").unwrap();
    assert_eq!(denied["policy"], "no-smtp-from-test-net-3", "{denied}");
    assert_eq!(denied["client_ip"], DENIED_NET_CLIENT, "{denied}");
    let ip_of = |reason: &str| {
        let r = records.iter().find(|r| r["reason"] == reason);
        r.unwrap_or_else(|| panic!("no {reason} in {records:#?}"))["client_ip"].clone()
    };
    assert!(
        records
            .iter()
            .any(|r| r["reason"] == "app_password" && r["client_ip"] == "198.51.100.7"),
        "Client-IP from the trusted proxy: {records:#?}"
    );
    assert_eq!(
        ip_of("bad_credentials"),
        "127.0.0.1",
        "Client-IP from an untrusted caller"
    );
    assert_eq!(ip_of("malformed"), "198.51.100.8");
}
