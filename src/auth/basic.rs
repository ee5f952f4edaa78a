//! Reading HTTP Basic credentials (RFC 7617) from a request, defensively:
//! whatever a client sends, the answer is a [`Presented`], never a panic.

use base64::Engine;
use http::header::{HeaderMap, AUTHORIZATION};
use zeroize::Zeroizing;

use crate::model::Secret;

/// What the client put in `Authorization`.
#[derive(Debug, PartialEq, Eq)]
pub enum Presented {
    /// No `Authorization` header, or a scheme other than Basic.
    None,
    /// A Basic header that cannot be read: bad base64, not UTF-8, no colon,
    /// or several `Authorization` headers.
    Malformed,
    Basic {
        user: String,
        secret: Secret,
    },
}

pub fn parse(headers: &HeaderMap) -> Presented {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Presented::None;
    };
    if values.next().is_some() {
        return Presented::Malformed;
    }
    let bytes = value.as_bytes();
    let Some(split) = bytes.iter().position(|b| *b == b' ') else {
        return if bytes.eq_ignore_ascii_case(b"basic") {
            Presented::Malformed
        } else {
            Presented::None
        };
    };
    let (scheme, rest) = bytes.split_at(split);
    if !scheme.eq_ignore_ascii_case(b"basic") {
        return Presented::None;
    }
    let token = rest.trim_ascii();
    let decoded = match base64::engine::general_purpose::STANDARD.decode(token) {
        Ok(d) => Zeroizing::new(d),
        Err(_) => return Presented::Malformed,
    };
    let Ok(text) = std::str::from_utf8(&decoded) else {
        return Presented::Malformed;
    };
    // The user name cannot contain a colon (RFC 7617); the password can.
    match text.split_once(':') {
        Some((user, password)) => Presented::Basic {
            user: user.to_owned(),
            secret: Secret::from(password),
        },
        None => Presented::Malformed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn with(value: &[u8]) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, HeaderValue::from_bytes(value).unwrap());
        h
    }

    fn b64(s: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn reads_basic_credentials_with_colons_in_the_password() {
        let h = with(format!("Basic {}", b64(b"alice@corp.example.com:pa:ss")).as_bytes());
        assert_eq!(
            parse(&h),
            Presented::Basic {
                user: "alice@corp.example.com".into(),
                secret: Secret::from("pa:ss")
            }
        );
        let h = with(format!("bAsIc   {}", b64(b"a:")).as_bytes());
        assert_eq!(
            parse(&h),
            Presented::Basic {
                user: "a".into(),
                secret: Secret::from("")
            }
        );
    }

    #[test]
    fn refuses_what_cannot_be_read() {
        assert_eq!(parse(&HeaderMap::new()), Presented::None);
        assert_eq!(parse(&with(b"Bearer abc")), Presented::None);
        assert_eq!(parse(&with(b"Negotiate")), Presented::None);
        assert_eq!(parse(&with(b"Basic")), Presented::Malformed);
        assert_eq!(parse(&with(b"Basic !!!not-base64")), Presented::Malformed);
        assert_eq!(
            parse(&with(format!("Basic {}", b64(b"nocolon")).as_bytes())),
            Presented::Malformed
        );
        assert_eq!(
            parse(&with(format!("Basic {}", b64(b"\xff\xfe:x")).as_bytes())),
            Presented::Malformed
        );
        let mut two = with(format!("Basic {}", b64(b"a:b")).as_bytes());
        two.append(AUTHORIZATION, HeaderValue::from_static("Basic Yjpj"));
        assert_eq!(parse(&two), Presented::Malformed);
    }
}
