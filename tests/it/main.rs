//! Integration tests: the real `fedgate` binary on loopback sockets.

mod cli;
mod proxy;
mod signin;
mod support;
