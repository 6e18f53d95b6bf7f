//! How a byte key becomes a NATS subject in the bucket, and back.
//!
//! A key's subject is `d.` then one lowercase hex token per byte of its first
//! [`LATTICE_KV_SPELLED_KEY_BYTES`], then a last token: `e` when that spelled the whole key,
//! else `h` and the blake3 of the whole key, which the message then carries in full in its
//! `Capsid-Key` header. Every key has a token after its spelled bytes, so the subjects of
//! the keys starting with a prefix are exactly those the filter `d.<prefix tokens>.>`
//! matches (for a prefix no longer than the spelled bytes; past that the server's filter is
//! wider and the rest is checked here). Batch intents live under `i.`, which no key reaches.

use std::fmt::Write as _;

use capsid_core::limits::LATTICE_KV_SPELLED_KEY_BYTES;

/// Header carrying the whole key (hex) of a key longer than the spelled bytes.
pub(crate) const KEY_HEADER: &str = "Capsid-Key";

/// The tail of `key`'s subject (after the bucket's `$KV.<bucket>.`).
pub(crate) fn key_subject(key: &[u8]) -> String {
    let spelled = &key[..key.len().min(LATTICE_KV_SPELLED_KEY_BYTES)];
    let mut s = String::with_capacity(2 + spelled.len() * 3 + 66);
    s.push('d');
    push_tokens(&mut s, spelled);
    if spelled.len() == key.len() {
        s.push_str(".e");
    } else {
        s.push_str(".h");
        s.push_str(blake3::hash(key).to_hex().as_str());
    }
    s
}

/// Whether `key` needs its [`KEY_HEADER`] (it is longer than its subject spells).
pub(crate) fn needs_key_header(key: &[u8]) -> bool {
    key.len() > LATTICE_KV_SPELLED_KEY_BYTES
}

/// The filter (after the bucket's prefix) matching every key that starts with `prefix`.
pub(crate) fn prefix_filter(prefix: &[u8]) -> String {
    let spelled = &prefix[..prefix.len().min(LATTICE_KV_SPELLED_KEY_BYTES)];
    let mut s = String::from("d");
    push_tokens(&mut s, spelled);
    s.push_str(".>");
    s
}

fn push_tokens(s: &mut String, bytes: &[u8]) {
    for b in bytes {
        // Writing to a String cannot fail.
        let _ = write!(s, ".{b:02x}");
    }
}

/// What a subject's tail says of its key.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Spelled {
    /// The subject spells the whole key.
    Whole(Vec<u8>),
    /// The key's first bytes and the hash of the whole; the rest is in the header.
    Hashed {
        /// The spelled first bytes.
        head: Vec<u8>,
        /// blake3 of the whole key, hex.
        hash: String,
    },
}

/// Reads a subject tail made by [`key_subject`]; `None` when it is not one.
pub(crate) fn parse_subject(tail: &str) -> Option<Spelled> {
    let mut tokens = tail.split('.');
    if tokens.next() != Some("d") {
        return None;
    }
    let mut head = Vec::new();
    for token in tokens {
        if token == "e" {
            return Some(Spelled::Whole(head));
        }
        if let Some(hash) = token.strip_prefix('h') {
            let ok = head.len() == LATTICE_KV_SPELLED_KEY_BYTES
                && hash.len() == 64
                && hash.bytes().all(|b| b.is_ascii_hexdigit());
            return ok.then(|| Spelled::Hashed {
                head,
                hash: hash.to_owned(),
            });
        }
        let [byte] = hex::decode(token).ok()?[..] else {
            return None;
        };
        head.push(byte);
    }
    None
}

/// The whole key of a message on `tail`, given its [`KEY_HEADER`] value: checked against the
/// subject, so a header cannot name a key other than the one the subject was made from.
pub(crate) fn key_of(tail: &str, header: Option<&str>) -> Result<Vec<u8>, String> {
    match parse_subject(tail) {
        Some(Spelled::Whole(key)) => Ok(key),
        Some(Spelled::Hashed { head, hash }) => {
            let key = header
                .and_then(|h| hex::decode(h).ok())
                .ok_or_else(|| format!("subject {tail:?} has no readable {KEY_HEADER} header"))?;
            if key.starts_with(&head) && blake3::hash(&key).to_hex().as_str() == hash {
                Ok(key)
            } else {
                Err(format!(
                    "the {KEY_HEADER} header does not match subject {tail:?}"
                ))
            }
        }
        None => Err(format!("subject {tail:?} is not a capsid key")),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn short_keys_are_spelled_whole_and_read_back() {
        for key in [&b"p"[..], b"\0", b"a.b", b"\xff\xfe*>", b""] {
            let s = key_subject(key);
            assert!(!needs_key_header(key));
            assert_eq!(key_of(&s, None).unwrap(), key, "{s}");
        }
        assert_eq!(key_subject(b"p\x01"), "d.70.01.e");
    }

    #[test]
    fn long_keys_end_in_their_hash_and_need_the_header() {
        let key = vec![7u8; LATTICE_KV_SPELLED_KEY_BYTES + 1];
        let s = key_subject(&key);
        assert!(needs_key_header(&key));
        assert!(key_of(&s, None).is_err());
        assert_eq!(key_of(&s, Some(&hex::encode(&key))).unwrap(), key);
        let mut other = key.clone();
        other.push(1);
        assert!(
            key_of(&s, Some(&hex::encode(&other))).is_err(),
            "a header naming another key is refused"
        );
    }

    #[test]
    fn a_prefix_filter_matches_exactly_the_subjects_of_its_keys() {
        fn matches(filter: &str, subject: &str) -> bool {
            let f: Vec<_> = filter.split('.').collect();
            let s: Vec<_> = subject.split('.').collect();
            f.last() == Some(&">")
                && s.len() >= f.len()
                && f[..f.len() - 1].iter().zip(&s).all(|(a, b)| a == b)
        }
        let filter = prefix_filter(b"p");
        assert!(matches(&filter, &key_subject(b"p")));
        assert!(matches(&filter, &key_subject(b"pq")));
        assert!(!matches(&filter, &key_subject(b"q")));
        assert!(!matches(&filter, &key_subject(b"")));
        assert!(matches(&prefix_filter(b""), &key_subject(b"anything")));
    }

    #[test]
    fn foreign_subjects_are_not_keys() {
        for tail in ["i.x", "d", "d.zz.e", "d.700.e", "d.70", "d.70.hxyz"] {
            assert!(parse_subject(tail).is_none(), "{tail}");
        }
    }
}
