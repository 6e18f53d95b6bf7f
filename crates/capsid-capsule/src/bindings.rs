//! The host side of `wit/host.wit`, generated once. Interfaces that touch storage, files or
//! the bus are async (their host calls await I/O and the audit log); `log` and `sys` are
//! synchronous. Every export is async so deadlines and the epoch can interrupt it.
#![allow(missing_docs, clippy::pedantic)]

wasmtime::component::bindgen!({
    world: "capsule",
    path: "../../wit",
    imports: {
        "capsid:host/kv": async,
        "capsid:host/fs": async,
        "capsid:host/ipc": async,
        "capsid:host/process": async,
    },
    exports: { default: async },
    with: {
        "capsid:host/process.background": crate::host::BackgroundChild,
    },
});

pub(crate) use capsid::host::types::Error as WitError;
