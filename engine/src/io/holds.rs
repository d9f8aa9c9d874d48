//! Accounting of holds on mapped files and pooled buffers.
//!
//! RocketMQ's mapped files are reference-counted (`hold`/`release`) and its transient store
//! pool lends fixed buffers; a forgotten release (class D) keeps expired files mapped and
//! drains the pool. Here every hold is a counted token, so a checker can ask, when the store
//! is idle, what is still held and by whom.
//!
//! One `Holds` belongs to one engine instance (one process lifetime): a crash drops it with
//! the process, as the kernel drops a dead process's mappings.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

/// What is being held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HoldKind {
    /// A reference on a mapped file (RocketMQ `MappedFile.hold`).
    MappedFile,
    /// A buffer borrowed from a pool (RocketMQ `TransientStorePool.borrowBuffer`).
    PooledBuffer,
}

/// Outstanding holds on one resource.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct HoldSummary {
    pub kind: HoldKind,
    pub resource: String,
    pub count: u64,
}

#[derive(Default)]
struct Counts {
    by_resource: BTreeMap<(HoldKind, String), u64>,
}

/// The registry of outstanding holds. Cloning shares the registry.
#[derive(Clone, Default)]
pub struct Holds {
    inner: Arc<Mutex<Counts>>,
}

impl fmt::Debug for Holds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Holds").field("outstanding", &self.outstanding()).finish()
    }
}

impl Holds {
    pub fn new() -> Holds {
        Holds::default()
    }

    fn counts(&self) -> MutexGuard<'_, Counts> {
        // A poisoned lock only means another task panicked mid-update of plain counters;
        // the counts are still the best information there is.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a hold; it is released when the token is dropped.
    pub fn acquire(&self, kind: HoldKind, resource: &str) -> Hold {
        *self.counts().by_resource.entry((kind, resource.to_string())).or_insert(0) += 1;
        Hold { holds: self.clone(), kind, resource: resource.to_string(), leaked: false }
    }

    /// Every resource with a non-zero count, sorted.
    pub fn outstanding(&self) -> Vec<HoldSummary> {
        self.counts()
            .by_resource
            .iter()
            .filter(|(_, &count)| count > 0)
            .map(|((kind, resource), &count)| HoldSummary { kind: *kind, resource: resource.clone(), count })
            .collect()
    }

    /// Total outstanding holds of one kind.
    pub fn count(&self, kind: HoldKind) -> u64 {
        self.counts().by_resource.iter().filter(|((k, _), _)| *k == kind).map(|(_, c)| c).sum()
    }

    /// Outstanding holds on one resource.
    pub fn count_on(&self, kind: HoldKind, resource: &str) -> u64 {
        self.counts().by_resource.get(&(kind, resource.to_string())).copied().unwrap_or(0)
    }

    fn release(&self, kind: HoldKind, resource: &str) {
        let mut counts = self.counts();
        let count = counts.by_resource.get_mut(&(kind, resource.to_string()));
        match count {
            Some(c) if *c > 0 => *c -= 1,
            // A release without a hold would make the accounting lie; that is a bug in this
            // module, never a consequence of bytes read from disk.
            _ => panic!("release of {kind:?} {resource} without a hold"),
        }
    }
}

/// A counted hold, released on drop.
pub struct Hold {
    holds: Holds,
    kind: HoldKind,
    resource: String,
    leaked: bool,
}

impl Hold {
    pub fn kind(&self) -> HoldKind {
        self.kind
    }

    pub fn resource(&self) -> &str {
        &self.resource
    }

    /// Forgets the hold without releasing it: the count stays up for ever. This exists only
    /// so the bug catalogue can re-create RocketMQ's forgotten `release()` (class D).
    pub fn leak(mut self) {
        self.leaked = true;
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        if !self.leaked {
            self.holds.release(self.kind, &self.resource);
        }
    }
}

impl fmt::Debug for Hold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hold({:?} {})", self.kind, self.resource)
    }
}

