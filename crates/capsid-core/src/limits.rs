//! Every limit capsid enforces, named once. Other crates refer to these constants rather than
//! repeating numbers, so a reader can see the whole envelope on one page.

/// Longest capsule name accepted (`[a-z0-9-]`, DESIGN 3.2).
pub const MAX_CAPSULE_NAME_LEN: usize = 64;

/// Longest principal, action or resource string stored in one audit entry, in bytes.
pub const MAX_AUDIT_FIELD_BYTES: usize = 4 * 1024;

/// Largest `details` JSON document stored in one audit entry, in bytes.
pub const MAX_AUDIT_DETAILS_BYTES: usize = 64 * 1024;

/// Most entries the audit writer folds into one group-commit transaction.
pub const MAX_AUDIT_BATCH: usize = 4096;

/// How long the audit writer holds a batch of queued appends only (nobody waiting on them,
/// `AuditLog::append_queued`) for an append someone waits on, so both share one commit.
pub const QUEUED_APPEND_WINDOW: std::time::Duration = std::time::Duration::from_millis(2);

/// Changed paths a `workspace.*` answer lists (each about 200 bytes on the wire, well
/// within a frame); the answer says how many there are in all.
pub const MAX_WORKSPACE_LISTED: usize = 10_000;

/// Entries between two audit checkpoints: an open verifies at most about this many entries
/// (what followed the last checkpoint), however long the log.
pub const AUDIT_CHECKPOINT_INTERVAL: u64 = 16 * 1024;

/// Entries since the last checkpoint above which a clean stop writes one too (fewer are
/// verified at the next open in no time).
pub const AUDIT_CHECKPOINT_AT_STOP: u64 = 1024;

/// Paths named in the audit entry of a workspace commit finished at boot (the entry counts
/// them all).
pub const MAX_RECOVERED_PATHS_RECORDED: usize = 64;

/// Signed batches that may wait for the audit committer; it folds all waiting ones into one
/// transaction.
pub const MAX_AUDIT_PIPELINE: usize = 64;

/// Appends that may wait for the audit writer before `append` itself waits (backpressure).
pub const AUDIT_QUEUE_DEPTH: usize = 16 * 1024;

/// How long an audit database connection waits for a lock held by another connection.
pub const AUDIT_BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Length in bytes of an ed25519 secret key file (`keys/runtime.key`).
pub const RUNTIME_KEY_LEN: usize = 32;

/// Bytes of randomness in a persistent process id (DESIGN 3.5 asks for at least 128 bits).
pub const PROCESS_ID_BYTES: usize = 16;

/// Longest key a raw `KvStore` accepts, in bytes (a scoped key plus its namespace prefix).
pub const MAX_KV_KEY_BYTES: usize = 8 * 1024;

/// Longest key a capsule may use through a scoped store, in bytes.
pub const MAX_SCOPED_KEY_BYTES: usize = 4 * 1024;

/// Longest namespace name, in bytes.
pub const MAX_KV_NAMESPACE_BYTES: usize = 255;

/// Largest value a `KvStore` accepts, in bytes.
pub const MAX_KV_VALUE_BYTES: usize = 4 * 1024 * 1024;

/// Most keys one `list` call returns.
pub const MAX_KV_LIST_LIMIT: usize = 1000;

/// Most operations in one atomic batch.
pub const MAX_KV_BATCH_OPS: usize = 1000;

/// Times a key-value write is retried after an optimistic-concurrency conflict before it fails.
pub const MAX_KV_CONFLICT_RETRIES: usize = 64;

/// The KV store's in-memory write buffer (SurrealKV's memtable), flushed to disk when full.
/// SurrealKV's default is 100 MB, and a daemon's memory grew with its kv writes until that
/// filled (the mixed soak's slow climb; the store alone, after 97 MiB of writes: 131 MB
/// resident with the default, 73 MB with this). Four times the largest value, so any fits.
pub const KV_MEMTABLE_BYTES: usize = 4 * MAX_KV_VALUE_BYTES;

/// Longest resource or pattern URI, in bytes.
pub const MAX_RESOURCE_BYTES: usize = 4 * 1024;

/// Most path segments in a resource or pattern.
pub const MAX_RESOURCE_SEGMENTS: usize = 64;

/// Longest single path segment, in bytes.
pub const MAX_SEGMENT_BYTES: usize = 255;

/// Clock skew tolerated when checking a capability's expiry, in milliseconds: a token is
/// honoured until `expires_at + CAPABILITY_CLOCK_SKEW_MS`.
pub const CAPABILITY_CLOCK_SKEW_MS: i64 = 5_000;

/// Most memory a capsule instance may be given, in MiB (`limits.memory_mb`).
pub const MAX_CAPSULE_MEMORY_MB: u64 = 4096;

/// Memory a capsule instance gets when its manifest names none, in MiB.
pub const DEFAULT_CAPSULE_MEMORY_MB: u64 = 64;

