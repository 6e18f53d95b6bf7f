//! `cargo xtask soak crash [--rounds N]`: the kill -9 suites, `N` rounds each (default
//! [`DEFAULT_CRASH_ROUNDS`]); `cargo xtask test` runs the same suites with a few rounds.
//! `cargo xtask soak mixed --minutes M`: the release daemon under a steady mixed load for
//! `M` minutes (`capsid-bench`'s `soak-mixed`), failing on growth that does not level off.
//!
//! - `capsid-cli`'s `crash` suite: the real daemon killed at a random moment while 8 clients
//!   publish and call a tool that writes kv, and while its capsules run children;
//! - the integration tests' `overlay_crash` suite: an overlay writer killed at a random
//!   moment, often inside a commit.

use std::path::Path;

use anyhow::{Context, Result, bail};

/// Rounds per suite unless `--rounds` says.
const DEFAULT_CRASH_ROUNDS: u32 = 50;

/// The variable the suites read their number of rounds from.
const ROUNDS_VAR: &str = "CAPSID_CRASH_ROUNDS";

/// The suites: `(package, test target)`.
const CRASH_SUITES: &[(&str, &str)] = &[
    ("capsid-cli", "crash"),
    ("capsid-integration-tests", "overlay_crash"),
];

pub(crate) fn soak(root: &Path, args: &[String]) -> Result<()> {
    match args.first().map(String::as_str) {
        Some("crash") => crash(root, &args[1..]),
        Some("mixed") => mixed(root, &args[1..]),
        Some(other) => bail!("unknown soak {other:?}; soaks: crash, mixed"),
        None => {
            bail!("usage: cargo xtask soak crash [--rounds N] | cargo xtask soak mixed --minutes M")
        }
    }
}

fn crash(root: &Path, args: &[String]) -> Result<()> {
    let rounds = match args {
        [] => DEFAULT_CRASH_ROUNDS,
        [flag, n] if flag == "--rounds" => {
            let n: u32 = n
                .parse()
                .with_context(|| format!("--rounds takes a number, not {n:?}"))?;
            if n == 0 {
                bail!("--rounds must be at least 1");
            }
            n
        }
        _ => bail!("usage: cargo xtask soak crash [--rounds N]"),
    };
    let capsules = crate::build_capsules(root)?;
    let rounds = rounds.to_string();
    for (package, suite) in CRASH_SUITES {
        crate::cargo_with(
            root,
            &[
                "test",
                "--locked",
                "--package",
                package,
                "--test",
                suite,
                "--",
                "--nocapture",
                "--test-threads",
                "1",
            ],
            &[
                ("CAPSID_CAPSULES_DIR", &capsules),
                (ROUNDS_VAR, Path::new(&rounds)),
            ],
        )?;
    }
    Ok(())
}

fn mixed(root: &Path, args: &[String]) -> Result<()> {
    let minutes = match args {
        [flag, m] if flag == "--minutes" => {
            let m: u32 = m
                .parse()
                .with_context(|| format!("--minutes takes a number, not {m:?}"))?;
            if m == 0 {
                bail!("--minutes must be at least 1");
            }
            m
        }
        _ => bail!("usage: cargo xtask soak mixed --minutes M"),
    };
    let capsules = crate::build_capsules(root)?;
    crate::cargo(
        root,
        &["build", "--release", "--locked", "--package", "capsid-cli"],
    )?;
    let bin = root.join("target").join("release").join("capsid");
    let out = root.join("target").join("capsid-bench");
    let out = out.to_str().context("target path is not UTF-8")?;
    let minutes = minutes.to_string();
    crate::cargo_with(
        root,
        &[
            "run",
            "--release",
            "--locked",
            "--package",
            "capsid-bench",
            "--",
            "soak-mixed",
            "--out",
            out,
        ],
        &[
            ("CAPSID_CAPSULES_DIR", &capsules),
            ("CAPSID_BIN", &bin),
            ("CAPSID_SOAK_MINUTES", Path::new(&minutes)),
        ],
    )
}
