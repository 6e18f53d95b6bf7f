//! Params and results of the log and process methods.

use capsid_core::CapsuleId;
use serde::{Deserialize, Serialize};

/// `capsule.logs` and `capsule.logs.follow` params.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogParams {
    /// The capsule.
    pub name: CapsuleId,
    /// The last line already seen (0: from the oldest line kept).
    #[serde(default)]
    pub after: u64,
}

/// Lines of a capsule's log, and where to continue from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogPage {
    /// The lines, oldest first.
    pub lines: Vec<LogLine>,
    /// Pass as `after` to read on.
    pub next: u64,
}

/// One line of a capsule's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// Its position in the log, from 1.
    pub seq: u64,
    /// When, in ms since the Unix epoch.
    pub time_ms: u64,
    /// Its severity.
    pub level: LogLevel,
    /// Where it came from.
    pub source: LogSource,
    /// The text (control characters escaped).
    pub message: String,
}

/// Severity of a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogLevel {
    /// Very fine detail.
    Trace,
    /// Detail for debugging.
    Debug,
    /// Normal operation.
    Info,
    /// Something looks wrong.
    Warn,
    /// Something failed.
    Error,
}

/// Where a log line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogSource {
    /// The capsule's `log` calls.
    Guest,
    /// The capsule's WASI stdout.
    Stdout,
    /// The capsule's WASI stderr.
    Stderr,
    /// The runtime, about the capsule.
    Host,
}

macro_rules! kebab_display {
    ($($ty:ty),*) => {$(
        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                match serde_json::to_value(self) {
                    Ok(serde_json::Value::String(s)) => f.write_str(&s),
                    _ => write!(f, "{self:?}"),
                }
            }
        }
    )*};
}

kebab_display!(LogLevel, LogSource, OutputStream);

/// A process as the operator sees it (never its id: that belongs to the capsule).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum ProcessView {
    /// A persistent process a capsule started.
    Persistent {
        /// The capsule that owns it.
        capsule: CapsuleId,
        /// The label it was started with, if any.
        label: Option<String>,
        /// Its OS pid.
        pid: u32,
        /// Its generation: how `process.logs` names it.
        generation: u64,
        /// When it started, in ms since the Unix epoch.
        started_ms: u64,
        /// Whether it still runs.
        running: bool,
        /// Its exit code, once it exited with one.
        exit_code: Option<i32>,
        /// Restarts made so far (0 unless supervised).
        #[serde(default)]
        restarts: u32,
        /// Why it was given up on, once it was.
        #[serde(default)]
        gave_up: Option<String>,
        /// For a pipeline, each stage in order (empty for one program).
        #[serde(default)]
        stages: Vec<StageView>,
        /// For a pipeline, each link in order (link `i` joins stage `i` to stage `i + 1`).
        #[serde(default)]
        links: Vec<PipeLinkView>,
    },
    /// A native capsule's program.
    Native {
        /// The capsule.
        capsule: CapsuleId,
        /// Its health.
        health: crate::methods::HealthView,
        /// Restarts so far.
        restarts: u32,
    },
}

/// One stage of a persistent pipeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageView {
    /// Its OS pid.
    pub pid: u32,
    /// Whether it still runs.
    pub running: bool,
    /// Its exit code, once it exited with one.
    pub exit_code: Option<i32>,
}

/// One link of a persistent pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PipeLinkView {
    /// Bytes moved so far.
    pub bytes: u64,
    /// Bytes per second lately.
    pub rate: u64,
    /// Whether no byte will move any more.
    pub ended: bool,
}

/// Which output of a process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OutputStream {
    /// Its standard output.
    #[default]
    Stdout,
    /// Its standard error.
    Stderr,
}

/// `process.logs` and `process.logs.follow` params.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessLogParams {
    /// The process, by the generation `process.list` shows.
    pub generation: u64,
    /// Which output (stdout by default).
    #[serde(default)]
    pub stream: OutputStream,
    /// The offset to read from (0: the oldest byte kept).
    #[serde(default)]
    pub after: u64,
}

/// Output of a persistent process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessOutput {
    /// The bytes, as text (invalid UTF-8 replaced).
    pub text: String,
    /// Pass as `after` to read on.
    pub next: u64,
    /// Bytes between `after` and the oldest byte still kept (dropped or drained).
    pub missed: u64,
}

/// `process.stats` params.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatsParams {
    /// The capsule.
    pub name: CapsuleId,
}

/// One sample of a program's CPU, memory and tasks.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SampleView {
    /// When, in ms since the Unix epoch.
    pub at_ms: u64,
    /// CPU use since the sample before, in percent of one core.
    pub cpu_percent: f64,
    /// Resident memory, in bytes.
    pub rss_bytes: u64,
    /// Live processes.
    pub tasks: u64,
}

/// A native or MCP capsule's program: its samples and quota report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProgramStatsView {
    /// Restarts so far.
    pub restarts: u32,
    /// Samples that breached its quota so far.
    pub quota_breaches: u64,
    /// The last breach, named (`memory 140 MiB over 128 MiB`).
    pub last_breach: Option<String>,
    /// Its recent samples, oldest first.
    pub samples: Vec<SampleView>,
}

/// One persistent process (or pipeline) of a capsule: its samples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessStatsView {
    /// Its label, if any.
    pub label: Option<String>,
    /// Its generation (how `process.logs` names it).
    pub generation: u64,
    /// Its stages (1 for a single program).
    pub stages: usize,
    /// Whether it runs.
    pub running: bool,
    /// Restarts so far.
    pub restarts: u32,
    /// Its recent samples, oldest first.
    pub samples: Vec<SampleView>,
}

/// What `process.stats` answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CapsuleStats {
    /// The capsule.
    pub name: CapsuleId,
    /// Its program, for a native or MCP capsule.
    pub program: Option<ProgramStatsView>,
    /// Its persistent processes, oldest first.
    pub processes: Vec<ProcessStatsView>,
}
