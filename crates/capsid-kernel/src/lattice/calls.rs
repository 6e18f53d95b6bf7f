//! Tool calls across the lattice, both ways. A call for a capsule this host does not have
//! goes to a host that serves it ([`Kernel::call_elsewhere`]); this host serves its own
//! capsules to the others ([`serve`]): one queue subscription per capsule ready or idle
//! here, each call checked for the principal its envelope names (never as the operator:
//! another host's call has only the grants of the person it names) and recorded as a call
//! through the `lattice` door, with the calling host.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use capsid_capabilities::AuditLogSink;
use capsid_capsule::{CallControl, CapsuleError, CapsuleState};
use capsid_core::limits::MAX_CALL_TIMEOUT_MS;
use capsid_core::{CapsuleId, Principal};
use capsid_lattice::calls::{
    self, CallMeta, CallOutcome, CallQueue, CallReplier, IncomingCall, NotHanded, RemoteCallError,
};
use capsid_protocol::ErrorCode;
use futures_util::FutureExt as _;
use tokio::task::{AbortHandle, JoinHandle, JoinSet};

use super::served::Served;
use super::{Joined, Refused, Traffic};
use crate::error::KernelError;
use crate::kernel::{Inner, Kernel};
use crate::tool::{Door, FromHost, ToolCaller};

/// How often the server checks which capsules it should serve (a load, unload or boot
/// wakes it at once).
const SERVE_RECHECK: Duration = Duration::from_secs(1);

/// How long a call from another host runs before its caller is told it was taken (a
/// quicker one is simply answered: one message, one signature fewer).
const ACCEPT_AFTER: Duration = Duration::from_millis(100);

/// A host's key as errors name it: its first 16 hex digits.
fn short_host(host: &str) -> &str {
    host.get(..16).unwrap_or(host)
}

impl Kernel {
    /// Whether a call to capsule `name` goes to another host: this host joined a lattice
    /// and has no capsule of that name (loaded, failed or idle).
    pub(crate) fn served_elsewhere(&self, name: &CapsuleId) -> bool {
        self.parts().lattice.is_some()
            && self.registry().info(name).is_none()
            && !self.idled().contains_key(name)
    }

    /// The capsules this host serves to the lattice: those ready, and those the idle
    /// monitor unloaded (a call wakes them).
    fn served_here(&self) -> HashSet<CapsuleId> {
        let mut names: HashSet<CapsuleId> = self
            .capsules()
            .into_iter()
            .filter(|c| c.state == CapsuleState::Ready)
            .map(|c| c.name)
            .collect();
        names.extend(self.idled().keys().cloned());
        names
    }

    /// Calls `tool` of capsule `name` on a host of the lattice that serves it, for
    /// `caller` (a user: the serving host checks that user's grants), while `checked`, the
    /// record of this host's check, commits. The result, and the serving host when one
    /// answered; told only once the record is durable, and if it failed, never
    /// (`RanUnrecorded`: it may have run there; `Unrecorded` when it surely ran nowhere).
    pub(crate) async fn call_elsewhere(
        &self,
        caller: &ToolCaller,
        name: &CapsuleId,
        tool: &str,
        input: &str,
        control: &CallControl,
        checked: &AuditLogSink,
    ) -> Result<(Result<String, KernelError>, Option<String>), KernelError> {
        let sent = self
            .send_elsewhere(caller, name, tool, input, control)
            .await;
        let Err(why) = checked.durable().await else {
            return Ok((sent.result, sent.host));
        };
        if sent.ran_nowhere {
            return Err(KernelError::Unrecorded(why));
        }
        let host = sent.host.as_deref().map_or("(none answered)", short_host);
        let outcome = crate::tool::outcome(&sent.result);
        tracing::error!(capsule = %name, %host, outcome,
            "a remote call's outcome is withheld: its check went unrecorded here");
        Err(KernelError::RanUnrecorded {
            capsule: name.clone(),
            host: host.to_owned(),
            why,
        })
    }

