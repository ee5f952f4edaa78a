//! Request paths as a client may write them: the canonicaliser refuses or
//! answers without a panic, and what it answers is a fixed point with no
//! dot segment, no empty segment and nothing a route could be walked
//! around with.
#![no_main]

use fedgate::proxy::canonical::{canonical_path, check_query};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (path, query) = text.split_once('?').unwrap_or((text, ""));
    let _ = check_query(query);
    let Ok(canonical) = canonical_path(path) else { return };
    let once = canonical.as_str().to_owned();
    let key = canonical.route_key().to_owned();
    let _ = canonical.check_route(false, false);
    let _ = canonical.check_route(true, true);

    assert!(
        once.starts_with('/'),
        "canonical path does not start at the root: {once:?}"
    );
    for p in [&once, &key] {
        assert!(!p.contains("//"), "empty segment in {p:?} from {path:?}");
        for segment in p.split('/') {
            assert!(segment != "." && segment != "..", "dot segment in {p:?} from {path:?}");
        }
        assert!(!p.bytes().any(|b| b.is_ascii_control() || b == b'\\'), "{p:?}");
    }
    let twice = canonical_path(&once).unwrap_or_else(|why| panic!("{once:?} refused on its second pass: {why}"));
    assert_eq!(twice.as_str(), once, "not idempotent");
    assert_eq!(twice.route_key(), key, "route key moved on the second pass");
});
