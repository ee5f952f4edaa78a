use super::*;
use crate::model::{MfaState, UserId};

const H: i64 = 3_600_000;

fn day(text: &str) -> Day {
    Day::parse(text).unwrap()
}

fn at(date: &str, hour: i64) -> i64 {
    day(date).start_ms() + hour * H
}

fn row(id: i64, user: i64, at: i64, state: MfaState, deleted: bool) -> StateRecord {
    StateRecord {
        id,
        user_id: UserId(user),
        at,
        state,
        deleted,
    }
}

fn range(from: &str, to: &str) -> DayRange {
    DayRange {
        from: day(from),
        to: day(to),
    }
}

#[test]
fn days_parse_and_print_as_utc_dates() {
    assert_eq!(Day::parse("1970-01-01").unwrap(), Day(0));
    assert_eq!(Day::parse("2024-02-29").unwrap().to_string(), "2024-02-29");
    assert_eq!(
        Day::parse("2000-03-01").unwrap().0 - Day::parse("2000-02-28").unwrap().0,
        2
    );
    assert_eq!(Day(20_000).to_string(), "2024-10-04");
    for bad in [
        "2023-02-29",
        "2024-13-01",
        "2024-1-01",
        "24-01-01",
        "2024/01/01",
        "",
        "2024-01-01T00:00",
    ] {
        assert!(matches!(Day::parse(bad), Err(ReportError::Input(_))), "{bad}");
    }
    assert_eq!(Day::of(day("2024-05-06").end_ms() - 1), day("2024-05-06"));
}

#[test]
fn ranges_default_to_thirty_days_ending_today_and_refuse_bad_ones() {
    let now = at("2024-05-31", 13);
    let r = DayRange::new(None, None, now).unwrap();
    assert_eq!((r.from, r.to), (day("2024-05-02"), day("2024-05-31")));
    assert!(DayRange::new(Some(day("2024-05-02")), Some(day("2024-05-01")), now).is_err());
    assert!(DayRange::new(Some(day("2023-01-01")), Some(day("2024-01-01")), now).is_ok());
    let too_long = DayRange::new(Some(day("2023-01-01")), Some(day("2024-01-02")), now).unwrap_err();
    assert!(too_long.to_string().contains("at most 366"), "{too_long}");
}

#[test]
fn a_user_counts_on_every_day_they_were_enabled_or_enforced() {
    let history = [
        // user 1: enabled on the 2nd at 10:00, enforced on the 3rd,
        // disabled on the 5th at 09:00: counted the 2nd to the 5th.
        row(1, 1, at("2024-05-02", 10), MfaState::Enabled, false),
        row(2, 1, at("2024-05-03", 8), MfaState::Enforced, false),
        row(3, 1, at("2024-05-05", 9), MfaState::Disabled, false),
        // user 2: disabled throughout.
        row(4, 2, at("2024-04-01", 0), MfaState::Disabled, false),
    ];
    let counts = enabled_users_per_day(&history, range("2024-05-01", "2024-05-06"));
    assert_eq!(counts.per_day, vec![0, 1, 1, 1, 1, 0]);
    assert_eq!(counts.in_range, 1);
}

#[test]
fn enabled_and_disabled_the_same_day_counts_that_day_only() {
    let history = [
        row(1, 1, at("2024-05-02", 10), MfaState::Enabled, false),
        row(2, 1, at("2024-05-02", 11), MfaState::Disabled, false),
        // enabled and disabled in the same millisecond (midnight): still
        // put in it, on that day
        row(3, 2, at("2024-05-04", 0), MfaState::Enforced, false),
        row(4, 2, at("2024-05-04", 0), MfaState::Disabled, false),
        // disabled exactly at midnight: not counted on the next day
        row(5, 3, at("2024-05-01", 12), MfaState::Enabled, false),
        row(6, 3, at("2024-05-02", 0), MfaState::Disabled, false),
    ];
    let counts = enabled_users_per_day(&history, range("2024-05-01", "2024-05-05"));
    assert_eq!(counts.per_day, vec![1, 1, 0, 1, 0]);
    assert_eq!(counts.in_range, 3);
}

#[test]
fn a_user_changed_twice_in_a_day_counts_once() {
    let history = [
        row(1, 1, at("2024-05-02", 1), MfaState::Enabled, false),
        row(2, 1, at("2024-05-02", 2), MfaState::Disabled, false),
        row(3, 1, at("2024-05-02", 3), MfaState::Enforced, false),
    ];
    let counts = enabled_users_per_day(&history, range("2024-05-01", "2024-05-03"));
    assert_eq!(counts.per_day, vec![0, 1, 1]);
}

