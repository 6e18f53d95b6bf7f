//! Kernels joining a lattice (real `nats-server` processes on loopback): boot connects to the
//! servers of `[lattice]`, `status` reports the connection as it is lost and comes back, boot
//! refuses servers it cannot reach or that cannot carry capsid's values, saying which; and
//! grants are lattice-wide: one host's grant allows a call on another, its revocation reaches
//! the other within a bound, a host that cannot see the lattice denies, and a grant issued by
//! a host not trusted is worth nothing; a NATS node killed mid-load loses no grant a host was
//! told is stored, and the lattice's calls and writes come back; and a log put back to an
//! older copy, and then written on (its history rewritten), valid on its own, fails against
//! the heads the host anchored in the lattice.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use capsid_capabilities::{Permissions, Subject};
use capsid_capsule::CallControl;
use capsid_integration_tests::lattice::{
    HelloOnB, LatticeHost, hello_on_b, kernel_config, lattice_config,
};
use capsid_integration_tests::{PrivateHome, id};
use capsid_kernel::{Door, Kernel, KernelConfig, ToolCaller};
use capsid_lattice::LinkState;
use capsid_lattice::local::{LocalCluster, nats_server_binary};

fn config(servers: Vec<String>) -> KernelConfig {
    kernel_config(lattice_config(servers))
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

async fn greet(kernel: &Kernel, as_user: &ToolCaller) -> bool {
    kernel
        .call_tool_as(
            as_user,
            &id("hello"),
            "greet",
            r#"{"name":"x"}"#,
            &CallControl::new(),
        )
        .await
        .is_ok()
}

/// Polls `greet` on `kernel` until it answers `allowed`, for at most `within`; how long it
/// took.
async fn until_greet(
    kernel: &Kernel,
    user: &ToolCaller,
    allowed: bool,
    within: Duration,
) -> Duration {
    let start = Instant::now();
    while greet(kernel, user).await != allowed {
        if start.elapsed() > within {
            let answer = kernel
                .call_tool_as(
                    user,
                    &id("hello"),
                    "greet",
                    r#"{"name":"x"}"#,
                    &CallControl::new(),
                )
                .await;
            panic!(
                "greet still {} after {within:?}: {answer:?}; lattice {:?}",
                if allowed { "denied" } else { "allowed" },
                kernel.status().lattice
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_and_revocations_are_lattice_wide_and_an_unseen_lattice_denies() {
    let mut cluster = LocalCluster::start(3).await.unwrap();
    let hosts: Vec<LatticeHost> = (0..3).map(|_| LatticeHost::new(&["hello"])).collect();
    let (a_host, b_host, c_host) = (&hosts[0], &hosts[1], &hosts[2]);
    // A and B trust each other; neither trusts C.
    let a = a_host.boot(&cluster, &[b_host]).await;
    let b = b_host.boot(&cluster, &[a_host]).await;
    let c = c_host.boot(&cluster, &[a_host, b_host]).await;
    // Identities stay per host (their links are not signed); a grant names a principal id.
    assert_ne!(a.mcp_principal(), b.mcp_principal());
    let user = ToolCaller {
        principal: a.mcp_principal(),
        door: Door::McpHttp,
        client: None,
    };
    assert!(!greet(&b, &user).await, "nothing granted yet");

    let grant = a
        .grant(
            user.principal,
            None,
            "tool://hello/greet",
            Permissions::EXEC,
        )
        .await
        .unwrap();
    until_greet(&b, &user, true, Duration::from_secs(5)).await;
    a.revoke(grant).await.unwrap();
    let took = until_greet(&b, &user, false, Duration::from_secs(2)).await;
    eprintln!("a revocation on A denied on B after {took:?}");

    // C's grant allows on C, which issued it, and nowhere that does not trust C.
    c.grant(user.principal, None, "tool://hello/*", Permissions::EXEC)
        .await
        .unwrap();
    assert!(greet(&c, &user).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !greet(&b, &user).await,
        "B does not honour a grant C issued"
    );
    assert!(!greet(&a, &user).await, "nor does A");

    // Out of sight of the lattice, B denies even what it was granted.
    a.grant(
        user.principal,
        None,
        "tool://hello/greet",
        Permissions::EXEC,
    )
    .await
    .unwrap();
    until_greet(&b, &user, true, Duration::from_secs(5)).await;
    for n in 0..3 {
        cluster.kill(n);
    }
    let start = Instant::now();
    while !b.capabilities().out_of_sight() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "B still trusts its cache"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !greet(&b, &user).await,
        "a host that cannot see the grants denies"
    );
    cluster.restart_all().await.unwrap();
    until_greet(&b, &user, true, Duration::from_mins(1)).await;
    for kernel in [a, b, c] {
        kernel.shutdown().await;
    }
}

/// Copies the audit log's files (the database and any WAL) of a stopped host.
fn copy_audit(host: &LatticeHost, to: &std::path::Path) {
    let db = host.audit_db();
    std::fs::create_dir_all(to).unwrap();
    for suffix in ["", "-wal", "-shm"] {
        let from = std::path::PathBuf::from(format!("{}{suffix}", db.display()));
        if from.exists() {
            std::fs::copy(&from, to.join(from.file_name().unwrap())).unwrap();
        }
    }
}

/// Puts back the audit log's files copied by [`copy_audit`], dropping any WAL since.
fn restore_audit(host: &LatticeHost, from: &std::path::Path) {
    let db = host.audit_db();
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), db.with_file_name(entry.file_name())).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_node_killed_mid_load_loses_no_acknowledged_grant_and_the_lattice_recovers() {
    let mut cluster = LocalCluster::start(3).await.unwrap();
    let HelloOnB { a, b, user, .. } = hello_on_b(&cluster).await;
    // The node A is connected to: A loses its connection, its grants' watch and its calls'
    // path, and JetStream one of the bucket's three replicas.
    let server = a.status().lattice.unwrap().server.expect("A is connected");
    let node: usize = server.trim_start_matches('n').parse().unwrap();
    let subject = Subject {
        principal: user.principal,
        capsule: None,
        session: None,
    };
    // The load: each round A stores a grant in the lattice's bucket (so the next check of the
    // user reads the bucket again), then calls greet, served by B.
    let start = Instant::now();
    let mut acknowledged = Vec::new();
    let mut killed = false;
    let mut answered_since_kill = 0;
    for round in 0.. {
        assert!(
            start.elapsed() < Duration::from_mins(3),
            "calls through A still failing three minutes after node n{node} was killed \
             ({answered_since_kill} answered since); lattice {:?}",
            a.status().lattice
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        let resource = format!("tool://hello/t{round}");
        if a.grant(user.principal, None, &resource, Permissions::EXEC)
            .await
            .is_ok()
        {
            acknowledged.push(resource);
        }
        let answered = greet(&a, &user).await;
        if !killed && round == 10 {
            assert!(answered, "calls answer before the kill");
            cluster.kill(node);
            killed = true;
        } else if killed && answered {
            answered_since_kill += 1;
            if answered_since_kill == 10 {
                break;
            }
        }
    }
    let status = a.status().lattice.unwrap();
    assert_eq!(status.state, LinkState::Connected);
    assert_ne!(
        status.server.as_deref(),
        Some(server.as_str()),
        "A moved to another node"
    );
    assert!(status.disconnects >= 1);
    // Writes go on with two replicas of three.
    let after = "tool://hello/after".to_owned();
    while a
        .grant(user.principal, None, &after, Permissions::EXEC)
        .await
        .is_err()
    {
        assert!(
            start.elapsed() < Duration::from_mins(4),
            "no grant stored after the kill"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    acknowledged.push(after);
    // Every grant A was told is stored holds, on A and, through the bucket, on B.
    assert!(
        acknowledged.len() > 11,
        "{} grants acknowledged",
        acknowledged.len()
    );
    for resource in &acknowledged {
        let seen = Instant::now();
        for host in [&a, &b] {
            while !host
                .capabilities()
                .would_allow(&subject, Permissions::EXEC, resource)
                .await
            {
                assert!(
                    seen.elapsed() < Duration::from_mins(1),
                    "the acknowledged grant of {resource} was lost"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    for kernel in [a, b] {
        kernel.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_put_back_to_an_older_copy_or_rewritten_verifies_alone_but_not_against_the_lattice() {
    let cluster = LocalCluster::start(1).await.unwrap();
    let host = LatticeHost::new(&["hello"]);
    let greet_a_few = |kernel: Kernel| async move {
        for _ in 0..3 {
            kernel
                .call_tool(&id("hello"), "greet", r#"{"name":"x"}"#)
                .await
                .unwrap();
        }
        kernel
    };
    greet_a_few(host.boot(&cluster, &[]).await)
        .await
        .shutdown()
        .await;
    let backup = tempfile::tempdir().unwrap();
    copy_audit(&host, backup.path());

    // A later run, anchored at its boot and its shutdown.
    let kernel = greet_a_few(host.boot(&cluster, &[]).await).await;
    let check = kernel.verify_audit_against_lattice().await.unwrap();
    assert!(
        check.report.is_valid() && check.problems.is_empty(),
        "{check:?}"
    );
    assert!(check.anchors >= 2 && check.heads >= 2, "{check:?}");
    kernel.shutdown().await;

    // The log put back to the older copy: whole and valid on its own, so boot takes it,
    // but the heads the later run anchored are gone from it.
    restore_audit(&host, backup.path());
    let kernel = host.boot(&cluster, &[]).await;
    let check = kernel.verify_audit_against_lattice().await.unwrap();
    assert!(check.report.is_valid(), "the older copy verifies alone");
    assert!(
        check
            .problems
            .iter()
            .any(|p| matches!(p, capsid_audit::AnchorProblem::Missing { .. })),
        "{:?}",
        check.problems
    );
    // Written on from there, the log holds other entries where the later run's anchored
    // heads stood: a history rewritten, still whole and valid on its own.
    let kernel = greet_a_few(greet_a_few(greet_a_few(kernel).await).await).await;
    let check = kernel.verify_audit_against_lattice().await.unwrap();
    assert!(check.report.is_valid(), "the rewritten log verifies alone");
    assert!(
        check
            .problems
            .iter()
            .any(|p| matches!(p, capsid_audit::AnchorProblem::Rewritten { .. })),
        "{:?}",
        check.problems
    );
    kernel.shutdown().await;

    // A host that joined no lattice has nothing to check against.
    let alone = PrivateHome::new();
    let kernel = Kernel::builder()
        .home(alone.path())
        .config(KernelConfig {
            dev: true,
            ..KernelConfig::default()
        })
        .build()
        .await
        .unwrap();
    assert!(matches!(
        kernel.verify_audit_against_lattice().await,
        Err(capsid_kernel::KernelError::NoLattice)
    ));
    kernel.shutdown().await;
}
