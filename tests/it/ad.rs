//! fedgate against a real Active Directory: a Samba AD domain controller
//! provisioned once per test run (tests/it/support/samba.rs). Binds as
//! UPN, down-level name and DN, search-then-bind and direct bind, LDAPS and
//! StartTLS against the DC's certificate; AD's bind sub-codes; secrets of
//! the app-password shape never reaching the DC (its `badPwdCount` stays
//! put); and the sync: paged reads past 1000 entries, `userAccountControl`
//! and `accountExpires`, renames and moves keeping the user by
//! `objectGUID`, deletions seen through tombstones by incremental passes.
//!
//! The DC is shared by the tests of a run, so each test makes users of its
//! own (named after the test) and never counts what others may add.

use std::time::{Duration, Instant};

use http::StatusCode;
use serde_json::Value;

use crate::signin::{expect_reasons, signed_in, SignIn};
use crate::support::admin::Admin;
use crate::support::samba::{self, Samba};
use crate::support::Fedgate;
use crate::sync::eventually;

const ONPREM: &str = "/onprem/whoami";
const POLL: Duration = Duration::from_millis(20);

/// The `[directory]` table of the README's Active Directory example, for
/// the test DC: search-then-bind as the service account, with `extra`
/// lines (which may override `urls`).
pub(crate) fn ad_section(dc: &Samba, extra: &str) -> String {
    ad_section_under(dc, samba::BASE_DN, extra)
}

/// [`ad_section`] with `base_dn` at `base`.
pub(crate) fn ad_section_under(dc: &Samba, base: &str, extra: &str) -> String {
    let urls = if extra.contains("urls =") {
        String::new()
    } else {
        format!("urls = [\"{}\"]\n", dc.ldaps_url())
    };
    format!(
        "[directory]\n\
         kind = \"active_directory\"\n\
         {urls}\
         ca_file = \"{}\"\n\
         bind_dn = \"{}\"\n\
         bind_password_file = \"{}\"\n\
         base_dn = \"{}\"\n\
         user_filter = \"(&(objectCategory=person)(objectClass=user)(userPrincipalName={{upn}}))\"\n\
         login_filter = \"(&(objectCategory=person)(objectClass=user)(sAMAccountName={{login}}))\"\n\
         domain = \"{}\"\n\
         pool_size = 1\n\
         {extra}\n",
        dc.ca_file().display(),
        dc.service_upn(),
        dc.service_password_file().display(),
        base,
        samba::NETBIOS,
    )
}

fn no_sync() -> String {
    "[sync]\nenabled = false\n".into()
}

fn fedgate(sections: &[String]) -> Fedgate {
    sections
        .iter()
        .fold(Fedgate::builder(), |b, s| b.section(s))
        .cloud_route("/whoami", "builtin:whoami", "")
        .route_in("onprem", "/onprem", "builtin:whoami", "")
        .start()
}

/// A password AD's complexity rule accepts.
pub(crate) fn password_of(login: &str) -> String {
    format!("Pw-{login}-7x")
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64
}

