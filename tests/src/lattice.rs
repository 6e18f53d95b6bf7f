//! Hosts of a test lattice: homes with capsules installed and a runtime key made ahead (so
//! each can name the others it trusts), booted in this process or as a `lattice-host`
//! process a test can SIGKILL.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use capsid_capabilities::Permissions;
use capsid_capsule::CallControl;
use capsid_crypto::KeyPair;
use capsid_kernel::{Door, Kernel, KernelConfig, KernelError, ToolCaller};
use capsid_lattice::LatticeConfig;
use capsid_lattice::local::LocalCluster;

use crate::{AuditRow, PrivateHome, audit_rows, copy_capsule, id};

/// The name of every test lattice.
pub const LATTICE: &str = "itest";

/// A `[lattice]` on `servers`, named [`LATTICE`], one replica, nothing trusted or exported.
pub fn lattice_config(servers: Vec<String>) -> LatticeConfig {
    LatticeConfig {
        name: LATTICE.into(),
        servers,
        replicas: 1,
        credentials: None,
        trusted_hosts: Vec::new(),
        export: Vec::new(),
    }
}

/// A dev-mode kernel configuration joining `lattice`.
pub fn kernel_config(lattice: LatticeConfig) -> KernelConfig {
    KernelConfig {
        dev: true,
        hot_reload: false,
        lattice: Some(lattice),
        ..KernelConfig::default()
    }
}

/// A host of a lattice: its home, with capsules installed, and its runtime key.
#[allow(missing_debug_implementations)]
pub struct LatticeHost {
    /// Its home.
    pub home: PrivateHome,
    /// Its runtime key.
    pub key: capsid_crypto::KeyPair,
}

impl LatticeHost {
    /// A host with `capsules` (built samples) installed.
    pub fn new(capsules: &[&str]) -> Self {
        let home = PrivateHome::new();
        for name in capsules {
            copy_capsule(name, &home.path().join("capsules"));
        }
        let keys = home.path().join("keys");
        std::fs::create_dir_all(&keys).unwrap();
        std::fs::set_permissions(&keys, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .unwrap();
        let key = capsid_crypto::load_or_generate_runtime_key(&keys).unwrap();
        Self { home, key }
    }

    /// Its runtime public key, hex: how `trusted_hosts` names it.
    pub fn key_hex(&self) -> String {
        hex::encode(self.key.public_key().to_bytes())
    }

    /// Its audit log.
    pub fn audit_db(&self) -> std::path::PathBuf {
        capsid_core::CapsidHome::at(self.home.path().to_owned()).audit_db_path()
    }

    /// Its configuration on `cluster` (3 replicas when the cluster has 3 nodes), trusting
    /// `trusted`, exporting `export`.
    pub fn config(
        &self,
        cluster: &LocalCluster,
        trusted: &[&LatticeHost],
        export: &[&str],
    ) -> KernelConfig {
        let mut lattice = lattice_config(cluster.urls());
        lattice.replicas = cluster.urls().len().min(3);
        lattice.trusted_hosts = trusted.iter().map(|h| h.key_hex()).collect();
        lattice.export = export.iter().map(|&p| p.to_owned()).collect();
        kernel_config(lattice)
    }

    /// Boots it in this process.
    pub async fn boot(&self, cluster: &LocalCluster, trusted: &[&LatticeHost]) -> Kernel {
        self.boot_with(self.config(cluster, trusted, &[])).await
    }

    /// Boots it in this process with `config`.
    pub async fn boot_with(&self, config: KernelConfig) -> Kernel {
        Kernel::builder()
            .home(self.home.path())
            .config(config)
            .build()
            .await
            .unwrap_or_else(|e| panic!("boot: {e}"))
    }

    /// Boots it as a process of `program` (the `lattice-host` binary, which a test names
    /// with `env!("CARGO_BIN_EXE_lattice-host")`), returning once it is up.
    pub fn spawn(
        &self,
        program: &Path,
        cluster: &LocalCluster,
        trusted: &[&LatticeHost],
    ) -> HostProcess {
        let config = self.config(cluster, trusted, &[]);
        let lattice = serde_json::to_string(&config.lattice).unwrap();
        let mut child = Command::new(program)
            .args([self.home.path().to_str().unwrap(), &lattice])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "lattice-host did not come up");
        HostProcess(child)
    }
}

/// A host running as its own process; killed (SIGKILL) when dropped.
#[allow(missing_debug_implementations)]
pub struct HostProcess(Child);

