//! `capsule`: warm `call-tool` latency against raw wasmtime on the same engine, guest-to-host
//! call cost, cold (compile) against cached load, and a capsule calling another's tool
//! (`capsule_tools.rs`). Needs the capsules built by
//! `cargo xtask build-capsules` (`cargo xtask bench capsule` builds them first).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use capsid_capsule::{CapsuleEngine, LoadKind, Trust};
use capsid_integration_tests::{Runtime, capsules_dir, id};
use wasmtime::Store;
use wasmtime::component::{Component, Linker, ResourceTable, Val};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::report::Row;

/// Calls timed for the latency percentiles, after [`WARMUP`] untimed ones.
const CALLS: usize = 5_000;
const WARMUP: usize = 500;
/// Guest-to-host calls per timed `call-tool` of the `hostcalls` capsule.
const HOST_CALLS: u64 = 200_000;
/// Rounds of each host-call loop; the best is kept.
const HOST_CALL_ROUNDS: u32 = 5;
/// Loads of each kind; the median is kept.
const LOADS: usize = 5;
/// The input every latency call carries.
const INPUT: &str = r#"{"name":"bench"}"#;

pub fn run() -> Result<Vec<Row>> {
    crate::report::runtime()?.block_on(async {
        let mut rows = latency_rows().await?;
        rows.extend(host_call_rows().await?);
        rows.extend(load_rows().await?);
        rows.extend(crate::capsule_tools::rows().await?);
        Ok(rows)
    })
}

#[allow(clippy::cast_precision_loss)]
fn micros(d: Duration) -> f64 {
    d.as_nanos() as f64 / 1_000.0
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

/// wasmtime's own error type, as an `anyhow` one.
fn wt<T>(result: wasmtime::Result<T>) -> Result<T> {
    result.map_err(|e| anyhow::anyhow!("{e:#}"))
}

struct RawState {
    wasi: WasiCtx,
    table: ResourceTable,
    http: wasmtime_wasi_http::WasiHttpCtx,
    hooks: NoRequests,
}

/// The raw floor sends no request (the `echo` tool makes none).
struct NoRequests;

/// What a request sent through [`NoRequests`] gets: a refusal.
type Refused = Box<
    dyn Future<
            Output = Result<
                (
                    http::Response<wasmtime_wasi_http::WasiBody>,
                    Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
                ),
                wasmtime_wasi_http::Error,
            >,
        > + Send,
>;

impl wasmtime_wasi_http::WasiHttpHooks for NoRequests {
    fn send_request(
        &mut self,
        _request: http::Request<wasmtime_wasi_http::WasiBody>,
        _options: Option<wasmtime_wasi_http::RequestOptions>,
        _body_sent: Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> Refused {
        Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) })
    }
}

