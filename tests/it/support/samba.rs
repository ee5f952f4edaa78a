//! A real Active Directory for directory tests: a Samba AD domain
//! controller (Debian's `samba`), provisioned once per test run into a
//! private directory and started on a loopback address of its own, so the
//! system's Samba (its `/etc/samba`, `/var/lib/samba`, any service) is never
//! read or touched.
//!
//! # The domain
//!
//! - DNS domain `corp.example.com`, NetBIOS domain `CORP`, DC `dc1`.
//! - `CN=Users` holds the service account `fedgate-svc` (an ordinary
//!   user: no group memberships beyond Domain Users) and the users tests
//!   add; `OU=Staff` and `OU=Moved` are there for moves.
//! - [`BULK_USERS`] more users `bulk0000`... under `OU=Bulk`, so a sync
//!   pass has to page past AD's `MaxPageSize` of 1000.
//! - The service account may list and read `CN=Deleted Objects` (the right
//!   the README tells operators to grant), so it sees tombstones.
//! - Domain password policy: lockout after [`DOMAIN_LOCKOUT_THRESHOLD`]
//!   wrong passwords (Samba keeps `badPwdCount` only under a lockout
//!   policy); members of the group `fedgate-lock-fast` get a fine-grained
//!   policy that locks after [`FAST_LOCKOUT_THRESHOLD`].
//!
//! # How it runs
//!
//! Provisioning (`samba-tool domain provision --targetdir`) and the bulk
//! users (one transaction through Samba's own Python bindings, before the
//! server starts) take seconds; the server then runs `samba -i -M single`
//! with its standard input a pipe held by this process, so it exits when
//! the test run does, however that ends. Only the LDAP server task runs
//! (`server services = ldap`): no DNS, Kerberos, SMB or NetBIOS.
//!
//! The DC's certificate is issued by a CA made for this run, for
//! `dc1.corp.example.com` and the DC's address (nothing here resolves the
//! DC's name), as an enterprise CA would issue one; [`Samba::ca_file`] is
//! what fedgate's `ca_file` points at. Simple binds need TLS, as on a DC
//! that requires LDAP signing: plain `ldap://` is refused with
//! strongAuthRequired.
//!
//! The harness changes the directory through `ldap-utils` as the domain
//! administrator (over LDAPS), so it checks fedgate against an independent
//! client, and reads what only the DC knows (`badPwdCount`) the same way.

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};

use super::slapd::{collect, ldif_values, run, write_ca_and_server, write_secret};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine;

pub const REALM: &str = "CORP.EXAMPLE.COM";
pub const DNS_DOMAIN: &str = "corp.example.com";
pub const NETBIOS: &str = "CORP";
pub const BASE_DN: &str = "DC=corp,DC=example,DC=com";
pub const USERS_DN: &str = "CN=Users,DC=corp,DC=example,DC=com";
pub const STAFF_DN: &str = "OU=Staff,DC=corp,DC=example,DC=com";
pub const MOVED_DN: &str = "OU=Moved,DC=corp,DC=example,DC=com";
/// Users under [`BULK_DN`]: more than one AD page (1000).
pub const BULK_USERS: usize = 1200;
pub const DOMAIN_LOCKOUT_THRESHOLD: u32 = 50;
pub const FAST_LOCKOUT_THRESHOLD: u32 = 3;
pub const FAST_LOCKOUT_GROUP: &str = "fedgate-lock-fast";
pub const SERVICE_LOGIN: &str = "fedgate-svc";

const ADMIN_PASSWORD: &str = "Adm1n-Pass-Word-for-tests";
const SERVICE_PASSWORD: &str = "Svc-Pass-Word-for-tests-1";
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// One domain controller per test run (see the module doc).
pub struct Samba {
    dir: PathBuf,
    ip: Ipv4Addr,
    /// The write end of the server's standard input: the server exits when
    /// it closes.
    _stdin: Mutex<ChildStdin>,
    _child: Mutex<Child>,
    log: Arc<Mutex<String>>,
}

