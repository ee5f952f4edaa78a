//! Day-2 operations: one instance per address, configuration reload on
//! SIGHUP, TLS and client certificates on the admin listener, backups of a
//! running SQLite store.

mod admin_tls;
mod backup;
mod certs;
mod instance;
mod reload;
mod tls_client;
