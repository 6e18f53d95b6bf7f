//! Random operation sequences run against the overlay and against a plain in-memory model
//! of a filesystem must agree, op by op, before and after commit.
//!
//! Commits and discards of some paths, and edits made to the lower layer behind the
//! overlay's back, are checked by what they must do to the two trees, whatever the overlay
//! keeps inside: a commit of a scope leaves the merged view as it was and makes the lower
//! layer equal it at and below the scope (creating the folders above); a discard leaves the
//! lower layer as it was and makes the merged view equal it there; an edit behind the back
//! changes the merged view at most on the edited path, below it and above it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use capsid_vfs::{Change, ChangeKind, EntryKind, OverlayVfs, Vfs, VfsError, VfsPath};
use proptest::prelude::*;

#[path = "overlay_model/model.rs"]
mod model;
use model::{Layers, Model, Node, Outcome, class, parent};

const PATHS: &[&str] = &["a", "b", "a/x", "a/y", "b/x", "a/x/z", "c", "c/d"];

#[derive(Debug, Clone)]
enum Op {
    Write(usize, u8),
    Append(usize, u8),
    Mkdir(usize),
    RemoveFile(usize),
    RemoveDir(usize),
    RemoveDirAll(usize),
    Rename(usize, usize),
    Read(usize),
    List(usize),
    MkdirAll(usize),
    Exists(usize),
    Diff,
    Commit,
    Discard,
    /// Commit at or below these paths ([`Harness::scope`]), overwriting conflicts or not.
    CommitSome(Vec<usize>, bool),
    /// Discard at or below these paths ([`Harness::scope`]).
    DiscardSome(Vec<usize>),
    /// Write a file straight into the lower layer (with the folders it needs).
    LowerWrite(usize, u8),
    /// Remove a file or folder straight from the lower layer.
    LowerRemove(usize),
}

fn op() -> impl Strategy<Value = Op> {
    let i = 0..PATHS.len();
    prop_oneof![
        (i.clone(), any::<u8>()).prop_map(|(p, b)| Op::Write(p, b)),
        (i.clone(), any::<u8>()).prop_map(|(p, b)| Op::Append(p, b)),
        i.clone().prop_map(Op::Mkdir),
        i.clone().prop_map(Op::RemoveFile),
        i.clone().prop_map(Op::RemoveDir),
        i.clone().prop_map(Op::RemoveDirAll),
        (i.clone(), i.clone()).prop_map(|(a, b)| Op::Rename(a, b)),
        i.clone().prop_map(Op::Read),
        i.clone().prop_map(Op::List),
        i.clone().prop_map(Op::MkdirAll),
        i.clone().prop_map(Op::Exists),
        Just(Op::Diff),
        Just(Op::Commit),
        Just(Op::Discard),
        (
            prop::collection::vec(0..4 * PATHS.len(), 1..3),
            any::<bool>()
        )
            .prop_map(|(s, overwrite)| Op::CommitSome(s, overwrite)),
        prop::collection::vec(0..4 * PATHS.len(), 1..3).prop_map(Op::DiscardSome),
        (i.clone(), any::<u8>()).prop_map(|(p, b)| Op::LowerWrite(p, b)),
        i.prop_map(Op::LowerRemove),
    ]
}

