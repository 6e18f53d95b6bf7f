//! `Capsule.toml` (DESIGN 3.2): parsing and validation into a [`Manifest`].

mod origin;
mod raw;

pub use origin::net_resource;

use std::collections::BTreeSet;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use capsid_capabilities::Pattern;
use capsid_core::CapsuleId;
use capsid_core::limits::{
    DEFAULT_CALL_TIMEOUT_MS, DEFAULT_CAPSULE_MEMORY_MB, DEFAULT_KV_QUOTA_BYTES,
    DEFAULT_MCP_STARTUP_TIMEOUT_MS, MAX_CALL_TIMEOUT_MS, MAX_CAPSULE_CHILD_PIDS,
    MAX_CAPSULE_INSTANCES, MAX_CAPSULE_MEMORY_MB, MAX_KV_QUOTA_BYTES, MAX_MANIFEST_BYTES,
    MAX_MCP_STARTUP_TIMEOUT_MS, SUPERVISOR_INITIAL_BACKOFF, SUPERVISOR_MAX_BACKOFF,
    SUPERVISOR_MAX_RESTARTS,
};
use toml::Spanned;

use raw::RawManifest;

/// A problem with one manifest: the file, the key, the line, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}:{line}: {key}: {message}", file.display())]
pub struct ManifestError {
    /// The manifest file.
    pub file: PathBuf,
    /// The key at fault, dotted (`capabilities.fs_read`), or the text found there.
    pub key: String,
    /// 1-based line (0 when the file could not be read at all).
    pub line: usize,
    /// What is wrong and, where it helps, what to write instead.
    pub message: String,
}

/// What a capsule runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Component {
    /// A WebAssembly component, relative to the capsule's directory, optionally pinned.
    Wasm {
        /// The component file, relative to the capsule directory (a single clean name path).
        path: PathBuf,
        /// The expected blake3 of the file (lowercase hex), if pinned.
        blake3: Option<String>,
    },
    /// A native program, supervised by the runtime (`[native]`).
    Native(NativeProgram),
    /// An MCP server, supervised as a native program is and spoken to over its stdio
    /// (`[mcp]`); its tools are the ones it lists.
    Mcp {
        /// The server program.
        program: NativeProgram,
        /// How long each start has to complete the MCP handshake and list its tools.
        startup_timeout_ms: u64,
    },
}

/// A supervised program: the `[native]` and `[mcp]` tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NativeProgram {
    /// The program and its arguments.
    pub command: Vec<String>,
    /// The expected blake3 of the program file (lowercase hex): checked before every start.
    pub binary_blake3: Option<String>,
    /// First wait before a restart after a failure, in milliseconds.
    pub restart_initial_ms: u64,
    /// Longest wait between restarts, in milliseconds.
    pub restart_max_ms: u64,
    /// Failed restarts in a row before the capsule is marked failed.
    pub max_restarts: u32,
    /// What a breach of its memory (`limits.memory_mb`) or process quota does.
    pub quota_action: NativeQuotaAction,
    /// Live processes its group may have before that counts as a breach.
    pub max_processes: Option<u32>,
}

impl Component {
    /// The supervised program, for `[native]` and `[mcp]` capsules.
    pub fn program(&self) -> Option<&NativeProgram> {
        match self {
            Self::Wasm { .. } => None,
            Self::Native(p) | Self::Mcp { program: p, .. } => Some(p),
        }
    }
}

/// What a native capsule's quota breach does (`[native] quota_action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NativeQuotaAction {
    /// Logged and counted; the program keeps running.
    #[default]
    Log,
    /// Logged, counted, and the program killed (then restarted as a failure).
    Kill,
}

/// Whether a capsule's programs run in the OS sandbox (`bwrap`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SandboxPolicy {
    /// In the sandbox where the host has `bwrap`, directly where it has not.
    #[default]
    Auto,
    /// Always in the sandbox: where the host has no `bwrap`, starting a program fails.
    Required,
}

