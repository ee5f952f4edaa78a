//! The self-service portal, served under `[portal] path` on the main
//! listeners: browser sign-in (organizational password, then a TOTP code),
//! authenticator registration, app-password management, and the browser
//! sessions that `browser = "mfa"` routes accept.
//!
//! Sessions live in the store (every node honours them); the cookie holds
//! a random id, the store its SHA-256. A session ends when it is idle for
//! `session_idle`, `session_absolute` after sign-in, on sign-out, and as
//! soon as its user is disabled, deleted or changes MFA state.
//!
//! Forms carry a token bound to a per-browser cookie
//! (`__Host-fedgate_csrf`) by an HMAC under the server key, so any node can
//! check it; a POST without a matching token changes nothing. The cookie
//! is fedgate's own: a random value with an HMAC of it, so a value a
//! client (or a sibling site) chose is refused and replaced; it is
//! replaced again when a session begins and when it ends. Return URLs are paths of configured
//! routes only.
//!
//! The portal builds its pages; its refusals (a sign-in refused, locked
//! out or unavailable, a form without its token, a store that cannot
//! answer) are values that [`crate::proxy::error`] turns into responses,
//! as it does for Basic clients. The statuses it picks itself are its
//! pages': 200, 303, 400 (an unreadable form), 404, 422 (a form shown
//! again with what is wrong) and 500.

pub mod pages;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use http::header::{
    HeaderValue, ACCEPT, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, COOKIE, LOCATION, SET_COOKIE, USER_AGENT,
};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::auth::refusal::{Refusal, RETRY_UNAVAILABLE};
use crate::auth::{self, Authenticator};
use crate::config::{BrowserMode, Config, PortalConfig, RouteConfig};
use crate::model::{AppPasswordName, Clock, MfaState, Secret, User};
use crate::proxy::body::{full, ProxyBody};
use crate::proxy::canonical::{canonical_path, check_query};
use crate::proxy::error::refused_page;
use crate::proxy::forward::ClientInfo;
use crate::proxy::route::Router;
use crate::secretbox::SecretBox;
use crate::store::{NewTotp, PortalSession, Store, StoreError, TotpLimit};
use crate::totp::TotpSecret;
use pages::Frame;

const SESSION_COOKIE: &str = "fedgate_session";
/// `__Host-`: the browser keeps it only if it is `Secure`, has `Path=/`
/// and no `Domain`, so a sibling subdomain cannot plant one.
const CSRF_COOKIE: &str = "__Host-fedgate_csrf";
/// The name the cookie had before; never trusted, expired when seen.
const OLD_CSRF_COOKIE: &str = "fedgate_csrf";
const CSRF_COOKIE_DOMAIN: &str = "portal csrf cookie";
/// Longest form body read.
const MAX_FORM_BYTES: usize = 16 * 1024;
/// A session waiting for its second factor lasts this long.
const SECOND_FACTOR_WINDOW: Duration = Duration::from_secs(600);
/// Wrong codes in a row (per user) before codes are refused for a while.
const CODE_LIMIT: TotpLimit = TotpLimit {
    max_failures: 5,
    block_ms: 30_000,
};
/// `last_seen_at` is written at most this often per session.
const TOUCH_EVERY: i64 = 60_000;

const SIGN_IN_FAILED: &str = "Sign-in failed: check your user name and password.";
const CODE_FAILED: &str = "That code is wrong or was already used.";
const TOO_MANY_CODES: &str = "Too many wrong codes: wait 30 seconds, then try again.";

/// Problems found when the portal is built from the config.
#[derive(Debug, thiserror::Error)]
pub enum PortalError {
    #[error("portal.secret_key_file: {0}")]
    Key(#[from] crate::secretbox::SecretBoxError),
}

pub struct Portal {
    config: PortalConfig,
    auth: Arc<Authenticator>,
    store: Arc<dyn Store>,
    secrets: SecretBox,
    clock: Arc<dyn Clock>,
    /// The `browser = "mfa"` routes (any host): the only places a return
    /// URL may lead.
    return_routes: Router<()>,
    /// Names of the routes that ask for credentials: what the create form
    /// offers as an app password's scope.
    routes: Vec<String>,
}

impl std::fmt::Debug for Portal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Portal")
            .field("path", &self.config.path)
            .finish_non_exhaustive()
    }
}

/// The browser's session as a request presents it.
struct Current {
    session: PortalSession,
    user: User,
}

