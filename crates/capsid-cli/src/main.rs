//! `capsid`: runs the daemon (`capsid daemon`, `capsid start`) and drives it over its Unix
//! socket. Every read command takes `--json`; errors are one line on stderr and exit 1.

mod client;
mod output;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use capsid_core::CapsidHome;
use capsid_kernel::daemon::{DaemonOptions, RunFiles};
use capsid_kernel::{Kernel, KernelConfig};
use clap::{Parser, Subcommand};
use serde_json::{Value, json};

use crate::client::Client;

/// How long `capsid start` waits for the daemon to be ready (first boots compile capsules).
const START_TIMEOUT: Duration = Duration::from_mins(5);
/// How long `capsid stop` waits for the daemon to be gone.
const STOP_TIMEOUT: Duration = Duration::from_mins(1);

#[derive(Parser)]
#[command(
    name = "capsid",
    version,
    about = "A capability-secure runtime for WebAssembly capsules"
)]
struct Cli {
    /// The capsid home (default: `$CAPSID_HOME`, else `~/.capsid`).
    #[arg(long, global = true)]
    home: Option<PathBuf>,
    /// Print results as JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon in the foreground.
    Daemon {
        /// Development mode: capsules get what they request; edits reload them.
        #[arg(long)]
        dev: bool,
        /// Leave the terminal's session first (what `capsid start` asks for).
        #[arg(long, hide = true)]
        detach: bool,
    },
    /// Start the daemon in the background and wait until it is ready.
    Start {
        /// Development mode: capsules get what they request; edits reload them.
        #[arg(long)]
        dev: bool,
    },
    /// Stop the daemon (it finishes requests in flight and unloads every capsule).
    Stop,
    /// The daemon's state.
    Status,
    /// Capsules.
    #[command(subcommand)]
    Capsule(CapsuleCommand),
    /// Call a capsule's tool.
    Call {
        /// The capsule.
        capsule: String,
        /// The tool.
        tool: String,
        /// JSON input, or @file to read it from a file.
        #[arg(long, default_value = "{}")]
        input: String,
    },
    /// Publish an event (the payload is JSON if it parses, else text).
    Publish {
        /// The topic.
        topic: String,
        /// The payload.
        payload: String,
    },
    /// Persistent processes and native capsules' programs.
    Ps,
    /// A capsule's log, or (with --process) a persistent process's output.
    Logs {
        /// The capsule.
        #[arg(required_unless_present = "process")]
        capsule: Option<String>,
        /// A persistent process, by the generation `capsid ps` shows.
        #[arg(long, conflicts_with = "capsule")]
        process: Option<u64>,
        /// With --process: its stderr instead of its stdout.
        #[arg(long, requires = "process")]
        stderr: bool,
        /// Keep printing new lines.
        #[arg(short, long)]
        follow: bool,
    },
    /// The audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Capabilities of the local user.
    #[command(subcommand)]
    Cap(CapCommand),
    /// Users and their platform links.
    Who,
}

