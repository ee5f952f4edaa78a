//! Lockout: how many wrong secrets an account may be tried with, from
//! where, before fedgate stops checking them (429, nothing verified, no
//! bind), so a guesser gets no further answers and the directory sees no
//! more failed binds for the account.
//!
//! The rules (README "Lockout" says the same for operators):
//!
//! - **Counted per account.** The key is the user the name resolves to in
//!   the index; a name that resolves to no user is counted under its
//!   canonical login part (see [`crate::names`]), so every spelling of one
//!   name (`alice@corp.example.com`, `alice`, `CORP\alice`, `ａlice`) spends
//!   one budget. Names refused outright (another domain, not ASCII, control
//!   characters) reach nobody and are not counted.
//! - **Familiar sources have their own counter.** A source (client address;
//!   an IPv6 address's /64) that signed the user in before is familiar: the last [`FAMILIAR_SOURCES`] are kept per user with
//!   when. Each has a counter of its own; all other sources share the
//!   account's *unfamiliar* counter. Someone guessing from elsewhere can lock
//!   the unfamiliar counter, never the user's phone; spreading the guesses
//!   over many addresses gains nothing.
//! - **A counter locks** after `threshold` counted failures that begin
//!   within `duration` of each other; a run older than that starts over.
//! - **Repeats count once.** The keyed hashes (HMAC-SHA256 under a key made
//!   at start; the secret itself is never kept) of the counter's last
//!   [`REMEMBERED_SECRETS`] wrong secrets of the current run are remembered;
//!   a repeat is refused as wrong without being checked again (no bind)
//!   and without counting. A repeat from the source that first sent the
//!   secret costs nothing at all; from another source it costs the dummy
//!   argon2 a guess costs, so its answer does not tell a stranger what
//!   someone else tried. The hash covers the
//!   account's state (the user's and the settings' generations), so once
//!   anything changes (an app password added, the user re-enabled) a
//!   refused secret is checked again.
//! - **Durations grow.** A counter's n-th lockout in a row lasts
//!   `duration × 2^(n-1)`, at most `max_duration`. The count of lockouts in
//!   a row goes back to zero on a success through that counter (a familiar
//!   source signing in) or after [`QUIET`] without a counted failure.
//! - **A right secret that is refused** (`app_password_required`: the
//!   right organizational password of a user who must use app passwords)
//!   counts like a wrong one and resets nothing, so a guesser cannot tell it.
//! - **Sources spraying many accounts are throttled.** A source with counted
//!   failures for `source_threshold` distinct accounts within
//!   `source_window` is locked for `source_window` for every account it has
//!   not signed in before (0 turns this off). For this throttle an IPv6
//!   source is its /56 ([`SPRAY_V6_PREFIX`]), a subscriber's usual
//!   delegation, so one network does not count as 256 sprayers.
//! - **Bounded memory.** Counters, sources and familiar lists are each kept
//!   for at most `max_entries` keys of fixed size (names are hashed). When
//!   full, an entry without a live lock goes, the least recently failed
//!   first, names that resolve to nobody before accounts (for familiar
//!   lists: the least recently signed in). An entry with a live lock is
//!   never dropped, so a flood of junk names cannot free a locked account.
//!   When nothing can go, the newcomers share one overflow counter (and, for
//!   the throttle, one overflow source) that locks like any other; while it
//!   is locked every name (every source) without an entry of its own is
//!   refused: fail closed, and the bound still holds. Names of sources and
//!   accounts refused for length never get here.
//!
//! Kept in memory per node, and shared between the nodes of one store:
//! each node sends what it counted (a refused secret's account, source and
//! reason; a source that became familiar; never the secret) through the
//! store, and counts what the others sent (see
//! [`Lockout::failed_elsewhere`]). A restarted node reads the last window
//! of that back. The warm path pays one atomic load while nothing failed lately.
//! Time is passed in; nothing here reads a clock.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, Hash};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::model::{Reason, UserId};

