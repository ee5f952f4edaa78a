//! The canonical request: table tests of paths and hosts, and properties
//! (idempotence, routing by canonical form, no dot segment or `//` left,
//! hosts read back as printed).

use super::*;
use crate::config::Config;
use crate::proxy::route::Router;
use proptest::prelude::*;
use std::path::Path;

fn canon(raw: &str) -> Result<String, PathRefusal> {
    canonical_path(raw).map(|c| c.as_str().to_owned())
}

#[test]
fn canonical_paths_are_borrowed_as_they_stand() {
    for raw in [
        "/",
        "/Microsoft-Server-ActiveSync",
        "/a/b/",
        "/EWS/Exchange.asmx",
        "/a:b@c!$&'()*+,=",
    ] {
        let c = canonical_path(raw).unwrap();
        assert!(c.is_unchanged() && c.is_plain(), "{raw}");
        assert_eq!(c.as_str(), raw);
        assert_eq!(c.route_key(), raw);
    }
}

#[test]
fn spellings_of_one_path_become_that_path() {
    let want = "/Microsoft-Server-ActiveSync";
    for raw in [
        "/public/../Microsoft-Server-ActiveSync",
        "//Microsoft-Server-ActiveSync",
        "/./Microsoft-Server-ActiveSync",
        "/%4Dicrosoft-Server-ActiveSync",
        "/Microsoft%2DServer-ActiveSync",
        "/%2E/Microsoft-Server-ActiveSync",
        "/x/%2E%2E/Microsoft-Server-ActiveSync",
        "/a/b/../../Microsoft-Server-ActiveSync",
    ] {
        assert_eq!(canon(raw).as_deref(), Ok(want), "{raw}");
    }
    assert_eq!(canon("/a//b///c/").as_deref(), Ok("/a/b/c/"));
    assert_eq!(canon("/a/.").as_deref(), Ok("/a/"));
    assert_eq!(canon("/a/b/..").as_deref(), Ok("/a/"));
    assert_eq!(canon("/%c3%a9").as_deref(), Ok("/%C3%A9"));
    assert_eq!(canon("/%C3\u{a9}"), Err(PathRefusal::InvalidUtf8));
    assert_eq!(canon("/\u{e9}%F0%9F%98%80").as_deref(), Ok("/%C3%A9%F0%9F%98%80"));
    assert_eq!(canon("/a%7eb").as_deref(), Ok("/a~b"));
    assert_eq!(canon("/\"{x}").as_deref(), Ok("/%22%7Bx%7D"));
}

#[test]
fn what_cannot_be_made_canonical_is_refused() {
    use PathRefusal::*;
    for (raw, why) in [
        ("x", NotAbsolute),
        ("/a%2", BadPercentEncoding),
        ("/a%zz", BadPercentEncoding),
        ("/a%00", ControlCharacter),
        ("/a%0d%0a", ControlCharacter),
        ("/a\u{1}", ControlCharacter),
        ("/a%7F", ControlCharacter),
        ("/a\\b", Backslash),
        ("/a%5Cb", Backslash),
        ("/a%5cb", Backslash),
        ("/..", AboveRoot),
        ("/a/../..", AboveRoot),
        ("/%2e%2e/a", AboveRoot),
        ("/Microsoft-Server-ActiveSync.", AmbiguousSegment),
        ("/Microsoft-Server-ActiveSync%20", AmbiguousSegment),
        ("/Microsoft-Server-ActiveSync::$DATA", AmbiguousSegment),
        ("/Microsoft-Server-ActiveSync%3A%3A%24DATA", AmbiguousSegment),
        ("/a.../b", AmbiguousSegment),
        ("/a/..%2Fb", HiddenDotSegment),
        ("/a/%2F..%2Fb", HiddenDotSegment),
        ("/public/..;/admin", AboveRoot),
        // Overlong `..`, `/` and `\\`, a surrogate, a stray continuation
        // byte, a lead byte cut short (also by a raw byte), beyond U+10FFFF.
        ("/%C0%AE%C0%AE/a", InvalidUtf8),
        ("/a%C0%AFb", InvalidUtf8),
        ("/a%c0%afb", InvalidUtf8),
        ("/a%C1%9Cb", InvalidUtf8),
        ("/a%E0%80%AEb", InvalidUtf8),
        ("/a%ED%A0%80", InvalidUtf8),
        ("/a%80", InvalidUtf8),
        ("/a%C3", InvalidUtf8),
        ("/a%C3b", InvalidUtf8),
        ("/a%C3\u{e9}", InvalidUtf8),
        ("/a%F4%90%80%80", InvalidUtf8),
        ("/a%FF", InvalidUtf8),
    ] {
        assert_eq!(canon(raw), Err(why), "{raw}");
    }
}

