//! Authentication: the one place a request is checked before it is
//! forwarded. [`Authenticator::authenticate`] reads the credentials, checks
//! them (warm: one keyed hash and a map lookup; cold: one argon2
//! verification on the bounded pool), applies the decision table, writes the
//! audit record, and either establishes an [`Identity`] or refuses with a
//! [`SignInRefusal`] value (the proxy turns it into a response).
//!
//! Timing is decided here on purpose: every refusal that answers a guess
//! costs one argon2 verification (the real one, or a dummy when nothing
//! was hashed: an unknown name, a directory's answer, a cached right
//! password that is still refused), and is sent `failure_delay` after the
//! sign-in began, however long the work took. 429 and 503 go at once.
//!
//! Submodules: [`basic`] (reading `Authorization`), [`decision`] (the
//! decision table, pure), [`refusal`] (refusals as values), [`cache`]
//! (verified credentials), [`index`] (the in-memory view of the store),
//! [`hasher`] (the argon2 pool).
//!
//! Organizational passwords of federated users go to the directory
//! ([`crate::directory`]) with a bind; a user the directory knows but the
//! store does not yet is recorded on their first successful sign-in.
//!
//! Client access policies ([`crate::policy`]) are asked twice: with what
//! the request alone tells (route, network, user agent, the kind of secret
//! by its shape) before the lockout and before any secret is checked, so a
//! denied source costs no argon2 and no bind; and with the user known
//! (groups, MFA state) once the decision table allowed. A denial is
//! `policy_denied` with the rule's name in the audit record.
//!
//! Not here: the lockout rules ([`lockout`], asked before and told after
//! each check) and the portal's browser sessions.

pub mod basic;
pub mod cache;
pub mod decision;
pub mod hasher;
pub mod index;
pub mod lockout;
pub mod refusal;
pub mod share;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use http::header::USER_AGENT;
use http::request::Parts;

use crate::app_password::{self, CanonicalAppPassword, Shape};
use crate::audit::{AuditSink, Event};
use crate::config::{AuthConfig, Realm, RouteConfig};
use crate::directory::{Checked, Directory, Known, LoginName};
use crate::jobs::Job;
use crate::model::{AppPasswordId, Clock, CredentialKind, FederatedUser, Reason, Secret, Upn, UserSource};
use crate::policy::{self, PolicySet};
use crate::server_key::ServerKey;
use crate::shutdown::Shutdown;
use crate::store::health::{HealthState, Transition};
use crate::store::{LastUsed, Store, StoreError, StoreHealth, UpsertOutcome};
use cache::{CachedCredential, VerifiedCache};
use decision::{Decision, Facts, Refusal, Verified};
use hasher::{Hasher, Overloaded};
use index::{Index, UserEntry};
pub use refusal::SignInRefusal;

struct CacheMetrics {
    hit: metrics::Counter,
    miss: metrics::Counter,
}

/// Registered once: the warm path pays an atomic add, not a registry lookup.
fn cache_metrics() -> &'static CacheMetrics {
    static METRICS: std::sync::OnceLock<CacheMetrics> = std::sync::OnceLock::new();
    METRICS.get_or_init(|| CacheMetrics {
        hit: metrics::counter!("fedgate_credential_cache_total", "result" => "hit"),
        miss: metrics::counter!("fedgate_credential_cache_total", "result" => "miss"),
    })
}

/// Who the caller is, as far as the upstream will be told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// Pass-through route: nobody was asked to sign in.
    Anonymous,
    User {
        upn: String,
        credential: CredentialKind,
        app_password: Option<String>,
    },
}

impl Identity {
    /// The value of the route's identity header, if any.
    pub fn user(&self) -> Option<&str> {
        match self {
            Identity::Anonymous => None,
            Identity::User { upn, .. } => Some(upn),
        }
    }

    /// The kind of credential that established the identity.
    pub fn credential(&self) -> &'static str {
        match self {
            Identity::Anonymous => "none",
            Identity::User { credential, .. } => credential.as_str(),
        }
    }

    pub fn app_password(&self) -> Option<&str> {
        match self {
            Identity::Anonymous => None,
            Identity::User { app_password, .. } => app_password.as_deref(),
        }
    }
}

/// The outcome for one request: go on as `Identity`, or refuse instead of
/// forwarding.
pub type Outcome = Result<Identity, SignInRefusal>;

/// How often the change feed is polled: revocations by any process reach
/// this one within this interval plus the reload.
pub const REFRESH_INTERVAL: Duration = Duration::from_millis(200);
const LAST_USED_FLUSH: Duration = Duration::from_secs(5);
/// `[store] max_staleness` when nobody passes another.
const DEFAULT_MAX_STALENESS: Duration = Duration::from_secs(5);
const CACHE_SWEEP: Duration = Duration::from_secs(60);
/// The least time between two refreshes asked for by sign-ins that missed
/// the view: a flood of unknown names or made-up app passwords costs the
/// store at most one change-feed read per this interval per node.
const CATCH_UP_SPACING: Duration = Duration::from_millis(25);
/// How long such a refresh may take before the sign-in is answered as the
/// store being unavailable.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(1);

pub struct Authenticator {
    store: Arc<dyn Store>,
    index: Index,
    cache: VerifiedCache,
    hasher: Hasher,
    key: ServerKey,
    audit: AuditSink,
    last_used: DashMap<AppPasswordId, LastUsed>,
    clock: Arc<dyn Clock>,
    ttl: Duration,
    failure_delay: Duration,
    directory: Option<DirectoryAuth>,
    lockout: Arc<lockout::Lockout>,
    /// What the lockout counts, sent to and read from the other nodes.
    sharing: Arc<share::Sharing>,
    /// Whether the view in `index` may still be answered from.
    health: Arc<StoreHealth>,
    /// One refresh of the view at a time (two at once could apply an older
    /// read of a user after a newer one), and when the newest one began:
    /// a sign-in that missed the view waits for one that began after it.
    refreshing: tokio::sync::Mutex<Refreshes>,
    /// The `[[policy]]` tables in force, replaced whole by a reload. Not
    /// part of any cached verdict: asked afresh on every sign-in, so a
    /// reload applies to the next request.
    policies: std::sync::RwLock<Arc<PolicySet>>,
}

/// When the newest refresh of the view began, and the newest that
/// succeeded.
#[derive(Debug, Default)]
struct Refreshes {
    began: Option<Instant>,
    succeeded: Option<Instant>,
}

/// The directory and how long a password it verified stays warm.
struct DirectoryAuth {
    directory: Arc<dyn Directory>,
    ttl: Duration,
}

/// What checking a secret produced: the verdict, the user as the
/// directory just described them when that changed (or created) the user,
/// and whether an argon2 verification ran for it.
struct Verification {
    verified: Verified,
    fresh: Option<Arc<UserEntry>>,
    hashed: bool,
    /// Answered from the verified-credential cache.
    warm: bool,
}

impl From<Verified> for Verification {
    fn from(verified: Verified) -> Self {
        Verification {
            verified,
            fresh: None,
            hashed: false,
            warm: false,
        }
    }
}

