//! Verification of a whole log: which keys are trusted, and for each chain exactly what is
//! wrong, entry by entry. Works on a [`Snapshot`] so the database and an export share it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use capsid_crypto::{KeyId, PublicKey, Signature, verify_batch};

use crate::entry::{StoredEntry, genesis_hash, head_message};

/// Action of the system-chain entry that creates a log (signed by the genesis key).
pub(crate) const ACTION_LOG_CREATE: &str = crate::action::LOG_CREATE;
/// Action of the system-chain entry that opens a new chain; the resource is the chain id.
pub(crate) const ACTION_CHAIN_OPEN: &str = crate::action::CHAIN_OPEN;
/// Action of the system-chain entry that trusts a new key; the resource is `key:<hex id>`.
pub(crate) const ACTION_KEY_ROTATE: &str = crate::action::KEY_ROTATE;
/// Prefix of the resource of a rotation entry.
pub(crate) const KEY_RESOURCE_PREFIX: &str = "key:";
/// Text id of the system chain.
pub(crate) const SYSTEM_CHAIN: &str = "system";

/// Signatures verified per batch call; a failing batch is re-checked one by one.
const VERIFY_BATCH: usize = 128;

/// A pinned key as stored.
#[derive(Clone, Debug)]
pub(crate) struct KeyRow {
    pub key_id: Vec<u8>,
    pub public_key: Vec<u8>,
    /// System-chain sequence of the rotation entry that introduced it; `None` for genesis.
    pub introduced_by: Option<u64>,
}

/// A chain head as stored.
#[derive(Clone, Debug)]
pub(crate) struct HeadRow {
    pub chain: String,
    pub seq: u64,
    pub hash: Vec<u8>,
    pub key_id: Vec<u8>,
    pub signature: Vec<u8>,
}

/// Everything verification needs, read from a database or an export.
#[derive(Debug, Default)]
pub(crate) struct Snapshot {
    pub keys: Vec<KeyRow>,
    pub heads: Vec<HeadRow>,
    /// In storage order.
    pub entries: Vec<StoredEntry>,
}

/// A problem with one chain, naming the sequence number it concerns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    /// The entry's fields no longer match its signed hash: a field was changed.
    ChangedField {
        /// The entry.
        seq: u64,
    },
    /// Entries are absent from the chain.
    Missing {
        /// First missing sequence number.
        first_seq: u64,
        /// Last missing sequence number.
        last_seq: u64,
    },
    /// An intact entry is stored after an entry that follows it.
    Reordered {
        /// The entry out of place.
        seq: u64,
        /// The later entry it is stored after.
        after_seq: u64,
    },
    /// A row that is not part of the chain: a duplicate of a sequence number already held by
    /// the genuine entry, or past the chain's signed head.
    Inserted {
        /// The sequence number the row claims.
        seq: u64,
    },
    /// The entry's signature does not verify under the key it names.
    BadSignature {
        /// The entry.
        seq: u64,
    },
    /// The entry names a signing key the log does not trust.
    UnknownKey {
        /// The entry.
        seq: u64,
        /// The key id it names (hex).
        key_id: String,
    },
    /// An entry signed by a key that had been rotated out before an earlier entry of the
    /// same chain was signed.
    RetiredKey {
        /// The entry.
        seq: u64,
    },
    /// An intact, validly signed entry whose `prev_hash` is not its predecessor's hash.
    BrokenLink {
        /// The entry.
        seq: u64,
    },
    /// The chain's signed head is missing.
    NoHead,
    /// The chain's head is not signed by the log's current key.
    HeadInvalid,
    /// The signed head names a hash other than that of the entry at its sequence.
    HeadMismatch {
        /// The head's sequence number.
        seq: u64,
    },
    /// The chain was opened in the system chain but none of it remains.
    ChainMissing,
    /// A checkpoint's claim (entries, chains, the digest of every head) does not match what
    /// is stored before it: entries before it were removed, added or changed.
    CheckpointMismatch {
        /// The checkpoint entry's sequence in the system chain.
        seq: u64,
    },
    /// The chain exists but was never opened in the system chain.
    Unregistered,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ChangedField { seq } => write!(f, "seq {seq}: a field was changed after signing"),
            Self::Missing {
                first_seq,
                last_seq,
            } if first_seq == last_seq => {
                write!(f, "seq {first_seq}: entry missing")
            }
            Self::Missing {
                first_seq,
                last_seq,
            } => {
                write!(f, "seq {first_seq}..={last_seq}: entries missing")
            }
            Self::Reordered { seq, after_seq } => {
                write!(f, "seq {seq}: reordered, stored after seq {after_seq}")
            }
            Self::Inserted { seq } => write!(f, "seq {seq}: inserted entry, not part of the chain"),
            Self::BadSignature { seq } => write!(f, "seq {seq}: bad signature"),
            Self::UnknownKey { seq, key_id } => {
                write!(f, "seq {seq}: signed by unknown key {key_id}")
            }
            Self::BrokenLink { seq } => write!(f, "seq {seq}: does not link to its predecessor"),
            Self::RetiredKey { seq } => write!(f, "seq {seq}: signed by a key already rotated out"),
            Self::NoHead => f.write_str("chain head missing"),
            Self::HeadInvalid => f.write_str("chain head signature invalid"),
            Self::HeadMismatch { seq } => {
                write!(f, "seq {seq}: does not match the signed chain head")
            }
            Self::ChainMissing => f.write_str("chain opened in the system chain is gone"),
            Self::CheckpointMismatch { seq } => write!(
                f,
                "seq {seq}: checkpoint does not match the entries stored before it (run a full `capsid audit verify`)"
            ),
            Self::Unregistered => f.write_str("chain was never opened in the system chain"),
        }
    }
}