async fn run(vfs: &OverlayVfs, op: &Op) -> Outcome {
    let p = |i: &usize| VfsPath::parse(PATHS[*i]).unwrap();
    let done =
        |r: Result<(), VfsError>| r.map_or_else(|e| Outcome::Err(class(&e)), |()| Outcome::Done);
    match op {
        Op::Write(i, b) => done(vfs.write(&p(i), vec![*b]).await),
        Op::Append(i, b) => done(vfs.append(&p(i), vec![*b]).await),
        Op::Mkdir(i) => done(vfs.create_dir(&p(i)).await),
        Op::RemoveFile(i) => done(vfs.remove_file(&p(i)).await),
        Op::RemoveDir(i) => done(vfs.remove_dir(&p(i)).await),
        Op::RemoveDirAll(i) => done(vfs.remove_dir_all(&p(i)).await),
        Op::Rename(a, b) => done(vfs.rename(&p(a), &p(b)).await),
        Op::Read(i) => vfs
            .read(&p(i))
            .await
            .map_or_else(|e| Outcome::Err(class(&e)), Outcome::Bytes),
        Op::List(i) => vfs.read_dir(&p(i)).await.map_or_else(
            |e| Outcome::Err(class(&e)),
            |v| {
                Outcome::Names(
                    v.into_iter()
                        .map(|e| (e.name, e.kind == EntryKind::Dir))
                        .collect(),
                )
            },
        ),
        Op::MkdirAll(i) => done(vfs.create_dir_all(&p(i)).await),
        Op::Exists(i) => vfs
            .exists(&p(i))
            .await
            .map_or_else(|e| Outcome::Err(class(&e)), Outcome::Flag),
        Op::Diff => vfs
            .diff()
            .await
            .map_or_else(|e| Outcome::Err(class(&e)), Outcome::Changes),
        Op::Commit => vfs
            .commit()
            .await
            .map_or_else(|e| Outcome::Err(class(&e)), Outcome::Changes),
        Op::Discard => done(vfs.discard().await),
        Op::CommitSome(..) | Op::DiscardSome(_) | Op::LowerWrite(..) | Op::LowerRemove(_) => {
            unreachable!("checked by their properties")
        }
    }
}

/// The model's picture of a host directory tree.
fn host_tree(root: &std::path::Path) -> Model {
    let mut m = Model::default();
    let mut stack = vec![String::new()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(root.join(&dir)).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().into_string().unwrap();
            let rel = if dir.is_empty() {
                name
            } else {
                format!("{dir}/{name}")
            };
            if e.file_type().unwrap().is_dir() {
                m.0.insert(rel.clone(), Node::Dir);
                stack.push(rel);
            } else {
                m.0.insert(rel, Node::File(std::fs::read(e.path()).unwrap()));
            }
        }
    }
    m
}

/// The merged view, read through the overlay.
async fn merged_tree(vfs: &OverlayVfs) -> Model {
    let mut m = Model::default();
    let mut stack = vec![VfsPath::root()];
    while let Some(dir) = stack.pop() {
        for e in vfs.read_dir(&dir).await.unwrap() {
            let p = dir.join(&e.name).unwrap();
            if e.kind == EntryKind::Dir {
                m.0.insert(p.to_string(), Node::Dir);
                stack.push(p);
            } else {
                m.0.insert(p.to_string(), Node::File(vfs.read(&p).await.unwrap()));
            }
        }
    }
    m
}

/// Whether `k` is at or below one of `scope`.
fn under(k: &str, scope: &[&str]) -> bool {
    scope
        .iter()
        .any(|s| k == *s || k.starts_with(&format!("{s}/")))
}

/// Whether `a` lies strictly above `p`.
fn above(a: &str, p: &str) -> bool {
    p.starts_with(&format!("{a}/"))
}

/// How many scoped commits and discards went through, and were refused, over all cases:
/// the properties mean little unless both happen often.
static SCOPED_DONE: AtomicUsize = AtomicUsize::new(0);
static SCOPED_REFUSED: AtomicUsize = AtomicUsize::new(0);
static SCOPED_REPLACED: AtomicUsize = AtomicUsize::new(0);

/// Edits the lower layer behind the overlay's back (a write that a file in the way
/// prevents, or a removal of nothing, does nothing).
fn edit_lower(lower: &Path, op: &Op) {
    match op {
        Op::LowerWrite(i, b) => {
            let p = lower.join(PATHS[*i]);
            if p.is_dir() || std::fs::create_dir_all(p.parent().unwrap()).is_err() {
                return;
            }
            std::fs::write(&p, [*b]).unwrap();
        }
        Op::LowerRemove(i) => {
            let p = lower.join(PATHS[*i]);
            match std::fs::symlink_metadata(&p) {
                Ok(m) if m.is_dir() => std::fs::remove_dir_all(&p).unwrap(),
                Ok(_) => std::fs::remove_file(&p).unwrap(),
                Err(_) => {}
            }
        }
        other => unreachable!("{other:?} is not an edit of the lower layer"),
    }
}

