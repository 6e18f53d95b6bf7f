//! Real children: limits, groups, rings, stdin, exit accounting, reaping.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation,
    clippy::similar_names
)]

use std::time::Duration;

use capsid_process::{Child, ProcessError, ResourceLimits, RingPolicy, Signal, SpawnSpec};

/// A fork bomb that keeps its processes alive, started after a timer that ends it.
const BOMB: &str = "sleep 1 & t=$!; b() { b & b & wait; }; b & wait $t; kill -9 0";

fn sh(workspace: &std::path::Path, script: &str) -> SpawnSpec {
    SpawnSpec::new("sh", workspace).args(["-c", script])
}

/// Processes whose process group is `pgid`, from /proc.
fn group_members(pgid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the parenthesised command: state ppid pgrp ...
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let fields: Vec<&str> = rest.split(' ').collect();
        let ours = fields[1].parse::<u32>().ok() == Some(std::process::id());
        // A zombie counts only while it is ours to reap (one re-parented elsewhere is dead).
        let counted = fields[0] != "Z" || ours;
        if fields[2].parse::<u32>().ok() == Some(pgid) && counted {
            out.push(pid);
        }
    }
    out
}

/// Waits (up to a minute: a loaded machine is slow to kill and reap) for every process of
/// group `pgid` to be gone: none alive, and none a zombie this process should have reaped.
async fn group_gone(pgid: u32) -> bool {
    for _ in 0..6_000 {
        if group_members(pgid).is_empty() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

fn subreaper() {
    capsid_process::become_subreaper().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_exit_code_and_accounting() {
    let ws = tempfile::tempdir().unwrap();
    let child = Child::spawn(&sh(ws.path(), "echo out; echo err >&2; exit 3"))
        .await
        .unwrap();
    let (info, out, err) = child.wait_with_output().await;
    let info = info.unwrap();
    assert_eq!(info.code, Some(3));
    assert_eq!(info.signal, None);
    assert_eq!(out, b"out\n");
    assert_eq!(err, b"err\n");
    assert!(info.mem_bytes_peak > 0, "{info:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_starts_with_no_blocked_signals_and_the_default_sigpipe() {
    let ws = tempfile::tempdir().unwrap();
    let spec = SpawnSpec::new("cat", ws.path()).args(["/proc/self/status"]);
    let (info, out, _) = Child::spawn(&spec).await.unwrap().wait_with_output().await;
    assert!(info.unwrap().success());
    let status = String::from_utf8(out).unwrap();
    let mask = |field: &str| {
        let line = status
            .lines()
            .find(|l| l.starts_with(field))
            .unwrap_or_else(|| panic!("no {field} in {status}"));
        u64::from_str_radix(line[field.len()..].trim(), 16).unwrap()
    };
    assert_eq!(mask("SigBlk:"), 0, "nothing blocked");
    // The host ignores SIGPIPE (Rust's runtime does); a program must not inherit that.
    let sigpipe = 1u64 << (Signal::SIGPIPE as u32 - 1);
    assert_eq!(mask("SigIgn:") & sigpipe, 0, "SIGPIPE is not ignored");
}

/// Zombies of this process that never ran their program: a child that failed before exec
/// still carries the spawner thread's name.
fn unreaped_failed_spawns() -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter(|stat| {
            let rest = &stat[stat.rfind(')').unwrap() + 2..];
            let fields: Vec<&str> = rest.split(' ').collect();
            stat.contains("(capsid-spawner)")
                && fields[0] == "Z"
                && fields[1].parse::<u32>().ok() == Some(std::process::id())
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_program_that_cannot_run_is_an_error_and_leaves_no_zombie() {
    let ws = tempfile::tempdir().unwrap();
    let script = ws.path().join("not-executable");
    std::fs::write(&script, "#!/bin/sh\necho never\n").unwrap();
    let spec = SpawnSpec::new(script.to_str().unwrap(), ws.path());
    for _ in 0..20 {
        match Child::spawn(&spec).await {
            Err(ProcessError::Spawn { source, .. }) => {
                assert_eq!(source.raw_os_error(), Some(13), "EACCES: {source}");
            }
            other => panic!("a file without the exec bit ran: {other:?}"),
        }
    }
    assert_eq!(unreaped_failed_spawns(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_environment_is_built_from_scratch() {
    let ws = tempfile::tempdir().unwrap();
    let mut spec = sh(ws.path(), "env | sort; pwd");
    spec.env = vec![("LANG".into(), "C.UTF-8".into())];
    let child = Child::spawn(&spec).await.unwrap();
    let (_, out, _) = child.wait_with_output().await;
    let out = String::from_utf8(out).unwrap();
    let vars: Vec<&str> = out
        .lines()
        .filter(|l| {
            l.contains('=')
                && !l.starts_with("PWD=")
                && !l.starts_with("SHLVL=")
                && !l.starts_with("_=")
        })
        .collect();
    assert_eq!(
        vars,
        [
            "HOME=/nonexistent",
            "LANG=C.UTF-8",
            "PATH=/usr/local/bin:/usr/bin:/bin"
        ],
        "{out}"
    );
    let canon = ws.path().canonicalize().unwrap();
    assert!(out.ends_with(&format!("{}\n", canon.display())), "{out}");

    for (name, value) in [("LD_PRELOAD", "/tmp/evil.so"), ("PATH", "."), ("HOME", ".")] {
        let mut bad = sh(ws.path(), "true");
        bad.env = vec![(name.into(), value.into())];
        assert!(
            matches!(Child::spawn(&bad).await, Err(ProcessError::Invalid(_))),
            "{name} was accepted"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_working_directory_stays_inside_the_workspace() {
    let ws = tempfile::tempdir().unwrap();
    std::fs::create_dir(ws.path().join("sub")).unwrap();
    std::os::unix::fs::symlink("/", ws.path().join("root-link")).unwrap();
    let mut spec = sh(ws.path(), "pwd");
    spec.cwd = Some("sub".into());
    let (_, out, _) = Child::spawn(&spec).await.unwrap().wait_with_output().await;
    assert!(String::from_utf8(out).unwrap().trim_end().ends_with("/sub"));
    for escape in ["..", "/", "root-link", "sub/../..", "/etc"] {
        spec.cwd = Some(escape.into());
        assert!(
            matches!(
                Child::spawn(&spec).await,
                Err(ProcessError::CwdOutsideWorkspace { .. })
            ),
            "{escape}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arguments_and_programs_are_checked() {
    let ws = tempfile::tempdir().unwrap();
    let too_many = SpawnSpec::new("true", ws.path()).args((0..1000).map(|i| i.to_string()));
    assert!(matches!(
        Child::spawn(&too_many).await,
        Err(ProcessError::Invalid(_))
    ));
    let nul = SpawnSpec::new("echo", ws.path()).args(["a\0b"]);
    assert!(matches!(
        Child::spawn(&nul).await,
        Err(ProcessError::Invalid(_))
    ));
    let relative = SpawnSpec::new("./sh", ws.path());
    assert!(matches!(
        Child::spawn(&relative).await,
        Err(ProcessError::Invalid(_))
    ));
    let missing = SpawnSpec::new("no-such-program-here", ws.path());
    assert!(matches!(
        Child::spawn(&missing).await,
        Err(ProcessError::ProgramNotFound(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backpressure_loses_nothing_through_a_small_ring() {
    let ws = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..64u32 * 1024 * 1024)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(ws.path().join("data"), &data).unwrap();
    let expected = blake3::hash(&data);
    let mut spec = SpawnSpec::new("cat", ws.path()).args(["data"]);
    spec.ring_bytes = 64 * 1024;
    spec.ring_policy = RingPolicy::Backpressure;
    let child = Child::spawn(&spec).await.unwrap();
    let ring = child.stdout().clone();
    let mut hasher = blake3::Hasher::new();
    let mut total = 0usize;
    loop {
        ring.ready().await;
        let chunk = ring.drain(usize::MAX);
        if chunk.is_empty() && ring.is_closed() {
            break;
        }
        assert!(chunk.len() <= 64 * 1024);
        total += chunk.len();
        hasher.update(&chunk);
    }
    assert_eq!(total, data.len());
    assert_eq!(hasher.finalize(), expected);
    assert_eq!(ring.dropped(), 0);
    assert!(child.wait(None).await.unwrap().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_oldest_counts_what_it_drops() {
    let ws = tempfile::tempdir().unwrap();
    let mut spec = sh(ws.path(), "head -c 1048576 /dev/zero");
    spec.ring_bytes = 4096;
    let child = Child::spawn(&spec).await.unwrap();
    let (info, out, _) = child.wait_with_output().await;
    assert!(info.unwrap().success());
    assert_eq!(out.len(), 4096);
    assert_eq!(child.stdout().dropped(), 1_048_576 - 4096);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdin_is_written_in_order_and_closed_once() {
    let ws = tempfile::tempdir().unwrap();
    let mut spec = SpawnSpec::new("cat", ws.path());
    spec.stdin = true;
    let child = Child::spawn(&spec).await.unwrap();
    for i in 0..100 {
        child
            .write_stdin(format!("{i}\n").as_bytes())
            .await
            .unwrap();
    }
    child.close_stdin().await;
    child.close_stdin().await;
    assert!(matches!(
        child.write_stdin(b"late").await,
        Err(ProcessError::StdinClosed)
    ));
    let (info, out, _) = child.wait_with_output().await;
    assert!(info.unwrap().success());
    let expected: String = (0..100).map(|i: u32| i.to_string() + "\n").collect();
    assert_eq!(String::from_utf8(out).unwrap(), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signals_reach_the_whole_group_and_never_a_reaped_pid() {
    subreaper();
    let ws = tempfile::tempdir().unwrap();
    let child = Child::spawn(&sh(ws.path(), "sleep 1000 & sleep 1000 & wait"))
        .await
        .unwrap();
    let pgid = child.pid();
    for _ in 0..200 {
        if group_members(pgid).len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(group_members(pgid).len() >= 3, "sh and two sleeps");
    child.signal(Signal::SIGTERM).unwrap();
    let info = child.wait(Some(Duration::from_secs(30))).await.unwrap();
    assert_eq!(info.signal, Some(Signal::SIGTERM as i32));
    assert!(
        group_gone(pgid).await,
        "no member of the group survives, not even a zombie"
    );
    assert!(matches!(
        child.signal(Signal::SIGKILL),
        Err(ProcessError::Exited)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_exits_takes_its_group_with_it() {
    subreaper();
    let ws = tempfile::tempdir().unwrap();
    let child = Child::spawn(&sh(ws.path(), "sleep 1000 & echo started"))
        .await
        .unwrap();
    let pgid = child.pid();
    assert!(
        child
            .wait(Some(Duration::from_secs(30)))
            .await
            .unwrap()
            .success()
    );
    assert!(
        group_gone(pgid).await,
        "the background sleep was killed and reaped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_are_enforced_before_exec() {
    let ws = tempfile::tempdir().unwrap();

    let mut cpu = sh(ws.path(), "while :; do :; done");
    cpu.limits = ResourceLimits {
        cpu_seconds: Some(1),
        ..ResourceLimits::default()
    };
    let info = Child::spawn(&cpu)
        .await
        .unwrap()
        .wait(Some(Duration::from_mins(1)))
        .await
        .expect("the CPU limit stopped it");
    assert!(
        info.signal == Some(Signal::SIGXCPU as i32) || info.signal == Some(Signal::SIGKILL as i32),
        "{info:?}"
    );
    // The kernel counts the limit in ticks; rusage is exact: expect most of the second.
    assert!(info.cpu_ms >= 500, "{info:?}");

    let mut files = sh(ws.path(), "exec 30>/dev/null && echo opened");
    files.limits = ResourceLimits {
        open_files: Some(16),
        ..ResourceLimits::default()
    };
    let (info, out, _) = Child::spawn(&files).await.unwrap().wait_with_output().await;
    assert!(!info.unwrap().success());
    assert!(out.is_empty());

    // 64 MiB of address space cannot hold a 256 MiB allocation.
    let mut memory = SpawnSpec::new("awk", ws.path())
        .args(["BEGIN { s = \"x\"; while (length(s) < 268435456) s = s s; print length(s) }"]);
    memory.limits = ResourceLimits {
        memory_bytes: Some(64 * 1024 * 1024),
        ..ResourceLimits::default()
    };
    let (info, out, _) = Child::spawn(&memory)
        .await
        .unwrap()
        .wait_with_output()
        .await;
    let info = info.unwrap();
    assert!(!info.success(), "{info:?}");
    assert!(out.is_empty(), "{}", String::from_utf8_lossy(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_child_kills_and_reaps_it() {
    subreaper();
    let ws = tempfile::tempdir().unwrap();
    let child = Child::spawn(&sh(ws.path(), "sleep 1000 & sleep 1000"))
        .await
        .unwrap();
    let pid = child.pid();
    drop(child);
    assert!(
        group_gone(pid).await,
        "pid {pid} or its group still exists (zombie or orphan)"
    );
}

/// A process's (state, process group, session), from /proc; `None` once it is gone.
fn state_group_session(pid: u32) -> Option<(char, u32, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let f: Vec<&str> = stat[stat.rfind(')')? + 2..].split(' ').collect();
    Some((f[0].chars().next()?, f[2].parse().ok()?, f[3].parse().ok()?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_that_leaves_the_group_still_dies_with_its_child() {
    subreaper();
    assert!(
        capsid_process::pids_limit_available(),
        "this test needs a writable cgroup pids controller (/sys/fs/cgroup/pids or cgroup v2)"
    );
    let ws = tempfile::tempdir().unwrap();
    let child = Child::spawn(&sh(ws.path(), "setsid sleep 1000 & echo $!; wait"))
        .await
        .unwrap();
    let mut line = Vec::new();
    while !line.ends_with(b"\n") {
        child.stdout().ready().await;
        line.extend(child.stdout().drain(64));
    }
    let escapee: u32 = String::from_utf8_lossy(&line).trim().parse().unwrap();
    let mut escaped = false;
    for _ in 0..6_000 {
        // `setsid` runs before it execs sleep: wait until it has left the group.
        if let Some((_, pgrp, session)) = state_group_session(escapee)
            && pgrp != child.pid()
            && session == escapee
        {
            escaped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(escaped, "{escapee} left the child's group and session");
    child.signal(Signal::SIGKILL).unwrap();
    let mut gone = false;
    for _ in 0..6_000 {
        // Gone, or a zombie left for init elsewhere: either way it is not running.
        if state_group_session(escapee).is_none_or(|(state, _, _)| state == 'Z') {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(gone, "{escapee} survived its child through its own session");
    for _ in 0..6_000 {
        if state_group_session(escapee).is_none() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{escapee} was killed but never reaped (a zombie of this host)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sandbox_confines_writes_and_network() {
    assert!(
        capsid_process::bwrap_path().is_some(),
        "bwrap is not installed: install bubblewrap (.ci/run does)"
    );
    let ws = tempfile::tempdir().unwrap();
    // Host files the child must not see: secrets in /etc, system state, root's home.
    for probe in ["/etc/shadow", "/var/lib", "/root"] {
        assert!(
            std::path::Path::new(probe).exists(),
            "{probe} exists on the host (the probe is meaningful)"
        );
    }
    let script = "echo inside > note; touch /etc/capsid-sandbox-test 2>/dev/null && echo etc-writable; \
                  touch /capsid-sandbox-test 2>/dev/null && echo root-writable; \
                  for p in /etc/shadow /var/lib /root; do test -e $p && echo visible $p; done; \
                  tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '";
    let mut spec = sh(ws.path(), script);
    spec.sandbox = capsid_process::Sandbox::Required { network: false };
    let child = Child::spawn(&spec).await.unwrap();
    let (info, out, err) = child.wait_with_output().await;
    assert!(info.unwrap().success(), "{}", String::from_utf8_lossy(&err));
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "lo\n",
        "only loopback, a read-only root, no host secrets or state"
    );
    assert_eq!(
        std::fs::read_to_string(ws.path().join("note")).unwrap(),
        "inside\n"
    );
    assert!(!std::path::Path::new("/etc/capsid-sandbox-test").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_bomb_stays_inside_its_pids_limit() {
    subreaper();
    let ws = tempfile::tempdir().unwrap();
    // A bomb whose processes stay (each waits for the two it forks) until the leader, whose
    // timer was started before the bomb, kills the whole group a second later.
    let mut spec = sh(ws.path(), BOMB);
    spec.limits = ResourceLimits {
        pids: Some(16),
        ..ResourceLimits::default()
    };
    let child = Child::spawn(&spec).await.unwrap();
    let pgid = child.pid();
    let mut largest = 0;
    while child.try_exit().is_none() {
        largest = largest.max(group_members(pgid).len());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(largest > 2, "the bomb never forked");
    assert!(largest <= 16, "{largest} processes despite a limit of 16");
    child
        .wait(Some(Duration::from_mins(1)))
        .await
        .expect("the leader exited");
    assert!(group_gone(pgid).await, "the bomb was killed and reaped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandboxed_program_under_tmp_is_not_hidden_by_the_private_tmp() {
    // The program is mounted after the sandbox's own /tmp, which would otherwise cover it.
    let dir = tempfile::Builder::new().tempdir_in("/tmp").unwrap();
    let program = dir.path().join("copied-true");
    std::fs::copy("/usr/bin/true", &program).unwrap();
    let ws = tempfile::tempdir().unwrap();
    let mut spec = SpawnSpec::new(program.to_str().unwrap(), ws.path());
    spec.sandbox = capsid_process::Sandbox::Required { network: false };
    let child = Child::spawn(&spec).await.unwrap();
    let (info, _, err) = child.wait_with_output().await;
    assert!(info.unwrap().success(), "{}", String::from_utf8_lossy(&err));
}
