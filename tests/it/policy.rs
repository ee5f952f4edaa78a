//! Client access policies through real listeners: the example config's
//! policy set with clients behind a trusted proxy (their address from
//! `X-Forwarded-For`) and a group read from a real slapd by the sync; a
//! denied source costing no directory bind; the denial reasons in the
//! sign-in log and the store; a changed set picked up by SIGHUP;
//! `check-config` and `policy test`.

use std::time::{Duration, Instant};

use http::{HeaderValue, StatusCode};
use serde_json::Value;

use crate::signin::Answer;
use crate::support::client::{basic, get_with};
use crate::support::slapd::Slapd;
use crate::support::Fedgate;
use crate::sync::{directory_section, sync_section};

const ALICE: &str = "alice@example.com";
const ALICE_PW: &str = "Alice's directory pw 1";
const BOB: &str = "bob@example.com";
const BOB_PW: &str = "Bob's directory pw 2";
const EAS: &str = "/Microsoft-Server-ActiveSync";
const CORP: &str = "10.1.2.3";
const OUTSIDE: &str = "203.0.113.5";
const BLOCKED_DN: &str = "cn=Mobile-Blocked,ou=Groups,dc=example,dc=com";

/// The example config's policy set, uncommented.
fn shipped_policies() -> String {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/fedgate.toml")).unwrap();
    let start = text.find("# --- example policy set ---\n").expect("example policy set");
    let end = text.find("# --- end of example policy set ---").expect("its end");
    let block: String = text[start..end]
        .lines()
        .skip(1)
        .map(|l| l.strip_prefix("# ").or_else(|| l.strip_prefix('#')).unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(block.contains("[[policy]]"), "{block}");
    block
}

/// A sign-in from `from` as a trusted proxy on loopback forwards it.
async fn sign_in(addr: std::net::SocketAddr, path: &str, user: &str, secret: &str, from: &str, agent: &str) -> Answer {
    get_with(
        addr,
        path,
        &[
            ("authorization", basic(user, secret)),
            ("x-forwarded-for", HeaderValue::from_str(from).unwrap()),
            ("user-agent", HeaderValue::from_str(agent).unwrap()),
        ],
    )
    .await
}

fn status(answer: &Answer) -> StatusCode {
    answer.0
}

/// The newest record of the user agent `agent`.
fn record<'r>(records: &'r [Value], agent: &str) -> Option<&'r Value> {
    records.iter().find(|r| r["user_agent"] == agent)
}

