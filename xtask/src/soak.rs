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
        [flag, n] if flag == "--rounds" => at_least_one(flag, n)?,
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
        [flag, m] if flag == "--minutes" => at_least_one(flag, m)?,
        _ => bail!("usage: cargo xtask soak mixed --minutes M"),
    };
    let capsules = crate::build_capsules(root)?;
    let bin = crate::build_release_capsid(root)?;
    let minutes = minutes.to_string();
    crate::run_bench(
        root,
        "soak-mixed",
        &[
            ("CAPSID_CAPSULES_DIR", &capsules),
            ("CAPSID_BIN", &bin),
            ("CAPSID_SOAK_MINUTES", Path::new(&minutes)),
        ],
    )
}

/// `value` of `flag` as a number of at least 1.
fn at_least_one(flag: &str, value: &str) -> Result<u32> {
    let n: u32 = value
        .parse()
        .with_context(|| format!("{flag} takes a number, not {value:?}"))?;
    if n == 0 {
        bail!("{flag} must be at least 1");
    }
    Ok(n)
}
