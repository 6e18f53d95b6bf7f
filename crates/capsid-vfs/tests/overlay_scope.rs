//! Committing and discarding some paths of the overlay only: what each takes, what it
//! refuses, and how an open finishes one a kill left half done.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use capsid_vfs::{ChangeKind, OverlayVfs, Vfs, VfsError, VfsPath};

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
    fn work(&self, rel: &str) -> std::path::PathBuf {
        self.tmp.path().join("work").join(rel)
    }
    fn reopen(&self) -> OverlayVfs {
        OverlayVfs::open(
            &self.tmp.path().join("lower"),
            &self.tmp.path().join("work"),
        )
        .unwrap()
    }
    /// The changed paths, as text.
    async fn changed(&self, vfs: &OverlayVfs) -> Vec<String> {
        vfs.diff()
            .await
            .unwrap()
            .iter()
            .map(|c| c.path.to_string())
            .collect()
    }
}

/// A workspace with `docs/a.md`, `docs/old/x` and `top`; the overlay changed `docs/a.md`,
/// removed `top` and made `new/sub/f` and `new/g`.
async fn fx() -> Fx {
    let tmp = tempfile::tempdir().unwrap();
    let lower = tmp.path().join("lower");
    std::fs::create_dir_all(lower.join("docs/old")).unwrap();
    std::fs::write(lower.join("docs/a.md"), b"lower a").unwrap();
    std::fs::write(lower.join("docs/old/x"), b"old x").unwrap();
    std::fs::write(lower.join("top"), b"top").unwrap();
    let vfs = OverlayVfs::open(&lower, &tmp.path().join("work")).unwrap();
    vfs.write(&p("docs/a.md"), b"changed".to_vec())
        .await
        .unwrap();
    vfs.remove_file(&p("top")).await.unwrap();
    vfs.create_dir_all(&p("new/sub")).await.unwrap();
    vfs.write(&p("new/sub/f"), b"F".to_vec()).await.unwrap();
    vfs.write(&p("new/g"), b"G".to_vec()).await.unwrap();
    Fx { tmp, vfs }
}

#[tokio::test]
async fn a_commit_of_one_file_takes_the_folders_above_it_and_leaves_the_rest_waiting() {
    let f = fx().await;
    let plan = f.vfs.plan_commit_of(vec![p("new/sub/f")]).await.unwrap();
    let taken: Vec<(String, ChangeKind)> = plan
        .changes
        .iter()
        .map(|c| (c.path.to_string(), c.kind))
        .collect();
    assert_eq!(
        taken,
        [
            ("new".to_owned(), ChangeKind::Added),
            ("new/sub".to_owned(), ChangeKind::Added),
            ("new/sub/f".to_owned(), ChangeKind::Added),
        ]
    );
    f.vfs.commit_plan(plan, false).await.unwrap();
    assert_eq!(std::fs::read(f.lower("new/sub/f")).unwrap(), b"F");
    assert!(!f.lower("new/g").exists());
    assert_eq!(std::fs::read(f.lower("docs/a.md")).unwrap(), b"lower a");
    assert!(f.lower("top").exists());
    assert_eq!(f.changed(&f.vfs).await, ["docs/a.md", "new/g", "top"]);
    assert_eq!(f.changed(&f.reopen()).await, ["docs/a.md", "new/g", "top"]);
}

#[tokio::test]
async fn what_was_committed_is_the_workspaces_again() {
    let f = fx().await;
    let plan = f.vfs.plan_commit_of(vec![p("docs/a.md")]).await.unwrap();
    f.vfs.commit_plan(plan, false).await.unwrap();
    assert_eq!(std::fs::read(f.lower("docs/a.md")).unwrap(), b"changed");
    // The workspace edits it, then removes the folder: the merged view follows, with no
    // copy or empty folder of the overlay's left to hide either.
    std::fs::write(f.lower("docs/a.md"), b"edited by hand").unwrap();
    assert_eq!(
        f.vfs.read(&p("docs/a.md")).await.unwrap(),
        b"edited by hand"
    );
    std::fs::remove_dir_all(f.lower("docs")).unwrap();
    assert!(!f.vfs.exists(&p("docs")).await.unwrap());
    assert_eq!(
        f.changed(&f.vfs).await,
        ["new", "new/g", "new/sub", "new/sub/f", "top"]
    );
}

