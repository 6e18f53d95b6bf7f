//! Spawning leaks no descriptors. Alone in its test binary, so no other test opens or closes
//! descriptors while it counts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use capsid_process::{Child, SpawnSpec};

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_spawns_leak_no_descriptors() {
    let ws = tempfile::tempdir().unwrap();
    let spec = SpawnSpec::new("true", ws.path());
    // Warm up whatever the runtime allocates once.
    Child::spawn(&spec).await.unwrap().wait(None).await;
    let before = open_fds();
    for _ in 0..1000 {
        let child = Child::spawn(&spec).await.unwrap();
        assert!(child.wait_with_output().await.0.unwrap().success());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let after = open_fds();
    assert!(
        after <= before + 2,
        "descriptors: {before} before, {after} after"
    );
}
