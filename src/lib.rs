//! fedgate: a federation-aware authentication proxy.
//!
//! The binary (`src/main.rs`) only parses the command line and calls into
//! this library. Modules, one per concept:
//!
//! - [`config`]: the TOML file and its validated form
//! - [`cli`]: the subcommands
//! - [`proxy`]: listeners, routing, forwarding, the built-in upstream
//! - [`auth`]: the one place a request is authenticated before forwarding
//! - [`admin`]: health, readiness and metrics
//! - [`key_file`]: 32-byte key files made on first use (server key, portal key)
//! - [`secretbox`]: secrets sealed at rest under the portal key
//! - [`totp`]: the TOTP second factor (RFC 6238), its QR code and text key
//! - [`logging`]: tracing set-up (human or JSON)
//! - [`shutdown`]: the shutdown signal shared by listeners and tasks

pub mod admin;
pub mod app;
pub mod app_password;
pub mod audit;
pub mod auth;
pub mod cli;
pub mod config;
pub mod directory;
pub mod html;
pub mod jobs;
pub mod key_file;
pub mod logging;
pub mod model;
pub mod names;
pub mod notify;

pub mod portal;
pub mod proxy;
pub mod report;
pub mod secretbox;
pub mod server_key;
pub mod shutdown;
pub mod store;
pub mod sync;
pub mod totp;
