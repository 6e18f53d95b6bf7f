//! MCP capsules (`[mcp] command = [...]`): an existing MCP server run as a capsule. Its
//! program is started and supervised exactly as a native capsule's is (`native.rs`: exec
//! grant, pin, sandbox, no network unless granted, restarts per its policy), with stdin and
//! stdout kept as the MCP stdio transport and stderr read into the capsule's log. rmcp's
//! client speaks to it (`client.rs`).
//!
//! Its tools are the ones the server lists, but only as far as they were accepted: the
//! first time a tool is seen its definition (everything an agent is shown of it;
//! `definition.rs`) is pinned by blake3 under dev trust, otherwise it waits for review; a tool whose
//! definition later differs from its pin (a server rewriting its own description to steer an
//! agent) is hidden until the operator accepts the change (`capsid capsule review`). Each
//! of those is recorded. Calls are bounded: the capsule's `call_timeout_ms` (the request is
//! cancelled on the server), `MAX_TOOL_OUTPUT_BYTES` for the answer, and the caller's
//! cancellation.

mod client;
pub(crate) mod definition;

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use capsid_audit::{Decision, action};
use capsid_capabilities::Subject;
use capsid_core::CapsuleId;
use capsid_core::limits::{MAX_MCP_REVIEW_RECORDS, MCP_SERVER_WAIT_RECHECK};
use capsid_core::sync::lock;
use capsid_manifest::{Manifest, Tool};
use capsid_process::{Health, Supervisor};
use capsid_storage::{PinnedTool, ToolPinStore};
use rmcp::model::{CallToolRequestParams, NumberOrString, ProgressToken, RequestParamsMeta};
use rmcp::service::{Peer, RoleClient, ServiceError};
use serde_json::Value;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::control::CallControl;
use crate::error::CapsuleError;
use crate::grants::Trust;
use crate::host::HostServices;
use crate::logbuf::{CapsuleLog, LogLevel, LogSource};
use crate::native::{ProgramStdio, supervise};
use definition::Presented;

/// Whether a tool waiting for review is new or changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolChange {
    /// Never pinned.
    New,
    /// Pinned, and the server now presents a different definition.
    Changed,
}

impl ToolChange {
    /// Its name in messages and records.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::New => "new",
            Self::Changed => "changed",
        }
    }
}

/// A tool of an MCP capsule that waits for the operator's review.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingTool {
    /// The tool's name.
    pub tool: String,
    /// New or changed.
    pub change: ToolChange,
    /// The definition pinned so far (for a changed tool).
    pub pinned: Option<Value>,
    /// The definition the server presents now.
    pub presented: Value,
    /// Its digest: what accepting it names.
    pub digest: String,
}

/// The server's tools as last listed, sorted into those that may be called and those that
/// wait for review.
#[derive(Debug, Default)]
struct ToolBook {
    callable: Vec<Tool>,
    /// With each, the tool it would become once accepted.
    pending: Vec<(PendingTool, Tool)>,
    /// Digests of pending tools already recorded, so a server listing the same change
    /// again and again (or flipping back and forth) adds one record, not one per list.
    /// Each entry cost a record, so the records budget bounds it.
    noticed: BTreeSet<String>,
}

/// What the capsule's connection task and its callers share.
pub(crate) struct Shared {
    name: CapsuleId,
    trust: Trust,
    services: HostServices,
    pins: ToolPinStore,
    log: CapsuleLog,
    /// The connected server, while there is one.
    peer: watch::Sender<Option<Peer<RoleClient>>>,
    book: Mutex<ToolBook>,
    /// Running calls by progress token, to pass the server's progress on.
    calls: Mutex<HashMap<i64, CallControl>>,
    next_call: AtomicI64,
    /// Set by `notifications/tools/list_changed`.
    refresh: Notify,
    /// How long a start has to shake hands and list its tools (`startup_timeout_ms`).
    startup: Duration,
    /// Held while the book is re-sorted or tools are accepted, so neither overwrites the
    /// other's work.
    sorting: tokio::sync::Mutex<()>,
    /// Pin and review records still allowed ([`MAX_MCP_REVIEW_RECORDS`]).
    records_left: AtomicUsize,
    /// Whether the log has said the records are spent.
    records_spent_said: AtomicBool,
    /// Set once the capsule is stopped: calls waiting for a server give up.
    stopped: AtomicBool,
}