    /// Sends the call and waits for its answer: [`call_elsewhere`](Self::call_elsewhere)
    /// but for the record.
    async fn send_elsewhere(
        &self,
        caller: &ToolCaller,
        name: &CapsuleId,
        tool: &str,
        input: &str,
        control: &CallControl,
    ) -> Sent {
        let remote = |message: String| KernelError::Remote {
            capsule: name.clone(),
            message,
            kind: None,
        };
        let Some(joined) = &self.parts().lattice else {
            return Sent::nowhere(KernelError::NotInstalled(name.clone()));
        };
        if !matches!(caller.principal, Principal::User(_)) {
            let why = "only a user's calls go to other hosts".to_owned();
            return Sent::nowhere(remote(why));
        }
        let time_left = control.time_left();
        let meta = CallMeta {
            capsule: name.to_string(),
            tool: tool.to_owned(),
            principal: caller.principal.to_string(),
            client: caller.client.clone(),
            deadline_ms: time_left.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            reply_to: String::new(),
        };
        Traffic::count(&joined.traffic.calls_sent);
        let answer = calls::call(
            &joined.lattice,
            &joined.seal,
            &meta,
            Bytes::copy_from_slice(input.as_bytes()),
            time_left,
            control.cancellation(),
        )
        .await;
        let answer = match answer {
            Ok(answer) => answer,
            Err(RemoteCallError::NoHost(_)) => {
                let lattice = joined.lattice.config().name.clone();
                let capsule = name.clone();
                return Sent::nowhere(KernelError::NotServed { capsule, lattice });
            }
            Err(e @ RemoteCallError::NotTaken(_)) => return Sent::nowhere(remote(e.to_string())),
            Err(ref e @ RemoteCallError::Declined { ref host, .. }) => {
                return Sent {
                    host: Some(host.clone()),
                    ..Sent::nowhere(remote(e.to_string()))
                };
            }
            Err(RemoteCallError::Cancelled(_)) => {
                let capsule = name.clone();
                return Sent::maybe(CapsuleError::Cancelled { capsule }.into(), None);
            }
            Err(ref e @ RemoteCallError::HostLost { ref host, .. }) => {
                return Sent::maybe(remote(e.to_string()), Some(host.clone()));
            }
            Err(e) => return Sent::maybe(remote(e.to_string()), None),
        };
        let host = short_host(&answer.host).to_owned();
        let ran_nowhere = matches!(
            answer.outcome,
            CallOutcome::UnknownTool | CallOutcome::Refused { .. }
        );
        let result = match answer.outcome {
            CallOutcome::Ok => String::from_utf8(answer.output.to_vec()).map_err(|_| {
                remote(format!(
                    "host {host} answered with bytes that are not UTF-8"
                ))
            }),
            CallOutcome::UnknownTool => Err(CapsuleError::UnknownTool {
                capsule: name.clone(),
                tool: tool.to_owned(),
            }
            .into()),
            CallOutcome::Cancelled => Err(CapsuleError::Cancelled {
                capsule: name.clone(),
            }
            .into()),
            CallOutcome::Refused { reason } => {
                Err(remote(format!("host {host} refused the call: {reason}")))
            }
            CallOutcome::Failed { message, kind } => Err(KernelError::Remote {
                capsule: name.clone(),
                message: format!("on host {host}: {message}"),
                kind: kind.as_deref().and_then(passed_on),
            }),
        };
        Sent {
            result,
            host: Some(answer.host),
            ran_nowhere,
        }
    }
}

/// What sending a call to another host came to.
struct Sent {
    /// The result, as this host tells it.
    result: Result<String, KernelError>,
    /// The host that held the call, when one did.
    host: Option<String>,
    /// Whether the call surely ran on no host: none served or took it, or the one holding it
    /// said it gave it up, refused it, or found it not allowed.
    ran_nowhere: bool,
}

impl Sent {
    /// A call that ran nowhere, failing with `error`.
    fn nowhere(error: KernelError) -> Self {
        Self {
            result: Err(error),
            host: None,
            ran_nowhere: true,
        }
    }

    /// A call that may have run (on `host`, when one held it), failing with `error`.
    fn maybe(error: KernelError, host: Option<String>) -> Self {
        Self {
            result: Err(error),
            host,
            ran_nowhere: false,
        }
    }
}

