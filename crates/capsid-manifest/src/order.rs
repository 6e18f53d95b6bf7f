//! Load order: dependencies before dependents, ties broken by name so the order is stable.

use std::collections::{BTreeMap, BTreeSet};

use capsid_core::CapsuleId;

use crate::manifest::Manifest;

/// Why capsules cannot be ordered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DependencyError {
    /// A capsule requires one that is not there.
    #[error("capsule {capsule} requires {requires}, which is not installed")]
    Missing {
        /// The capsule with the requirement.
        capsule: CapsuleId,
        /// The capsule it requires.
        requires: CapsuleId,
    },
    /// Capsules require each other in a cycle.
    #[error("dependency cycle: {}", .cycle.iter().map(ToString::to_string).collect::<Vec<_>>().join(" -> "))]
    Cycle {
        /// The cycle, its first capsule repeated at the end (`a -> b -> a`).
        cycle: Vec<CapsuleId>,
    },
}

/// The order in which to load `manifests`.
pub fn load_order(manifests: &[Manifest]) -> Result<Vec<CapsuleId>, DependencyError> {
    let names: BTreeSet<&CapsuleId> = manifests.iter().map(|m| &m.name).collect();
    let mut waiting_on: BTreeMap<&CapsuleId, BTreeSet<&CapsuleId>> = BTreeMap::new();
    for m in manifests {
        for r in &m.requires {
            if !names.contains(r) {
                return Err(DependencyError::Missing {
                    capsule: m.name.clone(),
                    requires: r.clone(),
                });
            }
        }
        waiting_on.insert(&m.name, m.requires.iter().collect());
    }
    let mut order = Vec::with_capacity(manifests.len());
    loop {
        let ready: Vec<&CapsuleId> = waiting_on
            .iter()
            .filter(|(_, deps)| deps.is_empty())
            .map(|(n, _)| *n)
            .collect();
        if ready.is_empty() {
            break;
        }
        for name in ready {
            waiting_on.remove(name);
            for deps in waiting_on.values_mut() {
                deps.remove(name);
            }
            order.push(name.clone());
        }
    }
    if waiting_on.is_empty() {
        return Ok(order);
    }
    Err(DependencyError::Cycle {
        cycle: find_cycle(&waiting_on),
    })
}

/// Every capsule left is waiting on another one left, so walking "requires" edges from the
/// smallest name must revisit a capsule: the walk from that capsule on is a cycle.
fn find_cycle(waiting_on: &BTreeMap<&CapsuleId, BTreeSet<&CapsuleId>>) -> Vec<CapsuleId> {
    let Some(mut at) = waiting_on.keys().next().copied() else {
        return Vec::new();
    };
    let mut path: Vec<&CapsuleId> = Vec::new();
    loop {
        if let Some(start) = path.iter().position(|p| *p == at) {
            let mut cycle: Vec<CapsuleId> = path[start..].iter().map(|c| (*c).clone()).collect();
            cycle.push(at.clone());
            return cycle;
        }
        path.push(at);
        match waiting_on.get(at).and_then(|deps| deps.iter().next()) {
            Some(next) => at = next,
            None => return path.into_iter().cloned().collect(),
        }
    }
}
