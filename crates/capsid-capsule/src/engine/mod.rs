//! The one wasmtime [`Engine`] every capsule runs on: component model, async host calls, the
//! pooling allocator, epoch interruption driven by a ticker thread, and compilation through
//! the signed on-disk cache ([`cache`]), here or in a helper process ([`helper`]).

mod cache;
mod compile;
mod helper;

pub use helper::{CompileHelper, serve_compile_helper};

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use capsid_core::CapsuleId;
use capsid_core::limits::{
    EPOCH_TICK, MAX_CAPSULE_MEMORY_MB, MAX_COMPONENT_BYTES, MAX_CONCURRENT_COMPILES,
    MAX_LIVE_INSTANCES,
};
use capsid_core::sync::lock;
use capsid_crypto::KeyPair;
use wasmtime::component::Component;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::error::CapsuleError;

/// How a component was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadKind {
    /// Compiled from the `.wasm` (and written to the cache).
    Compiled,
    /// Read back from the signed compiled cache, or shared with a loaded capsule of the same
    /// component (same blake3).
    Cached,
}

/// A compiled component and what it was compiled from.
#[derive(Clone)]
pub struct LoadedComponent {
    /// The component.
    pub component: Component,
    /// blake3 of the `.wasm` file, lowercase hex.
    pub blake3: String,
    /// Compiled now, or read from the cache.
    pub kind: LoadKind,
}

impl std::fmt::Debug for LoadedComponent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedComponent")
            .field("blake3", &self.blake3)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

/// Where the engine compiles a component it has no cached code for.
#[derive(Debug, Clone, Default)]
pub enum CompileIn {
    /// On a thread of this process, on an engine made for the compile and dropped after, the
    /// freed heap handed back to the OS. Some of it stays: heap glibc cannot return.
    #[default]
    ThisProcess,
    /// In a helper process started for each compile: none of the compile's memory is ever
    /// the host's. The host only reads back the artifact and adopts it.
    Helper(CompileHelper),
}

/// The engine, its epoch ticker and its compiled cache. Dropping it stops the ticker.
pub struct CapsuleEngine {
    engine: Engine,
    cache: cache::CompiledCache,
    compile_in: CompileIn,
    stop_ticker: Arc<AtomicBool>,
    /// Components loaded capsules use, by blake3: copies of one component (a capsule
    /// installed under several names) share its compiled code instead of each holding one.
    shared: Mutex<HashMap<String, Component>>,
    /// Turns to compile (`MAX_CONCURRENT_COMPILES`).
    compiles: tokio::sync::Semaphore,
}

impl std::fmt::Debug for CapsuleEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CapsuleEngine")
            .field("cache", &self.cache.dir())
            .finish_non_exhaustive()
    }
}

fn config() -> Config {
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(MAX_LIVE_INSTANCES)
        // A Rust component has a few core instances (its module plus shims) and one memory.
        .total_core_instances(MAX_LIVE_INSTANCES * 4)
        .total_memories(MAX_LIVE_INSTANCES)
        .total_tables(MAX_LIVE_INSTANCES * 4)
        .total_stacks(MAX_LIVE_INSTANCES)
        // A Rust component has one memory; a few more leave room, and the store's limiter
        // counts them together.
        .max_memories_per_component(4)
        .max_memory_size(usize::try_from(MAX_CAPSULE_MEMORY_MB << 20).unwrap_or(usize::MAX));
    let mut config = Config::new();
    config
        .wasm_component_model(true)
        .epoch_interruption(true)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    config
}

