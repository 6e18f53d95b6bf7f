//! The connection to the lattice's NATS servers: credentials, reconnection with backoff, and
//! the state `status` reports.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::context::{CreateStreamError, CreateStreamErrorKind};
use async_nats::jetstream::{ErrorCode, stream};
use async_nats::{ConnectOptions, Event, ServerAddr};
use capsid_core::limits::{
    LATTICE_CONNECT_TIMEOUT, LATTICE_FAILOVER_WAIT, LATTICE_KV_MAX_MESSAGE_BYTES,
    LATTICE_RECONNECT_MAX_DELAY, LATTICE_REQUEST_TIMEOUT,
};
use serde::Serialize;

use crate::config::{Auth, LatticeConfig};
use crate::error::LatticeError;
use crate::now_ms;

/// This host's connection to a lattice. Cheap to clone; clones share the connection.
#[derive(Debug, Clone)]
pub struct Lattice {
    config: Arc<LatticeConfig>,
    client: async_nats::Client,
    jetstream: async_nats::jetstream::Context,
    counters: Arc<Counters>,
    states: tokio::sync::watch::Receiver<LinkState>,
}

/// What the event callback counts.
#[derive(Debug, Default)]
struct Counters {
    disconnects: AtomicU64,
    /// Unix ms of the last connect or disconnect.
    changed_ms: AtomicU64,
}

/// Whether the host can reach the lattice now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkState {
    /// Connected to a server.
    Connected,
    /// Lost its server; reconnecting with backoff. Lattice calls fail meanwhile.
    Disconnected,
    /// Not yet connected.
    Pending,
}

/// The lattice as `status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LatticeStatus {
    /// The lattice's name.
    pub name: String,
    /// Connected or not.
    pub state: LinkState,
    /// The server connected to (its name as it gives it), when connected.
    pub server: Option<String>,
    /// The configured servers.
    pub servers: Vec<String>,
    /// Times the connection was lost since boot.
    pub disconnects: u64,
    /// Unix ms of the last change of state (0: none since boot).
    pub since_ms: u64,
}

/// Reconnect waits: 100 ms doubling to [`LATTICE_RECONNECT_MAX_DELAY`].
fn reconnect_delay(attempts: usize) -> Duration {
    let exp = u32::try_from(attempts.min(16)).unwrap_or(16);
    Duration::from_millis(100u64.saturating_mul(1 << exp)).min(LATTICE_RECONNECT_MAX_DELAY)
}

