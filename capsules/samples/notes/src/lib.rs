//! Notes as Markdown files under `notes/` in the workspace, the only folder it is granted.

use capsid_guest::{Capsule, Error, Json, Tools, fs};
use serde::{Deserialize, Serialize};

const DIR: &str = "notes";

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

#[derive(Deserialize)]
struct Note {
    name: String,
}

#[derive(Deserialize)]
struct NoteText {
    name: String,
    text: String,
}

#[derive(Serialize)]
struct Written {
    path: String,
}

#[derive(Serialize)]
struct Text {
    text: String,
}

#[derive(Serialize)]
struct Listing {
    notes: Vec<String>,
}

#[derive(Serialize)]
struct Tidied {
    tidied: bool,
}

#[derive(Serialize)]
struct Deleted {
    deleted: bool,
}

fn add(Json(note): Json<NoteText>) -> Result<Json<Written>, Error> {
    let path = note_path(&note.name)?;
    fs::create_dir(DIR)?;
    fs::write(&path, note.text.as_bytes())?;
    Ok(Json(Written { path }))
}

fn append(Json(note): Json<NoteText>) -> Result<Json<Written>, Error> {
    let path = note_path(&note.name)?;
    fs::append(&path, note.text.as_bytes())?;
    Ok(Json(Written { path }))
}

fn read(Json(note): Json<Note>) -> Result<Json<Text>, Error> {
    let bytes = fs::read(&note_path(&note.name)?)?;
    let text = String::from_utf8(bytes).map_err(|_| Error::Internal("note is not UTF-8".into()))?;
    Ok(Json(Text { text }))
}

fn list() -> Result<Json<Listing>, Error> {
    let notes = match fs::read_dir(DIR) {
        Ok(entries) => entries
            .into_iter()
            .filter_map(|e| e.name.strip_suffix(".md").map(str::to_owned))
            .collect(),
        Err(Error::NotFound) => Vec::new(),
        Err(e) => return Err(e),
    };
    Ok(Json(Listing { notes }))
}

fn tidy() -> Result<Json<Tidied>, Error> {
    fs::remove_dir(DIR, true)?;
    Ok(Json(Tidied { tidied: true }))
}

fn delete(Json(note): Json<Note>) -> Result<Json<Deleted>, Error> {
    fs::remove_file(&note_path(&note.name)?)?;
    Ok(Json(Deleted { deleted: true }))
}

struct Notes;

impl Capsule for Notes {
    const TOOLS: Tools = capsid_guest::tools! {
        "add" => add,
        "append" => append,
        "read" => read,
        "list" => list,
        "delete" => delete,
        "tidy" => tidy,
    };
}

capsid_guest::capsule!(Notes);
