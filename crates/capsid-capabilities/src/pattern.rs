//! Resources (`fs://workspace/notes/a.md`) and the patterns that grant them
//! (`fs://workspace/notes/**`).
//!
//! Both are `scheme://authority[/segment]*`. Parsing is strict and nothing is ever decoded:
//! a segment must be non-empty, not `.` or `..`, and free of NUL, control characters, `%` and
//! `\`. In patterns, `*` inside a segment (or the authority) matches any run of characters
//! within it, and a segment that is exactly `**` matches any number of whole segments,
//! including none. Resources may not contain `*`.

use std::fmt;

use capsid_core::glob::{glob_bytes, wildcard};
use capsid_core::limits::{MAX_RESOURCE_BYTES, MAX_RESOURCE_SEGMENTS, MAX_SEGMENT_BYTES};

use crate::error::{ParseError, show};

/// Schemes capsid knows.
const SCHEMES: &[&str] = &["fs", "process", "ipc", "kv", "tool", "net"];

/// A concrete resource a capsule asks to act on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Resource {
    scheme: String,
    authority: String,
    segments: Vec<String>,
}

/// One segment of a pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Segment {
    Literal(String),
    Glob(String),
    AnyDepth,
}

/// A grantable set of resources.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Pattern {
    scheme: String,
    authority: String,
    segments: Vec<Segment>,
    text: String,
}

struct Parts<'a> {
    scheme: &'a str,
    authority: &'a str,
    segments: Vec<&'a str>,
}

fn split<'a>(what: &'static str, input: &'a str) -> Result<Parts<'a>, ParseError> {
    // Only a `tool://` pattern's authority (the capsule) may glob (`tool://*/*`): in other
    // schemes the authority is the kind of grant (`process://exec` against `exec-path`),
    // which a glob must not blur.
    let glob = what == "pattern" && input.starts_with("tool://");
    let err = |reason| ParseError {
        what,
        shown: show(input),
        reason,
    };
    if input.len() > MAX_RESOURCE_BYTES {
        return Err(err("too long"));
    }
    let (scheme, rest) = input
        .split_once("://")
        .ok_or_else(|| err("expected scheme://authority/path"))?;
    if !SCHEMES.contains(&scheme) {
        return Err(err("unknown scheme (fs, process, ipc, kv, tool, net)"));
    }
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
        None => (rest, None),
    };
    if authority.is_empty()
        || authority.contains("**")
        || !authority.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || (glob && b == b'*')
        })
    {
        return Err(err(if glob {
            "authority must be lowercase letters, digits, '-' and single '*'"
        } else {
            "authority must be lowercase letters, digits and '-'"
        }));
    }
    let segments: Vec<&str> = path.map(|p| p.split('/').collect()).unwrap_or_default();
    if segments.len() > MAX_RESOURCE_SEGMENTS {
        return Err(err("too many segments"));
    }
    for seg in &segments {
        let reason = match *seg {
            "" => Some("empty segment (doubled or trailing '/')"),
            "." | ".." => Some("'.' and '..' segments are not allowed"),
            s if s.len() > MAX_SEGMENT_BYTES => Some("segment too long"),
            s if s.chars().any(char::is_control) => Some("control characters are not allowed"),
            s if s.contains('%') => Some("'%' is not allowed (nothing is percent-decoded)"),
            s if s.contains('\\') => Some("'\\' is not allowed"),
            _ => None,
        };
        if let Some(reason) = reason {
            return Err(err(reason));
        }
    }
    Ok(Parts {
        scheme,
        authority,
        segments,
    })
}

impl Resource {
    /// Parses a resource URI.
    pub fn parse(input: &str) -> Result<Self, ParseError> {
        let parts = split("resource", input)?;
        if parts.segments.iter().any(|s| s.contains('*')) {
            return Err(ParseError {
                what: "resource",
                shown: show(input),
                reason: "'*' is not allowed in a resource",
            });
        }
        Ok(Self {
            scheme: parts.scheme.to_owned(),
            authority: parts.authority.to_owned(),
            segments: parts.segments.into_iter().map(str::to_owned).collect(),
        })
    }

    /// The scheme (`fs`, `process`, `ipc`, `kv`).
    pub fn scheme(&self) -> &str {
        &self.scheme
    }

    /// The authority (`workspace`, `exec`, `publish`, ...).
    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// The path segments.
    pub fn segments(&self) -> &[String] {
        &self.segments
    }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme, self.authority)?;
        for s in &self.segments {
            write!(f, "/{s}")?;
        }
        Ok(())
    }
}

impl Pattern {
    /// Parses a pattern URI.
    pub fn parse(input: &str) -> Result<Self, ParseError> {
        let parts = split("pattern", input)?;
        let mut segments = Vec::with_capacity(parts.segments.len());
        for seg in parts.segments {
            segments.push(match seg {
                "**" => Segment::AnyDepth,
                s if s.contains("**") => {
                    return Err(ParseError {
                        what: "pattern",
                        shown: show(input),
                        reason: "'**' must be a whole segment",
                    });
                }
                s if s.contains('*') => Segment::Glob(s.to_owned()),
                s => Segment::Literal(s.to_owned()),
            });
        }
        Ok(Self {
            scheme: parts.scheme.to_owned(),
            authority: parts.authority.to_owned(),
            segments,
            text: input.to_owned(),
        })
    }

