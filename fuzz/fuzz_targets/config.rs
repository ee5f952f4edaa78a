//! Config files as an operator may mistype them: every text is a config or
//! an error that names what is wrong, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match fedgate::config::Config::parse(text, std::path::Path::new("fuzz.toml")) {
        Ok(_) => {}
        Err(err) => assert!(!err.to_string().is_empty()),
    }
});
