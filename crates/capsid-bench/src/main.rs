//! Benchmark runner: `capsid-bench <group> --out <dir>`. Each group measures capsid and, in
//! the same run, the raw floor it is compared with; it prints a table and writes
//! `<dir>/<group>.json` (DESIGN section 4).

mod approvals;
mod audit;
mod audit_scale;
mod capsule;
mod capsule_tools;
mod density;
mod density_large;
mod http;
mod kernel;
mod lattice;
mod mcp;
mod mcp_capsule;
mod pipeline;
mod process;
mod report;
mod soak;
mod storage;

use std::path::PathBuf;

use anyhow::{Context, Result, bail};

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let group = args
        .next()
        .context("usage: capsid-bench <group> --out <dir>")?;
    let out = match (args.next().as_deref(), args.next()) {
        (Some("--out"), Some(dir)) => PathBuf::from(dir),
        (None, None) => PathBuf::from("target/capsid-bench"),
        _ => bail!("usage: capsid-bench <group> --out <dir>"),
    };
    let rows = match group.as_str() {
        "audit" => audit::run()?,
        "storage" => storage::run()?,
        "capsule" => capsule::run()?,
        "process" => process::run()?,
        "kernel" => kernel::run()?,
        "http" => http::run()?,
        "mcp" => mcp::run()?,
        "approvals" => approvals::run()?,
        "lattice" => lattice::run()?,
        "audit-scale" => audit_scale::run()?,
        "density" => density::run()?,
        "soak-mixed" => soak::run(&out)?,
        other => bail!("unknown bench group {other:?}"),
    };
    report::print_table(&group, &rows);
    report::write_json(&out, &group, &rows)
}
