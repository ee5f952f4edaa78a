//! The canonical request: the one spelling of a request's path and host that
//! routing, the portal, sign-in, the access log and the upstream all see.
//!
//! A path is parsed once (RFC 3986): unreserved characters that arrive
//! percent-encoded are decoded, the hex of what stays encoded is upper-case,
//! characters a URI may not carry raw are encoded, dot segments are removed
//! (section 5.2.4) and repeated slashes collapsed. What cannot be made
//! canonical safely is refused: `\` raw or encoded, control characters raw
//! or encoded, invalid percent-encoding, `..` above the root, and segments
//! that Windows servers read as another name (`name.`, `name%20`,
//! `name::$DATA`). An encoded slash (`%2F`) and path parameters (`;`) are
//! kept in the canonical path but flagged, because whether they may pass
//! depends on the route ([`CanonicalPath::check_route`]); for matching they
//! count as a separator and are stripped, so no spelling with them can match
//! a less protected route than the one an upstream would serve.
//!
//! A host (`Host`, `:authority`, an absolute-form target) must be a valid
//! `host[:port]` ([`parse_authority`]); it is lower-cased and loses a
//! trailing dot.
//!
//! Not here: what a route is and which one matches ([`super::route`]).

use std::borrow::Cow;
use std::fmt;
use std::net::Ipv6Addr;

/// Why a request path cannot be made canonical. Each is answered with 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathRefusal {
    #[error("the path does not start with \"/\"")]
    NotAbsolute,
    #[error("the path holds an invalid percent-encoding")]
    BadPercentEncoding,
    #[error("the path holds a control character")]
    ControlCharacter,
    #[error("the path holds a backslash")]
    Backslash,
    #[error("the path climbs above the root with \"..\"")]
    AboveRoot,
    #[error("a path segment ends in a dot or a space, or names a data stream (\":$\")")]
    AmbiguousSegment,
    #[error("an encoded slash hides a dot segment")]
    HiddenDotSegment,
    #[error("the path holds an encoded slash (%2F), which this route does not allow")]
    EncodedSlash,
    #[error("the path holds parameters (\";\"), which this route does not allow")]
    PathParameters,
    #[error("the path's percent-encoded bytes are not valid UTF-8 (an overlong or partial sequence)")]
    InvalidUtf8,
    #[error("the query holds a control character")]
    QueryControl,
}

/// A request path in canonical form, with what routing must know about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanonicalPath<'a> {
    path: Cow<'a, str>,
    /// The path as routes are matched against it, when it differs from
    /// `path`: `%2F` counts as `/`, parameters and empty segments are gone.
    key: Option<String>,
    encoded_slash: bool,
    parameters: bool,
}

impl<'a> CanonicalPath<'a> {
    /// The canonical path: what is logged and forwarded.
    pub fn as_str(&self) -> &str {
        &self.path
    }

    /// What routes are matched against.
    pub fn route_key(&self) -> &str {
        self.key.as_deref().unwrap_or(&self.path)
    }

    /// Whether the path is the canonical form exactly as it was given.
    pub fn is_unchanged(&self) -> bool {
        matches!(self.path, Cow::Borrowed(_))
    }

    /// Whether the path is canonical and plain: no encoded slash, no
    /// parameters, so every route sees it the same way.
    pub fn is_plain(&self) -> bool {
        !self.encoded_slash && !self.parameters
    }

    /// Refuses what the matched route does not allow.
    pub fn check_route(&self, allow_encoded_slashes: bool, allow_path_parameters: bool) -> Result<(), PathRefusal> {
        if self.encoded_slash && !allow_encoded_slashes {
            return Err(PathRefusal::EncodedSlash);
        }
        if self.parameters && !allow_path_parameters {
            return Err(PathRefusal::PathParameters);
        }
        Ok(())
    }