fn read_secret(path: &Path) -> Result<String, LatticeError> {
    let text = std::fs::read_to_string(path).map_err(|e| LatticeError::Credentials {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    let secret = text.trim().to_owned();
    if secret.is_empty() {
        return Err(LatticeError::Credentials {
            path: path.to_owned(),
            message: "is empty".into(),
        });
    }
    Ok(secret)
}

impl Lattice {
    /// Connects to `config`'s servers (credential files relative to `home`). Fails when none
    /// answers within [`LATTICE_CONNECT_TIMEOUT`]; once connected, a lost connection is
    /// retried for as long as the host runs.
    pub async fn connect(config: &LatticeConfig, home: &Path) -> Result<Self, LatticeError> {
        config.validate()?;
        let options =
            match config.auth(home)? {
                Auth::Anonymous => ConnectOptions::new(),
                Auth::CredsFile(path) => ConnectOptions::with_credentials_file(&path)
                    .await
                    .map_err(|e| LatticeError::Credentials {
                        path: path.clone(),
                        message: e.to_string(),
                    })?,
                Auth::NkeySeedFile(path) => ConnectOptions::with_nkey(read_secret(&path)?),
                Auth::UserPassword {
                    user,
                    password_file,
                } => ConnectOptions::with_user_and_password(user, read_secret(&password_file)?),
            };
        let counters = Arc::new(Counters::default());
        let seen = counters.clone();
        let (state_tx, states) = tokio::sync::watch::channel(LinkState::Pending);
        let state_tx = Arc::new(state_tx);
        let initial_tx = state_tx.clone();
        let name = config.name.clone();
        let options = options
            .name(format!("capsid lattice {}", config.name))
            .connection_timeout(LATTICE_CONNECT_TIMEOUT)
            .request_timeout(Some(LATTICE_REQUEST_TIMEOUT))
            .reconnect_delay_callback(reconnect_delay)
            .event_callback(move |event| {
                let seen = seen.clone();
                let name = name.clone();
                let state_tx = state_tx.clone();
                async move {
                    match event {
                        // The counters first: whoever sees the new state sees them too.
                        Event::Connected => {
                            seen.changed_ms.store(now_ms(), Ordering::Relaxed);
                            state_tx.send_replace(LinkState::Connected);
                            tracing::info!(lattice = %name, "lattice connected");
                        }
                        Event::Disconnected => {
                            seen.disconnects.fetch_add(1, Ordering::Relaxed);
                            seen.changed_ms.store(now_ms(), Ordering::Relaxed);
                            state_tx.send_replace(LinkState::Disconnected);
                            tracing::warn!(lattice = %name, "lattice disconnected; reconnecting");
                        }
                        other => tracing::debug!(lattice = %name, event = %other, "lattice"),
                    }
                }
            });
        let addrs: Vec<ServerAddr> = config
            .servers
            .iter()
            .filter_map(|s| s.parse().ok())
            .collect();
        let connect_error = |message: String| LatticeError::Connect {
            name: config.name.clone(),
            servers: config.servers.join(", "),
            message,
        };
        let client = options
            .connect(addrs)
            .await
            .map_err(|e| connect_error(e.to_string()))?;
        let info = client.server_info();
        if info.max_payload < LATTICE_KV_MAX_MESSAGE_BYTES {
            return Err(LatticeError::Server {
                server: info.server_name,
                message: format!(
                    "max_payload is {} bytes; capsid stores messages of up to \
                     {LATTICE_KV_MAX_MESSAGE_BYTES}: set max_payload: 8MB in every server's \
                     configuration",
                    info.max_payload
                ),
            });
        }
        if client.connection_state() == async_nats::connection::State::Connected {
            // Unless an event told otherwise meanwhile.
            initial_tx.send_if_modified(|state| {
                let pending = *state == LinkState::Pending;
                if pending {
                    *state = LinkState::Connected;
                }
                pending
            });
        }
        let mut jetstream = async_nats::jetstream::new(client.clone());
        jetstream.set_timeout(LATTICE_REQUEST_TIMEOUT);
        Ok(Self {
            config: Arc::new(config.clone()),
            client,
            jetstream,
            counters,
            states,
        })
    }

    /// The configuration it joined with.
    pub fn config(&self) -> &LatticeConfig {
        &self.config
    }

    /// The NATS client.
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// The JetStream context (requests time out after [`LATTICE_REQUEST_TIMEOUT`]).
    pub fn jetstream(&self) -> &async_nats::jetstream::Context {
        &self.jetstream
    }

    /// Opens stream `config.name`, creating it with `config` when it does not exist (another
    /// host creating it at the same moment is as good). A cluster still forming, with no
    /// JetStream leader yet or too few current peers to place the stream's replicas, is
    /// waited out for up to [`LATTICE_FAILOVER_WAIT`]; past it, or on any other error, the
    /// error says why.
    pub(crate) async fn open_stream(
        &self,
        config: stream::Config,
    ) -> Result<stream::Stream, String> {
        let js = self.jetstream();
        let started = Instant::now();
        loop {
            if let Ok(stream) = js.get_stream(&config.name).await {
                return Ok(stream);
            }
            let refused = match js.create_stream(config.clone()).await {
                Ok(stream) => return Ok(stream),
                Err(e) => e,
            };
            if let Ok(stream) = js.get_stream(&config.name).await {
                return Ok(stream);
            }
            if !cluster_forming(&refused) {
                return Err(refused.to_string());
            }
            if started.elapsed() >= LATTICE_FAILOVER_WAIT {
                return Err(format!(
                    "{refused} (still so after {LATTICE_FAILOVER_WAIT:?}: are {} JetStream \
                     nodes of the cluster up?)",
                    config.num_replicas
                ));
            }
            tracing::debug!(stream = %config.name, error = %refused,
                "JetStream cannot place the stream yet; retried");
            tokio::time::sleep(failover_pause(started)).await;
        }
    }

    /// The connection's state as it changes, as [`status`](Self::status) shows it.
    pub fn link_states(&self) -> tokio::sync::watch::Receiver<LinkState> {
        self.states.clone()
    }

    /// The lattice as `status` shows it. Its state is the one the client's events last
    /// told (a moment behind the socket's), so that it agrees with the disconnects counted
    /// from the same events.
    pub fn status(&self) -> LatticeStatus {
        let state = *self.states.borrow();
        LatticeStatus {
            name: self.config.name.clone(),
            state,
            server: (state == LinkState::Connected).then(|| self.client.server_info().server_name),
            servers: self.config.servers.clone(),
            disconnects: self.counters.disconnects.load(Ordering::Relaxed),
            since_ms: self.counters.changed_ms.load(Ordering::Relaxed),
        }
    }
}

/// Whether a stream was refused only because the cluster is still forming: no JetStream
/// leader answered, or too few peers are current to place its replicas.
fn cluster_forming(refused: &CreateStreamError) -> bool {
    match refused.kind() {
        CreateStreamErrorKind::JetStreamUnavailable | CreateStreamErrorKind::TimedOut => true,
        CreateStreamErrorKind::JetStream(e) => {
            e.error_code() == ErrorCode::CLUSTER_NO_PEERS
                || e.error_code() == ErrorCode::CLUSTER_NOT_AVAILABLE
        }
        _ => false,
    }
}

/// The pause before trying a read or write again while a leader is elected: 50 ms, growing
/// with the time waited so far, at most 1 s.
pub(crate) fn failover_pause(started: Instant) -> Duration {
    (Duration::from_millis(50) + started.elapsed() / 4).min(Duration::from_secs(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_waits_double_and_stop_at_the_cap() {
        assert_eq!(reconnect_delay(0), Duration::from_millis(100));
        assert_eq!(reconnect_delay(1), Duration::from_millis(200));
        assert_eq!(reconnect_delay(3), Duration::from_millis(800));
        assert_eq!(reconnect_delay(50), LATTICE_RECONNECT_MAX_DELAY);
    }
}
