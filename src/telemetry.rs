//! fedgate's metrics: every name, its description, its labels and the value
//! it starts at, in one place. The modules that measure call the small
//! functions here (or hold the handles made here); how the numbers reach
//! Prometheus is the recorder's business, served by [`crate::admin`].
//!
//! Every label value is bounded by the configuration or by the code: route
//! names, directory URLs, credential kinds, reason codes, pass kinds. Never
//! a user name or a client address: those belong in the logs.
//!
//! The series a dashboard or an alert needs are set at start-up (counters
//! at 0, gauges at their resting value), so `/metrics` on a fresh server
//! lists them and a rate over a quiet hour is 0 rather than missing.

use std::sync::OnceLock;

use metrics::{describe_counter, describe_gauge, describe_histogram, Counter, Histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::config::Config;
use crate::directory::DirectoryError;
use crate::model::{CredentialKind, Reason};
use crate::store::SyncPass;

/// Histogram buckets (seconds) of every `*_seconds` histogram: from a warm
/// sign-in (well under a millisecond) to a directory timeout.
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The status classes of `fedgate_requests_total`.
const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// The route label of requests no route matched (refused before routing,
/// or no route for the path).
pub const NO_ROUTE: &str = "none";
/// The route label of the portal's pages.
pub const PORTAL_ROUTE: &str = "portal";

/// The pass kinds and outcomes of the sync metrics.
const PASS_KINDS: [&str; 2] = ["full", "incremental"];
const PASS_OUTCOMES: [&str; 3] = ["completed", "guarded", "failed"];
const PASS_COUNTS: [&str; 7] = ["seen", "created", "updated", "disabled", "enabled", "deleted", "errors"];

/// Installs the Prometheus recorder (histograms with buckets, so they add
/// up across nodes), describes every metric and sets the starting values
/// of the series `config` implies. `None` when a recorder is already
/// installed (a second server in one process, as in tests): the metrics
/// then go to that one.
pub fn install(config: &Config) -> Option<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS)
        .and_then(PrometheusBuilder::install_recorder)
        .map_err(|err| tracing::warn!(error = %err, "metrics recorder not installed"))
        .ok();
    describe();
    preset(config);
    handle
}

