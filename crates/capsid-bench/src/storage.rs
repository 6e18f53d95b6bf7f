//! `storage`: scoped KV against raw SurrealKV, capability checks warm and cold, overlay file
//! I/O against direct file I/O, the signature check a load makes against the cached load it
//! is part of, and a workspace commit of many small files against writing them with
//! `std::fs` plus the fsyncs a commit owes. Floors are measured in the same run on the same
//! disk.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use capsid_capabilities::{CapabilityStore, Permissions, Subject};
use capsid_core::{CapsuleId, Principal, PrincipalId};
use capsid_crypto::KeyPair;
use capsid_storage::{Durability, KvStore, MemoryKvStore, Quota, ScopedKvStore, SurrealKvStore};
use capsid_vfs::{OverlayVfs, Vfs, VfsPath};
use surrealkv::{LSMIterator as _, Mode, TreeBuilder};

use crate::report::Row;

/// Durable (fsynced) writes per measurement.
const SETS: u64 = 2_000;
/// Reads per measurement.
const GETS: u64 = 100_000;
/// Interleaved rounds of each key-value measurement.
const ROUNDS: u32 = 3;
/// Pages of [`PAGE`] keys listed per measurement.
const LISTS: u64 = 5_000;
const PAGE: usize = 100;
/// Capability checks on the warm path.
const WARM_CHECKS: u64 = 1_000_000;
/// Checks that each start from an empty cache (first verification).
const COLD_CHECKS: u64 = 2_000;
/// Size of the file read and written through the overlay.
const FILE_BYTES: usize = 64 * 1024 * 1024;
/// Repetitions of each file measurement.
const FILE_ROUNDS: u32 = 6;
/// Signature checks measured (each one a load's).
const SIGNATURE_CHECKS: usize = 2_000;
/// Cached loads (unload, then load again) measured beside them.
const CACHED_LOADS: usize = 60;
/// Small files one measured commit lands.
const COMMIT_FILES: usize = 1_000;
/// Size of each of them.
const COMMIT_FILE_BYTES: usize = 1_024;
/// Commits measured (and as many floors, interleaved).
const COMMIT_ROUNDS: usize = 5;

#[allow(clippy::cast_precision_loss)]
fn rate(n: u64, start: Instant) -> f64 {
    n as f64 / start.elapsed().as_secs_f64()
}

fn key(i: u64) -> Vec<u8> {
    format!("key-{i:08}").into_bytes()
}

pub fn run() -> Result<Vec<Row>> {
    let rt = crate::report::runtime()?;
    let mut rows = rt.block_on(kv_rows())?;
    rows.extend(rt.block_on(capability_rows())?);
    rows.extend(rt.block_on(overlay_rows())?);
    rows.extend(rt.block_on(signature_rows())?);
    rows.extend(rt.block_on(commit_rows())?);
    Ok(rows)
}

