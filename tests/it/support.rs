//! Test harness: the real `fedgate` binary on loopback ports chosen by the
//! kernel, in-process upstreams, and small HTTP clients for HTTP/1.1 and
//! HTTP/2 over plain TCP or TLS.

pub mod admin;
pub mod browser;
pub mod caddy;
pub mod client;
pub mod fault_proxy;
pub mod fedgate;
pub mod haproxy;
pub mod mail;
pub mod nginx;
pub mod postgres;
pub mod samba;
pub mod slapd;
pub mod smtp;
pub mod upstream;
pub mod watched;

pub use client::Client;
pub use fedgate::Fedgate;
