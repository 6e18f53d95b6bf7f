//! The overlay: copy-up, whiteouts, merged listings, diff, commit, discard, persistence.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use capsid_vfs::{Change, ChangeKind, EntryKind, OverlayVfs, Vfs, VfsError, VfsPath};

fn p(s: &str) -> VfsPath {
    VfsPath::parse(s).unwrap()
}

struct Fx {
    tmp: tempfile::TempDir,
    vfs: OverlayVfs,
}

impl Fx {
    fn lower(&self, rel: &str) -> std::path::PathBuf {
        self.tmp.path().join("lower").join(rel)
    }
    fn reopen(&self) -> OverlayVfs {
        OverlayVfs::open(
            &self.tmp.path().join("lower"),
            &self.tmp.path().join("work"),
        )
        .unwrap()
    }
}

fn fx() -> Fx {
    let tmp = tempfile::tempdir().unwrap();
    let lower = tmp.path().join("lower");
    std::fs::create_dir_all(lower.join("docs/old")).unwrap();
    std::fs::write(lower.join("docs/a.md"), b"lower a").unwrap();
    std::fs::write(lower.join("docs/old/x"), b"old x").unwrap();
    std::fs::write(lower.join("top"), b"top").unwrap();
    let vfs = OverlayVfs::open(&lower, &tmp.path().join("work")).unwrap();
    Fx { tmp, vfs }
}

fn change(path: &str, kind: ChangeKind, entry: EntryKind) -> Change {
    Change {
        path: p(path),
        kind,
        entry,
    }
}

#[tokio::test]
async fn writes_stay_in_the_upper_layer_until_commit() {
    let f = fx();
    f.vfs
        .append(&p("docs/a.md"), b" + more".to_vec())
        .await
        .unwrap();
    f.vfs
        .write(&p("docs/new.md"), b"new".to_vec())
        .await
        .unwrap();
    assert_eq!(
        f.vfs.read(&p("docs/a.md")).await.unwrap(),
        b"lower a + more"
    );
    assert_eq!(
        std::fs::read(f.lower("docs/a.md")).unwrap(),
        b"lower a",
        "lower untouched"
    );
    assert!(!f.lower("docs/new.md").exists());
    assert_eq!(
        f.vfs.diff().await.unwrap(),
        vec![
            change("docs/a.md", ChangeKind::Modified, EntryKind::File),
            change("docs/new.md", ChangeKind::Added, EntryKind::File)
        ]
    );
    f.vfs.commit().await.unwrap();
    assert_eq!(
        std::fs::read(f.lower("docs/a.md")).unwrap(),
        b"lower a + more"
    );
    assert_eq!(std::fs::read(f.lower("docs/new.md")).unwrap(), b"new");
    assert!(f.vfs.diff().await.unwrap().is_empty());
    assert_eq!(
        std::fs::read_dir(f.tmp.path().join("work/upper"))
            .unwrap()
            .count(),
        0,
        "upper emptied"
    );
}

#[tokio::test]
async fn deleting_a_lower_file_hides_it_and_survives_reopen() {
    let f = fx();
    f.vfs.remove_file(&p("docs/a.md")).await.unwrap();
    assert!(matches!(
        f.vfs.read(&p("docs/a.md")).await,
        Err(VfsError::NotFound(_))
    ));
    let names = |v: Vec<capsid_vfs::DirEntry>| v.into_iter().map(|e| e.name).collect::<Vec<_>>();
    assert_eq!(names(f.vfs.read_dir(&p("docs")).await.unwrap()), ["old"]);
    let again = f.reopen();
    assert!(
        !again.exists(&p("docs/a.md")).await.unwrap(),
        "whiteout persisted"
    );
    assert!(f.lower("docs/a.md").exists());
    again.commit().await.unwrap();
    assert!(!f.lower("docs/a.md").exists());
}

#[tokio::test]
async fn a_recreated_directory_hides_the_old_contents() {
    let f = fx();
    f.vfs.remove_dir_all(&p("docs")).await.unwrap();
    f.vfs.create_dir(&p("docs")).await.unwrap();
    f.vfs.write(&p("docs/fresh"), b"f".to_vec()).await.unwrap();
    let listing: Vec<_> = f
        .vfs
        .read_dir(&p("docs"))
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(listing, ["fresh"]);
    assert!(!f.vfs.exists(&p("docs/old/x")).await.unwrap());
    let diff = f.vfs.diff().await.unwrap();
    assert!(diff.contains(&change("docs/old", ChangeKind::Deleted, EntryKind::Dir)));
    assert!(diff.contains(&change("docs/a.md", ChangeKind::Deleted, EntryKind::File)));
    assert!(diff.contains(&change("docs/fresh", ChangeKind::Added, EntryKind::File)));
    f.vfs.commit().await.unwrap();
    assert!(!f.lower("docs/old").exists());
    assert_eq!(std::fs::read(f.lower("docs/fresh")).unwrap(), b"f");
}