/// Longest per-call deadline a manifest may ask for, in milliseconds.
pub const MAX_CALL_TIMEOUT_MS: u64 = 10 * 60 * 1000;

/// Per-call deadline when the manifest names none, in milliseconds.
pub const DEFAULT_CALL_TIMEOUT_MS: u64 = 5_000;

/// Most concurrent instances of one capsule a manifest may ask for.
pub const MAX_CAPSULE_INSTANCES: u32 = 64;

/// Largest `Capsule.toml` read, in bytes.
pub const MAX_MANIFEST_BYTES: u64 = 256 * 1024;

/// Longest event topic or subscription pattern, in bytes.
pub const MAX_TOPIC_BYTES: usize = 255;

/// Largest event payload, in bytes.
pub const MAX_EVENT_PAYLOAD_BYTES: usize = 1024 * 1024;

/// Most events one subscriber may have waiting; more are dropped and counted.
pub const MAX_SUBSCRIBER_QUEUE: usize = 4096;

/// Largest component file (`.wasm`) a capsule may ship, in bytes.
pub const MAX_COMPONENT_BYTES: u64 = 64 * 1024 * 1024;

/// Longest a compile helper process may take over one component before it is killed (an
/// 18 MB Python component compiles in well under a minute on two cores).
pub const MAX_COMPILE_TIME: std::time::Duration = std::time::Duration::from_mins(10);

/// Components compiled at once; more loads wait their turn. Each compile already uses every
/// core (wasmtime compiles functions in parallel) and holds memory in proportion to its
/// component; a second lets a small component through while a large one compiles.
pub const MAX_CONCURRENT_COMPILES: usize = 2;

/// Largest compiled artifact read back from a compile helper, in bytes (native code is a few
/// times the size of the `.wasm` it comes from).
pub const MAX_COMPILED_ARTIFACT_BYTES: u64 = 8 * MAX_COMPONENT_BYTES;

/// How often the engine's epoch advances; call deadlines are counted in these ticks.
pub const EPOCH_TICK: std::time::Duration = std::time::Duration::from_millis(5);

/// Time a call may overrun its deadline inside a host call before it is abandoned (wasm code
/// is interrupted by the epoch; a host call awaiting I/O is cut by this wall-clock margin).
pub const HOST_CALL_GRACE: std::time::Duration = std::time::Duration::from_millis(500);

/// Component instances alive at once across every capsule of one engine (the pooling
/// allocator reserves their slots up front).
pub const MAX_LIVE_INSTANCES: u32 = 256;

/// Largest `input-json` handed to `call-tool`, in bytes.
pub const MAX_TOOL_INPUT_BYTES: usize = 1024 * 1024;

/// Largest result a tool may return, in bytes (a WebAssembly capsule's, or an MCP capsule's
/// answer as the kernel passes it on); a larger one is an error.
pub const MAX_TOOL_OUTPUT_BYTES: usize = 4 * 1024 * 1024;

/// How many capsules one chain of tool calls through `capsid:host/tools` may hold, the
/// capsule a client called counting as 1: a call that would make it longer is refused
/// (`too-deep`), so a chain of capsules calling each other ends even where none repeats.
pub const MAX_TOOL_CALL_DEPTH: usize = 8;

/// The time a capsule keeps for itself when it calls another capsule's tool: the callee
/// must end this long before the caller's deadline, so the caller can still act on a
/// `timeout` (rather than be cut, and failed, the moment its callee is).
pub const TOOL_CALL_RESERVE: std::time::Duration = std::time::Duration::from_millis(100);

/// Bytes of a progress message a capsule reports (`progress.report`); longer ones are cut.
pub const MAX_PROGRESS_MESSAGE_BYTES: usize = 1024;

/// The shortest time between two progress reports passed on to a tool's caller: reports in
/// between are coalesced, the latest winning.
pub const PROGRESS_REPORT_INTERVAL: std::time::Duration = std::time::Duration::from_millis(50);

/// Longest line a capsule may log, in bytes; longer lines are cut.
pub const MAX_LOG_LINE_BYTES: usize = 16 * 1024;

/// Lines kept in each capsule's in-memory log ring; older ones are dropped and counted.
pub const CAPSULE_LOG_LINES: usize = 1024;

/// Most bytes one `sys.random-bytes` call returns.
pub const MAX_RANDOM_BYTES: u32 = 4096;

/// Largest file `fs.read` returns and largest `fs.write`/`fs.append` payload, in bytes.
pub const MAX_FS_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// Most entries one `fs.read-dir` returns.
pub const MAX_FS_DIR_ENTRIES: usize = 10_000;

/// Longest path a capsule may pass to `fs`, in bytes.
pub const MAX_FS_PATH_BYTES: usize = 4 * 1024;

/// KV quota of a capsule whose manifest asks for none, in bytes.
pub const DEFAULT_KV_QUOTA_BYTES: u64 = 16 * 1024 * 1024;

