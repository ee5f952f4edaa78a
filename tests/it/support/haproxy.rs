//! haproxy (Debian's `haproxy` package) as the load balancer in front of
//! fedgate nodes: one process per test, started in the foreground (`-db`)
//! with the test's config on a free loopback port, and read through its
//! stats socket. The system's haproxy service and `/etc/haproxy` are never
//! used.
//!
//! haproxy runs under a small `sh` watchdog whose standard input is a pipe
//! held by the [`Haproxy`]: when the pipe closes (the value is dropped, or
//! the test process ends in any way, SIGKILL included) the watchdog stops
//! haproxy by its PID and waits for it, so no balancer outlives its test.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// Starts `"$@"` (haproxy) in the background with its output on the
/// watchdog's standard error, prints its PID, lets go of its own output
/// (so that the pipes close exactly when haproxy exits), then waits for its
/// standard input to close and stops haproxy. SIGINT and SIGHUP from a
/// terminal are ignored: the watchdog must outlive the test to clean up.
const WATCHDOG: &str = r#""$@" >&2 &
pid=$!
echo "$pid"
exec >/dev/null 2>&1
trap '' INT HUP
read -r _
kill "$pid"
wait "$pid"
"#;

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
    /// haproxy's own PID (not the watchdog's).
    pid: u32,
    watchdog: Child,
    /// Closing it stops haproxy (see the module doc).
    stdin: Option<ChildStdin>,
    output: Arc<Mutex<Output>>,
    stats_socket: PathBuf,
    _dir: tempfile::TempDir,
}

#[derive(Default)]
struct Output {
    lines: Vec<String>,
    closed: bool,
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
        let (pid, watchdog, stdin, output) = spawn(&config);
        let haproxy = Haproxy {
            addr,
            pid,
            watchdog,
            stdin: Some(stdin),
            output,
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
        lock(&self.output).lines.join("\n")
    }

    fn exited(&self) -> bool {
        lock(&self.output).closed
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

impl Drop for Haproxy {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(self.watchdog.try_wait(), Ok(None)) {
            if Instant::now() >= deadline {
                // haproxy ignored SIGTERM; the watchdog still waits for it,
                // so the PID cannot have been reused.
                let _ = Command::new("kill").args(["-KILL", &self.pid.to_string()]).status();
                let _ = self.watchdog.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
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

fn spawn(config: &std::path::Path) -> (u32, Child, ChildStdin, Arc<Mutex<Output>>) {
    let mut watchdog = Command::new("sh")
        .args(["-c", WATCHDOG, "sh", binary(), "-db", "-f"])
        .arg(config)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the haproxy watchdog (sh)");
    let stdin = watchdog.stdin.take().expect("stdin is piped");
    let stdout = watchdog.stdout.take().expect("stdout is piped");
    let stderr = watchdog.stderr.take().expect("stderr is piped");
    let mut pid_line = String::new();
    BufReader::new(stdout)
        .read_line(&mut pid_line)
        .expect("read haproxy's PID");
    let pid = pid_line
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("the watchdog printed {pid_line:?}, not haproxy's PID"));
    let output: Arc<Mutex<Output>> = Arc::default();
    let sink = Arc::clone(&output);
    std::thread::spawn(move || read_lines(stderr, &sink));
    (pid, watchdog, stdin, output)
}

fn read_lines(stream: impl Read, sink: &Mutex<Output>) {
    for line in BufReader::new(stream).lines() {
        let Ok(line) = line else { break };
        lock(sink).lines.push(line);
    }
    lock(sink).closed = true;
}

/// haproxy lives in /usr/sbin, which is not on every user's PATH.
fn binary() -> &'static str {
    if std::path::Path::new("/usr/sbin/haproxy").exists() {
        "/usr/sbin/haproxy"
    } else {
        "haproxy"
    }
}

/// A loopback address free right now; another process may take it before
/// haproxy binds it, which [`Haproxy::start`] survives.
fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