#[test]
fn encoded_slashes_and_parameters_are_flagged_and_match_as_the_upstream_reads_them() {
    let c = canonical_path("/Microsoft-Server-ActiveSync;jsessionid=x").unwrap();
    assert_eq!(c.route_key(), "/Microsoft-Server-ActiveSync");
    assert_eq!(c.check_route(false, false), Err(PathRefusal::PathParameters));
    assert_eq!(c.check_route(false, true), Ok(()));
    let c = canonical_path("/Microsoft-Server-ActiveSync;/x").unwrap();
    assert_eq!(c.route_key(), "/Microsoft-Server-ActiveSync/x");
    let c = canonical_path("/Microsoft-Server-ActiveSync%3Bx").unwrap();
    assert_eq!(c.route_key(), "/Microsoft-Server-ActiveSync");
    let c = canonical_path("/Microsoft-Server-ActiveSync%2fx").unwrap();
    assert_eq!(c.as_str(), "/Microsoft-Server-ActiveSync%2Fx");
    assert_eq!(c.route_key(), "/Microsoft-Server-ActiveSync/x");
    assert_eq!(c.check_route(false, false), Err(PathRefusal::EncodedSlash));
    assert_eq!(c.check_route(true, false), Ok(()));
}

#[test]
fn queries_are_kept_but_not_control_characters() {
    assert_eq!(check_query("a=1&b=%20"), Ok(()));
    assert_eq!(check_query("a=%0a"), Err(PathRefusal::QueryControl));
    assert_eq!(check_query("a=%00"), Err(PathRefusal::QueryControl));
    // Left as sent: what a query means is the upstream's to decide.
    assert_eq!(check_query("a=%C0%AE%C0%AF"), Ok(()));
}

#[test]
fn hosts_are_valid_authorities_lower_cased() {
    for (raw, printed) in [
        ("Mail.Example.COM", "mail.example.com"),
        ("mail.example.com.", "mail.example.com"),
        ("mail.example.com:443", "mail.example.com:443"),
        ("127.0.0.1:8080", "127.0.0.1:8080"),
        ("[::1]:8443", "[::1]:8443"),
        ("[0:0::ABCD]", "[::abcd]"),
    ] {
        assert_eq!(
            parse_authority(raw).map(|a| a.to_string()).as_deref(),
            Ok(printed),
            "{raw}"
        );
    }
    assert_eq!(parse_authority("[::1]:8443").unwrap().host(), "::1");
    for raw in [
        "",
        "mail.example.com:abc",
        "mail.example.com:443:443",
        "user@mail.example.com",
        "mail.example.com@evil",
        "mail.example.com/",
        "mail.example.com\\",
        "mail.example.com, other",
        "mail.example.com:+443",
        "mail.example.com :443",
        "mail.example.com:",
        "mail.example.com:0",
        "mail.example.com:65536",
        "mail.example.com:0443",
        "mail..example.com",
        ".",
        "[::1",
        "[::1]x",
        "[fe80::1%25eth0]",
        "[v1.x]",
    ] {
        assert!(parse_authority(raw).is_err(), "{raw:?} was accepted");
    }
}

fn request(lines: &[(&str, &str)], uri: &str, version: http::Version) -> http::Request<()> {
    let mut b = http::Request::get(uri).version(version);
    for (k, v) in lines {
        b = b.header(*k, *v);
    }
    b.body(()).unwrap()
}