impl HostProcess {
    /// Kills it at once (SIGKILL: no shutdown, no goodbye to the lattice).
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }

    /// Asks it to shut down (SIGTERM) and waits until it exited: the kernel's shutdown, then
    /// the end of the process.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.0.id()).unwrap());
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        self.0.wait().unwrap()
    }
}

impl Drop for HostProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The `lattice-host` program's half: boots a kernel in `home` joining the lattice given as
/// JSON, says `ready`, and runs until killed, or shuts the kernel down and exits on SIGTERM.
pub async fn run_host(home: &Path, lattice_json: &str) {
    let lattice: LatticeConfig = serde_json::from_str(lattice_json).unwrap();
    let kernel = Kernel::builder()
        .home(home)
        .config(kernel_config(lattice))
        .build()
        .await
        .unwrap_or_else(|e| panic!("boot: {e}"));
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).unwrap();
    println!("ready");
    terminate.recv().await;
    kernel.shutdown().await;
    std::process::exit(0);
}

/// The MCP user of `kernel`, calling over the HTTP door as a named client.
pub fn user_of(kernel: &Kernel) -> ToolCaller {
    ToolCaller {
        principal: kernel.mcp_principal(),
        door: Door::McpHttp,
        client: Some("itest-client".into()),
    }
}

/// Calls `tool` (capsule, tool) on `kernel` as `caller`.
pub async fn call(
    kernel: &Kernel,
    caller: &ToolCaller,
    tool: (&str, &str),
    input: &str,
) -> Result<String, KernelError> {
    kernel
        .call_tool_as(caller, &id(tool.0), tool.1, input, &CallControl::new())
        .await
}

/// Calls until it answers, for at most `within` (the serving host subscribes a moment after
/// it boots).
pub async fn call_until_ok(
    kernel: &Kernel,
    caller: &ToolCaller,
    tool: (&str, &str),
    input: &str,
    within: Duration,
) -> String {
    let start = Instant::now();
    loop {
        match call(kernel, caller, tool, input).await {
            Ok(answer) => return answer,
            Err(e) => assert!(
                start.elapsed() < within,
                "still failing after {within:?}: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Grants `user` hello's `greet` on `a`, and calls it until a host serves it.
pub async fn grant_greet(a: &Kernel, user: &ToolCaller, input: &str) -> String {
    a.grant(
        user.principal,
        None,
        "tool://hello/greet",
        Permissions::EXEC,
    )
    .await
    .unwrap();
    call_until_ok(a, user, ("hello", "greet"), input, Duration::from_secs(10)).await
}

/// Host A, with no capsules, and host B, serving `hello`, trusting each other on a
/// cluster, and a user granted `hello.greet` on A whose first call through A answered.
#[allow(missing_debug_implementations)]
pub struct HelloOnB {
    /// A's home and key.
    pub a_host: LatticeHost,
    /// B's home and key.
    pub b_host: LatticeHost,
    /// A, booted.
    pub a: Kernel,
    /// B, booted.
    pub b: Kernel,
    /// The user, as A's clients call.
    pub user: ToolCaller,
}

/// Boots [`HelloOnB`] on `cluster`.
pub async fn hello_on_b(cluster: &LocalCluster) -> HelloOnB {
    let (a_host, b_host) = (LatticeHost::new(&[]), LatticeHost::new(&["hello"]));
    let a = a_host.boot(cluster, &[&b_host]).await;
    let b = b_host.boot(cluster, &[&a_host]).await;
    let user = user_of(&a);
    grant_greet(&a, &user, r#"{"name":"x"}"#).await;
    HelloOnB {
        a_host,
        b_host,
        a,
        b,
        user,
    }
}

/// An audit row's details, parsed.
pub fn details(row: &AuditRow) -> serde_json::Value {
    serde_json::from_str(&row.details).unwrap()
}

/// A copy of `key` (the same secret), to sign as that host from outside its kernel.
pub fn copy_key(key: &KeyPair) -> Arc<KeyPair> {
    Arc::new(KeyPair::from_secret_bytes(&key.to_secret_bytes()))
}

/// The `lattice.refused` entries of `host`'s audit log for `what` (`call`, `event` or
/// `cancel`).
pub fn refusals_on(host: &LatticeHost, what: &str) -> Vec<AuditRow> {
    let resource = format!("lattice://{LATTICE}/{what}");
    audit_rows(&host.audit_db())
        .into_iter()
        .filter(|r| r.action == "lattice.refused")
        .inspect(|r| assert_eq!(r.decision, "deny"))
        .filter(|r| r.resource == resource)
        .collect()
}
