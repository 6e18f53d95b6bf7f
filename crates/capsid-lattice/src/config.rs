//! `[lattice]` in the operator's `config.toml`: which NATS servers, as whom.

use std::path::{Path, PathBuf};

use capsid_core::limits::MAX_LATTICE_NAME_BYTES;
use serde::{Deserialize, Serialize};

use crate::error::LatticeError;

/// The lattice this host joins (`[lattice]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LatticeConfig {
    /// The lattice's name: hosts with the same name and servers are one lattice. Lowercase
    /// letters, digits, `-` and `_`; it names the NATS subjects and buckets.
    pub name: String,
    /// NATS server URLs (`nats://host:port`); any one reachable is enough.
    pub servers: Vec<String>,
    /// Copies JetStream keeps of each bucket and stream (1, or up to the cluster's size).
    #[serde(default = "one")]
    pub replicas: usize,
    /// Who this host is to NATS (none: the servers allow anonymous clients).
    #[serde(default)]
    pub credentials: Option<Credentials>,
    /// The runtime public keys (hex) of the other hosts whose grants this host honours:
    /// a capability one of them issued allows here; one issued by any other key does not,
    /// whoever wrote it into the shared store. `capsid status` shows a host's own key.
    #[serde(default)]
    pub trusted_hosts: Vec<String>,
    /// Event topic patterns (as subscriptions spell them: `orders.*`) whose events this host
    /// publishes to the lattice as well as to its own bus. None by default.
    #[serde(default)]
    pub export: Vec<String>,
}

fn one() -> usize {
    1
}

/// How this host authenticates to NATS (`[lattice.credentials]`): exactly one of a
/// `.creds` file, an nkey seed file, or a user with a password file. Paths are absolute or
/// relative to the home; the secrets stay in those files, never in the configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    /// A NATS `.creds` file (a user JWT and its nkey seed).
    pub creds_file: Option<PathBuf>,
    /// A file holding an nkey seed (`SU...`).
    pub nkey_seed_file: Option<PathBuf>,
    /// A user name, with `password_file`.
    pub user: Option<String>,
    /// The file holding `user`'s password.
    pub password_file: Option<PathBuf>,
}

/// Which credentials, resolved against the home.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Auth {
    Anonymous,
    CredsFile(PathBuf),
    NkeySeedFile(PathBuf),
    UserPassword {
        user: String,
        password_file: PathBuf,
    },
}

impl LatticeConfig {
    /// Checks what serde cannot: the name, the servers, the replicas, one kind of
    /// credentials.
    pub fn validate(&self) -> Result<(), LatticeError> {
        let bad = |m: String| Err(LatticeError::Config(m));
        let name_ok = !self.name.is_empty()
            && self.name.len() <= MAX_LATTICE_NAME_BYTES
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if !name_ok {
            return bad(format!(
                "name {:?} must be 1..={MAX_LATTICE_NAME_BYTES} of a-z, 0-9, '-' and '_'",
                self.name
            ));
        }
        if self.servers.is_empty() {
            return bad("servers is empty: name at least one nats:// URL".into());
        }
        for server in &self.servers {
            let Ok(addr) = server.parse::<async_nats::ServerAddr>() else {
                return bad(format!(
                    "server {server:?} is not a NATS URL (nats://host:port)"
                ));
            };
            // Shown by `status` and in errors: a secret there would be printed.
            if addr.has_user_pass() || server.contains('@') {
                return bad("a server URL carries a user or password: name a file in \
                     [lattice.credentials] instead"
                    .into());
            }
        }
        if !(1..=5).contains(&self.replicas) {
            return bad(format!(
                "replicas = {} is outside 1..=5 (JetStream's limit)",
                self.replicas
            ));
        }
        if let Some(key) = self
            .trusted_hosts
            .iter()
            .find(|k| k.len() != 64 || !k.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return bad(format!(
                "trusted_hosts entry {key:?} is not a public key (64 hex characters)"
            ));
        }
        self.auth(Path::new("/")).map(|_| ())
    }

    /// The bucket holding the lattice's shared key-value data.
    pub fn kv_bucket(&self) -> String {
        format!("capsid_{}_kv", self.name)
    }

    pub(crate) fn auth(&self, home: &Path) -> Result<Auth, LatticeError> {
        let Some(c) = &self.credentials else {
            return Ok(Auth::Anonymous);
        };
        let at = |p: &PathBuf| home.join(p);
        match (&c.creds_file, &c.nkey_seed_file, &c.user, &c.password_file) {
            (Some(f), None, None, None) => Ok(Auth::CredsFile(at(f))),
            (None, Some(f), None, None) => Ok(Auth::NkeySeedFile(at(f))),
            (None, None, Some(user), Some(f)) if !user.is_empty() => Ok(Auth::UserPassword {
                user: user.clone(),
                password_file: at(f),
            }),
            _ => Err(LatticeError::Config(
                "credentials must be exactly one of creds_file, nkey_seed_file, or user with \
                 password_file"
                    .into(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn parse(text: &str) -> Result<LatticeConfig, String> {
        let c: LatticeConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        c.validate().map_err(|e| e.to_string())?;
        Ok(c)
    }

    #[test]
    fn a_minimal_lattice_parses_with_one_replica_and_no_credentials() {
        let c = parse("name = \"dev\"\nservers = [\"nats://127.0.0.1:4222\"]").unwrap();
        assert_eq!(c.replicas, 1);
        assert_eq!(c.auth(Path::new("/h")).unwrap(), Auth::Anonymous);
        assert_eq!(c.kv_bucket(), "capsid_dev_kv");
    }

    #[test]
    fn credential_paths_are_relative_to_the_home() {
        let c = parse(
            "name = \"a\"\nservers = [\"nats://n:4222\"]\n[credentials]\nuser = \"u\"\n\
             password_file = \"secrets/p\"",
        )
        .unwrap();
        assert_eq!(
            c.auth(Path::new("/h")).unwrap(),
            Auth::UserPassword {
                user: "u".into(),
                password_file: "/h/secrets/p".into()
            }
        );
    }

    #[test]
    fn bad_sections_are_refused_with_what_is_wrong() {
        for (text, says) in [
            ("name = \"A b\"\nservers = [\"nats://n:1\"]", "name"),
            ("name = \"a\"\nservers = []", "servers is empty"),
            ("name = \"a\"\nservers = [\"http://n:1\"]", "not a NATS URL"),
            (
                "name = \"a\"\nservers = [\"nats://u:secret@n:1\"]",
                "carries a user or password",
            ),
            (
                "name = \"a\"\nservers = [\"nats://n:1\"]\nreplicas = 7",
                "replicas",
            ),
            (
                "name = \"a\"\nservers = [\"nats://n:1\"]\n[credentials]\ncreds_file = \"c\"\n\
                 nkey_seed_file = \"s\"",
                "exactly one",
            ),
            (
                "name = \"a\"\nservers = [\"nats://n:1\"]\n[credentials]\nuser = \"u\"",
                "exactly one",
            ),
            (
                "name = \"a\"\nservers = [\"nats://n:1\"]\npassword = \"x\"",
                "unknown field",
            ),
            (
                "name = \"a\"\nservers = [\"nats://n:1\"]\ntrusted_hosts = [\"abc\"]",
                "not a public key",
            ),
        ] {
            let err = parse(text).unwrap_err();
            assert!(err.contains(says), "{text:?}: {err}");
        }
    }
}
