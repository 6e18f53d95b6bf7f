//! Params and results of the status, capsule, tool and event methods.

use std::path::PathBuf;

use capsid_core::CapsuleId;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `status`: the daemon's state at a glance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusResult {
    /// capsid's version.
    pub version: String,
    /// The daemon's process id.
    pub pid: u32,
    /// The home directory.
    pub home: PathBuf,
    /// The workspace.
    pub workspace: PathBuf,
    /// Whether dev mode is on.
    pub dev: bool,
    /// The fingerprint of the config the daemon booted with.
    pub config_fingerprint: String,
    /// Milliseconds since boot began.
    pub uptime_ms: u64,
    /// What boot did.
    pub boot: BootSummary,
    /// Capsules known.
    pub capsules: usize,
    /// Capsules ready to serve.
    pub ready: usize,
    /// Capsules failed.
    pub failed: usize,
    /// The lattice's connection, when the host joined one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lattice: Option<LatticeView>,
}

/// The host's connection to its lattice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LatticeView {
    /// The lattice's name.
    pub name: String,
    /// `connected`, `disconnected` (reconnecting with backoff) or `pending`.
    pub state: String,
    /// The server connected to, when connected.
    pub server: Option<String>,
    /// The configured servers.
    pub servers: Vec<String>,
    /// Times the connection was lost since boot.
    pub disconnects: u64,
    /// Unix ms of the last change of state (0: none since boot).
    pub since_ms: u64,
    /// This host's runtime public key (hex): what other hosts list in `trusted_hosts` to
    /// honour the grants it issues.
    pub host_key: String,
    /// What crossed the lattice since boot.
    #[serde(default)]
    pub traffic: LatticeTrafficView,
}

/// What crossed the lattice since boot, counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LatticeTrafficView {
    /// Calls sent to capsules on other hosts.
    pub calls_sent: u64,
    /// Calls from other hosts served here.
    pub calls_served: u64,
    /// Calls from other hosts refused before they ran (their envelope).
    pub calls_refused: u64,
    /// Events sent to the lattice on exported topics.
    pub events_exported: u64,
    /// Events from other hosts delivered here.
    pub events_imported: u64,
    /// Events from other hosts refused.
    pub events_refused: u64,
    /// Events on exported topics dropped (the export queue was full).
    pub exports_dropped: u64,
    /// Cancels from other hosts refused (their envelope).
    #[serde(default)]
    pub cancels_refused: u64,
}

/// What boot did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootSummary {
    /// How many capsules boot loaded (their names: `capsule.list`; a count keeps `status`
    /// the same size however many are installed).
    pub loaded: usize,
    /// Capsules (or capsule folders) that failed to load, and why.
    pub failed: Vec<FailedLoad>,
    /// Whether a phase ran past the boot timeout.
    pub timed_out: bool,
    /// Boot time, in ms.
    pub boot_ms: u64,
    /// What verification found wrong with the audit log at boot (empty when it verified).
    pub audit_problems: Vec<String>,
    /// Whether the audit log is open read-only: nothing recorded can run.
    pub audit_read_only: bool,
    /// What boot did that it could not record (the log being read-only).
    pub unrecorded: Vec<String>,
}

/// A capsule boot could not load.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedLoad {
    /// The capsule, or its folder's name when its manifest could not name it.
    pub name: String,
    /// Why, in one line.
    pub reason: String,
}

/// Params naming one capsule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapsuleParams {
    /// The capsule.
    pub name: CapsuleId,
}

/// A capsule's lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CapsuleStateView {
    /// Being compiled, granted and instantiated.
    Loading,
    /// Serving calls.
    Ready,
    /// Refusing calls until reloaded (`reason` says why).
    Failed,
    /// Shutting its instances down.
    Unloading,
}

impl std::fmt::Display for CapsuleStateView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Loading => "loading",
            Self::Ready => "ready",
            Self::Failed => "failed",
            Self::Unloading => "unloading",
        })
    }
}

/// Whether a component was compiled or read back from the signed cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LoadKindView {
    /// Compiled from its `.wasm`.
    Compiled,
    /// Read from the signed compiled cache.
    Cached,
}

impl std::fmt::Display for LoadKindView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Compiled => "compiled",
            Self::Cached => "cached",
        })
    }
}

