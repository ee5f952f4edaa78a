use super::*;

fn key(byte: u8) -> ServerKey {
    ServerKey::from_bytes([byte; 32])
}

#[test]
fn generated_passwords_show_in_four_groups_and_normalize_back() {
    for _ in 0..200 {
        let password = generate();
        let canonical = password.expose();
        assert_eq!(canonical.len(), LETTERS);
        assert!(canonical.bytes().all(|b| b.is_ascii_lowercase()));

        let shown = password.display_form();
        let groups: Vec<&str> = shown.expose().split('-').collect();
        assert_eq!(groups.len(), 4, "{}", shown.expose());
        assert!(groups.iter().all(|g| g.len() == 4));

        assert_eq!(normalize(shown.expose()).as_ref(), Some(&password));
        assert_eq!(normalize(canonical).as_ref(), Some(&password));
    }
}

#[test]
fn normalize_accepts_spaces_dashes_and_any_case() {
    let password = generate();
    let shown = password.display_form().expose().to_owned();
    let variants = [
        shown.to_uppercase(),
        shown.replace('-', " "),
        format!("  {}  ", shown.replace('-', "")),
        shown.replace('-', " - "),
    ];
    for variant in variants {
        assert_eq!(normalize(&variant).as_ref(), Some(&password), "{variant:?}");
        assert!(is_app_password_shaped(&variant));
    }
}

#[test]
fn every_single_letter_typo_is_refused() {
    for _ in 0..20 {
        let password = generate();
        let letters = password.expose().as_bytes().to_vec();
        for position in 0..LETTERS {
            for letter in b'a'..=b'z' {
                if letter == letters[position] {
                    continue;
                }
                let mut typo = letters.clone();
                typo[position] = letter;
                let typo = String::from_utf8(typo).unwrap();
                assert!(normalize(&typo).is_none(), "{typo} passed the check");
                assert_eq!(classify(&typo), Shape::Mistyped, "{typo}");
            }
        }
    }
}

#[test]
fn swapped_neighbours_are_refused() {
    for _ in 0..50 {
        let password = generate();
        let letters = password.expose().as_bytes().to_vec();
        for i in 0..RANDOM_LETTERS - 1 {
            if letters[i] == letters[i + 1] {
                continue;
            }
            let mut swapped = letters.clone();
            swapped.swap(i, i + 1);
            let swapped = String::from_utf8(swapped).unwrap();
            assert!(normalize(&swapped).is_none(), "{swapped} passed the check");
        }
    }
}

#[test]
fn other_shapes_are_not_app_passwords() {
    let password = generate();
    let canonical = password.expose();
    let too_long = format!("{canonical}a");
    let with_digit = format!("{}1", &canonical[..15]);
    let with_underscore = format!("_{}", &canonical[1..]);
    let padded = format!("{}{}", " ".repeat(70), canonical);
    for input in [
        "",
        &canonical[..15],
        too_long.as_str(),
        with_digit.as_str(),
        with_underscore.as_str(),
        padded.as_str(),
        "correct horse battery staple",
        "ÄÖÜabcdefghijklm",
    ] {
        assert!(!is_app_password_shaped(input), "{input:?}");
    }
    // Offsets keep the most obvious human string from passing the check;
    // it still has the shape, so it is a mistyped app password, never a
    // directory password.
    assert!(normalize("aaaaaaaaaaaaaaaa").is_none());
    assert_eq!(classify("aaaaaaaaaaaaaaaa"), Shape::Mistyped);
    assert_eq!(classify("abcd-efgh-ijkl-mnop"), Shape::Mistyped);
    assert_eq!(classify("ABCD EFGH IJKL MNOP"), Shape::Mistyped);
    assert_eq!(classify("abcd-efgh ijkl-mnop"), Shape::Mistyped);
    assert!(is_app_password_shaped("abcdefghijklmnop"));
    // Passphrases of 16 letters in other groups stay passwords.
    for passphrase in [
        "Blue-Sky-Green-Tree",
        "blue sky green tree",
        "abcd--efgh-ijkl-mnop",
        "-abcd-efgh-ijkl-mnop",
        "abcd-efgh-ijkl-mnop-",
        "abcdefgh-ijklmnop",
        "a-b-c-d-e-f-g-h-i-j-k-l-m-n-o-p",
    ] {
        assert_eq!(classify(passphrase), Shape::Other, "{passphrase:?}");
    }
}

#[test]
fn random_letter_strings_rarely_pass() {
    // 26 000 strings of 16 letters at 1/676 expect ~38 to pass.
    let mut passed = 0;
    for _ in 0..26_000 {
        let s: String = (0..16).map(|_| char::from(b'a' + OsRng.gen_range(0..26u8))).collect();
        passed += usize::from(normalize(&s).is_some());
        assert!(is_app_password_shaped(&s));
    }
    assert!((10..100).contains(&passed), "{passed} passed");
}

#[test]
fn lookup_tag_is_stable_and_depends_on_key_and_password() {
    let a = generate();
    let b = generate();
    let again = normalize(a.display_form().expose()).unwrap();
    assert_eq!(lookup_tag(&key(1), &a), lookup_tag(&key(1), &again));
    assert_ne!(lookup_tag(&key(1), &a), lookup_tag(&key(2), &a));
    assert_ne!(lookup_tag(&key(1), &a), lookup_tag(&key(1), &b));
    // Domain-separated: not the plain HMAC of the letters.
    assert_ne!(lookup_tag(&key(1), &a), key(1).mac("", a.expose().as_bytes()));
}

#[test]
fn app_password_hash_verifies_only_its_password() {
    let password = generate();
    let phc = hash(&password).unwrap();
    assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
    assert!(verify(&password, &phc));
    assert!(!verify(&generate(), &phc));
    assert!(!verify(&password, "not a phc string"));
    assert!(!needs_rehash(&phc));
    // A fresh salt every time.
    assert_ne!(hash(&password).unwrap(), phc);
}

#[test]
fn cloud_passwords_hash_and_verify() {
    let password = Secret::from("correct horse battery staple");
    let phc = hash_password(&password).unwrap();
    assert!(verify_password(&password, &phc));
    assert!(!verify_password(&Secret::from("Correct horse battery staple"), &phc));
    assert!(!verify_password(&Secret::from(""), &phc));
    assert!(matches!(
        hash_password(&Secret::from("")),
        Err(CredentialError::EmptyPassword)
    ));
    assert!(matches!(
        hash_password(&Secret::new("x".repeat(MAX_PASSWORD_BYTES + 1))),
        Err(CredentialError::PasswordTooLong { .. })
    ));
}

#[test]
fn older_parameters_need_rehash_but_still_verify() {
    let secret = b"abcdefghijklmnop";
    let old = Argon2::new(
        Algorithm::Argon2id,
        Version::V0x13,
        argon2::Params::new(8 * 1024, 1, 1, None).unwrap(),
    );
    let salt = SaltString::generate(&mut OsRng);
    let phc = old.hash_password(secret, &salt).unwrap().to_string();
    assert!(needs_rehash(&phc));
    assert!(verify_bytes(secret, &phc));
    assert!(needs_rehash("$2y$05$bcrypt-hash"));
}

#[test]
fn dummy_hash_is_made_once_with_live_parameters_and_matches_nothing() {
    let dummy = dummy_hash();
    assert!(std::ptr::eq(dummy, dummy_hash()));
    assert!(!needs_rehash(dummy));
    assert!(!verify(&generate(), dummy));
}

#[test]
fn canonical_passwords_do_not_print() {
    let password = generate();
    assert!(!format!("{password:?}").contains(password.expose()));
}
