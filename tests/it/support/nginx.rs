//! nginx (Debian's `nginx-light`, which has `auth_request`) in front of
//! fedgate: one process per test, in the foreground with the test's
//! `http` servers on a free loopback port, everything it writes (pid, temp
//! files, logs) in the test's directory. The system's nginx service and
//! `/etc/nginx` are never used. It runs under the [`super::watched`]
//! watchdog, so no nginx outlives its test.

use std::net::SocketAddr;
use std::time::Duration;

use super::watched::{on_free_port, wait_listening, Watched};

const START_TIMEOUT: Duration = Duration::from_secs(15);

pub struct Nginx {
    /// The address the test's server block listens on.
    pub addr: SocketAddr,
    process: Watched,
    _dir: tempfile::TempDir,
}

impl Nginx {
    /// Starts nginx with the `server { ... }` blocks (and any other `http`
    /// directives) that `servers(listen)` returns; one of them must listen
    /// on `listen`. Waits until it accepts connections.
    pub fn start(servers: impl Fn(SocketAddr) -> String) -> Nginx {
        on_free_port("nginx", |addr| Nginx::launch(&servers, addr))
    }

    fn launch(servers: &impl Fn(SocketAddr) -> String, addr: SocketAddr) -> Result<Nginx, String> {
        let dir = tempfile::tempdir().expect("temp dir");
        let d = dir.path().display();
        // One process (no master, no workers to run as another user), so
        // the watchdog's PID is nginx and the files under the test's
        // directory need no other owner.
        let text = format!(
            "daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log stderr warn;\n\
             events {{ worker_connections 256; }}\n\
             http {{\n    access_log off;\n    client_body_temp_path {d}/body;\n    proxy_temp_path {d}/proxy;\n    \
             fastcgi_temp_path {d}/fastcgi;\n    uwsgi_temp_path {d}/uwsgi;\n    scgi_temp_path {d}/scgi;\n{}\n}}\n",
            servers(addr)
        );
        let config = dir.path().join("nginx.conf");
        std::fs::write(&config, text).expect("write nginx config");
        let process = Watched::spawn(
            binary(),
            &[
                "-p".as_ref(),
                dir.path().as_os_str(),
                "-e".as_ref(),
                "stderr".as_ref(),
                "-c".as_ref(),
                config.as_os_str(),
            ],
            &[],
        );
        wait_listening(&process, "nginx", &[addr], START_TIMEOUT)?;
        Ok(Nginx {
            addr,
            process,
            _dir: dir,
        })
    }

    /// What nginx printed so far (its error log).
    pub fn output(&self) -> String {
        self.process.output()
    }
}

/// nginx lives in /usr/sbin, which is not on every user's PATH.
fn binary() -> &'static str {
    if std::path::Path::new("/usr/sbin/nginx").exists() {
        "/usr/sbin/nginx"
    } else {
        "nginx"
    }
}