#[test]
fn a_deleted_user_does_not_count_after_their_deletion() {
    let history = [
        row(1, 1, at("2024-04-20", 0), MfaState::Enforced, false),
        row(2, 1, at("2024-05-03", 15), MfaState::Enforced, true),
        // deleted while enabled, and back two days later
        row(3, 2, at("2024-04-20", 0), MfaState::Enabled, false),
        row(4, 2, at("2024-05-01", 0), MfaState::Enabled, true),
        row(5, 2, at("2024-05-04", 12), MfaState::Enabled, false),
    ];
    let counts = enabled_users_per_day(&history, range("2024-05-01", "2024-05-05"));
    assert_eq!(counts.per_day, vec![1, 1, 1, 1, 1]);
    let only_first: Vec<_> = history[..2].to_vec();
    assert_eq!(
        enabled_users_per_day(&only_first, range("2024-05-01", "2024-05-05")).per_day,
        vec![1, 1, 1, 0, 0]
    );
    let only_second: Vec<_> = history[2..].to_vec();
    assert_eq!(
        enabled_users_per_day(&only_second, range("2024-05-01", "2024-05-05")).per_day,
        vec![0, 0, 0, 1, 1]
    );
}

#[test]
fn days_before_the_history_begins_are_unknown_not_zero() {
    // Upgraded on the 3rd at noon: alice was enforced then.
    let begins = at("2024-05-03", 12);
    let history = [row(1, 1, begins, MfaState::Enforced, false)];
    let report = assemble(
        range("2024-05-01", "2024-05-04"),
        at("2024-05-04", 20),
        &[],
        &history,
        Some(begins),
        &[],
    );
    let enabled: Vec<Option<u64>> = report.days.iter().map(|d| d.enabled_users).collect();
    assert_eq!(enabled, vec![None, None, Some(1), Some(1)]);
    let partial: Vec<bool> = report.days.iter().map(|d| d.history_partial).collect();
    assert_eq!(partial, vec![false, false, true, false]);
    assert_eq!(report.enabled_users, None, "the range began before the history");
    let later = assemble(
        range("2024-05-04", "2024-05-04"),
        begins,
        &[],
        &history,
        Some(begins),
        &[],
    );
    assert_eq!(later.enabled_users, Some(1));
    // A store that never had a backfill knows its whole history.
    let fresh = assemble(range("2024-05-01", "2024-05-02"), begins, &[], &[], None, &[]);
    assert_eq!(fresh.days[0].enabled_users, Some(0));
}

#[test]
fn sign_ins_are_summed_per_day_kind_and_result() {
    let r = range("2024-05-01", "2024-05-02");
    let groups = [
        DailySignins {
            day: day("2024-05-01").0,
            credential: "password".into(),
            success: true,
            count: 5,
        },
        DailySignins {
            day: day("2024-05-01").0,
            credential: "app_password".into(),
            success: false,
            count: 2,
        },
        DailySignins {
            day: day("2024-05-02").0,
            credential: "app_password".into(),
            success: true,
            count: 7,
        },
    ];
    let report = assemble(r, at("2024-05-02", 1), &groups, &[], None, &[]);
    assert_eq!(report.days[0].signins["password"], Outcomes { success: 5, failure: 0 });
    assert_eq!(
        report.days[0].signins["app_password"],
        Outcomes { success: 0, failure: 2 }
    );
    assert_eq!(report.days[0].signins_total, 7);
    assert_eq!(report.days[1].signins["app_password"].success, 7);
    assert_eq!(report.days[1].signins["portal_session"], Outcomes::default());
    assert_eq!(report.signins_total, 14);
    let csv = to_csv(&report);
    let mut lines = csv.lines();
    assert_eq!(
        lines.next().unwrap(),
        "date,app_password_success,app_password_failure,none_success,none_failure,password_success,\
         password_failure,portal_session_success,portal_session_failure,signins_total,enabled_users,history_partial"
    );
    assert_eq!(lines.next().unwrap(), "2024-05-01,0,2,0,0,5,0,0,0,7,0,false");
}

#[test]
fn a_kind_seen_only_on_a_later_day_still_gets_its_columns() {
    let groups = [DailySignins {
        day: day("2024-05-02").0,
        credential: "passkey".into(),
        success: true,
        count: 3,
    }];
    let report = assemble(
        range("2024-05-01", "2024-05-02"),
        at("2024-05-02", 1),
        &groups,
        &[],
        None,
        &[],
    );
    let csv = to_csv(&report);
    assert!(csv.lines().next().unwrap().contains("other_success"), "{csv}");
    assert!(
        csv.lines().nth(2).unwrap().starts_with("2024-05-02,0,0,0,0,3,"),
        "{csv}"
    );
    assert!(to_table(&report).contains("other ok"), "{}", to_table(&report));
}

#[test]
fn csv_fields_are_quoted_and_defused() {
    assert_eq!(csv_field("phone"), "phone");
    assert_eq!(csv_field("a,b"), "\"a,b\"");
    assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
    assert_eq!(csv_field("=HYPERLINK(\"x\")"), "\"'=HYPERLINK(\"\"x\"\")\"");
    assert_eq!(csv_field("-1"), "'-1");
}
