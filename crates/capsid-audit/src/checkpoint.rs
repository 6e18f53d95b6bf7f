//! Checkpoints: every `AUDIT_CHECKPOINT_INTERVAL` entries, and when the writer stops cleanly,
//! the stager appends a system-chain entry (`audit.checkpoint`) claiming how many entries
//! and chains the log held just before it and a digest of every chain's head then. Like any
//! entry it is hashed, chained and signed, so it cannot be forged or moved without the
//! chain showing it.
//!
//! [`verify_from_checkpoint`] is what an open does: it verifies the newest intact checkpoint
//! (its signature under the log's trusted keys), checks the log still holds what it claims
//! (an index lookup per chain for the head it had, the digest and counts recomputed), then
//! verifies entry by entry only what was stored after it. Its cost grows with the entries
//! since the checkpoint and the number of chains, never with the rows before it: a row
//! removed or changed before the checkpoint that leaves every chain's head in place is left
//! to the full verification (`capsid audit verify`), which also checks every checkpoint's
//! claims.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use capsid_crypto::{Digest, DomainHasher, domain};
use rusqlite::{Connection, OptionalExtension};

use crate::entry::{StoredEntry, genesis_hash};
use crate::error::AuditError;
use crate::schema::sqlite_err;
use crate::store::{read_entries, read_heads, read_keys};
use crate::verify::{
    ACTION_CHAIN_OPEN, ACTION_KEY_ROTATE, ChainReport, HeadRow, Integrity, Problem, SYSTEM_CHAIN,
    Trust, VerifyReport, integrity, trusted_keys, valid_head, verify_chain,
};

/// Action of a checkpoint entry.
pub(crate) const ACTION_CHECKPOINT: &str = crate::action::CHECKPOINT;

/// What a checkpoint says of the log just before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Claim {
    /// Entries stored before it (the sum of every chain's head sequence).
    pub entries: u64,
    /// Chains then.
    pub chains: u64,
    /// blake3 (domain `AUDIT_CHECKPOINT`) of every chain's head, sorted by chain.
    pub digest: Digest,
}

impl Claim {
    /// The claim for chains whose heads are `heads` (chain, last seq, last hash).
    pub(crate) fn of<'a>(heads: impl IntoIterator<Item = (&'a str, u64, &'a [u8])>) -> Self {
        let sorted: BTreeMap<&str, (u64, &[u8])> = heads
            .into_iter()
            .map(|(chain, seq, hash)| (chain, (seq, hash)))
            .collect();
        let mut h = DomainHasher::new(domain::AUDIT_CHECKPOINT);
        let mut entries = 0u64;
        for (chain, (seq, hash)) in &sorted {
            for part in [chain.as_bytes(), *hash] {
                h.update(&(part.len() as u64).to_be_bytes());
                h.update(part);
            }
            h.update(&seq.to_be_bytes());
            entries = entries.saturating_add(*seq);
        }
        Self {
            entries,
            chains: sorted.len() as u64,
            digest: h.finalize(),
        }
    }

    /// Its entry's details.
    pub(crate) fn details(&self) -> serde_json::Value {
        serde_json::json!({
            "entries": self.entries,
            "chains": self.chains,
            "digest": self.digest.to_string(),
        })
    }

    /// The claim a checkpoint entry's details make; `None` if they are not one.
    pub(crate) fn parse(details: &[u8]) -> Option<Self> {
        let v: serde_json::Value = serde_json::from_slice(details).ok()?;
        Some(Self {
            entries: v.get("entries")?.as_u64()?,
            chains: v.get("chains")?.as_u64()?,
            digest: v.get("digest")?.as_str()?.parse().ok()?,
        })
    }
}

/// Checks the claims of every checkpoint in `entries` (storage order) against what was
/// stored before each: the problems, as the system chain's.
pub(crate) fn check_claims(
    entries: &[StoredEntry],
    intact: impl Fn(&StoredEntry) -> bool,
) -> Vec<Problem> {
    let mut latest: HashMap<&str, (u64, &[u8])> = HashMap::new();
    let mut problems = Vec::new();
    for e in entries {
        if e.chain == SYSTEM_CHAIN && e.action == ACTION_CHECKPOINT.as_bytes() && intact(e) {
            let found = Claim::of(latest.iter().map(|(c, (s, h))| (*c, *s, *h)));
            if Claim::parse(&e.details) != Some(found) {
                problems.push(Problem::CheckpointMismatch { seq: e.seq });
            }
        }
        let slot = latest.entry(e.chain.as_str()).or_insert((0, &[]));
        if e.seq >= slot.0 {
            *slot = (e.seq, e.hash.as_slice());
        }
    }
    problems
}

