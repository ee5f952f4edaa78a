use super::*;

/// The RFC 6238 Appendix B SHA-1 secret.
fn rfc_secret() -> TotpSecret {
    TotpSecret::from_bytes(b"12345678901234567890").unwrap()
}

fn upn(s: &str) -> Upn {
    Upn::parse(s).unwrap()
}

#[test]
fn codes_match_the_rfc_6238_sha1_vectors() {
    // Appendix B's 8-digit values; a 6-digit code is their last 6 digits.
    let vectors: [(u64, &str); 6] = [
        (59, "94287082"),
        (1_111_111_109, "07081804"),
        (1_111_111_111, "14050471"),
        (1_234_567_890, "89005924"),
        (2_000_000_000, "69279037"),
        (20_000_000_000, "65353130"),
    ];
    let secret = rfc_secret();
    for (time, eight) in vectors {
        assert_eq!(format_code(secret.code_at(time)), eight[2..], "T = {time}");
    }
    assert_eq!(format_code(secret.code_at(1_111_111_109)), "081804");
}

#[test]
fn a_code_is_accepted_in_its_step_and_one_either_side() {
    let secret = rfc_secret();
    let t = 1_111_111_111; // step 37037037, 21 s into it
    let step = step_at(t);
    let code = format_code(secret.code_at(t));
    assert_eq!(secret.verify(&code, t, None), Some(step));
    // The same step's first and last second.
    assert_eq!(secret.verify(&code, step * PERIOD_SECS, None), Some(step));
    assert_eq!(secret.verify(&code, step * PERIOD_SECS + 29, None), Some(step));
    // Phone clock one step behind or ahead of the server.
    assert_eq!(secret.verify(&code, (step + 1) * PERIOD_SECS + 29, None), Some(step));
    assert_eq!(secret.verify(&code, (step - 1) * PERIOD_SECS, None), Some(step));
    // Two steps off is too far.
    assert_eq!(secret.verify(&code, (step + 2) * PERIOD_SECS, None), None);
    assert_eq!(secret.verify(&code, (step - 1) * PERIOD_SECS - 1, None), None);
}

#[test]
fn a_code_is_accepted_once() {
    let secret = rfc_secret();
    let t = 1_234_567_890;
    let code = format_code(secret.code_at(t));
    let step = secret.verify(&code, t, None).unwrap();
    // Again, in the same step or the next (still inside the window).
    assert_eq!(secret.verify(&code, t, Some(step)), None);
    assert_eq!(secret.verify(&code, t + PERIOD_SECS, Some(step)), None);
    // Once a newer code was used, an older one (still in the window) is
    // refused too.
    let older = format_code(secret.code_at(t - PERIOD_SECS));
    assert_eq!(secret.verify(&older, t, Some(step)), None);
    assert_eq!(secret.verify(&older, t, Some(step - 2)), Some(step - 1));
    // The next step's code is fresh.
    let next = format_code(secret.code_at(t + PERIOD_SECS));
    assert_eq!(secret.verify(&next, t + PERIOD_SECS, Some(step)), Some(step + 1));
}

#[test]
fn input_may_have_spaces_but_must_be_six_digits() {
    let secret = rfc_secret();
    let t = 59; // code 287082
    assert_eq!(secret.verify("287082", t, None), Some(1));
    for spaced in ["287 082", " 287082 ", "2 8 7 0 8 2", "287\u{a0}082", "\t287082\n"] {
        assert_eq!(secret.verify(spaced, t, None), Some(1), "{spaced:?}");
    }
    for bad in [
        "",
        "   ",
        "28708",
        "2870820",
        "94287082",
        "287-082",
        "28708a",
        "+87082",
        "２８７０８２", // full-width digits
        "٢٨٧٠٨٢",       // Arabic-Indic digits
        "287082287082287082287082287082287082",
    ] {
        assert_eq!(secret.verify(bad, t, None), None, "{bad:?}");
    }
    // A wrong code of the right shape.
    let wrong = format_code((secret.code_at(t) + 1) % MODULUS);
    assert_eq!(secret.verify(&wrong, t, None), None);
}

#[test]
fn the_first_steps_after_the_epoch_do_not_underflow() {
    let secret = rfc_secret();
    let code = format_code(secret.code_at(0));
    assert_eq!(secret.verify(&code, 0, None), Some(0));
    assert_eq!(secret.verify(&code, 0, Some(0)), None);
    assert!(secret.code_at(u64::MAX) < MODULUS);
}

#[test]
fn the_text_key_is_grouped_unpadded_base32() {
    let key = rfc_secret().text_key();
    assert_eq!(key.expose(), "GEZD GNBV GY3T QOJQ GEZD GNBV GY3T QOJQ");
    let generated = TotpSecret::generate();
    let text = generated.text_key();
    assert_eq!(text.expose().len(), 32 + 7);
    let compact: String = text.expose().split(' ').collect();
    assert_eq!(BASE32_NOPAD.decode(compact.as_bytes()).unwrap(), generated.expose());
}

