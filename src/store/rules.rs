//! Decisions the backends share: what a directory upsert does to a user,
//! and which lines of a bulk MFA-state change are acceptable. Pure
//! functions over what the backend read inside its transaction, so both
//! backends decide alike and the rules are tested once. Also the one
//! substitution migrations may ask for ([`migration_sql`]).

use std::collections::HashMap;

use super::{ChangeKind, LineError, StateLine, StoreError};
use crate::model::{audit_text, FederatedUser, MfaState, Upn, User, UserId, UserSource, MAX_AUDIT_UPN_CHARS};

/// What [`plan_upsert`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum UpsertPlan {
    /// No user matches: insert one.
    Insert,
    /// The user is as the directory says: write nothing (a sync pass
    /// revisits every user).
    Unchanged(UserId),
    /// Update the user, and write `kind` to the change feed.
    Update { id: UserId, kind: ChangeKind },
}

/// Decides a directory upsert from the users found by anchor and by UPN.
///
/// The anchor survives renames and moves, so it wins: a renamed user keeps
/// their id, MFA state and app passwords. A UPN held by another user, or a
/// cloud-only user of the same UPN, is refused. A deleted user comes back
/// with their MFA state kept (a returning user who had to use app
/// passwords still has to).
pub(crate) fn plan_upsert(
    by_anchor: Option<User>,
    by_upn: Option<User>,
    new: &FederatedUser,
) -> Result<UpsertPlan, StoreError> {
    if let (Some(a), Some(u)) = (&by_anchor, &by_upn) {
        if a.id != u.id {
            return Err(StoreError::UpnTaken {
                upn: new.upn.clone(),
                holder: u.id,
            });
        }
    }
    let Some(user) = by_anchor.or(by_upn) else {
        return Ok(UpsertPlan::Insert);
    };
    if user.source == UserSource::Cloud && !user.deleted {
        return Err(StoreError::SourceConflict { upn: new.upn.clone() });
    }
    let kind = if user.deleted {
        ChangeKind::UserUpdated
    } else if user.directory_enabled != new.enabled {
        if new.enabled {
            ChangeKind::UserEnabled
        } else {
            ChangeKind::UserDisabled
        }
    } else if user.upn != new.upn || user.directory.as_ref() != Some(&new.attributes) {
        ChangeKind::UserUpdated
    } else {
        return Ok(UpsertPlan::Unchanged(user.id));
    };
    Ok(UpsertPlan::Update { id: user.id, kind })
}

/// The UPNs of a bulk change's lines that parse: what the backend looks up
/// before calling [`plan_state_lines`].
pub(crate) fn state_line_upns(lines: &[StateLine]) -> Vec<Upn> {
    let mut upns: Vec<Upn> = lines.iter().filter_map(|line| Upn::parse(&line.upn).ok()).collect();
    upns.sort();
    upns.dedup();
    upns
}

/// Judges every line of a bulk MFA-state change against the users found
/// (`users`, by UPN, deleted ones included), so one report names every bad
/// line: a malformed UPN or state, a UPN listed twice, an unknown or a
/// deleted user. All lines or none: any bad line refuses the whole change
/// ([`StoreError::BulkRejected`]).
pub(crate) fn plan_state_lines(
    lines: &[StateLine],
    users: &HashMap<Upn, User>,
) -> Result<Vec<(User, MfaState)>, StoreError> {
    let mut errors = Vec::new();
    let mut accepted = Vec::with_capacity(lines.len());
    let mut seen: HashMap<Upn, usize> = HashMap::new();
    for line in lines {
        let mut reasons = Vec::new();
        let state = line
            .state
            .parse::<MfaState>()
            .map_err(|e| reasons.push(e.to_string()))
            .ok();
        let user = match Upn::parse(&line.upn) {
            Err(e) => {
                reasons.push(e.to_string());
                None
            }
            Ok(upn) => match seen.insert(upn.clone(), line.line) {
                Some(first) => {
                    reasons.push(format!("user {upn} is already listed on line {first}"));
                    None
                }
                None => match users.get(&upn) {
                    None => {
                        reasons.push(format!("no user {upn}"));
                        None
                    }
                    Some(user) if user.deleted => {
                        reasons.push(format!("user {upn} is deleted"));
                        None
                    }
                    Some(user) => Some(user.clone()),
                },
            },
        };
        match (user, state) {
            (Some(user), Some(state)) if reasons.is_empty() => accepted.push((user, state)),
            _ => errors.push(LineError {
                line: line.line,
                upn: audit_text(&line.upn, MAX_AUDIT_UPN_CHARS),
                reason: reasons.join("; "),
            }),
        }
    }
    if errors.is_empty() {
        Ok(accepted)
    } else {
        Err(StoreError::BulkRejected { errors })
    }
}

/// Judges every line of a bulk import of cloud users against the users
/// found (`users`, by UPN, deleted ones included): a malformed UPN or
/// state, a UPN listed twice, a UPN a live user has. An empty state is
/// `disabled`. All lines or none ([`StoreError::BulkRejected`]).
pub(crate) fn plan_import_lines(
    lines: &[StateLine],
    users: &HashMap<Upn, User>,
) -> Result<Vec<(Upn, MfaState)>, StoreError> {
    let mut errors = Vec::new();
    let mut accepted = Vec::with_capacity(lines.len());
    let mut seen: HashMap<Upn, usize> = HashMap::new();
    for line in lines {
        let mut reasons = Vec::new();
        let state = if line.state.trim().is_empty() {
            Some(MfaState::Disabled)
        } else {
            line.state
                .parse::<MfaState>()
                .map_err(|e| reasons.push(e.to_string()))
                .ok()
        };
        let upn = match Upn::parse(&line.upn) {
            Err(e) => {
                reasons.push(e.to_string());
                None
            }
            Ok(upn) => match seen.insert(upn.clone(), line.line) {
                Some(first) => {
                    reasons.push(format!("user {upn} is already listed on line {first}"));
                    None
                }
                None => match users.get(&upn) {
                    Some(user) if !user.deleted => {
                        reasons.push(format!("user {upn} already exists"));
                        None
                    }
                    _ => Some(upn),
                },
            },
        };
        match (upn, state) {
            (Some(upn), Some(state)) if reasons.is_empty() => accepted.push((upn, state)),
            _ => errors.push(LineError {
                line: line.line,
                upn: audit_text(&line.upn, MAX_AUDIT_UPN_CHARS),
                reason: reasons.join("; "),
            }),
        }
    }
    if errors.is_empty() {
        Ok(accepted)
    } else {
        Err(StoreError::BulkRejected { errors })
    }
}

/// What a migration's SQL says once `{{migrated_at}}` is replaced by the
/// migration time (unix ms, from the store's clock): a backfill that must
/// say when it was made cannot take a bound value, migrations being run as
/// scripts.
pub(crate) fn migration_sql(sql: &str, now: i64) -> String {
    sql.replace("{{migrated_at}}", &now.to_string())
}