    pub fn into_owned(self) -> CanonicalPath<'static> {
        CanonicalPath {
            path: Cow::Owned(self.path.into_owned()),
            key: self.key,
            encoded_slash: self.encoded_slash,
            parameters: self.parameters,
        }
    }
}

const fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// What may stand raw in a path besides unreserved characters and `/`:
/// sub-delims, `:` and `@` (RFC 3986 `pchar`).
const fn is_pchar_extra(b: u8) -> bool {
    matches!(
        b,
        b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'=' | b':' | b'@'
    )
}

const fn is_control(b: u8) -> bool {
    b < 0x20 || b == 0x7f
}

/// Whether a segment (as matched: decoded, without parameters) is one that
/// Windows servers read as another name: a trailing dot or space
/// (`name.`, `name `), or an NTFS stream (`name::$DATA`).
fn ambiguous_segment(decoded: &[u8]) -> bool {
    matches!(decoded.last(), Some(b'.' | b' ')) || decoded.windows(2).any(|w| w == b":$")
}

/// The fast path: `raw` is canonical and plain as it stands (the common
/// case), found in one pass without allocating.
fn already_canonical(raw: &[u8]) -> bool {
    if raw.first() != Some(&b'/') {
        return false;
    }
    // Start of the current segment, just past its slash.
    let mut start = 1;
    for i in 1..=raw.len() {
        let b = raw.get(i).copied();
        match b {
            Some(b'/') | None => {
                let seg = &raw[start..i];
                // An empty segment is `//`, except the final one (`/a/`).
                if (seg.is_empty() && b.is_some()) || seg == b"." || seg == b".." || ambiguous_segment(seg) {
                    return false;
                }
                start = i + 1;
            }
            Some(b) if is_unreserved(b) || (is_pchar_extra(b) && b != b';') => {}
            Some(_) => return false,
        }
    }
    true
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

fn push_encoded(out: &mut Vec<u8>, b: u8) {
    out.extend_from_slice(&[b'%', HEX[(b >> 4) as usize], HEX[(b & 15) as usize]]);
}

/// Parses a request path (the part of the target before `?`) into its
/// canonical form, or says why it cannot be.
pub fn canonical_path(raw: &str) -> Result<CanonicalPath<'_>, PathRefusal> {
    if already_canonical(raw.as_bytes()) {
        return Ok(CanonicalPath {
            path: Cow::Borrowed(raw),
            key: None,
            encoded_slash: false,
            parameters: false,
        });
    }
    slow_path(raw)
}

