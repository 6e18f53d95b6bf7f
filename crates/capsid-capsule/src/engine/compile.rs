//! Compiling a component so that the compile's memory does not stay: on an engine made for
//! it and dropped after (wasmtime's compiler keeps its buffers for reuse as long as its
//! engine lives), adopted by the runtime's engine from the serialized artifact (which is
//! also what the cache stores), then the freed heap handed back to the OS.
// Adopting an artifact is `Component::deserialize`, and trimming is a C call: both `unsafe`.
// The artifact adopted never comes from outside this function; see the SAFETY notes.
#![allow(unsafe_code)]

use wasmtime::component::Component;
use wasmtime::{Config, Engine, InstanceAllocationStrategy};

/// Why a compile failed.
pub(super) enum Failure {
    /// The bytes are not a component this runtime accepts.
    Invalid(String),
    /// The runtime could not do its part (an engine, serializing, mapping code).
    Runtime(String),
}

/// A component compiled and adopted by the runtime's engine, with its artifact for the cache.
pub(super) struct Compiled {
    /// The component, for the runtime's engine.
    pub(super) component: Component,
    /// Its serialized form.
    pub(super) artifact: Vec<u8>,
}

/// Compiles `bytes` on an engine configured as `runtime` (the runtime engine's
/// configuration) but allocating on demand, since it instantiates nothing, and adopts the
/// result into `engine`.
pub(super) fn compile(
    engine: &Engine,
    runtime: &Config,
    bytes: &[u8],
) -> Result<Compiled, Failure> {
    let mut config = runtime.clone();
    config.allocation_strategy(InstanceAllocationStrategy::OnDemand);
    let scratch = Engine::new(&config).map_err(|e| Failure::Runtime(e.to_string()))?;
    let compiled =
        Component::new(&scratch, bytes).map_err(|e| Failure::Invalid(format!("{e:#}")))?;
    let artifact = compiled
        .serialize()
        .map_err(|e| Failure::Runtime(format!("serializing the compiled component: {e}")))?;
    drop((compiled, scratch));
    // SAFETY: `artifact` is `Component::serialize`'s output, made just above from `bytes`
    // by an engine whose configuration differs from `engine`'s only in how instances are
    // allocated, which does not enter the artifact; wasmtime still checks that the two
    // engines' compiler settings and tunables match. Nothing from outside reaches here.
    let component = unsafe { Component::deserialize(engine, &artifact) }
        .map_err(|e| Failure::Runtime(format!("adopting the compiled component: {e}")))?;
    Ok(Compiled {
        component,
        artifact,
    })
}

/// Hands the heap memory freed since back to the OS. glibc keeps freed memory for reuse, and
/// a compile frees hundreds of MiB at once.
pub(super) fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `malloc_trim` only returns free heap pages to the OS; it takes no pointers.
    unsafe {
        libc::malloc_trim(0);
    }
}
