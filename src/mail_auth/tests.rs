use super::*;
use http::HeaderValue;
use http::StatusCode;

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            http::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    h
}

fn nginx(user: &str, pass: &str) -> Vec<(&'static str, String)> {
    vec![
        ("Auth-Method", "plain".into()),
        ("Auth-User", user.into()),
        ("Auth-Pass", pass.into()),
        ("Auth-Protocol", "imap".into()),
        ("Auth-Login-Attempt", "2".into()),
        ("Client-IP", "192.0.2.7".into()),
    ]
}

fn read(pairs: &[(&'static str, String)]) -> MailRequest {
    let pairs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    read_request(&headers(&pairs))
}

#[test]
fn reads_what_nginx_sends_and_decodes_escapes_once() {
    let r = read(&nginx("alice%40corp.example.com", "a%20b%25%2541"));
    assert_eq!(r.protocol, Some(MailProtocol::Imap));
    assert_eq!(r.method, Method::Plain);
    assert_eq!(r.attempt, 2);
    assert_eq!(r.client_ip, Some("192.0.2.7".parse().unwrap()));
    match r.presented {
        Presented::Basic { user, secret } => {
            assert_eq!(user, "alice@corp.example.com");
            // `%2541` is `%41` once decoded, never `A`.
            assert_eq!(secret.expose(), "a b%%41");
        }
        other => panic!("{other:?}"),
    }
    let r = read(&nginx("b%C3%B6b", "p%C3%A4ss"));
    assert!(matches!(r.presented, Presented::Basic { ref user, .. } if user == "böb"));
}

#[test]
fn bad_escapes_nul_and_missing_or_doubled_fields_are_malformed() {
    for (user, pass) in [
        ("alice", "bad%4"),
        ("alice", "bad%zz"),
        ("alice", "bad%+f"),
        ("alice", "nul%00here"),
        ("al%0Aice", "secret"),
        ("alice", "%FF%FE"),
        ("", "secret"),
    ] {
        let r = read(&nginx(user, pass));
        assert_eq!(r.presented, Presented::Malformed, "{user:?} {pass:?}");
    }
    let mut pairs = nginx("alice", "secret");
    pairs.push(("Auth-User", "mallory".into()));
    assert_eq!(read(&pairs).presented, Presented::Malformed, "two Auth-User");
    let pairs: Vec<_> = nginx("alice", "secret")
        .into_iter()
        .filter(|(k, _)| *k != "Auth-Pass")
        .collect();
    assert_eq!(read(&pairs).presented, Presented::Malformed, "no Auth-Pass");
}

#[test]
fn methods_protocols_and_attempts() {
    let with = |key: &'static str, value: &str| {
        let mut pairs: Vec<_> = nginx("alice", "secret")
            .into_iter()
            .filter(|(k, _)| *k != key)
            .collect();
        pairs.push((key, value.to_owned()));
        read(&pairs)
    };
    assert_eq!(with("Auth-Method", "login").method, Method::Plain);
    assert_eq!(with("Auth-Method", "none").method, Method::None);
    for m in ["apop", "cram-md5", "external", ""] {
        assert_eq!(with("Auth-Method", m).method, Method::Unsupported, "{m}");
    }
    assert_eq!(with("Auth-Protocol", "pop3").protocol, Some(MailProtocol::Pop3));
    assert_eq!(with("Auth-Protocol", "smtp").protocol, Some(MailProtocol::Smtp));
    assert_eq!(with("Auth-Protocol", "IMAP4").protocol, None);
    assert_eq!(
        with("Auth-Login-Attempt", "x").attempt,
        u32::MAX,
        "unreadable counts as the last"
    );
    assert_eq!(with("Auth-Login-Attempt", "0").attempt, u32::MAX);
    assert_eq!(with("Client-IP", "not-an-ip").client_ip, None);
    assert_eq!(
        with("Client-IP", "::ffff:192.0.2.9").client_ip,
        Some("192.0.2.9".parse().unwrap())
    );
}

fn caller(ip: &str) -> ClientInfo {
    ClientInfo {
        ip: ip.parse().unwrap(),
        peer_trusted: false,
        ip_is_proxy: false,
        proto: "http",
        host: None,
        authority: None,
    }
}

#[test]
fn client_ip_is_believed_only_from_a_trusted_caller() {
    let trusted: Vec<IpNet> = vec!["127.0.0.0/8".parse().unwrap()];
    let claimed = Some("198.51.100.4".parse().unwrap());
    assert_eq!(
        signing_in_from(&caller("127.0.0.1"), claimed, &trusted),
        ("198.51.100.4".parse().unwrap(), false)
    );
    assert_eq!(
        signing_in_from(&caller("127.0.0.1"), None, &trusted),
        ("127.0.0.1".parse().unwrap(), true),
        "a trusted proxy that says nobody stands for everyone"
    );
    assert_eq!(
        signing_in_from(&caller("203.0.113.5"), claimed, &trusted),
        ("203.0.113.5".parse().unwrap(), false),
        "anyone else is who the connection says"
    );
    assert_eq!(
        signing_in_from(&caller("127.0.0.1"), claimed, &[]).0,
        "127.0.0.1".parse::<IpAddr>().unwrap()
    );
}

fn refused(answer: Answer) -> (&'static str, Option<u64>, Option<&'static str>) {
    match answer {
        Answer::Refused {
            status,
            wait,
            error_code,
        } => (status, wait, error_code),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_wrong_password_may_be_retried_until_the_last_attempt() {
    use MailProtocol::*;
    let wrong = MailRefusal::SignIn(Refusal::Unauthorized);
    assert_eq!(
        refused(answer(wrong, Some(Imap), 1, 3, 2)),
        ("[AUTHENTICATIONFAILED] Invalid login or password", Some(2), None)
    );
    assert_eq!(
        refused(answer(wrong, Some(Pop3), 2, 3, 2)).0,
        "[AUTH] Invalid login or password"
    );
    assert_eq!(
        refused(answer(wrong, Some(Smtp), 2, 3, 5)),
        ("Invalid login or password", Some(5), Some("535 5.7.8"))
    );
    // At max_attempts nginx is told nothing to wait for: it closes.
    assert_eq!(refused(answer(wrong, Some(Imap), 3, 3, 2)).1, None);
    assert_eq!(refused(answer(wrong, Some(Imap), u32::MAX, 3, 2)).1, None);
}

#[test]
fn lockouts_and_server_problems_close_without_asking_for_another_password() {
    use MailProtocol::*;
    let locked = MailRefusal::SignIn(Refusal::TooManyAttempts);
    let down = MailRefusal::SignIn(Refusal::Unavailable);
    assert_eq!(
        refused(answer(locked, Some(Smtp), 1, 3, 2)),
        ("Too many failed sign-ins, try again later", None, Some("454 4.7.0"))
    );
    assert!(refused(answer(locked, Some(Imap), 1, 3, 2))
        .0
        .starts_with("[UNAVAILABLE] "));
    assert_eq!(
        refused(answer(down, Some(Smtp), 1, 3, 2)),
        ("Temporary server problem, try again later", None, Some("451 4.3.0"))
    );
    assert!(refused(answer(down, Some(Imap), 1, 3, 2))
        .0
        .starts_with("[UNAVAILABLE] "));
    assert!(refused(answer(down, Some(Pop3), 1, 3, 2)).0.starts_with("[SYS/TEMP] "));
    for why in [
        MailRefusal::NoBackend,
        MailRefusal::Method,
        MailRefusal::NoAuth,
        MailRefusal::BadRequest,
    ] {
        for p in [Some(Imap), Some(Pop3), Some(Smtp), None] {
            let (status, wait, code) = refused(answer(why, p, 1, 3, 2));
            assert_eq!(wait, None, "{why:?} {p:?}");
            assert_eq!(code.is_some(), p == Some(Smtp), "{why:?} {p:?}");
            assert!(status.bytes().all(|b| (b' '..=b'~').contains(&b)), "{status}");
        }
    }
    assert_eq!(
        refused(answer(MailRefusal::NoAuth, Some(Smtp), 1, 3, 2)).2,
        Some("530 5.7.0")
    );
    assert_eq!(
        refused(answer(MailRefusal::Method, Some(Smtp), 1, 3, 2)).2,
        Some("504 5.5.4")
    );
}

#[test]
fn answers_are_headers_on_a_200() {
    let ok = Answer::Ok {
        server: "127.0.0.1:1143".parse().unwrap(),
        user: Some("alice@corp.example.com".into()),
        pass: Some(Arc::from("backend-secret-0123456789")),
    }
    .into_response();
    assert_eq!(ok.status(), StatusCode::OK);
    let h = ok.headers();
    assert_eq!(h["auth-status"], "OK");
    assert_eq!(h["auth-server"], "127.0.0.1");
    assert_eq!(h["auth-port"], "1143");
    assert_eq!(h["auth-user"], "alice@corp.example.com");
    assert!(h["auth-pass"].is_sensitive());
    let no = answer(
        MailRefusal::SignIn(Refusal::Unauthorized),
        Some(MailProtocol::Smtp),
        1,
        3,
        2,
    )
    .into_response();
    assert_eq!(no.status(), StatusCode::OK);
    assert_eq!(no.headers()["auth-wait"], "2");
    assert_eq!(no.headers()["auth-error-code"], "535 5.7.8");
    assert!(no.headers().get("auth-server").is_none());
}

#[test]
fn backend_password_files_are_private_single_lines() {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let file = |text: &str, mode: u32| {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        std::fs::set_permissions(f.path(), std::fs::Permissions::from_mode(mode)).unwrap();
        f
    };
    let f = file("backend-secret-0123456789\n", 0o600);
    assert_eq!(
        &*backend_password("mail_backend[0].password_file", f.path()).unwrap(),
        "backend-secret-0123456789"
    );
    let f = file("backend-secret-0123456789\n", 0o644);
    let err = backend_password("mail_backend[0].password_file", f.path()).unwrap_err();
    assert!(err.to_string().starts_with("mail_backend[0].password_file "), "{err}");
    assert!(err.to_string().contains("chmod 600"), "{err}");
    for weak in ["short\n", "has a space in it somewhere\n", ""] {
        let f = file(weak, 0o600);
        assert!(backend_password("k", f.path()).is_err(), "{weak:?}");
    }
}
