use super::*;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("test.toml"))
}

const MINIMAL: &str = r#"
[server]
listen_plain = ["127.0.0.1:8080"]

[[route]]
path = "/whoami"
upstream = "builtin:whoami"
realm = "none"
"#;

#[test]
fn minimal_config_gets_safe_defaults() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(c.server.limits.header_read_timeout, Duration::from_secs(15));
    assert_eq!(c.server.limits.idle_timeout, Duration::from_secs(75));
    assert_eq!(c.server.limits.max_header_bytes, 65536);
    assert_eq!(c.server.upstream.timeout, Duration::from_secs(3600));
    assert_eq!(c.routes[0].identity_header, "x-remote-user");
    assert!(!c.routes[0].forward_authorization);
}

#[test]
fn example_config_is_valid() {
    let text = include_str!("../../config/fedgate.toml");
    parse(text).unwrap();
}

#[test]
fn unknown_keys_are_named() {
    let err = parse(&MINIMAL.replace("realm = \"none\"", "realm = \"none\"\nupsteam = \"x\"")).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("route[0]") && msg.contains("upsteam"), "{msg}");

    let err = parse(&MINIMAL.replace("[server]", "[server]\nlisten_tls = []")).unwrap_err();
    assert!(err.to_string().contains("listen_tls"), "{err}");
}

#[test]
fn bad_values_name_their_key() {
    let cases = [
        (
            MINIMAL.replace("builtin:whoami", "htp://x"),
            "route[0].upstream: invalid URL \"htp://x\"",
        ),
        (MINIMAL.replace("\"/whoami\"", "\"whoami\""), "route[0].path"),
        (MINIMAL.replace("127.0.0.1:8080", "localhost"), "server.listen_plain[0]"),
        (
            MINIMAL.replace("[server]", "[server]\nidle_timeout = \"soon\""),
            "server.idle_timeout",
        ),
        (
            MINIMAL.replace("[server]", "[server]\ntrusted_proxies = [\"10.0.0.0/33\"]"),
            "server.trusted_proxies[0]",
        ),
        (
            MINIMAL.replace("[server]", "[server]\nmax_connections = 0"),
            "server.max_connections",
        ),
        (
            MINIMAL.replace("realm = \"none\"", "realm = \"cluod\""),
            "route[0].realm",
        ),
        (
            MINIMAL.replace("realm = \"none\"", "realm = \"none\"\nidentity_header = \"bad header\""),
            "route[0].identity_header",
        ),
        (
            MINIMAL.replace("realm = \"none\"", "realm = \"none\"\nupstream_timeout = \"0s\""),
            "route[0].upstream_timeout",
        ),
    ];
    for (text, want) in cases {
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains(want), "expected {want:?} in {err:?}");
    }
}

#[test]
fn a_type_error_names_the_key() {
    let err = parse(&MINIMAL.replace("[server]", "[server]\nmax_header_bytes = \"big\"")).unwrap_err();
    assert!(err.to_string().contains("server.max_header_bytes"), "{err}");
}

#[test]
fn no_listener_and_no_route_are_errors() {
    let err = parse("[server]\n[[route]]\npath=\"/\"\nupstream=\"builtin:whoami\"\nrealm=\"none\"\n").unwrap_err();
    assert!(err.to_string().contains("server.listen"), "{err}");
    let err = parse("[server]\nlisten_plain=[\"127.0.0.1:1\"]\n").unwrap_err();
    assert!(err.to_string().starts_with("route:"), "{err}");
}

#[test]
fn duplicate_routes_are_errors() {
    let text =
        format!("{MINIMAL}\n[[route]]\npath = \"/whoami\"\nupstream = \"http://127.0.0.1:1\"\nrealm = \"none\"\n");
    let err = parse(&text).unwrap_err();
    assert!(err.to_string().contains("route[1].path"), "{err}");
}

#[test]
fn route_request_keys_default_to_the_strict_reading() {
    let c = parse(MINIMAL).unwrap();
    let r = &c.routes[0];
    assert!(!r.case_sensitive && !r.allow_encoded_slashes && !r.allow_path_parameters);
    assert_eq!(r.upgrades, ["websocket"]);
    let text = format!("{MINIMAL}upgrades = [\"WebSocket\", \"foo\"]\ncase_sensitive = true\n");
    let c = parse(&text).unwrap();
    assert_eq!(c.routes[0].upgrades, ["websocket", "foo"]);
    assert!(c.routes[0].case_sensitive);
    for (extra, key) in [
        ("upgrades = [\"h2c\"]", "route[0].upgrades"),
        ("upgrades = [\"a b\"]", "route[0].upgrades"),
    ] {
        let err = parse(&format!("{MINIMAL}{extra}\n")).unwrap_err();
        assert!(err.to_string().contains(key), "{extra}: {err}");
    }
}