/// Familiar sources kept per user.
pub const FAMILIAR_SOURCES: usize = 8;
/// Wrong secrets remembered per counter, so their repeats count once.
pub const REMEMBERED_SECRETS: usize = 3;
/// A counter this long without a counted failure forgets its lockouts.
pub const QUIET: Duration = Duration::from_secs(24 * 3600);
/// Shards of each map: failures on different keys rarely wait for each other.
const SHARDS: usize = 16;
/// Entries looked at, per class, to find one that may go when a shard is
/// full. Bounded so a shard full of locks costs a little per newcomer, not a
/// walk of the shard; the locked entries looked at move to the back, so the
/// next newcomer looks at others.
const EVICTION_SCAN: usize = 64;
/// The prefix an IPv6 source is grouped by for the spray throttle.
pub const SPRAY_V6_PREFIX: u32 = 56;

/// The rules' parameters (`[lockout]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    /// Counted failures that lock a counter; 0 turns lockout off.
    pub threshold: u32,
    /// The first lockout's length, and how close failures must be to form
    /// one run.
    pub duration: Duration,
    /// The longest a growing lockout gets.
    pub max_duration: Duration,
    /// Distinct accounts failing from one source that lock the source; 0
    /// turns the source throttle off.
    pub source_threshold: u32,
    pub source_window: Duration,
    /// Keys kept per map.
    pub max_entries: usize,
}

impl Rules {
    /// The rules with `threshold` and `duration`, the rest at defaults.
    pub fn new(threshold: u32, duration: Duration) -> Rules {
        Rules {
            threshold,
            duration,
            max_duration: Duration::from_secs(3600).max(duration),
            source_threshold: 20,
            source_window: Duration::from_secs(600),
            max_entries: 100_000,
        }
    }

    /// How long the `nth` lockout in a row lasts (1-based).
    pub fn lock_length(&self, nth: u32) -> Duration {
        let factor = 1u32 << nth.saturating_sub(1).min(20);
        self.duration
            .saturating_mul(factor)
            .min(self.max_duration.max(self.duration))
    }
}

/// Whom a sign-in counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject<'a> {
    /// The name resolved to this user.
    User(UserId),
    /// The name resolved to nobody: its canonical login part.
    Name(&'a str),
}

/// A [`Subject`] that can outlive the request it came from (a directory
/// check finishing after its client left).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnedSubject {
    User(UserId),
    Name(String),
}

impl From<Subject<'_>> for OwnedSubject {
    fn from(subject: Subject<'_>) -> OwnedSubject {
        match subject {
            Subject::User(id) => OwnedSubject::User(id),
            Subject::Name(name) => OwnedSubject::Name(name.to_owned()),
        }
    }
}

impl OwnedSubject {
    pub fn as_subject(&self) -> Subject<'_> {
        match self {
            OwnedSubject::User(id) => Subject::User(*id),
            OwnedSubject::Name(name) => Subject::Name(name),
        }
    }
}

/// The secret presented, and the state of the account it was checked
/// against: generations of the user and the settings, anything that
/// changes when a refused secret might become right.
#[derive(Debug, Clone, Copy)]
pub struct Attempt<'a> {
    pub secret: &'a str,
    pub epoch: u64,
}

impl<'a> Attempt<'a> {
    pub fn new(secret: &'a str, epoch: u64) -> Attempt<'a> {
        Attempt { secret, epoch }
    }
}

/// What the lockout says before a secret is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Check the secret.
    Clear,
    /// Refuse with 429 for this long, checking nothing.
    Locked(Duration),
    /// This exact secret was refused for this account through this counter
    /// in the current run, as `reason`: refuse it again without checking
    /// it. `from_here`: it was first refused from this same source, which
    /// knows it is repeating itself (so the repeat need not cost what a
    /// guess costs; from elsewhere it must, or the answer would tell a
    /// stranger what someone else tried).
    KnownWrong { reason: Reason, from_here: bool },
}

/// A source: an IPv4 address, or an IPv6 address's /64 (one subscriber's
/// network; its interface bits are the subscriber's to choose).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    V4(u32),
    V6(u64),
}

