//! The bridge's connections to the home's daemon: opened as requests need them (at most
//! `MCP_DAEMON_CONNECTIONS` at once), kept for the next request when they end cleanly, and
//! closed when a request is cancelled, which is how the daemon learns to stop its call.

use std::sync::Arc;

use capsid_core::CapsidHome;
use capsid_core::limits::{
    MCP_DAEMON_CONNECTIONS, MCP_DECISIONS_AT_ONCE, MCP_FOLLOWS, MCP_IDLE_DAEMON_CONNECTIONS,
    MCP_TOKEN_CHECKS_AT_ONCE,
};
use capsid_core::sync::lock;
use capsid_protocol::{Client, ClientError};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Where the bridge reaches the daemon.
#[derive(Debug)]
pub struct Daemon {
    home: CapsidHome,
    fingerprint: String,
    idle: std::sync::Mutex<Vec<Client>>,
    turns: Arc<Semaphore>,
    /// Token checks have turns of their own, so calls in flight never hold back the next
    /// request's authentication (or its cancellation).
    checks: Arc<Semaphore>,
    /// So do approval decisions: the calls they would free hold the request turns.
    decisions: Arc<Semaphore>,
    follows: Arc<Semaphore>,
}

impl Daemon {
    /// The daemon of `home`, greeted with `fingerprint` (of the config the caller read);
    /// `first`, a connection already open, is used first.
    pub fn new(home: CapsidHome, fingerprint: String, first: Option<Client>) -> Arc<Self> {
        Arc::new(Self {
            home,
            fingerprint,
            idle: std::sync::Mutex::new(first.into_iter().collect()),
            turns: Arc::new(Semaphore::new(MCP_DAEMON_CONNECTIONS)),
            checks: Arc::new(Semaphore::new(MCP_TOKEN_CHECKS_AT_ONCE)),
            decisions: Arc::new(Semaphore::new(MCP_DECISIONS_AT_ONCE)),
            follows: Arc::new(Semaphore::new(MCP_FOLLOWS)),
        })
    }

    /// A turn to follow tool changes for one session (`MCP_FOLLOWS` at once), if one is free.
    pub(crate) fn follow_turn(&self) -> Option<OwnedSemaphorePermit> {
        self.follows.clone().try_acquire_owned().ok()
    }

    /// A new connection of its own (for a follow that lasts a session).
    pub async fn connect(&self) -> Result<Client, ClientError> {
        Client::connect(&self.home, self.fingerprint.clone()).await
    }

    /// A connection for one request: an idle one, else a new one.
    pub(crate) async fn lease(self: &Arc<Self>) -> Result<Lease, ClientError> {
        self.lease_on(&self.turns).await
    }

    /// A connection for one token check.
    pub(crate) async fn lease_check(self: &Arc<Self>) -> Result<Lease, ClientError> {
        self.lease_on(&self.checks).await
    }

    /// A connection for one approval decision.
    pub(crate) async fn lease_decision(self: &Arc<Self>) -> Result<Lease, ClientError> {
        self.lease_on(&self.decisions).await
    }

    async fn lease_on(self: &Arc<Self>, turns: &Arc<Semaphore>) -> Result<Lease, ClientError> {
        // The semaphores are never closed.
        let turn = turns
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ClientError::Closed)?;
        let idle = lock(&self.idle).pop();
        let client = match idle {
            Some(client) => client,
            None => self.connect().await?,
        };
        Ok(Lease {
            client,
            daemon: self.clone(),
            _turn: turn,
        })
    }
}

/// One request's connection. [`Lease::keep`] gives it back for the next request; dropped
/// otherwise, it is closed.
pub(crate) struct Lease {
    client: Client,
    daemon: Arc<Daemon>,
    _turn: OwnedSemaphorePermit,
}

impl Lease {
    /// The connection.
    pub(crate) fn client(&mut self) -> &mut Client {
        &mut self.client
    }

    /// Gives the connection back if the request's outcome leaves it usable: an answer, or an
    /// error the daemon sent; anything else may have left a frame half read.
    pub(crate) fn keep_if<T>(self, outcome: &Result<T, ClientError>) {
        if matches!(outcome, Ok(_) | Err(ClientError::Daemon(_))) {
            let mut idle = lock(&self.daemon.idle);
            if idle.len() < MCP_IDLE_DAEMON_CONNECTIONS {
                idle.push(self.client);
            }
        }
    }
}