#[derive(Subcommand)]
enum CapsuleCommand {
    /// List capsules.
    Ls,
    /// Show one capsule.
    Show {
        /// The capsule.
        name: String,
    },
    /// Load an installed capsule.
    Load {
        /// The capsule.
        name: String,
    },
    /// Unload a capsule.
    Unload {
        /// The capsule.
        name: String,
    },
    /// Reload a capsule from its files.
    Reload {
        /// The capsule.
        name: String,
    },
    /// Install the capsule in a directory and load it.
    Install {
        /// The capsule's directory (with its Capsule.toml).
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Verify every chain and signature.
    Verify,
    /// The most recent entries.
    Tail {
        /// How many.
        #[arg(short, default_value_t = 20)]
        n: u64,
    },
    /// Export the log as JSON lines to a new file.
    Export {
        /// The file to create.
        path: PathBuf,
    },
}

#[derive(Subcommand)]
enum CapCommand {
    /// Grant a capability.
    Grant {
        /// The resource pattern, e.g. `fs://workspace/notes/**`.
        pattern: String,
        /// Comma-separated permissions: read, write, exec, publish, subscribe.
        permissions: String,
        /// Only for this capsule.
        #[arg(long)]
        capsule: Option<String>,
    },
    /// Revoke a capability by id.
    Revoke {
        /// The capability id.
        id: String,
    },
    /// List capabilities.
    Ls,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("capsid: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("capsid: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line.
fn one_line(e: &anyhow::Error) -> String {
    e.chain()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ")
}

fn home(cli: &Cli) -> Result<CapsidHome> {
    Ok(match &cli.home {
        Some(h) => CapsidHome::at(std::path::absolute(h).context("the home path")?),
        None => CapsidHome::resolve()?,
    })
}

async fn run(cli: Cli) -> Result<()> {
    let home = home(&cli)?;
    match &cli.command {
        Command::Daemon { dev, detach } => {
            if *detach {
                // A session of its own: no terminal's hangup or job control reaches it.
                nix::unistd::setsid().context("leaving the terminal's session")?;
            }
            daemon(&home, *dev).await
        }
        Command::Start { dev } => start(&home, *dev).await,
        Command::Stop => stop(&home).await,
        command => {
            let mut client = Client::connect(&home).await?;
            if !client.welcome.fingerprint_matches {
                eprintln!(
                    "capsid: note: the daemon booted with a different config than {} now holds; restart it to apply",
                    home.config_path().display()
                );
            }
            request(&mut client, command, cli.json).await
        }
    }
}

async fn daemon(home: &CapsidHome, dev: bool) -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CAPSID_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let files = RunFiles::acquire(home)?;
    let mut config = KernelConfig::load(&home.config_path())?;
    // Clients compare the fingerprint of the file they read, not of the command line.
    let options = DaemonOptions {
        config_fingerprint: Some(config.fingerprint()),
        ..DaemonOptions::default()
    };
    config.dev |= dev;
    let kernel = Kernel::builder()
        .home(home.root())
        .config(config)
        .build()
        .await?;
    capsid_kernel::daemon::serve(kernel, files, options).await?;
    Ok(())
}

async fn start(home: &CapsidHome, dev: bool) -> Result<()> {
    if Client::connect(home).await.is_ok() {
        bail!("a capsid daemon already serves {}", home.root().display());
    }
    home.ensure_layout()?;
    let log_path = home.run_dir().join("daemon.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let exe = std::env::current_exe().context("locating the capsid binary")?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("--home")
        .arg(home.root())
        .args(["daemon", "--detach"]);
    if dev {
        cmd.arg("--dev");
    }
    let mut child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting the daemon")?;
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_message("starting capsid (the first start compiles the capsules)");
    bar.enable_steady_tick(Duration::from_millis(100));
    let begun = Instant::now();
    let ready = loop {
        if let Some(status) = child.try_wait()? {
            bar.finish_and_clear();
            bail!(
                "the daemon exited ({status}) before it was ready; see {}",
                log_path.display()
            );
        }
        if home.ready_path().is_file()
            && let Ok(client) = Client::connect(home).await
        {
            break client;
        }
        if begun.elapsed() > START_TIMEOUT {
            bar.finish_and_clear();
            bail!(
                "the daemon was not ready after {START_TIMEOUT:?}; see {}",
                log_path.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    bar.finish_and_clear();
    println!(
        "capsid daemon ready (pid {}, {}); log: {}",
        ready.welcome.pid,
        home.root().display(),
        log_path.display()
    );
    Ok(())
}

async fn stop(home: &CapsidHome) -> Result<()> {
    let mut client = Client::connect(home).await?;
    let pid = client.welcome.pid;
    client.call("daemon.stop", json!({})).await?;
    let begun = Instant::now();
    while home.pid_path().exists() || home.socket_path().exists() {
        if begun.elapsed() > STOP_TIMEOUT {
            bail!("the daemon (pid {pid}) is still stopping after {STOP_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("capsid daemon stopped (pid {pid})");
    Ok(())
}

/// Shows a spinner while a request that may compile a capsule runs.
async fn with_spinner(
    client: &mut Client,
    method: &str,
    params: Value,
    what: &str,
) -> Result<Value> {
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_message(what.to_owned());
    bar.enable_steady_tick(Duration::from_millis(100));
    let result = client.call(method, params).await;
    bar.finish_and_clear();
    result
}

/// `capsid status`: the daemon's state, and loudly any audit problem found at boot.
async fn status(client: &mut Client, as_json: bool) -> Result<()> {
    let s = client.call("status", json!({})).await?;
    if as_json {
        output::json(&s);
        return Ok(());
    }
    println!("capsid {} (pid {})", output::cell(&s["version"]), s["pid"]);
    println!("home       {}", output::cell(&s["home"]));
    println!("workspace  {}", output::cell(&s["workspace"]));
    println!("dev        {}", s["dev"]);
    println!(
        "capsules   {} ({} ready, {} failed)",
        s["capsules"], s["ready"], s["failed"]
    );
    println!(
        "uptime     {} ms (boot took {} ms)",
        s["uptime_ms"], s["boot"]["boot_ms"]
    );
    let problems = s["boot"]["audit_problems"].as_array();
    if s["boot"]["audit_read_only"] == true {
        println!("audit      READ-ONLY: the log failed verification; nothing runs");
    } else if problems.is_some_and(|p| !p.is_empty()) {
        println!("audit      a tampered log was set aside at boot");
    }
    for problem in problems.into_iter().flatten() {
        println!("           {}", output::cell(problem));
    }
    for done in s["boot"]["unrecorded"].as_array().into_iter().flatten() {
        println!("unrecorded {}", output::cell(done));
    }
    Ok(())
}

async fn request(client: &mut Client, command: &Command, as_json: bool) -> Result<()> {
    let show = |v: &Value, human: &dyn Fn(&Value)| {
        if as_json {
            output::json(v);
        } else {
            human(v);
        }
    };
    match command {
        Command::Status => status(client, as_json).await?,
        Command::Capsule(c) => capsule(client, c, as_json).await?,
        Command::Call {
            capsule,
            tool,
            input,
        } => {
            let input = read_input(input)?;
            let out = client
                .call(
                    "tool.call",
                    json!({ "capsule": capsule, "tool": tool, "input": input }),
                )
                .await?;
            output::json(&out);
        }
        Command::Publish { topic, payload } => {
            let payload = serde_json::from_str::<Value>(payload)
                .unwrap_or_else(|_| Value::String(payload.clone()));
            let d = client
                .call(
                    "event.publish",
                    json!({ "topic": topic, "payload": payload }),
                )
                .await?;
            show(&d, &|d| {
                println!(
                    "delivered to {} subscribers ({} dropped)",
                    d["delivered"], d["dropped"]
                );
            });
        }
        Command::Ps => {
            let list = client.call("process.list", json!({})).await?;
            show(&list, &|l| {
                output::objects(
                    l,
                    &[
                        "kind", "capsule", "label", "pid", "running", "health", "restarts",
                    ],
                );
            });
        }
        Command::Logs {
            capsule,
            process,
            stderr,
            follow,
        } => match (capsule, process) {
            (_, Some(generation)) => process_logs(client, *generation, *stderr, *follow).await?,
            (Some(capsule), None) => logs(client, capsule, *follow, as_json).await?,
            (None, None) => bail!("name a capsule, or a process with --process"),
        },
        Command::Audit(a) => audit(client, a, as_json).await?,
        Command::Cap(c) => cap(client, c, as_json).await?,
        Command::Who => {
            let who = client.call("identity.list", json!({})).await?;
            show(&who, &|w| {
                output::objects(&w["users"], &["id", "name"]);
                println!();
                output::objects(&w["links"], &["platform", "platform_user_id", "user"]);
            });
        }
        Command::Daemon { .. } | Command::Start { .. } | Command::Stop => {}
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

async fn capsule(client: &mut Client, c: &CapsuleCommand, as_json: bool) -> Result<()> {
    let info = match c {
        CapsuleCommand::Ls => {
            let list = client.call("capsule.list", json!({})).await?;
            if as_json {
                output::json(&list);
            } else {
                output::objects(&list, &["name", "version", "state", "tools", "reason"]);
            }
            return Ok(());
        }
        CapsuleCommand::Show { name } => {
            client.call("capsule.show", json!({ "name": name })).await?
        }
        CapsuleCommand::Load { name } => {
            with_spinner(
                client,
                "capsule.load",
                json!({ "name": name }),
                &format!("loading {name}"),
            )
            .await?
        }
        CapsuleCommand::Unload { name } => {
            client
                .call("capsule.unload", json!({ "name": name }))
                .await?;
            println!("unloaded {name}");
            return Ok(());
        }
        CapsuleCommand::Reload { name } => {
            with_spinner(
                client,
                "capsule.reload",
                json!({ "name": name }),
                &format!("reloading {name}"),
            )
            .await?
        }
        CapsuleCommand::Install { dir } => {
            let dir = std::path::absolute(dir).context("the capsule directory")?;
            with_spinner(
                client,
                "capsule.install",
                json!({ "dir": dir }),
                "installing",
            )
            .await?
        }
    };
    if as_json {
        output::json(&info);
    } else {
        for key in [
            "name",
            "version",
            "state",
            "reason",
            "dir",
            "tools",
            "blake3",
            "load_kind",
            "description",
        ] {
            if !info[key].is_null() {
                println!("{key:<12}{}", output::cell(&info[key]));
            }
        }
    }
    Ok(())
}

async fn logs(client: &mut Client, capsule: &str, follow: bool, as_json: bool) -> Result<()> {
    let print = |lines: &Value| {
        for l in lines.as_array().into_iter().flatten() {
            if as_json {
                println!("{l}");
            } else {
                println!(
                    "{} {:<5} {:<6} {}",
                    l["time_ms"],
                    output::cell(&l["level"]),
                    output::cell(&l["source"]),
                    output::cell(&l["message"])
                );
            }
        }
    };
    if !follow {
        let page = client
            .call("capsule.logs", json!({ "capsule": capsule }))
            .await?;
        print(&page["lines"]);
        return Ok(());
    }
    let id = client
        .send(
            "capsule.logs",
            json!({ "capsule": capsule, "follow": true }),
        )
        .await?;
    loop {
        let frame = client.receive(id).await?;
        let more = frame.more;
        let page = client::into_result(frame)?;
        print(&page["lines"]);
        if !more {
            return Ok(());
        }
    }
}

/// Prints a persistent process's output (raw bytes, as text), following it if asked.
async fn process_logs(
    client: &mut Client,
    generation: u64,
    stderr: bool,
    follow: bool,
) -> Result<()> {
    use std::io::Write;
    let stream = if stderr { "stderr" } else { "stdout" };
    let params = json!({ "generation": generation, "stream": stream, "follow": follow });
    let id = client.send("process.logs", params).await?;
    let mut out = std::io::stdout();
    loop {
        let frame = client.receive(id).await?;
        let more = frame.more;
        let page = client::into_result(frame)?;
        if page["missed"].as_u64().is_some_and(|m| m > 0) {
            eprintln!(
                "capsid: note: {} bytes were dropped before these",
                page["missed"]
            );
        }
        out.write_all(page["text"].as_str().unwrap_or_default().as_bytes())?;
        out.flush()?;
        if !more {
            return Ok(());
        }
    }
}

async fn audit(client: &mut Client, a: &AuditCommand, as_json: bool) -> Result<()> {
    match a {
        AuditCommand::Verify => {
            let r = client.call("audit.verify", json!({})).await?;
            if as_json {
                output::json(&r);
            } else if r["valid"] == json!(true) {
                println!(
                    "audit log verified: {} entries in {} chains",
                    r["entries"], r["chains"]
                );
            } else {
                for p in r["problems"].as_array().into_iter().flatten() {
                    println!("{}", output::cell(p));
                }
            }
            if r["valid"] != json!(true) {
                bail!("the audit log failed verification");
            }
        }
        AuditCommand::Tail { n } => {
            let rows = client.call("audit.tail", json!({ "n": n })).await?;
            if as_json {
                output::json(&rows);
            } else {
                output::objects(&rows, &["seq", "capsule", "action", "resource", "decision"]);
            }
        }
        AuditCommand::Export { path } => {
            let path = std::path::absolute(path).context("the export path")?;
            let r = client.call("audit.export", json!({ "path": path })).await?;
            println!("exported {} entries to {}", r["entries"], path.display());
        }
    }
    Ok(())
}

async fn cap(client: &mut Client, c: &CapCommand, as_json: bool) -> Result<()> {
    match c {
        CapCommand::Grant {
            pattern,
            permissions,
            capsule,
        } => {
            let r = client
                .call(
                    "cap.grant",
                    json!({ "pattern": pattern, "permissions": permissions, "capsule": capsule }),
                )
                .await?;
            println!("granted {}", output::cell(&r["id"]));
        }
        CapCommand::Revoke { id } => {
            client.call("cap.revoke", json!({ "id": id })).await?;
            println!("revoked {id}");
        }
        CapCommand::Ls => {
            let list = client.call("cap.list", json!({})).await?;
            if as_json {
                output::json(&list);
            } else {
                output::objects(
                    &list,
                    &["id", "capsule", "pattern", "permissions", "revoked"],
                );
            }
        }
    }
    Ok(())
}
