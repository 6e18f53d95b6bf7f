//! Errors of the lattice connection.

use std::path::PathBuf;

/// Everything joining a lattice can fail with.
#[derive(Debug, thiserror::Error)]
pub enum LatticeError {
    /// The `[lattice]` section is wrong.
    #[error("[lattice] in the configuration: {0}")]
    Config(String),
    /// A credentials file could not be used.
    #[error("lattice credentials file {path}: {message}")]
    Credentials {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// No server of the lattice could be reached.
    #[error("cannot connect to the lattice {name:?} at {servers}: {message}")]
    Connect {
        /// The lattice.
        name: String,
        /// The servers tried, comma separated.
        servers: String,
        /// Why.
        message: String,
    },
    /// The servers cannot carry what capsid stores.
    #[error("lattice server {server}: {message}")]
    Server {
        /// The server that answered.
        server: String,
        /// What it lacks.
        message: String,
    },
}