#[test]
fn route_paths_differing_in_case_are_duplicates_unless_both_are_case_sensitive() {
    let other = "[[route]]\npath = \"/WhoAmI\"\nupstream = \"http://127.0.0.1:1\"\nrealm = \"none\"\n";
    let err = parse(&format!("{MINIMAL}\n{other}")).unwrap_err();
    assert!(err.to_string().contains("route[1].path"), "{err}");
    let both = format!("{MINIMAL}case_sensitive = true\n{other}case_sensitive = true\n");
    assert!(parse(&both).is_ok());
}

const DIRECTORY: &str = r#"
[directory]
urls = ["ldaps://dc1.corp.example.com", "ldaps://dc2.corp.example.com:636"]
ca_file = "config/corp-ca.pem"
bind_dn = "cn=fedgate,ou=services,dc=corp,dc=example,dc=com"
bind_password_file = "config/ldap.password"
base_dn = "ou=people,dc=corp,dc=example,dc=com"
"#;

fn with_directory(extra: &str) -> String {
    format!("{MINIMAL}{DIRECTORY}{extra}")
}

#[test]
fn directory_defaults_follow_the_attributes() {
    let c = parse(&with_directory("")).unwrap();
    let d = c.directory.unwrap();
    assert_eq!(d.urls.len(), 2);
    assert_eq!(d.user_filter.to_string(), "(mail={upn})");
    assert_eq!(d.login_filter.to_string(), "(uid={login})");
    assert_eq!(d.timeout, Duration::from_secs(5));
    assert_eq!(d.cache_ttl, Duration::from_secs(300));
    assert!(matches!(d.bind, DirectoryBind::Search { .. }));

    let ad = parse(&with_directory(
        "upn_attribute = \"userPrincipalName\"\nlogin_attribute = \"sAMAccountName\"\ncache_ttl = \"0s\"\ndomain = \"corp\"",
    ))
    .unwrap()
    .directory
    .unwrap();
    assert_eq!(ad.user_filter.to_string(), "(userPrincipalName={upn})");
    assert_eq!(ad.login_filter.to_string(), "(sAMAccountName={login})");
    assert_eq!(ad.cache_ttl, Duration::ZERO);
    assert_eq!(ad.domain.as_deref(), Some("CORP"));

    let direct = MINIMAL.to_string() + "[directory]\nurls = [\"ldaps://dc1\"]\nbase_dn = \"dc=corp\"\n";
    let d = parse(&direct).unwrap().directory.unwrap();
    assert!(matches!(d.bind, DirectoryBind::Direct { ref name } if name.to_string() == "{upn}"));
}

#[test]
fn onprem_routes_need_a_directory() {
    let onprem = MINIMAL.replace("realm = \"none\"", "realm = \"onprem\"");
    let err = parse(&onprem).unwrap_err().to_string();
    assert!(err.contains("route[0].realm") && err.contains("[directory]"), "{err}");
    assert!(parse(&format!("{onprem}{DIRECTORY}")).is_ok());
}

#[test]
fn bad_directory_values_name_their_key() {
    let cases = [
        (
            with_directory("").replace("ldaps://dc1", "http://dc1"),
            "directory.urls[0]",
        ),
        (with_directory("starttls = true"), "directory.urls[0]"),
        (
            with_directory("").replace(
                "ldaps://dc1.corp.example.com\", \"ldaps://dc2.corp.example.com:636",
                "ldap://dc1",
            ),
            "directory.ca_file",
        ),
        (
            with_directory("").replace("bind_dn = \"cn=fedgate,ou=services,dc=corp,dc=example,dc=com\"", ""),
            "directory.bind_dn",
        ),
        (
            with_directory("user_filter = \"(mail=alice)\""),
            "directory.user_filter",
        ),
        (
            with_directory("user_filter = \"(&(mail={upn})\""),
            "directory.user_filter",
        ),
        (
            with_directory("login_filter = \"(uid={user})\""),
            "directory.login_filter",
        ),
        (
            with_directory("disabled_filter = \"(uid={login})\""),
            "directory.disabled_filter",
        ),
        (with_directory("upn_attribute = \"mail)(x\""), "directory.upn_attribute"),
        (with_directory("timeout = \"0s\""), "directory.timeout"),
        (with_directory("max_binds = 0"), "directory.max_binds"),
        (with_directory("domain = \"CORP\\\\X\""), "directory.domain"),
        (with_directory("bind_name = \"{upn}\""), "directory.bind_name"),
        (with_directory("bogus = 1"), "directory.bogus"),
        (
            with_directory("").replace("base_dn = \"ou=people,dc=corp,dc=example,dc=com\"", ""),
            "directory.base_dn",
        ),
    ];
    for (text, want) in cases {
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains(want), "expected {want:?} in {err:?}");
    }
}

