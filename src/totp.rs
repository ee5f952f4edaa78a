//! The TOTP second factor (RFC 6238) as authenticator apps expect it:
//! HMAC-SHA1, 6 digits, 30-second steps, 20-byte secrets.
//!
//! This module owns the secret ([`TotpSecret`]), the codes, their check
//! (one step of clock skew either way, constant-time comparison, no code
//! accepted twice), the `otpauth://` URI with its QR code (an SVG made
//! here, never by an outside service) and the base32 text key, and how a
//! secret is sealed for the store ([`TotpSecret::seal`]).
//!
//! It stores nothing and reads no clock: the caller passes the time, and
//! keeps the step [`TotpSecret::verify`] accepted with
//! [`crate::store::TotpStore::use_totp_step`], which records it only if it is
//! newer than the stored one. That compare-and-set, not this module, is
//! what stops two nodes from both accepting one code. Who must register a
//! second factor, and when it is asked for, is the portal's business.

use std::fmt;
use std::fmt::Write as _;

use data_encoding::BASE32_NOPAD;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use qrcode::{Color, EcLevel, QrCode};
use rand::rngs::OsRng;
use rand::RngCore;
use ring::hmac;
use subtle::{ConditionallySelectable, ConstantTimeEq};
use zeroize::{Zeroize, Zeroizing};

use crate::model::{Secret, Upn, UserId};
use crate::secretbox::{SecretBox, SecretBoxError};

/// Secret length in bytes: the HMAC-SHA1 output size RFC 4226 recommends,
/// and what authenticator apps are tested with.
pub const SECRET_LEN: usize = 20;
/// Digits in a code.
pub const DIGITS: usize = 6;
/// Seconds per time step.
pub const PERIOD_SECS: u64 = 30;
/// Steps of clock skew accepted either side of the current one.
pub const SKEW_STEPS: u64 = 1;

/// 10^[`DIGITS`].
const MODULUS: u32 = 10u32.pow(DIGITS as u32);
/// Characters per group of the text key.
const KEY_GROUP: usize = 4;
/// Longest code input looked at; anything longer is refused unread.
const MAX_CODE_INPUT: usize = 32;
/// Modules of white border around the QR code (the QR specification's
/// minimum quiet zone).
const QUIET_ZONE: usize = 4;
/// Default rendered size of one module, in CSS pixels.
const MODULE_PX: usize = 4;
/// Associated data label for sealed secrets (see [`TotpSecret::seal`]).
const SEAL_DOMAIN: &[u8] = b"fedgate/totp-secret/v1\0";

/// Characters escaped in `otpauth://` query values: all but RFC 3986
/// unreserved ones.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');
/// Characters escaped in the label (`issuer:account`): as for query
/// values, but `@` stays as it is (a path may hold it), so apps that show
/// the label undecoded still show a readable UPN. A `:` in either part is
/// escaped, so it cannot be taken for the separator.
const LABEL_PART: &AsciiSet = &QUERY_VALUE.remove(b'@');

/// A TOTP secret could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TotpError {
    #[error("a TOTP secret is {len} bytes long; expected {SECRET_LEN}: the stored secret is damaged")]
    SecretLength { len: usize },
    #[error("the otpauth URI ({len} bytes) does not fit in a QR code: {reason}; shorten the portal issuer name")]
    QrCode { len: usize, reason: String },
    #[error("TOTP secret: {0}")]
    Sealed(#[from] SecretBoxError),
}

/// A user's TOTP secret: 20 random bytes. `Debug` prints `***`; the bytes
/// are zeroed when it is dropped.
#[derive(Clone)]
pub struct TotpSecret([u8; SECRET_LEN]);

impl TotpSecret {
    /// A new secret from the OS random source.
    pub fn generate() -> TotpSecret {
        let mut bytes = [0u8; SECRET_LEN];
        OsRng.fill_bytes(&mut bytes);
        TotpSecret(bytes)
    }

