//! `capsid`: runs the daemon (`capsid daemon`, `capsid start`) and drives it over its Unix
//! socket. Every read command takes `--json`; errors are one line on stderr and exit 1.

mod approve;
mod commands;
mod daemon;
mod mcp;
mod output;
mod review;
mod stats;
mod trust;
mod workspace;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use capsid_core::CapsidHome;
use capsid_kernel::KernelConfig;
use capsid_protocol::Client;
use clap::{Parser, Subcommand};

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
pub(crate) enum Command {
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
    /// Compile the component on stdin for this runtime and write the result on stdout: the
    /// daemon's compile helper, run once per compile.
    #[command(hide = true)]
    CompileComponent,
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
        /// Call as this user (who must hold `tool://<capsule>/<tool>`), not as the operator.
        #[arg(long = "as", value_name = "USER")]
        as_user: Option<String>,
    },
    /// The tools of ready capsules (those a user may call, with --as).
    Tools {
        /// List what this user may call.
        #[arg(long = "as", value_name = "USER")]
        as_user: Option<String>,
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
    /// A capsule's CPU, memory and tasks over the last minute (its program's, with its quota
    /// report, and each persistent process's), with sparklines.
    Stats {
        /// The capsule.
        capsule: String,
    },
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
    /// Model Context Protocol: capsule tools for agents.
    #[command(subcommand)]
    Mcp(McpCommand),
    /// Calls waiting for a person's approval: `ls`, `show <id>`, `watch`, or decide one with
    /// `<id> --once | --session | --always | --deny`.
    Approve(ApproveArgs),
    /// What capsules wrote to the workspace: `status`, `diff`, `commit`, `discard`.
    #[command(subcommand)]
    Ws(WsCommand),
    /// Publisher keys, for signing capsules.
    #[command(subcommand)]
    Key(KeyCommand),
    /// The keys this home trusts to sign capsules (the runtime key always is).
    #[command(subcommand)]
    Trust(TrustCommand),
}

#[derive(Subcommand)]
pub(crate) enum KeyCommand {
    /// Create a publisher key file (mode 0600; never over an existing file) and print its
    /// public key, which hosts trust with `capsid trust add`.
    Generate {
        /// The key file to create.
        file: PathBuf,
    },
}

#[derive(Subcommand)]
pub(crate) enum TrustCommand {
    /// The trusted keys, the runtime key first.
    Ls,
    /// Trust a key to sign capsules (recorded). It grants nothing.
    Add {
        /// A name for it (a-z, 0-9, -).
        name: String,
        /// Its public key (64 hex characters, as `capsid key generate` printed).
        public_key: String,
        /// Trust it only for capsules whose names match (`acme-*`); repeatable.
        #[arg(long = "capsules", value_name = "PATTERN")]
        capsules: Vec<String>,
    },
    /// Stop trusting a key (recorded): what it signed is refused at its next load (loaded
    /// capsules run on until then).
    Rm {
        /// Its name.
        name: String,
    },
}

#[derive(Subcommand)]
pub(crate) enum WsCommand {
    /// The paths capsules changed, not yet in the workspace, with conflicts and who
    /// changed each.
    Status {
        /// Only the changes at or below these workspace paths.
        paths: Vec<String>,
    },
    /// How each changed file differs from the workspace's copy: a unified diff of text,
    /// sizes for anything else.
    Diff {
        /// Sizes and line counts only.
        #[arg(long)]
        stat: bool,
        /// Only the changes at or below these workspace paths.
        paths: Vec<String>,
    },
    /// Writes capsules' changes into the workspace (recorded first, path by path).
    Commit {
        /// Also where the workspace changed too since a capsule first changed it.
        #[arg(long, alias = "force")]
        overwrite: bool,
        /// Only the changes at or below these workspace paths (and the folders above them
        /// they need); the rest keeps waiting.
        paths: Vec<String>,
    },
    /// Drops capsules' changes (recorded first, path by path).
    Discard {
        /// Only the changes at or below these workspace paths.
        paths: Vec<String>,
    },
}

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
#[allow(clippy::struct_excessive_bools)] // Each is a switch on the command line.
pub(crate) struct ApproveArgs {
    #[command(subcommand)]
    pub(crate) command: Option<ApproveCommand>,
    /// The request to decide (from `capsid approve ls`).
    pub(crate) id: Option<String>,
    /// Allow this one call.
    #[arg(long)]
    pub(crate) once: bool,
    /// Allow it, and grant the resource to the capsule until the caller's session ends
    /// (its last connection to the daemon closes, or the daemon stops).
    #[arg(long)]
    pub(crate) session: bool,
    /// Allow it and grant the resource to the capsule from now on (`capsid cap revoke`
    /// takes it back).
    #[arg(long)]
    pub(crate) always: bool,
    /// Refuse it (with `--always`: and the capsule's later requests for the same thing,
    /// until `capsid approve forget <id>`).
    #[arg(long)]
    pub(crate) deny: bool,
}

