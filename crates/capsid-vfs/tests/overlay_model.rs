//! Random operation sequences run against the overlay and against a plain in-memory model
//! of a filesystem must agree, op by op, before and after commit.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use capsid_vfs::{Change, ChangeKind, EntryKind, OverlayVfs, Vfs, VfsError, VfsPath};
use proptest::prelude::*;

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
        i.prop_map(Op::Exists),
        Just(Op::Diff),
        Just(Op::Commit),
        Just(Op::Discard),
    ]
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    Dir,
    File(Vec<u8>),
}

/// The reference: a map from path to node. The root always exists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Model(BTreeMap<String, Node>);

/// The model of an overlay: what the lower layer holds and what the merged view shows.
#[derive(Debug, Clone)]
struct Layers {
    lower: Model,
    merged: Model,
}

impl Layers {
    fn apply(&mut self, op: &Op) -> Outcome {
        match op {
            Op::Commit => {
                let changes = self.diff();
                self.lower = self.merged.clone();
                Outcome::Changes(changes)
            }
            Op::Discard => {
                self.merged = self.lower.clone();
                Outcome::Done
            }
            Op::Diff => Outcome::Changes(self.diff()),
            other => self.merged.apply(other),
        }
    }

    fn diff(&self) -> Vec<Change> {
        let kind = |n: &Node| {
            if *n == Node::Dir {
                EntryKind::Dir
            } else {
                EntryKind::File
            }
        };
        let change = |p: &str, kind, entry| Change {
            path: VfsPath::parse(p).unwrap(),
            kind,
            entry,
        };
        let mut out = Vec::new();
        for (p, n) in &self.lower.0 {
            match self.merged.0.get(p) {
                Some(m) if kind(m) == kind(n) => {
                    if m != n {
                        out.push(change(p, ChangeKind::Modified, kind(n)));
                    }
                }
                _ => out.push(change(p, ChangeKind::Deleted, kind(n))),
            }
        }
        for (p, m) in &self.merged.0 {
            if self.lower.0.get(p).is_none_or(|n| kind(n) != kind(m)) {
                out.push(change(p, ChangeKind::Added, kind(m)));
            }
        }
        out.sort();
        out
    }
}

/// What an operation returned, errors reduced to their kind.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Done,
    Bytes(Vec<u8>),
    Names(Vec<(String, bool)>),
    Flag(bool),
    Changes(Vec<Change>),
    Err(&'static str),
}

fn class(e: &VfsError) -> &'static str {
    match e {
        VfsError::NotFound(_) => "not-found",
        VfsError::AlreadyExists(_) => "exists",
        VfsError::IsADirectory(_) => "is-dir",
        VfsError::NotADirectory(_) => "not-dir",
        VfsError::NotEmpty(_) => "not-empty",
        VfsError::InvalidPath { .. } => "invalid",
        other => panic!("unexpected error {other}"),
    }
}

fn parent(p: &str) -> &str {
    p.rsplit_once('/').map_or("", |(a, _)| a)
}

