//! The operator's `config.toml`: every key optional, unknown keys refused. Its fingerprint
//! (a blake3 over the parsed values) is what the daemon and its clients compare at hello, so
//! a client reading a different config learns why its view may differ.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use capsid_core::limits::{
    DEFAULT_BOOT_TIMEOUT_MS, DEFAULT_HEALTH_INITIAL_MS, DEFAULT_HEALTH_MAX_ATTEMPTS,
    DEFAULT_HEALTH_MAX_MS, MAX_CONFIG_BYTES,
};
use serde::{Deserialize, Serialize};

use crate::error::KernelError;

/// What boot does with an audit log that fails verification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TamperPolicy {
    /// Refuse to boot; the report names every problem. The default.
    #[default]
    Refuse,
    /// Keep the tampered file aside (`audit.db.tampered-<time>`, never modified), start a new
    /// log, and record what was found as that log's first entry. Loud, never silent.
    Quarantine,
    /// Boot with the log open read-only, exactly as found, for inspection (`audit verify`,
    /// `tail`, `export`): nothing can be recorded, so no capsule is loaded and everything
    /// that must be audited is refused. The status and boot report name the problems. Two
    /// things still run unrecorded, because refusing them would be worse: the boot sweep
    /// that kills what dead hosts left behind (logged, and listed in the boot report's
    /// `unrecorded`), and `audit export`; boot and shutdown themselves are not recorded.
    #[serde(rename = "read-only")]
    ReadOnly,
}

/// Restarting capsules that failed (a trap, a deadline, a failed load).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// Whether failed capsules are reloaded at all.
    pub enabled: bool,
    /// First wait before a reload, in ms.
    pub restart_initial_ms: u64,
    /// Longest wait between reloads of one capsule, in ms (the wait doubles up to it).
    pub restart_max_ms: u64,
    /// Reloads in a row before the capsule is left failed.
    pub max_attempts: u32,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            restart_initial_ms: DEFAULT_HEALTH_INITIAL_MS,
            restart_max_ms: DEFAULT_HEALTH_MAX_MS,
            max_attempts: DEFAULT_HEALTH_MAX_ATTEMPTS,
        }
    }
}

/// The operator's settings for one capsule (`[capsules.<name>]`).
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CapsuleConfig {
    /// Values for the `[env]` keys its manifest declares (secrets included): they take the
    /// place of the manifest's defaults.
    pub env: BTreeMap<String, String>,
}

impl std::fmt::Debug for CapsuleConfig {
    /// Keys only: values may be secrets, which are never logged.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CapsuleConfig")
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// The kernel's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KernelConfig {
    /// The directory capsules see as their workspace (default `<home>/workspace`).
    pub workspace: Option<PathBuf>,
    /// Development mode: capsules get what their manifests request (dev trust), and edited
    /// capsules are reloaded when their files really change. Off by default: an operator
    /// grants capabilities with `capsid cap grant`.
    pub dev: bool,
    /// How long boot waits for each phase of capsules to be ready, in ms.
    pub boot_timeout_ms: u64,
    /// What boot does with a tampered audit log.
    pub audit_tamper: TamperPolicy,
    /// Reloading failed capsules.
    pub health: HealthConfig,
    /// Unload a capsule no call has used for this long, in ms (off when absent). It loads
    /// again, transparently, at its next tool call; it receives no events meanwhile.
    pub idle_timeout_ms: Option<u64>,
    /// Hot reload in dev mode (on by default; ignored outside dev mode).
    pub hot_reload: bool,
    /// Per-capsule settings, by capsule name.
    pub capsules: BTreeMap<String, CapsuleConfig>,
    /// The OS sandbox capsules' programs run in.
    pub sandbox: SandboxConfig,
    /// Capsules' outbound HTTP.
    pub http: HttpConfig,
    /// How long a call waits for a person to decide an approval request before it is
    /// denied (its own deadline suspended meanwhile).
    pub approval_timeout_ms: u64,
    /// Which capsules may load, by who signed them.
    pub signing: SigningConfig,
    /// The lattice this host joins over NATS (none: it runs alone).
    pub lattice: Option<capsid_lattice::LatticeConfig>,
}