/// A problem with the pinned keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyProblem {
    /// A pinned key's id is not the blake3 of its public key, or the key is malformed.
    Malformed {
        /// The stored key id (hex).
        key_id: String,
    },
    /// A pinned key was never introduced by a valid rotation entry.
    Unintroduced {
        /// The key id (hex).
        key_id: String,
    },
    /// A valid rotation entry introduced a key that is no longer pinned.
    RotatedKeyMissing {
        /// The key id (hex).
        key_id: String,
    },
    /// There is not exactly one genesis key.
    GenesisCount {
        /// How many keys claim to be the genesis key.
        found: usize,
    },
}

impl fmt::Display for KeyProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Malformed { key_id } => write!(
                f,
                "pinned key {key_id} is malformed or its id does not match"
            ),
            Self::Unintroduced { key_id } => write!(
                f,
                "pinned key {key_id} was never introduced by a signed rotation"
            ),
            Self::RotatedKeyMissing { key_id } => {
                write!(f, "rotated-in key {key_id} is no longer pinned")
            }
            Self::GenesisCount { found } => {
                write!(f, "{found} genesis keys pinned, expected exactly 1")
            }
        }
    }
}

/// The verdict on one chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainReport {
    /// The chain id.
    pub chain: String,
    /// Rows found for the chain.
    pub entries: u64,
    /// Empty when the chain is valid; otherwise ordered by sequence number.
    pub problems: Vec<Problem>,
}

/// The verdict on a whole log.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct VerifyReport {
    /// Problems with the pinned keys.
    pub keys: Vec<KeyProblem>,
    /// One report per chain, ordered by chain id.
    pub chains: Vec<ChainReport>,
    pub(crate) trusted: Vec<KeyId>,
    pub(crate) current: Option<KeyId>,
}

impl VerifyReport {
    /// True when no key and no chain has a problem.
    pub fn is_valid(&self) -> bool {
        self.keys.is_empty() && self.chains.iter().all(|c| c.problems.is_empty())
    }

    /// Total entries examined.
    pub fn entries(&self) -> u64 {
        self.chains.iter().map(|c| c.entries).sum()
    }

    /// The report of one chain.
    pub fn chain(&self, chain: &str) -> Option<&ChainReport> {
        self.chains.iter().find(|c| c.chain == chain)
    }

    /// Whether `key` is trusted by the log (genesis or validly rotated in).
    pub fn trusts(&self, key: &KeyId) -> bool {
        self.trusted.contains(key)
    }

    /// The key the log was last rotated to (the genesis key if never rotated): the only key
    /// that may append to it.
    pub fn current_key(&self) -> Option<KeyId> {
        self.current
    }

