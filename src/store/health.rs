//! Whether the store can still be trusted, as plain data that readiness
//! (`/readyz`) and the sign-in path both read: healthy since when, or
//! failing since when and why, and whether the in-memory view has gone
//! stale.
//!
//! The checks themselves (file identity, header, store id) are the
//! backend's ([`super::Store::check`]); the job that runs them and the
//! view's refresh lives in [`crate::auth`]. This module owns the rules:
//! a state change is reported once (so the log says "failing" once and
//! "recovered" once, not every poll), and the view is stale once the last
//! good refresh is older than `max_staleness`. Time is a parameter, of
//! two kinds: the age of the view is measured on a monotonic clock
//! ([`Instant`]), so that a wall clock stepped back cannot stretch the
//! bound; wall-clock milliseconds only date what operators are shown.
//!
//! The sign-in path pays one relaxed atomic load ([`StoreHealth::is_stale`]);
//! the flag is flipped by a background job, never computed per request.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The store as the last check found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthState {
    Healthy { since: i64 },
    Failing { since: i64, reason: String },
}

/// What a check result changed, for the caller to log once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// Was healthy (or failing for another reason), now failing.
    Failing { reason: String },
    /// Was failing since `since`, now healthy.
    Recovered { since: i64, reason: String },
}

#[derive(Debug)]
pub struct StoreHealth {
    max_staleness_ms: u64,
    /// What `last_ok` counts from.
    origin: Instant,
    /// Monotonic ms after `origin` of the last check and refresh that both
    /// succeeded.
    last_ok: AtomicU64,
    stale: AtomicBool,
    state: Mutex<HealthState>,
}

impl StoreHealth {
    /// Healthy as of `at` (monotonic) and `now` (wall-clock Unix ms): the
    /// store was just opened and loaded.
    pub fn new(max_staleness: Duration, at: Instant, now: i64) -> StoreHealth {
        StoreHealth {
            max_staleness_ms: u64::try_from(max_staleness.as_millis()).unwrap_or(u64::MAX),
            origin: at,
            last_ok: AtomicU64::new(0),
            stale: AtomicBool::new(false),
            state: Mutex::new(HealthState::Healthy { since: now }),
        }
    }

    pub fn max_staleness(&self) -> Duration {
        Duration::from_millis(self.max_staleness_ms)
    }

