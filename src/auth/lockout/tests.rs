use super::*;

const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));
const PHONE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 7));
const ALICE: Subject<'static> = Subject::User(UserId(7));
const SECS: fn(u64) -> Duration = Duration::from_secs;

fn lockout(threshold: u32) -> Lockout {
    Lockout::new(Rules {
        source_threshold: 0,
        ..Rules::new(threshold, SECS(60))
    })
}

/// Fails `n` times with distinct secrets.
fn fail_n(l: &Lockout, who: Subject<'_>, ip: IpAddr, n: usize, now: Instant) -> Failed {
    let mut last = Failed::default();
    for i in 0..n {
        last = l.failed(
            who,
            ip,
            Attempt::new(&format!("guess {i} {now:?}"), 0),
            Reason::BadCredentials,
            now,
        );
    }
    last
}

#[test]
fn an_account_locks_whatever_the_address() {
    let l = lockout(3);
    let t0 = Instant::now();
    assert_eq!(
        l.failed(ALICE, A, Attempt::new("w1", 0), Reason::BadCredentials, t0)
            .locked,
        None
    );
    assert_eq!(
        l.failed(ALICE, B, Attempt::new("w2", 0), Reason::BadCredentials, t0)
            .locked,
        None
    );
    assert_eq!(
        l.failed(ALICE, A, Attempt::new("w3", 0), Reason::BadCredentials, t0)
            .locked,
        Some(SECS(60))
    );
    for ip in [A, B, "10.9.9.9".parse().unwrap()] {
        assert_eq!(
            l.check(Some(ALICE), ip, Attempt::new("right", 0), t0),
            Check::Locked(SECS(60)),
            "{ip}"
        );
    }
    assert_eq!(
        l.check(Some(Subject::User(UserId(8))), A, Attempt::new("x", 0), t0),
        Check::Clear
    );
    // Runs out by itself.
    assert_eq!(
        l.check(Some(ALICE), A, Attempt::new("right", 0), t0 + SECS(61)),
        Check::Clear
    );
}

#[test]
fn unknown_names_count_under_their_name() {
    let l = lockout(2);
    let t0 = Instant::now();
    fail_n(&l, Subject::Name("alice"), A, 2, t0);
    assert!(matches!(
        l.check(Some(Subject::Name("alice")), B, Attempt::new("p", 0), t0),
        Check::Locked(_)
    ));
    assert_eq!(
        l.check(Some(Subject::Name("bob")), A, Attempt::new("p", 0), t0),
        Check::Clear
    );
    assert_eq!(l.check(Some(ALICE), A, Attempt::new("p", 0), t0), Check::Clear);
}

#[test]
fn a_familiar_source_keeps_its_own_counter() {
    let l = lockout(3);
    let t0 = Instant::now();
    l.succeeded(UserId(7), PHONE, true, t0);
    fail_n(&l, ALICE, A, 3, t0);
    assert!(matches!(
        l.check(Some(ALICE), B, Attempt::new("right", 0), t0),
        Check::Locked(_)
    ));
    assert_eq!(
        l.check(Some(ALICE), PHONE, Attempt::new("right", 0), t0),
        Check::Clear,
        "the phone is not locked out"
    );
    // The phone's own failures lock only the phone.
    let l = lockout(3);
    l.succeeded(UserId(7), PHONE, true, t0);
    fail_n(&l, ALICE, PHONE, 3, t0);
    assert!(matches!(
        l.check(Some(ALICE), PHONE, Attempt::new("x", 0), t0),
        Check::Locked(_)
    ));
    assert_eq!(l.check(Some(ALICE), A, Attempt::new("x", 0), t0), Check::Clear);
    // A /64 is one source.
    let l = lockout(3);
    l.succeeded(UserId(7), "2001:db8:1:2::10".parse().unwrap(), true, t0);
    fail_n(&l, ALICE, A, 3, t0);
    assert_eq!(
        l.check(
            Some(ALICE),
            "2001:db8:1:2:ffff::1".parse().unwrap(),
            Attempt::new("x", 0),
            t0
        ),
        Check::Clear
    );
    assert!(matches!(
        l.check(
            Some(ALICE),
            "2001:db8:1:3::10".parse().unwrap(),
            Attempt::new("x", 0),
            t0
        ),
        Check::Locked(_)
    ));
}

