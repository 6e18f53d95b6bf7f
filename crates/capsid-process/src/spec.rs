//! What a spawn asks for, and the checks it must pass before anything is started.

use std::path::{Path, PathBuf};

use capsid_core::limits::{
    DEFAULT_OUTPUT_RING_BYTES, MAX_OUTPUT_RING_BYTES, MAX_PROCESS_ARGS, MAX_PROCESS_ARGV_BYTES,
    MAX_PROCESS_ENV_BYTES, MAX_PROCESS_ENV_VARS, MIN_OUTPUT_RING_BYTES, PROCESS_DEFAULT_PATH,
    PROCESS_ENV_ALLOW, PROCESS_HOME, PROCESS_SEARCH_PATH, SANDBOX_DEFAULT_GID, SANDBOX_DEFAULT_UID,
};

use crate::error::ProcessError;
use serde::{Deserialize, Serialize};

/// What happens when a stream's ring is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum RingPolicy {
    /// Keep reading the pipe; the oldest bytes make room and are counted as dropped.
    #[default]
    DropOldest,
    /// Stop reading the pipe until there is room: the child blocks on its next write and no
    /// byte is ever lost.
    Backpressure,
}

/// Resource limits set in the child (`setrlimit`) before it runs the program. `None` leaves
/// the host's limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ResourceLimits {
    /// Address space, in bytes (`RLIMIT_AS`).
    pub memory_bytes: Option<u64>,
    /// CPU time, in seconds (`RLIMIT_CPU`: SIGXCPU at the limit, SIGKILL a second later).
    pub cpu_seconds: Option<u64>,
    /// Tasks in the child's own `pids` cgroup: everything it and its descendants fork
    /// counts, and a fork past the limit fails. Needs the cgroup `pids` controller.
    pub pids: Option<u64>,
    /// Open file descriptors (`RLIMIT_NOFILE`).
    pub open_files: Option<u64>,
}

/// Whether the child runs inside the OS sandbox (`bwrap`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Sandbox {
    /// Never.
    #[default]
    Off,
    /// When `bwrap` is installed; directly otherwise.
    Auto {
        /// Whether the child keeps the host's network.
        network: bool,
    },
    /// Always: where `bwrap` is missing the spawn fails with
    /// [`ProcessError::SandboxUnavailable`].
    Required {
        /// Whether the child keeps the host's network.
        network: bool,
    },
}

/// Who a sandboxed child is inside its user namespace: an unprivileged uid and gid (by
/// default `nobody`/`nogroup`), never root, whatever the host runs as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxIdentity {
    /// The uid.
    pub uid: u32,
    /// The gid.
    pub gid: u32,
}

impl Default for SandboxIdentity {
    fn default() -> Self {
        Self {
            uid: SANDBOX_DEFAULT_UID,
            gid: SANDBOX_DEFAULT_GID,
        }
    }
}

/// A request to start a program.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpawnSpec {
    /// A bare name (looked up on the fixed search path) or an absolute path.
    pub program: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// Environment variables, only from the allow-list; nothing of the host's is inherited,
    /// and `PATH` and `HOME` are always the fixed ones.
    pub env: Vec<(String, String)>,
    /// Working directory, relative to the workspace (`None`: the workspace itself).
    pub cwd: Option<String>,
    /// The directory the child is confined to work in.
    pub workspace: PathBuf,
    /// Variables the capsule's manifest declares (`[env]`), valued by the operator or the
    /// manifest's default: passed as given (a server's token, say), never shown by `Debug`,
    /// and never `PATH`, `HOME` or a dynamic loader variable (`LD_*`).
    pub declared_env: DeclaredEnv,
    /// Whether stdin is a pipe the caller can write (else `/dev/null`).
    pub stdin: bool,
    /// Whether stdout is handed to the caller as a pipe ([`Child::take_stdio`]) instead of
    /// pumped into its ring: for a protocol spoken over stdio, MCP's.
    ///
    /// [`Child::take_stdio`]: crate::Child::take_stdio
    pub stdout_piped: bool,
    /// Limits applied before exec.
    pub limits: ResourceLimits,
    /// Size of each of the stdout and stderr rings, in bytes.
    pub ring_bytes: usize,
    /// What a full ring does.
    pub ring_policy: RingPolicy,
    /// The OS sandbox.
    pub sandbox: Sandbox,
    /// Who the child is inside the sandbox (ignored without one).
    pub sandbox_identity: SandboxIdentity,
}

impl SpawnSpec {
    /// A spec with defaults: no arguments, no extra environment, the workspace as cwd, no
    /// stdin, no limits, default rings that drop the oldest bytes, no sandbox.
    pub fn new(program: impl Into<String>, workspace: impl Into<PathBuf>) -> Self {
        Self {
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            declared_env: DeclaredEnv::default(),
            cwd: None,
            workspace: workspace.into(),
            stdin: false,
            stdout_piped: false,
            limits: ResourceLimits::default(),
            ring_bytes: DEFAULT_OUTPUT_RING_BYTES,
            ring_policy: RingPolicy::DropOldest,
            sandbox: Sandbox::Off,
            sandbox_identity: SandboxIdentity::default(),
        }
    }

    /// Adds arguments.
    #[must_use]
    pub fn args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, args: I) -> Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }
}

/// The variables a manifest declares, with their values; `Debug` shows only the names
/// (values may be secrets).
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeclaredEnv(pub Vec<(String, String)>);

impl std::fmt::Debug for DeclaredEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(k, _)| k))
            .finish()
    }
}

/// Whether `name` may not be set through a manifest's `[env]`: the two the runtime fixes,
/// and the dynamic loader's, which would change what the granted program runs.
fn reserved_env(name: &str) -> bool {
    name == "PATH" || name == "HOME" || name.starts_with("LD_")
}

