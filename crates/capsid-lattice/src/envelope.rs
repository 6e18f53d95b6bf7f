//! Signed envelopes: how one host speaks to another over the lattice's subjects. Every call,
//! reply, event and advertisement carries an envelope in its headers, signed by the sending
//! host's runtime key: the lattice, the kind of message, the sender, when, a nonce, and the
//! blake3 of the body (so the signature covers the body without copying it). A receiver
//! opens it only when the sender is a host it trusts, the signature holds, the lattice and
//! kind are the ones expected, the time is within [`LATTICE_ENVELOPE_SKEW`] of its own, and
//! the nonce was not seen before on this host: a message copied off the wire cannot be played
//! to it again (a call runs only once its caller hands it to a host, so a copy runs on no other host
//! either: see `calls`).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_nats::HeaderMap;
use bytes::Bytes;
use capsid_core::limits::{LATTICE_ENVELOPE_SKEW, LATTICE_REPLAY_GUARD_ENTRIES};
use capsid_crypto::{KeyPair, PublicKey, Signature};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::now_ms;

/// What every signature of an envelope is made over, before the envelope's bytes: a
/// signature made for anything else capsid signs cannot pass for one.
const SIGNATURE_CONTEXT: &[u8] = b"capsid lattice envelope v1\0";
/// The header holding the envelope (JSON).
pub(crate) const ENVELOPE_HEADER: &str = "Capsid-Envelope";
/// The header holding the envelope's signature (hex).
pub(crate) const SIGNATURE_HEADER: &str = "Capsid-Signature";

/// What a message is; an envelope opened as one kind refuses any other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A tool call, to a host that has the capsule.
    Call,
    /// A serving host's word on a call: taking it, accepted, still running, or done.
    Reply,
    /// A caller naming the one host its call is handed to.
    Handover,
    /// A caller cancelling its call.
    Cancel,
    /// An event published on an exported topic.
    Event,
    /// A host's list of the capsules and tools it serves.
    Advert,
    /// A host's audit chain heads, anchored off-host.
    Anchor,
}

/// The signed part of a message.
#[derive(Debug, Serialize, Deserialize)]
struct Envelope<T> {
    lattice: String,
    kind: Kind,
    /// The sender's runtime public key (hex).
    from: String,
    issued_ms: u64,
    nonce: String,
    /// blake3 of the message body (hex).
    body: String,
    meta: T,
}

/// An envelope that opened: who sent it, and what it says.
#[derive(Debug, Clone)]
pub struct Opened<T> {
    /// The sending host's runtime public key (hex).
    pub from: String,
    /// The envelope's nonce: what replies and cancellations name the message by.
    pub nonce: String,
    /// Its kind-specific fields.
    pub meta: T,
}

/// Why a message was not opened. None says more than needed: a refused sender learns only
/// that it was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No envelope or signature headers.
    #[error("the message carries no signed envelope")]
    Unsigned,
    /// The envelope or signature cannot be read.
    #[error("the envelope is malformed: {0}")]
    Malformed(&'static str),
    /// Signed by a key this host does not trust.
    #[error("host {0} is not trusted here")]
    Untrusted(String),
    /// The signature does not match the envelope, or the body its hash.
    #[error("the signature does not hold")]
    Forged,
    /// Meant for another lattice, or another kind of message.
    #[error("the envelope is for another lattice or kind of message")]
    Misdirected,
    /// Issued too long ago, or too far ahead of this host's clock.
    #[error("the envelope's time is more than {LATTICE_ENVELOPE_SKEW:?} from this host's")]
    Stale,
    /// Its nonce was seen before.
    #[error("the envelope was seen before")]
    Replayed,
    /// Too many fresh envelopes to remember; refused rather than risk a replay.
    #[error("too many envelopes in the last {LATTICE_ENVELOPE_SKEW:?}")]
    Flooded,
}

impl Refusal {
    /// The refusal's kind as one word (`unsigned`, `malformed`, `untrusted`, `forged`,
    /// `misdirected`, `stale`, `replayed`, `flooded`), to count refusals by.
    #[must_use]
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Unsigned => "unsigned",
            Self::Malformed(_) => "malformed",
            Self::Untrusted(_) => "untrusted",
            Self::Forged => "forged",
            Self::Misdirected => "misdirected",
            Self::Stale => "stale",
            Self::Replayed => "replayed",
            Self::Flooded => "flooded",
        }
    }

    /// The key an untrusted sender claimed (cut to 64 characters, escaped).
    #[must_use]
    pub fn claimed_sender(&self) -> Option<&str> {
        match self {
            Self::Untrusted(key) => Some(key),
            _ => None,
        }
    }
}

