//! The commands that talk to a running daemon, each a typed `capsid-protocol` call.

use std::io::Write as _;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use capsid_core::CapsuleId;
use capsid_protocol::methods::{
    AuditExport, AuditTail, AuditVerify, AuditVerifyLattice, CapGrant, CapList, CapRevoke,
    CapsuleInstall, CapsuleList, CapsuleLoad, CapsuleLogs, CapsuleLogsFollow, CapsuleParams,
    CapsuleReload, CapsuleShow, CapsuleUnload, CapsuleView, EventPublish, ExportParams,
    GrantListParams, GrantParams, IdentityList, InstallParams, LogLine, LogParams, OutputStream,
    PipeLinkView, ProcessList, ProcessLogParams, ProcessLogsFollow, ProcessView, PublishParams,
    RevokeParams, Status, StatusResult, TailParams, ToolCall, ToolCallParams, ToolList,
    ToolListParams, ToolOutput, Via,
};
use capsid_protocol::{Client, Method};
use serde_json::Value;

use crate::output::{self, opt};
use crate::{AuditCommand, CapCommand, CapsuleCommand, Command, McpCommand};

/// Runs `command` against the daemon `client` is connected to.
pub(crate) async fn run(client: &mut Client, command: Command, as_json: bool) -> Result<()> {
    match command {
        Command::Status => status(client, as_json).await,
        Command::Capsule(c) => capsule(client, c, as_json).await,
        Command::Call {
            capsule,
            tool,
            input,
            as_user,
        } => call(client, &capsule, tool, &input, as_user, as_json).await,
        Command::Tools { as_user } => {
            let via = capsid_protocol::methods::Via::Daemon;
            let tools = client
                .call::<ToolList>(&ToolListParams { as_user, via })
                .await?;
            if as_json {
                output::json(&tools);
            } else {
                let rows: Vec<_> = tools
                    .iter()
                    .map(|t| vec![format!("{}.{}", t.capsule, t.tool), t.description.clone()])
                    .collect();
                output::table(&["tool", "description"], &rows);
            }
            Ok(())
        }
        Command::Publish { topic, payload } => {
            // JSON if it parses, else the text.
            let payload = serde_json::from_str::<Value>(&payload).unwrap_or(Value::String(payload));
            let d = client
                .call::<EventPublish>(&PublishParams { topic, payload })
                .await?;
            if as_json {
                output::json(&d);
            } else {
                println!(
                    "delivered to {} subscribers ({} dropped)",
                    d.delivered, d.dropped
                );
            }
            Ok(())
        }
        Command::Ps => ps(client, as_json).await,
        Command::Stats { capsule } => crate::stats::stats(client, capsule, as_json).await,
        Command::Logs {
            capsule,
            process,
            stderr,
            follow,
        } => match (capsule, process) {
            (_, Some(generation)) => process_logs(client, generation, stderr, follow).await,
            (Some(capsule), None) => logs(client, &capsule, follow, as_json).await,
            (None, None) => bail!("name a capsule, or a process with --process"),
        },
        Command::Audit(a) => audit(client, a, as_json).await,
        Command::Cap(c) => cap(client, c, as_json).await,
        Command::Who => {
            let who = client.ask::<IdentityList>().await?;
            if as_json {
                output::json(&who);
            } else {
                let users: Vec<_> = who
                    .users
                    .iter()
                    .map(|u| vec![u.id.clone(), u.name.clone()])
                    .collect();
                output::table(&["id", "name"], &users);
                println!();
                let links: Vec<_> = who
                    .links
                    .iter()
                    .map(|l| {
                        vec![
                            l.platform.clone(),
                            l.platform_user_id.clone(),
                            l.user.clone(),
                        ]
                    })
                    .collect();
                output::table(&["platform", "platform_user_id", "user"], &links);
            }
            Ok(())
        }
        Command::Mcp(McpCommand::Token(t)) => crate::mcp::token(client, t, as_json).await,
        Command::Approve(a) => crate::approve::approve(client, a, as_json).await,
        Command::Ws(w) => crate::workspace::ws(client, w, as_json).await,
        Command::Trust(t) => crate::trust::trust(client, t, as_json).await,
        Command::Key(crate::KeyCommand::Generate { file }) => {
            crate::trust::generate(&file, as_json)
        }
        Command::Daemon { .. }
        | Command::Start { .. }
        | Command::Stop
        | Command::CompileComponent
        | Command::Mcp(McpCommand::Serve { .. }) => Ok(()),
    }
}

