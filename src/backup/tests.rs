use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use super::*;
use crate::model::SystemClock;
use crate::store::OpenMode;

fn config_for(url: &str, dir: &Path) -> Config {
    let text = format!(
        "[server]\nlisten_plain = [\"127.0.0.1:0\"]\n[store]\nurl = \"{url}\"\nkey_file = \"{}\"\n\
         [[route]]\npath = \"/\"\nupstream = \"builtin:whoami\"\nrealm = \"none\"\n",
        dir.join("fedgate.key").display()
    );
    let path = dir.join("fedgate.toml");
    fs::write(&path, text).unwrap();
    Config::load(&path).unwrap()
}

#[tokio::test]
async fn a_backup_is_a_private_checked_copy_and_never_replaces_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("fedgate.db").display());
    let store = crate::store::open(&url, Arc::new(SystemClock), OpenMode::CreateIfMissing)
        .await
        .unwrap();
    let config = config_for(&url, dir.path());
    let target = dir.path().join("copy.db");

    let report = backup(&config, &target).await.unwrap();
    assert_eq!(report.schema_version, sqlite_backup::latest_schema_version());
    assert!(report.bytes > 0);
    assert_eq!(report.keep_with_it[0].key, "store.key_file");
    let mode = fs::metadata(&target).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let left: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("partial") || n.starts_with("copy.db-"))
        .collect();
    assert!(left.is_empty(), "files left beside the copy: {left:?}");

    let before = fs::read(&target).unwrap();
    let err = backup(&config, &target).await.unwrap_err();
    assert!(matches!(err, BackupError::Exists { .. }), "{err}");
    assert!(err.is_input());
    assert_eq!(fs::read(&target).unwrap(), before, "the existing file was changed");
    store.close().await;
}

#[tokio::test]
async fn stores_without_a_file_to_copy_are_refused_as_input_errors() {
    let dir = tempfile::tempdir().unwrap();
    let pg = config_for("postgres://fedgate@db.example.com:5432/fedgate", dir.path());
    let err = backup(&pg, &dir.path().join("a.db")).await.unwrap_err();
    assert!(err.to_string().contains("pg_dump"), "{err}");
    assert!(err.is_input());

    let missing = config_for(
        &format!("sqlite://{}", dir.path().join("none.db").display()),
        dir.path(),
    );
    let err = backup(&missing, &dir.path().join("b.db")).await.unwrap_err();
    assert!(matches!(err, BackupError::Store(StoreError::Missing { .. })), "{err}");
    assert!(err.is_input());
    assert!(!dir.path().join("b.db").exists());
    assert!(!dir.path().join("none.db").exists(), "the backup created the store");
}
