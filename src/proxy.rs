//! The reverse proxy: for each request, find the route, authenticate, then
//! answer from a built-in upstream or forward to the route's upstream.
//!
//! Submodules: [`listener`] (sockets, TLS, connection limits),
//! [`canonical`] (the one spelling of a request's path and host), [`route`]
//! (matching), [`forward`] (upstream calls and header hygiene), [`whoami`]
//! (built-in upstream), [`body`] (streaming bodies and the access log),
//! [`tls`] (rustls set-up), [`error`] (status mapping), [`forward_auth`]
//! (the endpoint front proxies ask for a decision: it runs the same
//! canonical target, route and sign-in as a proxied request, and answers
//! instead of forwarding).

pub mod body;
pub mod caller;
pub mod canonical;
pub mod error;
pub mod forward;
pub mod forward_auth;
mod ip_text;
pub mod listener;
pub mod pool;
pub mod route;
pub mod tls;
pub mod whoami;
pub mod workers;

use std::sync::Arc;
use std::time::Instant;

use http::{header, Request, Response};
use hyper::body::Incoming;
use ipnet::IpNet;
use tokio_util::task::TaskTracker;

use crate::auth::{self, Authenticator, Identity};
use crate::config::{BrowserMode, Config, Realm, RouteConfig, Upstream as UpstreamConfig};
use crate::model::CredentialKind;
use crate::portal::{BrowserCheck, Portal};
use crate::telemetry::RouteMetrics;
use body::{AccessRecord, Logged, ProxyBody};
use error::{Challenge, ProxyError};
use forward::{canonical_ip as canonical_peer, ClientInfo, Upstream};
use forward_auth::Endpoint;
use listener::ConnInfo;

/// Why a proxy table cannot be built from a configuration.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    CallerSecret(#[from] caller::CallerSecretError),
}

/// The `upstream` of the forward-auth endpoint's access-log lines.
const FORWARD_AUTH_LABEL: &str = "forward_auth";

/// A route ready to serve.
pub struct Route {
    pub config: RouteConfig,
    name: Arc<str>,
    upstream_label: Arc<str>,
    metrics: Arc<RouteMetrics>,
    target: Target,
}

enum Target {
    Http(Box<Upstream>),
    Whoami,
    /// Forward auth and mail only: proxied requests get 404.
    DecideOnly,
}

pub struct Proxy {
    router: route::Router<Arc<Route>>,
    trusted_proxies: Vec<IpNet>,
    auth: Option<Arc<Authenticator>>,
    portal: Option<Arc<Portal>>,
    portal_metrics: Arc<RouteMetrics>,
    challenge: Challenge,
    mail: Option<Arc<crate::mail_auth::MailAuth>>,
    forward_auth: Option<Endpoint>,
    forward_auth_label: Arc<str>,
}

impl Proxy {
    /// Builds routes and their upstream clients. `tunnels` tracks upgraded
    /// (WebSocket) connections so shutdown can wait for them.
    /// `auth` is required when any route has a sign-in realm.
    pub fn new(
        config: &Config,
        tunnels: TaskTracker,
        auth: Option<Arc<Authenticator>>,
        portal: Option<Arc<Portal>>,
    ) -> Result<Proxy, BuildError> {
        let mut routes = Vec::with_capacity(config.routes.len());
        for rc in &config.routes {
            let target = match &rc.upstream {
                UpstreamConfig::Whoami => Target::Whoami,
                UpstreamConfig::DecideOnly => Target::DecideOnly,
                UpstreamConfig::Http(uri) => Target::Http(Box::new(Upstream::new(
                    rc,
                    uri,
                    &config.server.upstream,
                    tunnels.clone(),
                )?)),
            };
            let route = Route {
                name: Arc::from(rc.name.as_str()),
                upstream_label: Arc::from(rc.upstream.to_string()),
                metrics: Arc::new(RouteMetrics::new(&rc.name)),
                config: rc.clone(),
                target,
            };
            routes.push((rc.clone(), Arc::new(route)));
        }
        Ok(Proxy {
            router: route::Router::new(routes),
            trusted_proxies: config.server.trusted_proxies.clone(),
            auth,
            portal,
            portal_metrics: Arc::new(RouteMetrics::new(crate::telemetry::PORTAL_ROUTE)),
            challenge: Challenge::basic(&config.auth.basic_realm),
            mail: None,
            forward_auth: config.forward_auth.as_ref().map(Endpoint::load).transpose()?,
            forward_auth_label: Arc::from(FORWARD_AUTH_LABEL),
        })
    }

