//! The command line: check-config output and errors, serve failing fast.

use crate::support::fedgate::run_cli;

fn write_config(text: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fedgate.toml");
    std::fs::write(&path, text).unwrap();
    let p = path.display().to_string();
    (dir, p)
}

const GOOD: &str = r#"
[server]
listen = ["127.0.0.1:8443"]
listen_plain = ["127.0.0.1:8080"]

[[route]]
host = "mail.corp.example.com"
path = "/Microsoft-Server-ActiveSync"
upstream = "https://10.1.2.3:443"
realm = "none"

[[route]]
path = "/whoami"
upstream = "builtin:whoami"
realm = "none"
"#;

#[test]
fn check_config_prints_listeners_and_routes() {
    let (_dir, path) = write_config(GOOD);
    let (code, out, err) = run_cli(&["check-config", "--config", &path]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("tls    127.0.0.1:8443"), "{out}");
    assert!(out.contains("plain  127.0.0.1:8080"), "{out}");
    assert!(
        out.contains("route[0]  mail.corp.example.com/Microsoft-Server-ActiveSync  ->  https://10.1.2.3:443/"),
        "{out}"
    );
    assert!(out.contains("route[1]  */whoami  ->  builtin:whoami"), "{out}");

    let (code, out, _) = run_cli(&["check-config", "--json", "--config", &path]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["routes"][1]["upstream"], "builtin:whoami");
    assert_eq!(v["listeners"][0]["kind"], "tls");
}

#[test]
fn config_errors_name_the_key_and_exit_non_zero() {
    let cases = [
        (
            GOOD.replace("https://10.1.2.3:443", "htp://x"),
            "route[0].upstream: invalid URL \"htp://x\"",
        ),
        (
            GOOD.replace(
                "realm = \"none\"\n\n[[route]]",
                "realm = \"none\"\ncolour = \"red\"\n\n[[route]]",
            ),
            "route[0].colour",
        ),
        (
            GOOD.replace("[server]", "[server]\nheader_read_timeout = \"fast\""),
            "server.header_read_timeout",
        ),
        (GOOD.replace("[server]", "[serve]"), "serve"),
    ];
    for (text, want) in cases {
        let (_dir, path) = write_config(&text);
        let (code, out, err) = run_cli(&["check-config", "--config", &path]);
        assert_eq!(code, 2, "expected exit 2 for {want}: {out}{err}");
        assert!(err.contains(want), "expected {want:?} in {err:?}");
    }
    let (code, _, err) = run_cli(&["check-config", "--config", "/nonexistent/fedgate.toml"]);
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent/fedgate.toml"), "{err}");
}

#[test]
fn example_config_checks() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config/fedgate.toml");
    let (code, out, err) = run_cli(&["check-config", "--config", example]);
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn serve_fails_fast_naming_a_busy_address() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap();
    let (_dir, path) = write_config(&format!(
        "[server]\nlisten_plain = [\"{addr}\"]\n[[route]]\npath = \"/\"\nupstream = \"builtin:whoami\"\nrealm = \"none\"\n"
    ));
    let (code, _, err) = run_cli(&["serve", "--config", &path]);
    assert_eq!(code, 1);
    assert!(
        err.contains("server.listen_plain[0]") && err.contains(&addr.to_string()),
        "{err}"
    );
}

/// A config whose store lives in its own directory, and that store's path.
fn store_config() -> (tempfile::TempDir, crate::support::admin::Admin, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("data/fedgate.db");
    let path = dir.path().join("fedgate.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten_plain = [\"127.0.0.1:0\"]\n[store]\nurl = \"sqlite://{}\"\nkey_file = \"{}\"\n[[route]]\npath = \"/\"\nupstream = \"builtin:whoami\"\nrealm = \"none\"\n",
            db.display(),
            dir.path().join("data/fedgate.key").display()
        ),
    )
    .unwrap();
    let admin = crate::support::admin::Admin::new(&path);
    (dir, admin, db)
}