/// Nonces seen within the skew window, so none is accepted twice. Bounded: when full of
/// fresh nonces, new envelopes are refused (fail closed) until old ones expire. Ordered by
/// expiry, so an envelope issued ahead of this host's clock holds back no other's expiry.
#[derive(Debug, Default)]
struct ReplayGuard {
    seen: HashSet<String>,
    /// (expiry in unix ms, nonce).
    by_expiry: BTreeSet<(u64, String)>,
}

impl ReplayGuard {
    fn admit(&mut self, nonce: &str, expires_ms: u64, now: u64) -> Result<(), Refusal> {
        while let Some((expiry, _)) = self.by_expiry.first() {
            if *expiry >= now {
                break;
            }
            if let Some((_, old)) = self.by_expiry.pop_first() {
                self.seen.remove(&old);
            }
        }
        if self.seen.contains(nonce) {
            return Err(Refusal::Replayed);
        }
        if self.seen.len() >= LATTICE_REPLAY_GUARD_ENTRIES {
            return Err(Refusal::Flooded);
        }
        self.seen.insert(nonce.to_owned());
        self.by_expiry.insert((expires_ms, nonce.to_owned()));
        Ok(())
    }
}

/// The sender an envelope claims, read before its signature is checked to find its key.
#[derive(Deserialize)]
struct ClaimedSender {
    from: String,
}

/// A host's seal: signs what it sends with its runtime key and opens what it receives from
/// the hosts it trusts (itself included). Cheap to clone.
#[derive(Debug, Clone)]
pub struct Seal {
    inner: Arc<SealInner>,
}

#[derive(Debug)]
struct SealInner {
    lattice: String,
    key: Arc<KeyPair>,
    host: String,
    trusted: HashMap<String, PublicKey>,
    /// One guard per kind: a flood of events cannot crowd out calls.
    replay: Mutex<HashMap<Kind, ReplayGuard>>,
}

/// A message ready to publish: its headers (envelope and signature) and body.
#[derive(Debug, Clone)]
pub struct Sealed {
    /// The envelope and signature headers.
    pub headers: HeaderMap,
    /// The body, as given.
    pub body: Bytes,
    /// The envelope's nonce.
    pub nonce: String,
}

impl Seal {
    /// The seal of the host holding `key` in `lattice`, trusting `trusted` (and itself).
    pub fn new(lattice: &str, key: Arc<KeyPair>, trusted: &[PublicKey]) -> Self {
        let host = hex::encode(key.public_key().to_bytes());
        let mut keys: HashMap<String, PublicKey> = trusted
            .iter()
            .map(|k| (hex::encode(k.to_bytes()), *k))
            .collect();
        keys.insert(host.clone(), key.public_key());
        Self {
            inner: Arc::new(SealInner {
                lattice: lattice.to_owned(),
                key,
                host,
                trusted: keys,
                replay: Mutex::default(),
            }),
        }
    }

    /// This host's runtime public key (hex): how other hosts name it.
    pub fn host(&self) -> &str {
        &self.inner.host
    }

    /// Signs `meta` as a `kind` message with `body`.
    pub fn seal<T: Serialize>(&self, kind: Kind, meta: &T, body: Bytes) -> Sealed {
        let nonce = uuid::Uuid::new_v4().simple().to_string();
        let envelope = Envelope {
            lattice: self.inner.lattice.clone(),
            kind,
            from: self.inner.host.clone(),
            issued_ms: now_ms(),
            nonce: nonce.clone(),
            body: blake3::hash(&body).to_hex().to_string(),
            meta,
        };
        // An envelope is plain data: serialising it cannot fail.
        let text = serde_json::to_string(&envelope).unwrap_or_default();
        let signature = self.inner.key.sign(&signed_bytes(&text));
        let mut headers = HeaderMap::new();
        headers.insert(ENVELOPE_HEADER, text.as_str());
        headers.insert(SIGNATURE_HEADER, hex::encode(signature.as_bytes()).as_str());
        Sealed {
            headers,
            body,
            nonce,
        }
    }

