use super::*;
use crate::model::UserId;

fn user(upn: &str, state: MfaState) -> User {
    User {
        id: UserId(1),
        upn: Upn::parse(upn).unwrap(),
        source: UserSource::Cloud,
        enabled: true,
        operator_enabled: true,
        directory_enabled: true,
        deleted: false,
        mfa_state: state,
        registered_at: None,
        created_at: 0,
        password_hash: None,
        directory: None,
    }
}

fn upns(page: &UserPage) -> Vec<&str> {
    page.users.iter().map(|u| u.upn.as_str()).collect()
}

#[test]
fn pages_follow_the_cursor_without_repeats_or_gaps() {
    let all: Vec<User> = ["d@x.org", "a@x.org", "c@x.org", "b@x.org", "e@x.org"]
        .iter()
        .map(|u| user(u, MfaState::Disabled))
        .collect();
    let mut query = UserQuery {
        limit: Some(2),
        ..UserQuery::default()
    };
    let first = page_users(all.clone(), &query).unwrap();
    assert_eq!(upns(&first), ["a@x.org", "b@x.org"]);
    query.cursor = first.next_cursor.clone();
    // A user added before the cursor is not shown; one after it is.
    let mut grown = all.clone();
    grown.push(user("aa@x.org", MfaState::Disabled));
    grown.push(user("f@x.org", MfaState::Disabled));
    let second = page_users(grown.clone(), &query).unwrap();
    assert_eq!(upns(&second), ["c@x.org", "d@x.org"]);
    query.cursor = second.next_cursor.clone();
    let third = page_users(grown, &query).unwrap();
    assert_eq!(upns(&third), ["e@x.org", "f@x.org"]);
    assert_eq!(third.next_cursor, None, "nothing after f");
}

#[test]
fn the_last_page_has_no_cursor() {
    let all = vec![user("a@x.org", MfaState::Disabled)];
    let page = page_users(
        all,
        &UserQuery {
            limit: Some(1),
            ..UserQuery::default()
        },
    )
    .unwrap();
    assert_eq!(page.next_cursor, None);
}

#[test]
fn filters_combine() {
    let mut off = user("bob@y.org", MfaState::Enforced);
    off.enabled = false;
    let all = vec![
        user("alice@x.org", MfaState::Enforced),
        user("alan@x.org", MfaState::Disabled),
        off,
    ];
    let query = UserQuery {
        state: Some(MfaState::Enforced),
        enabled: Some(true),
        ..UserQuery::default()
    };
    assert_eq!(upns(&page_users(all.clone(), &query).unwrap()), ["alice@x.org"]);
    let query = UserQuery {
        prefix: Some("AL".into()),
        ..UserQuery::default()
    };
    assert_eq!(
        upns(&page_users(all.clone(), &query).unwrap()),
        ["alan@x.org", "alice@x.org"]
    );
    let query = UserQuery {
        contains: Some("@y.".into()),
        ..UserQuery::default()
    };
    assert_eq!(upns(&page_users(all, &query).unwrap()), ["bob@y.org"]);
}

#[test]
fn a_forged_cursor_or_limit_is_a_bad_request_naming_the_field() {
    for (cursor, limit, field) in [
        (Some("%%%"), None, "cursor"),
        (Some("eDp5"), None, "cursor"),
        (None, Some(0), "limit"),
        (None, Some(MAX_PAGE + 1), "limit"),
    ] {
        let query = UserQuery {
            cursor: cursor.map(str::to_owned),
            limit,
            ..UserQuery::default()
        };
        match page_users(Vec::new(), &query) {
            Err(ManageError::BadRequest { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{cursor:?} {limit:?}: {other:?}"),
        }
    }
}

#[test]
fn codes_are_stable_and_input_errors_are_told_apart() {
    let unknown = ManageError::from(StoreError::UnknownUser {
        upn: Upn::parse("a@x.org").unwrap(),
    });
    assert_eq!(unknown.code(), "unknown_user");
    assert!(unknown.is_input());
    let down = ManageError::from(StoreError::Unavailable {
        url: "sqlite://x".into(),
        reason: "gone".into(),
    });
    assert_eq!(down.code(), "store_unavailable");
    assert!(!down.is_input());
}
