//! The simulated object store under each fault it models, each test in its own madsim
//! runtime on its own OS thread, the client used from a broker node as the engine will.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use engine::io::object_store::{ObjectError, ObjectStore};
use madsim::net::NetSim;
use madsim::runtime::{Handle, NodeHandle};
use sim::{ObjectStoreConfig, ObjectStoreFaults, SimObjectStore, Trace};

struct World {
    trace: Arc<Trace>,
    store: Arc<SimObjectStore>,
    broker: NodeHandle,
    client: Arc<dyn ObjectStore>,
}

/// A store node and a broker node ("broker", 10.0.0.1) with a client for it.
fn world(seed: u64, config: ObjectStoreConfig) -> World {
    let trace = Trace::new(false);
    trace.start_clock();
    let store = SimObjectStore::start(config, seed, trace.clone());
    let broker = Handle::current().create_node().name("broker").ip("10.0.0.1".parse().unwrap()).build();
    let client = store.client("broker");
    World { trace, store, broker, client }
}

/// Runs `f(client)` on the broker node and returns its result.
async fn on_broker<T, Fut>(w: &World, f: impl FnOnce(Arc<dyn ObjectStore>) -> Fut) -> T
where
    T: Send + 'static,
    Fut: Future<Output = T> + Send + 'static,
{
    w.broker.spawn(f(w.client.clone())).await.expect("broker task was cancelled")
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn faults(f: impl FnOnce(&mut ObjectStoreFaults)) -> ObjectStoreFaults {
    let mut faults = ObjectStoreFaults::default();
    f(&mut faults);
    faults
}

fn timed_out(op: &str, key: &str) -> ObjectError {
    ObjectError::TimedOutOutcomeUnknown { op: op.into(), key: key.into() }
}

fn unavailable(op: &str, key: &str) -> ObjectError {
    ObjectError::Unavailable { op: op.into(), key: key.into() }
}

fn object(store: &SimObjectStore, key: &str) -> Option<Bytes> {
    store.objects().get(key).cloned()
}

#[test]
fn no_faults_semantics_and_typed_errors() {
    sim::runner::block_on(1, || async {
        let w = world(1, ObjectStoreConfig::default());
        on_broker(&w, |c| async move {
            c.put("t/seg", b("hello")).await.unwrap();
            assert_eq!(c.append("t/log", 0, b("ab")).await, Ok(2));
            assert_eq!(c.append("t/log", 2, b("cd")).await, Ok(4));
            assert_eq!(c.get_range("t/log", 1, 2).await, Ok(b("bc")));
            assert_eq!(c.size("t/seg").await, Ok(5));
            assert_eq!(c.list("t/").await, Ok(vec!["t/log".into(), "t/seg".into()]));
            c.delete("t/seg").await.unwrap();
            assert_eq!(c.list("").await, Ok(vec!["t/log".into()]));
            // Typed errors for bad requests.
            assert_eq!(c.size("t/seg").await, Err(ObjectError::NotFound { key: "t/seg".into() }));
            assert_eq!(
                c.append("t/log", 2, b("x")).await,
                Err(ObjectError::OffsetMismatch { key: "t/log".into(), expected: 2, actual: 4 })
            );
            assert_eq!(
                c.get_range("t/log", 3, 2).await,
                Err(ObjectError::RangeOutOfBounds { key: "t/log".into(), offset: 3, len: 2, size: 4 })
            );
            assert!(matches!(c.put("/bad", b("x")).await, Err(ObjectError::InvalidKey { .. })));
            assert_eq!(c.delete("t/never").await, Ok(()));
        })
        .await;
        assert_eq!(w.store.objects(), BTreeMap::from([("t/log".to_string(), b("abcd"))]));
        let stats = w.store.stats();
        assert_eq!(stats.requests.values().sum::<u64>(), 12, "{stats:?}");
        assert_eq!(stats.rejected_invalid, 1);
        assert!(w.trace.counts().get("obj.append").copied().unwrap_or(0) >= 3);
    });
}

#[test]
fn latency_follows_the_config() {
    sim::runner::block_on(2, || async {
        let config = ObjectStoreConfig { latency_ms: (100, 100), request_timeout_ms: 5000, bytes_per_ms: 1000 };
        let w = world(2, config);
        w.store.set_faults(faults(|f| f.extra_latency_ms = 50));
        let elapsed = on_broker(&w, |c| async move {
            let start = std::time::Instant::now();
            c.put("k", Bytes::from(vec![0u8; 100_000])).await.unwrap();
            start.elapsed()
        })
        .await;
        // 100 ms processing + 50 ms extra + 100 ms transfer + network (1-10 ms each way).
        assert!(elapsed >= Duration::from_millis(250) && elapsed < Duration::from_millis(280), "{elapsed:?}");
    });
}

#[test]
fn lost_ack_applies_but_reports_outcome_unknown() {
    sim::runner::block_on(3, || async {
        let w = world(3, ObjectStoreConfig::default());
        w.store.set_faults(faults(|f| f.ack_lost_prob = 1.0));
        let (append, put, elapsed) = on_broker(&w, |c| async move {
            let start = std::time::Instant::now();
            let append = c.append("k", 0, b("abc")).await;
            let elapsed = start.elapsed();
            (append, c.put("p", b("xyz")).await, elapsed)
        })
        .await;
        assert_eq!(append, Err(timed_out("append", "k")));
        assert_eq!(put, Err(timed_out("put", "p")));
        assert!(elapsed >= Duration::from_millis(2000), "the client waited its time-out: {elapsed:?}");
        assert_eq!(object(&w.store, "k"), Some(b("abc")), "applied although the client saw a failure");
        assert_eq!(object(&w.store, "p"), Some(b("xyz")));
        w.store.clear_faults();
        let (size, retry) =
            on_broker(&w, |c| async move { (c.size("k").await, c.append("k", 0, b("abc")).await) }).await;
        assert_eq!(size, Ok(3), "a later size reveals the data");
        assert_eq!(
            retry,
            Err(ObjectError::OffsetMismatch { key: "k".into(), expected: 0, actual: 3 }),
            "a naive retry is detected, not applied twice"
        );
        assert_eq!(object(&w.store, "k"), Some(b("abc")));
        let stats = w.store.stats();
        assert_eq!((stats.acks_lost, stats.timeouts_outcome_unknown), (2, 2), "{stats:?}");
    });
}

#[test]
fn partial_append_applies_a_strict_prefix_then_fails() {
    sim::runner::block_on(4, || async {
        let w = world(4, ObjectStoreConfig::default());
        w.store.set_faults(faults(|f| f.partial_append_prob = 1.0));
        let data: Bytes = (0..100u8).collect::<Vec<u8>>().into();
        let results = on_broker(&w, {
            let data = data.clone();
            move |c| async move {
                let mut results = Vec::new();
                for i in 0..12 {
                    results.push(c.append(&format!("p/{i}"), 0, data.clone()).await);
                }
                results
            }
        })
        .await;
        w.store.clear_faults();
        let (mut io, mut unknown) = (0, 0);
        for (i, result) in results.into_iter().enumerate() {
            match result {
                Err(ObjectError::Io { .. }) => io += 1,
                Err(ObjectError::TimedOutOutcomeUnknown { .. }) => unknown += 1,
                other => panic!("append {i}: expected a failure, got {other:?}"),
            }
            let key = format!("p/{i}");
            let applied = object(&w.store, &key).unwrap_or_default();
            assert!(applied.len() < data.len(), "strict prefix: {} bytes", applied.len());
            assert_eq!(&applied[..], &data[..applied.len()], "a prefix, not other bytes");
            let size = on_broker(&w, move |c| async move { c.size(&key).await }).await;
            match size {
                Ok(size) => assert_eq!(size, applied.len() as u64, "size reveals the prefix"),
                Err(ObjectError::NotFound { .. }) => assert!(applied.is_empty()),
                Err(e) => panic!("size: {e}"),
            }
        }
        assert!(io > 0 && unknown > 0, "both ways of failing are modelled: io={io} unknown={unknown}");
        assert_eq!(w.store.stats().partial_appends, 12);
    });
}

#[test]
fn injected_errors_apply_nothing() {
    sim::runner::block_on(5, || async {
        let w = world(5, ObjectStoreConfig::default());
        on_broker(&w, |c| async move { c.put("keep", b("1")).await.unwrap() }).await;
        w.store.set_faults(faults(|f| f.error_prob = 1.0));
        let results = on_broker(&w, |c| async move {
            vec![
                c.put("k", b("x")).await.map(|_| 0),
                c.append("k", 0, b("x")).await,
                c.delete("keep").await.map(|_| 0),
                c.size("keep").await,
                c.get_range("keep", 0, 1).await.map(|d| d.len() as u64),
            ]
        })
        .await;
        for result in results {
            assert!(matches!(result, Err(ObjectError::Io { .. })), "{result:?}");
        }
        assert_eq!(w.store.objects(), BTreeMap::from([("keep".to_string(), b("1"))]), "nothing applied");
        assert_eq!(w.store.stats().errors_injected, 5);
    });
}

#[test]
fn size_queries_fail_while_other_requests_succeed() {
    sim::runner::block_on(6, || async {
        let w = world(6, ObjectStoreConfig::default());
        w.store.set_faults(faults(|f| f.size_fail_prob = 1.0));
        let (put, size, get) = on_broker(&w, |c| async move {
            let put = c.put("k", b("abc")).await;
            (put, c.size("k").await, c.get_range("k", 0, 3).await)
        })
        .await;
        assert_eq!(put, Ok(()));
        assert!(matches!(size, Err(ObjectError::Io { ref op, .. }) if op == "size"), "{size:?}");
        assert_eq!(get, Ok(b("abc")));
        w.store.clear_faults();
        assert_eq!(on_broker(&w, |c| async move { c.size("k").await }).await, Ok(3));
        assert_eq!(w.store.stats().size_failures, 1);
    });
}

#[test]
fn unavailability_window_then_recovery() {
    sim::runner::block_on(7, || async {
        let w = world(7, ObjectStoreConfig::default());
        w.store.set_unavailable(true);
        let (put, append, list) =
            on_broker(
                &w,
                |c| async move { (c.put("k", b("x")).await, c.append("a", 0, b("x")).await, c.list("").await) },
            )
            .await;
        assert_eq!(put, Err(unavailable("put", "k")));
        assert_eq!(append, Err(unavailable("append", "a")));
        assert_eq!(list, Err(unavailable("list", "")));
        assert!(w.store.objects().is_empty());
        w.store.set_unavailable(false);
        let (put, list) = on_broker(&w, |c| async move { (c.put("k", b("x")).await, c.list("").await) }).await;
        assert_eq!(put, Ok(()));
        assert_eq!(list, Ok(vec!["k".into()]));
        assert_eq!(w.store.stats().unavailable_rejections, 3);
    });
}

#[test]
fn partitions_turn_requests_into_timeouts() {
    sim::runner::block_on(8, || async {
        let w = world(8, ObjectStoreConfig::default());
        let (broker, store) = (w.broker.id(), w.store.node_id());
        let net = NetSim::current();

        // Requests cannot reach the store: certainly not applied.
        net.clog_link(broker, store);
        let put = on_broker(&w, |c| async move { c.put("a", b("1")).await }).await;
        assert_eq!(put, Err(unavailable("put", "a")));
        net.unclog_link(broker, store);

        // Replies cannot come back: applied, outcome unknown to the client.
        net.clog_link(store, broker);
        let put = on_broker(&w, |c| async move { c.put("b", b("2")).await }).await;
        assert_eq!(put, Err(timed_out("put", "b")));
        net.unclog_link(store, broker);

        // The store cut off altogether.
        net.clog_node(store);
        let append = on_broker(&w, |c| async move { c.append("c", 0, b("3")).await }).await;
        assert_eq!(append, Err(unavailable("append", "c")));
        net.unclog_node(store);

        // Healed: requests succeed again.
        let (put, list) = on_broker(&w, |c| async move { (c.put("d", b("4")).await, c.list("").await) }).await;
        assert_eq!(put, Ok(()));
        assert_eq!(list, Ok(vec!["b".into(), "d".into()]));
        assert_eq!(object(&w.store, "a"), None, "an undelivered request is never applied");
        assert_eq!(object(&w.store, "b"), Some(b("2")));
        let stats = w.store.stats();
        assert_eq!((stats.timeouts_unavailable, stats.timeouts_outcome_unknown), (2, 1), "{stats:?}");
        // The late delivery of an abandoned request must not apply it either.
        madsim::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(object(&w.store, "a"), None);
    });
}

/// With a client time-out shorter than the network's latency, requests are abandoned while on
/// the wire: `Unavailable` must still mean "not applied", even when they arrive later.
#[test]
fn unavailable_always_means_not_applied() {
    sim::runner::block_on(9, || async {
        let config = ObjectStoreConfig { latency_ms: (0, 0), request_timeout_ms: 5, bytes_per_ms: 0 };
        let w = world(9, config);
        let results = on_broker(&w, |c| async move {
            let mut results = Vec::new();
            for i in 0..40 {
                results.push((i, c.put(&format!("k/{i}"), b("x")).await));
            }
            results
        })
        .await;
        madsim::time::sleep(Duration::from_secs(1)).await;
        let objects = w.store.objects();
        let mut seen = BTreeMap::new();
        for (i, result) in results {
            let applied = objects.contains_key(&format!("k/{i}"));
            match result {
                Ok(()) => assert!(applied),
                Err(ObjectError::Unavailable { .. }) => assert!(!applied, "k/{i} applied after Unavailable"),
                Err(ObjectError::TimedOutOutcomeUnknown { .. }) => {}
                Err(e) => panic!("{e}"),
            }
            *seen.entry(format!("{:?}", result.map_err(|e| e.outcome_unknown()))).or_insert(0) += 1;
        }
        assert!(seen.len() >= 2, "both outcomes exercised: {seen:?}");
        assert!(w.store.stats().discarded_late > 0, "{:?}", w.store.stats());
    });
}

#[test]
fn broker_killed_mid_request_is_still_applied() {
    sim::runner::block_on(10, || async {
        let w = world(10, ObjectStoreConfig::default());
        let data = Bytes::from(vec![7u8; 4096]);
        let in_flight = w.broker.spawn({
            let (c, data) = (w.client.clone(), data.clone());
            async move { c.append("seg/0", 0, data).await }
        });
        // The server's latency is at least 20 ms: at 10 ms the request is sent, not applied.
        madsim::time::sleep(Duration::from_millis(10)).await;
        assert!(w.store.objects().is_empty(), "killed before the store applied it");
        Handle::current().kill(w.broker.id());
        assert!(in_flight.await.is_err(), "the killed broker's task is cancelled");
        madsim::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(object(&w.store, "seg/0"), Some(data.clone()), "applied although its sender died");

        // The store survives, and the same client works from the restarted broker.
        Handle::current().restart(w.broker.id());
        let restarted = Handle::current().get_node(w.broker.id()).unwrap();
        let c = w.client.clone();
        let (size, again) = restarted
            .spawn(async move { (c.size("seg/0").await, c.append("seg/0", 4096, b("more")).await) })
            .await
            .unwrap();
        assert_eq!(size, Ok(4096));
        assert_eq!(again, Ok(4100));
    });
}

/// A restarted broker opens a new client, whose endpoints may get the ports its earlier
/// incarnation had: a reply to a request of the killed incarnation, arriving late, must never
/// be taken for the reply to one of the new client's requests (a new process's connection
/// never receives the old one's replies).
#[test]
fn a_late_reply_to_a_killed_incarnation_answers_nothing() {
    sim::runner::block_on(11, || async {
        let w = world(11, ObjectStoreConfig::default());
        on_broker(&w, |c| async move {
            c.put("small", b("0123456789")).await.unwrap();
            c.put("large", Bytes::from(vec![1u8; 4096])).await.unwrap();
        })
        .await;
        // Each round: a new client's first request in flight, the broker killed and back
        // at once, and the next incarnation's new client asking at once too.
        for round in 0..5 {
            let old = w.store.client("broker");
            drop(w.broker.spawn(async move { old.size("large").await }));
            // Sent (the network takes 1–10 ms), not yet answered (the store takes 20 ms).
            madsim::time::sleep(Duration::from_millis(12)).await;
            Handle::current().kill(w.broker.id());
            Handle::current().restart(w.broker.id());
            let restarted = Handle::current().get_node(w.broker.id()).unwrap();
            let fresh = w.store.client("broker");
            let size = restarted.spawn(async move { fresh.size("small").await }).await.unwrap();
            assert_eq!(size, Ok(10), "round {round}: the small object's size");
            madsim::time::sleep(Duration::from_millis(500)).await;
        }
    });
}

/// A fixed workload under every fault at once, from three concurrent tasks on the broker.
async fn faulty_workload(seed: u64) -> (u64, BTreeMap<String, Bytes>) {
    let w = world(seed, ObjectStoreConfig::default());
    w.store.set_faults(ObjectStoreFaults {
        error_prob: 0.1,
        ack_lost_prob: 0.1,
        partial_append_prob: 0.2,
        size_fail_prob: 0.2,
        extra_latency_ms: 5,
    });
    let mut tasks = Vec::new();
    for t in 0..3 {
        let c = w.client.clone();
        tasks.push(w.broker.spawn(async move {
            let key = format!("d/{t}");
            let mut offset = 0;
            for i in 0..15u8 {
                match c.append(&key, offset, Bytes::from(vec![i; 100])).await {
                    Ok(size) => offset = size,
                    Err(_) => offset = c.size(&key).await.unwrap_or(offset),
                }
                let _ = c.get_range(&key, 0, offset).await;
                let _ = c.list("d/").await;
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    (w.trace.hash(), w.store.objects())
}

#[test]
fn same_seed_same_trace_different_seed_different_trace() {
    let first = sim::runner::block_on(42, || faulty_workload(42));
    let second = sim::runner::block_on(42, || faulty_workload(42));
    assert_eq!(first, second, "same seed, same trace hash and contents");
    let other = sim::runner::block_on(43, || faulty_workload(43));
    assert_ne!(first.0, other.0, "a different seed gives a different trace");
}

/// Garbage keys, huge offsets and lengths, and absurd configurations never panic.
#[test]
fn garbage_never_panics() {
    sim::runner::block_on(11, || async {
        let config = ObjectStoreConfig { latency_ms: (90, 10), request_timeout_ms: u64::MAX, bytes_per_ms: 0 };
        let w = world(11, config);
        w.store.set_faults(ObjectStoreFaults {
            error_prob: f64::NAN,
            ack_lost_prob: -1.0,
            partial_append_prob: 0.3,
            size_fail_prob: 7.0,
            extra_latency_ms: 0,
        });
        on_broker(&w, |c| async move {
            let keys = ["", "/", "a", "a/b", "a\0", "..", "ü/€", "a/.tmp-put", "x".repeat(5000).as_str()]
                .map(|k| k.to_string());
            let numbers = [0, 1, 2, u64::MAX - 1, u64::MAX];
            for key in &keys {
                let _ = c.put(key, b("data")).await;
                for &n in &numbers {
                    let _ = c.append(key, n, b("zz")).await;
                    for &m in &numbers {
                        let _ = c.get_range(key, n, m).await;
                    }
                }
                let _ = c.size(key).await;
                let _ = c.list(key).await;
                let _ = c.delete(key).await;
            }
        })
        .await;
        w.store.clear_faults();
        assert!(w.store.stats().requests.values().sum::<u64>() > 100);
    });
}
