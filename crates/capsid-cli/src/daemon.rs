//! The daemon's own commands: `capsid daemon` (in the foreground), `capsid start` (detached,
//! waited for until ready, its boot failure told), `capsid stop`.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use capsid_core::CapsidHome;
use capsid_kernel::daemon::{DaemonOptions, RunFiles};
use capsid_kernel::{Kernel, KernelConfig};
use capsid_protocol::Client;
use capsid_protocol::methods::DaemonStop;

use crate::connect;

/// How long `capsid start` waits for the daemon to be ready (first boots compile capsules).
const START_TIMEOUT: Duration = Duration::from_mins(5);
/// How long `capsid stop` waits for the daemon to be gone.
const STOP_TIMEOUT: Duration = Duration::from_mins(1);
/// What the daemon's last line starts with when it fails (see `main`).
const FAILURE_PREFIX: &str = "capsid: ";

/// Allocations at least this large get pages of their own, returned to the OS when freed.
const OWN_PAGES_FROM_BYTES: libc::c_int = 128 * 1024;

/// Makes large buffers go back to the OS when freed (call it before any other thread
/// exists: other threads' arenas read the setting unlocked). glibc's default raises the size above
/// which it maps a buffer on its own each time one such is freed (up to 32 MiB), so after
/// a component's bytes or artifact pass through, buffers of tens of MiB come from the heap,
/// where they stay. Measured with an 18.6 MB Python component: 108 MiB resident with the
/// default, 72 MiB with this; a compile at install left 16 MiB more with the default.
#[allow(unsafe_code)] // mallopt is a C call; it takes two integers and no pointers.
pub(crate) fn return_large_buffers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; `main` calls this before it starts
    // any thread.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, OWN_PAGES_FROM_BYTES);
    }
}

/// `capsid daemon`: boots the kernel and serves it until stopped.
pub(crate) async fn run(home: &CapsidHome, dev: bool) -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CAPSID_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let files = RunFiles::acquire(home)?;
    let mut config = KernelConfig::load(&home.config_path())?;
    // Clients compare the fingerprint of the file they read, not of the command line.
    let options = DaemonOptions {
        config_fingerprint: Some(config.fingerprint()),
        ..DaemonOptions::default()
    };
    config.dev |= dev;
    let kernel = Kernel::builder()
        .home(home.root())
        .config(config)
        .compile_in(compile_helper())
        .build()
        .await?;
    capsid_kernel::daemon::serve(kernel, files, options).await?;
    Ok(())
}

/// Compiles run in a helper, this same program as `capsid compile-component`, so that none of
/// a compile's memory stays in the daemon. `/proc/self/exe` is this very binary even if the
/// file it was started from has since been replaced; without `/proc`, compiles stay here.
#[allow(unsafe_code)] // CompileHelper::new is unsafe: its answer is loaded as code.
fn compile_helper() -> capsid_kernel::CompileIn {
    const THIS_BINARY: &str = "/proc/self/exe";
    if !Path::new(THIS_BINARY).exists() {
        tracing::warn!("no {THIS_BINARY}: components are compiled in the daemon's process");
        return capsid_kernel::CompileIn::ThisProcess;
    }
    // SAFETY: the helper is this very binary, whose `compile-component` runs
    // `serve_compile_helper` (see `main`).
    let helper = unsafe { capsid_kernel::CompileHelper::new(THIS_BINARY) };
    capsid_kernel::CompileIn::Helper(helper.arg("compile-component"))
}

/// Why the daemon writing to `log` from `offset` on stopped: its last failure line.
fn failure_since(log: &Path, offset: u64) -> Option<String> {
    let mut file = std::fs::File::open(log).ok()?;
    file.seek(SeekFrom::Start(offset)).ok()?;
    let mut text = String::new();
    file.read_to_string(&mut text).ok()?;
    text.lines()
        .rev()
        .find_map(|l| l.strip_prefix(FAILURE_PREFIX))
        .map(str::to_owned)
}

/// `capsid start`: the daemon detached in a session of its own, waited for until ready. If
/// it exits first, the reason it gave is the error.
pub(crate) async fn start(home: &CapsidHome, dev: bool) -> Result<()> {
    if connect(home).await.is_ok() {
        bail!("a capsid daemon already serves {}", home.root().display());
    }
    let ready = launch(home, dev).await?;
    println!(
        "capsid daemon ready (pid {}, {}); log: {}",
        ready.welcome().pid,
        home.root().display(),
        home.run_dir().join("daemon.log").display()
    );
    Ok(())
}

/// Starts the daemon of `home` detached and returns a client once it is ready (printing
/// nothing on stdout: `capsid mcp serve` speaks MCP there).
pub(crate) async fn launch(home: &CapsidHome, dev: bool) -> Result<Client> {
    home.ensure_layout()?;
    let log_path = home.run_dir().join("daemon.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let log_start = log.metadata().map_or(0, |m| m.len());
    let exe = std::env::current_exe().context("locating the capsid binary")?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("--home")
        .arg(home.root())
        .args(["daemon", "--detach"]);
    if dev {
        cmd.arg("--dev");
    }
    let mut child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting the daemon")?;
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_message("starting capsid (the first start compiles the capsules)");
    bar.enable_steady_tick(Duration::from_millis(100));
    let begun = Instant::now();
    let ready = loop {
        if let Some(status) = child.try_wait()? {
            bar.finish_and_clear();
            match failure_since(&log_path, log_start) {
                Some(reason) => bail!(
                    "the daemon could not start: {reason} (log: {})",
                    log_path.display()
                ),
                None => bail!(
                    "the daemon exited ({status}) before it was ready; see {}",
                    log_path.display()
                ),
            }
        }
        if home.ready_path().is_file()
            && let Ok(client) = connect(home).await
        {
            break client;
        }
        if begun.elapsed() > START_TIMEOUT {
            bar.finish_and_clear();
            bail!(
                "the daemon was not ready after {START_TIMEOUT:?}; see {}",
                log_path.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    bar.finish_and_clear();
    Ok(ready)
}

/// `capsid stop`: asks the daemon to stop and waits until its files are gone.
pub(crate) async fn stop(home: &CapsidHome) -> Result<()> {
    let mut client = connect(home).await?;
    let pid = client.welcome().pid;
    client.ask::<DaemonStop>().await?;
    let begun = Instant::now();
    while home.pid_path().exists() || home.socket_path().exists() {
        if begun.elapsed() > STOP_TIMEOUT {
            bail!("the daemon (pid {pid}) is still stopping after {STOP_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("capsid daemon stopped (pid {pid})");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reason_is_the_last_failure_line_written_since_the_start() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let log = dir.path().join("daemon.log");
        let earlier = "capsid: an old failure\n";
        let now = "INFO booting\ncapsid: audit database x failed verification: chain s: seq 3: field action changed\n";
        std::fs::write(&log, format!("{earlier}{now}")).unwrap_or_else(|e| panic!("{e}"));
        let reason = failure_since(&log, earlier.len() as u64);
        assert_eq!(
            reason.as_deref(),
            Some("audit database x failed verification: chain s: seq 3: field action changed")
        );
        let all = std::fs::metadata(&log).map_or(0, |m| m.len());
        assert_eq!(failure_since(&log, all), None, "nothing written since");
    }
}
