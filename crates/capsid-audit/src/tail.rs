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

/// Which capsules changed each workspace path since the operator last reviewed the
/// workspace: the allowed `fs.*` effects recorded after the newest `workspace.commit`,
/// `workspace.discard` or `workspace.commit.recovered` entry, as `resource → capsules`
/// (`fs://workspace/<path>`, capsule names sorted). A view for review, read-only and
/// unverified, like [`tail`].
pub fn workspace_writers(
    db: &Path,
) -> Result<std::collections::BTreeMap<String, std::collections::BTreeSet<String>>, AuditError> {
    let conn = schema::open_ro(db)?;
    let err = schema::sqlite_err(db);
    // Newest first, stopping at the first review: recent reviews make this short.
    let since: i64 = conn
        .query_row(
            "SELECT COALESCE((SELECT id FROM entries WHERE action IN (?1, ?2, ?3) \
             ORDER BY id DESC LIMIT 1), 0)",
            [
                crate::action::WORKSPACE_COMMIT,
                crate::action::WORKSPACE_DISCARD,
                crate::action::WORKSPACE_COMMIT_RECOVERED,
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
        out.entry(resource).or_default().insert(capsule);
    }
    Ok(out)
}
