//! Reading the most recent entries for people (`capsid audit tail`). Unverified: this is a
//! view, not evidence; `verify_database` is the check.

use std::path::Path;

use serde::Serialize;

use crate::error::AuditError;
use crate::schema;

/// One entry as stored, for display.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EntryView {
    /// Its chain.
    pub chain: String,
    /// Its sequence number in the chain.
    pub seq: i64,
    /// When it was recorded, in ns since the Unix epoch.
    pub time_ns: i64,
    /// On whose authority.
    pub principal: String,
    /// The capsule involved (empty for none).
    pub capsule: String,
    /// What was done or asked.
    pub action: String,
    /// On what.
    pub resource: String,
    /// `allow`, `deny` or `info`.
    pub decision: String,
    /// JSON details.
    pub details: String,
}

/// The last `n` entries of the log at `db` in storage order (oldest first), read-only.
pub fn tail(db: &Path, n: usize) -> Result<Vec<EntryView>, AuditError> {
    let conn = schema::open_ro(db)?;
    let err = schema::sqlite_err(db);
    let limit = i64::try_from(n).unwrap_or(i64::MAX);
    let mut stmt = conn
        .prepare(
            "SELECT chain, seq, time_ns, principal, capsule, action, resource, decision, details \
             FROM (SELECT * FROM entries ORDER BY id DESC LIMIT ?1) ORDER BY id",
        )
        .map_err(&err)?;
    let rows = stmt
        .query_map([limit], |r| {
            Ok(EntryView {
                chain: r.get(0)?,
                seq: r.get(1)?,
                time_ns: r.get(2)?,
                principal: r.get(3)?,
                capsule: r.get(4)?,
                action: r.get(5)?,
                resource: r.get(6)?,
                decision: r.get(7)?,
                details: r.get(8)?,
            })
        })
        .map_err(&err)?;
    rows.collect::<Result<_, _>>().map_err(err)
}
