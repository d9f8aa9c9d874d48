//! The engine's I/O seams: everything the store does to the outside world goes through here.
//!
//! The engine sees only these traits. Production implements them over std::fs, memmap2, a
//! local directory and the system clock (`real`); the `sim` crate implements them over a
//! simulated disk with a page cache and power loss, a simulated object store and skewed
//! clocks. Nothing outside this module may touch `std::fs`, `memmap2` or the wall clock.
//! (Timers and task spawning go through the `tokio` API, which madsim simulates.)

pub mod clock;
pub mod holds;
pub mod object_store;
pub mod real;
#[cfg(all(feature = "s3", not(madsim)))]
pub mod s3;
pub mod storage;

use std::future::Future;
use std::pin::Pin;

pub use clock::{Clock, SystemClock};
pub use holds::{BufferPool, Hold, HoldCounter, HoldKind, HoldSummary, Holds, PooledBuffer};
pub use object_store::{ObjectError, ObjectStore};
pub use storage::{DirEntry, FileLock, IoError, IoOp, Storage, StorageFile};

/// A boxed, sendable future: the seams are object-safe so that one engine binary can be
/// handed either backend at run time.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
