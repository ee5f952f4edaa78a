use super::*;

const ROUTES: &[&str] = &["ews", "activesync", "dav"];

fn file(name: &str, action: &str) -> PolicyFile {
    PolicyFile {
        name: name.into(),
        reason: None,
        action: action.into(),
        routes: None,
        networks: None,
        not_networks: None,
        credentials: None,
        groups: None,
        mfa_states: None,
        user_agents: None,
    }
}

fn strings(items: &[&str]) -> Option<Vec<String>> {
    Some(items.iter().map(|s| (*s).to_owned()).collect())
}

fn set(files: &[PolicyFile]) -> PolicySet {
    PolicySet::build(files, ROUTES).unwrap()
}

fn request<'a>(route: &'a str, path: &'a str, ip: &str, kind: Kind, agent: &'a str) -> Request<'a> {
    Request {
        route: RouteRef { name: route, path },
        ip: ip.parse().unwrap(),
        user_agent: agent,
        kind,
    }
}

fn ews(ip: &str, kind: Kind) -> Request<'static> {
    request("ews", "/EWS", ip, kind, "Microsoft Outlook 16.0")
}

const NOBODY: UserFacts<'static> = UserFacts {
    mfa_state: MfaState::Disabled,
    groups: &[],
};

fn denied_by<'a>(v: Verdict<'a>) -> Option<&'a str> {
    v.denied().map(|p| p.name.as_str())
}

#[test]
fn no_rules_allow_by_default() {
    let s = set(&[]);
    assert_eq!(s.before_user(&ews("192.0.2.1", Kind::Password)), Some(Verdict::Default));
    assert_eq!(s.decide(&ews("192.0.2.1", Kind::Password), &NOBODY), Verdict::Default);
}

#[test]
fn networks_match_cidrs_and_plain_addresses() {
    let mut f = file("corp", "deny");
    f.networks = strings(&["10.0.0.0/8", "2001:db8::/32", "198.51.100.7"]);
    let s = set(&[f]);
    for ip in ["10.1.2.3", "2001:db8::1", "198.51.100.7", "::ffff:10.9.9.9"] {
        assert_eq!(
            denied_by(s.decide(&ews(ip, Kind::Password), &NOBODY)),
            Some("corp"),
            "{ip}"
        );
    }
    for ip in ["11.0.0.1", "2001:db9::1", "198.51.100.8"] {
        assert_eq!(s.decide(&ews(ip, Kind::Password), &NOBODY), Verdict::Default, "{ip}");
    }
}

#[test]
fn not_networks_match_everything_outside() {
    let mut f = file("outside", "deny");
    f.not_networks = strings(&["10.0.0.0/8"]);
    let s = set(&[f]);
    assert_eq!(
        denied_by(s.decide(&ews("192.0.2.1", Kind::Password), &NOBODY)),
        Some("outside")
    );
    assert_eq!(s.decide(&ews("10.0.0.1", Kind::Password), &NOBODY), Verdict::Default);
}

#[test]
fn credentials_match_the_kind() {
    let mut f = file("no-passwords", "deny");
    f.credentials = strings(&["password", "session"]);
    let s = set(&[f]);
    assert!(s.decide(&ews("192.0.2.1", Kind::Password), &NOBODY).denied().is_some());
    assert!(s.decide(&ews("192.0.2.1", Kind::Session), &NOBODY).denied().is_some());
    assert_eq!(
        s.decide(&ews("192.0.2.1", Kind::AppPassword), &NOBODY),
        Verdict::Default
    );
}

#[test]
fn routes_match_by_name_or_path_prefix_on_whole_segments() {
    let mut by_name = file("eas", "deny");
    by_name.routes = strings(&["activesync"]);
    let mut by_path = file("dav", "deny");
    by_path.routes = strings(&["/dav"]);
    let s = set(&[by_name, by_path]);
    let eas = request(
        "activesync",
        "/Microsoft-Server-ActiveSync",
        "192.0.2.1",
        Kind::Password,
        "",
    );
    assert_eq!(denied_by(s.decide(&eas, &NOBODY)), Some("eas"));
    let dav = request("caldav", "/DAV/calendars", "192.0.2.1", Kind::Password, "");
    assert_eq!(denied_by(s.decide(&dav, &NOBODY)), Some("dav"));
    let davx = request("davx", "/davx", "192.0.2.1", Kind::Password, "");
    assert_eq!(s.decide(&davx, &NOBODY), Verdict::Default);
    assert_eq!(s.decide(&ews("192.0.2.1", Kind::Password), &NOBODY), Verdict::Default);
}

#[test]
fn an_unknown_route_name_is_refused() {
    let mut f = file("x", "deny");
    f.routes = strings(&["ews", "imap"]);
    let err = PolicySet::build(&[f], ROUTES).unwrap_err();
    assert_eq!(err.key, "policy[0].routes[1]");
    assert!(err.message.contains("no [[route]] is named \"imap\""), "{err}");
}

