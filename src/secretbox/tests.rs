use super::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;

fn sample() -> SecretBox {
    SecretBox::from_bytes(&[7; KEY_LEN])
}

#[test]
fn sealed_values_open_with_the_same_key_and_associated_data() {
    let sbox = sample();
    let sealed = sbox.seal(b"twenty bytes of totp", b"user 1").unwrap();
    assert_eq!(sealed.len(), 20 + OVERHEAD);
    assert_eq!(sealed[0], VERSION);
    assert!(!sealed.windows(20).any(|w| w == b"twenty bytes of totp"));
    assert_eq!(&sbox.open(&sealed, b"user 1").unwrap()[..], b"twenty bytes of totp");
    // Empty values round-trip too.
    let empty = sbox.seal(b"", b"").unwrap();
    assert!(sbox.open(&empty, b"").unwrap().is_empty());
}

#[test]
fn each_seal_uses_a_fresh_nonce() {
    let sbox = sample();
    let a = sbox.seal(b"same", b"ad").unwrap();
    let b = sbox.seal(b"same", b"ad").unwrap();
    assert_ne!(a, b);
    assert_ne!(a[1..1 + NONCE_LEN], b[1..1 + NONCE_LEN]);
}

#[test]
fn other_associated_data_does_not_open() {
    let sbox = sample();
    let sealed = sbox.seal(b"secret", b"user 1").unwrap();
    for ad in [&b"user 2"[..], b"", b"user 1\0"] {
        let err = sbox.open(&sealed, ad).unwrap_err();
        assert!(matches!(err, SecretBoxError::Open { .. }), "{err}");
    }
}

#[test]
fn another_key_does_not_open() {
    let sealed = sample().seal(b"secret", b"ad").unwrap();
    let other = SecretBox::from_bytes(&[8; KEY_LEN]);
    assert!(matches!(
        other.open(&sealed, b"ad").unwrap_err(),
        SecretBoxError::Open { .. }
    ));
}

#[test]
fn any_altered_byte_is_detected() {
    let sbox = sample();
    let sealed = sbox.seal(b"secret", b"ad").unwrap();
    for i in 0..sealed.len() {
        let mut tampered = sealed.clone();
        tampered[i] ^= 0x01;
        let err = sbox.open(&tampered, b"ad").unwrap_err();
        let expected = if i == 0 {
            matches!(err, SecretBoxError::UnknownVersion { found: 0 })
        } else {
            matches!(err, SecretBoxError::Open { .. })
        };
        assert!(expected, "byte {i}: {err}");
    }
    // Cut short, or a tag's worth of bytes dropped.
    assert!(matches!(
        sbox.open(&sealed[..OVERHEAD - 1], b"ad").unwrap_err(),
        SecretBoxError::TooShort { .. }
    ));
    assert!(matches!(
        sbox.open(&sealed[..sealed.len() - 1], b"ad").unwrap_err(),
        SecretBoxError::Open { .. }
    ));
}

#[test]
fn oversized_values_are_not_sealed() {
    let err = sample().seal(&vec![0; MAX_PLAINTEXT + 1], b"").unwrap_err();
    assert!(matches!(err, SecretBoxError::TooLong { .. }), "{err}");
}

#[test]
fn the_key_file_is_made_private_on_first_use_and_reused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data/portal.key");
    let first = SecretBox::load_or_create(&path).unwrap();
    let meta = fs::metadata(&path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(meta.len(), KEY_LEN as u64 * 2 + 1);

    let sealed = first.seal(b"secret", b"ad").unwrap();
    let second = SecretBox::load_or_create(&path).unwrap();
    assert_eq!(&second.open(&sealed, b"ad").unwrap()[..], b"secret");

    // A failure to open names the key file, so the operator knows which
    // file to look for.
    let message = second.open(&sealed, b"other").unwrap_err().to_string();
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert_eq!(format!("{second:?}").matches("***").count(), 1);
}

#[test]
fn wrong_size_or_loose_permissions_are_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portal.key");
    fs::write(&path, [1u8; 16]).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    let message = SecretBox::load_or_create(&path).unwrap_err().to_string();
    assert!(message.contains("portal key file"), "{message}");
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(message.contains("holds 16 bytes"), "{message}");

    fs::write(&path, [1u8; KEY_LEN]).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    let err = SecretBox::load_or_create(&path).unwrap_err();
    assert!(
        matches!(err, SecretBoxError::Key(KeyError::Permissions { mode: 0o644, .. })),
        "{err}"
    );
    let message = err.to_string();
    assert!(message.contains(&format!("chmod 600 {}", path.display())), "{message}");

    // Raw 32-byte files, as an operator may provide, are accepted.
    fs::set_permissions(&path, fs::Permissions::from_mode(0o400)).unwrap();
    let sealed = SecretBox::from_bytes(&[1; KEY_LEN]).seal(b"x", b"").unwrap();
    let loaded = SecretBox::load_or_create(&path).unwrap();
    assert_eq!(&loaded.open(&sealed, b"").unwrap()[..], b"x");
}