#[test]
fn portal_keys_and_mfa_routes() {
    let mfa = MINIMAL.replace("realm = \"none\"", "realm = \"cloud\"\nbrowser = \"mfa\"");
    let err = parse(&mfa).unwrap_err().to_string();
    assert!(err.contains("route[0].browser") && err.contains("[portal]"), "{err}");
    let with_portal = format!("{mfa}\n[portal]\nissuer = \"Contoso\"\n");
    let c = parse(&with_portal).unwrap();
    let p = c.portal.unwrap();
    assert_eq!((p.path.as_str(), p.issuer.as_str()), ("/portal", "Contoso"));
    assert_eq!(p.session_idle, Duration::from_secs(1800));
    for (extra, key) in [
        ("[portal]\nissuer = \"A:B\"", "portal.issuer"),
        ("[portal]\npath = \"portal\"", "portal.path"),
        ("[portal]\nsession_idle = \"soon\"", "portal.session_idle"),
    ] {
        let err = parse(&format!("{MINIMAL}\n{extra}\n")).unwrap_err().to_string();
        assert!(err.contains(key), "expected {key} in {err}");
    }
    let clash = MINIMAL.replace("\"/whoami\"", "\"/portal/x\"") + "\n[portal]\n";
    assert!(parse(&clash).unwrap_err().to_string().contains("route[0].path"));
    assert!(parse(&format!("{MINIMAL}\n[portal]\nenabled = false\n"))
        .unwrap()
        .portal
        .is_none());
}

#[test]
fn lockout_keys() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(
        (c.auth.lockout_threshold, c.auth.lockout_duration),
        (10, Duration::from_secs(60))
    );
    assert_eq!(
        (
            c.auth.lockout_max_duration,
            c.auth.lockout_source_threshold,
            c.auth.lockout_source_window,
            c.auth.lockout_max_entries
        ),
        (Duration::from_secs(3600), 20, Duration::from_secs(600), 100_000)
    );
    let off = parse(&format!("{MINIMAL}\n[lockout]\nthreshold = 0\n")).unwrap();
    assert_eq!(off.auth.lockout_threshold, 0);
    let set = parse(&format!(
        "{MINIMAL}\n[lockout]\nmax_duration = \"10m\"\nsource_threshold = 0\nsource_window = \"1m\"\nmax_entries = 500\n"
    ))
    .unwrap();
    assert_eq!(
        (
            set.auth.lockout_max_duration,
            set.auth.lockout_source_threshold,
            set.auth.lockout_source_window,
            set.auth.lockout_max_entries
        ),
        (Duration::from_secs(600), 0, Duration::from_secs(60), 500)
    );
    for (extra, key) in [
        ("[lockout]\nthreshold = -1", "lockout.threshold"),
        ("[lockout]\nduration = \"0s\"", "lockout.duration"),
        ("[lockout]\nlimit = 3", "lockout.limit"),
        ("[lockout]\nsource_threshold = -2", "lockout.source_threshold"),
        ("[lockout]\nsource_window = \"soon\"", "lockout.source_window"),
        ("[lockout]\nmax_entries = 1", "lockout.max_entries"),
        (
            "[lockout]\nduration = \"2h\"\nmax_duration = \"1h\"",
            "lockout.max_duration",
        ),
    ] {
        let err = parse(&format!("{MINIMAL}\n{extra}\n")).unwrap_err().to_string();
        assert!(err.contains(key), "expected {key} in {err}");
    }
}

