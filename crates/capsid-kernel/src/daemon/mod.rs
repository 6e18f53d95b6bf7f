//! The daemon (DESIGN 3.8): the kernel served on `$CAPSID_HOME/run/capsid.sock` to the
//! `capsid` CLI and other local clients.
//!
//! [`RunFiles::acquire`] makes this the home's only daemon (before the kernel boots), then
//! [`serve`] answers until SIGTERM, SIGINT or a `daemon.stop` request, drains, shuts the
//! kernel down and removes its files. `capsid_protocol` is the wire format both sides use.
//!
//! Invariants: the socket is 0600 inside a 0700 directory and only the allowed uid
//! (`SO_PEERCRED`) may talk; nothing is served before a hello with the right protocol and
//! the session token (compared in constant time); a frame over the cap is answered with an
//! error frame and never read; a client that stops reading is dropped at a timeout, and a
//! misbehaving client costs only its own connection.

mod approvals;
mod files;
mod methods;
mod server;
mod stats;
mod tokens;
mod tools;
mod trust;
pub(crate) mod views;
mod workspace;

pub use files::RunFiles;
pub use server::{DaemonOptions, serve};