/// Waits until the sync recorded `upn` (with directory groups when
/// `with_groups`).
fn wait_synced(fedgate: &Fedgate, upn: &str, with_groups: bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = fedgate.admin().run(&["--json", "user", "show", upn]);
        if out.code == 0 {
            let shown: Value = serde_json::from_str(&out.stdout).unwrap();
            let groups = &shown["directory"]["groups"];
            if !with_groups || groups.as_array().is_some_and(|g| !g.is_empty()) {
                return;
            }
        }
        assert!(Instant::now() < deadline, "{upn} not synced with groups: {out:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_shipped_policies_decide_by_network_credential_and_group() {
    let slapd = Slapd::start();
    slapd.add_user("alice", ALICE, ALICE_PW);
    slapd.add_user("bob", BOB, BOB_PW);
    slapd.modify(&format!(
        "dn: {}\nchangetype: modify\nadd: businessCategory\nbusinessCategory: {BLOCKED_DN}\n",
        Slapd::user_dn("alice")
    ));
    let fedgate = Fedgate::builder()
        .server("trusted_proxies = [\"127.0.0.1/32\"]")
        .section(&directory_section(
            &slapd,
            Slapd::PEOPLE_DN,
            "timeout = \"2s\"\ngroups_attribute = \"businessCategory\"",
        ))
        .section(&sync_section("interval = \"1s\"\nfull_every = \"2s\""))
        .cloud_route("/whoami", "builtin:whoami", "")
        .cloud_route(EAS, "builtin:whoami", "name = \"activesync\"")
        .section(&shipped_policies())
        .start();
    let admin = fedgate.admin();
    wait_synced(&fedgate, ALICE, true);
    wait_synced(&fedgate, BOB, false);
    admin.allow_app_passwords(true);
    let alice_app = admin.create_app_password(ALICE, "phone");
    let bob_app = admin.create_app_password(BOB, "phone");
    let addr = fedgate.plain;

    // Organizational passwords: on the corporate network only, and a
    // denied source costs no bind.
    let corp = sign_in(addr, "/whoami", BOB, BOB_PW, CORP, "bob-pw-corp").await;
    assert_eq!(status(&corp), StatusCode::OK, "{corp:?}");
    let binds = slapd.bind_count();
    let outside = sign_in(addr, "/whoami", BOB, BOB_PW, OUTSIDE, "bob-pw-outside").await;
    assert_eq!(status(&outside), StatusCode::UNAUTHORIZED, "{outside:?}");
    let wrong = sign_in(addr, "/whoami", BOB, "not the password", OUTSIDE, "bob-wrong-outside").await;
    assert_eq!(status(&wrong), StatusCode::UNAUTHORIZED);
    assert_eq!(slapd.bind_count(), binds, "a denied source reached the directory");

    // App passwords from anywhere; the group stays off ActiveSync whatever
    // the credential, and may use the other routes.
    let bob_eas = sign_in(addr, EAS, BOB, &bob_app, OUTSIDE, "bob-app-eas").await;
    assert_eq!(status(&bob_eas), StatusCode::OK, "{bob_eas:?}");
    let alice_web = sign_in(addr, "/whoami", ALICE, &alice_app, OUTSIDE, "alice-app-whoami").await;
    assert_eq!(status(&alice_web), StatusCode::OK, "{alice_web:?}");
    let alice_eas = sign_in(addr, EAS, ALICE, &alice_app, OUTSIDE, "alice-app-eas").await;
    assert_eq!(status(&alice_eas), StatusCode::UNAUTHORIZED, "{alice_eas:?}");
    let alice_eas_pw = sign_in(addr, EAS, ALICE, ALICE_PW, CORP, "alice-pw-eas").await;
    assert_eq!(status(&alice_eas_pw), StatusCode::UNAUTHORIZED, "{alice_eas_pw:?}");

    let want = [
        ("bob-pw-corp", "password", None),
        ("bob-pw-outside", "policy_denied", Some("org-passwords-corp-only")),
        ("bob-wrong-outside", "policy_denied", Some("org-passwords-corp-only")),
        ("bob-app-eas", "app_password", None),
        ("alice-app-whoami", "app_password", None),
        ("alice-app-eas", "policy_denied", Some("mobile-blocked-off-activesync")),
        ("alice-pw-eas", "policy_denied", Some("mobile-blocked-off-activesync")),
    ];
    let records = admin.wait_signins("every case", |records| {
        want.iter().all(|(agent, _, _)| record(records, agent).is_some())
    });
    for (agent, reason, policy) in want {
        let r = record(&records, agent).unwrap();
        assert_eq!(r["reason"], reason, "{agent}: {r}");
        assert_eq!(r["policy"].as_str(), policy, "{agent}: {r}");
        assert_eq!(r["success"], policy.is_none(), "{agent}: {r}");
    }
    let outside = record(&records, "bob-pw-outside").unwrap();
    assert_eq!(outside["client_ip"], OUTSIDE, "the forwarded address is the client's");

    // The sign-in log says the same, with the name.
    for (agent, reason) in [
        ("bob-pw-outside", "policy_denied:org-passwords-corp-only"),
        ("alice-app-eas", "policy_denied:mobile-blocked-off-activesync"),
        ("bob-app-eas", "app_password"),
    ] {
        fedgate.wait_log(Duration::from_secs(10), |v| {
            v["message"] == "sign-in" && v["user_agent"] == agent && v["reason"] == reason
        });
    }
    // And `fedgate signins` prints it.
    let table = admin.run(&["signins", "--user", ALICE]).success();
    assert!(table.contains("policy_denied:mobile-blocked-off-activesync"), "{table}");

    // Out of the group in the directory: once the sync says so, the same
    // (warm) app password is let onto ActiveSync.
    slapd.modify(&format!(
        "dn: {}\nchangetype: modify\ndelete: businessCategory\n",
        Slapd::user_dn("alice")
    ));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let again = sign_in(addr, EAS, ALICE, &alice_app, OUTSIDE, "alice-app-eas-after").await;
        if status(&again) == StatusCode::OK {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still refused after leaving the group: {again:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const CAROL: &str = "carol@example.com";
const CAROL_PW: &str = "carol's cloud password";

fn cloud_config(dir: &std::path::Path, policies: &str) -> String {
    Fedgate::builder()
        .server("trusted_proxies = [\"127.0.0.1/32\"]")
        .cloud_route("/whoami", "builtin:whoami", "name = \"web\"")
        .section(policies)
        .config_text(dir)
}

const OUTSIDE_DENIED: &str =
    "[[policy]]\nname = \"outside-denied\"\nnot_networks = [\"10.0.0.0/8\"]\naction = \"deny\"\n";

#[tokio::test(flavor = "multi_thread")]
async fn a_changed_policy_set_applies_after_a_reload() {
    let fedgate = Fedgate::start_with(|dir| cloud_config(dir, ""));
    let admin = fedgate.admin();
    admin.add_user(CAROL, "disabled", Some(CAROL_PW));
    let addr = fedgate.plain;
    let before = sign_in(addr, "/whoami", CAROL, CAROL_PW, OUTSIDE, "before-reload").await;
    assert_eq!(status(&before), StatusCode::OK, "{before:?}");
    // Warm now: the cached verdict must not outlive the new policy set.
    let warm = sign_in(addr, "/whoami", CAROL, CAROL_PW, OUTSIDE, "warm").await;
    assert_eq!(status(&warm), StatusCode::OK);

    let dir = fedgate.config_path().parent().unwrap().to_owned();
    std::fs::write(fedgate.config_path(), cloud_config(&dir, OUTSIDE_DENIED)).unwrap();
    fedgate.signal("HUP");
    fedgate.wait_log(Duration::from_secs(10), |v| {
        v["message"] == "policies replaced" && v["policies"] == 1
    });
    let after = sign_in(addr, "/whoami", CAROL, CAROL_PW, OUTSIDE, "after-reload").await;
    assert_eq!(status(&after), StatusCode::UNAUTHORIZED, "{after:?}");
    let inside = sign_in(addr, "/whoami", CAROL, CAROL_PW, CORP, "inside").await;
    assert_eq!(status(&inside), StatusCode::OK, "{inside:?}");
    fedgate.wait_log(Duration::from_secs(10), |v| {
        v["message"] == "sign-in" && v["user_agent"] == "after-reload" && v["reason"] == "policy_denied:outside-denied"
    });

    // A set the running server cannot use is refused whole: the old one stays.
    std::fs::write(
        fedgate.config_path(),
        cloud_config(
            &dir,
            "[[policy]]\nname = \"all\"\naction = \"deny\"\n[[policy]]\nname = \"late\"\nroutes = [\"web\"]\naction = \"allow\"\n",
        ),
    )
    .unwrap();
    fedgate.signal("HUP");
    fedgate.wait_log(Duration::from_secs(10), |v| {
        v.to_string().contains("policy[1]") && v.to_string().contains("never reached")
    });
    let still = sign_in(addr, "/whoami", CAROL, CAROL_PW, CORP, "still-inside").await;
    assert_eq!(status(&still), StatusCode::OK, "{still:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn check_config_lists_the_policies_and_policy_test_explains() {
    let policies = format!(
        "{OUTSIDE_DENIED}[[policy]]\nname = \"outlook-off-web\"\nroutes = [\"web\"]\nuser_agents = [\"*Outlook*\"]\naction = \"deny\"\n"
    );
    let fedgate = Fedgate::start_with(|dir| cloud_config(dir, &policies));
    let admin = fedgate.admin();
    admin.add_user(CAROL, "enabled", Some(CAROL_PW));

    let listed = admin.run(&["check-config"]).success();
    let outside_line = listed
        .lines()
        .find(|l| l.starts_with("policy[0] outside-denied deny"))
        .unwrap_or_else(|| panic!("{listed}"));
    assert!(outside_line.contains("not_networks=[10.0.0.0/8]"), "{outside_line}");
    assert!(listed.contains("policy[1] outlook-off-web deny"), "{listed}");
    let json = admin.run(&["--json", "check-config"]).json();
    assert_eq!(json["policies"][1]["name"], "outlook-off-web");
    assert_eq!(json["policies"][1]["before_secret"], true);

    let test = |from: &str, agent: &str| {
        admin
            .run(&[
                "--json", "policy", "test", "--user", CAROL, "--route", "web", "--from", from, "--kind", "password",
                "--agent", agent,
            ])
            .json()
    };
    let outside = test(OUTSIDE, "Mail");
    assert_eq!(outside["decision"], "deny", "{outside}");
    assert_eq!(outside["reason"], "policy_denied:outside-denied");
    assert_eq!(outside["rules"][0]["result"], "matched");
    assert_eq!(outside["rules"][1]["result"], "not_reached");
    let outlook = test(CORP, "Microsoft Outlook 16.0");
    assert_eq!(outlook["policy"], "outlook-off-web", "{outlook}");
    assert_eq!(outlook["rules"][0]["result"], "request_differs");
    let fine = test(CORP, "Mail");
    assert_eq!(fine["decision"], "allow", "{fine}");
    assert_eq!(fine["policy"], Value::Null);
    let text = admin
        .run(&[
            "policy",
            "test",
            "--user",
            CAROL,
            "--route",
            "web",
            "--from",
            OUTSIDE,
            "--kind",
            "app_password",
        ])
        .success();
    assert!(text.contains("decision: deny by \"outside-denied\""), "{text}");
    let unknown = admin.run(&[
        "policy", "test", "--user", CAROL, "--route", "nope", "--from", CORP, "--kind", "password",
    ]);
    assert_eq!(unknown.code, 2, "{unknown:?}");
    assert!(unknown.stderr.contains("no [[route]] is named \"nope\""), "{unknown:?}");

    // A rule after a match-all is refused, naming both.
    let bad = fedgate.config_path().with_file_name("bad.toml");
    let dir = fedgate.config_path().parent().unwrap().to_owned();
    std::fs::write(
        &bad,
        cloud_config(
            &dir,
            "[[policy]]\nname = \"all\"\naction = \"deny\"\n[[policy]]\nname = \"late\"\ncredentials = [\"password\"]\naction = \"allow\"\n",
        ),
    )
    .unwrap();
    let refused = crate::support::admin::Admin::new(&bad).run(&["check-config"]);
    assert_eq!(refused.code, 2, "{refused:?}");
    assert!(
        refused.stderr.contains("policy[1]") && refused.stderr.contains("policy[0] (\"all\") matches every sign-in"),
        "{refused:?}"
    );
}
