//! Integration tests: the real `fedgate` binary on loopback sockets.

mod ad;
mod adversarial;
mod cli;
mod directory;
mod lb;
mod nodes;
mod notify;
mod portal;
mod proxy;
mod report;
mod signin;
mod store_copy;
mod support;
mod sync;
