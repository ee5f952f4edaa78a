use std::path::Path;

use super::*;
use crate::config::Config;

const BASE: &str = r#"
[server]
listen_plain = ["127.0.0.1:8080"]

[portal]
path = "/portal"

[[route]]
name = "activesync"
path = "/Microsoft-Server-ActiveSync"
upstream = "builtin:whoami"
realm = "cloud"
"#;

fn parse(extra: &str) -> Result<Config, ConfigError> {
    Config::parse(&format!("{BASE}\n{extra}"), Path::new("test.toml"))
}

fn err(extra: &str) -> String {
    parse(extra).unwrap_err().to_string()
}

#[test]
fn defaults_and_backends() {
    let c = parse(
        r#"
[mail_auth]
path = "/_fedgate/mail"

[[mail_backend]]
protocol = "imap"
address = "127.0.0.1:1143"

[[mail_backend]]
protocol = "smtp"
address = "[::1]:1587"
realm = "onprem"
"#,
    )
    .unwrap();
    let m = c.mail.unwrap();
    assert_eq!(m.path, "/_fedgate/mail");
    assert_eq!(m.secret_file, None);
    assert_eq!(m.secret_header, "x-fedgate-secret");
    assert!(!m.rewrite_user);
    assert_eq!(m.max_attempts, 3);
    assert_eq!(m.wait, Duration::from_secs(2));
    let imap = m.backend(MailProtocol::Imap).unwrap();
    assert_eq!(imap.realm, Realm::Cloud);
    assert_eq!(imap.password_file, None);
    assert_eq!(m.backend(MailProtocol::Smtp).unwrap().realm, Realm::Onprem);
    assert_eq!(m.backend(MailProtocol::Pop3), None);

    // A backend secret needs the caller secret and the canonical user.
    let c = parse(
        "[mail_auth]\npath = \"/m\"\nsecret_file = \"s\"\nrewrite_user = true\n\
         [[mail_backend]]\nprotocol = \"imap\"\naddress = \"127.0.0.1:1143\"\npassword_file = \"config/imap.password\"\n",
    )
    .unwrap();
    let imap = c.mail.unwrap().backend(MailProtocol::Imap).unwrap().clone();
    assert_eq!(imap.password_file.as_deref(), Some(Path::new("config/imap.password")));
}

#[test]
fn mail_protocols_are_route_names_for_policies_only_with_the_endpoint() {
    let policy = "[[policy]]\nname = \"no-imap\"\nroutes = [\"imap\"]\naction = \"deny\"\n";
    parse(&format!("[mail_auth]\npath = \"/_fedgate/mail\"\n{policy}")).unwrap();
    let e = err(policy);
    assert!(e.contains("imap"), "{e}");
}

