use super::*;

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (name, value) in pairs {
        h.append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    h
}

#[test]
fn each_convention_describes_on_its_own() {
    let h = headers(&[("x-forwarded-method", "PROPFIND"), ("x-forwarded-uri", "/dav/a?x=1")]);
    let d = describe(&h, &Method::GET, "", None).unwrap();
    assert_eq!(d.method.as_str(), "PROPFIND");
    assert_eq!(d.uri, "/dav/a?x=1");
    assert_eq!(d.split(), ("/dav/a", Some("x=1")));

    let h = headers(&[("x-original-method", "POST"), ("x-original-uri", "/mail/sync")]);
    let d = describe(&h, &Method::GET, "", None).unwrap();
    assert_eq!((d.method.as_str(), &*d.uri), ("POST", "/mail/sync"));
}

/// A client behind nginx (which sets X-Original-*) adding X-Forwarded-Uri,
/// one behind Caddy adding X-Original-URI, or one behind Envoy adding
/// either: never decided, whichever family it is.
#[test]
fn a_description_in_two_conventions_is_refused() {
    let mixes: [(&[(&str, &str)], &str); 5] = [
        (
            &[
                ("x-original-method", "GET"),
                ("x-original-uri", "/mail"),
                ("x-forwarded-uri", "/public"),
            ],
            "",
        ),
        (&[("x-original-uri", "/mail"), ("x-forwarded-method", "GET")], ""),
        (
            &[
                ("x-forwarded-method", "GET"),
                ("x-forwarded-uri", "/mail"),
                ("x-original-uri", "/public"),
            ],
            "",
        ),
        (&[("x-forwarded-uri", "/public")], "/mail"),
        (&[("x-original-method", "GET")], "/mail"),
    ];
    for (pairs, rest) in mixes {
        let err = describe(&headers(pairs), &Method::GET, rest, None).unwrap_err();
        assert!(matches!(err, DescribeError::Mixed(_)), "{pairs:?} {rest:?}: {err}");
        assert_eq!(err.reason(), "forward_auth_bad_description");
    }
}

#[test]
fn envoy_describes_with_its_own_method_and_the_path_below_the_endpoint() {
    let none = HeaderMap::new();
    let d = describe(&none, &Method::PUT, "/Microsoft-Server-ActiveSync", Some("Cmd=Sync")).unwrap();
    assert_eq!(d.method, Method::PUT);
    assert_eq!(d.uri, "/Microsoft-Server-ActiveSync?Cmd=Sync");
    assert_eq!(d.split().1, Some("Cmd=Sync"));
}

#[test]
fn a_description_that_names_nothing_or_two_things_is_refused() {
    let err = describe(&HeaderMap::new(), &Method::GET, "", Some("q")).unwrap_err();
    assert_eq!(err, DescribeError::NoOriginalUri);
    assert_eq!(err.reason(), "forward_auth_no_original_uri");
    let two = headers(&[("x-forwarded-uri", "/a"), ("x-forwarded-uri", "/b")]);
    assert_eq!(
        describe(&two, &Method::GET, "", None).unwrap_err(),
        DescribeError::Repeated("X-Forwarded-Uri")
    );
    for bad in ["http://evil.example/a", "a/b", "", "/a#frag"] {
        let h = headers(&[("x-original-uri", bad)]);
        assert_eq!(
            describe(&h, &Method::GET, "", None).unwrap_err(),
            DescribeError::NotOriginForm("X-Original-URI"),
            "{bad:?}"
        );
    }
    let h = headers(&[("x-forwarded-method", "GE T"), ("x-forwarded-uri", "/")]);
    assert_eq!(
        describe(&h, &Method::GET, "", None).unwrap_err(),
        DescribeError::BadMethod("X-Forwarded-Method")
    );
}

#[test]
fn the_endpoint_owns_its_path_and_what_is_below_it_only() {
    let e = Endpoint {
        path: "/_fedgate/auth".into(),
        secret: None,
    };
    assert_eq!(e.rest("/_fedgate/auth"), Some(""));
    assert_eq!(e.rest("/_FEDGATE/Auth/mail/x"), Some("/mail/x"));
    assert_eq!(e.rest("/_fedgate/authx"), None);
    assert_eq!(e.rest("/_fedgate"), None);
    assert!(e.admits(&HeaderMap::new()), "no secret configured");
}

#[test]
fn every_identity_header_is_always_sent() {
    let route = HeaderName::from_static("x-remote-user");
    let groups = vec![
        "cn=Staff,ou=groups,dc=corp,dc=example,dc=com".to_owned(),
        "CN=Domain Users,CN=Users,DC=corp".to_owned(),
        "cn=a\\,b,ou=groups".to_owned(),
        "ou=not-a-cn,dc=corp".to_owned(),
    ];
    let facts = IdentityFacts {
        upn: "alice@corp.example.com",
        email: Some("alice@corp.example.com"),
        name: Some("Alice Liddell"),
        groups: &groups,
        credential: "app_password",
    };
    let h = identity_headers(&route, Some(&facts));
    assert_eq!(h["x-remote-user"], "alice@corp.example.com");
    assert_eq!(h["remote-user"], "alice@corp.example.com");
    assert_eq!(h["remote-email"], "alice@corp.example.com");
    assert_eq!(h["remote-name"], "Alice Liddell");
    // A name holding a comma (an escaped one, a DN without a CN) would
    // split in two: left out.
    assert_eq!(h["remote-groups"], "Staff,Domain Users");
    assert_eq!(h["x-fedgate-credential"], "app_password");

    let h = identity_headers(&route, None);
    for name in [
        "x-remote-user",
        "remote-user",
        "remote-email",
        "remote-name",
        "remote-groups",
        "x-fedgate-credential",
    ] {
        assert_eq!(h.get(name).map(|v| v.as_bytes()), Some(&b""[..]), "{name}");
    }
}

#[test]
fn a_value_a_header_cannot_carry_is_sent_empty() {
    let route = HeaderName::from_static("remote-user");
    let facts = IdentityFacts {
        upn: "bob@corp.example.com",
        name: Some("Bob\r\nRemote-User: admin"),
        credential: "password",
        ..Default::default()
    };
    let h = identity_headers(&route, Some(&facts));
    assert_eq!(h["remote-name"], "");
    assert_eq!(h["remote-user"], "bob@corp.example.com");
    assert_eq!(h.len(), 5, "the route's header is Remote-User itself");
}

#[test]
fn group_names_are_the_cn_of_the_dn() {
    assert_eq!(group_name("cn=Ops Team,ou=g,dc=x"), "Ops Team");
    assert_eq!(group_name("cn=R\\26D,ou=g"), "R&D");
    assert_eq!(group_name("staff"), "staff");
    assert_eq!(group_name("cn=a+uid=b,ou=g"), "a");
}

#[test]
fn request_describing_and_credential_headers_cannot_be_the_secret_header() {
    for name in [
        "authorization",
        "x-forwarded-for",
        "x-original-uri",
        "remote-user",
        "cookie",
        "host",
    ] {
        assert!(is_reserved_header(&HeaderName::from_static(name)), "{name}");
    }
    assert!(!is_reserved_header(&HeaderName::from_static("x-fedgate-secret")));
}
