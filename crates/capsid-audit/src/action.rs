//! Every audit action name capsid records, named once (as `capsid_crypto::hash::domain`
//! names hash domains): what readers of the log, `capsid audit tail` and tests match on.

/// The log was created (its genesis entry, in the system chain).
pub const LOG_CREATE: &str = "audit.log.create";
/// A chain was opened (in the system chain, with the chain's first entry).
pub const CHAIN_OPEN: &str = "audit.chain.open";
/// The runtime key was rotated.
pub const KEY_ROTATE: &str = "audit.key.rotate";
/// A checkpoint in the system chain: how many entries and chains the log held just before
/// it and a digest of every chain's head then, so that an open verifies only what follows
/// the last checkpoint (`capsid audit verify` still checks everything, checkpoints included).
pub const CHECKPOINT: &str = "audit.checkpoint";
/// A tampered log was set aside at boot (`audit_tamper = "quarantine"`).
pub const TAMPERED: &str = "audit.tampered";
/// The log was exported by the operator.
pub const EXPORT: &str = "audit.export";

/// The kernel booted.
pub const KERNEL_BOOT: &str = "kernel.boot";
/// The kernel shut down.
pub const KERNEL_SHUTDOWN: &str = "kernel.shutdown";
/// Boot's sweep killed what a dead host left behind.
pub const PROCESS_SWEPT: &str = "process.swept";
/// Opening the workspace overlay finished a commit a killed kernel left half done.
pub const WORKSPACE_COMMIT_RECOVERED: &str = "workspace.commit.recovered";
/// The resource workspace reviews are recorded on; a workspace path `p` is
/// `fs://workspace/p` in the records of capsules' file effects.
pub const WORKSPACE_RESOURCE: &str = "fs://workspace";
/// Opening the workspace overlay finished a discard a killed kernel left half done.
pub const WORKSPACE_DISCARD_RECOVERED: &str = "workspace.discard.recovered";
/// The operator committed capsules' changes to the workspace (every path, with the blake3 of
/// each file written; a long list spans several entries, all before the commit).
pub const WORKSPACE_COMMIT: &str = "workspace.commit";
/// The operator discarded capsules' changes to the workspace (every path dropped).
pub const WORKSPACE_DISCARD: &str = "workspace.discard";

/// A capability check, allowed or denied (by the capability store's own sink).
pub const CAPABILITY_CHECK: &str = "capability.check";
/// The operator granted a capability.
pub const CAP_GRANT: &str = "cap.grant";
/// The operator revoked a capability.
pub const CAP_REVOKE: &str = "cap.revoke";
/// A capsule's manifest was turned into a grant (dev trust).
pub const CAP_GRANT_MANIFEST: &str = "cap.grant.manifest";
/// A grant a capsule's manifest no longer asks for was revoked (dev trust).
pub const CAP_REVOKE_MANIFEST: &str = "cap.revoke.manifest";
/// The operator linked a platform account to a user.
pub const IDENTITY_LINK: &str = "identity.link";
/// The operator minted a bearer token for the MCP bridge's HTTP transport.
pub const MCP_TOKEN_CREATE: &str = "mcp.token.create";
/// The operator revoked a bearer token.
pub const MCP_TOKEN_REVOKE: &str = "mcp.token.revoke";
/// An operator action recorded before it ran did not take effect.
pub const OPERATOR_FAILED: &str = "operator.failed";

/// A capsule was installed into the home.
pub const CAPSULE_INSTALL: &str = "capsule.install";
/// The operator signed a capsule with the runtime key (`capsid capsule sign`).
pub const CAPSULE_SIGN: &str = "capsule.sign";
/// The operator trusted a key to sign capsules (`capsid trust add`).
pub const TRUST_ADD: &str = "trust.add";
/// The operator stopped trusting a key (`capsid trust rm`).
pub const TRUST_REMOVE: &str = "trust.remove";
/// A capsule was loaded (or reloaded).
pub const CAPSULE_LOAD: &str = "capsule.load";
/// A capsule was unloaded.
pub const CAPSULE_UNLOAD: &str = "capsule.unload";
/// An idle capsule was unloaded by the idle monitor.
pub const CAPSULE_IDLE_UNLOAD: &str = "capsule.idle-unload";
/// A capsule trapped, ran out of time or memory, and is failed until reloaded.
pub const CAPSULE_FAILED: &str = "capsule.failed";
/// The health monitor gave up reloading a failed capsule.
pub const HEALTH_GAVE_UP: &str = "health.gave-up";

/// A tool call, recorded before it runs (door, client, blake3 of the input); for a
/// principal other than the operator, the capability decision itself.
pub const TOOL_CALL: &str = "tool.call";
/// How a tool call ended (outcome, duration), recorded after it.
pub const TOOL_RESULT: &str = "tool.result";
/// An MCP capsule's tool definition pinned (first seen under dev trust, or accepted by the
/// operator after review); details name the digest and who pinned it.
pub const MCP_TOOL_PINNED: &str = "mcp.tool.pinned";
/// An MCP capsule's server presents a tool never pinned: hidden until reviewed.
pub const MCP_TOOL_PENDING: &str = "mcp.tool.pending";
/// An MCP capsule's server presents a tool whose definition differs from its pin: hidden
/// until the operator accepts the change.
pub const MCP_TOOL_CHANGED: &str = "mcp.tool.changed";
/// The operator accepted reviewed MCP tool definitions (details: their digests); each is
/// then pinned with its own `mcp.tool.pinned`.
pub const MCP_TOOL_REVIEW_ACCEPT: &str = "mcp.tool.review.accept";

