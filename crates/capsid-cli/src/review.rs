//! `capsid capsule review`: an MCP capsule's tools that wait for the operator, each with
//! what changed since its pin, and `--accept` to pin exactly what was shown (by digest, so
//! a server that changes again in between is not accepted unseen).

use anyhow::Result;
use capsid_core::text::printable;
use capsid_protocol::Client;
use capsid_protocol::methods::{
    CapsuleParams, CapsuleReview, CapsuleReviewAccept, PendingToolView, ReviewAcceptParams,
};
use serde_json::Value;

use crate::commands::capsule_id;
use crate::output;

/// The fields of a definition shown first, in this order; any other field (title,
/// annotations, whatever a later definition holds) follows by name. Every field is shown.
const FIRST: [&str; 4] = ["name", "description", "inputSchema", "outputSchema"];

/// Every field of `pinned` and `presented`, `FIRST` first.
fn fields<'a>(pinned: Option<&'a Value>, presented: &'a Value) -> Vec<&'a str> {
    let mut rest: std::collections::BTreeSet<&str> = std::collections::BTreeSet::new();
    for v in pinned.into_iter().chain(std::iter::once(presented)) {
        if let Some(map) = v.as_object() {
            rest.extend(map.keys().map(String::as_str));
        }
    }
    let mut out: Vec<&str> = FIRST.to_vec();
    out.extend(rest.into_iter().filter(|k| !FIRST.contains(k)));
    out
}

/// One field as shown: text as itself, anything else as pretty JSON; escaped either way
/// (a server's text must not drive the terminal).
fn shown(value: Option<&Value>) -> String {
    match value {
        None | Some(Value::Null) => "(none)".into(),
        Some(Value::String(s)) => printable(s),
        Some(other) => printable(&serde_json::to_string_pretty(other).unwrap_or_default()),
    }
}

fn print_pending(t: &PendingToolView) {
    println!("{} ({}) digest {}", printable(&t.tool), t.change, t.digest);
    for field in fields(t.pinned.as_ref(), &t.presented) {
        let now = t.presented.get(field);
        match &t.pinned {
            None => println!("  {field}: {}", indent(&shown(now))),
            Some(pinned) if pinned.get(field) != now => {
                println!("  {field}:");
                println!("  - {}", indent(&shown(pinned.get(field))));
                println!("  + {}", indent(&shown(now)));
            }
            Some(_) => {}
        }
    }
}

/// Continues a multi-line value under its first line.
fn indent(text: &str) -> String {
    text.replace('\n', "\n    ")
}

/// Shows (and with `accept`, accepts) capsule `name`'s pending tools.
pub(crate) async fn review(
    client: &mut Client,
    name: &str,
    accept: bool,
    as_json: bool,
) -> Result<()> {
    let id = capsule_id(name)?;
    let pending = client
        .call::<CapsuleReview>(&CapsuleParams { name: id.clone() })
        .await?;
    if !accept {
        if as_json {
            output::json(&pending);
        } else if pending.is_empty() {
            println!("nothing of {name} waits for review");
        } else {
            for t in &pending {
                print_pending(t);
            }
            println!("accept all of the above: capsid capsule review {name} --accept");
        }
        return Ok(());
    }
    if pending.is_empty() {
        println!("nothing of {name} waits for review");
        return Ok(());
    }
    if !as_json {
        for t in &pending {
            print_pending(t);
        }
    }
    let accepted = client
        .call::<CapsuleReviewAccept>(&ReviewAcceptParams {
            name: id,
            digests: pending.iter().map(|t| t.digest.clone()).collect(),
        })
        .await?;
    if as_json {
        // What was accepted, with the definitions it was accepted on.
        output::json(&serde_json::json!({ "reviewed": pending, "accepted": accepted.accepted }));
    } else {
        let names: Vec<String> = accepted.accepted.iter().map(|t| printable(t)).collect();
        println!("accepted: {}", names.join(", "));
    }
    Ok(())
}
