//! `process.stats`: a capsule's samples, as the operator sees them (never a process's id).

use capsid_core::CapsuleId;
use capsid_process::Sample;
use capsid_protocol::methods::{
    CapsuleStats, ProcessStatsView, ProgramStatsView, SampleView, StatsParams,
};
use capsid_protocol::{ErrorCode, WireError};

use super::server::Shared;

fn view(s: &Sample) -> SampleView {
    SampleView {
        at_ms: s.at_ms,
        cpu_percent: s.cpu_percent,
        rss_bytes: s.rss_bytes,
        tasks: u64::try_from(s.processes).unwrap_or(u64::MAX),
    }
}

fn views(samples: &[Sample]) -> Vec<SampleView> {
    samples.iter().map(view).collect()
}

/// The samples of `p.name`'s program (a native or MCP capsule) and persistent processes.
pub(super) fn stats(shared: &Shared, p: &StatsParams) -> Result<CapsuleStats, WireError> {
    let name: &CapsuleId = &p.name;
    let registry = shared.kernel.registry();
    if registry.info(name).is_none() {
        return Err(WireError::new(
            ErrorCode::NotFound,
            format!("capsule {name} is not loaded"),
        ));
    }
    let program = registry.program_stats(name).map(|s| ProgramStatsView {
        restarts: s.restarts,
        quota_breaches: s.quota_breaches,
        last_breach: s.last_breach,
        samples: views(&s.history),
    });
    let processes = registry
        .processes()
        .histories(name)
        .into_iter()
        .map(|(status, samples)| ProcessStatsView {
            label: status.label,
            generation: status.generation,
            stages: status.stages.len().max(1),
            running: status.exit.is_none(),
            restarts: status.restart.restarts,
            samples: views(&samples),
        })
        .collect();
    Ok(CapsuleStats {
        name: name.clone(),
        program,
        processes,
    })
}