/// Capsule signatures (`[signing]`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SigningConfig {
    /// `trusted` (the default): signed by the runtime key or a trusted key whose trust
    /// covers the capsule; `any`: signed by any key, unchanged since; `off`: not checked,
    /// which only dev mode allows.
    pub require: capsid_signing::Require,
}

/// Capsules' outbound HTTP (`[http]`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// PEM files of certificates trusted as TLS roots besides the platform's (a private CA),
    /// absolute or relative to the home. Only the operator sets these; no capsule can add a
    /// root or turn verification off.
    pub extra_roots: Vec<PathBuf>,
}

/// The OS sandbox (`[sandbox]`): who a sandboxed program is inside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxConfig {
    /// Its uid inside the sandbox (default `nobody`, 65534). Never 0: root is refused.
    pub uid: u32,
    /// Its gid inside the sandbox (default `nogroup`, 65534). Never 0.
    pub gid: u32,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            uid: capsid_core::limits::SANDBOX_DEFAULT_UID,
            gid: capsid_core::limits::SANDBOX_DEFAULT_GID,
        }
    }
}

impl Default for KernelConfig {
    fn default() -> Self {
        Self {
            workspace: None,
            dev: false,
            boot_timeout_ms: DEFAULT_BOOT_TIMEOUT_MS,
            audit_tamper: TamperPolicy::Refuse,
            health: HealthConfig::default(),
            idle_timeout_ms: None,
            hot_reload: true,
            capsules: BTreeMap::new(),
            sandbox: SandboxConfig::default(),
            http: HttpConfig::default(),
            approval_timeout_ms: capsid_core::limits::DEFAULT_APPROVAL_TIMEOUT_MS,
            signing: SigningConfig::default(),
            lattice: None,
        }
    }
}

