//! The daemon's signing and trust methods: `capsule.sign`, `capsule.verify`, `trust.*`
//! ([`Kernel::trust_add`](crate::Kernel::trust_add) and its neighbours).

use std::path::Path;

use capsid_protocol::WireError;
use capsid_protocol::methods::{
    CapsuleDirParams, Signed, TrustAddParams, TrustNameParams, TrustedKeyView, Verified,
};
use capsid_signing::{RUNTIME_SIGNER, TrustedKey};

use super::server::Shared;
use super::views::{invalid, kernel_error, signer};

type Answer<T> = Result<T, WireError>;

fn absolute(dir: &Path) -> Answer<()> {
    if dir.is_absolute() {
        Ok(())
    } else {
        Err(invalid("dir must be an absolute path"))
    }
}

fn view(k: &TrustedKey) -> TrustedKeyView {
    TrustedKeyView {
        name: k.name.clone(),
        key_id: k.public_key.key_id().to_string(),
        public_key: hex::encode(k.public_key.to_bytes()),
        capsules: k.capsules.clone(),
        added_at_ms: k.added_at_ms,
    }
}

pub(super) async fn sign(shared: &Shared, p: CapsuleDirParams) -> Answer<Signed> {
    absolute(&p.dir)?;
    let sig = shared
        .kernel
        .sign_capsule(&p.dir)
        .await
        .map_err(|e| kernel_error(&e))?;
    Ok(Signed {
        name: capsid_core::CapsuleId::new(&sig.name).map_err(|e| invalid(e.to_string()))?,
        version: sig.version.clone(),
        key_id: sig.key_id(),
        file: p.dir.join(capsid_signing::SIGNATURE_FILE),
    })
}

pub(super) async fn verify(shared: &Shared, p: CapsuleDirParams) -> Answer<Verified> {
    absolute(&p.dir)?;
    let (contents, checked) = shared
        .kernel
        .verify_capsule(&p.dir)
        .await
        .map_err(|e| kernel_error(&e))?;
    Ok(Verified {
        name: contents.manifest.name,
        version: contents.manifest.version.to_string(),
        signer: checked.signer.as_ref().map(signer),
        require: shared.kernel.signatures().require().to_string(),
    })
}

pub(super) fn list(shared: &Shared) -> Vec<TrustedKeyView> {
    let runtime = shared.kernel.runtime_public_key();
    let mut out = vec![TrustedKeyView {
        name: RUNTIME_SIGNER.to_owned(),
        key_id: runtime.key_id().to_string(),
        public_key: hex::encode(runtime.to_bytes()),
        capsules: Vec::new(),
        added_at_ms: 0,
    }];
    out.extend(shared.kernel.trusted_keys().iter().map(view));
    out
}

pub(super) async fn add(shared: &Shared, p: TrustAddParams) -> Answer<TrustedKeyView> {
    let key = shared
        .kernel
        .trust_add(&p.name, &p.public_key, p.capsules)
        .await
        .map_err(|e| kernel_error(&e))?;
    Ok(view(&key))
}

pub(super) async fn remove(shared: &Shared, p: TrustNameParams) -> Answer<TrustedKeyView> {
    let key = shared
        .kernel
        .trust_remove(&p.name)
        .await
        .map_err(|e| kernel_error(&e))?;
    Ok(view(&key))
}