/// A supervised MCP server whose tools are capsid tools.
pub struct McpCapsule {
    pub(crate) manifest: Manifest,
    pub(crate) dir: PathBuf,
    supervisor: Arc<Supervisor>,
    shared: Arc<Shared>,
    connection: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for McpCapsule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpCapsule")
            .field("name", &self.manifest.name)
            .finish_non_exhaustive()
    }
}

/// Removes a call from the progress map when it ends, however it ends.
struct CallEntry<'a> {
    shared: &'a Shared,
    id: i64,
}

impl Drop for CallEntry<'_> {
    fn drop(&mut self) {
        lock(&self.shared.calls).remove(&self.id);
    }
}

impl Shared {
    fn subject(&self) -> Subject {
        Subject {
            principal: self.services.principal,
            capsule: Some(self.name.clone()),
            session: None,
        }
    }

    fn resource(&self, tool: &str) -> String {
        format!("tool://{}/{tool}", self.name)
    }

    async fn record(&self, action: &str, tool: &str, details: &Value) -> Result<(), String> {
        self.services
            .record(
                &self.subject(),
                action,
                &self.resource(tool),
                Decision::Info,
                details,
            )
            .await
    }

    /// Sorts a fresh listing into callable and pending tools, pinning new ones under dev
    /// trust. Anything that cannot be checked (a pin that does not read, a record that
    /// cannot be written) leaves its tool hidden.
    pub(crate) async fn sort_tools(&self, listed: Vec<Presented>) {
        let _sorting = self.sorting.lock().await;
        let mut callable = Vec::new();
        let mut pending = Vec::new();
        for p in listed {
            let name = p.tool.name.clone();
            let pin = match self.pins.get(self.name.as_str(), &name).await {
                Ok(pin) => pin,
                Err(e) => {
                    self.log.push(
                        LogLevel::Error,
                        LogSource::Host,
                        &format!("tool {name} hidden: its pin does not read: {e}"),
                    );
                    continue;
                }
            };
            match pin {
                Some(pin) if pin.digest == p.digest => callable.push(p.tool),
                Some(pin) => pending.push(waiting(p, Some(pin.definition))),
                None if self.trust == Trust::Dev && self.take_record() => {
                    match self.pin(&p, "dev").await {
                        Ok(()) => callable.push(p.tool),
                        Err(e) => {
                            // Not pinned: it waits for review like any new tool.
                            self.log.push(
                                LogLevel::Error,
                                LogSource::Host,
                                &format!(
                                    "tool {name} waits for review: it could not be pinned: {e}"
                                ),
                            );
                            pending.push(waiting(p, None));
                        }
                    }
                }
                None => pending.push(waiting(p, None)),
            }
        }
        for (p, _) in &pending {
            let first_time = !lock(&self.book).noticed.contains(&p.digest);
            if !first_time || !self.take_record() {
                continue;
            }
            let (action, level) = match p.change {
                ToolChange::Changed => (action::MCP_TOOL_CHANGED, LogLevel::Warn),
                ToolChange::New => (action::MCP_TOOL_PENDING, LogLevel::Info),
            };
            self.log.push(
                level,
                LogSource::Host,
                &format!(
                    "tool {} is {} and hidden until reviewed: capsid capsule review {}",
                    p.tool,
                    p.change.as_str(),
                    self.name
                ),
            );
            let details = serde_json::json!({ "digest": p.digest, "change": p.change.as_str() });
            // Hidden whether or not this could be recorded; it is tried again at the next list.
            if self.record(action, &p.tool, &details).await.is_ok() {
                lock(&self.book).noticed.insert(p.digest.clone());
            }
        }
        let mut book = lock(&self.book);
        book.callable = callable;
        book.pending = pending;
    }

    /// Takes one of the records the server may still cause; false (logged the first time)
    /// once they are spent.
    fn take_record(&self) -> bool {
        let taken = self
            .records_left
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok();
        if !taken && !self.records_spent_said.swap(true, Ordering::AcqRel) {
            self.log.push(
                LogLevel::Error,
                LogSource::Host,
                &format!(
                    "the server changed its tools too often ({MAX_MCP_REVIEW_RECORDS} records): \
                     its new and changed tools stay hidden unrecorded; reload {} to start again",
                    self.name
                ),
            );
        }
        taken
    }

