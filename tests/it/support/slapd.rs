//! A real OpenLDAP `slapd` for directory tests: a child process on loopback
//! ports chosen by the kernel, with its own generated `slapd.conf`, MDB
//! database and TLS certificates in a temporary directory. The system's
//! `/etc/ldap/slapd.d` and any system slapd service are never read or
//! touched, so tests run the same whether or not the package's own service
//! is up.
//!
//! The harness talks to the server only through the `ldap-utils` command
//! line tools (`ldapadd`, `ldapmodify`, `ldapsearch`, `ldapwhoami`), so it
//! checks the code under test against an independent LDAP client rather
//! than against itself.
//!
//! # Directory layout
//!
//! - `dc=example,dc=com`, with `ou=people` (users, `inetOrgPerson`) and
//!   `ou=services` holding the service account
//!   `cn=fedgate,ou=services,dc=example,dc=com`.
//! - The rootdn `cn=admin,dc=example,dc=com` is used only by the harness.
//! - Access: the service account may read everything but `userPassword`;
//!   users may bind and read their own entry; anonymous clients may only
//!   bind. Search size and time limits are off, so bulk tests see every
//!   entry without paging, unless the server was started with
//!   [`Slapd::start_with_size_limit`], which imitates Active Directory's
//!   `MaxPageSize`: an unpaged search of more entries than the limit fails
//!   with sizeLimitExceeded (after returning that many), while an RFC 2696
//!   paged search gets every entry whatever the total. The rootdn, and so
//!   every administrative call of the harness, is never limited.
//!
//! # Content synchronisation
//!
//! [`Slapd::start_with_syncprov`] adds the `syncprov` overlay, so RFC 4533
//! refreshAndPersist searches (the service account's included: its
//! searches have no size or time limit there) see every add, modify,
//! modrdn and delete as it happens, and a stored cookie resumes after a
//! restart. [`Slapd::start`] leaves it out: its root DSE does not
//! advertise the Sync Request control, as a directory that cannot push.
//!
//! # Outages
//!
//! [`Slapd::stop`] (SIGTERM) or [`Slapd::kill`] (SIGKILL, a crash) and
//! [`Slapd::restart`] take the server away and back, refusing connections
//! meanwhile; [`Slapd::set_syncprov`] decides whether it comes back with
//! the overlay; [`Slapd::pause`] and [`Slapd::resume`]
//! (SIGSTOP and SIGCONT) imitate a server that stops answering, with open
//! connections and new ones accepted by the kernel but never served.
//!
//! # Disabled users
//!
//! OpenLDAP has no native disable flag. When the `ppolicy` module is
//! installed (it is in Debian's `slapd`) the database runs the ppolicy
//! overlay with a default policy, and [`Slapd::disable_user`] sets
//! `pwdAccountLockedTime: 000001010000Z` (permanently locked) as the rootdn,
//! which needs no relax control: slapd then refuses the user's binds with
//! invalidCredentials and `(pwdAccountLockedTime=*)` matches the entry, as
//! in the production example config. Without the module the harness falls
//! back to `employeeType: disabled` plus an ACL that denies `auth` on a
//! disabled entry's password, so binds fail the same way. Either way tests
//! should take the filter from [`Slapd::disabled_filter`].
//!
//! # Counting binds
//!
//! [`Slapd::bind_count`] reads `monitorOpCompleted` of
//! `cn=Bind,cn=Operations,cn=Monitor` (the monitor backend) rather than
//! counting `BIND` lines in the log: the stats log line for an operation is
//! written after its response is sent and reaches [`Slapd::log`] through a
//! pipe and a reader thread, so a test could look before it arrives, while
//! the monitor counter is exact once no bind is in flight. The reading
//! waits until `monitorOpInitiated == monitorOpCompleted`, so a bind whose
//! response a client has already seen is counted. The count excludes the
//! harness's own administrative binds (every rootdn `ldapadd`/`ldapmodify`/
//! `ldapsearch` it runs, including the one made by `bind_count` itself), so
//! `after - before` is exactly the binds made by everybody else, including
//! the harness's client helpers [`Slapd::whoami`] and [`Slapd::search_as`].
//! Caveats: administrative calls racing with `bind_count` on other threads
//! may skew one reading; the count survives [`Slapd::restart`] (it is read
//! once more just before the stop), but binds landing between that final
//! reading and the process exit are lost.
//!
//! The log runs at debug level `stats` (`-d 256`), so [`Slapd::log`] holds
//! lines such as `conn=1003 op=0 BIND dn="..." method=128` and
//! `SRCH base="..." scope=2 deref=0 filter="(...)"`, which tests may grep
//! for what was asked; use [`Slapd::bind_count`] for how many.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use base64::Engine;
use rand::distributions::Alphanumeric;
use rand::Rng;

/// Where distributions install the server; the first that exists wins,
/// then `slapd` on `PATH`.
const SLAPD_CANDIDATES: &[&str] = &["/usr/sbin/slapd", "/usr/libexec/slapd", "/usr/local/libexec/slapd"];
/// Dynamically loaded backends and overlays (Debian builds `back_mdb` and
/// `ppolicy` as modules; `back_monitor` is built in).
const MODULE_DIRS: &[&str] = &[
    "/usr/lib/ldap",
    "/usr/lib64/openldap",
    "/usr/lib/openldap",
    "/usr/local/libexec/openldap",
];
const SCHEMA_DIRS: &[&str] = &[
    "/etc/ldap/schema",
    "/etc/openldap/schema",
    "/usr/local/etc/openldap/schema",
];

/// Startup normally takes tens of milliseconds, but dozens of servers
/// starting at once on a loaded machine have been seen to need over ten
/// seconds.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// Attempts with fresh ports when another process takes a port between
/// choosing it and slapd binding it.
const PORT_ATTEMPTS: usize = 10;

const ROOT_DN: &str = "cn=admin,dc=example,dc=com";
const SERVICE_DN: &str = "cn=fedgate,ou=services,dc=example,dc=com";
const POLICY_DN: &str = "cn=default,ou=policies,dc=example,dc=com";
/// ppolicy's "locked until an administrator unlocks it" value.
const LOCKED_FOREVER: &str = "000001010000Z";

/// How a client reaches the server in [`Slapd::whoami`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// `ldap://` without TLS.
    Plain,
    /// `ldap://` upgraded with StartTLS, which must succeed (`-ZZ`).
    StartTls,
    /// `ldaps://`.
    Ldaps,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Disable {
    Ppolicy,
    EmployeeType,
}

/// Why one attempt to run slapd did not get to "ready".
enum StartError {
    PortInUse,
    Failed(String),
}

pub struct Slapd {
    dir: tempfile::TempDir,
    slapd: PathBuf,
    disable: Disable,
    ldap_port: u16,
    ldaps_port: u16,
    child: Option<Child>,
    /// The ports, bound but not listening while slapd does not hold them
    /// (see [`reserve_port`]).
    reserved: Vec<socket2::Socket>,
    readers: Vec<JoinHandle<()>>,
    log: Arc<Mutex<String>>,
    /// Binds the harness made against the running process (see the module
    /// doc); reset when a new process starts, as its counters are.
    own_binds: AtomicU64,
    /// Binds by others counted in processes that have since stopped.
    carried_binds: u64,
    /// The size limit for everybody but the rootdn (see
    /// [`Slapd::start_with_size_limit`]); `None` for unlimited.
    size_limit: Option<u32>,
    /// Stopped with SIGSTOP by [`Slapd::pause`].
    paused: AtomicBool,
    /// Runs the `syncprov` overlay (see [`Slapd::start_with_syncprov`]).
    syncprov: bool,
}

impl Slapd {
    pub const BASE_DN: &'static str = "dc=example,dc=com";
    pub const PEOPLE_DN: &'static str = "ou=people,dc=example,dc=com";

