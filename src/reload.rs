//! Configuration reload (SIGHUP): the config file is read again and the
//! parts that can change under a running server are replaced, all or none.
//!
//! Each reloadable part is a [`Reloadable`]: `prepare` reads and checks
//! everything the part needs from the new configuration (files included)
//! and changes nothing; the [`Commit`] it returns only swaps what was
//! prepared and cannot fail. A reload prepares every part first and commits
//! only when all succeeded, so a bad route, an unreadable certificate or a
//! file that does not parse leaves the whole old configuration in place.
//! Parts whose only operation validates and applies in one step (a token
//! file reader, say) are registered with [`Registry::register_one_step`]:
//! they run after every other part prepared, so the only step left that
//! can fail is the last.
//!
//! What cannot change without a restart (listening addresses, the store,
//! the directory, ...) is compared with the running configuration and
//! reported as "changed, needs a restart"; the running value stays.
//! [`effective`] is that rule: the running configuration with the
//! reloadable keys taken from the new one.
//!
//! Not here: the parts themselves (the certificate slot in
//! [`crate::proxy::tls`], the route tables in [`crate::proxy::workers`]) and
//! the signal loop ([`crate::app`]).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::config::{AdminConfig, Config, ConfigError, ServerConfig};
use crate::model::Clock;

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{part}: {message}")]
    Part { part: &'static str, message: String },
}

impl ReloadError {
    pub fn part(part: &'static str, err: impl std::fmt::Display) -> ReloadError {
        ReloadError::Part {
            part,
            message: err.to_string(),
        }
    }
}

/// A part of the running server that a reload can replace.
pub trait Reloadable: Send + Sync {
    /// What it is, for logs ("tls certificate", "routes").
    fn name(&self) -> &'static str;
    /// Checks `new` and builds what the part would run on; changes nothing.
    fn prepare(&self, new: &Config) -> Result<Box<dyn Commit>, ReloadError>;
}

/// A prepared change, applied by [`Commit::commit`], which cannot fail.
pub trait Commit: Send {
    fn commit(self: Box<Self>);
}

/// A commit that runs a closure.
pub struct CommitFn<F: FnOnce() + Send>(pub F);

impl<F: FnOnce() + Send> Commit for CommitFn<F> {
    fn commit(self: Box<Self>) {
        (self.0)()
    }
}

type OneStep = Box<dyn Fn(&Config) -> Result<String, ReloadError> + Send + Sync>;

/// The reloadable parts of one server, and the configuration they run on.
pub struct Registry {
    path: PathBuf,
    running: Mutex<Arc<Config>>,
    parts: Vec<Arc<dyn Reloadable>>,
    one_step: Vec<(&'static str, OneStep)>,
    clock: Arc<dyn Clock>,
}

/// What a successful reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloaded {
    /// The parts replaced, with what a one-step part said ("3 tokens").
    pub applied: Vec<String>,
    /// Keys whose new value waits for a restart.
    pub needs_restart: Vec<&'static str>,
}

impl Registry {
    /// `path` is the config file read again on every reload; `running` the
    /// configuration the server started with.
    pub fn new(path: &Path, running: Arc<Config>, clock: Arc<dyn Clock>) -> Registry {
        Registry {
            path: path.to_owned(),
            running: Mutex::new(running),
            parts: Vec::new(),
            one_step: Vec::new(),
            clock,
        }
    }

    pub fn register(&mut self, part: Arc<dyn Reloadable>) {
        self.parts.push(part);
    }

    /// A part that checks and applies in one call (returning a short note
    /// for the log); it runs after every other part has prepared, and a
    /// failure there still leaves all other parts unchanged.
    pub fn register_one_step(
        &mut self,
        name: &'static str,
        apply: impl Fn(&Config) -> Result<String, ReloadError> + Send + Sync + 'static,
    ) {
        self.one_step.push((name, Box::new(apply)));
    }

    /// Sets the reload metrics to their start values: no reload yet, the
    /// configuration loaded now.
    pub fn start_metrics(&self) {
        metrics::counter!("fedgate_config_reloads_total", "result" => "ok").absolute(0);
        metrics::counter!("fedgate_config_reloads_total", "result" => "failed").absolute(0);
        self.mark_success();
    }

    fn mark_success(&self) {
        let seconds = self.clock.now_ms() as f64 / 1000.0;
        metrics::gauge!("fedgate_config_last_reload_success_timestamp_seconds").set(seconds);
    }

    /// Reads the config file again and applies it; logs and counts the
    /// outcome. On error nothing changed.
    pub fn reload(&self) -> Result<Reloaded, ReloadError> {
        let result = self.try_reload();
        match &result {
            Ok(done) => {
                metrics::counter!("fedgate_config_reloads_total", "result" => "ok").increment(1);
                self.mark_success();
                for key in &done.needs_restart {
                    tracing::warn!(%key, config = %self.path.display(), "changed, needs a restart: the running value is kept");
                }
                tracing::info!(
                    config = %self.path.display(),
                    applied = ?done.applied,
                    "configuration reloaded"
                );
            }
            Err(err) => {
                metrics::counter!("fedgate_config_reloads_total", "result" => "failed").increment(1);
                tracing::error!(
                    config = %self.path.display(),
                    error = %err,
                    "configuration reload failed: the running configuration is kept"
                );
            }
        }
        result
    }

