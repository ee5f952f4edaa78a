//! App-password format and the password crypto: generation, the
//! phone-friendly display form and its check letters, the keyed lookup tag,
//! and argon2id hashing for app passwords and cloud-user passwords alike.
//!
//! Everything here is a pure function of its inputs (plus the OS random
//! source for generation and salts). This module does not store anything,
//! does not decide who may use an app password, and does not schedule the
//! hashing: argon2 costs tens of milliseconds of CPU, so callers run
//! [`hash`], [`verify`], [`hash_password`] and [`verify_password`] on the
//! bounded hashing pool, never on the async reactor.
//!
//! # Format
//!
//! 16 lowercase letters, shown as `abcd-efgh-ijkl-mnop`. The first 14 are
//! random (14 × log2 26 ≈ 65.8 bits); the last 2 are check letters computed
//! from them, so a typo is caught before any lookup, and a string of this
//! shape can be recognised as an app password and kept away from the
//! directory (DESIGN.md). The check letters catch every single-letter
//! substitution and every swap of two neighbouring random letters; a random
//! string passes with probability 1/676.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Version};
use rand::rngs::OsRng;
use rand::Rng;
use std::sync::OnceLock;

use crate::model::Secret;
use crate::server_key::ServerKey;

/// At most this many app passwords per user (DESIGN.md).
pub const MAX_APP_PASSWORDS_PER_USER: usize = 40;

/// Letters in a canonical app password.
pub const LETTERS: usize = 16;
/// Random letters; the rest are check letters.
const RANDOM_LETTERS: usize = 14;
/// Letters per displayed group.
const GROUP: usize = 4;
/// Inputs longer than this are not app passwords; refusing them early
/// keeps a megabyte "password" from being scanned character by character.
const MAX_INPUT_BYTES: usize = 64;
/// Longest cloud-user password accepted for hashing. Far above any real
/// password; it bounds the work an attacker can ask argon2 to do.
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// Domain-separation label for the lookup tag, so the server key can serve
/// other MACs (cache keys, cookies) without one value standing in for
/// another.
const TAG_DOMAIN: &str = "fedgate/app-password-tag/v1";

/// argon2id cost parameters: the one place they are set. Changing them
/// affects new hashes only; [`verify`] reads the parameters from the hash,
/// and [`needs_rehash`] tells when a stored hash is out of date.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    /// Memory in KiB.
    pub m_cost_kib: u32,
    /// Passes over memory.
    pub t_cost: u32,
    /// Lanes.
    pub p_cost: u32,
}

/// The OWASP-recommended argon2id minimum: 19 MiB, 2 passes, 1 lane.
pub const PARAMS: Params = Params {
    m_cost_kib: 19_456,
    t_cost: 2,
    p_cost: 1,
};

/// [`PARAMS`] in argon2's own type, checked at compile time: an invalid
/// combination fails the build instead of the first sign-in.
const ARGON2_PARAMS: argon2::Params = match argon2::Params::new(PARAMS.m_cost_kib, PARAMS.t_cost, PARAMS.p_cost, None) {
    Ok(params) => params,
    Err(_) => panic!("PARAMS are not valid argon2 parameters"),
};

/// A password could not be hashed.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("the password is empty")]
    EmptyPassword,
    #[error("the password is {len} bytes long; at most {MAX_PASSWORD_BYTES} are accepted")]
    PasswordTooLong { len: usize },
    #[error("argon2id hashing failed: {0}")]
    Hash(argon2::password_hash::Error),
    #[error("the hashing task ended abnormally")]
    Interrupted,
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// Issues a new app password with `limits`: generates it, hashes it off
/// the async reactor, tags it and stores it. Returns the record and the password in
/// its display form, to be shown once.
pub async fn issue(
    store: &dyn crate::store::Store,
    key: &ServerKey,
    user: crate::model::UserId,
    name: crate::model::AppPasswordName,
    limits: crate::model::AppPasswordLimits,
) -> Result<(crate::model::AppPassword, Secret), CredentialError> {
    let (password, hash) = tokio::task::spawn_blocking(|| {
        let password = generate();
        let hash = hash(&password);
        (password, hash)
    })
    .await
    .map_err(|_| CredentialError::Interrupted)?;
    let new = crate::store::NewAppPassword {
        user_id: user,
        name,
        tag: lookup_tag(key, &password),
        hash: hash?,
        limits,
    };
    let created = store.create_app_password(&new).await?;
    Ok((created, password.display_form()))
}

/// An app password in canonical form (16 lowercase letters, check letters
/// verified). Only [`generate`] and [`normalize`] make one, so holding one
/// means the shape is right. Zeroed on drop; `Debug` prints `***`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanonicalAppPassword(Secret);