#[test]
fn the_otpauth_uri_names_issuer_account_and_parameters() {
    let uri = rfc_secret().otpauth_uri("Contoso", &upn("Alice@Corp.Example.com"));
    assert_eq!(
        uri.expose(),
        "otpauth://totp/Contoso:alice@corp.example.com?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ\
         &issuer=Contoso&algorithm=SHA1&digits=6&period=30"
    );
    // Spaces, colons, ampersands and non-ASCII are escaped where they
    // could change the URI's meaning.
    let uri = rfc_secret().otpauth_uri("Acme & Co: IT", &upn("bo b@x.example"));
    assert_eq!(
        uri.expose(),
        "otpauth://totp/Acme%20%26%20Co%3A%20IT:bo%20b@x.example?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ\
         &issuer=Acme%20%26%20Co%3A%20IT&algorithm=SHA1&digits=6&period=30"
    );
    let uri = rfc_secret().otpauth_uri("Müller", &upn("a@x.example"));
    assert!(uri.expose().contains("issuer=M%C3%BCller&"), "{}", uri.expose());
    assert_eq!(format!("{uri:?}"), "***");
}

#[test]
fn the_qr_code_is_an_accessible_self_contained_svg() {
    let svg = rfc_secret()
        .qr_svg("Contoso <IT>", &upn("alice@corp.example.com"))
        .unwrap();
    assert!(
        svg.starts_with(r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 "#),
        "{svg}"
    );
    assert!(svg.ends_with("</svg>"));
    assert!(svg.contains(r#"role="img""#));
    assert!(svg.contains(
        r#"aria-label="QR code to add alice@corp.example.com at Contoso &lt;IT&gt; to an authenticator app""#
    ));
    assert!(svg.contains("<title>QR code to add alice@corp.example.com at Contoso &lt;IT&gt;"));
    assert!(svg.contains(r##"fill="#ffffff""##) && svg.contains(r##"fill="#000000""##));
    // Nothing fetched from elsewhere, no script: the only URL is the SVG
    // namespace.
    assert!(!svg.contains("href") && !svg.contains("<script"));
    assert_eq!(svg.matches("http").count(), 1);
    // No raw secret or URI in the markup.
    assert!(!svg.contains("GEZDGNBV") && !svg.contains("otpauth"));
}

#[test]
fn the_qr_matrix_is_drawn_inside_a_quiet_zone() {
    let code = QrCode::with_error_correction_level(
        rfc_secret()
            .otpauth_uri("Contoso", &upn("alice@corp.example.com"))
            .expose(),
        EcLevel::M,
    )
    .unwrap();
    let svg = rfc_secret().qr_svg("Contoso", &upn("alice@corp.example.com")).unwrap();
    let size = code.width() + 2 * QUIET_ZONE;
    assert!(svg.contains(&format!(r#"viewBox="0 0 {size} {size}""#)));

    // Redraw the path onto a grid and compare it with the encoder's matrix.
    let d = svg.split(r#" d=""#).nth(1).unwrap().split('"').next().unwrap();
    let mut grid = vec![false; size * size];
    for square in d.split('M').filter(|s| !s.is_empty()) {
        let (xy, rest) = square.split_once('h').unwrap();
        let (x, y) = xy.split_once(' ').unwrap();
        let (x, y): (usize, usize) = (x.parse().unwrap(), y.parse().unwrap());
        let run: usize = rest.split_once('v').unwrap().0.parse().unwrap();
        for dx in 0..run {
            assert!(!grid[y * size + x + dx], "drawn twice");
            grid[y * size + x + dx] = true;
        }
    }
    let colors = code.to_colors();
    for y in 0..size {
        for x in 0..size {
            let inside = (QUIET_ZONE..QUIET_ZONE + code.width()).contains(&x)
                && (QUIET_ZONE..QUIET_ZONE + code.width()).contains(&y);
            let dark = inside && colors[(y - QUIET_ZONE) * code.width() + (x - QUIET_ZONE)] == Color::Dark;
            assert_eq!(grid[y * size + x], dark, "module ({x}, {y})");
        }
    }
}

#[test]
fn an_issuer_too_long_for_a_qr_code_is_an_error() {
    let err = rfc_secret()
        .qr_svg(&"x".repeat(5000), &upn("alice@corp.example.com"))
        .unwrap_err();
    assert!(matches!(err, TotpError::QrCode { .. }), "{err}");
    assert!(err.to_string().contains("issuer"));
}

#[test]
fn secrets_are_random_hidden_and_checked_for_length() {
    let a = TotpSecret::generate();
    let b = TotpSecret::generate();
    assert_ne!(a.expose(), b.expose());
    assert_eq!(format!("{a:?}"), "TotpSecret(***)");
    for len in [0, 10, 19, 21, 32] {
        assert!(matches!(
            TotpSecret::from_bytes(&vec![1; len]),
            Err(TotpError::SecretLength { len: l }) if l == len
        ));
    }
}

#[test]
fn sealed_secrets_open_only_for_their_user() {
    let secret_box = SecretBox::from_bytes(&[3; 32]);
    let secret = TotpSecret::generate();
    let sealed = secret.seal(&secret_box, UserId(7)).unwrap();
    assert!(!sealed.windows(SECRET_LEN).any(|w| w == secret.expose()));
    let opened = TotpSecret::open(&secret_box, &sealed, UserId(7)).unwrap();
    assert_eq!(opened.expose(), secret.expose());
    let err = TotpSecret::open(&secret_box, &sealed, UserId(8)).unwrap_err();
    assert!(matches!(err, TotpError::Sealed(SecretBoxError::Open { .. })), "{err}");
    // A value sealed for another purpose does not open as a TOTP secret.
    let other = secret_box.seal(secret.expose(), &7i64.to_be_bytes()).unwrap();
    assert!(TotpSecret::open(&secret_box, &other, UserId(7)).is_err());
}