/// A parsed form.
struct Form(HashMap<String, String>);

impl Form {
    fn get(&self, key: &str) -> &str {
        self.0.get(key).map(String::as_str).unwrap_or("")
    }

    /// The limits a create or narrow form asks for: a box `scope:NAME`
    /// per route ticked, `expires` (a duration, or empty for none or for
    /// no change) and `from` (CIDRs split by spaces or commas).
    fn limits(&self) -> FormLimits {
        let mut scope: Vec<String> = self
            .0
            .keys()
            .filter_map(|k| k.strip_prefix("scope:"))
            .map(str::to_owned)
            .collect();
        scope.sort();
        let expires = Some(self.get("expires").trim())
            .filter(|e| !e.is_empty())
            .map(str::to_owned);
        let from = self
            .get("from")
            .split([' ', ',', '\n', '\r', '\t'])
            .filter(|n| !n.is_empty())
            .map(str::to_owned)
            .collect();
        FormLimits { scope, expires, from }
    }
}

/// [`Form::limits`].
struct FormLimits {
    scope: Vec<String>,
    expires: Option<String>,
    from: Vec<String>,
}

impl FormLimits {
    fn asked(&self) -> crate::app_password::limits::Requested<'_> {
        crate::app_password::limits::Requested {
            scope: &self.scope,
            expires: self.expires.as_deref(),
            from: &self.from,
        }
    }
}

/// The routes an app password's narrow form offers: those of its scope,
/// or every route when it has none.
pub fn offered_scope<'a>(limits: &'a crate::model::AppPasswordLimits, routes: &'a [String]) -> &'a [String] {
    if limits.scope.is_empty() {
        routes
    } else {
        &limits.scope
    }
}

/// What the proxy does with a browser request on a `browser = "mfa"` route.
pub enum BrowserCheck {
    /// Signed in with a second factor: forward as this user.
    SignedIn(String),
    /// Send the browser here.
    Redirect(Response<ProxyBody>),
}

impl Portal {
    pub fn new(
        config: &Config,
        auth: Arc<Authenticator>,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
    ) -> Result<Option<Portal>, PortalError> {
        let Some(portal) = &config.portal else {
            return Ok(None);
        };
        let secrets = SecretBox::load_or_create(&portal.secret_key_file)?;
        // The return URL carries no host: a route's path decides.
        let return_routes = Router::new(config.routes.iter().filter(|r| r.browser == BrowserMode::Mfa).map(|r| {
            (
                RouteConfig {
                    host: None,
                    ..r.clone()
                },
                (),
            )
        }));
        Ok(Some(Portal {
            config: portal.clone(),
            auth,
            store,
            secrets,
            clock,
            return_routes,
            routes: crate::manage::credential_routes(config),
        }))
    }

    /// Whether `path` is one of the portal's.
    pub fn owns(&self, path: &str) -> bool {
        path == self.config.path
            || path
                .strip_prefix(&self.config.path)
                .is_some_and(|rest| rest.starts_with('/'))
    }

    fn now(&self) -> i64 {
        self.clock.now_ms()
    }