    /// Every problem as one line: the keys' first, then each chain's, in order.
    pub fn problems(&self) -> Vec<String> {
        self.keys
            .iter()
            .map(|k| format!("keys: {k}"))
            .chain(self.chains.iter().flat_map(|c| {
                c.problems
                    .iter()
                    .map(move |p| format!("chain {}: {p}", c.chain))
            }))
            .collect()
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_valid() {
            return write!(
                f,
                "valid: {} chains, {} entries",
                self.chains.len(),
                self.entries()
            );
        }
        f.write_str(&self.problems().join("; "))
    }
}

impl VerifyReport {
    /// The report made of `keys`' problems and `chains`' reports under `trust`.
    pub(crate) fn new(keys: Vec<KeyProblem>, chains: Vec<ChainReport>, trust: Trust) -> Self {
        let mut trusted: Vec<KeyId> = trust.keys.into_keys().collect();
        trusted.sort();
        Self {
            keys,
            chains,
            trusted,
            current: trust.current,
        }
    }
}

/// Which keys the log trusts, in the order they were introduced.
pub(crate) struct Trust {
    pub(crate) keys: HashMap<KeyId, PublicKey>,
    /// Genesis is 0; each valid rotation adds one.
    rank: HashMap<KeyId, u32>,
    /// The newest trusted key: the only one that may sign chain heads.
    current: Option<KeyId>,
}

/// Per-entry integrity, before position is considered.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Integrity {
    Intact,
    Changed,
    UnknownKey,
    BadSignature,
}

/// Verifies everything in `snap`.
pub(crate) fn verify_snapshot(snap: &Snapshot) -> VerifyReport {
    let mut chains: BTreeMap<&str, Vec<&StoredEntry>> = BTreeMap::new();
    for e in &snap.entries {
        chains.entry(e.chain.as_str()).or_default().push(e);
    }
    let system = chains
        .get(SYSTEM_CHAIN)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let (trust, key_problems) = trusted_keys(&snap.keys, system);
    let heads: HashMap<&str, &HeadRow> = snap.heads.iter().map(|h| (h.chain.as_str(), h)).collect();

    let registered: BTreeSet<&[u8]> = system
        .iter()
        .filter(|e| {
            e.action == ACTION_CHAIN_OPEN.as_bytes()
                && e.computed_hash().is_some_and(|h| h.0[..] == e.hash[..])
        })
        .map(|e| e.resource.as_slice())
        .collect();

    let mut names: BTreeSet<&str> = chains.keys().copied().collect();
    names.extend(heads.keys().copied());
    names.extend(
        registered
            .iter()
            .filter_map(|r| std::str::from_utf8(r).ok()),
    );
    names.insert(SYSTEM_CHAIN);

    let claims = crate::checkpoint::check_claims(&snap.entries, |e| {
        integrity(e, &trust.keys) == Integrity::Intact
    });
    let reports = names
        .into_iter()
        .map(|name| {
            let rows = chains.get(name).map(Vec::as_slice).unwrap_or_default();
            let genesis = genesis_hash(name);
            let start = (0, genesis.as_bytes().as_slice());
            let mut problems = verify_chain(name, rows, heads.get(name).copied(), &trust, start);
            if name == SYSTEM_CHAIN {
                problems.extend(claims.iter().cloned());
                problems.sort_by_key(problem_order);
            }
            let is_registered = name == SYSTEM_CHAIN || registered.contains(name.as_bytes());
            if !is_registered {
                problems.insert(0, Problem::Unregistered);
            } else if rows.is_empty() && !heads.contains_key(name) {
                problems = vec![Problem::ChainMissing];
            }
            ChainReport {
                chain: name.to_owned(),
                entries: rows.len() as u64,
                problems,
            }
        })
        .collect();
    VerifyReport::new(key_problems, reports, trust)
}

