//! Tool calls between hosts. A host calling a capsule it does not have publishes a signed
//! [`CallMeta`] to `capsid.<lattice>.call.v2.<capsule>` ([`call_subject`]), where every host
//! serving that capsule listens in one queue group (so each call reaches one of them, and
//! load spreads).
//!
//! A call runs on one host only, however many copies of it reach the queue group (a
//! replayed one included): the host a copy reaches asks the caller for it (`taking`, on the
//! call's inbox) while it checks the call, and runs it only once the caller, the one party
//! that knows, signs a handover naming that host and that request. The caller hands each call
//! to the first host that asks and names that host to any other; once the call has ended
//! nobody answers there, so a copy arriving late is not run either. A host whose handover
//! does not come within [`LATTICE_CALL_HANDOVER_WAIT`] gives the call up and says so
//! (`declined`, naming its request), so a caller that did hand it over learns at once that it
//! did not run, rather than taking the host for lost.
//!
//! The serving host then answers on the call's inbox: `accepted` once it runs a while,
//! `running` every [`LATTICE_CALL_HEARTBEAT`], then `done` with the outcome and output, each
//! signed. A caller that hears nothing for [`LATTICE_CALL_SILENCE`] takes the serving host for
//! lost and fails the call, saying so, rather than waiting out a deadline: the call may have
//! had effects, so it is never sent again on its own. A caller cancelling sends a signed
//! cancel to the serving host's `capsid.<lattice>.cancel.<host>`, or, before any host took
//! the call, to every host on `capsid.<lattice>.cancel.any`: the host running it stops it,
//! and the others remember it, so a copy still on its way is not run.

use std::future::Future;
use std::time::Duration;

use async_nats::{StatusCode, Subject, Subscriber};
use bytes::Bytes;
use capsid_core::limits::{
    LATTICE_CALL_ACCEPT_WAIT, LATTICE_CALL_HANDOVER_WAIT, LATTICE_CALL_HEARTBEAT,
    LATTICE_CALL_SILENCE,
};
use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};

use crate::connection::Lattice;
use crate::envelope::{Kind, Opened, Refusal, Seal};

/// What a calling host asks of a serving one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallMeta {
    /// The capsule.
    pub capsule: String,
    /// Its tool.
    pub tool: String,
    /// On whose authority (`user:<id>`): the serving host checks this principal's grants.
    pub principal: String,
    /// The client's own name, when it gave one.
    pub client: Option<String>,
    /// How long the caller waits for the outcome, in ms, when it has a deadline.
    pub deadline_ms: Option<u64>,
    /// The inbox the answers go to: signed, so a copy of the call sent with another inbox
    /// is refused (nobody but the caller reads its output). Set by [`call`].
    #[serde(default)]
    pub reply_to: String,
}

/// How a remote call ended, as the serving host says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum CallOutcome {
    /// It answered; the output is the message body.
    Ok,
    /// No such tool, or not one the principal may call (the two are not told apart).
    UnknownTool,
    /// The serving host refused to run the call (it names no user).
    Refused {
        /// Why.
        reason: String,
    },
    /// It was cancelled.
    Cancelled,
    /// It failed.
    Failed {
        /// The serving host's error, as it would tell a local caller.
        message: String,
        /// Its kind, as the daemon protocol names error codes (`tool-error`, `timeout`...),
        /// so the caller reports it as a local failure of that kind would be.
        #[serde(default)]
        kind: Option<String>,
    },
}

/// A serving host's word on a call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
enum ReplyMeta {
    /// Asks the caller for the call; the handover goes to `reply_to`, signed so that a copy
    /// sent with another inbox is refused before it uses up the request.
    Taking {
        call: String,
        reply_to: String,
    },
    Accepted {
        call: String,
    },
    Running {
        call: String,
    },
    Done {
        call: String,
        outcome: CallOutcome,
    },
    /// Gives up the call asked for with request `taking`: no handover came in time, and the
    /// host will not run it now.
    Declined {
        call: String,
        taking: String,
    },
}

impl ReplyMeta {
    fn call(&self) -> &str {
        match self {
            Self::Taking { call, .. }
            | Self::Accepted { call }
            | Self::Running { call }
            | Self::Done { call, .. }
            | Self::Declined { call, .. } => call,
        }
    }
}

/// The caller's answer to a host asking for its call: the host it is handed to, and that
/// host's request (its nonce), so neither another host nor a later request of the same host
/// (after a restart, say) can take it again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct HandoverMeta {
    call: String,
    to: String,
    taking: String,
}

/// Who holds a call: the host it was handed to, and the request it asked with.
#[derive(Debug, Clone)]
struct Holder {
    host: String,
    taking: String,
}