impl From<IpAddr> for Source {
    fn from(ip: IpAddr) -> Source {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Source::V4(u32::from(v4)),
            IpAddr::V6(v6) => Source::V6((u128::from(v6) >> 64) as u64),
        }
    }
}

impl Source {
    /// The source as the spray throttle counts it: an IPv6 source widened
    /// to its /[`SPRAY_V6_PREFIX`] (`net` is the /64), since whoever holds one /64 of a
    /// subscriber's delegation usually holds all of them.
    fn spray(self) -> Source {
        match self {
            Source::V4(_) => self,
            Source::V6(net) => Source::V6(net & (u64::MAX << (64 - SPRAY_V6_PREFIX))),
        }
    }
}

/// A counter's key: fixed size whatever the name's length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Key {
    User(i64),
    Name(u64),
}

type SecretTag = [u8; 16];

/// One counter: failures in the current run, the lock, the lockouts in a row.
#[derive(Debug, Clone, Default)]
struct Counter {
    failures: u32,
    /// When the current run's first counted failure happened.
    since: Option<Instant>,
    locked_until: Option<Instant>,
    /// Lockouts in a row (drives the growing duration).
    lockouts: u32,
    last_failure: Option<Instant>,
    /// The run's refused secrets, what they were refused as, and the
    /// source that first sent each.
    wrong: Vec<(SecretTag, Reason, Source)>,
}

impl Counter {
    fn locked(&self, now: Instant) -> Option<Duration> {
        self.locked_until
            .and_then(|until| until.checked_duration_since(now))
            .filter(|left| !left.is_zero())
    }

    /// Ends a run that is over (lock run out, or first failure too old)
    /// and a lockout streak after a quiet day.
    fn settle(&mut self, rules: &Rules, now: Instant) {
        if self
            .last_failure
            .is_some_and(|t| now.saturating_duration_since(t) >= QUIET)
        {
            *self = Counter::default();
            return;
        }
        let lock_over = self.locked_until.is_some_and(|until| until <= now);
        let run_old = self
            .since
            .is_some_and(|s| now.saturating_duration_since(s) > rules.duration);
        if lock_over || (self.locked_until.is_none() && run_old) {
            self.failures = 0;
            self.since = None;
            self.locked_until = None;
            self.wrong.clear();
        }
    }

    /// Counts one failure unless its secret was seen in this run (false);
    /// with the lock's length when this failure locked the counter.
    fn fail(
        &mut self,
        rules: &Rules,
        tag: SecretTag,
        reason: Reason,
        source: Source,
        now: Instant,
    ) -> (bool, Option<Duration>) {
        self.settle(rules, now);
        if self.wrong.iter().any(|(t, _, _)| *t == tag) {
            self.last_failure = Some(now);
            return (false, None);
        }
        if self.wrong.len() == REMEMBERED_SECRETS {
            self.wrong.remove(0);
        }
        self.wrong.push((tag, reason, source));
        self.since.get_or_insert(now);
        self.last_failure = Some(now);
        self.failures += 1;
        if self.failures >= rules.threshold && self.locked_until.is_none() {
            self.lockouts = self.lockouts.saturating_add(1);
            let length = rules.lock_length(self.lockouts);
            self.locked_until = Some(now + length);
            return (true, Some(length));
        }
        (true, None)
    }

    /// Whether anything here still matters at `now`.
    fn live(&self, rules: &Rules, now: Instant) -> bool {
        let mut c = self.clone();
        c.settle(rules, now);
        c.failures > 0 || c.lockouts > 0
    }
}

/// An account's counters: one per familiar source that failed, one shared
/// by every other source.
#[derive(Debug, Clone, Default)]
struct Counters {
    unfamiliar: Counter,
    familiar: Vec<(Source, Counter)>,
}

impl Counters {
    fn counter(&mut self, source: Option<Source>) -> &mut Counter {
        let Some(source) = source else {
            return &mut self.unfamiliar;
        };
        if let Some(i) = self.familiar.iter().position(|(s, _)| *s == source) {
            return &mut self.familiar[i].1;
        }
        if self.familiar.len() >= FAMILIAR_SOURCES {
            // The familiar list is at most this long, so the stale counter
            // dropped is one of a source no longer familiar.
            self.familiar.remove(0);
        }
        self.familiar.push((source, Counter::default()));
        let last = self.familiar.len() - 1;
        &mut self.familiar[last].1
    }