/// A capsule as the operator sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapsuleView {
    /// Its name.
    pub name: CapsuleId,
    /// Its version, when its manifest could be read.
    pub version: Option<String>,
    /// Its state.
    pub state: CapsuleStateView,
    /// Why it failed, when it did.
    pub reason: Option<String>,
    /// Its directory.
    pub dir: PathBuf,
    /// Its tools' names.
    pub tools: Vec<String>,
    /// blake3 of its component, once loaded.
    pub blake3: Option<String>,
    /// Compiled or cached, once loaded.
    pub load_kind: Option<LoadKindView>,
    /// For a native or MCP capsule: how its program's supervision stands.
    pub native: Option<NativeView>,
    /// For an MCP capsule: its connection and the tools waiting for review.
    #[serde(default)]
    pub mcp: Option<McpView>,
    /// Who signed it, once loaded (none when signature checks are off).
    #[serde(default)]
    pub signer: Option<super::SignerView>,
}

/// How an MCP capsule's server stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct McpView {
    /// Whether a server is connected and its tools listed.
    pub connected: bool,
    /// Tools hidden until the operator reviews them (`capsule.review`).
    pub pending_review: Vec<String>,
}

/// A tool of an MCP capsule that waits for review.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingToolView {
    /// The tool's name.
    pub tool: String,
    /// `new` (never pinned) or `changed` (differs from its pin).
    pub change: String,
    /// The definition pinned so far, for a changed tool (name, description, schemas).
    pub pinned: Option<Value>,
    /// The definition the server presents now.
    pub presented: Value,
    /// The presented definition's blake3: what accepting it names.
    pub digest: String,
}

/// Params of `capsule.review.accept`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReviewAcceptParams {
    /// The MCP capsule.
    pub name: CapsuleId,
    /// The digests of the reviewed definitions to accept (as `capsule.review` showed them).
    pub digests: Vec<String>,
}

/// What `capsule.review.accept` accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReviewAccepted {
    /// The tools now pinned and callable.
    pub accepted: Vec<String>,
}

/// How a native capsule's supervision stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NativeView {
    /// Its health.
    pub health: HealthView,
    /// Restarts so far.
    pub restarts: u32,
}

/// A native capsule's health.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum HealthView {
    /// Being started.
    Starting,
    /// Running.
    Running {
        /// Its pid.
        pid: u32,
    },
    /// Failed; restarting after a wait.
    Backoff {
        /// Restarts in a row so far, this one included.
        attempt: u32,
        /// The wait, in ms.
        retry_in_ms: u64,
    },
    /// Exited cleanly; not restarted.
    Finished,
    /// Given up on after too many failures.
    Failed {
        /// The last failure.
        reason: String,
    },
    /// Stopped on request.
    Stopped,
}

impl std::fmt::Display for HealthView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Starting => f.write_str("starting"),
            Self::Running { pid } => write!(f, "running (pid {pid})"),
            Self::Backoff {
                attempt,
                retry_in_ms,
            } => write!(f, "backoff (attempt {attempt}, retry in {retry_in_ms} ms)"),
            Self::Finished => f.write_str("finished"),
            Self::Failed { reason } => write!(f, "failed: {reason}"),
            Self::Stopped => f.write_str("stopped"),
        }
    }
}

/// `capsule.show`: a capsule, with what its manifest says when it is loaded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapsuleDetail {
    /// What `capsule.list` shows.
    #[serde(flatten)]
    pub capsule: CapsuleView,
    /// Its description, when loaded.
    pub description: Option<String>,
    /// Its tools and what they do, when loaded.
    pub tool_descriptions: Vec<ToolDescription>,
}

/// A tool and what it does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolDescription {
    /// The tool's name.
    pub name: String,
    /// What it does.
    pub description: String,
}

/// `capsule.install` params.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstallParams {
    /// The capsule's directory (absolute), holding its `Capsule.toml`.
    pub dir: PathBuf,
    /// Accept a signer or requests that differ from what the copy installed before was
    /// accepted with (refused otherwise, showing the difference).
    #[serde(default)]
    pub accept: bool,
}

/// `capsule.install`: the capsule as loaded, and what of its directory was not installed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallResult {
    /// The capsule, loaded.
    pub capsule: CapsuleView,
    /// Who signed it (none when signature checks are off).
    pub signer: Option<super::SignerView>,
    /// Its capability requests, as accepted (`<pattern> <permissions>`, `ask <pattern>`).
    /// Accepting them grants nothing: grants stay the operator's.
    pub requests: Vec<String>,
    /// How it differs from the copy installed before, when that was accepted.
    pub accepted: Option<super::InstallChangeView>,
    /// Files installed, relative to the capsule's directory.
    pub installed: Vec<PathBuf>,
    /// Entries of the directory left out (not part of the capsule), relative to it.
    pub left_out: Vec<PathBuf>,
}

