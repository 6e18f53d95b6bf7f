//! `capsid:host/kv`: the capsule's own namespace of the store ([`ScopedKvStore`]), checked
//! against `kv://capsule/<name>` on every call.
//!
//! [`ScopedKvStore`]: capsid_storage::ScopedKvStore

use capsid_capabilities::Permissions;
use capsid_core::limits::{MAX_KV_VALUE_BYTES, MAX_SCOPED_KEY_BYTES};
use capsid_storage::KvError;

use crate::bindings::WitError;
use crate::bindings::capsid::host::kv::{Host, Page};

use super::HostState;

/// The guest's view of a storage error: its own mistakes in full, the backend's as a bare
/// `internal` (details go to the host log, not the capsule).
fn guest_error(e: KvError) -> WitError {
    match e {
        KvError::BadKey { .. } | KvError::ValueTooLarge { .. } | KvError::OutOfRange { .. } => {
            WitError::Invalid(e.to_string())
        }
        KvError::QuotaExceeded { .. } => WitError::QuotaExceeded,
        other => {
            tracing::error!(error = %other, "capsule kv call failed");
            WitError::Internal("storage unavailable".into())
        }
    }
}

/// Refuses a key or value the store would refuse anyway, before anything is authorized or
/// audited: a malformed write leaves no allow record behind.
fn check(key: &[u8], value: Option<&[u8]>) -> Result<(), WitError> {
    if key.is_empty() || key.len() > MAX_SCOPED_KEY_BYTES {
        return Err(WitError::Invalid(format!(
            "key of {} bytes is outside the allowed 1..={MAX_SCOPED_KEY_BYTES}",
            key.len()
        )));
    }
    match value {
        Some(v) if v.len() > MAX_KV_VALUE_BYTES => Err(WitError::Invalid(format!(
            "value of {} bytes exceeds the limit of {MAX_KV_VALUE_BYTES}",
            v.len()
        ))),
        _ => Ok(()),
    }
}

impl Host for HostState {
    async fn get(&mut self, key: Vec<u8>) -> Result<Option<Vec<u8>>, WitError> {
        let cx = &self.cx;
        cx.authorize(
            capsid_audit::action::KV_GET,
            Permissions::READ,
            &cx.kv_resource,
            false,
        )
        .await?;
        cx.kv.get(&key).await.map_err(guest_error)
    }

    async fn set(&mut self, key: Vec<u8>, value: Vec<u8>) -> Result<(), WitError> {
        check(&key, Some(&value))?;
        let cx = &self.cx;
        cx.authorize_writing(
            capsid_audit::action::KV_SET,
            Permissions::WRITE,
            &cx.kv_resource,
            true,
            Some(&[&key, &value]),
        )
        .await?;
        cx.kv.set(&key, &value).await.map_err(guest_error)
    }

    async fn delete(&mut self, key: Vec<u8>) -> Result<bool, WitError> {
        check(&key, None)?;
        let cx = &self.cx;
        cx.authorize(
            capsid_audit::action::KV_DELETE,
            Permissions::WRITE,
            &cx.kv_resource,
            true,
        )
        .await?;
        cx.kv.delete(&key).await.map_err(guest_error)
    }

    async fn list(
        &mut self,
        prefix: Vec<u8>,
        after: Option<Vec<u8>>,
        limit: u32,
    ) -> Result<Page, WitError> {
        let cx = &self.cx;
        cx.authorize(
            capsid_audit::action::KV_LIST,
            Permissions::READ,
            &cx.kv_resource,
            false,
        )
        .await?;
        let page = cx
            .kv
            .list(&prefix, after.as_deref(), limit as usize)
            .await
            .map_err(guest_error)?;
        Ok(Page {
            keys: page.keys,
            next: page.next,
        })
    }

    async fn compare_and_swap(
        &mut self,
        key: Vec<u8>,
        expected: Option<Vec<u8>>,
        new: Option<Vec<u8>>,
    ) -> Result<bool, WitError> {
        check(&key, new.as_deref())?;
        check(&key, expected.as_deref())?;
        let cx = &self.cx;
        cx.authorize(
            capsid_audit::action::KV_CAS,
            Permissions::WRITE,
            &cx.kv_resource,
            true,
        )
        .await?;
        cx.kv
            .compare_and_swap(&key, expected.as_deref(), new.as_deref())
            .await
            .map_err(guest_error)
    }
}