#[test]
fn admin_commands_never_create_a_store_and_store_init_creates_it_once() {
    let (_dir, admin, db) = store_config();
    for args in [&["user", "list"][..], &["settings", "show"][..], &["signins"][..]] {
        let out = admin.run(args);
        assert_eq!(out.code, 2, "`fedgate {}`: {}{}", out.command, out.stdout, out.stderr);
        assert!(out.stderr.contains("store.url"), "{}", out.stderr);
        assert!(out.stderr.contains(&db.display().to_string()), "{}", out.stderr);
        assert!(out.stderr.contains("fedgate store init"), "{}", out.stderr);
        assert!(!db.exists(), "`fedgate {}` created {}", out.command, db.display());
    }
    admin.run(&["store", "init"]).success();
    assert!(db.exists());
    let again = admin.run(&["store", "init"]);
    assert_eq!(again.code, 2, "{}{}", again.stdout, again.stderr);
    assert!(again.stderr.contains("already exists"), "{}", again.stderr);
    admin.run(&["user", "list"]).success();
}

/// Runs `args` with standard output a pipe whose reader reads `lines`
/// lines (none: closed before the command writes anything), then closes.
fn run_into_closed_pipe(
    admin: &crate::support::admin::Admin,
    args: &[&str],
    lines: usize,
) -> (i32, Vec<String>, String) {
    use std::io::{BufRead, Read};
    let mut child = admin
        .command(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut read = Vec::new();
    if lines > 0 {
        let mut reader = std::io::BufReader::new(stdout);
        for _ in 0..lines {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            read.push(line.trim_end().to_owned());
        }
    } else {
        drop(stdout);
    }
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    let status = child.wait().unwrap();
    (status.code().unwrap_or(-1), read, stderr)
}

#[test]
fn app_password_create_into_a_closed_pipe_prints_the_secret_or_keeps_nothing() {
    const UPN: &str = "pipe@corp.example.com";
    let (_dir, admin, _db) = store_config();
    admin.run(&["store", "init"]).success();
    admin.add_user(UPN, "enforced", None);
    let names = |admin: &crate::support::admin::Admin| -> Vec<String> {
        let list = admin.run(&["--json", "app-password", "list", UPN]).json();
        list.as_array()
            .unwrap()
            .iter()
            .map(|a| a["name"].as_str().unwrap().to_owned())
            .collect()
    };

    // Nobody reads: the secret cannot be shown, so it is not kept.
    for json in [false, true] {
        let mut args = vec!["app-password", "create", UPN, "--name", "lost"];
        if json {
            args.insert(0, "--json");
        }
        let (code, _, stderr) = run_into_closed_pipe(&admin, &args, 0);
        assert_eq!(code, 1, "json {json}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(stderr.contains("deleted again"), "{stderr}");
        assert_eq!(
            names(&admin),
            Vec::<String>::new(),
            "json {json}: an unusable app password remains"
        );
    }

    // `| head -1`: the first line is the secret, and it is kept.
    let (code, read, stderr) = run_into_closed_pipe(&admin, &["app-password", "create", UPN, "--name", "phone"], 1);
    assert!(code == 0 || code == 141, "exit {code}: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let secret = &read[0];
    assert_eq!(secret.len(), 19, "the first line is the secret: {secret:?}");
    assert_eq!(secret.matches('-').count(), 3, "{secret:?}");
    assert_eq!(names(&admin), ["phone"]);

    // Any other command stops quietly, as a SIGPIPE'd tool would.
    let (code, _, stderr) = run_into_closed_pipe(&admin, &["user", "list"], 0);
    assert_eq!(code, 141, "{stderr}");
    assert!(stderr.is_empty(), "{stderr}");
}

/// A store made with `fedgate store init`, and its command line.
fn initialised() -> (tempfile::TempDir, crate::support::admin::Admin) {
    let (dir, admin, _) = store_config();
    admin.run(&["store", "init"]).success();
    (dir, admin)
}

#[test]
fn input_errors_exit_2_and_runtime_ones_do_not() {
    let (_dir, admin) = initialised();
    admin.add_user("ann@x.example", "enabled", None);
    for args in [
        &["user", "add", "ann@x.example"][..],
        &["user", "show", "nobody@x.example"][..],
        &["user", "show", "not-a-upn"][..],
        &["user", "disable", "nobody@x.example"][..],
        &["user", "delete", "nobody@x.example"][..],
        &["user", "revoke-app-passwords", "nobody@x.example"][..],
        &["app-password", "list", "nobody@x.example"][..],
        &["app-password", "delete", "ann@x.example", "none"][..],
        &["signins", "--since", "yesterday"][..],
        &["settings", "set", "allow-app-passwords", "maybe"][..],
    ] {
        let out = admin.run(args);
        assert_eq!(out.code, 2, "`fedgate {}`: {}{}", out.command, out.stdout, out.stderr);
        assert!(!out.stderr.trim().is_empty(), "`fedgate {}` said nothing", out.command);
    }
}

#[test]
fn user_delete_set_password_and_clear_password() {
    let (_dir, admin) = initialised();
    admin.add_user("ann@x.example", "enabled", Some("first password"));
    let shown = admin.run(&["--json", "user", "show", "ann@x.example"]).json();
    assert!(
        humantime::parse_rfc3339(shown["created_at"].as_str().unwrap()).is_ok(),
        "--json times are RFC 3339: {shown}"
    );

    let out = admin.run_with_stdin(
        &["user", "set-password", "ann@x.example", "--password-stdin"],
        "abcd efgh ijkl mnop\n",
    );
    assert_eq!(
        out.code, 2,
        "an app-password-shaped password is refused: {}{}",
        out.stdout, out.stderr
    );
    let out = admin.run_with_stdin(&["user", "set-password", "ann@x.example", "--password-stdin"], "\n");
    assert_eq!(out.code, 2, "{}{}", out.stdout, out.stderr);
    admin
        .run_with_stdin(
            &["user", "set-password", "ann@x.example", "--password-stdin"],
            "second password\n",
        )
        .success();
    let out = admin.run(&["user", "clear-password", "ann@x.example"]).success();
    assert!(out.contains("cleared"), "{out}");
    assert!(admin
        .run(&["user", "show", "ann@x.example"])
        .success()
        .contains("password:       -"));

    admin.run(&["settings", "set", "allow-app-passwords", "true"]).success();
    admin.create_app_password("ann@x.example", "phone");
    let deleted = admin.run(&["--json", "user", "delete", "ann@x.example"]).json();
    assert_eq!(deleted["revoked"], 1, "{deleted}");
    assert_eq!(deleted["federated"], false, "{deleted}");
    let out = admin.run(&["user", "show", "ann@x.example"]);
    assert_eq!(out.code, 2, "{}{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("deleted"), "{}", out.stderr);
    let events = admin.run(&["--json", "admin-events"]).json();
    let actions: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "user.delete",
            "app_password.create",
            "settings.set",
            "user.clear_password",
            "user.set_password",
            "user.add"
        ]
    );
}

#[test]
fn user_import_is_all_or_nothing_and_names_every_bad_line() {
    let (dir, admin) = initialised();
    admin.add_user("taken@x.example", "enabled", None);
    let csv = dir.path().join("users.csv");
    std::fs::write(
        &csv,
        "upn,state\nnew@x.example,enforced\ntaken@x.example,enabled\n# a comment\nbad,enabled\nother@x.example,sometimes\n",
    )
    .unwrap();
    let out = admin.run(&["user", "import", "--csv", csv.to_str().unwrap()]);
    assert_eq!(out.code, 2, "{}{}", out.stdout, out.stderr);
    for line in ["line 3:", "line 5:", "line 6:"] {
        assert!(out.stderr.contains(line), "{line}: {}", out.stderr);
    }
    assert!(!out.stderr.contains("line 2:"), "{}", out.stderr);
    let users = admin.run(&["--json", "user", "list"]).json();
    assert_eq!(users.as_array().unwrap().len(), 1, "nothing created: {users}");

    std::fs::write(&csv, "new@x.example,enforced\nsecond@x.example\n").unwrap();
    let created = admin
        .run(&["--json", "user", "import", "--csv", csv.to_str().unwrap()])
        .json();
    assert_eq!(created.as_array().unwrap().len(), 2, "{created}");
    assert_eq!(created[0]["mfa_state"], "enforced");
    assert_eq!(created[1]["mfa_state"], "disabled");
}

#[test]
fn user_list_columns_stay_aligned_with_long_upns() {
    let (_dir, admin) = initialised();
    let long = format!("{}@x.example", "l".repeat(50));
    admin.add_user(&long, "enabled", None);
    admin.add_user("s@x.example", "enforced", None);
    let out = admin.run(&["user", "list"]).success();
    let mut lines = out.lines();
    let source = lines.next().unwrap().find("SOURCE").unwrap();
    for line in lines {
        assert_eq!(
            line.find(" cloud ").map(|i| i + 1),
            Some(source),
            "columns misaligned:\n{out}"
        );
    }
}

#[tokio::test]
async fn signins_columns_stay_aligned_with_long_names() {
    use crate::support::client::{basic, get_with};
    let fedgate = crate::support::fedgate::Fedgate::builder()
        .cloud_route("/whoami", "builtin:whoami", "")
        .start();
    let admin = fedgate.admin();
    let upn = format!("{}@x.example", "m".repeat(40));
    admin.add_user(&upn, "enforced", None);
    admin.allow_app_passwords(true);
    let name = "a rather long name for the phone in the car";
    let password = admin.create_app_password(&upn, name);
    get_with(fedgate.plain, "/whoami", &[("authorization", basic(&upn, &password))]).await;
    get_with(
        fedgate.plain,
        "/whoami",
        &[("authorization", basic("x@x.example", "wrong"))],
    )
    .await;
    admin.wait_signins("both sign-ins", |r| r.len() >= 2);
    let out = admin.run(&["signins"]).success();
    let mut lines = out.lines();
    let header = lines.next().unwrap();
    let reason = header.find("REASON").unwrap();
    let client = header.find("CLIENT").unwrap();
    for line in lines {
        let chars: Vec<char> = line.chars().collect();
        assert!(
            chars[reason - 1] == ' ' && chars[reason] != ' ',
            "REASON misaligned:\n{out}"
        );
        assert!(
            chars[client - 1] == ' ' && chars[client] != ' ',
            "CLIENT misaligned:\n{out}"
        );
    }
    assert!(out.contains(&format!("app:{name}")), "{out}");
}

/// The recipes under config/examples/ (one per kind of service behind
/// fedgate) and the example configurations beside them are accepted by
/// `check-config` as they are; a recipe named in the README but missing, or
/// one that no longer parses, fails here.
#[test]
fn every_example_config_passes_check_config() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut checked = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(root.join("examples"))
        .expect("config/examples")
        .map(|e| e.unwrap().path())
        .collect();
    files.push(root.join("fedgate.toml"));
    files.push(root.join("active-directory.example.toml"));
    files.sort();
    let dir = tempfile::tempdir().unwrap();
    for file in files.iter().filter(|f| f.extension().is_some_and(|e| e == "toml")) {
        let name = file.file_stem().unwrap().to_string_lossy().into_owned();
        // check-config reads the secret files an example names; each gets
        // a private file of the right form, the rest is checked as written.
        let mut config: toml::Table = std::fs::read_to_string(file).unwrap().parse().unwrap();
        provide_secret_files(&mut config, &dir.path().join(&name));
        let path = dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, toml::to_string(&config).unwrap()).unwrap();
        let (code, out, err) = run_cli(&["check-config", "--config", &path.display().to_string()]);
        assert_eq!(code, 0, "check-config refused {}:\n{out}{err}", file.display());
        checked.push(name);
    }
    for recipe in EXAMPLE_RECIPES {
        assert!(
            checked.iter().any(|c| c == recipe),
            "config/examples/{recipe}.toml is missing"
        );
    }
}

