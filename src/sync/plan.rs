//! What a sync pass changes, worked out from what the directory returned
//! and what the store holds: plain data in, plain data out.

use std::collections::{HashMap, HashSet};

use crate::model::{FederatedUser, User, UserId, UserSource};
use crate::store::DirectoryChange;

/// The changes of one pass, and what the guard needs to know.
#[derive(Debug, Default)]
pub struct Plan {
    pub changes: Vec<DirectoryChange>,
    /// Entries the directory returned.
    pub seen: usize,
    /// Entries that could not be used (no UPN).
    pub errors: usize,
    /// Enabled users the pass would disable.
    pub disables: usize,
    /// Users the pass would mark deleted.
    pub deletes: usize,
    /// Federated users in the store, not deleted, before the pass.
    pub synced_users: usize,
}

/// A pass the mass-change guard stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Guard {
    pub disables: usize,
    pub deletes: usize,
    /// Disables and deletions push sync applied shortly before (see
    /// [`Plan::guard_after`]).
    pub recent: usize,
    pub synced_users: usize,
    pub limit: usize,
}

impl Guard {
    pub fn message(&self) -> String {
        let recent = if self.recent > 0 {
            format!(", after {} disabled or deleted shortly before", self.recent)
        } else {
            String::new()
        };
        format!(
            "stopped by the mass-change guard: the pass would disable {} and delete {} of {} synced users{recent} \
             (more than {}); nothing was changed. Check directory.base_dn and the filters; if the change is \
             intended, run `fedgate sync run --force`",
            self.disables, self.deletes, self.synced_users, self.limit
        )
    }
}

impl Plan {
    /// The guard's verdict: `Some` when the pass would disable or delete
    /// more than `share` of the synced users and more than `floor` users,
    /// counting `recent` disables and deletions already applied: push sync
    /// applies changes as they come, so a mass change arrives as many small
    /// plans that only add up past the limit.
    pub fn guard_after(&self, recent: usize, share: f64, floor: usize) -> Option<Guard> {
        let limit = ((self.synced_users as f64 * share).floor() as usize).max(floor);
        (recent + self.disables + self.deletes > limit).then_some(Guard {
            disables: self.disables,
            deletes: self.deletes,
            recent,
            synced_users: self.synced_users,
            limit,
        })
    }
}

/// The anchors of live federated users that a refresh's present phase
/// did not name (as present, changed or added): gone from the directory.
/// Users without an anchor cannot be told apart this way and are left to
/// the full passes.
pub fn absent(existing: &[User], named: &HashSet<String>) -> Vec<String> {
    existing
        .iter()
        .filter(|u| u.source == UserSource::Federated && !u.deleted)
        .filter_map(|u| u.directory.as_ref().and_then(|d| d.anchor.as_deref()))
        .filter(|anchor| !named.contains(&anchor.to_ascii_lowercase()))
        .map(str::to_owned)
        .collect()
}

