//! Who the operator trusts to sign capsules: the trust store's changes (each recorded before
//! it is made) and signing a reviewed capsule with the runtime key (recorded too).

use std::path::Path;
use std::sync::Arc;

use capsid_audit::action;
use capsid_signing::{
    CapsuleContents, CapsuleSignature, Checked, SIGNATURE_FILE, SignatureCheck, TrustedKey,
};

use crate::boot::blocking;
use crate::error::KernelError;
use crate::kernel::Kernel;

impl Kernel {
    /// The check every load makes (what it requires, and whom it trusts).
    pub fn signatures(&self) -> &Arc<SignatureCheck> {
        &self.registry().services().signatures
    }

    /// The runtime key's public half: always trusted to sign capsules.
    pub fn runtime_public_key(&self) -> capsid_crypto::PublicKey {
        self.parts().runtime_key.public_key()
    }

    /// The keys this home trusts besides the runtime key.
    pub fn trusted_keys(&self) -> Vec<TrustedKey> {
        self.signatures().store().list()
    }

    /// Trusts `public_key` (hex) as `name` to sign capsules whose names match one of
    /// `capsules` (all, when empty). Recorded before it is made. It grants nothing: the
    /// capsules it signs load, with only what the operator grants them.
    pub async fn trust_add(
        &self,
        name: &str,
        public_key: &str,
        capsules: Vec<String>,
    ) -> Result<TrustedKey, KernelError> {
        self.open_recording()?;
        let added_at = u64::try_from(capsid_core::time::now_ms()).unwrap_or_default();
        let key = TrustedKey::new(name, public_key, capsules, added_at)?;
        let store = self.signatures().store().clone();
        store.check_add(&key)?;
        self.note(
            action::TRUST_ADD,
            &format!("trust://{name}"),
            serde_json::json!({
                "key_id": key.public_key.key_id().to_string(),
                "public_key": hex::encode(key.public_key.to_bytes()),
                "capsules": key.capsules,
            }),
        )
        .await?;
        let added = key.clone();
        let result = blocking(move || store.add(added)).await?;
        self.failed_after_record(action::TRUST_ADD, &format!("trust://{name}"), result)
            .await?;
        Ok(key)
    }

    /// Stops trusting the key named `name`: the next load of a capsule it signed is
    /// refused. Recorded before it is made.
    pub async fn trust_remove(&self, name: &str) -> Result<TrustedKey, KernelError> {
        self.open_recording()?;
        let store = self.signatures().store().clone();
        let Some(key) = store.list().into_iter().find(|k| k.name == name) else {
            return Err(capsid_signing::TrustError::NotFound(name.to_owned()).into());
        };
        self.note(
            action::TRUST_REMOVE,
            &format!("trust://{name}"),
            serde_json::json!({
                "key_id": key.public_key.key_id().to_string(),
                "capsules": key.capsules,
            }),
        )
        .await?;
        let owned = name.to_owned();
        let result = blocking(move || store.remove(&owned).map(drop)).await?;
        self.failed_after_record(action::TRUST_REMOVE, &format!("trust://{name}"), result)
            .await?;
        Ok(key)
    }

    /// Signs the capsule in `dir` with the runtime key, for an operator who reviewed it:
    /// writes its `Capsule.sig`. Recorded (with the hashes signed) before it is written.
    pub async fn sign_capsule(&self, dir: &Path) -> Result<CapsuleSignature, KernelError> {
        self.open_recording()?;
        let owned = dir.to_owned();
        let contents =
            blocking(move || CapsuleContents::read(&owned).map_err(KernelError::from)).await??;
        let signature = contents.sign(&self.parts().runtime_key);
        self.note(
            action::CAPSULE_SIGN,
            &format!("capsule://{}", contents.manifest.name),
            serde_json::json!({
                "dir": dir,
                "version": signature.version,
                "manifest_blake3": signature.manifest_blake3.to_string(),
                "component_blake3": signature.component_blake3.map(|d| d.to_string()),
                "key_id": signature.key_id(),
            }),
        )
        .await?;
        let file = dir.join(SIGNATURE_FILE);
        let text = signature.to_text()?;
        let written = blocking(move || {
            capsid_core::file::write_atomic(&file, text.as_bytes(), 0o644)
                .map_err(|source| KernelError::Io { path: file, source })
        })
        .await?;
        let resource = format!("capsule://{}", contents.manifest.name);
        self.failed_after_record(action::CAPSULE_SIGN, &resource, written)
            .await?;
        Ok(signature)
    }

    /// Checks the capsule in `dir` as a load would, its component hashed too.
    pub async fn verify_capsule(
        &self,
        dir: &Path,
    ) -> Result<(CapsuleContents, Checked), KernelError> {
        let check = self.signatures().clone();
        let dev = self.config().dev;
        let owned = dir.to_owned();
        blocking(move || check.check_dir(&owned, dev).map_err(KernelError::from)).await?
    }

    /// After a recorded operator action failed: records that it did not happen (on
    /// `resource`, as `operator.failed`), and returns the failure.
    pub(crate) async fn failed_after_record<E: Into<KernelError>>(
        &self,
        what: &str,
        resource: &str,
        result: Result<(), E>,
    ) -> Result<(), KernelError> {
        let Err(e) = result else { return Ok(()) };
        let e: KernelError = e.into();
        self.record_failure(what, resource, &e).await;
        Err(e)
    }

    /// Records that a recorded operator action `what` on `resource` did not happen, and
    /// why (a failure to record that is logged: the action's own error is what matters).
    pub(crate) async fn record_failure(&self, what: &str, resource: &str, e: &KernelError) {
        let details = serde_json::json!({ "action": what, "error": e.to_string() });
        if let Err(note) = self.note(action::OPERATOR_FAILED, resource, details).await {
            tracing::warn!(error = %note, action = what, resource, "recording a failed operator action");
        }
    }
}
