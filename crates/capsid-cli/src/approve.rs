//! `capsid approve`: the calls waiting for a person, and deciding them.

use anyhow::{Result, bail};
use capsid_protocol::Client;
use capsid_protocol::methods::{
    ApprovalDecide, ApprovalDecideParams, ApprovalDecision, ApprovalList, ApprovalShow,
    ApprovalShowParams, ApprovalView,
};

use crate::output;
use crate::{ApproveArgs, ApproveCommand};

/// `capsid approve ls | show <id> | <id> --once|--always|--deny`.
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
                            a.description.clone(),
                            seconds_left(a),
                        ]
                    })
                    .collect();
                output::table(&["id", "capsule", "asks for", "expires in"], &rows);
            }
        }
        (Some(ApproveCommand::Show { id }), _) => {
            let a = client
                .call::<ApprovalShow>(&ApprovalShowParams { id })
                .await?;
            show(&a, as_json);
        }
        (None, Some(id)) => {
            let decision = match (args.once, args.always, args.deny) {
                (true, false, false) => ApprovalDecision::Once,
                (false, true, false) => ApprovalDecision::Always,
                (false, false, true) => ApprovalDecision::Deny,
                _ => bail!("say how to decide {id}: exactly one of --once, --always or --deny"),
            };
            let a = client
                .call::<ApprovalDecide>(&ApprovalDecideParams { id, decision })
                .await?;
            if as_json {
                output::json(&a);
            } else {
                let word = match decision {
                    ApprovalDecision::Once => "allowed once",
                    ApprovalDecision::Always => "allowed from now on",
                    ApprovalDecision::Deny => "denied",
                };
                println!("{word}: {} ({})", a.description, a.capsule);
            }
        }
        (None, None) => bail!("name a request to decide, or `capsid approve ls`"),
    }
    Ok(())
}

fn seconds_left(a: &ApprovalView) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
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
    println!("asks for:    {} on {}", a.permission, a.resource);
    println!("call:        {}", a.description);
    println!("digest:      {}", a.digest);
    println!("expires in:  {}", seconds_left(a));
}
