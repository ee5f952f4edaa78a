use super::*;

const NOW: i64 = 1_700_000_000_000;
const DAY_MS: i64 = 24 * 3600 * 1000;

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

fn routes() -> Vec<String> {
    strings(&["mail", "dav", "activesync"])
}

fn limits(scope: &[&str], expires_at: Option<i64>, from: &[&str]) -> AppPasswordLimits {
    AppPasswordLimits {
        scope: strings(scope),
        expires_at,
        networks: networks(&strings(from)).unwrap(),
    }
}

fn used(route: &str, client: &str, now_ms: i64) -> Use<'static> {
    Use {
        route: Box::leak(route.to_owned().into_boxed_str()),
        client: client.parse().unwrap(),
        client_unknown: false,
        now_ms,
    }
}

#[test]
fn nothing_asked_limits_nothing() {
    let parsed = parse(&Requested::default(), &routes(), NOW).unwrap();
    assert!(parsed.is_unlimited());
    assert_eq!(
        check(&parsed, used("anything", "203.0.113.9", NOW + 3650 * DAY_MS)),
        Ok(())
    );
}

#[test]
fn requests_are_read_sorted_and_without_repeats() {
    let scope = strings(&["mail", " dav ", "mail"]);
    let from = strings(&["10.1.2.3/8", "192.0.2.7", "10.0.0.0/8"]);
    let parsed = parse(
        &Requested {
            scope: &scope,
            expires: Some("90d"),
            from: &from,
        },
        &routes(),
        NOW,
    )
    .unwrap();
    assert_eq!(parsed.scope, ["dav", "mail"]);
    assert_eq!(parsed.expires_at, Some(NOW + 90 * DAY_MS));
    let nets: Vec<String> = parsed.networks.iter().map(ToString::to_string).collect();
    assert_eq!(nets, ["10.0.0.0/8", "192.0.2.7/32"]);
}

#[test]
fn an_unknown_route_is_refused_naming_the_known_ones() {
    let scope = strings(&["mial"]);
    let err = parse(
        &Requested {
            scope: &scope,
            ..Requested::default()
        },
        &routes(),
        NOW,
    )
    .unwrap_err();
    assert_eq!(err.field(), "scope");
    let text = err.to_string();
    assert!(
        text.contains("\"mial\"") && text.contains("mail, dav, activesync"),
        "{text}"
    );
}

#[test]
fn bad_expiries_and_networks_are_refused_by_field() {
    for bad in ["soon", "0s", "3651d", ""] {
        let err = expiry(bad, NOW).unwrap_err();
        assert_eq!(err.field(), "expires", "{bad}");
    }
    for bad in ["10.0.0.0/33", "corp", "10.0.0"] {
        let err = networks(&strings(&[bad])).unwrap_err();
        assert_eq!(err.field(), "from", "{bad}");
        assert!(err.to_string().contains(bad), "{err}");
    }
    let many: Vec<String> = (0..=MAX_NETWORKS).map(|i| format!("10.0.{i}.0/24")).collect();
    assert_eq!(
        networks(&many).unwrap_err(),
        LimitsError::TooMany {
            what: "networks",
            max: MAX_NETWORKS
        }
    );
}

#[test]
fn an_app_password_expires_at_its_instant() {
    let l = limits(&[], Some(NOW + DAY_MS), &[]);
    assert_eq!(check(&l, used("mail", "192.0.2.1", NOW + DAY_MS - 1)), Ok(()));
    assert_eq!(
        check(&l, used("mail", "192.0.2.1", NOW + DAY_MS)),
        Err(Reason::AppPasswordExpired)
    );
}

#[test]
fn a_scope_admits_its_routes_only() {
    let l = limits(&["mail", "dav"], None, &[]);
    assert_eq!(check(&l, used("mail", "192.0.2.1", NOW)), Ok(()));
    assert_eq!(check(&l, used("dav", "192.0.2.1", NOW)), Ok(()));
    assert_eq!(
        check(&l, used("activesync", "192.0.2.1", NOW)),
        Err(Reason::AppPasswordOutOfScope)
    );
    // Exactly as spelled: a route name is not a prefix.
    assert_eq!(
        check(&l, used("mai", "192.0.2.1", NOW)),
        Err(Reason::AppPasswordOutOfScope)
    );
}