/// Largest KV quota a manifest may ask for, in bytes.
pub const MAX_KV_QUOTA_BYTES: u64 = 1024 * 1024 * 1024;

/// Events waiting for one capsule's `handle-event`; more are dropped and counted.
pub const CAPSULE_EVENT_QUEUE: usize = 256;

/// Most arguments a spawned program may be given (the program name excluded).
pub const MAX_PROCESS_ARGS: usize = 256;

/// Most bytes of arguments, all together.
pub const MAX_PROCESS_ARGV_BYTES: usize = 128 * 1024;

/// Most environment variables a spawn may set.
pub const MAX_PROCESS_ENV_VARS: usize = 64;

/// Most bytes of environment (names and values), all together.
pub const MAX_PROCESS_ENV_BYTES: usize = 64 * 1024;

/// Most bytes one write to a child's stdin may carry.
pub const MAX_STDIN_WRITE_BYTES: usize = 1024 * 1024;

/// Most elements a capsule instance's table may grow to (tables hold function references;
/// a component needs a handful, and a hostile one must not claim the pool's whole slot).
pub const MAX_INSTANCE_TABLE_ELEMENTS: usize = 100_000;

/// Longest platform name or platform user id of an identity link, in bytes (the KV key
/// length-prefixes each with one byte).
pub const MAX_LINK_PART_BYTES: usize = 255;

/// Most bytes one `read-logs` of a process's output answers (WIT: "at most 1 MiB"); a larger
/// `max` is cut to it.
pub const MAX_LOG_READ_BYTES: usize = 1024 * 1024;

/// Smallest output ring a spawn may ask for, per stream, in bytes.
pub const MIN_OUTPUT_RING_BYTES: usize = 4 * 1024;

/// Output ring per stream when a spawn names none, in bytes.
pub const DEFAULT_OUTPUT_RING_BYTES: usize = 1024 * 1024;

/// Largest output ring per stream, in bytes.
pub const MAX_OUTPUT_RING_BYTES: usize = 64 * 1024 * 1024;

/// Most bytes the host reads from a child's pipe at once (never more than the ring holds).
pub const PROCESS_READ_CHUNK: usize = 256 * 1024;

/// Size asked for each of a child's output pipes (never more than its ring): a larger pipe
/// means fewer, larger reads and fewer wake-ups per byte.
pub const PROCESS_PIPE_BYTES: usize = 1024 * 1024;

/// Where bare program names are looked up, in order. Never the capsule's or host's `PATH`.
pub const PROCESS_SEARCH_PATH: &[&str] = &["/usr/local/bin", "/usr/bin", "/bin"];

/// `PATH` every child gets. A spawn cannot change it: a granted program that runs others by
/// name (`git <cmd>`, `env`, `xargs`) must not find them in a directory the capsule writes.
pub const PROCESS_DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// `HOME` every child gets: no directory, so no per-user configuration (which can name
/// commands to run) is read from anywhere a capsule could write.
pub const PROCESS_HOME: &str = "/nonexistent";

/// The only environment variables a spawn may set; the host's own environment is never
/// passed on.
pub const PROCESS_ENV_ALLOW: &[&str] = &[
    "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TERM", "NO_COLOR", "COLUMNS", "LINES",
];

/// Most stages one pipeline may have.
pub const MAX_PIPELINE_STAGES: usize = 16;

/// How long the other stages of a pipeline whose last stage exited may take to end by
/// themselves (a broken pipe, the end of their input) before they are stopped.
pub const PIPELINE_END_SETTLE: std::time::Duration = std::time::Duration::from_millis(250);

/// Longest grace a capsule may give a pipeline's stages between SIGTERM and SIGKILL.
pub const MAX_PIPELINE_GRACE: std::time::Duration = std::time::Duration::from_mins(1);

/// Size asked for the pipe a link writes into (the next stage's stdin). A link is one more
/// hop than a shell's pipe; a larger pipe lets each hop move longer runs per wake-up. Smaller
/// than `PROCESS_PIPE_BYTES`: kernel pipe memory is counted per user (past
/// `/proc/sys/fs/pipe-user-pages-soft`, 64 MiB by default, an unprivileged user's new pipes
/// get two pages), and the run a link moves at once is bounded by the stage's output pipe
/// before it anyway.
pub const LINK_PIPE_BYTES: usize = 256 * 1024;

/// How long a pipeline link's byte rate is measured over.
pub const LINK_RATE_WINDOW: std::time::Duration = std::time::Duration::from_secs(1);

/// Persistent processes one principal may have running at once.
pub const MAX_PERSISTENT_RUNNING: usize = 64;

/// Exited persistent processes one principal may keep (not yet released or expired).
pub const MAX_PERSISTENT_RETAINED: usize = 64;