/// What a capsule asks to be allowed. Nothing here is granted by being written down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capabilities {
    /// Read access, as `fs://workspace/...` patterns.
    pub fs_read: Vec<Pattern>,
    /// Write access, as `fs://workspace/...` patterns.
    pub fs_write: Vec<Pattern>,
    /// Programs it may start (bare names or absolute paths).
    pub process: Vec<String>,
    /// Whether it may start persistent processes.
    pub process_persistent: bool,
    /// Whether the programs it starts must run in the OS sandbox.
    pub process_sandbox: SandboxPolicy,
    /// Topics it may publish, as `ipc://publish/...` patterns.
    pub ipc_publish: Vec<Pattern>,
    /// Topics it subscribes to, as `ipc://subscribe/...` patterns.
    pub ipc_subscribe: Vec<Pattern>,
    /// Its KV quota in bytes (the default when it asks for none).
    pub kv_quota_bytes: u64,
    /// Whether it asks for the network uplink: its programs share the host's network when
    /// `process://network/<capsule>` is granted, and boot loads it (with what it requires)
    /// before the other capsules.
    pub uplink: bool,
    /// Origins it may send HTTP requests to, as `net://<scheme>/<host>/<port>` patterns.
    pub http: Vec<Pattern>,
    /// Resources it may ask a person for when it needs them (any kind, as capability
    /// patterns: `fs://workspace/**`, `net://https/*/443`); a check that fails on one of
    /// these waits for an approval instead of being denied. Granting nothing.
    pub ask: Vec<Pattern>,
    /// Other capsules' tools it may call through `capsid:host/tools`, as
    /// `tool://<capsule>/<tool>` patterns (written `github/*` in the manifest).
    pub tools: Vec<Pattern>,
}

/// Resource limits of an instance, with defaults filled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Linear memory, in MiB.
    pub memory_mb: u64,
    /// Deadline of one call, in milliseconds.
    pub call_timeout_ms: u64,
    /// Concurrent instances.
    pub max_instances: u32,
}

/// A tool the capsule offers.
#[derive(Debug, Clone, PartialEq)]
pub struct Tool {
    /// Its name.
    pub name: String,
    /// What it does.
    pub description: String,
    /// JSON schema of its input (an empty object schema when none is given).
    pub input_schema: serde_json::Value,
    /// JSON schema of its output, when it declares one (`output_schema`).
    pub output_schema: Option<serde_json::Value>,
    /// What it says of itself, for clients (`annotations`).
    pub annotations: ToolAnnotations,
}

/// A tool's hints to its callers (MCP's tool annotations: `read_only`, `destructive`,
/// `idempotent`, `open_world`). Hints only: what a tool can do is what its capsule is
/// granted, whatever it says here.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ToolAnnotations {
    /// It changes nothing.
    pub read_only: Option<bool>,
    /// It may destroy or overwrite what exists.
    pub destructive: Option<bool>,
    /// Calling it twice with the same input does no more than calling it once.
    pub idempotent: Option<bool>,
    /// It reaches things outside the host (the network, other services).
    pub open_world: Option<bool>,
}

/// An environment variable the capsule reads through `sys` config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvVar {
    /// Its name.
    pub name: String,
    /// What it is for.
    pub description: String,
    /// Its default, if any (never for secrets).
    pub default: Option<String>,
    /// Whether its value is secret (never logged, never defaulted).
    pub secret: bool,
}

/// A validated `Capsule.toml`.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    /// The file it was read from.
    pub file: PathBuf,
    /// `package.name`.
    pub name: CapsuleId,
    /// `package.version`.
    pub version: semver::Version,
    /// `package.description`.
    pub description: String,
    /// `[component]`, `[native]` or `[mcp]`.
    pub component: Component,
    /// `[capabilities]`.
    pub capabilities: Capabilities,
    /// `dependencies.requires`.
    pub requires: Vec<CapsuleId>,
    /// `[limits]`.
    pub limits: Limits,
    /// `[[tool]]`.
    pub tools: Vec<Tool>,
    /// `[env.KEY]`.
    pub env: Vec<EnvVar>,
}

/// Collects the span-located errors of one file.
struct Ctx<'a> {
    file: &'a Path,
    source: &'a str,
}

impl Ctx<'_> {
    fn line(&self, span: &Range<usize>) -> usize {
        let end = span.start.min(self.source.len());
        self.source.as_bytes()[..end].split(|&b| b == b'\n').count()
    }

    fn err(&self, key: &str, span: &Range<usize>, message: impl fmt::Display) -> ManifestError {
        ManifestError {
            file: self.file.to_owned(),
            key: key.to_owned(),
            line: self.line(span),
            message: message.to_string(),
        }
    }

    fn at<T>(&self, key: &str, value: &Spanned<T>, message: impl fmt::Display) -> ManifestError {
        self.err(key, &value.span(), message)
    }
}

