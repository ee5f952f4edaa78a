use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;
use crate::model::ManualClock;

fn config(dir: &Path, extra: &str) -> Config {
    let text = format!(
        "[server]\nlisten_plain = [\"127.0.0.1:8080\"]\n{extra}\n\
         [[route]]\npath = \"/a\"\nupstream = \"builtin:whoami\"\nrealm = \"none\"\n"
    );
    let path = dir.join("fedgate.toml");
    std::fs::write(&path, text).unwrap();
    Config::load(&path).unwrap()
}

fn write(dir: &Path, text: &str) {
    std::fs::write(dir.join("fedgate.toml"), text).unwrap();
}

#[test]
fn routes_and_certificates_come_from_the_new_file_listeners_stay() {
    let dir = tempfile::tempdir().unwrap();
    let running = config(dir.path(), "tls_cert = \"old.pem\"");
    let new = config(
        dir.path(),
        "listen = [\"127.0.0.1:9443\"]\ntls_cert = \"new.pem\"\nworkers = 3\n\
         [[route]]\npath = \"/b\"\nupstream = \"builtin:whoami\"\nrealm = \"none\"",
    );
    let next = effective(&running, &new);
    assert_eq!(next.routes.len(), 2);
    assert_eq!(next.server.tls_cert, PathBuf::from("new.pem"));
    assert_eq!(next.server.listen, running.server.listen);
    assert_eq!(next.server.workers, running.server.workers);
    assert_eq!(
        restart_keys(&running, &new),
        vec!["server.listen", "server.workers"],
        "the changed keys that wait for a restart"
    );
    assert!(restart_keys(&running, &next).is_empty());
}

#[test]
fn the_mail_endpoint_waits_for_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let off = config(dir.path(), "");
    let on = config(
        dir.path(),
        "[mail_auth]\npath = \"/_fedgate/mail\"\n[[mail_backend]]\nprotocol = \"imap\"\naddress = \"127.0.0.1:1143\"",
    );
    let moved = config(
        dir.path(),
        "[mail_auth]\npath = \"/_fedgate/mail\"\n[[mail_backend]]\nprotocol = \"imap\"\naddress = \"127.0.0.1:1144\"",
    );
    assert_eq!(restart_keys(&off, &on), vec!["[mail_auth] and [[mail_backend]]"]);
    assert_eq!(restart_keys(&on, &moved), vec!["[mail_auth] and [[mail_backend]]"]);
    assert_eq!(effective(&on, &moved).mail, on.mail, "the running endpoint stays");
    assert!(restart_keys(&on, &on.clone()).is_empty());
    // A backend moved leaves the endpoint where the routes were checked
    // against it; the endpoint itself turned on, off or moved does not.
    assert_eq!(endpoint_moved(&on, &moved), None);
    assert_eq!(endpoint_moved(&off, &on), Some("mail_auth.path"));
    assert_eq!(endpoint_moved(&on, &off), Some("mail_auth.path"));
    let elsewhere = config(
        dir.path(),
        "[mail_auth]\npath = \"/_fedgate/mail2\"\n[[mail_backend]]\nprotocol = \"imap\"\naddress = \"127.0.0.1:1143\"",
    );
    assert_eq!(endpoint_moved(&on, &elsewhere), Some("mail_auth.path"));
    let forward = config(dir.path(), "[forward_auth]\npath = \"/_fedgate/auth\"");
    assert_eq!(endpoint_moved(&off, &forward), Some("forward_auth.path"));
}

#[test]
fn store_and_admin_listener_changes_wait_for_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let running = config(dir.path(), "[admin]\nlisten = \"127.0.0.1:9090\"");
    let new = config(
        dir.path(),
        "[admin]\nlisten = \"127.0.0.1:9091\"\n[store]\nurl = \"sqlite://elsewhere.db\"",
    );
    assert_eq!(restart_keys(&running, &new), vec!["admin.listen", "[store]"]);
    let next = effective(&running, &new);
    assert_eq!(next.store.url, running.store.url);
    assert_eq!(next.admin.unwrap().listen, running.admin.unwrap().listen);
}

