//! What can go wrong in the kernel, each variant naming the file, capsule or setting at fault.

use std::path::PathBuf;

use capsid_core::CapsuleId;

/// A kernel failure.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// The home directory cannot be used.
    #[error(transparent)]
    Home(#[from] capsid_core::HomeError),
    /// `config.toml` is unreadable or invalid.
    #[error("config {}: {message}", path.display())]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The runtime key cannot be loaded or created.
    #[error(transparent)]
    Key(#[from] capsid_crypto::KeyError),
    /// The audit log cannot be opened (tampered logs are refused unless the config says to
    /// quarantine them).
    #[error(transparent)]
    Audit(#[from] capsid_audit::AuditError),
    /// The lattice cannot be joined.
    #[error(transparent)]
    Lattice(#[from] capsid_lattice::LatticeError),
    /// No host of the lattice serves the capsule (and it is not installed here).
    #[error(
        "capsule {capsule} is not installed here and no host of the lattice {lattice:?} serves it"
    )]
    NotServed {
        /// The capsule.
        capsule: CapsuleId,
        /// The lattice.
        lattice: String,
    },
    /// The host joined no lattice (`[lattice]` in its configuration).
    #[error("this host joined no lattice: add [lattice] to its config.toml")]
    NoLattice,
    /// The lattice holds no audit anchor of this host (its stream was emptied or replaced).
    #[error(
        "the lattice {0:?} holds no audit anchor of this host: its anchors stream was emptied \
         or replaced, so the log cannot be checked against it"
    )]
    NoAnchors(String),
    /// A call to a capsule on another host of the lattice failed there or on the way.
    #[error("capsule {capsule} on the lattice: {message}")]
    Remote {
        /// The capsule.
        capsule: CapsuleId,
        /// What went wrong, and where.
        message: String,
        /// The failure's kind on the serving host, when it failed there (a tool error, a
        /// timeout...): what the daemon reports it as, as it would a local one.
        kind: Option<capsid_protocol::ErrorCode>,
    },
    /// The KV store cannot be opened or used.
    #[error(transparent)]
    Kv(#[from] capsid_storage::KvError),
    /// The capability store failed.
    #[error(transparent)]
    Capabilities(#[from] capsid_capabilities::CapabilityError),
    /// The workspace overlay cannot be opened.
    #[error(transparent)]
    Vfs(#[from] capsid_vfs::VfsError),
    /// A capsule operation failed.
    #[error(transparent)]
    Capsule(#[from] capsid_capsule::CapsuleError),
    /// A capsule manifest is invalid.
    #[error(transparent)]
    Manifest(#[from] capsid_manifest::ManifestError),
    /// The capsules' `requires` cannot be ordered.
    #[error(transparent)]
    Dependencies(#[from] capsid_manifest::DependencyError),
    /// An event could not be published.
    #[error(transparent)]
    Event(#[from] capsid_events::EventError),
    /// Installing a capsule failed.
    #[error(transparent)]
    Install(Box<crate::install::InstallError>),
    /// An approval request is not pending.
    #[error(transparent)]
    Approval(#[from] capsid_capsule::ApprovalError),
    /// An allowed action could not be recorded, so it was not done.
    #[error("refused: the audit log could not record it: {0}")]
    Unrecorded(String),
    /// A call went to another host of the lattice (which records it there), but this host
    /// could not record its own check of it, so its outcome is withheld. It may have run:
    /// retrying it may run it twice.
    #[error(
        "the call to {capsule} went to host {host}, which may have run it, but this host's \
         audit log could not record it ({why}): its outcome is withheld; check that host's \
         log before calling again"
    )]
    RanUnrecorded {
        /// The capsule called.
        capsule: CapsuleId,
        /// The host the call went to (its short key).
        host: String,
        /// Why this host's record failed.
        why: String,
    },
    /// A call another host of the lattice sent was not run here: its caller handed it to
    /// another host (`claimed-elsewhere`), or did not hand it over (`unclaimable`: it ended
    /// the call, or could not be reached). Its caller hears from the host that took it, or
    /// not at all.
    #[error("a call from another host was not run here: {0}")]
    NotHandedOver(&'static str),
    /// No user has that name.
    #[error("no user is named {0:?} (see `capsid who`)")]
    UnknownUser(String),
    /// Several users have that name.
    #[error("several users are named {0:?}; name one by its id")]
    AmbiguousUser(String),
    /// No bearer token has that id.
    #[error("no MCP token with id {0:?}; `capsid mcp token ls` lists them")]
    UnknownToken(String),
    /// A bearer token could not be minted.
    #[error(transparent)]
    Mint(#[from] capsid_storage::MintError),
    /// A platform account is linked already.
    #[error("{platform}/{platform_user_id} is linked to a user already")]
    AlreadyLinked {
        /// The platform.
        platform: String,
        /// The account on it.
        platform_user_id: String,
    },
    /// Only an `[mcp]` capsule has tools to review.
    #[error("capsule {0} is not a loaded [mcp] capsule; only those have tools to review")]
    NotMcp(CapsuleId),
    /// No capsule of this name is installed in the home.
    #[error("capsule {0} is not installed (no capsules/{0}/Capsule.toml in the home)")]
    NotInstalled(CapsuleId),
    /// A file or directory of the home could not be used.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The topic is the kernel's own.
    #[error(
        "topic {topic} is reserved for the kernel (no operator event may start with {prefix:?})"
    )]
    ReservedTopic {
        /// The topic.
        topic: String,
        /// The reserved prefix it starts with.
        prefix: &'static str,
    },
    /// The trust store cannot be opened or changed.
    #[error(transparent)]
    Trust(#[from] capsid_signing::TrustError),
    /// A capsule's signature is missing, wrong or untrusted, or it could not be signed.
    #[error(transparent)]
    Signing(Box<capsid_signing::SigningError>),
    /// An install receipt cannot be read or written.
    #[error("install receipt {}: {message}", path.display())]
    Receipt {
        /// The receipt file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// More workspace paths asked for than one request may name.
    #[error("at most {0} paths may be named at once")]
    TooManyPaths(usize),
    /// The kernel is shutting down.
    #[error("the kernel is shutting down")]
    ShuttingDown,
}

impl From<crate::install::InstallError> for KernelError {
    fn from(e: crate::install::InstallError) -> Self {
        Self::Install(Box::new(e))
    }
}

impl From<capsid_signing::SigningError> for KernelError {
    fn from(e: capsid_signing::SigningError) -> Self {
        Self::Signing(Box::new(e))
    }
}

/// Wraps an I/O error with its path.
pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> KernelError {
    let path = path.into();
    move |source| KernelError::Io { path, source }
}