fn describe() {
    describe_counter!(
        "fedgate_requests_total",
        "Requests answered, by route (name, or path when unnamed; \"none\" when no route matched) and status class."
    );
    describe_histogram!(
        "fedgate_request_duration_seconds",
        Unit::Seconds,
        "Time from a request's arrival to the end of its response body, by route."
    );
    describe_counter!(
        "fedgate_signins_total",
        "Sign-in decisions (each audited decision once), by credential kind, result (success, failure) and reason code."
    );
    describe_counter!(
        "fedgate_credential_cache_total",
        "Verified-credential cache lookups, by result (hit, miss)."
    );
    describe_gauge!(
        "fedgate_credential_cache_entries",
        "Entries in the verified-credential cache."
    );
    describe_counter!(
        "fedgate_argon2_total",
        "argon2id verifications, by what they were for (app_password, password, dummy)."
    );
    describe_gauge!(
        "fedgate_argon2_queue",
        "Hashes admitted to the argon2 pool and waiting for a worker."
    );
    describe_histogram!(
        "fedgate_argon2_wait_seconds",
        Unit::Seconds,
        "Time a hash waited in the argon2 pool's queue for a worker."
    );
    describe_histogram!(
        "fedgate_argon2_seconds",
        Unit::Seconds,
        "Time one argon2id hash took on its worker."
    );
    describe_histogram!(
        "fedgate_directory_check_seconds",
        Unit::Seconds,
        "Time of a sign-in's whole directory check (search, bind, disabled check)."
    );
    describe_gauge!(
        "fedgate_directory_up",
        "1 when the last connection to the directory server (by configured URL) succeeded, else 0; probed every 30 s and at each new connection."
    );
    describe_histogram!(
        "fedgate_directory_bind_seconds",
        Unit::Seconds,
        "Time of one user bind, by directory server."
    );
    describe_counter!(
        "fedgate_directory_operations_total",
        "LDAP requests sent to the directory servers (sign-ins, probes, sync passes and push), by op (bind, search, abandon, unbind); a search read in pages counts once."
    );
    describe_counter!(
        "fedgate_directory_connections_total",
        "Connections opened to the directory servers (sign-ins, probes, sync passes and push)."
    );
    describe_counter!(
        "fedgate_directory_errors_total",
        "Directory operations that failed (sign-in checks and sync passes), by kind (unavailable, timeout, busy, service_bind)."
    );
    describe_counter!(
        "fedgate_sync_passes_total",
        "Sync passes run by this node, by kind (full, incremental) and outcome (completed, guarded, failed)."
    );
    describe_gauge!(
        "fedgate_sync_last_completed_timestamp_seconds",
        Unit::Seconds,
        "Unix time at which the newest completed sync pass (either kind, any node) ended; 0 before the first. Alert on time() minus this."
    );
    describe_gauge!(
        "fedgate_sync_last_pass",
        "What the newest pass of each kind (any node) counted: seen, created, updated, disabled, enabled, deleted, errors."
    );
    describe_gauge!(
        "fedgate_sync_last_pass_outcome",
        "1 for the outcome of the newest pass of each kind (any node), 0 for the other outcomes; all 0 before the first pass."
    );
    describe_gauge!(
        "fedgate_sync_last_pass_duration_seconds",
        Unit::Seconds,
        "How long the newest pass of each kind took."
    );
    describe_counter!(
        "fedgate_sync_changes_received_total",
        "Changes the directory pushed to this node (push sync), by kind (add, modify, rename, delete)."
    );
    describe_gauge!(
        "fedgate_sync_push_connected",
        "1 while this node's persistent search (push sync) is connected and caught up, else 0."
    );
    describe_gauge!(
        "fedgate_sync_leader",
        "1 while this node leads the sync (schedules the passes), else 0."
    );
    describe_gauge!(
        "fedgate_sync_leader_since_seconds",
        Unit::Seconds,
        "Unix time since which this node leads the sync."
    );
    describe_counter!(
        "fedgate_lockouts_total",
        "Lockouts begun, by scope: account (too many wrong secrets for one account) or source (wrong secrets for many accounts from one address)."
    );
    describe_gauge!(
        "fedgate_lockout_entries",
        "Lockout entries held (accounts and sources with recent failures, locked or not), by scope."
    );
    describe_counter!(
        "fedgate_lockout_refusals_total",
        "Sign-ins refused because the account or the source was locked out (429)."
    );
    describe_counter!(
        "fedgate_lockout_events_dropped_total",
        "Lockout events that could not be shared with the other nodes."
    );
    describe_gauge!(
        "fedgate_store_up",
        "1 when the last read of the store succeeded, else 0."
    );
    describe_counter!(
        "fedgate_view_catch_ups_total",
        "Sign-ins that missed the in-memory view and read the store's change feed first."
    );
    describe_gauge!("fedgate_audit_queued", "Sign-in records waiting for the store.");
    describe_counter!(
        "fedgate_audit_dropped_total",
        "Sign-in records dropped (too many distinct records in one window, or the store's queue full)."
    );
    describe_counter!(
        "fedgate_audit_unwritten_total",
        "Sign-in records the store refused at the first try (queued and retried)."
    );
    describe_gauge!(
        "fedgate_connections_open",
        "Client connections open on the main listeners."
    );
    describe_counter!(
        "fedgate_connections_at_limit_total",
        "Connections that waited because server.max_connections was reached."
    );
    describe_counter!(
        "fedgate_connections_closed_total",
        "Connections fedgate closed on its own, by reason."
    );
    describe_gauge!(
        "fedgate_store_listening",
        "PostgreSQL: 1 while this node listens for change notifications, else 0."
    );
    describe_counter!(
        "fedgate_store_notifications_total",
        "PostgreSQL change notifications received."
    );
    describe_counter!(
        "fedgate_admin_api_unauthorized_total",
        "Admin API requests refused for a missing or wrong bearer token."
    );
    describe_counter!(
        "fedgate_mail_auth_callers_refused_total",
        "Mail auth_http calls refused (403) for a missing or wrong mail_auth.secret_file secret."
    );
    describe_counter!(
        "fedgate_forward_auth_callers_refused_total",
        "Forward-auth requests refused (403) because the caller did not send the caller secret."
    );
    describe_counter!(
        "fedgate_config_reloads_total",
        "Configuration reloads (SIGHUP) since start, by result (ok, failed)."
    );
    describe_gauge!(
        "fedgate_config_last_reload_success_timestamp_seconds",
        Unit::Seconds,
        "Unix time the running configuration was applied: the start, or the last successful reload."
    );
}