/// A caller's cancel of its call.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CancelMeta {
    call: String,
}

/// What a serving host answered.
#[derive(Debug, Clone)]
pub struct RemoteAnswer {
    /// The host that served the call (its runtime public key, hex).
    pub host: String,
    /// How the call ended.
    pub outcome: CallOutcome,
    /// The output, when it answered.
    pub output: Bytes,
}

/// Why a remote call has no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RemoteCallError {
    /// No host of the lattice serves the capsule.
    #[error("no host of the lattice serves capsule {0}")]
    NoHost(String),
    /// A host serves it, but none asked for the call within [`LATTICE_CALL_ACCEPT_WAIT`]:
    /// it was handed to none, so it ran nowhere.
    #[error(
        "no host of the lattice took the call to capsule {0} within \
         {LATTICE_CALL_ACCEPT_WAIT:?}; it did not run"
    )]
    NotTaken(String),
    /// The serving host fell silent mid-call (it died, or lost the lattice).
    #[error(
        "host {host} stopped answering during the call to capsule {capsule} (nothing for \
         {LATTICE_CALL_SILENCE:?}); the call may or may not have run"
    )]
    HostLost {
        /// The serving host.
        host: String,
        /// The capsule.
        capsule: String,
    },
    /// The host the call was handed to gave it up: no handover reached it in time.
    #[error(
        "host {host} gave up the call to capsule {capsule}: no handover reached it within \
         {LATTICE_CALL_HANDOVER_WAIT:?} of asking for it; it did not run"
    )]
    Declined {
        /// The host that asked for the call, then gave it up.
        host: String,
        /// The capsule.
        capsule: String,
    },
    /// The caller's deadline passed.
    #[error("the call to capsule {0} passed its deadline")]
    Deadline(String),
    /// The caller cancelled.
    #[error("the call to capsule {0} was cancelled")]
    Cancelled(String),
    /// The call could not be sent.
    #[error("cannot send the call to capsule {capsule}: {message}")]
    Send {
        /// The capsule.
        capsule: String,
        /// Why.
        message: String,
    },
}

/// The version of this call protocol, in every call's subject, so that hosts speaking
/// another one never exchange calls with these: a host of an earlier release claimed calls in
/// JetStream instead of asking their caller, and would run calls no caller here hands it.
const CALL_PROTOCOL: &str = "v2";

/// The subject capsule `capsule`'s calls go to on lattice `lattice`:
/// `capsid.<lattice>.call.<protocol>.<capsule>`.
pub fn call_subject(lattice: &str, capsule: &str) -> String {
    format!("capsid.{lattice}.call.{CALL_PROTOCOL}.{capsule}")
}

/// The subject a host hears cancels on: its own key (hex), or `any` for every host.
fn cancel_subject(lattice: &Lattice, host: &str) -> String {
    format!("capsid.{}.cancel.{host}", lattice.config().name)
}

/// The host part of the subject every host hears cancels on (a key is hex: never this).
const ANY_HOST: &str = "any";

