use proptest::prelude::*;
use unicode_normalization::UnicodeNormalization;

use super::*;

#[test]
fn look_alikes_fold_to_the_ascii_name_or_are_refused() {
    for given in [
        "alice",
        "ALICE",
        " Alice ",
        "\u{FF41}lice",
        "a\u{FF4C}ice",
        "\u{1D41A}lice",
        "\u{AA}lice",
    ] {
        assert_eq!(normalize(given, false).as_deref(), Ok("alice"), "{given:?}");
    }
    // The Kelvin sign is a K under NFKC.
    assert_eq!(
        normalize("\u{212A}ate@x.example", false).as_deref(),
        Ok("kate@x.example")
    );
    // Fullwidth `＠` and `＼` are the ASCII ones.
    assert_eq!(
        normalize("alice\u{FF20}x.example", false).as_deref(),
        Ok("alice@x.example")
    );
    assert_eq!(normalize("CORP\u{FF3C}alice", false).as_deref(), Ok("corp\\alice"));
    // A dotted capital I lowercases to i and a combining dot: not ASCII.
    assert_eq!(normalize("AL\u{130}CE", false), Err(NameError::NonAscii));
    assert_eq!(normalize("AL\u{130}CE", true).as_deref(), Ok("ali\u{307}ce"));
    assert_eq!(normalize("j\u{FC}rgen", false), Err(NameError::NonAscii));
    assert_eq!(normalize("J\u{FC}rgen", true).as_deref(), Ok("j\u{FC}rgen"));
    assert_eq!(normalize("john   smith", false).as_deref(), Ok("john smith"));
    assert_eq!(normalize("john\u{3000}smith", false).as_deref(), Ok("john smith"));
}

#[test]
fn refusals_come_first() {
    assert_eq!(normalize("", false), Err(NameError::Empty));
    assert_eq!(normalize("   ", true), Err(NameError::Empty));
    assert_eq!(normalize("nul\0", true), Err(NameError::Control));
    assert_eq!(normalize("a\nb", true), Err(NameError::Control));
    assert_eq!(normalize("al\u{AD}ice", true), Err(NameError::Control));
    assert_eq!(normalize("al\u{200B}ice", true), Err(NameError::Control));
    assert_eq!(normalize(&"x".repeat(257), true), Err(NameError::TooLong(257)));
    assert_eq!(normalize(&"x".repeat(256), false).map(|n| n.len()), Ok(256));
    // U+FDFA expands to 18 characters under NFKC.
    let expanding = "\u{FDFA}".repeat(20);
    assert!(expanding.len() <= MAX_NAME_BYTES);
    assert!(matches!(normalize(&expanding, true), Err(NameError::TooLong(_))));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn normalising_is_idempotent(given in "\\PC{0,40}", ascii in any::<bool>()) {
        if let Ok(once) = normalize(&given, !ascii) {
            prop_assert_eq!(normalize(&once, !ascii), Ok(once.clone()));
            prop_assert!(once.len() <= MAX_NAME_BYTES);
            prop_assert!(!ascii || once.is_ascii());
        }
    }

    #[test]
    fn ascii_folds_as_the_full_unicode_folding_would(given in "[ -~\t]{0,40}") {
        let full: String = {
            let lowered: String = given.nfkc().collect::<String>().to_lowercase();
            let normal: String = lowered.nfkc().collect();
            normal.split_whitespace().collect::<Vec<_>>().join(" ")
        };
        prop_assert_eq!(fold(&given), full);
    }

    #[test]
    fn spellings_that_normalise_alike_name_one_login(
        given in "[a-zA-Z\u{FF21}-\u{FF3A}\u{FF41}-\u{FF5A}\u{1D400}-\u{1D433}\u{212A}\u{AA}]{1,12}",
    ) {
        // Mixed fullwidth, mathematical and ASCII letters: the login the
        // directory is sent is the one the lockout counts.
        let name = normalize(&given, false).unwrap();
        let parsed = crate::directory::LoginName::parse(&given, None, false).unwrap();
        prop_assert_eq!(parsed.login(), name.as_str());
        let upn = crate::model::Upn::parse(&format!("{given}@x.example")).unwrap();
        prop_assert_eq!(upn.local_part(), name.as_str());
    }
}