    fn peek(&self, source: Option<Source>) -> Option<&Counter> {
        match source {
            None => Some(&self.unfamiliar),
            Some(source) => self.familiar.iter().find(|(s, _)| *s == source).map(|(_, c)| c),
        }
    }

    fn live(&self, rules: &Rules, now: Instant) -> bool {
        self.unfamiliar.live(rules, now) || self.familiar.iter().any(|(_, c)| c.live(rules, now))
    }
}

/// Sources that signed one user in, newest last.
#[derive(Debug, Clone, Default)]
struct Familiar(Vec<(Source, Instant)>);

/// One source's failures for distinct accounts in the current window.
#[derive(Debug, Clone)]
struct Spray {
    window_start: Instant,
    accounts: Vec<u64>,
    locked_until: Option<Instant>,
}

impl Spray {
    fn new(now: Instant) -> Spray {
        Spray {
            window_start: now,
            accounts: Vec::new(),
            locked_until: None,
        }
    }

    fn locked(&self, now: Instant) -> Option<Duration> {
        self.locked_until
            .and_then(|until| until.checked_duration_since(now))
            .filter(|left| !left.is_zero())
    }

    /// Notes a failure for the account with `fingerprint`; the lock's
    /// length when this one locked the source.
    fn fail(&mut self, fingerprint: u64, threshold: usize, window: Duration, now: Instant) -> Option<Duration> {
        if now.saturating_duration_since(self.window_start) > window {
            self.window_start = now;
            self.accounts.clear();
        }
        if self.locked(now).is_some() || self.accounts.contains(&fingerprint) {
            return None;
        }
        self.accounts.push(fingerprint);
        if self.accounts.len() >= threshold {
            self.locked_until = Some(now + window);
            self.window_start = now;
            self.accounts.clear();
            return Some(window);
        }
        None
    }
}

/// What a full map may drop: the class a key belongs to (lower goes
/// first), and whether a value must stay (a live lock).
trait Evict {
    fn class(&self) -> usize {
        0
    }
}

trait Pinned {
    fn pinned(&self, _now: Instant) -> bool {
        false
    }
}

/// Classes of keys, each with its own age order.
const CLASSES: usize = 2;

impl Evict for Key {
    fn class(&self) -> usize {
        match self {
            Key::Name(_) => 0,
            Key::User(_) => 1,
        }
    }
}
impl Evict for i64 {}
impl Evict for Source {}

impl Pinned for Counters {
    fn pinned(&self, now: Instant) -> bool {
        self.unfamiliar.locked(now).is_some() || self.familiar.iter().any(|(_, c)| c.locked(now).is_some())
    }
}
impl Pinned for Familiar {}
impl Pinned for Spray {
    fn pinned(&self, now: Instant) -> bool {
        self.locked(now).is_some()
    }
}

/// A map of at most `cap` keys, in shards. When full, an entry that is not
/// pinned goes to make room, the lowest class first and in it the least
/// recently touched; a newcomer that finds none is turned away. Reads share
/// a shard; only changes take it alone.
struct Bounded<K, V> {
    shards: Vec<RwLock<Shard<K, V>>>,
    cap_per_shard: usize,
    hasher: std::collections::hash_map::RandomState,
}

struct Shard<K, V> {
    map: HashMap<K, (u64, V)>,
    /// Per class, keys by the tick they were last touched.
    order: [BTreeMap<u64, K>; CLASSES],
    tick: u64,
}

impl<K: Copy + Eq + Hash + Evict, V: Pinned> Shard<K, V> {
    /// Drops one entry that may go; false when none was found.
    fn make_room(&mut self, now: Instant) -> bool {
        for class in 0..CLASSES {
            for _ in 0..EVICTION_SCAN {
                let Some((_, key)) = self.order[class].pop_first() else {
                    break;
                };
                match self.map.get_mut(&key) {
                    Some(slot) if slot.1.pinned(now) => {
                        // Kept, and moved to the back so the next look
                        // starts past it.
                        self.tick += 1;
                        slot.0 = self.tick;
                        self.order[class].insert(self.tick, key);
                    }
                    _ => {
                        self.map.remove(&key);
                        return true;
                    }
                }
            }
        }
        false
    }
}