    /// Records, then stores, `presented` as its tool's pin.
    async fn pin(&self, presented: &Presented, by: &str) -> Result<(), String> {
        let details = serde_json::json!({ "digest": presented.digest, "by": by });
        self.record(action::MCP_TOOL_PINNED, &presented.tool.name, &details)
            .await?;
        self.pins
            .put(&PinnedTool {
                capsule: self.name.to_string(),
                tool: presented.tool.name.clone(),
                digest: presented.digest.clone(),
                definition: presented.definition.clone(),
                pinned_by: by.to_owned(),
                pinned_ms: capsid_core::time::now_ms(),
            })
            .await
            .map_err(|e| e.to_string())
    }

    pub(crate) fn progress(
        &self,
        token: &ProgressToken,
        done: f64,
        total: Option<f64>,
        message: Option<String>,
    ) {
        let NumberOrString::Number(id) = &token.0 else {
            return;
        };
        if let Some(control) = lock(&self.calls).get(id) {
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            // `as` saturates (and maps NaN to 0): a server's odd numbers stay in range.
            let whole = |v: f64| v.max(0.0) as u64;
            control.report(whole(done), total.map(whole), message);
        }
    }
}

impl McpCapsule {
    /// Checks the capability to run the manifest's command, starts supervising it, and
    /// speaks MCP to each start of it from then on.
    pub(crate) async fn start(
        manifest: Manifest,
        dir: PathBuf,
        env: Vec<(String, String)>,
        trust: Trust,
        services: &HostServices,
    ) -> Result<Self, CapsuleError> {
        let capsid_manifest::Component::Mcp {
            program,
            startup_timeout_ms,
        } = &manifest.component
        else {
            return Err(CapsuleError::NotWasm(manifest.name.clone()));
        };
        let startup = Duration::from_millis(*startup_timeout_ms);
        let supervisor =
            supervise(&manifest, program, env, ProgramStdio::Protocol, services).await?;
        let shared = Arc::new(Shared {
            name: manifest.name.clone(),
            trust,
            services: services.clone(),
            pins: ToolPinStore::new(services.kv.clone()),
            log: CapsuleLog::new(manifest.name.clone()),
            peer: watch::channel(None).0,
            book: Mutex::default(),
            calls: Mutex::default(),
            next_call: AtomicI64::new(1),
            refresh: Notify::new(),
            startup,
            sorting: tokio::sync::Mutex::new(()),
            records_left: AtomicUsize::new(MAX_MCP_REVIEW_RECORDS),
            records_spent_said: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
        });
        let connection = tokio::spawn(client::serve(shared.clone(), supervisor.clone()));
        Ok(Self {
            manifest,
            dir,
            supervisor,
            shared,
            connection: Mutex::new(Some(connection)),
        })
    }

    /// Its manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Its supervisor's view of the server program.
    pub fn health(&self) -> Health {
        self.supervisor.health()
    }

    /// Restarts so far.
    pub fn restarts(&self) -> u32 {
        self.supervisor.restarts()
    }

    /// Its supervisor.
    pub fn supervisor(&self) -> &Arc<Supervisor> {
        &self.supervisor
    }

    /// Its log: the server's stderr, its MCP log messages, and what the runtime says of it.
    pub fn log(&self) -> &CapsuleLog {
        &self.shared.log
    }

    /// Whether a server is connected and its tools listed.
    pub fn connected(&self) -> bool {
        self.shared.peer.borrow().is_some()
    }

    /// The tools that may be called now, in the server's order.
    pub fn tools(&self) -> Vec<Tool> {
        lock(&self.shared.book).callable.clone()
    }

    /// The tools that wait for review.
    pub fn pending(&self) -> Vec<PendingTool> {
        lock(&self.shared.book)
            .pending
            .iter()
            .map(|(p, _)| p.clone())
            .collect()
    }