/// The services the README's recipes cover.
const EXAMPLE_RECIPES: [&str; 5] = ["dovecot", "exchange", "nextcloud", "radicale", "sogo"];

/// Points every secret file an example names that does not exist here
/// (`secret_file`, `password_file` of the caller and backend secrets,
/// `token_file`) at a fresh private file under `dir`.
fn provide_secret_files(config: &mut toml::Table, dir: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    fn walk(value: &mut toml::Value, dir: &std::path::Path, n: &mut usize) {
        match value {
            toml::Value::Table(t) => {
                for (key, v) in t.iter_mut() {
                    let secret = matches!(key.as_str(), "secret_file" | "password_file" | "token_file");
                    match v {
                        toml::Value::String(p) if secret && !std::path::Path::new(p).exists() => {
                            *n += 1;
                            let file = dir.join(format!("secret-{n}"));
                            let line = "5f0c2a9e8b7d6c5f4e3d2c1b0a998877665544332211ffeeddccbbaa00112233";
                            let text = match key.as_str() {
                                "token_file" => format!("ops {line}\n"),
                                _ => format!("{line}\n"),
                            };
                            std::fs::create_dir_all(dir).unwrap();
                            std::fs::write(&file, text).unwrap();
                            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
                            *p = file.display().to_string();
                        }
                        other => walk(other, dir, n),
                    }
                }
            }
            toml::Value::Array(items) => items.iter_mut().for_each(|v| walk(v, dir, n)),
            _ => {}
        }
    }
    let mut root = toml::Value::Table(std::mem::take(config));
    walk(&mut root, dir, &mut 0);
    if let toml::Value::Table(t) = root {
        *config = t;
    }
}
