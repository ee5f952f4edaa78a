//! haproxy (Debian's `haproxy` package) as the load balancer in front of
//! fedgate nodes: one process per test, started in the foreground (`-db`)
//! with the test's config on a free loopback port, and read through its
//! stats socket. The system's haproxy service and `/etc/haproxy` are never
//! used.
//!
//! haproxy runs under the [`super::watched`] watchdog, so no balancer
//! outlives its test.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use super::watched::{free_port, Watched};

/// Attempts with a fresh port when another process takes the chosen one
/// before haproxy binds it.
const PORT_ATTEMPTS: usize = 10;
/// haproxy parses its config and binds in milliseconds; a loaded machine
/// running many tests at once can need far longer.
const START_TIMEOUT: Duration = Duration::from_secs(15);
const POLL: Duration = Duration::from_millis(10);

pub struct Haproxy {
    /// The frontend the config binds (the `listen` given to its closure).
    pub addr: SocketAddr,
    process: Watched,
    stats_socket: PathBuf,
    _dir: tempfile::TempDir,
}

/// One row of `show stat`: a frontend, a backend or one of its servers,
/// by column name (`pxname`, `svname`, `status`, `check_status`,
/// `hrsp_2xx`, `wretr`, ...).
#[derive(Debug, Clone)]
pub struct Stat(HashMap<String, String>);

impl Stat {
    pub fn get(&self, column: &str) -> &str {
        self.0.get(column).map_or("", String::as_str)
    }

    /// A counter column; empty counts as 0, as haproxy leaves unused ones.
    pub fn count(&self, column: &str) -> u64 {
        self.get(column).parse().unwrap_or(0)
    }
}

impl Haproxy {
    /// Starts haproxy with the config `proxies(listen)` returns (its
    /// `defaults`, frontends and backends; the frontend must bind `listen`)
    /// after a `global` section that sets up the stats socket, and waits
    /// until every frontend is open.
    pub async fn start(proxies: impl Fn(SocketAddr) -> String) -> Haproxy {
        let mut output = String::new();
        for _ in 0..PORT_ATTEMPTS {
            match Haproxy::launch(&proxies, free_port()).await {
                Ok(haproxy) => return haproxy,
                Err(port_taken) => output = port_taken,
            }
        }
        panic!("haproxy found its port taken {PORT_ATTEMPTS} times; its output:\n{output}");
    }

    /// One attempt on `addr`: the running haproxy, or its output when it
    /// exited because the port was taken meanwhile. Panics on any other
    /// failure.
    async fn launch(proxies: &impl Fn(SocketAddr) -> String, addr: SocketAddr) -> Result<Haproxy, String> {
        let dir = tempfile::tempdir().expect("temp dir");
        let stats_socket = dir.path().join("stats.sock");
        let config = dir.path().join("haproxy.cfg");
        // Without SO_REUSEPORT, which haproxy sets by default, a port that
        // another process took meanwhile (fedgate's listeners set it too)
        // fails the bind instead of being shared.
        let text = format!(
            "global\n    stats socket {} mode 600 level admin\n    noreuseport\n\n{}",
            stats_socket.display(),
            proxies(addr)
        );
        std::fs::write(&config, text).expect("write haproxy config");
        let process = Watched::spawn(binary(), &["-db".as_ref(), "-f".as_ref(), config.as_os_str()], &[]);
        let haproxy = Haproxy {
            addr,
            process,
            stats_socket,
            _dir: dir,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(stats) = haproxy.try_stats().await {
                let mut frontends = stats.iter().filter(|s| s.get("svname") == "FRONTEND").peekable();
                if frontends.peek().is_some() && frontends.all(|s| s.get("status") == "OPEN") {
                    return Ok(haproxy);
                }
            }
            if haproxy.exited() {
                let output = haproxy.output();
                assert!(
                    output.contains("Address already in use"),
                    "haproxy exited while starting; its output:\n{output}"
                );
                return Err(output);
            }
            assert!(
                Instant::now() < deadline,
                "haproxy did not open its frontend within {START_TIMEOUT:?}; its output:\n{}",
                haproxy.output()
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// What haproxy printed so far: warnings and alerts, such as a server
    /// going down, with their reason.
    pub fn output(&self) -> String {
        self.process.output()
    }

    fn exited(&self) -> bool {
        self.process.exited()
    }

    /// Every row of `show stat`.
    pub async fn stats(&self) -> Vec<Stat> {
        self.try_stats()
            .await
            .unwrap_or_else(|e| panic!("haproxy's stats socket: {e}; its output:\n{}", self.output()))
    }

    /// Polls the stats until `done` holds for them; returns how long that
    /// took. Panics, with haproxy's output, after `timeout`.
    pub async fn wait_until(&self, what: &str, timeout: Duration, done: impl Fn(&[Stat]) -> bool) -> Duration {
        let start = Instant::now();
        loop {
            let stats = self.stats().await;
            if done(&stats) {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < timeout,
                "haproxy: {what} not seen within {timeout:?}; servers:\n{}\nits output:\n{}",
                describe(&stats),
                self.output()
            );
            tokio::time::sleep(POLL).await;
        }
    }

    async fn try_stats(&self) -> std::io::Result<Vec<Stat>> {
        let mut socket = UnixStream::connect(&self.stats_socket).await?;
        socket.write_all(b"show stat\n").await?;
        // One command, then haproxy closes the connection.
        let mut text = String::new();
        socket.read_to_string(&mut text).await?;
        Ok(parse_stats(&text))
    }
}

/// Servers' names, states and last checks, for failure messages.
pub fn describe(stats: &[Stat]) -> String {
    stats
        .iter()
        .filter(|s| !matches!(s.get("svname"), "FRONTEND" | "BACKEND"))
        .map(|s| {
            format!(
                "  {}/{}: {} (check {} {}), 2xx {}, 5xx {}",
                s.get("pxname"),
                s.get("svname"),
                s.get("status"),
                s.get("check_status"),
                s.get("last_chk"),
                s.get("hrsp_2xx"),
                s.get("hrsp_5xx")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `show stat` is CSV under a header line `# pxname,svname,...`.
fn parse_stats(text: &str) -> Vec<Stat> {
    let mut lines = text.lines();
    let Some(header) = lines.next().and_then(|h| h.strip_prefix("# ")) else {
        return Vec::new();
    };
    let columns: Vec<&str> = header.split(',').collect();
    lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            let row = columns
                .iter()
                .zip(l.split(','))
                .map(|(c, v)| (c.to_string(), v.to_string()))
                .collect();
            Stat(row)
        })
        .collect()
}

/// haproxy lives in /usr/sbin, which is not on every user's PATH.
fn binary() -> &'static str {
    if std::path::Path::new("/usr/sbin/haproxy").exists() {
        "/usr/sbin/haproxy"
    } else {
        "haproxy"
    }
}
