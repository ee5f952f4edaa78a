//! The admin API's bearer tokens: `[admin] token_file`, one `NAME TOKEN`
//! per line, and the set a running server checks requests against.
//!
//! This module owns the file's format and checks (private mode, names
//! unique, tokens long enough) and the comparison, which takes the same
//! time whichever token matches, or none. The set can be swapped while the
//! server runs ([`TokenSet::reload`]); what triggers that is not decided
//! here.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::key_file::{open_private, PrivateFileError};

/// Shortest token accepted, in characters (`openssl rand -hex 32` makes 64).
pub const MIN_TOKEN_CHARS: usize = 32;
/// Longest token file read, in bytes.
const MAX_FILE_BYTES: u64 = 1 << 20;

/// A token file that cannot be used. Each names the file (and the line).
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("admin.token_file {}: cannot read: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error(
        "admin.token_file {} has permissions {mode:04o}; it must not be readable by group or others: \
         run `chmod 600 {}`",
        path.display(),
        path.display()
    )]
    Permissions { path: PathBuf, mode: u32 },
    #[error("admin.token_file {} is not a regular file", path.display())]
    NotAFile { path: PathBuf },
    #[error("admin.token_file {} is larger than 1 MiB", path.display())]
    TooLarge { path: PathBuf },
    #[error("admin.token_file {} line {line}: {reason}", path.display())]
    Line { path: PathBuf, line: usize, reason: String },
    #[error("admin.token_file {} holds no token: add a line \"NAME TOKEN\"", path.display())]
    Empty { path: PathBuf },
}

/// One named token.
struct Token {
    line: usize,
    name: String,
    /// SHA-256 of the token: every comparison is of 32 bytes with 32
    /// bytes, so its time does not depend on the length presented either.
    secret: [u8; 32],
}

/// The tokens of one file, parsed.
pub struct Tokens(Vec<Token>);

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.iter().map(|t| &t.name)).finish()
    }
}

impl Tokens {
    /// Parses a token file's text; `path` is for messages only.
    pub fn parse(path: &Path, text: &str) -> Result<Tokens, TokenError> {
        let line_error = |line: usize, reason: String| TokenError::Line {
            path: path.to_owned(),
            line,
            reason,
        };
        let mut tokens: Vec<Token> = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let raw = raw.trim();
            if raw.is_empty() || raw.starts_with('#') {
                continue;
            }
            let mut parts = raw.split_whitespace();
            let (Some(name), Some(secret), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err(line_error(line, "expected \"NAME TOKEN\" (two words)".into()));
            };
            if !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'))
            {
                return Err(line_error(
                    line,
                    format!("token name {name:?} may hold only letters, digits and - _ . @"),
                ));
            }
            if secret.chars().count() < MIN_TOKEN_CHARS {
                return Err(line_error(
                    line,
                    // Not the name: with the two columns swapped, the "name"
                    // is the secret.
                    format!(
                        "the token is {} characters long; at least {MIN_TOKEN_CHARS} are needed, after the name \
                         (a line is NAME TOKEN; make a token with `openssl rand -hex 32`)",
                        secret.chars().count()
                    ),
                ));
            }
            if let Some(first) = tokens.iter().find(|t| t.name == name) {
                return Err(line_error(
                    line,
                    format!("token name {name:?} is used on line {} already", first.line),
                ));
            }
            let secret = digest(secret.as_bytes());
            // Two names for one token would make the event log name either.
            if let Some(first) = tokens.iter().find(|t| bool::from(t.secret.ct_eq(&secret))) {
                return Err(line_error(
                    line,
                    format!(
                        "this token is the token of line {} already: give each name its own",
                        first.line
                    ),
                ));
            }
            tokens.push(Token {
                line,
                name: name.to_owned(),
                secret,
            });
        }
        if tokens.is_empty() {
            return Err(TokenError::Empty { path: path.to_owned() });
        }
        Ok(Tokens(tokens))
    }

    /// Reads and checks the file: a regular file, not readable by group or
    /// others, parsed as [`Tokens::parse`].
    pub fn load(path: &Path) -> Result<Tokens, TokenError> {
        let read = |source| TokenError::Read {
            path: path.to_owned(),
            source,
        };
        let (mut file, meta) = open_private(path).map_err(|e| match e {
            PrivateFileError::Open(source) | PrivateFileError::Metadata(source) => read(source),
            PrivateFileError::NotAFile => TokenError::NotAFile { path: path.to_owned() },
            PrivateFileError::Permissions(mode) => TokenError::Permissions {
                path: path.to_owned(),
                mode,
            },
        })?;
        if meta.len() > MAX_FILE_BYTES {
            return Err(TokenError::TooLarge { path: path.to_owned() });
        }
        let mut text = Zeroizing::new(String::new());
        file.read_to_string(&mut text).map_err(read)?;
        Tokens::parse(path, &text)
    }

    /// The name of the token `presented` equals, if any. Every token is
    /// compared in full, in constant time, whether or not an earlier one
    /// matched: the time taken tells nothing about which one did.
    pub fn check(&self, presented: &[u8]) -> Option<&str> {
        let presented = digest(presented);
        let mut found: Option<&str> = None;
        for token in &self.0 {
            let equal: bool = token.secret.ct_eq(&presented).into();
            // Both arms do the same work; the choice is data, not an exit.
            found = if equal { Some(token.name.as_str()) } else { found };
        }
        found
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The tokens a running server checks, swappable at run time.
#[derive(Debug)]
pub struct TokenSet {
    current: RwLock<Arc<Tokens>>,
}

impl TokenSet {
    /// Loads `path` (see [`Tokens::load`]).
    pub fn load(path: &Path) -> Result<TokenSet, TokenError> {
        Ok(TokenSet {
            current: RwLock::new(Arc::new(Tokens::load(path)?)),
        })
    }

    /// Reads `path` again and, if it is good, uses its tokens from now on;
    /// a bad file leaves the tokens in use as they were. Returns how many
    /// tokens are in use.
    pub fn reload(&self, path: &Path) -> Result<usize, TokenError> {
        let tokens = Arc::new(Tokens::load(path)?);
        let n = tokens.len();
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = tokens;
        Ok(n)
    }

    /// The tokens in use now.
    pub fn current(&self) -> Arc<Tokens> {
        Arc::clone(&self.current.read().unwrap_or_else(|p| p.into_inner()))
    }
}

#[cfg(test)]
mod tests;

/// The fixed-length form a token is kept and compared in.
fn digest(token: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(token).into()
}
