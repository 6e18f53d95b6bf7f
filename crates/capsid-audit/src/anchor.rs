//! Chain heads anchored off-host. A host publishes its chains' heads somewhere it cannot
//! rewrite alone (a lattice's stream); [`check_anchored`] later asks whether the log still
//! holds each one: the entry at that chain and sequence, with that hash. A log truncated
//! after it published (the entry gone) or rewritten (another entry in its place, however
//! well re-signed and chained) fails, even when its own chains verify.

use std::path::Path;

use capsid_crypto::Digest;
use rusqlite::OptionalExtension;
use serde::{Deserialize, Serialize};

use crate::error::AuditError;
use crate::schema::{self, sqlite_err};
use crate::store::read_heads;

/// A chain's last entry: what an anchor records.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ChainHead {
    /// The chain id.
    pub chain: String,
    /// Its last entry's sequence number.
    pub seq: u64,
    /// Its last entry's hash (hex).
    pub hash: String,
}

/// An anchored head the log no longer holds.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AnchorProblem {
    /// The entry is gone: the chain was truncated after the head was anchored.
    #[error("chain {chain}: entry {seq}, anchored off-host, is missing (the log was truncated)")]
    Missing {
        /// The chain.
        chain: String,
        /// The anchored entry's sequence number.
        seq: u64,
    },
    /// Another entry stands in its place: the chain was rewritten.
    #[error(
        "chain {chain}: entry {seq} differs from the one anchored off-host (the log was rewritten)"
    )]
    Rewritten {
        /// The chain.
        chain: String,
        /// The anchored entry's sequence number.
        seq: u64,
    },
}

/// The heads of every chain of the log at `path`, read-only (as its `chains` table says).
pub fn chain_heads(path: impl AsRef<Path>) -> Result<Vec<ChainHead>, AuditError> {
    let path = path.as_ref();
    let conn = schema::open_ro(path)?;
    let mut heads: Vec<ChainHead> = read_heads(&conn, path)?
        .into_iter()
        .map(|h| ChainHead {
            chain: h.chain,
            seq: h.seq,
            hash: hex::encode(&h.hash),
        })
        .collect();
    heads.sort_by(|a, b| a.chain.cmp(&b.chain));
    Ok(heads)
}

/// Which of `anchored` the log at `path` no longer holds as anchored (empty: all held).
pub fn check_anchored(
    path: impl AsRef<Path>,
    anchored: &[ChainHead],
) -> Result<Vec<AnchorProblem>, AuditError> {
    let path = path.as_ref();
    let conn = schema::open_ro(path)?;
    let err = sqlite_err(path);
    let mut stmt = conn
        .prepare("SELECT hash FROM entries WHERE chain = ?1 AND seq = ?2")
        .map_err(&err)?;
    let mut problems = Vec::new();
    for head in anchored {
        let seq = i64::try_from(head.seq).unwrap_or(i64::MAX);
        let stored: Option<Vec<u8>> = stmt
            .query_row(rusqlite::params![head.chain, seq], |r| r.get(0))
            .optional()
            .map_err(&err)?;
        let (chain, seq) = (head.chain.clone(), head.seq);
        match stored {
            None => problems.push(AnchorProblem::Missing { chain, seq }),
            Some(hash) => {
                let same = Digest::from_slice(&hash)
                    .is_some_and(|d| hex::encode(d.as_bytes()) == head.hash);
                if !same {
                    problems.push(AnchorProblem::Rewritten { chain, seq });
                }
            }
        }
    }
    Ok(problems)
}
