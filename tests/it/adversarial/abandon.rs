//! A sign-in abandoned while the directory checks its password still
//! counts: a client that resets its HTTP/2 stream mid-bind (or closes its
//! connection) cannot take the attempt back, so cancelling buys no binds
//! past the lockout threshold and cannot drive the directory's own lockout.
//! Nor does filling the hash pool: a directory password is then not checked
//! at all.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::signin::SignIn;
use crate::support::client::basic;
use crate::support::slapd::Slapd;
use crate::support::Fedgate;

use super::request::h2raw::{frame, headers, settings, PREFACE};

const ALICE_PW: &str = "Alice's directory pw 1";

/// RST_STREAM with CANCEL: the client no longer wants the answer.
fn cancel(stream: u32) -> Vec<u8> {
    frame(3, 0, stream, &8u32.to_be_bytes())
}

/// An HTTP/2 connection (prior knowledge) whose frames from the server are
/// read and thrown away, SETTINGS acknowledged, so it stays open.
async fn h2_connection(addr: SocketAddr) -> tokio::net::tcp::OwnedWriteHalf {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    write.write_all(PREFACE).await.unwrap();
    write.write_all(&settings()).await.unwrap();
    let (ack_tx, mut ack_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    tokio::spawn(async move {
        let mut head = [0u8; 9];
        while read.read_exact(&mut head).await.is_ok() {
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let mut payload = vec![0u8; len];
            if read.read_exact(&mut payload).await.is_err() {
                break;
            }
            if head[3] == 4 && head[4] & 1 == 0 && ack_tx.send(()).is_err() {
                break;
            }
        }
    });
    // The server's SETTINGS, acknowledged before anything else is sent.
    tokio::time::timeout(Duration::from_secs(5), ack_rx.recv())
        .await
        .expect("no SETTINGS from the server")
        .expect("connection closed");
    write.write_all(&frame(4, 1, 0, &[])).await.unwrap();
    write
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// fedgate on `slapd` with `threshold = 3`, no cache, one service
/// connection and no sync passes.
fn with_directory(slapd: &Slapd, builder: crate::support::fedgate::Builder) -> Fedgate {
    builder
        .section(&format!(
            "[directory]\n\
             urls = [\"{}\"]\n\
             bind_dn = \"{}\"\n\
             bind_password_file = \"{}\"\n\
             base_dn = \"{}\"\n\
             user_filter = \"(&(objectClass=inetOrgPerson)(mail={{upn}}))\"\n\
             login_filter = \"(&(objectClass=inetOrgPerson)(uid={{login}}))\"\n\
             pool_size = 1\n\
             cache_ttl = \"0s\"\n\
             timeout = \"10s\"\n\
             [sync]\n\
             enabled = false\n\
             [lockout]\n\
             threshold = 3\n\
             source_threshold = 0\n",
            slapd.url(),
            slapd.service_dn(),
            slapd.service_password_file().display(),
            Slapd::PEOPLE_DN,
        ))
        .cloud_route("/whoami", "builtin:whoami", "")
        .start()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_reset_mid_bind_still_counts_toward_lockout() {
    let slapd = Slapd::start();
    slapd.add_user("alice", "alice@example.com", ALICE_PW);
    let fg = with_directory(&slapd, Fedgate::builder());
    // The first sign-in records alice, so the attempts below are one bind
    // each to her known DN.
    SignIn::new(fg.plain, "alice@example.com", ALICE_PW)
        .until(StatusCode::OK, Duration::from_millis(50))
        .await;
    let asked = || fg.events("password check sent to the directory").len();
    let abandoned = || fg.events("request").iter().filter(|e| e["status"] == 0).count();
    // The log is read as it comes: the first sign-in's event is in first.
    wait_until("the first sign-in's directory check in the log", || asked() == 1).await;
    let asked_before = asked();
    let binds_before = slapd.bind_count();

    let authority = fg.plain.to_string();
    let mut conn = h2_connection(fg.plain).await;
    for i in 0..5u32 {
        let stream = 2 * i + 1;
        let wrong = format!("wrong password {i}");
        let authorization = basic("alice@example.com", &wrong);
        slapd.pause();
        conn.write_all(&headers(
            stream,
            &[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/whoami"),
                (":authority", &authority),
                ("authorization", authorization.to_str().unwrap()),
            ],
        ))
        .await
        .unwrap();
        // Locked out after three: the rest are refused before any bind.
        if i < 3 {
            wait_until("the password to be sent to the directory", || {
                asked() == asked_before + i as usize + 1
            })
            .await;
        }
        let gone = abandoned();
        conn.write_all(&cancel(stream)).await.unwrap();
        if i < 3 {
            // fedgate has dropped the request: nobody waits for the bind now.
            wait_until("the reset request to be logged", || abandoned() == gone + 1).await;
        }
        slapd.resume();
        if i < 3 {
            wait_until("the abandoned bind to reach slapd", || {
                slapd.bind_count() - binds_before == u64::from(i) + 1
            })
            .await;
            wait_until("the abandoned attempt to be counted", || {
                fg.events("sign-in abandoned during its directory check: counted as a wrong secret")
                    .len()
                    == i as usize + 1
            })
            .await;
        }
    }
    // Three wrong passwords reached the directory and were counted: a
    // fourth is not checked, whoever waits for its answer.
    let (status, _, _) = SignIn::new(fg.plain, "alice@example.com", "wrong password 9")
        .send()
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        asked() - asked_before,
        3,
        "only the three counted attempts may be sent to the directory"
    );
}

/// With the hash pool full, a directory password is not checked at all:
/// the refusal's hash is reserved before the bind, so the answer is
/// `overloaded` at once and nothing goes to the directory (before, the bind
/// went out and its refusal came back as a quick 503, skipping
/// `failure_delay`: a guesser who kept the pool busy got fast answers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_hash_pool_sends_no_password_to_the_directory() {
    let slapd = Slapd::start();
    slapd.add_user("alice", "alice@example.com", ALICE_PW);
    slapd.add_user("bob", "bob@example.com", ALICE_PW);
    let fg = with_directory(
        &slapd,
        Fedgate::builder().auth("hash_workers = 1").auth("hash_queue = 0"),
    );
    for user in ["alice@example.com", "bob@example.com"] {
        SignIn::new(fg.plain, user, ALICE_PW)
            .until(StatusCode::OK, Duration::from_millis(50))
            .await;
    }
    let asked = || fg.events("password check sent to the directory").len();
    wait_until("the first sign-ins' directory checks in the log", || asked() == 2).await;

    // alice's wrong password holds the pool's one place while slapd is
    // stopped: her refusal will need its hash.
    slapd.pause();
    let addr = fg.plain;
    let held = tokio::spawn(async move { SignIn::new(addr, "alice@example.com", "wrong 1").send().await });
    wait_until("alice's password to be sent to the directory", || asked() == 3).await;

    let started = Instant::now();
    let (status, headers, _) = SignIn::new(fg.plain, "bob@example.com", "wrong 2").send().await;
    let took = started.elapsed();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(headers.contains_key(http::header::RETRY_AFTER));
    assert!(took < Duration::from_secs(2), "answered after {took:?}");
    assert_eq!(asked(), 3, "bob's password went to the directory with the pool full");

    slapd.resume();
    let (status, _, _) = held.await.unwrap();
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}
