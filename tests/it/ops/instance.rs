//! A second `fedgate serve` on addresses another one listens on stops at
//! once, naming the config key and the holder, and the first keeps serving.

use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use http::StatusCode;

use crate::support::client::get;
use crate::support::fedgate::binary;
use crate::support::Fedgate;

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
}

fn config(dir: &std::path::Path, plain: SocketAddr, admin: SocketAddr) -> String {
    format!(
        "[server]\nlisten_plain = [\"{plain}\"]\n\
         [store]\nurl = \"sqlite://{db}\"\nkey_file = \"{key}\"\n\
         [admin]\nlisten = \"{admin}\"\n\
         [[route]]\npath = \"/whoami\"\nupstream = \"builtin:whoami\"\nrealm = \"none\"\n",
        db = dir.join("data/fedgate.db").display(),
        key = dir.join("data/fedgate.key").display(),
    )
}

/// Runs a second `fedgate serve` on `config_text` and returns its exit code
/// and standard error; fails the test if it is still running after 20 s.
fn second_serve(dir: &std::path::Path, config_text: &str) -> (i32, String) {
    let path = dir.join("second.toml");
    std::fs::write(&path, config_text).unwrap();
    let mut child = Command::new(binary())
        .args(["serve", "--config"])
        .arg(&path)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn fedgate");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
            return (status.code().unwrap_or(-1), err);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("a second fedgate on the same addresses was still running after 20 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn a_second_fedgate_on_the_same_listeners_refuses_to_start() {
    let (plain, admin) = (free_addr(), free_addr());
    let first = Fedgate::start_with(|dir| config(dir, plain, admin));
    let dir = first.dir.path().to_owned();
    let pid = first.pid().to_string();

    // The same config: the same listeners and the same store.
    let (code, err) = second_serve(&dir, &config(&dir, plain, admin));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!(
            "server.listen_plain[0]: {plain} is already in use by pid {pid} ("
        )),
        "{err}"
    );
    assert!(err.contains("serve --config"), "the holder's command line: {err}");

    // Only the admin port changed, and another store: still refused.
    let other = tempfile::tempdir().unwrap();
    let (code, err) = second_serve(&dir, &config(other.path(), plain, free_addr()));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("server.listen_plain[0]"), "{err}");
    assert!(
        !other.path().join("data/fedgate.db").exists(),
        "the refused server created a store"
    );

    // Only the admin port is taken.
    let (code, err) = second_serve(&dir, &config(other.path(), free_addr(), admin));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("admin.listen: {admin} is already in use by pid {pid}")),
        "{err}"
    );

    // The first one kept every request.
    for _ in 0..20 {
        let (status, _, _) = get(plain, "/whoami").await;
        assert_eq!(status, StatusCode::OK);
    }
    assert!(first.events("listening").len() >= 2);
}
