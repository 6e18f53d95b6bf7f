//! capsid's native children: the OS side of the process host. A [`Child`] is started from a
//! checked [`SpawnSpec`] and is contained from its first instruction to its reaping.
//!
//! Invariants:
//! - nothing of the host leaks in: the environment is built from scratch (only the names in
//!   `PROCESS_ENV_ALLOW`), bare program names resolve on a fixed search path, the working
//!   directory resolves (symlinks included) inside the workspace, and arguments, environment
//!   and stdin writes are size-capped;
//! - limits are set in the child before exec: `setrlimit` for address space, CPU seconds and
//!   open files; where a cgroup `pids` controller is writable the child enters its own cgroup
//!   before exec — its `pids.max` keeps a fork bomb contained even for a root host (a pids
//!   limit fails closed without a controller), and whatever leaves the process group is
//!   still found and killed there;
//! - every child leads its own process group, signals go to the whole group, and a pid is
//!   never signalled once reaped (the reap and every signal take the same lock); pid 0 and
//!   negative pids are never signalled;
//! - no orphans and no zombies: when the leader exits, what is left of its group is killed
//!   before the leader is reaped; dropping a [`Child`] kills its group; children are forked
//!   from one long-lived thread with `PR_SET_PDEATHSIG`, so they die with the host process
//!   even when it is killed; a host that calls [`become_subreaper`] also reaps the killed
//!   members (which init, in a container, may never do); what outlives a host killed with
//!   SIGKILL (an unsandboxed child's own children) is killed by [`sweep_stale_cgroups`] when
//!   the next host starts;
//! - output goes into bounded rings ([`OutputRing`]): `DropOldest` counts what it evicts,
//!   `Backpressure` stops reading the pipe so the child blocks and no byte is lost; the host
//!   never reads more than a ring can hold;
//! - exit accounting comes from the kernel (`wait4`): CPU milliseconds and peak RSS;
//! - a spawn that requires the OS sandbox fails closed where `bwrap` is missing.
#![deny(missing_docs)]

mod cgroup;

pub use cgroup::{StaleSweep, pids_limit_available, sweep_stale_cgroups};
mod child;
mod error;
mod exec;
mod link;
mod orphans;
mod pipeline;
mod procfs;
mod ring;
mod sandbox;
mod seccomp;
mod spec;
mod stats;
mod supervisor;
mod sys;
mod table;

pub use child::{Child, ExitInfo, Stdio};
pub use error::ProcessError;
pub use link::Link;
pub use nix::sys::signal::Signal;
pub use orphans::become_subreaper;
pub use pipeline::{EndPolicy, Pipeline, PipelineOutput, PipelineSpec};
pub use ring::{OutputRing, Since};
pub use sandbox::bwrap_path;
pub use spec::{
    DeclaredEnv, ResourceLimits, RingPolicy, Sandbox, SandboxIdentity, SpawnSpec, resolve_program,
};
pub use stats::Sample;
pub use supervisor::{Health, Quota, QuotaAction, RestartPolicy, StartGate, Supervisor};
pub use table::{
    Chunk, Cursor, Earlier, EventKind, LinkStatus, Owner, PersistentOptions, ProcessTable,
    RestartStatus, StageStatus, Status, Stream, TableError, TableEvent, UnitSpec,
};
