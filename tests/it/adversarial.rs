//! The boundary tried as an attacker would, through real listeners on
//! loopback: every shape that once walked around a route, a sign-in or the
//! lockout stays a regression test here, beside the shapes that always held
//! (request smuggling, identity-header spellings) and must keep holding.
//!
//! Each area has its own file: [`request`] (the canonical request: paths,
//! hosts, upgrades, smuggling), [`lockout`] (names, budgets, timing),
//! [`store`] (a store that vanishes or breaks under a running server),
//! [`refusal`] (what a refusal costs and when it is sent), [`abandon`]
//! (sign-ins abandoned mid-check still count), [`view`] (the lockout while
//! the in-memory view lags the store).

mod abandon;
mod lockout;
mod refusal;
mod request;
mod store;
mod view;
