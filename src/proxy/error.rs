//! The one place where a refusal or a failure becomes an HTTP response:
//! why the proxy could not give a client the upstream's answer
//! ([`ProxyError`]), and why a sign-in or a portal form was refused
//! ([`SignInRefusal`], [`Refusal`], decided by `auth` and the portal as
//! values). Clients get a short plain text body (or the portal's page);
//! the details go to the log.

use std::time::Duration;

use http::{header, HeaderValue, Response, StatusCode};

use super::body::{full, ProxyBody};
use crate::auth::refusal::{retry_after_seconds, Refusal, SignInRefusal};

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no route for this host and path")]
    NoRoute,
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    #[error("upstream unavailable")]
    UpstreamUnavailable,
    #[error("bad gateway: {0}")]
    BadGateway(&'static str),
    #[error("upstream timed out")]
    UpstreamTimeout,
    #[error("fedgate cannot serve this route right now")]
    Unavailable,
    /// The forward-auth endpoint's caller lacks the caller secret. Never a
    /// 401: a front proxy would pass a Basic prompt on to the client.
    #[error("the caller did not present the forward-auth secret")]
    CallerRefused,
    /// No route decides the request a front proxy described: refused, so
    /// that a path nobody configured is never let through (a 404 would
    /// become nginx's 500).
    #[error("no route decides the described request")]
    NoDecidingRoute,
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::UpstreamUnavailable | ProxyError::BadGateway(_) => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::CallerRefused | ProxyError::NoDecidingRoute => StatusCode::FORBIDDEN,
        }
    }

    pub fn into_response(self) -> Response<ProxyBody> {
        let status = self.status();
        let text = match &self {
            ProxyError::NoRoute => "404 Not Found: no route for this host and path\n",
            ProxyError::BadRequest(_) => "400 Bad Request\n",
            ProxyError::UpstreamUnavailable | ProxyError::BadGateway(_) => {
                "502 Bad Gateway: the service behind this address is unavailable\n"
            }
            ProxyError::UpstreamTimeout => {
                "504 Gateway Timeout: the service behind this address did not answer in time\n"
            }
            ProxyError::Unavailable => "503 Service Unavailable: try again shortly\n",
            ProxyError::CallerRefused | ProxyError::NoDecidingRoute => "403 Forbidden\n",
        };
        text_response(status, text)
    }
}

/// A short plain-text response.
pub fn text_response(status: StatusCode, text: &'static str) -> Response<ProxyBody> {
    let mut resp = Response::new(full(text));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// The status mapping for refusals.
impl From<Refusal> for StatusCode {
    fn from(refusal: Refusal) -> StatusCode {
        match refusal {
            Refusal::Unauthorized => StatusCode::UNAUTHORIZED,
            Refusal::TooManyAttempts => StatusCode::TOO_MANY_REQUESTS,
            Refusal::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::Forbidden => StatusCode::FORBIDDEN,
        }
    }
}

/// The `WWW-Authenticate` value sent with a 401 to a Basic client, made
/// once from `auth.basic_realm`.
#[derive(Debug, Clone)]
pub struct Challenge(HeaderValue);

impl Challenge {
    pub fn basic(realm: &str) -> Challenge {
        // Quotes and backslashes would end or escape the quoted string.
        let realm = realm.replace(['"', '\\'], "");
        let value = HeaderValue::from_str(&format!("Basic realm=\"{realm}\", charset=\"UTF-8\""))
            .unwrap_or_else(|_| HeaderValue::from_static("Basic realm=\"fedgate\", charset=\"UTF-8\""));
        Challenge(value)
    }
}

impl SignInRefusal {
    /// The answer to a Basic client: plain text, the challenge with a 401
    /// (never with a 503: a mail client would ask the user again).
    pub fn into_response(self, challenge: &Challenge) -> Response<ProxyBody> {
        let text = match self.refusal {
            Refusal::Unauthorized => "401 Unauthorized\n",
            Refusal::TooManyAttempts => "429 Too Many Requests\n",
            Refusal::Unavailable => "503 Service Unavailable: try again shortly\n",
            Refusal::Forbidden => "403 Forbidden\n",
        };
        let mut resp = refused(self.refusal, self.retry_after, "text/plain; charset=utf-8", full(text));
        if self.refusal == Refusal::Unauthorized {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, challenge.0.clone());
        }
        resp
    }
}

/// The answer to a browser: the portal's page for the refusal, and no
/// Basic challenge (a browser would open its own password dialog).
pub fn refused_page(refusal: Refusal, retry_after: Option<Duration>, html: String) -> Response<ProxyBody> {
    refused(refusal, retry_after, "text/html; charset=utf-8", full(html))
}

fn refused(
    refusal: Refusal,
    retry_after: Option<Duration>,
    content_type: &'static str,
    body: ProxyBody,
) -> Response<ProxyBody> {
    let mut resp = Response::new(body);
    *resp.status_mut() = refusal.into();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(wait) = retry_after {
        h.insert(header::RETRY_AFTER, HeaderValue::from(retry_after_seconds(wait)));
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Reason;

    fn refusal(refusal: Refusal, reason: Reason, retry_after: Option<u64>) -> SignInRefusal {
        SignInRefusal {
            refusal,
            reason,
            retry_after: retry_after.map(Duration::from_secs),
        }
    }

    #[test]
    fn basic_refusals_carry_the_challenge_only_with_401() {
        let challenge = Challenge::basic("Con\"toso\\");
        let cases = [
            (refusal(Refusal::Unauthorized, Reason::BadCredentials, None), 401, None),
            (
                refusal(Refusal::TooManyAttempts, Reason::LockedOut, Some(60)),
                429,
                Some("60"),
            ),
            (
                refusal(Refusal::Unavailable, Reason::Overloaded, Some(1)),
                503,
                Some("1"),
            ),
            (refusal(Refusal::Forbidden, Reason::BadCredentials, None), 403, None),
        ];
        for (refused, status, retry_after) in cases {
            let resp = refused.into_response(&challenge);
            let h = resp.headers();
            assert_eq!(resp.status().as_u16(), status);
            assert_eq!(h[header::CACHE_CONTROL], "no-store");
            assert_eq!(h[header::CONTENT_TYPE], "text/plain; charset=utf-8");
            assert_eq!(h.get(header::RETRY_AFTER).map(|v| v.to_str().unwrap()), retry_after);
            let challenged = h.get(header::WWW_AUTHENTICATE).map(|v| v.to_str().unwrap());
            assert_eq!(
                challenged,
                (status == 401).then_some("Basic realm=\"Contoso\", charset=\"UTF-8\""),
                "{status}"
            );
        }
    }

    #[test]
    fn pages_are_never_challenged() {
        let resp = refused_page(Refusal::Unauthorized, None, "<p>no</p>".into());
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        assert!(!resp.headers().contains_key(header::WWW_AUTHENTICATE));
        assert_eq!(resp.headers()[header::CONTENT_TYPE], "text/html; charset=utf-8");
        let resp = refused_page(Refusal::Unavailable, Some(Duration::from_millis(300)), String::new());
        assert_eq!(resp.headers()[header::RETRY_AFTER], "1", "at least one second");
    }
}