async fn kv_rows() -> Result<Vec<Row>> {
    let dir = tempfile::tempdir()?;
    let value = vec![0x5a_u8; 128];
    // Floor: SurrealKV used directly, one transaction per operation, fsync on commit, keys
    // shaped like the scoped store's.
    let tree = TreeBuilder::new()
        .with_path(dir.path().join("raw"))
        .build()?;
    let raw_key = |i| [&[0x01, 5][..], b"bench", &key(i)].concat();
    let kv: Arc<dyn KvStore> =
        Arc::new(SurrealKvStore::open(&dir.path().join("scoped"), Durability::Synced).await?);
    let quota = Quota {
        max_bytes: Some(1 << 30),
        max_keys: Some(1 << 20),
    };
    let scoped = ScopedKvStore::open(kv.clone(), "bench", quota).await?;

    // Each side runs in interleaved rounds so both see the same disk and the same neighbours
    // (durable writes are bound by fsync, whose time drifts; reads take a quarter of a
    // microsecond). Writes add up their rounds; reads keep their best round.
    let per_round = SETS / u64::from(ROUNDS);
    let (mut set_secs, mut raw_set_secs) = (0f64, 0f64);
    for round in 0..u64::from(ROUNDS) {
        let keys = round * per_round..(round + 1) * per_round;
        let start = Instant::now();
        for i in keys.clone() {
            let mut tx = tree.begin()?;
            tx.set(raw_key(i).as_slice(), value.as_slice())?;
            tx.set_durability(surrealkv::Durability::Immediate);
            tx.commit().await?;
        }
        raw_set_secs += start.elapsed().as_secs_f64();
        let start = Instant::now();
        for i in keys {
            scoped.set(&key(i), &value).await?;
        }
        set_secs += start.elapsed().as_secs_f64();
    }
    let written = per_round * u64::from(ROUNDS);
    #[allow(clippy::cast_precision_loss)]
    let (set, raw_set) = (written as f64 / set_secs, written as f64 / raw_set_secs);

    let (mut get, mut raw_get, mut list, mut raw_list) = (0f64, 0f64, 0f64, 0f64);
    for _ in 0..ROUNDS {
        let start = Instant::now();
        for i in 0..GETS {
            let tx = tree.begin_with_mode(Mode::ReadOnly)?;
            anyhow::ensure!(tx.get(raw_key(i % written).as_slice())?.is_some());
        }
        raw_get = raw_get.max(rate(GETS, start));
        let start = Instant::now();
        for i in 0..GETS {
            anyhow::ensure!(scoped.get(&key(i % written)).await?.is_some());
        }
        get = get.max(rate(GETS, start));

        let start = Instant::now();
        for i in 0..LISTS {
            let tx = tree.begin_with_mode(Mode::ReadOnly)?;
            let from = raw_key((i * 7) % (written - PAGE as u64));
            let mut it = tx.range(from.as_slice(), [0x01u8, 6].as_slice())?;
            // A page is returned to the caller: collect it, as any list call must.
            let mut page = Vec::with_capacity(PAGE);
            let mut ok = it.seek_first()?;
            while ok && page.len() < PAGE {
                page.push(it.key().user_key().to_vec());
                ok = it.next()?;
            }
            std::hint::black_box(page);
        }
        raw_list = raw_list.max(rate(LISTS, start));
        let start = Instant::now();
        for i in 0..LISTS {
            let after = key((i * 7) % (written - PAGE as u64));
            std::hint::black_box(scoped.list(b"key-", Some(&after), PAGE).await?);
        }
        list = list.max(rate(LISTS, start));
    }
    tree.close().await?;
    kv.close().await?;

    Ok(vec![
        Row::new(
            "scoped kv set (synced)",
            set,
            "ops/s",
            "raw SurrealKV set (synced)",
            raw_set,
        ),
        Row::new("scoped kv get", get, "ops/s", "raw SurrealKV get", raw_get),
        Row::new(
            &format!("scoped kv list {PAGE} keys"),
            list,
            "pages/s",
            "raw SurrealKV range scan",
            raw_list,
        ),
    ])
}

async fn capability_rows() -> Result<Vec<Row>> {
    let kv: Arc<dyn KvStore> = Arc::new(MemoryKvStore::new());
    let key = Arc::new(KeyPair::generate()?);
    let store = CapabilityStore::open(kv.clone(), key.clone(), &[]).await?;
    let alice = Principal::User(PrincipalId::new());
    let notes = CapsuleId::new("notes")?;
    for pattern in [
        "kv://capsule/notes",
        "ipc://publish/notes.*",
        "fs://workspace/notes/**",
    ] {
        let perms = Permissions::READ
            .union(Permissions::WRITE)
            .union(Permissions::PUBLISH);
        store
            .grant(alice, Some(notes.clone()), pattern, perms, None, false)
            .await?;
    }
    let subject = Subject {
        principal: alice,
        capsule: Some(notes),
        session: None,
    };
    let resource = "fs://workspace/notes/2026/11/today.md";
    anyhow::ensure!(
        store
            .check(&subject, Permissions::READ, resource)
            .await
            .is_allowed()
    );
    let start = Instant::now();
    for _ in 0..WARM_CHECKS {
        std::hint::black_box(store.check(&subject, Permissions::READ, resource).await);
    }
    let warm = rate(WARM_CHECKS, start);
    let start = Instant::now();
    for _ in 0..COLD_CHECKS {
        // A fresh store has verified nothing: each check reads and verifies the tokens.
        let cold = CapabilityStore::open(kv.clone(), key.clone(), &[]).await?;
        std::hint::black_box(cold.check(&subject, Permissions::READ, resource).await);
    }
    let cold = rate(COLD_CHECKS, start);
    // Floor for the cold path: the signature verifications it cannot avoid (3 tokens).
    let pk = key.public_key();
    let msg = [7u8; 32];
    let sig = key.sign(&msg);
    let start = Instant::now();
    for _ in 0..COLD_CHECKS * 3 {
        pk.verify(std::hint::black_box(&msg), &sig)?;
    }
    let verify3 = rate(COLD_CHECKS, start);
    Ok(vec![
        Row::new(
            "capability check, warm",
            warm,
            "checks/s",
            "first verification (cold check)",
            cold,
        ),
        Row::new(
            "capability check, cold",
            cold,
            "checks/s",
            "raw ed25519 verify x3",
            verify3,
        ),
    ])
}

