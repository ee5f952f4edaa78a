#![allow(dead_code)]
//! A private PostgreSQL cluster for the PostgreSQL store tests: made with
//! `initdb` in a temporary directory of its own and served by a `postgres`
//! child process on a loopback port chosen by the kernel. The system's
//! clusters (`/var/lib/postgresql`, `/etc/postgresql`), its service and port
//! 5432 are never read or touched, so the tests run the same whether or not
//! the package's own server is up.
//!
//! The file uses nothing but `std` and names nothing of the crate, because
//! it is included twice: from the library's unit tests
//! (`#[cfg(test)] #[path = "pg_cluster.rs"] mod pg_cluster;`) and from the
//! integration tests (`#[path = "../../../src/store/pg_cluster.rs"]`). Each
//! includer uses a part, hence the `dead_code` allowance above.
//!
//! # Layout and roles
//!
//! `$TMPDIR/fedgate-pg-<pid>-<n>/` holds `data/` (the cluster), `socket/`
//! (the Unix socket, which nothing here uses but postgres insists on a
//! directory for) and, with TLS, `server.crt` and `server.key`. The cluster
//! has the superuser `postgres`, used only by the harness, and the ordinary
//! role `fedgate` (LOGIN, CREATEDB) that the code under test connects as;
//! both have random passwords and every connection, local or TCP, must
//! authenticate with SCRAM-SHA-256, as in production. The server is tuned
//! for tests, not for durability: no fsync, no synchronous commit, no full
//! page writes.
//!
//! # Lifetime
//!
//! The server runs under a small `sh` watchdog whose standard input is a
//! pipe held by the [`Cluster`]. When that pipe closes, whether because the
//! cluster was dropped or because the test process ended in any way
//! (returned, panicked, was killed with SIGKILL), the watchdog's `read`
//! returns, it asks postgres for a fast shutdown (SIGINT), waits for it to
//! exit and removes the cluster's directory. So even [`shared`], which lives
//! in a static and is never dropped, leaves neither a process nor a
//! directory behind.
//!
//! # Running as root
//!
//! `initdb` refuses to run as root, and postgres refuses to start as root.
//! When the tests run as root (a container, CI), both run as the `postgres`
//! system user (created by Debian's `postgresql` package) through
//! `setpriv`, and the cluster directory is made over to that user, which
//! must be able to reach it: the default temporary directory `/tmp` is fine;
//! a `TMPDIR` under `/root` is not. The harness's own clients (`psql`,
//! `pg_isready`) connect over TCP and run as whoever runs the tests.

use std::ffi::OsString;
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Startup takes about a second, but many test processes starting clusters
/// at once on a loaded machine can need far longer.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// A fast shutdown with fsync off takes milliseconds; past this the server
/// is told to shut down immediately instead.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(50);
/// Attempts with fresh ports when another process takes the port between
/// choosing it and postgres binding it.
const PORT_ATTEMPTS: usize = 10;
/// The server's output kept for error messages; older lines are dropped.
const LOG_LIMIT: usize = 64 * 1024;
/// Per-client connect timeout in seconds, so a wedged server fails a test
/// instead of hanging it.
const CONNECT_TIMEOUT: &str = "10";

/// The cluster's superuser, used only by the harness.
const SUPERUSER: &str = "postgres";
/// The ordinary role the code under test connects as.
const USER: &str = "fedgate";
/// The system user the server runs as when the tests run as root.
const SYSTEM_USER: &str = "postgres";

/// Runs `"$@"` (postgres) in the background, then waits for its own
/// standard input to close. A line `keep` before the close means a
/// [`Cluster::stop`]: the directory stays for the next start. Without it
/// (the cluster was dropped, or the test process is gone) the directory is
/// removed once postgres has exited. The watchdog's own output goes to
/// /dev/null, so that the output pipes close exactly when postgres and its
/// children have exited, which is how a server that died during startup is
/// noticed. SIGINT and SIGHUP from a terminal are ignored by the watchdog
/// (postgres handles them itself): it must outlive the test process to
/// clean up.
const WATCHDOG: &str = r#"dir=$1; shift
"$@" &
pid=$!
exec >/dev/null 2>&1
trap '' INT HUP
read -r line
kill -INT "$pid"
wait "$pid"
[ "$line" = keep ] || rm -rf "$dir"
"#;

