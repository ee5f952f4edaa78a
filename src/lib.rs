//! fedgate: a federation-aware authentication proxy.
//!
//! The binary (`src/main.rs`) only parses the command line and calls into
//! this library. Modules, one per concept:
//!
//! - [`config`]: the TOML file and its validated form
//! - [`cli`]: the subcommands
//! - [`proxy`]: listeners, routing, forwarding, the built-in upstream
//! - [`auth`]: the one place a request is authenticated before forwarding
//! - [`mail_auth`]: the nginx mail `auth_http` endpoint (IMAP, POP3, SMTP)
//! - [`admin`]: health, readiness, metrics and the admin API
//! - [`backup`]: `fedgate backup`, a checked copy of a running SQLite store
//! - [`manage`]: the administrative operations the CLI and the admin API share
//! - [`key_file`]: 32-byte key files made on first use (server key, portal key)
//! - [`secretbox`]: secrets sealed at rest under the portal key
//! - [`totp`]: the TOTP second factor (RFC 6238), its QR code and text key
//! - [`reload`]: SIGHUP: the parts of a running server a new config replaces
//! - [`telemetry`]: the metrics, their names, labels and starting values
//! - [`logging`]: tracing set-up (human or JSON)
//! - [`instance`]: one fedgate per listening address
//! - [`shutdown`]: the shutdown signal shared by listeners and tasks

pub mod admin;
pub mod app;
pub mod app_password;
pub mod audit;
pub mod auth;
pub mod backup;
pub mod cli;
pub mod config;
pub mod directory;
pub mod html;
pub mod instance;
pub mod jobs;
pub mod key_file;
pub mod logging;
pub mod mail_auth;
pub mod manage;
pub mod model;
pub mod names;
pub mod notify;

pub mod policy;
pub mod portal;
pub mod proxy;
pub mod reload;
pub mod report;
pub mod secretbox;
pub mod server_key;
pub mod shutdown;
pub mod store;
pub mod sync;
pub mod telemetry;
pub mod totp;