impl Manifest {
    /// Reads and validates `file`.
    pub fn load(file: &Path) -> Result<Self, ManifestError> {
        let source = Self::read_source(file)?;
        Self::parse(file, &source)
    }

    /// Reads `file`'s text as [`Manifest::load`] does (a regular file, never through a
    /// symlink, at most `MAX_MANIFEST_BYTES`, UTF-8), without parsing it: for a caller that
    /// must hash exactly the bytes it then parses.
    pub fn read_source(file: &Path) -> Result<String, ManifestError> {
        let io = |e: &dyn fmt::Display| ManifestError {
            file: file.to_owned(),
            key: String::new(),
            line: 0,
            message: e.to_string(),
        };
        let bytes =
            capsid_core::file::read_regular(file, MAX_MANIFEST_BYTES).map_err(|e| match e {
                capsid_core::file::ReadError::Io { source, .. } => io(&source),
                capsid_core::file::ReadError::NotAFile { .. } => io(&"not a regular file"),
                capsid_core::file::ReadError::TooLarge { .. } => io(&format!(
                    "manifest is over the {MAX_MANIFEST_BYTES}-byte limit"
                )),
            })?;
        String::from_utf8(bytes).map_err(|e| io(&e))
    }

    /// Parses and validates manifest text; `file` is only used to name errors.
    pub fn parse(file: &Path, source: &str) -> Result<Self, ManifestError> {
        let cx = Ctx { file, source };
        let raw: RawManifest = toml::from_str(source).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            let found: String = source
                .get(span.clone())
                .unwrap_or("")
                .chars()
                .take(60)
                .collect();
            cx.err(found.trim(), &span, e.message())
        })?;
        validate(&cx, raw)
    }
}

