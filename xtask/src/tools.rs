//! The tool check of `cargo xtask build-capsules`: the tools a capsule's code answers (the
//! names `capsid_guest::tools!` writes into a custom section) against the `[[tool]]` entries
//! of its `Capsule.toml`. The host refuses undeclared tools before the guest sees them, and a
//! declared tool the code does not answer fails only when called: both are caught here.

use std::collections::BTreeSet;
use std::fmt;

use anyhow::{Context, Result};
use wasmparser::{Parser, Payload};

/// The custom section `capsid_guest::tools!` writes a capsule's tool names into, one per
/// line. It must match the `link_section` in `capsules/guest/src/tools.rs`.
const TOOLS_SECTION: &str = "capsid-tools";

/// The tool names a component's code answers, from its `capsid-tools` sections (in whichever
/// nested core module they are), or `None` if it has none: a capsule not written with
/// `capsid_guest::tools!`, whose tools cannot be seen.
pub fn answered_tools(wasm: &[u8]) -> Result<Option<BTreeSet<String>>> {
    let mut answered: Option<BTreeSet<String>> = None;
    for payload in Parser::new(0).parse_all(wasm) {
        let Payload::CustomSection(section) = payload.context("not a valid wasm binary")? else {
            continue;
        };
        if section.name() != TOOLS_SECTION {
            continue;
        }
        let names = std::str::from_utf8(section.data())
            .with_context(|| format!("its {TOOLS_SECTION} section is not UTF-8"))?;
        answered
            .get_or_insert_with(BTreeSet::new)
            .extend(names.lines().filter(|n| !n.is_empty()).map(str::to_owned));
    }
    Ok(answered)
}

/// The `name` of every `[[tool]]` entry of a `Capsule.toml`.
pub fn declared_tools(manifest: &str) -> Result<BTreeSet<String>> {
    let manifest: toml::Table = manifest.parse()?;
    let Some(tools) = manifest.get("tool") else {
        return Ok(BTreeSet::new());
    };
    let tools = tools
        .as_array()
        .context("`tool` is not an array of tables ([[tool]])")?;
    tools
        .iter()
        .map(|tool| {
            tool.get("name")
                .and_then(toml::Value::as_str)
                .map(str::to_owned)
                .context("a [[tool]] entry has no string `name`")
        })
        .collect()
}

/// Where a capsule's declared and answered tools disagree.
#[derive(Debug, PartialEq, Eq)]
pub struct Mismatch {
    /// In `Capsule.toml`, not answered by the code: calls to them fail.
    pub not_answered: Vec<String>,
    /// Answered by the code, not in `Capsule.toml`: the host never lets a call reach them.
    pub not_declared: Vec<String>,
}

/// How `declared` and `answered` disagree, or `None` if they name the same tools.
pub fn compare(declared: &BTreeSet<String>, answered: &BTreeSet<String>) -> Option<Mismatch> {
    let mismatch = Mismatch {
        not_answered: declared.difference(answered).cloned().collect(),
        not_declared: answered.difference(declared).cloned().collect(),
    };
    (!mismatch.not_answered.is_empty() || !mismatch.not_declared.is_empty()).then_some(mismatch)
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let quoted = |names: &[String]| {
            names
                .iter()
                .map(|n| format!("{n:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut parts = Vec::new();
        if !self.not_answered.is_empty() {
            parts.push(format!(
                "declared but not in its tools!: {} (add a handler or remove the [[tool]])",
                quoted(&self.not_answered)
            ));
        }
        if !self.not_declared.is_empty() {
            parts.push(format!(
                "in its tools! but not declared: {} (add a [[tool]] or remove the handler)",
                quoted(&self.not_declared)
            ));
        }
        f.write_str(&parts.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|n| (*n).to_owned()).collect()
    }

    /// A section of id `id` holding `body` (sizes under 128, so one LEB128 byte).
    fn section(id: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![id, u8::try_from(body.len()).unwrap()];
        out.extend_from_slice(body);
        out
    }

    fn custom_section(name: &str, data: &[u8]) -> Vec<u8> {
        let mut body = vec![u8::try_from(name.len()).unwrap()];
        body.extend_from_slice(name.as_bytes());
        body.extend_from_slice(data);
        section(0, &body)
    }

    fn core_module(sections: &[Vec<u8>]) -> Vec<u8> {
        let mut out = b"\0asm\x01\0\0\0".to_vec();
        out.extend(sections.concat());
        out
    }

    /// A component holding `module` as its one core module, as `wasm32-wasip2` builds do.
    fn component(module: &[u8]) -> Vec<u8> {
        let mut out = b"\0asm\x0d\0\x01\0".to_vec();
        out.extend(section(1, module));
        out
    }

    #[test]
    fn the_names_are_read_from_a_core_module_nested_in_a_component() {
        let module = core_module(&[
            custom_section("other", b"data"),
            custom_section(TOOLS_SECTION, b"greet\necho\n"),
        ]);
        let answered = answered_tools(&component(&module)).unwrap();
        assert_eq!(answered, Some(names(&["echo", "greet"])));
    }

    #[test]
    fn sections_of_the_same_name_add_up() {
        let module = core_module(&[
            custom_section(TOOLS_SECTION, b"a\n"),
            custom_section(TOOLS_SECTION, b"b\n"),
        ]);
        assert_eq!(answered_tools(&module).unwrap(), Some(names(&["a", "b"])));
    }

    #[test]
    fn a_component_without_the_section_cannot_be_checked() {
        let module = core_module(&[custom_section("producers", b"\0")]);
        assert_eq!(answered_tools(&component(&module)).unwrap(), None);
    }

    #[test]
    fn a_binary_that_is_not_wasm_is_an_error() {
        assert!(answered_tools(b"not wasm at all").is_err());
    }

    #[test]
    fn declared_tools_are_the_tool_entries_names() {
        let manifest = r#"
            [package]
            name = "x"
            version = "0.1.0"

            [[tool]]
            name = "get"
            description = "Returns it"

            [[tool]]
            name = "set"
            input_schema = { type = "object" }
        "#;
        assert_eq!(declared_tools(manifest).unwrap(), names(&["get", "set"]));
        assert!(
            declared_tools("[package]\nname = \"x\"\n")
                .unwrap()
                .is_empty()
        );
        assert!(declared_tools("[[tool]]\ndescription = \"no name\"\n").is_err());
    }

    #[test]
    fn the_same_tools_agree() {
        assert_eq!(compare(&names(&["a", "b"]), &names(&["b", "a"])), None);
    }

    #[test]
    fn a_mismatch_names_each_tool_on_one_line() {
        let mismatch = compare(&names(&["a", "b"]), &names(&["b", "c"])).unwrap();
        assert_eq!(
            mismatch,
            Mismatch {
                not_answered: vec!["a".into()],
                not_declared: vec!["c".into()],
            }
        );
        assert_eq!(
            mismatch.to_string(),
            "declared but not in its tools!: \"a\" (add a handler or remove the [[tool]]); \
             in its tools! but not declared: \"c\" (add a [[tool]] or remove the handler)"
        );
    }
}
