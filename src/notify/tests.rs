use std::path::Path;

use super::template::{Template, TemplateError, Values};
use super::*;
use crate::model::{Upn, UserId};
use crate::store::NoticeState;

const FILE: &str = "config/enrolment-notice.txt";

fn values<'a>(display_name: &'a str) -> Values<'a> {
    Values {
        display_name,
        upn: "alice@contoso.example",
        mail: "alice@mail.contoso.example",
        portal_url: "https://mail.contoso.example/portal",
        organization: "Contoso",
    }
}

#[test]
fn the_shipped_template_is_valid_and_names_the_portal() {
    let template = Template::load(Path::new(FILE)).unwrap();
    let mail = template.render(&values("Alice Liddell"));
    assert!(mail.subject.contains("alice@contoso.example"), "{}", mail.subject);
    assert!(mail.body.contains("Hello Alice Liddell,"), "{}", mail.body);
    assert!(mail.body.contains("https://mail.contoso.example/portal"));
    assert!(mail.body.contains("app password"));
}

#[test]
fn placeholders_are_filled_and_braces_escaped() {
    let t = Template::parse(
        Path::new("t.txt"),
        "Subject: Hi {display_name}\n\n{upn} at {{portal}}: {portal_url}\n",
    )
    .unwrap();
    let mail = t.render(&values("Alice"));
    assert_eq!(mail.subject, "Hi Alice");
    assert_eq!(
        mail.body,
        "alice@contoso.example at {portal}: https://mail.contoso.example/portal\n"
    );
}

#[test]
fn an_unknown_placeholder_names_the_file_line_and_placeholder() {
    let err = Template::parse(Path::new("notice.txt"), "Subject: Hi\n\nline one\nDear {first_name},\n").unwrap_err();
    match &err {
        TemplateError::Unknown { line, name, .. } => assert_eq!((*line, name.as_str()), (4, "first_name")),
        other => panic!("{other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.starts_with("notice.txt line 4: unknown placeholder {first_name}"),
        "{text}"
    );
    let in_subject = Template::parse(Path::new("n.txt"), "Subject: {nope}\n\nbody\n").unwrap_err();
    assert!(
        matches!(in_subject, TemplateError::Unknown { line: 1, .. }),
        "{in_subject}"
    );
}

#[test]
fn malformed_templates_are_refused() {
    for (text, line) in [
        ("Hello\n\nbody\n", 1),
        ("Subject:   \n\nbody\n", 1),
        ("Subject: hi\nbody right away\n", 2),
        ("Subject: hi\n\n", 3),
        ("Subject: hi\n\nan {unclosed\n", 3),
        ("Subject: hi\n\nx\na lone } here\n", 4),
    ] {
        match Template::parse(Path::new("n.txt"), text) {
            Err(TemplateError::Malformed { line: found, .. }) => assert_eq!(found, line, "{text:?}"),
            other => panic!("{text:?}: {other:?}"),
        }
    }
}

#[test]
fn a_line_break_in_a_value_cannot_add_a_header_or_a_line() {
    let t = Template::parse(
        Path::new("t.txt"),
        "Subject: For {display_name}\n\nHello {display_name}.\n",
    )
    .unwrap();
    let mail = t.render(&values("Mallory\r\nBcc: victim@example.com"));
    assert_eq!(mail.subject, "For Mallory  Bcc: victim@example.com");
    assert!(!mail.subject.contains(['\r', '\n']));
    assert_eq!(mail.body.lines().count(), 1, "{:?}", mail.body);
}

fn candidate(upn: &str, source: UserSource, mail: Option<&str>, notice: Option<NoticeState>) -> NoticeCandidate {
    NoticeCandidate {
        user_id: UserId(1),
        upn: Upn::parse(upn).unwrap(),
        source,
        display_name: None,
        mail: mail.map(str::to_owned),
        history_id: 7,
        enabled_at: 1_000,
        notice,
    }
}

#[test]
fn directory_users_are_mailed_at_their_mail_attribute_and_cloud_users_at_their_upn() {
    let fed = candidate(
        "bob@corp.example",
        UserSource::Federated,
        Some(" bob.smith@mail.example "),
        None,
    );
    assert_eq!(address_of(&fed).unwrap(), "bob.smith@mail.example");
    let no_mail = candidate("carol@corp.example", UserSource::Federated, None, None);
    assert!(address_of(&no_mail).unwrap_err().contains("no mail attribute"));
    let empty = candidate("carol@corp.example", UserSource::Federated, Some("  "), None);
    assert!(address_of(&empty).is_err());
    let bad = candidate("dan@corp.example", UserSource::Federated, Some("not an address"), None);
    assert!(address_of(&bad).unwrap_err().contains("not a mail address"));
    let cloud = candidate("erin@corp.example", UserSource::Cloud, Some("ignored@x.example"), None);
    assert_eq!(address_of(&cloud).unwrap(), "erin@corp.example");
}

#[test]
fn claimed_notices_are_left_to_their_run_until_the_claim_runs_out() {
    let now = 50_000;
    let sending = |until| {
        Some(NoticeState {
            status: NoticeStatus::Sending,
            attempts: 1,
            claimed_until: Some(until),
        })
    };
    let failed = Some(NoticeState {
        status: NoticeStatus::Failed,
        attempts: 2,
        claimed_until: None,
    });
    let planned = plan(
        vec![
            candidate("a@x.example", UserSource::Cloud, None, None),
            candidate("b@x.example", UserSource::Cloud, None, sending(now + 1)),
            candidate("c@x.example", UserSource::Cloud, None, sending(now - 1)),
            candidate("d@x.example", UserSource::Cloud, None, failed),
            candidate("e@x.example", UserSource::Federated, None, None),
        ],
        now,
    );
    let kinds: Vec<&str> = planned
        .iter()
        .map(|p| match p {
            Planned::Send { .. } => "send",
            Planned::Busy { .. } => "busy",
            Planned::NoAddress { .. } => "no_address",
        })
        .collect();
    assert_eq!(kinds, ["send", "busy", "send", "send", "no_address"]);
}
