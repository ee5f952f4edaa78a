//! A store that vanishes or breaks under a running server: its SQLite files
//! deleted, or its header overwritten. The server must notice (`/readyz`
//! not ready, one error in the log however long it lasts), stop answering
//! from a view it can no longer refresh once that view is older than
//! `[store] max_staleness` (503 `store_unavailable`, warm sign-ins
//! included), and the command line must refuse rather than create a new,
//! empty store. Coming back needs a restart with the store restored.

use std::path::Path;
use std::time::{Duration, Instant};

use http::StatusCode;

use crate::support::client::{basic, get, get_with};
use crate::support::Fedgate;

const USER: &str = "mallory@corp.example.com";
/// The bound the server runs with here.
const MAX_STALENESS: Duration = Duration::from_secs(1);
/// What a check every 200 ms, and a loaded machine, may add to a bound.
const SLACK: Duration = Duration::from_millis(1500);

/// A server with the admin endpoint, a `cloud` route and a user whose app
/// password has signed in once (so the next sign-in is a warm one, which
/// needs no store at all).
async fn server_with_a_warm_sign_in() -> (Fedgate, String) {
    let fg = Fedgate::builder()
        .admin()
        .store("max_staleness = \"1s\"")
        .cloud_route("/whoami", "builtin:whoami", "")
        .start();
    let admin = fg.admin();
    admin.add_user(USER, "enforced", None);
    admin.allow_app_passwords(true);
    let password = admin.create_app_password(USER, "phone");
    let deadline = Instant::now() + Duration::from_secs(5);
    while sign_in(&fg, &password).await != StatusCode::OK {
        assert!(Instant::now() < deadline, "the app password never signed in");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (fg, password)
}

async fn sign_in(fg: &Fedgate, password: &str) -> StatusCode {
    get_with(fg.plain, "/whoami", &[("authorization", basic(USER, password))])
        .await
        .0
}

async fn readyz(fg: &Fedgate) -> (StatusCode, String) {
    let (status, _, body) = get(fg.admin.expect("admin listener"), "/readyz").await;
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Polls `/readyz` until it is not ready; returns its body.
async fn wait_not_ready(fg: &Fedgate, within: Duration) -> String {
    let started = Instant::now();
    loop {
        let (status, body) = readyz(fg).await;
        if status == StatusCode::SERVICE_UNAVAILABLE {
            return body;
        }
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(
            started.elapsed() < within,
            "/readyz still ready {within:?} after the store broke; log:\n{}",
            fg.raw_logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls the warm sign-in until it is refused; asserts how, and that it
/// happened within the bound.
async fn wait_refused(fg: &Fedgate, password: &str, broke: Instant) {
    loop {
        let (status, headers, _) = get_with(fg.plain, "/whoami", &[("authorization", basic(USER, password))]).await;
        if status != StatusCode::OK {
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
            assert!(headers.contains_key("retry-after"), "{headers:?}");
            break;
        }
        assert!(
            broke.elapsed() < MAX_STALENESS + SLACK,
            "a warm sign-in still works {:?} after the store broke (bound {MAX_STALENESS:?}); log:\n{}",
            broke.elapsed(),
            fg.raw_logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let refused = fg.wait_log(Duration::from_secs(5), |v| {
        v["target"] == "fedgate::audit" && v["reason"] == "store_unavailable"
    });
    assert_eq!(refused["success"], false, "{refused}");
}

fn store_errors(fg: &Fedgate) -> usize {
    fg.events("store unavailable: not ready; sign-ins are refused once the view is older than max_staleness")
        .len()
}

fn remove_database(path: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let file = format!("{}{suffix}", path.display());
        match std::fs::remove_file(&file) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => panic!("cannot remove {file}: {err}"),
        }
    }
}

/// The same error logged once, however many polls see it: the server has
/// polled a few times since the first one.
fn assert_logged_once(fg: &Fedgate) {
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(store_errors(fg), 1, "log:\n{}", fg.raw_logs());
    let warnings_per_poll = fg.events("cannot read store changes; retrying").len();
    assert_eq!(warnings_per_poll, 0, "a warning every poll is back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_store_files_stop_the_server_answering_and_the_cli_creates_nothing() {
    let (fg, password) = server_with_a_warm_sign_in().await;
    let store = fg.store_path();
    let (status, body) = readyz(&fg).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    remove_database(&store);
    let broke = Instant::now();
    let body = wait_not_ready(&fg, Duration::from_secs(2)).await;
    assert!(body.contains("was removed"), "/readyz says {body:?}");
    wait_refused(&fg, &password, broke).await;
    assert_logged_once(&fg);

    // Every admin command refuses, names the key and the path, and leaves
    // no new store behind.
    for args in [&["user", "list"][..], &["app-password", "list", USER][..]] {
        let out = fg.cli(args);
        assert_eq!(out.code, 2, "`fedgate {}`: {}{}", out.command, out.stdout, out.stderr);
        assert!(
            out.stderr.contains("store.url") && out.stderr.contains(&store.display().to_string()),
            "{}",
            out.stderr
        );
        assert!(!store.exists(), "`fedgate {}` created {}", out.command, store.display());
    }
    // Still refused a while later: the server does not come back on its
    // own connections to the unlinked file.
    assert_eq!(sign_in(&fg, &password).await, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_store_file_stops_the_server_answering() {
    use std::io::{Seek, Write};
    let (fg, password) = server_with_a_warm_sign_in().await;
    let store = fg.store_path();
    let mut file = std::fs::OpenOptions::new().write(true).open(&store).unwrap();
    file.seek(std::io::SeekFrom::Start(0)).unwrap();
    file.write_all(b"overwritten header bytes........").unwrap();
    file.sync_all().unwrap();
    drop(file);
    let broke = Instant::now();

    let body = wait_not_ready(&fg, Duration::from_secs(2)).await;
    assert!(body.contains("header is damaged"), "/readyz says {body:?}");
    wait_refused(&fg, &password, broke).await;
    assert_logged_once(&fg);
    // Sign-in records that cannot be written are counted, not lost silently.
    let (_, _, metrics) = get(fg.admin.unwrap(), "/metrics").await;
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(metrics.contains("fedgate_store_up 0"), "{metrics}");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, _, metrics) = get(fg.admin.unwrap(), "/metrics").await;
        // Listed (at 0) from the start: wait for it to count.
        let unwritten = String::from_utf8_lossy(&metrics)
            .lines()
            .find_map(|l| l.strip_prefix("fedgate_audit_unwritten_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        if unwritten > 0.0 {
            break;
        }
        assert!(Instant::now() < deadline, "unwritten records are not counted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // (What the command line then reads depends on whether the WAL still
    // holds a good copy of the first page; the server does not bet on it.)
}
