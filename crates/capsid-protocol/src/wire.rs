//! The envelope every frame is: the client's [`Hello`] and the daemon's [`Welcome`], then
//! [`Request`]s by id and the [`Response`] frames that echo it, failures as a [`WireError`]
//! with a stable [`ErrorCode`].

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::Method;

/// The client's first frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hello {
    /// The protocol version the client speaks.
    pub protocol: u32,
    /// The session token from `run/token`.
    pub token: String,
    /// The fingerprint of the config the client read (empty if it read none).
    pub fingerprint: String,
}

/// The daemon's answer to a good hello.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// The protocol version the daemon speaks.
    pub protocol: u32,
    /// capsid's version.
    pub version: String,
    /// The daemon's process id.
    pub pid: u32,
    /// The fingerprint of the config the daemon booted with.
    pub fingerprint: String,
    /// Whether the client's fingerprint is the daemon's: when not, the client read a
    /// different `config.toml` than the daemon booted with (edited since, or another home).
    pub fingerprint_matches: bool,
}

/// A call, as it travels. Build one with [`Request::new`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// Chosen by the client; echoed by every frame answering it.
    pub id: u64,
    /// The method's name ([`Method::NAME`]).
    pub method: String,
    /// The method's parameters (an object; absent means none).
    #[serde(default)]
    pub params: Value,
}

impl Request {
    /// A request for method `M` with `params`.
    pub fn new<M: Method>(id: u64, params: &M::Params) -> Result<Self, serde_json::Error> {
        Ok(Self {
            id,
            method: M::NAME.to_owned(),
            params: serde_json::to_value(params)?,
        })
    }

    /// The params as `M` takes them: absent params read as `{}`, unknown fields are refused.
    pub fn params<M: Method>(&self) -> Result<M::Params, WireError> {
        decode_params::<M::Params>(&self.params).map_err(|e| {
            WireError::new(
                ErrorCode::InvalidParams,
                format!("{}: bad params: {e}", M::NAME),
            )
        })
    }
}

fn decode_params<P: DeserializeOwned>(params: &Value) -> Result<P, serde_json::Error> {
    match params {
        Value::Null => serde_json::from_value(Value::Object(serde_json::Map::new())),
        other => P::deserialize(other),
    }
}

/// What kind of failure a [`WireError`] is: stable, kebab-case on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorCode {
    /// A frame, an input or an answer is over its size limit.
    TooLarge,
    /// A frame could not be read (truncated, too slow); the connection closes.
    BadFrame,
    /// A frame is not a request (or not a hello, first).
    BadRequest,
    /// No method has that name.
    UnknownMethod,
    /// The params do not fit the method (missing, mistyped or unknown fields).
    InvalidParams,
    /// The peer or its token is not allowed.
    Unauthorized,
    /// The client speaks another protocol version.
    Protocol,
    /// The capsule, installed capsule, process or other thing named does not exist.
    NotFound,
    /// The capsule has no tool of that name.
    UnknownTool,
    /// The request is well-formed but cannot be done as asked (a bad manifest, a reserved
    /// topic, a relative path).
    Invalid,
    /// The thing asked for already exists (a capsule already loaded).
    Conflict,
    /// A capability check refused it.
    Denied,
    /// The capsule's signature is missing, does not match its files, or is by a key this
    /// home does not trust for it (the message says what to run).
    Untrusted,
    /// Every instance, slot or connection is in use; try again.
    Busy,
    /// The capsule is not ready (loading, unloading, or failed until reloaded).
    NotReady,
    /// The call ran past the capsule's deadline; the capsule is marked failed.
    Timeout,
    /// The capsule trapped or hit its memory limit; it is marked failed.
    CapsuleFailed,
    /// The tool ran and answered with an error of its own.
    ToolError,
    /// The call's client cancelled it (or went away); the capsule stays ready.
    Cancelled,
    /// The audit log is read-only (it failed verification): nothing recorded can run.
    ReadOnly,
    /// The daemon is stopping.
    ShuttingDown,
    /// The daemon failed doing it (storage, I/O, an internal error).
    Failed,
    /// A code this client does not know (a newer daemon's).
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    /// The code as it is written on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TooLarge => "too-large",
            Self::BadFrame => "bad-frame",
            Self::BadRequest => "bad-request",
            Self::UnknownMethod => "unknown-method",
            Self::InvalidParams => "invalid-params",
            Self::Unauthorized => "unauthorized",
            Self::Protocol => "protocol",
            Self::NotFound => "not-found",
            Self::UnknownTool => "unknown-tool",
            Self::Invalid => "invalid",
            Self::Conflict => "conflict",
            Self::Denied => "denied",
            Self::Untrusted => "untrusted",
            Self::Busy => "busy",
            Self::NotReady => "not-ready",
            Self::Timeout => "timeout",
            Self::CapsuleFailed => "capsule-failed",
            Self::ToolError => "tool-error",
            Self::Cancelled => "cancelled",
            Self::ReadOnly => "read-only",
            Self::ShuttingDown => "shutting-down",
            Self::Failed => "failed",
            Self::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a request (or the connection) failed: a stable code and a sentence for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct WireError {
    /// What kind of failure.
    pub code: ErrorCode,
    /// What went wrong, in one line.
    pub message: String,
}

