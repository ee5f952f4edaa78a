//! The files under `contrib/`: the systemd unit keeps its sandboxing and
//! runs `fedgate serve --config ...` (and `systemd-analyze verify` accepts
//! it, where systemd is installed), and the Dockerfile is one a builder can
//! take (known instructions, `FROM` first, a user that is not root, every
//! file it copies present in the repository).
//!
//! Each check is a function from the file's text to its problems, and each
//! test also removes what the check requires and watches it complain, so
//! the checks cannot pass by finding nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::fedgate::binary;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// `key=value` assignments of a unit file, by key, in file order.
fn unit_keys(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut keys: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') || line.starts_with('[') {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            keys.entry(k.trim().to_owned()).or_default().push(v.trim().to_owned());
        }
    }
    keys
}

/// What the unit must say, exactly.
const UNIT_REQUIRED: &[(&str, &str)] = &[
    ("ProtectSystem", "strict"),
    ("NoNewPrivileges", "yes"),
    ("CapabilityBoundingSet", "CAP_NET_BIND_SERVICE"),
    ("AmbientCapabilities", "CAP_NET_BIND_SERVICE"),
    ("PrivateTmp", "yes"),
    ("ProtectHome", "yes"),
    ("ProtectKernelTunables", "yes"),
    ("ProtectKernelModules", "yes"),
    ("ProtectKernelLogs", "yes"),
    ("ProtectControlGroups", "yes"),
    ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
    ("SystemCallFilter", "@system-service"),
    ("MemoryDenyWriteExecute", "yes"),
    ("LockPersonality", "yes"),
    ("RestrictNamespaces", "yes"),
    ("User", "fedgate"),
    ("ExecReload", "/bin/kill -HUP $MAINPID"),
    ("Restart", "on-failure"),
];

fn unit_problems(text: &str) -> Vec<String> {
    let keys = unit_keys(text);
    let mut problems = Vec::new();
    for (key, want) in UNIT_REQUIRED {
        if !keys.get(*key).is_some_and(|values| values.iter().any(|v| v == want)) {
            problems.push(format!("{key}={want} missing"));
        }
    }
    match keys.get("LimitNOFILE").and_then(|v| v.last()) {
        Some(n) if n.parse::<u64>().is_ok_and(|n| n >= 4096) => {}
        other => problems.push(format!("LimitNOFILE must be a number of at least 4096, is {other:?}")),
    }
    // Writable: the data directory and nothing else.
    let data = keys.get("WorkingDirectory").and_then(|v| v.last());
    match (keys.get("ReadWritePaths").map(Vec::as_slice), data) {
        (Some([only]), Some(data)) if only == data => {}
        other => problems.push(format!(
            "ReadWritePaths must be the data directory (WorkingDirectory) alone: {other:?}"
        )),
    }
    match keys.get("ExecStart").map(Vec::as_slice) {
        Some([exec]) => {
            let words: Vec<&str> = exec.split_whitespace().collect();
            match words.as_slice() {
                [program, "serve", "--config", config]
                    if program.starts_with('/') && program.ends_with("/fedgate") && config.starts_with('/') => {}
                _ => problems.push(format!(
                    "ExecStart must be /PATH/fedgate serve --config /PATH, is {exec}"
                )),
            }
        }
        other => problems.push(format!("one ExecStart expected: {other:?}")),
    }
    problems
}

/// The unit with every line of `key` taken out.
fn without_key(text: &str, key: &str) -> String {
    text.lines()
        .filter(|l| !l.trim_start().starts_with(&format!("{key}=")))
        .map(|l| format!("{l}\n"))
        .collect()
}

#[test]
fn the_systemd_unit_is_sandboxed_and_runs_fedgate_serve() {
    let unit = read("contrib/fedgate.service");
    assert_eq!(unit_problems(&unit), Vec::<String>::new());
    for (key, _) in UNIT_REQUIRED
        .iter()
        .chain(&[("LimitNOFILE", ""), ("ReadWritePaths", ""), ("ExecStart", "")])
    {
        assert!(
            !unit_problems(&without_key(&unit, key)).is_empty(),
            "removing {key} went unnoticed"
        );
    }
    let widened = unit.replace(
        "ReadWritePaths=/var/lib/fedgate",
        "ReadWritePaths=/var/lib/fedgate /etc",
    );
    assert!(
        !unit_problems(&widened).is_empty(),
        "a second writable path went unnoticed"
    );
}

/// Runs `systemd-analyze verify` on `unit` with ExecStart pointing at the
/// built binary (verify checks that the program exists); `None` when
/// systemd-analyze is not installed. Any complaint about the unit file
/// itself (an unknown key, a bad value) counts as a failure, since verify
/// exits 0 on those.
fn systemd_verify(unit: &str) -> Option<Result<(), String>> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fedgate.service");
    let binary = Path::new(binary()).canonicalize().unwrap();
    std::fs::write(&path, unit.replace("/usr/local/bin/fedgate", binary.to_str().unwrap())).unwrap();
    let out = match Command::new("systemd-analyze").arg("verify").arg(&path).output() {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => panic!("cannot run systemd-analyze: {e}"),
    };
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let about_unit = stderr.lines().any(|l| l.contains("fedgate.service"));
    Some(if out.status.success() && !about_unit {
        Ok(())
    } else {
        Err(format!("{}: {stderr}", out.status))
    })
}