fn slow_path(raw: &str) -> Result<CanonicalPath<'_>, PathRefusal> {
    let bytes = raw.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathRefusal::NotAbsolute);
    }
    // Decode: the result keeps `%XX` for everything but unreserved bytes.
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut encoded_slash = false;
    let mut parameters = false;
    let mut encoded_non_ascii = false;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'%' => {
                let (Some(h), Some(l)) = (
                    bytes.get(i + 1).copied().and_then(hex),
                    bytes.get(i + 2).copied().and_then(hex),
                ) else {
                    return Err(PathRefusal::BadPercentEncoding);
                };
                let v = h << 4 | l;
                if is_unreserved(v) {
                    decoded.push(v);
                } else if is_control(v) {
                    return Err(PathRefusal::ControlCharacter);
                } else if v == b'\\' {
                    return Err(PathRefusal::Backslash);
                } else {
                    encoded_slash |= v == b'/';
                    parameters |= v == b';';
                    encoded_non_ascii |= !v.is_ascii();
                    push_encoded(&mut decoded, v);
                }
                i += 3;
                continue;
            }
            b'\\' => return Err(PathRefusal::Backslash),
            b if is_control(b) => return Err(PathRefusal::ControlCharacter),
            b';' => {
                parameters = true;
                decoded.push(b);
            }
            b if b == b'/' || is_unreserved(b) || is_pchar_extra(b) => decoded.push(b),
            // Characters a URI may not carry raw (`"`, `{`, a byte of
            // UTF-8): encoding them changes nothing an upstream decodes.
            b => push_encoded(&mut decoded, b),
        }
        i += 1;
    }
    // An upstream that decodes leniently reads `%C0%AE` as `.` and `%C0%AF`
    // as `/`: a path whose bytes, decoded, are not UTF-8 means something
    // different to each reader. Raw bytes are UTF-8 already (`raw` is a
    // `str`), so only a path with an encoded non-ASCII byte is decoded.
    if encoded_non_ascii && percent_encoding::percent_decode(bytes).decode_utf8().is_err() {
        return Err(PathRefusal::InvalidUtf8);
    }

    // Dot segments and empty segments (RFC 3986 5.2.4, refusing to climb
    // above the root rather than clamping at it).
    let mut segments: Vec<&[u8]> = Vec::new();
    let mut trailing_slash = false;
    for seg in decoded[1..].split(|&b| b == b'/') {
        trailing_slash = false;
        match seg {
            b"" | b"." => trailing_slash = true,
            b".." => {
                if segments.pop().is_none() {
                    return Err(PathRefusal::AboveRoot);
                }
                trailing_slash = true;
            }
            seg => segments.push(seg),
        }
    }
    let mut path = Vec::with_capacity(decoded.len());
    for seg in &segments {
        path.push(b'/');
        path.extend_from_slice(seg);
    }
    if path.is_empty() || trailing_slash {
        path.push(b'/');
    }

    // The route key: split at `/` and `%2F`, parameters stripped. Its
    // segments are what an upstream may read as names, so the checks run
    // on them, decoded.
    let mut key = Vec::with_capacity(path.len());
    for seg in &segments {
        for piece in split_encoded_slash(seg) {
            let name = strip_parameters(piece);
            let plain = percent_encoding::percent_decode(name).collect::<Vec<u8>>();
            if plain == b"." || plain == b".." {
                return Err(if piece.len() == seg.len() {
                    // `..;x`: a dot segment once the parameter is stripped.
                    PathRefusal::AboveRoot
                } else {
                    PathRefusal::HiddenDotSegment
                });
            }
            if name.is_empty() {
                continue;
            }
            if ambiguous_segment(&plain) {
                return Err(PathRefusal::AmbiguousSegment);
            }
            key.push(b'/');
            key.extend_from_slice(name);
        }
    }
    if key.is_empty() || trailing_slash {
        key.push(b'/');
    }

    // Invariant: every byte pushed above is ASCII (raw ASCII or `%XX`).
    let path = String::from_utf8(path).map_err(|_| PathRefusal::BadPercentEncoding)?;
    let key = String::from_utf8(key).map_err(|_| PathRefusal::BadPercentEncoding)?;
    let key = (key != path).then_some(key);
    let path = if path == raw {
        Cow::Borrowed(raw)
    } else {
        Cow::Owned(path)
    };
    Ok(CanonicalPath {
        path,
        key,
        encoded_slash,
        parameters,
    })
}

fn split_encoded_slash(seg: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(seg);
    std::iter::from_fn(move || {
        let s = rest?;
        match s.windows(3).position(|w| w.eq_ignore_ascii_case(b"%2F")) {
            Some(at) => {
                rest = Some(&s[at + 3..]);
                Some(&s[..at])
            }
            None => {
                rest = None;
                Some(s)
            }
        }
    })
}

/// A segment without its parameters: everything from `;` (or `%3B`) on.
fn strip_parameters(seg: &[u8]) -> &[u8] {
    let raw = seg.iter().position(|&b| b == b';');
    let encoded = seg.windows(3).position(|w| w.eq_ignore_ascii_case(b"%3B"));
    let end = match (raw, encoded) {
        (Some(a), Some(b)) => a.min(b),
        (a, b) => a.or(b).unwrap_or(seg.len()),
    };
    &seg[..end]
}