impl Verification {
    /// A repeat of one of the counter's last wrong secrets, from the source
    /// that first sent it: refused without any check and without the
    /// argon2 a refused guess otherwise costs. That source knows it
    /// repeated itself, so a quicker answer tells it nothing (and
    /// `failure_delay` still holds the 401 back); hashing each repeat would
    /// let one client that retries a wrong password in a loop fill the
    /// hashing pool, and turn every answer into a 503 sent at once. (A
    /// repeat from another source costs a dummy argon2, as a guess does.)
    fn repeat() -> Self {
        Verification {
            hashed: true,
            ..Verified::Invalid.into()
        }
    }

    /// A verdict reached by an argon2 verification (or refused by the pool
    /// before one could run).
    fn hashed(verified: Verified) -> Self {
        Verification {
            hashed: verified != Verified::Overloaded,
            ..verified.into()
        }
    }
}

/// What an argon2 verification was for, as `fedgate_argon2_total` counts it.
#[derive(Debug, Clone, Copy)]
enum HashFor {
    AppPassword,
    Password,
    Dummy,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("users", &self.index.user_count())
            .field("cache", &self.cache)
            .finish_non_exhaustive()
    }
}

/// What the portal's password step found: the user whose organizational
/// password is right and who may sign in, or the refusal (wrong password,
/// unknown user, app password and disabled account alike; locked out;
/// unavailable).
pub type PortalPassword = Result<Box<crate::model::User>, SignInRefusal>;

/// The `User-Agent` header as text.
fn user_agent(head: &Parts) -> &str {
    head.headers
        .get(USER_AGENT)
        .map(|v| std::str::from_utf8(v.as_bytes()).unwrap_or("(not UTF-8)"))
        .unwrap_or("")
}

/// The DNs of a user's directory groups (none for cloud-only users).
fn user_groups(user: Option<&crate::model::User>) -> &[String] {
    user.and_then(|u| u.directory.as_ref()).map_or(&[], |d| &d.groups)
}

/// Whether the directory's view of a user differs from the store's.
fn needs_recording(entry: Option<&UserEntry>, found: &FederatedUser) -> bool {
    match entry {
        None => true,
        Some(e) => {
            e.user.upn != found.upn
                || e.user.directory.as_ref() != Some(&found.attributes)
                || e.user.directory_enabled != found.enabled
        }
    }
}

/// Whom a sign-in counts against: the user the name resolved to, else the
/// name's canonical login part (so a UPN and a bare login of one unknown
/// user share a budget); nobody for a name that was refused.
fn lockout_subject<'a>(name: Option<&'a LoginName>, entry: Option<&UserEntry>) -> Option<lockout::Subject<'a>> {
    match (entry, name) {
        (Some(e), _) => Some(lockout::Subject::User(e.user.id)),
        (None, Some(name)) => Some(lockout::Subject::Name(name.login())),
        (None, None) => None,
    }
}

/// Whom a check counts against, carried into a directory check that may
/// outlive its request.
#[derive(Debug, Clone, Copy)]
struct Asker<'a> {
    subject: Option<lockout::Subject<'a>>,
    ip: IpAddr,
    epoch: u64,
}

/// What the lockout said before a secret is checked, and about whom.
struct Asked<'n, 's> {
    subject: Option<lockout::Subject<'n>>,
    epoch: u64,
    check: lockout::Check,
    /// The secret under the epoch it was asked in, to count it later.
    attempt: lockout::Attempt<'s>,
    locked_out: bool,
    /// The user the name resolved to, in the view or once caught up.
    entry: Option<Arc<UserEntry>>,
    /// False when catching up could not read the store.
    current: bool,
}

/// The facts about a request the sign-in path needs besides its headers.
#[derive(Debug, Clone, Copy)]
pub struct Client {
    pub ip: IpAddr,
    /// `ip` is a trusted proxy's own (no client address was forwarded): it
    /// stands for everyone behind that proxy, so it is never familiar.
    pub ip_is_proxy: bool,
    /// When the sign-in began: a refusal that waits is sent
    /// `failure_delay` after this.
    pub started: Instant,
}

impl Authenticator {
    pub async fn new(
        store: Arc<dyn Store>,
        key: ServerKey,
        audit: AuditSink,
        config: &AuthConfig,
        directory: Option<(Arc<dyn Directory>, Duration)>,
        clock: Arc<dyn Clock>,
    ) -> Result<Authenticator, StoreError> {
        let index = Index::load(&*store).await?;
        let loaded_at = clock.now_ms();
        let window = config
            .lockout_max_duration
            .max(config.lockout_source_window)
            .max(config.lockout_duration)
            .min(share::KEPT);
        let sharing = share::Sharing::start(&*store, crate::model::this_node(), Arc::clone(&clock), window).await?;
        // Made once, before the first request, so that refusing an unknown
        // user costs what verifying a real one does.
        let hasher = Hasher::new(config.hash_workers, config.hash_queue);
        let _ = tokio::task::spawn_blocking(|| app_password::dummy_hash().len()).await;
        Ok(Authenticator {
            store,
            index,
            cache: VerifiedCache::new(config.cache_max_entries),
            hasher,
            key,
            audit,
            last_used: DashMap::new(),
            clock,
            ttl: config.cache_ttl,
            failure_delay: config.failure_delay,
            directory: directory.map(|(directory, ttl)| DirectoryAuth { directory, ttl }),
            lockout: Arc::new(lockout::Lockout::new(lockout::Rules {
                threshold: config.lockout_threshold,
                duration: config.lockout_duration,
                max_duration: config.lockout_max_duration,
                source_threshold: config.lockout_source_threshold,
                source_window: config.lockout_source_window,
                max_entries: config.lockout_max_entries,
            })),
            health: Arc::new(StoreHealth::new(DEFAULT_MAX_STALENESS, Instant::now(), loaded_at)),
            refreshing: tokio::sync::Mutex::new(Refreshes::default()),
            sharing: Arc::new(sharing),
            policies: std::sync::RwLock::new(Arc::new(PolicySet::default())),
        })
    }

