//! Who built a capsule: `capsid key generate`, `capsid capsule sign | verify`, and the trust
//! store (`capsid trust add | rm | ls`). A publisher's key never leaves the publisher's
//! machine, so signing with `--key` happens here, without a daemon; signing with the runtime
//! key, checking, and changing what the home trusts go through the daemon, which records them.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use capsid_protocol::Client;
use capsid_protocol::methods::{
    CapsuleDirParams, CapsuleSign, CapsuleVerify, NoParams, TrustAdd, TrustAddParams, TrustList,
    TrustNameParams, TrustRemove, TrustedKeyView,
};

use crate::TrustCommand;
use crate::output;

/// `capsid key generate FILE`: a new publisher key (0600), never over an existing file.
pub(crate) fn generate(file: &Path, as_json: bool) -> Result<()> {
    let key = capsid_crypto::generate_key_file(file)
        .with_context(|| format!("creating the key file {}", file.display()))?;
    let public = hex::encode(key.public_key().to_bytes());
    let key_id = key.key_id().to_string();
    if as_json {
        output::json(&serde_json::json!({ "file": file, "public_key": public, "key_id": key_id }));
    } else {
        println!("{:<12}{}", "key file", file.display());
        println!("{:<12}{public}", "public key");
        println!("{:<12}{key_id}", "key id");
        println!("a host trusts capsules it signs after: capsid trust add <name> {public}");
    }
    Ok(())
}

/// `capsid capsule sign DIR --key FILE`: signs with a publisher's key, here.
pub(crate) fn sign_with(dir: &Path, key_file: &Path, as_json: bool) -> Result<()> {
    let key = capsid_crypto::load_key_file(key_file)
        .with_context(|| format!("reading the key file {}", key_file.display()))?;
    let sig = capsid_signing::sign_capsule(dir, &key)?;
    print_signed(
        &sig.name,
        &sig.version,
        &sig.key_id(),
        &dir.join(capsid_signing::SIGNATURE_FILE),
        as_json,
    );
    Ok(())
}

/// `capsid capsule sign DIR`: signs with the runtime key, through the daemon (recorded).
pub(crate) async fn sign(client: &mut Client, dir: PathBuf, as_json: bool) -> Result<()> {
    let dir = std::path::absolute(&dir).context("the capsule directory")?;
    let signed = client
        .call::<CapsuleSign>(&CapsuleDirParams { dir })
        .await?;
    print_signed(
        signed.name.as_str(),
        &signed.version,
        &signed.key_id,
        &signed.file,
        as_json,
    );
    Ok(())
}

fn print_signed(name: &str, version: &str, key_id: &str, file: &Path, as_json: bool) {
    if as_json {
        output::json(&serde_json::json!({
            "name": name, "version": version, "key_id": key_id, "file": file,
        }));
    } else {
        println!("signed {name} {version} with key {key_id}");
        println!("wrote {}", file.display());
    }
}

/// `capsid capsule verify DIR`: the check a load makes, through the daemon.
pub(crate) async fn verify(client: &mut Client, dir: PathBuf, as_json: bool) -> Result<()> {
    let dir = std::path::absolute(&dir).context("the capsule directory")?;
    let verified = client
        .call::<CapsuleVerify>(&CapsuleDirParams { dir })
        .await?;
    if as_json {
        output::json(&verified);
    } else {
        let signer = verified.signer.as_ref().map_or_else(
            || "not checked (signing is off)".to_owned(),
            ToString::to_string,
        );
        println!("{:<12}{} {}", "capsule", verified.name, verified.version);
        println!("{:<12}{signer}", "signed by");
        println!("{:<12}{}", "requires", verified.require);
        println!("it would load on this host");
    }
    Ok(())
}

/// `capsid trust ...`.
pub(crate) async fn trust(client: &mut Client, command: TrustCommand, as_json: bool) -> Result<()> {
    match command {
        TrustCommand::Ls => {
            let keys = client.call::<TrustList>(&NoParams {}).await?;
            if as_json {
                output::json(&keys);
            } else {
                let rows: Vec<Vec<String>> = keys.iter().map(row).collect();
                output::table(&["name", "key id", "capsules"], &rows);
            }
        }
        TrustCommand::Add {
            name,
            public_key,
            capsules,
        } => {
            let key = client
                .call::<TrustAdd>(&TrustAddParams {
                    name,
                    public_key,
                    capsules,
                })
                .await?;
            if as_json {
                output::json(&key);
            } else {
                println!(
                    "trusted {} (key {}) to sign {}",
                    key.name,
                    key.key_id,
                    scope(&key)
                );
                println!("(a signature grants nothing: capsules it signs get only what you grant)");
            }
        }
        TrustCommand::Rm { name } => {
            let key = client
                .call::<TrustRemove>(&TrustNameParams { name })
                .await?;
            if as_json {
                output::json(&key);
            } else {
                println!(
                    "no longer trusted: {} (key {}); capsules it signed will not load again",
                    key.name, key.key_id
                );
            }
        }
    }
    Ok(())
}

fn scope(k: &TrustedKeyView) -> String {
    if k.capsules.is_empty() {
        "any capsule".to_owned()
    } else {
        format!("capsules named {}", k.capsules.join(", "))
    }
}

fn row(k: &TrustedKeyView) -> Vec<String> {
    vec![
        k.name.clone(),
        k.key_id.get(..16).unwrap_or(&k.key_id).to_owned(),
        if k.capsules.is_empty() {
            "*".to_owned()
        } else {
            k.capsules.join(",")
        },
    ]
}