fn validate(cx: &Ctx<'_>, raw: RawManifest) -> Result<Manifest, ManifestError> {
    let name = CapsuleId::new(raw.package.name.get_ref())
        .map_err(|e| cx.at("package.name", &raw.package.name, e))?;
    let version = semver::Version::parse(raw.package.version.get_ref()).map_err(|e| {
        cx.at(
            "package.version",
            &raw.package.version,
            format!("not a semantic version: {e}"),
        )
    })?;
    let component = match (raw.component, raw.native, raw.mcp) {
        (Some(c), None, None) => wasm_component(cx, &c)?,
        (None, Some(n), None) => {
            if let Some(t) = &n.get_ref().startup_timeout_ms {
                return Err(cx.at(
                    "native.startup_timeout_ms",
                    t,
                    "only an [mcp] capsule has a startup timeout",
                ));
            }
            Component::Native(native_program(cx, "native", &n)?)
        }
        (None, None, Some(m)) => {
            if let Some(tool) = raw.tools.first() {
                return Err(cx.at(
                    "tool",
                    &tool.name,
                    "an [mcp] capsule's tools are the ones its server lists: remove [[tool]]",
                ));
            }
            Component::Mcp {
                program: native_program(cx, "mcp", &m)?,
                startup_timeout_ms: bounded(
                    cx,
                    "mcp.startup_timeout_ms",
                    m.get_ref().startup_timeout_ms.as_ref(),
                    1,
                    MAX_MCP_STARTUP_TIMEOUT_MS,
                    DEFAULT_MCP_STARTUP_TIMEOUT_MS,
                )?,
            }
        }
        (None, None, None) => {
            return Err(cx.err(
                "component",
                &(0..0),
                "missing: add [component] wasm = \"...\", [native] command = [...] or [mcp] command = [...]",
            ));
        }
        (_, _, Some(m)) => {
            return Err(cx.at(
                "mcp",
                &m,
                "give one of [component], [native] and [mcp], not several",
            ));
        }
        (Some(c), Some(_), None) => {
            return Err(cx.at(
                "component",
                &c,
                "give one of [component], [native] and [mcp], not several",
            ));
        }
    };
    let requires = raw
        .dependencies
        .requires
        .iter()
        .map(|r| {
            let id =
                CapsuleId::new(r.get_ref()).map_err(|e| cx.at("dependencies.requires", r, e))?;
            if id == name {
                return Err(cx.at(
                    "dependencies.requires",
                    r,
                    "a capsule cannot require itself",
                ));
            }
            Ok(id)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let env = env(cx, raw.env, component.program().is_some())?;
    Ok(Manifest {
        file: cx.file.to_owned(),
        name,
        version,
        description: raw.package.description,
        component,
        capabilities: capabilities(cx, &raw.capabilities)?,
        requires,
        limits: limits(cx, &raw.limits)?,
        tools: tools(cx, raw.tools)?,
        env,
    })
}

fn wasm_component(
    cx: &Ctx<'_>,
    c: &Spanned<raw::RawComponent>,
) -> Result<Component, ManifestError> {
    let c = c.get_ref();
    let wasm = c.wasm.get_ref();
    let clean = !wasm.is_empty()
        && !wasm.starts_with('/')
        && wasm
            .split('/')
            .all(|s| !s.is_empty() && s != "." && s != ".." && !s.chars().any(char::is_control));
    if !clean || Path::new(wasm).extension().and_then(|e| e.to_str()) != Some("wasm") {
        return Err(cx.at(
            "component.wasm",
            &c.wasm,
            "must be a relative path inside the capsule directory ending in .wasm",
        ));
    }
    let blake3 = blake3_pin(cx, "component.blake3", c.blake3.as_ref())?;
    Ok(Component::Wasm {
        path: PathBuf::from(wasm),
        blake3,
    })
}

/// Manifest patterns name their scheme differently from capability patterns:
/// `workspace://notes/**` is `fs://workspace/notes/**`, topic `notes.*` is
/// `ipc://publish/notes.*`.
fn patterns(
    cx: &Ctx<'_>,
    key: &str,
    values: &[Spanned<String>],
    to_uri: impl Fn(&str) -> Option<String>,
) -> Result<Vec<Pattern>, ManifestError> {
    values
        .iter()
        .map(|v| {
            let uri = to_uri(v.get_ref())
                .ok_or_else(|| cx.at(key, v, "expected workspace://<path pattern>"))?;
            Pattern::parse(&uri).map_err(|e| cx.at(key, v, e))
        })
        .collect()
}

fn capabilities(cx: &Ctx<'_>, raw: &raw::RawCapabilities) -> Result<Capabilities, ManifestError> {
    let fs = |s: &str| {
        s.strip_prefix("workspace://")
            .map(|rest| format!("fs://workspace/{rest}"))
    };
    let topic = |dir: &'static str| {
        move |s: &str| (!s.is_empty() && !s.contains('/')).then(|| format!("ipc://{dir}/{s}"))
    };
    let process = raw
        .process
        .iter()
        .map(|p| {
            let cmd = p.get_ref();
            let bare = !cmd.is_empty()
                && cmd
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b))
                && !cmd.starts_with('.');
            let absolute = cmd.starts_with('/')
                && cmd[1..].split('/').all(|s| {
                    !s.is_empty() && s != "." && s != ".." && !s.chars().any(char::is_control)
                });
            if bare || absolute {
                Ok(cmd.clone())
            } else {
                Err(cx.at(
                    "capabilities.process",
                    p,
                    "expected a program name (git) or an absolute path (/usr/bin/python3)",
                ))
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Capabilities {
        fs_read: patterns(cx, "capabilities.fs_read", &raw.fs_read, fs)?,
        fs_write: patterns(cx, "capabilities.fs_write", &raw.fs_write, fs)?,
        process,
        process_persistent: raw.process_persistent,
        process_sandbox: match &raw.process_sandbox {
            None => SandboxPolicy::Auto,
            Some(v) if v.get_ref() == "auto" => SandboxPolicy::Auto,
            Some(v) if v.get_ref() == "required" => SandboxPolicy::Required,
            Some(v) => {
                return Err(cx.at(
                    "capabilities.process_sandbox",
                    v,
                    "expected \"auto\" or \"required\"",
                ));
            }
        },
        ipc_publish: patterns(
            cx,
            "capabilities.ipc_publish",
            &raw.ipc_publish,
            topic("publish"),
        )?,
        ipc_subscribe: patterns(
            cx,
            "capabilities.ipc_subscribe",
            &raw.ipc_subscribe,
            topic("subscribe"),
        )?,
        kv_quota_bytes: bounded(
            cx,
            "capabilities.kv_quota_bytes",
            raw.kv_quota_bytes.as_ref(),
            1,
            MAX_KV_QUOTA_BYTES,
            DEFAULT_KV_QUOTA_BYTES,
        )?,
        uplink: raw.uplink,
        http: raw
            .http
            .iter()
            .map(|o| {
                let uri = origin::origin_pattern(o.get_ref())
                    .map_err(|e| cx.at("capabilities.http", o, e))?;
                Pattern::parse(&uri).map_err(|e| cx.at("capabilities.http", o, e))
            })
            .collect::<Result<_, _>>()?,
        ask: raw
            .ask
            .iter()
            .map(|p| Pattern::parse(p.get_ref()).map_err(|e| cx.at("capabilities.ask", p, e)))
            .collect::<Result<_, _>>()?,
        tools: raw
            .tools
            .iter()
            .map(|t| tool_pattern(t.get_ref()).map_err(|e| cx.at("capabilities.tools", t, e)))
            .collect::<Result<_, _>>()?,
    })
}

/// `[capabilities] tools` entry `<capsule>/<tool>` (either may be or contain `*`) as its
/// `tool://` pattern.
fn tool_pattern(entry: &str) -> Result<Pattern, String> {
    const EXPECTED: &str = "expected <capsule>/<tool>, either may use * (github/*, notes/read)";
    match entry.split_once('/') {
        Some((capsule, tool)) if !capsule.is_empty() && !tool.is_empty() && !tool.contains('/') => {
            Pattern::parse(&format!("tool://{entry}")).map_err(|e| e.to_string())
        }
        _ => Err(EXPECTED.to_owned()),
    }
}

/// A blake3 pin: 64 lowercase hex digits.
fn blake3_pin(
    cx: &Ctx<'_>,
    key: &str,
    pin: Option<&Spanned<String>>,
) -> Result<Option<String>, ManifestError> {
    match pin {
        None => Ok(None),
        Some(h)
            if h.get_ref().len() == 64
                && h.get_ref()
                    .bytes()
                    .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) =>
        {
            Ok(Some(h.get_ref().clone()))
        }
        Some(h) => Err(cx.at(key, h, "must be 64 lowercase hex digits")),
    }
}

