//! Write a capsid capsule in a few lines.
//!
//! ```ignore
//! use capsid_guest::{Capsule, Error, Json, Tools};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Deserialize)]
//! struct Who {
//!     name: Option<String>,
//! }
//!
//! #[derive(Serialize)]
//! struct Greeting {
//!     greeting: String,
//! }
//!
//! fn greet(Json(who): Json<Who>) -> Result<Json<Greeting>, Error> {
//!     let who = who.name.as_deref().unwrap_or("world");
//!     capsid_guest::info(&format!("greeting {who}"));
//!     Ok(Json(Greeting { greeting: format!("Hello, {who}!") }))
//! }
//!
//! struct Hello;
//!
//! impl Capsule for Hello {
//!     const TOOLS: Tools = capsid_guest::tools! { "greet" => greet };
//! }
//!
//! capsid_guest::capsule!(Hello);
//! ```
//!
//! Each tool is a plain function listed once in [`tools!`]: the SDK parses its input
//! ([`Json<T>`]), encodes its output, and answers a tool the capsule does not list. A capsule
//! that wants the raw name and JSON text overrides [`Capsule::call_tool`] instead. A capsule
//! that wants to know when it is reloaded implements [`Capsule::restart`].
//!
//! The host interfaces are re-exported as modules ([`kv`], [`fs`], [`ipc`], [`sys`], [`log`],
//! [`tools`] to call other capsules' tools, ...);
//! every call is checked against the capsule's grants, so expect [`Error::Denied`] for
//! anything the operator did not grant.
#![deny(missing_docs)]

#[doc(hidden)]
#[allow(missing_docs, clippy::all)]
pub mod __bindings {
    wit_bindgen::generate!({
        // Every capsule built with this crate also exports `lifecycle` (its `restart` does
        // nothing unless the capsule says otherwise).
        world: "restartable-capsule",
        path: "../../wit",
        pub_export_macro: true,
        export_macro_name: "export_capsule_bindings",
        default_bindings_module: "::capsid_guest::__bindings",
        generate_all,
    });
}

mod handlers;

#[doc(hidden)]
pub use handlers::{__check_tool_names, __tool_names_section};
pub use handlers::{FromInput, Handler, IntoOutput, Json, RawJson, Tool, Tools, dispatch};

#[doc(hidden)]
pub use __bindings::exports::capsid::host::guest::Guest as __Guest;
#[doc(hidden)]
pub use __bindings::exports::capsid::host::lifecycle::Guest as __Lifecycle;

/// Why a capsule was loaded again (see [`Capsule::restart`]).
pub use __bindings::exports::capsid::host::lifecycle::RestartCause;

pub use __bindings::capsid::host::types::Error;
pub use __bindings::capsid::host::{approval, fs, ipc, kv, log, process, progress, sys, tools};
/// `wasi:io/poll`: wait on several `process` pollables (and WASI's) at once.
pub use __bindings::wasi::io::poll;

/// What a capsule implements. Every item has a default: list the tools in
/// [`Capsule::TOOLS`] and override what else the capsule needs.
pub trait Capsule {
    /// The tools this capsule answers, listed with [`tools!`]; [`Capsule::call_tool`]
    /// dispatches to them unless overridden. None by default.
    const TOOLS: Tools = &[];

    /// Called once per instance with the resolved `[env]` configuration.
    fn init(config: Vec<(String, String)>) -> Result<(), Error> {
        let _ = config;
        Ok(())
    }

    /// An event on a subscribed topic.
    fn handle_event(topic: String, payload: Vec<u8>) -> Result<(), Error> {
        let _ = (topic, payload);
        Ok(())
    }

    /// Runs tool `name` on JSON `input`, returning JSON. By default, the tool of that name in
    /// [`Capsule::TOOLS`]; a name not there is answered with [`unknown_tool`].
    fn call_tool(name: String, input: String) -> Result<String, Error> {
        dispatch(Self::TOOLS, &name, input)
    }

    /// Called before the instance is dropped.
    fn shutdown() {}

    /// Called once per reload on the new capsule's first instance, after `init` and before
    /// any call: why (`Reload`, `Recovery`, `SourceChanged`) and the reload's number (one more
    /// than the reloads that succeeded since the kernel started). An error fails the reload.
    /// Does nothing by default.
    fn restart(cause: RestartCause, restarts: u32) -> Result<(), Error> {
        let _ = (cause, restarts);
        Ok(())
    }
}

/// Exports `$t` (a type implementing [`Capsule`]) as this component's `guest` and `lifecycle`
/// interfaces.
#[macro_export]
macro_rules! capsule {
    ($t:ty) => {
        #[doc(hidden)]
        pub struct __CapsidExport;

        impl $crate::__Guest for __CapsidExport {
            fn init(config: ::std::vec::Vec<(::std::string::String, ::std::string::String)>)
                -> ::std::result::Result<(), $crate::Error> {
                <$t as $crate::Capsule>::init(config)
            }
            fn handle_event(topic: ::std::string::String, payload: ::std::vec::Vec<u8>)
                -> ::std::result::Result<(), $crate::Error> {
                <$t as $crate::Capsule>::handle_event(topic, payload)
            }
            fn call_tool(name: ::std::string::String, input_json: ::std::string::String)
                -> ::std::result::Result<::std::string::String, $crate::Error> {
                <$t as $crate::Capsule>::call_tool(name, input_json)
            }
            fn shutdown() {
                <$t as $crate::Capsule>::shutdown()
            }
        }

        impl $crate::__Lifecycle for __CapsidExport {
            fn restart(cause: $crate::RestartCause, restarts: u32)
                -> ::std::result::Result<(), $crate::Error> {
                <$t as $crate::Capsule>::restart(cause, restarts)
            }
        }

        $crate::__bindings::export_capsule_bindings!(__CapsidExport with_types_in $crate::__bindings);
    };
}

/// Spawn options with `args` and nothing else: no environment beyond the default `PATH`,
/// the workspace as working directory, an empty stdin, no limits, the default output limit.
pub fn spawn_options(args: &[&str]) -> process::SpawnOptions {
    process::SpawnOptions {
        args: args.iter().map(|a| (*a).to_owned()).collect(),
        env: Vec::new(),
        cwd: None,
        stdin: None,
        limits: process::Limits {
            memory_bytes: None,
            cpu_seconds: None,
            pids: None,
            open_files: None,
        },
        output_limit: None,
    }
}

/// Logs `message` at info level.
pub fn info(message: &str) {
    log::log(log::Level::Info, message);
}

/// Logs `message` at warn level.
pub fn warn(message: &str) {
    log::log(log::Level::Warn, message);
}

/// An `invalid` error with `message`.
pub fn invalid(message: impl Into<String>) -> Error {
    Error::Invalid(message.into())
}

/// The error for a tool name the capsule does not answer (the host already refused names its
/// manifest does not declare, so the manifest and the code disagree).
pub fn unknown_tool(name: &str) -> Error {
    Error::Invalid(format!("the capsule does not implement tool {name:?}"))
}

/// `"ok"`, or the short name of the error: for tools that report outcomes as JSON.
pub fn outcome<T>(result: &Result<T, Error>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(e) => error_name(e),
    }
}

/// A short name for an error, for tools that report outcomes as JSON.
pub fn error_name(e: &Error) -> &'static str {
    match e {
        Error::Denied => "denied",
        Error::Invalid(_) => "invalid",
        Error::NotFound => "not-found",
        Error::QuotaExceeded => "quota-exceeded",
        Error::Internal(_) => "internal",
    }
}