    pub async fn handle(&self, req: Request<Incoming>, client: &ClientInfo) -> Response<ProxyBody> {
        let path = req.uri().path().to_owned();
        let sub = path.strip_prefix(&self.config.path).unwrap_or("");
        let method = req.method().clone();
        let (csrf_cookie, new_csrf) = match cookie(req.headers(), CSRF_COOKIE) {
            Some(value) if self.csrf_cookie_is_ours(&value) => (value, false),
            _ => (self.mint_csrf_cookie(), true),
        };
        let old_csrf = cookie(req.headers(), OLD_CSRF_COOKIE).is_some();
        let token = self.csrf_token(&csrf_cookie, cookie(req.headers(), SESSION_COOKIE).as_deref());
        let frame = Frame {
            base: &self.config.path,
            csrf: &token,
            issuer: &self.config.issuer,
        };
        let mut resp = match (method, sub) {
            (Method::GET, "/style.css") => asset("text/css; charset=utf-8", pages::STYLE),
            (Method::GET, "/copy.js") => asset("text/javascript; charset=utf-8", pages::COPY_JS),
            (Method::GET | Method::HEAD, "" | "/") => match self.current(req.headers()).await {
                Some(c) if c.session.signed_in => redirect(&format!("{}/security", self.config.path)),
                _ => redirect(&format!("{}/sign-in", self.config.path)),
            },
            (Method::GET | Method::HEAD, "/sign-in") => {
                let ret = query_param(req.uri().query(), "return").unwrap_or_default();
                html(StatusCode::OK, frame.sign_in("", &ret, None))
            }
            (Method::GET | Method::HEAD, page @ ("/verify" | "/register" | "/registered" | "/security")) => {
                self.show(page, req.headers(), &frame).await
            }
            (Method::POST, action) => {
                let headers = req.headers().clone();
                match read_form(req).await {
                    None => html(
                        StatusCode::BAD_REQUEST,
                        frame.message("Bad request", "The form could not be read."),
                    ),
                    // A form without this browser's token: cross-site, or
                    // stale. Nothing happens.
                    Some(form) if new_csrf || !token_matches(form.get("csrf"), &token) => refused_page(
                        Refusal::Forbidden,
                        None,
                        frame.message(
                            "Form expired",
                            "This form has expired. Go back, reload the page and try again.",
                        ),
                    ),
                    Some(form) => self.post(action, &headers, form, client, &frame).await,
                }
            }
            _ => html(
                StatusCode::NOT_FOUND,
                frame.message("Not found", "There is no such page."),
            ),
        };
        let h = resp.headers_mut();
        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        h.insert(
            "content-security-policy",
            HeaderValue::from_static(
                "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self' data:; \
                 form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
            ),
        );
        h.insert("x-frame-options", HeaderValue::from_static("DENY"));
        h.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
        h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
        // A response that began or ended a session carries its own, new
        // cookie already.
        let rotated = h
            .get_all(SET_COOKIE)
            .iter()
            .any(|v| v.as_bytes().starts_with(CSRF_COOKIE.as_bytes()));
        if new_csrf && !rotated {
            h.append(SET_COOKIE, csrf_set_cookie(&csrf_cookie));
        }
        if old_csrf {
            if let Ok(v) = HeaderValue::from_str(&format!(
                "{OLD_CSRF_COOKIE}=; Path={}; Max-Age=0; Secure; HttpOnly; SameSite=Strict",
                self.config.path
            )) {
                h.append(SET_COOKIE, v);
            }
        }
        resp
    }

    /// The forms' token: bound to the browser's CSRF cookie and to its
    /// session cookie, so a token learnt before sign-in (or in another
    /// session) is worth nothing in this one.
    fn csrf_token(&self, cookie: &str, session: Option<&str>) -> String {
        let bound = format!("{cookie}\n{}", session.unwrap_or(""));
        URL_SAFE_NO_PAD.encode(self.auth.server_key().mac("portal form", bound.as_bytes()))
    }

    /// A new CSRF cookie value: a random nonce and its HMAC under the
    /// server key, so every node knows the value as one fedgate issued.
    fn mint_csrf_cookie(&self) -> String {
        let nonce = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
        let mac = URL_SAFE_NO_PAD.encode(self.auth.server_key().mac(CSRF_COOKIE_DOMAIN, nonce.as_bytes()));
        format!("{nonce}.{mac}")
    }

    fn csrf_cookie_is_ours(&self, value: &str) -> bool {
        let Some((nonce, mac)) = value.split_once('.') else {
            return false;
        };
        let expected = URL_SAFE_NO_PAD.encode(self.auth.server_key().mac(CSRF_COOKIE_DOMAIN, nonce.as_bytes()));
        // 32 random bytes: a shorter nonce is not one fedgate made.
        nonce.len() == 43 && token_matches(mac, &expected)
    }

    async fn show(&self, page: &str, headers: &HeaderMap, frame: &Frame<'_>) -> Response<ProxyBody> {
        let Some(mut c) = self.current(headers).await else {
            return redirect(&format!("{}/sign-in", self.config.path));
        };
        match page {
            "/verify" if !c.session.signed_in => html(StatusCode::OK, frame.verify(None)),
            "/register" => self.show_register(&mut c, frame, None).await,
            "/registered" | "/security" if c.session.signed_in => {
                if page == "/registered" {
                    return html(
                        StatusCode::OK,
                        frame.registered(
                            self.auth.allow_app_passwords(),
                            &self.routes,
                            c.session.return_to.as_deref(),
                        ),
                    );
                }
                self.show_security(&c, frame, None).await
            }
            _ => redirect(&self.next_step(&c).await),
        }
    }

