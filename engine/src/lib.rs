//! A RocketMQ-style message store. All I/O, time and task spawning go through the seams in
//! [`io`]; the engine knows nothing of simulation and runs unchanged on a real disk.

mod allocate;
pub mod bugs;
pub mod checkpoint;
pub mod commit_log;
pub mod config;
pub mod consume_queue;
mod continued;
pub mod dispatch;
pub mod dledger;
pub mod error;
pub mod expiry;
pub mod flush;
pub mod index;
pub mod io;
pub mod java_hash;
mod locks;
pub mod mapped_file;
pub mod mapped_file_queue;
pub mod message;
pub mod message_log;
mod parts;
pub mod probe;
pub mod recovery;
pub mod store;
pub mod tiered;

pub use bugs::{Bug, BugSet};
pub use config::{FlushMode, StoreConfig};
pub use error::StoreError;
pub use expiry::ExpiryReport;
pub use store::{PutResult, Store, StoreStats, StoredMessage};

#[doc(hidden)]
pub use tracing as __tracing;
