//! The one way the engine takes a std mutex, shared by the store and the services it owns.

use std::sync::{Mutex, MutexGuard};

/// Locks a std mutex; a poisoned lock means a task panicked mid-update, and a panic inside
/// the store is already fatal to the run.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
