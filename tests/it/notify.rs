//! `fedgate notify` and `[smtp] auto` against a real mail server (aiosmtpd
//! on loopback): who gets the enrolment notice, what it says, once and not
//! again, retried after the server was down or refused a recipient, over
//! STARTTLS with AUTH, and sent by a running `fedgate serve` on its own.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fedgate::model::{DirectoryAttributes, FederatedUser, MfaState, SystemClock, Upn};
use fedgate::store::{OpenMode, Store};
use serde_json::Value;

use crate::support::smtp::{unused_port, Options, SmtpSink};
use crate::support::Fedgate;

const ALICE: &str = "alice@contoso.example";
const BOB: &str = "bob@contoso.example";
const CAROL: &str = "carol@contoso.example";
const DANA: &str = "dana@contoso.example";
const ERIN: &str = "erin@contoso.example";
const PORTAL: &str = "https://mail.contoso.example/portal";

/// `[smtp]` to the loopback server on `port`, unencrypted, with `extra`.
fn smtp_section(port: u16, extra: &str) -> String {
    let template = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/enrolment-notice.txt");
    format!(
        "[smtp]\nhost = \"127.0.0.1\"\nport = {port}\ntls = \"none\"\nfrom = \"IT <it@contoso.example>\"\n\
         portal_url = \"{PORTAL}\"\norganization = \"Contoso\"\ntemplate = \"{}\"\ntimeout = \"5s\"\n{extra}\n",
        template.display()
    )
}

fn start(section: &str) -> Fedgate {
    Fedgate::builder()
        .section(section)
        .cloud_route("/whoami", "builtin:whoami", "")
        .start()
}

/// The store the server uses, opened as another process would.
async fn store_of(fedgate: &Fedgate) -> Arc<dyn Store> {
    let url = format!("sqlite://{}", fedgate.store_path().display());
    fedgate::store::open(&url, Arc::new(SystemClock), OpenMode::Existing)
        .await
        .expect("open the server's store")
}

/// A directory user, as a sync pass writes them, put in state `enabled`.
async fn directory_user(store: &dyn Store, upn: &str, display_name: Option<&str>, mail: Option<&str>) {
    let login = upn.split('@').next().unwrap().to_owned();
    let user = FederatedUser {
        upn: Upn::parse(upn).unwrap(),
        enabled: true,
        attributes: DirectoryAttributes {
            dn: format!("uid={login},ou=people,dc=contoso,dc=example"),
            anchor: Some(format!("anchor-{login}")),
            login: Some(login),
            display_name: display_name.map(str::to_owned),
            mail: mail.map(str::to_owned),
            groups: Vec::new(),
            password_changed: None,
        },
    };
    store.upsert_federated_user(&user).await.unwrap();
    store.set_mfa_state(&user.upn, MfaState::Enabled).await.unwrap();
}

fn upns(report: &Value, list: &str) -> Vec<String> {
    report[list]
        .as_array()
        .unwrap_or_else(|| panic!("no {list} in {report}"))
        .iter()
        .map(|e| e["upn"].as_str().unwrap().to_owned())
        .collect()
}