/// Works out which pinned keys are trusted: the single genesis key, then every key introduced
/// by an intact rotation entry signed by the key in force at that point.
pub(crate) fn trusted_keys(rows: &[KeyRow], system: &[&StoredEntry]) -> (Trust, Vec<KeyProblem>) {
    let mut problems = Vec::new();
    let mut pinned: HashMap<KeyId, (PublicKey, Option<u64>)> = HashMap::new();
    for row in rows {
        let parsed = PublicKey::from_bytes(&row.public_key)
            .ok()
            .filter(|pk| pk.key_id().0[..] == row.key_id[..]);
        match parsed {
            Some(pk) => {
                pinned.insert(pk.key_id(), (pk, row.introduced_by));
            }
            None => problems.push(KeyProblem::Malformed {
                key_id: hex::encode(&row.key_id),
            }),
        }
    }
    let genesis: Vec<_> = pinned
        .iter()
        .filter(|(_, (_, by))| by.is_none())
        .map(|(id, (pk, _))| (*id, *pk))
        .collect();
    if genesis.len() != 1 {
        problems.push(KeyProblem::GenesisCount {
            found: genesis.len(),
        });
    }
    let mut current = (genesis.len() == 1).then(|| genesis[0].0);
    let mut rank: HashMap<KeyId, u32> = genesis.iter().map(|(id, _)| (*id, 0)).collect();
    let mut trusted: HashMap<KeyId, PublicKey> = genesis.into_iter().collect();

    let mut rotations: Vec<&&StoredEntry> = system
        .iter()
        .filter(|e| e.action == ACTION_KEY_ROTATE.as_bytes())
        .collect();
    rotations.sort_by_key(|e| e.seq);
    for e in rotations {
        let Some(new_id) = std::str::from_utf8(&e.resource)
            .ok()
            .and_then(|r| r.strip_prefix(KEY_RESOURCE_PREFIX))
            .and_then(|h| h.parse::<capsid_crypto::Digest>().ok())
            .map(|d| KeyId(d.0))
        else {
            continue;
        };
        // Only the key in force may hand over: a retired key cannot introduce another.
        if e.signer() != current || integrity(e, &trusted) != Integrity::Intact {
            continue;
        }
        match pinned.get(&new_id) {
            Some((pk, Some(by))) if *by == e.seq => {
                trusted.insert(new_id, *pk);
                rank.insert(new_id, u32::try_from(rank.len()).unwrap_or(u32::MAX));
                current = Some(new_id);
            }
            _ => problems.push(KeyProblem::RotatedKeyMissing {
                key_id: new_id.to_string(),
            }),
        }
    }
    let mut unintroduced: Vec<_> = pinned
        .keys()
        .filter(|id| !trusted.contains_key(id))
        .map(ToString::to_string)
        .collect();
    unintroduced.sort();
    problems.extend(
        unintroduced
            .into_iter()
            .map(|key_id| KeyProblem::Unintroduced { key_id }),
    );
    (
        Trust {
            keys: trusted,
            rank,
            current,
        },
        problems,
    )
}

fn hash_matches(e: &StoredEntry) -> bool {
    e.computed_hash().is_some_and(|h| h.0[..] == e.hash[..])
}

/// Integrity of a single entry with an individual (strict) signature check.
pub(crate) fn integrity(e: &StoredEntry, trusted: &HashMap<KeyId, PublicKey>) -> Integrity {
    if !hash_matches(e) {
        return Integrity::Changed;
    }
    let Some(pk) = e.signer().and_then(|id| trusted.get(&id)) else {
        return Integrity::UnknownKey;
    };
    match Signature::from_slice(&e.signature) {
        Some(sig) if pk.verify(&e.hash, &sig).is_ok() => Integrity::Intact,
        _ => Integrity::BadSignature,
    }
}

/// Integrity of every row, with signatures checked in batches.
fn integrity_all(rows: &[&StoredEntry], trusted: &HashMap<KeyId, PublicKey>) -> Vec<Integrity> {
    let mut out = vec![Integrity::Intact; rows.len()];
    let mut pending: Vec<(usize, PublicKey, Signature)> = Vec::with_capacity(VERIFY_BATCH);
    let flush = |pending: &mut Vec<(usize, PublicKey, Signature)>, out: &mut [Integrity]| {
        if pending.is_empty() {
            return;
        }
        let msgs: Vec<&[u8]> = pending
            .iter()
            .map(|(i, _, _)| rows[*i].hash.as_slice())
            .collect();
        let sigs: Vec<Signature> = pending.iter().map(|(_, _, s)| *s).collect();
        let keys: Vec<PublicKey> = pending.iter().map(|(_, k, _)| *k).collect();
        if verify_batch(&msgs, &sigs, &keys).is_err() {
            for (i, pk, sig) in pending.iter() {
                if pk.verify(&rows[*i].hash, sig).is_err() {
                    out[*i] = Integrity::BadSignature;
                }
            }
        }
        pending.clear();
    };
    for (i, e) in rows.iter().enumerate() {
        if !hash_matches(e) {
            out[i] = Integrity::Changed;
            continue;
        }
        let Some(pk) = e.signer().and_then(|id| trusted.get(&id)) else {
            out[i] = Integrity::UnknownKey;
            continue;
        };
        let Some(sig) = Signature::from_slice(&e.signature) else {
            out[i] = Integrity::BadSignature;
            continue;
        };
        pending.push((i, *pk, sig));
        if pending.len() == VERIFY_BATCH {
            flush(&mut pending, &mut out);
        }
    }
    flush(&mut pending, &mut out);
    out
}