/// Makes directory names unique among the clusters of one process.
static CLUSTERS: AtomicU32 = AtomicU32::new(0);

/// How a cluster is started.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// A certificate and its private key, both PEM, to serve TLS with
    /// (`ssl=on`); clients may still connect without TLS. The files are
    /// copied into the cluster's directory, so they may be removed after
    /// the start.
    pub tls: Option<(PathBuf, PathBuf)>,
}

/// A running PostgreSQL server of its own (see the module doc). Dropping it
/// stops the server and removes its directory.
pub struct Cluster {
    dir: PathBuf,
    bindir: PathBuf,
    /// The uid and gid of the `postgres` system user when the tests run as
    /// root; `None` when the server runs as the current user.
    owner: Option<(u32, u32)>,
    port: u16,
    superuser_password: String,
    password: String,
    tls: bool,
    /// The running server; `None` between [`Cluster::stop`] and
    /// [`Cluster::restart`]. Behind a lock since both replace it through
    /// `&self` (the cluster is shared between test threads).
    server: Mutex<Option<Server>>,
    /// The server's standard output and error, across restarts.
    log: Arc<Mutex<String>>,
    /// Numbers the databases of [`Cluster::create_database`].
    databases: AtomicU64,
}

/// One run of the server: the watchdog and the threads reading its output.
struct Server {
    /// The watchdog `sh`, parent of postgres.
    child: Child,
    /// The watchdog's standard input: closing it stops the server.
    stdin: ChildStdin,
    readers: Vec<JoinHandle<()>>,
    /// When it was spawned, in seconds since the epoch, to tell its
    /// `postmaster.pid` from one left by an earlier run.
    started: u64,
}

impl Server {
    /// Whether postgres has exited: its output pipes are closed (see
    /// [`WATCHDOG`]), or the watchdog itself is gone.
    fn exited(&mut self) -> bool {
        self.readers.iter().all(|r| r.is_finished()) || !matches!(self.child.try_wait(), Ok(None))
    }
}

/// Why one attempt to start the server did not get to "ready".
enum StartError {
    PortInUse,
    Failed(String),
}

impl Cluster {
    /// Starts a fresh cluster without TLS; see [`Cluster::start_with`].
    pub fn start() -> Result<Cluster, String> {
        Cluster::start_with(Options::default())
    }

    /// Makes a fresh cluster, starts its server, waits until it accepts
    /// connections and creates the `fedgate` role. The error says which
    /// step failed, with the command's or the server's output.
    pub fn start_with(options: Options) -> Result<Cluster, String> {
        let bindir = find_bindir()?;
        let owner = server_owner()?;
        let superuser_password = random_hex(16)?;
        let password = random_hex(16)?;
        let dir = make_dir()?;
        // From here on, dropping the half-made cluster removes the
        // directory (and stops a started server), so every `?` cleans up.
        let mut cluster = Cluster {
            dir,
            bindir,
            owner,
            port: 0,
            superuser_password,
            password,
            tls: options.tls.is_some(),
            server: Mutex::new(None),
            log: Arc::new(Mutex::new(String::new())),
            databases: AtomicU64::new(0),
        };
        cluster.prepare(&options)?;
        cluster.initdb()?;
        cluster.first_launch()?;
        cluster
            .psql(
                "postgres",
                &format!("CREATE ROLE {USER} LOGIN CREATEDB PASSWORD '{}'", cluster.password),
            )
            .map_err(|e| format!("creating the role {USER}: {e}"))?;
        Ok(cluster)
    }

    /// The server's TCP port on 127.0.0.1; it stays the same across
    /// [`Cluster::restart`].
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The role the code under test connects as: `fedgate`.
    pub fn user(&self) -> &str {
        USER
    }

    /// The password of [`Cluster::user`]: hex digits, so it needs no
    /// escaping in a URL, a file or SQL.
    pub fn password(&self) -> &str {
        &self.password
    }

    /// Creates a fresh, empty database owned by `fedgate`, with a name no
    /// other call on this cluster returns, so that tests sharing the
    /// cluster never see each other's data. Returns its name.
    pub fn create_database(&self) -> Result<String, String> {
        let name = format!("fedgate_test_{}", self.databases.fetch_add(1, Ordering::Relaxed));
        self.psql("postgres", &format!("CREATE DATABASE {name} OWNER {USER}"))?;
        Ok(name)
    }