fn recipients(messages: &[Value]) -> Vec<String> {
    messages
        .iter()
        .map(|m| m["rcpt_tos"][0].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newly_enabled_users_get_one_notice_and_users_without_mail_are_listed() {
    let sink = SmtpSink::start();
    let fedgate = start(&smtp_section(sink.addr.port(), ""));
    let admin = fedgate.admin();
    admin.add_user(ALICE, "enabled", None);
    admin.add_user(BOB, "disabled", None);
    admin.add_user(CAROL, "enforced", None);
    let store = store_of(&fedgate).await;
    directory_user(
        &*store,
        DANA,
        Some("Dana Scully"),
        Some("dana.scully@mail.contoso.example"),
    )
    .await;
    directory_user(&*store, ERIN, Some("Erin"), None).await;

    let first = admin.run(&["--json", "notify"]).json();
    assert_eq!(upns(&first, "sent"), [ALICE, DANA]);
    assert_eq!(upns(&first, "failed"), Vec::<String>::new());
    assert_eq!(upns(&first, "no_address"), [ERIN]);
    assert!(first["no_address"][0]["error"]
        .as_str()
        .unwrap()
        .contains("no mail attribute"));

    let messages = sink.messages();
    assert_eq!(recipients(&messages), [ALICE, "dana.scully@mail.contoso.example"]);
    let alice = &messages[0];
    assert_eq!(
        alice["subject"],
        "Contoso: two-step sign-in is being turned on for alice@contoso.example"
    );
    assert_eq!(alice["from"], "IT <it@contoso.example>");
    assert_eq!(alice["content_type"], "text/plain");
    let body = alice["body"].as_str().unwrap();
    assert!(body.contains(PORTAL), "{body}");
    assert!(body.contains("Hello alice@contoso.example,"), "{body}");
    let dana = messages[1]["body"].as_str().unwrap();
    assert!(dana.contains("Hello Dana Scully,"), "{dana}");
    assert!(dana.contains("your account dana@contoso.example"), "{dana}");

    // Once: the next run sends nothing, and still names Erin.
    let again = admin.run(&["notify"]);
    assert_eq!(again.code, 0, "{}{}", again.stdout, again.stderr);
    assert!(
        again.stdout.contains(&format!("no address  {ERIN}")),
        "{}",
        again.stdout
    );
    assert!(
        again.stdout.contains("0 sent, 0 failed, 1 without a mail address"),
        "{}",
        again.stdout
    );
    assert_eq!(sink.messages().len(), 2);

    // Bob enabled later: his notice, and only his.
    admin.run(&["user", "set-state", "--state", "enabled", BOB]).success();
    let third = admin.run(&["--json", "notify"]).json();
    assert_eq!(upns(&third, "sent"), [BOB]);
    assert_eq!(
        recipients(&sink.messages()),
        [ALICE, "dana.scully@mail.contoso.example", BOB]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_notices_are_recorded_and_sent_by_a_later_run_exactly_once() {
    let port = unused_port();
    let fedgate = start(&smtp_section(port, ""));
    let admin = fedgate.admin();
    admin.add_user(ALICE, "enabled", None);
    admin.add_user(BOB, "enabled", None);

    // No mail server: both fail, exit 1, the reason named.
    let down = admin.run(&["--json", "notify"]);
    assert_eq!(down.code, 1, "{}{}", down.stdout, down.stderr);
    let down: Value = serde_json::from_str(&down.stdout).unwrap();
    assert_eq!(upns(&down, "failed"), [ALICE, BOB]);
    let error = down["failed"][0]["error"].as_str().unwrap();
    assert!(error.contains(&format!("127.0.0.1:{port}")), "{error}");

    // The server is back but refuses Bob: Alice's goes, Bob's fails again.
    let sink = SmtpSink::start_on(
        port,
        Options {
            refuse: vec![BOB.to_owned()],
            ..Options::default()
        },
    );
    let partly = admin.run(&["--json", "notify"]);
    assert_eq!(partly.code, 1, "{}{}", partly.stdout, partly.stderr);
    let partly: Value = serde_json::from_str(&partly.stdout).unwrap();
    assert_eq!(upns(&partly, "sent"), [ALICE]);
    assert_eq!(upns(&partly, "failed"), [BOB]);
    assert!(
        partly["failed"][0]["error"].as_str().unwrap().contains("550"),
        "{partly}"
    );
    assert_eq!(recipients(&sink.messages()), [ALICE]);
    drop(sink);

    // Bob's mailbox exists now: his notice, not Alice's again.
    let sink = SmtpSink::start_on(port, Options::default());
    let last = admin.run(&["--json", "notify"]).json();
    assert_eq!(upns(&last, "sent"), [BOB]);
    assert_eq!(recipients(&sink.messages()), [BOB]);
    let after = admin.run(&["--json", "notify"]).json();
    assert_eq!(upns(&after, "sent"), Vec::<String>::new());
    assert_eq!(sink.messages().len(), 1);

    let store = store_of(&fedgate).await;
    let notices = store.list_notices().await.unwrap();
    let attempts: Vec<(String, i64)> = notices.iter().map(|n| (n.status.to_string(), n.attempts)).collect();
    assert_eq!(attempts, [("sent".to_owned(), 2), ("sent".to_owned(), 3)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_prints_each_message_and_sends_and_records_nothing() {
    let sink = SmtpSink::start();
    let fedgate = start(&smtp_section(sink.addr.port(), ""));
    let admin = fedgate.admin();
    admin.add_user(ALICE, "enabled", None);

    let printed = admin.run(&["notify", "--dry-run"]).success();
    assert!(printed.contains("To: alice@contoso.example"), "{printed}");
    assert!(
        printed.contains("Subject: Contoso: two-step sign-in is being turned on for alice@contoso.example"),
        "{printed}"
    );
    assert!(printed.contains(PORTAL), "{printed}");
    assert!(printed.contains("(dry run: nothing sent or recorded)"), "{printed}");
    let json = admin.run(&["--json", "notify", "--dry-run"]).json();
    assert_eq!(json["dry_run"], true);
    assert_eq!(json["messages"][0]["to"], ALICE);
    assert!(sink.messages().is_empty());
    assert!(store_of(&fedgate).await.list_notices().await.unwrap().is_empty());

    let real = admin.run(&["--json", "notify"]).json();
    assert_eq!(upns(&real, "sent"), [ALICE]);
    assert_eq!(sink.messages().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_with_auto_sends_the_notices_itself() {
    let sink = SmtpSink::start();
    let fedgate = start(&smtp_section(sink.addr.port(), "auto = true\ninterval = \"1s\""));
    assert!(!fedgate.events("enrolment notices scheduled").is_empty());
    let admin = fedgate.admin();
    admin.add_user(ALICE, "enabled", None);
    let messages = sink.wait_messages(1, Duration::from_secs(20));
    assert_eq!(recipients(&messages), [ALICE]);
    // The job recorded it: a run from the command line has nothing to do.
    let run = admin.run(&["--json", "notify"]).json();
    assert_eq!(upns(&run, "sent"), Vec::<String>::new());
    fedgate.wait_log(Duration::from_secs(10), |v| v["message"] == "enrolment notice sent");
    assert_eq!(sink.messages().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notices_go_over_starttls_with_auth_to_a_server_of_the_configured_ca() {
    let certs = tempfile::tempdir().unwrap();
    let names = ["127.0.0.1".to_owned(), "localhost".to_owned()];
    crate::support::slapd::write_ca_and_server(certs.path(), "fedgate test mail CA", &names, "smtp");
    let sink = SmtpSink::start_on(
        0,
        Options {
            tls: Some((certs.path().join("smtp.pem"), certs.path().join("smtp.key"))),
            auth: Some(("fedgate".into(), "mail secret 7".into())),
            ..Options::default()
        },
    );
    let password = certs.path().join("smtp.password");
    crate::support::slapd::write_secret(&password, "mail secret 7\n");
    let section = |ca: &Path| {
        smtp_section(sink.addr.port(), "")
            .replace("tls = \"none\"", "tls = \"starttls\"")
            .replace(
                "timeout = \"5s\"",
                &format!(
                    "timeout = \"5s\"\nusername = \"fedgate\"\npassword_file = \"{}\"\nca_file = \"{}\"",
                    password.display(),
                    ca.display()
                ),
            )
    };
    let fedgate = start(&section(&certs.path().join("ca.pem")));
    let admin = fedgate.admin();
    admin.add_user(ALICE, "enabled", None);
    let sent = admin.run(&["--json", "notify"]).json();
    assert_eq!(upns(&sent, "sent"), [ALICE]);
    let messages = sink.messages();
    assert_eq!(messages[0]["tls"], true);
    assert_eq!(messages[0]["authenticated"], true);

    // A server whose certificate another CA signed is not sent to.
    let other = tempfile::tempdir().unwrap();
    crate::support::slapd::write_ca_and_server(other.path(), "another CA", &names, "smtp");
    let config = fedgate.config_path().to_owned();
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace(
            &certs.path().join("ca.pem").display().to_string(),
            &other.path().join("ca.pem").display().to_string(),
        ),
    )
    .unwrap();
    admin
        .run(&["user", "set-state", "--state", "disabled", ALICE])
        .success();
    admin.run(&["user", "set-state", "--state", "enabled", ALICE]).success();
    let refused = admin.run(&["--json", "notify"]);
    assert_eq!(refused.code, 1, "{}{}", refused.stdout, refused.stderr);
    assert_eq!(sink.messages().len(), 1);

    // A password file others can read is refused before anything is sent.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&password, std::fs::Permissions::from_mode(0o644)).unwrap();
    let open = admin.run(&["notify"]);
    assert_eq!(open.code, 2, "{}{}", open.stdout, open.stderr);
    assert!(open.stderr.contains("smtp.password_file"), "{}", open.stderr);
}

#[test]
fn a_template_with_an_unknown_placeholder_is_a_configuration_error() {
    let dir = tempfile::tempdir().unwrap();
    let template = dir.path().join("notice.txt");
    std::fs::write(&template, "Subject: Hello\n\nDear {first_name},\n").unwrap();
    let fedgate = start(
        &smtp_section(unused_port(), "").replace(
            &Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("config/enrolment-notice.txt")
                .display()
                .to_string(),
            &template.display().to_string(),
        ),
    );
    for args in [&["notify", "--dry-run"][..], &["check-config"][..]] {
        let out = fedgate.admin().run(args);
        assert_eq!(out.code, 2, "{args:?}: {}{}", out.stdout, out.stderr);
        let expected = format!("{} line 3: unknown placeholder {{first_name}}", template.display());
        assert!(out.stderr.contains(&expected), "{args:?}: {}", out.stderr);
    }
}