#[tokio::test]
async fn a_discard_of_some_paths_brings_back_the_workspaces_copy_there_only() {
    let f = fx().await;
    let plan = f
        .vfs
        .plan_discard_of(vec![p("docs"), p("top"), p("new/g")])
        .await
        .unwrap();
    f.vfs.discard_plan(plan).await.unwrap();
    assert_eq!(f.vfs.read(&p("docs/a.md")).await.unwrap(), b"lower a");
    assert_eq!(f.vfs.read(&p("top")).await.unwrap(), b"top");
    assert!(!f.vfs.exists(&p("new/g")).await.unwrap());
    assert_eq!(f.vfs.read(&p("new/sub/f")).await.unwrap(), b"F");
    assert_eq!(f.changed(&f.vfs).await, ["new", "new/sub", "new/sub/f"]);
    // Nothing of the overlay's is left at a discarded path: a later workspace edit shows.
    std::fs::write(f.lower("top"), b"top, edited").unwrap();
    assert_eq!(f.vfs.read(&p("top")).await.unwrap(), b"top, edited");
    assert_eq!(
        f.changed(&f.reopen()).await,
        ["new", "new/sub", "new/sub/f"]
    );
}

#[tokio::test]
async fn a_path_inside_a_replaced_folder_or_with_no_change_is_refused_naming_it() {
    let f = fx().await;
    f.vfs.remove_dir_all(&p("docs")).await.unwrap();
    f.vfs.create_dir(&p("docs")).await.unwrap();
    f.vfs.write(&p("docs/n.md"), b"n".to_vec()).await.unwrap();
    for refused in [
        f.vfs.plan_commit_of(vec![p("docs/n.md")]).await,
        f.vfs.plan_discard_of(vec![p("docs/old/x")]).await,
    ] {
        let e = refused.unwrap_err();
        assert!(
            matches!(&e, VfsError::ReplacedAbove { dir, .. } if dir == "docs"),
            "{e}"
        );
        assert!(e.to_string().contains("name docs instead"), "{e}");
    }
    let e = f
        .vfs
        .plan_commit_of(vec![p("new/sub/missing")])
        .await
        .unwrap_err();
    assert!(
        matches!(&e, VfsError::Unchanged(path) if path == "new/sub/missing"),
        "{e}"
    );
    let e = f
        .vfs
        .plan_discard_of(vec![p("elsewhere")])
        .await
        .unwrap_err();
    assert!(matches!(e, VfsError::Unchanged(_)), "{e}");
    // The folder itself goes whole.
    let plan = f.vfs.plan_discard_of(vec![p("docs")]).await.unwrap();
    f.vfs.discard_plan(plan).await.unwrap();
    assert_eq!(f.vfs.read(&p("docs/old/x")).await.unwrap(), b"old x");
    assert!(!f.vfs.exists(&p("docs/n.md")).await.unwrap());
}

#[tokio::test]
async fn a_conflict_outside_the_scope_does_not_refuse_it() {
    let f = fx().await;
    std::fs::write(f.lower("top"), b"top, edited by hand").unwrap();
    let e = f.vfs.plan_commit().await.unwrap().conflicts;
    assert_eq!(e, [p("top")]);
    let plan = f.vfs.plan_commit_of(vec![p("docs")]).await.unwrap();
    assert!(plan.conflicts.is_empty());
    f.vfs.commit_plan(plan, false).await.unwrap();
    let plan = f.vfs.plan_commit_of(vec![p("top")]).await.unwrap();
    assert_eq!(plan.conflicts, [p("top")]);
    assert!(matches!(
        f.vfs.commit_plan(plan, false).await,
        Err(VfsError::Conflicts(_))
    ));
    assert_eq!(
        std::fs::read(f.lower("top")).unwrap(),
        b"top, edited by hand"
    );
}

#[tokio::test]
async fn an_open_finishes_a_killed_commit_of_some_paths_and_nothing_else() {
    let f = fx().await;
    let intended = f.changed(&f.vfs).await;
    // As a commit of `docs` and `top` killed before it copied anything leaves it.
    std::fs::write(
        f.work("commit-pending"),
        ".capsid-commit-0123456789abcdef-\ndocs\ntop",
    )
    .unwrap();
    let reopened = f.reopen();
    let recovered: Vec<String> = reopened
        .recovered_commit()
        .iter()
        .map(|c| c.path.to_string())
        .collect();
    assert_eq!(recovered, ["docs/a.md", "top"]);
    assert_eq!(std::fs::read(f.lower("docs/a.md")).unwrap(), b"changed");
    assert!(!f.lower("top").exists());
    assert!(!f.lower("new").exists(), "outside the recorded paths");
    assert_eq!(
        f.changed(&reopened).await,
        intended
            .iter()
            .filter(|p| p.starts_with("new"))
            .cloned()
            .collect::<Vec<_>>()
    );
    assert!(!f.work("commit-pending").exists());
}

