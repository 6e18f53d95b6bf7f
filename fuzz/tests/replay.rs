//! Replays every committed fuzz corpus (`fuzz/corpus/<target>/`) through its target on
//! stable: an input that once crashed a target, kept in its corpus, keeps it fixed. A target
//! without a corpus fails here, loudly, rather than passing on nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

#[test]
fn every_corpus_replays_without_a_crash() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    // `cargo xtask fuzz` knows the targets by their corpus folders: the two lists agree.
    let mut folders: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    folders.sort();
    let mut names: Vec<String> = capsid_fuzz::TARGETS
        .iter()
        .map(|(n, _)| (*n).to_owned())
        .collect();
    names.sort();
    assert_eq!(folders, names, "corpus folders and targets differ");
    for (name, target) in capsid_fuzz::TARGETS {
        let dir = root.join(name);
        let inputs: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("no corpus for {name} at {}: {e}", dir.display()))
            .map(|entry| entry.unwrap().path())
            .collect();
        assert!(!inputs.is_empty(), "the corpus of {name} is empty");
        for input in inputs {
            let data = std::fs::read(&input).unwrap();
            let outcome = std::panic::catch_unwind(|| target(&data));
            assert!(outcome.is_ok(), "{name} crashed on {}", input.display());
        }
    }
}

#[test]
fn the_audit_db_seeds_really_change_an_entry() {
    // Each SQL seed overwrites a field with a different value: were the update refused or a
    // no-op, the target's "changed, so it must not verify" property would go unexercised.
    for seed in ["sql-details", "sql-hash", "sql-seq", "sql-chain"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("corpus")
            .join("audit-db")
            .join(seed);
        let data = std::fs::read(&path).unwrap();
        assert!(
            capsid_fuzz::audit_db_changes_an_entry(&data),
            "{seed} changes nothing"
        );
    }
}