impl Model {
    fn get(&self, p: &str) -> Option<&Node> {
        if p.is_empty() {
            Some(&Node::Dir)
        } else {
            self.0.get(p)
        }
    }
    fn parent_dir(&self, p: &str) -> Result<(), &'static str> {
        match self.get(parent(p)) {
            Some(Node::Dir) => Ok(()),
            Some(Node::File(_)) => Err("not-dir"),
            None => Err("not-found"),
        }
    }
    fn children(&self, p: &str) -> Vec<String> {
        self.0
            .keys()
            .filter(|k| parent(k) == p && !k.is_empty())
            .cloned()
            .collect()
    }
    fn remove_tree(&mut self, p: &str) {
        let prefix = format!("{p}/");
        self.0.retain(|k, _| k != p && !k.starts_with(&prefix));
    }
    fn apply(&mut self, op: &Op) -> Outcome {
        let r = match op {
            Op::Write(i, b) => self.write(PATHS[*i], &[*b], false),
            Op::Append(i, b) => self.write(PATHS[*i], &[*b], true),
            Op::Mkdir(i) => {
                let p = PATHS[*i];
                self.parent_dir(p).and_then(|()| {
                    if self.get(p).is_some() {
                        return Err("exists");
                    }
                    self.0.insert(p.into(), Node::Dir);
                    Ok(Outcome::Done)
                })
            }
            Op::RemoveFile(i) => {
                let p = PATHS[*i];
                match self.get(p) {
                    None => Err("not-found"),
                    Some(Node::Dir) => Err("is-dir"),
                    Some(Node::File(_)) => {
                        self.0.remove(p);
                        Ok(Outcome::Done)
                    }
                }
            }
            Op::RemoveDir(i) | Op::RemoveDirAll(i) => {
                let p = PATHS[*i];
                match self.get(p) {
                    None => Err("not-found"),
                    Some(Node::File(_)) => Err("not-dir"),
                    Some(Node::Dir)
                        if matches!(op, Op::RemoveDir(_)) && !self.children(p).is_empty() =>
                    {
                        Err("not-empty")
                    }
                    Some(Node::Dir) => {
                        self.remove_tree(p);
                        Ok(Outcome::Done)
                    }
                }
            }
            Op::Rename(a, b) => self.rename(PATHS[*a], PATHS[*b]),
            Op::MkdirAll(i) => self.mkdir_all(PATHS[*i]),
            Op::Exists(i) => Ok(Outcome::Flag(self.get(PATHS[*i]).is_some())),
            Op::Diff | Op::Commit | Op::Discard => unreachable!("handled by Layers"),
            Op::Read(i) => match self.get(PATHS[*i]) {
                None => Err("not-found"),
                Some(Node::Dir) => Err("is-dir"),
                Some(Node::File(d)) => Ok(Outcome::Bytes(d.clone())),
            },
            Op::List(i) => {
                let p = PATHS[*i];
                match self.get(p) {
                    None => Err("not-found"),
                    Some(Node::File(_)) => Err("not-dir"),
                    Some(Node::Dir) => Ok(Outcome::Names(
                        self.children(p)
                            .into_iter()
                            .map(|c| {
                                (
                                    c.rsplit('/').next().unwrap().to_owned(),
                                    self.0[&c] == Node::Dir,
                                )
                            })
                            .collect(),
                    )),
                }
            }
        };
        r.unwrap_or_else(Outcome::Err)
    }
    fn mkdir_all(&mut self, target: &str) -> Result<Outcome, &'static str> {
        let mut prefix = String::new();
        for seg in target.split('/') {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(seg);
            match self.get(&prefix) {
                Some(Node::Dir) => {}
                Some(Node::File(_)) => return Err("not-dir"),
                None => {
                    self.0.insert(prefix.clone(), Node::Dir);
                }
            }
        }
        Ok(Outcome::Done)
    }

    fn write(&mut self, p: &str, data: &[u8], append: bool) -> Result<Outcome, &'static str> {
        match self.get(p) {
            Some(Node::Dir) => return Err("is-dir"),
            Some(Node::File(old)) if append => {
                let mut d = old.clone();
                d.extend_from_slice(data);
                self.0.insert(p.into(), Node::File(d));
                return Ok(Outcome::Done);
            }
            _ => {}
        }
        self.parent_dir(p)?;
        self.0.insert(p.into(), Node::File(data.to_vec()));
        Ok(Outcome::Done)
    }
    fn rename(&mut self, from: &str, to: &str) -> Result<Outcome, &'static str> {
        let node = self.get(from).cloned().ok_or("not-found")?;
        if from == to {
            return Ok(Outcome::Done);
        }
        if to.starts_with(&format!("{from}/")) {
            return Err("invalid");
        }
        self.parent_dir(to)?;
        match (&node, self.get(to)) {
            (_, Some(Node::Dir)) => return Err("exists"),
            (Node::Dir, Some(_)) => return Err("not-dir"),
            _ => {}
        }
        let prefix = format!("{from}/");
        let moved: Vec<(String, Node)> = self
            .0
            .iter()
            .filter(|(k, _)| k.starts_with(&prefix))
            .map(|(k, v)| (format!("{to}/{}", &k[prefix.len()..]), v.clone()))
            .collect();
        self.remove_tree(from);
        self.0.insert(to.into(), node);
        self.0.extend(moved);
        Ok(Outcome::Done)
    }
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
        let mut model = Layers {
            lower: start.clone(),
            merged: start,
        };
        let vfs = OverlayVfs::open(&lower, &tmp.path().join("work")).unwrap();
        for (n, op) in ops.iter().enumerate() {
            let expected = model.apply(op);
            let got = run(&vfs, op).await;
            prop_assert_eq!(&got, &expected, "op #{} {:?}", n, op);
            // The lower layer changes only by commit, and then to exactly the merged view.
            prop_assert_eq!(
                &host_tree(&lower),
                &model.lower,
                "lower layer after op #{} {:?}",
                n,
                op
            );
        }
        // A restart sees the same merged view (markers are persisted).
        let reopened = OverlayVfs::open(&lower, &tmp.path().join("work")).unwrap();
        for i in 0..PATHS.len() {
            prop_assert_eq!(
                run(&reopened, &Op::Read(i)).await,
                model.clone().apply(&Op::Read(i))
            );
            prop_assert_eq!(
                run(&reopened, &Op::List(i)).await,
                model.clone().apply(&Op::List(i))
            );
        }
        prop_assert_eq!(run(&reopened, &Op::Commit).await, model.apply(&Op::Commit));
        prop_assert_eq!(
            &host_tree(&lower),
            &model.lower,
            "lower after the final commit"
        );
        prop_assert_eq!(
            run(&reopened, &Op::Diff).await,
            Outcome::Changes(Vec::new())
        );
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn overlay_agrees_with_the_model(ops in prop::collection::vec(op(), 1..25)) {
        check(&ops)?;
    }
}
