//! Locks, one policy. A lock is poisoned when a thread panicked while holding it. capsid's
//! critical sections leave their data whole at every step (a push, an assignment, a take),
//! so the data behind a poisoned lock is still good: it is recovered and used, never skipped.
//! Skipping would silently drop a state change, a task to abort or a cgroup to remove.
//!
//! The one exception is authority: the capability store's caches fail closed on a poisoned
//! lock (a check denies, every token counts as revoked), and the memory KV backend answers
//! an error, since its callers handle errors already.

use std::sync::{Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Locks `m`, recovering it if poisoned.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Read-locks `l`, recovering it if poisoned.
pub fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(PoisonError::into_inner)
}

/// Write-locks `l`, recovering it if poisoned.
pub fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poisoned_lock_is_recovered_with_its_data() {
        let m = std::sync::Arc::new(Mutex::new(vec![1]));
        let poisoner = m.clone();
        let _ = std::thread::spawn(move || {
            let mut g = poisoner.lock().unwrap_or_else(PoisonError::into_inner);
            g.push(2);
            panic!("poison it");
        })
        .join();
        assert!(m.is_poisoned());
        lock(&m).push(3);
        assert_eq!(*lock(&m), [1, 2, 3]);
        let l = RwLock::new(0);
        *write(&l) += 1;
        assert_eq!(*read(&l), 1);
    }
}