    /// `at` as monotonic ms after `origin`; an `Instant` before it reads
    /// as `origin`.
    fn since_origin(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.origin).as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether the view is older than the bound: sign-ins that rely on it
    /// are refused (`store_unavailable`).
    #[inline]
    pub fn is_stale(&self) -> bool {
        self.stale.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HealthState> {
        // Invariant: the lock guards a plain assignment that cannot panic;
        // a poisoned lock still holds a consistent state.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn state(&self) -> HealthState {
        self.lock().clone()
    }

    /// A check and refresh succeeded at `at` (monotonic), `now` (wall).
    pub fn succeeded(&self, at: Instant, now: i64) -> Option<Transition> {
        self.last_ok.fetch_max(self.since_origin(at), Ordering::AcqRel);
        self.stale.store(false, Ordering::Relaxed);
        let mut state = self.lock();
        match &*state {
            HealthState::Healthy { .. } => None,
            HealthState::Failing { since, reason } => {
                let t = Transition::Recovered {
                    since: *since,
                    reason: reason.clone(),
                };
                *state = HealthState::Healthy { since: now };
                Some(t)
            }
        }
    }

    /// A check or refresh failed at `now`. Reported once per reason: the
    /// same failure poll after poll is no news.
    pub fn failed(&self, now: i64, reason: &str) -> Option<Transition> {
        let mut state = self.lock();
        match &*state {
            HealthState::Failing { reason: old, .. } if old == reason => None,
            HealthState::Failing { since, .. } => {
                let since = *since;
                *state = HealthState::Failing {
                    since,
                    reason: reason.to_owned(),
                };
                Some(Transition::Failing {
                    reason: reason.to_owned(),
                })
            }
            HealthState::Healthy { .. } => {
                *state = HealthState::Failing {
                    since: now,
                    reason: reason.to_owned(),
                };
                Some(Transition::Failing {
                    reason: reason.to_owned(),
                })
            }
        }
    }

    /// Flips the stale flag by time alone, so that a check that hangs
    /// (rather than fails) still ends answers from an old view. Returns
    /// whether the view just became stale. `at` is monotonic.
    pub fn observe(&self, at: Instant) -> bool {
        let age = self
            .since_origin(at)
            .saturating_sub(self.last_ok.load(Ordering::Acquire));
        let stale = age > self.max_staleness_ms;
        stale && !self.stale.swap(stale, Ordering::Relaxed)
    }

    /// `Ok` when `/readyz` may say ready; else why not.
    pub fn readiness(&self, now: i64) -> Result<(), String> {
        match &*self.lock() {
            HealthState::Failing { since, reason } => Err(format!(
                "store unavailable for {} ms: {reason}",
                now.saturating_sub(*since)
            )),
            HealthState::Healthy { .. } if self.is_stale() => {
                Err("store: the in-memory view could not be refreshed in time".to_owned())
            }
            HealthState::Healthy { .. } => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A monotonic instant `ms` after a fixed origin.
    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    #[test]
    fn a_failure_is_reported_once_and_so_is_the_recovery() {
        let t0 = Instant::now();
        let h = StoreHealth::new(Duration::from_secs(5), t0, 0);
        assert_eq!(h.succeeded(at(t0, 200), 200), None);
        assert_eq!(
            h.failed(400, "gone"),
            Some(Transition::Failing { reason: "gone".into() })
        );
        for t in (600..3000).step_by(200) {
            assert_eq!(h.failed(t, "gone"), None, "reported again at {t}");
        }
        assert!(h.readiness(3000).is_err());
        assert_eq!(
            h.failed(3200, "corrupt"),
            Some(Transition::Failing {
                reason: "corrupt".into()
            })
        );
        assert_eq!(
            h.succeeded(at(t0, 3400), 3400),
            Some(Transition::Recovered {
                since: 400,
                reason: "corrupt".into()
            })
        );
        assert_eq!(h.succeeded(at(t0, 3600), 3600), None);
        assert!(h.readiness(3600).is_ok());
    }

    #[test]
    fn the_view_goes_stale_past_the_bound_and_fresh_on_success() {
        let t0 = Instant::now();
        let h = StoreHealth::new(Duration::from_secs(5), at(t0, 1_000), 1_000);
        assert!(!h.observe(at(t0, 6_000)));
        assert!(!h.is_stale());
        assert!(h.observe(at(t0, 6_001)));
        assert!(h.is_stale());
        // Reported once.
        assert!(!h.observe(at(t0, 7_000)));
        assert!(h.readiness(7_000).is_err(), "stale without a failed check (a hung one)");
        h.succeeded(at(t0, 7_200), 7_200);
        assert!(!h.is_stale());
        assert!(!h.observe(at(t0, 12_000)));
        assert!(h.observe(at(t0, 12_201)));
        // An instant from before the origin counts as the origin.
        assert!(!h.observe(t0));
    }

    #[test]
    fn failures_make_the_view_stale_only_after_the_bound() {
        let t0 = Instant::now();
        let h = StoreHealth::new(Duration::from_secs(5), t0, 0);
        h.failed(200, "gone");
        assert!(!h.observe(at(t0, 200)));
        assert!(!h.is_stale());
        h.failed(5_200, "gone");
        assert!(h.observe(at(t0, 5_200)));
        assert!(h.is_stale());
    }

    #[test]
    fn a_wall_clock_stepped_back_does_not_stretch_the_bound() {
        let t0 = Instant::now();
        let h = StoreHealth::new(Duration::from_secs(5), t0, 100_000);
        h.succeeded(at(t0, 1_000), 101_000);
        // The wall clock steps back an hour; the store then fails.
        let wall = 101_000 - 3_600_000;
        h.failed(wall + 1_000, "gone");
        assert!(!h.observe(at(t0, 6_000)));
        assert!(
            h.observe(at(t0, 6_001)),
            "stale 5 s after the last success, whatever the wall clock says"
        );
        assert!(h.readiness(wall + 5_001).is_err());
    }
}
