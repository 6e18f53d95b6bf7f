//! capsid's automation, in Rust rather than shell (the `cargo xtask` convention).
//!
//! ```text
//! cargo xtask test             fmt check, clippy -D warnings, build the capsules, every test
//! cargo xtask build-capsules   build capsules/ for wasm32-wasip2 into target/capsules/<name>/,
//!                              checking each answers the tools its Capsule.toml declares
//! cargo xtask bench audit-scale [N]  the audit log's costs at N entries (default 1,000,000)
//! cargo xtask bench [group]    run benchmarks (groups: audit, storage, capsule, process, kernel,
//!                              http, mcp, density, approvals); tables and JSON in target/capsid-bench/
//! cargo xtask fuzz <target> [--time S]  one fuzz target for S seconds (nightly, cargo-fuzz)
//! cargo xtask soak crash [--rounds N]    the kill -9 suites, N rounds each (default 50)
//! cargo xtask soak mixed --minutes M     the release daemon under a mixed load for M minutes
//! cargo xtask run              build the samples and capsid, serve them from a dev home under target/
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

mod fuzz;
mod lattice;
mod layers;
mod soak;
mod tools;

/// Benchmark groups `cargo xtask bench` knows, in the order `bench` with no group runs them.
const BENCH_GROUPS: &[&str] = &[
    "audit",
    "storage",
    "capsule",
    "process",
    "kernel",
    "http",
    "mcp",
    "density",
    "approvals",
    "lattice",
];

/// Groups run only when named (too long for a run of every group).
const LONG_BENCH_GROUPS: &[&str] = &["audit-scale"];

/// Folders under `capsules/` that hold one capsule each (a `Capsule.toml` beside its crate).
const CAPSULE_GROUPS: &[&str] = &["samples", "hostile", "bench"];

/// The target the capsules are built for.
const WASM_TARGET: &str = "wasm32-wasip2";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = workspace_root();
    match args.first().map(String::as_str) {
        Some("test") => test(&root),
        Some("build-capsules") => build_capsules(&root).map(|_| ()),
        Some("bench") => bench(
            &root,
            args.get(1).map(String::as_str),
            args.get(2).map(String::as_str),
        ),
        Some("run") if args.get(1).map(String::as_str) == Some("--lattice") => lattice::run(&root),
        Some("run") => run(&root),
        Some("fuzz") => fuzz::fuzz(&root, &args[1..]),
        Some("soak") => soak::soak(&root, &args[1..]),
        Some("help" | "--help" | "-h") | None => {
            print!("{}", usage());
            Ok(())
        }
        Some(other) => bail!("unknown xtask command {other:?}\n{}", usage()),
    }
}

