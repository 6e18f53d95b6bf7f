//! capsid's automation, in Rust rather than shell (the `cargo xtask` convention).
//!
//! ```text
//! cargo xtask test           fmt check, clippy -D warnings, every test in the workspace
//! cargo xtask bench [group]  run benchmarks (groups: audit, storage); tables and JSON in target/capsid-bench/
//! cargo xtask run            start capsid (the kernel is not wired yet)
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// Benchmark groups `cargo xtask bench` knows, in the order `bench` with no group runs them.
const BENCH_GROUPS: &[&str] = &["audit", "storage"];

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = workspace_root();
    match args.first().map(String::as_str) {
        Some("test") => test(&root),
        Some("bench") => bench(&root, args.get(1).map(String::as_str)),
        Some("run") => {
            println!("capsid: not yet wired — the kernel and daemon land with the kernel issue.");
            Ok(())
        }
        Some("help" | "--help" | "-h") | None => {
            print!("{}", usage());
            Ok(())
        }
        Some(other) => bail!("unknown xtask command {other:?}\n{}", usage()),
    }
}

fn usage() -> String {
    format!(
        "usage: cargo xtask <command>\n  test            fmt check, clippy -D warnings, all tests\n  \
         bench [group]   benchmarks; groups: {}\n  run             start capsid\n",
        BENCH_GROUPS.join(", ")
    )
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

fn cargo(root: &Path, args: &[&str]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    println!("$ cargo {}", args.join(" "));
    let status = Command::new(&cargo)
        .args(args)
        .current_dir(root)
        .status()
        .with_context(|| format!("cannot run {cargo}"))?;
    if !status.success() {
        bail!("`cargo {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

fn test(root: &Path) -> Result<()> {
    cargo(root, &["fmt", "--all", "--", "--check"])?;
    cargo(
        root,
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--locked",
            "--",
            "-D",
            "warnings",
        ],
    )?;
    cargo(root, &["test", "--workspace", "--locked"])
}

fn bench(root: &Path, group: Option<&str>) -> Result<()> {
    let groups: Vec<&str> = match group {
        None => BENCH_GROUPS.to_vec(),
        Some(g) if BENCH_GROUPS.contains(&g) => vec![g],
        Some(g) => bail!(
            "unknown bench group {g:?}; groups: {}",
            BENCH_GROUPS.join(", ")
        ),
    };
    let out = root.join("target").join("capsid-bench");
    let out_str = out.to_str().context("target path is not UTF-8")?;
    for g in groups {
        cargo(
            root,
            &[
                "run",
                "--release",
                "--locked",
                "--package",
                "capsid-bench",
                "--",
                g,
                "--out",
                out_str,
            ],
        )?;
    }
    Ok(())
}