    /// Starts a fresh server (see the module doc) and waits until it accepts
    /// connections; panics with slapd's output if it does not start.
    pub fn start() -> Slapd {
        Slapd::launch(Slapd::best_disable(), None, false)
    }

    /// Like [`Slapd::start`], with RFC 4533 content synchronisation: the
    /// `syncprov` overlay (stacked after ppolicy), which makes the root DSE
    /// advertise the Sync Request control (1.3.6.1.4.1.4203.1.9.1.1) and
    /// serves refreshOnly and refreshAndPersist searches, deletions included (its session log
    /// keeps them for a resumed cookie). The service account's searches
    /// have no size or time limit (`limits`), as a persistent search never
    /// ends: under a limit (slapd's default is 500 entries) slapd would end
    /// it with sizeLimitExceeded (4). A plain
    /// [`Slapd::start`] runs without the overlay, so a client sees a
    /// directory that cannot push.
    pub fn start_with_syncprov() -> Slapd {
        Slapd::launch(Slapd::best_disable(), None, true)
    }

    /// Like [`Slapd::start`], but searches by anybody other than the rootdn
    /// (the service account and users included) return at most `limit`
    /// entries unless paged, as Active Directory's `MaxPageSize` does: an
    /// unpaged search matching more fails with sizeLimitExceeded (4) after
    /// `limit` entries, while a search with the RFC 2696 paged results
    /// control gets every entry, page by page
    /// (`sizelimit size.soft=N size.hard=N size.prtotal=unlimited`).
    pub fn start_with_size_limit(limit: u32) -> Slapd {
        Slapd::launch(Slapd::best_disable(), Some(limit), false)
    }

    fn best_disable() -> Disable {
        let modules = first_dir(MODULE_DIRS);
        match modules.as_deref().is_some_and(|m| has_module(m, "ppolicy")) {
            true => Disable::Ppolicy,
            false => Disable::EmployeeType,
        }
    }

    fn launch(disable: Disable, size_limit: Option<u32>, syncprov: bool) -> Slapd {
        let dir = tempfile::Builder::new().prefix("slapd-").tempdir().expect("temp dir");
        let mut slapd = Slapd {
            dir,
            slapd: find_slapd(),
            disable,
            ldap_port: 0,
            ldaps_port: 0,
            child: None,
            reserved: Vec::new(),
            readers: Vec::new(),
            log: Arc::default(),
            own_binds: AtomicU64::new(0),
            carried_binds: 0,
            size_limit,
            paused: AtomicBool::new(false),
            syncprov,
        };
        slapd.write_files();
        slapd.load_initial_entries();
        for _ in 0..PORT_ATTEMPTS {
            let (ldap, ldaps) = (
                reserve_port(0).expect("bind port 0"),
                reserve_port(0).expect("bind port 0"),
            );
            slapd.ldap_port = local_port(&ldap);
            slapd.ldaps_port = local_port(&ldaps);
            slapd.reserved = vec![ldap, ldaps];
            match slapd.spawn() {
                Ok(()) => return slapd,
                Err(StartError::PortInUse) => continue,
                Err(StartError::Failed(why)) => panic!("slapd did not start: {why}"),
            }
        }
        panic!(
            "slapd found its ports taken {PORT_ATTEMPTS} times; last log:\n{}",
            slapd.log()
        );
    }

    /// `ldap://127.0.0.1:PORT`, for plain LDAP and StartTLS.
    pub fn url(&self) -> String {
        format!("ldap://127.0.0.1:{}", self.ldap_port)
    }

    /// `ldaps://127.0.0.1:PORT`.
    pub fn ldaps_url(&self) -> String {
        format!("ldaps://127.0.0.1:{}", self.ldaps_port)
    }