/// Serves this host's capsules to the lattice for as long as the kernel runs.
pub(super) fn serve(kernel: &Kernel, joined: &Joined) -> JoinHandle<()> {
    let weak = Arc::downgrade(&kernel.inner);
    let joined = joined.clone();
    tokio::spawn(async move {
        let served = joined.served.clone();
        // Dropped with this task (at shutdown): every queue subscription goes with it.
        let mut queues = JoinSet::new();
        let mut serving: HashMap<CapsuleId, AbortHandle> = HashMap::new();
        match calls::cancels(&joined.lattice, &joined.seal).await {
            Ok(cancels) => served.hear(cancels, joined.traffic.clone()),
            Err(e) => tracing::warn!(error = %e, "cannot hear cancels from other hosts"),
        }
        loop {
            let Some(inner) = weak.upgrade() else { return };
            let wanted = Kernel { inner }.served_here();
            serving.retain(|name, task| {
                let keep = wanted.contains(name) && !task.is_finished();
                if !keep {
                    task.abort();
                }
                keep
            });
            for name in wanted {
                if serving.contains_key(&name) {
                    continue;
                }
                match calls::serve(&joined.lattice, &joined.seal, name.as_str()).await {
                    Ok(queue) => {
                        let task = serve_queue(
                            weak.clone(),
                            queue,
                            served.clone(),
                            joined.traffic.clone(),
                        );
                        serving.insert(name, queues.spawn(task));
                    }
                    Err(e) => {
                        tracing::warn!(capsule = %name, error = %e, "cannot serve to the lattice");
                    }
                }
            }
            // Finished tasks are reaped so the set does not grow.
            while queues.try_join_next().is_some() {}
            tokio::select! {
                () = tokio::time::sleep(SERVE_RECHECK) => {}
                () = joined.serve_now.notified() => {}
            }
        }
    })
}

async fn serve_queue(
    kernel: Weak<Inner>,
    mut queue: CallQueue,
    served: Served,
    traffic: Arc<Traffic>,
) {
    while let Some(next) = queue.next().await {
        let incoming = match next {
            Ok(incoming) => incoming,
            Err(refusal) => {
                tracing::warn!(%refusal, "refused a lattice call");
                traffic.refused(Refused::Call, refusal.reason(), refusal.claimed_sender());
                continue;
            }
        };
        let Some(inner) = kernel.upgrade() else {
            return;
        };
        Traffic::count(&traffic.calls_served);
        let call = serve_call(Kernel { inner }, incoming, served.clone(), traffic.clone());
        served.spawn(call);
    }
}

