//! What the caller of one tool call holds while it runs: a way to cancel it, and the latest
//! progress its capsule reported through `capsid:host/progress`.

use capsid_core::limits::MAX_PROGRESS_MESSAGE_BYTES;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How far a tool call is, as its capsule last reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// Units done.
    pub done: u64,
    /// Units in all, when the capsule knows.
    pub total: Option<u64>,
    /// A short message (at most `MAX_PROGRESS_MESSAGE_BYTES`).
    pub message: Option<String>,
}

/// The handle on one tool call: cancel it with [`CallControl::cancel`], watch its progress
/// with [`CallControl::watch_progress`]. Cloning shares the call.
#[derive(Debug, Clone, Default)]
pub struct CallControl {
    cancelled: CancellationToken,
    progress: Option<watch::Sender<Option<Progress>>>,
}

impl CallControl {
    /// A control for a call nobody cancels or watches.
    pub fn new() -> Self {
        Self::default()
    }

    /// A control cancelled when `token` is (and by [`CallControl::cancel`], which cancels
    /// only this call).
    pub fn cancelled_by(token: &CancellationToken) -> Self {
        Self {
            cancelled: token.child_token(),
            progress: None,
        }
    }

    /// Cancels the call: a guest running wasm is interrupted at the next epoch tick, one
    /// waiting in a host call is dropped after `HOST_CALL_GRACE`. The instance is dropped
    /// (its background children with it); the capsule stays ready.
    pub fn cancel(&self) {
        self.cancelled.cancel();
    }

    /// Whether the call was cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.is_cancelled()
    }

    /// Resolves once the call is cancelled.
    pub async fn cancellation(&self) {
        self.cancelled.cancelled().await;
    }

    /// Starts collecting the capsule's progress reports: the receiver sees the latest one
    /// (reports between two reads are coalesced).
    pub fn watch_progress(&mut self) -> watch::Receiver<Option<Progress>> {
        let (tx, rx) = watch::channel(None);
        self.progress = Some(tx);
        rx
    }

    /// Passes on a report, if anyone watches.
    pub(crate) fn report(&self, done: u64, total: Option<u64>, message: Option<String>) {
        let Some(tx) = &self.progress else {
            return;
        };
        let message = message.map(|mut m| {
            let mut end = m.len().min(MAX_PROGRESS_MESSAGE_BYTES);
            while !m.is_char_boundary(end) {
                end -= 1;
            }
            m.truncate(end);
            m
        });
        tx.send_replace(Some(Progress {
            done,
            total,
            message,
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_coalesce_and_long_messages_are_cut_on_a_char_boundary() {
        let mut control = CallControl::new();
        // Nobody watching: nowhere to go, and no error.
        control.report(1, None, None);
        let rx = control.watch_progress();
        control.report(1, Some(10), None);
        control.report(2, Some(10), Some("é".repeat(MAX_PROGRESS_MESSAGE_BYTES)));
        let latest = rx.borrow().clone().unwrap_or_else(|| panic!("no report"));
        assert_eq!(latest.done, 2);
        let message = latest.message.unwrap_or_default();
        assert!(message.len() <= MAX_PROGRESS_MESSAGE_BYTES);
        assert!(message.len() > MAX_PROGRESS_MESSAGE_BYTES - 2);
    }

    #[test]
    fn a_parent_token_cancels_the_call_and_a_call_does_not_cancel_its_parent() {
        let parent = CancellationToken::new();
        let one = CallControl::cancelled_by(&parent);
        let two = CallControl::cancelled_by(&parent);
        one.cancel();
        assert!(one.is_cancelled());
        assert!(!two.is_cancelled() && !parent.is_cancelled());
        parent.cancel();
        assert!(two.is_cancelled());
    }
}