/// The `[native]` or `[mcp]` table (`table` names it): a program and its supervision.
fn native_program(
    cx: &Ctx<'_>,
    table: &str,
    n: &Spanned<raw::RawNative>,
) -> Result<NativeProgram, ManifestError> {
    let key = |k: &str| format!("{table}.{k}");
    let command = n.get_ref().command.get_ref().clone();
    if command.first().is_none_or(String::is_empty) {
        return Err(cx.at(&key("command"), &n.get_ref().command, "must name a program"));
    }
    let n = n.get_ref();
    let ms = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let restart_initial_ms = bounded(
        cx,
        &key("restart_initial_ms"),
        n.restart_initial_ms.as_ref(),
        1,
        ms(SUPERVISOR_MAX_BACKOFF),
        ms(SUPERVISOR_INITIAL_BACKOFF),
    )?;
    Ok(NativeProgram {
        binary_blake3: blake3_pin(cx, &key("binary_blake3"), n.binary_blake3.as_ref())?,
        command,
        restart_initial_ms,
        restart_max_ms: bounded(
            cx,
            &key("restart_max_ms"),
            n.restart_max_ms.as_ref(),
            restart_initial_ms,
            ms(SUPERVISOR_MAX_BACKOFF),
            ms(SUPERVISOR_MAX_BACKOFF).max(restart_initial_ms),
        )?,
        max_restarts: bounded(
            cx,
            &key("max_restarts"),
            n.max_restarts.as_ref(),
            0,
            1000,
            SUPERVISOR_MAX_RESTARTS,
        )?,
        quota_action: match &n.quota_action {
            None => NativeQuotaAction::Log,
            Some(v) if v.get_ref() == "log" => NativeQuotaAction::Log,
            Some(v) if v.get_ref() == "kill" => NativeQuotaAction::Kill,
            Some(v) => {
                return Err(cx.at(&key("quota_action"), v, "expected \"log\" or \"kill\""));
            }
        },
        max_processes: n
            .max_processes
            .as_ref()
            .map(|v| {
                bounded(
                    cx,
                    &key("max_processes"),
                    Some(v),
                    1,
                    u32::try_from(MAX_CAPSULE_CHILD_PIDS).unwrap_or(u32::MAX),
                    1,
                )
            })
            .transpose()?,
    })
}

fn bounded<T: Copy + PartialOrd + fmt::Display>(
    cx: &Ctx<'_>,
    key: &str,
    v: Option<&Spanned<T>>,
    min: T,
    max: T,
    default: T,
) -> Result<T, ManifestError> {
    match v {
        None => Ok(default),
        Some(s) if *s.get_ref() >= min && *s.get_ref() <= max => Ok(*s.get_ref()),
        Some(s) => Err(cx.at(key, s, format!("must be between {min} and {max}"))),
    }
}

