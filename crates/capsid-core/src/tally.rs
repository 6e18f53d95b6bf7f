//! Live counts by standing, kept as each counted thing moves, so that reading them costs two
//! atomic loads however many things there are (what `status` reads).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::sync::lock;

/// Where a counted thing stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// Serving.
    Ready,
    /// Failed.
    Failed,
    /// Anything else (loading, stopped, reloading).
    Other,
}

/// Counts of things by standing.
#[derive(Debug, Default)]
pub struct Tally {
    ready: AtomicUsize,
    failed: AtomicUsize,
}

impl Tally {
    fn counter(&self, standing: Standing) -> Option<&AtomicUsize> {
        match standing {
            Standing::Ready => Some(&self.ready),
            Standing::Failed => Some(&self.failed),
            Standing::Other => None,
        }
    }

    /// Counts one more thing standing at `standing`.
    pub fn add(&self, standing: Standing) {
        if let Some(c) = self.counter(standing) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts one thing standing at `standing` less (never below zero).
    pub fn remove(&self, standing: Standing) {
        if let Some(c) = self.counter(standing) {
            let _ = c.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        }
    }

    /// Things ready.
    pub fn ready(&self) -> usize {
        self.ready.load(Ordering::Relaxed)
    }

    /// Things failed.
    pub fn failed(&self) -> usize {
        self.failed.load(Ordering::Relaxed)
    }
}

/// One thing's place in a tally (in none until it [`join`](Self::join)s one). Its owner
/// keeps it beside the state it counts and calls it under the same lock, so a count never
/// sees a move half made.
#[derive(Debug, Default)]
pub struct TallyMember(std::sync::Mutex<Option<Arc<Tally>>>);

impl TallyMember {
    /// Joins `tally`, counted at `standing` (leaving the one it was in, if any).
    pub fn join(&self, tally: Arc<Tally>, standing: Standing) {
        let mut member = lock(&self.0);
        if let Some(old) = member.take() {
            old.remove(standing);
        }
        tally.add(standing);
        *member = Some(tally);
    }

    /// Leaves its tally, where it was counted at `standing`.
    pub fn leave(&self, standing: Standing) {
        if let Some(old) = lock(&self.0).take() {
            old.remove(standing);
        }
    }

    /// Moves it from `from` to `to` in its tally, if it is in one.
    pub fn moved(&self, from: Standing, to: Standing) {
        if from == to {
            return;
        }
        if let Some(tally) = &*lock(&self.0) {
            tally.remove(from);
            tally.add(to);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_is_counted_where_it_stands_until_it_leaves() {
        let tally = Arc::new(Tally::default());
        let (a, b) = (TallyMember::default(), TallyMember::default());
        a.moved(Standing::Other, Standing::Ready);
        assert_eq!(tally.ready(), 0, "not counted before it joins");
        a.join(tally.clone(), Standing::Ready);
        b.join(tally.clone(), Standing::Other);
        assert_eq!((tally.ready(), tally.failed()), (1, 0));
        b.moved(Standing::Other, Standing::Failed);
        a.moved(Standing::Ready, Standing::Failed);
        assert_eq!((tally.ready(), tally.failed()), (0, 2));
        a.leave(Standing::Failed);
        a.leave(Standing::Failed);
        assert_eq!(
            (tally.ready(), tally.failed()),
            (0, 1),
            "leaving twice counts once"
        );
        tally.remove(Standing::Ready);
        assert_eq!(tally.ready(), 0, "never below zero");
    }
}