    /// PEM of the CA that signed the server certificate (SANs IP 127.0.0.1
    /// and DNS localhost), generated for this server alone.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("tls/ca.pem")
    }

    /// The service account's DN; its password is in
    /// [`Slapd::service_password_file`].
    pub fn service_dn(&self) -> &str {
        SERVICE_DN
    }

    /// A file holding the service account's password, without a trailing
    /// newline (as `ldapsearch -y` and password-file settings expect).
    pub fn service_password_file(&self) -> PathBuf {
        self.dir.path().join("service.pw")
    }

    pub fn service_password(&self) -> String {
        std::fs::read_to_string(self.service_password_file()).expect("read service password")
    }

    /// `uid=<uid>,ou=people,dc=example,dc=com`.
    pub fn user_dn(uid: &str) -> String {
        format!("uid={uid},{}", Slapd::PEOPLE_DN)
    }

    /// The filter matching disabled users under the mechanism this server
    /// runs (see the module doc).
    pub fn disabled_filter(&self) -> &'static str {
        match self.disable {
            Disable::Ppolicy => "(pwdAccountLockedTime=*)",
            Disable::EmployeeType => "(employeeType=disabled)",
        }
    }

    /// Adds an `inetOrgPerson` `uid=<uid>` under [`Slapd::PEOPLE_DN`] with
    /// `mail` (the UPN) and a cleartext `userPassword`, which slapd checks
    /// on bind. `cn` and `sn` are the uid; `displayName` is "Display <uid>",
    /// so tests can tell the attributes apart.
    pub fn add_user(&self, uid: &str, mail: &str, password: &str) {
        check_uid(uid);
        let mut ldif = format!("dn: {}\nobjectClass: inetOrgPerson\n", Slapd::user_dn(uid));
        ldif.push_str(&ldif_attr("uid", uid));
        ldif.push_str(&ldif_attr("cn", uid));
        ldif.push_str(&ldif_attr("sn", uid));
        ldif.push_str(&ldif_attr("displayName", &format!("Display {uid}")));
        ldif.push_str(&ldif_attr("mail", mail));
        ldif.push_str(&ldif_attr("userPassword", password));
        self.add_users_ldif(&ldif);
    }

    /// Adds the entries of `ldif` (records without `changetype`) as the
    /// rootdn, over one connection.
    pub fn add_users_ldif(&self, ldif: &str) {
        self.admin("ldapadd", &[], Some(ldif));
    }

    /// Adds `count` users as [`Slapd::add_user`] would, all with
    /// `password`: `uid=<prefix><n>` with `mail: <prefix><n>@example.com`
    /// for `n` in `0..count`, in one `ldapadd` run (thousands take
    /// seconds, not minutes). Returns their uids in that order.
    pub fn add_generated_users(&self, prefix: &str, count: usize, password: &str) -> Vec<String> {
        check_uid(prefix);
        let password = ldif_attr("userPassword", password);
        let uids: Vec<String> = (0..count).map(|n| format!("{prefix}{n}")).collect();
        let mut ldif = String::with_capacity(count * 256);
        for uid in &uids {
            ldif.push_str(&format!(
                "dn: {dn}\nobjectClass: inetOrgPerson\nuid: {uid}\ncn: {uid}\nsn: {uid}\n\
                 displayName: Display {uid}\nmail: {uid}@example.com\n{password}\n",
                dn = Slapd::user_dn(uid),
            ));
        }
        if count > 0 {
            self.add_users_ldif(&ldif);
        }
        uids
    }

    /// Applies change records (`changetype: modify`, `modrdn`, `delete`,
    /// ...) as the rootdn.
    pub fn modify(&self, ldif: &str) {
        self.admin("ldapmodify", &[], Some(ldif));
    }

    pub fn set_password(&self, uid: &str, password: &str) {
        check_uid(uid);
        let value = ldif_attr("userPassword", password);
        self.modify(&format!(
            "dn: {}\nchangetype: modify\nreplace: userPassword\n{value}-\n",
            Slapd::user_dn(uid)
        ));
    }

    pub fn delete_user(&self, uid: &str) {
        check_uid(uid);
        self.modify(&format!("dn: {}\nchangetype: delete\n", Slapd::user_dn(uid)));
    }

    /// Renames `uid=<uid>` to `uid=<new_uid>` (modrdn, dropping the old
    /// value); the entry, and so its `entryUUID`, stays the same.
    pub fn rename_user(&self, uid: &str, new_uid: &str) {
        check_uid(uid);
        check_uid(new_uid);
        self.modify(&format!(
            "dn: {}\nchangetype: modrdn\nnewrdn: uid={new_uid}\ndeleteoldrdn: 1\n",
            Slapd::user_dn(uid)
        ));
    }

    /// Makes the user's binds fail (invalidCredentials) and
    /// [`Slapd::disabled_filter`] match the entry.
    pub fn disable_user(&self, uid: &str) {
        check_uid(uid);
        let (attr, value) = self.disable_attr();
        self.modify(&format!(
            "dn: {}\nchangetype: modify\nreplace: {attr}\n{attr}: {value}\n-\n",
            Slapd::user_dn(uid)
        ));
    }

    /// Undoes [`Slapd::disable_user`]; a no-op for an enabled user.
    pub fn enable_user(&self, uid: &str) {
        check_uid(uid);
        let (attr, _) = self.disable_attr();
        // A replace with no values removes the attribute if present and,
        // unlike a delete, is not an error when it is absent.
        self.modify(&format!(
            "dn: {}\nchangetype: modify\nreplace: {attr}\n-\n",
            Slapd::user_dn(uid)
        ));
    }

    fn disable_attr(&self) -> (&'static str, &'static str) {
        match self.disable {
            Disable::Ppolicy => ("pwdAccountLockedTime", LOCKED_FOREVER),
            Disable::EmployeeType => ("employeeType", "disabled"),
        }
    }

    /// The user's `entryUUID`, read as the rootdn.
    pub fn entry_uuid(&self, uid: &str) -> String {
        check_uid(uid);
        let out = self.admin_search(&Slapd::user_dn(uid), "base", "(objectClass=*)", &["entryUUID"]);
        ldif_values(&out, "entryUUID")
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("no entryUUID for {uid} in:\n{out}"))
    }

    /// The controls the root DSE advertises (`supportedControl`), read as
    /// the rootdn.
    pub fn supported_controls(&self) -> Vec<String> {
        let out = self.admin_search("", "base", "(objectClass=*)", &["supportedControl"]);
        ldif_values(&out, "supportedControl")
    }

    /// Searches the tree as the rootdn and returns the LDIF; counted as an
    /// administrative bind, not by [`Slapd::bind_count`].
    pub fn admin_search(&self, base: &str, scope: &str, filter: &str, attrs: &[&str]) -> String {
        let mut args = vec!["-LLL", "-o", "ldif_wrap=no", "-b", base, "-s", scope, filter];
        args.extend_from_slice(attrs);
        let out = self.admin("ldapsearch", &args, None);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Binds as `dn` with `password` over `transport` and asks "who am I":
    /// `Ok("dn:<dn>")`, or `Err` with ldapwhoami's message (for a wrong
    /// password it contains "Invalid credentials (49)"). A client bind:
    /// [`Slapd::bind_count`] counts it.
    pub fn whoami(&self, transport: Transport, dn: &str, password: &str) -> Result<String, String> {
        let url = if transport == Transport::Ldaps {
            self.ldaps_url()
        } else {
            self.url()
        };
        let mut cmd = self.tool("ldapwhoami", &url);
        if transport == Transport::StartTls {
            cmd.arg("-ZZ");
        }
        cmd.args(["-D", dn, "-w", password]);
        stdout_or_error(cmd).map(|out| out.trim().to_string())
    }

    /// Searches over plain `ldap://` as `who` (DN, password), or after an
    /// anonymous bind for `None`, and returns the LDIF (`Err` with
    /// ldapsearch's message on failure). Like any client bind it is counted
    /// by [`Slapd::bind_count`], the anonymous one included.
    pub fn search_as(
        &self,
        who: Option<(&str, &str)>,
        base: &str,
        filter: &str,
        attrs: &[&str],
    ) -> Result<String, String> {
        self.search(who, None, base, filter, attrs)
    }

    /// Like [`Slapd::search_as`], with the RFC 2696 paged results control
    /// (`ldapsearch -E pr=<page_size>/noprompt`): every page is fetched, so
    /// the LDIF holds all matching entries even past a size limit.
    pub fn search_paged_as(
        &self,
        who: Option<(&str, &str)>,
        base: &str,
        filter: &str,
        attrs: &[&str],
        page_size: u32,
    ) -> Result<String, String> {
        self.search(who, Some(page_size), base, filter, attrs)
    }

    fn search(
        &self,
        who: Option<(&str, &str)>,
        page_size: Option<u32>,
        base: &str,
        filter: &str,
        attrs: &[&str],
    ) -> Result<String, String> {
        let mut cmd = self.tool("ldapsearch", &self.url());
        cmd.args(["-LLL", "-o", "ldif_wrap=no"]);
        if let Some(size) = page_size {
            cmd.arg("-E").arg(format!("pr={size}/noprompt"));
        }
        if let Some((dn, password)) = who {
            cmd.args(["-D", dn, "-w", password]);
        }
        cmd.args(["-b", base, filter]).args(attrs);
        stdout_or_error(cmd)
    }

    /// Binds completed by clients other than the harness's administrative
    /// calls, since [`Slapd::start`] and across restarts (see the module
    /// doc). Use differences: `after - before`.
    pub fn bind_count(&self) -> u64 {
        self.try_bind_count()
            .unwrap_or_else(|e| panic!("reading slapd's bind counter failed: {e}\nlog:\n{}", self.log()))
    }

    fn try_bind_count(&self) -> Result<u64, String> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let (initiated, completed) = self.read_bind_counters()?;
            // A bind another client has seen answered may not be counted
            // yet: slapd counts completion just after sending the result.
            if initiated == completed || Instant::now() >= deadline {
                let own = self.own_binds.load(Ordering::SeqCst);
                return Ok(self.carried_binds + completed.saturating_sub(own));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// (monitorOpInitiated, monitorOpCompleted) for binds. The search binds
    /// first on its own connection, and slapd holds later operations on a
    /// connection until its bind has been counted, so the figures include
    /// this reading's own bind.
    fn read_bind_counters(&self) -> Result<(u64, u64), String> {
        self.own_binds.fetch_add(1, Ordering::SeqCst);
        let mut cmd = self.tool("ldapsearch", &self.url());
        cmd.args(["-D", ROOT_DN, "-y"]).arg(self.dir.path().join("admin.pw"));
        cmd.args([
            "-LLL",
            "-o",
            "ldif_wrap=no",
            "-b",
            "cn=Bind,cn=Operations,cn=Monitor",
            "-s",
            "base",
            "(objectClass=*)",
            "monitorOpInitiated",
            "monitorOpCompleted",
        ]);
        let out = run(cmd, None);
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            return Err(format!("ldapsearch: {}", String::from_utf8_lossy(&out.stderr)));
        }
        let number = |attr: &str| -> Result<u64, String> {
            ldif_values(&stdout, attr)
                .first()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("no {attr} in:\n{stdout}"))
        };
        Ok((number("monitorOpInitiated")?, number("monitorOpCompleted")?))
    }

    /// Freezes the server with SIGSTOP: connections stay open and the
    /// kernel still accepts new ones, but nothing is answered until
    /// [`Slapd::resume`], as with a hung directory. The harness's own calls
    /// ([`Slapd::bind_count`], [`Slapd::modify`], ...) would hang meanwhile.
    /// [`Slapd::stop`] resumes it first; dropping kills it either way.
    pub fn pause(&self) {
        let child = self.child.as_ref().expect("slapd is not running");
        signal(child.id(), "STOP");
        self.paused.store(true, Ordering::SeqCst);
        // kill(2) returns before threads running on other CPUs have
        // stopped, and they could still answer meanwhile.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !all_threads_stopped(child.id()) {
            assert!(Instant::now() < deadline, "slapd did not stop within 5 s of SIGSTOP");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Undoes [`Slapd::pause`] (SIGCONT); a no-op unless paused.
    pub fn resume(&self) {
        if !self.paused.swap(false, Ordering::SeqCst) {
            return;
        }
        if let Some(child) = &self.child {
            signal(child.id(), "CONT");
        }
    }

    /// Stops the server with SIGTERM and waits for it to exit; the database
    /// and ports are kept for [`Slapd::restart`]. A no-op when stopped.
    pub fn stop(&mut self) {
        self.halt("TERM");
    }

    /// Kills the server with SIGKILL, as a crash would, and waits for it to
    /// exit; as with [`Slapd::stop`], the database (written before the
    /// kill: the kernel still holds it) and ports stay for
    /// [`Slapd::restart`]. A no-op when stopped.
    pub fn kill(&mut self) {
        self.halt("KILL");
    }

    /// Turns the `syncprov` overlay on or off (see
    /// [`Slapd::start_with_syncprov`]) from the next [`Slapd::restart`]:
    /// a directory whose persistent searches stop working while its
    /// ordinary searches go on.
    pub fn set_syncprov(&mut self, on: bool) {
        self.syncprov = on;
        std::fs::write(self.dir.path().join("slapd.conf"), self.config_text()).expect("write slapd.conf");
    }

    fn halt(&mut self, sig: &str) {
        if self.child.is_none() {
            return;
        }
        self.resume();
        // Best effort: a server that no longer answers keeps the count of
        // its earlier runs only.
        if let Ok(count) = self.try_bind_count() {
            self.carried_binds = count;
        }
        let mut child = self.child.take().expect("running");
        let termed = Command::new("kill")
            .args([&format!("-{sig}"), &child.id().to_string()])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !termed {
            let _ = child.kill();
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "slapd still ran {} s after SIG{sig}; log:\n{}",
                        STOP_TIMEOUT.as_secs(),
                        self.log()
                    );
                }
            }
        }
        self.join_readers();
        // Keeps other tests' servers off the ports until the restart.
        self.reserved = [self.ldap_port, self.ldaps_port]
            .into_iter()
            .filter_map(|p| reserve_port(p).ok())
            .collect();
    }

    /// Starts the server again on the same ports and database (stopping it
    /// first if it runs) and waits until it is ready. The ports stay
    /// reserved while the server is stopped, so no other process gets them
    /// from the kernel meanwhile.
    pub fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match self.spawn() {
                Ok(()) => return,
                // Only if the ports could not be reserved at the stop.
                Err(StartError::PortInUse) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Err(StartError::PortInUse) => panic!("slapd's ports stayed taken; log:\n{}", self.log()),
                Err(StartError::Failed(why)) => panic!("slapd did not restart: {why}"),
            }
        }
    }

    /// Everything slapd printed so far, across restarts.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Runs slapd in the foreground (`-d` keeps it from detaching, so the
    /// child is slapd itself) and waits until it accepts connections.
    fn spawn(&mut self) -> Result<(), StartError> {
        let log_start = self.log.lock().unwrap().len();
        let urls = format!("{}/ {}/", self.url(), self.ldaps_url());
        let mut child = Command::new(&self.slapd)
            .args(["-d", "256", "-f"])
            .arg(self.dir.path().join("slapd.conf"))
            .args(["-h", &urls])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.slapd.display()));
        self.own_binds.store(0, Ordering::SeqCst);
        self.readers
            .push(collect(child.stdout.take().expect("piped"), Arc::clone(&self.log)));
        self.readers
            .push(collect(child.stderr.take().expect("piped"), Arc::clone(&self.log)));
        // Ready means both listeners accepted a probe connection *and* this
        // slapd logged accepting it: slapd binds its ports with
        // SO_REUSEADDR and only listens after "slapd starting", so should
        // another process listen on a port (one the kernel did not hand
        // out, see `reserve_port`), a probe reaches that process while this
        // slapd is about to fail its listen() and exit.
        let mut probes: Vec<(u16, TcpStream)> = Vec::new();
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait slapd") {
                self.join_readers();
                let log = self.log.lock().unwrap()[log_start..].to_string();
                if log.contains("errno=98") || log.contains("Address already in use") {
                    return Err(StartError::PortInUse);
                }
                return Err(StartError::Failed(format!("slapd exited with {status}; log:\n{log}")));
            }
            let log = self.log.lock().unwrap()[log_start..].to_string();
            if log.contains("slapd starting") {
                for port in [self.ldap_port, self.ldaps_port] {
                    if probes.iter().all(|(p, _)| *p != port) {
                        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
                        if let Ok(stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
                            probes.push((port, stream));
                        }
                    }
                }
                let accepted = |(port, stream): &(u16, TcpStream)| {
                    let from = stream.local_addr().map(|a| a.port()).unwrap_or(0);
                    log.contains(&format!("ACCEPT from IP=127.0.0.1:{from} (IP=127.0.0.1:{port})"))
                };
                if probes.len() == 2 && probes.iter().all(accepted) {
                    self.child = Some(child);
                    self.reserved.clear();
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                self.join_readers();
                return Err(StartError::Failed(format!(
                    "not ready after {} s; log:\n{}",
                    READY_TIMEOUT.as_secs(),
                    &self.log.lock().unwrap()[log_start..]
                )));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn join_readers(&mut self) {
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
    }

    /// Writes the certificates, passwords and `slapd.conf`.
    fn write_files(&self) {
        let dir = self.dir.path();
        std::fs::create_dir_all(dir.join("db")).expect("create db dir");
        std::fs::create_dir_all(dir.join("tls")).expect("create tls dir");
        write_tls(&dir.join("tls"));
        write_secret(&dir.join("admin.pw"), &random_password());
        write_secret(&self.service_password_file(), &random_password());
        std::fs::write(dir.join("slapd.conf"), self.config_text()).expect("write slapd.conf");
    }

    fn config_text(&self) -> String {
        let dir = self.dir.path();
        let schema =
            first_dir(SCHEMA_DIRS).unwrap_or_else(|| panic!("no OpenLDAP schema directory in {SCHEMA_DIRS:?}"));
        let modules = first_dir(MODULE_DIRS);
        let admin_pw = std::fs::read_to_string(dir.join("admin.pw")).expect("read admin password");
        let mut c = String::from("# One test's server; shares nothing with a system slapd.\n");
        for name in ["core", "cosine", "nis", "inetorgperson"] {
            c.push_str(&format!(
                "include \"{}\"\n",
                schema.join(format!("{name}.schema")).display()
            ));
        }
        if let Some(modules) = &modules {
            c.push_str(&format!("modulepath \"{}\"\n", modules.display()));
            // Backends missing from the module directory are assumed built
            // in (Debian builds back_monitor in, back_mdb as a module).
            for module in ["back_mdb", "back_monitor"] {
                if has_module(modules, module) {
                    c.push_str(&format!("moduleload {module}\n"));
                }
            }
            if self.disable == Disable::Ppolicy {
                c.push_str("moduleload ppolicy\n");
            }
            if self.syncprov {
                c.push_str("moduleload syncprov\n");
            }
        }
        c.push_str(&format!(
            "pidfile \"{}\"\nargsfile \"{}\"\n",
            dir.join("slapd.pid").display(),
            dir.join("slapd.args").display()
        ));
        c.push_str(&format!(
            "TLSCACertificateFile \"{}\"\nTLSCertificateFile \"{}\"\nTLSCertificateKeyFile \"{}\"\n",
            dir.join("tls/ca.pem").display(),
            dir.join("tls/server.pem").display(),
            dir.join("tls/server.key").display()
        ));
        match self.size_limit {
            None => c.push_str("sizelimit unlimited\n"),
            // prtotal: a paged search is not bound by the hard limit.
            Some(n) => c.push_str(&format!(
                "sizelimit size.soft={n} size.hard={n} size.prtotal=unlimited\n"
            )),
        }
        c.push_str("timelimit unlimited\n\n");

        c.push_str(&format!(
            "database mdb\nsuffix \"{}\"\nrootdn \"{ROOT_DN}\"\nrootpw \"{admin_pw}\"\n",
            Slapd::BASE_DN
        ));
        c.push_str(&format!("directory \"{}\"\n", dir.join("db").display()));
        // Sparse, so the size costs nothing; no fsync, since tests never
        // outlive the machine.
        c.push_str("maxsize 1073741824\ndbnosync\nindex objectClass,uid,mail,entryUUID eq\n");
        if self.syncprov {
            // syncprov looks entries up by entryCSN when it answers a cookie.
            c.push_str("index entryCSN eq\n");
            c.push_str(&format!(
                "limits dn.exact=\"{SERVICE_DN}\" size=unlimited time=unlimited\n"
            ));
        }
        match self.disable {
            Disable::Ppolicy => {
                // The policy's pwdLockout makes ppolicy honour
                // pwdAccountLockedTime; pwdMaxFailure 0 never locks on
                // failed binds, so wrong-password tests lock nobody.
                c.push_str(&format!("overlay ppolicy\nppolicy_default \"{POLICY_DN}\"\n"));
            }
            Disable::EmployeeType => {
                c.push_str("access to filter=(employeeType=disabled) attrs=userPassword\n    by * none\n");
            }
        }
        if self.syncprov {
            // Checkpoint the context CSN every 100 writes or 10 minutes; the
            // session log lets a resumed cookie learn of deletions.
            c.push_str("overlay syncprov\nsyncprov-checkpoint 100 10\nsyncprov-sessionlog 10000\n");
        }
        c.push_str(&format!(
            "access to attrs=userPassword\n    by anonymous auth\n    by * none\n\
             access to *\n    by dn.exact=\"{SERVICE_DN}\" read\n    by self read\n    by * none\n\n"
        ));

        c.push_str(&format!(
            "database monitor\naccess to *\n    by dn.exact=\"{ROOT_DN}\" read\n    by * none\n"
        ));
        c
    }

    /// Loads the base entries offline (slapd in slapadd mode), which is
    /// faster than adding them once the server runs and costs no binds.
    fn load_initial_entries(&self) {
        let mut ldif = format!(
            "dn: {base}\nobjectClass: dcObject\nobjectClass: organization\ndc: example\no: Example\n\n\
             dn: {people}\nobjectClass: organizationalUnit\nou: people\n\n\
             dn: ou=services,{base}\nobjectClass: organizationalUnit\nou: services\n\n\
             dn: {SERVICE_DN}\nobjectClass: applicationProcess\nobjectClass: simpleSecurityObject\ncn: fedgate\n{pw}\n",
            base = Slapd::BASE_DN,
            people = Slapd::PEOPLE_DN,
            pw = ldif_attr("userPassword", &self.service_password()),
        );
        if self.disable == Disable::Ppolicy {
            ldif.push_str(&format!(
                "dn: ou=policies,{base}\nobjectClass: organizationalUnit\nou: policies\n\n\
                 dn: {POLICY_DN}\nobjectClass: device\nobjectClass: pwdPolicy\ncn: default\n\
                 pwdAttribute: userPassword\npwdLockout: TRUE\npwdMaxFailure: 0\n\n",
                base = Slapd::BASE_DN,
            ));
        }
        let path = self.dir.path().join("initial.ldif");
        std::fs::write(&path, ldif).expect("write initial.ldif");
        let out = Command::new(&self.slapd)
            .args(["-T", "add", "-q", "-f"])
            .arg(self.dir.path().join("slapd.conf"))
            .arg("-l")
            .arg(&path)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("spawn {} -T add: {e}", self.slapd.display()));
        assert!(
            out.status.success(),
            "slapadd failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// An ldap-utils command against `url`, with simple binds and this
    /// server's CA trusted (the environment overrides `/etc/ldap/ldap.conf`).
    fn tool(&self, program: &str, url: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.args(["-x", "-H", url, "-o", "nettimeout=10"])
            .env("LDAPTLS_CACERT", self.ca_file())
            .env("LDAPTLS_REQCERT", "demand");
        cmd
    }

    /// Runs an ldap-utils command bound as the rootdn; panics with its
    /// output unless it succeeds.
    fn admin(&self, program: &str, args: &[&str], input: Option<&str>) -> Output {
        self.own_binds.fetch_add(1, Ordering::SeqCst);
        let mut cmd = self.tool(program, &self.url());
        cmd.args(["-D", ROOT_DN, "-y"]).arg(self.dir.path().join("admin.pw"));
        cmd.args(args);
        let out = run(cmd, input);
        assert!(
            out.status.success(),
            "{program} {args:?} failed ({}):\n{}{}{}\nslapd log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            input.map(|i| format!("input:\n{i}")).unwrap_or_default(),
            self.log()
        );
        out
    }
}

impl Drop for Slapd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // The reader threads end on their own once the pipes close; the
        // temporary directory goes with `self.dir`.
    }
}