    /// Answers nginx's mail `auth_http` requests at `[mail_auth] path`.
    pub fn with_mail(mut self, mail: Option<Arc<crate::mail_auth::MailAuth>>) -> Proxy {
        self.mail = mail;
        self
    }

    /// Serves one request. Never fails: every problem becomes a response.
    pub async fn handle(&self, conn: Arc<ConnInfo>, mut req: Request<Incoming>) -> Response<ProxyBody> {
        let in_flight = conn.begin_request();
        let started = Instant::now();
        // The request is parsed into its canonical form once, here; from
        // then on the portal, routing, sign-in, the log and the upstream
        // see only that form.
        let target = canonical::request_target(&req);
        let authority = match &target {
            Ok(t) => t.authority.as_ref().map(|a| a.to_string()),
            Err(_) => None,
        };
        let client = ClientInfo::resolve(
            conn.peer.ip(),
            req.headers(),
            &self.trusted_proxies,
            conn.tls,
            authority.as_deref(),
        );
        let mut record = AccessRecord {
            started,
            method: req.method().clone(),
            host: authority.unwrap_or_else(|| "-".to_owned()),
            path: match &target {
                Ok(t) => t.path.as_str().to_owned(),
                Err(_) => req.uri().path().to_owned(),
            },
            version: req.version(),
            client_ip: client.as_ref().map_or(canonical_peer(conn.peer.ip()), |c| c.ip),
            route: None,
            metrics: None,
            upstream: None,
            status: 0,
            user: None,
            reason: None,
            bytes: 0,
            complete: false,
            in_flight: Some(in_flight),
        };
        let refused = |record: AccessRecord, why: &dyn std::fmt::Display| {
            tracing::debug!(client = %record.client_ip, reason = %why, "request refused: not canonical");
            Self::finish(ProxyError::BadRequest("request not canonical").into_response(), record)
        };
        let (target, client) = match (target, client) {
            (Ok(t), Ok(c)) => (t, c),
            (Err(why), _) => return refused(record, &why),
            (_, Err(why)) => return refused(record, &why),
        };
        if target.asterisk {
            // `OPTIONS *` asks about the server, not a resource: answered
            // here, never routed.
            let mut resp = Response::new(body::empty());
            resp.headers_mut()
                .insert(header::CONTENT_LENGTH, http::HeaderValue::from_static("0"));
            return Self::finish(resp, record);
        }
        if let Some(mail) = self.mail.as_ref().filter(|m| m.owns(target.path.as_str())) {
            let resp = mail
                .handle(req.headers(), &client, &self.trusted_proxies, &mut record)
                .await;
            return Self::finish(resp, record);
        }
        if let Some(endpoint) = &self.forward_auth {
            // Owned by its path as sent (Envoy's prefix form carries the
            // original path below it, which is canonicalised on its own)
            // or as canonicalised: any spelling of the endpoint's path is
            // the endpoint's, never a route's.
            let rest = endpoint.rest(req.uri().path()).map(str::to_owned);
            if rest.is_some() || endpoint.owns(target.path.as_str()) {
                drop(target);
                record.upstream = Some(Arc::clone(&self.forward_auth_label));
                let Some(rest) = rest else {
                    return refused(record, &"the forward-auth path is not spelled canonically");
                };
                let resp = self
                    .forward_auth(endpoint, &conn, &client, req, &rest, &mut record)
                    .await;
                return Self::finish(resp, record);
            }
        }
        let portal = self.portal.as_ref().filter(|p| p.owns(target.path.as_str()));
        let route = match portal {
            Some(_) => None,
            None => {
                let host = target.authority.as_ref().map(|a| a.host());
                let route = self.router.find(host, target.path.route_key()).cloned();
                if let Some(route) = &route {
                    let c = &route.config;
                    if let Err(why) = target
                        .path
                        .check_route(c.allow_encoded_slashes, c.allow_path_parameters)
                    {
                        record.route = Some(Arc::clone(&route.name));
                        record.metrics = Some(Arc::clone(&route.metrics));
                        return refused(record, &why);
                    }
                }
                route
            }
        };
        let canonical_uri = match target.rewrites() {
            false => None,
            true => match target.origin_form() {
                Some(uri) => Some(uri),
                None => return refused(record, &"canonical target is not a valid URI"),
            },
        };
        drop(target);
        if let Some(uri) = canonical_uri {
            *req.uri_mut() = uri;
        }
        if let Some(portal) = portal {
            record.route = Some(Arc::from(crate::telemetry::PORTAL_ROUTE));
            record.metrics = Some(Arc::clone(&self.portal_metrics));
            let resp = portal.handle(req, &client).await;
            return Self::finish(resp, record);
        }
        let resp = match route {
            None => ProxyError::NoRoute.into_response(),
            Some(route) => {
                record.route = Some(Arc::clone(&route.name));
                record.metrics = Some(Arc::clone(&route.metrics));
                record.upstream = Some(Arc::clone(&route.upstream_label));
                self.serve_route(&route, &conn, &client, req, &mut record).await
            }
        };
        Self::finish(resp, record)
    }

