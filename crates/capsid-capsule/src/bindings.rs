//! The host side of `wit/host.wit`, generated once. Interfaces that touch storage, files or
//! the bus are async (their host calls await I/O and the audit log); `log` and `sys` are
//! synchronous. Every export is async so deadlines and the epoch can interrupt it.
#![allow(missing_docs, clippy::pedantic)]

wasmtime::component::bindgen!({
    // The superset world: `lifecycle` is optional, so [`CapsulePre`] below looks the
    // exports up itself instead of using the generated world type.
    world: "restartable-capsule",
    path: "../../wit",
    imports: {
        "capsid:host/kv": async,
        "capsid:host/fs": async,
        "capsid:host/ipc": async,
        "capsid:host/process": async,
        "capsid:host/approval": async,
        "capsid:host/tools": async,
        // Only a full resource table can fail these: a trap, not an answer for the guest.
        "capsid:host/process.[method]background.subscribe-exit": async | trappable,
        "capsid:host/process.[method]background.subscribe-output": async | trappable,
        "capsid:host/process.[method]pipeline.subscribe-exit": async | trappable,
        "capsid:host/process.[method]pipeline.subscribe-output": async | trappable,
    },
    exports: { default: async },
    with: {
        // One `pollable` with the WASI host, so a capsule's `wasi:io/poll` waits on ours;
        // `wasi:http` is wasmtime-wasi-http's, sending through our hook (`crate::http`).
        "wasi:io": wasmtime_wasi::p2::bindings::io,
        "wasi:clocks": wasmtime_wasi::p2::bindings::clocks,
        "wasi:http": wasmtime_wasi_http::p2::bindings::http,
        "capsid:host/process.background": crate::host::BackgroundChild,
        "capsid:host/process.pipeline": crate::host::BackgroundPipeline,
    },
});

pub(crate) use capsid::host::types::Error as WitError;
pub(crate) use exports::capsid::host::lifecycle::RestartCause as WitRestartCause;

use exports::capsid::host::{guest, lifecycle};
use wasmtime::component::{Instance, InstancePre};

/// The name a component exports the optional `lifecycle` interface under.
const LIFECYCLE_EXPORT: &str = "capsid:host/lifecycle@0.1.0";

/// A component linked against the host, ready to instantiate: its `guest` export found, and
/// its `lifecycle` export if it has one (one that is there but malformed is an error).
pub(crate) struct CapsulePre {
    instance_pre: InstancePre<crate::host::HostState>,
    guest: guest::GuestIndices,
    lifecycle: Option<lifecycle::GuestIndices>,
}

/// Why an instance could not be made.
pub(crate) enum InstantiateError {
    /// Instantiating failed (a trap in its start, a limit).
    Instantiate(wasmtime::Error),
    /// An export is not what `wit/` says (a function of the wrong signature).
    Exports(wasmtime::Error),
}

/// One instance's exports.
pub(crate) struct CapsuleExports {
    pub(crate) guest: guest::Guest,
    pub(crate) lifecycle: Option<lifecycle::Guest>,
}

impl CapsulePre {
    pub(crate) fn new(instance_pre: InstancePre<crate::host::HostState>) -> wasmtime::Result<Self> {
        let guest = guest::GuestIndices::new(&instance_pre)?;
        let lifecycle = match instance_pre
            .component()
            .get_export_index(None, LIFECYCLE_EXPORT)
        {
            Some(_) => Some(lifecycle::GuestIndices::new(&instance_pre)?),
            None => None,
        };
        Ok(Self {
            instance_pre,
            guest,
            lifecycle,
        })
    }

    pub(crate) async fn instantiate_async(
        &self,
        store: &mut wasmtime::Store<crate::host::HostState>,
    ) -> Result<CapsuleExports, InstantiateError> {
        let instance: Instance = self
            .instance_pre
            .instantiate_async(&mut *store)
            .await
            .map_err(InstantiateError::Instantiate)?;
        // Loading checks each export's signature against the world.
        let guest = self
            .guest
            .load(&mut *store, &instance)
            .map_err(InstantiateError::Exports)?;
        let lifecycle = self
            .lifecycle
            .as_ref()
            .map(|l| l.load(&mut *store, &instance))
            .transpose()
            .map_err(InstantiateError::Exports)?;
        Ok(CapsuleExports { guest, lifecycle })
    }
}

/// Adds capsid's own interfaces to `linker`. `wasi:io` is the WASI host's, linked with the
/// rest of WASI, so the world's generated `add_to_linker` (which would link it twice) is
/// not used.
pub(crate) fn link_capsid_host(
    linker: &mut wasmtime::component::Linker<crate::host::HostState>,
) -> wasmtime::Result<()> {
    use capsid::host::{approval, fs, ipc, kv, log, process, progress, sys, tools, types};
    use wasmtime::component::HasSelf;
    fn state(s: &mut crate::host::HostState) -> &mut crate::host::HostState {
        s
    }
    types::add_to_linker::<_, HasSelf<_>>(linker, state)?;
    log::add_to_linker::<_, HasSelf<_>>(linker, state)?;
    sys::add_to_linker::<_, HasSelf<_>>(linker, state)?;
    kv::add_to_linker::<_, HasSelf<_>>(linker, state)?;
    fs::add_to_linker::<_, HasSelf<_>>(linker, state)?;
    ipc::add_to_linker::<_, HasSelf<_>>(linker, state)?;
    process::add_to_linker::<_, HasSelf<_>>(linker, state)?;
    progress::add_to_linker::<_, HasSelf<_>>(linker, state)?;
    approval::add_to_linker::<_, HasSelf<_>>(linker, state)?;
    tools::add_to_linker::<_, HasSelf<_>>(linker, state)?;
    Ok(())
}
