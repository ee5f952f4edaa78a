//! A real mail server for the notice tests: aiosmtpd (from the test
//! virtual environment) run by `smtp_sink.py`, on a loopback port, saving
//! each message it accepts as JSON in a directory the test reads. Stopped
//! when dropped; it also exits by itself when the test process is gone
//! (its standard input closes).

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The Python that has aiosmtpd: `FEDGATE_TEST_PYTHON`, else the test
/// virtual environment's.
fn python() -> PathBuf {
    match std::env::var_os("FEDGATE_TEST_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-venv/bin/python"),
    }
}

/// A loopback port nothing listens on now (a server started later takes
/// it; the kernel does not hand it out again at once).
pub fn unused_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address").port()
}

/// What to start.
#[derive(Default)]
pub struct Options {
    /// Offer STARTTLS (and require it) with this certificate and key.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Require AUTH with these credentials.
    pub auth: Option<(String, String)>,
    /// Recipients refused with 550.
    pub refuse: Vec<String>,
}

pub struct SmtpSink {
    child: Child,
    _stdin: ChildStdin,
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl SmtpSink {
    pub fn start() -> SmtpSink {
        SmtpSink::start_on(0, Options::default())
    }

    /// On `port` (0: any free one).
    pub fn start_on(port: u16, options: Options) -> SmtpSink {
        let dir = tempfile::tempdir().expect("temp dir");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/support/smtp_sink.py");
        let mut cmd = Command::new(python());
        cmd.arg(script)
            .arg("--port")
            .arg(port.to_string())
            .arg("--dir")
            .arg(dir.path());
        if let Some((cert, key)) = &options.tls {
            cmd.arg("--tls-cert").arg(cert).arg("--tls-key").arg(key);
        }
        if let Some((user, password)) = &options.auth {
            cmd.arg("--auth").arg(format!("{user}:{password}"));
        }
        for address in &options.refuse {
            cmd.arg("--refuse").arg(address);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start smtp_sink.py (scripts/install-test-deps installs aiosmtpd)");
        let stdin = child.stdin.take().expect("stdin is piped");
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the sink's first line");
        let port: u16 = line
            .trim()
            .strip_prefix("ready ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("smtp_sink.py did not start: {line:?}"));
        SmtpSink {
            child,
            _stdin: stdin,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            dir,
        }
    }

    /// Every message accepted so far, oldest first.
    pub fn messages(&self) -> Vec<Value> {
        let mut names: Vec<PathBuf> = std::fs::read_dir(self.dir.path())
            .expect("read the sink's directory")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        names.sort();
        names
            .iter()
            .map(|p| serde_json::from_str(&std::fs::read_to_string(p).expect("read a message")).expect("JSON"))
            .collect()
    }

    /// Polls until `n` messages arrived (at most `timeout`).
    pub fn wait_messages(&self, n: usize, timeout: Duration) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let messages = self.messages();
            if messages.len() >= n {
                return messages;
            }
            assert!(
                Instant::now() < deadline,
                "{} message(s) after {timeout:?}, expected {n}",
                messages.len()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