pub(crate) fn capsule_id(name: &str) -> Result<CapsuleId> {
    CapsuleId::new(name).map_err(|e| anyhow!("{e}"))
}

/// Calls `M` with a spinner saying `what` (loads may compile a capsule).
async fn with_spinner<M: Method>(
    client: &mut Client,
    params: &M::Params,
    what: &str,
) -> Result<M::Result> {
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_message(what.to_owned());
    bar.enable_steady_tick(Duration::from_millis(100));
    let result = client.call::<M>(params).await;
    bar.finish_and_clear();
    Ok(result?)
}

/// `capsid status`: the daemon's state, and loudly any audit problem found at boot.
async fn status(client: &mut Client, as_json: bool) -> Result<()> {
    let s: StatusResult = client.ask::<Status>().await?;
    if as_json {
        output::json(&s);
        return Ok(());
    }
    println!("capsid {} (pid {})", s.version, s.pid);
    println!("home       {}", s.home.display());
    println!("workspace  {}", s.workspace.display());
    println!("dev        {}", s.dev);
    println!(
        "capsules   {} ({} ready, {} failed)",
        s.capsules, s.ready, s.failed
    );
    println!(
        "uptime     {} ms (boot took {} ms)",
        s.uptime_ms, s.boot.boot_ms
    );
    if let Some(l) = &s.lattice {
        let at = l
            .server
            .as_deref()
            .map(|s| format!(" to {s}"))
            .unwrap_or_default();
        println!(
            "lattice    {}: {}{at} ({} servers configured, {} disconnects since boot)",
            l.name,
            l.state,
            l.servers.len(),
            l.disconnects
        );
        println!("host key   {}", l.host_key);
        let t = &l.traffic;
        println!(
            "traffic    calls {} sent, {} served, {} refused; events {} out, {} in, {} refused, \
             {} dropped; cancels {} refused",
            t.calls_sent,
            t.calls_served,
            t.calls_refused,
            t.events_exported,
            t.events_imported,
            t.events_refused,
            t.exports_dropped,
            t.cancels_refused
        );
    }
    if s.boot.audit_read_only {
        println!("audit      READ-ONLY: the log failed verification; nothing runs");
    } else if !s.boot.audit_problems.is_empty() {
        println!("audit      a tampered log was set aside at boot");
    }
    for problem in &s.boot.audit_problems {
        println!("           {problem}");
    }
    for done in &s.boot.unrecorded {
        println!("unrecorded {done}");
    }
    Ok(())
}

fn read_input(input: &str) -> Result<Value> {
    let text = match input.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?,
        None => input.to_owned(),
    };
    serde_json::from_str(&text).map_err(|e| anyhow!("--input is not JSON: {e}"))
}

/// `capsid call`: prints a JSON answer as JSON and a text answer as it came (`--json`: the
/// answer with its kind).
async fn call(
    client: &mut Client,
    capsule: &str,
    tool: String,
    input: &str,
    as_user: Option<String>,
    as_json: bool,
) -> Result<()> {
    let params = ToolCallParams {
        capsule: capsule_id(capsule)?,
        tool,
        input: read_input(input)?,
        as_user,
        client: None,
        via: Via::Daemon,
        approvals: false,
    };
    let answer = client.call::<ToolCall>(&params).await?;
    match answer {
        _ if as_json => output::json(&answer),
        ToolOutput::Json(value) => output::json(&value),
        ToolOutput::Text(text) => println!("{text}"),
    }
    Ok(())
}