#[test]
fn systemd_analyze_verifies_the_unit() {
    let unit = read("contrib/fedgate.service");
    let Some(result) = systemd_verify(&unit) else {
        eprintln!("skipped: systemd-analyze is not installed (package systemd; scripts/install-test-deps installs it)");
        return;
    };
    result.unwrap();
    // What verify must catch: a value systemd cannot parse.
    let broken = unit.replace("ProtectSystem=strict", "ProtectSystem=sometimes");
    assert!(
        systemd_verify(&broken).unwrap().is_err(),
        "systemd-analyze took a bad value"
    );
}

/// A Dockerfile's instructions: continuation lines joined, comments and
/// blank lines dropped, as (INSTRUCTION, arguments).
fn instructions(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if current.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        if trimmed.starts_with('#') {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                let (name, args) = current.split_once(char::is_whitespace).unwrap_or((&current, ""));
                out.push((name.to_owned(), args.trim().to_owned()));
                current.clear();
            }
        }
    }
    out
}

const KNOWN: &[&str] = &[
    "FROM",
    "RUN",
    "CMD",
    "LABEL",
    "EXPOSE",
    "ENV",
    "ADD",
    "COPY",
    "ENTRYPOINT",
    "VOLUME",
    "USER",
    "WORKDIR",
    "ARG",
    "ONBUILD",
    "STOPSIGNAL",
    "HEALTHCHECK",
    "SHELL",
];

fn dockerfile_problems(text: &str, context: &Path) -> Vec<String> {
    let steps = instructions(text);
    let mut problems = Vec::new();
    match steps.first() {
        Some((name, _)) if name == "FROM" => {}
        other => problems.push(format!("the first instruction must be FROM, is {other:?}")),
    }
    for (name, args) in &steps {
        if !KNOWN.contains(&name.as_str()) {
            problems.push(format!("unknown instruction {name}"));
        }
        if name == "COPY" || name == "ADD" {
            let words: Vec<&str> = args.split_whitespace().collect();
            if words.iter().any(|w| w.starts_with("--from=")) {
                continue;
            }
            let operands: Vec<&str> = words.into_iter().filter(|w| !w.starts_with("--")).collect();
            let Some((_, sources)) = operands.split_last() else {
                problems.push(format!("{name} {args}: no source"));
                continue;
            };
            for source in sources {
                if !context.join(source).exists() {
                    problems.push(format!("{name} source {source} is not in the repository"));
                }
            }
        }
    }
    let froms = steps.iter().filter(|(n, _)| n == "FROM").count();
    if froms < 2 {
        problems.push(format!("a multi-stage build has at least two FROM, this has {froms}"));
    }
    // The user of the last stage is the one the container runs as.
    let last_stage = steps.iter().rposition(|(n, _)| n == "FROM").unwrap_or(0);
    let user = steps[last_stage..]
        .iter()
        .rev()
        .find(|(n, _)| n == "USER")
        .map(|(_, a)| a.as_str());
    match user.map(|u| u.split(':').next().unwrap_or(u)) {
        Some(u) if u != "root" && u != "0" && !u.is_empty() => {}
        other => problems.push(format!(
            "the runtime stage must set a USER that is not root, sets {other:?}"
        )),
    }
    for (want, what) in [
        ("EXPOSE", "the listeners' ports"),
        ("VOLUME", "the data directory"),
        ("HEALTHCHECK", "a health check"),
    ] {
        if !steps[last_stage..].iter().any(|(n, _)| n == want) {
            problems.push(format!("{want} missing: {what}"));
        }
    }
    if !steps.iter().any(|(n, a)| n == "HEALTHCHECK" && a.contains("/healthz")) {
        problems.push("the HEALTHCHECK must ask /healthz".into());
    }
    if !steps
        .iter()
        .any(|(n, a)| n == "COPY" && a.contains("config/fedgate.toml"))
    {
        problems.push("the example config (config/fedgate.toml) is not copied".into());
    }
    problems
}

#[test]
fn the_dockerfile_builds_from_the_repository_and_runs_as_a_user() {
    let text = read("contrib/Dockerfile");
    let context = repo();
    assert_eq!(dockerfile_problems(&text, &context), Vec::<String>::new());
    let drop_lines = |prefix: &str| -> String {
        text.lines()
            .filter(|l| !l.starts_with(prefix))
            .map(|l| format!("{l}\n"))
            .collect()
    };
    for (case, broken) in [
        ("no USER", drop_lines("USER ")),
        ("USER root", text.replace("USER 10001:10001", "USER root")),
        (
            "a missing COPY source",
            text.replace("COPY src ./src", "COPY srcs ./src"),
        ),
        (
            "an unknown instruction",
            text.replace("WORKDIR /srv/fedgate", "WORKDIRS /srv/fedgate"),
        ),
        ("RUN before FROM", format!("RUN true\n{text}")),
        ("no HEALTHCHECK", drop_lines("HEALTHCHECK ")),
    ] {
        assert!(
            !dockerfile_problems(&broken, &context).is_empty(),
            "{case} went unnoticed"
        );
    }
}