#[test]
fn a_proxys_own_address_is_never_familiar() {
    let l = lockout(3);
    let t0 = Instant::now();
    // Alice signed in through a balancer that did not say who she was;
    // a guesser behind the same balancer then fails as that address.
    l.signed_in(UserId(7), A, true, true, t0);
    l.signed_in(UserId(7), A, true, false, t0);
    assert!(l.familiar.read(&7, |_| ()).is_none(), "recorded as familiar");
    fail_n(&l, ALICE, A, 3, t0);
    assert!(
        matches!(l.check(Some(ALICE), B, Attempt::new("right", 0), t0), Check::Locked(_)),
        "the guesses counted on the balancer's own counter"
    );
    // A client's own address is familiar as before.
    l.signed_in(UserId(7), PHONE, false, true, t0);
    assert_eq!(l.check(Some(ALICE), PHONE, Attempt::new("right", 0), t0), Check::Clear);
}

#[test]
fn familiar_sources_are_bounded() {
    let l = lockout(3);
    let t0 = Instant::now();
    // A sign-in answered from the cache makes its source familiar too.
    l.succeeded(UserId(8), PHONE, false, t0);
    fail_n(&l, Subject::User(UserId(8)), A, 3, t0);
    assert_eq!(
        l.check(Some(Subject::User(UserId(8))), PHONE, Attempt::new("x", 0), t0),
        Check::Clear
    );
    for i in 0..20u8 {
        l.succeeded(UserId(7), IpAddr::V4(std::net::Ipv4Addr::new(10, 1, 0, i)), true, t0);
    }
    let kept = l.familiar.read(&7, |f| f.0.len()).unwrap();
    assert_eq!(kept, FAMILIAR_SOURCES);
    // The oldest went first.
    fail_n(&l, ALICE, A, 3, t0);
    let old = IpAddr::V4(std::net::Ipv4Addr::new(10, 1, 0, 0));
    let newest = IpAddr::V4(std::net::Ipv4Addr::new(10, 1, 0, 19));
    assert!(matches!(
        l.check(Some(ALICE), old, Attempt::new("x", 0), t0),
        Check::Locked(_)
    ));
    assert_eq!(l.check(Some(ALICE), newest, Attempt::new("x", 0), t0), Check::Clear);
}

#[test]
fn a_repeated_wrong_secret_counts_once_and_is_known() {
    let l = lockout(3);
    let t0 = Instant::now();
    for _ in 0..10 {
        assert_eq!(
            l.failed(ALICE, A, Attempt::new("old password", 0), Reason::BadCredentials, t0)
                .locked,
            None
        );
    }
    // Known from anywhere; only the source that sent it first is told it
    // may skip the cost of a guess.
    assert_eq!(
        l.check(Some(ALICE), B, Attempt::new("old password", 0), t0),
        Check::KnownWrong {
            reason: Reason::BadCredentials,
            from_here: false
        }
    );
    assert_eq!(
        l.check(Some(ALICE), A, Attempt::new("old password", 0), t0),
        Check::KnownWrong {
            reason: Reason::BadCredentials,
            from_here: true
        }
    );
    assert_eq!(l.check(Some(ALICE), B, Attempt::new("another", 0), t0), Check::Clear);
    // A change to the account (an app password added, the user enabled)
    // makes the secret worth checking again.
    assert_eq!(
        l.check(Some(ALICE), B, Attempt::new("old password", 1), t0),
        Check::Clear
    );
    assert_eq!(
        l.failed(ALICE, A, Attempt::new("w2", 0), Reason::BadCredentials, t0)
            .locked,
        None
    );
    // Any of the last three: the first is still remembered.
    assert_eq!(
        l.failed(ALICE, A, Attempt::new("old password", 0), Reason::BadCredentials, t0)
            .locked,
        None
    );
    assert_eq!(
        l.failed(ALICE, A, Attempt::new("w3", 0), Reason::BadCredentials, t0)
            .locked,
        Some(SECS(60))
    );
    // Another account's tags are its own.
    assert_eq!(
        l.check(Some(Subject::User(UserId(8))), A, Attempt::new("old password", 0), t0),
        Check::Clear
    );
}