fn user_json(admin: &Admin, upn: &str) -> Value {
    admin.run(&["--json", "user", "show", upn]).json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binds_as_upn_down_level_name_and_dn_over_ldaps_and_starttls() {
    let dc = Samba::shared();
    let login = "bindtls";
    let pw = password_of(login);
    let upn = dc.add_user(login, &pw);
    let down_level = format!("{}\\{login}", samba::NETBIOS);
    // The harness's own client agrees on what the DC accepts.
    dc.bind(&upn, &pw).expect("the DC takes the UPN");
    dc.bind(&down_level, &pw).expect("the DC takes CORP\\login");

    let searching = [
        ("ldaps", ad_section(dc, "")),
        (
            "starttls",
            ad_section(dc, &format!("urls = [\"{}\"]\nstarttls = true", dc.ldap_url())),
        ),
    ];
    for (transport, section) in searching {
        let fedgate = fedgate(&[section, no_sync()]);
        let addr = fedgate.plain;
        for name in [upn.as_str(), &down_level, login, &upn.to_uppercase()] {
            let who = signed_in(
                &SignIn::new(addr, name, &pw).path(ONPREM).send().await,
                &format!("{transport}: {name}"),
            );
            assert_eq!(who["user"], upn, "{transport}: {name}: {who}");
        }
        let user = user_json(&fedgate.admin(), &upn);
        assert_eq!(user["directory"]["dn"], Samba::user_dn(login), "{user}");
        assert_eq!(user["directory"]["login"], login, "{user}");
        assert_eq!(
            user["directory"]["anchor"],
            dc.object_guid(&Samba::user_dn(login)),
            "{user}"
        );
        let wrong = SignIn::new(addr, &upn, "Wrong-pw-1").agent("wrong").path(ONPREM);
        assert_eq!(wrong.send().await.0, StatusCode::UNAUTHORIZED, "{transport}");
        expect_reasons(&fedgate.admin(), &[("wrong", "bad_credentials")]);
    }

    // Direct binds, no service account: as the UPN, the down-level name
    // and the DN.
    let templates = [
        ("{upn}", upn.clone()),
        ("CORP\\\\{login}", down_level.clone()),
        ("CN={login},CN=Users,DC=corp,DC=example,DC=com", down_level.clone()),
    ];
    for (template, name) in templates {
        let section = format!(
            "[directory]\nkind = \"active_directory\"\nurls = [\"{}\"]\nca_file = \"{}\"\n\
             bind_name = \"{template}\"\nbase_dn = \"{}\"\ndomain = \"CORP\"\n",
            dc.ldaps_url(),
            dc.ca_file().display(),
            samba::BASE_DN
        );
        let fedgate = fedgate(&[section]);
        let who = signed_in(
            &SignIn::new(fedgate.plain, &name, &pw).path(ONPREM).send().await,
            &format!("direct bind {template} as {name}"),
        );
        assert_eq!(who["user"], upn, "{template}: {who}");
        let wrong = SignIn::new(fedgate.plain, &name, "Wrong-pw-1").path(ONPREM);
        assert_eq!(wrong.send().await.0, StatusCode::UNAUTHORIZED, "{template}");
    }

    // Plain LDAP: the DC wants TLS for simple binds, and the operator is
    // told which setting gives it.
    let plain: String = ad_section(dc, &format!("urls = [\"{}\"]", dc.ldap_url()))
        .lines()
        .filter(|l| !l.starts_with("ca_file"))
        .map(|l| format!("{l}\n"))
        .collect();
    let fedgate = fedgate(&[plain, no_sync()]);
    let answer = SignIn::new(fedgate.plain, &upn, &pw).path(ONPREM).send().await;
    assert_eq!(answer.0, StatusCode::SERVICE_UNAVAILABLE);
    let hint = fedgate.wait_log(Duration::from_secs(10), |v| {
        v.to_string().contains("requires a protected connection")
    });
    assert!(hint.to_string().contains("starttls = true"), "{hint}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ad_bind_sub_codes_give_disabled_expired_and_locked_out() {
    let dc = Samba::shared();
    let fedgate = fedgate(&[
        ad_section(dc, "disabled_filter = \"(cn=nobody-is-disabled-here)\""),
        no_sync(),
    ]);
    let addr = fedgate.plain;
    let admin = fedgate.admin();
    let (disabled, expired, locked) = ("subdisabled", "subexpired", "sublocked");
    for login in [disabled, expired, locked] {
        dc.add_user(login, &password_of(login));
    }
    // With disabled_filter matching nobody, only the bind's sub-code can
    // tell: data 533 (disabled), 701 (expired), 775 (locked).
    dc.disable(&Samba::user_dn(disabled));
    dc.set_account_expires(&Samba::user_dn(expired), 116_444_736_000_000_000 + 10_000_000);
    dc.use_fast_lockout(&Samba::user_dn(locked));
    for _ in 0..samba::FAST_LOCKOUT_THRESHOLD {
        let refused = dc.bind(&Samba::upn(locked), "Wrong-pw-1").unwrap_err();
        assert!(refused.contains("data 52e"), "{refused}");
    }
    let locked_out = dc.bind(&Samba::upn(locked), &password_of(locked)).unwrap_err();
    assert!(
        locked_out.contains("data 775"),
        "the DC did not lock {locked}: {locked_out}"
    );

    let sign_in = |login: &'static str, agent: &'static str| {
        let pw = password_of(login);
        async move {
            SignIn::new(addr, &Samba::upn(login), &pw)
                .agent(agent)
                .path(ONPREM)
                .send()
                .await
                .0
        }
    };
    assert_eq!(sign_in(disabled, "disabled").await, StatusCode::UNAUTHORIZED);
    assert_eq!(sign_in(expired, "expired").await, StatusCode::UNAUTHORIZED);
    assert_eq!(sign_in(locked, "locked").await, StatusCode::TOO_MANY_REQUESTS);
    let disabled_upn = Samba::upn(disabled);
    let wrong = SignIn::new(addr, &disabled_upn, "Wrong-pw-1").agent("wrong");
    assert_eq!(wrong.path(ONPREM).send().await.0, StatusCode::UNAUTHORIZED);
    expect_reasons(
        &admin,
        &[
            ("disabled", "account_disabled"),
            ("expired", "account_disabled"),
            ("locked", "locked_out"),
            ("wrong", "bad_credentials"),
        ],
    );
}

/// Secrets of the app-password shape (16 letters, in groups or not, any
/// case, right check letters or wrong) are never bound: the DC's
/// `badPwdCount` does not move. A wrong organizational password does,
/// which shows the count is kept for this user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_password_shaped_secrets_never_reach_the_dc() {
    let dc = Samba::shared();
    let login = "shapes";
    let pw = password_of(login);
    let upn = dc.add_user(login, &pw);
    let dn = Samba::user_dn(login);
    // Ten secrets are refused below; fedgate's own lockout stays out of it.
    let fedgate = fedgate(&[ad_section(dc, ""), no_sync(), "[lockout]\nthreshold = 30\n".into()]);
    let addr = fedgate.plain;
    let admin = fedgate.admin();
    admin.allow_app_passwords(true);
    signed_in(&SignIn::new(addr, &upn, &pw).path(ONPREM).send().await, "first sign-in");
    let real = admin.create_app_password(&upn, "phone");
    assert_eq!(dc.bad_pwd_count(&dn), 0);

    let letters: String = real.chars().filter(char::is_ascii_alphabetic).collect();
    let mut one_off: Vec<char> = letters.chars().collect();
    one_off[3] = if one_off[3] == 'a' { 'b' } else { 'a' };
    let one_off: String = one_off.into_iter().collect();
    let mistyped = [
        "abcd-efgh-ijkl-mnop".to_string(),
        one_off.clone(),
        format!(
            "{} {} {} {}",
            &one_off[..4],
            &one_off[4..8],
            &one_off[8..12],
            &one_off[12..]
        ),
        "ABCDEFGHIJKLMNOP".to_string(),
    ];
    for (i, secret) in mistyped.iter().enumerate() {
        let agent = format!("mistyped-{i}");
        let answer = SignIn::new(addr, &upn, secret).agent(&agent).send().await;
        assert_eq!(answer.0, StatusCode::UNAUTHORIZED, "{secret}");
        let onprem = SignIn::new(addr, &upn, secret).agent(&agent).path(ONPREM).send().await;
        assert_eq!(onprem.0, StatusCode::UNAUTHORIZED, "{secret} on premises");
        expect_reasons(&admin, &[(agent.as_str(), "app_password_mistyped")]);
    }
    // Right check letters but no such app password: an app password all
    // the same, never a directory password.
    let unknown = admin.create_app_password(&upn, "spare");
    admin.run(&["app-password", "delete", &upn, "spare"]).success();
    SignIn::new(addr, &upn, &unknown)
        .agent("deleted-app")
        .until(StatusCode::UNAUTHORIZED, POLL)
        .await;
    let onprem = SignIn::new(addr, &upn, &unknown)
        .agent("deleted-app")
        .path(ONPREM)
        .send()
        .await;
    assert_eq!(onprem.0, StatusCode::UNAUTHORIZED);
    expect_reasons(&admin, &[("deleted-app", "bad_credentials")]);
    assert_eq!(
        dc.bad_pwd_count(&dn),
        0,
        "an app-password-shaped secret was sent to the DC as a password"
    );

    // The real app password still works; a wrong org password is counted
    // by the DC.
    signed_in(&SignIn::new(addr, &upn, &real).send().await, "the real app password");
    let wrong = SignIn::new(addr, &upn, "Not-the-pw-1").path(ONPREM).send().await;
    assert_eq!(wrong.0, StatusCode::UNAUTHORIZED);
    assert_eq!(dc.bad_pwd_count(&dn), 1, "the DC keeps no count for {login}");
}

/// The sync against AD, as the README configures it with a 1 s interval
/// and full passes far apart: the first (full) pass pages past 1000
/// entries; disables, enables, expiry, renames and moves arrive through
/// incremental passes, and so does a deletion, through its tombstone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_follows_ad_in_incremental_passes_including_deletions() {
    let dc = Samba::shared();
    let login = "syncdave";
    let pw = password_of(login);
    let upn = dc.add_user(login, &pw);
    let mut dn = Samba::user_dn(login);
    let fedgate = fedgate(&[
        ad_section(dc, "timeout = \"5s\""),
        "[sync]\ninterval = \"1s\"\nfull_every = \"1h\"\n".into(),
    ]);
    let admin = fedgate.admin();
    let first = fedgate.wait_log(Duration::from_secs(60), |v| {
        v["message"] == "sync pass" && v["kind"] == "full" && v["outcome"] == "completed"
    });
    let seen = first["seen"].as_u64().unwrap_or(0);
    assert!(
        seen > samba::BULK_USERS as u64,
        "the full pass saw {seen} entries, fewer than the {} bulk users: {first}",
        samba::BULK_USERS
    );
    assert_eq!(first["errors"], 0, "{first}");
    let user = user_json(&admin, &upn);
    assert_eq!(user["source"], "federated", "{user}");
    let anchor = dc.object_guid(&dn);
    assert_eq!(user["directory"]["anchor"], anchor, "{user}");
    assert_eq!(user["directory"]["display_name"], format!("Display {login}"), "{user}");
    let id = user["id"].clone();

    admin.allow_app_passwords(true);
    let app = admin.create_app_password(&upn, "phone");
    let addr = fedgate.plain;
    let phone = |upn: &str, want: StatusCode| {
        let (upn, app) = (upn.to_owned(), app.clone());
        async move { SignIn::new(addr, &upn, &app).agent("phone").until(want, POLL).await }
    };
    phone(&upn, StatusCode::OK).await;

    let before = unix_ms();
    dc.disable(&dn);
    let written = unix_ms();
    let took = phone(&upn, StatusCode::UNAUTHORIZED).await;
    eprintln!("AD disable refused the app password after {took:?}");
    expect_reasons(&admin, &[("phone", "account_disabled")]);
    // One pass: the pass that applied it ran during the write or is the
    // first to start after it. (Passes are logged when they end, so
    // wait for that one's line.)
    fedgate.wait_log(Duration::from_secs(10), |v| {
        v["message"] == "sync pass" && v["started_at"].as_i64().is_some_and(|t| t > written)
    });
    // A pass that started before the write may still have read after it:
    // every pass that ended after the write began counts.
    let ended = |p: &Value| p["started_at"].as_i64().unwrap_or(0) + p["duration_ms"].as_i64().unwrap_or(0);
    let passes: Vec<Value> = fedgate
        .events("sync pass")
        .into_iter()
        .filter(|p| p["kind"] == "incremental" && ended(p) > before)
        .collect();
    let first_after = passes
        .iter()
        .position(|p| p["started_at"].as_i64().is_some_and(|t| t > written))
        .expect("an incremental pass after the disable");
    assert!(
        passes[..=first_after].iter().any(|p| p["disabled"].as_u64() >= Some(1)),
        "the first pass after the disable did not apply it: {passes:?}"
    );
    dc.enable(&dn);
    phone(&upn, StatusCode::OK).await;

    dc.set_account_expires(&dn, 116_444_736_000_000_000 + 10_000_000);
    phone(&upn, StatusCode::UNAUTHORIZED).await;
    dc.set_account_expires(&dn, 0);
    phone(&upn, StatusCode::OK).await;

    // Rename and move: the same user (by objectGUID), app password kept.
    let new_login = "syncdavid";
    dn = dc.rename(&dn, new_login);
    let new_upn = Samba::upn(new_login);
    phone(&new_upn, StatusCode::OK).await;
    let renamed = user_json(&admin, &new_upn);
    assert_eq!(renamed["id"], id, "{renamed}");
    assert_eq!(renamed["directory"]["login"], new_login, "{renamed}");
    assert_eq!(renamed["app_passwords"].as_array().map(Vec::len), Some(1), "{renamed}");
    dn = dc.move_to(&dn, samba::MOVED_DN);
    let moved_dn = dn.clone();
    let moved = eventually("the move synced", Duration::from_secs(10), Some(&fedgate), || {
        let moved = user_json(&admin, &new_upn);
        (moved["directory"]["dn"] == moved_dn.as_str()).then_some(moved)
    })
    .await;
    assert_eq!(moved["id"], id, "{moved}");
    let after_move = SignIn::new(addr, &new_upn, &app).agent("phone").send().await;
    assert_eq!(after_move.0, StatusCode::OK);

    // Deleted: refused within an incremental pass, app passwords gone.
    dc.delete(&dn);
    let took = phone(&new_upn, StatusCode::UNAUTHORIZED).await;
    eprintln!("AD deletion refused the app password after {took:?}");
    let passes = fedgate.events("sync pass");
    assert!(
        passes
            .iter()
            .any(|p| p["kind"] == "incremental" && p["deleted"].as_u64() >= Some(1)),
        "no incremental pass deleted the user: {passes:?}"
    );
    let first_full = passes
        .iter()
        .position(|p| p["kind"] == "full" && p["outcome"] == "completed")
        .expect("the first full pass");
    assert!(
        !passes.iter().skip(first_full + 1).any(|p| p["kind"] == "full"),
        "a full pass ran after the first: {passes:?}"
    );
    let gone = admin.run(&["--json", "user", "show", &new_upn]);
    assert!(
        gone.code != 0 || gone.json()["deleted"] == true,
        "user not deleted in the store"
    );
}

