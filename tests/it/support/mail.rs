//! Real mail servers for the mail auth_http tests, each started in the
//! foreground by the test with a generated config in its own temp dir, on
//! free loopback ports, and stopped (SIGTERM to its PID, then waited for)
//! when dropped. The packages' own services and `/etc` configs are never
//! used:
//!
//! - nginx's mail proxy (`libnginx-mod-mail`): IMAP, POP3 and SMTP
//!   listeners with `auth_http` pointing at fedgate;
//! - Dovecot: IMAP and POP3 that accept only the backend secret fedgate
//!   hands nginx (`passdb static`, from loopback only), LMTP delivery into
//!   the same mailboxes, and an auth listener Postfix asks about SASL;
//! - Postfix: the SMTP server nginx hands submissions to with XCLIENT
//!   (which carries the signed-in user), relaying only for that user, and
//!   delivering to Dovecot over LMTP, so a sent message can be read back.
//!
//! Plus [`client`]: Python's imaplib, poplib and smtplib driven by
//! `mail_client.py`, one JSON line per run.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::smtp::unused_port;

const START_TIMEOUT: Duration = Duration::from_secs(20);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(20);

/// A server process in the foreground, stopped by its PID when dropped.
struct Daemon {
    name: &'static str,
    child: Child,
    /// Where it writes its log, shown when it fails to start.
    log: PathBuf,
}

impl Daemon {
    fn spawn(name: &'static str, mut cmd: Command, log: PathBuf) -> Daemon {
        let stderr = std::fs::File::create(log.with_extension("stderr")).expect("stderr file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        Daemon { name, child, log }
    }

    fn output(&self) -> String {
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        format!("{}{}", read(&self.log.with_extension("stderr")), read(&self.log))
    }

    /// Waits until every address accepts connections.
    fn wait_listening(&mut self, addrs: &[SocketAddr]) {
        let deadline = Instant::now() + START_TIMEOUT;
        for addr in addrs {
            while TcpStream::connect_timeout(addr, Duration::from_millis(200)).is_err() {
                if let Ok(Some(status)) = self.child.try_wait() {
                    panic!("{} exited ({status}) while starting:\n{}", self.name, self.output());
                }
                assert!(
                    Instant::now() < deadline,
                    "{} did not listen on {addr} within {START_TIMEOUT:?}:\n{}",
                    self.name,
                    self.output()
                );
                std::thread::sleep(POLL);
            }
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + STOP_TIMEOUT;
        while matches!(self.child.try_wait(), Ok(None)) {
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            std::thread::sleep(POLL);
        }
    }
}

fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], unused_port()))
}

/// A directory every server user can enter (the temp dir is 0700).
fn open_dir(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(path).expect("create dir");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod dir");
}

fn chown(path: &Path, user: &str) {
    let status = Command::new("chown").args([user, &path.display().to_string()]).status();
    assert!(status.is_ok_and(|s| s.success()), "chown {user} {}", path.display());
}

pub struct Dovecot {
    pub imap: SocketAddr,
    pub pop3: SocketAddr,
    pub lmtp: SocketAddr,
    /// Dovecot's auth service for Postfix's SASL checks.
    pub auth: SocketAddr,
    log: PathBuf,
    _daemon: Daemon,
    _dir: tempfile::TempDir,
}