async fn overlay_rows() -> Result<Vec<Row>> {
    let dir = tempfile::tempdir()?;
    let lower = dir.path().join("lower");
    std::fs::create_dir_all(&lower)?;
    let data: Vec<u8> = (0..FILE_BYTES)
        .map(|i| u8::try_from(i % 251).unwrap_or_default())
        .collect();
    std::fs::write(lower.join("big.bin"), &data)?;
    let overlay = OverlayVfs::open(&lower, &dir.path().join("work"))?;
    let path = VfsPath::parse("big.bin")?;
    let out = VfsPath::parse("out.bin")?;
    #[allow(clippy::cast_precision_loss)]
    let mb = (FILE_BYTES as f64) * f64::from(FILE_ROUNDS) / (1024.0 * 1024.0);

    // Alternate the two sides each round so page-cache writeback hits both alike.
    let (mut read_s, mut direct_read_s, mut write_s, mut direct_write_s) = (0f64, 0f64, 0f64, 0f64);
    for round in 0..FILE_ROUNDS {
        let start = Instant::now();
        std::hint::black_box(std::fs::read(lower.join("big.bin"))?);
        direct_read_s += start.elapsed().as_secs_f64();
        let start = Instant::now();
        std::hint::black_box(overlay.read(&path).await?);
        read_s += start.elapsed().as_secs_f64();
        // Whoever writes second meets the first one's dirty pages: take turns.
        for direct_turn in [round % 2 == 0, round % 2 == 1] {
            if direct_turn {
                let start = Instant::now();
                std::fs::write(dir.path().join("direct.bin"), &data)?;
                direct_write_s += start.elapsed().as_secs_f64();
            } else {
                let owned = data.clone();
                let start = Instant::now();
                overlay.write(&out, owned).await?;
                write_s += start.elapsed().as_secs_f64();
            }
        }
    }
    Ok(vec![
        Row::new(
            "overlay read, unmodified file",
            mb / read_s,
            "MB/s",
            "std::fs::read",
            mb / direct_read_s,
        ),
        Row::new(
            "overlay write",
            mb / write_s,
            "MB/s",
            "std::fs::write",
            mb / direct_write_s,
        ),
    ])
}

fn median(mut v: Vec<std::time::Duration>) -> std::time::Duration {
    v.sort_unstable();
    v[v.len() / 2]
}

#[allow(clippy::cast_precision_loss)]
fn micros(d: std::time::Duration) -> f64 {
    d.as_nanos() as f64 / 1_000.0
}

