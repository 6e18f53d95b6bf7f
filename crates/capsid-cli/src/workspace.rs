//! `capsid ws`: what capsules wrote to the workspace (it waits in the overlay), and
//! committing it to the workspace or discarding it. A path the workspace changed too since
//! a capsule first changed it is a conflict: shown, and committed over only with
//! `--overwrite`.

use anyhow::Result;
use capsid_core::text::printable;
use capsid_protocol::Client;
use capsid_protocol::methods::{
    NoParams, WorkspaceChangeView, WorkspaceCommit, WorkspaceCommitParams, WorkspaceDiscard,
    WorkspaceStatus,
};

use crate::WsCommand;
use crate::output;

fn print(changes: &[WorkspaceChangeView]) {
    let rows: Vec<Vec<String>> = changes
        .iter()
        .map(|c| {
            vec![
                c.change.clone(),
                c.entry.clone(),
                if c.conflict { "conflict" } else { "" }.to_owned(),
                printable(&c.path),
            ]
        })
        .collect();
    output::table(&["change", "entry", "", "path"], &rows);
}

/// Runs `command`.
pub(crate) async fn ws(client: &mut Client, command: WsCommand, as_json: bool) -> Result<()> {
    let (review, done) = match command {
        WsCommand::Status => (client.call::<WorkspaceStatus>(&NoParams {}).await?, None),
        WsCommand::Commit { overwrite } => (
            client
                .call::<WorkspaceCommit>(&WorkspaceCommitParams { overwrite })
                .await?,
            Some("committed"),
        ),
        WsCommand::Discard => (
            client.call::<WorkspaceDiscard>(&NoParams {}).await?,
            Some("discarded"),
        ),
    };
    if as_json {
        output::json(&review);
        return Ok(());
    }
    if review.total == 0 {
        println!("no changes waiting in the workspace overlay");
        return Ok(());
    }
    print(&review.changes);
    let listed = review.changes.len() as u64;
    if listed < review.total {
        println!("(the first {listed} of {} paths)", review.total);
    }
    if let Some(what) = done {
        println!("{what} {} path(s)", review.total);
        return Ok(());
    }
    let conflicts = review.conflicts;
    if conflicts > 0 {
        println!(
            "{conflicts} conflict(s): the workspace changed there too; \
             `capsid ws commit --overwrite` replaces its version, `capsid ws discard` keeps it"
        );
    } else {
        println!("commit: capsid ws commit; drop: capsid ws discard");
    }
    Ok(())
}