/// `kill -<sig> <pid>`; panics unless it succeeds.
fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill -{sig} {pid} failed");
}

/// Whether every thread of process `pid` is stopped (state `T` in
/// `/proc/<pid>/task/<tid>/stat`).
fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().all(|task| {
        std::fs::read_to_string(task.path().join("stat")).is_ok_and(|stat| {
            // "tid (comm) S ...": the name may hold spaces and parentheses.
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next())
                .is_some_and(|state| state == 'T' || state == 't')
        })
    })
}

/// Runs `cmd` to completion, feeding `input` on a separate thread so that a
/// large LDIF cannot deadlock against the tool's output.
/// What `cmd` printed, or its error output when it failed.
fn stdout_or_error(cmd: Command) -> Result<String, String> {
    let out = run(cmd, None);
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

pub(crate) fn run(mut cmd: Command, input: Option<&str>) -> Output {
    cmd.stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let writer = input.map(|input| {
        let mut stdin = child.stdin.take().expect("piped");
        let input = input.to_string();
        std::thread::spawn(move || {
            let _ = stdin.write_all(input.as_bytes());
        })
    });
    let out = child.wait_with_output().expect("wait for ldap tool");
    if let Some(writer) = writer {
        let _ = writer.join();
    }
    out
}

pub(crate) fn collect(stream: impl Read + Send + 'static, log: Arc<Mutex<String>>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => log.lock().unwrap().push_str(&String::from_utf8_lossy(&line)),
            }
        }
    })
}

