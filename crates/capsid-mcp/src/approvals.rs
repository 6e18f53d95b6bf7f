//! Asking the MCP client's person when a call made through the bridge waits for an
//! approval: a form with one enum field (`decision`). A 2025 session is asked with
//! `elicitation/create` while the call waits; a 2026-07-28 client gets an input-required
//! result instead, whose `requestState` is sealed here (blake3 keyed with a secret of this
//! bridge process), expires with the approval, and is bound to the user, the tool and the
//! digest of its arguments: it cannot be replayed by another user, for another tool, or
//! with other arguments. The answer is decided through the daemon as the session's user,
//! who may decide only what its own calls asked, and only for them: `once`, `session` (2025
//! sessions, whose end the daemon sees) or `deny`; `always` stays the operator's.

use capsid_core::text::printable;
use capsid_protocol::methods::{ApprovalDecision, ApprovalView};
use rmcp::model::{ElicitRequestParams, ElicitResult, ElicitationAction, ElicitationSchema};
use serde_json::json;

/// The form's one field.
const FIELD: &str = "decision";

/// The key of the approval in an input-required result's `inputRequests`.
pub(crate) const INPUT_KEY: &str = "approval";

/// The answers offered for `request`: `session` only when its call came from a session and
/// `sessions` says the client has one the daemon can see end (a 2025 session, whose tool
/// list follow holds it; a stateless 2026 client never disconnects).
fn choices(request: &ApprovalView, sessions: bool) -> Vec<&'static str> {
    let mut all = vec!["once"];
    if sessions && request.session.is_some() {
        all.push("session");
    }
    all.push("deny");
    all
}

/// The form asking about `request` (`sessions`: see [`choices`]).
pub(crate) fn form(
    request: &ApprovalView,
    sessions: bool,
) -> Result<ElicitRequestParams, serde_json::Error> {
    let left = (request.expires_ms - capsid_core::time::now_ms()).max(0) / 1000;
    let message = format!(
        "Capsule {} asks: {}. Undecided, it is denied in {left} s.",
        printable(&request.capsule),
        printable(&request.description),
    );
    let schema: ElicitationSchema = serde_json::from_value(json!({
        "type": "object",
        "properties": {
            FIELD: {
                "type": "string",
                "title": "Decision",
                "description": "once: this call; session: until you disconnect; deny",
                "enum": choices(request, sessions),
            }
        },
        "required": [FIELD],
    }))?;
    Ok(ElicitRequestParams::FormElicitationParams {
        meta: None,
        message,
        requested_schema: schema,
    })
}

/// What a client's answer to the form comes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answered {
    /// A decision to take.
    Decide(ApprovalDecision),
    /// The person cancelled the whole operation: the call is cancelled.
    Cancel,
    /// Nothing usable (no answer, or one not offered): the call goes on waiting.
    Nothing,
}

/// What `result` decides about `request` (asked with `sessions`). Declining is a denial.
pub fn answered(request: &ApprovalView, sessions: bool, result: &ElicitResult) -> Answered {
    match &result.action {
        ElicitationAction::Decline => Answered::Decide(ApprovalDecision::Deny),
        ElicitationAction::Cancel => Answered::Cancel,
        // `Accept`, and any action this bridge does not know (decides nothing below).
        accept => {
            if *accept != ElicitationAction::Accept {
                return Answered::Nothing;
            }
            let chosen = result
                .content
                .as_ref()
                .and_then(|c| c.get(FIELD))
                .and_then(serde_json::Value::as_str)
                .filter(|c| choices(request, sessions).contains(c));
            match chosen {
                Some("once") => Answered::Decide(ApprovalDecision::Once),
                Some("session") => Answered::Decide(ApprovalDecision::Session),
                Some("deny") => Answered::Decide(ApprovalDecision::Deny),
                _ => Answered::Nothing,
            }
        }
    }
}

/// What a sealed request state is bound to: who called, which tool, with what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    user: String,
    tool: String,
    input_digest: blake3::Hash,
}

impl Binding {
    /// A call of `tool` (`<capsule>.<tool>`) by `user` with `input`.
    pub fn new(user: &str, tool: &str, input: &serde_json::Value) -> Self {
        Self {
            user: user.to_owned(),
            tool: tool.to_owned(),
            input_digest: blake3::hash(input.to_string().as_bytes()),
        }
    }
}

/// Seals and opens `requestState`s with a secret of this bridge process.
pub struct StateSeal {
    key: [u8; 32],
}

impl std::fmt::Debug for StateSeal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StateSeal(..)")
    }
}

/// The tag over `payload` for `binding`.
fn tag(key: &[u8; 32], payload: &[u8], binding: &Binding) -> blake3::Hash {
    let mut mac = blake3::Hasher::new_keyed(key);
    for part in [
        payload,
        binding.user.as_bytes(),
        binding.tool.as_bytes(),
        binding.input_digest.as_bytes(),
    ] {
        mac.update(&(part.len() as u64).to_le_bytes());
        mac.update(part);
    }
    mac.finalize()
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

/// The bytes `text` spells in lowercase hex, as `hex` writes them: any other spelling (capitals,
/// a sign) is refused, so a sealed state has exactly one text.
fn unhex(text: &str) -> Option<Vec<u8>> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let bytes = text.as_bytes();
    if !bytes.len().is_multiple_of(2) {
        return None;
    }
    bytes
        .chunks_exact(2)
        .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect()
}