    /// Opens a `kind` message: see the module's rules. Each nonce opens once.
    pub fn open<T: DeserializeOwned>(
        &self,
        kind: Kind,
        headers: Option<&HeaderMap>,
        body: &[u8],
    ) -> Result<Opened<T>, Refusal> {
        self.open_if(kind, headers, body, |_| Ok(()))
    }

    /// [`open`](Self::open), refusing what `fits` refuses before the nonce is remembered:
    /// a copy refused for where it was sent does not use up the genuine message's nonce.
    pub fn open_if<T: DeserializeOwned>(
        &self,
        kind: Kind,
        headers: Option<&HeaderMap>,
        body: &[u8],
        fits: impl FnOnce(&T) -> Result<(), Refusal>,
    ) -> Result<Opened<T>, Refusal> {
        let (envelope, _) = self.verify::<T>(kind, headers, body, LATTICE_ENVELOPE_SKEW)?;
        fits(&envelope.meta)?;
        let expires = envelope
            .issued_ms
            .saturating_add(duration_ms(LATTICE_ENVELOPE_SKEW));
        self.inner
            .replay
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(kind)
            .or_default()
            .admit(&envelope.nonce, expires, now_ms())?;
        Ok(Opened {
            from: envelope.from,
            nonce: envelope.nonce,
            meta: envelope.meta,
        })
    }

    /// Opens a record that is read again and again (an advertisement): as [`open`](Self::open)
    /// but issued within `max_age`, and not remembered. Gives its issue time too.
    pub fn open_record<T: DeserializeOwned>(
        &self,
        kind: Kind,
        headers: Option<&HeaderMap>,
        body: &[u8],
        max_age: Duration,
    ) -> Result<(Opened<T>, u64), Refusal> {
        let (envelope, issued_ms) = self.verify::<T>(kind, headers, body, max_age)?;
        Ok((
            Opened {
                from: envelope.from,
                nonce: envelope.nonce,
                meta: envelope.meta,
            },
            issued_ms,
        ))
    }

    fn verify<T: DeserializeOwned>(
        &self,
        kind: Kind,
        headers: Option<&HeaderMap>,
        body: &[u8],
        max_age: Duration,
    ) -> Result<(Envelope<T>, u64), Refusal> {
        let headers = headers.ok_or(Refusal::Unsigned)?;
        let text = headers
            .get(ENVELOPE_HEADER)
            .ok_or(Refusal::Unsigned)?
            .as_str();
        let signature = headers
            .get(SIGNATURE_HEADER)
            .ok_or(Refusal::Unsigned)?
            .as_str();
        let signature = hex::decode(signature)
            .ok()
            .and_then(|b| Signature::from_slice(&b))
            .ok_or(Refusal::Malformed("signature"))?;
        // The sender is read before the signature is checked only to find its key.
        let from: ClaimedSender =
            serde_json::from_str(text).map_err(|_| Refusal::Malformed("envelope"))?;
        let key = self
            .inner
            .trusted
            .get(&from.from)
            .ok_or_else(|| Refusal::Untrusted(cut(&from.from)))?;
        key.verify(&signed_bytes(text), &signature)
            .map_err(|_| Refusal::Forged)?;
        let envelope: Envelope<T> =
            serde_json::from_str(text).map_err(|_| Refusal::Malformed("envelope fields"))?;
        if envelope.body != blake3::hash(body).to_hex().as_str() {
            return Err(Refusal::Forged);
        }
        if envelope.lattice != self.inner.lattice || envelope.kind != kind {
            return Err(Refusal::Misdirected);
        }
        let now = now_ms();
        let issued = envelope.issued_ms;
        let skew = duration_ms(LATTICE_ENVELOPE_SKEW);
        if issued > now.saturating_add(skew) || now > issued.saturating_add(duration_ms(max_age)) {
            return Err(Refusal::Stale);
        }
        Ok((envelope, issued))
    }
}