/// A service account that may not list `CN=Deleted Objects` sees no
/// tombstones, so deletions would wait for a full pass: fedgate says so,
/// naming the right to grant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_account_without_access_to_tombstones_is_reported() {
    let dc = Samba::shared();
    let login = "svcnotomb";
    let pw = password_of(login);
    let upn = dc.add_user(login, &pw);
    let dir = tempfile::tempdir().unwrap();
    let password_file = dir.path().join("svc.pw");
    std::fs::write(&password_file, &pw).unwrap();
    let section = ad_section(dc, "").replace(&dc.service_upn(), &upn).replace(
        &dc.service_password_file().display().to_string(),
        &password_file.display().to_string(),
    );
    let fedgate = fedgate(&[section, "[sync]\ninterval = \"1s\"\nfull_every = \"1h\"\n".into()]);
    let warning = fedgate.wait_log(Duration::from_secs(60), |v| {
        v["message"].as_str().is_some_and(|m| m.contains("CN=Deleted Objects"))
    });
    assert_eq!(warning["level"], "WARN", "{warning}");
    let text = warning.to_string();
    assert!(text.contains("List Contents") && text.contains(&upn), "{text}");
}

/// The figures of the closing note: from the directory write returning to
/// fedgate refusing the user's app password, for 20 disables and 20
/// deletions, with the README's AD sync settings (`interval = "1s"`).
/// Run with `cargo test --test it ad::revocation_latency -- --ignored
/// --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check: run by hand"]
async fn revocation_latency_figures() {
    const CHANGES: usize = 20;
    let dc = Samba::shared();
    let logins: Vec<String> = (0..CHANGES).map(|i| format!("lat{i:02}")).collect();
    for login in &logins {
        dc.add_user(login, &password_of(login));
    }
    let fedgate = fedgate(&[
        ad_section(dc, "timeout = \"5s\""),
        "[sync]\ninterval = \"1s\"\nfull_every = \"1h\"\n".into(),
    ]);
    let admin = fedgate.admin();
    fedgate.wait_log(Duration::from_secs(60), |v| {
        v["message"] == "sync pass" && v["kind"] == "full" && v["outcome"] == "completed"
    });
    admin.allow_app_passwords(true);
    let apps: Vec<String> = logins
        .iter()
        .map(|l| admin.create_app_password(&Samba::upn(l), "phone"))
        .collect();
    let addr = fedgate.plain;
    let refused_after = |login: &str, app: &str| {
        let (upn, app) = (Samba::upn(login), app.to_owned());
        async move {
            let start = Instant::now();
            loop {
                let status = SignIn::new(addr, &upn, &app).send().await.0;
                if status == StatusCode::UNAUTHORIZED {
                    return Some(start.elapsed());
                }
                // A deadline of its own rather than SignIn::until's: a
                // change never seen is a figure ("not refused"), not a
                // failure.
                if start.elapsed() > Duration::from_secs(30) {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    let mut report = Vec::new();
    for what in ["disable", "deletion"] {
        let mut took = Vec::new();
        for (login, app) in logins.iter().zip(&apps) {
            assert_eq!(
                SignIn::new(addr, &Samba::upn(login), app).send().await.0,
                StatusCode::OK
            );
            // Deliberately not a wait for anything: changes must land at
            // random points of the 1 s pass cycle for the figures to mean
            // anything.
            tokio::time::sleep(Duration::from_millis(rand::random::<u64>() % 1000)).await;
            let dn = Samba::user_dn(login);
            match what {
                "disable" => dc.disable(&dn),
                _ => dc.delete(&dn),
            }
            let refused = refused_after(login, app).await;
            took.push(refused);
            if refused.is_none() {
                // Not seen at all: the rest would only wait as long.
                break;
            }
            if what == "disable" {
                dc.enable(&dn);
                SignIn::new(addr, &Samba::upn(login), app)
                    .until(StatusCode::OK, Duration::from_millis(20))
                    .await;
            }
        }
        let mut ms: Vec<f64> = took.iter().flatten().map(|d| d.as_secs_f64() * 1000.0).collect();
        ms.sort_by(f64::total_cmp);
        let missing = took.iter().filter(|t| t.is_none()).count();
        report.push(format!(
            "{what}: {} changes, p50 {:.0} ms, max {:.0} ms, not refused within 30 s: {missing}",
            took.len(),
            ms.get(ms.len() / 2).copied().unwrap_or(f64::NAN),
            ms.last().copied().unwrap_or(f64::NAN),
        ));
    }
    for line in report {
        eprintln!("{line}");
    }
}

/// The README's Active Directory example (config/active-directory.example.toml)
/// runs against the DC as it is, but for the DC's address, the file paths
/// and the listeners: `check-config` takes it, the first full pass syncs
/// the domain, and a user signs in by UPN and down-level name through the
/// routes it defines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_active_directory_example_config_works_against_a_real_dc() {
    let dc = Samba::shared();
    let login = "example";
    let pw = password_of(login);
    let upn = dc.add_user_under(login, samba::STAFF_DN, &pw);
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/active-directory.example.toml"
    ))
    .expect("read the example config");
    let fedgate = Fedgate::start_with(|dir| {
        let mut config: toml::Table = example.parse().expect("the example is TOML");
        let put = |config: &mut toml::Table, table: &str, key: &str, value: toml::Value| {
            config[table].as_table_mut().expect(table).insert(key.into(), value);
        };
        let path = |name: &str| toml::Value::String(dir.join(name).display().to_string());
        let server = config["server"].as_table_mut().unwrap();
        server.remove("listen");
        server.insert("listen_plain".into(), toml::Value::Array(vec!["127.0.0.1:0".into()]));
        put(&mut config, "server", "tls_cert", path("tls/cert.pem"));
        put(&mut config, "server", "tls_key", path("tls/key.pem"));
        put(
            &mut config,
            "store",
            "url",
            format!("sqlite://{}", dir.join("fedgate.db").display()).into(),
        );
        put(&mut config, "store", "key_file", path("fedgate.key"));
        put(&mut config, "portal", "secret_key_file", path("portal.key"));
        put(&mut config, "admin", "listen", "127.0.0.1:0".into());
        put(&mut config, "auth", "failure_delay", "0s".into());
        put(
            &mut config,
            "directory",
            "urls",
            toml::Value::Array(vec![dc.ldaps_url().into()]),
        );
        put(
            &mut config,
            "directory",
            "ca_file",
            dc.ca_file().display().to_string().into(),
        );
        for route in config["route"].as_array_mut().expect("routes") {
            if let Some(ca) = route.get_mut("upstream_ca_file") {
                *ca = dc.ca_file().display().to_string().into();
            }
        }
        put(
            &mut config,
            "directory",
            "bind_password_file",
            dc.service_password_file().display().to_string().into(),
        );
        let text = toml::to_string(&config).expect("write the config");
        let check_path = dir.join("check.toml");
        std::fs::write(&check_path, &text).unwrap();
        let check = Admin::new(&check_path).run(&["check-config"]);
        assert_eq!(
            check.code, 0,
            "check-config refused the example:\n{}{}",
            check.stdout, check.stderr
        );
        text
    });
    let first = fedgate.wait_log(Duration::from_secs(60), |v| {
        v["message"] == "sync pass" && v["kind"] == "full"
    });
    assert_eq!(first["outcome"], "completed", "{first}");
    assert!(
        !fedgate.raw_logs().contains("cannot read CN=Deleted Objects"),
        "the example's service account lacks the tombstone right"
    );
    let whoami = |name: String| {
        let pw = pw.clone();
        let addr = fedgate.plain;
        async move {
            crate::support::client::get_with(
                addr,
                "/whoami",
                &[
                    ("host", http::HeaderValue::from_static("mail.corp.example.com")),
                    ("authorization", crate::support::client::basic(&name, &pw)),
                ],
            )
            .await
        }
    };
    for name in [upn.clone(), format!("CORP\\{login}"), login.to_string()] {
        let who = signed_in(&whoami(name.clone()).await, &name);
        assert_eq!(who["user"], upn, "{name}: {who}");
    }
    let user = user_json(&fedgate.admin(), &upn);
    assert_eq!(
        user["directory"]["dn"],
        format!("CN={login},{}", samba::STAFF_DN),
        "{user}"
    );
    // Another domain is refused without asking the DC.
    let other = whoami(format!("OTHER\\{login}")).await;
    assert_eq!(other.0, StatusCode::UNAUTHORIZED);
}
