//! An overlay killed with SIGKILL while writing or in the middle of a commit: reopened, its
//! merged view holds every committed generation or the one after it, whole (never a torn
//! file); the lower layer holds whole files only, and the open finishes a commit the kill
//! interrupted, so the lower layer is then the merged view.
//!
//! Runs `CAPSID_CRASH_ROUNDS` rounds (a few by default; `cargo xtask soak crash --rounds N`
//! runs more), each killing the writer at a random moment after a random number of commits.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use capsid_integration_tests::overlay_storm::{FILES, file, generation_of, old};
use capsid_vfs::{OverlayVfs, Vfs, VfsPath};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Rounds when `CAPSID_CRASH_ROUNDS` is unset.
const DEFAULT_ROUNDS: usize = 3;

/// The most commits a round waits for before its random delay.
const MAX_COMMITS_BEFORE_KILL: u64 = 8;

fn rounds() -> usize {
    capsid_integration_tests::crash_rounds(DEFAULT_ROUNDS)
}

/// A random number below `n`, from the clock's nanoseconds (timing varies anyway).
fn random_below(n: u64) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    u64::from(nanos.wrapping_mul(2_654_435_761)) % n
}

/// Every file of the lower layer by name, with its bytes.
fn lower_files(lower: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(lower)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().into_string().unwrap(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

/// The merged view's files by name, with their bytes.
async fn merged_files(overlay: &OverlayVfs) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    for entry in overlay.read_dir(&VfsPath::root()).await.unwrap() {
        let path = VfsPath::parse(&entry.name).unwrap();
        files.insert(entry.name.clone(), overlay.read(&path).await.unwrap());
    }
    files
}

/// Checks that `lower` holds the same files as `merged` (naming the ones that differ, not
/// their bytes).
fn same_files(what: &str, lower: &BTreeMap<String, Vec<u8>>, merged: &BTreeMap<String, Vec<u8>>) {
    let differ: Vec<&String> = lower
        .keys()
        .chain(merged.keys())
        .filter(|n| lower.get(*n) != merged.get(*n))
        .collect();
    assert!(
        differ.is_empty(),
        "{what}: the lower layer differs at {differ:?}"
    );
}

/// Checks that `files` (merged view or lower layer) hold generation `committed` or the next
/// for every file, whole, and that the `old-*` files are those of one of the two.
fn check_generations(what: &str, files: &BTreeMap<String, Vec<u8>>, committed: u64) {
    for i in 0..FILES {
        let name = file(i).unwrap().to_string();
        let bytes = files
            .get(&name)
            .unwrap_or_else(|| panic!("{what}: {name} is missing"));
        let generation = generation_of(bytes, i)
            .unwrap_or_else(|| panic!("{what}: {name} is torn ({} bytes)", bytes.len()));
        assert!(
            generation == committed || generation == committed + 1,
            "{what}: {name} is generation {generation}, {committed} was committed"
        );
    }
    let olds: Vec<u64> = files
        .keys()
        .filter_map(|n| n.strip_prefix("old-")?.parse().ok())
        .collect();
    assert!(
        !olds.is_empty() && olds.iter().all(|g| *g == committed || *g == committed + 1),
        "{what}: old files {olds:?} with {committed} committed"
    );
    assert_eq!(files.len(), FILES + olds.len(), "{what}: stray files");
}

/// Runs the writer on `lower` and `work` and kills it at a random moment (inside a commit in
/// odd rounds); the last generation it said was committed.
fn run_and_kill_writer(lower: &Path, work: &Path, round: usize) -> u64 {
    let mut writer = Command::new(env!("CARGO_BIN_EXE_overlay-commit-storm"))
        .args([&lower, &work])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(writer.stdout.take().unwrap()).lines();
    let wait_for = 1 + random_below(MAX_COMMITS_BEFORE_KILL);
    // Odd rounds aim the kill inside a commit, even ones anywhere in the cycle: a random
    // delay up to the longest commit so far, or up to the longest write-and-commit cycle.
    let aim_at_commit = round % 2 == 1;
    let (mut committed, mut longest_commit, mut longest_cycle) = (0, 0, 0);
    let (mut began, mut committing) = (Instant::now(), Instant::now());
    while committed < wait_for {
        let line = lines.next().expect("the writer ended early").unwrap();
        if line.starts_with("committing ") {
            committing = Instant::now();
            if committed + 1 == wait_for && aim_at_commit {
                break;
            }
        } else {
            committed = line.strip_prefix("committed ").unwrap().parse().unwrap();
            longest_commit = longest_commit.max(committing.elapsed().as_micros());
            longest_cycle = longest_cycle.max(began.elapsed().as_micros());
            began = Instant::now();
        }
    }
    let window = if aim_at_commit {
        longest_commit
    } else {
        longest_cycle
    };
    let window = u64::try_from(window).unwrap().max(1);
    std::thread::sleep(Duration::from_micros(random_below(window)));
    kill(
        Pid::from_raw(i32::try_from(writer.id()).unwrap()),
        Signal::SIGKILL,
    )
    .unwrap();
    // A commit announced after the kill was sent had still returned before it landed.
    for line in lines.map_while(Result::ok) {
        if let Some(n) = line.strip_prefix("committed ") {
            committed = n.parse().unwrap();
        }
    }
    let status = writer.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(Signal::SIGKILL as i32),
        "the writer was killed, not ended by an error of its own: {status}"
    );
    committed
}

