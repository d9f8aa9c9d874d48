//! One conformance suite for the object-store seam, written once over
//! `Arc<dyn engine::io::ObjectStore>` and run against every backend: the real
//! `LocalObjectStore` on a temporary directory, and `SimObjectStore` with faults off (and, in
//! `engine/tests/s3_object_store.rs`, the S3 backend; the suite is `object_store_suite/`).
//!
//! The engine is tested on the simulated store and shipped on a real one, so any difference
//! between them here is a difference the tests would hide.

mod object_store_suite;

use std::sync::Arc;

use engine::io::object_store::ObjectStore;
use engine::io::real::LocalObjectStore;
use madsim::runtime::Handle;
use object_store_suite::conformance;
use sim::{ObjectStoreConfig, SimObjectStore, Trace};

#[test]
fn local_object_store_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("objects");
    sim::runner::block_on(1, move || async move {
        let store: Arc<dyn ObjectStore> = Arc::new(LocalObjectStore::new(root).unwrap());
        conformance(store).await;
    });
}

#[test]
fn sim_object_store_conforms() {
    sim::runner::block_on(1, || async {
        let trace = Trace::new(false);
        let store = SimObjectStore::start(ObjectStoreConfig::default(), 1, trace);
        let broker = Handle::current().create_node().name("broker").ip("10.0.0.1".parse().unwrap()).build();
        let client = store.client("broker");
        broker.spawn(conformance(client)).await.unwrap();
        let stats = store.stats();
        assert_eq!(stats.acks_lost + stats.partial_appends + stats.errors_injected, 0);
        assert_eq!(stats.timeouts_outcome_unknown + stats.timeouts_unavailable, 0);
    });
}
