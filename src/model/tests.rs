use super::*;

#[test]
fn upn_is_trimmed_and_lowercased() {
    let upn = Upn::parse("  Alice@Corp.Example.COM ").unwrap();
    assert_eq!(upn.as_str(), "alice@corp.example.com");
    assert_eq!(upn.local_part(), "alice");
    assert_eq!(upn.domain(), "corp.example.com");
    assert_eq!(upn, "ALICE@corp.example.com".parse::<Upn>().unwrap());
}

#[test]
fn upn_needs_exactly_one_at_with_both_sides() {
    for bad in ["alice", "a@b@c", "@corp.example.com", "alice@", "@", "CORP\\alice"] {
        let err = Upn::parse(bad).unwrap_err();
        assert!(matches!(err, ModelError::UpnShape { .. }), "{bad:?} gave {err:?}");
        assert!(err.to_string().contains("alice@corp.example.com"));
    }
    assert_eq!(Upn::parse("   "), Err(ModelError::UpnEmpty));
}

#[test]
fn upn_refuses_control_characters() {
    let err = Upn::parse("ali\nce@corp.example.com").unwrap_err();
    assert!(matches!(err, ModelError::UpnControl { .. }));
    // The message shows the input without the raw newline.
    assert!(!err.to_string().contains('\n'));
}

#[test]
fn upn_is_at_most_256_bytes() {
    let domain = "@corp.example.com";
    let longest = format!("{}{domain}", "a".repeat(MAX_UPN_BYTES - domain.len()));
    assert!(Upn::parse(&longest).is_ok());
    let too_long = format!("a{longest}");
    assert_eq!(
        Upn::parse(&too_long),
        Err(ModelError::UpnTooLong { len: MAX_UPN_BYTES + 1 })
    );
    assert!(matches!(
        Upn::parse(&"a".repeat(100_000)),
        Err(ModelError::UpnTooLong { .. })
    ));
}

#[test]
fn upn_serde_goes_through_parse() {
    let upn: Upn = serde_json::from_str("\"Bob@Example.org\"").unwrap();
    assert_eq!(upn.as_str(), "bob@example.org");
    assert_eq!(serde_json::to_string(&upn).unwrap(), "\"bob@example.org\"");
    assert!(serde_json::from_str::<Upn>("\"bob\"").is_err());
}

#[test]
fn mfa_state_spellings() {
    for state in MfaState::ALL {
        assert_eq!(state.as_str().parse::<MfaState>().unwrap(), *state);
        assert_eq!(state.to_string(), state.as_str());
        let json = serde_json::to_string(state).unwrap();
        assert_eq!(json, format!("\"{}\"", state.as_str()));
        assert_eq!(serde_json::from_str::<MfaState>(&json).unwrap(), *state);
    }
    assert_eq!(" Enforced ".parse::<MfaState>().unwrap(), MfaState::Enforced);
    assert_eq!(MfaState::default(), MfaState::Disabled);
    let err = "required".parse::<MfaState>().unwrap_err().to_string();
    assert!(err.contains("\"required\""), "{err}");
    assert!(err.contains("disabled, enabled or enforced"), "{err}");
}

#[test]
fn reasons_are_the_decision_table_codes() {
    let codes: Vec<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
    assert_eq!(
        codes,
        [
            "no_credentials",
            "malformed",
            "account_disabled",
            "locked_out",
            "app_password",
            "app_passwords_not_allowed",
            "password",
            "app_password_required",
            "app_password_not_valid_onprem",
            "bad_credentials",
            "app_password_mistyped",
            "app_password_out_of_scope",
            "app_password_expired",
            "app_password_network",
            "directory_unavailable",
            "overloaded",
            "store_unavailable",
            "policy_denied",
        ]
    );
    for reason in Reason::ALL {
        assert_eq!(reason.as_str().parse::<Reason>().unwrap(), *reason);
        assert_eq!(serde_json::to_string(reason).unwrap(), format!("\"{reason}\""));
    }
}

#[test]
fn credential_kind_and_source_spellings() {
    assert_eq!(CredentialKind::AppPassword.as_str(), "app_password");
    assert_eq!("none".parse::<CredentialKind>().unwrap(), CredentialKind::None);
    assert_eq!(UserSource::Federated.to_string(), "federated");
    assert!("ldap".parse::<UserSource>().is_err());
}