#[tokio::test]
async fn a_commit_killed_midway_leaves_whole_files_and_commits_again() {
    let (mut total_commits, mut interrupted_commits, mut killed_mid_copy) = (0, 0, 0);
    for round in 0..rounds() {
        let dir = tempfile::tempdir().unwrap();
        let (lower, work) = (dir.path().join("lower"), dir.path().join("work"));
        std::fs::create_dir(&lower).unwrap();
        let committed = run_and_kill_writer(&lower, &work, round);

        // Killed mid-commit, the lower layer may be half committed (every file whole), with
        // the temporary file of the copy under way beside it.
        let before_open = lower_files(&lower);
        for i in 0..FILES {
            if let Some(bytes) = before_open.get(&file(i).unwrap().to_string()) {
                assert!(
                    generation_of(bytes, i).is_some(),
                    "round {round}: lower file-{i} is torn"
                );
            }
        }
        let pending = work.join("commit-pending").exists();
        interrupted_commits += usize::from(pending);
        killed_mid_copy +=
            usize::from(before_open.keys().any(|n| n.starts_with(".capsid-commit-")));

        let overlay = OverlayVfs::open(&lower, &work).unwrap();
        let merged = merged_files(&overlay).await;
        check_generations(&format!("round {round}: merged"), &merged, committed);
        let lower_after_open = lower_files(&lower);
        if pending {
            same_files(
                &format!("round {round}: the open finished the interrupted commit"),
                &lower_after_open,
                &merged,
            );
        } else if committed == 0 && lower_after_open.is_empty() {
            // Killed before its first commit began (or before it said it had ended: then
            // the lower layer holds generation 1, checked below).
        } else {
            check_generations(
                &format!("round {round}: lower"),
                &lower_after_open,
                committed,
            );
        }
        overlay.commit().await.unwrap();
        same_files(
            &format!("round {round}: committed"),
            &lower_files(&lower),
            &merged,
        );
        same_files(
            &format!("round {round}: merged after the commit"),
            &merged_files(&overlay).await,
            &merged,
        );
        assert!(overlay.diff().await.unwrap().is_empty(), "round {round}");
        total_commits += committed;
    }
    println!(
        "crash suite overlay: {} rounds, {total_commits} commits in all, {interrupted_commits} \
         killed mid-commit ({killed_mid_copy} while copying a file down); no torn file, every \
         merged view whole, every interrupted commit finished by the next open",
        rounds()
    );
}

#[test]
fn the_storm_files_tell_whole_from_torn() {
    use capsid_integration_tests::overlay_storm::content;
    let whole = content(7, 3);
    assert_eq!(generation_of(&whole, 3), Some(7));
    assert_eq!(generation_of(&whole, 4), None, "another file's content");
    assert_eq!(
        generation_of(&whole[..whole.len() - 1], 3),
        None,
        "cut short"
    );
    let mut mixed = whole.clone();
    mixed[40_000..].copy_from_slice(&content(8, 3)[40_000..]);
    assert_eq!(generation_of(&mixed, 3), None, "half of each");
    assert!(old(1).is_ok());
}