// Every critical section leaves the shard consistent, so a panic in
// another holder does not make it unusable.
fn read<T>(m: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn write<T>(m: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl<K: Copy + Eq + Hash + Evict, V: Pinned> Bounded<K, V> {
    fn new(cap: usize) -> Self {
        Bounded {
            shards: (0..SHARDS)
                .map(|_| {
                    RwLock::new(Shard {
                        map: HashMap::new(),
                        order: Default::default(),
                        tick: 0,
                    })
                })
                .collect(),
            cap_per_shard: cap.div_ceil(SHARDS).max(1),
            hasher: Default::default(),
        }
    }

    fn shard(&self, key: &K) -> &RwLock<Shard<K, V>> {
        // Invariant: SHARDS > 0, so the index is in range.
        &self.shards[(self.hasher.hash_one(key) as usize) % SHARDS]
    }

    /// Reads the value without touching its age.
    fn read<R>(&self, key: &K, f: impl FnOnce(&V) -> R) -> Option<R> {
        let shard = read(self.shard(key));
        shard.map.get(key).map(|(_, v)| f(v))
    }

    /// Changes (or makes) the value and marks it the most recently used;
    /// `None` when the key is new, its shard is full and nothing in it may
    /// go (the map is unchanged).
    fn update<R>(&self, key: K, now: Instant, make: impl FnOnce() -> V, f: impl FnOnce(&mut V) -> R) -> Option<R> {
        let mut guard = write(self.shard(&key));
        let shard = &mut *guard;
        let class = key.class();
        if let Some((old, _)) = shard.map.get(&key) {
            let old = *old;
            shard.order[class].remove(&old);
        } else {
            while shard.map.len() >= self.cap_per_shard {
                if !shard.make_room(now) {
                    return None;
                }
            }
            shard.map.insert(key, (0, make()));
        }
        shard.tick += 1;
        let tick = shard.tick;
        shard.order[class].insert(tick, key);
        // Invariant: the key was present or has just been inserted.
        let slot = shard.map.get_mut(&key).expect("the entry was just made");
        slot.0 = tick;
        Some(f(&mut slot.1))
    }

    fn retain(&self, mut keep: impl FnMut(&V) -> bool) {
        for shard in &self.shards {
            let mut guard = write(shard);
            let shard = &mut *guard;
            let order = &mut shard.order;
            shard.map.retain(|key, (tick, v)| {
                let kept = keep(v);
                if !kept {
                    order[key.class()].remove(tick);
                }
                kept
            });
        }
    }

    fn len(&self) -> usize {
        self.shards.iter().map(|s| read(s).map.len()).sum()
    }
}

/// The lockout state of one node.
pub struct Lockout {
    rules: Rules,
    counters: Bounded<Key, Counters>,
    familiar: Bounded<i64, Familiar>,
    sources: Bounded<Source, Spray>,
    /// Keys the secret tags, made at start: nothing here outlives the
    /// process, so nothing need be comparable across restarts.
    mac: Hmac<Sha256>,
    names: std::collections::hash_map::RandomState,
    /// Shared by the names (and users) that found no room in `counters`.
    overflow: Mutex<Counter>,
    /// Shared by the sources that found no room in `sources`.
    overflow_source: Mutex<Option<Spray>>,
    /// True while either overflow holds anything, so a check of a key
    /// without an entry takes neither mutex in the usual case. Set and
    /// cleared only with the overflow's mutex held.
    overflowed: AtomicBool,
    /// False while no failure is recorded: the warm path then reads one
    /// atomic instead of any map.
    any: AtomicBool,
    /// Orders `any` against the maps: writers hold it shared from their
    /// first insert until `any` is set; `sweep` holds it alone from seeing
    /// the maps empty until `any` is cleared. So `any` is never cleared
    /// between a writer's insert and its setting the flag, whichever runs
    /// first: either the sweep sees the entry and keeps the flag, or the
    /// writer sets the flag after the sweep cleared it.
    recording: RwLock<()>,
}

impl std::fmt::Debug for Lockout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lockout")
            .field("rules", &self.rules)
            .field("counters", &self.counters.len())
            .field("sources", &self.sources.len())
            .finish_non_exhaustive()
    }
}