#[test]
fn lockouts_in_a_row_grow_to_the_cap_and_reset() {
    let l = Lockout::new(Rules {
        max_duration: SECS(300),
        source_threshold: 0,
        ..Rules::new(2, SECS(60))
    });
    let mut now = Instant::now();
    let mut lengths = Vec::new();
    for _ in 0..5 {
        lengths.push(fail_n(&l, ALICE, A, 2, now).locked.unwrap());
        now += lengths[lengths.len() - 1];
    }
    assert_eq!(lengths, [SECS(60), SECS(120), SECS(240), SECS(300), SECS(300)]);
    // A quiet day forgets the streak.
    now += QUIET;
    assert_eq!(fail_n(&l, ALICE, A, 2, now).locked, Some(SECS(60)));
    // A success through the counter does too.
    now += SECS(60);
    assert_eq!(fail_n(&l, ALICE, PHONE, 2, now).locked, Some(SECS(120)));
    now += SECS(120);
    l.succeeded(UserId(7), PHONE, true, now);
    assert_eq!(fail_n(&l, ALICE, PHONE, 2, now).locked, Some(SECS(60)));
    assert_eq!(Rules::new(1, SECS(60)).lock_length(40), SECS(3600));
}

#[test]
fn failures_far_apart_start_a_new_run() {
    let l = lockout(3);
    let t0 = Instant::now();
    fail_n(&l, ALICE, A, 2, t0);
    assert_eq!(fail_n(&l, ALICE, A, 1, t0 + SECS(120)).locked, None);
    l.sweep(t0 + SECS(300));
    assert_eq!(l.sizes().0, 0);
    assert!(
        !l.any.load(Ordering::Acquire),
        "the warm path is back to one atomic load"
    );
}

#[test]
fn spraying_from_one_source_locks_it_for_unfamiliar_accounts() {
    let l = Lockout::new(Rules {
        source_threshold: 5,
        source_window: SECS(600),
        ..Rules::new(10, SECS(60))
    });
    let t0 = Instant::now();
    l.succeeded(UserId(1), A, true, t0);
    // One password, many users, one address.
    let mut locked = None;
    for id in 1..=5 {
        let failed = l.failed(
            Subject::User(UserId(id)),
            A,
            Attempt::new("Summer2026!", 0),
            Reason::BadCredentials,
            t0,
        );
        locked = locked.or(failed.source_locked);
    }
    assert_eq!(locked, Some(SECS(600)));
    assert_eq!(
        l.check(Some(Subject::User(UserId(99))), A, Attempt::new("x", 0), t0),
        Check::Locked(SECS(600))
    );
    assert!(matches!(
        l.check(Some(Subject::Name("nobody")), A, Attempt::new("x", 0), t0),
        Check::Locked(_)
    ));
    assert!(matches!(l.check(None, A, Attempt::new("x", 0), t0), Check::Locked(_)));
    // A user who signed in from there before keeps doing so, and the
    // address is not locked for anyone elsewhere.
    assert_eq!(
        l.check(Some(Subject::User(UserId(1))), A, Attempt::new("x", 0), t0),
        Check::Clear
    );
    assert_eq!(
        l.check(Some(Subject::User(UserId(99))), B, Attempt::new("x", 0), t0),
        Check::Clear
    );
    assert_eq!(
        l.check(Some(Subject::User(UserId(99))), A, Attempt::new("x", 0), t0 + SECS(601)),
        Check::Clear
    );
    // The same account failing again and again is one account.
    let l = Lockout::new(Rules {
        source_threshold: 3,
        ..Rules::new(100, SECS(60))
    });
    let locked: Vec<_> = (0..50)
        .map(|i| {
            l.failed(ALICE, A, Attempt::new(&format!("w{i}"), 0), Reason::BadCredentials, t0)
                .source_locked
        })
        .collect();
    assert!(locked.iter().all(Option::is_none));
}

