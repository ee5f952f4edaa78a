//! The admin command line (`fedgate user ...`, `fedgate app-password ...`,
//! `fedgate signins ...`) run as separate processes against a test server's
//! config, and so against the store that server reads, as an operator would.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::fedgate::binary;

/// How one command run ended and what it printed.
#[derive(Debug)]
pub struct CliOutput {
    pub command: String,
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl CliOutput {
    pub fn from_output(command: String, out: Output) -> CliOutput {
        CliOutput {
            command,
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Standard output; panics, showing standard error, unless the command
    /// exited 0.
    pub fn success(self) -> String {
        assert_eq!(
            self.code, 0,
            "`fedgate {}` failed:\n{}{}",
            self.command, self.stdout, self.stderr
        );
        self.stdout
    }

    /// Standard output of a successful `--json` command, parsed.
    pub fn json(self) -> Value {
        let command = self.command.clone();
        let stdout = self.success();
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("`fedgate {command}` printed no JSON ({e}):\n{stdout}"))
    }
}

/// The command line bound to one config file. Cheap to clone into threads,
/// and still valid after the server is restarted on the same config.
#[derive(Debug, Clone)]
pub struct Admin {
    config: PathBuf,
}

impl Admin {
    pub fn new(config: &Path) -> Admin {
        Admin {
            config: config.to_path_buf(),
        }
    }

    /// `fedgate --config CONFIG ARGS...`, not started, with no standard
    /// input; for tests that must hold the process (to kill it).
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(binary());
        cmd.arg("--config")
            .arg(&self.config)
            .args(args)
            .env_remove("RUST_LOG")
            .env_remove("FEDGATE_CONFIG")
            .stdin(Stdio::null());
        cmd
    }

    pub fn run(&self, args: &[&str]) -> CliOutput {
        let out = self.command(args).output().expect("run fedgate");
        CliOutput::from_output(args.join(" "), out)
    }

    pub fn run_with_stdin(&self, args: &[&str], input: &str) -> CliOutput {
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn fedgate");
        let mut stdin = child.stdin.take().expect("stdin is piped");
        stdin.write_all(input.as_bytes()).expect("write stdin");
        drop(stdin);
        let out = child.wait_with_output().expect("wait for fedgate");
        CliOutput::from_output(args.join(" "), out)
    }

    /// A cloud-only user in MFA `state`, with `password` or (with `None`)
    /// app passwords only.
    pub fn add_user(&self, upn: &str, state: &str, password: Option<&str>) {
        let args = ["user", "add", upn, "--state", state];
        match password {
            None => self.run(&args).success(),
            Some(password) => {
                let mut args = args.to_vec();
                args.push("--password-stdin");
                self.run_with_stdin(&args, password).success()
            }
        };
    }

    /// Creates an app password and returns it as shown to the user.
    pub fn create_app_password(&self, upn: &str, name: &str) -> String {
        let created = self
            .run(&["--json", "app-password", "create", upn, "--name", name])
            .json();
        created["password"]
            .as_str()
            .unwrap_or_else(|| panic!("no password in {created}"))
            .to_owned()
    }

    pub fn allow_app_passwords(&self, allow: bool) {
        self.run(&["settings", "set", "allow-app-passwords", &allow.to_string()])
            .success();
    }

    /// Every audit record in the store, newest first.
    pub fn signins(&self) -> Vec<Value> {
        match self.run(&["--json", "signins", "--limit", "100000"]).json() {
            Value::Array(records) => records,
            other => panic!("signins --json printed {other}"),
        }
    }

    /// Polls the audit log until `done` holds for it: records reach the
    /// store from a batched writer, a second or so after the request.
    pub fn wait_signins(&self, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let records = self.signins();
            if done(&records) {
                return records;
            }
            assert!(
                Instant::now() < deadline,
                "audit log still lacks {what} after 20 s; it holds:\n{}",
                serde_json::to_string_pretty(&records).unwrap()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}
