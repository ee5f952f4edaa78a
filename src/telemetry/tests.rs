use super::*;

#[test]
fn statuses_fall_in_their_class() {
    let cases = [
        (100, "1xx"),
        (101, "1xx"),
        (200, "2xx"),
        (204, "2xx"),
        (301, "3xx"),
        (401, "4xx"),
        (429, "4xx"),
        (499, "4xx"),
        (500, "5xx"),
        (503, "5xx"),
        (599, "5xx"),
        // Not a status a response can have: counted as the server's fault.
        (0, "5xx"),
    ];
    for (status, class) in cases {
        assert_eq!(STATUS_CLASSES[status_class(status)], class, "{status}");
    }
}

#[test]
fn every_sign_in_series_has_a_slot_of_its_own() {
    let mut seen = std::collections::HashSet::new();
    for &kind in CredentialKind::ALL {
        for &reason in Reason::ALL {
            for success in [false, true] {
                let slot = signin_slot(kind, success, reason);
                assert!(slot < CredentialKind::ALL.len() * Reason::ALL.len() * 2);
                assert!(seen.insert(slot), "{kind} {reason} {success} shares slot {slot}");
            }
        }
    }
}

#[test]
fn every_directory_error_kind_is_listed_for_start_up() {
    let errors = [
        DirectoryError::Unavailable {
            server: "ldap://dc1".into(),
            reason: "refused".into(),
        },
        DirectoryError::Timeout(std::time::Duration::from_secs(5)),
        DirectoryError::Busy,
        DirectoryError::ServiceBind {
            server: "ldap://dc1".into(),
            dn: "cn=fedgate".into(),
            reason: "invalid credentials".into(),
        },
    ];
    let kinds: Vec<&str> = errors.iter().map(DirectoryError::kind).collect();
    assert_eq!(kinds, DirectoryError::KINDS);
}
