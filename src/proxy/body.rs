//! Body types and the access log.
//!
//! Bodies are streamed, never collected: a client's upload goes to the
//! upstream frame by frame and the upstream's answer comes back the same way.
//! The access-log record of a request is written when its response body has
//! been sent completely or abandoned, so it carries the real byte count and
//! duration of long downloads and held-open requests.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Empty, Full};

use super::ip_text::IpText;
use super::listener::InFlight;
use crate::telemetry::RouteMetrics;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The response body type of every handler.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed_unsync()
}

pub fn empty() -> ProxyBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// Everything the access-log line says about one request.
#[derive(Debug)]
pub struct AccessRecord {
    pub started: Instant,
    pub method: http::Method,
    pub host: String,
    pub path: String,
    pub version: http::Version,
    pub client_ip: std::net::IpAddr,
    pub route: Option<Arc<str>>,
    /// The counters of the route that took the request; `None` counts it
    /// as route `none`.
    pub metrics: Option<Arc<RouteMetrics>>,
    pub upstream: Option<Arc<str>>,
    pub status: u16,
    pub user: Option<String>,
    /// Why the request was refused before any route's sign-in, where the
    /// status alone does not say (`no_route` at the forward-auth endpoint).
    pub reason: Option<&'static str>,
    pub bytes: u64,
    pub complete: bool,
    /// Held until the response is over so the connection counts as busy.
    pub in_flight: Option<InFlight>,
}

impl Drop for AccessRecord {
    fn drop(&mut self) {
        let duration = self.started.elapsed();
        let metrics = self.metrics.as_deref().unwrap_or_else(|| RouteMetrics::unrouted());
        metrics.record(self.status, duration.as_secs_f64());
        tracing::info!(
            target: crate::logging::ACCESS_TARGET,
            method = self.method.as_str(),
            host = self.host.as_str(),
            path = self.path.as_str(),
            version = version_str(self.version),
            status = self.status,
            bytes = self.bytes,
            duration_ms = (duration.as_secs_f64() * 1e6).round() / 1e3,
            client = IpText::new(self.client_ip).as_str(),
            route = self.route.as_deref().unwrap_or("-"),
            upstream = self.upstream.as_deref().unwrap_or("-"),
            user = self.user.as_deref().unwrap_or("-"),
            reason = self.reason,
            complete = self.complete,
            "request"
        );
    }
}

/// The protocol version as the access log spells it.
fn version_str(version: http::Version) -> &'static str {
    match version {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_11 => "HTTP/1.1",
        http::Version::HTTP_2 => "HTTP/2.0",
        http::Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/?",
    }
}

pin_project_lite::pin_project! {
    /// A response body that counts what it sends and writes the access log
    /// when it is finished or dropped.
    pub struct Logged {
        #[pin]
        inner: ProxyBody,
        record: AccessRecord,
    }
}

impl Logged {
    pub fn wrap(inner: ProxyBody, record: AccessRecord) -> ProxyBody {
        let mut record = record;
        if inner.is_end_stream() {
            record.complete = true;
        }
        Logged { inner, record }.boxed_unsync()
    }
}

impl Body for Logged {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        let polled = this.inner.as_mut().poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.record.bytes += data.len() as u64;
                }
                if this.inner.is_end_stream() {
                    this.record.complete = true;
                }
            }
            Poll::Ready(None) => this.record.complete = true,
            Poll::Ready(Some(Err(_))) | Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