/// The overlay and the real lower layer, checked against the model.
struct Harness<'a> {
    vfs: OverlayVfs,
    lower: &'a Path,
    model: Layers,
    /// Paths the overlay was asked to remove (or move away): only there can it have
    /// replaced a folder.
    removed: std::collections::BTreeSet<String>,
    /// Whether the lower layer was edited behind the overlay's back since the last whole
    /// commit or discard: only then may a commit meet conflicts.
    lower_edited: bool,
}

impl Harness<'_> {
    /// Both trees are what the model says.
    async fn agrees(&self, what: &str) -> Result<(), TestCaseError> {
        prop_assert_eq!(
            &host_tree(self.lower),
            &self.model.lower,
            "lower after {}",
            what
        );
        prop_assert_eq!(
            &merged_tree(&self.vfs).await,
            &self.model.merged,
            "merged after {}",
            what
        );
        Ok(())
    }

    /// A refusal of a scoped commit or discard is one of the two it may give, for a path
    /// of the scope, and changes nothing.
    async fn refused(&self, e: &VfsError, scope: &[&str], what: &str) -> Result<(), TestCaseError> {
        SCOPED_REFUSED.fetch_add(1, Ordering::Relaxed);
        match e {
            VfsError::Unchanged(p) => {
                prop_assert!(scope.contains(&p.as_str()), "{}: {}", what, e);
                let changes = self.model.diff();
                prop_assert!(
                    !changes.iter().any(|c| under(&c.path.to_string(), &[p])),
                    "{}: {} has changes",
                    what,
                    p
                );
            }
            VfsError::ReplacedAbove { path, dir } => {
                SCOPED_REPLACED.fetch_add(1, Ordering::Relaxed);
                prop_assert!(
                    scope.contains(&path.as_str()) && above(dir, path),
                    "{}: {}",
                    what,
                    e
                );
                let deleted_there = self
                    .model
                    .diff()
                    .iter()
                    .any(|c| c.path.to_string() == *dir && c.kind == ChangeKind::Deleted);
                prop_assert!(
                    self.removed.contains(dir) || deleted_there,
                    "{}: {} was never removed nor replaced",
                    what,
                    dir
                );
            }
            other => prop_assert!(false, "{}: unexpected {}", what, other),
        }
        self.agrees(what).await
    }

    /// The paths `idx` picks: below `PATHS.len()` one of [`PATHS`], above it (three times
    /// in four) one of the paths that differ now, so that scopes often hold changes.
    fn scope(&self, idx: &[usize]) -> Vec<String> {
        let changed = self.model.diff();
        idx.iter()
            .map(|&i| match i.checked_sub(PATHS.len()) {
                Some(k) if !changed.is_empty() => changed[k % changed.len()].path.to_string(),
                Some(k) => PATHS[k % PATHS.len()].to_owned(),
                None => PATHS[i].to_owned(),
            })
            .collect()
    }

    /// After a commit or discard of `scope`, the overlay holds nothing there: an edit of
    /// the workspace at a scope path shows at once. Each path is probed (a file rewritten, a
    /// folder given a file, a file made where there is none inside a folder both layers
    /// show), then put back.
    async fn probe(&self, scope: &[&str], what: &str) -> Result<(), TestCaseError> {
        for s in scope {
            let host = self.lower.join(s);
            let (probed, at) = match std::fs::symlink_metadata(&host) {
                Ok(m) if m.is_dir() => (host.join("probe"), format!("{s}/probe")),
                Ok(_) => (host.clone(), (*s).to_owned()),
                Err(_) => {
                    let folder = parent(s);
                    let shown = |m: &Model| m.get(folder) == Some(&Node::Dir);
                    if !shown(&self.model.lower) || !shown(&self.model.merged) {
                        continue;
                    }
                    (host.clone(), (*s).to_owned())
                }
            };
            let old = std::fs::read(&probed).ok();
            std::fs::write(&probed, b"probe").unwrap();
            let seen = self.vfs.read(&VfsPath::parse(&at).unwrap()).await;
            match old {
                Some(old) => std::fs::write(&probed, old).unwrap(),
                None => std::fs::remove_file(&probed).unwrap(),
            }
            prop_assert_eq!(
                seen.ok(),
                Some(b"probe".to_vec()),
                "{}: the workspace's edit at {} is hidden",
                what,
                at
            );
        }
        Ok(())
    }

    async fn commit_some(
        &mut self,
        idx: &[usize],
        overwrite: bool,
        what: &str,
    ) -> Result<(), TestCaseError> {
        let owned = self.scope(idx);
        let scope: Vec<&str> = owned.iter().map(String::as_str).collect();
        let parsed = scope.iter().map(|p| VfsPath::parse(p).unwrap()).collect();
        let plan = match self.vfs.plan_commit_of(parsed).await {
            Ok(plan) => plan,
            Err(e) => return self.refused(&e, &scope, what).await,
        };
        let (merged, lower) = (&self.model.merged, &self.model.lower);
        let takes = |c: &Change| {
            let p = c.path.to_string();
            under(&p, &scope)
                || (c.kind == ChangeKind::Added
                    && c.entry == EntryKind::Dir
                    && scope.iter().any(|s| above(&p, s)))
        };
        let expected: Vec<Change> = self.model.diff().into_iter().filter(takes).collect();
        let had_conflicts = !plan.conflicts.is_empty();
        prop_assert!(
            plan.conflicts
                .iter()
                .all(|p| expected.iter().any(|c| c.path == *p)),
            "{}: conflicts {:?} outside what it commits",
            what,
            plan.conflicts
        );
        let applied = self.vfs.commit_plan(plan, overwrite).await;
        if let Err(VfsError::Conflicts(_)) = &applied {
            prop_assert!(
                !overwrite && had_conflicts && self.lower_edited,
                "{}: conflicts without an edit behind the overlay's back",
                what
            );
            SCOPED_REFUSED.fetch_add(1, Ordering::Relaxed);
            return self.agrees(what).await;
        }
        prop_assert_eq!(
            applied.as_ref().ok(),
            Some(&expected),
            "{}: {:?}",
            what,
            applied
        );
        // The lower layer: as it was outside the scope, the merged view's at and below it,
        // and the folders above it that the merged view has.
        let mut now = lower.clone();
        now.0.retain(|k, _| !under(k, &scope));
        for (k, node) in &merged.0 {
            let folder_above = *node == Node::Dir && scope.iter().any(|s| above(k, s));
            if under(k, &scope) || folder_above {
                now.0.insert(k.clone(), node.clone());
            }
        }
        self.model.lower = now;
        SCOPED_DONE.fetch_add(1, Ordering::Relaxed);
        self.agrees(what).await?;
        self.probe(&scope, what).await
    }

    async fn discard_some(&mut self, idx: &[usize], what: &str) -> Result<(), TestCaseError> {
        let owned = self.scope(idx);
        let scope: Vec<&str> = owned.iter().map(String::as_str).collect();
        let parsed = scope.iter().map(|p| VfsPath::parse(p).unwrap()).collect();
        let plan = match self.vfs.plan_discard_of(parsed).await {
            Ok(plan) => plan,
            Err(e) => return self.refused(&e, &scope, what).await,
        };
        let expected: Vec<Change> = self
            .model
            .diff()
            .into_iter()
            .filter(|c| under(&c.path.to_string(), &scope))
            .collect();
        prop_assert_eq!(&plan.changes, &expected, "{}", what);
        let dropped = self.vfs.discard_plan(plan).await;
        prop_assert!(dropped.is_ok(), "{}: {:?}", what, dropped);
        // The merged view: as it was outside the scope, the lower layer's at and below it.
        let (merged, lower) = (&mut self.model.merged, &self.model.lower);
        merged.0.retain(|k, _| !under(k, &scope));
        for (k, node) in &lower.0 {
            if under(k, &scope) {
                merged.0.insert(k.clone(), node.clone());
            }
        }
        SCOPED_DONE.fetch_add(1, Ordering::Relaxed);
        self.agrees(what).await?;
        self.probe(&scope, what).await
    }

    /// An edit of the lower layer changes the merged view at most on the edited path, below
    /// it and above it; the model then takes both trees as they are.
    async fn lower_edit(&mut self, op: &Op, what: &str) -> Result<(), TestCaseError> {
        edit_lower(self.lower, op);
        let (Op::LowerWrite(i, _) | Op::LowerRemove(i)) = op else {
            unreachable!()
        };
        let edited = PATHS[*i];
        let now = merged_tree(&self.vfs).await;
        let before = &self.model.merged;
        for k in before.0.keys().chain(now.0.keys()) {
            if before.0.get(k) != now.0.get(k) {
                prop_assert!(
                    under(k, &[edited]) || above(k, edited),
                    "{}: the merged view changed at {}",
                    what,
                    k
                );
            }
        }
        self.model.merged = now;
        self.model.lower = host_tree(self.lower);
        Ok(())
    }

    async fn step(&mut self, n: usize, op: &Op) -> Result<(), TestCaseError> {
        let what = format!("op #{n} {op:?}");
        match op {
            Op::CommitSome(idx, overwrite) => {
                return self.commit_some(idx, *overwrite, &what).await;
            }
            Op::DiscardSome(idx) => return self.discard_some(idx, &what).await,
            Op::LowerWrite(..) | Op::LowerRemove(_) => {
                self.lower_edited = true;
                return self.lower_edit(op, &what).await;
            }
            Op::RemoveFile(i) | Op::RemoveDir(i) | Op::RemoveDirAll(i) | Op::Rename(i, _) => {
                self.removed.insert(PATHS[*i].to_owned());
            }
            _ => {}
        }
        let mut next = self.model.clone();
        let expected = next.apply(op);
        let got = run(&self.vfs, op).await;
        if got == Outcome::Err("conflicts") {
            // Only an edit behind the overlay's back makes one; the commit changed nothing.
            prop_assert!(
                self.lower_edited,
                "{}: conflicts without an edit of the lower layer",
                what
            );
            return self.agrees(&what).await;
        }
        prop_assert_eq!(&got, &expected, "{}", what);
        self.model = next;
        if matches!(op, Op::Commit | Op::Discard) {
            self.lower_edited = false;
        }
        // The lower layer changes only by commit, and then to exactly the merged view.
        prop_assert_eq!(
            &host_tree(self.lower),
            &self.model.lower,
            "lower after {}",
            what
        );
        Ok(())
    }
}