/// Binds `port` (0: one the kernel picks) on loopback without listening.
/// While bound, the kernel hands the port to no other socket, neither for a
/// port-0 bind nor as a connection's source port, yet connecting to it is
/// refused as when nothing runs there. With SO_REUSEADDR set here and by
/// slapd, slapd can still bind it alongside and take over by listening.
fn reserve_port(port: u16) -> std::io::Result<socket2::Socket> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, port)).into())?;
    Ok(socket)
}

fn local_port(socket: &socket2::Socket) -> u16 {
    socket
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .expect("bound address")
        .port()
}

fn find_slapd() -> PathBuf {
    SLAPD_CANDIDATES
        .iter()
        .map(PathBuf::from)
        .chain(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()).map(|p| p.join("slapd")))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("slapd not found (run scripts/install-test-deps)"))
}

fn first_dir(candidates: &[&str]) -> Option<PathBuf> {
    candidates.iter().map(PathBuf::from).find(|p| p.is_dir())
}

fn has_module(dir: &Path, name: &str) -> bool {
    ["la", "so"]
        .iter()
        .any(|ext| dir.join(format!("{name}.{ext}")).exists())
}

/// Owner-only, as the ldap tools warn about a password file others can
/// read.
pub(crate) fn write_secret(path: &Path, secret: &str) {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    file.write_all(secret.as_bytes()).expect("write secret");
}

