//! Typed ids. Each wraps its representation so that a session id cannot be passed where a
//! capsule id is expected, and each is validated on the way in from text.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

use crate::error::IdError;
use crate::limits::{MAX_CAPSULE_NAME_LEN, PROCESS_ID_BYTES};

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(Uuid);

        impl $name {
            /// A fresh, time-ordered (UUID v7) id.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }

            /// The underlying UUID.
            pub fn as_uuid(&self) -> &Uuid {
                &self.0
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl From<Uuid> for $name {
            fn from(uuid: Uuid) -> Self {
                Self(uuid)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.hyphenated().fmt(f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0.hyphenated())
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Uuid::try_parse(s)
                    .map(Self)
                    .map_err(|_| IdError::new($kind, s, "expected a hyphenated UUID"))
            }
        }

        string_serde!($name);
    };
}

macro_rules! string_serde {
    ($name:ident) => {
        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = String::deserialize(d)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

uuid_id!(
    /// One run of the kernel. Each session writes its own audit chain.
    SessionId,
    "session id"
);

uuid_id!(
    /// A client session: from a principal's first connection to the daemon (or the MCP
    /// bridge) to its last one closing. An approval given "for the session" ends with it.
    ClientSessionId,
    "client session id"
);

uuid_id!(
    /// A user (human or platform identity) on whose behalf capsules act.
    PrincipalId,
    "principal id"
);

/// A capsule's name: lowercase ASCII letters, digits and `-`, 1 to 64 bytes, not starting or
/// ending with `-`. It names the capsule's directory, KV namespace and audit records.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CapsuleId(String);

impl CapsuleId {
    /// Validates `name` as a capsule name.
    pub fn new(name: &str) -> Result<Self, IdError> {
        const KIND: &str = "capsule name";
        if name.is_empty() {
            return Err(IdError::new(KIND, name, "must not be empty"));
        }
        if name.len() > MAX_CAPSULE_NAME_LEN {
            return Err(IdError::new(KIND, name, "must be at most 64 bytes"));
        }
        if !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(IdError::new(
                KIND,
                name,
                "may contain only lowercase letters, digits and '-'",
            ));
        }
        if name.starts_with('-') || name.ends_with('-') {
            return Err(IdError::new(KIND, name, "must not start or end with '-'"));
        }
        Ok(Self(name.to_owned()))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CapsuleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for CapsuleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CapsuleId({})", self.0)
    }
}

impl FromStr for CapsuleId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        Self::new(s)
    }
}

string_serde!(CapsuleId);

/// A persistent process id: 128 random bits, shown as 32 lowercase hex digits.
///
/// It is a bearer secret for the capsule that owns the process: hosts store only its hash and
/// never log it. For that reason `Debug` does not print it.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ProcessId([u8; PROCESS_ID_BYTES]);

impl ProcessId {
    /// A fresh id from the operating system's random source.
    pub fn random() -> Result<Self, getrandom::Error> {
        let mut bytes = [0u8; PROCESS_ID_BYTES];
        getrandom::fill(&mut bytes)?;
        Ok(Self(bytes))
    }

    /// The raw bytes (to hash them; never to log them).
    pub fn as_bytes(&self) -> &[u8; PROCESS_ID_BYTES] {
        &self.0
    }
}

impl fmt::Display for ProcessId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for ProcessId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ProcessId(<redacted>)")
    }
}

impl FromStr for ProcessId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        const KIND: &str = "process id";
        if s.len() != PROCESS_ID_BYTES * 2
            || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Err(IdError::new(
                KIND,
                "<redacted>",
                "expected 32 lowercase hex digits",
            ));
        }
        let mut bytes = [0u8; PROCESS_ID_BYTES];
        hex::decode_to_slice(s, &mut bytes)
            .map_err(|_| IdError::new(KIND, "<redacted>", "expected 32 lowercase hex digits"))?;
        Ok(Self(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capsule_names_follow_the_manifest_rules() {
        for good in ["a", "notes", "my-tool-2", &"x".repeat(64)] {
            assert_eq!(
                CapsuleId::new(good).map(|c| c.to_string()),
                Ok(good.to_owned())
            );
        }
        for bad in [
            "",
            "Notes",
            "-a",
            "a-",
            "a_b",
            "a/b",
            "a\0",
            "é",
            &"x".repeat(65),
            "..",
        ] {
            assert!(CapsuleId::new(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn uuid_ids_round_trip_and_order_by_time() {
        let a = SessionId::new();
        let b = SessionId::new();
        assert!(a < b, "v7 ids are time ordered");
        assert_eq!(a.to_string().parse::<SessionId>(), Ok(a));
        assert!("not-a-uuid".parse::<SessionId>().is_err());
    }

    #[test]
    fn process_ids_are_random_and_never_printed_by_debug() {
        let a = ProcessId::random().unwrap();
        let b = ProcessId::random().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.to_string().len(), 32);
        assert_eq!(a.to_string().parse::<ProcessId>().unwrap(), a);
        assert!(!format!("{a:?}").contains(&a.to_string()));
        for bad in ["", "00", &"g".repeat(32), &"A".repeat(32), &"0".repeat(33)] {
            let err = bad.parse::<ProcessId>().unwrap_err();
            assert_eq!(
                err.value, "<redacted>",
                "a malformed id is never echoed back"
            );
        }
    }
}
