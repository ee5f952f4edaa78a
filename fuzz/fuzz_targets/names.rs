//! User names as a client may type them: the normaliser refuses or answers
//! without a panic, what it answers is a fixed point, and without the
//! non-ASCII option it is plain ASCII.
#![no_main]

use fedgate::names::normalize;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    for allow_non_ascii in [false, true] {
        let Ok(name) = normalize(text, allow_non_ascii) else {
            continue;
        };
        let again = normalize(&name, allow_non_ascii)
            .unwrap_or_else(|why| panic!("{name:?} refused on its second pass: {why}"));
        assert_eq!(again, name, "not idempotent");
        assert!(
            allow_non_ascii || name.is_ascii(),
            "non-ASCII name {name:?} let through"
        );
        assert!(!name.chars().any(char::is_control), "{name:?}");
        assert!(name.len() <= 256, "over-long name let through");
    }
    // The login forms the directory sees go through the same folding.
    let _ = fedgate::directory::LoginName::parse(text, Some("CORP"), false);
    let _ = fedgate::directory::LoginName::parse(text, None, true);
    let _ = fedgate::model::Upn::parse(text);
});