    /// Accepts the pending tools whose digests are `digests` (what a review showed): each is
    /// recorded, pinned and callable from now on. A digest that is not pending (the server
    /// changed again since the review) is refused, naming it, and nothing is accepted.
    pub async fn accept(&self, digests: &[String]) -> Result<Vec<String>, CapsuleError> {
        // No listing re-sorts the book while this runs: what is checked here is what is
        // promoted below.
        let _sorting = self.shared.sorting.lock().await;
        let chosen: Vec<(PendingTool, Tool)> = {
            let book = lock(&self.shared.book);
            if let Some(stale) = digests
                .iter()
                .find(|d| !book.pending.iter().any(|(p, _)| &p.digest == *d))
            {
                return Err(CapsuleError::Setup {
                    capsule: self.manifest.name.clone(),
                    what: "accepting reviewed tools",
                    message: format!(
                        "{stale} is not pending review (did the server change it again?): review again"
                    ),
                });
            }
            book.pending
                .iter()
                .filter(|(p, _)| digests.contains(&p.digest))
                .cloned()
                .collect()
        };
        let mut accepted = Vec::new();
        for (p, tool) in chosen {
            let presented = Presented {
                tool,
                definition: p.presented.clone(),
                digest: p.digest.clone(),
            };
            self.shared
                .pin(&presented, "operator")
                .await
                .map_err(|message| CapsuleError::Setup {
                    capsule: self.manifest.name.clone(),
                    what: "pinning a reviewed tool",
                    message,
                })?;
            let mut book = lock(&self.shared.book);
            book.pending.retain(|(q, _)| q.digest != p.digest);
            book.noticed.remove(&p.digest);
            book.callable.retain(|t| t.name != presented.tool.name);
            book.callable.push(presented.tool);
            accepted.push(p.tool);
        }
        Ok(accepted)
    }

    /// Whether `tool` may be called now: the server has not failed, and the tool is listed
    /// and accepted.
    fn check_callable(&self, tool: &str) -> Result<(), CapsuleError> {
        self.check_running()?;
        let name = &self.manifest.name;
        let book = lock(&self.shared.book);
        if book.callable.iter().any(|t| t.name == tool) {
            return Ok(());
        }
        Err(match book.pending.iter().find(|(p, _)| p.tool == tool) {
            Some(p) => CapsuleError::ToolPendingReview {
                capsule: name.clone(),
                tool: tool.to_owned(),
                why: p.0.change.as_str(),
            },
            None => CapsuleError::UnknownTool {
                capsule: name.clone(),
                tool: tool.to_owned(),
            },
        })
    }

    /// Whether its server still runs or will be restarted: not given up on, not stopped.
    fn check_running(&self) -> Result<(), CapsuleError> {
        let name = &self.manifest.name;
        if self.shared.stopped.load(Ordering::Acquire) {
            return Err(CapsuleError::McpServer {
                capsule: name.clone(),
                message: "is stopped".into(),
            });
        }
        match self.supervisor.health() {
            Health::Failed { reason } => Err(CapsuleError::McpServer {
                capsule: name.clone(),
                message: format!("has failed: {reason}"),
            }),
            Health::Stopped | Health::Finished => Err(CapsuleError::McpServer {
                capsule: name.clone(),
                message: "is stopped".into(),
            }),
            _ => Ok(()),
        }
    }