/// How long an exited persistent process is kept for its owner to read, when not released.
pub const DEFAULT_EXIT_RETENTION: std::time::Duration = std::time::Duration::from_mins(10);

/// Longest a bounded process wait may be asked to take.
pub const MAX_PROCESS_WAIT: std::time::Duration = std::time::Duration::from_mins(10);

/// Time between `SIGTERM` and `SIGKILL` when a persistent process is stopped.
pub const DEFAULT_STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// How often the persistent-process reaper looks for expired processes.
pub const PROCESS_REAPER_INTERVAL: std::time::Duration = std::time::Duration::from_millis(250);

/// Most ids one `status-many` call may name.
pub const MAX_STATUS_MANY: usize = 1024;

/// Longest label of a persistent process, in bytes.
pub const MAX_PROCESS_LABEL_BYTES: usize = 128;

/// First wait before a failed supervised program is restarted.
pub const SUPERVISOR_INITIAL_BACKOFF: std::time::Duration = std::time::Duration::from_millis(200);

/// Longest wait between restarts (the backoff doubles up to this).
pub const SUPERVISOR_MAX_BACKOFF: std::time::Duration = std::time::Duration::from_secs(30);

/// Restarts after which a failing supervised program is given up on and marked failed.
pub const SUPERVISOR_MAX_RESTARTS: u32 = 5;

/// A run this long counts as healthy: the restart count towards the cap starts again.
pub const SUPERVISOR_HEALTHY_AFTER: std::time::Duration = std::time::Duration::from_mins(1);

/// How often a supervised program's CPU and memory are sampled.
pub const SUPERVISOR_SAMPLE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Samples kept per supervised program.
pub const SUPERVISOR_HISTORY: usize = 60;

/// Most restarts in a row a capsule may ask for its persistent process or pipeline.
pub const MAX_PERSISTENT_RESTARTS: u32 = 100;

/// Shortest backoff a capsule may ask for before a restart (no hot restart loop).
pub const MIN_RESTART_BACKOFF: std::time::Duration = std::time::Duration::from_millis(100);

/// Longest backoff a capsule may ask for between restarts.
pub const MAX_RESTART_BACKOFF: std::time::Duration = std::time::Duration::from_mins(10);

/// Earlier runs of a restarted persistent entry whose cursors are still honoured (they read
/// the current run).
pub const MAX_PAST_GENERATIONS: usize = 16;

/// Background children one capsule instance may hold at once.
pub const MAX_BACKGROUND_PER_INSTANCE: usize = 32;

/// How long the host keeps sweeping for what is left of a finished process group.
pub const ORPHAN_WATCH: std::time::Duration = std::time::Duration::from_mins(1);

/// How many times a boot-time sweep kills the processes of a dead host's cgroup and retries
/// removing it (10 ms apart) before reporting it stuck.
pub const STALE_CGROUP_KILL_ROUNDS: usize = 100;

/// Largest output ring a capsule's child may have, per stream, in bytes.
pub const MAX_CAPSULE_OUTPUT_RING_BYTES: usize = 4 * 1024 * 1024;

/// Tasks a capsule's child and its descendants may have when the host can enforce it (and
/// the ceiling on what a capsule may ask for).
pub const MAX_CAPSULE_CHILD_PIDS: u64 = 256;

/// How long starting a persistent process waits for it to take its initial stdin.
pub const PERSISTENT_STDIN_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// The uid a sandboxed child runs as inside its namespace (`nobody`) unless the operator
/// configures another (`[sandbox] uid` in `config.toml`).
pub const SANDBOX_DEFAULT_UID: u32 = 65534;

/// The gid a sandboxed child runs as inside its namespace (`nogroup`) unless configured.
pub const SANDBOX_DEFAULT_GID: u32 = 65534;

/// The system directories a sandboxed child sees, read-only (symlinks among them, as on a
/// merged-/usr system, are recreated as symlinks).
pub const SANDBOX_SYSTEM_DIRS: &[&str] = &["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64"];

/// The files and directories of `/etc` a sandboxed child sees, read-only, where they exist:
/// what the dynamic linker, name lookups, time zones and TLS read. Nothing secret (no
/// `shadow`, `ssh`, `sudoers`), and few: each is a mount, paid at every sandboxed spawn.
pub const SANDBOX_ETC_FILES: &[&str] = &[
    "/etc/alternatives",
    "/etc/ld.so.cache",
    "/etc/passwd",
    "/etc/group",
    "/etc/nsswitch.conf",
    "/etc/hosts",
    "/etc/resolv.conf",
    "/etc/localtime",
    "/etc/ssl",
    "/etc/ca-certificates",
];

/// Open files a native capsule's program may hold (`RLIMIT_NOFILE`).
pub const NATIVE_OPEN_FILES: u64 = 1024;

/// The daemon protocol's version; a client speaking another is refused at hello. (2: typed
/// methods, kebab-case error codes, tool answers tagged JSON or text, follows as methods. 3:
/// `tool.run`, `mcp.token.*`, the `via` of tool lists, `status` counting boot's loads.)
pub const DAEMON_PROTOCOL_VERSION: u32 = 3;

