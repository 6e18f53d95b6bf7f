//! NATS servers run on loopback for tests, benchmarks and `cargo xtask run --lattice`: one
//! node, or a JetStream cluster of several, each a real `nats-server` process with its store
//! in a directory of the cluster's own. Dropping the [`LocalCluster`] kills them.

use std::fmt::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a started cluster may take until JetStream answers.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Where `nats-server` is looked for besides `$CAPSID_NATS_SERVER` and `$PATH` (Debian puts
/// it in `/usr/sbin`, outside a normal user's `$PATH`).
const KNOWN_PLACES: &[&str] = &["/usr/sbin/nats-server", "/usr/local/bin/nats-server"];

/// Why a local cluster could not run.
#[derive(Debug, thiserror::Error)]
pub enum LocalClusterError {
    /// No `nats-server` binary was found.
    #[error(
        "nats-server not found (looked at $CAPSID_NATS_SERVER, $PATH, {}): install it \
         (apt-get install nats-server)",
        KNOWN_PLACES.join(", ")
    )]
    NoServer,
    /// Starting or preparing a node failed.
    #[error("local NATS node {node}: {message}")]
    Node {
        /// The node's index.
        node: usize,
        /// What failed.
        message: String,
    },
}

/// One node: its ports, its process while it runs.
#[derive(Debug)]
struct Node {
    client_port: u16,
    route_port: u16,
    process: Option<Child>,
}

/// `nats-server` processes on loopback forming one JetStream cluster (or a single node).
#[derive(Debug)]
pub struct LocalCluster {
    binary: PathBuf,
    dir: tempfile::TempDir,
    nodes: Vec<Node>,
}

/// The `nats-server` to run.
pub fn nats_server_binary() -> Result<PathBuf, LocalClusterError> {
    if let Some(path) = std::env::var_os("CAPSID_NATS_SERVER") {
        return Ok(PathBuf::from(path));
    }
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|d| d.join("nats-server"));
    on_path
        .chain(KNOWN_PLACES.iter().map(PathBuf::from))
        .find(|p| p.is_file())
        .ok_or(LocalClusterError::NoServer)
}

/// Ports nodes listen on: below Linux's ephemeral range (32768 and up), so a port a killed
/// node frees is not taken by some connection's local end before the node comes back.
const PORTS: std::ops::Range<u16> = 20_000..32_000;

