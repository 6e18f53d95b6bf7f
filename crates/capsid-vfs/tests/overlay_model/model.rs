//! The reference the overlay is checked against: a filesystem as a map from path to node,
//! and the two layers (the lower one and the merged view) an overlay should show.

use std::collections::BTreeMap;

use capsid_vfs::{Change, ChangeKind, EntryKind, VfsError, VfsPath};

use super::{Op, PATHS};

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Node {
    Dir,
    File(Vec<u8>),
}

/// The reference: a map from path to node. The root always exists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Model(pub(super) BTreeMap<String, Node>);

/// The model of an overlay: what the lower layer holds and what the merged view shows.
#[derive(Debug, Clone)]
pub(super) struct Layers {
    pub(super) lower: Model,
    pub(super) merged: Model,
}

impl Layers {
    pub(super) fn apply(&mut self, op: &Op) -> Outcome {
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

    pub(super) fn diff(&self) -> Vec<Change> {
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
pub(super) enum Outcome {
    Done,
    Bytes(Vec<u8>),
    Names(Vec<(String, bool)>),
    Flag(bool),
    Changes(Vec<Change>),
    Err(&'static str),
}

pub(super) fn class(e: &VfsError) -> &'static str {
    match e {
        VfsError::NotFound(_) => "not-found",
        VfsError::AlreadyExists(_) => "exists",
        VfsError::IsADirectory(_) => "is-dir",
        VfsError::NotADirectory(_) => "not-dir",
        VfsError::NotEmpty(_) => "not-empty",
        VfsError::InvalidPath { .. } => "invalid",
        VfsError::Conflicts(_) => "conflicts",
        other => panic!("unexpected error {other}"),
    }
}

pub(super) fn parent(p: &str) -> &str {
    p.rsplit_once('/').map_or("", |(a, _)| a)
}

impl Model {
    pub(super) fn get(&self, p: &str) -> Option<&Node> {
        if p.is_empty() {
            Some(&Node::Dir)
        } else {
            self.0.get(p)
        }
    }
    pub(super) fn parent_dir(&self, p: &str) -> Result<(), &'static str> {
        match self.get(parent(p)) {
            Some(Node::Dir) => Ok(()),
            Some(Node::File(_)) => Err("not-dir"),
            None => Err("not-found"),
        }
    }
    pub(super) fn children(&self, p: &str) -> Vec<String> {
        self.0
            .keys()
            .filter(|k| parent(k) == p && !k.is_empty())
            .cloned()
            .collect()
    }
    pub(super) fn remove_tree(&mut self, p: &str) {
        let prefix = format!("{p}/");
        self.0.retain(|k, _| k != p && !k.starts_with(&prefix));
    }
    pub(super) fn apply(&mut self, op: &Op) -> Outcome {
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
            Op::Diff
            | Op::Commit
            | Op::Discard
            | Op::CommitSome(..)
            | Op::DiscardSome(_)
            | Op::LowerWrite(..)
            | Op::LowerRemove(_) => unreachable!("handled by Layers or the runner"),
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
    pub(super) fn mkdir_all(&mut self, target: &str) -> Result<Outcome, &'static str> {
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

    pub(super) fn write(
        &mut self,
        p: &str,
        data: &[u8],
        append: bool,
    ) -> Result<Outcome, &'static str> {
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
    pub(super) fn rename(&mut self, from: &str, to: &str) -> Result<Outcome, &'static str> {
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
