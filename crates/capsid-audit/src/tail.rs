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
/// since the operator last reviewed them: the allowed `fs.*` effects recorded after the
/// newest review that took effect on the resource, as `resource → capsules` (sorted). A
/// review is a `workspace.commit` or `workspace.discard` whose last part no
/// `operator.failed` followed before the next review, or a `workspace.commit.recovered` or
/// `workspace.discard.recovered`; one limited to some paths (`limited_to`) takes effect
/// on the resources at or below them only (at most
/// [`MAX_ATTRIBUTION_REVIEWS`](capsid_core::limits::MAX_ATTRIBUTION_REVIEWS) of those are
/// read; the oldest of them then counts as whole). Only `wanted` resources are kept, so what
/// capsules wrote elsewhere costs no memory. A view for review, read-only and unverified,
/// like [`tail`].
pub fn workspace_writers(
    db: &Path,
    wanted: &std::collections::BTreeSet<String>,
) -> Result<std::collections::BTreeMap<String, std::collections::BTreeSet<String>>, AuditError> {
    let conn = schema::open_ro(db)?;
    let err = schema::sqlite_err(db);
    // The reviews that took effect, newest first, down to the newest whole one (or a
    // bounded number of scoped ones). A review recorded in parts counts at its last part.
    let mut stmt = conn
        .prepare(
            "SELECT e.id, COALESCE(json_extract(e.details, '$.limited_to'), '[]') \
             FROM entries e \
             WHERE e.action IN (?1, ?2, ?3, ?4) \
               AND json_extract(e.details, '$.part') IS json_extract(e.details, '$.parts') \
               AND NOT EXISTS (SELECT 1 FROM entries f \
                 WHERE f.id > e.id AND f.action = ?5 \
                   AND json_extract(f.details, '$.action') = e.action \
                   AND f.id < COALESCE((SELECT MIN(g.id) FROM entries g \
                     WHERE g.id > e.id AND g.action IN (?1, ?2, ?3, ?4)), 9223372036854775807)) \
             ORDER BY e.id DESC",
        )
        .map_err(&err)?;
    let rows = stmt
        .query_map(
            [
                crate::action::WORKSPACE_COMMIT,
                crate::action::WORKSPACE_DISCARD,
                crate::action::WORKSPACE_COMMIT_RECOVERED,
                crate::action::WORKSPACE_DISCARD_RECOVERED,
                crate::action::OPERATOR_FAILED,
            ],
            |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)),
        )
        .map_err(&err)?;
    // (review id, the resources it was limited to), newer than the newest whole review.
    let mut since = 0;
    let mut limited: Vec<(i64, Vec<String>)> = Vec::new();
    for row in rows {
        let (id, limited_to) = row.map_err(&err)?;
        let paths: Vec<String> = serde_json::from_str(&limited_to).unwrap_or_default();
        if paths.is_empty() || limited.len() >= capsid_core::limits::MAX_ATTRIBUTION_REVIEWS {
            since = id;
            break;
        }
        let resources = paths
            .iter()
            .map(|p| format!("{}/{p}", crate::action::WORKSPACE_RESOURCE))
            .collect();
        limited.push((id, resources));
    }
    let reviewed_after = |id: i64, resource: &str| {
        limited.iter().any(|(review, resources)| {
            *review > id
                && resources.iter().any(|r| {
                    resource
                        .strip_prefix(r.as_str())
                        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
                })
        })
    };
    let mut stmt = conn
        .prepare(
            "SELECT id, resource, capsule FROM entries WHERE id > ?1 AND decision = 'allow' \
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
            |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                ))
            },
        )
        .map_err(&err)?;
    let mut out: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> =
        std::collections::BTreeMap::new();
    for row in rows {
        let (id, resource, capsule) = row.map_err(&err)?;
        if wanted.contains(&resource) && !reviewed_after(id, &resource) {
            out.entry(resource).or_default().insert(capsule);
        }
    }
    Ok(out)
}