    /// `postgres://fedgate@127.0.0.1:PORT/DATABASE`, without the password:
    /// fedgate reads that from a file of its own.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/{database}", self.port)
    }

    /// `postgres://fedgate:PASSWORD@127.0.0.1:PORT/DATABASE`, for tests that
    /// pass the password in the URL.
    pub fn url_with_password(&self, database: &str) -> String {
        format!("postgres://{USER}:{}@127.0.0.1:{}/{database}", self.password, self.port)
    }

    /// Runs `sql` (any number of statements, or psql meta-commands) through
    /// `psql` as the superuser on `database`, stopping at the first error.
    /// Returns what psql printed: unaligned and without headers, one row a
    /// line, columns separated by `|`, with the final newline. The error
    /// holds psql's standard error. The SQL goes through standard input and
    /// the password through the environment, so neither shows in `ps`.
    pub fn psql(&self, database: &str, sql: &str) -> Result<String, String> {
        self.psql_as(SUPERUSER, &self.superuser_password, database, sql)
    }

    /// Stops the server with a fast shutdown (open connections are closed)
    /// and waits until it has exited, keeping the data for
    /// [`Cluster::restart`]; for tests of what the code under test does
    /// when the database goes away. Does nothing when it is stopped already.
    /// Every test using the cluster sees the outage, so such tests start a
    /// cluster of their own rather than stop [`shared`].
    pub fn stop(&self) -> Result<(), String> {
        let mut server = self.lock();
        match server.take() {
            Some(running) => self.shut_down(running, true),
            None => Ok(()),
        }
    }

    /// Starts the server again on the same port and data (stopping it first
    /// if it runs) and waits until it accepts connections. Fails if another
    /// process took the port meanwhile.
    pub fn restart(&self) -> Result<(), String> {
        let mut server = self.lock();
        if let Some(running) = server.take() {
            self.shut_down(running, true)?;
        }
        match self.launch() {
            Ok(running) => {
                *server = Some(running);
                Ok(())
            }
            Err(StartError::PortInUse) => Err(format!(
                "PostgreSQL could not start again: another process took port {} while it was stopped; its output:\n{}",
                self.port,
                self.log()
            )),
            Err(StartError::Failed(e)) => Err(e),
        }
    }

    /// The server's output so far (the last 64 KiB), across restarts.
    pub fn log(&self) -> String {
        lock(&self.log).clone()
    }

    fn lock(&self) -> MutexGuard<'_, Option<Server>> {
        // A test that panicked while holding the lock left the state as it
        // was; the next test may still use it.
        self.server.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Creates the socket directory and copies the TLS files in, all owned
    /// by the user the server runs as.
    fn prepare(&self, options: &Options) -> Result<(), String> {
        self.hand_over(&self.dir)?;
        let socket = self.dir.join("socket");
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&socket)
            .map_err(|e| format!("creating {}: {e}", socket.display()))?;
        self.hand_over(&socket)?;
        if let Some((cert, key)) = &options.tls {
            // postgres refuses a key that others may read.
            for (from, to, mode) in [(cert, "server.crt", 0o644), (key, "server.key", 0o600)] {
                let to = self.dir.join(to);
                fs::copy(from, &to).map_err(|e| format!("copying {} to {}: {e}", from.display(), to.display()))?;
                fs::set_permissions(&to, fs::Permissions::from_mode(mode))
                    .map_err(|e| format!("chmod {}: {e}", to.display()))?;
                self.hand_over(&to)?;
            }
        }
        Ok(())
    }

    /// Makes `path` the server user's, when that is not the current user.
    fn hand_over(&self, path: &Path) -> Result<(), String> {
        match self.owner {
            Some((uid, gid)) => std::os::unix::fs::chown(path, Some(uid), Some(gid))
                .map_err(|e| format!("chown {SYSTEM_USER} {}: {e}", path.display())),
            None => Ok(()),
        }
    }

    /// Runs initdb. The superuser's password goes through a file, which is
    /// removed right after.
    fn initdb(&self) -> Result<(), String> {
        let pwfile = self.dir.join("superuser-password");
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&pwfile)
            .and_then(|mut f| writeln!(f, "{}", self.superuser_password))
            .map_err(|e| format!("writing {}: {e}", pwfile.display()))?;
        self.hand_over(&pwfile)?;
        let mut argv = self.as_server_user();
        argv.push(self.bindir.join("initdb").into());
        argv.push("-D".into());
        argv.push(self.data().into());
        for arg in [
            "--auth=scram-sha-256",
            &format!("--username={SUPERUSER}"),
            &format!("--pwfile={}", pwfile.display()),
            "--encoding=UTF8",
            "--locale=C",
            // No fsync: a test cluster need not survive a power cut.
            "-N",
        ] {
            argv.push(arg.into());
        }
        let mut cmd = self.command(&argv);
        let result = run(&mut cmd);
        let _ = fs::remove_file(&pwfile);
        result.map(drop)
    }

    /// Starts the server for the first time, on a fresh port for each
    /// attempt that finds its port taken.
    fn first_launch(&mut self) -> Result<(), String> {
        for _ in 0..PORT_ATTEMPTS {
            self.port = free_port()?;
            match self.launch() {
                Ok(running) => {
                    *self.lock() = Some(running);
                    return Ok(());
                }
                Err(StartError::PortInUse) => continue,
                Err(StartError::Failed(e)) => return Err(e),
            }
        }
        Err(format!(
            "PostgreSQL found its port taken {PORT_ATTEMPTS} times; its output:\n{}",
            self.log()
        ))
    }

    /// Spawns the server under the watchdog and waits until it is ready;
    /// on failure the watchdog is gone again and the data kept.
    fn launch(&self) -> Result<Server, StartError> {
        let started = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let marker = format!("== fedgate test harness: starting postgres on port {} ==\n", self.port);
        append(&self.log, &marker);
        let mut server = self.spawn(started).map_err(StartError::Failed)?;
        match self.wait_ready(&mut server, &marker) {
            Ok(()) => Ok(server),
            Err(e) => {
                let _ = self.shut_down(server, true);
                Err(e)
            }
        }
    }

    fn spawn(&self, started: u64) -> Result<Server, String> {
        let data = self.data();
        let socket = self.dir.join("socket");
        let mut argv: Vec<OsString> = ["sh", "-c", WATCHDOG, "sh"].map(OsString::from).into();
        argv.push(self.dir.clone().into());
        argv.extend(self.as_server_user());
        argv.push(self.bindir.join("postgres").into());
        argv.extend(["-D".into(), data.into_os_string()]);
        argv.extend(["-p".into(), self.port.to_string().into()]);
        argv.extend(["-k".into(), socket.into_os_string()]);
        let mut settings = vec![
            "listen_addresses=127.0.0.1".to_owned(),
            "fsync=off".to_owned(),
            "synchronous_commit=off".to_owned(),
            "full_page_writes=off".to_owned(),
            // Every test opens a pool of its own against the shared cluster.
            "max_connections=200".to_owned(),
            "shared_buffers=32MB".to_owned(),
            // Also the default since PostgreSQL 14; said here so that roles
            // get SCRAM verifiers, which the `--auth` of initdb demands.
            "password_encryption=scram-sha-256".to_owned(),
        ];
        if self.tls {
            settings.push("ssl=on".to_owned());
            settings.push(format!("ssl_cert_file={}", self.dir.join("server.crt").display()));
            settings.push(format!("ssl_key_file={}", self.dir.join("server.key").display()));
        }
        for setting in settings {
            argv.push("-c".into());
            argv.push(setting.into());
        }
        let mut cmd = self.command(&argv);
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| format!("starting `{}`: {e}", describe(&cmd)))?;
        // Taken right away so that every early return below drops them,
        // which closes the watchdog's input and so ends it.
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let (Some(stdin), Some(stdout), Some(stderr)) = (stdin, stdout, stderr) else {
            return Err("the watchdog's pipes were not set up".to_owned());
        };
        let readers = vec![
            spawn_reader(stdout, Arc::clone(&self.log)).map_err(|e| format!("starting a log reader: {e}"))?,
            spawn_reader(stderr, Arc::clone(&self.log)).map_err(|e| format!("starting a log reader: {e}"))?,
        ];
        Ok(Server {
            child,
            stdin,
            readers,
            started,
        })
    }

    /// Polls until this run's postgres says it is ready (its
    /// `postmaster.pid`) and answers on its port (`pg_isready`), it exits,
    /// or the deadline passes. Reading the pid file first makes sure the
    /// answer comes from this cluster and not from another server that took
    /// the port.
    fn wait_ready(&self, server: &mut Server, marker: &str) -> Result<(), StartError> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if self.pid_file_ready(server.started) && self.pg_isready() {
                return Ok(());
            }
            if server.exited() {
                let log = self.log();
                let this_run = log.rsplit_once(marker).map_or(log.as_str(), |(_, run)| run);
                if this_run.contains("Address already in use") {
                    return Err(StartError::PortInUse);
                }
                return Err(StartError::Failed(format!(
                    "PostgreSQL exited while starting on port {}; its output:\n{log}",
                    self.port
                )));
            }
            if Instant::now() >= deadline {
                return Err(StartError::Failed(format!(
                    "PostgreSQL was not ready on port {} within {READY_TIMEOUT:?}; its output:\n{}",
                    self.port,
                    self.log()
                )));
            }
            thread::sleep(POLL);
        }
    }

    /// Whether `postmaster.pid` says "ready" (line 8, since PostgreSQL 10)
    /// and was written by a postmaster started no earlier than `started`.
    fn pid_file_ready(&self, started: u64) -> bool {
        let Ok(text) = fs::read_to_string(self.data().join("postmaster.pid")) else {
            return false;
        };
        let lines: Vec<&str> = text.lines().collect();
        let since = lines.get(2).and_then(|l| l.trim().parse::<u64>().ok());
        since.is_some_and(|s| s + 1 >= started) && lines.get(7).is_some_and(|l| l.trim() == "ready")
    }

    fn pg_isready(&self) -> bool {
        let mut cmd = self.client("pg_isready");
        let port = self.port.to_string();
        cmd.args(["-q", "-h", "127.0.0.1", "-p", &port, "-t", CONNECT_TIMEOUT]);
        cmd.args(["-U", SUPERUSER, "-d", "postgres"]);
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        cmd.status().is_ok_and(|s| s.success())
    }

    /// Ends a run: closes the watchdog's input (after `keep` when the data
    /// is to stay) and waits until it has exited, which it does once
    /// postgres has. A server that does not finish a fast shutdown in time
    /// is told to shut down immediately (SIGQUIT).
    fn shut_down(&self, server: Server, keep: bool) -> Result<(), String> {
        let Server {
            mut child,
            mut stdin,
            readers,
            ..
        } = server;
        if keep {
            // Fails only when the watchdog is gone already, which the wait
            // below notices.
            let _ = stdin.write_all(b"keep\n");
        }
        drop(stdin);
        if wait_exit(&mut child, STOP_TIMEOUT).is_none() {
            if let Some(pid) = self.postmaster_pid() {
                let _ = Command::new("kill").args(["-QUIT", &pid]).status();
            }
            if wait_exit(&mut child, Duration::from_secs(10)).is_none() {
                return Err(format!(
                    "PostgreSQL did not stop within {STOP_TIMEOUT:?} nor after SIGQUIT; its output:\n{}",
                    self.log()
                ));
            }
        }
        // The last lines of output may still be in the pipes.
        let deadline = Instant::now() + Duration::from_secs(2);
        while !readers.iter().all(|r| r.is_finished()) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    fn postmaster_pid(&self) -> Option<String> {
        let text = fs::read_to_string(self.data().join("postmaster.pid")).ok()?;
        let pid = text.lines().next()?.trim();
        pid.parse::<u32>().ok().map(|_| pid.to_owned())
    }

    fn psql_as(&self, user: &str, password: &str, database: &str, sql: &str) -> Result<String, String> {
        let mut cmd = self.client("psql");
        cmd.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"]);
        let port = self.port.to_string();
        cmd.args(["-h", "127.0.0.1", "-p", &port, "-U", user, "-d", database]);
        // The script from standard input, so it can hold many statements.
        cmd.args(["-f", "-"]);
        cmd.env("PGPASSWORD", password);
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| format!("starting `{}`: {e}", describe(&cmd)))?;
        // From a thread, so that a large script and a large result cannot
        // each wait for the other's pipe to drain.
        let writer = child.stdin.take().map(|mut stdin| {
            let sql = sql.to_owned();
            thread::spawn(move || stdin.write_all(sql.as_bytes()))
        });
        let out = child
            .wait_with_output()
            .map_err(|e| format!("running `{}`: {e}", describe(&cmd)))?;
        if let Some(writer) = writer {
            // A write error means psql quit early, which its status says.
            let _ = writer.join();
        }
        check(&cmd, out).map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A client program of the server's version, with none of the caller's
    /// `PG*` variables, which would otherwise pick the host, user or TLS
    /// mode (see [`clear_env`] for the rest).
    fn client(&self, program: &str) -> Command {
        let path = self.bindir.join(program);
        let mut cmd = Command::new(if path.is_file() { path } else { PathBuf::from(program) });
        clear_env(&mut cmd);
        cmd.env("PGCONNECT_TIMEOUT", CONNECT_TIMEOUT);
        cmd
    }

    /// The command line prefix that runs a program as the server user:
    /// empty when that is the current user.
    fn as_server_user(&self) -> Vec<OsString> {
        match self.owner {
            Some((uid, gid)) => vec![
                "setpriv".into(),
                format!("--reuid={uid}").into(),
                format!("--regid={gid}").into(),
                "--clear-groups".into(),
                "--".into(),
            ],
            None => Vec::new(),
        }
    }

    /// `argv` as a command run in the cluster's directory, which the server
    /// user can enter (the caller's may not be).
    fn command(&self, argv: &[OsString]) -> Command {
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..]).current_dir(&self.dir).stdin(Stdio::null());
        clear_env(&mut cmd);
        cmd
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let server = self.server.get_mut().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(running) = server {
            // The watchdog removes the directory itself.
            let _ = self.shut_down(running, false);
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// One cluster shared by every test in this process, started on first use
/// (a cluster takes about a second to make; a database per test is cheap).
/// Panics with the reason when it cannot start, on that use and every later
/// one, without trying again.
pub fn shared() -> &'static Cluster {
    static SHARED: OnceLock<Result<Cluster, String>> = OnceLock::new();
    match SHARED.get_or_init(Cluster::start) {
        Ok(cluster) => cluster,
        Err(e) => panic!("the shared PostgreSQL test cluster did not start: {e}"),
    }
}

