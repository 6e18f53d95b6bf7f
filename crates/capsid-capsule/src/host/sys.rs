//! `capsid:host/sys`: clocks, randomness, configuration, identity. Nothing here needs a
//! capability: none of it reaches outside the capsule.

use std::time::{SystemTime, UNIX_EPOCH};

use capsid_core::limits::MAX_RANDOM_BYTES;

use crate::bindings::WitError;
use crate::bindings::capsid::host::sys::{Host, Identity};

use super::HostState;

impl Host for HostState {
    fn now_ms(&mut self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    fn monotonic_ns(&mut self) -> u64 {
        u64::try_from(self.cx.started.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn random_bytes(&mut self, len: u32) -> Result<Vec<u8>, WitError> {
        if len > MAX_RANDOM_BYTES {
            return Err(WitError::Invalid(format!(
                "random-bytes: {len} bytes asked, at most {MAX_RANDOM_BYTES} per call"
            )));
        }
        let mut out = vec![0u8; len as usize];
        getrandom::fill(&mut out)
            .map_err(|e| WitError::Internal(format!("the random source failed: {e}")))?;
        Ok(out)
    }

    fn config(&mut self, key: String) -> Option<String> {
        self.cx
            .config
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.clone())
    }

    fn caller(&mut self) -> Identity {
        Identity {
            principal: self.cx.subject.principal.to_string(),
            capsule: self.cx.name.to_string(),
        }
    }
}