fn signed_bytes(envelope: &str) -> Vec<u8> {
    let mut bytes = SIGNATURE_CONTEXT.to_vec();
    bytes.extend_from_slice(envelope.as_bytes());
    bytes
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A sender's claimed key as a refusal names it: at most 64 characters, escaped.
fn cut(text: &str) -> String {
    text.chars().flat_map(char::escape_debug).take(64).collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn key() -> Arc<KeyPair> {
        Arc::new(KeyPair::generate().unwrap())
    }

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct Meta {
        n: u32,
    }

    #[test]
    fn a_trusted_hosts_envelope_opens_once() {
        let (a, b) = (key(), key());
        let seal_a = Seal::new("l", a.clone(), &[b.public_key()]);
        let seal_b = Seal::new("l", b, &[a.public_key()]);
        let sealed = seal_a.seal(Kind::Call, &Meta { n: 7 }, Bytes::from_static(b"body"));
        let opened: Opened<Meta> = seal_b
            .open(Kind::Call, Some(&sealed.headers), &sealed.body)
            .unwrap();
        assert_eq!(opened.meta, Meta { n: 7 });
        assert_eq!(opened.from, seal_a.host());
        assert_eq!(
            seal_b
                .open::<Meta>(Kind::Call, Some(&sealed.headers), &sealed.body)
                .unwrap_err(),
            Refusal::Replayed
        );
    }

    #[test]
    fn untrusted_forged_misdirected_and_unsigned_envelopes_are_refused() {
        let (a, b, stranger) = (key(), key(), key());
        let seal_b = Seal::new("l", b, &[a.public_key()]);
        let body = Bytes::from_static(b"body");

        let from_stranger =
            Seal::new("l", stranger, &[]).seal(Kind::Call, &Meta { n: 1 }, body.clone());
        assert!(matches!(
            seal_b.open::<Meta>(Kind::Call, Some(&from_stranger.headers), &body),
            Err(Refusal::Untrusted(_))
        ));

        let seal_a = Seal::new("l", a.clone(), &[]);
        let sealed = seal_a.seal(Kind::Call, &Meta { n: 1 }, body.clone());
        // The body changed after signing.
        assert_eq!(
            seal_b
                .open::<Meta>(Kind::Call, Some(&sealed.headers), b"other body")
                .unwrap_err(),
            Refusal::Forged
        );
        // The envelope changed after signing.
        let mut edited = sealed.headers.clone();
        let text = sealed
            .headers
            .get(ENVELOPE_HEADER)
            .unwrap()
            .as_str()
            .replace("\"n\":1", "\"n\":2");
        edited.insert(ENVELOPE_HEADER, text.as_str());
        assert_eq!(
            seal_b
                .open::<Meta>(Kind::Call, Some(&edited), &body)
                .unwrap_err(),
            Refusal::Forged
        );
        // Opened as another kind, or by a host of another lattice.
        assert_eq!(
            seal_b
                .open::<Meta>(Kind::Event, Some(&sealed.headers), &body)
                .unwrap_err(),
            Refusal::Misdirected
        );
        let other_lattice = Seal::new("m", key(), &[a.public_key()]);
        assert_eq!(
            other_lattice
                .open::<Meta>(Kind::Call, Some(&sealed.headers), &body)
                .unwrap_err(),
            Refusal::Misdirected
        );
        assert_eq!(
            seal_b.open::<Meta>(Kind::Call, None, &body).unwrap_err(),
            Refusal::Unsigned
        );
    }

    #[test]
    fn the_replay_guard_forgets_expired_nonces_and_refuses_when_full() {
        let mut guard = ReplayGuard::default();
        guard.admit("a", 100, 50).unwrap();
        assert_eq!(guard.admit("a", 100, 60), Err(Refusal::Replayed));
        // Past its expiry the nonce is forgotten (its envelope is stale by then anyway).
        guard.admit("a", 300, 150).unwrap();
        // One issued far ahead does not hold back the expiry of those behind it.
        let mut guard = ReplayGuard::default();
        guard.admit("ahead", 10_000, 0).unwrap();
        guard.admit("b", 100, 0).unwrap();
        guard.admit("c", 400, 200).unwrap();
        assert!(!guard.seen.contains("b"), "b expired at 100");
        assert!(guard.seen.contains("ahead"));
        let mut full = ReplayGuard::default();
        for n in 0..LATTICE_REPLAY_GUARD_ENTRIES {
            full.admit(&n.to_string(), 1_000, 0).unwrap();
        }
        assert_eq!(full.admit("new", 1_000, 0), Err(Refusal::Flooded));
        full.admit("new", 2_000, 1_001).unwrap();
    }
}