#[test]
fn networks_admit_their_clients_and_fail_closed_on_an_unknown_one() {
    let l = limits(&[], None, &["10.0.0.0/8", "2001:db8::/32"]);
    assert_eq!(check(&l, used("mail", "10.9.8.7", NOW)), Ok(()));
    assert_eq!(check(&l, used("mail", "2001:db8::5", NOW)), Ok(()));
    // An IPv4 client seen on a dual-stack socket.
    assert_eq!(check(&l, used("mail", "::ffff:10.1.1.1", NOW)), Ok(()));
    assert_eq!(
        check(&l, used("mail", "11.0.0.1", NOW)),
        Err(Reason::AppPasswordNetwork)
    );
    let behind_proxy = Use {
        client_unknown: true,
        ..used("mail", "10.0.0.1", NOW)
    };
    assert_eq!(check(&l, behind_proxy), Err(Reason::AppPasswordNetwork));
    // Without networks, an unknown client is no reason to refuse.
    assert_eq!(check(&AppPasswordLimits::default(), behind_proxy), Ok(()));
}

#[test]
fn limits_combine_expiry_first_then_scope_then_network() {
    let l = limits(&["mail"], Some(NOW + DAY_MS), &["10.0.0.0/8"]);
    assert_eq!(check(&l, used("mail", "10.0.0.1", NOW)), Ok(()));
    assert_eq!(
        check(&l, used("dav", "11.0.0.1", NOW + DAY_MS)),
        Err(Reason::AppPasswordExpired)
    );
    assert_eq!(
        check(&l, used("dav", "11.0.0.1", NOW)),
        Err(Reason::AppPasswordOutOfScope)
    );
    assert_eq!(
        check(&l, used("mail", "11.0.0.1", NOW)),
        Err(Reason::AppPasswordNetwork)
    );
}

#[test]
fn narrowing_is_allowed_and_widening_refused() {
    let old = limits(&["dav", "mail"], Some(NOW + 10 * DAY_MS), &["10.0.0.0/8"]);
    let narrower = limits(&["mail"], Some(NOW + DAY_MS), &["10.1.0.0/16"]);
    assert_eq!(narrows(&old, &narrower), Ok(()));
    assert_eq!(narrows(&old, &old), Ok(()));
    let cases = [
        (limits(&[], Some(NOW), &["10.0.0.0/8"]), "scope"),
        (limits(&["activesync"], Some(NOW), &["10.0.0.0/8"]), "scope"),
        (limits(&["mail"], None, &["10.0.0.0/8"]), "expiry"),
        (limits(&["mail"], Some(NOW + 11 * DAY_MS), &["10.0.0.0/8"]), "expiry"),
        (limits(&["mail"], Some(NOW), &[]), "networks"),
        (limits(&["mail"], Some(NOW), &["0.0.0.0/0"]), "networks"),
    ];
    for (wider, what) in cases {
        assert_eq!(narrows(&old, &wider), Err(LimitsError::Widens(what)), "{wider:?}");
    }
    // Anything narrows an unlimited app password.
    assert_eq!(narrows(&AppPasswordLimits::default(), &narrower), Ok(()));
}

#[test]
fn the_text_form_round_trips_and_empty_is_null() {
    let l = limits(&["dav", "mail"], None, &["10.0.0.0/8", "2001:db8::/32"]);
    let scope = list_to_text(&l.scope);
    let nets = list_to_text(&l.networks);
    assert_eq!(scope.as_deref(), Some(r#"["dav","mail"]"#));
    assert_eq!(scope_from_text(scope.as_deref()).unwrap(), l.scope);
    assert_eq!(networks_from_text(nets.as_deref()).unwrap(), l.networks);
    assert_eq!(list_to_text::<String>(&[]), None);
    assert!(scope_from_text(None).unwrap().is_empty());
    assert!(networks_from_text(Some(r#"["corp"]"#)).is_err());
}
