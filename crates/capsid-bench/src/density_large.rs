//! The density group's large component: `capsules/python/hello` built with componentize-py
//! (about 18 MB: the interpreter comes along), installed into a running daemon, which
//! compiles it. The daemon's resident memory then, against the same capsule after a restart
//! from the warm compile cache: memory used to compile must go back.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use capsid_protocol::methods::{CapsuleInstall, InstallParams, ToolCall, ToolOutput};
use serde_json::json;

use crate::density::{Daemon, rss_kib, settle};
use crate::report::Row;

/// The componentize-py the bench was written against.
const COMPONENTIZE_PY: &str = "componentize-py==0.25.1";

/// Builds the Python capsule into `tmp/hello-py`, signed with the samples key; its folder.
pub(crate) fn build(tmp: &Path) -> Result<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let source = root.join("capsules/python/hello");
    let out = tmp.join("hello-py");
    std::fs::create_dir_all(&out)?;
    std::fs::copy(source.join("Capsule.toml"), out.join("Capsule.toml"))?;
    let built = std::process::Command::new("componentize-py")
        .arg("-d")
        .arg(root.join("wit"))
        .args(["-w", "capsule", "componentize", "-p"])
        .arg(&source)
        .arg("app")
        .arg("-o")
        .arg(out.join("hello_py.wasm"))
        .output();
    let built = match built {
        Ok(built) => built,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "componentize-py is not installed: `pip install {COMPONENTIZE_PY}` (the density \
             bench builds capsules/python/hello with it)"
        ),
        Err(e) => return Err(e).context("running componentize-py"),
    };
    if !built.status.success() {
        bail!(
            "componentize-py failed on capsules/python/hello: {}",
            String::from_utf8_lossy(&built.stderr)
        );
    }
    capsid_integration_tests::sign(&out);
    Ok(out)
}

/// The daemon's memory (MiB) once idle after `greet` ran.
async fn memory_after_a_call(daemon: &Daemon) -> Result<f64> {
    let answer = daemon
        .client()
        .await?
        .call::<ToolCall>(&crate::density::greet("hello-py")?)
        .await?;
    if answer != ToolOutput::Json(json!({ "greeting": "Hello, density!" })) {
        bail!("hello-py answered {answer:?}");
    }
    settle(daemon.pid()?).await?;
    Ok(rss_kib(daemon.pid()?)? / 1024.0)
}

/// The large component's rows: the daemon's memory with the capsule built in `dir`
/// ([`build`]) installed, against a warm restart, and that against no capsule.
pub(crate) async fn rows(bin: &Path, tmp: &Path, dir: &Path) -> Result<Vec<Row>> {
    use std::os::unix::fs::PermissionsExt;
    let dir = dir.to_owned();
    #[allow(clippy::cast_precision_loss)]
    let mb = std::fs::metadata(dir.join("hello_py.wasm"))?.len() as f64 / 1e6;
    let home = tmp.join("home-large");
    std::fs::create_dir(&home)?;
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700))?;
    capsid_integration_tests::trust_samples(&home);

    let daemon = Daemon::start(bin, &home).await?;
    settle(daemon.pid()?).await?;
    let empty = rss_kib(daemon.pid()?)? / 1024.0;
    daemon
        .client()
        .await?
        .call::<CapsuleInstall>(&InstallParams {
            dir: dir.clone(),
            accept: false,
        })
        .await?;
    let installed = memory_after_a_call(&daemon).await?;
    daemon.stop().await?;

    let daemon = Daemon::start(bin, &home).await?;
    let warm = memory_after_a_call(&daemon).await?;
    daemon.stop().await?;
    Ok(vec![
        Row::new(
            &format!("daemon memory with a {mb:.1} MB Python component, installed (compiled) here"),
            installed,
            "MiB",
            "the same after a restart from the warm cache",
            warm,
        ),
        Row::new(
            "daemon memory with it, after a restart from the warm cache",
            warm,
            "MiB",
            "the daemon with no capsule",
            empty,
        ),
    ])
}