    async fn show_security(&self, c: &Current, frame: &Frame<'_>, error: Option<&str>) -> Response<ProxyBody> {
        match self.store.list_app_passwords(c.user.id).await {
            Ok(list) => html(
                if error.is_some() {
                    StatusCode::UNPROCESSABLE_ENTITY
                } else {
                    StatusCode::OK
                },
                frame.security(
                    c.user.upn.as_str(),
                    &list,
                    &self.routes,
                    self.auth.allow_app_passwords(),
                    error,
                    |ms| crate::model::rfc3339(ms).replacen('T', " ", 1).replace('Z', " UTC"),
                ),
            ),
            Err(err) => self.unavailable(frame, &err),
        }
    }

    async fn show_register(&self, c: &mut Current, frame: &Frame<'_>, error: Option<&str>) -> Response<ProxyBody> {
        let registered = match self.store.totp(c.user.id).await {
            Ok(t) => t.is_some(),
            Err(err) => return self.unavailable(frame, &err),
        };
        // Someone with an authenticator proves it (verify) before anything
        // else; changing it later needs a current code too.
        if registered && !c.session.signed_in {
            return redirect(&format!("{}/verify", self.config.path));
        }
        let secret = match c
            .session
            .pending_totp
            .as_deref()
            .and_then(|sealed| TotpSecret::open(&self.secrets, sealed, c.user.id).ok())
        {
            Some(secret) => secret,
            None => {
                let secret = TotpSecret::generate();
                match secret.seal(&self.secrets, c.user.id) {
                    Ok(sealed) => c.session.pending_totp = Some(sealed),
                    Err(err) => {
                        tracing::error!(error = %err, "cannot seal a TOTP secret");
                        return html(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            frame.message("Error", "The authenticator could not be set up; try again later."),
                        );
                    }
                }
                if let Err(err) = self.store.put_portal_session(&c.session).await {
                    return self.unavailable(frame, &err);
                }
                secret
            }
        };
        let svg = match secret.qr_svg(&self.config.issuer, &c.user.upn) {
            Ok(svg) => svg,
            Err(err) => {
                tracing::error!(error = %err, "cannot draw the QR code");
                String::new()
            }
        };
        let key = secret.text_key();
        let status = if error.is_some() {
            StatusCode::UNPROCESSABLE_ENTITY
        } else {
            StatusCode::OK
        };
        html(status, frame.register(&svg, key.expose(), registered, error))
    }

    async fn post(
        &self,
        action: &str,
        headers: &HeaderMap,
        form: Form,
        client: &ClientInfo,
        frame: &Frame<'_>,
    ) -> Response<ProxyBody> {
        if action == "/sign-in" {
            return self.sign_in(headers, &form, client, frame).await;
        }
        let Some(mut c) = self.current(headers).await else {
            return redirect(&format!("{}/sign-in", self.config.path));
        };
        match action {
            "/sign-out" => {
                let _ = self.store.delete_portal_session(&c.session.id_hash).await;
                let mut resp = redirect(&format!("{}/sign-in", self.config.path));
                resp.headers_mut().append(
                    SET_COOKIE,
                    HeaderValue::from_static("fedgate_session=; Path=/; Max-Age=0; Secure; HttpOnly; SameSite=Lax"),
                );
                // Forms of the ended session are worth nothing.
                resp.headers_mut()
                    .append(SET_COOKIE, csrf_set_cookie(&self.mint_csrf_cookie()));
                resp
            }
            "/verify" if !c.session.signed_in => self.verify(&mut c, &form, frame).await,
            "/register" => self.register(&mut c, &form, frame).await,
            "/app-passwords" if c.session.signed_in => self.create_app_password(&c, &form, frame).await,
            "/app-passwords/narrow" if c.session.signed_in => self.narrow_app_password(&c, &form, frame).await,
            "/app-passwords/delete" if c.session.signed_in => {
                match self.store.delete_app_password(c.user.id, form.get("name")).await {
                    Ok(()) | Err(StoreError::UnknownAppPassword { .. }) => {
                        redirect(&format!("{}/security", self.config.path))
                    }
                    Err(err) => self.unavailable(frame, &err),
                }
            }
            _ => redirect(&self.next_step(&c).await),
        }
    }

