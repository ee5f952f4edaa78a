//! The usage report (`fedgate report usage`): per UTC day, sign-ins by
//! credential kind and result (the per-authentication model) and the users
//! in MFA state `enabled` or `enforced` at any time that day (the
//! per-enabled-user model), and the app passwords nobody used for
//! [`STALE_AFTER_DAYS`] days (candidates for clean-up).
//!
//! This module owns the day arithmetic and the counting, as pure functions
//! over plain data ([`enabled_users_per_day`]), and the report's shape. It
//! reads the store through [`ReportStore`] only, and prints nothing: the
//! command line and the admin API render [`UsageReport`].

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use crate::model::{rfc3339, CredentialKind, MfaState};
use crate::store::{DailySignins, ReportStore, StaleAppPassword, StateRecord, StoreError};

/// Milliseconds in a day (UTC days have no leap seconds in unix time).
pub const MS_PER_DAY: i64 = 86_400_000;

/// The longest range one report covers, in days.
pub const MAX_DAYS: i64 = 366;

/// Days a report covers when `--from` is not given (ending with `--to`,
/// by default today).
pub const DEFAULT_DAYS: i64 = 30;

/// An app password unused for this many days is listed for clean-up.
pub const STALE_AFTER_DAYS: i64 = 90;

/// A report could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The range asked for is not one (exit 2, nothing read).
    #[error("{0}")]
    Input(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A UTC calendar day, as days since 1970-01-01.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Day(pub i64);

impl Day {
    /// The day `ms` (unix ms) falls in.
    pub fn of(ms: i64) -> Day {
        Day(ms.div_euclid(MS_PER_DAY))
    }

    /// Parses `YYYY-MM-DD`.
    pub fn parse(text: &str) -> Result<Day, ReportError> {
        let bad = || ReportError::Input(format!("expected a date as YYYY-MM-DD (a UTC day), got {text:?}"));
        let text = text.trim();
        let parts: Vec<&str> = text.split('-').collect();
        let [y, m, d] = parts.as_slice() else {
            return Err(bad());
        };
        if y.len() != 4 || m.len() != 2 || d.len() != 2 || !text.bytes().all(|b| b.is_ascii_digit() || b == b'-') {
            return Err(bad());
        }
        let (y, m, d): (i64, u32, u32) = (
            y.parse().map_err(|_| bad())?,
            m.parse().map_err(|_| bad())?,
            d.parse().map_err(|_| bad())?,
        );
        if !(1..=12).contains(&m) || d < 1 || d > days_in_month(y, m) {
            return Err(bad());
        }
        Ok(Day(days_from_civil(y, m, d)))
    }

    /// The first millisecond of the day.
    pub fn start_ms(self) -> i64 {
        self.0 * MS_PER_DAY
    }

    /// The first millisecond of the next day.
    pub fn end_ms(self) -> i64 {
        (self.0 + 1) * MS_PER_DAY
    }
}

impl fmt::Display for Day {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (y, m, d) = civil_from_days(self.0);
        write!(f, "{y:04}-{m:02}-{d:02}")
    }
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (the well-known
/// era-based conversion: 400-year eras of 146,097 days).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The inverse of [`days_from_civil`].
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    // Invariant: d is in 1..=31 and m in 1..=12 by construction.
    (y, m as u32, d as u32)
}

/// The days a report covers, both ends included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DayRange {
    pub from: Day,
    pub to: Day,
}

impl DayRange {
    /// The range asked for: `to` defaults to today (the day of `now`),
    /// `from` to [`DEFAULT_DAYS`] days ending with `to`. Refuses `to`
    /// before `from` and ranges over [`MAX_DAYS`] days.
    pub fn new(from: Option<Day>, to: Option<Day>, now: i64) -> Result<DayRange, ReportError> {
        let to = to.unwrap_or(Day::of(now));
        let from = from.unwrap_or(Day(to.0 - (DEFAULT_DAYS - 1)));
        if to < from {
            return Err(ReportError::Input(format!(
                "--to {to} is before --from {from}: the range is from a day to a later (or the same) day"
            )));
        }
        let days = to.0 - from.0 + 1;
        if days > MAX_DAYS {
            return Err(ReportError::Input(format!(
                "{from} to {to} is {days} days; a report covers at most {MAX_DAYS}: make several"
            )));
        }
        Ok(DayRange { from, to })
    }

