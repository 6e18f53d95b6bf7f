//! Native capsules (`[native] command = [...]`): programs the runtime starts in the workspace
//! and supervises ([`Supervisor`]): restarted on failure with backoff up to a cap, health,
//! restart count and a CPU/RSS history visible, memory (`limits.memory_mb`) and processes
//! (`[native] max_processes`) watched, a breach logged or killed (`[native] quota_action`).
//! [`supervise`] is also how an MCP capsule's server is run (`mcp/`).
//!
//! Starting one needs the same `process://exec/...` capability a capsule's own spawn would,
//! checked and recorded at every start, restarts included; under dev trust the manifest's
//! command is granted, otherwise an operator must have granted it. A `binary_blake3` pin is
//! checked against the program file before every start (a mismatch is refused and
//! recorded). The program runs in the OS sandbox where `bwrap` is installed, without network
//! unless `uplink` is granted (`process://network/<capsule>`), with the ceilings a capsule's
//! children get and the manifest's `[env]` keys. It writes the workspace directly, not
//! through the overlay.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use capsid_capabilities::{Denied, Permissions, Subject};
use capsid_core::CapsuleId;
use capsid_core::limits::{MAX_CAPSULE_CHILD_PIDS, NATIVE_OPEN_FILES};
use capsid_process::{
    DeclaredEnv, Health, Quota, QuotaAction, RestartPolicy, Sample, SpawnSpec, StartGate,
    Supervisor,
};

use crate::error::CapsuleError;
use crate::grants::{exec_resource, network_resource};
use crate::host::HostServices;
use capsid_manifest::{Manifest, NativeProgram, NativeQuotaAction};

/// A supervised native capsule.
#[derive(Debug)]
pub struct NativeCapsule {
    pub(crate) manifest: Manifest,
    pub(crate) dir: PathBuf,
    supervisor: Arc<Supervisor>,
}

fn subject(services: &HostServices, name: &CapsuleId) -> Subject {
    Subject {
        principal: services.principal,
        capsule: Some(name.clone()),
        session: None,
    }
}

/// Checks native capsule `name`'s capability to start `resource` and records the decision
/// (every start, restarts included, is a `process.spawn` entry, through the one
/// check-and-record path); `Err` when it is denied or cannot be recorded.
async fn authorize_start(
    services: &HostServices,
    name: &CapsuleId,
    resource: &str,
    restart: bool,
) -> Result<(), CapsuleError> {
    let details = serde_json::json!({ "native": true, "restart": restart });
    match services
        .authorize(
            &subject(services, name),
            capsid_audit::action::PROCESS_SPAWN,
            Permissions::EXEC,
            resource,
            true,
            details,
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(Denied::NotGranted(_)) => Err(CapsuleError::Denied {
            capsule: name.clone(),
            resource: resource.to_owned(),
        }),
        Err(Denied::Unrecorded(message)) => Err(CapsuleError::Setup {
            capsule: name.clone(),
            what: "recording the spawn",
            message,
        }),
    }
}

/// Hashes the program `program` names and compares it with the manifest's pin; a mismatch
/// (or a file that cannot be read) refuses the start and is recorded as a denied spawn.
async fn check_binary(
    services: &HostServices,
    name: &CapsuleId,
    program: &str,
    pin: &str,
) -> Result<(), CapsuleError> {
    let path = capsid_process::resolve_program(program).map_err(|e| CapsuleError::Setup {
        capsule: name.clone(),
        what: "finding its program",
        message: e.to_string(),
    })?;
    let hashed = {
        let path = path.clone();
        tokio::task::spawn_blocking(move || -> std::io::Result<String> {
            let mut hasher = blake3::Hasher::new();
            hasher.update_reader(std::fs::File::open(path)?)?;
            Ok(hasher.finalize().to_hex().to_string())
        })
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))
        .and_then(|r| r)
    };
    let found = match hashed {
        Ok(found) if found == pin => return Ok(()),
        Ok(found) => found,
        Err(e) => format!("unreadable: {e}"),
    };
    let details = serde_json::json!({
        "native": true,
        "reason": "binary_blake3 mismatch",
        "expected": pin,
        "found": found,
    });
    let resource = exec_resource(program);
    // Refused whether or not the refusal could be recorded.
    let _ = services
        .record(
            &subject(services, name),
            capsid_audit::action::PROCESS_SPAWN,
            &resource,
            capsid_audit::Decision::Deny,
            &details,
        )
        .await;
    Err(CapsuleError::BinaryMismatch {
        capsule: name.clone(),
        program: path.display().to_string(),
        expected: pin.to_owned(),
        found,
    })
}

/// How a supervised program's stdio is wired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProgramStdio {
    /// No stdin; stdout and stderr into the capsule's rings (a native capsule).
    Rings,
    /// Stdin and stdout as pipes for a protocol, stderr into its ring (an MCP server).
    Protocol,
}