    async fn sign_in(
        &self,
        headers: &HeaderMap,
        form: &Form,
        client: &ClientInfo,
        frame: &Frame<'_>,
    ) -> Response<ProxyBody> {
        let given = form.get("upn").trim();
        let return_to = self.safe_return(form.get("return"));
        let agent = headers.get(USER_AGENT).and_then(|v| v.to_str().ok()).unwrap_or("");
        let password = Secret::from(form.get("password"));
        let signing_in = auth::Client {
            ip: client.ip,
            ip_is_proxy: client.ip_is_proxy,
            started: Instant::now(),
        };
        let user = match self.auth.portal_password(given, &password, signing_in, agent).await {
            Ok(user) => *user,
            Err(refused) => {
                let locked;
                let message = match refused.refusal {
                    Refusal::TooManyAttempts => {
                        let wait = auth::refusal::retry_after_seconds(refused.retry_after.unwrap_or_default());
                        locked = format!("Too many sign-in attempts: wait {wait} seconds, then try again.");
                        locked.as_str()
                    }
                    Refusal::Unavailable => "Sign-in is not possible right now; try again in a minute.",
                    Refusal::Unauthorized | Refusal::Forbidden => SIGN_IN_FAILED,
                };
                let page = frame.sign_in(given, return_to.as_deref().unwrap_or(""), Some(message));
                return refused_page(refused.refusal, refused.retry_after, page);
            }
        };
        let registered = match self.store.totp(user.id).await {
            Ok(t) => t.is_some(),
            Err(err) => return self.unavailable(frame, &err),
        };
        let id: [u8; 32] = rand::random();
        let now = self.now();
        let session = PortalSession {
            id_hash: Sha256::digest(id).into(),
            user_id: user.id,
            // Without an authenticator and not enrolled in MFA, the
            // password is the whole sign-in.
            signed_in: !registered && user.mfa_state == MfaState::Disabled,
            mfa: false,
            mfa_state: user.mfa_state,
            created_at: now,
            last_seen_at: now,
            return_to,
            pending_totp: None,
        };
        if let Err(err) = self.store.put_portal_session(&session).await {
            return self.unavailable(frame, &err);
        }
        let c = Current { session, user };
        let mut resp = redirect(&self.next_step(&c).await);
        let cookie = format!(
            "{SESSION_COOKIE}={}; Path=/; Max-Age={}; Secure; HttpOnly; SameSite=Lax",
            URL_SAFE_NO_PAD.encode(id),
            self.config.session_absolute.as_secs()
        );
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            resp.headers_mut().append(SET_COOKIE, v);
        }
        // A new session gets new forms: a token seen before sign-in (on a
        // shared machine, say) is worth nothing after it.
        resp.headers_mut()
            .append(SET_COOKIE, csrf_set_cookie(&self.mint_csrf_cookie()));
        resp
    }

    /// Where a session goes next: its second factor, registration, the
    /// page it came for, or the security page.
    async fn next_step(&self, c: &Current) -> String {
        let base = &self.config.path;
        if c.session.signed_in {
            return c
                .session
                .return_to
                .clone()
                .unwrap_or_else(|| format!("{base}/security"));
        }
        match self.store.totp(c.user.id).await {
            Ok(Some(_)) => format!("{base}/verify"),
            _ => format!("{base}/register"),
        }
    }

    /// Checks a code and, once, records its step; counts failures per
    /// user.
    async fn check_code(&self, c: &mut Current, code: &str) -> Result<(), &'static str> {
        let now = self.now();
        if self
            .store
            .totp_blocked_until(c.user.id)
            .await
            .ok()
            .flatten()
            .is_some_and(|until| until > now)
        {
            return Err(TOO_MANY_CODES);
        }
        let accepted = match self.store.totp(c.user.id).await {
            Ok(Some(stored)) => match TotpSecret::open(&self.secrets, &stored.sealed_secret, c.user.id) {
                Ok(secret) => match secret.verify(code, (now / 1000) as u64, stored.last_step) {
                    Some(step) => self.store.use_totp_step(c.user.id, step).await.unwrap_or(false),
                    None => false,
                },
                Err(err) => {
                    tracing::error!(error = %err, user = %c.user.upn, "cannot open a TOTP secret");
                    false
                }
            },
            _ => false,
        };
        self.count_code(c, accepted).await
    }

    async fn count_code(&self, c: &Current, accepted: bool) -> Result<(), &'static str> {
        let blocked = self
            .store
            .note_totp_result(c.user.id, accepted, &CODE_LIMIT)
            .await
            .ok()
            .flatten();
        if accepted {
            return Ok(());
        }
        tracing::info!(user = %c.user.upn, "portal: wrong second-factor code");
        Err(if blocked.is_some() { TOO_MANY_CODES } else { CODE_FAILED })
    }

    async fn verify(&self, c: &mut Current, form: &Form, frame: &Frame<'_>) -> Response<ProxyBody> {
        if let Err(message) = self.check_code(c, form.get("code")).await {
            return html(StatusCode::UNPROCESSABLE_ENTITY, frame.verify(Some(message)));
        }
        c.session.signed_in = true;
        c.session.mfa = true;
        if let Err(err) = self.store.put_portal_session(&c.session).await {
            return self.unavailable(frame, &err);
        }
        tracing::info!(user = %c.user.upn, "portal: signed in with a second factor");
        redirect(&self.next_step(c).await)
    }

    async fn register(&self, c: &mut Current, form: &Form, frame: &Frame<'_>) -> Response<ProxyBody> {
        let registered = match self.store.totp(c.user.id).await {
            Ok(t) => t.is_some(),
            Err(err) => return self.unavailable(frame, &err),
        };
        if registered && !c.session.signed_in {
            return redirect(&format!("{}/verify", self.config.path));
        }
        // Replacing an authenticator needs a code from the current one.
        if registered {
            if let Err(message) = self.check_code(c, form.get("current_code")).await {
                return self.show_register(c, frame, Some(message)).await;
            }
        }
        let now = self.now();
        let pending = c.session.pending_totp.clone().and_then(|sealed| {
            TotpSecret::open(&self.secrets, &sealed, c.user.id)
                .ok()
                .map(|s| (sealed, s))
        });
        let Some((sealed, secret)) = pending else {
            return self
                .show_register(c, frame, Some("The setup expired: scan the new code below."))
                .await;
        };
        let step = match secret.verify(form.get("code"), (now / 1000) as u64, None) {
            Some(step) => step,
            None => {
                let message = self.count_code(c, false).await.err().unwrap_or(CODE_FAILED);
                return self.show_register(c, frame, Some(message)).await;
            }
        };
        let new = NewTotp {
            sealed_secret: sealed,
            confirmed_step: step,
        };
        if let Err(err) = self.store.set_totp(c.user.id, Some(&new)).await {
            return self.unavailable(frame, &err);
        }
        // Registering completes MFA: from now on non-browser apps need app
        // passwords (as in the seed system).
        let state = if c.user.mfa_state == MfaState::Enforced {
            Ok(())
        } else {
            self.store
                .set_mfa_state(&c.user.upn, MfaState::Enforced)
                .await
                .map(|_| ())
        };
        if let Err(err) = state {
            return self.unavailable(frame, &err);
        }
        c.session.signed_in = true;
        c.session.mfa = true;
        c.session.mfa_state = MfaState::Enforced;
        c.session.pending_totp = None;
        c.session.return_to = c.session.return_to.take().filter(|_| !registered);
        if let Err(err) = self.store.put_portal_session(&c.session).await {
            return self.unavailable(frame, &err);
        }
        tracing::info!(user = %c.user.upn, "portal: authenticator registered; MFA enforced");
        redirect(&format!("{}/registered", self.config.path))
    }

    async fn create_app_password(&self, c: &Current, form: &Form, frame: &Frame<'_>) -> Response<ProxyBody> {
        if !self.auth.allow_app_passwords() {
            return self
                .show_security(c, frame, Some("Your organization does not allow app passwords."))
                .await;
        }
        let name = match AppPasswordName::parse(form.get("name")) {
            Ok(name) => name,
            Err(err) => return self.show_security(c, frame, Some(&err.to_string())).await,
        };
        let requested = form.limits();
        let limits = match crate::app_password::limits::parse(&requested.asked(), &self.routes, self.now()) {
            Ok(limits) => limits,
            Err(err) => return self.show_security(c, frame, Some(&err.to_string())).await,
        };
        match crate::app_password::issue(&*self.store, self.auth.server_key(), c.user.id, name, limits).await {
            Ok((created, password)) => html(StatusCode::OK, frame.new_app_password(&created.name, password.expose())),
            Err(crate::app_password::CredentialError::Store(
                err @ (StoreError::TooManyAppPasswords { .. } | StoreError::DuplicateAppPasswordName { .. }),
            )) => {
                let message = match err {
                    StoreError::TooManyAppPasswords { .. } => {
                        "You have 40 app passwords, the most allowed: delete one you no longer use first.".to_owned()
                    }
                    other => other.to_string(),
                };
                self.show_security(c, frame, Some(&message)).await
            }
            Err(err) => {
                tracing::error!(error = %err, user = %c.user.upn, "cannot create an app password");
                refused_page(
                    Refusal::Unavailable,
                    Some(RETRY_UNAVAILABLE),
                    frame.message(
                        "Try again later",
                        "The app password could not be created; try again in a minute.",
                    ),
                )
            }
        }
    }

    /// Narrows one of the user's app passwords to what the form of its row
    /// asks: the routes left ticked, an earlier expiry, smaller networks.
    /// Anything wider is refused with the reason, and nothing changes.
    async fn narrow_app_password(&self, c: &Current, form: &Form, frame: &Frame<'_>) -> Response<ProxyBody> {
        let current = match self.store.list_app_passwords(c.user.id).await {
            Ok(list) => list.into_iter().find(|a| a.name == form.get("name")),
            Err(err) => return self.unavailable(frame, &err),
        };
        let Some(current) = current else {
            return redirect(&format!("{}/security", self.config.path));
        };
        let requested = form.limits();
        let given = match crate::app_password::limits::parse(&requested.asked(), &self.routes, self.now()) {
            Ok(limits) => limits,
            Err(err) => return self.show_security(c, frame, Some(&err.to_string())).await,
        };
        let old = &current.limits;
        let offered = offered_scope(old, &self.routes);
        let limits = crate::model::AppPasswordLimits {
            // Every route still ticked on an unscoped app password: left
            // unscoped (a scope would shut out routes added later).
            scope: if old.scope.is_empty() && offered.iter().all(|r| given.scope.contains(r)) {
                Vec::new()
            } else {
                given.scope
            },
            expires_at: given.expires_at.or(old.expires_at),
            networks: given.networks,
        };
        if limits == *old {
            return redirect(&format!("{}/security", self.config.path));
        }
        match self.store.narrow_app_password(c.user.id, &current.name, &limits).await {
            Ok(_) | Err(StoreError::UnknownAppPassword { .. }) => redirect(&format!("{}/security", self.config.path)),
            Err(StoreError::LimitsWidened { error, .. }) => {
                let message = format!("{}: {error}", current.name);
                self.show_security(c, frame, Some(&message)).await
            }
            Err(err) => self.unavailable(frame, &err),
        }
    }

    fn unavailable(&self, frame: &Frame<'_>, err: &StoreError) -> Response<ProxyBody> {
        tracing::error!(error = %err, "portal: store unavailable");
        refused_page(
            Refusal::Unavailable,
            Some(RETRY_UNAVAILABLE),
            frame.message(
                "Try again later",
                "This page is not available right now; try again in a minute.",
            ),
        )
    }

    /// The session the request's cookie names, if it is still valid: not
    /// expired, its user active and in the MFA state it began with.
    async fn current(&self, headers: &HeaderMap) -> Option<Current> {
        let id = URL_SAFE_NO_PAD.decode(cookie(headers, SESSION_COOKIE)?).ok()?;
        let id_hash: [u8; 32] = Sha256::digest(&id).into();
        let mut session = self.store.portal_session(&id_hash).await.ok()??;
        let now = self.now();
        let idle = self.config.session_idle.as_millis() as i64;
        let absolute = if session.signed_in {
            self.config.session_absolute
        } else {
            SECOND_FACTOR_WINDOW
        }
        .as_millis() as i64;
        let user = self.store.get_user(session.user_id).await.ok()??;
        let valid = now - session.last_seen_at < idle
            && now - session.created_at < absolute
            && user.is_active()
            && user.mfa_state == session.mfa_state;
        if !valid {
            let _ = self.store.delete_portal_session(&id_hash).await;
            return None;
        }
        if now - session.last_seen_at > TOUCH_EVERY {
            session.last_seen_at = now;
            let _ = self.store.put_portal_session(&session).await;
        }
        Some(Current { session, user })
    }

    /// A return URL the portal may send a browser to: a path (never
    /// another site) under a `browser = "mfa"` route, in canonical form
    /// exactly ([`canonical_path`]): a spelling with dot segments, `//`,
    /// encodings or parameters could be read by the upstream as a path
    /// outside the sign-in routes, so it falls back to the default.
    fn safe_return(&self, given: &str) -> Option<String> {
        if given.len() > 2048 || given.contains('#') {
            return None;
        }
        let (path, query) = match given.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (given, None),
        };
        let canonical = canonical_path(path).ok()?;
        if !canonical.is_unchanged() || !canonical.is_plain() {
            return None;
        }
        if let Some(query) = query {
            check_query(query).ok()?;
        }
        self.return_routes
            .find(None, canonical.route_key())
            .map(|()| given.to_owned())
    }

    /// For a `browser = "mfa"` route: the signed-in user of a browser
    /// request, or where to send the browser. A browser is a request
    /// without `Authorization` that asks for HTML (a page) or carries a
    /// portal session (the page's scripts, styles and API calls). `None`
    /// for anything else, and for a subresource without a usable session:
    /// the decision table applies.
    pub async fn browser_check(&self, headers: &HeaderMap, path_and_query: &str) -> Option<BrowserCheck> {
        if headers.contains_key(AUTHORIZATION) {
            return None;
        }
        let wants_html = headers
            .get_all(ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.contains("text/html"));
        if !wants_html && cookie(headers, SESSION_COOKIE).is_none() {
            return None;
        }
        match self.current(headers).await {
            Some(c) if c.session.signed_in && c.session.mfa => Some(BrowserCheck::SignedIn(c.user.upn.to_string())),
            // Signed in without a code (not enrolled): registering an
            // authenticator is the way in.
            Some(c) if c.session.signed_in && wants_html => Some(BrowserCheck::Redirect(redirect(&format!(
                "{}/register",
                self.config.path
            )))),
            _ if wants_html => {
                let target = match self.safe_return(path_and_query) {
                    Some(ret) => format!(
                        "{}/sign-in?return={}",
                        self.config.path,
                        form_urlencoded::byte_serialize(ret.as_bytes()).collect::<String>()
                    ),
                    None => format!("{}/sign-in", self.config.path),
                };
                Some(BrowserCheck::Redirect(redirect(&target)))
            }
            _ => None,
        }
    }

    /// Ends sessions idle past `session_idle`.
    pub async fn prune(&self) {
        let before = self.now() - self.config.session_idle.as_millis() as i64;
        match self.store.prune_portal_sessions(before).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(sessions = n, "portal sessions expired"),
            Err(err) => tracing::warn!(error = %err, "cannot prune portal sessions"),
        }
    }
}