    fn try_reload(&self) -> Result<Reloaded, ReloadError> {
        let new = Config::load(&self.path)?;
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(key) = endpoint_moved(&running, &new) {
            // The new routes and policies were checked against the new
            // endpoint; run beside the old one they could be shadowed by
            // it, or name mail protocols it no longer serves.
            return Err(ReloadError::part(
                key,
                "added, removed or moved: the new routes and policies were checked against it, so nothing \
                 is reloaded; restart to apply",
            ));
        }
        let next = effective(&running, &new);
        let needs_restart = restart_keys(&running, &new);
        let mut prepared = Vec::with_capacity(self.parts.len());
        for part in &self.parts {
            prepared.push((part.name(), part.prepare(&next)?));
        }
        let mut applied = Vec::new();
        for (name, apply) in &self.one_step {
            let note = apply(&next)?;
            applied.push(if note.is_empty() {
                (*name).to_owned()
            } else {
                format!("{name} ({note})")
            });
        }
        for (name, commit) in prepared {
            commit.commit();
            applied.push(name.to_owned());
        }
        *running = Arc::new(next);
        Ok(Reloaded { applied, needs_restart })
    }
}

/// The configuration a reload runs on: `running`, with the keys a reload
/// may change taken from `new` (the TLS certificate and key, the routes and
/// what building them reads: trusted proxies and upstream defaults; in
/// `[admin]` everything but the listener's address and TLS set-up).
// The `..new.clone()` in `[admin]` is what makes every other admin key
// (present or added later) follow the new file.
#[allow(clippy::needless_update)]
pub fn effective(running: &Config, new: &Config) -> Config {
    let server = ServerConfig {
        tls_cert: new.server.tls_cert.clone(),
        tls_key: new.server.tls_key.clone(),
        trusted_proxies: new.server.trusted_proxies.clone(),
        upstream: new.server.upstream,
        ..running.server.clone()
    };
    let admin = match (&running.admin, &new.admin) {
        (Some(old), Some(new)) => Some(AdminConfig {
            listen: old.listen,
            tls: old.tls,
            client_ca_file: old.client_ca_file.clone(),
            // Another token file is read; the API turned on or off is not
            // (see `restart_keys`).
            token_file: if old.token_file.is_some() == new.token_file.is_some() {
                new.token_file.clone()
            } else {
                old.token_file.clone()
            },
            ..new.clone()
        }),
        (old, _) => old.clone(),
    };
    Config {
        server,
        admin,
        routes: new.routes.clone(),
        policies: std::sync::Arc::clone(&new.policies),
        ..running.clone()
    }
}

/// The endpoint on the main listeners whose path a reload would leave
/// different from the one the new file's routes were checked against.
pub fn endpoint_moved(running: &Config, new: &Config) -> Option<&'static str> {
    let forward = |c: &Config| c.forward_auth.as_ref().map(|f| f.path.clone());
    let mail = |c: &Config| c.mail.as_ref().map(|m| m.path.clone());
    if forward(running) != forward(new) {
        Some("forward_auth.path")
    } else if mail(running) != mail(new) {
        Some("mail_auth.path")
    } else {
        None
    }
}

/// The keys whose new value a reload does not apply, in file order.
pub fn restart_keys(running: &Config, new: &Config) -> Vec<&'static str> {
    // Compared through their debug form: these types hold file paths and
    // settings, never secret values.
    fn differs<T: std::fmt::Debug>(a: &T, b: &T) -> bool {
        format!("{a:?}") != format!("{b:?}")
    }
    let (a, b) = (&running.server, &new.server);
    let mut keys = Vec::new();
    let checks: [(&'static str, bool); 5] = [
        ("server.listen", differs(&a.listen, &b.listen)),
        ("server.listen_plain", differs(&a.listen_plain, &b.listen_plain)),
        ("server.workers", a.workers != b.workers),
        (
            "server limits (timeouts, sizes, max_connections)",
            differs(&a.limits, &b.limits),
        ),
        ("server.shutdown_grace", a.shutdown_grace != b.shutdown_grace),
    ];
    keys.extend(checks.iter().filter(|(_, changed)| *changed).map(|(key, _)| *key));
    match (&running.admin, &new.admin) {
        (Some(x), Some(y)) => {
            if x.listen != y.listen {
                keys.push("admin.listen");
            }
            if x.tls != y.tls {
                keys.push("admin.tls");
            }
            if x.client_ca_file != y.client_ca_file {
                keys.push("admin.client_ca_file");
            }
            // A new token file is read by a reload; turning the API on
            // or off (a token file where there was none, or none where
            // there was one) needs a restart.
            if x.token_file.is_some() != y.token_file.is_some() {
                keys.push("admin.token_file");
            }
        }
        (None, None) => {}
        _ => keys.push("[admin]"),
    }
    let sections: [(&'static str, bool); 8] = [
        ("[store]", differs(&running.store, &new.store)),
        ("[smtp]", differs(&running.smtp, &new.smtp)),
        ("[auth] and [lockout]", differs(&running.auth, &new.auth)),
        ("[directory]", differs(&running.directory, &new.directory)),
        ("[sync]", differs(&running.sync, &new.sync)),
        ("[portal]", differs(&running.portal, &new.portal)),
        // The endpoint reads its secret files once, at start.
        ("[mail_auth] and [[mail_backend]]", differs(&running.mail, &new.mail)),
        ("[forward_auth]", differs(&running.forward_auth, &new.forward_auth)),
    ];
    keys.extend(sections.iter().filter(|(_, changed)| *changed).map(|(key, _)| *key));
    keys
}

#[cfg(test)]
mod tests;
