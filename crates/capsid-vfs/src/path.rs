//! Clean relative paths.

use std::fmt;
use std::path::PathBuf;

use capsid_core::limits::{MAX_RESOURCE_SEGMENTS, MAX_SEGMENT_BYTES};

use crate::error::VfsError;

/// A relative path inside a VFS root: segments that are non-empty, not `.` or `..`, and free
/// of `/`, NUL and control characters. The empty path is the root itself.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct VfsPath(Vec<String>);

impl VfsPath {
    /// The root.
    pub fn root() -> Self {
        Self(Vec::new())
    }

    /// Parses `a/b/c`; `""` is the root. Absolute paths, `..`, `.`, doubled or trailing
    /// slashes, NUL and control characters are refused.
    pub fn parse(input: &str) -> Result<Self, VfsError> {
        let bad = |reason| VfsError::InvalidPath {
            path: input
                .chars()
                .flat_map(char::escape_debug)
                .take(200)
                .collect(),
            reason,
        };
        if input.is_empty() {
            return Ok(Self::root());
        }
        if input.starts_with('/') {
            return Err(bad("absolute paths are not allowed"));
        }
        let segments: Vec<&str> = input.split('/').collect();
        if segments.len() > MAX_RESOURCE_SEGMENTS {
            return Err(bad("too deep"));
        }
        for s in &segments {
            match *s {
                "" => return Err(bad("empty segment (doubled or trailing '/')")),
                "." | ".." => return Err(bad("'.' and '..' are not allowed")),
                s if s.len() > MAX_SEGMENT_BYTES => return Err(bad("segment too long")),
                s if s.chars().any(char::is_control) => {
                    return Err(bad("control characters are not allowed"));
                }
                _ => {}
            }
        }
        Ok(Self(segments.into_iter().map(str::to_owned).collect()))
    }

    /// Whether this is the root.
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// The segments.
    pub fn segments(&self) -> &[String] {
        &self.0
    }

    /// The parent; the root's parent is `None`.
    pub fn parent(&self) -> Option<Self> {
        (!self.0.is_empty()).then(|| Self(self.0[..self.0.len() - 1].to_vec()))
    }

    /// The last segment.
    pub fn name(&self) -> Option<&str> {
        self.0.last().map(String::as_str)
    }

    /// This path with `name` appended (`name` must be a valid single segment).
    pub fn join(&self, name: &str) -> Result<Self, VfsError> {
        let child = Self::parse(name)?;
        if child.0.len() != 1 {
            return Err(VfsError::InvalidPath {
                path: name.to_owned(),
                reason: "expected a single name",
            });
        }
        let mut out = self.0.clone();
        out.extend(child.0);
        Ok(Self(out))
    }

    /// Whether `self` is `other` or lies below it.
    pub fn starts_with(&self, other: &Self) -> bool {
        self.0.starts_with(&other.0)
    }

    /// Every proper ancestor, root first, then `self`.
    pub fn ancestors_and_self(&self) -> impl Iterator<Item = VfsPath> + '_ {
        (0..=self.0.len()).map(|n| Self(self.0[..n].to_vec()))
    }

    /// The host-relative path (`.` for the root).
    pub(crate) fn to_host(&self) -> PathBuf {
        if self.0.is_empty() {
            PathBuf::from(".")
        } else {
            self.0.iter().collect()
        }
    }
}

impl fmt::Display for VfsPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join("/"))
    }
}

impl fmt::Debug for VfsPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VfsPath({:?})", self.0.join("/"))
    }
}

impl serde::Serialize for VfsPath {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for VfsPath {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_clean_relative_paths_parse() {
        for good in ["a", "a/b.md", "notes/2026/x y", "ünï"] {
            assert_eq!(VfsPath::parse(good).unwrap().to_string(), good);
        }
        for bad in [
            "/etc/passwd",
            "a/../b",
            "..",
            ".",
            "./a",
            "a//b",
            "a/",
            "a\0b",
            "a\nb",
        ] {
            assert!(VfsPath::parse(bad).is_err(), "{bad:?}");
        }
        assert!(VfsPath::parse("").unwrap().is_root());
    }
}