/// Every chain of `names`'s head just before storage position `position`, as stored now.
fn anchors(
    conn: &Connection,
    path: &Path,
    names: &[String],
    position: i64,
) -> Result<HashMap<String, (u64, Vec<u8>)>, AuditError> {
    let err = sqlite_err(path);
    let mut before = conn
        .prepare(
            "SELECT seq, hash FROM entries WHERE chain = ?1 AND id < ?2 ORDER BY seq DESC LIMIT 1",
        )
        .map_err(&err)?;
    let mut anchors = HashMap::new();
    for name in names {
        let found: Option<(i64, Vec<u8>)> = before
            .query_row((name, position), |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()
            .map_err(&err)?;
        if let Some((seq, hash)) = found {
            anchors.insert(name.clone(), (u64::try_from(seq).unwrap_or(0), hash));
        }
    }
    Ok(anchors)
}

/// The report on chain `name`: its `rows` after the checkpoint, which follow `anchor` (its
/// head then; none if it had none), against its signed `head`.
fn chain_since(
    name: &str,
    rows: &[&StoredEntry],
    anchor: Option<(u64, &[u8])>,
    head: Option<&HeadRow>,
    trust: &Trust,
) -> ChainReport {
    let problems = if rows.is_empty() {
        // Nothing since the checkpoint: its signed head must be the one it had.
        match (head, anchor) {
            (Some(h), Some((seq, hash))) => match valid_head(name, h, trust) {
                None => vec![Problem::HeadInvalid],
                Some((s, hh)) if s == seq && hh == hash => Vec::new(),
                Some(_) => vec![Problem::HeadMismatch { seq }],
            },
            _ => vec![Problem::ChainMissing],
        }
    } else {
        let genesis = genesis_hash(name);
        let start = anchor.unwrap_or((0, genesis.as_bytes()));
        verify_chain(name, rows, head, trust, start)
    };
    ChainReport {
        chain: name.to_owned(),
        entries: rows.len() as u64,
        problems,
    }
}

/// What [`verify_from_checkpoint`] found.
pub(crate) struct Verified {
    /// The verdict.
    pub report: VerifyReport,
    /// The chain heads, read in the same transaction as what was verified.
    pub heads: Vec<HeadRow>,
    /// Entries stored after the newest checkpoint (its own included).
    pub since_checkpoint: u64,
}

/// Verifies the log from its newest intact checkpoint on (see the module docs). `None`
/// when it has none to start from: verify it whole.
pub(crate) fn verify_from_checkpoint(
    conn: &Connection,
    path: &Path,
) -> Result<Option<Verified>, AuditError> {
    let err = sqlite_err(path);
    let tx = conn.unchecked_transaction().map_err(&err)?;
    let keys = read_keys(&tx, path)?;
    // Only the rotations the pinned keys name (an index lookup each, not a scan of the
    // system chain): a rotation whose key is not pinned trusts nothing, and what that key
    // signed is reported as signed by an unknown key.
    let rotations = read_entries(
        &tx,
        path,
        "WHERE chain = ?1 AND action = ?2 AND seq IN \
         (SELECT introduced_by FROM trusted_keys WHERE introduced_by IS NOT NULL) ORDER BY seq",
        (SYSTEM_CHAIN, ACTION_KEY_ROTATE),
    )?;
    let (trust, key_problems) = trusted_keys(&keys, &rotations.iter().collect::<Vec<_>>());
    let newest = read_entries(
        &tx,
        path,
        "WHERE chain = ?1 AND action = ?2 ORDER BY seq DESC LIMIT 1",
        (SYSTEM_CHAIN, ACTION_CHECKPOINT),
    )?;
    let Some(checkpoint) = newest.into_iter().next() else {
        return Ok(None);
    };
    // A checkpoint that does not verify is no place to start from; the whole log is.
    let Some(claim) = Claim::parse(&checkpoint.details)
        .filter(|_| integrity(&checkpoint, &trust.keys) == Integrity::Intact)
    else {
        return Ok(None);
    };
    let tail = read_entries(
        &tx,
        path,
        "WHERE id >= ?1 ORDER BY id",
        [checkpoint.position],
    )?;
    let heads = read_heads(&tx, path)?;
    let mut rows: BTreeMap<&str, Vec<&StoredEntry>> = BTreeMap::new();
    for e in &tail {
        rows.entry(e.chain.as_str()).or_default().push(e);
    }
    let opened: Vec<&[u8]> = rows
        .get(SYSTEM_CHAIN)
        .into_iter()
        .flatten()
        .filter(|e| e.action == ACTION_CHAIN_OPEN.as_bytes())
        .filter(|e| integrity(e, &trust.keys) == Integrity::Intact)
        .map(|e| e.resource.as_slice())
        .collect();

    // Every chain there is reason to expect: those with a head, rows after the checkpoint,
    // or an opening after it (a chain opened and then deleted whole is missing).
    let mut names: Vec<String> = heads.iter().map(|h| h.chain.clone()).collect();
    names.extend(tail.iter().map(|e| e.chain.clone()));
    names.extend(
        opened
            .iter()
            .filter_map(|r| std::str::from_utf8(r).ok())
            .map(str::to_owned),
    );
    names.sort();
    names.dedup();
    // Every chain's head just before the checkpoint, from what is stored now.
    let anchors = anchors(&tx, path, &names, checkpoint.position)?;
    let found = Claim::of(
        anchors
            .iter()
            .map(|(c, (s, h))| (c.as_str(), *s, h.as_slice())),
    );
    let holds = found == claim;
    let head_of: HashMap<&str, _> = heads.iter().map(|h| (h.chain.as_str(), h)).collect();
    let chains = names
        .iter()
        .map(|name| {
            let mine = rows
                .get(name.as_str())
                .map(Vec::as_slice)
                .unwrap_or_default();
            let anchor = anchors.get(name).map(|(s, h)| (*s, h.as_slice()));
            let head = head_of.get(name.as_str()).copied();
            let mut report = chain_since(name, mine, anchor, head, &trust);
            if anchor.is_none() && name != SYSTEM_CHAIN && !opened.contains(&name.as_bytes()) {
                report.problems.insert(0, Problem::Unregistered);
            }
            if name == SYSTEM_CHAIN && !holds {
                let seq = checkpoint.seq;
                report
                    .problems
                    .insert(0, Problem::CheckpointMismatch { seq });
            }
            report
        })
        .collect();
    Ok(Some(Verified {
        report: VerifyReport::new(key_problems, chains, trust),
        heads,
        since_checkpoint: tail.len() as u64,
    }))
}