#[test]
fn request_targets_name_one_valid_host() {
    use http::Version as V;
    let ok = request(&[("host", "Mail.Example.com")], "/x", V::HTTP_11);
    let t = request_target(&ok).unwrap();
    assert_eq!(t.authority.unwrap().to_string(), "mail.example.com");
    let two = request(&[("host", "a"), ("host", "b")], "/x", V::HTTP_11);
    assert_eq!(request_target(&two), Err(HostRefusal::Repeated.into()));
    let none = request(&[], "/x", V::HTTP_11);
    assert_eq!(request_target(&none), Err(HostRefusal::Missing.into()));
    assert!(request_target(&request(&[], "/x", V::HTTP_10)).is_ok());
    let absolute = request(&[("host", "MAIL.example.com")], "http://mail.example.com/x", V::HTTP_11);
    assert!(request_target(&absolute).is_ok());
    let differ = request(&[("host", "other")], "http://mail.example.com/x", V::HTTP_11);
    assert_eq!(request_target(&differ), Err(HostRefusal::Disagree.into()));
    let h2 = request(&[("host", "other")], "https://mail.example.com/x", V::HTTP_2);
    assert_eq!(request_target(&h2), Err(HostRefusal::Disagree.into()));
    let connect = http::Request::connect("mail.example.com:443")
        .header("host", "mail.example.com:443")
        .body(())
        .unwrap();
    assert_eq!(request_target(&connect), Err(TargetRefusal::Connect));
    let star = http::Request::options("*").header("host", "a").body(()).unwrap();
    assert!(request_target(&star).unwrap().asterisk);
}

fn router(paths: &[&str]) -> Router<usize> {
    let mut text = String::from("[server]\nlisten_plain = [\"127.0.0.1:0\"]\n");
    for p in paths {
        text.push_str(&format!(
            "[[route]]\npath = \"{p}\"\nupstream = \"http://127.0.0.1:1\"\nrealm = \"none\"\n"
        ));
    }
    let config = Config::parse(&text, Path::new("test.toml")).unwrap();
    Router::new(config.routes.into_iter().map(|r| {
        let i = r.index;
        (r, i)
    }))
}

/// Paths made of pieces that exercise every rule: dots, slashes, escapes
/// of unreserved and reserved bytes, parameters, case.
fn path_strategy() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("a".to_owned()),
        Just("B".to_owned()),
        Just("mail".to_owned()),
        Just("Mail".to_owned()),
        Just(".".to_owned()),
        Just("..".to_owned()),
        Just("/".to_owned()),
        Just("%2E".to_owned()),
        Just("%2e".to_owned()),
        Just("%41".to_owned()),
        Just("%2F".to_owned()),
        Just("%3B".to_owned()),
        Just("%c3%a9".to_owned()),
        Just("%20".to_owned()),
        Just(";".to_owned()),
        Just("=".to_owned()),
        Just(":".to_owned()),
        Just("$".to_owned()),
        Just("~".to_owned()),
        Just("%".to_owned()),
        Just("\"".to_owned()),
    ];
    proptest::collection::vec(piece, 0..12).prop_map(|pieces| format!("/{}", pieces.concat()))
}

proptest! {
    #[test]
    fn canonicalisation_is_idempotent(raw in path_strategy()) {
        if let Ok(c) = canonical_path(&raw) {
            let again = canonical_path(c.as_str()).expect("a canonical path is accepted");
            prop_assert_eq!(again.as_str(), c.as_str());
            prop_assert!(again.is_unchanged());
            prop_assert_eq!(again.route_key(), c.route_key());
        }
    }

    #[test]
    fn no_canonical_path_holds_a_dot_segment_or_double_slash(raw in path_strategy()) {
        if let Ok(c) = canonical_path(&raw) {
            for p in [c.as_str(), c.route_key()] {
                prop_assert!(p.starts_with('/'));
                prop_assert!(!p.contains("//"), "{}", p);
                prop_assert!(p.split('/').all(|s| s != "." && s != ".."), "{}", p);
            }
        }
    }

    #[test]
    fn spellings_that_canonicalise_alike_route_alike(a in path_strategy(), b in path_strategy()) {
        let r = router(&["/", "/mail", "/mail/a", "/B"]);
        if let (Ok(ca), Ok(cb)) = (canonical_path(&a), canonical_path(&b)) {
            if ca.as_str() == cb.as_str() {
                prop_assert_eq!(r.find(None, ca.route_key()), r.find(None, cb.route_key()));
            }
            // Case-insensitive routes: the same path in another case too.
            let upper_text = ca.as_str().to_ascii_uppercase();
            if let Ok(upper) = canonical_path(&upper_text) {
                prop_assert_eq!(r.find(None, ca.route_key()), r.find(None, upper.route_key()));
            }
        }
    }

    #[test]
    fn the_host_parser_accepts_what_it_prints(raw in "[A-Za-z0-9.:\\[\\]@/, +_~-]{0,24}") {
        if let Ok(a) = parse_authority(&raw) {
            let printed = a.to_string();
            let again = parse_authority(&printed).expect("a printed authority is accepted");
            prop_assert_eq!(&again, &a);
            prop_assert_eq!(again.to_string(), printed);
        }
    }
}