/// A spec that passed every check, with its program resolved and its environment built.
/// Not `Debug`: its environment holds declared values, which may be secrets.
pub(crate) struct Checked {
    pub program: PathBuf,
    /// The canonical workspace.
    pub workspace: PathBuf,
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
}

fn invalid(message: impl Into<String>) -> ProcessError {
    ProcessError::Invalid(message.into())
}

fn has_nul(s: &str) -> bool {
    s.as_bytes().contains(&0)
}

/// Resolves a bare name on [`PROCESS_SEARCH_PATH`]; an absolute path must name a file.
pub fn resolve_program(program: &str) -> Result<PathBuf, ProcessError> {
    if program.is_empty() || has_nul(program) {
        return Err(invalid("the program name is empty or holds NUL"));
    }
    if program.starts_with('/') {
        let path = PathBuf::from(program);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(ProcessError::ProgramNotFound(program.to_owned()))
        };
    }
    if program.contains('/') {
        return Err(invalid(format!(
            "{program:?}: give a bare name or an absolute path"
        )));
    }
    PROCESS_SEARCH_PATH
        .iter()
        .map(|dir| Path::new(dir).join(program))
        .find(|p| p.is_file())
        .ok_or_else(|| ProcessError::ProgramNotFound(program.to_owned()))
}

/// The canonical workspace, and the working directory for `cwd` (relative to it),
/// canonicalised and required to stay inside it, symlinks included.
fn resolve_cwd(workspace: &Path, cwd: Option<&str>) -> Result<(PathBuf, PathBuf), ProcessError> {
    let canon = |p: &Path| {
        p.canonicalize().map_err(|source| ProcessError::Os {
            what: "resolving the working directory",
            source,
        })
    };
    let root = canon(workspace)?;
    let Some(rel) = cwd else {
        return Ok((root.clone(), root));
    };
    // Refused before touching the filesystem, so the answer says nothing about what exists
    // outside the workspace.
    if has_nul(rel) || rel.starts_with('/') || rel.split('/').any(|s| s == "..") {
        return Err(ProcessError::CwdOutsideWorkspace {
            dir: PathBuf::from(rel),
            workspace: root,
        });
    }
    let dir = root
        .join(rel)
        .canonicalize()
        .map_err(|_| ProcessError::Invalid(format!("{rel}: no such directory in the workspace")))?;
    if dir.starts_with(&root) {
        Ok((root, dir))
    } else {
        Err(ProcessError::CwdOutsideWorkspace {
            dir,
            workspace: root,
        })
    }
}

impl SpawnSpec {
    /// Checks every rule and resolves what the spawn needs.
    pub(crate) fn check(&self) -> Result<Checked, ProcessError> {
        if self.args.len() > MAX_PROCESS_ARGS {
            return Err(invalid(format!(
                "{} arguments, at most {MAX_PROCESS_ARGS}",
                self.args.len()
            )));
        }
        let argv: usize = self.args.iter().map(String::len).sum();
        if argv > MAX_PROCESS_ARGV_BYTES {
            return Err(invalid(format!(
                "{argv} bytes of arguments, at most {MAX_PROCESS_ARGV_BYTES}"
            )));
        }
        if self.args.iter().any(|a| has_nul(a)) {
            return Err(invalid("an argument holds NUL"));
        }
        let declared = &self.declared_env.0;
        if self.env.len() + declared.len() > MAX_PROCESS_ENV_VARS {
            return Err(invalid(format!(
                "{} environment variables, at most {MAX_PROCESS_ENV_VARS}",
                self.env.len() + declared.len()
            )));
        }
        let env_bytes: usize = self
            .env
            .iter()
            .chain(declared)
            .map(|(k, v)| k.len() + v.len())
            .sum();
        if env_bytes > MAX_PROCESS_ENV_BYTES {
            return Err(invalid(format!(
                "{env_bytes} bytes of environment, at most {MAX_PROCESS_ENV_BYTES}"
            )));
        }
        for (k, v) in &self.env {
            if !PROCESS_ENV_ALLOW.contains(&k.as_str()) {
                return Err(invalid(format!(
                    "environment variable {k:?} is not allowed (allowed: {})",
                    PROCESS_ENV_ALLOW.join(", ")
                )));
            }
            if has_nul(v) {
                return Err(invalid(format!("environment variable {k} holds NUL")));
            }
        }
        for (k, v) in declared {
            let name_ok = !k.is_empty()
                && k.bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
            if !name_ok || reserved_env(k) {
                return Err(invalid(format!(
                    "environment variable {k:?} cannot be declared (names are [A-Z0-9_], and never PATH, HOME or LD_*)"
                )));
            }
            if has_nul(v) {
                return Err(invalid(format!("environment variable {k} holds NUL")));
            }
        }
        if !(MIN_OUTPUT_RING_BYTES..=MAX_OUTPUT_RING_BYTES).contains(&self.ring_bytes) {
            return Err(invalid(format!(
                "ring of {} bytes, allowed {MIN_OUTPUT_RING_BYTES}..={MAX_OUTPUT_RING_BYTES}",
                self.ring_bytes
            )));
        }
        let mut env = self.env.clone();
        env.extend(declared.iter().cloned());
        env.push(("PATH".into(), PROCESS_DEFAULT_PATH.into()));
        env.push(("HOME".into(), PROCESS_HOME.into()));
        let (workspace, cwd) = resolve_cwd(&self.workspace, self.cwd.as_deref())?;
        Ok(Checked {
            program: resolve_program(&self.program)?,
            workspace,
            env,
            cwd,
        })
    }
}