/// Runs one call from another host and answers it, saying it still runs meanwhile.
async fn serve_call(kernel: Kernel, incoming: IncomingCall, served: Served, traffic: Arc<Traffic>) {
    let IncomingCall {
        call,
        input,
        replier,
    } = incoming;
    // Each host remembers the nonces it saw; the caller's handover makes a call run on one
    // host of the lattice only, however many copies of it reach the capsule's queue group.
    // It is asked for while the check is recorded; a call not handed here is not run (fail
    // closed), and its caller is not told: the host that took it answers.
    let Some(token) = served.start(&call.nonce, &call.from) else {
        tracing::debug!("a call its caller cancelled before it came was not run");
        return;
    };
    // Awaited by the check (which it runs beside), the timer and the answer, made once.
    let handover = {
        let replier = replier.clone();
        async move { take_here(&replier).await }.boxed().shared()
    };
    let from = FromHost {
        host: &call.from,
        handover: Box::pin(handover.clone()),
    };
    let answer = async {
        let (caller, capsule, input) = match read_call(&call.meta, &input) {
            Ok(read) => read,
            Err(refused) => return Ok((refused, Bytes::new())),
        };
        let mut control = CallControl::cancelled_by(&token);
        if let Some(ms) = call.meta.deadline_ms {
            control = control.ending_within(Duration::from_millis(ms.min(MAX_CALL_TIMEOUT_MS)));
        }
        let result = kernel
            .call_tool_from(
                &caller,
                Some(from),
                &capsule,
                &call.meta.tool,
                input,
                &control,
            )
            .await;
        match result {
            Err(KernelError::NotHandedOver(reason)) => Err(reason),
            result => Ok(outcome_of(result)),
        }
    };
    tokio::pin!(answer);
    // A call that answers quickly is answered at once; one that runs on is said to be taken
    // (counted from its handover: a host says so only once it holds the call), then to be
    // running, every heartbeat.
    let taken_a_while = async {
        if handover.clone().await.is_ok() {
            tokio::time::sleep(ACCEPT_AFTER).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    let quick = tokio::select! {
        answered = &mut answer => Some(answered),
        () = taken_a_while => None,
    };
    let answered = if let Some(answered) = quick {
        answered
    } else {
        replier.accepted().await;
        let keep_alive = replier.keep_alive();
        tokio::pin!(keep_alive);
        loop {
            tokio::select! {
                answered = &mut answer => break answered,
                () = &mut keep_alive => {}
            }
        }
    };
    served.end(&call.nonce);
    // A call refused before its check was not taken yet: no host answers a call it was not
    // handed (its caller would not listen).
    let answered = match answered {
        Ok(answer) => handover.await.map(|()| answer),
        Err(reason) => Err(reason),
    };
    match answered {
        Ok((outcome, output)) => replier.done(outcome, output).await,
        Err(reason) => {
            let from = short_host(&call.from);
            tracing::warn!(%from, reason, "a lattice call was not run here");
            traffic.refused(Refused::Call, reason, None);
        }
    }
}

/// Asks the caller to hand its call to this host; `Err` names why it does not run here.
async fn take_here(replier: &CallReplier) -> Result<(), &'static str> {
    match replier.take().await {
        Ok(()) => Ok(()),
        Err(NotHanded::Elsewhere) => Err("claimed-elsewhere"),
        Err(e @ NotHanded::Unanswered(_)) => {
            tracing::warn!(error = %e, "a lattice call was not handed over; refused");
            Err("unclaimable")
        }
    }
}

/// Who calls what, with which input, as another host's call says; or what it is answered
/// when it says it wrongly.
fn read_call<'a>(
    meta: &CallMeta,
    input: &'a [u8],
) -> Result<(ToolCaller, CapsuleId, &'a str), CallOutcome> {
    let Ok(principal @ Principal::User(_)) = meta.principal.parse::<Principal>() else {
        let reason = "the call names no user".to_owned();
        return Err(CallOutcome::Refused { reason });
    };
    let Ok(capsule) = CapsuleId::new(&meta.capsule) else {
        return Err(CallOutcome::UnknownTool);
    };
    let Ok(input) = std::str::from_utf8(input) else {
        let message = "the input is not UTF-8".to_owned();
        return Err(CallOutcome::Failed {
            message,
            kind: None,
        });
    };
    let caller = ToolCaller {
        principal,
        door: Door::Lattice,
        client: meta.client.clone(),
    };
    Ok((caller, capsule, input))
}

fn outcome_of(result: Result<String, KernelError>) -> (CallOutcome, Bytes) {
    match result {
        Ok(output) => (CallOutcome::Ok, Bytes::from(output)),
        Err(KernelError::Capsule(CapsuleError::UnknownTool { .. })) => {
            (CallOutcome::UnknownTool, Bytes::new())
        }
        Err(KernelError::Capsule(CapsuleError::Cancelled { .. })) => {
            (CallOutcome::Cancelled, Bytes::new())
        }
        Err(e) => {
            let code = crate::daemon::views::kernel_error(&e).code;
            let kind = serde_json::to_value(code)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned));
            let message = e.to_string();
            (CallOutcome::Failed { message, kind }, Bytes::new())
        }
    }
}

/// The kinds of failure a serving host's word is taken for: those of a call that ran (or
/// could not start) there. Anything else is the caller's plain failure.
fn passed_on(kind: &str) -> Option<ErrorCode> {
    let code: ErrorCode =
        serde_json::from_value(serde_json::Value::String(kind.to_owned())).ok()?;
    matches!(
        code,
        ErrorCode::ToolError
            | ErrorCode::Timeout
            | ErrorCode::CapsuleFailed
            | ErrorCode::Cancelled
            | ErrorCode::Busy
            | ErrorCode::NotReady
            | ErrorCode::TooLarge
            | ErrorCode::InvalidParams
            | ErrorCode::Invalid
    )
    .then_some(code)
}
