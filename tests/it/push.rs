//! Push sync (`[sync] mode = "push"`): the directory tells fedgate of each
//! change as it happens, through an RFC 4533 refreshAndPersist search on
//! OpenLDAP (slapd with `syncprov`) or change notifications on Active
//! Directory (the shared Samba DC), instead of fedgate asking every
//! `interval`.
//!
//! What is checked: the mode chosen from the root DSE (and poll where the
//! directory cannot push or the operator asks); disables, mail changes,
//! renames, moves and deletions refused long before an `interval` of five
//! minutes could explain it; no change lost when the persistent search is
//! cut (slapd paused, killed, restarted, a connection cut or stalled on the
//! way to the DC), nor when it arrives during a full pass; polling taking
//! over while the push connection cannot be had; the mass-change guard; one
//! persistent search per store, held by the sync leader; `sync status` and
//! `/metrics`.
//!
//! On the DC: disables, deletions, UPN changes, renames and moves by
//! notification; a base below the domain's root; the guard over passes
//! that notifications start; one watcher per store, the sync leader; a
//! cut or stalled connection.
//!
//! Faults on the way to the shared DC go through a
//! [`FaultProxy`](crate::support::fault_proxy::FaultProxy): the DC itself
//! is never paused or restarted, as other tests use it meanwhile. Each
//! slapd test has a server of its own.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http::StatusCode;
use serde_json::Value;

use crate::ad::{ad_section, ad_section_under, password_of};
use crate::nodes::sync_node;
use crate::signin::{signed_in, SignIn};
use crate::support::admin::Admin;
use crate::support::fault_proxy::FaultProxy;
use crate::support::postgres::Database;
use crate::support::samba::{self, Samba};
use crate::support::slapd::Slapd;
use crate::support::Fedgate;
use crate::sync::{
    builder, directory_section, disabled_upns, eventually, is_deleted, passes, searches_under, set_disabled,
    sync_section, user_show, users, wait_first_pass,
};

const PW: &str = "Directory pw of a pushed user 1";
const POLL: Duration = Duration::from_millis(50);
/// `[sync]` in which only push can explain a change arriving within
/// seconds: incremental passes five minutes apart, full ones ten.
const PUSH_ONLY: &str = "interval = \"300s\"\nfull_every = \"10m\"";
/// How long a pushed change may take to reach sign-ins here: a deadline
/// for a busy machine, far below `interval`, not a latency figure
/// (`scripts/bench revoke` measures those).
const PUSHED: Duration = Duration::from_secs(5);
/// The Sync Request control and AD's change notification control.
const SYNCREPL: &str = "syncrepl";
const NOTIFICATION: &str = "notification";

fn mail(uid: &str) -> String {
    format!("{uid}@example.com")
}

/// A slapd with syncprov and the users `uids` (mail `<uid>@example.com`,
/// password [`PW`]).
fn push_directory(uids: &[&str]) -> Slapd {
    let slapd = Slapd::start_with_syncprov();
    for uid in uids {
        slapd.add_user(uid, &mail(uid), PW);
    }
    slapd
}

/// The `[directory]` and `[sync]` tables for `slapd` (reached at `url`,
/// its own or a proxy's) with `sync` lines.
fn sections_at(slapd: &Slapd, url: &str, sync: &str) -> [String; 2] {
    let directory = directory_section(slapd, Slapd::PEOPLE_DN, "timeout = \"2s\"\nconnect_timeout = \"2s\"");
    [directory.replace(&slapd.url(), url), sync_section(sync)]
}

/// `fedgate serve` syncing `slapd` with `sync` lines, with an admin
/// listener (for /metrics).
fn serve_at(slapd: &Slapd, url: &str, sync: &str) -> Fedgate {
    builder(&sections_at(slapd, url, sync)).admin().start()
}

fn serve(slapd: &Slapd, sync: &str) -> Fedgate {
    serve_at(slapd, &slapd.url(), sync)
}

fn event(fedgate: &Fedgate, message: &str) -> Value {
    fedgate.wait_log(Duration::from_secs(30), |v| v["message"] == message)
}

/// The server's push connection is up (its first "sync push connected"),
/// after the first full pass created the users.
fn wait_pushing(fedgate: &Fedgate) -> Value {
    wait_first_pass(fedgate);
    event(fedgate, "sync push connected")
}

/// Waits until `message` has been logged `n` times in all; returns the
/// `n`-th.
fn nth(fedgate: &Fedgate, message: &str, n: usize) -> Value {
    fedgate.wait_events(message, n)[n - 1].clone()
}

/// Sends `sign_in` until fedgate refuses it (401); panics, naming `what`,
/// when it still signs in `limit` after the directory write.
async fn refused_within(sign_in: &SignIn<'_>, limit: Duration, fedgate: &Fedgate, what: &str) -> Duration {
    let start = Instant::now();
    loop {
        let (status, _, _) = sign_in.send().await;
        if status == StatusCode::UNAUTHORIZED {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "{what}: still answered {status} {limit:?} after the directory change (incremental passes are \
             minutes apart, so only push can apply it); fedgate log:\n{}",
            fedgate.raw_logs()
        );
        tokio::time::sleep(POLL).await;
    }
}

/// An app password for each of `upns`, each signed in once (so its
/// verification is cached and a refusal must come from a revocation).
async fn warm_app_passwords(fedgate: &Fedgate, upns: &[String]) -> Vec<String> {
    let admin = fedgate.admin();
    admin.allow_app_passwords(true);
    let mut apps = Vec::new();
    for upn in upns {
        let app = admin.create_app_password(upn, "phone");
        SignIn::new(fedgate.plain, upn, &app).until(StatusCode::OK, POLL).await;
        apps.push(app);
    }
    apps
}

