//! Why a capsule's signature is refused, and why the trust store refused a change. Every
//! message is one line that names the capsule or file and says what to run.

use std::path::PathBuf;

use capsid_core::CapsuleId;

/// Why a capsule may not load (or be signed): its signature is missing, wrong, or by a key
/// this home does not trust for it.
#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    /// No `Capsule.sig` beside the manifest.
    #[error(
        "capsule {capsule} is not signed (no Capsule.sig in {}): review it and run `capsid capsule sign {}`, or install a copy signed by a publisher you trust",
        dir.display(), dir.display()
    )]
    Unsigned {
        /// The capsule.
        capsule: CapsuleId,
        /// Its directory.
        dir: PathBuf,
    },
    /// `Capsule.sig` cannot be read or parsed, or its signature does not verify.
    #[error(
        "capsule {capsule}: {} is not a valid signature ({reason}): sign the capsule again with `capsid capsule sign {}`",
        file.display(), dir.display()
    )]
    BadSignature {
        /// The capsule.
        capsule: CapsuleId,
        /// Its directory.
        dir: PathBuf,
        /// The signature file.
        file: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A file the signature covers changed since it was signed.
    #[error(
        "capsule {capsule}: {} changed since it was signed by {signer} (blake3 {actual}, signed {expected}): restore the signed files, or review the change and sign the capsule again (`capsid capsule sign <its directory>`)",
        file.display()
    )]
    Tampered {
        /// The capsule.
        capsule: CapsuleId,
        /// The file that changed.
        file: PathBuf,
        /// Who signed it (key id, and name when trusted).
        signer: String,
        /// Its hash as signed.
        expected: String,
        /// Its hash now.
        actual: String,
    },
    /// The signature is for another package (name or version) than the manifest says.
    #[error(
        "capsule {capsule} {version}: Capsule.sig was made for {signed_name} {signed_version}: it belongs to another package; sign this one with `capsid capsule sign {}`",
        dir.display()
    )]
    WrongPackage {
        /// The capsule, as its manifest names it.
        capsule: CapsuleId,
        /// Its version, as its manifest says.
        version: String,
        /// Its directory.
        dir: PathBuf,
        /// The name the signature covers.
        signed_name: String,
        /// The version the signature covers.
        signed_version: String,
    },
    /// Signed by a key the trust store does not hold.
    #[error(
        "capsule {capsule} is signed by key {key_id}, which this home does not trust: if you trust its publisher, run `capsid trust add <name> {public_key}`"
    )]
    Untrusted {
        /// The capsule.
        capsule: CapsuleId,
        /// The signer's key id.
        key_id: String,
        /// The signer's public key (what `trust add` takes).
        public_key: String,
    },
    /// Signed by a trusted key whose trust does not reach this capsule's name.
    #[error(
        "capsule {capsule} is signed by {signer}, which is trusted only for capsules named {scope}: to trust it for this one too, run `capsid trust rm {signer}` then `capsid trust add {signer} {public_key}` with a wider --capsules"
    )]
    OutsideScope {
        /// The capsule.
        capsule: CapsuleId,
        /// The trusted key's name.
        signer: String,
        /// Its public key.
        public_key: String,
        /// The names it is trusted for, comma-separated.
        scope: String,
    },
    /// `require = "off"` was asked for a load without dev trust.
    #[error(
        "capsule {capsule}: signature checks are off, which only dev mode allows: set `[signing] require = \"trusted\"` (or \"any\") in config.toml, or run the daemon with --dev"
    )]
    OffOutsideDev {
        /// The capsule.
        capsule: CapsuleId,
    },
    /// A file needed to sign could not be read or written.
    #[error("signing {}: {message}", dir.display())]
    Io {
        /// The capsule's directory.
        dir: PathBuf,
        /// What failed, naming the file.
        message: String,
    },
    /// A signature could not be written as text.
    #[error("encoding Capsule.sig: {0}")]
    Encode(String),
    /// The manifest of the capsule being signed is invalid.
    #[error(transparent)]
    Manifest(#[from] capsid_manifest::ManifestError),
}

/// Why the trust store could not be opened or changed. Nothing changed, unless said otherwise.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// A file or the directory could not be read or written.
    #[error("trust store {}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A file or the directory is open to group or others.
    #[error("trust store {}: mode {mode:04o} is open to others; run `chmod {want:o} {}`", path.display(), path.display())]
    InsecureMode {
        /// The file or directory.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
        /// What they must be.
        want: u32,
    },
    /// A file of the store is not a valid entry.
    #[error("trust store {}: {message} (fix or remove the file)", path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A name that is not a valid trusted-key name.
    #[error(
        "`{0}` is not a trusted-key name: use 1 to 64 of a-z, 0-9 and -, starting with a letter or digit"
    )]
    BadName(String),
    /// `runtime` names the runtime key, which is always trusted.
    #[error(
        "`runtime` names this home's runtime key, which is always trusted; choose another name"
    )]
    Reserved,
    /// A public key that is not one.
    #[error(
        "`{0}` is not an ed25519 public key: give the 64 hex characters `capsid key generate` printed"
    )]
    BadKey(String),
    /// A `--capsules` pattern that is not a capsule-name pattern.
    #[error("`{0}` is not a capsule-name pattern: use a-z, 0-9, - and *")]
    BadScope(String),
    /// The name is taken.
    #[error("a key named {0} is already trusted: run `capsid trust rm {0}` first to replace it")]
    NameTaken(String),
    /// The key is already trusted under another name.
    #[error("that key is already trusted as {0}")]
    KeyTaken(String),
    /// No key of that name.
    #[error("no trusted key is named {0} (`capsid trust ls` lists them)")]
    NotFound(String),
    /// The store is full.
    #[error("the trust store holds {0} keys, the most it may")]
    Full(usize),
}