/// What a counted failure did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Failed {
    /// The account's counter locked, for this long.
    pub locked: Option<Duration>,
    /// The source's throttle locked, for this long.
    pub source_locked: Option<Duration>,
    /// Whether it counted (a repeat of a remembered secret does not).
    pub counted: bool,
}

impl Lockout {
    pub fn new(rules: Rules) -> Lockout {
        Lockout {
            counters: Bounded::new(rules.max_entries),
            familiar: Bounded::new(rules.max_entries),
            sources: Bounded::new(rules.max_entries),
            rules,
            // Invariant: HMAC takes keys of any length.
            mac: <Hmac<Sha256> as Mac>::new_from_slice(&rand::random::<[u8; 32]>())
                .expect("HMAC accepts any key length"),
            names: Default::default(),
            overflow: Mutex::new(Counter::default()),
            overflow_source: Mutex::new(None),
            overflowed: AtomicBool::new(false),
            any: AtomicBool::new(false),
            recording: RwLock::new(()),
        }
    }

    pub fn rules(&self) -> &Rules {
        &self.rules
    }

    /// The first lockout's length.
    pub fn duration(&self) -> Duration {
        self.rules.duration
    }

    fn key(&self, subject: Subject<'_>) -> Key {
        match subject {
            Subject::User(id) => Key::User(id.0),
            Subject::Name(name) => Key::Name(self.names.hash_one(name)),
        }
    }

    fn fingerprint(&self, key: Key) -> u64 {
        self.names.hash_one(key)
    }

    /// The keyed hash of a secret, bound to the account so that tags of
    /// one account say nothing about another's, and to the account's
    /// `epoch` so that a change (an app password added, the user enabled)
    /// makes an earlier refused secret worth checking again.
    fn tag(&self, key: Key, attempt: Attempt<'_>) -> SecretTag {
        let mut mac = self.mac.clone();
        mac.update(&attempt.epoch.to_le_bytes());
        match key {
            Key::User(id) => {
                mac.update(b"u");
                mac.update(&id.to_le_bytes());
            }
            Key::Name(h) => {
                mac.update(b"n");
                mac.update(&h.to_le_bytes());
            }
        }
        mac.update(attempt.secret.as_bytes());
        let full: [u8; 32] = mac.finalize().into_bytes().into();
        let mut tag = [0; 16];
        tag.copy_from_slice(&full[..16]);
        tag
    }

    /// The source if it signed this user in before.
    fn familiar_source(&self, subject: Subject<'_>, source: Source) -> Option<Source> {
        let Subject::User(id) = subject else {
            return None;
        };
        self.familiar
            .read(&id.0, |f| f.0.iter().any(|(s, _)| *s == source))
            .unwrap_or(false)
            .then_some(source)
    }