    /// A secret from its bytes, which must be [`SECRET_LEN`] long.
    pub fn from_bytes(bytes: &[u8]) -> Result<TotpSecret, TotpError> {
        let bytes: [u8; SECRET_LEN] = bytes
            .try_into()
            .map_err(|_| TotpError::SecretLength { len: bytes.len() })?;
        Ok(TotpSecret(bytes))
    }

    /// The secret itself. Named so that every use is easy to find.
    pub fn expose(&self) -> &[u8; SECRET_LEN] {
        &self.0
    }

    /// The secret sealed for the store, bound to its owner: a sealed
    /// secret copied to another user's row does not open.
    pub fn seal(&self, secret_box: &SecretBox, user: UserId) -> Result<Vec<u8>, TotpError> {
        Ok(secret_box.seal(&self.0, &seal_ad(user))?)
    }

    /// The secret [`TotpSecret::seal`] sealed for `user`.
    pub fn open(secret_box: &SecretBox, sealed: &[u8], user: UserId) -> Result<TotpSecret, TotpError> {
        let bytes = secret_box.open(sealed, &seal_ad(user))?;
        TotpSecret::from_bytes(&bytes)
    }

    /// The key as a user types it into an authenticator app: base32
    /// without padding, in groups of four (`ABCD EFGH ...`, 8 groups).
    pub fn text_key(&self) -> Secret {
        let plain = Zeroizing::new(BASE32_NOPAD.encode(&self.0));
        let mut grouped = String::with_capacity(plain.len() + plain.len() / KEY_GROUP);
        for (i, c) in plain.chars().enumerate() {
            if i > 0 && i % KEY_GROUP == 0 {
                grouped.push(' ');
            }
            grouped.push(c);
        }
        Secret::new(grouped)
    }

    /// `otpauth://totp/ISSUER:UPN?secret=...&issuer=ISSUER&algorithm=SHA1&digits=6&period=30`,
    /// what the QR code holds. The issuer is the portal's `issuer` setting;
    /// apps show it with the UPN and group codes by it.
    pub fn otpauth_uri(&self, issuer: &str, upn: &Upn) -> Secret {
        let secret = Zeroizing::new(BASE32_NOPAD.encode(&self.0));
        Secret::new(format!(
            "otpauth://totp/{}:{}?secret={}&issuer={}&algorithm=SHA1&digits={DIGITS}&period={PERIOD_SECS}",
            utf8_percent_encode(issuer, LABEL_PART),
            utf8_percent_encode(upn.as_str(), LABEL_PART),
            secret.as_str(),
            utf8_percent_encode(issuer, QUERY_VALUE),
        ))
    }

    /// The [`TotpSecret::otpauth_uri`] as a QR code: a self-contained
    /// `<svg>` (black modules on white, a 4-module quiet zone, a viewBox
    /// so it scales) with `role="img"`, an `aria-label` and a `<title>`.
    /// It carries the secret: serve it with `Cache-Control: no-store` and
    /// never log it.
    pub fn qr_svg(&self, issuer: &str, upn: &Upn) -> Result<String, TotpError> {
        let uri = self.otpauth_uri(issuer, upn);
        let code = QrCode::with_error_correction_level(uri.expose(), EcLevel::M).map_err(|e| TotpError::QrCode {
            len: uri.expose().len(),
            reason: e.to_string(),
        })?;
        let label = xml_escape(&format!("QR code to add {upn} at {issuer} to an authenticator app"));
        Ok(render_svg(code.width(), &code.to_colors(), &label))
    }

    /// The code for the step holding `unix_secs`.
    pub fn code_at(&self, unix_secs: u64) -> u32 {
        self.code_for_step(step_at(unix_secs))
    }