#[test]
fn bad_values_name_their_key() {
    let cases = [
        ("[mail_auth]\nsecret_file = \"x\"\n", "mail_auth.path: required"),
        ("[mail_auth]\npath = \"mail\"\n", "mail_auth.path: expected"),
        ("[mail_auth]\npath = \"/a/../mail\"\n", "mail_auth.path: expected"),
        ("[mail_auth]\npath = \"/portal/mail\"\n", "mail_auth.path: \"/portal/mail\" is under portal.path"),
        (
            "[mail_auth]\npath = \"/microsoft-server-activesync\"\n",
            "mail_auth.path: \"/microsoft-server-activesync\" is route[0].path too",
        ),
        (
            "[mail_auth]\npath = \"/m\"\nrewrite_user = true\n[[mail_backend]]\nprotocol = \"imap\"\naddress = \"127.0.0.1:1\"\npassword_file = \"p\"\n",
            "mail_backend[0].password_file: the backend's secret would be answered to whoever calls the endpoint",
        ),
        (
            "[mail_auth]\npath = \"/m\"\nsecret_file = \"s\"\n[[mail_backend]]\nprotocol = \"imap\"\naddress = \"127.0.0.1:1\"\npassword_file = \"p\"\n",
            "mail_backend[0].password_file: with the backend's secret, the backend must be told the canonical user",
        ),
        (
            "[mail_auth]\npath = \"/m\"\nsecret_file = \"s\"\nsecret_header = \"Auth-Pass\"\n",
            "mail_auth.secret_header: \"Auth-Pass\" is a header nginx sends",
        ),
        (
            "[mail_auth]\npath = \"/m\"\nsecret_file = \"s\"\nsecret_header = \"Client-IP\"\n",
            "mail_auth.secret_header: \"Client-IP\" is a header nginx sends",
        ),
        (
            "[forward_auth]\npath = \"/_fedgate\"\n[mail_auth]\npath = \"/_Fedgate/mail\"\n",
            "mail_auth.path: \"/_Fedgate/mail\" is at or under forward_auth.path \"/_fedgate\"",
        ),
        (
            "[forward_auth]\npath = \"/_fedgate/x\"\n[mail_auth]\npath = \"/_fedgate/x\"\n",
            "mail_auth.path: \"/_fedgate/x\" is at or under forward_auth.path",
        ),
        ("[mail_auth]\npath = \"/m\"\nmax_attempts = 0\n", "mail_auth.max_attempts: must be between 1 and 20"),
        ("[mail_auth]\npath = \"/m\"\nwait = \"1500ms\"\n", "mail_auth.wait: whole seconds"),
        ("[mail_auth]\npath = \"/m\"\nwait = \"31s\"\n", "mail_auth.wait: whole seconds"),
        ("[mail_auth]\npath = \"/m\"\nsecret_header = \"X-A\"\n", "mail_auth.secret_header: names the header"),
        (
            "[mail_auth]\npath = \"/m\"\nsecret_file = \"s\"\nsecret_header = \"bad header\"\n",
            "mail_auth.secret_header: not a valid header name",
        ),
        ("[[mail_backend]]\nprotocol = \"imap\"\naddress = \"127.0.0.1:1\"\n", "mail_backend: [[mail_backend]] tables need [mail_auth]"),
        (
            "[mail_auth]\npath = \"/m\"\n[[mail_backend]]\nprotocol = \"imap4\"\naddress = \"127.0.0.1:1\"\n",
            "mail_backend[0].protocol: expected \"imap\", \"pop3\" or \"smtp\"",
        ),
        (
            "[mail_auth]\npath = \"/m\"\n[[mail_backend]]\nprotocol = \"imap\"\naddress = \"mail.example.com:143\"\n",
            "not a host name",
        ),
        (
            "[mail_auth]\npath = \"/m\"\n[[mail_backend]]\nprotocol = \"imap\"\naddress = \"127.0.0.1:1\"\nrealm = \"none\"\n",
            "mail_backend[0].realm: expected \"cloud\" or \"onprem\"",
        ),
        (
            "[mail_auth]\npath = \"/m\"\n[[mail_backend]]\nprotocol = \"pop3\"\naddress = \"127.0.0.1:1\"\n\
             [[mail_backend]]\nprotocol = \"pop3\"\naddress = \"127.0.0.1:2\"\n",
            "mail_backend[1].protocol: a second backend for pop3",
        ),
        ("[mail_auth]\npath = \"/m\"\nsecret = \"inline\"\n", "secret"),
    ];
    for (extra, expected) in cases {
        let e = err(extra);
        assert!(e.contains(expected), "{extra}\n=> {e}");
    }
}

#[test]
fn a_route_named_like_a_mail_protocol_is_refused_with_the_endpoint() {
    let text = BASE.replace("name = \"activesync\"", "name = \"smtp\"");
    let with = Config::parse(&format!("{text}\n[mail_auth]\npath = \"/m\"\n"), Path::new("t.toml"));
    let e = with.unwrap_err().to_string();
    assert!(e.starts_with("route[0].name: \"smtp\" names the mail sign-ins"), "{e}");
    Config::parse(&text, Path::new("t.toml")).unwrap();
}
