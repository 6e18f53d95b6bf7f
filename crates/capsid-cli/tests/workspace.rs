//! `capsid ws` on the real daemon: what the `notes` sample writes waits in the overlay,
//! `ws status` shows it, `ws commit` lands it in the workspace (recorded path by path with
//! its blake3), `ws discard` drops it, and a file the workspace changed too is a conflict,
//! refused until `--overwrite`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::Home;
use serde_json::json;

fn add_note(home: &Home, name: &str, text: &str) {
    let input = json!({ "name": name, "text": text }).to_string();
    home.ok(&["call", "notes", "add", "--input", &input]);
}

/// The paths a `ws` answer lists, in order.
fn paths(review: &serde_json::Value) -> Vec<&str> {
    review["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["path"].as_str().unwrap())
        .collect()
}

#[test]
fn capsules_writes_are_reviewed_committed_discarded_and_conflicts_refused() {
    let home = Home::new();
    home.ok(&["start", "--dev"]);
    home.install("notes");
    let workspace = home.path.join("workspace");

    add_note(&home, "a", "first");
    assert!(
        !workspace.join("notes/a.md").exists(),
        "waits in the overlay"
    );
    let status = home.json(&["ws", "status"]);
    assert_eq!(
        (status["total"].as_u64(), status["conflicts"].as_u64()),
        (Some(2), Some(0))
    );
    assert_eq!(paths(&status), ["notes", "notes/a.md"]);
    let status = &status["changes"];
    let note = &status[1];
    assert_eq!(note["change"], "added");
    assert_eq!(note["blake3"], blake3::hash(b"first").to_hex().to_string());
    let shown = home.ok(&["ws", "status"]);
    assert!(
        shown.contains("added") && shown.contains("notes/a.md"),
        "{shown}"
    );

    let committed = home.ok(&["ws", "commit"]);
    assert!(committed.contains("committed 2 path(s)"), "{committed}");
    assert_eq!(
        std::fs::read(workspace.join("notes/a.md")).unwrap(),
        b"first"
    );
    assert!(home.ok(&["ws", "status"]).contains("no changes"));
    let tail = home.json(&["audit", "tail", "-n", "50"]);
    let record = tail
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "workspace.commit")
        .unwrap_or_else(|| panic!("no workspace.commit in {tail:#}"));
    let details = record["details"].to_string();
    assert!(
        details.contains("notes/a.md")
            && details.contains(&blake3::hash(b"first").to_hex().to_string()),
        "{details}"
    );

    // Discarded: the workspace keeps what it had.
    add_note(&home, "b", "dropped");
    home.ok(&["ws", "discard"]);
    assert!(!workspace.join("notes/b.md").exists());
    assert!(home.ok(&["ws", "status"]).contains("no changes"));

    // The capsule changes a, and so does someone in the workspace: a conflict.
    add_note(&home, "a", "the capsule's");
    std::fs::write(workspace.join("notes/a.md"), b"the user's").unwrap();
    let status = home.json(&["ws", "status"]);
    assert_eq!(status["conflicts"], 1);
    assert_eq!(status["changes"][0]["path"], "notes/a.md");
    assert_eq!(status["changes"][0]["conflict"], true);
    let refused = home.run(&["ws", "commit"]);
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("notes/a.md") && err.contains("changed in the workspace"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(workspace.join("notes/a.md")).unwrap(),
        b"the user's"
    );
    home.ok(&["ws", "commit", "--overwrite"]);
    assert_eq!(
        std::fs::read(workspace.join("notes/a.md")).unwrap(),
        b"the capsule's"
    );
    home.ok(&["stop"]);
}

