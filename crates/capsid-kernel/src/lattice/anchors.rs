//! This host's audit heads, anchored in the lattice: published when chains moved, every
//! `LATTICE_ANCHOR_INTERVAL` and at shutdown (after the log's last entry), and checked back
//! by `audit verify --lattice`.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError};

use capsid_audit::{AnchorProblem, ChainHead, VerifyReport};
use capsid_core::limits::LATTICE_ANCHOR_INTERVAL;
use tokio::task::JoinHandle;

use super::Joined;
use crate::error::KernelError;
use crate::kernel::Kernel;

/// What checking this host's log against its anchors found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnchorCheck {
    /// The log's own verification (every chain and signature).
    pub report: VerifyReport,
    /// Anchors this host published that were read back.
    pub anchors: usize,
    /// Distinct anchored heads checked against the log.
    pub heads: usize,
    /// Anchored heads the log no longer holds.
    pub problems: Vec<AnchorProblem>,
}

/// Publishes this host's audit heads that moved since the last anchor.
pub(super) async fn anchor_now(audit_db: std::path::PathBuf, joined: &Joined) {
    let heads = match tokio::task::spawn_blocking(move || capsid_audit::chain_heads(&audit_db))
        .await
    {
        Ok(Ok(heads)) => heads,
        Ok(Err(e)) => return tracing::warn!(error = %e, "cannot read the audit heads to anchor"),
        Err(e) => return tracing::warn!(error = %e, "cannot read the audit heads to anchor"),
    };
    let moved: Vec<ChainHead> = {
        let last = joined
            .anchored
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        heads
            .into_iter()
            .filter(|h| last.get(&h.chain) != Some(&h.seq))
            .collect()
    };
    if moved.is_empty() {
        return;
    }
    let published: HashMap<String, u64> = moved.iter().map(|h| (h.chain.clone(), h.seq)).collect();
    match joined.anchors.publish(moved).await {
        Ok(()) => joined
            .anchored
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(published),
        Err(e) => tracing::warn!(error = %e, "cannot anchor the audit heads"),
    }
}

/// Anchors this host's audit heads every `LATTICE_ANCHOR_INTERVAL`, from boot on.
pub(super) fn anchor(kernel: &Kernel, joined: &Joined) -> JoinHandle<()> {
    let weak = Arc::downgrade(&kernel.inner);
    let joined = joined.clone();
    tokio::spawn(async move {
        loop {
            let Some(inner) = weak.upgrade() else { return };
            let db = Kernel { inner }.audit().path().to_owned();
            anchor_now(db, &joined).await;
            tokio::time::sleep(LATTICE_ANCHOR_INTERVAL).await;
        }
    })
}

impl Kernel {
    /// Verifies this host's audit log entirely, and checks it still holds every head this
    /// host anchored in its lattice: a log truncated or rewritten after it published is
    /// caught even when its own chains verify.
    pub async fn verify_audit_against_lattice(&self) -> Result<AnchorCheck, KernelError> {
        let Some(joined) = &self.parts().lattice else {
            return Err(KernelError::NoLattice);
        };
        let anchored = joined.anchors.mine().await?;
        // This host anchors at every boot: none at all means the stream was emptied or
        // replaced, and nothing can be checked, which is a failure, not a pass.
        if anchored.anchors == 0 {
            return Err(KernelError::NoAnchors(joined.lattice.config().name.clone()));
        }
        let heads = anchored.heads;
        let db = self.audit().path().to_owned();
        let checked = heads.len();
        let (report, problems) = crate::boot::blocking(move || {
            let report = capsid_audit::verify_database(&db)?;
            let problems = capsid_audit::check_anchored(&db, &heads)?;
            Ok::<_, capsid_audit::AuditError>((report, problems))
        })
        .await??;
        Ok(AnchorCheck {
            report,
            anchors: anchored.anchors,
            heads: checked,
            problems,
        })
    }
}