async fn capsule(client: &mut Client, c: CapsuleCommand, as_json: bool) -> Result<()> {
    let view = match c {
        CapsuleCommand::Ls => {
            let list = client.ask::<CapsuleList>().await?;
            if as_json {
                output::json(&list);
            } else {
                let rows: Vec<_> = list
                    .iter()
                    .map(|c| {
                        vec![
                            c.name.to_string(),
                            opt(c.version.as_ref()),
                            c.state.to_string(),
                            c.tools.join(","),
                            opt(c.reason.as_ref()),
                        ]
                    })
                    .collect();
                output::table(&["name", "version", "state", "tools", "reason"], &rows);
            }
            return Ok(());
        }
        CapsuleCommand::Show { name } => {
            let detail = client
                .call::<CapsuleShow>(&CapsuleParams {
                    name: capsule_id(&name)?,
                })
                .await?;
            if as_json {
                output::json(&detail);
            } else {
                print_capsule(&detail.capsule);
                if let Some(d) = &detail.description {
                    println!("{:<12}{d}", "description");
                }
                for t in &detail.tool_descriptions {
                    println!("  {:<10}{}", t.name, t.description);
                }
            }
            return Ok(());
        }
        CapsuleCommand::Load { name } => {
            let params = CapsuleParams {
                name: capsule_id(&name)?,
            };
            with_spinner::<CapsuleLoad>(client, &params, &format!("loading {name}")).await?
        }
        CapsuleCommand::Unload { name } => {
            let params = CapsuleParams {
                name: capsule_id(&name)?,
            };
            client.call::<CapsuleUnload>(&params).await?;
            println!("unloaded {name}");
            return Ok(());
        }
        CapsuleCommand::Reload { name } => {
            let params = CapsuleParams {
                name: capsule_id(&name)?,
            };
            with_spinner::<CapsuleReload>(client, &params, &format!("reloading {name}")).await?
        }
        CapsuleCommand::Review { name, accept } => {
            return crate::review::review(client, &name, accept, as_json).await;
        }
        CapsuleCommand::Sign { dir, key: None } => {
            return crate::trust::sign(client, dir, as_json).await;
        }
        CapsuleCommand::Sign {
            dir,
            key: Some(key),
        } => {
            return crate::trust::sign_with(&dir, &key, as_json);
        }
        CapsuleCommand::Verify { dir } => return crate::trust::verify(client, dir, as_json).await,
        CapsuleCommand::Install { dir, accept } => {
            return install(client, &dir, accept, as_json).await;
        }
    };
    if as_json {
        output::json(&view);
    } else {
        print_capsule(&view);
    }
    Ok(())
}

/// `capsid capsule install`: the capsule as loaded, who signed it, what it asks for, and what
/// was accepted anew.
async fn install(
    client: &mut Client,
    dir: &std::path::Path,
    accept: bool,
    as_json: bool,
) -> Result<()> {
    let dir = std::path::absolute(dir).context("the capsule directory")?;
    let params = InstallParams { dir, accept };
    let installed = with_spinner::<CapsuleInstall>(client, &params, "installing").await?;
    if as_json {
        output::json(&installed);
    } else {
        print_capsule(&installed.capsule);
        println!("{:<12}{}", "requests", installed.requests.join(", "));
        if let Some(change) = &installed.accepted {
            if change.signer_changed {
                let was = change
                    .signer_was
                    .as_ref()
                    .map_or_else(|| "unsigned".to_owned(), ToString::to_string);
                println!("{:<12}the signer changed (was {was})", "accepted");
            }
            if !change.added_requests.is_empty() {
                println!(
                    "{:<12}new requests: {}",
                    "accepted",
                    change.added_requests.join(", ")
                );
            }
        }
        println!("(requests are not grants: `capsid cap grant` gives what you choose)");
        if !installed.left_out.is_empty() {
            let left: Vec<_> = installed
                .left_out
                .iter()
                .map(|p| p.display().to_string())
                .collect();
            println!(
                "{:<12}{} (not part of the capsule)",
                "left out",
                left.join(", ")
            );
        }
    }
    Ok(())
}