impl CapsuleEngine {
    /// Builds the engine, caching compiled components in `cache_dir` signed with `key` (only
    /// files signed by `key` are ever loaded back).
    pub fn new(cache_dir: &Path, key: Arc<KeyPair>) -> Result<Self, CapsuleError> {
        let engine = Engine::new(&config()).map_err(|e| CapsuleError::Engine(e.to_string()))?;
        let stop_ticker = Arc::new(AtomicBool::new(false));
        let (ticking, stop) = (engine.clone(), stop_ticker.clone());
        std::thread::Builder::new()
            .name("capsid-epoch".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    ticking.increment_epoch();
                }
            })
            .map_err(|e| CapsuleError::Engine(format!("cannot start the epoch ticker: {e}")))?;
        Ok(Self {
            engine,
            cache: cache::CompiledCache::new(cache_dir.to_owned(), key),
            compile_in: CompileIn::default(),
            stop_ticker,
            shared: Mutex::default(),
            compiles: tokio::sync::Semaphore::new(MAX_CONCURRENT_COMPILES),
        })
    }

    /// Compiles in `compile_in` from now on (in this process unless told otherwise).
    #[must_use]
    pub fn compile_in(mut self, compile_in: CompileIn) -> Self {
        self.compile_in = compile_in;
        self
    }

    /// The wasmtime engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Where compiled components are cached.
    pub fn cache_dir(&self) -> &Path {
        self.cache.dir()
    }

    /// Epoch ticks that make up `timeout` (at least one).
    pub fn ticks(timeout: Duration) -> u64 {
        let tick = EPOCH_TICK.as_micros().max(1);
        u64::try_from(timeout.as_micros().div_ceil(tick))
            .unwrap_or(u64::MAX)
            .max(1)
    }

    /// Reads `wasm`, checks it against `pin` (blake3, lowercase hex) if given, and returns
    /// the compiled component: from the cache when a valid signed entry exists, else
    /// compiled now (and cached; at most `MAX_CONCURRENT_COMPILES` at once, the others
    /// waiting). A cache entry that fails its signature or does not deserialize is deleted
    /// and rebuilt, never trusted.
    pub async fn load(
        &self,
        capsule: &CapsuleId,
        wasm: &Path,
        pin: Option<&str>,
    ) -> Result<LoadedComponent, CapsuleError> {
        let (bytes, blake3) = read_component(capsule, wasm).await?;
        if let Some(expected) = pin
            && expected != blake3
        {
            return Err(CapsuleError::PinMismatch {
                capsule: capsule.clone(),
                path: wasm.to_owned(),
                expected: expected.to_owned(),
                actual: blake3,
            });
        }
        if let Some(loaded) = self.already_compiled(blake3.clone()) {
            return Ok(loaded);
        }
        let _turn = self
            .compiles
            .acquire()
            .await
            .map_err(|_| CapsuleError::Compile {
                capsule: capsule.clone(),
                path: wasm.to_owned(),
                message: "the engine takes no more compiles".into(),
            })?;
        // Another load of the same component may have compiled it meanwhile.
        if let Some(loaded) = self.already_compiled(blake3.clone()) {
            return Ok(loaded);
        }
        let component = self
            .compile(bytes, &blake3)
            .await
            .map_err(|failure| match failure {
                compile::Failure::Invalid(reason) => CapsuleError::InvalidComponent {
                    capsule: capsule.clone(),
                    path: wasm.to_owned(),
                    reason,
                },
                compile::Failure::Runtime(message) => CapsuleError::Compile {
                    capsule: capsule.clone(),
                    path: wasm.to_owned(),
                    message,
                },
            })?;
        lock(&self.shared).insert(blake3.clone(), component.clone());
        Ok(LoadedComponent {
            component,
            blake3,
            kind: LoadKind::Compiled,
        })
    }

    /// The component with this blake3, when a loaded capsule shares it or the cache holds it.
    fn already_compiled(&self, blake3: String) -> Option<LoadedComponent> {
        let shared = lock(&self.shared).get(&blake3).cloned();
        let component = shared.or_else(|| self.cache.get(&self.engine, &blake3))?;
        lock(&self.shared).insert(blake3.clone(), component.clone());
        Some(LoadedComponent {
            component,
            blake3,
            kind: LoadKind::Cached,
        })
    }

    /// Compiles `bytes` where this engine compiles, adopts the artifact and caches it.
    async fn compile(&self, bytes: Vec<u8>, blake3: &str) -> Result<Component, compile::Failure> {
        let source = match &self.compile_in {
            CompileIn::ThisProcess => compile::Source::Component(bytes),
            CompileIn::Helper(helper) => compile::Source::Helper(helper.compile(&bytes).await?),
        };
        let (engine, cache, key) = (self.engine.clone(), self.cache.clone(), blake3.to_owned());
        tokio::task::spawn_blocking(move || compile::adopt(&engine, &cache, &key, source))
            .await
            .map_err(|e| compile::Failure::Runtime(format!("compiler task failed: {e}")))?
    }

    /// How many compiled components the loaded capsules use (copies of one count once).
    pub fn shared_components(&self) -> usize {
        lock(&self.shared).len()
    }

    /// Forgets the shared components whose blake3 is not in `in_use` (the last capsule using
    /// one is gone; its memory goes with it).
    pub(crate) fn keep_shared(&self, in_use: &HashSet<&str>) {
        lock(&self.shared).retain(|blake3, _| in_use.contains(blake3.as_str()));
    }

    /// The cache file a component with this blake3 would use.
    pub fn cache_path(&self, blake3: &str) -> PathBuf {
        self.cache.path(blake3)
    }
}

/// Reads a component file (a regular file, at most `MAX_COMPONENT_BYTES`, read with that
/// bound whatever its metadata says) and its blake3, off the async workers.
async fn read_component(
    capsule: &CapsuleId,
    wasm: &Path,
) -> Result<(Vec<u8>, String), CapsuleError> {
    let path = wasm.to_owned();
    let read = tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let file = std::fs::File::open(&path)?;
        if !file.metadata()?.is_file() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "not a regular file",
            ));
        }
        let mut bytes = Vec::new();
        file.take(MAX_COMPONENT_BYTES + 1).read_to_end(&mut bytes)?;
        let blake3 = blake3::hash(&bytes).to_hex().to_string();
        Ok((bytes, blake3))
    })
    .await
    .map_err(|e| CapsuleError::Engine(format!("reader task failed: {e}")))?;
    let (bytes, blake3) = read.map_err(|source| CapsuleError::Read {
        capsule: capsule.clone(),
        path: wasm.to_owned(),
        source,
    })?;
    if bytes.len() as u64 > MAX_COMPONENT_BYTES {
        return Err(CapsuleError::TooLarge {
            capsule: capsule.clone(),
            path: wasm.to_owned(),
            len: bytes.len() as u64,
            max: MAX_COMPONENT_BYTES,
        });
    }
    Ok((bytes, blake3))
}

impl Drop for CapsuleEngine {
    fn drop(&mut self) {
        self.stop_ticker.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_round_up_to_whole_ticks() {
        assert_eq!(CapsuleEngine::ticks(Duration::ZERO), 1);
        assert_eq!(CapsuleEngine::ticks(EPOCH_TICK), 1);
        assert_eq!(
            CapsuleEngine::ticks(EPOCH_TICK + Duration::from_micros(1)),
            2
        );
        assert_eq!(CapsuleEngine::ticks(EPOCH_TICK * 200), 200);
    }
}