/// The directory of `initdb` and `postgres`: `pg_config --bindir` when it
/// names one that has them (libpq's `pg_config` may belong to a client-only
/// install), else the newest `/usr/lib/postgresql/VERSION/bin` that has them
/// (Debian's layout, with `pg_config` from libpq-dev not installed).
fn find_bindir() -> Result<PathBuf, String> {
    let has_server = |dir: &Path| dir.join("initdb").is_file() && dir.join("postgres").is_file();
    if let Ok(out) = Command::new("pg_config").arg("--bindir").stdin(Stdio::null()).output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && has_server(&dir) {
            return Ok(dir);
        }
    }
    let mut best: Option<(Vec<u32>, PathBuf)> = None;
    for entry in fs::read_dir("/usr/lib/postgresql").into_iter().flatten().flatten() {
        // "15", or "9.6" before PostgreSQL 10.
        let name = entry.file_name();
        let version: Option<Vec<u32>> = name.to_string_lossy().split('.').map(|p| p.parse().ok()).collect();
        let bin = entry.path().join("bin");
        if let Some(version) = version.filter(|_| has_server(&bin)) {
            if best.as_ref().is_none_or(|(newest, _)| version > *newest) {
                best = Some((version, bin));
            }
        }
    }
    best.map(|(_, bin)| bin).ok_or_else(|| {
        "the PostgreSQL tests need the server programs (initdb, postgres), found neither through \
         `pg_config --bindir` nor in /usr/lib/postgresql/*/bin: install the Debian package `postgresql` \
         (scripts/install-test-deps does)"
            .to_owned()
    })
}

