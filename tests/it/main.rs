//! Integration tests: the real `fedgate` binary on loopback sockets.

mod ad;
mod admin_api;
mod adversarial;
mod cli;
mod contrib;
mod directory;
mod forward_auth;
mod lb;
mod logs;
mod mail;
mod metrics;
mod nodes;
mod notify;
mod ops;
mod policy;
mod portal;
mod proxy;
mod push;
mod report;
mod scopes;
mod signin;
mod store_copy;
mod support;
mod sync;