fn limits(cx: &Ctx<'_>, raw: &raw::RawLimits) -> Result<Limits, ManifestError> {
    Ok(Limits {
        memory_mb: bounded(
            cx,
            "limits.memory_mb",
            raw.memory_mb.as_ref(),
            1,
            MAX_CAPSULE_MEMORY_MB,
            DEFAULT_CAPSULE_MEMORY_MB,
        )?,
        call_timeout_ms: bounded(
            cx,
            "limits.call_timeout_ms",
            raw.call_timeout_ms.as_ref(),
            1,
            MAX_CALL_TIMEOUT_MS,
            DEFAULT_CALL_TIMEOUT_MS,
        )?,
        max_instances: bounded(
            cx,
            "limits.max_instances",
            raw.max_instances.as_ref(),
            1,
            MAX_CAPSULE_INSTANCES,
            1,
        )?,
    })
}

fn tools(cx: &Ctx<'_>, raw: Vec<raw::RawTool>) -> Result<Vec<Tool>, ManifestError> {
    let mut seen = BTreeSet::new();
    raw.into_iter()
        .map(|t| {
            let name = t.name.get_ref();
            let valid = !name.is_empty()
                && name.len() <= 64
                && name.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-'
                });
            if !valid {
                return Err(cx.at("tool.name", &t.name, "use 1 to 64 of [a-z0-9_-]"));
            }
            if !seen.insert(name.clone()) {
                return Err(cx.at(
                    "tool.name",
                    &t.name,
                    "a tool of this name is already declared",
                ));
            }
            let input_schema = match t.input_schema {
                None => serde_json::json!({ "type": "object" }),
                Some(s) => serde_json::to_value(s.get_ref())
                    .map_err(|e| cx.at("tool.input_schema", &s, e))?,
            };
            let output_schema = match t.output_schema {
                None => None,
                Some(s) => {
                    let schema = serde_json::to_value(s.get_ref())
                        .map_err(|e| cx.at("tool.output_schema", &s, e))?;
                    if schema.get("type").and_then(serde_json::Value::as_str) != Some("object") {
                        return Err(cx.at(
                            "tool.output_schema",
                            &s,
                            "must describe an object (type = \"object\"): a tool's structured answer is an object",
                        ));
                    }
                    Some(schema)
                }
            };
            let annotations =
                t.annotations
                    .map_or_else(ToolAnnotations::default, |a| ToolAnnotations {
                        read_only: a.read_only,
                        destructive: a.destructive,
                        idempotent: a.idempotent,
                        open_world: a.open_world,
                    });
            Ok(Tool {
                name: name.clone(),
                description: t.description,
                input_schema,
                output_schema,
                annotations,
            })
        })
        .collect()
}

/// The `[env]` keys. For a native or MCP capsule (`program`) they become its program's
/// environment, so the ones the runtime fixes (`PATH`, `HOME`) and the dynamic loader's
/// (`LD_*`) are refused. (Not a boundary: the manifest names the program's arguments too;
/// the grant is to run the program.)
fn env(
    cx: &Ctx<'_>,
    raw: std::collections::BTreeMap<Spanned<String>, raw::RawEnv>,
    program: bool,
) -> Result<Vec<EnvVar>, ManifestError> {
    raw.into_iter()
        .map(|(k, v)| {
            let name = k.get_ref();
            let valid = name
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_uppercase() || b == b'_')
                && name
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
            if !valid {
                return Err(cx.at("env", &k, "variable names are [A-Z_][A-Z0-9_]*"));
            }
            if program && (name == "PATH" || name == "HOME" || name.starts_with("LD_")) {
                return Err(cx.at(
                    "env",
                    &k,
                    "a program's PATH and HOME are fixed by the runtime, and LD_* belongs to the dynamic loader",
                ));
            }
            if let (true, Some(d)) = (v.secret, &v.default) {
                return Err(cx.at(
                    &format!("env.{name}.default"),
                    d,
                    "a secret cannot have a default in the manifest",
                ));
            }
            Ok(EnvVar {
                name: name.clone(),
                description: v.description,
                default: v.default.map(Spanned::into_inner),
                secret: v.secret,
            })
        })
        .collect()
}
