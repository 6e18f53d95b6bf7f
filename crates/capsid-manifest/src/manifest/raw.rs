//! `Capsule.toml` exactly as written: every table refuses unknown keys, and every value that
//! is validated later keeps its span so the error can name its line.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawManifest {
    pub package: RawPackage,
    pub component: Option<Spanned<RawComponent>>,
    pub native: Option<Spanned<RawNative>>,
    pub mcp: Option<Spanned<RawNative>>,
    #[serde(default)]
    pub capabilities: RawCapabilities,
    #[serde(default)]
    pub dependencies: RawDependencies,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default, rename = "tool")]
    pub tools: Vec<RawTool>,
    #[serde(default)]
    pub env: BTreeMap<Spanned<String>, RawEnv>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPackage {
    pub name: Spanned<String>,
    pub version: Spanned<String>,
    #[serde(default)]
    pub description: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawComponent {
    pub wasm: Spanned<String>,
    pub blake3: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNative {
    pub command: Spanned<Vec<String>>,
    pub binary_blake3: Option<Spanned<String>>,
    /// `[mcp]` only.
    pub startup_timeout_ms: Option<Spanned<u64>>,
    pub restart_initial_ms: Option<Spanned<u64>>,
    pub restart_max_ms: Option<Spanned<u64>>,
    pub max_restarts: Option<Spanned<u32>>,
    pub quota_action: Option<Spanned<String>>,
    pub max_processes: Option<Spanned<u32>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCapabilities {
    #[serde(default)]
    pub fs_read: Vec<Spanned<String>>,
    #[serde(default)]
    pub fs_write: Vec<Spanned<String>>,
    #[serde(default)]
    pub process: Vec<Spanned<String>>,
    #[serde(default)]
    pub process_persistent: bool,
    pub process_sandbox: Option<Spanned<String>>,
    #[serde(default)]
    pub ipc_publish: Vec<Spanned<String>>,
    #[serde(default)]
    pub ipc_subscribe: Vec<Spanned<String>>,
    pub kv_quota_bytes: Option<Spanned<u64>>,
    #[serde(default)]
    pub uplink: bool,
    #[serde(default)]
    pub http: Vec<Spanned<String>>,
    #[serde(default)]
    pub ask: Vec<Spanned<String>>,
    #[serde(default)]
    pub tools: Vec<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDependencies {
    #[serde(default)]
    pub requires: Vec<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    pub memory_mb: Option<Spanned<u64>>,
    pub call_timeout_ms: Option<Spanned<u64>>,
    pub max_instances: Option<Spanned<u32>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTool {
    pub name: Spanned<String>,
    #[serde(default)]
    pub description: String,
    pub input_schema: Option<Spanned<toml::Table>>,
    pub output_schema: Option<Spanned<toml::Table>>,
    pub annotations: Option<RawAnnotations>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAnnotations {
    pub read_only: Option<bool>,
    pub destructive: Option<bool>,
    pub idempotent: Option<bool>,
    pub open_world: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEnv {
    #[serde(default)]
    pub description: String,
    pub default: Option<Spanned<String>>,
    #[serde(default)]
    pub secret: bool,
}