impl StateSeal {
    /// A seal with a fresh random secret.
    pub(crate) fn new() -> Result<Self, getrandom::Error> {
        let mut key = [0u8; 32];
        getrandom::fill(&mut key)?;
        Ok(Self::with_key(key))
    }

    /// A seal with the secret `key` (tests and fuzzing; a bridge makes a random one).
    pub fn with_key(key: [u8; 32]) -> Self {
        Self { key }
    }

    /// The state naming approval `id` (expiring at `expires_ms`) for `binding`.
    pub fn seal(&self, id: &str, expires_ms: i64, binding: &Binding) -> String {
        let payload = json!({ "approval": id, "expires_ms": expires_ms }).to_string();
        let tag = tag(&self.key, payload.as_bytes(), binding);
        format!("{}.{}", hex(payload.as_bytes()), tag.to_hex())
    }

    /// The approval id `state` names, if this bridge sealed it for `binding` and it has not
    /// expired; `None` for anything else (forged, altered, another call's, expired).
    pub fn open(&self, state: &str, binding: &Binding) -> Option<String> {
        let (payload, given) = state.split_once('.')?;
        let payload = unhex(payload)?;
        let given = blake3::Hash::from_bytes(unhex(given)?.try_into().ok()?);
        // `blake3::Hash` compares in constant time.
        if tag(&self.key, &payload, binding) != given {
            return None;
        }
        let fields: serde_json::Value = serde_json::from_slice(&payload).ok()?;
        let expires = fields.get("expires_ms")?.as_i64()?;
        if capsid_core::time::now_ms() > expires {
            return None;
        }
        Some(fields.get("approval")?.as_str()?.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(session: bool) -> ApprovalView {
        ApprovalView {
            id: "a1".into(),
            principal: "user:x".into(),
            capsule: "fetch".into(),
            resource: "net://https/example.com/443".into(),
            permission: "exec".into(),
            description: "http.request: exec net://https/example.com/443 (GET /)".into(),
            digest: String::new(),
            requested_ms: 0,
            expires_ms: capsid_core::time::now_ms() + 60_000,
            caller: None,
            session: session.then(|| "s1".into()),
        }
    }

    #[test]
    fn a_sealed_state_opens_only_for_its_own_call_and_until_it_expires() {
        let seal = StateSeal::new().unwrap_or_else(|e| panic!("{e}"));
        let input = json!({ "url": "https://example.com/" });
        let mine = Binding::new("mcp", "fetch.get", &input);
        let expires = capsid_core::time::now_ms() + 60_000;
        let state = seal.seal("a1", expires, &mine);
        assert_eq!(seal.open(&state, &mine).as_deref(), Some("a1"));
        for other in [
            Binding::new("eve", "fetch.get", &input),
            Binding::new("mcp", "fetch.ask", &input),
            Binding::new(
                "mcp",
                "fetch.get",
                &json!({ "url": "https://evil.example/" }),
            ),
        ] {
            assert_eq!(seal.open(&state, &other), None, "{other:?}");
        }
        // One state, one spelling: the same bytes in capitals do not open (found by fuzzing).
        assert_eq!(seal.open(&state.to_uppercase(), &mine), None, "capitals");
        let (payload, tag) = state.split_once('.').unwrap_or_default();
        let capital_tag = format!("{payload}.{}", tag.to_uppercase());
        assert_eq!(seal.open(&capital_tag, &mine), None, "a tag in capitals");
        let forged = state.replacen("61", "62", 1);
        assert_eq!(seal.open(&forged, &mine), None, "an altered payload");
        let other_bridge = StateSeal::new().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(other_bridge.open(&state, &mine), None);
        let out_of_date = seal.seal("a1", capsid_core::time::now_ms() - 1, &mine);
        assert_eq!(seal.open(&out_of_date, &mine), None);
        for junk in ["", ".", "zz.zz", "6162.", &"0".repeat(200)] {
            assert_eq!(seal.open(junk, &mine), None, "{junk:?}");
        }
    }

    #[test]
    fn answers_map_onto_decisions_and_only_offered_ones_count() {
        let accept = |d: &str| {
            ElicitResult::new(ElicitationAction::Accept).with_content(json!({ FIELD: d }))
        };
        let (with_session, without) = (view(true), view(false));
        assert_eq!(
            answered(&with_session, true, &accept("session")),
            Answered::Decide(ApprovalDecision::Session)
        );
        for (request, sessions, answer) in [
            (&without, true, "session"),
            (&with_session, false, "session"),
            (&with_session, true, "always"),
            (&without, true, "sudo"),
        ] {
            assert_eq!(
                answered(request, sessions, &accept(answer)),
                Answered::Nothing,
                "{answer} is not offered"
            );
        }
        assert_eq!(
            answered(
                &without,
                true,
                &ElicitResult::new(ElicitationAction::Decline)
            ),
            Answered::Decide(ApprovalDecision::Deny)
        );
        assert_eq!(
            answered(
                &without,
                true,
                &ElicitResult::new(ElicitationAction::Cancel)
            ),
            Answered::Cancel
        );
        let asked = form(&with_session, true).unwrap_or_else(|e| panic!("{e}"));
        let text = serde_json::to_string(&asked).unwrap_or_default();
        assert!(
            text.contains("\"session\"") && text.contains("fetch"),
            "{text}"
        );
        assert!(!text.contains("\"always\""), "{text}");
    }
}
