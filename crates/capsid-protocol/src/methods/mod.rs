//! Every daemon method as a type: its name, its params and result, whether it changes
//! nothing (`READ_ONLY`: all a daemon over a read-only audit log answers), whether the daemon
//! answers it on the connection's reader (`INLINE`: cheap reads with no I/O) and whether it
//! streams (`STREAMING`: frames with `more: true` until a last one).
//!
//! [`MethodId`] names them all; the daemon matches on it, never on a string.

mod admin;
mod approval;
mod capsule;
mod process;
mod trust;
mod workspace;

pub use admin::*;
pub use approval::*;
pub use capsule::*;
pub use process::*;
pub use trust::*;
pub use workspace::*;

use serde::{Deserialize, Serialize};

use crate::Method;

/// Params of a method that takes none (an empty object, or nothing).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoParams {}

/// The result of a method that answers nothing but success.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Done {}

macro_rules! methods {
    ($(
        $(#[$doc:meta])*
        $ty:ident = $name:literal ($params:ty) -> $result:ty
            { read_only: $ro:literal, inline: $inline:literal, streaming: $stream:literal }
    )*) => {
        $(
            $(#[$doc])*
            #[derive(Debug, Clone, Copy)]
            pub struct $ty;

            impl Method for $ty {
                const ID: MethodId = MethodId::$ty;
                const NAME: &'static str = $name;
                const READ_ONLY: bool = $ro;
                const INLINE: bool = $inline;
                const STREAMING: bool = $stream;
                type Params = $params;
                type Result = $result;
            }
        )*

        /// Every method, by name.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum MethodId {
            $( $(#[$doc])* $ty, )*
        }

        impl MethodId {
            /// Every method, in the order the docs list them.
            pub const ALL: &'static [MethodId] = &[$(MethodId::$ty),*];

            /// The method named `name`, if there is one.
            pub fn from_name(name: &str) -> Option<Self> {
                match name {
                    $( $name => Some(MethodId::$ty), )*
                    _ => None,
                }
            }

            /// Its name on the wire.
            pub fn name(self) -> &'static str {
                match self { $( MethodId::$ty => $name, )* }
            }

            /// Whether it changes nothing ([`Method::READ_ONLY`]).
            pub fn read_only(self) -> bool {
                match self { $( MethodId::$ty => $ro, )* }
            }

            /// Whether the daemon answers it on the connection's reader ([`Method::INLINE`]).
            pub fn inline(self) -> bool {
                match self { $( MethodId::$ty => $inline, )* }
            }

            /// Whether it streams ([`Method::STREAMING`]).
            pub fn streaming(self) -> bool {
                match self { $( MethodId::$ty => $stream, )* }
            }

            /// Decodes `request`'s params as this method's and drops them: the check every
            /// request meets before anything acts on it (and what the protocol fuzzer drives).
            pub fn check_params(self, request: &crate::Request) -> Result<(), crate::WireError> {
                match self { $( MethodId::$ty => request.params::<$ty>().map(drop), )* }
            }
        }
    };
}

methods! {
    /// The daemon's state: version, uptime, what boot did, capsule counts.
    Status = "status" (NoParams) -> StatusResult
        { read_only: true, inline: true, streaming: false }
    /// Every capsule known, loaded or failed.
    CapsuleList = "capsule.list" (NoParams) -> Vec<CapsuleView>
        { read_only: true, inline: true, streaming: false }
    /// One capsule, with its description and tools when loaded.
    CapsuleShow = "capsule.show" (CapsuleParams) -> CapsuleDetail
        { read_only: true, inline: true, streaming: false }
    /// Loads an installed capsule.
    CapsuleLoad = "capsule.load" (CapsuleParams) -> CapsuleView
        { read_only: false, inline: false, streaming: false }
    /// Unloads a capsule (its processes stopped, its instances shut down).
    CapsuleUnload = "capsule.unload" (CapsuleParams) -> Done
        { read_only: false, inline: false, streaming: false }
    /// Loads a capsule again from its files.
    CapsuleReload = "capsule.reload" (CapsuleParams) -> CapsuleView
        { read_only: false, inline: false, streaming: false }
    /// Installs the capsule in a directory into the home and loads it.
    CapsuleInstall = "capsule.install" (InstallParams) -> InstallResult
        { read_only: false, inline: false, streaming: false }
    /// Signs the capsule in a directory with the runtime key (recorded): for a capsule the
    /// operator reviewed.
    CapsuleSign = "capsule.sign" (CapsuleDirParams) -> Signed
        { read_only: false, inline: false, streaming: false }
    /// Checks the capsule in a directory as a load would (its component hashed too).
    CapsuleVerify = "capsule.verify" (CapsuleDirParams) -> Verified
        { read_only: true, inline: false, streaming: false }
    /// The keys trusted to sign capsules, the runtime key first.
    TrustList = "trust.ls" (NoParams) -> Vec<TrustedKeyView>
        { read_only: true, inline: false, streaming: false }
    /// Trusts a key to sign capsules (recorded).
    TrustAdd = "trust.add" (TrustAddParams) -> TrustedKeyView
        { read_only: false, inline: false, streaming: false }
    /// Stops trusting a key (recorded): the next load of a capsule it signed is refused.
    TrustRemove = "trust.rm" (TrustNameParams) -> TrustedKeyView
        { read_only: false, inline: false, streaming: false }
    /// An MCP capsule's tools that wait for review, with their pinned and presented
    /// definitions.
    CapsuleReview = "capsule.review" (CapsuleParams) -> Vec<PendingToolView>
        { read_only: true, inline: true, streaming: false }
    /// Accepts reviewed tool definitions of an MCP capsule (by digest): pinned, callable.
    CapsuleReviewAccept = "capsule.review.accept" (ReviewAcceptParams) -> ReviewAccepted
        { read_only: false, inline: false, streaming: false }
    /// A capsule's log lines after a position.
    CapsuleLogs = "capsule.logs" (LogParams) -> LogPage
        { read_only: true, inline: false, streaming: false }
    /// A capsule's log: what is there, then new lines as they come.
    CapsuleLogsFollow = "capsule.logs.follow" (LogParams) -> LogPage
        { read_only: true, inline: false, streaming: true }
    /// The tools of ready capsules a user may call.
    ToolList = "tool.list" (ToolListParams) -> Vec<ToolDef>
        { read_only: true, inline: false, streaming: false }
    /// The fingerprint of the tools a user may call: now, then each time it changes.
    ToolChangesFollow = "tool.changes.follow" (ToolListParams) -> ToolSet
        { read_only: true, inline: false, streaming: true }
    /// Calls a capsule's tool (recorded before and after).
    ToolCall = "tool.call" (ToolCallParams) -> ToolOutput
        { read_only: false, inline: false, streaming: false }
    /// Calls a capsule's tool as `tool.call` does, sending its progress reports (coalesced,
    /// at most one per `PROGRESS_REPORT_INTERVAL`) before its answer, the last frame.
    ToolRun = "tool.run" (ToolCallParams) -> ToolRunFrame
        { read_only: false, inline: false, streaming: true }
    /// Publishes an event on the bus.
    EventPublish = "event.publish" (PublishParams) -> Delivery
        { read_only: false, inline: false, streaming: false }
    /// Persistent processes and native capsules' programs.
    ProcessList = "process.list" (NoParams) -> Vec<ProcessView>
        { read_only: true, inline: false, streaming: false }
    /// A capsule's samples: its program's (a native or MCP capsule) with its quota report,
    /// and each of its persistent processes'.
    ProcessStats = "process.stats" (StatsParams) -> CapsuleStats
        { read_only: true, inline: false, streaming: false }
    /// A persistent process's output after an offset.
    ProcessLogs = "process.logs" (ProcessLogParams) -> ProcessOutput
        { read_only: true, inline: false, streaming: false }
    /// A persistent process's output, followed until it is forgotten.
    ProcessLogsFollow = "process.logs.follow" (ProcessLogParams) -> ProcessOutput
        { read_only: true, inline: false, streaming: true }
    /// Verifies every chain and signature of the audit log as committed so far.
    AuditVerify = "audit.verify" (NoParams) -> VerifyResult
        { read_only: true, inline: false, streaming: false }
    /// `audit.verify`, and every chain head this host anchored in its lattice still held by
    /// the log (a log truncated or rewritten after it published fails).
    AuditVerifyLattice = "audit.verify.lattice" (NoParams) -> VerifyResult
        { read_only: true, inline: false, streaming: false }
    /// The most recent audit entries.
    AuditTail = "audit.tail" (TailParams) -> Vec<AuditEntry>
        { read_only: true, inline: false, streaming: false }
    /// Exports the audit log as JSON lines into a new file (recorded, unless the log is
    /// read-only: the one way to take the evidence out).
    AuditExport = "audit.export" (ExportParams) -> ExportResult
        { read_only: true, inline: false, streaming: false }
    /// Grants the local user (or one capsule) a capability.
    CapGrant = "cap.grant" (GrantParams) -> Granted
        { read_only: false, inline: false, streaming: false }
    /// Revokes a capability by id.
    CapRevoke = "cap.revoke" (RevokeParams) -> Done
        { read_only: false, inline: false, streaming: false }
    /// A user's capabilities.
    CapList = "cap.list" (GrantListParams) -> Vec<GrantView>
        { read_only: true, inline: false, streaming: false }
    /// Users and their platform links.
    IdentityList = "identity.list" (NoParams) -> Identities
        { read_only: true, inline: false, streaming: false }
    /// Links a platform account to a user.
    IdentityLink = "identity.link" (LinkParams) -> Done
        { read_only: false, inline: false, streaming: false }
    /// Mints a bearer token for the MCP bridge's HTTP transport (recorded; the token is in
    /// this answer only).
    McpTokenCreate = "mcp.token.create" (TokenCreateParams) -> TokenCreated
        { read_only: false, inline: false, streaming: false }
    /// The live bearer tokens.
    McpTokenList = "mcp.token.list" (NoParams) -> Vec<TokenView>
        { read_only: true, inline: false, streaming: false }
    /// Revokes a bearer token (recorded).
    McpTokenRevoke = "mcp.token.revoke" (TokenRevokeParams) -> Done
        { read_only: false, inline: false, streaming: false }
    /// The user a bearer token acts as; `unauthorized` for anything but a live token.
    McpTokenCheck = "mcp.token.check" (TokenCheckParams) -> TokenOwner
        { read_only: true, inline: false, streaming: false }
    /// What capsules changed in the workspace and not yet committed, with conflicts.
    WorkspaceStatus = "workspace.status" (WorkspacePathsParams) -> WorkspaceReview
        { read_only: true, inline: false, streaming: false }
    /// How each changed file differs from the workspace's copy: sizes, line counts, who
    /// changed it, and (unless `stat`) a unified diff of text.
    WorkspaceDiff = "workspace.diff" (WorkspaceDiffParams) -> WorkspaceDiffResult
        { read_only: true, inline: false, streaming: false }
    /// Commits capsules' changes to the workspace (recorded first, path by path); refused
    /// over conflicts unless `overwrite`.
    WorkspaceCommit = "workspace.commit" (WorkspaceCommitParams) -> WorkspaceReview
        { read_only: false, inline: false, streaming: false }
    /// Drops capsules' changes to the workspace (recorded first, path by path).
    WorkspaceDiscard = "workspace.discard" (WorkspacePathsParams) -> WorkspaceReview
        { read_only: false, inline: false, streaming: false }
    /// The calls waiting for a person's approval, oldest first.
    ApprovalList = "approval.list" (NoParams) -> Vec<ApprovalView>
        { read_only: true, inline: true, streaming: false }
    /// One waiting call.
    ApprovalShow = "approval.show" (ApprovalShowParams) -> ApprovalView
        { read_only: true, inline: true, streaming: false }
    /// Decides a waiting call (recorded, naming who decided, before the call hears it).
    ApprovalDecide = "approval.decide" (ApprovalDecideParams) -> ApprovalView
        { read_only: false, inline: false, streaming: false }
    /// The standing refusals (`deny-always` decisions).
    ApprovalRefusals = "approval.refusals" (NoParams) -> Vec<RefusalView>
        { read_only: true, inline: false, streaming: false }
    /// Removes a standing refusal (recorded): the capsule may ask again.
    ApprovalForget = "approval.forget" (ApprovalForgetParams) -> Done
        { read_only: false, inline: false, streaming: false }
    /// Stops the daemon: it drains requests in flight and unloads every capsule.
    DaemonStop = "daemon.stop" (NoParams) -> Stopping
        { read_only: true, inline: false, streaming: false }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_method_is_found_by_its_name_and_names_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for id in MethodId::ALL {
            assert_eq!(MethodId::from_name(id.name()), Some(*id));
            assert!(seen.insert(id.name()), "{} twice", id.name());
        }
        assert_eq!(MethodId::from_name("no.such"), None);
        assert_eq!(MethodId::from_name("Status"), None);
    }

    #[test]
    fn what_a_read_only_daemon_answers_changes_nothing() {
        let answered: Vec<_> = MethodId::ALL
            .iter()
            .filter(|m| m.read_only())
            .map(|m| m.name())
            .collect();
        for changes in ["capsule.load", "capsule.install", "tool.call", "cap.grant"] {
            assert!(!answered.contains(&changes), "{changes}");
        }
        assert!(answered.contains(&"daemon.stop"));
        assert!(MethodId::ALL.iter().all(|m| !m.inline() || m.read_only()));
    }
}