fn random_password() -> String {
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(24)
        .map(char::from)
        .collect()
}

/// A CA and a server certificate for 127.0.0.1 and localhost, signed by it.
fn write_tls(dir: &Path) {
    write_ca_and_server(
        dir,
        "fedgate test directory CA",
        &["127.0.0.1".to_string(), "localhost".to_string()],
        "server",
    );
}

/// A CA (`ca.pem`) and a server certificate for `names` (DNS names or IP
/// addresses, the first also its common name) signed by it:
/// `<server>.pem`, and its key `<server>.key`, owner-only.
pub(crate) fn write_ca_and_server(dir: &Path, ca_name: &str, names: &[String], server: &str) {
    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.distinguished_name = DistinguishedName::new();
    ca.distinguished_name.push(DnType::CommonName, ca_name);
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).expect("self-sign CA");

    let key = KeyPair::generate().expect("server key");
    let mut params = CertificateParams::new(names.to_vec()).expect("server params");
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, names[0].as_str());
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params
        .signed_by(&key, &ca_cert, &ca_key)
        .expect("sign server certificate");

    std::fs::write(dir.join("ca.pem"), ca_cert.pem()).expect("write ca.pem");
    std::fs::write(dir.join(format!("{server}.pem")), cert.pem()).expect("write the server certificate");
    write_secret(&dir.join(format!("{server}.key")), &key.serialize_pem());
}

/// Uids go into DNs and LDIF unescaped, so the harness keeps them plain.
fn check_uid(uid: &str) {
    assert!(
        !uid.is_empty() && uid.chars().all(|c| c.is_ascii_alphanumeric() || "._-@".contains(c)),
        "uid {uid:?} needs DN escaping, which the harness does not do"
    );
}

/// One LDIF attribute line; values LDIF cannot carry verbatim (non-ASCII,
/// leading space, colon or `<`, trailing space, line breaks) go base64.
fn ldif_attr(name: &str, value: &str) -> String {
    let verbatim = !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii() && !matches!(b, b'\0' | b'\n' | b'\r'))
        && !value.starts_with([' ', ':', '<'])
        && !value.ends_with(' ');
    if verbatim {
        format!("{name}: {value}\n")
    } else {
        format!("{name}:: {}\n", base64::engine::general_purpose::STANDARD.encode(value))
    }
}

