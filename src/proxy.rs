//! The reverse proxy: for each request, find the route, authenticate, then
//! answer from a built-in upstream or forward to the route's upstream.
//!
//! Submodules: [`listener`] (sockets, TLS, connection limits),
//! [`canonical`] (the one spelling of a request's path and host), [`route`]
//! (matching), [`forward`] (upstream calls and header hygiene), [`whoami`]
//! (built-in upstream), [`body`] (streaming bodies and the access log),
//! [`tls`] (rustls set-up), [`error`] (status mapping).

pub mod body;
pub mod caller;
pub mod canonical;
pub mod error;
pub mod forward;
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
use listener::ConnInfo;

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
}

pub struct Proxy {
    router: route::Router<Arc<Route>>,
    trusted_proxies: Vec<IpNet>,
    auth: Option<Arc<Authenticator>>,
    portal: Option<Arc<Portal>>,
    portal_metrics: Arc<RouteMetrics>,
    challenge: Challenge,
    mail: Option<Arc<crate::mail_auth::MailAuth>>,
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
    ) -> Result<Proxy, tls::TlsError> {
        let mut routes = Vec::with_capacity(config.routes.len());
        for rc in &config.routes {
            let target = match &rc.upstream {
                UpstreamConfig::Whoami => Target::Whoami,
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

    async fn serve_route(
        &self,
        route: &Route,
        conn: &ConnInfo,
        client: &ClientInfo,
        req: Request<Incoming>,
        record: &mut AccessRecord,
    ) -> Response<ProxyBody> {
        let (parts, body) = req.into_parts();
        // A browser on a `browser = "mfa"` route signs in through the
        // portal; anything else (Basic clients) meets the decision table.
        let browser = match (&self.portal, route.config.browser) {
            (Some(portal), BrowserMode::Mfa) => {
                let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
                portal.browser_check(&parts.headers, target).await
            }
            _ => None,
        };
        let outcome = match (browser, &self.auth, route.config.realm) {
            (Some(BrowserCheck::Redirect(to)), _, _) => return to,
            (Some(BrowserCheck::SignedIn(upn)), auth, _) => {
                let signed_in = auth::Client {
                    ip: client.ip,
                    ip_is_proxy: client.ip_is_proxy,
                    started: record.started,
                };
                match auth
                    .as_ref()
                    .map(|a| a.session_allowed(&route.config, &parts, signed_in, &upn))
                {
                    Some(Err(refusal)) => Err(refusal.into_response(&self.challenge)),
                    _ => Ok(Identity::User {
                        upn,
                        credential: CredentialKind::PortalSession,
                        app_password: None,
                    }),
                }
            }
            (None, auth, realm) => {
                let signing_in = auth::Client {
                    ip: client.ip,
                    ip_is_proxy: client.ip_is_proxy,
                    started: record.started,
                };
                self.decide(auth, realm, &route.config, &parts, signing_in).await
            }
        };
        let identity = match outcome {
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
