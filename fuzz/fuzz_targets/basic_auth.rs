//! `Authorization` values as a client may send them: the Basic parser
//! answers with a value for every one, and a name it returns never holds
//! the colon that separates it from the password (RFC 7617).
#![no_main]

use fedgate::auth::basic::{parse, Presented};
use http::header::{HeaderMap, HeaderValue, AUTHORIZATION};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Two values split at the first 0xff byte: a second header must make
    // the whole thing malformed.
    let mut headers = HeaderMap::new();
    let mut parts = data.splitn(2, |b| *b == 0xff);
    let first = parts.next().unwrap_or_default();
    let second = parts.next();
    let Ok(value) = HeaderValue::from_bytes(first) else {
        return;
    };
    headers.append(AUTHORIZATION, value);
    if let Some(second) = second {
        let Ok(value) = HeaderValue::from_bytes(second) else {
            return;
        };
        headers.append(AUTHORIZATION, value);
    }
    match parse(&headers) {
        Presented::Basic { user, .. } => {
            assert!(second.is_none(), "two Authorization headers were read as one");
            assert!(!user.contains(':'), "a user name kept the separator");
        }
        Presented::None | Presented::Malformed => {}
    }
});