    pub fn days(&self) -> impl Iterator<Item = Day> {
        (self.from.0..=self.to.0).map(Day)
    }

    fn len(&self) -> usize {
        // Invariant: `new` keeps the range to 1..=MAX_DAYS days.
        usize::try_from(self.to.0 - self.from.0 + 1).unwrap_or(0)
    }
}

/// Whether a history row counts in the per-enabled-user model.
fn counts(record: &StateRecord) -> bool {
    !record.deleted && matches!(record.state, MfaState::Enabled | MfaState::Enforced)
}

/// What [`enabled_users_per_day`] counted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnabledCounts {
    /// Per day of the range, in order: users in state `enabled` or
    /// `enforced` (and not deleted) at any moment of that day.
    pub per_day: Vec<u64>,
    /// Users counted on at least one day of the range.
    pub in_range: u64,
}

/// Counts, per day of `range`, the users holding `enabled` or `enforced`
/// at any moment of the day. `history` is what
/// [`ReportStore::state_history`] returns: by user, then in time order;
/// each row holds from its time until the user's next row. A state held
/// for no time at all (two rows of one user in the same millisecond)
/// still counts on its day: the user was put in it. A user whose first row
/// is after a day is not counted on that day (they did not exist, or the
/// history had not begun: the caller marks such days).
pub fn enabled_users_per_day(history: &[StateRecord], range: DayRange) -> EnabledCounts {
    let len = range.len();
    // +1/-1 at the first and past the last day of each user's merged
    // ranges, summed afterwards.
    let mut delta = vec![0i64; len + 1];
    let mut in_range = 0u64;
    let index = |day: Day| usize::try_from(day.0 - range.from.0).unwrap_or(0);
    let mut rest = history;
    while let Some(first) = rest.first() {
        let user = first.user_id;
        let end = rest.iter().position(|r| r.user_id != user).unwrap_or(rest.len());
        let (rows, tail) = rest.split_at(end);
        rest = tail;
        // The user's active stretches as day spans clipped to the range,
        // merged as they come (rows are in time order).
        let mut spans: Vec<(Day, Day)> = Vec::new();
        for (n, row) in rows.iter().enumerate() {
            if !counts(row) {
                continue;
            }
            let first_day = Day::of(row.at);
            let last_day = match rows.get(n + 1) {
                None => range.to,
                // Up to the millisecond before the next row, but at least
                // the row's own day.
                Some(next) => Day::of(next.at - 1).max(first_day),
            };
            let (a, b) = (first_day.max(range.from), last_day.min(range.to));
            if a > b {
                continue;
            }
            match spans.last_mut() {
                Some((_, end)) if a.0 <= end.0 + 1 => *end = (*end).max(b),
                _ => spans.push((a, b)),
            }
        }
        if !spans.is_empty() {
            in_range += 1;
        }
        for (a, b) in spans {
            delta[index(a)] += 1;
            delta[index(b) + 1] -= 1;
        }
    }
    let mut per_day = Vec::with_capacity(len);
    let mut running = 0i64;
    for d in delta.iter().take(len) {
        running += d;
        per_day.push(u64::try_from(running).unwrap_or(0));
    }
    EnabledCounts { per_day, in_range }
}

/// Successful and refused sign-ins.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Outcomes {
    pub success: u64,
    pub failure: u64,
}

/// One day of the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct DayUsage {
    /// `YYYY-MM-DD`, UTC.
    pub date: String,
    /// By credential kind (`password`, `app_password`, `portal_session`,
    /// `none`), every kind present.
    #[schema(value_type = BTreeMap<String, Outcomes>)]
    pub signins: BTreeMap<&'static str, Outcomes>,
    pub signins_total: u64,
    /// Users in state `enabled` or `enforced` at any time of the day;
    /// `null` for days before the history began (not known).
    pub enabled_users: Option<u64>,
    /// The history began during the day: users enabled before the upgrade
    /// and changed that day before it are not seen, so the count may be
    /// low.
    pub history_partial: bool,
}

/// An app password nobody used for [`STALE_AFTER_DAYS`] days.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct StaleEntry {
    pub upn: String,
    pub name: String,
    pub created_at: String,
    /// `null`: never used.
    pub last_used_at: Option<String>,
}