#[derive(Subcommand)]
pub(crate) enum ApproveCommand {
    /// The calls waiting, oldest first.
    Ls,
    /// Prompts for each call as it comes to wait: once, session, always, deny, deny
    /// always, or skip (until stdin ends).
    Watch,
    /// The standing refusals (`--deny --always` decisions).
    Refusals,
    /// Removes a standing refusal: the capsule may ask again.
    Forget {
        /// The refusal's id (from `capsid approve refusals`).
        id: String,
    },
    /// One waiting call.
    Show {
        /// Its id.
        id: String,
    },
}

#[derive(Subcommand)]
pub(crate) enum McpCommand {
    /// Serve every capsule tool the user may call to one MCP client on stdin/stdout (what an
    /// agent's config starts: `{"command": "capsid", "args": ["mcp", "serve"]}`), or with
    /// `--http` to MCP clients over HTTP. Starts the daemon if none runs.
    Serve {
        /// The user a stdio session acts as: it calls only the tools granted to it
        /// (`capsid cap grant 'tool://<capsule>/*' exec --user <user>`). Over HTTP each
        /// request acts as its bearer token's user instead.
        #[arg(
            long = "as",
            value_name = "USER",
            default_value = "mcp",
            conflicts_with = "http"
        )]
        as_user: String,
        /// Refuse, rather than start a daemon, when none runs.
        #[arg(long)]
        no_start: bool,
        /// Serve Streamable HTTP at this address (e.g. `127.0.0.1:8765`) instead of stdio;
        /// every request needs `Authorization: Bearer <token>` (`capsid mcp token create`).
        #[arg(long, value_name = "ADDR")]
        http: Option<std::net::SocketAddr>,
        /// Allow an `--http` address that is not loopback.
        #[arg(long, requires = "http")]
        public: bool,
        /// Also accept this `Host` header (`name` or `name:port`; loopback names always are).
        #[arg(long = "allow-host", value_name = "HOST", requires = "http")]
        allow_hosts: Vec<String>,
        /// Accept browser requests from this `Origin` (`scheme://host:port`); any other
        /// `Origin` is refused.
        #[arg(long = "allow-origin", value_name = "ORIGIN", requires = "http")]
        allow_origins: Vec<String>,
    },
    /// Bearer tokens for `capsid mcp serve --http`.
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Subcommand)]
pub(crate) enum TokenCommand {
    /// Mint a token acting as a user; it is printed once (only its hash is kept).
    Create {
        /// The user its requests act as.
        #[arg(long = "as", value_name = "USER")]
        as_user: String,
        /// What to call it in `token ls`.
        #[arg(long)]
        label: Option<String>,
    },
    /// The live tokens (never their secrets).
    Ls,
    /// Revoke a token: requests presenting it are refused from now on.
    Revoke {
        /// Its id (from `token ls`).
        id: String,
    },
}

#[derive(Subcommand)]
pub(crate) enum CapsuleCommand {
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
    /// Install the capsule in a directory and load it: shows who signed it and what it
    /// asks for, and keeps a receipt of both.
    Install {
        /// The capsule's directory (with its Capsule.toml).
        dir: PathBuf,
        /// Accept another signer, or wider requests, than the copy installed before had.
        #[arg(long)]
        accept: bool,
    },
    /// Sign the capsule in a directory: with the runtime key (for a capsule you reviewed;
    /// recorded), or with a publisher's key file.
    Sign {
        /// The capsule's directory.
        dir: PathBuf,
        /// A publisher key file (`capsid key generate`); signs here, without the daemon.
        #[arg(long, value_name = "FILE")]
        key: Option<PathBuf>,
    },
    /// Check the capsule in a directory as a load on this host would.
    Verify {
        /// The capsule's directory.
        dir: PathBuf,
    },
    /// Show the tools of an [mcp] capsule that wait for review (new, or changed since they
    /// were pinned), with what changed; `--accept` pins exactly what is shown.
    Review {
        /// The MCP capsule.
        name: String,
        /// Accept every definition shown: pinned, and callable from then on.
        #[arg(long)]
        accept: bool,
    },
}

