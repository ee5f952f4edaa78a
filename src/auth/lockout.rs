//! Lockout: after `threshold` wrong secrets in a row for one user name
//! from one client address, that pair is refused (429) for `duration`
//! without checking anything, so a guesser gets no further answers and the
//! directory sees no more failed binds for the account.
//!
//! Keyed by name *and* address, so that someone spraying from elsewhere
//! does not lock the real user out of their own device. A success resets
//! the pair's count. Kept in memory per node: a node restart forgets it,
//! and each node counts on its own.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;

/// Pairs kept at most; past this, entries not locked are dropped first.
const MAX_ENTRIES: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    /// When the first failure of the current run happened.
    since: Instant,
    locked_until: Option<Instant>,
}

#[derive(Debug)]
pub struct Lockout {
    threshold: u32,
    duration: Duration,
    entries: DashMap<(String, IpAddr), Entry, foldhash::fast::RandomState>,
    /// False while no failure is recorded: the warm path then reads one
    /// atomic instead of the map's shards.
    any: AtomicBool,
}

impl Lockout {
    pub fn new(threshold: u32, duration: Duration) -> Lockout {
        Lockout {
            threshold,
            duration,
            entries: DashMap::default(),
            any: AtomicBool::new(false),
        }
    }

    fn key(name: &str, ip: IpAddr) -> (String, IpAddr) {
        (name.trim().to_lowercase(), ip)
    }

    /// How long the pair stays locked, if it is.
    pub fn locked(&self, name: &str, ip: IpAddr, now: Instant) -> Option<Duration> {
        // The warm path's usual case: nobody failed lately, nothing to look up.
        if self.threshold == 0 || !self.any.load(Ordering::Acquire) {
            return None;
        }
        let entry = self.entries.get(&Self::key(name, ip))?;
        entry
            .locked_until
            .and_then(|until| until.checked_duration_since(now))
            .filter(|left| !left.is_zero())
    }

    /// Counts a wrong secret; returns true when this failure locked the
    /// pair.
    pub fn failed(&self, name: &str, ip: IpAddr, now: Instant) -> bool {
        if self.threshold == 0 {
            return false;
        }
        self.any.store(true, Ordering::Release);
        if self.entries.len() >= MAX_ENTRIES {
            self.sweep(now);
        }
        let mut entry = self.entries.entry(Self::key(name, ip)).or_insert(Entry {
            failures: 0,
            since: now,
            locked_until: None,
        });
        // A run of failures older than the lock duration starts over, and
        // so does one whose lock has run out.
        let expired_lock = entry.locked_until.is_some_and(|until| until <= now);
        if expired_lock || now.duration_since(entry.since) > self.duration {
            *entry = Entry {
                failures: 0,
                since: now,
                locked_until: None,
            };
        }
        entry.failures += 1;
        if entry.failures >= self.threshold && entry.locked_until.is_none() {
            entry.locked_until = Some(now + self.duration);
            return true;
        }
        false
    }

    /// A right secret: the pair starts from zero.
    pub fn succeeded(&self, name: &str, ip: IpAddr) {
        if self.threshold > 0 && self.any.load(Ordering::Acquire) {
            self.entries.remove(&Self::key(name, ip));
        }
    }

    /// Drops entries that no longer matter.
    pub fn sweep(&self, now: Instant) {
        self.entries.retain(|_, e| match e.locked_until {
            Some(until) => until > now,
            None => now.duration_since(e.since) <= self.duration,
        });
        if self.entries.is_empty() {
            self.any.store(false, Ordering::Release);
        }
    }

    pub fn duration(&self) -> Duration {
        self.duration
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));

    #[test]
    fn locks_a_name_from_one_address_only() {
        let lockout = Lockout::new(3, Duration::from_secs(60));
        let t0 = Instant::now();
        assert!(!lockout.failed("Alice@X.example", A, t0));
        assert!(!lockout.failed("alice@x.example", A, t0));
        assert!(lockout.failed("alice@x.example", A, t0));
        assert_eq!(lockout.locked("ALICE@x.example", A, t0), Some(Duration::from_secs(60)));
        assert_eq!(lockout.locked("alice@x.example", B, t0), None);
        assert_eq!(lockout.locked("bob@x.example", A, t0), None);
        // Runs out by itself.
        assert_eq!(lockout.locked("alice@x.example", A, t0 + Duration::from_secs(61)), None);
        assert!(!lockout.failed("alice@x.example", A, t0 + Duration::from_secs(61)));
    }

    #[test]
    fn success_resets_and_old_failures_expire() {
        let lockout = Lockout::new(3, Duration::from_secs(60));
        let t0 = Instant::now();
        lockout.failed("a@x", A, t0);
        lockout.failed("a@x", A, t0);
        lockout.succeeded("a@x", A);
        assert!(!lockout.failed("a@x", A, t0));
        assert!(!lockout.failed("a@x", A, t0));
        // The third, but long after the first: a new run.
        assert!(!lockout.failed("a@x", A, t0 + Duration::from_secs(120)));
        lockout.sweep(t0 + Duration::from_secs(300));
        assert!(lockout.entries.is_empty());
    }

    #[test]
    fn threshold_zero_turns_it_off() {
        let lockout = Lockout::new(0, Duration::from_secs(60));
        let t0 = Instant::now();
        for _ in 0..100 {
            assert!(!lockout.failed("a@x", A, t0));
        }
        assert_eq!(lockout.locked("a@x", A, t0), None);
    }
}