#[test]
fn app_password_names() {
    assert_eq!(
        AppPasswordName::parse("  Alice's iPhone ").unwrap().as_str(),
        "Alice's iPhone"
    );
    assert_eq!(AppPasswordName::parse(" \t "), Err(ModelError::AppPasswordNameEmpty));
    let longest = "é".repeat(MAX_APP_PASSWORD_NAME_CHARS);
    assert!(AppPasswordName::parse(&longest).is_ok());
    assert_eq!(
        AppPasswordName::parse(&format!("{longest}x")),
        Err(ModelError::AppPasswordNameTooLong { chars: 65 })
    );
    assert!(matches!(
        AppPasswordName::parse("pho\u{7}ne"),
        Err(ModelError::AppPasswordNameControl { .. })
    ));
}

#[test]
fn secrets_do_not_print() {
    let secret = Secret::from("hunter2");
    assert_eq!(format!("{secret:?}"), "***");
    assert_eq!(format!("{secret}"), "***");
    assert_eq!(secret.expose(), "hunter2");
}

#[test]
fn user_hash_is_not_printed_or_serialised() {
    let user = User {
        id: UserId(7),
        upn: Upn::parse("alice@corp.example.com").unwrap(),
        source: UserSource::Cloud,
        enabled: true,
        operator_enabled: true,
        directory_enabled: true,
        deleted: false,
        mfa_state: MfaState::Enforced,
        registered_at: None,
        created_at: 1,
        password_hash: Some("$argon2id$secret-ish".into()),
        directory: None,
    };
    assert!(!format!("{user:?}").contains("argon2"));
    let json = serde_json::to_string(&user).unwrap();
    assert!(!json.contains("argon2"), "{json}");
    assert!(json.contains("\"mfa_state\":\"enforced\""), "{json}");
    assert!(user.is_active());
    assert!(!User { deleted: true, ..user }.is_active());
}

#[test]
fn secret_record_does_not_print_tag_or_hash() {
    let record = AppPasswordSecretRecord {
        id: AppPasswordId(1),
        user_id: UserId(2),
        name: "phone".into(),
        tag: [0xab; 32],
        hash: "$argon2id$xyz".into(),
        limits: Default::default(),
    };
    let shown = format!("{record:?}");
    assert!(!shown.contains("argon2") && !shown.contains("171"), "{shown}");
}

#[test]
fn audit_text_is_bounded_and_printable() {
    assert_eq!(audit_text("abc", 2), "ab");
    assert_eq!(audit_text("a\nb\r\u{1b}", 10), "a\u{FFFD}b\u{FFFD}\u{FFFD}");
    assert_eq!(audit_text("ééé", 2), "éé");

    let record = AuditRecord {
        at: 1,
        upn_given: "x".repeat(1000),
        user_id: None,
        route: "/EWS".into(),
        credential: CredentialKind::Password,
        app_password_name: None,
        client_ip: "192.0.2.1".into(),
        user_agent: format!("agent\n{}", "y".repeat(5000)),
        success: false,
        reason: Reason::BadCredentials,
        policy: None,
        count: 1,
    }
    .clamped();
    assert_eq!(record.upn_given.chars().count(), MAX_AUDIT_UPN_CHARS);
    assert_eq!(record.user_agent.chars().count(), MAX_AUDIT_USER_AGENT_CHARS);
    assert!(record.user_agent.starts_with("agent\u{FFFD}"));
}

#[test]
fn clocks() {
    let clock = ManualClock::new(1_000);
    clock.advance(500);
    assert_eq!(clock.now_ms(), 1_500);
    clock.set(7);
    assert_eq!(clock.now_ms(), 7);
    // 2020-01-01 in unix ms: the wall clock is past it.
    assert!(SystemClock.now_ms() > 1_577_836_800_000);
}

#[test]
fn a_policy_denial_is_kept_as_reason_and_name() {
    assert_eq!(
        reason_text(Reason::PolicyDenied, Some("corp-only")),
        "policy_denied:corp-only"
    );
    assert_eq!(reason_text(Reason::Password, None), "password");
    assert_eq!(
        parse_reason_text("policy_denied:corp-only").unwrap(),
        (Reason::PolicyDenied, Some("corp-only".to_owned()))
    );
    assert_eq!(
        parse_reason_text("bad_credentials").unwrap(),
        (Reason::BadCredentials, None)
    );
    assert!(parse_reason_text("nonsense:x").is_err());
}
