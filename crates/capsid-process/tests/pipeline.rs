//! Real pipelines: the bytes a shell pipeline gives, end policies, a stage refused, the shared
//! pids limit, taps, and nothing left behind.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::naive_bytecount)]

use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::Duration;

use capsid_core::limits::LINK_PIPE_BYTES;
use capsid_process::{
    Child, EndPolicy, Pipeline, PipelineSpec, ProcessError, ResourceLimits, SpawnSpec,
};

fn stage(workspace: &Path, program: &str, args: &[&str]) -> SpawnSpec {
    SpawnSpec::new(program, workspace).args(args.iter().copied())
}

fn sh(workspace: &Path, script: &str) -> SpawnSpec {
    stage(workspace, "sh", &["-c", script])
}

fn pipeline(stages: Vec<SpawnSpec>, end: EndPolicy) -> PipelineSpec {
    PipelineSpec {
        stages,
        pids: None,
        end,
        grace: Duration::from_secs(2),
        taps: Vec::new(),
    }
}

/// Pids of the processes running `argv` (its program by name or resolved path).
fn running(argv: &[&str]) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let words: Vec<String> = cmdline
            .split(|&b| b == 0)
            .filter(|w| !w.is_empty())
            .map(|w| String::from_utf8_lossy(w).into_owned())
            .collect();
        let program = words.first().map(|p| p.rsplit('/').next().unwrap_or(p));
        if words.len() == argv.len() && program == Some(argv[0]) && words[1..] == argv[1..] {
            out.push(pid);
        }
    }
    out
}