/// Longest client name (an MCP client's `clientInfo.name`) recorded with a tool call, in
/// bytes; longer ones are cut.
pub const MAX_CLIENT_NAME_BYTES: usize = 256;

/// Most audit entries one `audit.tail` answers (more is refused, not cut).
pub const MAX_AUDIT_TAIL: u32 = 10_000;

/// Most bytes of a process's output one `process.logs` answer carries.
pub const DAEMON_PROCESS_LOG_PAGE_BYTES: usize = 1 << 20;

/// How often a followed log (`capsule.logs.follow`, `process.logs.follow`) looks for more.
pub const DAEMON_FOLLOW_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);

/// Largest daemon frame, in bytes (the 4-byte length prefix excluded). A bigger frame is
/// answered with an error frame and never read.
pub const MAX_FRAME_BYTES: usize = 8 << 20;

/// How long a new connection has to send its hello.
pub const DAEMON_HELLO_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// How long the daemon waits for a client to take a response (or a follow frame) before it
/// drops a client that stopped reading.
pub const DAEMON_WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Connections the daemon serves at once; more wait in the listen backlog.
pub const MAX_DAEMON_CONNECTIONS: usize = 1024;

/// Requests one connection may have in flight at once.
pub const MAX_REQUESTS_PER_CONNECTION: usize = 64;

/// How long a starting daemon waits for the home's lock held by a daemon that is already
/// dying (its main thread gone, its other threads still closing its files), so a start right
/// after a crash or a SIGKILL is not refused as if that daemon still served.
pub const DAEMON_DYING_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// How long a graceful stop waits for requests in flight before it shuts the kernel down.
pub const DAEMON_DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How long a connection's requests get to end once its client stops taking answers, before
/// they are aborted: its tool calls are cancelled then, and a cancelled call ends (and is
/// recorded as cancelled) within `HOST_CALL_GRACE`.
pub const DAEMON_CANCEL_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// How long boot waits for the capsules of one phase (uplink first, then the rest) to be
/// ready, unless the config says otherwise.
pub const DEFAULT_BOOT_TIMEOUT_MS: u64 = 60_000;

/// How often the health monitor looks for failed capsules.
pub const HEALTH_CHECK_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// First wait before the health monitor reloads a failed capsule, unless configured.
pub const DEFAULT_HEALTH_INITIAL_MS: u64 = 1_000;

/// Longest wait between the health monitor's reloads of one capsule, unless configured.
pub const DEFAULT_HEALTH_MAX_MS: u64 = 60_000;

/// Reloads in a row the health monitor tries before it leaves a capsule failed, unless
/// configured.
pub const DEFAULT_HEALTH_MAX_ATTEMPTS: u32 = 5;

/// How long the hot-reload watcher waits after a capsule's last file change before it
/// hashes the capsule's files again.
pub const HOT_RELOAD_DEBOUNCE: std::time::Duration = std::time::Duration::from_millis(300);

/// How long shutdown keeps retrying an unload that in-flight calls hold up.
pub const SHUTDOWN_UNLOAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// How long shutdown waits, past [`SHUTDOWN_UNLOAD_TIMEOUT`], for calls it cancelled to
/// answer (calls served for other hosts of a lattice).
pub const SHUTDOWN_CANCEL_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// Largest `config.toml`, in bytes.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Audit log reads (verify, tail, export) the daemon serves at once; more wait. Each opens
/// the database, and SQLite keeps a closed reader's descriptor while the writer holds its
/// locks, so unbounded concurrent reads would pile descriptors up.
pub const DAEMON_AUDIT_READS_AT_ONCE: usize = 2;

/// Largest hello frame, in bytes (a hello is a version, a token and a fingerprint).
pub const MAX_HELLO_BYTES: usize = 4096;