#[test]
fn store_keys_for_postgres() {
    let c = parse(&format!(
        "{MINIMAL}\n[store]\nurl = \"postgres://fedgate@db.corp.example.com:5432/fedgate\"\n\
         password_file = \"/etc/fedgate/db-password\"\nca_file = \"/etc/fedgate/db-ca.pem\"\n"
    ))
    .unwrap();
    assert_eq!(c.store.url, "postgres://fedgate@db.corp.example.com:5432/fedgate");
    assert_eq!(
        c.store.access.password_file.as_deref(),
        Some(Path::new("/etc/fedgate/db-password"))
    );
    assert_eq!(
        c.store.access.ca_file.as_deref(),
        Some(Path::new("/etc/fedgate/db-ca.pem"))
    );

    // A SQLite store has neither key.
    for key in ["password_file", "ca_file"] {
        let err = parse(&format!("{MINIMAL}\n[store]\n{key} = \"/etc/x\"\n")).unwrap_err();
        assert!(err.to_string().contains(&format!("store.{key}")), "{err}");
    }
    // Other URLs are named without the password they carry.
    let err = parse(&format!("{MINIMAL}\n[store]\nurl = \"mysql://u:hunter2@db/x\"\n")).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("store.url") && msg.contains("postgres://") && !msg.contains("hunter2"),
        "{msg}"
    );
}

#[test]
fn admin_client_certificates_need_admin_tls() {
    let with = |admin: &str| parse(&format!("{MINIMAL}\n[admin]\nlisten = \"127.0.0.1:9090\"\n{admin}\n"));
    let plain = with("").unwrap().admin.unwrap();
    assert!(!plain.tls);
    assert_eq!(plain.client_ca_file, None);
    let err = with("client_ca_file = \"ca.pem\"").unwrap_err();
    assert!(err.to_string().starts_with("admin.client_ca_file: "), "{err}");
    assert!(err.to_string().contains("admin.tls = true"), "{err}");
    let tls = with("tls = true\nclient_ca_file = \"ca.pem\"").unwrap().admin.unwrap();
    assert!(tls.tls);
    assert_eq!(tls.client_ca_file, Some(PathBuf::from("ca.pem")));
}

fn with_smtp(keys: &str) -> Result<Config, ConfigError> {
    parse(&format!(
        "{MINIMAL}\n[smtp]\nfrom = \"IT <it@corp.example.com>\"\nportal_url = \"https://mail.corp.example.com/portal\"\n{keys}\n"
    ))
}

fn smtp_error(keys: &str) -> String {
    with_smtp(keys).unwrap_err().to_string()
}

#[test]
fn smtp_defaults_to_starttls_on_587_and_the_shipped_template() {
    let c = with_smtp("host = \"smtp.corp.example.com\"").unwrap();
    let s = c.smtp.unwrap();
    assert_eq!((s.tls, s.port), (SmtpTls::Starttls, 587));
    assert_eq!(s.template, PathBuf::from("config/enrolment-notice.txt"));
    assert_eq!(s.timeout, Duration::from_secs(30));
    assert!(!s.auto);
    assert_eq!(s.organization, "IT");
    let implicit = with_smtp("host = \"smtp.corp.example.com\"\ntls = \"implicit\"").unwrap();
    assert_eq!(implicit.smtp.unwrap().port, 465);
    let old_spelling = with_smtp("host = \"smtp.corp.example.com\"\nstarttls = true").unwrap();
    assert_eq!(old_spelling.smtp.unwrap().tls, SmtpTls::Starttls);
    assert!(parse(MINIMAL).unwrap().smtp.is_none());
}

#[test]
fn smtp_never_sends_unencrypted_off_loopback_nor_a_password_in_clear() {
    let msg = smtp_error("host = \"smtp.corp.example.com\"\ntls = \"none\"");
    assert!(msg.starts_with("smtp.tls:") && msg.contains("allow_plaintext"), "{msg}");
    with_smtp("host = \"smtp.corp.example.com\"\ntls = \"none\"\nallow_plaintext = true").unwrap();
    with_smtp("host = \"127.0.0.1\"\ntls = \"none\"").unwrap();
    with_smtp("host = \"[::1]\"\ntls = \"none\"").unwrap();
    let msg = smtp_error("host = \"127.0.0.1\"\ntls = \"none\"\nusername = \"u\"\npassword_file = \"p\"");
    assert!(msg.starts_with("smtp.username:"), "{msg}");
    let msg = smtp_error("host = \"h.example\"\nusername = \"u\"");
    assert!(msg.starts_with("smtp.password_file:"), "{msg}");
    let msg = smtp_error("host = \"h.example\"\ntls = \"ssl\"");
    assert!(msg.starts_with("smtp.tls:") && msg.contains("\"ssl\""), "{msg}");
    let msg = smtp_error("host = \"h.example\"\ntls = \"none\"\nstarttls = false");
    assert!(msg.starts_with("smtp.starttls:"), "{msg}");
}