/// Waits up to a minute for no process to run `argv`.
async fn none_running(argv: &[&str]) -> bool {
    for _ in 0..6_000 {
        if running(argv).is_empty() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_stages_give_the_bytes_a_shell_pipeline_gives() {
    let ws = tempfile::tempdir().unwrap();
    let w = ws.path();
    let spec = pipeline(
        vec![
            stage(w, "seq", &["1", "20000"]),
            stage(w, "grep", &["7"]),
            stage(w, "sort", &["-r"]),
        ],
        EndPolicy::LastStage,
    );
    let piped = Pipeline::spawn(&spec).await.unwrap();
    let out = piped.wait_with_output().await;
    let shell = Child::spawn(&sh(w, "seq 1 20000 | grep 7 | sort -r"))
        .await
        .unwrap();
    let (exit, expected, _) = shell.wait_with_output().await;
    assert!(exit.unwrap().success());
    assert!(
        expected.len() > 10_000,
        "the shell's pipeline gave {} bytes",
        expected.len()
    );
    assert_eq!(out.stdout, expected);
    assert!(
        out.exits.iter().all(|e| e.is_some_and(|e| e.success())),
        "{:?}",
        out.exits
    );
    let seq_bytes: u64 = (1..=20_000u64)
        .map(|n| n.to_string().len() as u64 + 1)
        .sum();
    let sevens: u64 = (1..=20_000u64)
        .map(|n| n.to_string())
        .filter(|s| s.contains('7'))
        .map(|s| s.len() as u64 + 1)
        .sum();
    assert_eq!(piped.links()[0].bytes(), seq_bytes, "bytes through link 0");
    assert_eq!(piped.links()[1].bytes(), sevens, "bytes through link 1");
    assert!(piped.links().iter().all(|l| l.has_ended()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_stage_reads_what_is_written_to_the_pipeline() {
    let ws = tempfile::tempdir().unwrap();
    let mut first = stage(ws.path(), "cat", &[]);
    first.stdin = true;
    let spec = pipeline(
        vec![first, stage(ws.path(), "tr", &["a-z", "A-Z"])],
        EndPolicy::LastStage,
    );
    let piped = Pipeline::spawn(&spec).await.unwrap();
    piped.first().write_stdin(b"hello, ").await.unwrap();
    piped.first().write_stdin(b"pipeline\n").await.unwrap();
    piped.first().close_stdin().await;
    let out = piped.wait_with_output().await;
    assert_eq!(out.stdout, b"HELLO, PIPELINE\n");
}

/// A first stage that writes forever, a middle one that reads a line and fails with 3.
fn failing_middle(w: &Path, last: SpawnSpec, end: EndPolicy) -> PipelineSpec {
    pipeline(
        vec![
            sh(w, "while :; do echo x; sleep 0.01; done"),
            sh(w, "read line; echo middle failed >&2; exit 3"),
            last,
        ],
        end,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_middle_stage_under_each_end_policy() {
    let ws = tempfile::tempdir().unwrap();
    let w = ws.path();

    // Any failure ends it: the last stage, which would sleep, is stopped with SIGTERM.
    let spec = failing_middle(w, sh(w, "cat >/dev/null; sleep 30"), EndPolicy::AnyFailure);
    let piped = Pipeline::spawn(&spec).await.unwrap();
    let exits = piped
        .wait(Some(Duration::from_secs(20)))
        .await
        .expect("it ended");
    assert_eq!(exits[1].code, Some(3));
    assert_eq!(exits[2].signal, Some(libc::SIGTERM), "{exits:?}");
    assert!(
        exits[0].signal.is_some(),
        "the first stage was stopped: {exits:?}"
    );
    let out = piped.wait_with_output().await;
    assert_eq!(out.stderr[1], b"middle failed\n");

    // The last stage's exit ends it: that stage sees the end of its input and finishes.
    let spec = failing_middle(w, sh(w, "cat >/dev/null; echo done"), EndPolicy::LastStage);
    let piped = Pipeline::spawn(&spec).await.unwrap();
    let exits = piped
        .wait(Some(Duration::from_secs(20)))
        .await
        .expect("it ended");
    assert_eq!(exits[1].code, Some(3));
    assert!(exits[2].success(), "{exits:?}");
    // Writing into a link whose reader is gone, or stopped by the end.
    assert!(
        [Some(libc::SIGPIPE), Some(libc::SIGTERM)].contains(&exits[0].signal),
        "{exits:?}"
    );
    assert_eq!(piped.wait_with_output().await.stdout, b"done\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_that_cannot_start_refuses_the_whole_pipeline() {
    let ws = tempfile::tempdir().unwrap();
    let w = ws.path();
    let first = ["sleep", "1000.4242"];
    let spec = pipeline(
        vec![
            stage(w, first[0], &first[1..]),
            stage(w, "capsid-no-such-program", &[]),
        ],
        EndPolicy::LastStage,
    );
    let refused = Pipeline::spawn(&spec).await;
    assert!(
        matches!(refused, Err(ProcessError::ProgramNotFound(ref p)) if p == "capsid-no-such-program"),
        "{refused:?}"
    );
    assert!(none_running(&first).await, "the started stage was killed");

    let mut limited = stage(w, "cat", &[]);
    limited.limits = ResourceLimits {
        pids: Some(4),
        ..ResourceLimits::default()
    };
    let spec = pipeline(vec![stage(w, "true", &[]), limited], EndPolicy::LastStage);
    assert!(matches!(
        Pipeline::spawn(&spec).await,
        Err(ProcessError::Invalid(m)) if m.contains("stage 1 sets a pids limit")
    ));
    let spec = pipeline(Vec::new(), EndPolicy::LastStage);
    assert!(matches!(
        Pipeline::spawn(&spec).await,
        Err(ProcessError::Invalid(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_bomb_in_one_stage_is_held_by_the_shared_pids_limit() {
    capsid_process::become_subreaper().unwrap();
    assert!(
        capsid_process::pids_limit_available(),
        "this test needs a writable cgroup pids controller (/sys/fs/cgroup/pids or cgroup v2)"
    );
    let ws = tempfile::tempdir().unwrap();
    let w = ws.path();
    // Starts sleepers, a line each, until a fork fails (which ends the shell); once the
    // last stage is in.
    let script = "while [ ! -e ready ]; do sleep 0.01; done; \
                  for i in $(seq 40); do sleep 30 & echo $i; done";
    let mut spec = pipeline(
        vec![
            stage(w, "sleep", &["30"]),
            sh(w, script),
            // Made by the shell itself: a `touch` could still be alive, holding a task of
            // the limit, when the starter sees the file.
            sh(w, ": > ready; exec cat"),
        ],
        EndPolicy::LastStage,
    );
    spec.pids = Some(16);
    let piped = Pipeline::spawn(&spec).await.unwrap();
    let starter_exit = piped.stages()[1]
        .wait(Some(Duration::from_mins(1)))
        .await
        .expect("the starter stopped");
    assert!(
        !starter_exit.success(),
        "a fork past the limit failed the stage"
    );
    // Its lines go down the link to the last stage (the sleepers hold the link open): wait
    // for the 13 expected, then a moment more in case any more come.
    let lines = || {
        let kept = piped.last().stdout().read_since(0, usize::MAX).bytes;
        kept.iter().filter(|&&b| b == b'\n').count()
    };
    for _ in 0..1_000 {
        if lines() >= 13 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = lines();
    // 16 tasks in all: the three stages' own (`sleep`, `sh`, `cat`), and 13 sleepers.
    assert_eq!(started, 13, "sleepers started under a limit of 16");
    piped.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tapped_link_keeps_its_last_bytes() {
    let ws = tempfile::tempdir().unwrap();
    let w = ws.path();
    let mut spec = pipeline(
        vec![stage(w, "seq", &["1", "100000"]), stage(w, "wc", &["-l"])],
        EndPolicy::LastStage,
    );
    spec.taps = vec![Some(4096)];
    let piped = Pipeline::spawn(&spec).await.unwrap();
    let out = piped.wait_with_output().await;
    assert_eq!(String::from_utf8(out.stdout).unwrap().trim(), "100000");
    let tap = piped.links()[0].tap().expect("tapped");
    let kept = tap.drain(usize::MAX);
    assert_eq!(kept.len(), 4096);
    assert!(kept.ends_with(b"99999\n100000\n"));
    assert_eq!(tap.dropped(), piped.links()[0].bytes() - 4096);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_pipeline_kills_every_stage() {
    let ws = tempfile::tempdir().unwrap();
    let w = ws.path();
    let (first, second) = (["sleep", "1000.5151"], ["sleep", "1000.6161"]);
    let spec = pipeline(
        vec![
            stage(w, first[0], &first[1..]),
            stage(w, "cat", &[]),
            stage(w, second[0], &second[1..]),
        ],
        EndPolicy::LastStage,
    );
    let piped = Pipeline::spawn(&spec).await.unwrap();
    assert!(piped.wait(Some(Duration::from_millis(200))).await.is_none());
    assert!(!running(&first).is_empty() && !running(&second).is_empty());
    drop(piped);
    assert!(none_running(&first).await && none_running(&second).await);
}

/// The scheduling policy of every thread of this process named `name` (field 41 of its
/// `stat`, after the parenthesised command name).
fn thread_policies(name: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let path = task.path();
        let Ok(comm) = std::fs::read_to_string(path.join("comm")) else {
            continue;
        };
        if comm.trim() != name {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(path.join("stat")) else {
            continue;
        };
        let after_name = &stat[stat.rfind(')').unwrap() + 2..];
        // Fields from the third (state) on; the policy is the 41st field.
        out.push(after_name.split(' ').nth(41 - 3).unwrap().parse().unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_yields_to_its_stages_and_writes_into_a_grown_pipe() {
    let ws = tempfile::tempdir().unwrap();
    let w = ws.path();
    let spec = pipeline(
        vec![stage(w, "sleep", &["1000.7171"]), stage(w, "cat", &[])],
        EndPolicy::LastStage,
    );
    let piped = Pipeline::spawn(&spec).await.unwrap();
    let batch = u32::try_from(libc::SCHED_BATCH).unwrap();
    // The next stage's stdin, opened again through /proc: the same pipe, asked its size.
    let cat = piped.stages()[1].pid();
    let stdin = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
        .open(format!("/proc/{cat}/fd/0"))
        .unwrap();
    let pipe_size = || {
        let size = nix::fcntl::fcntl(&stdin, nix::fcntl::FcntlArg::F_GETPIPE_SZ).unwrap();
        usize::try_from(size).unwrap()
    };
    // The link's thread names itself, then sets its policy, then grows the pipe.
    let (mut policies, mut size) = (Vec::new(), 0);
    for _ in 0..500 {
        policies = thread_policies("capsid-link");
        size = pipe_size();
        if size == LINK_PIPE_BYTES && !policies.is_empty() && policies.iter().all(|&p| p == batch) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!policies.is_empty(), "no link thread found");
    assert!(
        policies.iter().all(|&p| p == batch),
        "link threads under policies {policies:?}, not SCHED_BATCH"
    );
    assert_eq!(size, LINK_PIPE_BYTES);
    piped.kill().await;
}