impl KernelConfig {
    /// Reads `path`; a missing file is the default configuration.
    pub fn load(path: &Path) -> Result<Self, KernelError> {
        let bad = |message: String| KernelError::Config {
            path: path.to_owned(),
            message,
        };
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(bad(e.to_string())),
        };
        if meta.len() > MAX_CONFIG_BYTES {
            return Err(bad(format!("larger than {MAX_CONFIG_BYTES} bytes")));
        }
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        Self::parse(&text).map_err(bad)
    }

    /// Parses `config.toml` text.
    pub fn parse(text: &str) -> Result<Self, String> {
        let config: Self = toml::from_str(text).map_err(|e| e.to_string())?;
        config.validate_values()?;
        Ok(config)
    }

    /// Checks the values serde cannot, and how they go together: what boot checks of the
    /// configuration it runs with (the file's, with the command line's `--dev` applied).
    pub fn validate(&self) -> Result<(), String> {
        self.validate_values()?;
        if self.signing.require == capsid_signing::Require::Off && !self.dev {
            return Err(
                "[signing] require = \"off\" needs dev mode (`dev = true`, or the daemon's --dev): a host that is not a developer's checks who signed its capsules".into(),
            );
        }
        Ok(())
    }

    /// Checks each value on its own (what reading the file checks: `--dev` may come later).
    fn validate_values(&self) -> Result<(), String> {
        if self.idle_timeout_ms == Some(0) {
            return Err(
                "idle_timeout_ms must be at least 1 (leave it out to keep capsules loaded)".into(),
            );
        }
        if let Some(bad) = self
            .capsules
            .keys()
            .find(|n| capsid_core::CapsuleId::new(n.as_str()).is_err())
        {
            return Err(format!("[capsules.{bad}]: not a capsule name"));
        }
        if self.sandbox.uid == 0 || self.sandbox.gid == 0 {
            return Err(
                "[sandbox]: uid and gid must not be 0 (a sandboxed program is never root)".into(),
            );
        }
        if !(1..=capsid_core::limits::MAX_APPROVAL_TIMEOUT_MS).contains(&self.approval_timeout_ms) {
            return Err(format!(
                "approval_timeout_ms must be from 1 to {}",
                capsid_core::limits::MAX_APPROVAL_TIMEOUT_MS
            ));
        }
        if let Some(lattice) = &self.lattice {
            lattice.validate().map_err(|e| e.to_string())?;
        }
        if self.boot_timeout_ms == 0 {
            return Err("boot_timeout_ms must be at least 1".into());
        }
        if self.health.restart_initial_ms == 0
            || self.health.restart_max_ms < self.health.restart_initial_ms
        {
            return Err(
                "health: restart_initial_ms must be at least 1 and at most restart_max_ms".into(),
            );
        }
        Ok(())
    }

    /// A short, stable digest of the parsed configuration (32 hex characters).
    pub fn fingerprint(&self) -> String {
        // Struct fields serialize in declaration order, so equal configs hash equally.
        let bytes = serde_json::to_vec(self).unwrap_or_default();
        hex::encode(&blake3::hash(&bytes).as_bytes()[..16])
    }

    /// Whether the kernel grants capsules what they request.
    pub fn trust(&self) -> capsid_capsule::Trust {
        if self.dev {
            capsid_capsule::Trust::Dev
        } else {
            capsid_capsule::Trust::Granted
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_file_is_the_default_and_fingerprints_follow_the_values() {
        let empty = KernelConfig::parse("").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(empty, KernelConfig::default());
        let dev = KernelConfig::parse("dev = true").unwrap_or_else(|e| panic!("{e}"));
        assert!(dev.dev);
        assert_ne!(empty.fingerprint(), dev.fingerprint());
        assert_eq!(empty.fingerprint(), KernelConfig::default().fingerprint());
        assert_eq!(empty.fingerprint().len(), 32);
    }

    #[test]
    fn capsule_settings_parse_and_their_values_are_not_printed() {
        let c =
            KernelConfig::parse("[capsules.hello.env]\nGREETING = \"Howdy\"\nTOKEN = \"s3cret\"")
                .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.capsules["hello"].env["GREETING"], "Howdy");
        assert!(!format!("{c:?}").contains("s3cret"));
        assert!(KernelConfig::parse("[capsules.\"Bad Name\"]").is_err());
    }

    #[test]
    fn a_lattice_section_is_checked_when_the_file_is_read() {
        let c = KernelConfig::parse(
            "[lattice]\nname = \"prod\"\nservers = [\"nats://10.0.0.1:4222\"]\n\
             [lattice.credentials]\ncreds_file = \"lattice.creds\"",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.lattice.as_ref().map(|l| l.name.as_str()), Some("prod"));
        assert_ne!(c.fingerprint(), KernelConfig::default().fingerprint());
        let err = KernelConfig::parse("[lattice]\nname = \"prod\"\nservers = []").unwrap_err();
        assert!(err.contains("servers is empty"), "{err}");
    }

    #[test]
    fn signing_defaults_to_trusted_and_is_off_only_in_dev_mode() {
        use capsid_signing::Require;
        assert_eq!(KernelConfig::default().signing.require, Require::Trusted);
        let any =
            KernelConfig::parse("[signing]\nrequire = \"any\"").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(any.signing.require, Require::Any);
        // The file may say off and leave dev mode to the command line; boot checks both.
        let off =
            KernelConfig::parse("[signing]\nrequire = \"off\"").unwrap_or_else(|e| panic!("{e}"));
        let err = off.validate().unwrap_err();
        assert!(err.contains("dev mode"), "{err}");
        let dev = KernelConfig::parse("dev = true\n[signing]\nrequire = \"off\"")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(dev.signing.require, Require::Off);
        dev.validate().unwrap_or_else(|e| panic!("{e}"));
        assert!(KernelConfig::parse("[signing]\nrequire = \"none\"").is_err());
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        assert!(KernelConfig::parse("dve = true").is_err());
        assert!(KernelConfig::parse("audit_tamper = \"ignore\"").is_err());
        assert!(KernelConfig::parse("[health]\nrestart_initial_ms = 0").is_err());
        assert!(KernelConfig::parse("[http]\nverify_tls = false").is_err());
    }

    #[test]
    fn extra_tls_roots_are_the_operators_to_name() {
        let c = KernelConfig::parse("[http]\nextra_roots = [\"/etc/capsid/ca.pem\"]")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.http.extra_roots, [PathBuf::from("/etc/capsid/ca.pem")]);
        assert_ne!(c.fingerprint(), KernelConfig::default().fingerprint());
    }
}
