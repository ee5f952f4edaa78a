//! Caddy (Debian's `caddy` 2.6) in front of fedgate: `caddy run` with the
//! test's Caddyfile on a free loopback port, the admin endpoint off,
//! automatic HTTPS off, and HOME and the XDG directories in the test's
//! directory, so nothing is written outside it. The system's caddy service
//! is never used. It runs under the [`super::watched`] watchdog, so no
//! Caddy outlives its test.

use std::net::SocketAddr;
use std::time::Duration;

use super::watched::{on_free_port, wait_listening, Watched};

const START_TIMEOUT: Duration = Duration::from_secs(20);

pub struct Caddy {
    /// The address the test's site listens on.
    pub addr: SocketAddr,
    process: Watched,
    _dir: tempfile::TempDir,
}

impl Caddy {
    /// Starts Caddy with the site blocks `sites(listen)` returns (one must
    /// serve `http://{listen}`) after global options that turn the admin
    /// endpoint and automatic HTTPS off. Waits until it accepts connections.
    pub fn start(sites: impl Fn(SocketAddr) -> String) -> Caddy {
        on_free_port("caddy", |addr| Caddy::launch(&sites, addr))
    }

    fn launch(sites: &impl Fn(SocketAddr) -> String, addr: SocketAddr) -> Result<Caddy, String> {
        let dir = tempfile::tempdir().expect("temp dir");
        let text = format!("{{\n    admin off\n    auto_https off\n}}\n\n{}", sites(addr));
        let config = dir.path().join("Caddyfile");
        std::fs::write(&config, text).expect("write Caddyfile");
        let home = dir.path().join("home");
        let process = Watched::spawn(
            "caddy",
            &[
                "run".as_ref(),
                "--config".as_ref(),
                config.as_os_str(),
                "--adapter".as_ref(),
                "caddyfile".as_ref(),
            ],
            &[
                ("HOME", &home),
                ("XDG_DATA_HOME", &home.join("data")),
                ("XDG_CONFIG_HOME", &home.join("config")),
            ],
        );
        wait_listening(&process, "caddy", &[addr], START_TIMEOUT)?;
        Ok(Caddy {
            addr,
            process,
            _dir: dir,
        })
    }

    /// What Caddy printed so far (its JSON log lines).
    pub fn output(&self) -> String {
        self.process.output()
    }
}
