//! Authentication: the one place a request is checked before it is
//! forwarded. [`authenticate`] takes the route and the request head and
//! either establishes who the caller is or produces the refusal to send.
//!
//! Routes with `realm = "none"` pass through unauthenticated; the `cloud`
//! and `onprem` realms are refused by config validation until their sign-in
//! paths exist, so nothing reaches this point unchecked.

use http::request::Parts;
use http::Response;

use crate::config::{Realm, RouteConfig};
use crate::proxy::body::ProxyBody;

/// Who the caller is, as far as the upstream will be told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// Pass-through route: nobody was asked to sign in.
    Anonymous,
}

impl Identity {
    /// The value of the route's identity header, if any.
    pub fn user(&self) -> Option<&str> {
        match self {
            Identity::Anonymous => None,
        }
    }

    /// The kind of credential that established the identity.
    pub fn credential(&self) -> &'static str {
        match self {
            Identity::Anonymous => "none",
        }
    }
}

/// The outcome for one request: go on as `Identity`, or answer with the
/// response (401, 429, 503 ...) instead of forwarding.
pub type Outcome = Result<Identity, Response<ProxyBody>>;

pub async fn authenticate(route: &RouteConfig, _head: &Parts) -> Outcome {
    match route.realm {
        Realm::None => Ok(Identity::Anonymous),
        // Invariant: config validation refuses these realms in this build.
        Realm::Cloud | Realm::Onprem => Err(crate::proxy::error::text_response(
            http::StatusCode::SERVICE_UNAVAILABLE,
            "503 Service Unavailable\n",
        )),
    }
}
