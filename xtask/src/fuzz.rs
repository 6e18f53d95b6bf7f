//! `cargo xtask fuzz <target> [--time S]`: one libFuzzer target of `fuzz/` for `S` seconds
//! (default 60) on nightly, which this command installs when missing, as it does
//! `cargo-fuzz`. Stable builds and `cargo xtask test` never need either: the test replays
//! the committed corpora (`fuzz/tests/replay.rs`).
//!
//! The run starts from the committed corpus (`fuzz/corpus/<target>/`) and writes what it
//! finds into a scratch corpus (`fuzz/libfuzzer/corpus/<target>/`, not committed); a crash
//! is written to `fuzz/artifacts/<target>/`: fix it, then commit the input to the corpus.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

/// Seconds a run lasts unless `--time` says.
const DEFAULT_SECONDS: u64 = 60;

/// The targets: the committed corpora's folders.
fn targets(root: &Path) -> Result<Vec<String>> {
    let mut names: Vec<String> = std::fs::read_dir(root.join("fuzz").join("corpus"))
        .context("listing fuzz/corpus")?
        .filter_map(Result::ok)
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    Ok(names)
}

fn succeeds(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

fn run(program: &str, args: &[&str], root: &Path) -> Result<()> {
    println!("$ {program} {}", args.join(" "));
    let status = Command::new(program)
        .args(args)
        .current_dir(root)
        .status()
        .with_context(|| format!("cannot run {program}"))?;
    if !status.success() {
        bail!("`{program} {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

/// Installs what a run needs and is missing: the nightly toolchain and `cargo-fuzz`.
fn prepare(root: &Path) -> Result<()> {
    if !succeeds("rustup", &["run", "nightly", "rustc", "--version"]) {
        run(
            "rustup",
            &["toolchain", "install", "nightly", "--profile", "minimal"],
            root,
        )?;
    }
    if !succeeds("cargo", &["fuzz", "--version"]) {
        run("cargo", &["install", "cargo-fuzz", "--locked"], root)?;
    }
    Ok(())
}

/// `cargo xtask fuzz <target> [--time S]`.
pub fn fuzz(root: &Path, args: &[String]) -> Result<()> {
    let known = targets(root)?;
    let Some(target) = args.first() else {
        bail!("name a fuzz target: {}", known.join(", "));
    };
    if !known.contains(target) {
        bail!("no fuzz target {target:?}; targets: {}", known.join(", "));
    }
    let usage = "usage: cargo xtask fuzz <target> [--time SECONDS]";
    let seconds = match (args.get(1).map(String::as_str), args.get(2), args.len()) {
        (None, _, _) => DEFAULT_SECONDS,
        (Some("--time"), Some(s), 3) => s
            .parse()
            .ok()
            // libFuzzer reads 0 as "no limit": a run that never ends.
            .filter(|&n: &u64| n > 0)
            .with_context(|| format!("--time takes a number of seconds over 0, not {s:?}"))?,
        _ => bail!("{usage}"),
    };
    prepare(root)?;
    let scratch = root.join("fuzz/libfuzzer/corpus").join(target);
    let artifacts = root.join("fuzz/artifacts").join(target);
    for dir in [&scratch, &artifacts] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let committed = root.join("fuzz/corpus").join(target);
    let max_time = format!("-max_total_time={seconds}");
    let artifact_prefix = format!("-artifact_prefix={}/", artifacts.display());
    let (scratch, committed) = (
        scratch.display().to_string(),
        committed.display().to_string(),
    );
    run(
        "rustup",
        &[
            "run",
            "nightly",
            "cargo",
            "fuzz",
            "run",
            "--fuzz-dir",
            "fuzz/libfuzzer",
            target,
            &scratch,
            &committed,
            "--",
            &max_time,
            &artifact_prefix,
            "-print_final_stats=1",
        ],
        root,
    )
}