fn check(ops: &[Op]) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let tmp = tempfile::tempdir().unwrap();
        let lower = tmp.path().join("lower");
        std::fs::create_dir_all(lower.join("a/x")).unwrap();
        std::fs::write(lower.join("a/y"), b"ly").unwrap();
        std::fs::write(lower.join("b"), b"lb").unwrap();
        let start = host_tree(&lower);
        let mut h = Harness {
            vfs: OverlayVfs::open(&lower, &tmp.path().join("work")).unwrap(),
            lower: &lower,
            model: Layers {
                lower: start.clone(),
                merged: start,
            },
            removed: std::collections::BTreeSet::new(),
            lower_edited: false,
        };
        for (n, op) in ops.iter().enumerate() {
            h.step(n, op).await?;
        }
        // A restart sees the same merged view (markers are persisted).
        h.vfs = OverlayVfs::open(&lower, &tmp.path().join("work")).unwrap();
        h.agrees("reopening").await?;
        let expected = h.model.diff();
        let committed = h.vfs.commit_overwriting().await;
        prop_assert_eq!(committed.ok(), Some(expected), "the final commit");
        h.model.lower = h.model.merged.clone();
        h.agrees("the final commit").await?;
        prop_assert_eq!(run(&h.vfs, &Op::Diff).await, Outcome::Changes(Vec::new()));
        Ok(())
    })
}

#[test]
fn overlay_agrees_with_the_model() {
    let config = ProptestConfig {
        cases: 1000,
        source_file: Some(file!()),
        ..ProptestConfig::default()
    };
    let mut runner = proptest::test_runner::TestRunner::new(config);
    let ops = prop::collection::vec(op(), 1..25);
    if let Err(e) = runner.run(&ops, |ops| check(&ops)) {
        panic!("{e}");
    }
    let (done, refused) = (
        SCOPED_DONE.load(Ordering::Relaxed),
        SCOPED_REFUSED.load(Ordering::Relaxed),
    );
    assert!(
        done >= 150 && refused >= 50,
        "too few scoped commits and discards to mean much: {done} done, {refused} refused, {} inside a replaced folder",
        SCOPED_REPLACED.load(Ordering::Relaxed)
    );
}