/// Checks the capability to run `program`'s command (and its pin), then starts supervising
/// it with `env` as its declared environment; every restart is checked (and recorded), and
/// its pin compared, again, so a revoked grant or a changed file stops the restarts.
pub(crate) async fn supervise(
    manifest: &Manifest,
    program: &NativeProgram,
    env: Vec<(String, String)>,
    stdio: ProgramStdio,
    services: &HostServices,
) -> Result<Arc<Supervisor>, CapsuleError> {
    let name = manifest.name.clone();
    let (command, args) = program
        .command
        .split_first()
        .ok_or_else(|| CapsuleError::NotWasm(name.clone()))?;
    let resource = exec_resource(command);
    if let Some(pin) = &program.binary_blake3 {
        check_binary(services, &name, command, pin).await?;
    }
    authorize_start(services, &name, &resource, false).await?;
    let mut spec =
        SpawnSpec::new(command.clone(), services.workspace.clone()).args(args.iter().cloned());
    spec.declared_env = DeclaredEnv(env);
    if stdio == ProgramStdio::Protocol {
        spec.stdin = true;
        spec.stdout_piped = true;
    }
    // The network only when asked for and granted; a refusal is recorded, and the
    // program runs without it.
    let network = manifest.capabilities.uplink
        && authorize_start(services, &name, &network_resource(&name), false)
            .await
            .is_ok();
    spec.sandbox = crate::host::sandbox_for(manifest.capabilities.process_sandbox, network);
    spec.sandbox_identity = services.sandbox_identity;
    // The same ceilings a capsule's own children get: open files, and (where the host can
    // enforce it) tasks.
    spec.limits.open_files = Some(NATIVE_OPEN_FILES);
    if capsid_process::pids_limit_available() {
        spec.limits.pids = Some(MAX_CAPSULE_CHILD_PIDS);
    }
    let policy = RestartPolicy {
        initial_backoff: std::time::Duration::from_millis(program.restart_initial_ms),
        max_backoff: std::time::Duration::from_millis(program.restart_max_ms),
        max_restarts: program.max_restarts,
        // A server (an MCP capsule's) should never end: a clean exit is a failure too.
        clean_exit_is_final: stdio == ProgramStdio::Rings,
        ..RestartPolicy::default()
    };
    let quota = Quota {
        memory_bytes: Some(manifest.limits.memory_mb << 20),
        processes: program.max_processes.map(|n| n as usize),
        action: match program.quota_action {
            NativeQuotaAction::Log => QuotaAction::Log,
            NativeQuotaAction::Kill => QuotaAction::Kill,
        },
    };
    // The first start was checked just above; every later one is checked again.
    let checked_once = Arc::new(AtomicBool::new(true));
    let (gate_services, gate_name, gate_command, gate_pin) = (
        services.clone(),
        name.clone(),
        command.clone(),
        program.binary_blake3.clone(),
    );
    let gate: StartGate = Arc::new(move || {
        let (services, name, command, pin, first) = (
            gate_services.clone(),
            gate_name.clone(),
            gate_command.clone(),
            gate_pin.clone(),
            checked_once.swap(false, Ordering::AcqRel),
        );
        Box::pin(async move {
            if first {
                return Ok(());
            }
            if let Some(pin) = &pin {
                check_binary(&services, &name, &command, pin)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            authorize_start(&services, &name, &exec_resource(&command), true)
                .await
                .map_err(|e| e.to_string())
        })
    });
    Ok(Supervisor::start(
        name.as_str(),
        spec,
        policy,
        quota,
        Some(gate),
    ))
}

impl NativeCapsule {
    /// Checks the capability to run the manifest's command, then starts supervising it.
    pub(crate) async fn start(
        manifest: Manifest,
        dir: PathBuf,
        env: Vec<(String, String)>,
        services: &HostServices,
    ) -> Result<Self, CapsuleError> {
        let program = manifest
            .component
            .program()
            .ok_or_else(|| CapsuleError::NotWasm(manifest.name.clone()))?
            .clone();
        let supervisor = supervise(&manifest, &program, env, ProgramStdio::Rings, services).await?;
        Ok(Self {
            manifest,
            dir,
            supervisor,
        })
    }

    /// Its health.
    pub fn health(&self) -> Health {
        self.supervisor.health()
    }

    /// Restarts so far.
    pub fn restarts(&self) -> u32 {
        self.supervisor.restarts()
    }

    /// Its recent CPU and memory samples.
    pub fn history(&self) -> Vec<Sample> {
        self.supervisor.history()
    }

    /// Its supervisor (for the running child's output).
    pub fn supervisor(&self) -> &Arc<Supervisor> {
        &self.supervisor
    }

    pub(crate) async fn stop(&self) {
        self.supervisor.stop().await;
    }
}
