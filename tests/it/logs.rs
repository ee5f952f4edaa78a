//! Log lines name their target (`fedgate::access`, `fedgate::audit`,
//! `fedgate::app` ...) in both formats, so what a line shows is what
//! `RUST_LOG` filters on.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::support::client;
use crate::support::fedgate::binary;
use crate::support::Fedgate;

/// Reads lines from `lines` until one satisfies `pred`; panics after 30 s.
fn wait_line(lines: &mpsc::Receiver<String>, seen: &mut Vec<String>, pred: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => {
                seen.push(line.clone());
                if pred(&line) {
                    return line;
                }
            }
            Err(_) => panic!("line not seen; log:\n{}", seen.join("\n")),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn human_lines_show_their_target() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("fedgate.toml");
    let text = Fedgate::builder()
        .route("/whoami", "builtin:whoami", "")
        .config_text(dir.path());
    std::fs::write(&config, text).unwrap();
    let mut child = Command::new(binary())
        .args(["--log-format", "human", "serve", "--config"])
        .arg(&config)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let listening = wait_line(&rx, &mut seen, |l| {
        l.contains(" listening ") && l.contains("kind=\"plain\"")
    });
    assert!(listening.contains(" INFO fedgate::app: listening "), "{listening}");
    let addr: std::net::SocketAddr = listening
        .split_whitespace()
        .find_map(|w| w.strip_prefix("addr="))
        .unwrap()
        .parse()
        .unwrap();
    wait_line(&rx, &mut seen, |l| l.contains("fedgate ready"));
    client::get(addr, "/whoami").await;
    let access = wait_line(&rx, &mut seen, |l| l.contains(" request "));
    // Invariant: the child is ours and still running; stop it before
    // asserting so a failure does not leave it behind.
    let _ = child.kill();
    let _ = child.wait();
    assert!(access.contains(" INFO fedgate::access: request method=GET"), "{access}");
    assert!(access.contains(" path=/whoami "), "{access}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_lines_carry_their_target() {
    let fg = Fedgate::builder().route("/whoami", "builtin:whoami", "").start();
    client::get(fg.plain, "/whoami").await;
    let ready = fg.wait_log(Duration::from_secs(5), |v| v["message"] == "fedgate ready");
    assert_eq!(ready["target"], "fedgate::app", "{ready}");
    let access = fg.wait_log(Duration::from_secs(5), |v| v["message"] == "request");
    assert_eq!(access["target"], "fedgate::access", "{access}");
}
