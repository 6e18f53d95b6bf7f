//! A link of a pipeline: the host's ends of one stage's stdout and the next stage's stdin,
//! joined by `splice(2)` on a thread of the link's own. The bytes move between the two pipes
//! inside the kernel (they never enter capsid's memory) and are counted as they go; a tapped
//! link also copies them (`tee(2)`) into a ring that keeps the last of them.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use capsid_core::limits::{LINK_PIPE_BYTES, LINK_RATE_WINDOW, PROCESS_PIPE_BYTES};
use capsid_core::sync::lock;
use nix::errno::Errno;
use nix::fcntl::{SpliceFFlags, splice, tee};

use crate::ring::OutputRing;
use crate::spec::RingPolicy;

/// One link's counters and tap, shared by its relay thread and whoever reads them.
#[derive(Debug)]
pub struct Link {
    moved: AtomicU64,
    ended: AtomicBool,
    /// The last rate measured: when, the count then, and bytes per second over the window
    /// before it.
    rate: Mutex<(Instant, u64, u64)>,
    tap: Option<Arc<OutputRing>>,
}

impl Link {
    /// A link; `tap_bytes` keeps that many of the last bytes through it in a ring.
    pub(crate) fn new(tap_bytes: Option<usize>) -> Self {
        Self {
            moved: AtomicU64::new(0),
            ended: AtomicBool::new(false),
            rate: Mutex::new((Instant::now(), 0, 0)),
            tap: tap_bytes.map(|n| Arc::new(OutputRing::new(n, RingPolicy::DropOldest))),
        }
    }

    /// Bytes moved from one stage to the next so far.
    pub fn bytes(&self) -> u64 {
        self.moved.load(Ordering::Relaxed)
    }

    /// Bytes per second over about the last `LINK_RATE_WINDOW` (0 once the link has ended).
    pub fn rate(&self) -> u64 {
        if self.has_ended() {
            return 0;
        }
        let now = Instant::now();
        let moved = self.bytes();
        let mut last = lock(&self.rate);
        let elapsed = now.duration_since(last.0);
        if elapsed >= LINK_RATE_WINDOW {
            let per_second = u128::from(moved - last.1) * 1000 / elapsed.as_millis().max(1);
            *last = (now, moved, u64::try_from(per_second).unwrap_or(u64::MAX));
        }
        last.2
    }

    /// Whether no byte will move any more (either side closed).
    pub fn has_ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }

    /// The ring keeping the last bytes through the link, when it is tapped.
    pub fn tap(&self) -> Option<&Arc<OutputRing>> {
        self.tap.as_ref()
    }
}

/// Moves bytes from `from` (a stage's stdout, blocking) to `to` (the next stage's stdin,
/// blocking) until either side closes, on a thread of its own; then closes both ends, so the
/// writer upstream sees a broken pipe and the reader downstream sees end of input.
pub(crate) fn relay(from: OwnedFd, to: OwnedFd, link: Arc<Link>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("capsid-link".into())
        .spawn(move || {
            // Each link is one hop more than a shell's pipe. Its wake-ups do not preempt the
            // stages (so each finds a longer run waiting), and the pipe it writes into is
            // grown (so each moves a longer run). On a busy CPU a wake-up then waits for the
            // running task's slice (a few ms per hop for a line-at-a-time pipeline), which
            // buys throughput for bulk. Both best effort: without them the bytes still move,
            // only slower.
            if let Err(e) = crate::sys::schedule_as_batch() {
                tracing::debug!(error = %e, "a pipeline link runs under the default policy");
            }
            let size = i32::try_from(LINK_PIPE_BYTES).unwrap_or(i32::MAX);
            if let Err(e) = nix::fcntl::fcntl(&to, nix::fcntl::FcntlArg::F_SETPIPE_SZ(size)) {
                tracing::debug!(error = %e, "a pipeline link keeps the default pipe size");
            }
            let moved = match link.tap.clone() {
                None => move_all(&from, &to, &link),
                Some(ring) => move_tapped(&from, &to, &link, &ring),
            };
            if let Err(e) = moved {
                tracing::debug!(error = %e, "a pipeline link ended on an error");
            }
            // Ended before either side can see it: the stage after reads its end of input
            // only once `to` is closed below.
            link.ended.store(true, Ordering::Release);
            if let Some(ring) = &link.tap {
                ring.close();
            }
            drop((from, to));
        })
        .map(drop)
}

/// Moves up to `len` bytes; `Ok(0)` at end of input or when the reader is gone.
fn splice_some(from: &OwnedFd, to: &OwnedFd, len: usize) -> Result<usize, Errno> {
    loop {
        match splice(
            from.as_fd(),
            None,
            to.as_fd(),
            None,
            len,
            SpliceFFlags::SPLICE_F_MOVE,
        ) {
            Err(Errno::EINTR) => {}
            // Downstream closed its stdin: nothing more can move.
            Err(Errno::EPIPE) => return Ok(0),
            other => return other,
        }
    }
}

fn move_all(from: &OwnedFd, to: &OwnedFd, link: &Link) -> Result<(), Errno> {
    loop {
        let n = splice_some(from, to, PROCESS_PIPE_BYTES)?;
        if n == 0 {
            return Ok(());
        }
        link.moved.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// As [`move_all`], each run of bytes first copied (`tee`) into a pipe of the tap's own and
/// read from there into the ring.
fn move_tapped(from: &OwnedFd, to: &OwnedFd, link: &Link, ring: &OutputRing) -> Result<(), Errno> {
    let (tap_read, tap_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let mut buf = vec![0u8; PROCESS_PIPE_BYTES.min(64 * 1024)];
    loop {
        // The tap pipe is empty here (everything teed was read back), so it takes `buf.len()`.
        let copied = loop {
            match tee(
                from.as_fd(),
                tap_write.as_fd(),
                buf.len(),
                SpliceFFlags::empty(),
            ) {
                Err(Errno::EINTR) => {}
                other => break other?,
            }
        };
        if copied == 0 {
            return Ok(());
        }
        let mut read = 0;
        while read < copied {
            match nix::unistd::read(&tap_read, &mut buf[read..copied]) {
                Err(Errno::EINTR) => {}
                Ok(0) => return Err(Errno::EIO),
                Ok(n) => read += n,
                Err(e) => return Err(e),
            }
        }
        // Move exactly what was copied: the next tee starts where this splice ends. The tap
        // keeps only what went through.
        let mut moved = 0;
        while moved < copied {
            let n = splice_some(from, to, copied - moved)?;
            if n == 0 {
                break;
            }
            moved += n;
            link.moved.fetch_add(n as u64, Ordering::Relaxed);
        }
        ring.push(&buf[..moved]);
        if moved < copied {
            return Ok(());
        }
    }
}
