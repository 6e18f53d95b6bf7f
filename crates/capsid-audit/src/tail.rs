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

/// Which capsules changed each of the `wanted` workspace resources (`fs://workspace/<path>`)
/// since the operator last reviewed the workspace: the allowed `fs.*` effects recorded
/// after the newest review that took effect (a `workspace.commit` or `workspace.discard`
/// whose last part no `operator.failed` followed before the next review, or a
/// `workspace.commit.recovered`), as `resource → capsules` (sorted). Only `wanted`
/// resources are kept, so what capsules wrote elsewhere costs no memory. A view for review,
/// read-only and unverified, like [`tail`].
pub fn workspace_writers(
    db: &Path,
    wanted: &std::collections::BTreeSet<String>,
) -> Result<std::collections::BTreeMap<String, std::collections::BTreeSet<String>>, AuditError> {
    let conn = schema::open_ro(db)?;
    let err = schema::sqlite_err(db);
    // Newest first, stopping at the first review that took effect: recent reviews make it
    // short. A review recorded in parts counts at its last part.
    let since: i64 = conn
        .query_row(
            "SELECT COALESCE((SELECT e.id FROM entries e \
               WHERE e.action IN (?1, ?2, ?3) \
                 AND json_extract(e.details, '$.part') IS json_extract(e.details, '$.parts') \
                 AND NOT EXISTS (SELECT 1 FROM entries f \
                   WHERE f.id > e.id AND f.action = ?4 \
                     AND json_extract(f.details, '$.action') = e.action \
                     AND f.id < COALESCE((SELECT MIN(g.id) FROM entries g \
                       WHERE g.id > e.id AND g.action IN (?1, ?2, ?3)), 9223372036854775807)) \
               ORDER BY e.id DESC LIMIT 1), 0)",
            [
                crate::action::WORKSPACE_COMMIT,
                crate::action::WORKSPACE_DISCARD,
                crate::action::WORKSPACE_COMMIT_RECOVERED,
                crate::action::OPERATOR_FAILED,
            ],
            |r| r.get(0),
        )
        .map_err(&err)?;
    let mut stmt = conn
        .prepare(
            "SELECT resource, capsule FROM entries WHERE id > ?1 AND decision = 'allow' \
             AND capsule != '' AND action IN (?2, ?3, ?4, ?5, ?6, ?7)",
        )
        .map_err(&err)?;
    let rows = stmt
        .query_map(
            rusqlite::params![
                since,
                crate::action::FS_WRITE,
                crate::action::FS_APPEND,
                crate::action::FS_CREATE_DIR,
                crate::action::FS_REMOVE_FILE,
                crate::action::FS_REMOVE_DIR,
                crate::action::FS_RENAME,
            ],
            |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)),
        )
        .map_err(&err)?;
    let mut out: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> =
        std::collections::BTreeMap::new();
    for row in rows {
        let (resource, capsule) = row.map_err(&err)?;
        if wanted.contains(&resource) {
            out.entry(resource).or_default().insert(capsule);
        }
    }
    Ok(out)
}