#[test]
fn turning_the_admin_api_on_or_off_and_smtp_changes_wait_for_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let on = config(
        dir.path(),
        "[admin]\nlisten = \"127.0.0.1:9090\"\ntoken_file = \"a.tokens\"",
    );
    let other = config(
        dir.path(),
        "[admin]\nlisten = \"127.0.0.1:9090\"\ntoken_file = \"b.tokens\"",
    );
    let off = config(dir.path(), "[admin]\nlisten = \"127.0.0.1:9090\"");
    // Another file is read by the reload.
    assert!(restart_keys(&on, &other).is_empty());
    let next = effective(&on, &other);
    assert_eq!(next.admin.unwrap().token_file, Some(PathBuf::from("b.tokens")));
    // Off, or on: the running file (or none) stays.
    assert_eq!(restart_keys(&on, &off), vec!["admin.token_file"]);
    assert_eq!(
        effective(&on, &off).admin.unwrap().token_file,
        Some(PathBuf::from("a.tokens"))
    );
    assert_eq!(restart_keys(&off, &on), vec!["admin.token_file"]);
    assert_eq!(effective(&off, &on).admin.unwrap().token_file, None);

    let smtp = config(
        dir.path(),
        "[smtp]\nhost = \"127.0.0.1\"\ntls = \"none\"\nfrom = \"it@corp.example.com\"\n\
         portal_url = \"https://mail.corp.example.com/portal\"",
    );
    assert_eq!(restart_keys(&off, &smtp), vec!["[admin]", "[smtp]"]);
    assert!(effective(&off, &smtp).smtp.is_none());
}

/// A part that counts its commits and fails to prepare when told to.
struct Counting {
    name: &'static str,
    fail: bool,
    commits: Arc<AtomicUsize>,
}

impl Reloadable for Counting {
    fn name(&self) -> &'static str {
        self.name
    }
    fn prepare(&self, _new: &Config) -> Result<Box<dyn Commit>, ReloadError> {
        if self.fail {
            return Err(ReloadError::part(self.name, "route[0].upstream_ca_file: unreadable"));
        }
        let commits = Arc::clone(&self.commits);
        Ok(Box::new(CommitFn(move || {
            commits.fetch_add(1, Ordering::SeqCst);
        })))
    }
}

fn registry(dir: &Path, fail_second: bool) -> (Registry, Arc<AtomicUsize>) {
    let running = Arc::new(config(dir, ""));
    let mut registry = Registry::new(&dir.join("fedgate.toml"), running, Arc::new(ManualClock::new(1_000)));
    let commits = Arc::new(AtomicUsize::new(0));
    registry.register(Arc::new(Counting {
        name: "first",
        fail: false,
        commits: Arc::clone(&commits),
    }));
    registry.register(Arc::new(Counting {
        name: "second",
        fail: fail_second,
        commits: Arc::clone(&commits),
    }));
    (registry, commits)
}

#[test]
fn a_part_that_cannot_prepare_leaves_every_part_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let (registry, commits) = registry(dir.path(), true);
    let err = registry.reload().unwrap_err();
    assert!(err.to_string().contains("second: route[0].upstream_ca_file"), "{err}");
    assert_eq!(commits.load(Ordering::SeqCst), 0, "a part was committed");
}

#[test]
fn a_file_that_does_not_parse_changes_nothing_and_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let (registry, commits) = registry(dir.path(), false);
    write(dir.path(), "[server]\nlisten_plain = [\"127.0.0.1:8080\"]\nbogus = 1\n");
    let err = registry.reload().unwrap_err();
    assert!(err.to_string().contains("bogus"), "{err}");
    assert_eq!(commits.load(Ordering::SeqCst), 0);
}

#[test]
fn a_failing_one_step_part_stops_the_commits_and_a_good_reload_applies_all() {
    let dir = tempfile::tempdir().unwrap();
    let (mut registry, commits) = registry(dir.path(), false);
    let tokens_ok = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ok = Arc::clone(&tokens_ok);
    registry.register_one_step("admin tokens", move |_| {
        if ok.load(Ordering::SeqCst) {
            Ok("2 tokens".into())
        } else {
            Err(ReloadError::part(
                "admin tokens",
                "admin.token_file: line 3 has no token",
            ))
        }
    });
    assert!(registry.reload().is_err());
    assert_eq!(commits.load(Ordering::SeqCst), 0);

    tokens_ok.store(true, Ordering::SeqCst);
    let done = registry.reload().unwrap();
    assert_eq!(commits.load(Ordering::SeqCst), 2);
    assert_eq!(done.applied, vec!["admin tokens (2 tokens)", "first", "second"]);
    assert!(done.needs_restart.is_empty());
}

#[test]
fn turning_forward_auth_on_off_or_moving_it_waits_for_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let off = config(dir.path(), "");
    let on = config(dir.path(), "[forward_auth]\npath = \"/_fedgate/auth\"");
    let moved = config(dir.path(), "[forward_auth]\npath = \"/_auth\"");
    assert_eq!(restart_keys(&off, &on), vec!["[forward_auth]"]);
    assert_eq!(restart_keys(&on, &moved), vec!["[forward_auth]"]);
    assert_eq!(restart_keys(&on, &off), vec!["[forward_auth]"]);
    let next = effective(&on, &moved);
    assert_eq!(next.forward_auth, on.forward_auth, "the running endpoint stays");
    assert!(restart_keys(&on, &on).is_empty());
}