/// The `postgres` system user's uid and gid when the tests run as root
/// (see the module doc), else `None`.
fn server_owner() -> Result<Option<(u32, u32)>, String> {
    if effective_uid()? != 0 {
        return Ok(None);
    }
    let id = |flag: &str| -> Result<u32, String> {
        let mut cmd = Command::new("id");
        cmd.args([flag, SYSTEM_USER]);
        let out = run(&mut cmd).map_err(|e| {
            format!(
                "the tests run as root, so PostgreSQL must run as the system user `{SYSTEM_USER}` \
                 (initdb refuses root), which the Debian package `postgresql` creates \
                 (scripts/install-test-deps installs it): {e}"
            )
        })?;
        let text = String::from_utf8_lossy(&out.stdout);
        text.trim()
            .parse()
            .map_err(|_| format!("`{}` printed {text:?}", describe(&cmd)))
    };
    Ok(Some((id("-u")?, id("-g")?)))
}

/// From the `Uid:` line of /proc/self/status (real, effective, saved,
/// filesystem), else from `id -u`.
fn effective_uid() -> Result<u32, String> {
    if let Ok(status) = fs::read_to_string("/proc/self/status") {
        let uid = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:")?.split_whitespace().nth(1)?.parse().ok());
        if let Some(uid) = uid {
            return Ok(uid);
        }
    }
    let mut cmd = Command::new("id");
    cmd.arg("-u");
    let out = run(&mut cmd)?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim().parse().map_err(|_| format!("`id -u` printed {text:?}"))
}