/// fedgate pushing from a directory, with a warm app password for each
/// of its users `upns`.
struct Pushing {
    fedgate: Fedgate,
    admin: Admin,
    upns: Vec<String>,
    apps: Vec<String>,
    /// When the push connection was up (ms since the epoch).
    since: i64,
}

impl Pushing {
    /// Waits for `fedgate`'s push connection, then warms an app password
    /// for each of `uids` (mail `<uid>@example.com`).
    async fn new(fedgate: Fedgate, uids: &[&str]) -> Pushing {
        wait_pushing(&fedgate);
        let since = unix_ms();
        let upns: Vec<String> = uids.iter().map(|u| mail(u)).collect();
        let apps = warm_app_passwords(&fedgate, &upns).await;
        let admin = fedgate.admin();
        Pushing {
            fedgate,
            admin,
            upns,
            apps,
            since,
        }
    }

    /// The `i`-th user signing in with their app password.
    fn app(&self, i: usize) -> SignIn<'_> {
        SignIn::new(self.fedgate.plain, &self.upns[i], &self.apps[i])
    }

    async fn refused(&self, i: usize, what: &str) {
        refused_within(&self.app(i), PUSHED, &self.fedgate, what).await;
    }
}

/// Sum of `field` over the "sync push applied" events and the "sync pass"
/// events logged so far.
fn applied(fedgate: &Fedgate, field: &str) -> u64 {
    fedgate
        .events("sync push applied")
        .iter()
        .chain(passes(fedgate).iter())
        .map(|v| v[field].as_u64().unwrap_or(0))
        .sum()
}

/// The passes that started at or after `since` (ms since the epoch).
fn passes_since(fedgate: &Fedgate, since: i64) -> Vec<Value> {
    passes(fedgate)
        .into_iter()
        .filter(|p| p["started_at"].as_i64().is_some_and(|t| t >= since))
        .collect()
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64
}

/// The value of the sample of `name` whose labels contain `label` (such
/// as `kind="add"`) on `/metrics`, or of its unlabelled sample for `""`.
async fn metric(admin: SocketAddr, name: &str, label: &str) -> Option<f64> {
    let (status, _, body) = crate::support::client::get(admin, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    let text = String::from_utf8_lossy(&body).into_owned();
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| line.split([' ', '{']).next() == Some(name))
        .find(|line| label.is_empty() || line.contains(label))
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
}

fn status_json(admin: &Admin) -> Value {
    admin.run(&["--json", "sync", "status"]).json()
}

/// The `push` line of `sync status`.
fn status_push_line(admin: &Admin) -> String {
    let text = admin.run(&["sync", "status"]).success();
    text.lines()
        .find(|l| l.starts_with("push "))
        .unwrap_or_else(|| panic!("no push line in `sync status`:\n{text}"))
        .to_owned()
}

/// The server logged that it polls, and why; runs incremental passes;
/// and holds no persistent search. Returns the "sync mode" event.
fn polling(fedgate: &Fedgate) -> Value {
    let mode = event(fedgate, "sync mode");
    assert_eq!(mode["mode"], "poll", "{mode}");
    assert!(mode["reason"].as_str().is_some_and(|r| !r.is_empty()), "{mode}");
    fedgate.wait_log(Duration::from_secs(10), |v| {
        v["message"] == "sync pass" && v["kind"] == "incremental" && v["outcome"] == "completed"
    });
    let connected = fedgate.events("sync push connected");
    assert!(connected.is_empty(), "a polling server pushes: {connected:?}");
    mode
}

/// Starts the node that will lead the sync and waits for its push
/// connection.
fn start_leader(node: crate::support::fedgate::Builder) -> Fedgate {
    let a = node.start();
    a.wait_log(Duration::from_secs(10), |v| {
        v["message"] == "leading the directory sync"
    });
    wait_pushing(&a);
    a
}

/// B, a node of the same store, has opened no push connection, and its
/// `sync status` names A's as the one; returns that status.
fn only_a_pushes(a: &Fedgate, b: &Fedgate) -> Value {
    assert!(
        b.events("sync push connected").is_empty(),
        "B opened a push connection: {}",
        b.raw_logs()
    );
    let status = status_json(&b.admin());
    assert!(
        status["push"]["node"]
            .as_str()
            .is_some_and(|n| n.ends_with(&format!(":{}", a.pid()))),
        "{status}"
    );
    status
}