#[test]
fn ws_diff_shows_text_changes_sizes_and_who_wrote_them() {
    let home = Home::new();
    home.ok(&["start", "--dev"]);
    home.install("notes");
    let workspace = home.path.join("workspace");
    std::fs::create_dir_all(workspace.join("notes")).unwrap();
    std::fs::write(workspace.join("notes/b.md"), "one\ntwo\n").unwrap();

    add_note(&home, "a", "first\n");
    let input = json!({ "name": "b", "text": "three\n" }).to_string();
    home.ok(&["call", "notes", "append", "--input", &input]);

    let diff = home.json(&["ws", "diff"]);
    assert_eq!(diff["total"], 2, "{diff:#}");
    let files = diff["files"].as_array().unwrap();
    let a = &files[0];
    assert_eq!(
        (a["path"].as_str(), a["change"].as_str()),
        (Some("notes/a.md"), Some("added"))
    );
    assert_eq!(a["writers"], json!(["notes"]));
    assert_eq!(
        (a["added_lines"].as_u64(), a["before_bytes"].is_null()),
        (Some(1), true)
    );
    assert!(a["diff"].as_str().unwrap().contains("+first"), "{a:#}");
    let b = &files[1];
    assert_eq!(b["change"], "modified");
    assert_eq!(
        (b["before_bytes"].as_u64(), b["after_bytes"].as_u64()),
        (Some(8), Some(14))
    );
    assert_eq!(
        (b["added_lines"].as_u64(), b["removed_lines"].as_u64()),
        (Some(1), Some(0))
    );
    let text = b["diff"].as_str().unwrap();
    assert!(
        text.starts_with("--- a/notes/b.md\n+++ b/notes/b.md\n"),
        "{text}"
    );
    assert!(text.contains(" two\n+three\n"), "{text}");

    // Filtered by path, and as a line each.
    let only_b = home.json(&["ws", "diff", "--stat", "notes/b.md"]);
    assert_eq!(only_b["total"], 1);
    assert!(only_b["files"][0]["diff"].is_null());
    let stat = home.ok(&["ws", "diff", "--stat"]);
    assert!(stat.contains("+1 -0") && stat.contains("notes"), "{stat}");
    let shown = home.ok(&["ws", "diff", "notes/b.md"]);
    assert!(
        shown.contains("+three") && !shown.contains("notes/a.md"),
        "{shown}"
    );
    let status = home.json(&["ws", "status", "notes/a.md"]);
    assert_eq!(status["total"], 1);
    assert_eq!(status["changes"][0]["writers"], json!(["notes"]));

    // A second capsule writes b too: both are named.
    let copy =
        capsid_integration_tests::capsule_copy_with("notes", &home.path.join("copies"), |m| {
            m.replacen("name = \"notes\"", "name = \"scribe\"", 1)
        });
    home.ok(&["capsule", "install", copy.to_str().unwrap()]);
    let input = json!({ "name": "b", "text": "by the scribe\n" }).to_string();
    home.ok(&["call", "scribe", "append", "--input", &input]);
    let status = home.json(&["ws", "status", "notes/b.md"]);
    assert_eq!(status["changes"][0]["writers"], json!(["notes", "scribe"]));

    // After a commit, who wrote what starts over: the scribe wrote before it.
    home.ok(&["ws", "commit"]);
    let input = json!({ "name": "b", "text": "four\n" }).to_string();
    home.ok(&["call", "notes", "append", "--input", &input]);
    let status = home.json(&["ws", "status"]);
    assert_eq!(status["total"], 1, "{status:#}");
    assert_eq!(status["changes"][0]["writers"], json!(["notes"]));
    assert!(
        home.ok(&["ws", "status", "elsewhere/"])
            .contains("under those paths")
    );
    let record = home.json(&["audit", "tail", "-n", "60"]);
    let commit = record
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|e| e["action"] == "workspace.commit")
        .unwrap();
    assert!(
        commit["details"]
            .as_str()
            .unwrap()
            .contains("\"writers\":[\"notes\",\"scribe\"]"),
        "{commit}"
    );
    home.ok(&["stop"]);
}

#[test]
fn ws_commit_and_discard_take_paths_and_leave_the_rest_waiting() {
    let home = Home::new();
    home.ok(&["start", "--dev"]);
    home.install("notes");
    let workspace = home.path.join("workspace");
    for name in ["a", "b", "c"] {
        add_note(&home, name, name);
    }
    // The folder `notes` comes along with the one file committed.
    let committed = home.json(&["ws", "commit", "notes/a.md"]);
    assert_eq!(paths(&committed), ["notes", "notes/a.md"]);
    assert_eq!(std::fs::read(workspace.join("notes/a.md")).unwrap(), b"a");
    assert!(!workspace.join("notes/b.md").exists());
    home.ok(&["ws", "discard", "notes/b.md"]);
    let status = home.json(&["ws", "status"]);
    assert_eq!(status["total"], 1, "{status:#}");
    assert_eq!(status["changes"][0]["path"], "notes/c.md");
    let tail = home.json(&["audit", "tail", "-n", "40"]);
    let discard = tail
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|e| e["action"] == "workspace.discard")
        .unwrap();
    let details = discard["details"].as_str().unwrap();
    assert!(
        details.contains("\"limited_to\":[\"notes/b.md\"]") && details.contains("notes/b.md"),
        "{details}"
    );
    // A file inside a folder capsules removed cannot come back alone.
    home.ok(&["ws", "commit"]);
    home.ok(&["call", "notes", "tidy"]);
    let refused = home.run(&["ws", "discard", "notes/a.md"]);
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("name notes instead"), "{err}");
    home.ok(&["ws", "discard", "notes"]);
    assert!(home.ok(&["ws", "status"]).contains("no changes"));
    let read = home.ok(&[
        "call",
        "notes",
        "read",
        "--input",
        &json!({ "name": "a" }).to_string(),
    ]);
    assert!(read.contains("\"a\""), "{read}");
    home.ok(&["stop"]);
}

#[test]
fn a_review_a_kill_left_half_done_is_finished_at_boot_and_recorded() {
    let home = Home::new();
    home.ok(&["start", "--dev"]);
    home.install("notes");
    for name in ["a", "b"] {
        add_note(&home, name, name);
    }
    home.ok(&["stop"]);
    // As a daemon killed right after recording a discard of `notes/b.md` leaves it.
    let overlay = home.path.join("state/overlay");
    std::fs::write(overlay.join("discard-pending"), "notes/b.md").unwrap();
    home.ok(&["start", "--dev"]);
    assert!(!overlay.join("discard-pending").exists());
    let status = home.json(&["ws", "status"]);
    assert_eq!(paths(&status), ["notes", "notes/a.md"]);
    let tail = home.json(&["audit", "tail", "-n", "20"]);
    let recovered = tail
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "workspace.discard.recovered")
        .expect("boot records the discard it finished");
    let details: serde_json::Value =
        serde_json::from_str(recovered["details"].as_str().unwrap()).unwrap();
    assert_eq!(details["limited_to"], json!(["notes/b.md"]));
    // Who wrote `notes/a.md` is still known; the discard covered `notes/b.md` only.
    assert_eq!(
        status["changes"][1]["writers"],
        json!(["notes"]),
        "{status:#}"
    );
    home.ok(&["stop"]);
}
