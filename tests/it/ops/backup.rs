//! `fedgate backup` of a store that a running server and the command line
//! keep writing, and a server started on the restored copy.

use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use http::StatusCode;

use crate::support::client::{basic, get_with};
use crate::support::Fedgate;

fn server() -> crate::support::fedgate::Builder {
    Fedgate::builder().cloud_route("/whoami", "builtin:whoami", "")
}

#[tokio::test]
async fn a_backup_taken_under_writes_restores_into_a_working_server() {
    let first = server().start();
    let admin = first.admin();
    admin.allow_app_passwords(true);
    let mut before = Vec::new();
    for i in 0..3 {
        let upn = format!("before{i}@corp.example.com");
        admin.add_user(&upn, "enforced", None);
        let password = admin.create_app_password(&upn, "phone");
        before.push((upn, password));
    }

    // Writers: new users and app passwords through the command line, and
    // sign-ins (the sign-in log) through the proxy, until the backup is done.
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicUsize::new(0));
    let cli_writer = {
        let (stop, written, admin) = (Arc::clone(&stop), Arc::clone(&written), first.admin());
        std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::Acquire) {
                let upn = format!("during{i}@corp.example.com");
                admin.add_user(&upn, "enabled", None);
                admin.create_app_password(&upn, "laptop");
                written.fetch_add(1, Ordering::AcqRel);
                i += 1;
            }
        })
    };
    let signins = {
        let (stop, plain) = (Arc::clone(&stop), first.plain);
        let (upn, password) = before[0].clone();
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Acquire) {
                let wrong = if n % 2 == 0 {
                    password.clone()
                } else {
                    "wrong".to_owned()
                };
                let (status, _, _) = get_with(plain, "/whoami", &[("authorization", basic(&upn, &wrong))]).await;
                assert!(matches!(status, StatusCode::OK | StatusCode::UNAUTHORIZED), "{status}");
                n += 1;
            }
            n
        })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while written.load(Ordering::Acquire) < 2 {
        assert!(std::time::Instant::now() < deadline, "the sign-in load never got going");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let target = first.dir.path().join("backup.db");
    let target_text = target.display().to_string();
    let out = tokio::task::spawn_blocking({
        let admin = first.admin();
        let target_text = target_text.clone();
        move || admin.run(&["backup", &target_text])
    })
    .await
    .unwrap()
    .success();
    stop.store(true, Ordering::Release);
    cli_writer.join().unwrap();
    let requests = signins.await.unwrap();
    assert!(requests > 0);
    assert!(out.contains(&format!("backup written: {target_text} (")), "{out}");
    assert!(out.contains("store.key_file = "), "{out}");
    assert_eq!(std::fs::metadata(&target).unwrap().permissions().mode() & 0o777, 0o600);

    // The same name again: refused, exit 2, the backup unchanged.
    let again = first.cli(&["backup", &target_text]);
    assert_eq!(again.code, 2, "{}", again.stderr);
    assert!(again.stderr.contains("exists"), "{}", again.stderr);

    // Restore: the copy and the key file, in a new place, and start.
    let key = first.dir.path().join("data/fedgate.key");
    let restored = Fedgate::start_with(|dir| {
        std::fs::create_dir_all(dir.join("data")).unwrap();
        std::fs::copy(&target, dir.join("data/fedgate.db")).unwrap();
        server().key_file(&key).config_text(dir)
    });
    for (upn, password) in &before {
        let (status, _, body) = get_with(restored.plain, "/whoami", &[("authorization", basic(upn, password))]).await;
        assert_eq!(status, StatusCode::OK, "{upn}: {}", String::from_utf8_lossy(&body));
    }
    let (status, _, _) = get_with(
        restored.plain,
        "/whoami",
        &[("authorization", basic(&before[0].0, "not-the-password"))],
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let users = restored.cli(&["--json", "user", "list"]).json();
    let count = users.as_array().map_or(0, |u| u.len());
    assert!(count >= before.len() + 2, "{count} users in the copy: {users}");
}
