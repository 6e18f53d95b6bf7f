//! Each capsule's log: what it writes through `log`, its stdout and stderr. Lines are kept in
//! a bounded in-memory ring (older lines are dropped and counted) and forwarded to `tracing`.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use capsid_core::CapsuleId;
use capsid_core::limits::{CAPSULE_LOG_LINES, MAX_LOG_LINE_BYTES};
use capsid_core::sync::lock;

/// Severity of a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    /// Very fine detail.
    Trace,
    /// Detail for debugging.
    Debug,
    /// Normal operation.
    Info,
    /// Something looks wrong.
    Warn,
    /// Something failed.
    Error,
}

/// Where a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogSource {
    /// The capsule's `log` calls.
    Guest,
    /// The capsule's WASI stdout.
    Stdout,
    /// The capsule's WASI stderr.
    Stderr,
    /// The runtime, about the capsule (failures, dropped events).
    Host,
}

/// One line of a capsule's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// Position in the capsule's log, from 1.
    pub seq: u64,
    /// Milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// Severity.
    pub level: LogLevel,
    /// Origin.
    pub source: LogSource,
    /// The text: control characters other than tab escaped, cut to `MAX_LOG_LINE_BYTES`.
    pub message: String,
}

#[derive(Debug, Default)]
struct Ring {
    lines: VecDeque<LogLine>,
    next_seq: u64,
    dropped: u64,
}

/// A capsule's log ring. Clones share the ring.
#[derive(Debug, Clone)]
pub struct CapsuleLog {
    capsule: CapsuleId,
    ring: Arc<Mutex<Ring>>,
}

/// `message` with control characters (other than tab) escaped, cut at a character boundary
/// to at most `max` bytes.
pub(crate) fn sanitize(message: &str, max: usize) -> String {
    let mut out = String::with_capacity(message.len().min(max));
    for c in message.chars() {
        let piece: String = if c.is_control() && c != '\t' {
            c.escape_default().collect()
        } else {
            c.into()
        };
        if out.len() + piece.len() > max {
            break;
        }
        out.push_str(&piece);
    }
    out
}

impl CapsuleLog {
    /// An empty log for `capsule`.
    pub fn new(capsule: CapsuleId) -> Self {
        Self {
            capsule,
            ring: Arc::default(),
        }
    }

    /// Appends a line (sanitized and cut) and forwards it to `tracing`.
    pub fn push(&self, level: LogLevel, source: LogSource, message: &str) {
        let message = sanitize(message, MAX_LOG_LINE_BYTES);
        let capsule = self.capsule.as_str();
        match level {
            LogLevel::Trace => tracing::trace!(capsule, ?source, "{message}"),
            LogLevel::Debug => tracing::debug!(capsule, ?source, "{message}"),
            LogLevel::Info => tracing::info!(capsule, ?source, "{message}"),
            LogLevel::Warn => tracing::warn!(capsule, ?source, "{message}"),
            LogLevel::Error => tracing::error!(capsule, ?source, "{message}"),
        }
        self.keep(level, source, message);
    }

    /// Appends a line (sanitized and cut) to the ring only: for what a native program writes
    /// as fast as it likes, which must not flood the runtime's own log.
    pub fn push_quiet(&self, level: LogLevel, source: LogSource, message: &str) {
        self.keep(level, source, sanitize(message, MAX_LOG_LINE_BYTES));
    }

    fn keep(&self, level: LogLevel, source: LogSource, message: String) {
        let time_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let mut ring = lock(&self.ring);
        ring.next_seq += 1;
        let seq = ring.next_seq;
        if ring.lines.len() == CAPSULE_LOG_LINES {
            ring.lines.pop_front();
            ring.dropped += 1;
        }
        ring.lines.push_back(LogLine {
            seq,
            time_ms,
            level,
            source,
            message,
        });
    }

    /// Lines with a sequence number above `after`, oldest first (`0` for all kept lines).
    pub fn since(&self, after: u64) -> Vec<LogLine> {
        lock(&self.ring)
            .lines
            .iter()
            .filter(|l| l.seq > after)
            .cloned()
            .collect()
    }

    /// Lines dropped from the ring because it was full.
    pub fn dropped(&self) -> u64 {
        lock(&self.ring).dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_escapes_controls_and_cuts_on_char_boundaries() {
        assert_eq!(sanitize("a\tb\nc\u{1b}", 100), "a\tb\\nc\\u{1b}");
        assert_eq!(sanitize("ééé", 5), "éé");
        assert_eq!(sanitize("abc", 0), "");
    }

    #[test]
    fn ring_keeps_the_newest_lines_and_counts_the_rest() {
        let log = CapsuleLog::new(CapsuleId::new("t").unwrap_or_else(|e| panic!("{e}")));
        for i in 0..CAPSULE_LOG_LINES + 5 {
            log.push(LogLevel::Info, LogSource::Guest, &i.to_string());
        }
        let lines = log.since(0);
        assert_eq!(lines.len(), CAPSULE_LOG_LINES);
        assert_eq!(log.dropped(), 5);
        assert_eq!(lines[0].message, "5");
        assert_eq!(log.since(lines[lines.len() - 2].seq).len(), 1);
    }
}
