//! `Host`, `:authority` and absolute-form authorities as a client may send
//! them: the parser refuses or answers without a panic, and what it accepts
//! it prints back in a form it accepts again unchanged.
#![no_main]

use fedgate::proxy::canonical::{parse_authority, request_target};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(authority) = parse_authority(text) {
        let printed = authority.to_string();
        let again = parse_authority(&printed).unwrap_or_else(|why| panic!("{printed:?} refused when read back: {why}"));
        assert_eq!(again, authority);
        assert_eq!(again.to_string(), printed);
        let host = authority.host();
        assert!(!host.is_empty());
        assert!(
            !host.bytes().any(|b| b"@/\\, \t:".contains(&b)) || printed.starts_with('['),
            "{host:?}"
        );
    }
    // The same text as the Host header of a request, and as the authority
    // of an absolute-form target.
    if let Ok(value) = http::HeaderValue::from_str(text) {
        let mut req = http::Request::new(());
        req.headers_mut().insert(http::header::HOST, value);
        let _ = request_target(&req);
    }
    if let Ok(uri) = format!("http://{text}/x").parse::<http::Uri>() {
        let mut req = http::Request::new(());
        *req.uri_mut() = uri;
        let _ = request_target(&req);
    }
});
