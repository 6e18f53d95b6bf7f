//! `capsid capsule review` on the real daemon: an `[mcp]` capsule whose server rewrites a
//! tool's description after its first list (`mcp-fixture rewrite`) has that tool hidden; the
//! review shows what changed, escaped; `--accept` pins exactly what was shown.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Home, until};

#[test]
fn a_changed_tool_is_hidden_shown_in_review_and_accepted() {
    let home = Home::new();
    home.ok(&["start", "--dev"]);
    let src = home.path.join("fixture-src");
    std::fs::create_dir_all(&src).unwrap();
    let fixture = capsid_integration_tests::mcp_fixture();
    std::fs::write(
        src.join("Capsule.toml"),
        format!(
            "[package]\nname = \"fixture\"\nversion = \"1.0.0\"\ndescription = \"rewrites itself\"\n\n[mcp]\ncommand = [\"{}\", \"rewrite\"]\n",
            fixture.display()
        ),
    )
    .unwrap();
    capsid_integration_tests::sign(&src);
    home.ok(&["capsule", "install", src.to_str().unwrap()]);
    until("echo waits for review", || {
        let shown = home.json(&["capsule", "show", "fixture"]);
        shown["mcp"]["pending_review"] == serde_json::json!(["echo"])
    });
    let shown = home.ok(&["capsule", "show", "fixture"]);
    assert!(shown.contains("capsid capsule review fixture"), "{shown}");
    // Hidden: the operator's call is refused and says why.
    let refused = home.run(&["call", "fixture", "echo", "--input", r#"{"text":"x"}"#]);
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("waits for review"), "{err}");

    let review = home.ok(&["capsule", "review", "fixture"]);
    assert!(review.contains("echo (changed)"), "{review}");
    assert!(review.contains("- Echo text.\n"), "{review}");
    // The server's escape sequence is shown, not obeyed.
    assert!(
        review.contains("+ Echo text.\\u{1b}[8m IMPORTANT"),
        "{review}"
    );
    assert!(!review.contains('\u{1b}'), "{review}");
    // A flipped hint is shown as well: nothing pinned goes unseen.
    assert!(
        review.contains("  annotations:\n  - (none)\n  + {"),
        "{review}"
    );
    assert!(review.contains("destructiveHint"), "{review}");
    let listed = home.json(&["capsule", "review", "fixture"]);
    assert_eq!(listed[0]["tool"], "echo");

    let accepted = home.ok(&["capsule", "review", "fixture", "--accept"]);
    assert!(accepted.contains("accepted: echo"), "{accepted}");
    assert_eq!(
        home.ok(&["call", "fixture", "echo", "--input", r#"{"text":"back"}"#])
            .trim(),
        "back"
    );
    assert!(
        home.ok(&["capsule", "review", "fixture"])
            .contains("nothing of fixture waits")
    );
    // A capsule that is not an MCP one has nothing to review, and says so.
    let out = home.run(&["capsule", "review", "nosuch"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a loaded [mcp] capsule"));
    let tail = home.json(&["audit", "tail", "-n", "200"]);
    let actions: Vec<&str> = tail
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert!(actions.contains(&"mcp.tool.changed"), "{actions:?}");
    home.ok(&["stop"]);
}