impl CanonicalAppPassword {
    /// The 16 letters. Named so that every use is easy to find.
    pub fn expose(&self) -> &str {
        self.0.expose()
    }

    /// The form shown to the user once: `abcd-efgh-ijkl-mnop`.
    pub fn display_form(&self) -> Secret {
        let letters = self.0.expose();
        let mut shown = String::with_capacity(LETTERS + LETTERS / GROUP);
        for (i, c) in letters.chars().enumerate() {
            if i > 0 && i % GROUP == 0 {
                shown.push('-');
            }
            shown.push(c);
        }
        Secret::new(shown)
    }
}

/// A new app password from the OS random source.
///
/// `OsRng` panics only if the operating system cannot supply randomness,
/// which on Linux (getrandom(2)) does not happen once the system has booted;
/// there is no safe way to continue without it anyway.
pub fn generate() -> CanonicalAppPassword {
    let mut values = [0u8; LETTERS];
    for value in values.iter_mut().take(RANDOM_LETTERS) {
        *value = OsRng.gen_range(0..26);
    }
    let (c1, c2) = check_values(&values);
    values[RANDOM_LETTERS] = c1;
    values[RANDOM_LETTERS + 1] = c2;
    let letters: String = values.iter().map(|&v| char::from(b'a' + v)).collect();
    zeroize::Zeroize::zeroize(&mut values);
    CanonicalAppPassword(Secret::new(letters))
}

/// What a secret is, by its shape alone (no lookup).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shape {
    /// An app password with correct check letters, in canonical form.
    AppPassword(CanonicalAppPassword),
    /// The app-password shape with wrong check letters: a mistyped or
    /// made-up app password. Never an organizational password.
    /// The shape, here, is strict: 16 letters, either run together or in
    /// four groups of four with one space or dash between groups
    /// (`abcd-efgh-ijkl-mnop`), so a passphrase such as
    /// `Blue-Sky-Green-Tree` (16 letters in other groups) stays a password.
    Mistyped,
    /// Anything else: an organizational password, as far as fedgate can
    /// tell.
    Other,
}

/// Classifies `input`. 16 ASCII letters in any case, with any spaces or
/// dashes between them, and correct check letters: an app password (see
/// the module doc). With wrong check letters, in the display layout (run
/// together, or four groups of four split by one space or dash): a
/// mistyped app password. Anything else: an organizational password.
///
/// An organizational password of exactly that layout (16 letters, or four
/// groups of four letters) is refused as a mistyped app password rather
/// than sent to the directory; such passwords are rare, and sending a
/// mistyped app password to the directory would count toward locking the
/// person's account there.
pub fn classify(input: &str) -> Shape {
    if input.len() > MAX_INPUT_BYTES {
        return Shape::Other;
    }
    let mut values = [0u8; LETTERS];
    let mut count = 0;
    // Separators seen, and whether each stood alone between two groups of
    // four (after the 4th, 8th and 12th letter).
    let (mut separators, mut grouped) = (0usize, true);
    let mut last_separator_at = None;
    for b in input.bytes() {
        match b {
            b' ' | b'-' => {
                separators += 1;
                grouped &= count % GROUP == 0 && count > 0 && count < LETTERS && last_separator_at != Some(count);
                last_separator_at = Some(count);
            }
            b'a'..=b'z' | b'A'..=b'Z' if count < LETTERS => {
                values[count] = b.to_ascii_lowercase() - b'a';
                count += 1;
            }
            _ => {
                zeroize::Zeroize::zeroize(&mut values);
                return Shape::Other;
            }
        }
    }
    let laid_out = separators == 0 || (separators == LETTERS / GROUP - 1 && grouped);
    let shape = if count != LETTERS {
        Shape::Other
    } else if check_values(&values) == (values[RANDOM_LETTERS], values[RANDOM_LETTERS + 1]) {
        let letters: String = values.iter().map(|&v| char::from(b'a' + v)).collect();
        Shape::AppPassword(CanonicalAppPassword(Secret::new(letters)))
    } else if laid_out {
        Shape::Mistyped
    } else {
        Shape::Other
    };
    zeroize::Zeroize::zeroize(&mut values);
    shape
}

/// The canonical app password if `input` is one with correct check
/// letters (see [`classify`]). `None` otherwise.
pub fn normalize(input: &str) -> Option<CanonicalAppPassword> {
    match classify(input) {
        Shape::AppPassword(canonical) => Some(canonical),
        Shape::Mistyped | Shape::Other => None,
    }
}

/// Whether `input` is an app password or a mistyped one (see
/// [`classify`]). A secret of this shape is only ever checked as an app
/// password, never sent to the directory.
pub fn is_app_password_shaped(input: &str) -> bool {
    !matches!(classify(input), Shape::Other)
}

