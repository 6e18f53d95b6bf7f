//! A host killed with SIGKILL leaves no child behind: its direct children die with it
//! (`PR_SET_PDEATHSIG`), and a sandboxed child's whole tree dies with `bwrap` (its own pid
//! namespace). What an unsandboxed child forked outlives the host (nothing of it runs to kill
//! them) until the next host starts: each child has a cgroup named after its host, and the
//! boot-time sweep kills everything in the cgroups of hosts that are gone — processes that
//! left the child's group with `setsid` included. A host started with its standard
//! descriptors closed still confines and feeds its children.
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
fn sigkill_of_the_host_leaves_no_child_running_after_the_next_boot_sweep() {
    assert!(
        capsid_process::pids_limit_available(),
        "this test needs a writable cgroup pids controller (/sys/fs/cgroup/pids or cgroup v2)"
    );
    let ws = tempfile::tempdir().unwrap();
    // Durations unlikely to be running already, so the processes can be found by name.
    let a = 700_000 + std::process::id() % 100_000;
    let [b, c, d] = [a + 100_000, a + 200_000, a + 300_000];
    let mut host = Command::new(env!("CARGO_BIN_EXE_process-host-victim"))
        .arg(ws.path())
        .args([a, b, c, d].map(|n| n.to_string()))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(host.stdout.take().unwrap()).lines();
    let mut host = KillOnDrop(host);
    assert_eq!(lines.next().unwrap().unwrap(), "ready");
    let running = || [a, b, c, d].map(sleeping);
    for _ in 0..6_000 {
        if running() == [1; 4] {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(running(), [1; 4], "all four children are running");
    kill(
        Pid::from_raw(i32::try_from(host.0.id()).unwrap()),
        Signal::SIGKILL,
    )
    .unwrap();
    host.0.wait().unwrap();
    let mut gone = false;
    for _ in 0..6_000 {
        if sleeping(a) == 0 && sleeping(b) == 0 {
            gone = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        gone,
        "children outlived their host: {} direct, {} sandboxed",
        sleeping(a),
        sleeping(b)
    );
    assert_eq!(
        (sleeping(c), sleeping(d)),
        (1, 1),
        "an unsandboxed child's own children outlive a SIGKILLed host until the next sweep"
    );

    let sweep = capsid_process::sweep_stale_cgroups();
    assert!(
        sweep.killed >= 2 && sweep.removed >= 2,
        "the sweep found the dead host's cgroups: {sweep:?}"
    );
    for _ in 0..6_000 {
        if sleeping(c) == 0 && sleeping(d) == 0 {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!(
        "the sweep left children running: {} forked, {} in their own session",
        sleeping(c),
        sleeping(d)
    );
}

#[test]
fn a_host_with_closed_standard_descriptors_still_confines_and_feeds_its_children() {
    assert!(
        capsid_process::pids_limit_available(),
        "this test needs a writable cgroup pids controller (/sys/fs/cgroup/pids or cgroup v2)"
    );
    let ws = tempfile::tempdir().unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_process-host-closed-stdio"))
        .arg(ws.path())
        .status()
        .unwrap();
    let failure = std::fs::read_to_string(ws.path().join("failure.txt")).unwrap_or_default();
    assert!(status.success(), "{status}: {failure}");
}