/// The head's `(seq, hash)` if it is signed by the log's current key: a rotation re-signs
/// every head, so a retired key can never extend a chain.
pub(crate) fn valid_head<'a>(
    chain: &str,
    head: &'a HeadRow,
    trust: &Trust,
) -> Option<(u64, &'a [u8])> {
    let id = KeyId::from_slice(&head.key_id).filter(|id| Some(*id) == trust.current)?;
    let pk = trust.keys.get(&id)?;
    let sig = Signature::from_slice(&head.signature)?;
    let msg = head_message(chain, head.seq, &head.hash);
    pk.verify(msg.as_bytes(), &sig).ok()?;
    Some((head.seq, head.hash.as_slice()))
}

/// Verifies `rows` (one chain's, in storage order) as the chain's entries after `start`
/// (the sequence and hash they follow: `(0, genesis)` for a whole chain, a checkpoint's head
/// for what follows it), against its signed `head`.
pub(crate) fn verify_chain(
    chain: &str,
    rows: &[&StoredEntry],
    head: Option<&HeadRow>,
    trust: &Trust,
    start: (u64, &[u8]),
) -> Vec<Problem> {
    let mut problems = Vec::new();
    if rows.is_empty() && head.is_none() {
        return problems;
    }
    let signed_head = match head {
        None => {
            problems.push(Problem::NoHead);
            None
        }
        Some(h) => {
            let v = valid_head(chain, h, trust);
            if v.is_none() {
                problems.push(Problem::HeadInvalid);
            }
            v
        }
    };
    let status = integrity_all(rows, &trust.keys);

    let limit = signed_head.map(|(s, _)| s);
    let seqs = effective_seqs(rows, &status);
    let genuine = pick_genuine(rows, &seqs, &status, (start.0, limit), &mut problems);
    check_storage_order(&seqs, &genuine, &mut problems);

    // Walk the chain in sequence order.
    let mut expected_seq: u64 = start.0.saturating_add(1);
    let mut newest_rank = 0;
    let mut expected_prev: Option<Vec<u8>> = Some(start.1.to_vec());
    for (&seq, &i) in &genuine {
        let e = rows[i];
        if seq > expected_seq {
            problems.push(Problem::Missing {
                first_seq: expected_seq,
                last_seq: seq - 1,
            });
            expected_prev = None;
        }
        match status[i] {
            Integrity::Changed => problems.push(Problem::ChangedField { seq }),
            // A row that is not intact proves nothing about what follows it.
            Integrity::UnknownKey => problems.push(Problem::UnknownKey {
                seq,
                key_id: hex::encode(&e.key_id),
            }),
            Integrity::BadSignature => problems.push(Problem::BadSignature { seq }),
            Integrity::Intact => {
                let rank = e
                    .signer()
                    .and_then(|id| trust.rank.get(&id))
                    .copied()
                    .unwrap_or(0);
                if rank < newest_rank {
                    problems.push(Problem::RetiredKey { seq });
                } else if expected_prev.as_ref().is_some_and(|p| *p != e.prev_hash) {
                    problems.push(Problem::BrokenLink { seq });
                }
                newest_rank = newest_rank.max(rank);
            }
        }
        expected_prev = (status[i] == Integrity::Intact).then(|| e.hash.clone());
        expected_seq = seq.saturating_add(1);
    }
    if let Some((head_seq, head_hash)) = signed_head {
        if head_seq >= expected_seq {
            problems.push(Problem::Missing {
                first_seq: expected_seq,
                last_seq: head_seq,
            });
        } else if let Some(&i) = genuine.get(&head_seq)
            && rows[i].hash != head_hash
        {
            problems.push(Problem::HeadMismatch { seq: head_seq });
        }
    }
    problems.sort_by_key(problem_order);
    problems
}

