//! The conformance suite (`capsid_storage::conformance`), run against every backend here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};

use capsid_storage::conformance::every_case;
use capsid_storage::{Durability, KvStore, MemoryKvStore, SurrealKvStore};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_backend_conforms() {
    every_case(|| async { Arc::new(MemoryKvStore::new()) as Arc<dyn KvStore> }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn surreal_backend_conforms() {
    let dirs = Arc::new(Mutex::new(Vec::new()));
    every_case(|| {
        let dirs = dirs.clone();
        async move {
            let dir = tempfile::tempdir().unwrap();
            let kv = SurrealKvStore::open(&dir.path().join("kv"), Durability::Synced)
                .await
                .unwrap();
            dirs.lock().unwrap().push(dir);
            Arc::new(kv) as Arc<dyn KvStore>
        }
    })
    .await;
}
