//! PostgreSQL for the tests of several nodes: one private cluster per test
//! run (made with `initdb` on a free loopback port, the same module the
//! store's unit tests use), one database per test, and the server key the
//! nodes of that database share.

use std::path::PathBuf;

#[path = "../../../src/store/pg_cluster.rs"]
mod pg_cluster;

pub use pg_cluster::{shared, Cluster, Options};

use super::fedgate::Builder;
use super::Fedgate;

/// A fresh database, and what every node of it needs to reach it.
pub struct Database {
    pub name: String,
    pub url: String,
    pub password_file: PathBuf,
    /// Every node of one store must hold the same server key (it makes the
    /// app-password lookup tags); the first node to start writes it.
    pub key_file: PathBuf,
    _dir: tempfile::TempDir,
}

impl Database {
    /// A database on the test run's shared cluster.
    pub fn new() -> Database {
        Database::on(shared())
    }

    /// A database on `cluster`: a test that stops its database server
    /// starts a cluster of its own, so the other tests keep theirs.
    pub fn on(cluster: &Cluster) -> Database {
        let name = cluster.create_database().unwrap_or_else(|e| panic!("{e}"));
        let url = cluster.url(&name);
        let dir = tempfile::tempdir().expect("temp dir");
        let password_file = dir.path().join("store-password");
        std::fs::write(&password_file, format!("{}\n", cluster.password())).expect("write password file");
        Database {
            url,
            name,
            password_file,
            key_file: dir.path().join("fedgate.key"),
            _dir: dir,
        }
    }

    /// A node of this store: fedgate with the store at this database and
    /// the shared key, an admin listener, and a cloud route at `/whoami`.
    pub fn node(&self) -> Builder {
        Fedgate::builder()
            .store_url(&self.url, &self.password_file)
            .key_file(&self.key_file)
            .admin()
            .cloud_route("/whoami", "builtin:whoami", "")
    }
}
