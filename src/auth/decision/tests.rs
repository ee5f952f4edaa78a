use super::*;
use crate::model::{AppPasswordId, Upn, UserId, UserSource};

fn user(state: MfaState, enabled: bool, deleted: bool) -> User {
    User {
        id: UserId(1),
        upn: Upn::parse("alice@corp.example.com").unwrap(),
        source: UserSource::Cloud,
        enabled,
        operator_enabled: enabled,
        directory_enabled: true,
        deleted,
        mfa_state: state,
        registered_at: None,
        created_at: 0,
        password_hash: None,
        directory: None,
    }
}

fn app() -> Verified {
    Verified::AppPassword {
        id: AppPasswordId(7),
        name: "phone".into(),
        limits: Default::default(),
    }
}

fn run(realm: Realm, verified: Verified, user: Option<&User>, allow: bool, locked: bool) -> Decision {
    decide(Facts {
        realm,
        verified: &verified,
        user,
        allow_app_passwords: allow,
        locked_out: locked,
        outside_limits: None,
    })
}

use MfaState::{Disabled, Enabled, Enforced};
use Realm::{Cloud, Onprem};

#[test]
fn the_decision_table() {
    let allow_app = Decision::Allow {
        credential: CredentialKind::AppPassword,
        reason: Reason::AppPassword,
    };
    let allow_pw = Decision::Allow {
        credential: CredentialKind::Password,
        reason: Reason::Password,
    };
    let d401 = |reason| Decision::Deny {
        refusal: Refusal::Unauthorized,
        reason,
    };
    let d503 = |reason| Decision::Deny {
        refusal: Refusal::Unavailable,
        reason,
    };
    for state in [Disabled, Enabled, Enforced] {
        let u = user(state, true, false);
        // cloud: app passwords, whatever the MFA state, if the setting allows
        assert_eq!(run(Cloud, app(), Some(&u), true, false), allow_app);
        assert_eq!(
            run(Cloud, app(), Some(&u), false, false),
            d401(Reason::AppPasswordsNotAllowed)
        );
        // onprem: org password always; app passwords never
        assert_eq!(run(Onprem, Verified::Password, Some(&u), true, false), allow_pw);
        assert_eq!(
            run(Onprem, app(), Some(&u), true, false),
            d401(Reason::AppPasswordNotValidOnprem)
        );
        // wrong secret
        assert_eq!(
            run(Cloud, Verified::Invalid, Some(&u), true, false),
            d401(Reason::BadCredentials)
        );
        // a mistyped app password, on either realm
        for realm in [Cloud, Onprem] {
            assert_eq!(
                run(realm, Verified::Mistyped, Some(&u), true, false),
                d401(Reason::AppPasswordMistyped)
            );
        }
        // directory down: 503, never a 401 that re-prompts
        assert_eq!(
            run(Onprem, Verified::DirectoryUnavailable, Some(&u), true, false),
            d503(Reason::DirectoryUnavailable)
        );
        assert_eq!(
            run(Cloud, Verified::Overloaded, Some(&u), true, false),
            d503(Reason::Overloaded)
        );
        // what the directory says about the account beats the secret
        assert_eq!(
            run(Onprem, Verified::AccountDisabled, Some(&u), true, false),
            d401(Reason::AccountDisabled)
        );
        assert_eq!(
            run(Cloud, Verified::LockedOut, Some(&u), true, false),
            Decision::Deny {
                refusal: Refusal::TooManyAttempts,
                reason: Reason::LockedOut
            }
        );
        assert_eq!(
            run(Cloud, Verified::StoreUnavailable, Some(&u), true, false),
            d503(Reason::StoreUnavailable)
        );
        // locked out
        assert_eq!(
            run(Cloud, app(), Some(&u), true, true),
            Decision::Deny {
                refusal: Refusal::TooManyAttempts,
                reason: Reason::LockedOut
            }
        );
    }
    // cloud: org password depends on the MFA state
    assert_eq!(
        run(
            Cloud,
            Verified::Password,
            Some(&user(Disabled, true, false)),
            false,
            false
        ),
        allow_pw
    );
    assert_eq!(
        run(
            Cloud,
            Verified::Password,
            Some(&user(Enabled, true, false)),
            false,
            false
        ),
        allow_pw
    );
    assert_eq!(
        run(
            Cloud,
            Verified::Password,
            Some(&user(Enforced, true, false)),
            true,
            false
        ),
        d401(Reason::AppPasswordRequired)
    );
    // unknown user
    assert_eq!(
        run(Cloud, Verified::Invalid, None, true, false),
        d401(Reason::BadCredentials)
    );
    assert_eq!(
        run(Onprem, Verified::Mistyped, None, true, false),
        d401(Reason::AppPasswordMistyped)
    );
    // a directory account not yet in the store, disabled there
    assert_eq!(
        run(Onprem, Verified::AccountDisabled, None, true, false),
        d401(Reason::AccountDisabled)
    );
    assert_eq!(
        run(Cloud, Verified::DirectoryUnavailable, None, true, false),
        d503(Reason::DirectoryUnavailable)
    );
    // disabled or deleted accounts: refused whatever is presented
    for u in [user(Disabled, false, false), user(Enforced, true, true)] {
        for v in [
            app(),
            Verified::Password,
            Verified::Invalid,
            Verified::DirectoryUnavailable,
        ] {
            assert_eq!(
                run(Cloud, v.clone(), Some(&u), true, false),
                d401(Reason::AccountDisabled)
            );
            assert_eq!(run(Onprem, v, Some(&u), true, true), d401(Reason::AccountDisabled));
        }
    }
}

#[test]
fn an_app_password_outside_its_limits_is_refused_with_the_limit_after_the_switch() {
    let u = user(Enforced, true, false);
    let verified = app();
    let facts = |allow, outside| Facts {
        realm: Cloud,
        verified: &verified,
        user: Some(&u),
        allow_app_passwords: allow,
        locked_out: false,
        outside_limits: outside,
    };
    for reason in [
        Reason::AppPasswordOutOfScope,
        Reason::AppPasswordExpired,
        Reason::AppPasswordNetwork,
    ] {
        assert_eq!(
            decide(facts(true, Some(reason))),
            Decision::Deny {
                refusal: Refusal::Unauthorized,
                reason
            }
        );
        // App passwords switched off: that is the reason, whatever the limits.
        assert_eq!(
            decide(facts(false, Some(reason))).reason(),
            Reason::AppPasswordsNotAllowed
        );
        // On-premises routes never take an app password at all.
        assert_eq!(
            decide(Facts {
                realm: Onprem,
                ..facts(true, Some(reason))
            })
            .reason(),
            Reason::AppPasswordNotValidOnprem
        );
    }
    assert!(decide(facts(true, None)).is_allowed());
}