fn print_capsule(c: &CapsuleView) {
    let field = |key: &str, value: String| println!("{key:<12}{value}");
    field("name", c.name.to_string());
    if let Some(v) = &c.version {
        field("version", v.clone());
    }
    field("state", c.state.to_string());
    if let Some(r) = &c.reason {
        field("reason", r.clone());
    }
    field("dir", c.dir.display().to_string());
    field("tools", c.tools.join(","));
    if let Some(b) = &c.blake3 {
        field("blake3", b.clone());
    }
    if let Some(k) = c.load_kind {
        field("load_kind", k.to_string());
    }
    if let Some(s) = &c.signer {
        field("signed by", s.to_string());
    }
    if let Some(n) = &c.native {
        field("health", format!("{} ({} restarts)", n.health, n.restarts));
    }
    if let Some(m) = &c.mcp {
        field(
            "server",
            if m.connected {
                "connected"
            } else {
                "not connected"
            }
            .into(),
        );
        if !m.pending_review.is_empty() {
            field(
                "review",
                format!(
                    "{} (hidden until `capsid capsule review {}`)",
                    m.pending_review.join(","),
                    c.name
                ),
            );
        }
    }
}

/// A pipeline's links, each as bytes moved and the rate lately (`-` for one program).
fn links_cell(links: &[PipeLinkView]) -> String {
    if links.is_empty() {
        return "-".into();
    }
    links
        .iter()
        .map(|l| {
            if l.ended {
                format!("{} (ended)", output::bytes(l.bytes))
            } else {
                format!("{} @ {}/s", output::bytes(l.bytes), output::bytes(l.rate))
            }
        })
        .collect::<Vec<_>>()
        .join(" | ")
}

async fn ps(client: &mut Client, as_json: bool) -> Result<()> {
    let list = client.ask::<ProcessList>().await?;
    if as_json {
        output::json(&list);
        return Ok(());
    }
    let rows: Vec<_> = list
        .iter()
        .map(|p| match p {
            ProcessView::Persistent {
                capsule,
                label,
                pid,
                generation,
                running,
                restarts,
                gave_up,
                stages,
                links,
                ..
            } => vec![
                if stages.is_empty() {
                    "persistent".into()
                } else {
                    format!("pipeline ({} stages)", stages.len())
                },
                capsule.to_string(),
                opt(label.as_ref()),
                pid.to_string(),
                generation.to_string(),
                if gave_up.is_some() {
                    "gave up".into()
                } else {
                    running.to_string()
                },
                restarts.to_string(),
                links_cell(links),
            ],
            ProcessView::Native {
                capsule,
                health,
                restarts,
            } => vec![
                "native".into(),
                capsule.to_string(),
                "-".into(),
                "-".into(),
                "-".into(),
                health.to_string(),
                restarts.to_string(),
                "-".into(),
            ],
        })
        .collect();
    output::table(
        &[
            "kind",
            "capsule",
            "label",
            "pid",
            "generation",
            "running",
            "restarts",
            "links",
        ],
        &rows,
    );
    Ok(())
}

fn print_lines(lines: &[LogLine], as_json: bool) {
    for l in lines {
        if as_json {
            println!("{}", serde_json::to_string(l).unwrap_or_default());
        } else {
            println!("{} {:<5} {:<6} {}", l.time_ms, l.level, l.source, l.message);
        }
    }
}

async fn logs(client: &mut Client, capsule: &str, follow: bool, as_json: bool) -> Result<()> {
    let params = LogParams {
        name: capsule_id(capsule)?,
        after: 0,
    };
    if !follow {
        let page = client.call::<CapsuleLogs>(&params).await?;
        print_lines(&page.lines, as_json);
        return Ok(());
    }
    let mut pages = client.follow::<CapsuleLogsFollow>(&params).await?;
    while let Some(page) = pages.next().await? {
        print_lines(&page.lines, as_json);
    }
    Ok(())
}