/// Refuses a query that carries a control character; otherwise it is kept
/// exactly as sent.
pub fn check_query(query: &str) -> Result<(), PathRefusal> {
    if query.bytes().any(is_control) {
        return Err(PathRefusal::QueryControl);
    }
    let bytes = query.as_bytes();
    for (i, _) in query.match_indices('%') {
        let code = bytes
            .get(i + 1)
            .copied()
            .and_then(hex)
            .zip(bytes.get(i + 2).copied().and_then(hex));
        if let Some((h, l)) = code {
            if is_control(h << 4 | l) {
                return Err(PathRefusal::QueryControl);
            }
        }
    }
    Ok(())
}

/// Why a host value is not a valid `host[:port]`. Each is answered with 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HostRefusal {
    #[error("an HTTP/1.1 request without Host")]
    Missing,
    #[error("more than one Host")]
    Repeated,
    #[error("the host is empty")]
    Empty,
    #[error("the host holds a character a host name may not")]
    BadCharacter,
    #[error("the host has an empty label")]
    EmptyLabel,
    #[error("the host is too long")]
    TooLong,
    #[error("the IPv6 literal is invalid")]
    BadIpv6,
    #[error("the port is not a number from 1 to 65535")]
    BadPort,
    #[error("the Host header and the request target name different hosts")]
    Disagree,
    #[error("the X-Forwarded-Host of a trusted proxy is not a valid host")]
    BadForwardedHost,
}

/// A valid authority, lower-cased, without a trailing dot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authority<'a> {
    host: Cow<'a, str>,
    ipv6: bool,
    port: Option<u16>,
}

impl Authority<'_> {
    /// The host without port or brackets, as routes match it.
    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> Option<u16> {
        self.port
    }

    pub fn into_owned(self) -> Authority<'static> {
        Authority {
            host: Cow::Owned(self.host.into_owned()),
            ipv6: self.ipv6,
            port: self.port,
        }
    }
}

impl fmt::Display for Authority<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.ipv6 {
            write!(f, "[{}]", self.host)?;
        } else {
            f.write_str(&self.host)?;
        }
        if let Some(port) = self.port {
            write!(f, ":{port}")?;
        }
        Ok(())
    }
}

/// Parses a `Host` value, an `:authority` or an absolute-form authority:
/// `reg-name`, IPv4 or `[IPv6]`, then an optional `:port` (1 to 65535, no
/// sign, no leading zero). No userinfo, no path, no list, no spaces.
pub fn parse_authority(raw: &str) -> Result<Authority<'_>, HostRefusal> {
    if raw.is_empty() {
        return Err(HostRefusal::Empty);
    }
    let (host, ipv6, port) = if let Some(rest) = raw.strip_prefix('[') {
        let (inner, after) = rest.split_once(']').ok_or(HostRefusal::BadIpv6)?;
        let addr: Ipv6Addr = inner.parse().map_err(|_| HostRefusal::BadIpv6)?;
        let port = match after {
            "" => None,
            p => Some(parse_port(p.strip_prefix(':').ok_or(HostRefusal::BadCharacter)?)?),
        };
        let printed = addr.to_string();
        let host = if printed == inner {
            Cow::Borrowed(inner)
        } else {
            Cow::Owned(printed)
        };
        (host, true, port)
    } else {
        let (name, port) = match raw.split_once(':') {
            Some((name, p)) => (name, Some(parse_port(p)?)),
            None => (raw, None),
        };
        (reg_name(name)?, false, port)
    };
    Ok(Authority { host, ipv6, port })
}

fn parse_port(p: &str) -> Result<u16, HostRefusal> {
    let ok = !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) && !p.starts_with('0');
    match p.parse::<u32>() {
        Ok(n) if ok && (1..=65535).contains(&n) => Ok(n as u16),
        _ => Err(HostRefusal::BadPort),
    }
}