#[derive(Subcommand)]
pub(crate) enum AuditCommand {
    /// Verify every chain and signature.
    Verify {
        /// Also check the log against every chain head this host anchored in its lattice
        /// (catches a log truncated or rewritten after it published).
        #[arg(long)]
        lattice: bool,
    },
    /// The most recent entries.
    Tail {
        /// How many.
        #[arg(short, default_value_t = 20)]
        n: u32,
    },
    /// Export the log as JSON lines to a new file.
    Export {
        /// The file to create.
        path: PathBuf,
    },
}

#[derive(Subcommand)]
pub(crate) enum CapCommand {
    /// Grant a capability.
    Grant {
        /// The resource pattern, e.g. `fs://workspace/notes/**`.
        pattern: String,
        /// Comma-separated permissions: read, write, exec, publish, subscribe.
        permissions: String,
        /// Only for this capsule.
        #[arg(long)]
        capsule: Option<String>,
        /// To this user (default: the local user), e.g. `mcp`.
        #[arg(long)]
        user: Option<String>,
    },
    /// Revoke a capability by id.
    Revoke {
        /// The capability id.
        id: String,
    },
    /// List capabilities.
    Ls {
        /// Whose (default: the local user's).
        #[arg(long)]
        user: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CompileComponent => return capsid_kernel::serve_compile_helper(),
        Command::Daemon { .. } => daemon::return_large_buffers(),
        _ => {}
    }
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

/// The fingerprint of the config this client reads (empty when it cannot read one).
fn local_fingerprint(home: &CapsidHome) -> String {
    KernelConfig::load(&home.config_path())
        .map(|c| c.fingerprint())
        .unwrap_or_default()
}

/// Connects to the daemon of `home`.
async fn connect(home: &CapsidHome) -> Result<Client> {
    Ok(Client::connect(home, local_fingerprint(home)).await?)
}

async fn run(cli: Cli) -> Result<()> {
    let home = home(&cli)?;
    match cli.command {
        Command::Daemon { dev, detach } => {
            if detach {
                // A session of its own: no terminal's hangup or job control reaches it.
                nix::unistd::setsid().context("leaving the terminal's session")?;
            }
            daemon::run(&home, dev).await
        }
        Command::Start { dev } => daemon::start(&home, dev).await,
        Command::Stop => daemon::stop(&home).await,
        Command::Key(KeyCommand::Generate { file }) => trust::generate(&file, cli.json),
        Command::Capsule(CapsuleCommand::Sign {
            dir,
            key: Some(key),
        }) => trust::sign_with(&dir, &key, cli.json),
        Command::Mcp(McpCommand::Serve {
            as_user,
            no_start,
            http,
            public,
            allow_hosts,
            allow_origins,
        }) => {
            let client = match connect(&home).await {
                Ok(client) => client,
                Err(_) if !no_start => daemon::launch(&home, false).await?,
                Err(e) => return Err(e),
            };
            let daemon =
                capsid_mcp::Daemon::new(home.clone(), local_fingerprint(&home), Some(client));
            match http {
                None => {
                    let bridge = capsid_mcp::Bridge::new(daemon, capsid_mcp::Acting::As(as_user))
                        .map_err(capsid_mcp::ServeError::Random)?;
                    Ok(capsid_mcp::serve_stdio(bridge).await?)
                }
                Some(addr) => {
                    let options = capsid_mcp::HttpOptions {
                        addr,
                        public,
                        allowed_hosts: allow_hosts,
                        allowed_origins: allow_origins,
                    };
                    mcp::serve_http(daemon, options).await
                }
            }
        }
        command => {
            let mut client = connect(&home).await?;
            if !client.welcome().fingerprint_matches {
                eprintln!(
                    "capsid: note: the daemon booted with a different config than {} now holds; restart it to apply",
                    home.config_path().display()
                );
            }
            commands::run(&mut client, command, cli.json).await
        }
    }
}