    /// Whether `resource` is one of the resources this pattern grants.
    pub fn matches(&self, resource: &Resource) -> bool {
        self.scheme == resource.scheme
            && glob_bytes(self.authority.as_bytes(), resource.authority.as_bytes())
            && wildcard(
                &self.segments,
                &resource.segments,
                |p| *p == Segment::AnyDepth,
                |p, r| match p {
                    Segment::Literal(l) => l == r,
                    Segment::Glob(g) => glob_bytes(g.as_bytes(), r.as_bytes()),
                    Segment::AnyDepth => false,
                },
            )
    }

    /// Path segment `index` (0 is the first after the authority) when it is written out
    /// with no glob: `Some("127.0.0.1")` for segment 0 of `net://http/127.0.0.1/8080`.
    pub fn literal_segment(&self, index: usize) -> Option<&str> {
        match self.segments.get(index)? {
            Segment::Literal(l) => Some(l),
            Segment::Glob(_) | Segment::AnyDepth => None,
        }
    }

    /// The pattern's text, exactly as parsed (it is canonical: parsing never rewrites).
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, r: &str) -> bool {
        Pattern::parse(p)
            .unwrap()
            .matches(&Resource::parse(r).unwrap())
    }

    #[test]
    fn a_tool_pattern_may_glob_its_capsule_but_a_resource_may_not() {
        assert!(m("tool://*/*", "tool://counter/get"));
        assert!(m("tool://counter/*", "tool://counter/get"));
        assert!(!m("tool://counter/*", "tool://hello/greet"));
        assert!(m("tool://count*/get", "tool://counter/get"));
        assert!(!m("tool://*/get", "tool://counter/increment"));
        assert!(Resource::parse("tool://*/get").is_err());
        assert!(Pattern::parse("tool://**/get").is_err());
        assert!(Pattern::parse("tool://Counter/get").is_err());
    }

    #[test]
    fn net_patterns_glob_within_the_host_and_never_across_schemes() {
        assert!(m(
            "net://https/*.example.com/8443",
            "net://https/api.example.com/8443"
        ));
        assert!(!m(
            "net://https/*.example.com/8443",
            "net://https/example.com/8443"
        ));
        assert!(!m(
            "net://https/*.example.com/8443",
            "net://http/api.example.com/8443"
        ));
        assert!(!m(
            "net://https/*.example.com/8443",
            "net://https/api.example.com/443"
        ));
        assert!(m("net://http/localhost/*", "net://http/localhost/8080"));
        assert!(Pattern::parse("net://*/example.com/443").is_err());
        let p = Pattern::parse("net://http/127.0.0.1/*").unwrap();
        assert_eq!(p.literal_segment(0), Some("127.0.0.1"));
        assert_eq!(p.literal_segment(1), None);
        assert_eq!(
            Pattern::parse("net://http/*/80")
                .unwrap()
                .literal_segment(0),
            None
        );
        // Elsewhere the authority names the kind of grant: it never globs.
        assert!(Pattern::parse("process://*/git").is_err());
        assert!(Pattern::parse("fs://work*/notes/**").is_err());
    }

    #[test]
    fn globs_match_within_and_across_segments() {
        assert!(m("fs://workspace/notes/**", "fs://workspace/notes"));
        assert!(m("fs://workspace/notes/**", "fs://workspace/notes/a/b.md"));
        assert!(!m("fs://workspace/notes/**", "fs://workspace/notesx/a"));
        assert!(!m("fs://workspace/notes/**", "fs://workspace/other"));
        assert!(m("fs://workspace/notes/*.md", "fs://workspace/notes/a.md"));
        assert!(!m(
            "fs://workspace/notes/*.md",
            "fs://workspace/notes/a/b.md"
        ));
        assert!(m("ipc://publish/notes.*", "ipc://publish/notes.created"));
        assert!(!m("ipc://publish/notes.*", "ipc://subscribe/notes.created"));
        assert!(!m("ipc://publish/notes.*", "ipc://publish/note.created"));
        assert!(m("process://exec/git", "process://exec/git"));
        assert!(!m("process://exec/git", "process://exec/gitx"));
        assert!(!m("fs://workspace/a", "kv://workspace/a"));
        assert!(m("fs://workspace/**/x/*", "fs://workspace/a/b/x/y"));
        assert!(m("fs://workspace/**", "fs://workspace"));
    }

    #[test]
    fn tricks_are_refused_at_parse() {
        for bad in [
            "fs://workspace/a/../b",
            "fs://workspace/./a",
            "fs://workspace//a",
            "fs://workspace/a/",
            "fs://workspace/a%2f..",
            "fs://workspace/%2e%2e",
            "fs://workspace/a\0b",
            "fs://workspace/a\nb",
            "fs://workspace/a\\..\\b",
            "fs://Workspace/a",
            "fs:///a",
            "http://workspace/a",
            "fs:/workspace/a",
            "fs://workspace/a*",
        ] {
            assert!(
                Resource::parse(bad).is_err(),
                "{bad:?} parsed as a resource"
            );
        }
        assert!(Pattern::parse("fs://workspace/a**").is_err());
        assert!(Pattern::parse("fs://workspace/../**").is_err());
    }
}