#[test]
fn a_flood_of_junk_names_never_frees_a_locked_account() {
    let l = Lockout::new(Rules {
        max_entries: 160,
        source_threshold: 0,
        ..Rules::new(3, SECS(60))
    });
    let t0 = Instant::now();
    fail_n(&l, ALICE, A, 3, t0);
    // Bob has failed once: an account's count, not yet a lock.
    let bob = Subject::User(UserId(8));
    fail_n(&l, bob, A, 1, t0);
    let long = "x".repeat(40_000);
    for i in 0..10_000 {
        let name = format!("{long}{i}");
        l.failed(
            Subject::Name(&name),
            A,
            Attempt::new("", 0),
            Reason::BadCredentials,
            t0 + Duration::from_millis(i),
        );
        assert!(l.sizes().0 <= 160 + SHARDS, "grew past its cap at {i}");
    }
    let later = t0 + SECS(10);
    // Alice was the least recently failed, but her lock is live: kept.
    assert!(matches!(
        l.check(Some(ALICE), A, Attempt::new("x", 0), later),
        Check::Locked(_)
    ));
    // Unknown names went before an account: Bob's count is still there.
    assert_eq!(fail_n(&l, bob, A, 2, later).locked, Some(SECS(60)));
    // The newest names are kept, the older ones made room.
    let name = format!("{long}9999");
    assert_eq!(l.counters.read(&l.key(Subject::Name(&name)), |_| ()), Some(()));
    let name = format!("{long}0");
    assert_eq!(l.counters.read(&l.key(Subject::Name(&name)), |_| ()), None);
    // Keys are fixed-size whatever the name's length.
    assert_eq!(std::mem::size_of::<Key>(), 16);
}

#[test]
fn when_every_entry_is_locked_newcomers_share_one_overflow_counter() {
    // One key per shard, so a few hundred locks fill every shard.
    let l = Lockout::new(Rules {
        max_entries: SHARDS,
        source_threshold: 0,
        ..Rules::new(2, SECS(60))
    });
    let t0 = Instant::now();
    let names: Vec<String> = (0..1_000).map(|i| format!("junk{i}")).collect();
    for name in &names {
        fail_n(&l, Subject::Name(name), A, 2, t0);
        assert!(l.sizes().0 <= SHARDS, "grew past its cap at {name}");
    }
    let kept: Vec<&String> = names
        .iter()
        .filter(|n| l.counters.read(&l.key(Subject::Name(n)), |_| ()).is_some())
        .collect();
    assert_eq!(kept.len(), SHARDS, "every shard holds its first lock");
    for name in &kept {
        assert!(matches!(
            l.check(Some(Subject::Name(name)), A, Attempt::new("x", 0), t0),
            Check::Locked(_)
        ));
    }
    // The rest were counted together, and that count locked: a name with
    // no room of its own is refused, not checked (fail closed).
    for who in [Subject::Name("newcomer"), Subject::Name(&names[999]), ALICE] {
        assert_eq!(
            l.check(Some(who), A, Attempt::new("x", 0), t0),
            Check::Locked(SECS(60)),
            "{who:?}"
        );
    }
    // Once the locks run out, room is made again and the overflow is gone.
    let later = t0 + SECS(61);
    assert_eq!(
        l.check(Some(Subject::Name("newcomer")), A, Attempt::new("x", 0), later),
        Check::Clear
    );
    fail_n(&l, ALICE, A, 1, later);
    assert_eq!(l.counters.read(&l.key(ALICE), |_| ()), Some(()));
}