#[test]
fn smtp_timeout_is_bounded_by_the_notice_claim() {
    with_smtp("host = \"h.example\"\ntimeout = \"60s\"").unwrap();
    for bad in ["61s", "5m"] {
        let msg = smtp_error(&format!("host = \"h.example\"\ntimeout = \"{bad}\""));
        assert!(
            msg.starts_with("smtp.timeout:") && msg.contains("at most 60s"),
            "{bad}: {msg}"
        );
    }
}

#[test]
fn smtp_requires_a_host_a_sender_and_the_portal_url() {
    assert!(smtp_error("").starts_with("smtp.host:"));
    let no_url = parse(&format!(
        "{MINIMAL}\n[smtp]\nhost = \"h\"\nfrom = \"it@corp.example.com\"\n"
    ))
    .unwrap_err();
    assert!(no_url.to_string().starts_with("smtp.portal_url:"), "{no_url}");
    let bad_from = parse(&format!(
        "{MINIMAL}\n[smtp]\nhost = \"h\"\nfrom = \"it at corp\"\nportal_url = \"https://x.example/portal\"\n"
    ))
    .unwrap_err();
    assert!(bad_from.to_string().starts_with("smtp.from:"), "{bad_from}");
    let msg = smtp_error("host = \"h.example\"\nunknown = 1");
    assert!(msg.contains("unknown"), "{msg}");
}

#[test]
fn forward_auth_needs_a_path_of_its_own() {
    let with = |table: &str| parse(&format!("{MINIMAL}\n{table}"));
    let c = with("[forward_auth]\npath = \"/_fedgate/auth/\"\n").unwrap();
    let f = c.forward_auth.unwrap();
    assert_eq!(f.path, "/_fedgate/auth");
    assert_eq!(f.secret_header, "x-fedgate-secret");
    assert_eq!(f.secret_file, None);
    assert!(parse(MINIMAL).unwrap().forward_auth.is_none());

    let err = |table: &str| with(table).unwrap_err().to_string();
    assert!(err("[forward_auth]\nsecret_file = \"x\"\n").starts_with("forward_auth.path: required"));
    for bad in ["_fedgate", "/", "/a/../b", "/a//b", "/a?b", "/a%2Fb"] {
        let e = err(&format!("[forward_auth]\npath = \"{bad}\"\n"));
        assert!(
            e.starts_with("forward_auth.path: expected a canonical path"),
            "{bad}: {e}"
        );
    }
    // A route above the endpoint keeps every other path.
    with("[forward_auth]\npath = \"/WhoAmI/auth\"\n").unwrap();
    // A route at or under the endpoint is refused; one above it is fine.
    let e = err("[forward_auth]\npath = \"/WHOAMI\"\n");
    assert!(
        e.starts_with("route[0].path: \"/whoami\" is at or under forward_auth.path \"/WHOAMI\""),
        "{e}"
    );
    with("[forward_auth]\npath = \"/whoami-auth\"\n").unwrap();
    let catch_all = MINIMAL.replace("path = \"/whoami\"", "path = \"/\"");
    parse(&format!("{catch_all}\n[forward_auth]\npath = \"/_fedgate/auth\"\n")).unwrap();
    // Nor may it share the portal's path, either way round.
    for (portal, endpoint) in [("/portal", "/portal/auth"), ("/p/q", "/p"), ("/portal", "/Portal")] {
        let e = err(&format!(
            "[portal]\npath = \"{portal}\"\n[forward_auth]\npath = \"{endpoint}\"\n"
        ));
        assert!(e.starts_with("forward_auth.path: ") && e.contains("portal.path"), "{e}");
    }
    for header in ["Authorization", "X-Forwarded-For", "Remote-User", "bad header"] {
        let e = err(&format!(
            "[forward_auth]\npath = \"/_fedgate/auth\"\nsecret_header = \"{header}\"\n"
        ));
        assert!(e.starts_with("forward_auth.secret_header: "), "{e}");
    }
}

#[test]
fn a_route_without_upstream_only_decides() {
    let c = parse(&MINIMAL.replace("upstream = \"builtin:whoami\"\n", "")).unwrap();
    assert_eq!(c.routes[0].upstream, Upstream::DecideOnly);
    assert_eq!(c.routes[0].upstream.to_string(), "none (decide only)");
}