    fn finish(resp: Response<ProxyBody>, mut record: AccessRecord) -> Response<ProxyBody> {
        record.status = resp.status().as_u16();
        let (parts, body) = resp.into_parts();
        Response::from_parts(parts, Logged::wrap(body, record))
    }

    /// Who the request is, or the response that refuses it.
    async fn decide(
        &self,
        auth: &Option<Arc<Authenticator>>,
        realm: Realm,
        config: &RouteConfig,
        parts: &http::request::Parts,
        client: auth::Client,
    ) -> Result<Identity, Response<ProxyBody>> {
        match (auth, realm) {
            (_, Realm::None) => Ok(Identity::Anonymous),
            (Some(auth), _) => auth
                .authenticate(config, parts, client)
                .await
                .map_err(|refusal| refusal.into_response(&self.challenge)),
            // Invariant: the server builds an authenticator whenever a route
            // has a sign-in realm; refuse rather than let a request through.
            (None, _) => Err(ProxyError::Unavailable.into_response()),
        }
    }

    /// Who the request is on `route`, or the response that refuses it. A
    /// browser on a `browser = "mfa"` route signs in through the portal
    /// (`target` is where it returns to); where the answer cannot be a
    /// redirect (`redirect` false: the forward-auth endpoint), a browser
    /// without a session meets the decision table like a Basic client.
    async fn identify(
        &self,
        route: &Route,
        parts: &http::request::Parts,
        target: &str,
        client: &ClientInfo,
        started: Instant,
        redirect: bool,
    ) -> Result<Identity, Response<ProxyBody>> {
        let browser = match (&self.portal, route.config.browser) {
            (Some(portal), BrowserMode::Mfa) => portal.browser_check(&parts.headers, target).await,
            _ => None,
        };
        let who = auth::Client {
            ip: client.ip,
            ip_is_proxy: client.ip_is_proxy,
            started,
        };
        match (browser, &self.auth, route.config.realm) {
            (Some(BrowserCheck::Redirect(to)), _, _) if redirect => Err(to),
            (Some(BrowserCheck::SignedIn(upn)), auth, _) => {
                match auth
                    .as_ref()
                    .map(|a| a.session_allowed(&route.config, parts, who, &upn))
                {
                    Some(Err(refusal)) => Err(refusal.into_response(&self.challenge)),
                    _ => Ok(Identity::User {
                        upn,
                        credential: CredentialKind::PortalSession,
                        app_password: None,
                    }),
                }
            }
            (_, auth, realm) => self.decide(auth, realm, &route.config, parts, who).await,
        }
    }

