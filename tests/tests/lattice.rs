//! A kernel joining a lattice: boot connects to the NATS servers of `[lattice]` (real
//! `nats-server` processes on loopback), `status` reports the connection as it is lost and
//! comes back, and boot refuses servers it cannot reach or that cannot carry capsid's values,
//! saying which.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use capsid_integration_tests::PrivateHome;
use capsid_kernel::{Kernel, KernelConfig};
use capsid_lattice::local::{LocalCluster, nats_server_binary};
use capsid_lattice::{LatticeConfig, LinkState};

fn config(servers: Vec<String>) -> KernelConfig {
    KernelConfig {
        dev: true,
        hot_reload: false,
        lattice: Some(LatticeConfig {
            name: "itest".into(),
            servers,
            replicas: 1,
            credentials: None,
        }),
        ..KernelConfig::default()
    }
}

async fn wait_for(kernel: &Kernel, state: LinkState, within: Duration) {
    let start = Instant::now();
    loop {
        let status = kernel.status().lattice.expect("a lattice in status");
        if status.state == state {
            return;
        }
        assert!(
            start.elapsed() < within,
            "lattice still {:?} after {within:?}, waiting for {state:?}",
            status.state
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_follows_the_lattice_connection_as_it_drops_and_returns() {
    let mut cluster = LocalCluster::start(1).await.unwrap();
    let home = PrivateHome::new();
    let kernel = Kernel::builder()
        .home(home.path())
        .config(config(cluster.urls()))
        .build()
        .await
        .unwrap_or_else(|e| panic!("boot: {e}"));
    let status = kernel.status().lattice.unwrap();
    assert_eq!(status.name, "itest");
    assert_eq!(status.state, LinkState::Connected);
    assert_eq!(status.server.as_deref(), Some("n0"));
    assert_eq!(status.disconnects, 0);

    cluster.kill(0);
    wait_for(&kernel, LinkState::Disconnected, Duration::from_secs(10)).await;
    let down = kernel.status().lattice.unwrap();
    assert_eq!(down.server, None);
    assert_eq!(down.disconnects, 1);

    cluster.restart(0).await.unwrap();
    // Reconnect attempts back off to at most LATTICE_RECONNECT_MAX_DELAY apart.
    wait_for(&kernel, LinkState::Connected, Duration::from_secs(30)).await;
    kernel.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boot_refuses_a_lattice_it_cannot_reach_naming_it() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("nats://127.0.0.1:{port}");
    let home = PrivateHome::new();
    let err = Kernel::builder()
        .home(home.path())
        .config(config(vec![url.clone()]))
        .build()
        .await
        .expect_err("nothing listens there");
    let text = err.to_string();
    assert!(text.contains("\"itest\"") && text.contains(&url), "{text}");
}

/// A server process, killed however the test ends.
struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boot_refuses_servers_whose_max_payload_cannot_carry_a_value() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // A server as installed: the default max_payload of 1 MB.
    let server = Server(
        std::process::Command::new(nats_server_binary().unwrap())
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-n", "small"])
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let url = format!("nats://127.0.0.1:{port}");
    let home = PrivateHome::new();
    let mut result = None;
    for _ in 0..50 {
        match Kernel::builder()
            .home(home.path())
            .config(config(vec![url.clone()]))
            .build()
            .await
        {
            Err(e) if e.to_string().contains("cannot connect") => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => {
                result = Some(other);
                break;
            }
        }
    }
    drop(server);
    let text = result
        .expect("the server came up")
        .expect_err("1 MB max_payload")
        .to_string();
    assert!(
        text.contains("small") && text.contains("max_payload"),
        "{text}"
    );
}
