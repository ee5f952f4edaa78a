//! Why the proxy could not give a client the upstream's answer, and the one
//! place where each reason becomes a status code. Clients get a short plain
//! text body; the details go to the log.

use http::{header, HeaderValue, Response, StatusCode};

use super::body::{full, ProxyBody};

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
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::UpstreamUnavailable | ProxyError::BadGateway(_) => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
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
