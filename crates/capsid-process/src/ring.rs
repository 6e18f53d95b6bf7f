//! A bounded byte ring for one output stream of a child.
//!
//! Offsets are absolute positions in the stream (byte `n` is the `n`-th byte the child ever
//! wrote), so a reader's cursor stays meaningful while the ring moves: [`OutputRing::read_since`]
//! reports how many bytes a cursor missed instead of silently skipping them.

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::sync::Notify;

use crate::spec::RingPolicy;

#[derive(Debug)]
struct State {
    buf: VecDeque<u8>,
    /// Stream offset of `buf[0]`.
    start: u64,
    /// Bytes evicted by `DropOldest`.
    dropped: u64,
    /// The child closed the stream (or the host stopped reading it).
    closed: bool,
}

/// What [`OutputRing::read_since`] returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Since {
    /// The bytes from the cursor (or from the oldest byte kept) on.
    pub bytes: Vec<u8>,
    /// The cursor to pass next time.
    pub next: u64,
    /// Bytes between the cursor and the oldest byte kept: evicted or drained before this
    /// reader saw them.
    pub missed: u64,
}

/// One stream's ring. Shared between the pump that fills it and its readers.
#[derive(Debug)]
pub struct OutputRing {
    capacity: usize,
    policy: RingPolicy,
    state: Mutex<State>,
    /// Signalled when bytes arrive or the stream closes.
    data: Notify,
    /// Signalled when a draining read makes room (backpressure).
    space: Notify,
}

impl OutputRing {
    /// An empty ring of `capacity` bytes.
    pub fn new(capacity: usize, policy: RingPolicy) -> Self {
        Self {
            capacity,
            policy,
            state: Mutex::new(State {
                buf: VecDeque::new(),
                start: 0,
                dropped: 0,
                closed: false,
            }),
            data: Notify::new(),
            space: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A poisoned ring only means a reader panicked mid-copy; the bytes are intact.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Its capacity in bytes.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Its overflow policy.
    pub fn policy(&self) -> RingPolicy {
        self.policy
    }

    /// Room left before the ring is full.
    pub fn free(&self) -> usize {
        self.capacity - self.lock().buf.len()
    }

    /// Appends bytes the child wrote. Under `DropOldest` the oldest bytes make room and are
    /// counted; under `Backpressure` the pump never reads more than [`free`](Self::free).
    pub(crate) fn push(&self, bytes: &[u8]) {
        {
            let mut s = self.lock();
            // Evict first so the buffer never grows past its capacity.
            let over = (s.buf.len() + bytes.len()).saturating_sub(self.capacity);
            let from_buf = over.min(s.buf.len());
            s.buf.drain(..from_buf);
            let keep = &bytes[over - from_buf..];
            s.buf.extend(keep);
            s.start += over as u64;
            s.dropped += over as u64;
        }
        self.data.notify_waiters();
    }

    /// Marks the stream ended.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.data.notify_waiters();
        self.space.notify_waiters();
    }

    /// Waits until the ring has room (backpressure).
    pub(crate) async fn wait_for_space(&self) {
        loop {
            let notified = self.space.notified();
            if self.free() > 0 {
                return;
            }
            notified.await;
        }
    }

    /// Takes up to `max` of the oldest bytes out of the ring.
    pub fn drain(&self, max: usize) -> Vec<u8> {
        let out: Vec<u8> = {
            let mut s = self.lock();
            let n = max.min(s.buf.len());
            let (front, back) = s.buf.as_slices();
            let mut out = Vec::with_capacity(n);
            out.extend_from_slice(&front[..n.min(front.len())]);
            out.extend_from_slice(&back[..n - n.min(front.len())]);
            s.buf.drain(..n);
            s.start += n as u64;
            out
        };
        if !out.is_empty() {
            self.space.notify_waiters();
        }
        out
    }

    /// Up to `max` bytes from stream offset `cursor` on, without taking them out.
    pub fn read_since(&self, cursor: u64, max: usize) -> Since {
        let s = self.lock();
        let from = cursor.max(s.start);
        let missed = from - cursor;
        let skip = usize::try_from(from - s.start).unwrap_or(usize::MAX);
        let bytes: Vec<u8> = s.buf.iter().skip(skip).take(max).copied().collect();
        Since {
            next: from + bytes.len() as u64,
            bytes,
            missed,
        }
    }

    /// Bytes evicted so far (`DropOldest`).
    pub fn dropped(&self) -> u64 {
        self.lock().dropped
    }

    /// Bytes waiting in the ring.
    pub fn len(&self) -> usize {
        self.lock().buf.len()
    }

    /// Whether no bytes are waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the stream has ended.
    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Waits until bytes are waiting or the stream has ended.
    pub async fn ready(&self) {
        loop {
            let notified = self.data.notified();
            {
                let s = self.lock();
                if !s.buf.is_empty() || s.closed {
                    return;
                }
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_oldest_keeps_the_newest_bytes_and_counts_the_rest() {
        let r = OutputRing::new(4, RingPolicy::DropOldest);
        r.push(b"abcdef");
        assert_eq!(r.dropped(), 2);
        assert_eq!(r.read_since(0, 100).bytes, b"cdef");
        assert_eq!(r.read_since(0, 100).missed, 2);
        assert_eq!(r.read_since(4, 100).bytes, b"ef");
        assert_eq!(r.drain(3), b"cde");
        assert_eq!(
            r.read_since(6, 100),
            Since {
                bytes: vec![],
                next: 6,
                missed: 0
            }
        );
        assert_eq!(
            r.read_since(2, 1),
            Since {
                bytes: b"f".to_vec(),
                next: 6,
                missed: 3
            }
        );
    }

    #[test]
    fn a_cursor_from_the_future_reads_nothing() {
        let r = OutputRing::new(8, RingPolicy::Backpressure);
        r.push(b"ab");
        let s = r.read_since(10, 8);
        assert!(s.bytes.is_empty());
        assert_eq!(s.missed, 0);
    }
}