/// The whole report, as `--json` prints it and the admin API returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct UsageReport {
    pub from: String,
    pub to: String,
    pub generated_at: String,
    /// When the MFA state history began (the upgrade that added it), if
    /// users existed then; days before it have no `enabled_users`.
    pub history_begins: Option<String>,
    pub days: Vec<DayUsage>,
    /// Sign-ins over the range.
    pub signins_total: u64,
    /// Users in state `enabled` or `enforced` at any time of the range
    /// (each counted once); `null` when the range began before the history.
    pub enabled_users: Option<u64>,
    pub stale_after_days: i64,
    pub stale_app_passwords: Vec<StaleEntry>,
}

/// The credential kinds a day lists, in column order.
pub const KINDS: &[CredentialKind] = &[
    CredentialKind::Password,
    CredentialKind::AppPassword,
    CredentialKind::PortalSession,
    CredentialKind::None,
];

/// Puts the report together from what the store returned (pure).
pub fn assemble(
    range: DayRange,
    now: i64,
    signins: &[DailySignins],
    history: &[StateRecord],
    history_begins: Option<i64>,
    stale: &[StaleAppPassword],
) -> UsageReport {
    let counts = enabled_users_per_day(history, range);
    let mut days: Vec<DayUsage> = range
        .days()
        .zip(counts.per_day.iter())
        .map(|(day, &enabled)| {
            let (known, partial) = match history_begins {
                None => (true, false),
                Some(begins) => (day.end_ms() > begins, day.start_ms() < begins && day.end_ms() > begins),
            };
            DayUsage {
                date: day.to_string(),
                signins: KINDS.iter().map(|k| (k.as_str(), Outcomes::default())).collect(),
                signins_total: 0,
                enabled_users: known.then_some(enabled),
                history_partial: partial,
            }
        })
        .collect();
    let mut total = 0u64;
    for group in signins {
        let Ok(index) = usize::try_from(group.day - range.from.0) else {
            continue;
        };
        let Some(day) = days.get_mut(index) else {
            continue;
        };
        let count = u64::try_from(group.count).unwrap_or(0);
        // A kind written by a newer fedgate gets a column of its own.
        let kind = KINDS
            .iter()
            .map(|k| k.as_str())
            .find(|k| *k == group.credential)
            .unwrap_or("other");
        let outcomes = day.signins.entry(kind).or_default();
        if group.success {
            outcomes.success += count;
        } else {
            outcomes.failure += count;
        }
        day.signins_total += count;
        total += count;
    }
    let range_known = history_begins.is_none_or(|begins| range.from.start_ms() >= begins);
    UsageReport {
        from: range.from.to_string(),
        to: range.to.to_string(),
        generated_at: rfc3339(now),
        history_begins: history_begins.map(rfc3339),
        days,
        signins_total: total,
        enabled_users: range_known.then_some(counts.in_range),
        stale_after_days: STALE_AFTER_DAYS,
        stale_app_passwords: stale
            .iter()
            .map(|s| StaleEntry {
                upn: s.upn.to_string(),
                name: s.name.clone(),
                created_at: rfc3339(s.created_at),
                last_used_at: s.last_used_at.map(rfc3339),
            })
            .collect(),
    }
}

/// The usage report for `range`, as of `now` (unix ms, from the clock:
/// it decides which app passwords are stale).
pub async fn usage(store: &dyn ReportStore, range: DayRange, now: i64) -> Result<UsageReport, ReportError> {
    let (start, end) = (range.from.start_ms(), range.to.end_ms());
    let signins = store.daily_signins(start, end).await?;
    let history = store.state_history(start, end).await?;
    let begins = store.history_begins().await?;
    let stale = store.stale_app_passwords(now - STALE_AFTER_DAYS * MS_PER_DAY).await?;
    Ok(assemble(range, now, &signins, &history, begins, &stale))
}

/// The credential kinds of any day, in order: every day lists the known
/// kinds, and one written by a newer fedgate appears only on its days.
fn columns(report: &UsageReport) -> Vec<&'static str> {
    let all: std::collections::BTreeSet<&'static str> =
        report.days.iter().flat_map(|d| d.signins.keys().copied()).collect();
    all.into_iter().collect()
}