/// The operator published an event.
pub const EVENT_PUBLISH: &str = "event.publish";
/// A capsule published an event.
pub const IPC_PUBLISH: &str = "ipc.publish";
/// An event was delivered to a subscribed capsule.
pub const IPC_DELIVER: &str = "ipc.deliver";

/// KV reads and writes of a capsule.
pub const KV_GET: &str = "kv.get";
/// See [`KV_GET`].
pub const KV_SET: &str = "kv.set";
/// See [`KV_GET`].
pub const KV_DELETE: &str = "kv.delete";
/// See [`KV_GET`].
pub const KV_LIST: &str = "kv.list";
/// See [`KV_GET`].
pub const KV_CAS: &str = "kv.cas";

/// Workspace file operations of a capsule.
pub const FS_READ: &str = "fs.read";
/// See [`FS_READ`].
pub const FS_WRITE: &str = "fs.write";
/// See [`FS_READ`].
pub const FS_APPEND: &str = "fs.append";
/// See [`FS_READ`].
pub const FS_READ_DIR: &str = "fs.read-dir";
/// See [`FS_READ`].
pub const FS_STAT: &str = "fs.stat";
/// See [`FS_READ`].
pub const FS_CREATE_DIR: &str = "fs.create-dir";
/// See [`FS_READ`].
pub const FS_REMOVE_FILE: &str = "fs.remove-file";
/// See [`FS_READ`].
pub const FS_REMOVE_DIR: &str = "fs.remove-dir";
/// See [`FS_READ`].
pub const FS_RENAME: &str = "fs.rename";

/// A program was started (by a capsule, or as a native capsule).
pub const PROCESS_SPAWN: &str = "process.spawn";
/// A program was given the host's network.
pub const PROCESS_NETWORK: &str = "process.network";
/// A persistent process was started.
pub const PROCESS_PERSISTENT: &str = "process.persistent";
/// A process was signalled.
pub const PROCESS_SIGNAL: &str = "process.signal";
/// A persistent process was stopped.
pub const PROCESS_STOP: &str = "process.stop";
/// A spawned program exited.
pub const PROCESS_EXIT: &str = "process.exit";
/// A persistent process exited.
pub const PROCESS_EXITED: &str = "process.exited";
/// A persistent process ran past its lifetime or idle deadline.
pub const PROCESS_EXPIRED: &str = "process.expired";
/// An exited persistent process was forgotten after its retention.
pub const PROCESS_FORGOTTEN: &str = "process.forgotten";
/// A supervised persistent process (or pipeline) that failed was started again.
pub const PROCESS_RESTARTED: &str = "process.restarted";
/// A supervised persistent process (or pipeline) was given up on: no more restarts.
pub const PROCESS_GAVE_UP: &str = "process.gave-up";
/// A persistent process (or pipeline) that survives restarts was started again under its id
/// after the runtime restarted.
pub const PROCESS_RESTORED: &str = "process.restored";
/// A persistent process (or pipeline) that survives restarts was not started again after
/// the runtime restarted (its grants no longer allow it, or it could not start); its record
/// is dropped.
pub const PROCESS_NOT_RESTORED: &str = "process.not-restored";

/// A capsule's outbound HTTP request checked against `net://` (method, origin, path): an
/// allow is recorded before the request is sent; a refusal after the check (an internal
/// address, the in-flight cap) is recorded as a denial under the same action.
pub const HTTP_REQUEST: &str = "http.request";
/// How an allowed outbound HTTP request ended: status, bytes each way, duration, or error.
pub const HTTP_RESPONSE: &str = "http.response";

/// A call was parked for a person's approval (a check on a resource the capsule may `ask`
/// for, or `approval.request`): the request's id, resource, description and argument digest.
pub const APPROVAL_REQUESTED: &str = "approval.requested";
/// A person decided an approval request (who, and `once`, `session`, `always`, `deny` or
/// `deny-always`).
pub const APPROVAL_DECIDED: &str = "approval.decided";
/// An approval request ended without a decision (timed out, or its capsule went away): denied.
pub const APPROVAL_EXPIRED: &str = "approval.expired";
/// Approval requests refused at once because too many were waiting (one entry per burst).
pub const APPROVAL_REFUSED: &str = "approval.refused";
/// The operator removed a standing refusal (a `deny-always`): the capsule may ask again.
pub const APPROVAL_REFUSAL_FORGET: &str = "approval.refusal.forget";
/// Messages from other hosts of the lattice refused before they were taken (a call's or an
/// event's envelope did not open, a copy of a call another host took, an event on a topic
/// reserved to the kernel): one entry per kind of message and reason at most every
/// `LATTICE_REFUSALS_AUDIT_INTERVAL`, with the count, first and last time, and the keys
/// untrusted senders claimed.
pub const LATTICE_REFUSED: &str = "lattice.refused";
/// A client session ended (its principal's last connection closed, or a restart found it
/// over) and the grants approved for it were removed: the session and the grant ids.
pub const APPROVAL_SESSION_ENDED: &str = "approval.session.ended";
