//! Active Directory's encodings: the sub-code in a failed bind's diagnostic
//! message, and `objectGUID` as the GUID string Windows prints.

/// Why AD refused a bind, from the `data NNN` sub-code of its diagnostic
/// message (`80090308: LdapErr: DSID-0C09042A, comment: AcceptSecurityContext
/// error, data 52e, v3839`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindFailure {
    /// 52e (wrong password), 525 (no such user), or no sub-code at all
    /// (any other server).
    InvalidCredentials,
    /// 533 (account disabled), 701 (account expired).
    Disabled,
    /// 775 (locked out).
    LockedOut,
    /// 532 (password expired), 773 (must change password): the password
    /// was right, but a mail client cannot change it; refused like a wrong
    /// one so the user is prompted.
    PasswordExpired,
}

pub fn bind_failure(diagnostic: &str) -> BindFailure {
    let code = diagnostic
        .split([',', ':'])
        .map(str::trim)
        .find_map(|part| part.strip_prefix("data "))
        .map(|code| code.trim().to_ascii_lowercase());
    match code.as_deref() {
        Some("533" | "701") => BindFailure::Disabled,
        Some("775") => BindFailure::LockedOut,
        Some("532" | "773") => BindFailure::PasswordExpired,
        _ => BindFailure::InvalidCredentials,
    }
}

/// `objectGUID`'s 16 bytes as Windows prints them: the first three fields
/// are little-endian.
pub fn guid_string(bytes: &[u8]) -> Option<String> {
    let b: &[u8; 16] = bytes.try_into().ok()?;
    Some(format!(
        "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
        b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_sub_codes() {
        let msg = |code: &str| {
            format!("80090308: LdapErr: DSID-0C09042A, comment: AcceptSecurityContext error, data {code}, v3839")
        };
        assert_eq!(bind_failure(&msg("52e")), BindFailure::InvalidCredentials);
        assert_eq!(bind_failure(&msg("525")), BindFailure::InvalidCredentials);
        assert_eq!(bind_failure(&msg("533")), BindFailure::Disabled);
        assert_eq!(bind_failure(&msg("701")), BindFailure::Disabled);
        assert_eq!(bind_failure(&msg("775")), BindFailure::LockedOut);
        assert_eq!(bind_failure(&msg("532")), BindFailure::PasswordExpired);
        assert_eq!(bind_failure(&msg("773")), BindFailure::PasswordExpired);
        assert_eq!(bind_failure(""), BindFailure::InvalidCredentials);
        assert_eq!(bind_failure("data"), BindFailure::InvalidCredentials);
    }

    #[test]
    fn object_guid_prints_like_windows() {
        let bytes = [
            0x33, 0x22, 0x11, 0x00, 0x55, 0x44, 0x77, 0x66, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff,
        ];
        assert_eq!(guid_string(&bytes).unwrap(), "00112233-4455-6677-8899-aabbccddeeff");
        assert_eq!(guid_string(&bytes[..15]), None);
    }
}