/// `tool.call` params.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolCallParams {
    /// The capsule.
    pub capsule: CapsuleId,
    /// The tool.
    pub tool: String,
    /// The input, as JSON (an empty object when absent).
    #[serde(default = "empty_object")]
    pub input: Value,
    /// The user to call as (absent: the operator). Anyone but the operator must hold
    /// `tool://<capsule>/<tool>`, and a tool it may not call answers as an unknown one.
    #[serde(default)]
    pub as_user: Option<String>,
    /// The calling client's name, recorded with the call (an MCP client's).
    #[serde(default)]
    pub client: Option<String>,
    /// Through which door the call came (recorded).
    #[serde(default)]
    pub via: Via,
    /// `tool.run` only: send each approval request the call comes to wait on as an
    /// `approval` frame, so the client can ask its person (the MCP bridge's elicitation).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub approvals: bool,
}

/// The door a tool call came through.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Via {
    /// The daemon's own clients (`capsid call`).
    #[default]
    Daemon,
    /// The MCP bridge on stdio: a client the operator started on this machine.
    Mcp,
    /// The MCP bridge over HTTP: a client holding a bearer token. Dev trust never reaches it.
    McpHttp,
}

/// `tool.list` params.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolListParams {
    /// List what this user may call (absent: the operator, who may call everything).
    #[serde(default)]
    pub as_user: Option<String>,
    /// Through which door the user would call (dev trust reaches only some).
    #[serde(default)]
    pub via: Via,
}

/// `tool.changes.follow`: which set of tools a user may call, as a fingerprint that changes
/// when a tool is added, removed, or its description or schema changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolSet {
    /// blake3 of the tools' names, descriptions and schemas, in order.
    pub fingerprint: String,
}

/// A tool, as a caller discovers it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolDef {
    /// Its capsule.
    pub capsule: CapsuleId,
    /// Its name in the capsule.
    pub tool: String,
    /// What it does.
    pub description: String,
    /// JSON schema of its input.
    pub input_schema: Value,
    /// JSON schema of its output, when it declares one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_schema: Option<Value>,
    /// What it says of itself (hints, not promises).
    #[serde(default)]
    pub annotations: ToolHints,
}

/// A tool's hints to its callers, as its manifest's `annotations` give them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolHints {
    /// It changes nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only: Option<bool>,
    /// It may destroy or overwrite what exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destructive: Option<bool>,
    /// Calling it twice does no more than once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotent: Option<bool>,
    /// It reaches things outside the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_world: Option<bool>,
}

fn empty_object() -> Value {
    Value::Object(serde_json::Map::new())
}

/// What a tool answered: JSON when its answer parses as JSON, else the text as it came.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "kebab-case")]
pub enum ToolOutput {
    /// The answer was JSON.
    Json(Value),
    /// The answer was not JSON: the text, unchanged.
    Text(String),
}

impl ToolOutput {
    /// Reads a tool's answer: JSON if it parses, text otherwise.
    pub fn from_answer(answer: String) -> Self {
        match serde_json::from_str(&answer) {
            Ok(value) => Self::Json(value),
            Err(_) => Self::Text(answer),
        }
    }
}

/// One frame of `tool.run`: progress and approval requests while the tool runs, then its
/// answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ToolRunFrame {
    /// How far the tool is, as its capsule last reported.
    Progress(ToolProgress),
    /// The call waits for a person's decision on this request (sent when the call asked
    /// for `approvals`); `approval.decide` answers it.
    Approval(super::ApprovalView),
    /// The tool's answer (the last frame).
    Done(ToolOutput),
}

/// A tool's progress report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolProgress {
    /// Units done.
    pub done: u64,
    /// Units in all, when known.
    #[serde(default)]
    pub total: Option<u64>,
    /// A short message.
    #[serde(default)]
    pub message: Option<String>,
}

/// `event.publish` params.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishParams {
    /// The topic.
    pub topic: String,
    /// The payload: a string is sent as its bytes, anything else as its JSON text.
    #[serde(default)]
    pub payload: Value,
}

/// `event.publish`: how many subscribers took the event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// Subscribers whose queue took it.
    pub delivered: usize,
    /// Subscribers whose queue was full.
    pub dropped: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tool_answer_says_whether_it_was_json() {
        let quoted = ToolOutput::from_answer(r#""x""#.to_owned());
        let bare = ToolOutput::from_answer("x".to_owned());
        assert_eq!(quoted, ToolOutput::Json(Value::String("x".into())));
        assert_eq!(bare, ToolOutput::Text("x".into()));
        assert_ne!(
            serde_json::to_string(&quoted).unwrap_or_default(),
            serde_json::to_string(&bare).unwrap_or_default()
        );
        assert_eq!(
            serde_json::to_value(&bare).unwrap_or_default(),
            serde_json::json!({ "kind": "text", "value": "x" })
        );
    }
}