    /// Before checking `secret` for `subject` from `ip`. `None`: the name
    /// was refused (it names nobody); only the source's throttle applies.
    pub fn check(&self, subject: Option<Subject<'_>>, ip: IpAddr, attempt: Attempt<'_>, now: Instant) -> Check {
        // The warm path's usual case: nobody failed lately, nothing to look up.
        if self.rules.threshold == 0 || !self.any.load(Ordering::Acquire) {
            return Check::Clear;
        }
        let source = Source::from(ip);
        let familiar = subject.and_then(|s| self.familiar_source(s, source));
        if familiar.is_none() {
            let locked = match self.sources.read(&source.spray(), |s| s.locked(now)) {
                Some(locked) => locked,
                None if self.overflowed.load(Ordering::Acquire) => {
                    lock(&self.overflow_source).as_ref().and_then(|s| s.locked(now))
                }
                None => None,
            };
            if let Some(left) = locked {
                return Check::Locked(left);
            }
        }
        let Some(subject) = subject else {
            return Check::Clear;
        };
        let key = self.key(subject);
        let state = self.counters.read(&key, |c| {
            c.peek(familiar).map(|c| {
                let mut c = c.clone();
                c.settle(&self.rules, now);
                (c.locked(now), !c.wrong.is_empty())
            })
        });
        let Some(state) = state else {
            // No counter of its own: it may have been counted on the
            // overflow counter, so that one's lock applies.
            if !self.overflowed.load(Ordering::Acquire) {
                return Check::Clear;
            }
            return lock(&self.overflow).locked(now).map_or(Check::Clear, Check::Locked);
        };
        match state {
            Some((Some(left), _)) => Check::Locked(left),
            Some((None, true)) => {
                let tag = self.tag(key, attempt);
                let known =
                    self.counters
                        .read(&key, |c| {
                            c.peek(familiar).and_then(|c| {
                                c.wrong.iter().find(|(t, _, _)| *t == tag).map(|&(_, reason, first)| {
                                    Check::KnownWrong {
                                        reason,
                                        from_here: first == source,
                                    }
                                })
                            })
                        })
                        .flatten();
                known.unwrap_or(Check::Clear)
            }
            _ => Check::Clear,
        }
    }

    /// Counts a refused secret (wrong, or right but refused as
    /// `app_password_required`).
    pub fn failed(
        &self,
        subject: Subject<'_>,
        ip: IpAddr,
        attempt: Attempt<'_>,
        reason: Reason,
        now: Instant,
    ) -> Failed {
        if self.rules.threshold == 0 {
            return Failed::default();
        }
        let tag = self.tag(self.key(subject), attempt);
        self.count_failure(subject, ip, tag, reason, now)
    }

    /// Counts a failure another node counted (it shares what it counts
    /// through the store). The secret never leaves the node that saw it, so
    /// this one cannot tell a repeat: each such failure counts, which locks
    /// no later than one node alone would.
    pub fn failed_elsewhere(&self, subject: Subject<'_>, ip: IpAddr, reason: Reason, now: Instant) -> Failed {
        if self.rules.threshold == 0 {
            return Failed::default();
        }
        self.count_failure(subject, ip, rand::random::<SecretTag>(), reason, now)
    }

    fn count_failure(&self, subject: Subject<'_>, ip: IpAddr, tag: SecretTag, reason: Reason, now: Instant) -> Failed {
        let source = Source::from(ip);
        let familiar = self.familiar_source(subject, source);
        let key = self.key(subject);
        let rules = self.rules;
        let recording = read(&self.recording);
        let (counted, locked) = self
            .counters
            .update(key, now, Counters::default, |c| {
                c.counter(familiar).fail(&rules, tag, reason, source, now)
            })
            .unwrap_or_else(|| {
                let mut overflow = lock(&self.overflow);
                self.overflowed.store(true, Ordering::Release);
                overflow.fail(&rules, tag, reason, source, now)
            });
        let source_locked = if counted { self.spray(key, source, now) } else { None };
        if locked.is_some() {
            crate::telemetry::lockout_begun(false);
        }
        if source_locked.is_some() {
            crate::telemetry::lockout_begun(true);
        }
        if locked.is_some() || source_locked.is_some() {
            crate::telemetry::lockout_entries(self.counters.len(), self.sources.len());
        }
        // Set only once the entries exist (see `recording`): set before,
        // a sweep in between could clear it with the entry in place.
        self.any.store(true, Ordering::Release);
        drop(recording);
        Failed {
            locked,
            source_locked,
            counted,
        }
    }

    /// Notes a failure for `key` from `source`; returns the source lock's
    /// length when this one locked it.
    fn spray(&self, key: Key, source: Source, now: Instant) -> Option<Duration> {
        let threshold = self.rules.source_threshold as usize;
        if threshold == 0 {
            return None;
        }
        let window = self.rules.source_window;
        let fingerprint = self.fingerprint(key);
        self.sources
            .update(
                source.spray(),
                now,
                || Spray::new(now),
                |s| s.fail(fingerprint, threshold, window, now),
            )
            .unwrap_or_else(|| {
                let mut overflow = lock(&self.overflow_source);
                self.overflowed.store(true, Ordering::Release);
                overflow
                    .get_or_insert_with(|| Spray::new(now))
                    .fail(fingerprint, threshold, window, now)
            })
    }