#[tokio::test]
async fn a_file_can_replace_a_deleted_directory() {
    let f = fx();
    f.vfs.remove_dir_all(&p("docs")).await.unwrap();
    f.vfs
        .write(&p("docs"), b"now a file".to_vec())
        .await
        .unwrap();
    assert!(!f.vfs.exists(&p("docs/a.md")).await.unwrap());
    f.vfs.commit().await.unwrap();
    assert_eq!(std::fs::read(f.lower("docs")).unwrap(), b"now a file");
}

#[tokio::test]
async fn discard_drops_everything() {
    let f = fx();
    f.vfs.write(&p("top"), b"changed".to_vec()).await.unwrap();
    f.vfs.remove_dir_all(&p("docs")).await.unwrap();
    f.vfs.discard().await.unwrap();
    assert_eq!(f.vfs.read(&p("top")).await.unwrap(), b"top");
    assert_eq!(f.vfs.read(&p("docs/a.md")).await.unwrap(), b"lower a");
    assert!(f.vfs.diff().await.unwrap().is_empty());
}

#[tokio::test]
async fn copy_up_streams_large_files() {
    let f = fx();
    let big: Vec<u8> = (0..24 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(f.lower("big.bin"), &big).unwrap();
    f.vfs.append(&p("big.bin"), b"!".to_vec()).await.unwrap();
    let read = f.vfs.read(&p("big.bin")).await.unwrap();
    assert_eq!(read.len(), big.len() + 1);
    assert!(read[..big.len()] == big[..] && read[big.len()] == b'!');
}

/// Every file of the merged view with its content.
async fn snapshot(vfs: &OverlayVfs) -> Vec<(String, Option<Vec<u8>>)> {
    let mut out = Vec::new();
    let mut stack = vec![VfsPath::root()];
    while let Some(dir) = stack.pop() {
        for e in vfs.read_dir(&dir).await.unwrap() {
            let path = dir.join(&e.name).unwrap();
            if e.kind == EntryKind::Dir {
                stack.push(path.clone());
                out.push((path.to_string(), None));
            } else {
                out.push((path.to_string(), Some(vfs.read(&path).await.unwrap())));
            }
        }
    }
    out.sort();
    out
}

#[tokio::test]
async fn a_commit_interrupted_anywhere_in_phase_one_changes_nothing_visible() {
    let f = fx();
    f.vfs.write(&p("a.txt"), b"A".to_vec()).await.unwrap();
    f.vfs
        .write(&p("docs/a.md"), b"changed".to_vec())
        .await
        .unwrap();
    f.vfs.remove_file(&p("docs/old/x")).await.unwrap();
    f.vfs.create_dir(&p("b")).await.unwrap();
    f.vfs.write(&p("b/c.txt"), b"C".to_vec()).await.unwrap();
    let intended = snapshot(&f.vfs).await;
    // Commit applies changes to the lower layer one at a time; stop after some of them, as a
    // crash would, by applying those by hand.
    std::fs::write(f.lower("a.txt"), b"A").unwrap();
    std::fs::remove_file(f.lower("docs/old/x")).unwrap();
    std::fs::create_dir(f.lower("b")).unwrap();
    assert_eq!(
        snapshot(&f.vfs).await,
        intended,
        "merged view unchanged mid-commit"
    );
    assert_eq!(snapshot(&f.reopen()).await, intended, "and after a restart");
    f.vfs.commit().await.unwrap();
    assert_eq!(snapshot(&f.vfs).await, intended);
    assert_eq!(std::fs::read(f.lower("b/c.txt")).unwrap(), b"C");
    assert_eq!(std::fs::read(f.lower("docs/a.md")).unwrap(), b"changed");
    assert!(f.vfs.diff().await.unwrap().is_empty());
}

#[tokio::test]
async fn an_open_finishes_a_killed_commit_and_removes_only_its_temporary_files() {
    let f = fx();
    f.vfs
        .write(&p("docs/a.md"), b"changed".to_vec())
        .await
        .unwrap();
    f.vfs.remove_file(&p("top")).await.unwrap();
    let intended = snapshot(&f.vfs).await;
    // As a commit killed while copying docs/a.md down leaves it: its record, its temporary
    // file beside the target, and a file of the user's that only looks alike.
    let prefix = ".capsid-commit-0123456789abcdef-";
    std::fs::write(f.tmp.path().join("work/commit-pending"), prefix).unwrap();
    std::fs::write(f.lower(&format!("docs/{prefix}1f2e")), b"chang").unwrap();
    std::fs::write(f.lower("docs/.capsid-commit-mine"), b"the user's").unwrap();
    std::fs::remove_file(f.lower("top")).unwrap();

    let reopened = f.reopen();
    let recovered: Vec<String> = reopened
        .recovered_commit()
        .iter()
        .map(|c| c.path.to_string())
        .collect();
    assert_eq!(
        recovered,
        ["docs/a.md"],
        "what the open applied, for the audit log"
    );
    assert_eq!(std::fs::read(f.lower("docs/a.md")).unwrap(), b"changed");
    assert!(!f.lower(&format!("docs/{prefix}1f2e")).exists());
    assert_eq!(
        std::fs::read(f.lower("docs/.capsid-commit-mine")).unwrap(),
        b"the user's"
    );
    assert!(!f.tmp.path().join("work/commit-pending").exists());
    let mut expected = intended;
    expected.push((
        "docs/.capsid-commit-mine".into(),
        Some(b"the user's".to_vec()),
    ));
    expected.sort();
    assert_eq!(snapshot(&reopened).await, expected);
    assert!(reopened.diff().await.unwrap().is_empty(), "finished");
}

#[tokio::test]
async fn a_commit_record_that_is_not_ours_is_refused_not_acted_on() {
    let f = fx();
    f.vfs
        .write(&p("docs/a.md"), b"changed".to_vec())
        .await
        .unwrap();
    let pending = f.tmp.path().join("work/commit-pending");
    std::fs::write(&pending, b"docs/").unwrap();
    let err =
        OverlayVfs::open(&f.tmp.path().join("lower"), &f.tmp.path().join("work")).unwrap_err();
    assert!(
        matches!(&err, VfsError::InterruptedCommit { source, .. }
            if matches!(**source, VfsError::State { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("could not be finished"), "{err}");
    assert_eq!(std::fs::read(f.lower("docs/a.md")).unwrap(), b"lower a");
    assert_eq!(std::fs::read(&pending).unwrap(), b"docs/");
}

#[tokio::test]
async fn a_failed_commit_leaves_no_record_for_a_later_open_to_roll_forward() {
    let f = fx();
    f.vfs.write(&p("a.txt"), b"a".to_vec()).await.unwrap();
    f.vfs.write(&p("z.txt"), b"z".to_vec()).await.unwrap();
    // Behind the overlay's back, the upper z.txt becomes a link to a directory: copying it
    // down fails after the commit has begun (a.txt is already down).
    let upper = f.tmp.path().join("work/upper");
    std::fs::remove_file(upper.join("z.txt")).unwrap();
    std::fs::create_dir(upper.join("a-dir")).unwrap();
    std::os::unix::fs::symlink("a-dir", upper.join("z.txt")).unwrap();
    assert!(f.vfs.commit().await.is_err());
    assert_eq!(
        std::fs::read(f.lower("a.txt")).unwrap(),
        b"a",
        "the commit had begun"
    );
    assert!(!f.tmp.path().join("work/commit-pending").exists());
    let leftovers: Vec<_> = std::fs::read_dir(f.lower(""))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with(".capsid-commit-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // A later write, then a restart: nothing is committed that nobody committed.
    f.vfs.write(&p("later"), b"later".to_vec()).await.unwrap();
    let reopened = f.reopen();
    assert!(reopened.recovered_commit().is_empty());
    assert!(!f.lower("later").exists());
}

#[tokio::test]
async fn a_write_never_leaves_its_staging_file_in_the_merged_view() {
    let f = fx();
    f.vfs.write(&p("new"), b"n".to_vec()).await.unwrap();
    // A killed writer's half-filled file stays in the work directory's staging area, which
    // the next open empties.
    let staging = f.tmp.path().join("work/staging");
    std::fs::write(staging.join("0011223344556677"), b"half").unwrap();
    let reopened = f.reopen();
    assert_eq!(std::fs::read_dir(&staging).unwrap().count(), 0);
    let names: Vec<String> = reopened
        .read_dir(&p(""))
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(names, ["docs", "new", "top"]);
}

#[tokio::test]
async fn fs_errors_match_a_real_filesystem() {
    let f = fx();
    assert!(matches!(
        f.vfs.write(&p("nope/x"), b"".to_vec()).await,
        Err(VfsError::NotFound(_))
    ));
    assert!(matches!(
        f.vfs.write(&p("top/x"), b"".to_vec()).await,
        Err(VfsError::NotADirectory(_))
    ));
    assert!(matches!(
        f.vfs.write(&p("docs"), b"".to_vec()).await,
        Err(VfsError::IsADirectory(_))
    ));
    assert!(matches!(
        f.vfs.create_dir(&p("docs")).await,
        Err(VfsError::AlreadyExists(_))
    ));
    assert!(matches!(
        f.vfs.remove_dir(&p("docs")).await,
        Err(VfsError::NotEmpty(_))
    ));
    assert!(matches!(
        f.vfs.remove_file(&p("docs")).await,
        Err(VfsError::IsADirectory(_))
    ));
    assert!(matches!(
        f.vfs.rename(&p("docs"), &p("docs/old/in")).await,
        Err(VfsError::InvalidPath { .. })
    ));
    assert!(matches!(
        f.vfs.remove_dir_all(&p("")).await,
        Err(VfsError::InvalidPath { .. })
    ));
}

#[tokio::test]
async fn a_corrupt_state_file_is_refused_not_reset() {
    let f = fx();
    f.vfs.remove_file(&p("top")).await.unwrap();
    let state = f.tmp.path().join("work/overlay-state.json");
    std::fs::write(&state, b"{ not json").unwrap();
    let err =
        OverlayVfs::open(&f.tmp.path().join("lower"), &f.tmp.path().join("work")).unwrap_err();
    assert!(matches!(err, VfsError::State { .. }), "{err}");
    assert_eq!(std::fs::read(&state).unwrap(), b"{ not json");
}

#[tokio::test]
async fn writes_through_a_lower_symlink_are_refused_and_the_link_survives_commit() {
    let f = fx();
    std::os::unix::fs::symlink("docs", f.lower("docs-link")).unwrap();
    std::os::unix::fs::symlink("top", f.lower("top-link")).unwrap();
    assert_eq!(
        f.vfs.read(&p("docs-link/a.md")).await.unwrap(),
        b"lower a",
        "reads follow in-root links"
    );
    assert!(matches!(
        f.vfs.write(&p("docs-link/new"), b"x".to_vec()).await,
        Err(VfsError::Symlink(_))
    ));
    assert!(matches!(
        f.vfs.append(&p("top-link"), b"x".to_vec()).await,
        Err(VfsError::Symlink(_))
    ));
    assert!(matches!(
        f.vfs.write(&p("top-link"), b"x".to_vec()).await,
        Err(VfsError::Symlink(_))
    ));
    f.vfs.write(&p("docs/b.md"), b"b".to_vec()).await.unwrap();
    f.vfs.commit().await.unwrap();
    assert!(
        std::fs::symlink_metadata(f.lower("docs-link"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(std::fs::read(f.lower("docs-link/b.md")).unwrap(), b"b");
}

#[tokio::test]
async fn commit_refuses_to_delete_entries_nobody_could_see() {
    use std::os::unix::ffi::OsStrExt;
    let f = fx();
    let hidden = f
        .lower("docs/old")
        .join(std::ffi::OsStr::from_bytes(b"bad\xffname"));
    std::fs::write(&hidden, b"x").unwrap();
    f.vfs.remove_dir_all(&p("docs/old")).await.unwrap();
    f.vfs.write(&p("top"), b"changed".to_vec()).await.unwrap();
    assert!(matches!(f.vfs.commit().await, Err(VfsError::Unaddressable(ref d)) if d == "docs/old"));
    assert!(hidden.exists());
    assert_eq!(
        std::fs::read(f.lower("top")).unwrap(),
        b"top",
        "nothing applied"
    );
}

#[tokio::test]
async fn a_work_directory_inside_the_lower_layer_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let lower = tmp.path().join("lower");
    std::fs::create_dir_all(&lower).unwrap();
    let err = OverlayVfs::open(&lower, &lower.join(".capsid")).unwrap_err();
    assert!(matches!(err, VfsError::InvalidPath { .. }), "{err}");
}

#[tokio::test]
async fn a_commit_refuses_to_overwrite_what_changed_behind_the_overlays_back() {
    let f = fx();
    f.vfs
        .append(&p("docs/a.md"), b" + capsule".to_vec())
        .await
        .unwrap();
    f.vfs
        .write(&p("docs/b.md"), b"capsule b".to_vec())
        .await
        .unwrap();
    f.vfs.remove_file(&p("top")).await.unwrap();
    f.vfs
        .write(&p("quiet"), b"nobody else".to_vec())
        .await
        .unwrap();
    assert!(f.vfs.conflicts().await.unwrap().is_empty());
    // Someone edits the workspace directly meanwhile: the file the capsule changed, a file
    // where the capsule added one, the file the capsule deleted.
    std::fs::write(f.lower("docs/a.md"), b"the user's edit").unwrap();
    std::fs::write(f.lower("docs/b.md"), b"the user's b").unwrap();
    std::fs::write(f.lower("top"), b"the user's top").unwrap();
    let expected = vec![p("docs/a.md"), p("docs/b.md"), p("top")];
    assert_eq!(f.vfs.conflicts().await.unwrap(), expected);
    // Remembered across a reopen.
    let again = f.reopen();
    assert_eq!(again.conflicts().await.unwrap(), expected);
    let refused = again.commit().await;
    assert!(
        matches!(&refused, Err(VfsError::Conflicts(paths)) if paths == &["docs/a.md", "docs/b.md", "top"]),
        "{refused:?}"
    );
    let message = refused.unwrap_err().to_string();
    assert!(message.starts_with("3 paths changed"), "{message}");
    // Nothing was written: the user's edits stand, the capsule's changes wait.
    assert_eq!(
        std::fs::read(f.lower("docs/a.md")).unwrap(),
        b"the user's edit"
    );
    assert!(!f.lower("quiet").exists());
    assert_eq!(
        again.read(&p("docs/a.md")).await.unwrap(),
        b"lower a + capsule"
    );
    // Overwriting is a decision the caller makes.
    again.commit_overwriting().await.unwrap();
    assert_eq!(
        std::fs::read(f.lower("docs/a.md")).unwrap(),
        b"lower a + capsule"
    );
    assert_eq!(std::fs::read(f.lower("docs/b.md")).unwrap(), b"capsule b");
    assert!(!f.lower("top").exists());
    assert_eq!(std::fs::read(f.lower("quiet")).unwrap(), b"nobody else");
    // A commit starts the bases afresh.
    again
        .write(&p("docs/a.md"), b"second".to_vec())
        .await
        .unwrap();
    assert!(again.conflicts().await.unwrap().is_empty());
    again.commit().await.unwrap();
}

#[tokio::test]
async fn a_directory_removed_whole_conflicts_with_a_file_changed_inside_it() {
    let f = fx();
    f.vfs.remove_dir_all(&p("docs/old")).await.unwrap();
    std::fs::write(f.lower("docs/old/x"), b"the user's x").unwrap();
    assert_eq!(f.vfs.conflicts().await.unwrap(), vec![p("docs/old/x")]);
    assert!(matches!(f.vfs.commit().await, Err(VfsError::Conflicts(_))));
    assert_eq!(
        std::fs::read(f.lower("docs/old/x")).unwrap(),
        b"the user's x"
    );
    // Discarding drops the capsule's side, and what it remembered.
    f.vfs.discard().await.unwrap();
    assert!(f.vfs.conflicts().await.unwrap().is_empty());
    assert_eq!(f.vfs.read(&p("docs/old/x")).await.unwrap(), b"the user's x");
}

#[tokio::test]
async fn a_bases_line_cut_short_by_a_crash_is_dropped_and_a_bad_one_refused() {
    let f = fx();
    f.vfs
        .write(&p("docs/a.md"), b"capsule".to_vec())
        .await
        .unwrap();
    let bases = f.tmp.path().join("work/overlay-bases.jsonl");
    let whole = std::fs::read(&bases).unwrap();
    assert!(whole.ends_with(b"\n"), "{whole:?}");
    // A crash mid-append leaves a partial last line: dropped, the rest kept.
    let mut torn = whole.clone();
    torn.extend_from_slice(br#"{"path":"top","ba"#);
    std::fs::write(&bases, &torn).unwrap();
    let again = f.reopen();
    std::fs::write(f.lower("docs/a.md"), b"the user's").unwrap();
    assert_eq!(again.conflicts().await.unwrap(), vec![p("docs/a.md")]);
    // A whole line that is not a base is refused, naming the file.
    std::fs::write(&bases, b"{\"path\":\"docs/a.md\"}\n").unwrap();
    let refused = OverlayVfs::open(&f.tmp.path().join("lower"), &f.tmp.path().join("work"));
    assert!(
        matches!(&refused, Err(VfsError::State { path, .. }) if path.ends_with("overlay-bases.jsonl")),
        "{refused:?}"
    );
}

#[tokio::test]
async fn a_planned_commit_applies_exactly_what_was_planned_or_nothing() {
    let f = fx();
    f.vfs
        .write(&p("docs/a.md"), b"planned".to_vec())
        .await
        .unwrap();
    let plan = f.vfs.plan_commit().await.unwrap();
    assert_eq!(
        plan.changes,
        vec![change("docs/a.md", ChangeKind::Modified, EntryKind::File)]
    );
    assert_eq!(
        plan.hashes.get(&p("docs/a.md")),
        Some(&blake3::hash(b"planned").to_hex().to_string())
    );
    assert!(plan.conflicts.is_empty());
    // Written after the plan: the plan no longer describes the overlay.
    f.vfs
        .write(&p("docs/a.md"), b"later".to_vec())
        .await
        .unwrap();
    assert!(matches!(
        f.vfs.commit_plan(plan, false).await,
        Err(VfsError::ChangedSincePlan)
    ));
    assert_eq!(std::fs::read(f.lower("docs/a.md")).unwrap(), b"lower a");
    let plan = f.vfs.plan_commit().await.unwrap();
    assert_eq!(
        f.vfs.commit_plan(plan.clone(), false).await.unwrap(),
        plan.changes
    );
    assert_eq!(std::fs::read(f.lower("docs/a.md")).unwrap(), b"later");
}

#[tokio::test]
async fn a_file_added_inside_a_directory_the_overlay_removed_is_a_conflict() {
    let f = fx();
    f.vfs.remove_dir_all(&p("docs/old")).await.unwrap();
    // Someone adds a file there afterwards: committing the removal would delete it.
    std::fs::write(f.lower("docs/old/new"), b"the user's new").unwrap();
    assert_eq!(f.vfs.conflicts().await.unwrap(), vec![p("docs/old/new")]);
    assert!(matches!(f.vfs.commit().await, Err(VfsError::Conflicts(_))));
    assert_eq!(
        std::fs::read(f.lower("docs/old/new")).unwrap(),
        b"the user's new"
    );
}

#[tokio::test]
async fn removing_a_tree_with_a_link_leading_out_neither_follows_nor_fails() {
    let f = fx();
    std::os::unix::fs::symlink("/etc", f.lower("docs/old/out")).unwrap();
    f.vfs.remove_dir_all(&p("docs/old")).await.unwrap();
    assert!(f.vfs.conflicts().await.unwrap().is_empty());
    f.vfs.commit().await.unwrap();
    assert!(!f.lower("docs/old").exists());
    assert!(std::path::Path::new("/etc/passwd").exists());
}

#[tokio::test]
async fn a_cut_line_is_cut_off_so_the_next_base_is_a_line_of_its_own() {
    let f = fx();
    f.vfs.write(&p("docs/a.md"), b"one".to_vec()).await.unwrap();
    let bases = f.tmp.path().join("work/overlay-bases.jsonl");
    let mut torn = std::fs::read(&bases).unwrap();
    torn.extend_from_slice(br#"{"path":"top""#);
    std::fs::write(&bases, &torn).unwrap();
    let again = f.reopen();
    again.write(&p("top"), b"two".to_vec()).await.unwrap();
    // Opens again: the new line did not land on the cut one.
    let third = f.reopen();
    std::fs::write(f.lower("top"), b"the user's top").unwrap();
    assert_eq!(third.conflicts().await.unwrap(), vec![p("top")]);
}

#[tokio::test]
async fn a_planned_discard_drops_exactly_what_was_planned_or_nothing() {
    let f = fx();
    f.vfs.write(&p("docs/a.md"), b"one".to_vec()).await.unwrap();
    let plan = f.vfs.plan_commit().await.unwrap();
    f.vfs
        .write(&p("docs/c.md"), b"later".to_vec())
        .await
        .unwrap();
    assert!(matches!(
        f.vfs.discard_plan(plan).await,
        Err(VfsError::ChangedSincePlan)
    ));
    assert_eq!(f.vfs.read(&p("docs/c.md")).await.unwrap(), b"later");
    let plan = f.vfs.plan_commit().await.unwrap();
    f.vfs.discard_plan(plan).await.unwrap();
    assert!(f.vfs.diff().await.unwrap().is_empty());
}