/// The sequence number each row really holds. A changed row's stored `seq` may itself be the
/// changed field; where intact neighbours still link to it (its successor names its hash as
/// `prev_hash`, or its `prev_hash` is an intact entry's hash), its place is taken from them.
fn effective_seqs(rows: &[&StoredEntry], status: &[Integrity]) -> Vec<u64> {
    let intact = || {
        rows.iter()
            .zip(status)
            .filter(|(_, s)| **s == Integrity::Intact)
            .map(|(e, _)| *e)
    };
    let seq_by_hash: HashMap<&[u8], u64> = intact().map(|e| (e.hash.as_slice(), e.seq)).collect();
    let seq_by_prev: HashMap<&[u8], u64> =
        intact().map(|e| (e.prev_hash.as_slice(), e.seq)).collect();
    rows.iter()
        .zip(status)
        .map(|(e, s)| {
            if *s != Integrity::Changed {
                return e.seq;
            }
            seq_by_prev
                .get(e.hash.as_slice())
                .and_then(|next| next.checked_sub(1))
                .or_else(|| {
                    seq_by_hash
                        .get(e.prev_hash.as_slice())
                        .and_then(|prev| prev.checked_add(1))
                })
                .unwrap_or(e.seq)
        })
        .collect()
}

/// Picks one genuine row per sequence number: intact first, then the one its successor links
/// to, then the earliest stored. Every other claimant, every row at or before `floor` (the
/// sequence the rows follow) and every row past the signed head `limit` is reported as
/// inserted.
fn pick_genuine(
    rows: &[&StoredEntry],
    seqs: &[u64],
    status: &[Integrity],
    (floor, limit): (u64, Option<u64>),
    problems: &mut Vec<Problem>,
) -> BTreeMap<u64, usize> {
    let mut by_seq: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
    for (i, &seq) in seqs.iter().enumerate() {
        by_seq.entry(seq).or_default().push(i);
    }
    let mut genuine = BTreeMap::new();
    for (&seq, claimants) in &by_seq {
        if seq <= floor || limit.is_some_and(|l| seq > l) {
            problems.extend(claimants.iter().map(|_| Problem::Inserted { seq }));
            continue;
        }
        let linked_by_next = |i: usize| {
            seq.checked_add(1)
                .and_then(|next| by_seq.get(&next))
                .is_some_and(|next| next.iter().any(|&n| rows[n].prev_hash == rows[i].hash))
        };
        let best = claimants
            .iter()
            .copied()
            .max_by_key(|&i| {
                (
                    status[i] == Integrity::Intact,
                    linked_by_next(i),
                    std::cmp::Reverse(i),
                )
            })
            .unwrap_or(claimants[0]);
        genuine.insert(seq, best);
        problems.extend(
            claimants
                .iter()
                .filter(|&&i| i != best)
                .map(|_| Problem::Inserted { seq }),
        );
    }
    genuine
}

/// Storage order must follow sequence order; a genuine row stored after a later one is
/// reordered.
fn check_storage_order(seqs: &[u64], genuine: &BTreeMap<u64, usize>, problems: &mut Vec<Problem>) {
    let mut positions: Vec<usize> = genuine.values().copied().collect();
    positions.sort_unstable();
    let mut max_seen = 0;
    for i in positions {
        let seq = seqs[i];
        if seq < max_seen {
            problems.push(Problem::Reordered {
                seq,
                after_seq: max_seen,
            });
        }
        max_seen = max_seen.max(seq);
    }
}

fn problem_order(p: &Problem) -> (u64, u8) {
    match p {
        Problem::NoHead | Problem::HeadInvalid | Problem::ChainMissing | Problem::Unregistered => {
            (0, 0)
        }
        Problem::CheckpointMismatch { seq } => (*seq, 5),
        Problem::Missing { first_seq, .. } => (*first_seq, 1),
        Problem::Reordered { seq, .. } => (*seq, 2),
        Problem::Inserted { seq } => (*seq, 3),
        Problem::ChangedField { seq }
        | Problem::BadSignature { seq }
        | Problem::UnknownKey { seq, .. }
        | Problem::BrokenLink { seq }
        | Problem::RetiredKey { seq }
        | Problem::HeadMismatch { seq } => (*seq, 4),
    }
}