#[tokio::test]
async fn an_open_finishes_a_killed_discard_of_some_paths() {
    let f = fx().await;
    std::fs::write(f.work("discard-pending"), "docs\nnew/g").unwrap();
    let reopened = f.reopen();
    assert_eq!(reopened.read(&p("docs/a.md")).await.unwrap(), b"lower a");
    assert!(!reopened.exists(&p("new/g")).await.unwrap());
    assert_eq!(
        f.changed(&reopened).await,
        ["new", "new/sub", "new/sub/f", "top"]
    );
    assert!(!f.work("discard-pending").exists());
    // A record naming something that is not a workspace path is refused, not acted on.
    std::fs::write(f.work("discard-pending"), "../etc").unwrap();
    let e = OverlayVfs::open(&f.tmp.path().join("lower"), &f.tmp.path().join("work")).unwrap_err();
    assert!(matches!(e, VfsError::State { .. }), "{e}");
}

/// Makes the overlay's next save of its markers fail (a directory with something in it
/// where the state file goes: no rename replaces that, even for root); what to put back.
fn break_marker_saves(f: &Fx) -> Vec<u8> {
    let state = f.work("overlay-state.json");
    let saved = std::fs::read(&state).unwrap();
    std::fs::remove_file(&state).unwrap();
    std::fs::create_dir_all(state.join("in-the-way")).unwrap();
    saved
}

fn mend_marker_saves(f: &Fx, saved: &[u8]) {
    let state = f.work("overlay-state.json");
    std::fs::remove_dir_all(&state).unwrap();
    std::fs::write(&state, saved).unwrap();
}

#[tokio::test]
async fn a_discard_that_fails_part_way_stops_the_overlay_until_an_open_finishes_it() {
    let f = fx().await;
    let plan = f
        .vfs
        .plan_discard_of(vec![p("top"), p("docs")])
        .await
        .unwrap();
    let saved = break_marker_saves(&f);
    let e = f.vfs.discard_plan(plan).await.unwrap_err();
    assert!(
        matches!(
            e,
            VfsError::Unfinished {
                what: "discard",
                ..
            }
        ),
        "{e}"
    );
    // Nothing more may be written that the open would then drop.
    let refused = f.vfs.write(&p("docs/later.md"), b"x".to_vec()).await;
    assert!(
        matches!(refused, Err(VfsError::Unfinished { .. })),
        "{refused:?}"
    );
    assert!(matches!(
        f.vfs.diff().await,
        Err(VfsError::Unfinished { .. })
    ));
    mend_marker_saves(&f, &saved);
    let reopened = f.reopen();
    assert_eq!(
        reopened.recovered_discard(),
        Some(&[p("docs"), p("top")][..])
    );
    assert_eq!(reopened.read(&p("top")).await.unwrap(), b"top");
    assert_eq!(reopened.read(&p("docs/a.md")).await.unwrap(), b"lower a");
    assert_eq!(
        f.changed(&reopened).await,
        ["new", "new/g", "new/sub", "new/sub/f"]
    );
}

#[tokio::test]
async fn a_commit_that_fails_after_the_workspace_holds_it_is_finished_not_abandoned() {
    let f = fx().await;
    let plan = f.vfs.plan_commit_of(vec![p("top")]).await.unwrap();
    let saved = break_marker_saves(&f);
    let e = f.vfs.commit_plan(plan, false).await.unwrap_err();
    assert!(
        matches!(e, VfsError::Unfinished { what: "commit", .. }),
        "{e}"
    );
    assert!(!f.lower("top").exists(), "the workspace holds the commit");
    assert!(matches!(
        f.vfs.write(&p("new/h"), b"h".to_vec()).await,
        Err(VfsError::Unfinished { .. })
    ));
    mend_marker_saves(&f, &saved);
    let reopened = f.reopen();
    assert!(!f.work("commit-pending").exists());
    // Finished with nothing left to apply, and still reported, for the log.
    assert_eq!(reopened.recovered_commit_scope(), Some(&[p("top")][..]));
    assert!(reopened.recovered_commit().is_empty());
    assert!(!reopened.exists(&p("top")).await.unwrap());
    // Nothing of the overlay's is left at `top`: the workspace's new file shows.
    std::fs::write(f.lower("top"), b"new top").unwrap();
    assert_eq!(reopened.read(&p("top")).await.unwrap(), b"new top");
    assert_eq!(
        f.changed(&reopened).await,
        ["docs/a.md", "new", "new/g", "new/sub", "new/sub/f"]
    );
}