impl WireError {
    /// An error with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// A frame answering a request (or, with no id, the connection).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    /// The request's id; `None` for errors about the connection or an unreadable frame.
    pub id: Option<u64>,
    /// The result, when it succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// The error, when it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<WireError>,
    /// More frames follow for this id (a stream).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub more: bool,
}

impl Response {
    /// A success.
    pub fn ok(id: u64, result: Value) -> Self {
        Self {
            id: Some(id),
            result: Some(result),
            error: None,
            more: false,
        }
    }

    /// A failure.
    pub fn err(id: Option<u64>, error: WireError) -> Self {
        Self {
            id,
            result: None,
            error: Some(error),
            more: false,
        }
    }

    /// The answer as `M`'s result, or its error.
    pub fn into_result<M: Method>(self) -> Result<M::Result, crate::ClientError> {
        if let Some(e) = self.error {
            return Err(crate::ClientError::Daemon(e));
        }
        let value = self.result.unwrap_or(Value::Null);
        serde_json::from_value(value).map_err(|source| crate::ClientError::Decode {
            method: M::NAME,
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::methods::{CapsuleShow, Status};

    #[test]
    fn codes_are_kebab_case_on_the_wire_and_unknown_ones_still_read() {
        let e = WireError::new(ErrorCode::UnknownTool, "no");
        let text = serde_json::to_string(&e).unwrap_or_default();
        assert_eq!(text, r#"{"code":"unknown-tool","message":"no"}"#);
        for code in [
            ErrorCode::CapsuleFailed,
            ErrorCode::InvalidParams,
            ErrorCode::Busy,
        ] {
            let wire = serde_json::to_value(code).unwrap_or_default();
            assert_eq!(wire, Value::String(code.as_str().to_owned()));
        }
        let later: ErrorCode =
            serde_json::from_str(r#""from-the-future""#).unwrap_or(ErrorCode::Failed);
        assert_eq!(later, ErrorCode::Unknown);
    }

    #[test]
    fn params_refuse_unknown_fields_and_absent_params_are_empty() {
        let absent = Request {
            id: 1,
            method: Status::NAME.into(),
            params: Value::Null,
        };
        assert!(absent.params::<Status>().is_ok());
        let alias = Request {
            id: 2,
            method: CapsuleShow::NAME.into(),
            params: serde_json::json!({ "capsule": "hello" }),
        };
        let refused = alias.params::<CapsuleShow>().err();
        assert_eq!(refused.map(|e| e.code), Some(ErrorCode::InvalidParams));
        let bad_name = Request {
            id: 3,
            method: CapsuleShow::NAME.into(),
            params: serde_json::json!({ "name": "../etc" }),
        };
        assert!(bad_name.params::<CapsuleShow>().is_err());
    }
}