#[test]
fn user_agents_match_globs_case_folded() {
    let mut f = file("outlook", "deny");
    f.user_agents = strings(&["*outlook*", "Apple-?Phone*"]);
    let s = set(&[f]);
    for agent in ["Microsoft Outlook 16.0", "Apple-iPhone/1904", "OUTLOOK"] {
        let r = request("ews", "/EWS", "192.0.2.1", Kind::Password, agent);
        assert!(s.decide(&r, &NOBODY).denied().is_some(), "{agent}");
    }
    for agent in ["Thunderbird", "Apple-Phone", ""] {
        let r = request("ews", "/EWS", "192.0.2.1", Kind::Password, agent);
        assert_eq!(s.decide(&r, &NOBODY), Verdict::Default, "{agent}");
    }
}

#[test]
fn globs_backtrack_over_repeated_parts() {
    assert!(glob_matches(b"*ab*ab", b"xxabyyabab"));
    assert!(glob_matches(b"a*", b"a"));
    assert!(glob_matches(b"*", b""));
    assert!(!glob_matches(b"a*b", b"acbx"));
    assert!(!glob_matches(b"?", b""));
}

#[test]
fn user_agents_match_regular_expressions_bounded_in_size() {
    let mut f = file("old-eas", "deny");
    f.user_agents = strings(&[r"regex:^Android-Mail/[0-7]\."]);
    let s = set(&[f]);
    let old = request("ews", "/EWS", "192.0.2.1", Kind::Password, "Android-Mail/7.1");
    let new = request("ews", "/EWS", "192.0.2.1", Kind::Password, "Android-Mail/8.0");
    assert!(s.decide(&old, &NOBODY).denied().is_some());
    assert_eq!(s.decide(&new, &NOBODY), Verdict::Default);

    let mut huge = file("huge", "deny");
    huge.user_agents = strings(&[r"regex:\w{200}\w{200}"]);
    let err = PolicySet::build(&[huge], ROUTES).unwrap_err();
    assert_eq!(err.key, "policy[0].user_agents[0]");

    let mut long = file("long", "deny");
    long.user_agents = Some(vec!["a".repeat(MAX_PATTERN_BYTES + 1)]);
    assert!(PolicySet::build(&[long], ROUTES)
        .unwrap_err()
        .message
        .contains("longer"));

    let mut bad = file("bad", "deny");
    bad.user_agents = strings(&["regex:("]);
    assert!(PolicySet::build(&[bad], ROUTES).is_err());
}

const SALES_DN: &str = "cn=Sales,ou=Groups,dc=corp,dc=example";

#[test]
fn groups_match_by_dn_or_first_rdn_value() {
    let groups = [SALES_DN.to_owned()];
    let sales = UserFacts {
        mfa_state: MfaState::Disabled,
        groups: &groups,
    };
    for name in ["sales", "CN=Sales, OU=Groups, DC=corp, DC=example"] {
        let mut f = file("g", "deny");
        f.groups = strings(&[name]);
        let s = set(&[f]);
        assert!(
            s.decide(&ews("192.0.2.1", Kind::Password), &sales).denied().is_some(),
            "{name}"
        );
        assert_eq!(s.decide(&ews("192.0.2.1", Kind::Password), &NOBODY), Verdict::Default);
    }
    let mut other = file("g", "deny");
    other.groups = strings(&["Groups"]);
    assert_eq!(
        set(&[other]).decide(&ews("192.0.2.1", Kind::Password), &sales),
        Verdict::Default
    );
}

#[test]
fn mfa_states_match_the_users_state() {
    let mut f = file("enforced-only", "deny");
    f.mfa_states = strings(&["enforced"]);
    let s = set(&[f]);
    let enforced = UserFacts {
        mfa_state: MfaState::Enforced,
        groups: &[],
    };
    assert!(s
        .decide(&ews("192.0.2.1", Kind::Password), &enforced)
        .denied()
        .is_some());
    assert_eq!(s.decide(&ews("192.0.2.1", Kind::Password), &NOBODY), Verdict::Default);
}

#[test]
fn every_condition_of_a_rule_must_hold() {
    let mut f = file("eas-outside", "deny");
    f.routes = strings(&["activesync"]);
    f.not_networks = strings(&["10.0.0.0/8"]);
    f.credentials = strings(&["password"]);
    let s = set(&[f]);
    let eas = |ip, kind| request("activesync", "/Microsoft-Server-ActiveSync", ip, kind, "");
    assert!(s.decide(&eas("192.0.2.1", Kind::Password), &NOBODY).denied().is_some());
    assert_eq!(s.decide(&eas("10.0.0.1", Kind::Password), &NOBODY), Verdict::Default);
    assert_eq!(
        s.decide(&eas("192.0.2.1", Kind::AppPassword), &NOBODY),
        Verdict::Default
    );
    assert_eq!(s.decide(&ews("192.0.2.1", Kind::Password), &NOBODY), Verdict::Default);
}