/// The report as CSV sections a spreadsheet opens: the days (one row a
/// day, a column per credential kind and result), a blank line, then the
/// app passwords to clean up. Text that a spreadsheet would take for a
/// formula is prefixed with `'`.
pub fn to_csv(report: &UsageReport) -> String {
    let mut out = String::new();
    let kinds = columns(report);
    let mut header = vec!["date".to_owned()];
    for kind in &kinds {
        header.push(format!("{kind}_success"));
        header.push(format!("{kind}_failure"));
    }
    header.extend(["signins_total".into(), "enabled_users".into(), "history_partial".into()]);
    out.push_str(&header.join(","));
    out.push('\n');
    for day in &report.days {
        let mut row = vec![day.date.clone()];
        for kind in &kinds {
            let o = day.signins.get(kind).copied().unwrap_or_default();
            row.push(o.success.to_string());
            row.push(o.failure.to_string());
        }
        row.push(day.signins_total.to_string());
        row.push(day.enabled_users.map(|n| n.to_string()).unwrap_or_default());
        row.push(day.history_partial.to_string());
        out.push_str(&row.join(","));
        out.push('\n');
    }
    out.push('\n');
    out.push_str("upn,app_password,created_at,last_used_at\n");
    for s in &report.stale_app_passwords {
        let row = [
            csv_field(&s.upn),
            csv_field(&s.name),
            s.created_at.clone(),
            s.last_used_at.clone().unwrap_or_default(),
        ];
        out.push_str(&row.join(","));
        out.push('\n');
    }
    out
}

/// One CSV field: quoted when it holds a comma, quote or line break;
/// defused when a spreadsheet would run it as a formula.
pub fn csv_field(text: &str) -> String {
    let text = if text.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{text}")
    } else {
        text.to_owned()
    };
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text
    }
}

/// The report as aligned tables for a terminal.
pub fn to_table(report: &UsageReport) -> String {
    let mut out = format!("Usage {} to {} (UTC days)\n\n", report.from, report.to);
    let kinds = columns(report);
    let mut header = vec!["date".to_owned()];
    for kind in &kinds {
        header.push(format!("{kind} ok"));
        header.push(format!("{kind} failed"));
    }
    header.extend(["total".into(), "enabled users".into()]);
    let mut rows = vec![header];
    for day in &report.days {
        let mut row = vec![day.date.clone()];
        for kind in &kinds {
            let o = day.signins.get(kind).copied().unwrap_or_default();
            row.push(o.success.to_string());
            row.push(o.failure.to_string());
        }
        row.push(day.signins_total.to_string());
        row.push(match (day.enabled_users, day.history_partial) {
            (None, _) => "unknown".into(),
            (Some(n), true) => format!("{n} (partial)"),
            (Some(n), false) => n.to_string(),
        });
        rows.push(row);
    }
    out.push_str(&aligned(&rows));
    out.push_str(&format!(
        "\nsign-ins over the range: {}; users enabled or enforced at some time: {}\n",
        report.signins_total,
        report
            .enabled_users
            .map_or_else(|| "unknown".to_owned(), |n| n.to_string())
    ));
    if let Some(begins) = &report.history_begins {
        out.push_str(&format!(
            "MFA state history begins {begins} (the upgrade that added it): earlier days are unknown\n"
        ));
    }
    out.push_str(&format!(
        "\nApp passwords not used for {} days ({}):\n",
        report.stale_after_days,
        report.stale_app_passwords.len()
    ));
    if !report.stale_app_passwords.is_empty() {
        let mut rows = vec![vec![
            "user".to_owned(),
            "name".to_owned(),
            "created".to_owned(),
            "last used".to_owned(),
        ]];
        for s in &report.stale_app_passwords {
            rows.push(vec![
                s.upn.clone(),
                s.name.clone(),
                s.created_at.clone(),
                s.last_used_at.clone().unwrap_or_else(|| "never".into()),
            ]);
        }
        out.push_str(&aligned(&rows));
    }
    out
}

/// Rows as columns padded to their widest cell: the first column left
/// aligned, numbers right aligned.
fn aligned(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(c, cell)| {
                let numeric = cell.chars().next().is_some_and(|ch| ch.is_ascii_digit()) && c > 0;
                if numeric {
                    format!("{cell:>w$}", w = widths[c])
                } else {
                    format!("{cell:<w$}", w = widths[c])
                }
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests;