impl Dovecot {
    /// Dovecot whose IMAP and POP3 accept any user with `backend_secret`
    /// as the password, from loopback only.
    pub fn start(backend_secret: &str) -> Dovecot {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path();
        open_dir(root);
        for sub in ["base", "state"] {
            std::fs::create_dir_all(root.join(sub)).expect("dovecot dir");
        }
        let mail = root.join("mail");
        open_dir(&mail);
        chown(&mail, "dovecot:dovecot");
        let (imap, pop3, lmtp, auth) = (free_addr(), free_addr(), free_addr(), free_addr());
        let log = root.join("dovecot.log");
        let conf = format!(
            r#"protocols = imap pop3 lmtp
instance_name = fedgate-test-{port}
base_dir = {root}/base
state_dir = {root}/state
log_path = {log}
auth_verbose = yes
ssl = no
disable_plaintext_auth = no
listen = 127.0.0.1
default_internal_user = dovecot
default_internal_group = dovecot
default_login_user = dovenull
first_valid_uid = 100
first_valid_gid = 100
mail_location = maildir:{root}/mail/%u
passdb {{
  driver = static
  args = password={backend_secret} allow_nets=127.0.0.0/8
}}
userdb {{
  driver = static
  args = uid=dovecot gid=dovecot home={root}/mail/%u
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {imap_port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    address = 127.0.0.1
    port = {pop3_port}
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
service lmtp {{
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {lmtp_port}
  }}
  unix_listener lmtp {{
    mode = 0
  }}
}}
service auth {{
  inet_listener auth-client {{
    address = 127.0.0.1
    port = {auth_port}
  }}
}}
"#,
            port = imap.port(),
            root = root.display(),
            log = log.display(),
            imap_port = imap.port(),
            pop3_port = pop3.port(),
            lmtp_port = lmtp.port(),
            auth_port = auth.port(),
        );
        let conf_path = root.join("dovecot.conf");
        std::fs::write(&conf_path, conf).expect("write dovecot.conf");
        let mut cmd = Command::new("dovecot");
        cmd.arg("-F").arg("-c").arg(&conf_path);
        let mut daemon = Daemon::spawn("dovecot", cmd, log.clone());
        daemon.wait_listening(&[imap, pop3, lmtp, auth]);
        Dovecot {
            imap,
            pop3,
            lmtp,
            auth,
            log,
            _daemon: daemon,
            _dir: dir,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The log lines of backend sign-ins (`imap-login: ... Login: user=<...>`).
    pub fn logins(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| l.contains("-login: Info: Login: "))
            .map(str::to_owned)
            .collect()
    }

    /// Log lines of the IMAP and POP3 login services about a connection
    /// that tried to sign in (nginx handing a sign-in over, successful or
    /// not); connections that only opened and closed (the start-up
    /// check's) are left out.
    pub fn login_service_lines(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| l.contains("imap-login:") || l.contains("pop3-login:"))
            .filter(|l| !l.contains("no auth attempts") && !l.contains("disconnected before auth was ready"))
            .map(str::to_owned)
            .collect()
    }
}

pub struct Postfix {
    pub smtp: SocketAddr,
    log: PathBuf,
    _daemon: Daemon,
    _dir: tempfile::TempDir,
}

impl Postfix {
    /// Postfix taking XCLIENT from loopback, relaying for signed-in users
    /// only (Dovecot's auth at `sasl`), and delivering `domain` to `lmtp`.
    pub fn start(domain: &str, lmtp: SocketAddr, sasl: SocketAddr) -> Postfix {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path();
        open_dir(root);
        let etc = root.join("etc");
        let queue = root.join("queue");
        let data = root.join("data");
        for d in [&etc, &queue, &data] {
            std::fs::create_dir_all(d).expect("postfix dir");
        }
        chown(&data, "postfix");
        let smtp = free_addr();
        let log = root.join("postfix.log");
        let main_cf = format!(
            "compatibility_level = 3.6
queue_directory = {queue}
data_directory = {data}
mail_owner = postfix
setgid_group = postdrop
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = mx.fedgate.test
mydomain = fedgate.test
myorigin = fedgate.test
mydestination =
mynetworks = 127.0.0.0/8
relayhost =
alias_maps =
alias_database =
local_recipient_maps =
smtputf8_enable = no
biff = no
maillog_file = {log}
maillog_file_prefixes = {root}
smtpd_authorized_xclient_hosts = 127.0.0.0/8
smtpd_sasl_auth_enable = yes
smtpd_sasl_type = dovecot
smtpd_sasl_path = inet:{sasl}
smtpd_relay_restrictions = permit_sasl_authenticated, reject
virtual_mailbox_domains = {domain}
virtual_transport = lmtp:inet:{lmtp}
",
            queue = queue.display(),
            data = data.display(),
            log = log.display(),
            root = root.display(),
        );
        // Only what a submission on to LMTP needs; nothing chrooted.
        let master_cf = format!(
            "{smtp} inet n - n - - smtpd
postlog unix-dgram n - n - 1 postlogd
cleanup unix n - n - 0 cleanup
qmgr unix n - n 300 1 qmgr
rewrite unix - - n - - trivial-rewrite
bounce unix - - n - 0 bounce
defer unix - - n - 0 bounce
trace unix - - n - 0 bounce
verify unix - - n - 1 verify
proxymap unix - - n - - proxymap
error unix - - n - - error
retry unix - - n - - error
discard unix - - n - - discard
lmtp unix - - n - - lmtp
anvil unix - - n - 1 anvil
scache unix - - n - 1 scache
"
        );
        std::fs::write(etc.join("main.cf"), main_cf).expect("main.cf");
        std::fs::write(etc.join("master.cf"), master_cf).expect("master.cf");
        // `postfix check` makes the queue's directories with their owners.
        let check = Command::new("postfix")
            .arg("-c")
            .arg(&etc)
            .arg("check")
            .output()
            .expect("postfix check");
        assert!(
            check.status.success(),
            "postfix check: {}",
            String::from_utf8_lossy(&check.stderr)
        );
        let mut cmd = Command::new("/usr/lib/postfix/sbin/master");
        cmd.arg("-c").arg(&etc).arg("-d").env("MAIL_CONFIG", &etc);
        let mut daemon = Daemon::spawn("postfix", cmd, log.clone());
        daemon.wait_listening(&[smtp]);
        Postfix {
            smtp,
            log,
            _daemon: daemon,
            _dir: dir,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// nginx's mail proxy in front of the backends fedgate names.
pub struct NginxMail {
    pub imap: SocketAddr,
    pub pop3: SocketAddr,
    pub smtp: SocketAddr,
    error_log: PathBuf,
    _daemon: Daemon,
    _dir: tempfile::TempDir,
}

impl NginxMail {
    /// The `mail {}` block of the README: `auth_http` at fedgate's
    /// endpoint with the caller secret, IMAP, POP3 and SMTP (AUTH PLAIN and
    /// LOGIN, XCLIENT to the backend) on free loopback ports.
    pub fn start(auth_http: &str, secret: &str) -> NginxMail {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path();
        open_dir(root);
        let (imap, pop3, smtp) = (free_addr(), free_addr(), free_addr());
        let error_log = root.join("error.log");
        let conf = format!(
            r#"load_module /usr/lib/nginx/modules/ngx_mail_module.so;
daemon off;
master_process on;
worker_processes 1;
pid {root}/nginx.pid;
error_log {error_log} info;
events {{
    worker_connections 64;
}}
mail {{
    server_name mail.fedgate.test;
    auth_http {auth_http};
    auth_http_header X-Fedgate-Secret "{secret}";
    auth_http_timeout 10s;
    proxy_pass_error_message on;
    imap_auth plain login;
    pop3_auth plain;
    smtp_auth plain login;
    xclient on;
    server {{
        listen {imap};
        protocol imap;
    }}
    server {{
        listen {pop3};
        protocol pop3;
    }}
    server {{
        listen {smtp};
        protocol smtp;
    }}
}}
"#,
            root = root.display(),
            error_log = error_log.display(),
        );
        let conf_path = root.join("nginx.conf");
        std::fs::write(&conf_path, conf).expect("write nginx.conf");
        let mut cmd = Command::new("nginx");
        cmd.arg("-p")
            .arg(root)
            .arg("-c")
            .arg(&conf_path)
            .arg("-e")
            .arg(&error_log);
        let mut daemon = Daemon::spawn("nginx", cmd, error_log.clone());
        daemon.wait_listening(&[imap, pop3, smtp]);
        NginxMail {
            imap,
            pop3,
            smtp,
            error_log,
            _daemon: daemon,
            _dir: dir,
        }
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(&self.error_log).unwrap_or_default()
    }
}

/// Runs `mail_client.py COMMAND ARGS...` with the system's Python and
/// returns what it printed.
pub fn client(args: &[&str]) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/support/mail_client.py");
    let out = Command::new("python3")
        .arg(script)
        .args(args)
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "mail_client.py {args:?} printed no JSON ({e}):\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}