fn reg_name(name: &str) -> Result<Cow<'_, str>, HostRefusal> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() {
        return Err(HostRefusal::Empty);
    }
    if name.len() > 253 {
        return Err(HostRefusal::TooLong);
    }
    if !name.bytes().all(is_unreserved) {
        return Err(HostRefusal::BadCharacter);
    }
    if name.split('.').any(str::is_empty) {
        return Err(HostRefusal::EmptyLabel);
    }
    Ok(if name.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(name.to_ascii_lowercase())
    } else {
        Cow::Borrowed(name)
    })
}

/// Why a request cannot be made canonical. Each is answered with 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TargetRefusal {
    #[error("path: {0}")]
    Path(#[from] PathRefusal),
    #[error("host: {0}")]
    Host(#[from] HostRefusal),
    #[error("CONNECT is not served: fedgate is no forward proxy")]
    Connect,
    #[error("the absolute-form target is not http:// or https://")]
    Scheme,
    #[error("only OPTIONS may ask for \"*\"")]
    Asterisk,
}

/// A request's target in canonical form: what everything after the
/// listener sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestTarget<'a> {
    /// `None` only for HTTP/1.0 requests that name no host.
    pub authority: Option<Authority<'a>>,
    pub path: CanonicalPath<'a>,
    pub query: Option<&'a str>,
    /// `OPTIONS *`: about the server, not a resource; never routed.
    pub asterisk: bool,
}

impl RequestTarget<'_> {
    /// Whether the request's URI must be rewritten to carry this target.
    /// Only the path and query of a URI travel on (upstream requests are
    /// origin-form, the host comes from [`RequestTarget::authority`]), so
    /// an absolute-form or HTTP/2 URI with a canonical path stays as it is.
    pub fn rewrites(&self) -> bool {
        !self.path.is_unchanged()
    }

    /// The origin-form URI of this target.
    pub fn origin_form(&self) -> Option<http::Uri> {
        let pq = match self.query {
            Some(q) => format!("{}?{q}", self.path.as_str()),
            None => self.path.as_str().to_owned(),
        };
        http::uri::PathAndQuery::try_from(pq).ok().map(http::Uri::from)
    }
}

/// Parses a request's method, target, version and `Host` into their
/// canonical form. HTTP/1.1 must name exactly one `Host`; an absolute-form
/// target's authority (or HTTP/2's `:authority`) must agree with a `Host`
/// header when both are present.
pub fn request_target<B>(req: &http::Request<B>) -> Result<RequestTarget<'_>, TargetRefusal> {
    if req.method() == http::Method::CONNECT {
        return Err(TargetRefusal::Connect);
    }
    let uri = req.uri();
    if let Some(scheme) = uri.scheme_str() {
        if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
            return Err(TargetRefusal::Scheme);
        }
    }
    let mut hosts = req.headers().get_all(http::header::HOST).iter();
    let header = match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => return Err(HostRefusal::Repeated.into()),
        (Some(v), None) => Some(parse_authority(v.to_str().map_err(|_| HostRefusal::BadCharacter)?)?),
        (None, _) => None,
    };
    let from_target = uri.authority().map(|a| parse_authority(a.as_str())).transpose()?;
    let authority = match (from_target, header) {
        (Some(t), Some(h)) if t != h => return Err(HostRefusal::Disagree.into()),
        (Some(t), _) => Some(t),
        (None, Some(h)) => Some(h),
        (None, None) if req.version() >= http::Version::HTTP_11 => return Err(HostRefusal::Missing.into()),
        (None, None) => None,
    };
    if let Some(q) = uri.query() {
        check_query(q)?;
    }
    let raw = uri.path();
    if raw == "*" {
        if req.method() != http::Method::OPTIONS {
            return Err(TargetRefusal::Asterisk);
        }
        return Ok(RequestTarget {
            authority,
            path: canonical_path("/")?,
            query: None,
            asterisk: true,
        });
    }
    Ok(RequestTarget {
        authority,
        path: canonical_path(if raw.is_empty() { "/" } else { raw })?,
        query: uri.query(),
        asterisk: false,
    })
}

#[cfg(test)]
mod tests;
