use super::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn first_use_creates_a_private_hex_file_and_later_uses_read_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys/server.key");
    let first = load_or_create(&path).unwrap();
    assert_eq!(mode(&path), 0o600);
    let text = fs::read_to_string(&path).unwrap();
    assert_eq!(text.len(), KEY_LEN * 2 + 1);
    assert!(text.trim_end().bytes().all(|b| b.is_ascii_hexdigit()));
    // No temporary file left behind.
    assert_eq!(fs::read_dir(path.parent().unwrap()).unwrap().count(), 1);

    let second = load_or_create(&path).unwrap();
    assert_eq!(first.mac("t", b"x"), second.mac("t", b"x"));
}

#[test]
fn raw_32_byte_files_are_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raw.key");
    let bytes: [u8; KEY_LEN] = std::array::from_fn(|i| i as u8 * 7);
    fs::write(&path, bytes).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o400)).unwrap();
    let key = load_or_create(&path).unwrap();
    assert_eq!(key.mac("t", b"x"), ServerKey::from_bytes(bytes).mac("t", b"x"));
}

#[test]
fn readable_by_others_is_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("server.key");
    load_or_create(&path).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
    let err = load_or_create(&path).unwrap_err();
    assert!(matches!(err, KeyError::Permissions { mode: 0o640, .. }));
    let message = err.to_string();
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(message.contains("chmod 600"), "{message}");
}

#[test]
fn wrong_length_and_bad_hex_are_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("server.key");
    for (contents, expected) in [
        (b"abcdef\n".to_vec(), "holds 7 bytes"),
        (vec![b'a'; 200], "holds 200 bytes"),
        (format!("{}\n", "zz".repeat(KEY_LEN)).into_bytes(), "is not valid hex"),
    ] {
        let _ = fs::remove_file(&path);
        fs::write(&path, &contents).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let message = load_or_create(&path).unwrap_err().to_string();
        assert!(message.contains(expected), "{message}");
        assert!(message.contains(&path.display().to_string()), "{message}");
    }
}

#[test]
fn a_directory_is_not_a_key() {
    let dir = tempfile::tempdir().unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700)).unwrap();
    let err = load_or_create(dir.path()).unwrap_err();
    assert!(matches!(err, KeyError::NotAFile { .. }), "{err}");
}

#[test]
fn processes_starting_together_agree_on_one_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("server.key");
    let macs: Vec<[u8; 32]> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|_| scope.spawn(|| load_or_create(&path).unwrap().mac("t", b"x")))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(macs.windows(2).all(|w| w[0] == w[1]));
}

#[test]
fn macs_are_domain_separated_and_keys_do_not_print() {
    let key = ServerKey::from_bytes([9; KEY_LEN]);
    assert_ne!(key.mac("a", b"bc"), key.mac("ab", b"c"));
    assert_ne!(key.mac("a", b"x"), ServerKey::generate().mac("a", b"x"));
    assert_eq!(format!("{key:?}"), "ServerKey(***)");
}