/// Matches the directory's users to the store's (by anchor, then UPN) and
/// lists what must change. A `full` pass also deletes the federated users
/// the directory no longer returned; `gone` lists anchors the directory
/// reported deleted (AD tombstones).
pub fn plan(
    full: bool,
    existing: &[User],
    found: Vec<FederatedUser>,
    gone: &[String],
    revoke_on_password_change: bool,
) -> Plan {
    let federated: Vec<&User> = existing.iter().filter(|u| u.source == UserSource::Federated).collect();
    let mut by_anchor: HashMap<&str, &User> = HashMap::new();
    let mut by_upn: HashMap<&str, &User> = HashMap::new();
    for user in existing {
        by_upn.insert(user.upn.as_str(), user);
        if let Some(anchor) = user.directory.as_ref().and_then(|d| d.anchor.as_deref()) {
            by_anchor.insert(anchor, user);
        }
    }
    let mut plan = Plan {
        synced_users: federated.iter().filter(|u| !u.deleted).count(),
        ..Plan::default()
    };
    let mut seen: HashSet<UserId> = HashSet::with_capacity(found.len());
    for user in found {
        let current = user
            .attributes
            .anchor
            .as_deref()
            .and_then(|a| by_anchor.get(a))
            .or_else(|| by_upn.get(user.upn.as_str()))
            .copied();
        let Some(current) = current else {
            plan.changes.push(DirectoryChange::Upsert {
                user,
                revoke_app_passwords: false,
            });
            continue;
        };
        seen.insert(current.id);
        let changed = current.deleted
            || current.directory_enabled != user.enabled
            || current.upn != user.upn
            || current.directory.as_ref() != Some(&user.attributes);
        if !changed {
            continue;
        }
        if current.directory_enabled && !current.deleted && !user.enabled {
            plan.disables += 1;
        }
        let old_change = current.directory.as_ref().and_then(|d| d.password_changed.as_deref());
        let revoke = revoke_on_password_change
            && !current.deleted
            && old_change.is_some()
            && user.attributes.password_changed.is_some()
            && old_change != user.attributes.password_changed.as_deref();
        plan.changes.push(DirectoryChange::Upsert {
            user,
            revoke_app_passwords: revoke,
        });
    }
    let mut deleted: HashSet<UserId> = HashSet::new();
    let tombstoned = gone.iter().filter_map(|anchor| by_anchor.get(anchor.as_str()).copied());
    let unseen = federated.into_iter().filter(|_| full);
    for user in tombstoned.chain(unseen) {
        let live = user.source == UserSource::Federated && !user.deleted;
        if live && !seen.contains(&user.id) && deleted.insert(user.id) {
            plan.deletes += 1;
            plan.changes.push(DirectoryChange::Delete { id: user.id });
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{DirectoryAttributes, MfaState, Upn};

    fn found(login: &str, enabled: bool) -> FederatedUser {
        FederatedUser {
            upn: Upn::parse(&format!("{login}@example.com")).unwrap(),
            enabled,
            attributes: DirectoryAttributes {
                dn: format!("uid={login},ou=people,dc=example,dc=com"),
                login: Some(login.into()),
                anchor: Some(format!("anchor-{login}")),
                display_name: None,
                mail: None,
                groups: Vec::new(),
                password_changed: Some("20260101000000Z".into()),
            },
        }
    }

    fn stored(id: i64, f: &FederatedUser) -> User {
        User {
            id: UserId(id),
            upn: f.upn.clone(),
            source: UserSource::Federated,
            enabled: f.enabled,
            operator_enabled: true,
            directory_enabled: f.enabled,
            deleted: false,
            mfa_state: MfaState::Disabled,
            registered_at: None,
            created_at: 0,
            password_hash: None,
            directory: Some(f.attributes.clone()),
        }
    }

    fn kinds(plan: &Plan) -> Vec<String> {
        plan.changes
            .iter()
            .map(|c| match c {
                DirectoryChange::Upsert {
                    user,
                    revoke_app_passwords,
                } => format!(
                    "upsert {} enabled={} revoke={revoke_app_passwords}",
                    user.upn, user.enabled
                ),
                DirectoryChange::Delete { id } => format!("delete {id}"),
            })
            .collect()
    }

    #[test]
    fn unchanged_users_cost_nothing() {
        let alice = found("alice", true);
        let plan = plan(true, &[stored(1, &alice)], vec![alice], &[], false);
        assert!(plan.changes.is_empty());
        assert_eq!(plan.synced_users, 1);
    }

    #[test]
    fn creates_disables_renames_and_deletes() {
        let (alice, bob, carol) = (found("alice", true), found("bob", true), found("carol", true));
        let existing = [stored(1, &alice), stored(2, &bob), stored(3, &carol)];
        let mut renamed = found("caroline", true);
        renamed.attributes.anchor = Some("anchor-carol".into());
        let found_now = vec![found("alice", false), renamed, found("dave", true)];

        let incremental = plan(false, &existing, found_now.clone(), &[], false);
        assert_eq!(
            kinds(&incremental),
            [
                "upsert alice@example.com enabled=false revoke=false",
                "upsert caroline@example.com enabled=true revoke=false",
                "upsert dave@example.com enabled=true revoke=false",
            ]
        );
        assert_eq!((incremental.disables, incremental.deletes), (1, 0));

        // Only a full pass knows bob is gone.
        let full = plan(true, &existing, found_now, &[], false);
        assert_eq!(kinds(&full).last().unwrap(), "delete 2");
        assert_eq!((full.disables, full.deletes), (1, 1));
    }

    #[test]
    fn an_operator_disable_is_not_the_directory_s_to_undo() {
        let alice = found("alice", true);
        let mut disabled_by_operator = stored(1, &alice);
        disabled_by_operator.operator_enabled = false;
        disabled_by_operator.enabled = false;
        assert!(plan(true, &[disabled_by_operator], vec![alice], &[], false)
            .changes
            .is_empty());
    }

    #[test]
    fn tombstones_delete_in_an_incremental_pass() {
        let (alice, bob) = (found("alice", true), found("bob", true));
        let existing = [stored(1, &alice), stored(2, &bob)];
        let gone = ["anchor-bob".to_owned(), "anchor-unknown".to_owned()];
        let plan = plan(false, &existing, Vec::new(), &gone, false);
        assert_eq!(kinds(&plan), ["delete 2"]);
        assert_eq!(plan.deletes, 1);
    }

    #[test]
    fn a_changed_password_revokes_only_when_asked() {
        let alice = found("alice", true);
        let mut changed = alice.clone();
        changed.attributes.password_changed = Some("20261128000000Z".into());
        let existing = [stored(1, &alice)];
        assert_eq!(
            kinds(&plan(false, &existing, vec![changed.clone()], &[], true)),
            ["upsert alice@example.com enabled=true revoke=true"]
        );
        assert_eq!(
            kinds(&plan(false, &existing, vec![changed], &[], false)),
            ["upsert alice@example.com enabled=true revoke=false"]
        );
    }

    #[test]
    fn the_guard_trips_past_the_share_and_the_floor() {
        let users: Vec<FederatedUser> = (0..100).map(|i| found(&format!("u{i}"), true)).collect();
        let existing: Vec<User> = users.iter().enumerate().map(|(i, u)| stored(i as i64 + 1, u)).collect();
        // A mistyped base_dn: nothing found, everyone would be deleted.
        let wiped = plan(true, &existing, Vec::new(), &[], false);
        let guard = wiped.guard_after(0, 0.10, 10).unwrap();
        assert_eq!((guard.deletes, guard.limit), (100, 10));
        assert!(guard.message().contains("--force"));
        // 10 of 100 is within 10%.
        let some: Vec<FederatedUser> = users
            .iter()
            .enumerate()
            .map(|(i, u)| FederatedUser {
                enabled: i >= 10,
                ..u.clone()
            })
            .collect();
        assert!(plan(true, &existing, some, &[], false)
            .guard_after(0, 0.10, 10)
            .is_none());
        // Small directories: the floor keeps a few changes from tripping it.
        let small = &existing[..5];
        assert!(plan(true, small, Vec::new(), &[], false)
            .guard_after(0, 0.10, 10)
            .is_none());
        assert!(plan(true, small, Vec::new(), &[], false)
            .guard_after(0, 0.10, 2)
            .is_some());
    }

    #[test]
    fn the_guard_counts_what_push_applied_shortly_before() {
        let users: Vec<FederatedUser> = (0..100).map(|i| found(&format!("u{i}"), true)).collect();
        let existing: Vec<User> = users.iter().enumerate().map(|(i, u)| stored(i as i64 + 1, u)).collect();
        // One more disable, as push sync sees a mass change: one at a time.
        let one = vec![FederatedUser {
            enabled: false,
            ..users[0].clone()
        }];
        let plan = plan(false, &existing, one, &[], false);
        assert_eq!(plan.disables, 1);
        assert!(plan.guard_after(9, 0.10, 10).is_none(), "10 of 100 is within 10%");
        let guard = plan.guard_after(10, 0.10, 10).expect("the eleventh trips it");
        assert_eq!((guard.disables, guard.recent, guard.limit), (1, 10, 10));
        assert!(
            guard.message().contains("10 disabled or deleted shortly before"),
            "{}",
            guard.message()
        );
        assert!(plan.guard_after(0, 0.10, 10).is_none_or(|g| g.recent == 0));
    }

    #[test]
    fn a_present_phase_finds_the_users_it_did_not_name() {
        let users: Vec<FederatedUser> = ["a", "b", "c"].iter().map(|n| found(n, true)).collect();
        let mut existing: Vec<User> = users.iter().enumerate().map(|(i, u)| stored(i as i64 + 1, u)).collect();
        // Already deleted, cloud, and anchorless users are never "absent".
        existing[2].deleted = true;
        let mut cloud = stored(4, &found("d", true));
        cloud.source = UserSource::Cloud;
        existing.push(cloud);
        let mut anchorless = stored(5, &found("e", true));
        anchorless.directory.as_mut().unwrap().anchor = None;
        existing.push(anchorless);
        // Named in any case: anchors are compared case-insensitively.
        let named: HashSet<String> = ["ANCHOR-A".to_ascii_lowercase()].into_iter().collect();
        assert_eq!(absent(&existing, &named), vec!["anchor-b".to_owned()]);
    }
}