/// How long the body of a frame may take to arrive once its length has (idle connections
/// are fine; a frame trickled in is not).
pub const DAEMON_FRAME_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Request bytes the daemon holds at once across all connections (read and not yet
/// answered); a connection whose next frame does not fit waits before reading it.
pub const MAX_DAEMON_BUFFERED_BYTES: usize = 256 << 20;

/// Descriptors the daemon keeps free for the kernel (stores, capsules, children) when it
/// sizes its connection cap to the open-file limit.
pub const DAEMON_FD_RESERVE: u64 = 256;

/// Daemon connections one MCP bridge holds at once: each request in flight takes one (a
/// cancelled call's connection is closed, which is how the daemon learns of it); more
/// requests wait their turn.
pub const MCP_DAEMON_CONNECTIONS: usize = 64;

/// Token checks one MCP bridge runs at once (on connections apart from calls').
pub const MCP_TOKEN_CHECKS_AT_ONCE: usize = 8;

/// MCP sessions of one bridge that follow tool changes at once (each on a daemon connection
/// of its own); later sessions are not told of changes.
pub const MCP_FOLLOWS: usize = 256;

/// Idle daemon connections an MCP bridge keeps for the next requests.
pub const MCP_IDLE_DAEMON_CONNECTIONS: usize = 16;
/// 2026-07-28 calls a bridge keeps waiting while their clients answer an approval (an
/// input-required result out, the retry not yet in; each holds a daemon connection, so at
/// most half of them); more are answered "try again later".
pub const MCP_PARKED_CALLS: usize = MCP_DAEMON_CONNECTIONS / 2;

/// Approval decisions a bridge sends at once, on turns of their own (never held up by the
/// calls waiting for them).
pub const MCP_DECISIONS_AT_ONCE: usize = 8;

/// HTTP connections the MCP bridge serves at once; more wait to be accepted.
pub const MCP_HTTP_MAX_CONNECTIONS: usize = 512;

/// How long an HTTP client of the MCP bridge has to send a request's headers.
pub const MCP_HTTP_HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How long the MCP bridge trusts a bearer token the daemon vouched for before asking again:
/// a revoked token is refused at most this long after `capsid mcp token revoke` returns.
pub const MCP_TOKEN_CHECK_TTL: std::time::Duration = std::time::Duration::from_millis(100);

/// Bearer tokens the MCP bridge remembers as checked (only live ones are remembered).
pub const MCP_TOKEN_CHECK_ENTRIES: usize = 64;

/// Largest HTTP request body the MCP bridge reads: a tool's largest input and the JSON-RPC
/// envelope around it.
pub const MCP_MAX_REQUEST_BYTES: usize = MAX_TOOL_INPUT_BYTES + 64 * 1024;

/// Most bytes of one HTTP response body a capsule reads: the body ends with
/// `HTTP-response-body-size` at this many bytes, counted as they stream in.
pub const MAX_HTTP_RESPONSE_BYTES: u64 = 64 << 20;

/// Most bytes of one HTTP request body a capsule sends.
pub const MAX_HTTP_REQUEST_BYTES: u64 = 16 << 20;

/// HTTP requests one capsule may have open at once (sent, with a response body not yet
/// finished or dropped); more wait their turn, up to the call's deadline.
pub const MAX_HTTP_INFLIGHT: usize = 16;

/// Longest an outbound HTTP request may take to resolve its host, connect and finish TLS
/// (a capsule may ask for less; the call's deadline is always the ceiling).
pub const HTTP_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Longest from a request sent to its response's headers (a capsule may ask for less).
pub const HTTP_FIRST_BYTE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Longest a response body may go without a byte (a capsule may ask for less).
pub const HTTP_BETWEEN_BYTES_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Largest file of extra TLS roots an operator may configure (`[http] extra_roots`).
pub const MAX_HTTP_ROOTS_FILE_BYTES: u64 = 1 << 20;

/// HTTP requests one capsule may have made and not yet ended, waiting for a connection slot
/// or not; one more fails at once with `connection-limit-reached`.
pub const MAX_HTTP_QUEUED: usize = 256;

/// How long before its call's deadline a capsule's HTTP request gives up, so the capsule
/// hears of the timeout in time to answer rather than being cut off with it.
pub const HTTP_DEADLINE_MARGIN: std::time::Duration = std::time::Duration::from_millis(250);

/// Longest the host keeps a refused HTTP request's body open, so a capsule still writing it
/// reads the refusal's error code rather than a closed stream.
pub const HTTP_REFUSED_BODY_LINGER: std::time::Duration = std::time::Duration::from_secs(2);

/// Approval requests one principal may have waiting at once; more are denied at once.
pub const MAX_PENDING_APPROVALS: usize = 16;

/// Of those, most that one caller's calls may hold (one client cannot take every slot).
pub const MAX_PENDING_APPROVALS_PER_CALLER: usize = MAX_PENDING_APPROVALS / 2;

/// How long a call waits for a person to decide an approval request, unless `config.toml`
/// says otherwise (`approval_timeout_ms`); no decision by then is a denial. The call's own
/// deadline is suspended while it waits.
pub const DEFAULT_APPROVAL_TIMEOUT_MS: u64 = 120_000;

/// Longest `approval_timeout_ms` may be.
pub const MAX_APPROVAL_TIMEOUT_MS: u64 = 3_600_000;

/// Longest reason a capsule may give with an approval request (`approval.request`).
pub const MAX_APPROVAL_REASON_BYTES: usize = 1024;

/// Longest one call may wait for people's approvals, all its waits together: past it, the
/// call's further asks are denied at once (its deadline moves no more).
pub const MAX_CALL_APPROVAL_WAIT: std::time::Duration = std::time::Duration::from_mins(10);

/// Longest line (one JSON-RPC message) read from an MCP capsule's server: room for the
/// largest answer a tool may give (`MAX_TOOL_OUTPUT_BYTES`) twice (as text and structured
/// content) and its envelope. A longer one is dropped unread, so a call it answered ends at
/// its deadline.
pub const MCP_MAX_MESSAGE_BYTES: usize = 2 * MAX_TOOL_OUTPUT_BYTES + 64 * 1024;

/// How long an MCP capsule's server has to answer `initialize` and list its tools after it
/// starts, unless its manifest says otherwise (`[mcp] startup_timeout_ms`); one that does
/// not is killed (and restarted per its policy). A later tool list has as long.
pub const DEFAULT_MCP_STARTUP_TIMEOUT_MS: u64 = 10_000;

/// Longest `[mcp] startup_timeout_ms` may be.
pub const MAX_MCP_STARTUP_TIMEOUT_MS: u64 = 120_000;

/// Most tools one MCP capsule may list; the rest are left out (and logged).
pub const MAX_MCP_TOOLS: usize = 256;

/// Largest definition (name, description, schemas) of one MCP tool; a bigger one is left
/// out (and logged).
pub const MAX_MCP_TOOL_DEFINITION_BYTES: usize = 64 * 1024;

/// Shortest time between two refreshes of an MCP capsule's tool list: a server that floods
/// `notifications/tools/list_changed` gets one list per interval.
pub const MCP_TOOL_REFRESH_INTERVAL: std::time::Duration = std::time::Duration::from_millis(200);

/// Most pin and review records one loaded MCP capsule makes on its server's behalf (tools
/// pinned under dev trust, new and changed tools noticed): past them, new and changed tools
/// stay hidden without a record, so a server churning its definitions cannot flood the audit
/// log or the pin store.
pub const MAX_MCP_REVIEW_RECORDS: usize = 4 * MAX_MCP_TOOLS;

/// Most pages of `tools/list` read from an MCP capsule's server for one listing.
pub const MAX_MCP_TOOL_PAGES: usize = 16;

/// How often a call waiting for an MCP capsule's server (starting, or restarting) looks
/// again whether the server was given up on or stopped.
pub const MCP_SERVER_WAIT_RECHECK: std::time::Duration = std::time::Duration::from_millis(100);

/// Largest `Capsule.sig` read, in bytes (a real one is under 1 KiB).
pub const MAX_SIGNATURE_FILE_BYTES: u64 = 8 * 1024;

/// Longest name of a trusted key (`capsid trust add <name>`): `[a-z0-9-]`, like a capsule's.
pub const MAX_TRUST_NAME_LEN: usize = 64;

/// Most keys one home's trust store holds.
pub const MAX_TRUSTED_KEYS: usize = 1024;

/// Largest file of the trust store (`trust/<name>.toml`), in bytes.
pub const MAX_TRUST_FILE_BYTES: u64 = 16 * 1024;

/// Most capsule-name patterns one trusted key may be limited to (`--capsules`).
pub const MAX_TRUST_SCOPE_PATTERNS: usize = 64;

/// Largest install receipt (`state/receipts/<name>.json`), in bytes.
pub const MAX_RECEIPT_BYTES: u64 = 1024 * 1024;

/// Largest workspace file `ws diff` reads for a text diff; a bigger one shows sizes only.
pub const MAX_DIFF_FILE_BYTES: u64 = 1024 * 1024;

/// Most diff text one `workspace.diff` answer carries, counted as encoded (JSON escapes a
/// control character into six bytes); files past it show sizes and line counts only.
pub const MAX_DIFF_TEXT_BYTES: usize = 4 * 1024 * 1024;

/// Most bytes the listed entries of one `workspace.*` answer take, encoded, diff text
/// included: with the rest of the answer, well under `MAX_FRAME_BYTES`. Entries past it are
/// counted in the answer's `total`, not listed.
pub const MAX_REVIEW_ANSWER_BYTES: usize = 6 * 1024 * 1024;

/// Most workspace paths one `workspace.status` or `workspace.diff` may be limited to.
pub const MAX_WORKSPACE_FILTERS: usize = 1024;

/// Most reviews of some paths that "who wrote it" looks back through for the newest whole
/// one; past them it starts at the oldest it read (forgetting older writers rather than
/// reading the whole log on every `ws status`).
pub const MAX_ATTRIBUTION_REVIEWS: usize = 256;

/// Most verified `Capsule.sig` texts a host remembers (so a capsule loaded again is not
/// verified again); past it, it starts over.
pub const MAX_VERIFIED_SIGNATURES: usize = 16 * 1024;

/// Leading key bytes a lattice KV key spells out in its NATS subject, one hex token per byte,
/// so a list can be filtered by the server on the prefix; longer keys end in a hash token
/// and carry the whole key in a header.
pub const LATTICE_KV_SPELLED_KEY_BYTES: usize = 64;

/// Values a lattice KV bucket keeps per key: the current one and the one before, which a
/// half-applied batch is rolled back to.
pub const LATTICE_KV_HISTORY: i64 = 2;

/// Largest message a lattice KV bucket stores: the largest value plus its key (hex, in a
/// header) and the other headers. The NATS servers' `max_payload` must be at least this.
pub const LATTICE_KV_MAX_MESSAGE_BYTES: usize = MAX_KV_VALUE_BYTES + 2 * MAX_KV_KEY_BYTES + 4096;

/// How long a lattice batch may take applying its writes before it rolls itself back.
pub const LATTICE_BATCH_APPLY_DEADLINE: std::time::Duration = std::time::Duration::from_secs(20);

/// Age past which a batch intent left in a lattice bucket is taken for a dead writer's and
/// rolled back (three apply deadlines: its writer has given up long since).
pub const LATTICE_BATCH_INTENT_STALE: std::time::Duration = std::time::Duration::from_mins(1);

/// Longest a lattice KV `list` may take reading the bucket's keys.
pub const LATTICE_KV_LIST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// How long a lattice request (a `JetStream` API call, a publish's acknowledgement) waits.
pub const LATTICE_REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// How long a lattice read or write waits out a stream with no leader (one being elected
/// after a node died) before it fails.
pub const LATTICE_FAILOVER_WAIT: std::time::Duration = std::time::Duration::from_secs(15);

/// How long the first attempt at making a lattice KV listing or watch (an ephemeral
/// `JetStream` consumer) waits before another is made, placed anew; each later one waits
/// this much longer, up to [`LATTICE_REQUEST_TIMEOUT`]. Until `JetStream` notices a killed
/// node gone (far longer than making a consumer normally takes: milliseconds), it may place
/// one there, and that one is never made.
pub const LATTICE_CONSUMER_ATTEMPT_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// How long connecting to the lattice's NATS servers may take at boot.
pub const LATTICE_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Longest wait between two attempts to reconnect to the lattice (the wait doubles up to it).
pub const LATTICE_RECONNECT_MAX_DELAY: std::time::Duration = std::time::Duration::from_secs(10);

/// Longest lattice name, in bytes (it names NATS subjects and buckets).
pub const MAX_LATTICE_NAME_BYTES: usize = 32;

/// How far a lattice envelope's time may be from the receiving host's clock (either way):
/// older ones are refused, so a message copied off the wire can be replayed only within it,
/// and its nonce is remembered that long. Hosts of a lattice keep their clocks in step (NTP).
pub const LATTICE_ENVELOPE_SKEW: std::time::Duration = std::time::Duration::from_secs(30);

/// Most envelope nonces a host remembers within [`LATTICE_ENVELOPE_SKEW`]; past it, fresh
/// envelopes are refused until old ones expire (refusing rather than risking a replay).
pub const LATTICE_REPLAY_GUARD_ENTRIES: usize = 256 * 1024;

/// How long a calling host waits for a serving host to take a call.
pub const LATTICE_CALL_ACCEPT_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// How long a serving host waits for the calling host to hand it a call it asked for; past
/// it, the call is not run there, and the host tells the caller it gave the call up.
pub const LATTICE_CALL_HANDOVER_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// How often a serving host says a call it runs is still running.
pub const LATTICE_CALL_HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(1);

/// Silence after which a calling host takes the serving host for lost (three heartbeats).
pub const LATTICE_CALL_SILENCE: std::time::Duration = std::time::Duration::from_secs(3);

/// How often a host writes its advertisement of the capsules it serves (and reads others').
pub const LATTICE_ADVERT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// How long an advertisement lives unless written again: a dead host drops out after it.
pub const LATTICE_ADVERT_TTL: std::time::Duration = std::time::Duration::from_secs(20);

/// Events a host queues for export to the lattice; past it, exports are dropped and counted.
pub const LATTICE_EXPORT_QUEUE: usize = 4096;

/// How often, at most, a host records a burst of refused lattice messages of one kind and
/// reason (`lattice.refused`): the first after a quiet spell is recorded at once, the rest
/// of a flood as one entry with their count per interval.
pub const LATTICE_REFUSALS_AUDIT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);
/// Keys claimed by untrusted senders a `lattice.refused` entry names, at most.
pub const LATTICE_REFUSAL_SENDERS_KEPT: usize = 4;
/// Calls another host cancelled before they reached this one, remembered (so a copy still on
/// its way is not run); past it, the oldest is forgotten.
pub const LATTICE_EARLY_CANCELS_KEPT: usize = 1024;
/// How long reading a lattice stream back (the audit anchors, for `audit verify --lattice`)
/// waits for its next message; a read that keeps moving is not cut short, however long the
/// history.
pub const LATTICE_STREAM_READ_STALL: std::time::Duration = std::time::Duration::from_secs(10);
/// How often a host anchors its audit chain heads in the lattice (when they moved), besides
/// at shutdown.
pub const LATTICE_ANCHOR_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);