/// The values of `attr` in unwrapped LDIF (base64 values decoded).
pub(crate) fn ldif_values(ldif: &str, attr: &str) -> Vec<String> {
    ldif.lines()
        .filter_map(|line| {
            let (name, rest) = line.split_once(':')?;
            if !name.eq_ignore_ascii_case(attr) {
                return None;
            }
            Some(match rest.strip_prefix(':') {
                Some(b64) => {
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(b64.trim())
                        .expect("base64 in LDIF");
                    String::from_utf8_lossy(&bytes).into_owned()
                }
                None => rest.trim_start().to_string(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok_dn(uid: &str) -> Result<String, String> {
        Ok(format!("dn:{}", Slapd::user_dn(uid)))
    }

    #[test]
    fn slapd_binds_over_plain_starttls_and_ldaps() {
        let slapd = Slapd::start();
        slapd.add_user("alice", "alice@example.com", "correct horse");
        let dn = Slapd::user_dn("alice");
        for transport in [Transport::Plain, Transport::StartTls, Transport::Ldaps] {
            assert_eq!(
                slapd.whoami(transport, &dn, "correct horse"),
                ok_dn("alice"),
                "{transport:?}"
            );
            let refused = slapd.whoami(transport, &dn, "wrong").unwrap_err();
            assert!(refused.contains("Invalid credentials (49)"), "{transport:?}: {refused}");
        }
        // The service account binds with the password from its file.
        let service = slapd.whoami(Transport::StartTls, slapd.service_dn(), &slapd.service_password());
        assert_eq!(service, Ok(format!("dn:{}", slapd.service_dn())));
        assert!(!slapd.service_password().ends_with('\n'));
    }

    /// fedgate's LDAP client verifies with rustls/webpki, which is stricter
    /// about certificates than GnuTLS in the ldap tools.
    #[test]
    fn slapd_certificate_verifies_with_rustls() {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, ServerName};
        let slapd = Slapd::start();
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_file(slapd.ca_file()).unwrap())
            .unwrap();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let config = Arc::new(config);
        for name in ["127.0.0.1", "localhost"] {
            let server_name = ServerName::try_from(name).unwrap();
            let mut conn = rustls::ClientConnection::new(Arc::clone(&config), server_name).unwrap();
            let mut tcp = TcpStream::connect((Ipv4Addr::LOCALHOST, slapd.ldaps_port)).unwrap();
            while conn.is_handshaking() {
                conn.complete_io(&mut tcp).unwrap_or_else(|e| panic!("{name}: {e}"));
            }
        }
    }

    #[test]
    fn slapd_acl_service_reads_all_but_passwords() {
        let slapd = Slapd::start();
        slapd.add_user("alice", "alice@example.com", "pw-a");
        slapd.add_user("bob", "bob@example.com", ":odd pässword ");
        assert_eq!(
            slapd.whoami(Transport::Plain, &Slapd::user_dn("bob"), ":odd pässword "),
            ok_dn("bob")
        );

        let service = (slapd.service_dn(), slapd.service_password());
        let people = slapd
            .search_as(
                Some((service.0, &service.1)),
                Slapd::PEOPLE_DN,
                "(mail=*)",
                &["*", "entryUUID"],
            )
            .unwrap();
        let sorted = |mut v: Vec<String>| {
            v.sort();
            v
        };
        assert_eq!(
            sorted(ldif_values(&people, "mail")),
            ["alice@example.com", "bob@example.com"]
        );
        assert_eq!(
            sorted(ldif_values(&people, "displayName")),
            ["Display alice", "Display bob"]
        );
        assert_eq!(ldif_values(&people, "entryUUID").len(), 2);
        assert!(ldif_values(&people, "userPassword").is_empty(), "{people}");

        // Anonymous clients see nothing; users see their own entry only.
        let nothing = |found: Result<String, String>| match found {
            Ok(ldif) => assert!(ldif.trim().is_empty(), "{ldif}"),
            Err(e) => assert!(e.contains("No such object (32)"), "{e}"),
        };
        nothing(slapd.search_as(None, Slapd::BASE_DN, "(objectClass=*)", &[]));
        let alice = (Slapd::user_dn("alice"), "pw-a");
        let own = slapd
            .search_as(Some((&alice.0, alice.1)), &alice.0, "(objectClass=*)", &["uid", "mail"])
            .unwrap();
        assert_eq!(ldif_values(&own, "mail"), ["alice@example.com"]);
        nothing(slapd.search_as(
            Some((&alice.0, alice.1)),
            &Slapd::user_dn("bob"),
            "(objectClass=*)",
            &[],
        ));
        nothing(slapd.search_as(Some((&alice.0, alice.1)), Slapd::PEOPLE_DN, "(uid=bob)", &[]));
    }

    #[test]
    fn slapd_bind_count_counts_client_binds_only() {
        let slapd = Slapd::start();
        let start = slapd.bind_count();
        assert_eq!(start, 0, "no client has bound yet");
        assert_eq!(slapd.bind_count(), 0, "reading the count does not change it");

        slapd.add_user("alice", "alice@example.com", "pw");
        slapd.set_password("alice", "pw2");
        slapd.entry_uuid("alice");
        assert_eq!(slapd.bind_count(), 0, "administrative calls are not counted");

        let dn = Slapd::user_dn("alice");
        let before = slapd.bind_count();
        assert!(slapd.whoami(Transport::Plain, &dn, "pw").is_err(), "old password");
        assert_eq!(slapd.whoami(Transport::StartTls, &dn, "pw2"), ok_dn("alice"));
        assert_eq!(slapd.whoami(Transport::Ldaps, &dn, "pw2"), ok_dn("alice"));
        let _ = slapd.search_as(None, Slapd::BASE_DN, "(uid=alice)", &[]);
        assert_eq!(slapd.bind_count() - before, 4);
        assert!(slapd.log().contains(&format!("BIND dn=\"{dn}\" method=128")));
    }

    #[test]
    fn slapd_disable_and_enable_with_ppolicy() {
        let slapd = Slapd::start();
        assert_eq!(
            slapd.disabled_filter(),
            "(pwdAccountLockedTime=*)",
            "is the ppolicy module installed?"
        );
        check_disable(slapd);
    }

    #[test]
    fn slapd_disable_and_enable_with_employee_type() {
        let slapd = Slapd::launch(Disable::EmployeeType, None, false);
        assert_eq!(slapd.disabled_filter(), "(employeeType=disabled)");
        check_disable(slapd);
    }

    fn check_disable(slapd: Slapd) {
        slapd.add_user("alice", "alice@example.com", "pw");
        slapd.add_user("bob", "bob@example.com", "pw");
        let dn = Slapd::user_dn("alice");
        let service = slapd.service_password();
        let disabled = || {
            let ldif = slapd
                .search_as(
                    Some((slapd.service_dn(), &service)),
                    Slapd::PEOPLE_DN,
                    slapd.disabled_filter(),
                    &["uid"],
                )
                .unwrap();
            ldif_values(&ldif, "uid")
        };
        assert!(disabled().is_empty());

        slapd.disable_user("alice");
        let refused = slapd.whoami(Transport::Plain, &dn, "pw").unwrap_err();
        assert!(refused.contains("Invalid credentials (49)"), "{refused}");
        assert_eq!(disabled(), ["alice"]);
        assert_eq!(
            slapd.whoami(Transport::Plain, &Slapd::user_dn("bob"), "pw"),
            ok_dn("bob")
        );

        slapd.enable_user("alice");
        assert_eq!(slapd.whoami(Transport::Plain, &dn, "pw"), ok_dn("alice"));
        assert!(disabled().is_empty());
        slapd.enable_user("alice");
    }

    #[test]
    fn slapd_restart_keeps_ports_data_and_count() {
        let mut slapd = Slapd::start();
        let (url, ldaps) = (slapd.url(), slapd.ldaps_url());
        slapd.add_user("alice", "alice@example.com", "pw");
        let dn = Slapd::user_dn("alice");
        assert_eq!(slapd.whoami(Transport::Plain, &dn, "pw"), ok_dn("alice"));
        assert_eq!(slapd.bind_count(), 1);

        slapd.stop();
        let down = slapd.whoami(Transport::Plain, &dn, "pw").unwrap_err();
        assert!(down.contains("Can't contact LDAP server"), "{down}");
        slapd.restart();
        assert_eq!((slapd.url(), slapd.ldaps_url()), (url, ldaps));
        assert_eq!(slapd.bind_count(), 1, "carried over the restart");
        assert_eq!(slapd.whoami(Transport::Ldaps, &dn, "pw"), ok_dn("alice"));
        assert_eq!(slapd.bind_count(), 2);
        slapd.restart();
        assert_eq!(slapd.whoami(Transport::StartTls, &dn, "pw"), ok_dn("alice"));
        assert_eq!(slapd.bind_count(), 3);
        assert_eq!(slapd.log().matches("slapd starting").count(), 3);
    }

    #[test]
    fn slapd_rename_keeps_entry_uuid_and_changes_apply() {
        let slapd = Slapd::start();
        slapd.add_user("alice", "alice@example.com", "pw");
        let uuid = slapd.entry_uuid("alice");
        slapd.rename_user("alice", "alice2");
        assert_eq!(slapd.entry_uuid("alice2"), uuid);
        assert_eq!(
            slapd.whoami(Transport::Plain, &Slapd::user_dn("alice2"), "pw"),
            ok_dn("alice2")
        );
        assert!(slapd.whoami(Transport::Plain, &Slapd::user_dn("alice"), "pw").is_err());

        slapd.modify(&format!(
            "dn: {}\nchangetype: modify\nreplace: mail\nmail: a2@example.com\n-\n",
            Slapd::user_dn("alice2")
        ));
        let entry = slapd.admin_search(&Slapd::user_dn("alice2"), "base", "(objectClass=*)", &["mail", "uid"]);
        assert_eq!(ldif_values(&entry, "mail"), ["a2@example.com"]);
        assert_eq!(ldif_values(&entry, "uid"), ["alice2"]);

        let bulk: String = (0..50)
            .map(|i| {
                format!(
                    "dn: uid=u{i},{people}\nobjectClass: inetOrgPerson\nuid: u{i}\ncn: u{i}\nsn: u{i}\n\
                     mail: u{i}@example.com\nuserPassword: p{i}\n\n",
                    people = Slapd::PEOPLE_DN
                )
            })
            .collect();
        slapd.add_users_ldif(&bulk);
        assert_eq!(
            slapd.whoami(Transport::Plain, &Slapd::user_dn("u49"), "p49"),
            ok_dn("u49")
        );

        slapd.delete_user("alice2");
        let gone = slapd.admin_search(Slapd::PEOPLE_DN, "one", "(uid=alice2)", &["uid"]);
        assert!(gone.trim().is_empty(), "{gone}");
        let all = slapd.admin_search(Slapd::PEOPLE_DN, "one", "(objectClass=inetOrgPerson)", &["1.1"]);
        assert_eq!(all.lines().filter(|l| l.starts_with("dn:")).count(), 50);
    }

    #[test]
    fn slapd_size_limit_fails_unpaged_searches_past_it_but_not_paged_ones() {
        let slapd = Slapd::start_with_size_limit(1000);
        let started = Instant::now();
        let uids = slapd.add_generated_users("gen", 1200, "gen pw");
        let took = started.elapsed();
        assert!(took < Duration::from_secs(10), "adding 1,200 users took {took:?}");
        assert_eq!(
            (uids.len(), uids[0].as_str(), uids[1199].as_str()),
            (1200, "gen0", "gen1199")
        );
        assert_eq!(
            slapd.whoami(Transport::Plain, &Slapd::user_dn("gen1199"), "gen pw"),
            ok_dn("gen1199")
        );
        let entry = slapd.admin_search(
            &Slapd::user_dn("gen7"),
            "base",
            "(objectClass=*)",
            &["mail", "displayName"],
        );
        assert_eq!(ldif_values(&entry, "mail"), ["gen7@example.com"]);
        assert_eq!(ldif_values(&entry, "displayName"), ["Display gen7"]);

        let password = slapd.service_password();
        let service = Some((slapd.service_dn(), password.as_str()));
        let all = "(objectClass=inetOrgPerson)";
        let refused = slapd.search_as(service, Slapd::PEOPLE_DN, all, &["uid"]).unwrap_err();
        assert!(refused.contains("Size limit exceeded (4)"), "{refused}");
        // Under the limit, unpaged searches work.
        let some = slapd
            .search_as(service, Slapd::PEOPLE_DN, "(uid=gen1*)", &["uid"])
            .unwrap();
        assert_eq!(ldif_values(&some, "uid").len(), 1 + 10 + 100 + 200);
        // Paged, everything, in pages below and above the limit.
        for page in [500, 1000] {
            let paged = slapd
                .search_paged_as(service, Slapd::PEOPLE_DN, all, &["uid"], page)
                .unwrap_or_else(|e| panic!("page size {page}: {e}"));
            assert_eq!(ldif_values(&paged, "uid").len(), 1200, "page size {page}");
        }
        // The rootdn is not limited.
        let root = slapd.admin_search(Slapd::PEOPLE_DN, "one", all, &["1.1"]);
        assert_eq!(root.lines().filter(|l| l.starts_with("dn:")).count(), 1200);
        // Nor is a server started without a limit.
        let unlimited = Slapd::start();
        unlimited.add_generated_users("u", 1100, "pw");
        let password = unlimited.service_password();
        let found = unlimited
            .search_as(
                Some((unlimited.service_dn(), &password)),
                Slapd::PEOPLE_DN,
                all,
                &["uid"],
            )
            .unwrap();
        assert_eq!(ldif_values(&found, "uid").len(), 1100);
    }

    /// The RFC 4533 Sync Request control, which syncprov serves.
    const SYNC_REQUEST: &str = "1.3.6.1.4.1.4203.1.9.1.1";

    #[test]
    fn slapd_syncprov_serves_the_service_account_a_persistent_search() {
        assert!(
            !Slapd::start().supported_controls().iter().any(|c| c == SYNC_REQUEST),
            "a plain slapd advertises content synchronisation"
        );
        let slapd = Slapd::start_with_syncprov();
        assert!(
            slapd.supported_controls().iter().any(|c| c == SYNC_REQUEST),
            "{:?}",
            slapd.supported_controls()
        );
        slapd.add_user("alice", "alice@example.com", "pw");
        slapd.add_user("bob", "bob@example.com", "pw");
        slapd.disable_user("alice");
        assert_eq!(
            slapd.whoami(Transport::Plain, &Slapd::user_dn("bob"), "pw"),
            ok_dn("bob"),
            "binds work under the overlay"
        );

        // refreshAndPersist as the service account: the refresh phase
        // returns both users, then the search stays open and reports each
        // change as it happens.
        let mut cmd = slapd.tool("ldapsearch", &slapd.url());
        cmd.args(["-LLL", "-o", "ldif_wrap=no", "-E", "!sync=rp", "-D", SERVICE_DN, "-y"])
            .arg(slapd.service_password_file())
            .args(["-b", Slapd::PEOPLE_DN, "(objectClass=inetOrgPerson)", "mail"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut search = Persistent(cmd.spawn().expect("spawn ldapsearch"));
        let out: Arc<Mutex<String>> = Arc::default();
        let _reader = collect(search.0.stdout.take().expect("piped"), Arc::clone(&out));
        let _errors = collect(search.0.stderr.take().expect("piped"), Arc::clone(&out));
        let mut wait_for = |what: &str| {
            let deadline = Instant::now() + Duration::from_secs(10);
            while !out.lock().unwrap().contains(what) {
                if let Some(status) = search.0.try_wait().unwrap() {
                    panic!("ldapsearch ended ({status}) before {what:?}:\n{}", out.lock().unwrap());
                }
                assert!(
                    Instant::now() < deadline,
                    "no {what:?} from the persistent search:\n{}\nslapd log:\n{}",
                    out.lock().unwrap(),
                    slapd.log()
                );
                std::thread::sleep(Duration::from_millis(10));
            }
        };
        wait_for("mail: bob@example.com");
        wait_for("mail: alice@example.com");
        slapd.add_user("carol", "carol@example.com", "pw");
        wait_for("mail: carol@example.com");
        slapd.rename_user("carol", "caroline");
        wait_for(&format!("dn: {}", Slapd::user_dn("caroline")));
        slapd.delete_user("bob");
        // A deletion comes as the entry's DN with a delete sync state and
        // no attributes; ldapsearch prints the DN again.
        let deleted = |out: &str| out.matches(&format!("dn: {}", Slapd::user_dn("bob"))).count();
        let deadline = Instant::now() + Duration::from_secs(10);
        while deleted(&out.lock().unwrap()) < 2 {
            assert!(
                Instant::now() < deadline,
                "no deletion reported:\n{}",
                out.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(search.0.try_wait().unwrap().is_none(), "the persistent search ended");
        assert!(!slapd.log().contains("err=4 "), "{}", slapd.log());
    }

    /// A refreshOnly content synchronisation (`-E '!sync=ro'`, critical)
    /// as the service account: the LDIF of the users, or the tool's error.
    fn refresh_only(slapd: &Slapd) -> Result<String, String> {
        let mut cmd = slapd.tool("ldapsearch", &slapd.url());
        cmd.args(["-LLL", "-o", "ldif_wrap=no", "-E", "!sync=ro", "-D", SERVICE_DN, "-y"])
            .arg(slapd.service_password_file())
            .args(["-b", Slapd::PEOPLE_DN, "(objectClass=inetOrgPerson)", "uid"]);
        stdout_or_error(cmd)
    }

    #[test]
    fn slapd_kill_keeps_the_data_and_syncprov_turns_off_and_on_at_restarts() {
        let mut slapd = Slapd::start_with_syncprov();
        slapd.add_user("alice", "alice@example.com", "pw");
        slapd.add_user("bob", "bob@example.com", "pw");
        slapd.delete_user("bob");
        slapd.kill();
        let down = slapd
            .whoami(Transport::Plain, &Slapd::user_dn("alice"), "pw")
            .unwrap_err();
        assert!(down.contains("Can't contact LDAP server"), "{down}");
        slapd.restart();
        let synced = refresh_only(&slapd).unwrap();
        assert_eq!(ldif_values(&synced, "uid"), ["alice"], "after SIGKILL");

        slapd.set_syncprov(false);
        slapd.restart();
        let refused = refresh_only(&slapd).unwrap_err();
        assert!(refused.contains("Critical extension is unavailable (12)"), "{refused}");
        // Ordinary searches go on.
        let password = slapd.service_password();
        let found = slapd
            .search_as(Some((SERVICE_DN, &password)), Slapd::PEOPLE_DN, "(uid=alice)", &["uid"])
            .unwrap();
        assert_eq!(ldif_values(&found, "uid"), ["alice"]);

        slapd.set_syncprov(true);
        slapd.restart();
        assert_eq!(ldif_values(&refresh_only(&slapd).unwrap(), "uid"), ["alice"]);
        assert_eq!(slapd.log().matches("slapd starting").count(), 4);
    }

    /// A running `ldapsearch`, killed when dropped.
    struct Persistent(Child);

    impl Drop for Persistent {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    #[test]
    fn slapd_pause_stops_answering_until_resume() {
        // An anonymous simple bind, message id 1, and the start of its
        // success response.
        const BIND: &[u8] = b"\x30\x0c\x02\x01\x01\x60\x07\x02\x01\x03\x04\x00\x80\x00";
        const BOUND: &[u8] = b"\x30\x0c\x02\x01\x01\x61\x07\x0a\x01\x00";
        let mut slapd = Slapd::start();
        slapd.add_user("alice", "alice@example.com", "pw");
        slapd.resume(); // a no-op when not paused
        let dn = Slapd::user_dn("alice");

        slapd.pause();
        let mut conn = TcpStream::connect((Ipv4Addr::LOCALHOST, slapd.ldap_port)).expect("connect while paused");
        conn.write_all(BIND).unwrap();
        conn.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        let mut answer = [0u8; 14];
        let silent = conn.read(&mut answer);
        assert!(
            silent
                .as_ref()
                .is_err_and(|e| matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)),
            "a paused slapd answered: {silent:?}"
        );
        slapd.resume();
        conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        conn.read_exact(&mut answer).expect("answer after resume");
        assert_eq!(&answer[..BOUND.len()], BOUND);
        assert_eq!(slapd.whoami(Transport::Plain, &dn, "pw"), ok_dn("alice"));

        // Stopping a paused server works, and so does the restart.
        slapd.pause();
        slapd.stop();
        slapd.restart();
        assert_eq!(slapd.whoami(Transport::Plain, &dn, "pw"), ok_dn("alice"));
        slapd.pause(); // dropped while paused
    }
}