#[test]
fn a_flood_of_sources_never_frees_a_locked_source() {
    let l = Lockout::new(Rules {
        max_entries: 160,
        source_threshold: 3,
        ..Rules::new(100, SECS(60))
    });
    let t0 = Instant::now();
    for id in 1..=3 {
        l.failed(
            Subject::User(UserId(id)),
            A,
            Attempt::new("Summer2026!", 0),
            Reason::BadCredentials,
            t0,
        );
    }
    let stranger = Some(Subject::User(UserId(99)));
    assert!(matches!(
        l.check(stranger, A, Attempt::new("x", 0), t0),
        Check::Locked(_)
    ));
    for i in 0..10_000u32 {
        let ip = IpAddr::V4(std::net::Ipv4Addr::from(0x0b00_0000 + i));
        l.failed(
            Subject::Name("junk"),
            ip,
            Attempt::new(&i.to_string(), 0),
            Reason::BadCredentials,
            t0 + Duration::from_millis(u64::from(i)),
        );
        assert!(l.sizes().1 <= 160 + SHARDS, "grew past its cap at {i}");
    }
    assert!(matches!(
        l.check(stranger, A, Attempt::new("x", 0), t0 + SECS(10)),
        Check::Locked(_)
    ));
}

#[test]
fn the_spray_throttle_counts_an_ipv6_56_as_one_source() {
    let l = Lockout::new(Rules {
        source_threshold: 5,
        ..Rules::new(100, SECS(60))
    });
    let t0 = Instant::now();
    let mut locked = None;
    // Five /64s of one /56, one account each.
    for (id, net) in (1..=5).zip([
        "2001:db8:0:1::1",
        "2001:db8:0:2::1",
        "2001:db8:0:3::1",
        "2001:db8:0:4::1",
        "2001:db8:0:ff::1",
    ]) {
        let failed = l.failed(
            Subject::User(UserId(id)),
            net.parse().unwrap(),
            Attempt::new("Summer2026!", 0),
            Reason::BadCredentials,
            t0,
        );
        locked = locked.or(failed.source_locked);
    }
    assert_eq!(locked, Some(SECS(600)));
    let stranger = Some(Subject::User(UserId(99)));
    let check = |ip: &str| l.check(stranger, ip.parse().unwrap(), Attempt::new("x", 0), t0);
    assert_eq!(check("2001:db8:0:80::9"), Check::Locked(SECS(600)));
    // The next /56 is someone else.
    assert_eq!(check("2001:db8:0:100::1"), Check::Clear);
    // The account counters stay per /64: each user failed once.
    assert_eq!(l.counters.read(&Key::User(1), |c| c.unfamiliar.failures), Some(1));
}

#[test]
fn threshold_zero_turns_it_off() {
    let l = lockout(0);
    let t0 = Instant::now();
    for i in 0..100 {
        assert_eq!(
            l.failed(ALICE, A, Attempt::new(&i.to_string(), 0), Reason::BadCredentials, t0),
            Failed::default()
        );
    }
    assert_eq!(l.check(Some(ALICE), A, Attempt::new("x", 0), t0), Check::Clear);
}

#[test]
fn a_sweep_never_clears_the_flag_under_a_counter_just_made() {
    let l = Lockout::new(Rules {
        source_threshold: 0,
        ..Rules::new(1, SECS(60))
    });
    let t0 = Instant::now();
    // Far enough on that every counter is stale, so each sweep empties the
    // maps and clears the flag, racing the next failure.
    let far = t0 + QUIET + SECS(1);
    let done = AtomicBool::new(false);
    let witnessed = std::thread::scope(|scope| {
        scope.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                l.sweep(far);
            }
        });
        let mut witnessed = 0;
        for i in 0..50_000 {
            let name = format!("n{i}");
            let who = Subject::Name(&name);
            l.failed(who, A, Attempt::new("w", 0), Reason::BadCredentials, t0);
            let check = l.check(Some(who), A, Attempt::new("x", 0), t0);
            // Present after the check means present during it: nothing
            // but the sweep removes it, and only this thread makes it.
            if check == Check::Clear && l.counters.read(&l.key(who), |_| ()).is_some() {
                witnessed += 1;
            }
        }
        done.store(true, Ordering::Relaxed);
        witnessed
    });
    assert_eq!(witnessed, 0, "checks let through with a lock in place");
}
