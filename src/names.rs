//! User names as a client gives them, made canonical once: what the index
//! matches, what the lockout counts and what the directory is sent are one
//! and the same string.
//!
//! [`normalize`] is the only place a name is folded. It refuses, before any
//! other work, names over [`MAX_NAME_BYTES`] and names with control or
//! invisible characters; then applies Unicode NFKC (so fullwidth `ａ`,
//! mathematical `𝐚`, `ª` and the Kelvin sign become plain letters), lowercases,
//! applies NFKC again (lowercasing can leave a string that is not in normal
//! form), trims and collapses runs of spaces to one (LDAP's insignificant
//! space handling, RFC 4518 2.6.1). With `allow_non_ascii` off, a name that
//! is not ASCII *after* folding is refused: a directory's own matching
//! rules fold more than NFKC does (OpenLDAP takes `ALİCE` for `alice`), so
//! a non-ASCII name could name an account fedgate counts apart.
//!
//! The shape of a name (UPN, `DOMAIN\login`) is parsed from the canonical
//! string by [`crate::model::Upn`] and [`crate::directory::LoginName`].

use unicode_normalization::UnicodeNormalization;

/// Longest user name accepted, in bytes, as given and after folding.
pub const MAX_NAME_BYTES: usize = 256;

/// Why a name can be no user's. Messages name the rule, never the name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("user name is empty")]
    Empty,
    #[error("user name is {0} bytes long; at most {MAX_NAME_BYTES} are accepted")]
    TooLong(usize),
    #[error("user name contains a control or invisible character")]
    Control,
    #[error("user name is not ASCII after Unicode folding (directory.allow_non_ascii_logins is off)")]
    NonAscii,
    #[error("user name does not settle under Unicode folding")]
    Unstable,
}

/// Characters that print as nothing: a name holding one looks like another
/// name, and RFC 4518 has directories drop most of them before matching.
fn invisible(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{034F}' | '\u{061C}' | '\u{115F}' | '\u{1160}' | '\u{17B4}' | '\u{17B5}'
        | '\u{180B}'..='\u{180F}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{206F}' | '\u{3164}' | '\u{FE00}'..='\u{FE0F}' | '\u{FEFF}'
        | '\u{FFA0}' | '\u{FFF0}'..='\u{FFFB}' | '\u{E0000}'..='\u{E0FFF}')
}

fn fold(s: &str) -> String {
    // ASCII is its own NFKC form and lower-cases as ASCII: the usual name
    // skips the two normalisation passes, which cost a sign-in more than
    // the warm credential lookup does.
    let normal: String = if s.is_ascii() {
        s.to_ascii_lowercase()
    } else {
        let lowered: String = s.nfkc().collect::<String>().to_lowercase();
        lowered.nfkc().collect()
    };
    let mut out = String::with_capacity(normal.len());
    for word in normal.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out
}

/// The canonical form of a user name as given (see the module doc).
pub fn normalize(given: &str, allow_non_ascii: bool) -> Result<String, NameError> {
    if given.len() > MAX_NAME_BYTES {
        return Err(NameError::TooLong(given.len()));
    }
    if given.chars().any(|c| c.is_control() || invisible(c)) {
        return Err(NameError::Control);
    }
    let mut name = fold(given);
    // Folding is idempotent for all but a few pathological strings; a name
    // that still moves after a second round is refused rather than guessed at.
    let again = fold(&name);
    if again != name {
        if fold(&again) != again {
            return Err(NameError::Unstable);
        }
        name = again;
    }
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(NameError::TooLong(name.len()));
    }
    if name.chars().any(|c| c.is_control() || invisible(c)) {
        return Err(NameError::Control);
    }
    if !allow_non_ascii && !name.is_ascii() {
        return Err(NameError::NonAscii);
    }
    Ok(name)
}

#[cfg(test)]
mod tests;
