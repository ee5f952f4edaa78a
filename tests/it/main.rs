//! Integration tests: the real `fedgate` binary on loopback sockets.

mod adversarial;
mod cli;
mod directory;
mod portal;
mod proxy;
mod signin;
mod support;
mod sync;
