//! The capsid daemon protocol (DESIGN 3.8, 3.10), shared by the daemon, the `capsid` CLI,
//! tests and every later client: the framing ([`frame`]), the envelope ([`Hello`],
//! [`Request`], [`Response`], [`WireError`] with its [`ErrorCode`]), every method as a type
//! ([`methods`]: each implements [`Method`] with its name, params and result) and a typed
//! [`Client`].
//!
//! Invariants: a method's name appears once, in [`methods`]; params refuse unknown fields; a
//! frame over `MAX_FRAME_BYTES` is refused before its body is read; error codes are a closed
//! enum on the sending side (a client reads a code it does not know as
//! [`ErrorCode::Unknown`]).
//!
//! ```no_run
//! # async fn demo(home: &capsid_core::CapsidHome) -> Result<(), capsid_protocol::ClientError> {
//! use capsid_protocol::{Client, methods::{CapsuleList, ToolCall, ToolCallParams}};
//! let mut client = Client::connect(home, String::new()).await?;
//! for capsule in client.ask::<CapsuleList>().await? {
//!     println!("{} {}", capsule.name, capsule.state);
//! }
//! let params = ToolCallParams {
//!     capsule: capsid_core::CapsuleId::new("hello").expect("a valid capsule name"),
//!     tool: "greet".into(),
//!     input: serde_json::json!({ "name": "Ada" }),
//!     as_user: None,
//!     client: None,
//!     via: capsid_protocol::methods::Via::Daemon,
//!     approvals: false,
//! };
//! let answer = client.call::<ToolCall>(&params).await?;
//! # let _ = answer; Ok(()) }
//! ```
#![deny(missing_docs)]

mod client;
pub mod frame;
pub mod methods;
mod wire;

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use client::{Client, ClientError, Follow};
pub use methods::{Done, MethodId, NoParams};
pub use wire::{ErrorCode, Hello, Request, Response, Welcome, WireError};

/// A daemon method: its name, what it takes and what it answers (the model is
/// rust-analyzer's `lsp::ext`: one type per request).
pub trait Method {
    /// The method's id, for matching.
    const ID: MethodId;
    /// Its name on the wire, e.g. `capsule.list`.
    const NAME: &'static str;
    /// It changes nothing: a daemon over a read-only audit log still answers it.
    const READ_ONLY: bool;
    /// The daemon answers it on the connection's reader (cheap, no I/O).
    const INLINE: bool;
    /// It answers with frames marked `more` until a last one.
    const STREAMING: bool;
    /// What it takes.
    type Params: Serialize + DeserializeOwned + Send + Sync;
    /// What it answers (each frame, for a streaming method).
    type Result: Serialize + DeserializeOwned + Send;
}
