//! Collects the coverage probes one run reaches (`engine::probe!`, see `engine::probe`).
//!
//! The collector is a `tracing` subscriber installed as the run thread's default for the
//! run's length only (every run has its own thread), so no state crosses runs. Probe events
//! are counted; everything else is passed on to the dispatcher that was in force before
//! (`dst replay`'s log output), so collecting probes never hides the engine's warnings.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::Interest;
use tracing::{Dispatch, Event, Metadata, Subscriber};

use crate::trace::Trace;

/// One probe hit at a simulated time (kept only when the run keeps its trace).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeHit {
    pub time_us: u64,
    pub name: String,
}

/// What one run's probes recorded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProbeLog {
    /// Hits per probe name.
    pub counts: BTreeMap<String, u64>,
    /// Every hit in order (only when asked for).
    pub hits: Vec<ProbeHit>,
}

struct Shared {
    log: Mutex<ProbeLog>,
    keep_hits: bool,
    trace: Arc<Trace>,
}

/// Handle to read what the collector gathered once the run is over.
#[derive(Clone)]
pub struct ProbeCollector {
    shared: Arc<Shared>,
}

impl ProbeCollector {
    /// A collector timing hits by `trace`'s simulated clock; `keep_hits` keeps each hit.
    pub fn new(trace: Arc<Trace>, keep_hits: bool) -> ProbeCollector {
        ProbeCollector { shared: Arc::new(Shared { log: Mutex::new(ProbeLog::default()), keep_hits, trace }) }
    }

    /// The dispatcher to install on the run thread; other events go to `fallback`.
    pub fn dispatch(&self, fallback: Dispatch) -> Dispatch {
        Dispatch::new(ProbeSubscriber { shared: self.shared.clone(), fallback })
    }

    pub fn take(&self) -> ProbeLog {
        std::mem::take(&mut *self.log())
    }

    fn log(&self) -> MutexGuard<'_, ProbeLog> {
        self.shared.log.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn is_probe(metadata: &Metadata<'_>) -> bool {
    metadata.target() == engine::probe::TARGET
}

struct ProbeSubscriber {
    shared: Arc<Shared>,
    fallback: Dispatch,
}

/// Reads the `name` field of a probe event.
#[derive(Default)]
struct NameVisitor(Option<String>);

impl Visit for NameVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "name" {
            self.0 = Some(value.to_string());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "name" && self.0.is_none() {
            self.0 = Some(format!("{value:?}"));
        }
    }
}

impl Subscriber for ProbeSubscriber {
    fn register_callsite(&self, metadata: &'static Metadata<'static>) -> Interest {
        if is_probe(metadata) {
            Interest::always()
        } else {
            self.fallback.register_callsite(metadata)
        }
    }

    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        is_probe(metadata) || self.fallback.enabled(metadata)
    }

    fn event(&self, event: &Event<'_>) {
        if !is_probe(event.metadata()) {
            self.fallback.event(event);
            return;
        }
        let mut name = NameVisitor::default();
        event.record(&mut name);
        let name = name.0.unwrap_or_else(|| "unnamed".to_string());
        let s = &self.shared;
        let time_us = if s.keep_hits { s.trace.now_us() } else { 0 };
        let mut log = s.log.lock().unwrap_or_else(|e| e.into_inner());
        if s.keep_hits {
            log.hits.push(ProbeHit { time_us, name: name.clone() });
        }
        *log.counts.entry(name).or_insert(0) += 1;
    }

    fn new_span(&self, span: &Attributes<'_>) -> Id {
        self.fallback.new_span(span)
    }

    fn record(&self, span: &Id, values: &Record<'_>) {
        self.fallback.record(span, values);
    }

    fn record_follows_from(&self, span: &Id, follows: &Id) {
        self.fallback.record_follows_from(span, follows);
    }

    fn enter(&self, span: &Id) {
        self.fallback.enter(span);
    }

    fn exit(&self, span: &Id) {
        self.fallback.exit(span);
    }

    fn clone_span(&self, id: &Id) -> Id {
        self.fallback.clone_span(id)
    }

    fn try_close(&self, id: Id) -> bool {
        self.fallback.try_close(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_probes_on_this_thread_only_and_passes_other_events_on() {
        let trace = Trace::new(true);
        let collector = ProbeCollector::new(trace, true);
        let dispatch = collector.dispatch(Dispatch::none());
        tracing::dispatcher::with_default(&dispatch, || {
            engine::probe!("test.a");
            engine::probe!("test.a");
            engine::probe!("test.b");
            tracing::warn!("not a probe");
            std::thread::spawn(|| engine::probe!("test.other-thread")).join().ok();
        });
        engine::probe!("test.after");
        let log = collector.take();
        assert_eq!(log.counts.get("test.a"), Some(&2));
        assert_eq!(log.counts.get("test.b"), Some(&1));
        assert_eq!(log.counts.len(), 2, "{:?}", log.counts);
        assert_eq!(log.hits.len(), 3);
    }
}