    /// Calls `tool` with `input_json` (a JSON object) within the capsule's deadline (and its
    /// caller's, for a call from another capsule).
    pub(crate) async fn call(
        &self,
        tool: &str,
        input_json: &str,
        control: &CallControl,
    ) -> Result<String, CapsuleError> {
        let name = &self.manifest.name;
        self.check_callable(tool)?;
        let arguments = arguments(name, tool, input_json)?;
        let timeout_ms = self.manifest.limits.call_timeout_ms;
        // A capsule's call to this server ends by its caller's deadline too.
        let (deadline, capped) = control.deadline_for(Duration::from_millis(timeout_ms));
        let deadline = tokio::time::Instant::from_std(deadline + control.deadline_moved().0);
        let timeout = || {
            if capped {
                CapsuleError::CallerDeadline {
                    capsule: name.clone(),
                }
            } else {
                CapsuleError::Timeout {
                    capsule: name.clone(),
                    timeout_ms,
                }
            }
        };
        let cancelled = || CapsuleError::Cancelled {
            capsule: name.clone(),
        };
        // A call right after a load or a restart waits for the server, within its deadline;
        // a stop or the supervisor giving up ends the wait (looked at again every
        // `MCP_SERVER_WAIT_RECHECK`, as nothing is published when a server is given up on).
        let mut peers = self.shared.peer.subscribe();
        let peer = loop {
            let published = peers.borrow_and_update().clone();
            self.check_running()?;
            // A connection whose server just went away may still be published for a moment:
            // it is no server to call.
            if let Some(peer) = published
                && !peer.is_transport_closed()
            {
                break peer;
            }
            tokio::select! {
                _ = peers.changed() => {}
                () = tokio::time::sleep(MCP_SERVER_WAIT_RECHECK) => {}
                () = tokio::time::sleep_until(deadline) => return Err(timeout()),
                () = control.cancellation() => return Err(cancelled()),
            }
        };
        // The server that answers may be a new start, with its own list: check again.
        self.check_callable(tool)?;
        let id = self.shared.next_call.fetch_add(1, Ordering::Relaxed);
        lock(&self.shared.calls).insert(id, control.clone());
        let _entry = CallEntry {
            shared: &self.shared,
            id,
        };
        let mut params = CallToolRequestParams::new(tool.to_owned());
        params.arguments = Some(arguments);
        params.set_progress_token(ProgressToken(NumberOrString::Number(id)));
        // Dropping the request future (deadline, cancellation) cancels it on the server.
        let answered = tokio::select! {
            answered = peer.call_tool(params) => answered,
            () = tokio::time::sleep_until(deadline) => return Err(timeout()),
            () = control.cancellation() => return Err(cancelled()),
        };
        answer(name, tool, answered)
    }

    /// Stops the server and the connection to it.
    pub(crate) async fn stop(&self) {
        self.shared.stopped.store(true, Ordering::Release);
        if let Some(task) = lock(&self.connection).take() {
            task.abort();
        }
        // Wakes the calls waiting for a server: they see `stopped`.
        self.shared.peer.send_replace(None);
        self.supervisor.stop().await;
    }
}

/// A call's outcome as the kernel passes it on.
fn answer(
    name: &CapsuleId,
    tool: &str,
    answered: Result<rmcp::model::CallToolResult, ServiceError>,
) -> Result<String, CapsuleError> {
    match answered {
        Ok(result) if result.is_error == Some(true) => Err(CapsuleError::ToolFailed {
            capsule: name.clone(),
            tool: tool.to_owned(),
            message: definition::error_text(&result),
        }),
        Ok(result) => definition::answer_text(&result).map_err(|len| CapsuleError::TooBig {
            capsule: name.clone(),
            what: "tool result",
            len,
            max: capsid_core::limits::MAX_TOOL_OUTPUT_BYTES,
        }),
        Err(ServiceError::McpError(e)) => Err(CapsuleError::ToolFailed {
            capsule: name.clone(),
            tool: tool.to_owned(),
            message: e.message.chars().take(4096).collect(),
        }),
        Err(ServiceError::TransportClosed | ServiceError::TransportSend(_)) => {
            Err(CapsuleError::McpServer {
                capsule: name.clone(),
                message: "closed the connection during the call".into(),
            })
        }
        Err(other) => Err(CapsuleError::McpServer {
            capsule: name.clone(),
            message: other.to_string(),
        }),
    }
}

/// A call's input as MCP arguments: a JSON object (empty input is an empty object).
fn arguments(
    name: &CapsuleId,
    tool: &str,
    input_json: &str,
) -> Result<serde_json::Map<String, Value>, CapsuleError> {
    let text = if input_json.trim().is_empty() {
        "{}"
    } else {
        input_json
    };
    let Ok(Value::Object(map)) = serde_json::from_str::<Value>(text) else {
        return Err(CapsuleError::ToolFailed {
            capsule: name.clone(),
            tool: tool.to_owned(),
            message: "its input must be a JSON object".into(),
        });
    };
    Ok(map)
}

/// A presented tool waiting for review: changed from `pinned`, or new when there is no pin;
/// with the tool it becomes once accepted.
fn waiting(presented: Presented, pinned: Option<Value>) -> (PendingTool, Tool) {
    (
        PendingTool {
            tool: presented.tool.name.clone(),
            change: if pinned.is_some() {
                ToolChange::Changed
            } else {
                ToolChange::New
            },
            pinned,
            presented: presented.definition,
            digest: presented.digest,
        },
        presented.tool,
    )
}
