//! What this host tells the lattice it serves, and the tools it learns the others serve
//! (listed to this host's clients with its own, for the principals allowed to call them).

use std::collections::HashSet;
use std::sync::{Arc, PoisonError};

use capsid_capsule::is_tool_name;
use capsid_core::CapsuleId;
use capsid_core::limits::LATTICE_ADVERT_INTERVAL;
use capsid_lattice::adverts::{AdvertisedCapsule, AdvertisedTool, HostAdvert};
use capsid_manifest::ToolAnnotations;
use serde_json::{Map, Value};
use tokio::task::JoinHandle;

use super::Joined;
use crate::kernel::Kernel;
use crate::tool::ToolInfo;

/// Writes this host's advertisement and reads the others' every `LATTICE_ADVERT_INTERVAL`
/// (and when the capsules served change).
pub(super) fn advertise(kernel: &Kernel, joined: &Joined) -> JoinHandle<()> {
    let weak = Arc::downgrade(&kernel.inner);
    let joined = joined.clone();
    tokio::spawn(async move {
        loop {
            let Some(inner) = weak.upgrade() else { return };
            let advert = Kernel { inner }.advert();
            if let Err(e) = joined.adverts.publish(&advert).await {
                tracing::warn!(error = %e, "cannot advertise this host's capsules");
            }
            // Bounded, so that a slow read (a consumer made again while a node is down) never
            // holds the next advertisement back past its TTL.
            match tokio::time::timeout(LATTICE_ADVERT_INTERVAL, joined.adverts.read()).await {
                Err(_) => tracing::warn!("reading the other hosts' capsules took too long"),
                Ok(Ok(seen)) => {
                    *joined
                        .others
                        .write()
                        .unwrap_or_else(PoisonError::into_inner) = seen;
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "cannot read the other hosts' capsules");
                }
            }
            tokio::select! {
                () = tokio::time::sleep(LATTICE_ADVERT_INTERVAL) => {}
                () = joined.advertise_now.notified() => {}
            }
        }
    })
}

fn annotations_json(a: ToolAnnotations) -> Value {
    let mut map = Map::new();
    for (name, hint) in [
        ("readOnlyHint", a.read_only),
        ("destructiveHint", a.destructive),
        ("idempotentHint", a.idempotent),
        ("openWorldHint", a.open_world),
    ] {
        if let Some(hint) = hint {
            map.insert(name.to_owned(), Value::Bool(hint));
        }
    }
    Value::Object(map)
}

fn annotations_from(value: &Value) -> ToolAnnotations {
    let hint = |name: &str| value.get(name).and_then(Value::as_bool);
    ToolAnnotations {
        read_only: hint("readOnlyHint"),
        destructive: hint("destructiveHint"),
        idempotent: hint("idempotentHint"),
        open_world: hint("openWorldHint"),
    }
}

impl Kernel {
    /// This host's advertisement: its capsules ready or idle, and their tools.
    fn advert(&self) -> HostAdvert {
        let capsules: Vec<AdvertisedCapsule> = self
            .offered_tools()
            .into_iter()
            .map(|(name, tools)| AdvertisedCapsule {
                tools: tools
                    .iter()
                    .map(|t| AdvertisedTool {
                        name: t.name.clone(),
                        description: t.description.clone(),
                        input_schema: t.input_schema.clone(),
                        output_schema: t.output_schema.clone(),
                        annotations: annotations_json(t.annotations),
                    })
                    .collect(),
                name: name.to_string(),
            })
            .collect();
        HostAdvert { capsules }
    }

    /// The tools other hosts advertise for capsules this host does not have, each once
    /// (the first host's description), by capsule name.
    pub(crate) fn tools_elsewhere(&self) -> Vec<ToolInfo> {
        let Some(joined) = &self.parts().lattice else {
            return Vec::new();
        };
        let mut others = joined
            .others
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        others.sort_by(|a, b| a.host.cmp(&b.host));
        let mut listed: HashSet<CapsuleId> = HashSet::new();
        let mut out = Vec::new();
        for seen in others {
            for capsule in seen.advert.capsules {
                let Ok(name) = CapsuleId::new(&capsule.name) else {
                    continue;
                };
                if !self.served_elsewhere(&name) || !listed.insert(name.clone()) {
                    continue;
                }
                for tool in capsule.tools.into_iter().filter(|t| is_tool_name(&t.name)) {
                    out.push(ToolInfo {
                        capsule: name.clone(),
                        annotations: annotations_from(&tool.annotations),
                        tool: tool.name,
                        description: tool.description,
                        input_schema: tool.input_schema,
                        output_schema: tool.output_schema,
                    });
                }
            }
        }
        out.sort_by(|a, b| a.capsule.cmp(&b.capsule));
        out
    }
}