    /// The forward-auth endpoint: the decision for the request the caller
    /// describes, answered with the identity headers or the refusal. `rest`
    /// is the request path below the endpoint's (Envoy's prefix form).
    async fn forward_auth(
        &self,
        endpoint: &Endpoint,
        conn: &ConnInfo,
        client: &ClientInfo,
        req: Request<Incoming>,
        rest: &str,
        record: &mut AccessRecord,
    ) -> Response<ProxyBody> {
        let (parts, _body) = req.into_parts();
        if !endpoint.admits(&parts.headers) {
            // The caller's own address: the forwarded one is not believed
            // from a caller that has not proved itself. The value it
            // presented is never logged.
            tracing::warn!(
                caller = %canonical_peer(conn.peer.ip()),
                "forward auth: refused a caller without the caller secret"
            );
            metrics::counter!("fedgate_forward_auth_callers_refused_total").increment(1);
            record.reason = Some("forward_auth_caller_secret");
            return ProxyError::CallerRefused.into_response();
        }
        let bad = |record: &mut AccessRecord, reason: &'static str, why: &dyn std::fmt::Display| {
            tracing::debug!(client = %record.client_ip, reason, error = %why, "forward auth: description refused");
            record.reason = Some(reason);
            ProxyError::BadRequest("forward-auth description").into_response()
        };
        let described = match forward_auth::describe(&parts.headers, &parts.method, rest, parts.uri.query()) {
            Ok(d) => d,
            Err(why) => return bad(record, why.reason(), &why),
        };
        record.method = described.method.clone();
        let (raw_path, query) = described.split();
        record.path = raw_path.to_owned();
        if let Some(Err(why)) = query.map(canonical::check_query) {
            return bad(record, "not_canonical", &why);
        }
        let path = match canonical::canonical_path(raw_path) {
            Ok(p) => p,
            Err(why) => return bad(record, "not_canonical", &why),
        };
        record.path = path.as_str().to_owned();
        let authority = match client.host.as_deref().map(canonical::parse_authority).transpose() {
            Ok(a) => a,
            Err(why) => return bad(record, "not_canonical", &why),
        };
        if let Some(a) = &authority {
            record.host = a.to_string();
        }
        let Some(route) = self.router.find(authority.as_ref().map(|a| a.host()), path.route_key()) else {
            record.reason = Some("no_route");
            return ProxyError::NoDecidingRoute.into_response();
        };
        record.route = Some(Arc::clone(&route.name));
        record.metrics = Some(Arc::clone(&route.metrics));
        let c = &route.config;
        if let Err(why) = path.check_route(c.allow_encoded_slashes, c.allow_path_parameters) {
            return bad(record, "not_canonical", &why);
        }
        let target = match query {
            Some(q) => format!("{}?{q}", path.as_str()),
            None => path.as_str().to_owned(),
        };
        let identity = match self
            .identify(route, &parts, &target, client, record.started, false)
            .await
        {
            Ok(identity) => identity,
            Err(refusal) => return refusal,
        };
        record.user = identity.user().map(str::to_owned);
        let entry = identity
            .user()
            .and_then(|upn| self.auth.as_ref().and_then(|a| a.user_by_upn(upn)));
        let directory = entry.as_ref().and_then(|e| e.user.directory.as_ref());
        let facts = identity.user().map(|upn| forward_auth::IdentityFacts {
            upn,
            email: directory.and_then(|d| d.mail.as_deref()),
            name: directory.and_then(|d| d.display_name.as_deref()),
            groups: directory.map_or(&[], |d| &d.groups),
            credential: identity.credential(),
        });
        let mut resp = Response::new(body::empty());
        let h = resp.headers_mut();
        *h = forward_auth::identity_headers(&c.identity_header, facts.as_ref());
        h.insert(header::CACHE_CONTROL, http::HeaderValue::from_static("no-store"));
        h.insert(header::CONTENT_LENGTH, http::HeaderValue::from_static("0"));
        resp
    }

    async fn serve_route(
        &self,
        route: &Route,
        conn: &ConnInfo,
        client: &ClientInfo,
        req: Request<Incoming>,
        record: &mut AccessRecord,
    ) -> Response<ProxyBody> {
        if matches!(route.target, Target::DecideOnly) {
            // A route that only decides has nothing to forward to, and
            // must not hand the request to a broader route either.
            return ProxyError::NoRoute.into_response();
        }
        let (parts, body) = req.into_parts();
        let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let identity = match self.identify(route, &parts, target, client, record.started, true).await {
            Ok(identity) => identity,
            Err(refusal) => return refusal,
        };
        record.user = identity.user().map(str::to_owned);
        let req = Request::from_parts(parts, body);
        match &route.target {
            Target::Whoami => {
                let version = format!("{:?}", req.version());
                let who = whoami::Whoami {
                    authenticated: identity.user().is_some(),
                    user: identity.user(),
                    credential: identity.credential(),
                    client_ip: client.ip.to_string(),
                    peer: conn.peer.to_string(),
                    scheme: client.proto,
                    tls: conn.tls,
                    http_version: version,
                    method: req.method().as_str(),
                    host: client.host.as_deref(),
                    path: req.uri().path(),
                    route: &route.name,
                    realm: route.config.realm.as_str(),
                };
                whoami::respond(&req, &who)
            }
            Target::DecideOnly => ProxyError::NoRoute.into_response(),
            Target::Http(upstream) => {
                // On pass-through routes the upstream does its own
                // authentication, so the client's Authorization goes with the request.
                let forward_authorization = route.config.forward_authorization || route.config.realm == Realm::None;
                match upstream
                    .forward(
                        &route.config,
                        req,
                        client,
                        conn.peer.ip(),
                        identity.user(),
                        forward_authorization,
                    )
                    .await
                {
                    Ok(resp) => resp,
                    Err(err) => {
                        tracing::debug!(route = %route.name, error = %err, "request not forwarded");
                        err.into_response()
                    }
                }
            }
        }
    }
}