    /// The policies in force.
    pub fn policies(&self) -> Arc<PolicySet> {
        // Invariant: the lock is held only to clone or replace an Arc.
        Arc::clone(&self.policies.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Replaces the policies in force (start-up, reload).
    pub fn set_policies(&self, policies: Arc<PolicySet>) {
        *self.policies.write().unwrap_or_else(|p| p.into_inner()) = policies;
    }

    /// What the policies say about a browser signed in through the portal
    /// on a `browser = "mfa"` route: nothing to add, or a 403 (audited as
    /// `policy_denied`; allowed requests are not audited, as sessions are
    /// not).
    pub fn session_allowed(
        &self,
        route: &RouteConfig,
        head: &Parts,
        client: Client,
        upn: &str,
    ) -> Result<(), SignInRefusal> {
        let policies = self.policies();
        if policies.is_empty() {
            return Ok(());
        }
        let user_agent = user_agent(head);
        let request = policy::Request {
            route: policy::RouteRef {
                name: &route.name,
                path: &route.path,
            },
            ip: client.ip,
            user_agent,
            kind: policy::Kind::Session,
        };
        let entry = self.index.user_by_upn(upn);
        let user = entry.as_ref().map(|e| &e.user);
        let facts = policy::UserFacts {
            mfa_state: user.map_or(crate::model::MfaState::Disabled, |u| u.mfa_state),
            groups: user_groups(user),
        };
        let Some(rule) = policies.decide(&request, &facts).denied() else {
            return Ok(());
        };
        let audit = Event {
            at: self.clock.now_ms(),
            upn_given: upn,
            user_id: user.map(|u| u.id),
            route: &route.name,
            credential: CredentialKind::PortalSession,
            app_password_name: None,
            client_ip: client.ip,
            user_agent,
            success: false,
            reason: Reason::PolicyDenied,
            policy: Some(&rule.reason),
        };
        Err(self.refuse(audit, Refusal::Forbidden, Reason::PolicyDenied))
    }

    /// Shares `health` with whoever else reports on the store (readiness);
    /// it must be as of now, the index having just been loaded.
    pub fn with_store_health(mut self, health: Arc<StoreHealth>) -> Authenticator {
        self.health = health;
        self
    }

    /// Decides a request that carries its credentials in `Authorization`
    /// (a proxied request, or one a front proxy describes).
    pub async fn authenticate(&self, route: &RouteConfig, head: &Parts, client: Client) -> Outcome {
        if route.realm == Realm::None {
            return Ok(Identity::Anonymous);
        }
        self.authenticate_presented(route, basic::parse(&head.headers), user_agent(head), client)
            .await
    }

    /// Decides credentials read elsewhere than from `Authorization` (the
    /// mail auth_http endpoint's `Auth-User` / `Auth-Pass`), with the same
    /// decision table, policies, lockout, timing and audit.
    pub async fn authenticate_presented(
        &self,
        route: &RouteConfig,
        presented: basic::Presented,
        user_agent: &str,
        client: Client,
    ) -> Outcome {
        if route.realm == Realm::None {
            return Ok(Identity::Anonymous);
        }
        let mut audit = Event {
            at: self.clock.now_ms(),
            upn_given: "",
            user_id: None,
            route: &route.name,
            credential: CredentialKind::None,
            app_password_name: None,
            client_ip: client.ip,
            user_agent,
            success: false,
            reason: Reason::NoCredentials,
            policy: None,
        };
        let (user_given, secret) = match presented {
            basic::Presented::None => return Err(self.refuse(audit, Refusal::Unauthorized, Reason::NoCredentials)),
            // Nothing readable to check, so nothing to hash: only the wait.
            basic::Presented::Malformed => {
                let refusal = self.refuse(audit, Refusal::Unauthorized, Reason::Malformed);
                return Err(self.held_back(refusal, client.started).await);
            }
            basic::Presented::Basic { user, secret } => (user, secret),
        };
        audit.upn_given = &user_given;
        let (name, entry) = self.resolve(&user_given);
        // The shape decides what the secret is: an app password (looked
        // up in the store), a mistyped one (refused, never sent anywhere),
        // or an organizational password.
        let (app_password, mistyped) = match app_password::classify(secret.expose()) {
            Shape::AppPassword(canonical) => (Some(canonical), false),
            Shape::Mistyped => (None, true),
            Shape::Other => (None, false),
        };
        audit.credential = match (&app_password, mistyped, secret.expose().is_empty()) {
            (Some(_), _, _) | (None, true, _) => CredentialKind::AppPassword,
            (None, false, true) => CredentialKind::None,
            (None, false, false) => CredentialKind::Password,
        };

        // What the request alone tells the policies, before anything is
        // asked of the lockout, the hashing pool or the directory. (An
        // empty secret is refused by the decision table whatever they say.)
        let policies = self.policies();
        let request = policy::Kind::of(audit.credential).map(|kind| policy::Request {
            route: policy::RouteRef {
                name: &route.name,
                path: &route.path,
            },
            ip: client.ip,
            user_agent,
            kind,
        });
        let early = request.as_ref().map(|r| policies.before_user(r));
        if let Some(rule) = early.flatten().and_then(policy::Verdict::denied) {
            audit.policy = Some(&rule.reason);
            // Held back like any refused secret, so hammering from a
            // denied network costs a timer, not a core; nothing counted.
            let refusal = self.refuse(audit, Refusal::Unauthorized, Reason::PolicyDenied);
            return Err(self.held_back(refusal, client.started).await);
        }

        // The view could not be refreshed for longer than the bound: a
        // revocation may be missing from it.
        let stale = self.health.is_stale();
        // A locked account gets no answer about the secret at all; a wrong
        // secret repeated is refused again without asking anyone.
        let Asked {
            subject,
            epoch,
            check,
            attempt,
            locked_out,
            entry,
            current,
        } = self
            .ask_lockout(
                name.as_ref(),
                entry,
                secret.expose(),
                client.ip,
                route.realm.as_str(),
                !stale && !mistyped,
            )
            .await;
        let Verification {
            verified,
            fresh,
            hashed,
            warm,
        } = match check {
            lockout::Check::Locked(_) => Verified::Invalid.into(),
            _ if stale => Verified::StoreUnavailable.into(),
            lockout::Check::KnownWrong { from_here: true, .. } => Verification::repeat(),
            lockout::Check::KnownWrong { from_here: false, .. } => self.dummy_verification().await,
            // Costs what a wrong app password costs; nothing is asked.
            lockout::Check::Clear if mistyped => self.dummy_verification().await,
            // The view lacks the name and the store could not be read: the
            // user may be missing from the view, so this is not answered
            // as a wrong secret.
            lockout::Check::Clear if !current && entry.is_none() => Verified::StoreUnavailable.into(),
            lockout::Check::Clear => {
                let asker = Asker {
                    subject,
                    ip: client.ip,
                    epoch,
                };
                self.verify(
                    route.realm,
                    name.as_ref(),
                    entry.as_deref(),
                    &secret,
                    app_password,
                    asker,
                )
                .await
            }
        };
        let verified = match verified {
            Verified::Invalid if mistyped => Verified::Mistyped,
            verified => verified,
        };
        let entry = fresh.or(entry);
        audit.user_id = entry.as_ref().map(|e| e.user.id);
        if let Verified::AppPassword { name, .. } = &verified {
            audit.app_password_name = Some(name);
        }
        // Limits are checked at every use, warm or not: an expiry passes
        // while an entry is cached, and the client's network is this
        // request's.
        let outside_limits = match &verified {
            Verified::AppPassword { limits, .. } => app_password::limits::check(
                limits,
                app_password::limits::Use {
                    route: &route.name,
                    client: client.ip,
                    client_unknown: client.ip_is_proxy,
                    now_ms: audit.at,
                },
            )
            .err(),
            _ => None,
        };
        let decision = decision::decide(Facts {
            realm: route.realm,
            verified: &verified,
            user: entry.as_ref().map(|e| &e.user),
            allow_app_passwords: self.index.allow_app_passwords(),
            locked_out,
            outside_limits,
        });
        // A repeat refused unchecked is logged as what it was refused as
        // the first time (both are 401 to the client).
        let decision = match (check, decision) {
            (
                lockout::Check::KnownWrong {
                    reason:
                        first @ (Reason::AppPasswordRequired | Reason::AccountDisabled | Reason::AppPasswordMistyped),
                    ..
                },
                Decision::Deny {
                    refusal,
                    reason: Reason::BadCredentials,
                },
            ) => Decision::Deny { refusal, reason: first },
            (_, decision) => decision,
        };
        // The rules that depend on the user, once the credential is known
        // to be good: a denial then says nothing about the secret (the
        // same 401, cost and wait as a wrong one) and counts toward
        // nothing.
        let decision = match (decision, &request, early) {
            (Decision::Allow { .. }, Some(request), Some(None)) => {
                let user = entry.as_ref().map(|e| &e.user);
                let facts = policy::UserFacts {
                    mfa_state: user.map_or(crate::model::MfaState::Disabled, |u| u.mfa_state),
                    groups: user_groups(user),
                };
                match policies.decide(request, &facts).denied() {
                    Some(rule) => {
                        audit.policy = Some(&rule.reason);
                        Decision::Deny {
                            refusal: Refusal::Unauthorized,
                            reason: Reason::PolicyDenied,
                        }
                    }
                    None => decision,
                }
            }
            (decision, _, _) => decision,
        };
        self.count_for_lockout(subject, entry.as_deref(), &client, attempt, decision.reason(), !warm);
        match decision {
            Decision::Allow { credential, reason } => {
                if let Verified::AppPassword { id, .. } = &verified {
                    self.note_use(*id, &audit);
                }
                audit.success = true;
                audit.reason = reason;
                audit.credential = credential;
                self.audit.record(&audit);
                // Invariant: the decision table allows only a resolved user.
                let upn = entry.map(|e| e.user.upn.as_str().to_owned()).unwrap_or_default();
                Ok(Identity::User {
                    upn,
                    credential,
                    app_password: audit.app_password_name.map(str::to_owned),
                })
            }
            Decision::Deny { refusal, reason } => {
                let (refusal, reason) = self.at_the_cost_of_a_guess(refusal, reason, hashed).await;
                let mut refusal = self.refuse(audit, refusal, reason);
                if let lockout::Check::Locked(left) = check {
                    // Lockouts grow when repeated: the wait left on this one.
                    refusal.retry_after = Some(left);
                }
                Err(self.held_back(refusal, client.started).await)
            }
        }
    }

    /// The portal's password step: the organizational password (argon2
    /// for cloud-only users, a bind for directory users), never an app
    /// password. Audited as route `portal`; refusals cost and wait what
    /// they do on the Basic path.
    pub async fn portal_password(
        &self,
        given: &str,
        secret: &Secret,
        client: Client,
        user_agent: &str,
    ) -> PortalPassword {
        let (name, entry) = self.resolve(given);
        let mut audit = Event {
            at: self.clock.now_ms(),
            upn_given: given,
            user_id: None,
            route: "portal",
            credential: CredentialKind::Password,
            app_password_name: None,
            client_ip: client.ip,
            user_agent,
            success: false,
            reason: Reason::BadCredentials,
            policy: None,
        };
        let stale = self.health.is_stale();
        let app_password_shaped = app_password::is_app_password_shaped(secret.expose());
        let Asked {
            subject,
            epoch,
            check,
            attempt,
            locked_out,
            entry,
            current,
        } = self
            .ask_lockout(
                name.as_ref(),
                entry,
                secret.expose(),
                client.ip,
                "portal",
                !stale && !app_password_shaped,
            )
            .await;
        let verified = if locked_out {
            Verification::from(Verified::Invalid)
        } else if stale {
            Verification::from(Verified::StoreUnavailable)
        } else if app_password_shaped {
            // App passwords are for devices; the portal wants the person.
            // Nothing of their shape is a directory password. (Before the
            // repeat check, so a repeat is refused as what it is.)
            audit.credential = CredentialKind::AppPassword;
            match app_password::classify(secret.expose()) {
                Shape::Mistyped => Verification::from(Verified::Mistyped),
                _ => Verification::from(Verified::Invalid),
            }
        } else if matches!(check, lockout::Check::KnownWrong { from_here: true, .. }) {
            Verification::repeat()
        } else if matches!(check, lockout::Check::KnownWrong { from_here: false, .. }) {
            self.dummy_verification().await
        } else if !current && entry.is_none() {
            // As on the Basic path: the view may lack the user.
            Verification::from(Verified::StoreUnavailable)
        } else {
            let asker = Asker {
                subject,
                ip: client.ip,
                epoch,
            };
            self.verify(Realm::Cloud, name.as_ref(), entry.as_deref(), secret, None, asker)
                .await
        };
        let entry = verified.fresh.clone().or(entry);
        audit.user_id = entry.as_ref().map(|e| e.user.id);
        let found = match (&verified.verified, &entry) {
            (_, Some(e)) if !e.user.is_active() => Err((Refusal::Unauthorized, Reason::AccountDisabled)),
            _ if locked_out => Err((Refusal::TooManyAttempts, Reason::LockedOut)),
            (Verified::Password, Some(e)) => Ok(&e.user),
            (Verified::AccountDisabled, _) => Err((Refusal::Unauthorized, Reason::AccountDisabled)),
            (Verified::LockedOut, _) => Err((Refusal::TooManyAttempts, Reason::LockedOut)),
            (Verified::DirectoryUnavailable, _) => Err((Refusal::Unavailable, Reason::DirectoryUnavailable)),
            (Verified::Overloaded, _) => Err((Refusal::Unavailable, Reason::Overloaded)),
            (Verified::StoreUnavailable, _) => Err((Refusal::Unavailable, Reason::StoreUnavailable)),
            (Verified::Mistyped, _) => Err((Refusal::Unauthorized, Reason::AppPasswordMistyped)),
            _ => Err((Refusal::Unauthorized, Reason::BadCredentials)),
        };
        let reason = found.map_or_else(|(_, reason)| reason, |_| Reason::Password);
        self.count_for_lockout(subject, entry.as_deref(), &client, attempt, reason, !verified.warm);
        let refusal = match found {
            Ok(user) => {
                audit.success = true;
                audit.reason = reason;
                self.audit.record(&audit);
                return Ok(Box::new(user.clone()));
            }
            Err((refusal, _)) => refusal,
        };
        let (refusal, reason) = self.at_the_cost_of_a_guess(refusal, reason, verified.hashed).await;
        let mut refusal = self.refuse(audit, refusal, reason);
        if let lockout::Check::Locked(left) = check {
            refusal.retry_after = Some(left);
        }
        Err(self.held_back(refusal, client.started).await)
    }

    /// Asks the lockout about a sign-in: for the user the view has, or
    /// for the name when it has none. A name not in the view, when the
    /// answer is clear and `may_catch_up`, is looked for once more after
    /// catching up (perhaps made a moment ago elsewhere, or recorded in the
    /// store by its own first sign-in and not read back yet; a name that
    /// cannot name anybody, say of another domain, is not looked for), and
    /// the lockout asked again for the account it found.
    async fn ask_lockout<'n, 's>(
        &self,
        name: Option<&'n LoginName>,
        mut entry: Option<Arc<UserEntry>>,
        secret: &'s str,
        ip: IpAddr,
        context: &str,
        may_catch_up: bool,
    ) -> Asked<'n, 's> {
        let ask = |entry: Option<&UserEntry>| {
            let subject = lockout_subject(name, entry);
            let epoch = self.lockout_epoch(entry, context);
            let check = self
                .lockout
                .check(subject, ip, lockout::Attempt::new(secret, epoch), Instant::now());
            (subject, epoch, check)
        };
        let (mut subject, mut epoch, mut check) = ask(entry.as_deref());
        let mut current = true;
        if let Some(name) = name.filter(|_| may_catch_up && check == lockout::Check::Clear && entry.is_none()) {
            current = self.catch_up(Instant::now()).await;
            // Once caught up, the sign-in is the account's: asked for the
            // account and counted there, as the next one (answered from the
            // view) will be. Counted under the name, guesses made before the
            // view's next refresh spent a budget nobody consults once the view
            // has the account: extra guesses for whoever started right after a
            // user's first sign-in.
            //
            // Asked under the name first, caught up only when that is clear: a
            // locked name is refused at once, with no wait for a refresh (a
            // flood of locked junk names costs no store reads), and a name the
            // view has is one lookup as before. An account the view lacked is
            // refused as soon as it is known, still with nothing checked. The
            // name's counter is not merged into the account's: it holds what
            // was guessed before the account existed here, from strangers only
            // (a name has no familiar sources), and merging would let those
            // guesses lock the user's own devices out.
            if let Some(found) = self.user_named(name) {
                (subject, epoch, check) = ask(Some(&*found));
                entry = Some(found);
            }
        }
        Asked {
            subject,
            epoch,
            check,
            attempt: lockout::Attempt::new(secret, epoch),
            locked_out: matches!(check, lockout::Check::Locked(_)),
            entry,
            current,
        }
    }

    /// The name as given, folded once ([`crate::names`]) and parsed, and
    /// the user it names in the index. Without a directory only UPNs are
    /// names; fedgate matches them exactly on the folded form, so non-ASCII
    /// UPNs are accepted there.
    fn resolve(&self, given: &str) -> (Option<LoginName>, Option<Arc<UserEntry>>) {
        let name = match &self.directory {
            Some(d) => LoginName::parse(given, d.directory.domain(), d.directory.allow_non_ascii_logins()),
            None => Upn::parse(given).ok().map(LoginName::Upn),
        };
        let entry = name.as_ref().and_then(|name| self.user_named(name));
        (name, entry)
    }

    /// The user a parsed name names in the index.
    fn user_named(&self, name: &LoginName) -> Option<Arc<UserEntry>> {
        match name {
            LoginName::Upn(upn) => self.index.user_by_upn(upn.as_str()),
            LoginName::Login(login) => self.index.user_by_login(login),
        }
    }

    /// What a refused secret was refused against: any change to the user
    /// or the settings makes it worth checking again.
    /// `context` keeps what one kind of route refused from standing for
    /// another (an enforced user's password is refused on cloud routes
    /// and accepted on-premises and by the portal).
    fn lockout_epoch(&self, entry: Option<&UserEntry>, context: &str) -> u64 {
        use std::hash::{DefaultHasher, Hash, Hasher};
        let mut h = DefaultHasher::new();
        (
            entry.map_or(0, |e| e.generation),
            self.index.settings_generation(),
            context,
        )
            .hash(&mut h);
        h.finish()
    }

    /// A refused secret counts toward the account's lockout (a right one
    /// refused as `app_password_required` too, so the answer tells a
    /// guesser nothing); a right one accepted makes the source familiar.
    fn count_for_lockout(
        &self,
        subject: Option<lockout::Subject<'_>>,
        entry: Option<&UserEntry>,
        client: &Client,
        attempt: lockout::Attempt<'_>,
        reason: Reason,
        checked: bool,
    ) {
        let ip = client.ip;
        let now = Instant::now();
        match (reason, subject) {
            // `account_disabled` too: AD tells a disabled account only to
            // the right password (`data 533`, `701`), so it must count as a
            // wrong one would, or the count would tell.
            (
                Reason::BadCredentials
                | Reason::AppPasswordMistyped
                | Reason::AppPasswordRequired
                | Reason::AccountDisabled,
                Some(subject),
            ) => {
                let failed = self.lockout.failed(subject, ip, attempt, reason, now);
                if failed.counted {
                    self.sharing.failed(subject, ip, reason);
                }
                if let Some(length) = failed.locked {
                    let user = entry.map(|e| e.user.upn.as_str()).unwrap_or("(unknown name)");
                    tracing::warn!(user = %user, client = %ip, lockout = ?length, "too many wrong secrets: account locked out for a while");
                }
                if let Some(length) = failed.source_locked {
                    tracing::warn!(client = %ip, lockout = ?length, "wrong secrets for many accounts from one source: source locked out for unfamiliar accounts");
                }
            }
            (Reason::Password | Reason::AppPassword, _) => {
                if let Some(e) = entry {
                    if self.lockout.signed_in(e.user.id, ip, client.ip_is_proxy, checked, now) {
                        self.sharing.signed_in(e.user.id, ip);
                    }
                }
            }
            _ => {}
        }
    }

    /// The user as the running server knows them (current to within one
    /// change-feed poll).
    pub fn user(&self, id: crate::model::UserId) -> Option<Arc<UserEntry>> {
        self.index.user_by_id(id)
    }

    /// The user with this UPN as the running server knows them.
    pub fn user_by_upn(&self, upn: &str) -> Option<Arc<UserEntry>> {
        self.index.user_by_upn(upn)
    }

    pub fn allow_app_passwords(&self) -> bool {
        self.index.allow_app_passwords()
    }

    pub fn server_key(&self) -> &ServerKey {
        &self.key
    }

    /// Checks the secret: from the cache when it was verified recently and
    /// nothing changed since, else with one argon2 verification (a dummy one
    /// when there is nothing to verify against, so every refusal costs the
    /// same).
    async fn verify(
        &self,
        realm: Realm,
        name: Option<&LoginName>,
        entry: Option<&UserEntry>,
        secret: &Secret,
        app_password: Option<CanonicalAppPassword>,
        asker: Asker<'_>,
    ) -> Verification {
        // An empty password is refused before anything else (an empty LDAP
        // bind is an anonymous bind that directories accept).
        if secret.expose().is_empty() || secret.expose().len() > app_password::MAX_PASSWORD_BYTES {
            return Verified::Invalid.into();
        }
        let settings_generation = self.index.settings_generation();
        let cache_key = entry.map(|e| self.cache.key(realm, e.user.upn.as_str(), secret.expose()));
        if let (Some(e), Some(key)) = (entry, &cache_key) {
            if let Some(hit) = self.cache.get(key, Instant::now()) {
                if hit.user == e.user.id
                    && hit.user_generation == e.generation
                    && hit.settings_generation == settings_generation
                {
                    cache_metrics().hit.increment(1);
                    let verified = match hit.credential {
                        CachedCredential::AppPassword { id, name, limits } => {
                            Verified::AppPassword { id, name, limits }
                        }
                        CachedCredential::Password => Verified::Password,
                    };
                    return Verification {
                        warm: true,
                        ..verified.into()
                    };
                }
                self.cache.remove(key);
            }
        }
        cache_metrics().miss.increment(1);

        let (verification, cached) = match app_password {
            Some(candidate) => {
                let (verified, cached) = self.verify_app_password(entry, candidate).await;
                (Verification::hashed(verified), cached.map(|c| (c, self.ttl)))
            }
            None => self.verify_password(realm, name, entry, secret, asker).await,
        };
        if let (Some(e), Some(key), Some((credential, ttl))) = (entry, cache_key, cached) {
            if !ttl.is_zero() {
                self.cache.insert(
                    key,
                    cache::Entry {
                        user: e.user.id,
                        credential,
                        user_generation: e.generation,
                        settings_generation,
                        expires: Instant::now() + ttl,
                    },
                );
            }
        }
        verification
    }

    async fn verify_app_password(
        &self,
        entry: Option<&UserEntry>,
        candidate: CanonicalAppPassword,
    ) -> (Verified, Option<CachedCredential>) {
        let tag = app_password::lookup_tag(&self.key, &candidate);
        let find = || {
            self.index
                .app_password_by_tag(&tag)
                .filter(|r| entry.is_some_and(|e| e.user.id == r.user_id))
        };
        let record = match find() {
            Some(record) => Some(record),
            // Perhaps created a moment ago on another node or by the CLI.
            None if entry.is_some() => {
                if !self.catch_up(Instant::now()).await {
                    return (Verified::StoreUnavailable, None);
                }
                find()
            }
            None => None,
        };
        let Some(record) = record else {
            return (self.dummy_verification().await.verified, None);
        };
        let hash = record.hash.clone();
        match self
            .argon2(HashFor::AppPassword, move || app_password::verify(&candidate, &hash))
            .await
        {
            Err(_) => (Verified::Overloaded, None),
            Ok(false) => (Verified::Invalid, None),
            Ok(true) => {
                let name: Arc<str> = Arc::from(record.name.as_str());
                (
                    Verified::AppPassword {
                        id: record.id,
                        name: name.clone(),
                        limits: Arc::clone(&record.limits),
                    },
                    Some(CachedCredential::AppPassword {
                        id: record.id,
                        name,
                        limits: Arc::clone(&record.limits),
                    }),
                )
            }
        }
    }

    /// Checks an organizational password: against the argon2 hash of a
    /// cloud-only user, or with a directory bind for a federated user and
    /// for a name the store does not know (the directory may). Returns what
    /// to cache and for how long.
    async fn verify_password(
        &self,
        realm: Realm,
        name: Option<&LoginName>,
        entry: Option<&UserEntry>,
        secret: &Secret,
        asker: Asker<'_>,
    ) -> (Verification, Option<(CachedCredential, Duration)>) {
        let directory = self.directory.as_ref().zip(name);
        match entry {
            // On-premises services know only directory accounts.
            Some(e) if e.user.source == UserSource::Cloud && realm == Realm::Onprem => {
                (self.dummy_verification().await, None)
            }
            Some(e) if e.user.source == UserSource::Cloud => match &e.user.password_hash {
                Some(hash) => {
                    let (hash, secret) = (hash.clone(), secret.clone());
                    let verified = match self
                        .argon2(HashFor::Password, move || app_password::verify_password(&secret, &hash))
                        .await
                    {
                        Err(_) => Verified::Overloaded,
                        Ok(false) => Verified::Invalid,
                        Ok(true) => Verified::Password,
                    };
                    let cached = (verified == Verified::Password).then_some((CachedCredential::Password, self.ttl));
                    (Verification::hashed(verified), cached)
                }
                None => (self.dummy_verification().await, None),
            },
            // A disabled or deleted account is refused whatever the secret
            // (the decision table): a bind would only count toward the
            // directory's own lockout.
            Some(e) if !e.user.is_active() => (Verified::Invalid.into(), None),
            _ => match directory {
                Some((d, name)) => self.verify_with_directory(d, name, entry, secret, asker).await,
                // Federated user without a configured directory, or a name
                // nobody knows.
                None => (self.dummy_verification().await, None),
            },
        }
    }

    async fn verify_with_directory(
        &self,
        d: &DirectoryAuth,
        name: &LoginName,
        entry: Option<&UserEntry>,
        secret: &Secret,
        asker: Asker<'_>,
    ) -> (Verification, Option<(CachedCredential, Duration)>) {
        let known = entry.and_then(|e| {
            e.user
                .directory
                .as_ref()
                .map(|attrs| (e.user.upn.clone(), attrs.dn.clone()))
        });
        // The hash a refusal costs is reserved before the bind: with the
        // pool full the answer is `overloaded` at once and nothing is sent
        // to the directory (as for a cloud user), so filling the pool buys
        // a guesser neither unthrottled binds nor a quicker answer.
        let Ok(admission) = self.hasher.admit() else {
            return (Verified::Overloaded.into(), None);
        };
        let started = Instant::now();
        // The check runs to its end in a task of its own, even when the
        // client goes away mid-bind: an LDAP operation dropped half-way
        // leaves its answer with nobody to take it (and a warning in the
        // log for each).
        //
        // A client that goes away mid-bind (an HTTP/2 stream reset, a
        // closed connection) does not take its attempt with it: the task
        // counts a wrong secret itself when nobody is left to take its
        // answer, so cancelling cannot buy uncounted binds.
        tracing::debug!(user = %name, "password check sent to the directory");
        let (answer, checked) = tokio::sync::oneshot::channel();
        {
            let (directory, name, secret) = (Arc::clone(&d.directory), name.clone(), secret.clone());
            let (lockout, ip, epoch) = (Arc::clone(&self.lockout), asker.ip, asker.epoch);
            let sharing = Arc::clone(&self.sharing);
            let subject = asker.subject.map(lockout::OwnedSubject::from);
            tokio::spawn(async move {
                let known = known.as_ref().map(|(upn, dn)| Known { upn, dn });
                let result = directory.check_password(&name, known, &secret).await;
                let wrong = matches!(result, Ok(Checked::Invalid | Checked::Disabled));
                if answer.send(result).is_err() && wrong {
                    if let Some(subject) = &subject {
                        let attempt = lockout::Attempt::new(secret.expose(), epoch);
                        let failed = lockout.failed(
                            subject.as_subject(),
                            ip,
                            attempt,
                            Reason::BadCredentials,
                            Instant::now(),
                        );
                        if failed.counted {
                            sharing.failed(subject.as_subject(), ip, Reason::BadCredentials);
                        }
                        // Logged once counted, so whoever reads it can rely on it.
                        tracing::debug!(client = %ip, "sign-in abandoned during its directory check: counted as a wrong secret");
                    }
                }
            });
        }
        let checked = checked.await;
        metrics::histogram!("fedgate_directory_check_seconds").record(started.elapsed().as_secs_f64());
        let checked = match checked {
            Ok(Ok(checked)) => checked,
            Ok(Err(err)) => {
                tracing::warn!(user = %name, error = %err, "directory unavailable for a sign-in");
                return (Verified::DirectoryUnavailable.into(), None);
            }
            Err(err) => {
                tracing::error!(user = %name, error = %err, "directory check failed: refused as unavailable");
                return (Verified::DirectoryUnavailable.into(), None);
            }
        };
        match checked {
            Checked::Invalid => (self.dummy_admitted(admission, Verified::Invalid).await, None),
            // AD says "disabled" only to the right password: costed like a
            // wrong one so the answer's timing does not tell.
            Checked::Disabled => (self.dummy_admitted(admission, Verified::AccountDisabled).await, None),
            Checked::LockedOut => (Verified::LockedOut.into(), None),
            Checked::Valid { entry: found } => {
                let fresh = match found {
                    Some(found) if needs_recording(entry, &found) => match self.record_directory_user(&found).await {
                        Ok(user) => Some(user),
                        Err(verified) => return (verified.into(), None),
                    },
                    _ => None,
                };
                (
                    Verification {
                        verified: Verified::Password,
                        fresh,
                        hashed: false,
                        warm: false,
                    },
                    Some((CachedCredential::Password, d.ttl)),
                )
            }
        }
    }

    /// Creates (first sign-in) or updates the user the directory described.
    async fn record_directory_user(&self, found: &FederatedUser) -> Result<Arc<UserEntry>, Verified> {
        match self.store.upsert_federated_user(found).await {
            Ok(upserted) => {
                if upserted.outcome == UpsertOutcome::Created {
                    tracing::info!(upn = %upserted.user.upn, dn = %found.attributes.dn, "federated user created on first sign-in");
                }
                Ok(Arc::new(UserEntry {
                    user: upserted.user,
                    generation: 0,
                }))
            }
            Err(err @ (StoreError::SourceConflict { .. } | StoreError::UpnTaken { .. })) => {
                tracing::warn!(error = %err, "directory user conflicts with a user in fedgate: refused");
                Err(Verified::Invalid)
            }
            Err(err) => {
                tracing::error!(error = %err, upn = %found.upn, "cannot record a federated user");
                Err(Verified::StoreUnavailable)
            }
        }
    }

    /// Runs one argon2 verification on the bounded pool, counted by what
    /// it was for.
    async fn argon2<F>(&self, what: HashFor, work: F) -> Result<bool, Overloaded>
    where
        F: FnOnce() -> bool + Send + 'static,
    {
        let verdict = self.hasher.run(work).await;
        if verdict.is_ok() {
            let what = match what {
                HashFor::AppPassword => "app_password",
                HashFor::Password => "password",
                HashFor::Dummy => "dummy",
            };
            metrics::counter!("fedgate_argon2_total", "for" => what).increment(1);
        }
        verdict
    }

    /// The dummy verification of a refusal whose place in the pool was
    /// taken before its check: it cannot be refused for a full pool, so the
    /// verdict stands.
    async fn dummy_admitted(&self, admission: hasher::Admission, verified: Verified) -> Verification {
        let candidate = app_password::generate();
        let ran = self
            .hasher
            .run_admitted(admission, move || {
                app_password::verify(&candidate, app_password::dummy_hash())
            })
            .await
            .is_ok();
        if ran {
            metrics::counter!("fedgate_argon2_total", "for" => "dummy").increment(1);
        }
        Verification {
            hashed: true,
            ..verified.into()
        }
    }

    /// Spends what a real verification costs, then refuses.
    async fn dummy_verification(&self) -> Verification {
        let candidate = app_password::generate();
        match self
            .argon2(HashFor::Dummy, move || {
                app_password::verify(&candidate, app_password::dummy_hash())
            })
            .await
        {
            Err(Overloaded) => Verified::Overloaded.into(),
            Ok(_) => Verification::hashed(Verified::Invalid),
        }
    }

    /// A refusal that answers a guess costs one argon2 verification, as a
    /// cloud user's wrong password does: when none ran (an unknown name
    /// the directory did not find, a directory's wrong password, a
    /// disabled account, a cached right password refused by the decision
    /// table), a dummy runs now. After the check rather than before it, so
    /// that a 503 from the directory stays quick and a sign-in that
    /// succeeds pays nothing. A full pool answers `overloaded`, as it
    /// would for a cloud user.
    async fn at_the_cost_of_a_guess(&self, refusal: Refusal, reason: Reason, hashed: bool) -> (Refusal, Reason) {
        if hashed || !refusal::answers_a_guess(refusal, reason) {
            return (refusal, reason);
        }
        match self.dummy_verification().await.verified {
            Verified::Overloaded => (Refusal::Unavailable, Reason::Overloaded),
            _ => (refusal, reason),
        }
    }

    fn note_use(&self, id: AppPasswordId, audit: &Event<'_>) {
        let now = audit.at;
        // One update a second per app password is plenty for "last used".
        if let Some(prev) = self.last_used.get(&id) {
            if now - prev.at < 1000 {
                return;
            }
        }
        self.last_used.insert(
            id,
            LastUsed {
                id,
                at: now,
                ip: audit.client_ip.to_string(),
                user_agent: audit.user_agent.to_owned(),
            },
        );
    }

    /// Holds a refusal that answers a guess back until `auth.failure_delay`
    /// after the sign-in began. A client that retries the moment it is
    /// refused (a password sprayer, a misconfigured phone) then costs a
    /// sleeping timer instead of a core: 200 spraying connections make at
    /// most 200 attempts a second, and warm sign-ins keep the CPU. A fixed
    /// total rather than a sleep after the work: the answer comes at the
    /// same time whatever the work cost (a bind, an argon2, a slow
    /// directory), as long as it cost less than the delay. The plain Basic
    /// challenge (no credentials), 429 and 503 are not held back: every
    /// client starts with the first, and the others say nothing about the
    /// secret.
    async fn held_back(&self, refusal: SignInRefusal, started: Instant) -> SignInRefusal {
        if refusal.answers_a_guess() && !self.failure_delay.is_zero() {
            tokio::time::sleep_until(tokio::time::Instant::from_std(started + self.failure_delay)).await;
        }
        refusal
    }

    /// Records the refusal and says when the client may come back.
    fn refuse(&self, mut audit: Event<'_>, refusal: Refusal, reason: Reason) -> SignInRefusal {
        audit.success = false;
        audit.reason = reason;
        self.audit.record(&audit);
        if reason == Reason::LockedOut {
            crate::telemetry::lockout_refusal();
        }
        let retry_after = match refusal {
            Refusal::Unavailable if reason == Reason::Overloaded => Some(refusal::RETRY_OVERLOADED),
            Refusal::Unavailable => Some(refusal::RETRY_UNAVAILABLE),
            // The directory's own lockout (AD `data 775`) has no known end:
            // the same wait as fedgate's.
            Refusal::TooManyAttempts => Some(self.lockout.duration().max(Duration::from_secs(1))),
            Refusal::Unauthorized | Refusal::Forbidden => None,
        };
        SignInRefusal {
            refusal,
            reason,
            retry_after,
        }
    }

    /// Applies changes committed by any process since the last call.
    pub async fn refresh(&self) -> Result<(), StoreError> {
        let mut refreshes = self.refreshing.lock().await;
        let began = Instant::now();
        refreshes.began = Some(began);
        self.apply_changes().await?;
        refreshes.succeeded = Some(began);
        Ok(())
    }

    /// Brings the view up to date for a sign-in that did not find its user
    /// or its app password in it at `missed_at`: one made a moment ago on
    /// another node, or by the CLI, must work at once, not after the next
    /// poll. A refresh that began after the miss answers for it; otherwise
    /// this one waits its turn, at most one per [`CATCH_UP_SPACING`].
    /// False when the store could not be read: the view may lack what the
    /// sign-in needs, so it is answered as the store being unavailable,
    /// not as a wrong secret.
    async fn catch_up(&self, missed_at: Instant) -> bool {
        // A store known to be failing is not waited on: the answer is the
        // same, and the refresh job tells when it is back.
        if matches!(self.health.state(), HealthState::Failing { .. }) {
            return false;
        }
        let mut refreshes = self.refreshing.lock().await;
        if let Some(at) = refreshes.began {
            if at >= missed_at {
                return refreshes.succeeded.is_some_and(|ok| ok >= missed_at);
            }
            let wait = CATCH_UP_SPACING.saturating_sub(at.elapsed());
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
        }
        let began = Instant::now();
        refreshes.began = Some(began);
        metrics::counter!("fedgate_view_catch_ups_total").increment(1);
        // An interrupted refresh leaves the feed position where it was, so
        // the next one applies those changes again.
        let current = matches!(
            tokio::time::timeout(CATCH_UP_TIMEOUT, self.apply_changes()).await,
            Ok(Ok(()))
        );
        if current {
            refreshes.succeeded = Some(began);
        }
        current
    }

    async fn apply_changes(&self) -> Result<(), StoreError> {
        let refreshed = self.index.refresh(&*self.store).await?;
        if refreshed.everything {
            self.cache.clear();
        } else {
            for user in &refreshed.users {
                self.cache.drop_user(*user);
            }
        }
        if !refreshed.users.is_empty() || refreshed.everything {
            tracing::debug!(
                users = refreshed.users.len(),
                everything = refreshed.everything,
                "applied store changes"
            );
        }
        Ok(())
    }

    /// Checks that the store is still the one opened and readable, then
    /// applies its changes; reports to the store's health, and logs only
    /// when that changes (one error when the store fails, one line when it
    /// is back).
    async fn check_and_refresh(&self) {
        let result = match self.store.check().await {
            Ok(()) => self.refresh().await,
            Err(err) => Err(err),
        };
        let now = self.clock.now_ms();
        let transition = match &result {
            Ok(()) => self.health.succeeded(Instant::now(), now),
            Err(err) => self.health.failed(now, &err.to_string()),
        };
        metrics::gauge!("fedgate_store_up").set(if result.is_ok() { 1.0 } else { 0.0 });
        match transition {
            None => {}
            Some(Transition::Failing { reason }) => tracing::error!(
                error = %reason,
                max_staleness = ?self.health.max_staleness(),
                "store unavailable: not ready; sign-ins are refused once the view is older than max_staleness"
            ),
            Some(Transition::Recovered { since, reason }) => tracing::warn!(
                failing_ms = now.saturating_sub(since),
                was = %reason,
                "store available again"
            ),
        }
    }

    async fn flush_last_used(&self) {
        let batch: Vec<LastUsed> = {
            let ids: Vec<AppPasswordId> = self.last_used.iter().map(|e| *e.key()).collect();
            ids.into_iter()
                .filter_map(|id| self.last_used.remove(&id).map(|(_, v)| v))
                .collect()
        };
        if batch.is_empty() {
            return;
        }
        if let Err(err) = self.store.record_last_used(&batch).await {
            // A store that is failing has said so once already.
            if self.health.readiness(self.clock.now_ms()).is_ok() {
                tracing::warn!(error = %err, count = batch.len(), "cannot record app-password last use");
            }
        }
    }

    /// Starts the background jobs: change-feed polling, last-use flushing,
    /// cache sweeping.
    pub fn start_jobs(self: &Arc<Self>, shutdown: &Shutdown) -> Vec<Job> {
        let refresh = {
            let this = Arc::clone(self);
            // At every poll, and at once when the store announces a change
            // (PostgreSQL's NOTIFY).
            let wake = self.store.change_signal();
            Job::every_or_when("auth.refresh", REFRESH_INTERVAL, wake, shutdown.clone(), move || {
                let this = Arc::clone(&this);
                async move { this.check_and_refresh().await }
            })
        };
        let staleness = {
            let this = Arc::clone(self);
            Job::every("store.staleness", REFRESH_INTERVAL, shutdown.clone(), move || {
                let this = Arc::clone(&this);
                async move {
                    if this.health.observe(Instant::now()) {
                        tracing::error!(
                            max_staleness = ?this.health.max_staleness(),
                            "store view too old: sign-ins are refused (store_unavailable) until the store is read again"
                        );
                    }
                }
            })
        };
        let last_used = {
            let this = Arc::clone(self);
            Job::every("auth.last_used", LAST_USED_FLUSH, shutdown.clone(), move || {
                let this = Arc::clone(&this);
                async move { this.flush_last_used().await }
            })
        };
        let share = {
            let this = Arc::clone(self);
            let wake = self.store.lockout_signal();
            Job::every_or_when(
                "lockout.share",
                share::SHARE_INTERVAL,
                wake,
                shutdown.clone(),
                move || {
                    let this = Arc::clone(&this);
                    async move {
                        // A store that fails is reported by the refresh job;
                        // what could not be sent waits for the next time.
                        if let Err(err) = this.sharing.exchange(&*this.store, &this.lockout).await {
                            tracing::debug!(error = %err, "cannot share lockout counts with the other nodes");
                        }
                    }
                },
            )
        };
        let sweep = {
            let this = Arc::clone(self);
            Job::every("auth.cache_sweep", CACHE_SWEEP, shutdown.clone(), move || {
                let this = Arc::clone(&this);
                async move {
                    let before = this.clock.now_ms() - share::KEPT.as_millis() as i64;
                    if let Err(err) = this.store.prune_lockout_events(before).await {
                        tracing::debug!(error = %err, "cannot prune lockout events");
                    }
                    this.lockout.sweep(Instant::now());
                    let left = this.cache.sweep(Instant::now());
                    metrics::gauge!("fedgate_credential_cache_entries").set(left as f64);
                }
            })
        };
        vec![refresh, staleness, last_used, share, sweep]
    }

    /// Writes what is still buffered; call at shutdown after the jobs ended.
    pub async fn flush(&self) {
        self.flush_last_used().await;
    }
}

/// The policies as a part a reload replaces: the new tables were checked
/// with the new configuration (against the new routes), so preparing has
/// nothing left to fail on.
pub struct PolicyReload(pub Arc<Authenticator>);

impl crate::reload::Reloadable for PolicyReload {
    fn name(&self) -> &'static str {
        "policies"
    }

    fn prepare(
        &self,
        new: &crate::config::Config,
    ) -> Result<Box<dyn crate::reload::Commit>, crate::reload::ReloadError> {
        let (auth, policies) = (Arc::clone(&self.0), Arc::clone(&new.policies));
        Ok(Box::new(crate::reload::CommitFn(move || {
            let count = policies.rules().len();
            auth.set_policies(policies);
            tracing::info!(policies = count, "policies replaced");
        })))
    }
}