/// The series that must exist before anything happens.
fn preset(config: &Config) {
    metrics::counter!("fedgate_admin_api_unauthorized_total").absolute(0);
    if config.forward_auth.is_some() {
        metrics::counter!("fedgate_forward_auth_callers_refused_total").absolute(0);
    }
    for route in &config.routes {
        RouteMetrics::new(&route.name);
    }
    if let Some(mail) = &config.mail {
        metrics::counter!("fedgate_mail_auth_callers_refused_total").absolute(0);
        for backend in &mail.backends {
            RouteMetrics::new(backend.protocol.as_str());
        }
    }
    RouteMetrics::new(NO_ROUTE);
    if config.portal.is_some() {
        RouteMetrics::new(PORTAL_ROUTE);
    }
    for (kind, reason) in [
        (CredentialKind::Password, Reason::Password),
        (CredentialKind::AppPassword, Reason::AppPassword),
    ] {
        signin_counter(kind, true, reason);
        signin_counter(kind, false, Reason::BadCredentials);
        signin_counter(kind, false, Reason::LockedOut);
    }
    signin_counter(CredentialKind::None, false, Reason::NoCredentials);
    for result in ["hit", "miss"] {
        metrics::counter!("fedgate_credential_cache_total", "result" => result).absolute(0);
    }
    metrics::gauge!("fedgate_credential_cache_entries").set(0.0);
    for what in ["app_password", "password", "dummy"] {
        metrics::counter!("fedgate_argon2_total", "for" => what).absolute(0);
    }
    metrics::gauge!("fedgate_argon2_queue").set(0.0);
    let _ = metrics::histogram!("fedgate_argon2_wait_seconds");
    let _ = metrics::histogram!("fedgate_argon2_seconds");
    for scope in ["account", "source"] {
        metrics::counter!("fedgate_lockouts_total", "scope" => scope).absolute(0);
        metrics::gauge!("fedgate_lockout_entries", "scope" => scope).set(0.0);
    }
    metrics::counter!("fedgate_lockout_refusals_total").absolute(0);
    metrics::gauge!("fedgate_audit_queued").set(0.0);
    metrics::counter!("fedgate_audit_dropped_total").absolute(0);
    metrics::counter!("fedgate_audit_unwritten_total").absolute(0);
    metrics::gauge!("fedgate_connections_open").set(0.0);
    if let Some(directory) = &config.directory {
        for url in &directory.urls {
            // Down until the first probe (at start) says otherwise: a
            // server never reached is not known to be up.
            metrics::gauge!("fedgate_directory_up", "server" => url.clone()).set(0.0);
            let _ = metrics::histogram!("fedgate_directory_bind_seconds", "server" => url.clone());
        }
        let _ = metrics::histogram!("fedgate_directory_check_seconds");
        for op in DIRECTORY_OPERATIONS {
            metrics::counter!("fedgate_directory_operations_total", "op" => *op).absolute(0);
        }
        metrics::counter!("fedgate_directory_connections_total").absolute(0);
        for kind in DirectoryError::KINDS {
            metrics::counter!("fedgate_directory_errors_total", "kind" => *kind).absolute(0);
        }
    }
    if config.sync.is_some() {
        metrics::gauge!("fedgate_sync_last_completed_timestamp_seconds").set(0.0);
        for kind in PASS_KINDS {
            for outcome in PASS_OUTCOMES {
                metrics::counter!("fedgate_sync_passes_total", "kind" => kind, "outcome" => outcome).absolute(0);
                metrics::gauge!("fedgate_sync_last_pass_outcome", "kind" => kind, "outcome" => outcome).set(0.0);
            }
            for count in PASS_COUNTS {
                metrics::gauge!("fedgate_sync_last_pass", "kind" => kind, "count" => count).set(0.0);
            }
            metrics::gauge!("fedgate_sync_last_pass_duration_seconds", "kind" => kind).set(0.0);
        }
        metrics::gauge!("fedgate_sync_push_connected").set(0.0);
        for kind in PUSH_CHANGE_KINDS {
            metrics::counter!("fedgate_sync_changes_received_total", "kind" => *kind).absolute(0);
        }
    }
}

