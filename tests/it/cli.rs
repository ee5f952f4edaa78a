//! The command line: check-config output and errors, serve failing fast.

use crate::support::fedgate::run_cli;

fn write_config(text: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fedgate.toml");
    std::fs::write(&path, text).unwrap();
    let p = path.display().to_string();
    (dir, p)
}

const GOOD: &str = r#"
[server]
listen = ["127.0.0.1:8443"]
listen_plain = ["127.0.0.1:8080"]

[[route]]
host = "mail.corp.example.com"
path = "/Microsoft-Server-ActiveSync"
upstream = "https://10.1.2.3:443"
realm = "none"

[[route]]
path = "/whoami"
upstream = "builtin:whoami"
realm = "none"
"#;

#[test]
fn check_config_prints_listeners_and_routes() {
    let (_dir, path) = write_config(GOOD);
    let (code, out, err) = run_cli(&["check-config", "--config", &path]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("tls    127.0.0.1:8443"), "{out}");
    assert!(out.contains("plain  127.0.0.1:8080"), "{out}");
    assert!(
        out.contains("route[0]  mail.corp.example.com/Microsoft-Server-ActiveSync  ->  https://10.1.2.3:443/"),
        "{out}"
    );
    assert!(out.contains("route[1]  */whoami  ->  builtin:whoami"), "{out}");

    let (code, out, _) = run_cli(&["check-config", "--json", "--config", &path]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["routes"][1]["upstream"], "builtin:whoami");
    assert_eq!(v["listeners"][0]["kind"], "tls");
}

#[test]
fn config_errors_name_the_key_and_exit_non_zero() {
    let cases = [
        (
            GOOD.replace("https://10.1.2.3:443", "htp://x"),
            "route[0].upstream: invalid URL \"htp://x\"",
        ),
        (
            GOOD.replace(
                "realm = \"none\"\n\n[[route]]",
                "realm = \"none\"\ncolour = \"red\"\n\n[[route]]",
            ),
            "route[0].colour",
        ),
        (
            GOOD.replace("[server]", "[server]\nheader_read_timeout = \"fast\""),
            "server.header_read_timeout",
        ),
        (GOOD.replace("[server]", "[serve]"), "serve"),
    ];
    for (text, want) in cases {
        let (_dir, path) = write_config(&text);
        let (code, out, err) = run_cli(&["check-config", "--config", &path]);
        assert_eq!(code, 2, "expected exit 2 for {want}: {out}{err}");
        assert!(err.contains(want), "expected {want:?} in {err:?}");
    }
    let (code, _, err) = run_cli(&["check-config", "--config", "/nonexistent/fedgate.toml"]);
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent/fedgate.toml"), "{err}");
}

#[test]
fn example_config_checks() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config/fedgate.toml");
    let (code, out, err) = run_cli(&["check-config", "--config", example]);
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn serve_fails_fast_naming_a_busy_address() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap();
    let (_dir, path) = write_config(&format!(
        "[server]\nlisten_plain = [\"{addr}\"]\n[[route]]\npath = \"/\"\nupstream = \"builtin:whoami\"\nrealm = \"none\"\n"
    ));
    let (code, _, err) = run_cli(&["serve", "--config", &path]);
    assert_eq!(code, 1);
    assert!(
        err.contains("server.listen_plain[0]") && err.contains(&addr.to_string()),
        "{err}"
    );
}
