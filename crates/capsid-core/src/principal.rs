//! The principal model: on whose authority an action happens.
//!
//! A principal is never a capsule. Capsules act *for* a principal; capabilities are granted to
//! a principal and scoped to a capsule. The kernel itself acts as [`Principal::System`].

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::IdError;
use crate::ids::PrincipalId;

/// Who an action is attributed to.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub enum Principal {
    /// The kernel acting on its own behalf (boot, shutdown, key rotation).
    System,
    /// A user known to the identity store.
    User(PrincipalId),
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::System => f.write_str("system"),
            Self::User(id) => write!(f, "user:{id}"),
        }
    }
}

impl FromStr for Principal {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        if s == "system" {
            return Ok(Self::System);
        }
        match s.strip_prefix("user:") {
            Some(id) => id.parse().map(Self::User),
            None => Err(IdError::new(
                "principal",
                s,
                "expected \"system\" or \"user:<uuid>\"",
            )),
        }
    }
}

impl Serialize for Principal {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Principal {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn principals_round_trip_through_text() {
        let user = Principal::User(PrincipalId::new());
        for p in [Principal::System, user] {
            assert_eq!(p.to_string().parse::<Principal>(), Ok(p));
        }
        for bad in [
            "",
            "System",
            "user:",
            "user:42",
            "capsule:notes",
            "user:system",
        ] {
            assert!(bad.parse::<Principal>().is_err(), "{bad:?}");
        }
    }
}