/// The `kind` labels of `fedgate_sync_changes_received_total`.
pub const PUSH_CHANGE_KINDS: &[&str] = &["add", "modify", "rename", "delete"];

/// Changes the directory pushed, by kind (one of [`PUSH_CHANGE_KINDS`]).
pub fn sync_changes_received(kind: &'static str, count: usize) {
    if count > 0 {
        metrics::counter!("fedgate_sync_changes_received_total", "kind" => kind).increment(count as u64);
    }
}

/// Whether this node's persistent search is connected and caught up.
pub fn sync_push_connected(connected: bool) {
    metrics::gauge!("fedgate_sync_push_connected").set(if connected { 1.0 } else { 0.0 });
}

/// The request counters and duration histogram of one route, made once
/// (per route, per worker) so counting a request is an atomic add rather
/// than a registry lookup.
#[derive(Debug)]
pub struct RouteMetrics {
    by_class: [Counter; 5],
    duration: Histogram,
}

impl RouteMetrics {
    pub fn new(route: &str) -> RouteMetrics {
        RouteMetrics {
            by_class: STATUS_CLASSES.map(
                |class| metrics::counter!("fedgate_requests_total", "route" => route.to_owned(), "status" => class),
            ),
            duration: metrics::histogram!("fedgate_request_duration_seconds", "route" => route.to_owned()),
        }
    }

    /// The metrics of requests no route took.
    pub fn unrouted() -> &'static RouteMetrics {
        static M: OnceLock<RouteMetrics> = OnceLock::new();
        M.get_or_init(|| RouteMetrics::new(NO_ROUTE))
    }

    pub fn record(&self, status: u16, seconds: f64) {
        self.by_class[status_class(status)].increment(1);
        self.duration.record(seconds);
    }
}

/// The index in [`STATUS_CLASSES`] of an HTTP status; anything outside
/// 100..=499 counts as a server error.
fn status_class(status: u16) -> usize {
    match status {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        _ => 4,
    }
}

/// One handle per (credential kind, result, reason), made on first use.
fn signin_counter(kind: CredentialKind, success: bool, reason: Reason) -> &'static Counter {
    static HANDLES: OnceLock<Vec<OnceLock<Counter>>> = OnceLock::new();
    let kinds = CredentialKind::ALL;
    let reasons = Reason::ALL;
    let handles = HANDLES.get_or_init(|| (0..kinds.len() * reasons.len() * 2).map(|_| OnceLock::new()).collect());
    handles[signin_slot(kind, success, reason)].get_or_init(|| {
        metrics::counter!(
            "fedgate_signins_total",
            "credential" => kind.as_str(),
            "result" => if success { "success" } else { "failure" },
            "reason" => reason.as_str()
        )
    })
}

/// Where the handle of (kind, result, reason) sits: one slot each.
fn signin_slot(kind: CredentialKind, success: bool, reason: Reason) -> usize {
    // Invariant: every value of the two enums is in its ALL list.
    let k = CredentialKind::ALL.iter().position(|&k| k == kind).unwrap_or(0);
    let r = Reason::ALL.iter().position(|&r| r == reason).unwrap_or(0);
    (k * Reason::ALL.len() + r) * 2 + usize::from(success)
}

/// Counts one audited sign-in decision.
pub fn signin(kind: CredentialKind, success: bool, reason: Reason) {
    signin_counter(kind, success, reason).increment(1);
}

/// Counts a failed directory operation.
pub fn directory_error(err: &DirectoryError) {
    metrics::counter!("fedgate_directory_errors_total", "kind" => err.kind()).increment(1);
}