impl Samba {
    /// The run's domain controller, provisioned and started on first use.
    pub fn shared() -> &'static Samba {
        static DC: OnceLock<Samba> = OnceLock::new();
        DC.get_or_init(Samba::provision_and_start)
    }

    fn provision_and_start() -> Samba {
        let started = Instant::now();
        let root = std::env::temp_dir();
        remove_stale_dirs(&root);
        let dir = root.join(format!("fedgate-samba-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("run")).expect("create the DC's directory");
        std::fs::create_dir_all(dir.join("tls")).expect("create the DC's directory");
        let ip = free_address();
        write_tls(&dir.join("tls"), ip);
        let tls = dir.join("tls");
        let options = [
            format!("interfaces={ip}/8"),
            "bind interfaces only=yes".into(),
            "server services=ldap".into(),
            format!("pid directory={}", dir.join("run").display()),
            format!("log file={}", dir.join("log.%m").display()),
            "tls enabled=yes".into(),
            format!("tls keyfile={}", tls.join("dc.key").display()),
            format!("tls certfile={}", tls.join("dc.pem").display()),
            format!("tls cafile={}", tls.join("ca.pem").display()),
        ];
        let mut provision = Command::new("samba-tool");
        provision.args([
            "domain",
            "provision",
            &format!("--realm={REALM}"),
            &format!("--domain={NETBIOS}"),
            "--server-role=dc",
            "--dns-backend=NONE",
            "--host-name=dc1",
            &format!("--adminpass={ADMIN_PASSWORD}"),
            &format!("--targetdir={}", dir.display()),
        ]);
        for option in &options {
            provision.arg(format!("--option={option}"));
        }
        expect_success(provision, "samba-tool domain provision");

        let setup = dir.join("setup.py");
        std::fs::write(&setup, SETUP_PY).expect("write setup.py");
        let mut python = Command::new(samba_python());
        python
            .arg(&setup)
            .arg(dir.join("etc/smb.conf"))
            .arg(dir.join("private/sam.ldb"));
        python.env("FEDGATE_SERVICE_PASSWORD", SERVICE_PASSWORD);
        python.env("FEDGATE_BULK_USERS", BULK_USERS.to_string());
        python.env("FEDGATE_DOMAIN_LOCKOUT", DOMAIN_LOCKOUT_THRESHOLD.to_string());
        python.env("FEDGATE_FAST_LOCKOUT", FAST_LOCKOUT_THRESHOLD.to_string());
        python.env("FEDGATE_FAST_GROUP", FAST_LOCKOUT_GROUP);
        expect_success(python, "the domain's test setup (setup.py)");
        write_secret(&dir.join("service.pw"), SERVICE_PASSWORD);

        let mut child = Command::new(samba_binary())
            .args(["-s"])
            .arg(dir.join("etc/smb.conf"))
            .args(["-i", "-M", "single", "--debug-stdout", "-d", "1"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start samba (run scripts/install-test-deps)");
        let log: Arc<Mutex<String>> = Arc::default();
        let _ = collect(child.stdout.take().expect("piped"), Arc::clone(&log));
        let _ = collect(child.stderr.take().expect("piped"), Arc::clone(&log));
        let stdin = child.stdin.take().expect("piped");
        let samba = Samba {
            dir,
            ip,
            _stdin: Mutex::new(stdin),
            _child: Mutex::new(child),
            log,
        };
        samba.wait_ready();
        eprintln!(
            "samba AD DC for {REALM} at {ip} ready in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        samba
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let listening = [389, 636].iter().all(|&port| {
                TcpStream::connect_timeout(&SocketAddr::from((self.ip, port)), Duration::from_millis(200)).is_ok()
            });
            if listening
                && self
                    .try_admin_search(BASE_DN, "base", "(objectClass=*)", &["1.1"])
                    .is_ok()
            {
                return;
            }
            let exited = self._child.lock().unwrap().try_wait().ok().flatten();
            assert!(exited.is_none(), "samba exited ({exited:?}):\n{}", self.log());
            assert!(
                Instant::now() < deadline,
                "samba not serving LDAPS at {} within {READY_TIMEOUT:?}:\n{}",
                self.ip,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The DC's loopback address, which its certificate names (a
    /// [`super::fault_proxy::FaultProxy`] in front of it listens there too).
    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    pub fn ldap_url(&self) -> String {
        format!("ldap://{}", self.ip)
    }

    pub fn ldaps_url(&self) -> String {
        format!("ldaps://{}", self.ip)
    }

    /// The CA that issued the DC's certificate.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("tls/ca.pem")
    }

    pub fn service_upn(&self) -> String {
        format!("{SERVICE_LOGIN}@{DNS_DOMAIN}")
    }

    /// The service account's password, without a trailing newline.
    pub fn service_password_file(&self) -> PathBuf {
        self.dir.join("service.pw")
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn upn(login: &str) -> String {
        format!("{login}@{DNS_DOMAIN}")
    }

    pub fn user_dn(login: &str) -> String {
        format!("CN={login},{USERS_DN}")
    }

    /// Adds an enabled user `CN=<login>,CN=Users` with `sAMAccountName`
    /// `login`, UPN `login@corp.example.com`, `mail` the same, display name
    /// "Display <login>" and `password` (which must meet AD's complexity
    /// rule). Returns the UPN.
    pub fn add_user(&self, login: &str, password: &str) -> String {
        self.add_user_under(login, USERS_DN, password)
    }

    pub fn add_user_under(&self, login: &str, parent: &str, password: &str) -> String {
        check_login(login);
        let upn = Samba::upn(login);
        self.modify(&format!(
            "dn: CN={login},{parent}\nchangetype: add\nobjectClass: user\nsAMAccountName: {login}\n\
             userPrincipalName: {upn}\nmail: {upn}\ndisplayName: Display {login}\n\
             unicodePwd:: {}\nuserAccountControl: 512\n",
            unicode_pwd(password)
        ));
        upn
    }

    /// Applies LDIF change records as the domain administrator.
    pub fn modify(&self, ldif: &str) {
        let out = self.admin("ldapmodify", &[], Some(ldif));
        assert!(
            out.status.success(),
            "ldapmodify failed: {}\n{ldif}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn set_user_account_control(&self, dn: &str, value: u32) {
        self.modify(&format!(
            "dn: {dn}\nchangetype: modify\nreplace: userAccountControl\nuserAccountControl: {value}\n-\n"
        ));
    }

    /// Sets ACCOUNTDISABLE (userAccountControl 514).
    pub fn disable(&self, dn: &str) {
        self.set_user_account_control(dn, 514);
    }

    pub fn enable(&self, dn: &str) {
        self.set_user_account_control(dn, 512);
    }

    /// `accountExpires` in AD's 100 ns ticks since 1601 (0: never).
    pub fn set_account_expires(&self, dn: &str, ticks: i64) {
        self.modify(&format!(
            "dn: {dn}\nchangetype: modify\nreplace: accountExpires\naccountExpires: {ticks}\n-\n"
        ));
    }

    /// Deletes the user: AD keeps a tombstone under `CN=Deleted Objects`.
    pub fn delete(&self, dn: &str) {
        self.modify(&format!("dn: {dn}\nchangetype: delete\n"));
    }

    /// Renames the entry (new CN, `sAMAccountName` and UPN), keeping its
    /// `objectGUID`; returns the new DN.
    pub fn rename(&self, dn: &str, new_login: &str) -> String {
        check_login(new_login);
        let parent = dn.split_once(',').map(|(_, p)| p).expect("a DN with a parent");
        self.modify(&format!(
            "dn: {dn}\nchangetype: modrdn\nnewrdn: CN={new_login}\ndeleteoldrdn: 1\n"
        ));
        let new_dn = format!("CN={new_login},{parent}");
        let upn = Samba::upn(new_login);
        self.modify(&format!(
            "dn: {new_dn}\nchangetype: modify\nreplace: sAMAccountName\nsAMAccountName: {new_login}\n-\n\
             replace: userPrincipalName\nuserPrincipalName: {upn}\n-\nreplace: mail\nmail: {upn}\n-\n"
        ));
        new_dn
    }

    /// Moves the entry under `parent`, keeping its name; returns the new DN.
    pub fn move_to(&self, dn: &str, parent: &str) -> String {
        let rdn = dn.split_once(',').map(|(r, _)| r).expect("a DN with a parent");
        self.modify(&format!(
            "dn: {dn}\nchangetype: modrdn\nnewrdn: {rdn}\ndeleteoldrdn: 1\nnewsuperior: {parent}\n"
        ));
        format!("{rdn},{parent}")
    }

    /// Puts the user under the fine-grained policy that locks after
    /// [`FAST_LOCKOUT_THRESHOLD`] wrong passwords.
    pub fn use_fast_lockout(&self, dn: &str) {
        self.modify(&format!(
            "dn: CN={FAST_LOCKOUT_GROUP},{USERS_DN}\nchangetype: modify\nadd: member\nmember: {dn}\n-\n"
        ));
    }

    /// One attribute of the entry at `dn`, as the administrator reads it
    /// (`badPwdCount`, `lockoutTime`, `uSNChanged`...).
    pub fn attribute(&self, dn: &str, name: &str) -> Option<String> {
        let out = self
            .try_admin_search(dn, "base", "(objectClass=*)", &[name])
            .unwrap_or_else(|e| panic!("read {name} of {dn}: {e}"));
        ldif_values(&out, name).into_iter().next()
    }

    /// The DC's count of wrong passwords for the user since their last
    /// good one.
    pub fn bad_pwd_count(&self, dn: &str) -> u32 {
        self.attribute(dn, "badPwdCount")
            .map_or(0, |v| v.parse().expect("badPwdCount is a number"))
    }

    /// The user's `objectGUID` as fedgate stores anchors (AD's string
    /// form, lowercase).
    pub fn object_guid(&self, dn: &str) -> String {
        let out = self
            .try_admin_search(dn, "base", "(objectClass=*)", &["objectGUID"])
            .unwrap_or_else(|e| panic!("read objectGUID of {dn}: {e}"));
        let encoded = out
            .lines()
            .find_map(|l| l.strip_prefix("objectGUID:: "))
            .unwrap_or_else(|| panic!("no objectGUID for {dn}:\n{out}"));
        let b = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .expect("objectGUID is base64");
        assert_eq!(b.len(), 16, "objectGUID of {dn}");
        format!(
            "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
            b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]
        )
    }

    /// A simple bind as `name` (UPN, `CORP\\login` or DN) over LDAPS, then a
    /// read of the root DSE (AD has no "who am I"): `Err` holds the
    /// tool's message, with AD's sub-code (`data 52e`, `775`...).
    pub fn bind(&self, name: &str, password: &str) -> Result<(), String> {
        let mut cmd = self.tool("ldapsearch", &self.ldaps_url());
        cmd.args([
            "-x",
            "-D",
            name,
            "-w",
            password,
            "-b",
            "",
            "-s",
            "base",
            "(objectClass=*)",
            "1.1",
        ]);
        let out = run(cmd, None);
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    fn try_admin_search(&self, base: &str, scope: &str, filter: &str, attrs: &[&str]) -> Result<String, String> {
        let mut args = vec!["-LLL", "-o", "ldif_wrap=no", "-b", base, "-s", scope, filter];
        args.extend_from_slice(attrs);
        let out = self.admin("ldapsearch", &args, None);
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    fn tool(&self, name: &str, url: &str) -> Command {
        let mut cmd = Command::new(name);
        cmd.args(["-H", url]);
        cmd.env("LDAPTLS_CACERT", self.ca_file());
        cmd.env("LDAPTLS_REQCERT", "demand");
        cmd
    }

    fn admin(&self, name: &str, args: &[&str], input: Option<&str>) -> Output {
        let mut cmd = self.tool(name, &self.ldaps_url());
        cmd.args(["-x", "-D", &format!("Administrator@{DNS_DOMAIN}"), "-w", ADMIN_PASSWORD]);
        cmd.args(args);
        run(cmd, input)
    }
}

/// Creates, offline and in one transaction: `OU=Staff`, `OU=Moved`,
/// `OU=Bulk` with the bulk users, the service account, its right to list
/// and read `CN=Deleted Objects`, the domain's lockout policy and the fast
/// lockout group with its fine-grained policy.
const SETUP_PY: &str = include_str!("samba_setup.py");

/// AD's `unicodePwd`: the password in double quotes, UTF-16LE, base64.
fn unicode_pwd(password: &str) -> String {
    let quoted: Vec<u8> = format!("\"{password}\"")
        .encode_utf16()
        .flat_map(u16::to_le_bytes)
        .collect();
    base64::engine::general_purpose::STANDARD.encode(quoted)
}

/// A loopback address with nothing on the DC's ports: `127.0.0.2` unless
/// another run holds it.
fn free_address() -> Ipv4Addr {
    let taken = |ip: Ipv4Addr| {
        [389u16, 636, 3268, 3269]
            .iter()
            .any(|&port| TcpStream::connect_timeout(&SocketAddr::from((ip, port)), Duration::from_millis(200)).is_ok())
    };
    std::iter::once(Ipv4Addr::new(127, 0, 0, 2))
        .chain((0..64).map(|_| Ipv4Addr::new(127, 0, rand::random::<u8>().max(3), rand::random::<u8>().max(1))))
        .find(|&ip| !taken(ip))
        .expect("a free loopback address for the DC")
}

/// The directories of earlier runs whose process is gone.
fn remove_stale_dirs(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix("fedgate-samba-")) else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Samba's Python modules are installed for the distribution's Python, not
/// for whatever `python3` comes first on `PATH`.
fn samba_python() -> PathBuf {
    ["/usr/bin/python3", "/usr/local/bin/python3"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("python3"))
}

fn samba_binary() -> PathBuf {
    ["/usr/sbin/samba", "/usr/local/samba/sbin/samba"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("samba"))
}

fn expect_success(mut cmd: Command, what: &str) {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {cmd:?}: {e} (run scripts/install-test-deps)"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, and the DC's certificate signed by it for `dc1.corp.example.com`
/// and `ip` (`dc.pem`, `dc.key`).
fn write_tls(dir: &Path, ip: Ipv4Addr) {
    write_ca_and_server(
        dir,
        "CORP test enterprise CA",
        &[format!("dc1.{DNS_DOMAIN}"), ip.to_string()],
        "dc",
    );
}

/// Logins go into DNs and LDIF unescaped, so the harness keeps them plain.
fn check_login(login: &str) {
    assert!(
        !login.is_empty() && login.len() <= 20 && login.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)),
        "login {login:?} needs escaping or is longer than sAMAccountName allows"
    );
}
