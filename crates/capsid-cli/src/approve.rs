//! `capsid approve`: the calls waiting for a person, and deciding them.

use anyhow::{Result, bail};
use capsid_protocol::Client;
use capsid_protocol::methods::{
    ApprovalDecide, ApprovalDecideParams, ApprovalDecision, ApprovalForget, ApprovalForgetParams,
    ApprovalList, ApprovalRefusals, ApprovalShow, ApprovalShowParams, ApprovalView,
};

use capsid_core::text::printable;

use crate::output;
use crate::{ApproveArgs, ApproveCommand};

/// `capsid approve ls | show <id> | watch | refusals | forget <id> | <id>
/// --once|--session|--always|--deny [--always]`.
pub(crate) async fn approve(client: &mut Client, args: ApproveArgs, as_json: bool) -> Result<()> {
    match (args.command, args.id) {
        (Some(ApproveCommand::Ls), _) => {
            let waiting = client.ask::<ApprovalList>().await?;
            if as_json {
                output::json(&waiting);
            } else {
                let rows: Vec<_> = waiting
                    .iter()
                    .map(|a| {
                        vec![
                            a.id.clone(),
                            a.capsule.clone(),
                            printable(&a.description),
                            seconds_left(a),
                        ]
                    })
                    .collect();
                output::table(&["id", "capsule", "asks for", "expires in"], &rows);
            }
        }
        (Some(ApproveCommand::Watch), _) => watch(client).await?,
        (Some(ApproveCommand::Refusals), _) => {
            let all = client.ask::<ApprovalRefusals>().await?;
            if as_json {
                output::json(&all);
            } else {
                let rows: Vec<_> = all
                    .iter()
                    .map(|r| {
                        vec![
                            r.id.clone(),
                            r.capsule.clone(),
                            r.permission.clone(),
                            printable(&r.resource),
                        ]
                    })
                    .collect();
                output::table(&["id", "capsule", "permission", "resource"], &rows);
            }
        }
        (Some(ApproveCommand::Forget { id }), _) => {
            client
                .call::<ApprovalForget>(&ApprovalForgetParams { id: id.clone() })
                .await?;
            println!("forgotten: {id}; the capsule may ask again");
        }
        (Some(ApproveCommand::Show { id }), _) => {
            let a = client
                .call::<ApprovalShow>(&ApprovalShowParams { id })
                .await?;
            show(&a, as_json);
        }
        (None, Some(id)) => {
            let decision = match (args.once, args.session, args.always, args.deny) {
                (true, false, false, false) => ApprovalDecision::Once,
                (false, true, false, false) => ApprovalDecision::Session,
                (false, false, true, false) => ApprovalDecision::Always,
                (false, false, false, true) => ApprovalDecision::Deny,
                (false, false, true, true) => ApprovalDecision::DenyAlways,
                _ => bail!(
                    "say how to decide {id}: --once, --session, --always, --deny, or --deny --always"
                ),
            };
            let params = ApprovalDecideParams {
                id,
                decision,
                as_user: None,
            };
            let a = client.call::<ApprovalDecide>(&params).await?;
            if as_json {
                output::json(&a);
            } else {
                let word = match decision {
                    ApprovalDecision::Once => "allowed once",
                    ApprovalDecision::Session => "allowed for the caller's session",
                    ApprovalDecision::Always => "allowed from now on",
                    ApprovalDecision::Deny => "denied",
                    ApprovalDecision::DenyAlways => "denied from now on",
                };
                println!("{word}: {} ({})", printable(&a.description), a.capsule);
            }
        }
        (None, None) => bail!("name a request to decide, or `capsid approve ls`"),
    }
    Ok(())
}

/// How often `watch` looks for new requests.
const WATCH_INTERVAL: std::time::Duration = std::time::Duration::from_millis(250);

/// `capsid approve watch`: each request that comes to wait is shown and decided by the
/// answer typed (`o`nce, s`e`ssion, `a`lways, `d`eny, deny al`w`ays, `s`kip); ends when
/// stdin does.
async fn watch(client: &mut Client) -> Result<()> {
    use std::io::Write;
    let mut lines = stdin_lines();
    let mut seen = std::collections::HashSet::new();
    eprintln!("watching for approval requests (Ctrl-D to stop)");
    loop {
        let waiting = client.ask::<ApprovalList>().await?;
        let Some(next) = waiting.into_iter().find(|a| !seen.contains(&a.id)) else {
            // Nothing to ask about: a line typed now is not an answer, but an end is.
            tokio::select! {
                () = tokio::time::sleep(WATCH_INTERVAL) => {}
                line = lines.recv() => match line {
                    None => return Ok(()),
                    Some(_) => println!("nothing is waiting"),
                },
            }
            continue;
        };
        seen.insert(next.id.clone());
        println!();
        show(&next, false);
        // `session` only where the call came from a client session.
        let prompt = if next.session.is_some() {
            "[o]nce, s[e]ssion, [a]lways, [d]eny, deny al[w]ays, [s]kip? "
        } else {
            "[o]nce, [a]lways, [d]eny, deny al[w]ays, [s]kip? "
        };
        let decision = loop {
            print!("{prompt}");
            std::io::stdout().flush()?;
            let Some(line) = lines.recv().await else {
                return Ok(());
            };
            match line.trim() {
                "o" | "once" => break Some(ApprovalDecision::Once),
                "e" | "session" if next.session.is_some() => {
                    break Some(ApprovalDecision::Session);
                }
                "a" | "always" => break Some(ApprovalDecision::Always),
                "d" | "deny" => break Some(ApprovalDecision::Deny),
                "w" | "deny-always" => break Some(ApprovalDecision::DenyAlways),
                "s" | "skip" => break None,
                _ => println!("answer with one of the letters in brackets"),
            }
        };
        let Some(decision) = decision else {
            continue;
        };
        let params = ApprovalDecideParams {
            id: next.id.clone(),
            decision,
            as_user: None,
        };
        match client.call::<ApprovalDecide>(&params).await {
            Ok(a) => println!("decided: {} ({})", printable(&a.description), a.capsule),
            // Decided elsewhere, or expired, while the prompt was up.
            Err(e) => println!("not decided: {e}"),
        }
    }
}

/// stdin's lines as they are typed; the channel closes when stdin ends. Read on a thread of
/// its own: a read in progress must not hold up the exit when `watch` ends on an error.
fn stdin_lines() -> tokio::sync::mpsc::Receiver<String> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            if tx.blocking_send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn seconds_left(a: &ApprovalView) -> String {
    let now = capsid_core::time::now_ms();
    format!("{}s", (a.expires_ms - now).max(0) / 1000)
}

fn show(a: &ApprovalView, as_json: bool) {
    if as_json {
        output::json(a);
        return;
    }
    println!("id:          {}", a.id);
    println!("capsule:     {}", a.capsule);
    println!("principal:   {}", a.principal);
    if let Some(caller) = &a.caller {
        println!("called by:   {caller}");
    }
    if let Some(session) = &a.session {
        println!("session:     {session} (may be decided --session)");
    }
    println!(
        "asks for:    {} on {}",
        a.permission,
        printable(&a.resource)
    );
    println!("call:        {}", printable(&a.description));
    println!("digest:      {}", a.digest);
    println!("expires in:  {}", seconds_left(a));
}
