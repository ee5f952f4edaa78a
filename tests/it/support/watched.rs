//! A foreground server process (haproxy, nginx, Caddy) run under a small
//! `sh` watchdog whose standard input is a pipe held by the [`Watched`]:
//! when the pipe closes (the value is dropped, or the test process ends in
//! any way, SIGKILL included) the watchdog stops the server by its PID and
//! waits for it, so no server outlives its test. What the server prints
//! (standard output and error) is kept for failure messages.

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Starts `"$@"` in the background with its output on the watchdog's
/// standard error, prints its PID, lets go of its own output (so that the
/// pipes close exactly when the server exits), then waits for its standard
/// input to close and stops the server. SIGINT and SIGHUP from a terminal
/// are ignored: the watchdog must outlive the test to clean up.
const WATCHDOG: &str = r#""$@" >&2 &
pid=$!
echo "$pid"
exec >/dev/null 2>&1
trap '' INT HUP
read -r _
kill "$pid"
wait "$pid"
"#;

pub struct Watched {
    /// The server's own PID (not the watchdog's).
    pid: u32,
    watchdog: Child,
    /// Closing it stops the server (see the module doc).
    stdin: Option<ChildStdin>,
    output: Arc<Mutex<Output>>,
}

#[derive(Default)]
struct Output {
    lines: Vec<String>,
    closed: bool,
}

impl Watched {
    /// Runs `program` with `args` under the watchdog.
    pub fn spawn(program: &str, args: &[&std::ffi::OsStr], envs: &[(&str, &std::path::Path)]) -> Watched {
        let mut command = Command::new("sh");
        command.args(["-c", WATCHDOG, "sh", program]).args(args);
        for (key, value) in envs {
            command.env(key, value);
        }
        let mut watchdog = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn the watchdog (sh) for {program}: {e}"));
        let stdin = watchdog.stdin.take().expect("stdin is piped");
        let stdout = watchdog.stdout.take().expect("stdout is piped");
        let stderr = watchdog.stderr.take().expect("stderr is piped");
        let mut pid_line = String::new();
        BufReader::new(stdout)
            .read_line(&mut pid_line)
            .unwrap_or_else(|e| panic!("read {program}'s PID: {e}"));
        let pid = pid_line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("the watchdog printed {pid_line:?}, not {program}'s PID"));
        let output: Arc<Mutex<Output>> = Arc::default();
        let sink = Arc::clone(&output);
        std::thread::spawn(move || read_lines(stderr, &sink));
        Watched {
            pid,
            watchdog,
            stdin: Some(stdin),
            output,
        }
    }

    /// What the server printed so far.
    pub fn output(&self) -> String {
        lock(&self.output).lines.join("\n")
    }

    /// Whether the server has exited (its output closed).
    pub fn exited(&self) -> bool {
        lock(&self.output).closed
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(self.watchdog.try_wait(), Ok(None)) {
            if Instant::now() >= deadline {
                // The server ignored SIGTERM; the watchdog still waits for
                // it, so the PID cannot have been reused.
                let _ = Command::new("kill").args(["-KILL", &self.pid.to_string()]).status();
                let _ = self.watchdog.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

fn read_lines(stream: impl Read, sink: &Mutex<Output>) {
    for line in BufReader::new(stream).lines() {
        let Ok(line) = line else { break };
        lock(sink).lines.push(line);
    }
    lock(sink).closed = true;
}

/// Attempts with a fresh port when another process takes the chosen one
/// before the server binds it.
const PORT_ATTEMPTS: usize = 10;

/// Runs `launch` on free loopback ports until one is not taken meanwhile
/// (`launch` returns `Err` with the server's output when it was).
pub fn on_free_port<T>(name: &str, launch: impl Fn(SocketAddr) -> Result<T, String>) -> T {
    let mut output = String::new();
    for _ in 0..PORT_ATTEMPTS {
        match launch(free_port()) {
            Ok(server) => return server,
            Err(port_taken) => output = port_taken,
        }
    }
    panic!("{name} found its port taken {PORT_ATTEMPTS} times; its output:\n{output}");
}

/// A loopback address free right now; another process may take it before
/// the server binds it, which the servers' `start` survives by trying again.
pub fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// A server that should be listening on `addrs`: waits until each accepts
/// a connection. `Err` with the output when the server exited because a
/// port was taken meanwhile; panics on any other failure or after
/// `timeout`.
pub fn wait_listening(server: &Watched, name: &str, addrs: &[SocketAddr], timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        if addrs.iter().all(|a| std::net::TcpStream::connect(a).is_ok()) {
            return Ok(());
        }
        if server.exited() {
            let output = server.output();
            assert!(
                output.contains("Address already in use") || output.contains("address already in use"),
                "{name} exited while starting; its output:\n{output}"
            );
            return Err(output);
        }
        assert!(
            Instant::now() < deadline,
            "{name} did not listen on {addrs:?} within {timeout:?}; its output:\n{}",
            server.output()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}