/// A port in [`PORTS`] free now, picked at random (tests run clusters side by side).
fn free_port(node: usize) -> Result<u16, LocalClusterError> {
    let span = u128::from(PORTS.end - PORTS.start);
    for _ in 0..256 {
        let offset = uuid::Uuid::new_v4().as_u128() % span;
        let port = PORTS.start + u16::try_from(offset).unwrap_or(0);
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Err(LocalClusterError::Node {
        node,
        message: format!("no free port in {PORTS:?}"),
    })
}

impl LocalCluster {
    /// Starts `nodes` servers (1: a single JetStream server; 3 or more: a cluster) and waits
    /// until JetStream answers on every one.
    pub async fn start(nodes: usize) -> Result<Self, LocalClusterError> {
        Self::start_forming(nodes, nodes).await
    }

    /// A cluster of `nodes` still forming: only the first `running` are started (and waited
    /// for); the others, which they expect, join with [`restart`](Self::restart).
    pub async fn start_forming(nodes: usize, running: usize) -> Result<Self, LocalClusterError> {
        let binary = nats_server_binary()?;
        let dir = tempfile::Builder::new()
            .prefix("capsid-nats-")
            .tempdir()
            .map_err(|e| LocalClusterError::Node {
                node: 0,
                message: e.to_string(),
            })?;
        let mut cluster = Self {
            binary,
            dir,
            nodes: Vec::with_capacity(nodes),
        };
        for n in 0..nodes {
            cluster.nodes.push(Node {
                client_port: free_port(n)?,
                route_port: free_port(n)?,
                process: None,
            });
        }
        for n in 0..running.min(nodes) {
            cluster.spawn(n)?;
        }
        cluster.wait_ready().await?;
        Ok(cluster)
    }

    /// Every node's client URL.
    pub fn urls(&self) -> Vec<String> {
        (0..self.nodes.len()).map(|n| self.url(n)).collect()
    }

    /// Node `n`'s client URL.
    pub fn url(&self, n: usize) -> String {
        format!("nats://127.0.0.1:{}", self.nodes[n].client_port)
    }

    /// Kills node `n` (SIGKILL) and waits for it.
    pub fn kill(&mut self, n: usize) {
        if let Some(mut child) = self.nodes[n].process.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts node `n` again after [`kill`](Self::kill), on its ports and store (or for
    /// the first time, in a cluster still forming).
    pub async fn restart(&mut self, n: usize) -> Result<(), LocalClusterError> {
        self.spawn(n)?;
        self.wait_ready().await
    }

    /// Starts every killed node again (a cluster needs most of its nodes back before
    /// JetStream answers on any), and waits until JetStream answers on each.
    pub async fn restart_all(&mut self) -> Result<(), LocalClusterError> {
        for n in 0..self.nodes.len() {
            if self.nodes[n].process.is_none() {
                self.spawn(n)?;
            }
        }
        self.wait_ready().await
    }

    fn config(&self, n: usize) -> String {
        let node = &self.nodes[n];
        let store = self.dir.path().join(format!("n{n}"));
        let mut text = format!(
            "server_name: n{n}\nlisten: 127.0.0.1:{}\nmax_payload: 8MB\n\
             jetstream {{\n  store_dir: {:?}\n  max_memory_store: 256MB\n  \
             max_file_store: 4GB\n}}\n",
            node.client_port,
            store.display().to_string()
        );
        if self.nodes.len() > 1 {
            let routes: Vec<String> = self
                .nodes
                .iter()
                .enumerate()
                .filter(|&(m, _)| m != n)
                .map(|(_, o)| format!("nats-route://127.0.0.1:{}", o.route_port))
                .collect();
            // Writing to a String cannot fail.
            let _ = write!(
                text,
                "cluster {{\n  name: capsid-local\n  listen: 127.0.0.1:{}\n  routes: [{}]\n}}\n",
                node.route_port,
                routes.join(", ")
            );
        }
        text
    }

    fn spawn(&mut self, n: usize) -> Result<(), LocalClusterError> {
        let fail = |message: String| LocalClusterError::Node { node: n, message };
        let conf = self.dir.path().join(format!("n{n}.conf"));
        std::fs::write(&conf, self.config(n)).map_err(|e| fail(e.to_string()))?;
        let log = std::fs::File::create(self.log_path(n)).map_err(|e| fail(e.to_string()))?;
        let child = Command::new(&self.binary)
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| fail(format!("{}: {e}", self.binary.display())))?;
        self.nodes[n].process = Some(child);
        Ok(())
    }

    fn log_path(&self, n: usize) -> PathBuf {
        self.dir.path().join(format!("n{n}.log"))
    }

    /// The directory holding every node's configuration, log and store.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    async fn wait_ready(&mut self) -> Result<(), LocalClusterError> {
        let start = Instant::now();
        for n in 0..self.nodes.len() {
            if self.nodes[n].process.is_none() {
                continue;
            }
            loop {
                if let Some(Ok(Some(status))) = self.nodes[n].process.as_mut().map(Child::try_wait)
                {
                    let log = std::fs::read_to_string(self.log_path(n)).unwrap_or_default();
                    return Err(LocalClusterError::Node {
                        node: n,
                        message: format!("exited ({status}): {}", log.trim()),
                    });
                }
                if jetstream_answers(&self.url(n)).await {
                    break;
                }
                if start.elapsed() > READY_TIMEOUT {
                    return Err(LocalClusterError::Node {
                        node: n,
                        message: format!("JetStream not ready after {READY_TIMEOUT:?}"),
                    });
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        // A meta leader can answer before it counts every peer as current; a bucket
        // replicated on all of them is refused ("no suitable peers") until it does.
        let running = self.nodes.iter().filter(|n| n.process.is_some()).count();
        let Some(first) = self.nodes.iter().position(|n| n.process.is_some()) else {
            return Ok(());
        };
        while running > 1 && !placement_works(&self.url(first), running).await {
            if start.elapsed() > READY_TIMEOUT {
                return Err(LocalClusterError::Node {
                    node: first,
                    message: format!(
                        "JetStream could not place a stream on {running} peers after \
                         {READY_TIMEOUT:?}"
                    ),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }
}

/// A connection to ask a node whether it is ready, if it takes one at once.
async fn probe_client(url: &str) -> Option<async_nats::Client> {
    async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_millis(500))
        .connect(url)
        .await
        .ok()
}

/// Whether JetStream on `url` can place a stream on `replicas` peers: a throwaway memory
/// stream is created and deleted.
async fn placement_works(url: &str, replicas: usize) -> bool {
    let Some(client) = probe_client(url).await else {
        return false;
    };
    let js = async_nats::jetstream::new(client.clone());
    let name = format!("CAPSID_READY_{}", uuid::Uuid::new_v4().simple());
    let config = async_nats::jetstream::stream::Config {
        subjects: vec![format!("capsid.ready.{name}")],
        name: name.clone(),
        num_replicas: replicas,
        storage: async_nats::jetstream::stream::StorageType::Memory,
        ..Default::default()
    };
    let placed = matches!(
        tokio::time::timeout(Duration::from_secs(2), js.create_stream(config)).await,
        Ok(Ok(_))
    );
    if placed {
        drop(js.delete_stream(&name).await);
    }
    drop(client.drain().await);
    placed
}

/// Whether JetStream on `url` answers an account query without an error (in a cluster: once
/// a meta leader is elected).
async fn jetstream_answers(url: &str) -> bool {
    let Some(client) = probe_client(url).await else {
        return false;
    };
    // Asked raw: the client's own account query does not read NATS 2.9's answer.
    let answer = tokio::time::timeout(
        Duration::from_secs(1),
        client.request("$JS.API.INFO", bytes::Bytes::new()),
    )
    .await;
    let ready = match answer {
        Ok(Ok(reply)) => serde_json::from_slice::<serde_json::Value>(&reply.payload)
            .is_ok_and(|v| v.get("error").is_none() && v.get("memory").is_some()),
        _ => false,
    };
    drop(client.drain().await);
    ready
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for n in 0..self.nodes.len() {
            self.kill(n);
        }
    }
}
