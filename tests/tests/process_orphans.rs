//! A host killed with SIGKILL leaves no child behind: its direct children die with it
//! (`PR_SET_PDEATHSIG`), and a sandboxed child's whole tree dies with `bwrap` (its own pid
//! namespace). An unsandboxed child's own children are not covered by this: they are killed
//! with its group whenever the host is alive to do it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Live `sleep <seconds>` processes (argv[0] may be a full path).
fn sleeping(seconds: u32) -> usize {
    let tail = format!("sleep\0{seconds}\0");
    capsid_integration_tests::live_processes()
        .iter()
        .filter(|p| p.cmdline.ends_with(tail.as_bytes()))
        .count()
}

/// Kills the helper host if the test fails before it does.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn sigkill_of_the_host_leaves_no_child_running() {
    let ws = tempfile::tempdir().unwrap();
    // Durations unlikely to be running already, so the processes can be found by name.
    let a = 700_000 + std::process::id() % 100_000;
    let b = a + 100_000;
    let mut host = Command::new(env!("CARGO_BIN_EXE_process-host-victim"))
        .args([ws.path().to_str().unwrap(), &a.to_string(), &b.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(host.stdout.take().unwrap()).lines();
    let mut host = KillOnDrop(host);
    assert_eq!(lines.next().unwrap().unwrap(), "ready");
    for _ in 0..6_000 {
        if sleeping(a) == 1 && sleeping(b) == 1 {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        (sleeping(a), sleeping(b)),
        (1, 1),
        "both children are running"
    );
    kill(
        Pid::from_raw(i32::try_from(host.0.id()).unwrap()),
        Signal::SIGKILL,
    )
    .unwrap();
    host.0.wait().unwrap();
    for _ in 0..6_000 {
        if sleeping(a) == 0 && sleeping(b) == 0 {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!(
        "children outlived their host: {} direct, {} sandboxed",
        sleeping(a),
        sleeping(b)
    );
}