/// The check every load makes (signed `hello`, its key trusted), against a whole cached load
/// of the same capsule (which includes one such check).
async fn signature_rows() -> Result<Vec<Row>> {
    let rt = capsid_integration_tests::Runtime::new().await;
    let dir = capsid_integration_tests::capsules_dir().join("hello");
    let home_check = rt.registry.services().signatures.clone();
    // A load reads and parses the manifest anyway; the check adds the rest: reading and
    // parsing Capsule.sig, hashing the manifest, the signature (unless verified before) and
    // the trust lookup.
    let file = dir.join(capsid_manifest::MANIFEST_FILE);
    let source = capsid_manifest::Manifest::read_source(&file)?;
    let manifest = capsid_manifest::Manifest::parse(&file, &source)?;
    let (mut first, mut again) = (Vec::new(), Vec::new());
    // hello is signed by the samples' key, which the runtime's trust store holds.
    let runtime_key = KeyPair::generate()?.public_key();
    for _ in 0..SIGNATURE_CHECKS {
        // A check that has verified nothing yet: a capsule's first load on this host.
        let fresh = capsid_signing::SignatureCheck::new(
            home_check.require(),
            runtime_key,
            home_check.store().clone(),
        );
        let start = Instant::now();
        std::hint::black_box(fresh.check(&dir, &manifest, source.as_bytes(), false)?);
        first.push(start.elapsed());
        let start = Instant::now();
        std::hint::black_box(fresh.check(&dir, &manifest, source.as_bytes(), false)?);
        again.push(start.elapsed());
    }
    let name = CapsuleId::new("hello")?;
    rt.registry.load(&dir, capsid_capsule::Trust::Dev).await?;
    let mut loads = Vec::with_capacity(CACHED_LOADS);
    for _ in 0..CACHED_LOADS {
        rt.registry.unload(&name).await?;
        let start = Instant::now();
        let info = rt.registry.load(&dir, capsid_capsule::Trust::Dev).await?;
        loads.push(start.elapsed());
        anyhow::ensure!(
            info.load_kind == Some(capsid_capsule::LoadKind::Cached),
            "expected a cached load"
        );
    }
    let load = micros(median(loads));
    Ok(vec![
        Row::new(
            "signature check, first load (hello: ed25519 verify)",
            micros(median(first)),
            "µs",
            "cached capsule load (hello), check included",
            load,
        ),
        Row::new(
            "signature check, a load again (verified before)",
            micros(median(again)),
            "µs",
            "cached capsule load (hello), check included",
            load,
        ),
    ])
}

/// A commit of many small files through the overlay, against writing them with `std::fs`
/// and syncing each file and the directory (what a commit must do to be durable).
async fn commit_rows() -> Result<Vec<Row>> {
    let dir = tempfile::tempdir()?;
    let data = vec![0x42_u8; COMMIT_FILE_BYTES];
    let (mut commits, mut floors) = (Vec::new(), Vec::new());
    for round in 0..COMMIT_ROUNDS {
        let lower = dir.path().join(format!("lower-{round}"));
        std::fs::create_dir_all(lower.join("notes"))?;
        let overlay = OverlayVfs::open(&lower, &dir.path().join(format!("work-{round}")))?;
        for i in 0..COMMIT_FILES {
            overlay
                .write(&VfsPath::parse(&format!("notes/{i}.md"))?, data.clone())
                .await?;
        }
        let start = Instant::now();
        let changes = overlay.commit().await?;
        commits.push(start.elapsed());
        anyhow::ensure!(changes.len() == COMMIT_FILES, "{} changes", changes.len());

        // The floor: the same files copied with std::fs, with the syncs a commit that can be
        // finished after a crash owes: each source (written unsynced, as capsules' are),
        // each copy before it is renamed into place, and the folder.
        let (from, to) = (
            dir.path().join(format!("from-{round}")),
            dir.path().join(format!("to-{round}")),
        );
        std::fs::create_dir_all(&from)?;
        std::fs::create_dir_all(&to)?;
        for i in 0..COMMIT_FILES {
            std::fs::write(from.join(format!("{i}.md")), &data)?;
        }
        let start = Instant::now();
        for i in 0..COMMIT_FILES {
            let (src, tmp, dst) = (
                from.join(format!("{i}.md")),
                to.join(format!(".{i}.md.tmp")),
                to.join(format!("{i}.md")),
            );
            std::fs::File::open(&src)?.sync_all()?;
            std::fs::copy(&src, &tmp)?;
            std::fs::File::open(&tmp)?.sync_all()?;
            std::fs::rename(&tmp, &dst)?;
        }
        std::fs::File::open(&to)?.sync_all()?;
        floors.push(start.elapsed());
    }
    #[allow(clippy::cast_precision_loss)]
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1_000.0;
    Ok(vec![Row::new(
        "workspace commit, 1,000 files of 1 KiB",
        ms(median(commits)),
        "ms",
        "std::fs copy: fsync source, copy, fsync, rename; fsync dir",
        ms(median(floors)),
    )])
}