/// Calls `meta`'s tool on a host that serves its capsule, with `input`, until `cancelled`
/// resolves or `deadline` passes (see the module for the protocol).
pub async fn call(
    lattice: &Lattice,
    seal: &Seal,
    meta: &CallMeta,
    input: Bytes,
    deadline: Option<Duration>,
    cancelled: impl Future<Output = ()>,
) -> Result<RemoteAnswer, RemoteCallError> {
    let capsule = meta.capsule.clone();
    let (nonce, mut replies) = send_call(lattice, seal, meta, input).await?;
    let ends = deadline.map(|d| tokio::time::Instant::now() + d);
    let deadline_passed = async {
        match ends {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(deadline_passed);
    tokio::pin!(cancelled);
    let mut holder: Option<Holder> = None;
    // Silence is measured from the last reply that counted: nothing else on the inbox
    // (which anyone able to publish there could send) keeps a dead host's call alive.
    let mut silence_ends = tokio::time::Instant::now() + LATTICE_CALL_ACCEPT_WAIT;
    loop {
        let message = tokio::select! {
            m = replies.next() => m,
            () = tokio::time::sleep_until(silence_ends) => {
                return Err(match holder {
                    None => RemoteCallError::NotTaken(capsule),
                    Some(Holder { host, .. }) => RemoteCallError::HostLost { host, capsule },
                });
            }
            () = &mut deadline_passed => {
                cancel(lattice, seal, holder.as_ref(), &nonce).await;
                return Err(RemoteCallError::Deadline(capsule));
            }
            () = &mut cancelled => {
                cancel(lattice, seal, holder.as_ref(), &nonce).await;
                return Err(RemoteCallError::Cancelled(capsule));
            }
        };
        let Some(message) = message else {
            let message = "the connection closed".to_owned();
            return Err(RemoteCallError::Send { capsule, message });
        };
        // "No responders" counts only before a host took the call.
        if message.status == Some(StatusCode::NO_RESPONDERS) {
            if holder.is_none() {
                return Err(RemoteCallError::NoHost(capsule));
            }
            continue;
        }
        // Only a reply signed by a trusted host, about this call, counts; anything else on
        // the inbox is passed over.
        let Ok(reply) = open_reply(seal, &message) else {
            tracing::debug!(capsule = %capsule, "passed over a reply that did not open");
            continue;
        };
        if reply.meta.call() != nonce {
            continue;
        }
        if let ReplyMeta::Taking { .. } = reply.meta {
            let Some(ask) = message.reply else { continue };
            let first = holder.is_none();
            let held = holder.get_or_insert_with(|| Holder {
                host: reply.from.clone(),
                taking: reply.nonce.clone(),
            });
            hand_over(lattice, seal, ask, &nonce, held).await;
            if first {
                silence_ends = tokio::time::Instant::now() + LATTICE_CALL_SILENCE;
            }
            continue;
        }
        // The rest counts only from the host the call was handed to.
        let Some(held) = holder.as_ref().filter(|h| h.host == reply.from) else {
            continue;
        };
        silence_ends = tokio::time::Instant::now() + LATTICE_CALL_SILENCE;
        match reply.meta {
            ReplyMeta::Done { outcome, .. } => {
                return Ok(RemoteAnswer {
                    host: reply.from,
                    outcome,
                    output: message.payload,
                });
            }
            // Only the request it was handed to gives the call up: the holder decided.
            ReplyMeta::Declined { taking, .. } if taking == held.taking => {
                return Err(RemoteCallError::Declined {
                    host: reply.from,
                    capsule,
                });
            }
            _ => {}
        }
    }
}

/// Sends call `meta` with `input` to its capsule's queue group. Gives the call's nonce and
/// its inbox, subscribed before the call leaves.
async fn send_call(
    lattice: &Lattice,
    seal: &Seal,
    meta: &CallMeta,
    input: Bytes,
) -> Result<(String, Subscriber), RemoteCallError> {
    let send_error = |e: &dyn std::fmt::Display| RemoteCallError::Send {
        capsule: meta.capsule.clone(),
        message: e.to_string(),
    };
    let client = lattice.client();
    let inbox = client.new_inbox();
    let replies = client
        .subscribe(inbox.clone())
        .await
        .map_err(|e| send_error(&e))?;
    let meta = CallMeta {
        reply_to: inbox.clone(),
        ..meta.clone()
    };
    let sealed = seal.seal(Kind::Call, &meta, input);
    client
        .publish_with_reply_and_headers(
            call_subject(&lattice.config().name, &meta.capsule),
            inbox,
            sealed.headers,
            sealed.body,
        )
        .await
        .map_err(|e| send_error(&e))?;
    Ok((sealed.nonce, replies))
}

/// Opens a message on a call's inbox: a host's word on the call, or a host asking for it
/// with the inbox it signed.
fn open_reply(seal: &Seal, message: &async_nats::Message) -> Result<Opened<ReplyMeta>, Refusal> {
    let asked_on = message.reply.as_ref().map(Subject::as_str);
    seal.open_if(
        Kind::Reply,
        message.headers.as_ref(),
        &message.payload,
        |meta| match meta {
            ReplyMeta::Taking { reply_to, .. } if asked_on != Some(reply_to.as_str()) => {
                Err(Refusal::Misdirected)
            }
            _ => Ok(()),
        },
    )
}

/// Tells the host asking on `ask` who holds call `nonce`: itself, if its request is the one
/// the call was handed to.
async fn hand_over(lattice: &Lattice, seal: &Seal, ask: Subject, nonce: &str, held: &Holder) {
    let meta = HandoverMeta {
        call: nonce.to_owned(),
        to: held.host.clone(),
        taking: held.taking.clone(),
    };
    let sealed = seal.seal(Kind::Handover, &meta, Bytes::new());
    if let Err(e) = lattice
        .client()
        .publish_with_headers(ask, sealed.headers, sealed.body)
        .await
    {
        tracing::warn!(error = %e, "cannot hand a lattice call over");
    }
}

/// Tells the host holding call `nonce`, or every host when none took it, that it is
/// cancelled. Best effort: the serving host's own deadline ends the call anyway.
async fn cancel(lattice: &Lattice, seal: &Seal, holder: Option<&Holder>, nonce: &str) {
    let host = holder.map_or(ANY_HOST, |h| h.host.as_str());
    let sealed = seal.seal(
        Kind::Cancel,
        &CancelMeta {
            call: nonce.to_owned(),
        },
        Bytes::new(),
    );
    if let Err(e) = lattice
        .client()
        .publish_with_headers(cancel_subject(lattice, host), sealed.headers, sealed.body)
        .await
    {
        tracing::warn!(error = %e, "cannot send a cancel to the serving host");
    }
}

/// Calls for one capsule, as this host serves them (one of the capsule's queue group).
#[derive(Debug)]
pub struct CallQueue {
    lattice: Lattice,
    seal: Seal,
    capsule: String,
    subscriber: Subscriber,
}

/// One call that reached this host, its envelope opened.
#[derive(Debug)]
pub struct IncomingCall {
    /// The call, from the host that sent it.
    pub call: Opened<CallMeta>,
    /// Its input.
    pub input: Bytes,
    /// Where the answers go.
    pub replier: CallReplier,
}

/// Takes one call from its caller, then answers it: `accepted`, `running`, `done`.
#[derive(Debug, Clone)]
pub struct CallReplier {
    lattice: Lattice,
    seal: Seal,
    reply: Subject,
    call: String,
    /// The calling host: the only one that can hand the call over.
    caller: String,
}

/// Why a call was not handed to this host.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotHanded {
    /// The caller handed it to another host (or to an earlier request of this one).
    #[error("the caller handed the call to another host")]
    Elsewhere,
    /// The caller could not be asked, or gave no handover that opens in time: it ended the
    /// call, or it is unreachable (or slow: it is then told the call was given up).
    #[error("the caller did not hand the call over: {0}")]
    Unanswered(String),
}

/// Starts serving `capsule`'s calls on this host.
pub async fn serve(lattice: &Lattice, seal: &Seal, capsule: &str) -> Result<CallQueue, String> {
    let subscriber = lattice
        .client()
        .queue_subscribe(
            call_subject(&lattice.config().name, capsule),
            capsule.to_owned(),
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok(CallQueue {
        lattice: lattice.clone(),
        seal: seal.clone(),
        capsule: capsule.to_owned(),
        subscriber,
    })
}

impl CallQueue {
    /// The next call, or why the next message was refused: one whose envelope does not
    /// open (signed by a trusted host, fresh, never seen here, for this capsule, answering to
    /// the inbox it signed) gets no answer at all, since a signed refusal would let whoever
    /// replayed a call end the genuine caller's wait. `None` once the subscription ends.
    pub async fn next(&mut self) -> Option<Result<IncomingCall, Refusal>> {
        let message = self.subscriber.next().await?;
        let inbox = message.reply.as_ref().map(|r| r.as_str().to_owned());
        let opened = self.seal.open_if::<CallMeta>(
            Kind::Call,
            message.headers.as_ref(),
            &message.payload,
            |meta| {
                let inbox_signed = inbox.as_deref() == Some(meta.reply_to.as_str());
                if meta.capsule == self.capsule && inbox_signed {
                    Ok(())
                } else {
                    Err(Refusal::Misdirected)
                }
            },
        );
        Some(match (opened, message.reply) {
            (Ok(call), Some(reply)) => {
                let replier = CallReplier {
                    lattice: self.lattice.clone(),
                    seal: self.seal.clone(),
                    reply,
                    call: call.nonce.clone(),
                    caller: call.from.clone(),
                };
                Ok(IncomingCall {
                    call,
                    input: message.payload,
                    replier,
                })
            }
            (Err(refusal), _) => Err(refusal),
            // Unreachable past the check above (the inbox is signed), refused all the same.
            (Ok(_), None) => Err(Refusal::Misdirected),
        })
    }
}

impl CallReplier {
    /// Asks the caller for the call: `Ok` once it is handed to this host, which may then
    /// run it (see the module). Anything on the way back that is not the caller's signed
    /// handover of this call is passed over, so nobody else can answer for the caller.
    pub async fn take(&self) -> Result<(), NotHanded> {
        let unanswered = |why: &dyn std::fmt::Display| NotHanded::Unanswered(why.to_string());
        let client = self.lattice.client();
        let inbox = client.new_inbox();
        let mut answers = client
            .subscribe(inbox.clone())
            .await
            .map_err(|e| unanswered(&e))?;
        let meta = ReplyMeta::Taking {
            call: self.call.clone(),
            reply_to: inbox.clone(),
        };
        let asking = self.seal.seal(Kind::Reply, &meta, Bytes::new());
        client
            .publish_with_reply_and_headers(self.reply.clone(), inbox, asking.headers, asking.body)
            .await
            .map_err(|e| unanswered(&e))?;
        let until = tokio::time::Instant::now() + LATTICE_CALL_HANDOVER_WAIT;
        loop {
            let message = match tokio::time::timeout_at(until, answers.next()).await {
                Ok(Some(message)) => message,
                Ok(None) => return Err(unanswered(&"the connection closed")),
                Err(_) => {
                    let why = format!("no handover within {LATTICE_CALL_HANDOVER_WAIT:?}");
                    return Err(self.decline(&asking.nonce, &why).await);
                }
            };
            // Said of a caller gone, or forged by whoever may publish to this inbox: either
            // way the call is given up, and a caller still waiting learns it did not run.
            if message.status == Some(StatusCode::NO_RESPONDERS) {
                let why = "the caller no longer waits for the call";
                return Err(self.decline(&asking.nonce, why).await);
            }
            let Ok(handover) = self.seal.open::<HandoverMeta>(
                Kind::Handover,
                message.headers.as_ref(),
                &message.payload,
            ) else {
                continue;
            };
            if handover.from != self.caller || handover.meta.call != self.call {
                continue;
            }
            let mine = handover.meta.to == self.seal.host() && handover.meta.taking == asking.nonce;
            return if mine {
                Ok(())
            } else {
                Err(NotHanded::Elsewhere)
            };
        }
    }

    /// Gives up the call asked for with request `taking`, telling the caller (`why` is what
    /// this host is told): a handover arriving after this is not run.
    async fn decline(&self, taking: &str, why: &str) -> NotHanded {
        let declined = ReplyMeta::Declined {
            call: self.call.clone(),
            taking: taking.to_owned(),
        };
        self.send(&declined, Bytes::new()).await;
        NotHanded::Unanswered(why.to_owned())
    }

    async fn send(&self, meta: &ReplyMeta, body: Bytes) {
        let sealed = self.seal.seal(Kind::Reply, meta, body);
        if let Err(e) = self
            .lattice
            .client()
            .publish_with_headers(self.reply.clone(), sealed.headers, sealed.body)
            .await
        {
            tracing::warn!(error = %e, "cannot answer a lattice call");
        }
    }

    /// Says the call was taken.
    pub async fn accepted(&self) {
        let call = self.call.clone();
        self.send(&ReplyMeta::Accepted { call }, Bytes::new()).await;
    }

    /// Says the call still runs (every [`LATTICE_CALL_HEARTBEAT`]).
    pub async fn running(&self) {
        let call = self.call.clone();
        self.send(&ReplyMeta::Running { call }, Bytes::new()).await;
    }

    /// Gives the outcome, and the output when it answered.
    pub async fn done(&self, outcome: CallOutcome, output: Bytes) {
        let call = self.call.clone();
        self.send(&ReplyMeta::Done { call, outcome }, output).await;
        // An answer is sent before the host may go: make sure it left.
        let _ = self.lattice.client().flush().await;
    }

    /// Says `running` every [`LATTICE_CALL_HEARTBEAT`] for as long as it is polled.
    pub async fn keep_alive(&self) {
        loop {
            tokio::time::sleep(LATTICE_CALL_HEARTBEAT).await;
            self.running().await;
        }
    }
}

/// Cancels sent to this host or to every host: each yields the cancelled call's nonce and
/// the host that sent the cancel (only the call's own caller may cancel it: the receiver
/// checks).
#[derive(Debug)]
pub struct Cancels {
    seal: Seal,
    subscriber: futures_util::stream::Select<Subscriber, Subscriber>,
}

/// Hears the cancels other hosts send this one, and those sent to every host.
pub async fn cancels(lattice: &Lattice, seal: &Seal) -> Result<Cancels, String> {
    let subscribe = |host: &str| lattice.client().subscribe(cancel_subject(lattice, host));
    let mine = subscribe(seal.host()).await.map_err(|e| e.to_string())?;
    let any = subscribe(ANY_HOST).await.map_err(|e| e.to_string())?;
    Ok(Cancels {
        seal: seal.clone(),
        subscriber: futures_util::stream::select(mine, any),
    })
}

impl Cancels {
    /// The next cancel, (call nonce, sending host), or why the next message was refused.
    pub async fn next(&mut self) -> Option<Result<(String, String), Refusal>> {
        let message = self.subscriber.next().await?;
        let opened =
            self.seal
                .open::<CancelMeta>(Kind::Cancel, message.headers.as_ref(), &message.payload);
        Some(opened.map(|opened| (opened.meta.call, opened.from)))
    }
}