/// Kills the leader A and waits for B to lead.
fn kill_leader(a: &mut Fedgate, b: &Fedgate) {
    a.signal("KILL");
    a.wait_exit(Duration::from_secs(10)).expect("A exits after SIGKILL");
    b.wait_log(Duration::from_secs(10), |v| {
        v["message"] == "leading the directory sync"
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_is_chosen_where_the_directory_supports_it_and_poll_otherwise() {
    // syncprov advertised and no mode set: push, by syncrepl.
    let slapd = push_directory(&["alice"]);
    let fedgate = serve(&slapd, "interval = \"1s\"");
    let mode = event(&fedgate, "sync mode");
    assert_eq!(mode["mode"], "push", "{mode}");
    assert_eq!(mode["method"], SYNCREPL, "{mode}");
    let connected = wait_pushing(&fedgate);
    assert_eq!(connected["server"], slapd.url(), "{connected}");
    assert_eq!(connected["resumed"], false, "a fresh store has no cookie: {connected}");
    drop(fedgate);

    // The operator asks for poll: no persistent search, passes every interval.
    let fedgate = serve(&slapd, "mode = \"poll\"\ninterval = \"1s\"");
    polling(&fedgate);
    drop(fedgate);

    // A slapd without syncprov cannot push: poll, saying why.
    let plain = Slapd::start();
    plain.add_user("bob", &mail("bob"), PW);
    let fedgate = serve(&plain, "mode = \"push\"\ninterval = \"1s\"");
    let mode = polling(&fedgate);
    assert_eq!(mode["method"], "none", "{mode}");
    // Poll as before: a disable arrives with the next pass.
    let admin = fedgate.admin();
    let app = warm_app_passwords(&fedgate, &[mail("bob")]).await.remove(0);
    plain.disable_user("bob");
    refused_within(
        &SignIn::new(fedgate.plain, &mail("bob"), &app),
        PUSHED,
        &fedgate,
        "poll fallback disable",
    )
    .await;
    assert_eq!(user_show(&admin, &mail("bob"))["enabled"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushed_disable_mail_change_rename_move_and_delete_are_applied_well_before_the_interval() {
    let uids = ["alice", "bob", "carol", "dave", "erin", "frank"];
    let slapd = push_directory(&uids);
    let push = Pushing::new(serve(&slapd, PUSH_ONLY), &uids).await;
    let (fedgate, admin, upns) = (&push.fedgate, &push.admin, &push.upns);

    // alice disabled (ppolicy lock).
    slapd.disable_user("alice");
    push.refused(0, "alice disabled").await;
    assert_eq!(user_show(admin, &upns[0])["enabled"], false);

    // bob's mail (the UPN) changed: the old name is refused, the user and
    // the app password carry over to the new one.
    let robert = mail("robert");
    slapd.modify(&format!(
        "dn: {}\nchangetype: modify\nreplace: mail\nmail: {robert}\n-\n",
        Slapd::user_dn("bob")
    ));
    push.refused(1, "bob's old UPN").await;
    let renamed = SignIn::new(fedgate.plain, &robert, &push.apps[1]);
    eventually("robert signs in with bob's app password", PUSHED, Some(fedgate), || {
        let out = admin.run(&["--json", "user", "show", &robert]);
        (out.code == 0).then_some(())
    })
    .await;
    renamed.until(StatusCode::OK, POLL).await;

    // carol renamed (modrdn): same UPN, new DN and login.
    slapd.rename_user("carol", "caroline");
    eventually("carol's new DN and login", PUSHED, Some(fedgate), || {
        let c = user_show(admin, &upns[2]);
        (c["directory"]["dn"] == Slapd::user_dn("caroline") && c["directory"]["login"] == "caroline").then_some(())
    })
    .await;
    signed_in(&push.app(2).send().await, "carol after her rename");

    // dave moved out of the synced base: he is no longer a user.
    slapd.modify(&format!(
        "dn: {}\nchangetype: modrdn\nnewrdn: uid=dave\ndeleteoldrdn: 1\nnewsuperior: ou=services,{}\n",
        Slapd::user_dn("dave"),
        Slapd::BASE_DN
    ));
    push.refused(3, "dave moved out of the base").await;

    // erin deleted: refused, and deleted in the store.
    slapd.delete_user("erin");
    push.refused(4, "erin deleted").await;
    assert!(is_deleted(admin, &upns[4]));

    // frank, untouched, signs in; no pass started since push connected,
    // so push applied every change.
    signed_in(&push.app(5).send().await, "frank");
    let since = passes_since(fedgate, push.since);
    assert!(since.is_empty(), "passes ran while push was up: {since:?}");
    assert!(applied(fedgate, "disabled") >= 1, "{}", fedgate.raw_logs());
    assert!(applied(fedgate, "deleted") >= 2, "{}", fedgate.raw_logs());
    for batch in fedgate.events("sync push applied") {
        assert_eq!(batch["server"], slapd.url(), "{batch}");
        for field in ["added", "modified", "renamed", "deleted", "disabled", "enabled"] {
            assert!(batch[field].is_u64(), "{field} in {batch}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_change_is_lost_when_slapd_is_paused_killed_or_restarted() {
    let uids = ["u0", "u1", "u2", "u3", "u4", "u5", "u6"];
    let mut slapd = push_directory(&uids);
    let port = slapd.url().rsplit(':').next().unwrap().parse::<u16>().unwrap();
    // Between fedgate and slapd, so the persistent search can be held down
    // while the harness writes to slapd directly.
    let proxy = FaultProxy::start(SocketAddr::from(([127, 0, 0, 1], port)));
    let url = format!("ldap://{}", proxy.addr());
    let push = Pushing::new(serve_at(&slapd, &url, PUSH_ONLY), &uids).await;
    let (fedgate, admin, upns) = (&push.fedgate, &push.admin, &push.upns);
    let connected = |fedgate: &Fedgate| fedgate.events("sync push connected").len();
    let lost = |fedgate: &Fedgate| fedgate.events("sync push lost").len();

    // Paused: the liveness check (every 5 s, answered within the 2 s
    // timeout) finds the search dead. Resumed but still cut off, u0 is
    // disabled; once the way is open the search resumes from its cookie.
    let (lost_before, connected_before) = (lost(fedgate), connected(fedgate));
    slapd.pause();
    let dropped = nth(fedgate, "sync push lost", lost_before + 1);
    assert_eq!(dropped["server"], url, "{dropped}");
    assert!(dropped["retry_in_ms"].is_u64(), "{dropped}");
    proxy.cut();
    slapd.resume();
    slapd.disable_user("u0");
    proxy.restore();
    let back = nth(fedgate, "sync push connected", connected_before + 1);
    assert_eq!(back["resumed"], true, "{back}");
    push.refused(0, "u0, disabled while the search was down").await;

    // Killed: u1 disabled and u2 deleted before the crash, u3 deleted after
    // the restart, all while the search was down.
    let (lost_before, connected_before) = (lost(fedgate), connected(fedgate));
    proxy.cut();
    nth(fedgate, "sync push lost", lost_before + 1);
    slapd.disable_user("u1");
    slapd.delete_user("u2");
    slapd.kill();
    slapd.restart();
    slapd.delete_user("u3");
    proxy.restore();
    let back = nth(fedgate, "sync push connected", connected_before + 1);
    assert_eq!(back["resumed"], true, "{back}");
    push.refused(1, "u1, disabled before slapd was killed").await;
    push.refused(2, "u2, deleted before slapd was killed").await;
    push.refused(3, "u3, deleted after slapd came back").await;
    assert!(is_deleted(admin, &upns[2]) && is_deleted(admin, &upns[3]));

    // Restarted (SIGTERM): the search reconnects by itself and resumes.
    let connected_before = connected(fedgate);
    slapd.restart();
    let back = nth(fedgate, "sync push connected", connected_before + 1);
    assert_eq!(back["resumed"], true, "{back}");
    slapd.delete_user("u4");
    push.refused(4, "u4, deleted after the restart").await;

    // Nobody else was touched.
    for i in [5, 6] {
        signed_in(&push.app(i).send().await, &upns[i]);
    }
    assert_eq!(user_show(admin, &upns[1])["enabled"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_takes_over_while_the_persistent_search_cannot_be_had_and_push_returns() {
    let uids = ["p0", "p1", "p2"];
    let mut slapd = push_directory(&uids);
    let push = Pushing::new(serve(&slapd, "interval = \"1s\"\nfull_every = \"10m\""), &uids).await;
    let (fedgate, admin, upns) = (&push.fedgate, &push.admin, &push.upns);
    // Push up: no incremental passes, though the interval is 1 s.
    slapd.disable_user("p0");
    push.refused(0, "p0, pushed").await;
    let since = passes_since(fedgate, push.since);
    assert!(since.is_empty(), "passes ran while push was up: {since:?}");

    // slapd comes back without syncprov: ordinary searches work, the
    // persistent search does not, so incremental passes carry the disable.
    let connected_before = fedgate.events("sync push connected").len();
    slapd.set_syncprov(false);
    slapd.restart();
    fedgate.wait_log(Duration::from_secs(15), |v| v["message"] == "sync push lost");
    let written = unix_ms();
    slapd.disable_user("p1");
    push.refused(1, "p1, while push is down").await;
    let polled = passes(fedgate);
    assert!(
        polled.iter().any(|p| p["kind"] == "incremental"
            && p["outcome"] == "completed"
            && p["disabled"].as_u64() >= Some(1)
            && p["started_at"].as_i64().unwrap_or(0) + p["duration_ms"].as_i64().unwrap_or(0) >= written),
        "no incremental pass applied the disable: {polled:?}"
    );
    assert_eq!(user_show(admin, &upns[1])["enabled"], false);

    // syncprov back: push reconnects and the passes stop.
    slapd.set_syncprov(true);
    slapd.restart();
    nth(fedgate, "sync push connected", connected_before + 1);
    slapd.delete_user("p2");
    push.refused(2, "p2, pushed again").await;
    assert!(is_deleted(admin, &upns[2]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_pushed_during_a_full_pass_is_applied_once_and_not_undone() {
    // Enough users, read in small pages, that a full pass is still under
    // way when the change is made.
    let slapd = Slapd::start_with_syncprov();
    slapd.add_generated_users("f", 1500, PW);
    // Full passes are due every 2 s (checked at each 1 s tick; with push up
    // the ticks run no incremental pass).
    let fedgate = serve(&slapd, "interval = \"1s\"\nfull_every = \"2s\"\npage_size = 10");
    let admin = fedgate.admin();
    wait_pushing(&fedgate);
    let upn = mail("f0");
    let app = warm_app_passwords(&fedgate, std::slice::from_ref(&upn)).await.remove(0);
    let (disabled_before, enabled_before) = (applied(&fedgate, "disabled"), applied(&fedgate, "enabled"));

    // f0, in the pass's first page, is disabled once the pass has read
    // several pages: the pass holds her as enabled, push says otherwise.
    let full_passes = |fedgate: &Fedgate| passes(fedgate).iter().filter(|p| p["kind"] == "full").count();
    let fulls_before = full_passes(&fedgate);
    let log_start = slapd.log().len();
    let deadline = Instant::now() + Duration::from_secs(20);
    while searches_under(&slapd.log()[log_start..], Slapd::PEOPLE_DN) < 5 {
        assert!(
            Instant::now() < deadline,
            "no full pass searched the directory; fedgate log:\n{}",
            fedgate.raw_logs()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let written = unix_ms();
    slapd.disable_user("f0");
    refused_within(&SignIn::new(fedgate.plain, &upn, &app), PUSHED, &fedgate, "f0").await;

    // The pass that ran during the change ends; f0 stays disabled, and the
    // next full pass finds nothing to do.
    let during = eventually(
        "the full pass under way to end",
        Duration::from_secs(30),
        Some(&fedgate),
        || {
            passes(&fedgate).into_iter().find(|p| {
                let start = p["started_at"].as_i64().unwrap_or(i64::MAX);
                let end = start + p["duration_ms"].as_i64().unwrap_or(0);
                p["kind"] == "full" && start <= written && end >= written
            })
        },
    )
    .await;
    assert_eq!(during["outcome"], "completed", "{during}");
    eventually("one more full pass", Duration::from_secs(30), Some(&fedgate), || {
        (full_passes(&fedgate) >= fulls_before + 2).then_some(())
    })
    .await;
    assert_eq!(
        user_show(&admin, &upn)["enabled"],
        false,
        "a full pass undid the pushed disable"
    );
    assert_eq!(
        SignIn::new(fedgate.plain, &upn, &app).send().await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        applied(&fedgate, "disabled") - disabled_before,
        1,
        "the disable was applied more than once (push batches and passes): {}",
        fedgate.raw_logs()
    );
    assert_eq!(
        applied(&fedgate, "enabled") - enabled_before,
        0,
        "f0 was enabled again on the way"
    );
    assert_eq!(disabled_upns(&admin), [upn]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pushed_mass_change_trips_the_guard_until_sync_run_force() {
    let slapd = Slapd::start_with_syncprov();
    slapd.add_generated_users("g", 40, PW);
    let fedgate = serve(
        &slapd,
        &format!("{PUSH_ONLY}\nmax_change_share = 0.10\nguard_floor = 10"),
    );
    let admin = fedgate.admin();
    wait_pushing(&fedgate);
    let last = mail("g39");
    let app = warm_app_passwords(&fedgate, std::slice::from_ref(&last))
        .await
        .remove(0);

    // Half the users disabled: past max(10 % of 40, 10), push stops.
    set_disabled(&slapd, "g", 0..20, true);
    let guarded = event(&fedgate, "sync push guarded");
    assert!(guarded.to_string().contains("--force"), "{guarded}");
    // What push had applied before the guard stays within the limit, and
    // nothing more is applied while the guard holds.
    let held = disabled_upns(&admin).len();
    assert!(held <= 10, "{held} users disabled past the guard");
    // One more disable: watched until push has received it (the counter of
    // received modifies moves), or for as long as a pushed change may take
    // if a guarded push reads no more; refused at no point.
    let metrics = fedgate.admin.expect("admin listener");
    let received = || metric(metrics, "fedgate_sync_changes_received_total", "kind=\"modify\"");
    let before = received().await.unwrap_or(0.0);
    slapd.disable_user("g39");
    let watched = Instant::now();
    loop {
        assert_eq!(
            SignIn::new(fedgate.plain, &last, &app).send().await.0,
            StatusCode::OK,
            "push applied a change while the guard held"
        );
        if received().await.unwrap_or(0.0) > before || watched.elapsed() > PUSHED {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    signed_in(
        &SignIn::new(fedgate.plain, &last, &app).send().await,
        "g39 under the guard",
    );
    assert_eq!(disabled_upns(&admin).len(), held);

    // The operator forces a pass: everything is applied, and push applies
    // changes again.
    let forced = admin.run(&["--json", "sync", "run", "--force"]).json();
    assert_eq!(forced["outcome"], "completed", "{forced}");
    assert_eq!(disabled_upns(&admin).len(), 21);
    refused_within(
        &SignIn::new(fedgate.plain, &last, &app),
        PUSHED,
        &fedgate,
        "g39 after --force",
    )
    .await;
    slapd.delete_user("g30");
    eventually("g30 deleted by push after the guard", PUSHED, Some(&fedgate), || {
        is_deleted(&admin, &mail("g30")).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_sync_leader_holds_the_persistent_search_and_another_takes_over() {
    let slapd = push_directory(&["carol", "dave"]);
    let db = Database::new();
    // The lead lasts one interval past the leader's last renewal.
    let sections = sections_at(&slapd, &slapd.url(), "interval = \"1s\"\nfull_every = \"10m\"");
    let node = || sync_node(&db, &sections);
    let mut a = start_leader(node());
    let b = node().start();
    let upns = [mail("carol"), mail("dave")];
    let apps = warm_app_passwords(&b, &upns).await;

    // A change reaches B through A's search and the store; B has no search.
    slapd.disable_user("carol");
    refused_within(
        &SignIn::new(b.plain, &upns[0], &apps[0]),
        PUSHED,
        &b,
        "carol, pushed to the leader",
    )
    .await;
    assert!(!a.events("sync push applied").is_empty(), "{}", a.raw_logs());
    assert!(b.events("leading the directory sync").is_empty());
    only_a_pushes(&a, &b);

    // A dies: B leads, opens the search from the stored cookie, applies.
    kill_leader(&mut a, &b);
    let connected = event(&b, "sync push connected");
    assert_eq!(
        connected["resumed"], true,
        "the cookie is in the shared store: {connected}"
    );
    slapd.delete_user("dave");
    refused_within(
        &SignIn::new(b.plain, &upns[1], &apps[1]),
        PUSHED,
        &b,
        "dave, pushed to B",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_status_and_metrics_show_the_push_connection_and_changes_by_kind() {
    let mut slapd = push_directory(&["alice", "bob", "carol"]);
    let fedgate = serve(&slapd, PUSH_ONLY);
    let admin = fedgate.admin();
    let metrics = fedgate.admin.expect("admin listener");
    wait_pushing(&fedgate);

    let line = status_push_line(&admin);
    assert!(
        line.contains(&format!("connected ({SYNCREPL}) to {}", slapd.url())) && line.contains("last change never"),
        "{line}"
    );
    let status = status_json(&admin);
    assert_eq!(status["mode"], "push", "{status}");
    let push = &status["push"];
    assert_eq!(push["method"], SYNCREPL, "{push}");
    assert_eq!(push["connected"], true, "{push}");
    assert_eq!(push["server"], slapd.url(), "{push}");
    assert!(push["since"].is_string(), "{push}");
    assert!(push["last_change_at"].is_null(), "{push}");
    assert!(
        push["node"]
            .as_str()
            .is_some_and(|n| n.ends_with(&format!(":{}", fedgate.pid()))),
        "{push}"
    );
    assert_eq!(metric(metrics, "fedgate_sync_push_connected", "").await, Some(1.0));

    // One change of each kind.
    slapd.add_user("dave", &mail("dave"), PW);
    slapd.modify(&format!(
        "dn: {}\nchangetype: modify\nreplace: displayName\ndisplayName: Alice A\n-\n",
        Slapd::user_dn("alice")
    ));
    slapd.rename_user("bob", "robert");
    slapd.delete_user("carol");
    for kind in ["add", "modify", "rename", "delete"] {
        let label = format!("kind=\"{kind}\"");
        let name = "fedgate_sync_changes_received_total";
        let mut seen = None;
        let deadline = Instant::now() + PUSHED;
        while seen.is_none_or(|v: f64| v < 1.0) && Instant::now() < deadline {
            seen = metric(metrics, name, &label).await;
            tokio::time::sleep(POLL).await;
        }
        assert!(seen.is_some_and(|v| v >= 1.0), "{name}{{{label}}} is {seen:?}");
    }
    eventually("carol deleted", PUSHED, Some(&fedgate), || {
        is_deleted(&admin, &mail("carol")).then_some(())
    })
    .await;
    let push = status_json(&admin)["push"].clone();
    assert!(push["last_change_at"].is_string(), "{push}");
    assert!(!status_push_line(&admin).contains("never"));
    assert!(users(&admin).contains_key(&mail("dave")));

    // Down: said so, and the gauge drops.
    slapd.stop();
    fedgate.wait_log(Duration::from_secs(15), |v| v["message"] == "sync push lost");
    assert!(
        status_push_line(&admin).contains("down ("),
        "{}",
        status_push_line(&admin)
    );
    assert_eq!(status_json(&admin)["push"]["connected"], false);
    assert_eq!(metric(metrics, "fedgate_sync_push_connected", "").await, Some(0.0));
    slapd.restart();
    drop(fedgate);

    // Poll mode: off.
    let fedgate = serve(&slapd, "mode = \"poll\"\ninterval = \"1s\"");
    wait_first_pass(&fedgate);
    let line = status_push_line(&fedgate.admin());
    // "off (poll mode)", or the setting that makes it so.
    assert!(line.contains("off (") && line.contains("poll"), "{line}");
    // No node of this store ever ran a persistent search.
    let status = status_json(&fedgate.admin());
    assert_eq!(status["mode"], "poll", "{status}");
    assert!(status["push"].is_null(), "{status}");
}

/// The fault proxy carries fedgate's LDAP sessions, and its cut is what
/// the push tests take it for: a directory fedgate cannot reach. Polling
/// a slapd without syncprov (so in either mode), a pass through the cut
/// proxy fails naming the proxy, and a pass after the restore applies
/// what changed meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passes_through_a_cut_fault_proxy_fail_and_resume_after_the_restore() {
    let slapd = Slapd::start();
    slapd.add_user("q0", &mail("q0"), PW);
    let port = slapd.url().rsplit(':').next().unwrap().parse::<u16>().unwrap();
    let proxy = FaultProxy::start(SocketAddr::from(([127, 0, 0, 1], port)));
    let url = format!("ldap://{}", proxy.addr());
    let fedgate = serve_at(&slapd, &url, "interval = \"1s\"\nfull_every = \"10m\"");
    wait_first_pass(&fedgate);
    assert!(proxy.accepted() >= 1, "the pass did not go through the proxy");
    let upn = mail("q0");
    let app = warm_app_passwords(&fedgate, std::slice::from_ref(&upn)).await.remove(0);
    let q0 = SignIn::new(fedgate.plain, &upn, &app);

    proxy.cut();
    let cut_at = unix_ms();
    let failed = fedgate.wait_log(Duration::from_secs(10), |v| {
        v["message"] == "sync pass" && v["outcome"] == "failed" && v["started_at"].as_i64() >= Some(cut_at)
    });
    assert!(failed.to_string().contains(&proxy.port().to_string()), "{failed}");
    slapd.disable_user("q0");
    signed_in(&q0.send().await, "q0 while the directory cannot be reached");

    proxy.restore();
    refused_within(&q0, PUSHED, &fedgate, "q0, disabled while cut").await;
    assert_eq!(user_show(&fedgate.admin(), &upn)["enabled"], false);
}

/// The `[directory]` and `[sync]` tables for the DC (at `url`, its own
/// LDAPS URL or a proxy's) with push-only passes.
fn ad_push_sections(dc: &Samba, url: &str) -> Vec<String> {
    vec![
        ad_section(
            dc,
            &format!("urls = [\"{url}\"]\ntimeout = \"2s\"\nconnect_timeout = \"2s\""),
        ),
        format!("[sync]\n{PUSH_ONLY}\n"),
    ]
}

fn ad_serve(sections: &[String]) -> Fedgate {
    sections
        .iter()
        .fold(Fedgate::builder().admin(), |b, s| b.section(s))
        .cloud_route("/whoami", "builtin:whoami", "")
        .start()
}

/// The DC's users `logins` (made by this test), synced and with warm app
/// passwords on `fedgate`.
async fn ad_users(fedgate: &Fedgate, logins: &[&str]) -> (Vec<String>, Vec<String>) {
    fedgate.wait_log(Duration::from_secs(60), |v| {
        v["message"] == "sync pass" && v["kind"] == "full" && v["outcome"] == "completed"
    });
    let upns: Vec<String> = logins.iter().map(|l| Samba::upn(l)).collect();
    let apps = warm_app_passwords(fedgate, &upns).await;
    (upns, apps)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ad_pushes_a_disable_and_a_deletion_through_change_notifications() {
    let dc = Samba::shared();
    let logins = ["pushdis", "pushdel", "pushkeep"];
    for login in logins {
        dc.add_user(login, &password_of(login));
    }
    let fedgate = ad_serve(&ad_push_sections(dc, &dc.ldaps_url()));
    let mode = event(&fedgate, "sync mode");
    assert_eq!(mode["mode"], "push", "{mode}");
    assert_eq!(mode["method"], NOTIFICATION, "{mode}");
    let (upns, apps) = ad_users(&fedgate, &logins).await;
    event(&fedgate, "sync push connected");
    let app_of = |i: usize| SignIn::new(fedgate.plain, &upns[i], &apps[i]);

    dc.disable(&Samba::user_dn(logins[0]));
    refused_within(&app_of(0), PUSHED, &fedgate, "AD disable").await;
    dc.delete(&Samba::user_dn(logins[1]));
    refused_within(&app_of(1), PUSHED, &fedgate, "AD deletion").await;
    assert!(is_deleted(&fedgate.admin(), &upns[1]));
    signed_in(&app_of(2).send().await, "the untouched user");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ad_notifications_survive_a_cut_connection_and_a_stall_is_noticed() {
    let dc = Samba::shared();
    let logins = ["pushcut0", "pushcut1", "pushcut2", "pushstall"];
    for login in logins {
        dc.add_user(login, &password_of(login));
    }
    let proxy = FaultProxy::start(SocketAddr::from((dc.ip(), 636)));
    let url = format!("ldaps://{}", proxy.addr());
    let fedgate = ad_serve(&ad_push_sections(dc, &url));
    let (upns, apps) = ad_users(&fedgate, &logins).await;
    let connected = event(&fedgate, "sync push connected");
    assert_eq!(connected["server"], url, "{connected}");
    let app_of = |i: usize| SignIn::new(fedgate.plain, &upns[i], &apps[i]);

    // Cut: lost; changes made meanwhile arrive once the way is open again.
    let connected_before = fedgate.events("sync push connected").len();
    proxy.cut();
    let lost = event(&fedgate, "sync push lost");
    assert_eq!(lost["server"], url, "{lost}");
    dc.disable(&Samba::user_dn(logins[0]));
    dc.delete(&Samba::user_dn(logins[1]));
    proxy.restore();
    nth(&fedgate, "sync push connected", connected_before + 1);
    refused_within(&app_of(0), PUSHED, &fedgate, "AD disable while cut").await;
    refused_within(&app_of(1), PUSHED, &fedgate, "AD deletion while cut").await;
    signed_in(&app_of(2).send().await, "the untouched user");

    // Stall: the liveness read (every 5 s, answered within the 2 s
    // timeout) finds the connection dead.
    let lost_before = fedgate.events("sync push lost").len();
    let connected_before = fedgate.events("sync push connected").len();
    proxy.stall();
    let stalled = Instant::now();
    // 5 s + the timeout, and a little for a busy machine.
    let deadline = Duration::from_secs(5) + Duration::from_secs(2) + Duration::from_secs(3);
    eventually("sync push lost after the stall", deadline, Some(&fedgate), || {
        (fedgate.events("sync push lost").len() > lost_before).then_some(())
    })
    .await;
    eprintln!("a stalled DC connection was dropped after {:?}", stalled.elapsed());
    proxy.restore();
    nth(&fedgate, "sync push connected", connected_before + 1);
    dc.disable(&Samba::user_dn(logins[3]));
    refused_within(&app_of(3), PUSHED, &fedgate, "AD disable after the stall").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ad_pushes_a_upn_change_a_rename_and_a_move_and_status_and_metrics_show_them() {
    let dc = Samba::shared();
    let logins = ["pushupn", "pushren", "pushmove", "pushstay"];
    for login in logins {
        dc.add_user(login, &password_of(login));
    }
    let fedgate = ad_serve(&ad_push_sections(dc, &dc.ldaps_url()));
    let (upns, apps) = ad_users(&fedgate, &logins).await;
    event(&fedgate, "sync push connected");
    let admin = fedgate.admin();
    let metrics = fedgate.admin.expect("admin listener");
    let app_of = |i: usize| SignIn::new(fedgate.plain, &upns[i], &apps[i]);
    let status = status_json(&admin);
    assert_eq!(status["mode"], "push", "{status}");
    assert_eq!(status["push"]["method"], NOTIFICATION, "{status}");
    assert_eq!(status["push"]["connected"], true, "{status}");
    assert_eq!(status["push"]["server"], dc.ldaps_url(), "{status}");
    assert_eq!(metric(metrics, "fedgate_sync_push_connected", "").await, Some(1.0));

    // A new UPN: the old name is refused, the user and the app password
    // carry over to the new one.
    let new_upn = Samba::upn("pushupn2");
    dc.modify(&format!(
        "dn: {}\nchangetype: modify\nreplace: userPrincipalName\nuserPrincipalName: {new_upn}\n-\n",
        Samba::user_dn(logins[0])
    ));
    refused_within(&app_of(0), PUSHED, &fedgate, "AD: the old UPN").await;
    SignIn::new(fedgate.plain, &new_upn, &apps[0])
        .until(StatusCode::OK, POLL)
        .await;

    // Renamed (new CN, sAMAccountName and UPN): the same user.
    let renamed_dn = dc.rename(&Samba::user_dn(logins[1]), "pushren2");
    refused_within(&app_of(1), PUSHED, &fedgate, "AD: the name before the rename").await;
    let renamed = Samba::upn("pushren2");
    SignIn::new(fedgate.plain, &renamed, &apps[1])
        .until(StatusCode::OK, POLL)
        .await;
    assert_eq!(user_show(&admin, &renamed)["directory"]["dn"], renamed_dn);

    // Moved to another OU within the base: the same user at a new DN.
    let moved_dn = dc.move_to(&Samba::user_dn(logins[2]), samba::MOVED_DN);
    eventually("the moved user's new DN", PUSHED, Some(&fedgate), || {
        (user_show(&admin, &upns[2])["directory"]["dn"] == moved_dn).then_some(())
    })
    .await;
    signed_in(&app_of(2).send().await, "the moved user");
    signed_in(&app_of(3).send().await, "the untouched user");

    assert!(
        metric(metrics, "fedgate_sync_changes_received_total", "kind=\"modify\"")
            .await
            .is_some_and(|v| v >= 3.0),
        "{}",
        fedgate.raw_logs()
    );
    let push = status_json(&admin)["push"].clone();
    assert!(push["last_change_at"].is_string(), "{push}");
}

/// Windows refuses a subtree notification below a naming context's root,
/// so for an OU as `base_dn` the domain's root is watched: changes in the
/// OU arrive, and a mass change there, arriving as many notified passes,
/// trips the guard until `sync run --force`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ad_push_under_an_ou_watches_the_domain_and_a_mass_change_trips_the_guard() {
    let dc = Samba::shared();
    let ou = format!("OU=PushGuard,{}", samba::BASE_DN);
    dc.modify(&format!("dn: {ou}\nchangetype: add\nobjectClass: organizationalUnit\n"));
    let logins: Vec<String> = (0..12).map(|i| format!("pushg{i}")).collect();
    let dns: Vec<String> = logins
        .iter()
        .map(|login| {
            dc.add_user_under(login, &ou, &password_of(login));
            format!("CN={login},{ou}")
        })
        .collect();
    let sections = vec![
        ad_section_under(
            dc,
            &ou,
            &format!(
                "urls = [\"{}\"]\ntimeout = \"2s\"\nconnect_timeout = \"2s\"",
                dc.ldaps_url()
            ),
        ),
        format!("[sync]\n{PUSH_ONLY}\nmax_change_share = 0.10\nguard_floor = 3\n"),
    ];
    let fedgate = ad_serve(&sections);
    let login_refs: Vec<&str> = logins.iter().map(String::as_str).collect();
    let (upns, apps) = ad_users(&fedgate, &login_refs).await;
    event(&fedgate, "sync push connected");
    let admin = fedgate.admin();
    assert_eq!(users(&admin).len(), 12, "only the OU's users are synced");
    let app_of = |i: usize| SignIn::new(fedgate.plain, &upns[i], &apps[i]);

    // Disables in the OU arrive by notification, each in a pass of its
    // own (applied before the next is made): three are within
    // max(10 % of 12, 3); the fourth, counted with them, trips the guard.
    for (i, dn) in dns[..3].iter().enumerate() {
        dc.disable(dn);
        refused_within(&app_of(i), PUSHED, &fedgate, "AD: a disable in the OU").await;
    }
    dc.disable(&dns[3]);
    let guarded = fedgate.wait_log(Duration::from_secs(30), |v| {
        v["message"] == "sync pass" && v["outcome"] == "guarded"
    });
    assert!(guarded.to_string().contains("--force"), "{guarded}");
    signed_in(&app_of(3).send().await, "the disable the guard holds back");
    // More of the mass change: held back too, once a pass has seen it all.
    for dn in &dns[4..8] {
        dc.disable(dn);
    }
    fedgate.wait_log(Duration::from_secs(30), |v| {
        v["message"] == "sync pass" && v["outcome"] == "guarded" && v["disabled"].as_u64() >= Some(5)
    });
    assert_eq!(disabled_upns(&admin).len(), 3);
    let push = status_json(&admin)["push"].clone();
    assert!(
        push["error"].as_str().is_some_and(|e| e.contains("--force")),
        "sync status shows the guard: {push}"
    );
    signed_in(&app_of(8).send().await, "a user the mass change did not touch");

    let forced = admin.run(&["--json", "sync", "run", "--force"]).json();
    assert_eq!(forced["outcome"], "completed", "{forced}");
    assert_eq!(disabled_upns(&admin).len(), 8);
    refused_within(
        &app_of(7),
        PUSHED,
        &fedgate,
        "AD: the last of the mass change after --force",
    )
    .await;
    // After --force, what came before counts no more: one more disable is
    // pushed again.
    dc.disable(&dns[9]);
    refused_within(&app_of(9), PUSHED, &fedgate, "AD: a disable after --force").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ad_notifications_are_held_by_the_sync_leader_only_and_another_takes_over() {
    let dc = Samba::shared();
    let logins = ["pushlead0", "pushlead1"];
    for login in logins {
        dc.add_user(login, &password_of(login));
    }
    let db = Database::new();
    // The lead lasts one interval past the leader's last renewal.
    let sections = vec![
        ad_section(
            dc,
            &format!(
                "urls = [\"{}\"]\ntimeout = \"2s\"\nconnect_timeout = \"2s\"",
                dc.ldaps_url()
            ),
        ),
        "[sync]\ninterval = \"1s\"\nfull_every = \"10m\"\n".to_owned(),
    ];
    let node = || sync_node(&db, &sections);
    let mut a = start_leader(node());
    let b = node().start();
    let upns: Vec<String> = logins.iter().map(|l| Samba::upn(l)).collect();
    let apps = warm_app_passwords(&b, &upns).await;

    // A change reaches B through A's notifications and the store; B
    // watches nothing.
    dc.disable(&Samba::user_dn(logins[0]));
    refused_within(
        &SignIn::new(b.plain, &upns[0], &apps[0]),
        PUSHED,
        &b,
        "AD: a disable notified to the leader",
    )
    .await;
    assert!(!a.events("sync pass").is_empty(), "{}", a.raw_logs());
    let status = only_a_pushes(&a, &b);
    assert_eq!(status["push"]["method"], NOTIFICATION, "{status}");

    // A dies: B leads and watches the DC itself.
    kill_leader(&mut a, &b);
    event(&b, "sync push connected");
    dc.delete(&Samba::user_dn(logins[1]));
    refused_within(
        &SignIn::new(b.plain, &upns[1], &apps[1]),
        PUSHED,
        &b,
        "AD: a deletion notified to B",
    )
    .await;
}