    /// A secret accepted for `user` from `ip`: the source is familiar from
    /// now on and its counter starts from zero. A sign-in answered from the
    /// verified-credential cache (`checked` false) counts as well (a phone
    /// that moved to another network is still the user's phone); it costs a
    /// read of the user's list, and a write at most once a minute.
    ///
    /// Returns whether anything was written (what the other nodes need to
    /// hear of).
    pub fn succeeded(&self, user: UserId, ip: IpAddr, checked: bool, now: Instant) -> bool {
        if self.rules.threshold == 0 {
            return false;
        }
        let source = Source::from(ip);
        if !checked {
            let fresh = self
                .familiar
                .read(&user.0, |f| {
                    f.0.iter()
                        .any(|(s, at)| *s == source && now.saturating_duration_since(*at) < Duration::from_secs(60))
                })
                .unwrap_or(false);
            if fresh {
                return false;
            }
        }
        // Familiar lists are never pinned, so there is always room.
        let _ = self.familiar.update(user.0, now, Familiar::default, |f| {
            f.0.retain(|(s, _)| *s != source);
            if f.0.len() >= FAMILIAR_SOURCES {
                f.0.remove(0);
            }
            f.0.push((source, now));
        });
        if self.any.load(Ordering::Acquire) {
            let key = Key::User(user.0);
            if self.counters.read(&key, |_| ()).is_some() {
                // The key is present, so this finds room (or, if a sweep
                // dropped it meanwhile, there is nothing to reset).
                let _ = self.counters.update(key, now, Counters::default, |c| {
                    c.familiar.retain(|(s, _)| *s != source);
                });
            }
        }
        true
    }

    /// [`Lockout::succeeded`], unless `ip` is a trusted proxy's own
    /// address: everyone behind the proxy signs in from it, and were it
    /// familiar to each of them, a guesser behind it would count against
    /// the user's own counter. Nothing else is kept for such a source (it
    /// never gets a familiar counter), so nothing is reset.
    pub fn signed_in(&self, user: UserId, ip: IpAddr, ip_is_proxy: bool, checked: bool, now: Instant) -> bool {
        !ip_is_proxy && self.succeeded(user, ip, checked, now)
    }

    /// Drops entries that no longer matter; clears the warm path's flag
    /// when nothing failed lately.
    pub fn sweep(&self, now: Instant) {
        let rules = self.rules;
        let spray_live =
            |s: &Spray| s.locked(now).is_some() || now.saturating_duration_since(s.window_start) <= rules.source_window;
        self.counters.retain(|c| c.live(&rules, now));
        self.sources.retain(spray_live);
        // Alone, so no writer is between its insert and setting `any`:
        // every entry a writer made, overflow included, is seen here.
        let alone = write(&self.recording);
        let overflow_live = {
            let mut overflow = lock(&self.overflow);
            if !overflow.live(&rules, now) {
                *overflow = Counter::default();
            }
            let mut source = lock(&self.overflow_source);
            if source.as_ref().is_some_and(|s| !spray_live(s)) {
                *source = None;
            }
            let live = overflow.live(&rules, now) || source.is_some();
            if !live {
                self.overflowed.store(false, Ordering::Release);
            }
            live
        };
        if !overflow_live && self.counters.len() == 0 && self.sources.len() == 0 {
            self.any.store(false, Ordering::Release);
        }
        drop(alone);
        crate::telemetry::lockout_entries(self.counters.len(), self.sources.len());
    }

    /// Keys held: counters, sources, familiar lists.
    pub fn sizes(&self) -> (usize, usize, usize) {
        (self.counters.len(), self.sources.len(), self.familiar.len())
    }
}

#[cfg(test)]
mod tests;