    /// HOTP (RFC 4226) of `step`: HMAC-SHA1, dynamic truncation, 6 digits.
    fn code_for_step(&self, step: u64) -> u32 {
        let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, &self.0);
        let mac = hmac::sign(&key, &step.to_be_bytes());
        let mac = mac.as_ref();
        let offset = usize::from(mac[mac.len() - 1] & 0x0f);
        let truncated =
            u32::from_be_bytes([mac[offset], mac[offset + 1], mac[offset + 2], mac[offset + 3]]) & 0x7fff_ffff;
        truncated % MODULUS
    }

    /// Checks a code the user typed at `now_unix_secs` against the steps
    /// from one before to one after the current one. Returns the step it
    /// matched, which the caller records (see
    /// [`crate::store::TotpStore::use_totp_step`]); `None` for a wrong code, a
    /// code of a step at or before `last_used_step` (a replay, or an older
    /// code once a newer one was used), or input that is not 6 digits
    /// (spaces anywhere are ignored).
    ///
    /// Every candidate step is computed and compared in constant time,
    /// whichever matches.
    pub fn verify(&self, code_text: &str, now_unix_secs: u64, last_used_step: Option<u64>) -> Option<u64> {
        let given = parse_code(code_text)?;
        let current = step_at(now_unix_secs);
        let mut accepted = 0u64;
        let mut found = subtle::Choice::from(0);
        // Oldest first, so that in the (one in a million) case of one code
        // matching two steps, the newest is the one recorded.
        for step in current.saturating_sub(SKEW_STEPS)..=current.saturating_add(SKEW_STEPS) {
            let fresh = subtle::Choice::from(u8::from(last_used_step.is_none_or(|last| step > last)));
            let matches = self.code_for_step(step).ct_eq(&given) & fresh;
            accepted.conditional_assign(&step, matches);
            found |= matches;
        }
        bool::from(found).then_some(accepted)
    }
}

/// The time step holding `unix_secs`.
pub fn step_at(unix_secs: u64) -> u64 {
    unix_secs / PERIOD_SECS
}

/// A code as shown by an authenticator app: 6 digits, leading zeros kept.
pub fn format_code(code: u32) -> String {
    format!("{code:0DIGITS$}")
}

/// The 6-digit code in `text`, ignoring whitespace; `None` for anything
/// else.
fn parse_code(text: &str) -> Option<u32> {
    if text.len() > MAX_CODE_INPUT {
        return None;
    }
    let mut code = 0u32;
    let mut digits = 0usize;
    for c in text.chars().filter(|c| !c.is_whitespace()) {
        // `to_digit` knows only ASCII digits: other scripts' digits are refused.
        let digit = c.to_digit(10)?;
        digits += 1;
        if digits > DIGITS {
            return None;
        }
        code = code * 10 + digit;
    }
    (digits == DIGITS).then_some(code)
}

fn seal_ad(user: UserId) -> Vec<u8> {
    let mut ad = Vec::with_capacity(SEAL_DOMAIN.len() + 8);
    ad.extend_from_slice(SEAL_DOMAIN);
    ad.extend_from_slice(&user.0.to_be_bytes());
    ad
}

/// An SVG of a `width`×`width` module matrix (row-major), dark modules as
/// one path of unit squares merged along rows.
fn render_svg(width: usize, modules: &[Color], escaped_label: &str) -> String {
    let size = width + 2 * QUIET_ZONE;
    let px = size * MODULE_PX;
    let mut svg = String::with_capacity(width * width * 4 + 512);
    // Writing to a String cannot fail.
    let _ = write!(
        svg,
        r##"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {size} {size}" width="{px}" height="{px}" shape-rendering="crispEdges" role="img" aria-label="{escaped_label}"><title>{escaped_label}</title><rect width="{size}" height="{size}" fill="#ffffff"/><path fill="#000000" d=""##
    );
    for (y, row) in modules.chunks(width).enumerate() {
        let mut x = 0;
        while x < width {
            if row[x] != Color::Dark {
                x += 1;
                continue;
            }
            let start = x;
            while x < width && row[x] == Color::Dark {
                x += 1;
            }
            let _ = write!(
                svg,
                "M{} {}h{}v1h-{}z",
                start + QUIET_ZONE,
                y + QUIET_ZONE,
                x - start,
                x - start
            );
        }
    }
    svg.push_str(r#""/></svg>"#);
    svg
}

fn xml_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            c => escaped.push(c),
        }
    }
    escaped
}

impl Drop for TotpSecret {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for TotpSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TotpSecret(***)")
    }
}

#[cfg(test)]
mod tests;