/// The two check letters (as 0..26) for the random letters in `values`.
///
/// The first is the plain sum, which changes under any single substitution
/// because every difference of two letters is a non-zero residue. The
/// second weights position i by i + 1, which changes when two neighbours
/// are swapped (the sum does not). The offsets keep all-`a` and similar
/// human-made strings from passing.
fn check_values(values: &[u8; LETTERS]) -> (u8, u8) {
    let mut sum = 7u32;
    let mut weighted = 19u32;
    for (i, &v) in values.iter().take(RANDOM_LETTERS).enumerate() {
        sum += u32::from(v);
        // i < 14, so the weight fits in a u32.
        weighted += (i as u32 + 1) * u32::from(v);
    }
    // Both results are < 26, so they fit in a u8.
    ((sum % 26) as u8, (weighted % 26) as u8)
}

/// The keyed lookup tag of an app password: HMAC-SHA256 under the server
/// key. The store indexes app passwords by it, so a sign-in finds the one
/// candidate to verify instead of trying each of a user's hashes.
pub fn lookup_tag(key: &ServerKey, password: &CanonicalAppPassword) -> [u8; 32] {
    key.mac(TAG_DOMAIN, password.expose().as_bytes())
}

fn argon2() -> Argon2<'static> {
    Argon2::new(Algorithm::Argon2id, Version::V0x13, ARGON2_PARAMS)
}

fn hash_bytes(secret: &[u8]) -> Result<String, CredentialError> {
    let salt = SaltString::generate(&mut OsRng);
    argon2()
        .hash_password(secret, &salt)
        .map(|hash| hash.to_string())
        .map_err(CredentialError::Hash)
}

fn verify_bytes(secret: &[u8], phc: &str) -> bool {
    // A stored hash that does not parse verifies nothing; the caller sees
    // the same refusal as for a wrong secret.
    match PasswordHash::new(phc) {
        Ok(parsed) => argon2().verify_password(secret, &parsed).is_ok(),
        Err(_) => false,
    }
}

/// argon2id PHC string for an app password, with [`PARAMS`] and a fresh
/// random salt.
pub fn hash(password: &CanonicalAppPassword) -> Result<String, CredentialError> {
    hash_bytes(password.expose().as_bytes())
}

/// Whether `password` matches the PHC string `phc`. Uses the parameters
/// recorded in the hash, so hashes made under older [`PARAMS`] still verify.
pub fn verify(password: &CanonicalAppPassword, phc: &str) -> bool {
    verify_bytes(password.expose().as_bytes(), phc)
}

/// argon2id PHC string for a cloud-only user's password. An empty password
/// is refused: an empty password must never be a way in.
pub fn hash_password(password: &Secret) -> Result<String, CredentialError> {
    let bytes = password.expose().as_bytes();
    if bytes.is_empty() {
        return Err(CredentialError::EmptyPassword);
    }
    if bytes.len() > MAX_PASSWORD_BYTES {
        return Err(CredentialError::PasswordTooLong { len: bytes.len() });
    }
    hash_bytes(bytes)
}

/// Whether a cloud-only user's `password` matches `phc`. Empty and
/// over-long passwords never match, and are refused without hashing.
/// Callers that must not reveal whether the user exists verify against
/// [`dummy_hash`] when there is no hash.
pub fn verify_password(password: &Secret, phc: &str) -> bool {
    let bytes = password.expose().as_bytes();
    if bytes.is_empty() || bytes.len() > MAX_PASSWORD_BYTES {
        return false;
    }
    verify_bytes(bytes, phc)
}

/// Whether a stored hash was made with other parameters than [`PARAMS`]
/// (or is not an argon2id hash at all), so it should be replaced the next
/// time its secret is seen.
pub fn needs_rehash(phc: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(phc) else {
        return true;
    };
    if parsed.algorithm != Algorithm::Argon2id.ident() {
        return true;
    }
    match argon2::Params::try_from(&parsed) {
        Ok(params) => {
            params.m_cost() != PARAMS.m_cost_kib || params.t_cost() != PARAMS.t_cost || params.p_cost() != PARAMS.p_cost
        }
        Err(_) => true,
    }
}

/// A hash of a random secret under the live [`PARAMS`]. Verifying a
/// candidate against it costs what a real verification costs and always
/// fails, so an unknown user or an unknown tag is refused in the same time
/// as a wrong secret. Made on first use; call it once at start-up so the
/// first refusal is not slower than the rest.
pub fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        // hash() can fail only on invalid parameters (ruled out at compile
        // time, see ARGON2_PARAMS) or a secret longer than 4 GiB; a
        // generated app password is 16 bytes.
        hash(&generate()).expect("argon2id hashing of 16 bytes with valid parameters")
    })
}

pub mod limits;

#[cfg(test)]
mod tests;
