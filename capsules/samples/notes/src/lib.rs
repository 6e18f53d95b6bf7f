//! Notes as Markdown files under `notes/` in the workspace, the only folder it is granted.

use capsid_guest::{Capsule, Error, fs};
use serde_json::{Value, json};

const DIR: &str = "notes";

fn arg<'a>(input: &'a Value, key: &str) -> Result<&'a str, Error> {
    input[key]
        .as_str()
        .ok_or_else(|| capsid_guest::invalid(format!("missing string field {key:?}")))
}

fn note_path(name: &str) -> Result<String, Error> {
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !ok {
        return Err(capsid_guest::invalid("note names are [A-Za-z0-9_-]+"));
    }
    Ok(format!("{DIR}/{name}.md"))
}

struct Notes;

impl Capsule for Notes {
    fn call_tool(name: String, input: String) -> Result<String, Error> {
        let input: Value =
            serde_json::from_str(&input).map_err(|e| capsid_guest::invalid(e.to_string()))?;
        match name.as_str() {
            "add" => {
                let path = note_path(arg(&input, "name")?)?;
                fs::create_dir(DIR)?;
                fs::write(&path, arg(&input, "text")?.as_bytes())?;
                Ok(json!({ "path": path }).to_string())
            }
            "append" => {
                let path = note_path(arg(&input, "name")?)?;
                fs::append(&path, arg(&input, "text")?.as_bytes())?;
                Ok(json!({ "path": path }).to_string())
            }
            "read" => {
                let bytes = fs::read(&note_path(arg(&input, "name")?)?)?;
                let text = String::from_utf8(bytes)
                    .map_err(|_| Error::Internal("note is not UTF-8".into()))?;
                Ok(json!({ "text": text }).to_string())
            }
            "list" => {
                let names: Vec<String> = match fs::read_dir(DIR) {
                    Ok(entries) => entries
                        .into_iter()
                        .filter_map(|e| e.name.strip_suffix(".md").map(str::to_owned))
                        .collect(),
                    Err(Error::NotFound) => Vec::new(),
                    Err(e) => return Err(e),
                };
                Ok(json!({ "notes": names }).to_string())
            }
            "tidy" => {
                fs::remove_dir(DIR, true)?;
                Ok(json!({ "tidied": true }).to_string())
            }
            "delete" => {
                fs::remove_file(&note_path(arg(&input, "name")?)?)?;
                Ok(json!({ "deleted": true }).to_string())
            }
            other => Err(capsid_guest::unknown_tool(other)),
        }
    }
}

capsid_guest::capsule!(Notes);