impl wasmtime_wasi_http::WasiHttpView for RawState {
    fn http(&mut self) -> wasmtime_wasi_http::WasiHttpCtxView<'_> {
        wasmtime_wasi_http::WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

impl WasiView for RawState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Links every function of the component's `capsid:` imports as a trap, and their resources
/// as host resources. (`Linker::define_unknown_imports_as_traps` would also stub the WASI
/// interfaces the component imports at a newer patch version than the WASI host's, breaking
/// their shared resources.)
fn trap_capsid_imports(linker: &mut Linker<RawState>, component: &Component) -> Result<()> {
    use wasmtime::component::types::ComponentItem;
    let engine = component.engine();
    for (name, item) in component.component_type().imports(engine) {
        let ComponentItem::ComponentInstance(instance) = item.ty else {
            continue;
        };
        if !name.starts_with("capsid:") {
            continue;
        }
        let mut stubs = wt(linker.instance(name))?;
        for (export, item) in instance.exports(engine) {
            match item.ty {
                ComponentItem::ComponentFunc(_) => {
                    let called = format!("{name}#{export}");
                    wt(stubs.func_new(export, move |_, _, _, _| {
                        Err(wasmtime::Error::msg(format!("{called} is not linked")))
                    }))?;
                }
                ComponentItem::Resource(_) => wt(stubs.resource(
                    export,
                    wasmtime::component::ResourceType::host::<()>(),
                    |_, _| Ok(()),
                ))?,
                _ => {}
            }
        }
    }
    Ok(())
}

/// Raw wasmtime on the same engine: a fresh store and instance for each call, `call-tool`
/// through the dynamic API, capsid's own imports linked as traps (the `echo` tool calls none).
/// With `reuse`, one instance serves every call instead (the floor of a warm call).
async fn raw_latencies(
    engine: &wasmtime::Engine,
    component: &Component,
    reuse: bool,
) -> Result<Vec<Duration>> {
    let mut linker = Linker::<RawState>::new(engine);
    wt(wasmtime_wasi::p2::add_to_linker_async(&mut linker))?;
    // `wasi:http` shares `wasi:io`'s resources, so it is linked, not trapped.
    wt(wasmtime_wasi_http::p2::add_only_http_to_linker_async(
        &mut linker,
    ))?;
    trap_capsid_imports(&mut linker, component)?;
    let pre = wt(linker.instantiate_pre(component))?;
    let new_store = || {
        let mut store = Store::new(
            engine,
            RawState {
                wasi: WasiCtx::builder().build(),
                table: ResourceTable::new(),
                http: wasmtime_wasi_http::WasiHttpCtx::new(),
                hooks: NoRequests,
            },
        );
        store.set_epoch_deadline(CapsuleEngine::ticks(Duration::from_mins(1)));
        store
    };
    let mut kept = None;
    let mut out = Vec::with_capacity(CALLS);
    for i in 0..WARMUP + CALLS {
        let start = Instant::now();
        let (mut store, instance) = if let Some(k) = kept.take() {
            k
        } else {
            let mut store = new_store();
            let instance = wt(pre.instantiate_async(&mut store).await)?;
            (store, instance)
        };
        let guest = instance
            .get_export_index(&mut store, None, "capsid:host/guest@0.1.0")
            .context("no guest export")?;
        let call = instance
            .get_export_index(&mut store, Some(&guest), "call-tool")
            .context("no call-tool export")?;
        let func = instance
            .get_func(&mut store, call)
            .context("call-tool is not a function")?;
        let mut results = [Val::Bool(false)];
        wt(func
            .call_async(
                &mut store,
                &[Val::String("echo".into()), Val::String(INPUT.into())],
                &mut results,
            )
            .await)?;
        if reuse {
            kept = Some((store, instance));
        }
        if i >= WARMUP {
            out.push(start.elapsed());
        }
    }
    Ok(out)
}

async fn latency_rows() -> Result<Vec<Row>> {
    let rt = Runtime::new().await;
    rt.load("hello").await;
    let hello = id("hello");
    let mut capsid = Vec::with_capacity(CALLS);
    for i in 0..WARMUP + CALLS {
        let start = Instant::now();
        let out = rt.registry.call_tool(&hello, "echo", INPUT).await?;
        if i >= WARMUP {
            capsid.push(start.elapsed());
        }
        anyhow::ensure!(out == INPUT, "echo answered {out:?}");
    }
    let component = rt
        .engine
        .load(&hello, &capsules_dir().join("hello/hello.wasm"), None)
        .await?
        .component;
    let mut fresh = raw_latencies(rt.engine.engine(), &component, false).await?;
    let mut warm = raw_latencies(rt.engine.engine(), &component, true).await?;
    for v in [&mut capsid, &mut fresh, &mut warm] {
        v.sort_unstable();
    }
    let mut rows = Vec::new();
    for (label, p) in [("p50", 0.50), ("p99", 0.99)] {
        let ours = micros(percentile(&capsid, p));
        rows.push(Row::new(
            &format!("warm call-tool {label} (hello echo)"),
            ours,
            "µs",
            &format!("raw wasmtime instantiate+call {label}"),
            micros(percentile(&fresh, p)),
        ));
        rows.push(Row::new(
            &format!("warm call-tool {label} (hello echo)"),
            ours,
            "µs",
            &format!("raw wasmtime call on a live instance {label}"),
            micros(percentile(&warm, p)),
        ));
    }
    Ok(rows)
}

/// Best time per guest-to-host call of `tool` over the rounds, in nanoseconds.
async fn per_host_call(rt: &Runtime, tool: &str) -> Result<f64> {
    let input = format!(r#"{{"n":{HOST_CALLS}}}"#);
    let capsule = id("hostcalls");
    rt.registry.call_tool(&capsule, tool, &input).await?;
    let mut best = Duration::MAX;
    for _ in 0..HOST_CALL_ROUNDS {
        let start = Instant::now();
        rt.registry.call_tool(&capsule, tool, &input).await?;
        best = best.min(start.elapsed());
    }
    #[allow(clippy::cast_precision_loss)]
    Ok(best.as_nanos() as f64 / HOST_CALLS as f64)
}

async fn host_call_rows() -> Result<Vec<Row>> {
    let rt = Runtime::new().await;
    rt.load("hostcalls").await;
    let kv_get = per_host_call(&rt, "kv-get").await?;
    let noop = per_host_call(&rt, "sys-noop").await?;
    Ok(vec![Row::new(
        "guest kv.get (memory backend)",
        kv_get,
        "ns/call",
        "guest sys.monotonic-ns (cheapest host call)",
        noop,
    )])
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort_unstable();
    v[v.len() / 2]
}

async fn load_rows() -> Result<Vec<Row>> {
    let dir = capsules_dir().join("hello");
    let (mut cold, mut cached, mut cold_engine, mut cached_engine) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..LOADS {
        // A fresh runtime has an empty compiled cache: its first load compiles.
        let rt = Runtime::new().await;
        let wasm = dir.join("hello.wasm");
        let start = Instant::now();
        let first = rt.engine.load(&id("hello"), &wasm, None).await?;
        cold_engine.push(start.elapsed());
        anyhow::ensure!(first.kind == LoadKind::Compiled, "expected a compile");
        let start = Instant::now();
        let again = rt.engine.load(&id("hello"), &wasm, None).await?;
        cached_engine.push(start.elapsed());
        anyhow::ensure!(again.kind == LoadKind::Cached, "expected a cache hit");

        let rt = Runtime::new().await;
        cold.push(timed_load(&rt, &dir, LoadKind::Compiled).await?);
        rt.registry.unload(&id("hello")).await?;
        cached.push(timed_load(&rt, &dir, LoadKind::Cached).await?);
    }
    Ok(vec![
        Row::new(
            "cached component load (hello)",
            micros(median(cached_engine)),
            "µs",
            "first compile",
            micros(median(cold_engine)),
        ),
        Row::new(
            "cached capsule load, instantiate + init (hello)",
            micros(median(cached)),
            "µs",
            "first load, compiling",
            micros(median(cold)),
        ),
    ])
}

async fn timed_load(rt: &Runtime, dir: &Path, expected: LoadKind) -> Result<Duration> {
    let start = Instant::now();
    let info = rt.registry.load(dir, Trust::Dev).await?;
    let took = start.elapsed();
    anyhow::ensure!(
        info.load_kind == Some(expected),
        "load was {:?}",
        info.load_kind
    );
    Ok(took)
}
