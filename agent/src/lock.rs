//! One way to take a lock on shared state.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `m`, tolerating poison: a thread that panicked while holding it
/// leaves data that is still consistent enough to report, and the agent must
/// keep serving rather than panic in turn.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