/// LDAP operations this process sends to directory servers, by operation:
/// what fedgate costs the directory, sign-ins, probes and sync together.
pub const DIRECTORY_OPERATIONS: &[&str] = &["bind", "search", "abandon", "unbind"];

/// One LDAP request sent (`op` one of [`DIRECTORY_OPERATIONS`]).
pub fn directory_operation(op: &'static str) {
    debug_assert!(DIRECTORY_OPERATIONS.contains(&op));
    metrics::counter!("fedgate_directory_operations_total", "op" => op).increment(1);
}

/// One connection opened to a directory server.
pub fn directory_connection() {
    metrics::counter!("fedgate_directory_connections_total").increment(1);
}

/// Whether the directory server at `url` answered the last connection.
pub fn directory_up(url: &str, up: bool) {
    metrics::gauge!("fedgate_directory_up", "server" => url.to_owned()).set(if up { 1.0 } else { 0.0 });
}

pub fn directory_bind(url: &str, seconds: f64) {
    metrics::histogram!("fedgate_directory_bind_seconds", "server" => url.to_owned()).record(seconds);
}

/// Counts a pass this node ran and shows it as the newest of its kind.
pub fn sync_pass_run(pass: &SyncPass) {
    let kind = pass_kind(&pass.kind);
    let outcome = PASS_OUTCOMES
        .iter()
        .copied()
        .find(|o| *o == pass.outcome)
        .unwrap_or("failed");
    metrics::counter!("fedgate_sync_passes_total", "kind" => kind, "outcome" => outcome).increment(1);
    sync_pass_seen(pass);
    if outcome == "completed" {
        sync_completed_at(pass.started_at + pass.duration_ms);
    }
}

/// Shows `pass` (run by any node) as the newest of its kind.
pub fn sync_pass_seen(pass: &SyncPass) {
    let kind = pass_kind(&pass.kind);
    for outcome in PASS_OUTCOMES {
        let value = if outcome == pass.outcome { 1.0 } else { 0.0 };
        metrics::gauge!("fedgate_sync_last_pass_outcome", "kind" => kind, "outcome" => outcome).set(value);
    }
    let counts = [
        pass.seen,
        pass.created,
        pass.updated,
        pass.disabled,
        pass.enabled,
        pass.deleted,
        pass.errors,
    ];
    for (name, value) in PASS_COUNTS.into_iter().zip(counts) {
        metrics::gauge!("fedgate_sync_last_pass", "kind" => kind, "count" => name).set(value as f64);
    }
    metrics::gauge!("fedgate_sync_last_pass_duration_seconds", "kind" => kind).set(pass.duration_ms as f64 / 1000.0);
}

/// When (unix ms) the newest completed pass ended.
pub fn sync_completed_at(at_ms: i64) {
    metrics::gauge!("fedgate_sync_last_completed_timestamp_seconds").set(at_ms as f64 / 1000.0);
}

fn pass_kind(kind: &str) -> &'static str {
    if kind == "full" {
        "full"
    } else {
        "incremental"
    }
}

/// A lockout began (`source`: of a source, else of an account).
pub fn lockout_begun(source: bool) {
    let scope = if source { "source" } else { "account" };
    metrics::counter!("fedgate_lockouts_total", "scope" => scope).increment(1);
}

pub fn lockout_entries(accounts: usize, sources: usize) {
    metrics::gauge!("fedgate_lockout_entries", "scope" => "account").set(accounts as f64);
    metrics::gauge!("fedgate_lockout_entries", "scope" => "source").set(sources as f64);
}

pub fn lockout_refusal() {
    metrics::counter!("fedgate_lockout_refusals_total").increment(1);
}

/// The argon2 pool: a hash entered (`+1`) or left (`-1`) the queue.
pub fn argon2_queue(delta: f64) {
    metrics::gauge!("fedgate_argon2_queue").increment(delta);
}

pub fn argon2_waited(seconds: f64) {
    metrics::histogram!("fedgate_argon2_wait_seconds").record(seconds);
}

pub fn argon2_hashed(seconds: f64) {
    metrics::histogram!("fedgate_argon2_seconds").record(seconds);
}

#[cfg(test)]
mod tests;