/// Creates `$TMPDIR/fedgate-pg-<pid>-<n>`, readable by its owner only.
fn make_dir() -> Result<PathBuf, String> {
    loop {
        let n = CLUSTERS.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("fedgate-pg-{}-{n}", std::process::id()));
        match fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            // Left by an earlier process with the same pid.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(format!("creating {}: {e}", dir.display())),
        }
    }
}

/// A loopback port free right now. Another process may take it before
/// postgres binds it, which [`Cluster::first_launch`] survives.
fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("finding a free loopback port: {e}"))
}

/// `bytes` random bytes from the kernel, as hex digits.
fn random_hex(bytes: usize) -> Result<String, String> {
    let mut buf = vec![0u8; bytes];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(|e| format!("reading /dev/urandom: {e}"))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// Removes the caller's `PG*` variables and sets the C locale with UTF-8
/// on the wire, so that messages are in English whatever the caller's
/// locale (the port-in-use check reads one) and non-ASCII text survives
/// psql both ways.
fn clear_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PG") {
            cmd.env_remove(key);
        }
    }
    cmd.env("LC_ALL", "C").env("PGCLIENTENCODING", "UTF8");
}

/// Waits up to `timeout` for `child` to exit.
fn wait_exit(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            // Not a child of ours any more: nothing to wait for.
            Err(_) => return None,
            Ok(None) if Instant::now() >= deadline => return None,
            Ok(None) => thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// Runs `cmd` to completion; the error names it and holds its output.
fn run(cmd: &mut Command) -> Result<Output, String> {
    cmd.stdin(Stdio::null());
    let out = cmd.output().map_err(|e| format!("running `{}`: {e}", describe(cmd)))?;
    check(cmd, out)
}

fn check(cmd: &Command, out: Output) -> Result<Output, String> {
    if out.status.success() {
        return Ok(out);
    }
    Err(format!(
        "`{}` failed ({}):\n{}{}",
        describe(cmd),
        out.status,
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    ))
}

/// The program and its arguments, for error messages. Not `{cmd:?}`, which
/// would show the environment, passwords included.
fn describe(cmd: &Command) -> String {
    let mut words = vec![cmd.get_program().to_string_lossy().into_owned()];
    for arg in cmd.get_args() {
        let arg = arg.to_string_lossy();
        // The watchdog script is long and says nothing about the failure.
        let word = if arg == WATCHDOG { "WATCHDOG" } else { &arg };
        words.push(word.to_owned());
    }
    words.join(" ")
}

/// Copies `stream` line by line into `log` until it closes.
fn spawn_reader(stream: impl Read + Send + 'static, log: Arc<Mutex<String>>) -> io::Result<JoinHandle<()>> {
    thread::Builder::new().name("pg-cluster-log".to_owned()).spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => append(&log, &String::from_utf8_lossy(&line)),
            }
        }
    })
}

/// Appends to the log, dropping its oldest lines past [`LOG_LIMIT`].
fn append(log: &Mutex<String>, text: &str) {
    let mut log = lock(log);
    log.push_str(text);
    if !text.ends_with('\n') {
        log.push('\n');
    }
    if log.len() > LOG_LIMIT {
        // Cut at a line end (ASCII, so a char boundary) a quarter below the
        // limit, so that trimming is rare.
        let mut from = log.len() - LOG_LIMIT * 3 / 4;
        while !log.is_char_boundary(from) {
            from += 1;
        }
        let cut = log[from..].find('\n').map_or(log.len(), |i| from + i + 1);
        log.replace_range(..cut, "[earlier output dropped]\n");
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