/// Prints a persistent process's output (raw bytes, as text), following it if asked.
async fn process_logs(
    client: &mut Client,
    generation: u64,
    stderr: bool,
    follow: bool,
) -> Result<()> {
    let params = ProcessLogParams {
        generation,
        stream: if stderr {
            OutputStream::Stderr
        } else {
            OutputStream::Stdout
        },
        after: 0,
    };
    let mut out = std::io::stdout();
    let mut print = |page: capsid_protocol::methods::ProcessOutput| -> Result<()> {
        if page.missed > 0 {
            eprintln!(
                "capsid: note: {} bytes were dropped before these",
                page.missed
            );
        }
        out.write_all(page.text.as_bytes())?;
        out.flush()?;
        Ok(())
    };
    if !follow {
        return print(
            client
                .call::<capsid_protocol::methods::ProcessLogs>(&params)
                .await?,
        );
    }
    let mut pages = client.follow::<ProcessLogsFollow>(&params).await?;
    while let Some(page) = pages.next().await? {
        print(page)?;
    }
    Ok(())
}

async fn audit(client: &mut Client, a: AuditCommand, as_json: bool) -> Result<()> {
    match a {
        AuditCommand::Verify { lattice } => {
            let r = if lattice {
                client.ask::<AuditVerifyLattice>().await?
            } else {
                client.ask::<AuditVerify>().await?
            };
            if as_json {
                output::json(&r);
            } else if r.valid {
                println!(
                    "audit log verified: {} entries in {} chains",
                    r.entries, r.chains
                );
                if let Some(a) = r.anchored {
                    println!(
                        "lattice: the log holds all {} heads of the {} anchors this host published",
                        a.heads, a.anchors
                    );
                }
            } else {
                for p in &r.problems {
                    println!("{p}");
                }
            }
            if !r.valid {
                bail!("the audit log failed verification");
            }
        }
        AuditCommand::Tail { n } => {
            let rows = client.call::<AuditTail>(&TailParams { n }).await?;
            if as_json {
                output::json(&rows);
            } else {
                let rows: Vec<_> = rows
                    .iter()
                    .map(|e| {
                        vec![
                            e.seq.to_string(),
                            if e.capsule.is_empty() {
                                "-".into()
                            } else {
                                e.capsule.clone()
                            },
                            e.action.clone(),
                            e.resource.clone(),
                            e.decision.clone(),
                        ]
                    })
                    .collect();
                output::table(&["seq", "capsule", "action", "resource", "decision"], &rows);
            }
        }
        AuditCommand::Export { path } => {
            let path = std::path::absolute(&path).context("the export path")?;
            let r = client
                .call::<AuditExport>(&ExportParams { path: path.clone() })
                .await?;
            println!("exported {} entries to {}", r.entries, path.display());
        }
    }
    Ok(())
}

async fn cap(client: &mut Client, c: CapCommand, as_json: bool) -> Result<()> {
    match c {
        CapCommand::Grant {
            pattern,
            permissions,
            capsule,
            user,
        } => {
            let capsule = capsule.as_deref().map(capsule_id).transpose()?;
            let r = client
                .call::<CapGrant>(&GrantParams {
                    pattern,
                    permissions,
                    capsule,
                    user,
                })
                .await?;
            println!("granted {}", r.id);
        }
        CapCommand::Revoke { id } => {
            client
                .call::<CapRevoke>(&RevokeParams { id: id.clone() })
                .await?;
            println!("revoked {id}");
        }
        CapCommand::Ls { user } => {
            let list = client.call::<CapList>(&GrantListParams { user }).await?;
            if as_json {
                output::json(&list);
            } else {
                let rows: Vec<_> = list
                    .iter()
                    .map(|g| {
                        vec![
                            g.id.clone(),
                            opt(g.capsule.as_ref()),
                            g.pattern.clone(),
                            g.permissions.clone(),
                            g.revoked.to_string(),
                        ]
                    })
                    .collect();
                output::table(
                    &["id", "capsule", "pattern", "permissions", "revoked"],
                    &rows,
                );
            }
        }
    }
    Ok(())
}