/// A fixed pool of equal-sized buffers (RocketMQ's transient store pool). Borrowing takes a
/// `PooledBuffer` hold; returning it (dropping it) puts the buffer back.
#[derive(Clone)]
pub struct BufferPool {
    name: String,
    buffer_size_bytes: usize,
    free: Arc<Mutex<Vec<Vec<u8>>>>,
    capacity: usize,
    holds: Holds,
}

impl fmt::Debug for BufferPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BufferPool")
            .field("name", &self.name)
            .field("capacity", &self.capacity)
            .field("available", &self.available())
            .finish()
    }
}

impl BufferPool {
    pub fn new(name: &str, buffers: usize, buffer_size_bytes: usize, holds: Holds) -> BufferPool {
        let free = (0..buffers).map(|_| vec![0u8; buffer_size_bytes]).collect();
        BufferPool {
            name: name.to_string(),
            buffer_size_bytes,
            free: Arc::new(Mutex::new(free)),
            capacity: buffers,
            holds,
        }
    }

    fn free(&self) -> MutexGuard<'_, Vec<Vec<u8>>> {
        self.free.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Borrows a zeroed buffer, or `None` if the pool is exhausted.
    pub fn borrow(&self) -> Option<PooledBuffer> {
        let mut data = self.free().pop()?;
        data.fill(0);
        let hold = self.holds.acquire(HoldKind::PooledBuffer, &self.name);
        Some(PooledBuffer { data: Some(data), pool: self.clone(), hold: Some(hold) })
    }

    pub fn available(&self) -> usize {
        self.free().len()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn buffer_size_bytes(&self) -> usize {
        self.buffer_size_bytes
    }
}

/// A buffer on loan from a `BufferPool`.
pub struct PooledBuffer {
    data: Option<Vec<u8>>,
    pool: BufferPool,
    hold: Option<Hold>,
}

impl PooledBuffer {
    pub fn as_slice(&self) -> &[u8] {
        self.data.as_deref().unwrap_or(&[])
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        self.data.as_deref_mut().unwrap_or(&mut [])
    }

    /// Never returns the buffer: the bug catalogue's "buffer not returned to the pool".
    pub fn leak(mut self) {
        self.data = None;
        if let Some(hold) = self.hold.take() {
            hold.leak();
        }
    }
}

impl Drop for PooledBuffer {
    fn drop(&mut self) {
        if let Some(data) = self.data.take() {
            self.pool.free().push(data);
        }
    }
}

impl fmt::Debug for PooledBuffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PooledBuffer({}, {} bytes)", self.pool.name, self.as_slice().len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_are_counted_and_released_on_drop() {
        let holds = Holds::new();
        let a = holds.acquire(HoldKind::MappedFile, "00000000000000000000");
        let b = holds.acquire(HoldKind::MappedFile, "00000000000000000000");
        assert_eq!(holds.count(HoldKind::MappedFile), 2);
        drop(a);
        assert_eq!(holds.count_on(HoldKind::MappedFile, "00000000000000000000"), 1);
        b.leak();
        assert_eq!(holds.outstanding().len(), 1, "a leaked hold stays outstanding");
    }

    #[test]
    fn pool_lends_and_takes_back() {
        let holds = Holds::new();
        let pool = BufferPool::new("transient", 2, 16, holds.clone());
        let mut a = pool.borrow().expect("first");
        a.as_mut_slice()[0] = 7;
        let b = pool.borrow().expect("second");
        assert!(pool.borrow().is_none(), "pool of 2 is exhausted");
        assert_eq!(holds.count(HoldKind::PooledBuffer), 2);
        drop(a);
        let c = pool.borrow().expect("returned buffer is lent again");
        assert_eq!(c.as_slice()[0], 0, "buffers come back zeroed");
        b.leak();
        drop(c);
        assert_eq!(pool.available(), 1);
        assert_eq!(holds.count(HoldKind::PooledBuffer), 1);
    }
}
