//! `capsid ws`: what capsules wrote to the workspace (it waits in the overlay), and
//! committing it to the workspace or discarding it. A path the workspace changed too since
//! a capsule first changed it is a conflict: shown, and committed over only with
//! `--overwrite`.

use anyhow::Result;
use capsid_core::text::printable;
use capsid_protocol::Client;
use capsid_protocol::methods::{
    FileDiffView, WorkspaceChangeView, WorkspaceCommit, WorkspaceCommitParams, WorkspaceDiff,
    WorkspaceDiffParams, WorkspaceDiscard, WorkspacePathsParams, WorkspaceStatus,
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
                writers(c),
            ]
        })
        .collect();
    output::table(&["change", "entry", "", "path", "by"], &rows);
}

fn writers(c: &WorkspaceChangeView) -> String {
    if c.writers.is_empty() {
        "?".to_owned()
    } else {
        printable(&c.writers.join(","))
    }
}

/// `+A -R`, or `?` for a file too large to count.
fn lines(f: &FileDiffView) -> String {
    if f.left_out && f.added_lines == 0 && f.removed_lines == 0 {
        "?".to_owned()
    } else {
        format!("+{} -{}", f.added_lines, f.removed_lines)
    }
}

fn size(bytes: Option<u64>) -> String {
    bytes.map_or_else(|| "-".to_owned(), |b| format!("{b} B"))
}

/// `capsid ws diff`: each file's unified diff (or sizes), or with `--stat` a line each.
async fn diff(client: &mut Client, paths: Vec<String>, stat: bool, as_json: bool) -> Result<()> {
    let filtered = !paths.is_empty();
    let answer = client
        .call::<WorkspaceDiff>(&WorkspaceDiffParams { paths, stat })
        .await?;
    if as_json {
        output::json(&answer);
        return Ok(());
    }
    if answer.total == 0 {
        println!("{}", nothing(filtered));
        return Ok(());
    }
    if stat {
        let rows: Vec<Vec<String>> = answer
            .files
            .iter()
            .map(|f| {
                vec![
                    f.change.change.clone(),
                    printable(&f.change.path),
                    if f.binary {
                        "binary".to_owned()
                    } else {
                        lines(f)
                    },
                    format!("{} -> {}", size(f.before_bytes), size(f.after_bytes)),
                    writers(&f.change),
                ]
            })
            .collect();
        output::table(&["change", "path", "lines", "size", "by"], &rows);
    } else {
        for f in &answer.files {
            print_file(f);
        }
    }
    let listed = answer.files.len() as u64;
    if listed < answer.total {
        println!("(the first {listed} of {} paths)", answer.total);
    }
    Ok(())
}

fn print_file(f: &FileDiffView) {
    let c = &f.change;
    let conflict = if c.conflict { ", conflict" } else { "" };
    println!(
        "{} {} {} (by {}{conflict})",
        c.change,
        c.entry,
        printable(&c.path),
        writers(c)
    );
    if c.entry != "file" {
        return;
    }
    match &f.diff {
        // Capsules wrote it: each line escaped, so it cannot drive the terminal.
        Some(text) => {
            // A line's own `\r` stays visible (escaped): a line-ending change shows.
            for line in text.split_inclusive('\n') {
                println!("{}", printable(line.strip_suffix('\n').unwrap_or(line)));
            }
        }
        None if f.binary => println!(
            "binary: {} -> {}",
            size(f.before_bytes),
            size(f.after_bytes)
        ),
        None => println!(
            "{} lines, {} -> {} (too large to show here)",
            lines(f),
            size(f.before_bytes),
            size(f.after_bytes)
        ),
    }
}

fn nothing(filtered: bool) -> &'static str {
    if filtered {
        "no changes waiting under those paths"
    } else {
        "no changes waiting in the workspace overlay"
    }
}

/// Runs `command`.
pub(crate) async fn ws(client: &mut Client, command: WsCommand, as_json: bool) -> Result<()> {
    let filtered = matches!(&command,
        WsCommand::Status { paths } | WsCommand::Commit { paths, .. } | WsCommand::Discard { paths }
            if !paths.is_empty());
    let (review, done) = match command {
        WsCommand::Diff { stat, paths } => return diff(client, paths, stat, as_json).await,
        WsCommand::Status { paths } => (
            client
                .call::<WorkspaceStatus>(&WorkspacePathsParams { paths })
                .await?,
            None,
        ),
        WsCommand::Commit { overwrite, paths } => (
            client
                .call::<WorkspaceCommit>(&WorkspaceCommitParams { overwrite, paths })
                .await?,
            Some("committed"),
        ),
        WsCommand::Discard { paths } => (
            client
                .call::<WorkspaceDiscard>(&WorkspacePathsParams { paths })
                .await?,
            Some("discarded"),
        ),
    };
    if as_json {
        output::json(&review);
        return Ok(());
    }
    if review.total == 0 {
        println!("{}", nothing(filtered));
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