fn usage() -> String {
    format!(
        "usage: cargo xtask <command>\n  test            fmt check, clippy -D warnings, capsules, all tests\n  \
         build-capsules  build capsules/ for wasm32-wasip2 into target/capsules/, check their tools\n  \
         bench [group]   benchmarks; groups: {}\n  \
         bench audit-scale [N]  the audit log at N entries (default 1,000,000)\n  \
         fuzz <target> [--time S]  one fuzz target for S seconds (nightly; installs it)\n  \
         soak crash [--rounds N]  the kill -9 suites, N rounds each (default 50)\n  \
         soak mixed --minutes M   the daemon under a mixed load for M minutes, checking growth\n  \
         run             start capsid\n  \
         run --lattice   start a local nats-server and two capsid hosts joined in a lattice\n",
        BENCH_GROUPS.join(", ")
    )
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

fn cargo(root: &Path, args: &[&str]) -> Result<()> {
    cargo_with(root, args, &[])
}

fn cargo_with(root: &Path, args: &[&str], env: &[(&str, &Path)]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    println!("$ cargo {}", args.join(" "));
    let status = Command::new(&cargo)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v.as_os_str())))
        .current_dir(root)
        .status()
        .with_context(|| format!("cannot run {cargo}"))?;
    if !status.success() {
        bail!("`cargo {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

/// Where built capsules go: `target/capsules/<name>/{Capsule.toml,<name>.wasm}`.
fn capsules_out(root: &Path) -> PathBuf {
    root.join("target").join("capsules")
}

/// Runs `cargo <command> <args>` on the capsules workspace for the wasm target.
fn cargo_capsules(root: &Path, command: &str, args: &[&str]) -> Result<()> {
    let target_dir = wasm_target_dir(root);
    let target_dir = target_dir.to_str().context("target path is not UTF-8")?;
    let mut all = vec![
        command,
        "--locked",
        "--manifest-path",
        "capsules/Cargo.toml",
        "--target",
        WASM_TARGET,
        "--target-dir",
        target_dir,
    ];
    all.extend_from_slice(args);
    cargo(root, &all)
}

/// Where the capsules workspace builds (apart from the host's, since it is another target).
fn wasm_target_dir(root: &Path) -> PathBuf {
    root.join("target").join("wasm")
}

/// `cargo xtask run`: builds the capsules and the `capsid` binary, installs the samples into a
/// dev home under `target/` (dev trust: they get what they request), and becomes the daemon
/// in the foreground — so Ctrl-C reaches it, and it drains and stops cleanly.
fn run(root: &Path) -> Result<()> {
    use std::os::unix::process::CommandExt;

    let built = build_capsules(root)?;
    cargo(root, &["build", "--locked", "--package", "capsid-cli"])?;
    let home = root.join("target").join("dev-home");
    // A developer's loop rebuilds capsules without signing each build; only dev mode (which
    // `run` starts) may turn the check off. An edited config is left as it is.
    let config = home.join("config.toml");
    if !config.exists() {
        private_dir(&home)?;
        std::fs::write(&config, format!("{DEV_CONFIG_NOTE}{DEV_SIGNING}"))
            .with_context(|| format!("cannot write {}", config.display()))?;
    }
    let samples = install_samples(root, &built, &home, |_| true)?;
    let capsid = dev_capsid(root);
    let h = home.display();
    println!("capsid dev home: {h} (samples: {})", samples.join(", "));
    println!("once it says \"ready\", in another terminal try:");
    println!("  {} --home {h} capsule ls", capsid.display());
    println!(
        "  {} --home {h} call hello greet --input '{{\"name\":\"you\"}}'",
        capsid.display()
    );
    println!("  {} --home {h} call counter increment", capsid.display());
    println!("  {} --home {h} audit tail", capsid.display());
    println!(
        "edit and rebuild a capsule (cargo xtask build-capsules, then copy it into the home) and it reloads; Ctrl-C stops capsid."
    );
    let err = Command::new(&capsid)
        .arg("--home")
        .arg(&home)
        .args(["daemon", "--dev"])
        .exec();
    Err(err).with_context(|| format!("cannot start {}", capsid.display()))
}

/// The first line of a config `cargo xtask run` writes.
const DEV_CONFIG_NOTE: &str =
    "# Written by `cargo xtask run`: capsules rebuilt here are not signed.\n";
/// What lets the dev loop load unsigned rebuilds (dev mode only).
const DEV_SIGNING: &str = "[signing]\nrequire = \"off\"\n";

/// The `capsid` binary `run` builds.
fn dev_capsid(root: &Path) -> PathBuf {
    root.join("target").join("debug").join("capsid")
}

/// Makes `dir` (and its parents), mode 0700: capsid refuses a home others can read.
fn private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot set the mode of {}", dir.display()))
}

/// Copies the built samples `keep` accepts into `home`'s capsules; their names, sorted.
fn install_samples(
    root: &Path,
    built: &Path,
    home: &Path,
    keep: impl Fn(&str) -> bool,
) -> Result<Vec<String>> {
    private_dir(home)?;
    let capsules = home.join("capsules");
    std::fs::create_dir_all(&capsules)
        .with_context(|| format!("cannot create {}", capsules.display()))?;
    let samples_dir = root.join("capsules").join("samples");
    let mut samples = Vec::new();
    for entry in std::fs::read_dir(&samples_dir)
        .with_context(|| format!("cannot list {}", samples_dir.display()))?
    {
        let name = entry?.file_name().to_string_lossy().into_owned();
        let (from, to) = (built.join(&name), capsules.join(&name));
        if !from.join("Capsule.toml").is_file() || !keep(&name) {
            continue;
        }
        std::fs::create_dir_all(&to).with_context(|| format!("cannot create {}", to.display()))?;
        for file in std::fs::read_dir(&from)? {
            let file = file?;
            std::fs::copy(file.path(), to.join(file.file_name()))
                .with_context(|| format!("cannot copy {}", file.path().display()))?;
        }
        samples.push(name);
    }
    samples.sort();
    Ok(samples)
}

/// Builds every capsule under `capsules/` (release, wasm32-wasip2), checks that each answers
/// the tools its manifest declares (see [`tools`]), and lays each out with its manifest in
/// `target/capsules/<name>/`. Returns that folder.
fn build_capsules(root: &Path) -> Result<PathBuf> {
    cargo_capsules(root, "build", &["--release"])?;
    let built = wasm_target_dir(root).join(WASM_TARGET).join("release");
    let out = capsules_out(root);
    let mut check = ToolCheck::default();
    for dir in capsule_dirs(root)? {
        let name = dir
            .file_name()
            .and_then(|n| n.to_str())
            .context("capsule folder name is not UTF-8")?;
        let manifest = dir.join("Capsule.toml");
        let wasm = built.join(format!("{name}.wasm"));
        check.capsule(root, name, &manifest, &wasm)?;
        let dest = out.join(name);
        std::fs::create_dir_all(&dest)
            .with_context(|| format!("cannot create {}", dest.display()))?;
        std::fs::copy(&manifest, dest.join("Capsule.toml"))
            .with_context(|| format!("cannot copy {}", manifest.display()))?;
        std::fs::copy(&wasm, dest.join(format!("{name}.wasm")))
            .with_context(|| format!("cannot copy {}", wasm.display()))?;
    }
    let count = check.capsules;
    check.finish()?;
    println!("built {count} capsules into {}", out.display());
    Ok(out)
}

/// Every folder under `capsules/<group>/` that holds a capsule (a `Capsule.toml`).
fn capsule_dirs(root: &Path) -> Result<Vec<PathBuf>> {
    let mut dirs = Vec::new();
    for group in CAPSULE_GROUPS {
        let group_dir = root.join("capsules").join(group);
        let entries = std::fs::read_dir(&group_dir)
            .with_context(|| format!("cannot list {}", group_dir.display()))?;
        for entry in entries {
            let dir = entry?.path();
            if dir.join("Capsule.toml").is_file() {
                dirs.push(dir);
            }
        }
    }
    dirs.sort();
    Ok(dirs)
}

/// The tool check over every capsule built: what disagreed and what could not be checked,
/// reported once at the end.
#[derive(Default)]
struct ToolCheck {
    capsules: usize,
    mismatches: Vec<String>,
    unchecked: Vec<String>,
}

impl ToolCheck {
    fn capsule(&mut self, root: &Path, name: &str, manifest: &Path, wasm: &Path) -> Result<()> {
        self.capsules += 1;
        let bytes = std::fs::read(wasm).with_context(|| {
            format!(
                "cannot read {} (does the crate of capsule {name} build a {name}.wasm?)",
                wasm.display()
            )
        })?;
        let Some(answered) = tools::answered_tools(&bytes)
            .with_context(|| format!("cannot read {}", wasm.display()))?
        else {
            self.unchecked.push(name.to_owned());
            return Ok(());
        };
        let text = std::fs::read_to_string(manifest)
            .with_context(|| format!("cannot read {}", manifest.display()))?;
        let declared = tools::declared_tools(&text)
            .with_context(|| format!("cannot read {}", manifest.display()))?;
        if let Some(mismatch) = tools::compare(&declared, &answered) {
            let shown = manifest.strip_prefix(root).unwrap_or(manifest);
            self.mismatches
                .push(format!("capsule {name} ({}): {mismatch}", shown.display()));
        }
        Ok(())
    }

    fn finish(mut self) -> Result<()> {
        if !self.mismatches.is_empty() {
            bail!(
                "tools answered and tools declared disagree:\n{}",
                self.mismatches.join("\n")
            );
        }
        let checked = self.capsules - self.unchecked.len();
        println!("tool check: {checked} capsules answer exactly the tools they declare");
        if !self.unchecked.is_empty() {
            self.unchecked.sort();
            println!(
                "tool check: skipped {} (not written with capsid_guest::tools!, so their tools \
                 cannot be seen)",
                self.unchecked.join(", ")
            );
        }
        Ok(())
    }
}

fn test(root: &Path) -> Result<()> {
    layers::check(root)?;
    cargo(root, &["fmt", "--all", "--", "--check"])?;
    cargo(
        root,
        &[
            "fmt",
            "--all",
            "--manifest-path",
            "capsules/Cargo.toml",
            "--",
            "--check",
        ],
    )?;
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
    cargo_capsules(root, "clippy", &["--workspace", "--", "-D", "warnings"])?;
    test_guest_sdk(root)?;
    let capsules = build_capsules(root)?;
    cargo_with(
        root,
        &["test", "--workspace", "--locked", "--no-fail-fast"],
        &[("CAPSID_CAPSULES_DIR", &capsules)],
    )
}

/// Runs `capsid-guest`'s unit tests on the host (its imports are stubs there, so tests that
/// call no host interface run), with clippy over them first.
fn test_guest_sdk(root: &Path) -> Result<()> {
    let target_dir = wasm_target_dir(root);
    let target_dir = target_dir.to_str().context("target path is not UTF-8")?;
    let guest = [
        "--locked",
        "--manifest-path",
        "capsules/Cargo.toml",
        "--package",
        "capsid-guest",
        "--target-dir",
        target_dir,
    ];
    let clippy = [
        &["clippy", "--all-targets"],
        &guest[..],
        &["--", "-D", "warnings"],
    ]
    .concat();
    cargo(root, &clippy)?;
    cargo(root, &[&["test"], &guest[..]].concat())
}

/// `cargo xtask bench [group] [N]`: every group of [`BENCH_GROUPS`], or one (`N`, the size
/// of `audit-scale`).
fn bench(root: &Path, group: Option<&str>, size: Option<&str>) -> Result<()> {
    let groups: Vec<&str> = match group {
        None => BENCH_GROUPS.to_vec(),
        Some(g) if BENCH_GROUPS.contains(&g) || LONG_BENCH_GROUPS.contains(&g) => vec![g],
        Some(g) => bail!(
            "unknown bench group {g:?}; groups: {}, {}",
            BENCH_GROUPS.join(", "),
            LONG_BENCH_GROUPS.join(", ")
        ),
    };
    let size = size.unwrap_or("");
    if !size.is_empty() && size.parse::<u64>().is_err() {
        bail!("the bench size must be a number, not {size:?}");
    }
    // These groups drive the real binary, built as released.
    let drives_binary = groups.iter().any(|g| ["mcp", "density"].contains(g));
    let capsules = if groups.contains(&"capsule") || drives_binary {
        build_capsules(root)?
    } else {
        capsules_out(root)
    };
    let bin = if drives_binary {
        build_release_capsid(root)?
    } else {
        release_capsid(root)
    };
    for g in groups {
        run_bench(
            root,
            g,
            &[
                ("CAPSID_CAPSULES_DIR", &capsules),
                ("CAPSID_BIN", &bin),
                ("CAPSID_MCP_FIXTURE", &release_mcp_fixture(root)),
                ("CAPSID_BENCH_N", Path::new(size)),
            ],
        )?;
    }
    Ok(())
}

/// Where the released `capsid` binary is built.
fn release_capsid(root: &Path) -> PathBuf {
    root.join("target").join("release").join("capsid")
}

/// Where the released MCP fixture server (`tests/src/bin/mcp-fixture.rs`) is built.
fn release_mcp_fixture(root: &Path) -> PathBuf {
    root.join("target").join("release").join("mcp-fixture")
}

/// Builds the released `capsid` binary (what the groups that drive it run), and the MCP
/// fixture server the `mcp` group runs as a capsule; the binary's path.
fn build_release_capsid(root: &Path) -> Result<PathBuf> {
    cargo(
        root,
        &[
            "build",
            "--release",
            "--locked",
            "--package",
            "capsid-cli",
            "--package",
            "capsid-integration-tests",
            "--bin",
            "capsid",
            "--bin",
            "mcp-fixture",
        ],
    )?;
    Ok(release_capsid(root))
}

/// Runs `capsid-bench <group>`, released, writing into `target/capsid-bench/`, with `env`.
fn run_bench(root: &Path, group: &str, env: &[(&str, &Path)]) -> Result<()> {
    let out = root.join("target").join("capsid-bench");
    let out = out.to_str().context("target path is not UTF-8")?;
    cargo_with(
        root,
        &[
            "run",
            "--release",
            "--locked",
            "--package",
            "capsid-bench",
            "--",
            group,
            "--out",
            out,
        ],
        env,
    )
}