#[test]
fn the_first_matching_rule_decides() {
    let mut admins = file("admins-anywhere", "allow");
    admins.groups = strings(&["Admins"]);
    let mut outside = file("outside", "deny");
    outside.not_networks = strings(&["10.0.0.0/8"]);
    let s = set(&[admins, outside]);
    let groups = ["cn=Admins,dc=corp".to_owned()];
    let admin = UserFacts {
        mfa_state: MfaState::Enabled,
        groups: &groups,
    };
    let from_outside = ews("192.0.2.1", Kind::Password);
    assert_eq!(
        s.decide(&from_outside, &admin),
        Verdict::Rule(&s.rules()[0]),
        "an allow before a deny wins"
    );
    assert_eq!(denied_by(s.decide(&from_outside, &NOBODY)), Some("outside"));
}

#[test]
fn before_user_decides_only_when_no_earlier_rule_needs_the_user() {
    let mut admins = file("admins-anywhere", "allow");
    admins.groups = strings(&["Admins"]);
    admins.routes = strings(&["dav"]);
    let mut outside = file("outside", "deny");
    outside.not_networks = strings(&["10.0.0.0/8"]);
    let s = set(&[admins, outside]);
    // The group rule does not apply to this route: decided at once.
    assert_eq!(
        denied_by(s.before_user(&ews("192.0.2.1", Kind::Password)).unwrap()),
        Some("outside")
    );
    // It might apply here: the user must be known first.
    let dav = request("dav", "/dav", "192.0.2.1", Kind::Password, "");
    assert_eq!(s.before_user(&dav), None);
    assert_eq!(s.before_user(&ews("10.0.0.1", Kind::Password)), Some(Verdict::Default));
}

#[test]
fn a_rule_after_a_match_all_is_refused() {
    let last = file("catch-all", "deny");
    let mut after = file("after", "allow");
    after.credentials = strings(&["app_password"]);
    let err = PolicySet::build(&[last.clone(), after.clone()], ROUTES).unwrap_err();
    assert_eq!(err.key, "policy[1]");
    assert!(
        err.message.contains("policy[0] (\"catch-all\") matches every sign-in"),
        "{err}"
    );
    // Last is fine.
    assert!(PolicySet::build(&[after, last], ROUTES).is_ok());
}

#[test]
fn bad_values_name_their_key() {
    let cases: Vec<(PolicyFile, &str)> = vec![
        (file("", "deny"), "policy[0].name"),
        (file("has space", "deny"), "policy[0].name"),
        (file("x", "maybe"), "policy[0].action"),
        (
            PolicyFile {
                networks: strings(&["10.0.0.0/33"]),
                ..file("x", "deny")
            },
            "policy[0].networks[0]",
        ),
        (
            PolicyFile {
                credentials: strings(&["token"]),
                ..file("x", "deny")
            },
            "policy[0].credentials[0]",
        ),
        (
            PolicyFile {
                mfa_states: strings(&["sometimes"]),
                ..file("x", "deny")
            },
            "policy[0].mfa_states[0]",
        ),
        (
            PolicyFile {
                groups: Some(vec![]),
                ..file("x", "deny")
            },
            "policy[0].groups",
        ),
        (
            PolicyFile {
                reason: Some("a b".into()),
                ..file("x", "deny")
            },
            "policy[0].reason",
        ),
    ];
    for (f, key) in cases {
        assert_eq!(PolicySet::build(&[f], ROUTES).unwrap_err().key, key);
    }
    let dup = PolicySet::build(&[file("a", "deny"), file("a", "allow")], ROUTES).unwrap_err();
    assert_eq!(dup.key, "policy[1].name");
}

#[test]
fn the_reason_defaults_to_the_name() {
    let mut f = file("corp-only", "deny");
    f.credentials = strings(&["password"]);
    let mut g = f.clone();
    g.name = "other".into();
    g.reason = Some("org_password_outside".into());
    let s = set(&[f, g]);
    assert_eq!(s.rules()[0].reason, "corp-only");
    assert_eq!(s.rules()[1].reason, "org_password_outside");
}

#[test]
fn explain_says_why_each_rule_did_or_did_not_match() {
    let mut admins = file("admins", "allow");
    admins.groups = strings(&["Admins"]);
    let mut eas = file("eas", "deny");
    eas.routes = strings(&["activesync"]);
    let mut outside = file("outside", "deny");
    outside.not_networks = strings(&["10.0.0.0/8"]);
    let last = file("rest", "allow");
    let s = set(&[admins, eas, outside, last]);
    let why: Vec<Option<Explained>> = s
        .explain(&ews("192.0.2.1", Kind::Password), &NOBODY)
        .into_iter()
        .map(|(_, w)| w)
        .collect();
    assert_eq!(
        why,
        vec![
            Some(Explained::UserDiffers),
            Some(Explained::RequestDiffers),
            Some(Explained::Matched),
            None
        ]
    );
}

#[test]
fn describe_spells_the_conditions() {
    let mut f = file("x", "deny");
    f.routes = strings(&["ews", "/dav"]);
    f.not_networks = strings(&["10.0.0.0/8"]);
    f.user_agents = strings(&["*Outlook*"]);
    let s = set(&[f, file("rest", "allow")]);
    assert_eq!(
        s.rules()[0].describe(),
        "routes=[ews, /dav] not_networks=[10.0.0.0/8] user_agents=[\"*Outlook*\"]"
    );
    assert_eq!(s.rules()[1].describe(), "(every sign-in)");
}
