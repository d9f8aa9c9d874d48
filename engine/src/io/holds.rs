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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// What is being held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HoldKind {
    /// A reference on a mapped file (RocketMQ `MappedFile.hold`).
    MappedFile,
    /// A buffer borrowed from a pool (RocketMQ `TransientStorePool.borrowBuffer`).
    PooledBuffer,
    /// A permit of a bounded task pool (the tiered dispatcher's semaphore).
    Permit,
}

/// Outstanding holds on one resource.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct HoldSummary {
    pub kind: HoldKind,
    pub resource: String,
    pub count: u64,
}

/// The count of one resource. Holds on it change only the atomic: dispatch takes a hold per
/// index entry, and the registry lookup with two `String`s and a `format!` per hold was ~5%
/// of dispatch's samples.
#[derive(Debug)]
struct Counter {
    kind: HoldKind,
    resource: String,
    count: AtomicU64,
}

type Registry = BTreeMap<(HoldKind, String), Arc<Counter>>;

/// The registry of outstanding holds. Cloning shares the registry.
#[derive(Clone, Default)]
pub struct Holds {
    inner: Arc<Mutex<Registry>>,
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

    fn registry(&self) -> MutexGuard<'_, Registry> {
        // A poisoned lock only means another task panicked mid-update of plain counters;
        // the counts are still the best information there is.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The counter of one resource, for a resource held often: `HoldCounter::acquire` takes
    /// no lock. Every counter of a resource is the same count.
    pub fn counter(&self, kind: HoldKind, resource: &str) -> HoldCounter {
        let mut reg = self.registry();
        // Counters of resources gone for good (no holds, no handle) are dropped here, so
        // that a long run rolling many files keeps a registry of the live ones.
        reg.retain(|_, c| c.count.load(Ordering::SeqCst) > 0 || Arc::strong_count(c) > 1);
        let c = reg
            .entry((kind, resource.to_string()))
            .or_insert_with(|| Arc::new(Counter { kind, resource: resource.to_string(), count: AtomicU64::new(0) }));
        HoldCounter { counter: c.clone() }
    }

    /// Takes a hold; it is released when the token is dropped.
    pub fn acquire(&self, kind: HoldKind, resource: &str) -> Hold {
        self.counter(kind, resource).acquire()
    }

    fn counts(&self) -> Vec<HoldSummary> {
        self.registry()
            .values()
            .map(|c| HoldSummary { kind: c.kind, resource: c.resource.clone(), count: c.count.load(Ordering::SeqCst) })
            .collect()
    }

    /// Every resource with a non-zero count, sorted.
    pub fn outstanding(&self) -> Vec<HoldSummary> {
        self.counts().into_iter().filter(|h| h.count > 0).collect()
    }

    /// Total outstanding holds of one kind.
    pub fn count(&self, kind: HoldKind) -> u64 {
        self.counts().iter().filter(|h| h.kind == kind).map(|h| h.count).sum()
    }

    /// Outstanding holds on one resource.
    pub fn count_on(&self, kind: HoldKind, resource: &str) -> u64 {
        self.registry().get(&(kind, resource.to_string())).map_or(0, |c| c.count.load(Ordering::SeqCst))
    }
}

/// Takes holds on one resource without the registry's lock.
#[derive(Clone)]
pub struct HoldCounter {
    counter: Arc<Counter>,
}

impl HoldCounter {
    pub fn acquire(&self) -> Hold {
        self.counter.count.fetch_add(1, Ordering::SeqCst);
        Hold { counter: self.counter.clone(), leaked: false }
    }
}

impl fmt::Debug for HoldCounter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HoldCounter({:?} {})", self.counter.kind, self.counter.resource)
    }
}

/// A counted hold, released on drop.
pub struct Hold {
    counter: Arc<Counter>,
    leaked: bool,
}

impl Hold {
    pub fn kind(&self) -> HoldKind {
        self.counter.kind
    }

    pub fn resource(&self) -> &str {
        &self.counter.resource
    }

    /// A second hold on the same resource.
    pub fn clone_hold(&self) -> Hold {
        self.counter.count.fetch_add(1, Ordering::SeqCst);
        Hold { counter: self.counter.clone(), leaked: false }
    }

    /// Forgets the hold without releasing it: the count stays up for ever. This exists only
    /// so the bug catalogue can re-create RocketMQ's forgotten `release()` (class D).
    pub fn leak(mut self) {
        self.leaked = true;
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        if self.leaked {
            return;
        }
        let before = self.counter.count.fetch_sub(1, Ordering::SeqCst);
        // A release without a hold would make the accounting lie; that is a bug in this
        // module, never a consequence of bytes read from disk.
        assert!(before > 0, "release of {:?} {} without a hold", self.counter.kind, self.counter.resource);
    }
}

impl fmt::Debug for Hold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hold({:?} {})", self.counter.kind, self.counter.resource)
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

    /// Borrows a buffer, or `None` if the pool is exhausted. It holds whatever its last user
    /// left in it (zeros at first): zeroing a whole buffer here, on the put path at every
    /// roll (a 1 GiB `memset` under the commit-log lock, faulting in each page of a buffer
    /// never used yet), halved transient-pool appends.
    pub fn borrow(&self) -> Option<PooledBuffer> {
        let data = self.free().pop()?;
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
    fn counters_of_one_resource_share_its_count() {
        let holds = Holds::new();
        let c = holds.counter(HoldKind::MappedFile, "index/1");
        let a = c.acquire();
        let b = holds.acquire(HoldKind::MappedFile, "index/1");
        assert_eq!(holds.count_on(HoldKind::MappedFile, "index/1"), 2);
        drop((a, b));
        assert_eq!(holds.count_on(HoldKind::MappedFile, "index/1"), 0);
        let leaked = c.acquire();
        drop(c);
        leaked.leak();
        // No handle is left, but the hold is: it must survive the registry's pruning.
        let _other = holds.counter(HoldKind::MappedFile, "other");
        assert_eq!(holds.count_on(HoldKind::MappedFile, "index/1"), 1);
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
        assert_eq!(c.as_slice()[0], 7, "a buffer comes back as its last user left it");
        b.leak();
        drop(c);
        assert_eq!(pool.available(), 1);
        assert_eq!(holds.count(HoldKind::PooledBuffer), 1);
    }
}
