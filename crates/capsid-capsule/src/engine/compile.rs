//! Compiling a component so that the compile's memory does not stay: on an engine made for
//! it and dropped after (wasmtime's compiler keeps its buffers for reuse as long as its
//! engine lives), adopted by the runtime's engine from the serialized artifact (which is
//! also what the cache stores), then the freed heap handed back to the OS. The compile runs
//! here or in a helper process ([`super::helper`]); adopting is the same either way.
// Adopting an artifact is `Component::deserialize`, and trimming is a C call: both `unsafe`.
#![allow(unsafe_code)]

use wasmtime::component::Component;
use wasmtime::{Config, Engine, InstanceAllocationStrategy};

use super::cache::CompiledCache;

/// Why a compile failed.
pub(super) enum Failure {
    /// The bytes are not a component this runtime accepts.
    Invalid(String),
    /// The runtime could not do its part (an engine, a helper, serializing, mapping code).
    Runtime(String),
}

/// Compiles `bytes` on an engine configured as `runtime` (the runtime engine's
/// configuration) but allocating on demand, since it instantiates nothing, and returns the
/// serialized artifact. The engine and its buffers are gone when this returns.
pub(super) fn compile_artifact(runtime: &Config, bytes: &[u8]) -> Result<Vec<u8>, Failure> {
    let mut config = runtime.clone();
    config.allocation_strategy(InstanceAllocationStrategy::OnDemand);
    let scratch = Engine::new(&config).map_err(|e| Failure::Runtime(e.to_string()))?;
    let compiled =
        Component::new(&scratch, bytes).map_err(|e| Failure::Invalid(format!("{e:#}")))?;
    compiled
        .serialize()
        .map_err(|e| Failure::Runtime(format!("serializing the compiled component: {e}")))
}

/// What a compile starts from: the only two ways to an artifact the engine adopts.
pub(super) enum Source {
    /// The component's bytes, compiled by [`compile_artifact`] here.
    Component(Vec<u8>),
    /// What the compile helper this engine started answered: [`compile_artifact`]'s output
    /// in that process, over a pipe only it holds.
    Helper(Vec<u8>),
}

/// The component for `engine`, from `source`; its artifact is written to `cache` under
/// `blake3` and the freed heap handed back. Blocks: call it off the async workers.
pub(super) fn adopt(
    engine: &Engine,
    cache: &CompiledCache,
    blake3: &str,
    source: Source,
) -> Result<Component, Failure> {
    let artifact = match source {
        Source::Component(bytes) => compile_artifact(&super::config(), &bytes)?,
        Source::Helper(artifact) => artifact,
    };
    // SAFETY: `artifact` is `compile_artifact`'s output for the configuration `engine` has
    // (`super::config()`), made here or by the helper (see `Source`); wasmtime still checks
    // the engine settings and version recorded in it.
    let component = unsafe { Component::deserialize(engine, &artifact) }
        .map_err(|e| Failure::Runtime(format!("adopting the compiled component: {e}")))?;
    cache.put(blake3, &artifact);
    drop(artifact);
    release_freed_memory();
    Ok(component)
}

/// Hands the heap memory freed since back to the OS. glibc keeps freed memory for reuse, and
/// a compile frees hundreds of MiB at once.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `malloc_trim` only returns free heap pages to the OS; it takes no pointers.
    unsafe {
        libc::malloc_trim(0);
    }
}