fn csrf_set_cookie(value: &str) -> HeaderValue {
    // Invariant: the value is base64url and a dot, always a valid header.
    HeaderValue::from_str(&format!(
        "{CSRF_COOKIE}={value}; Path=/; Secure; HttpOnly; SameSite=Strict"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("__Host-fedgate_csrf=; Path=/; Max-Age=0; Secure"))
}

fn token_matches(given: &str, expected: &str) -> bool {
    given.len() == expected.len() && bool::from(given.as_bytes().ct_eq(expected.as_bytes()))
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

async fn read_form(req: Request<Incoming>) -> Option<Form> {
    let is_form = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if !is_form {
        return None;
    }
    let body: Bytes = Limited::new(req.into_body(), MAX_FORM_BYTES)
        .collect()
        .await
        .ok()?
        .to_bytes();
    Some(Form(form_urlencoded::parse(&body).into_owned().collect()))
}

fn html(status: StatusCode, body: String) -> Response<ProxyBody> {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    resp
}

fn asset(content_type: &'static str, body: &'static str) -> Response<ProxyBody> {
    let mut resp = Response::new(full(body));
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// 303 See Other: after a POST the browser follows with a GET.
fn redirect(location: &str) -> Response<ProxyBody> {
    let mut resp = Response::new(full(""));
    *resp.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(v) = HeaderValue::from_str(location) {
        resp.headers_mut().insert(LOCATION, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_among_others() {
        let mut h = HeaderMap::new();
        h.append(COOKIE, HeaderValue::from_static("a=1; fedgate_session=abc"));
        h.append(COOKIE, HeaderValue::from_static("__Host-fedgate_csrf=xyz"));
        assert_eq!(cookie(&h, SESSION_COOKIE).as_deref(), Some("abc"));
        assert_eq!(cookie(&h, CSRF_COOKIE).as_deref(), Some("xyz"));
        assert_eq!(cookie(&h, OLD_CSRF_COOKIE), None);
        assert_eq!(cookie(&h, "missing"), None);
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(token_matches("abc", "abc"));
        assert!(!token_matches("ab", "abc"));
        assert!(!token_matches("", "abc"));
    }
}
