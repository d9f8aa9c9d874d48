//! The simulated object store: the remote store tiered storage uploads to, as its own madsim
//! node, reached over madsim's simulated network.
//!
//! Why a node and not a plugin or a shared map: the store must outlive brokers. A request a
//! broker sent before it was killed is still applied (the message is already on the wire), the
//! contents survive every broker crash, and madsim partitions (`NetSim::clog_link`/`clog_node`)
//! between a broker and the store act on real messages.
//!
//! Shape:
//! - the server is a task on the node named `objstore` (IP [`OBJECT_STORE_IP`]) that receives
//!   requests on one endpoint and serves each in its own task: latency, then a seeded fault
//!   decision, then the operation on an in-memory `BTreeMap`, then the reply (or no reply);
//! - a client (one per broker node) binds a fresh endpoint per request inside the calling
//!   node's context, sends the request as a `Box<dyn Any>` (no serialization) and waits for the
//!   reply on a per-client reply tag under a client-side timeout.
//!
//! Faults, all decided on the server from one `ChaCha8Rng` seeded from the run's seed:
//! latency (uniform range plus `extra_latency_ms`, plus transfer time), injected I/O errors
//! (nothing applied), lost acknowledgements (applied, reply dropped: the client times out),
//! partial appends (a strict prefix applied, then an `Io` error or a dropped reply), failing
//! size queries, and windows of unavailability.
//!
//! A client that times out reports `TimedOutOutcomeUnknown` when the server took the request
//! and `Unavailable` when it certainly did not. The client learns which from the simulator's
//! ground truth (the request table below), never from guessing: on time-out it marks a request
//! the server has not taken as abandoned, and the server discards an abandoned request if it
//! arrives later (a real store rejects requests past their deadline). So `Unavailable` always
//! means "not applied", which is what callers are allowed to assume.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use engine::io::object_store::{validate_key, ObjectError, ObjectStore};
use engine::io::BoxFuture;
use madsim::net::Endpoint;
use madsim::runtime::Handle;
use madsim::task::NodeId;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::trace::Trace;

/// The store node's name (fault plans name it in partitions).
pub const OBJECT_STORE_NODE: &str = "objstore";
/// The store node's IP. Other nodes of a world must not use it (madsim panics on IP conflicts).
pub const OBJECT_STORE_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 255, 0, 1));
/// The port the server listens on.
pub const OBJECT_STORE_PORT: u16 = 9000;
/// The endpoint tag of requests (replies use per-client tags on the client's own endpoint).
const REQUEST_TAG: u64 = 1;
/// Reply tags are this plus the request's id.
const REPLY_TAG_BASE: u64 = 1 << 32;
/// Upper bound on any simulated delay, so absurd configurations (u64::MAX ms) cannot overflow
/// the simulated clock.
const MAX_DELAY_MS: u64 = 24 * 3600 * 1000;

/// Timing of the store. Serialized into case files, hence `deny_unknown_fields`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ObjectStoreConfig {
    /// Uniform range `[lo, hi]` of the server's processing latency per request.
    pub latency_ms: (u64, u64),
    /// How long a client waits for a reply before it reports a time-out.
    pub request_timeout_ms: u64,
    /// Transfer rate of payloads (request data of put/append, response data of get);
    /// 0 means transfers take no time.
    pub bytes_per_ms: u64,
}

impl Default for ObjectStoreConfig {
    fn default() -> Self {
        ObjectStoreConfig { latency_ms: (20, 80), request_timeout_ms: 2000, bytes_per_ms: 100_000 }
    }
}

/// Active fault probabilities (each per request, in `[0, 1]`; values outside, or NaN, are
/// treated as the nearest sane value rather than panicking).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ObjectStoreFaults {
    /// The request fails with an `Io` error; nothing is applied.
    pub error_prob: f64,
    /// The request is applied but its reply is dropped: the client times out.
    pub ack_lost_prob: f64,
    /// An append applies a strict prefix of its bytes, then fails (`Io` or time-out).
    pub partial_append_prob: f64,
    /// A size query fails with an `Io` error.
    pub size_fail_prob: f64,
    /// Added to every request's latency.
    pub extra_latency_ms: u64,
}

/// Counters for checkers and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectStoreStats {
    /// Requests the server took, by operation (`put`, `append`, `get`, `size`, `list`, `delete`).
    pub requests: BTreeMap<String, u64>,
    /// Requests applied whose reply was dropped on purpose.
    pub acks_lost: u64,
    /// Appends that applied only a prefix.
    pub partial_appends: u64,
    /// Injected `Io` errors (including failed size queries).
    pub errors_injected: u64,
    /// Size queries failed on purpose (also counted in `errors_injected`).
    pub size_failures: u64,
    /// Requests refused because the store was in an unavailability window.
    pub unavailable_rejections: u64,
    /// Requests that arrived after their client had given up, and were discarded.
    pub discarded_late: u64,
    /// Client time-outs reported as `TimedOutOutcomeUnknown`.
    pub timeouts_outcome_unknown: u64,
    /// Client time-outs reported as `Unavailable` (the request never reached the server).
    pub timeouts_unavailable: u64,
    /// Requests rejected by the client before sending (invalid key).
    pub rejected_invalid: u64,
}

/// One operation, as sent over the simulated wire.
#[derive(Debug, Clone)]
enum Op {
    Put { key: String, data: Bytes },
    Append { key: String, offset: u64, data: Bytes },
    Get { key: String, offset: u64, len: u64 },
    Size { key: String },
    List { prefix: String },
    Delete { key: String },
}

impl Op {
    fn name(&self) -> &'static str {
        match self {
            Op::Put { .. } => "put",
            Op::Append { .. } => "append",
            Op::Get { .. } => "get",
            Op::Size { .. } => "size",
            Op::List { .. } => "list",
            Op::Delete { .. } => "delete",
        }
    }

    /// Trace event kind (static, as the trace requires).
    fn kind(&self) -> &'static str {
        match self {
            Op::Put { .. } => "obj.put",
            Op::Append { .. } => "obj.append",
            Op::Get { .. } => "obj.get",
            Op::Size { .. } => "obj.size",
            Op::List { .. } => "obj.list",
            Op::Delete { .. } => "obj.delete",
        }
    }

    /// The key, or the prefix for `list` (what error messages name).
    fn key(&self) -> &str {
        match self {
            Op::Put { key, .. }
            | Op::Append { key, .. }
            | Op::Get { key, .. }
            | Op::Size { key }
            | Op::Delete { key } => key,
            Op::List { prefix } => prefix,
        }
    }

    fn request_bytes(&self) -> u64 {
        match self {
            Op::Put { data, .. } | Op::Append { data, .. } => data.len() as u64,
            _ => 0,
        }
    }

    fn validate(&self) -> Result<(), ObjectError> {
        match self {
            // `list` takes a prefix, not a key: any string is a valid prefix (as in LocalObjectStore).
            Op::List { .. } => Ok(()),
            op => validate_key(op.key()),
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Put { key, data } => write!(f, "key={key:?} len={}", data.len()),
            Op::Append { key, offset, data } => write!(f, "key={key:?} off={offset} len={}", data.len()),
            Op::Get { key, offset, len } => write!(f, "key={key:?} off={offset} len={len}"),
            Op::Size { key } | Op::Delete { key } => write!(f, "key={key:?}"),
            Op::List { prefix } => write!(f, "prefix={prefix:?}"),
        }
    }
}

#[derive(Debug)]
struct Request {
    id: u64,
    reply_tag: u64,
    op: Op,
}

#[derive(Debug, Clone, PartialEq)]
enum Value {
    Unit,
    Size(u64),
    Data(Bytes),
    Keys(Vec<String>),
}

type Reply = Result<Value, ObjectError>;

struct Outcome<'a>(&'a Reply);

impl fmt::Display for Outcome<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Ok(Value::Unit) => write!(f, "ok"),
            Ok(Value::Size(n)) => write!(f, "ok size={n}"),
            Ok(Value::Data(d)) => write!(f, "ok bytes={}", d.len()),
            Ok(Value::Keys(k)) => write!(f, "ok keys={}", k.len()),
            Err(e) => write!(f, "err {e}"),
        }
    }
}

/// The server's fault decision for one request.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    None,
    Unavailable,
    Error,
    SizeFail,
    /// Apply, then drop the reply.
    AckLost,
    /// Apply `prefix_len` bytes of the append, then reply `Io` (or drop the reply).
    Partial {
        prefix_len: usize,
        drop_reply: bool,
    },
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::None => write!(f, "none"),
            Fault::Unavailable => write!(f, "unavailable"),
            Fault::Error => write!(f, "error"),
            Fault::SizeFail => write!(f, "size_fail"),
            Fault::AckLost => write!(f, "ack_lost"),
            Fault::Partial { prefix_len, drop_reply } => {
                write!(f, "partial(prefix={prefix_len},{})", if *drop_reply { "no_reply" } else { "io" })
            }
        }
    }
}

/// A request the client has sent and the server has not yet taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    Sent,
    /// The client timed out first and reported `Unavailable`: the server must not apply it.
    Abandoned,
}

struct ServerState {
    objects: BTreeMap<String, Vec<u8>>,
    faults: ObjectStoreFaults,
    unavailable: bool,
    rng: ChaCha8Rng,
    stats: ObjectStoreStats,
    next_request_id: u64,
    /// Requests in flight from client to server; the ground truth a timed-out client consults.
    pending: BTreeMap<u64, Pending>,
}

struct Shared {
    config: ObjectStoreConfig,
    trace: Arc<Trace>,
    server_addr: SocketAddr,
    state: Mutex<ServerState>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, ServerState> {
        // A panic elsewhere must not turn every later request into a panic too.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The server side of the simulated object store. Cheap to share; survives broker crashes.
pub struct SimObjectStore {
    shared: Arc<Shared>,
    node_id: NodeId,
}

impl fmt::Debug for SimObjectStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimObjectStore")
            .field("node_id", &self.node_id)
            .field("addr", &self.shared.server_addr)
            .finish()
    }
}

impl SimObjectStore {
    /// Creates the store node and starts its server. Must be called inside a madsim runtime,
    /// once per runtime (the node's name and IP are fixed).
    pub fn start(config: ObjectStoreConfig, seed: u64, trace: Arc<Trace>) -> Arc<SimObjectStore> {
        let server_addr = SocketAddr::new(OBJECT_STORE_IP, OBJECT_STORE_PORT);
        let state = ServerState {
            objects: BTreeMap::new(),
            faults: ObjectStoreFaults::default(),
            unavailable: false,
            rng: ChaCha8Rng::seed_from_u64(seed),
            stats: ObjectStoreStats::default(),
            next_request_id: 1,
            pending: BTreeMap::new(),
        };
        let shared = Arc::new(Shared { config, trace, server_addr, state: Mutex::new(state) });
        let server = shared.clone();
        // `init` rather than a one-off spawn: should anyone restart the store node, its server
        // comes back (the contents live in `shared`, outside the node).
        let node = Handle::current()
            .create_node()
            .name(OBJECT_STORE_NODE)
            .ip(OBJECT_STORE_IP)
            .init(move || serve(server.clone()))
            .build();
        Arc::new(SimObjectStore { shared, node_id: node.id() })
    }

    /// A client for code running on the node named `client_node` (the broker). It binds an
    /// endpoint per request, inside the calling node's context, so it keeps working across
    /// kills and restarts of that node. The node must have an IP (replies are addressed to it).
    pub fn client(self: &Arc<Self>, client_node: &str) -> Arc<dyn ObjectStore> {
        Arc::new(SimObjectClient { shared: self.shared.clone(), node: client_node.to_string() })
    }

    /// Replaces the active fault probabilities.
    pub fn set_faults(&self, faults: ObjectStoreFaults) {
        self.shared.state().faults = faults;
        crate::trace!(
            self.shared.trace,
            OBJECT_STORE_NODE,
            "obj.faults",
            "error={} ack_lost={} partial={} size_fail={} extra_latency_ms={}",
            faults.error_prob,
            faults.ack_lost_prob,
            faults.partial_append_prob,
            faults.size_fail_prob,
            faults.extra_latency_ms
        );
    }

    pub fn clear_faults(&self) {
        self.set_faults(ObjectStoreFaults::default());
    }

    /// Opens (`true`) or closes (`false`) a window of unavailability: every request taken
    /// while it is open is refused with `Unavailable` and not applied.
    pub fn set_unavailable(&self, unavailable: bool) {
        self.shared.state().unavailable = unavailable;
        crate::trace!(self.shared.trace, OBJECT_STORE_NODE, "obj.unavailable", "{unavailable}");
    }

    /// The store node, for partitions (`NetSim::clog_link(broker, store)`).
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.shared.server_addr
    }

    /// Every object's contents (no network, no faults).
    pub fn objects(&self) -> BTreeMap<String, Bytes> {
        self.shared.state().objects.iter().map(|(k, v)| (k.clone(), Bytes::copy_from_slice(v))).collect()
    }

    pub fn stats(&self) -> ObjectStoreStats {
        self.shared.state().stats.clone()
    }
}

// ---------------------------------------------------------------------------------------------
// Server

/// The server's main loop, on the store node: take each request and serve it in its own task
/// (requests overlap, as on a real store).
async fn serve(shared: Arc<Shared>) {
    let endpoint = match Endpoint::bind(shared.server_addr).await {
        Ok(endpoint) => endpoint,
        Err(e) => {
            crate::trace!(shared.trace, OBJECT_STORE_NODE, "obj.bind_failed", "{e}");
            return;
        }
    };
    loop {
        let (payload, from) = match endpoint.recv_from_raw(REQUEST_TAG).await {
            Ok(received) => received,
            Err(e) => {
                crate::trace!(shared.trace, OBJECT_STORE_NODE, "obj.recv_failed", "{e}");
                return;
            }
        };
        // Only our clients send on this tag, but a foreign payload must not crash the store.
        let Ok(request) = payload.downcast::<Request>() else {
            crate::trace!(shared.trace, OBJECT_STORE_NODE, "obj.garbage", "from={from}");
            continue;
        };
        tokio::spawn(serve_one(shared.clone(), endpoint.clone(), *request, from));
    }
}

async fn serve_one(shared: Arc<Shared>, endpoint: Endpoint, request: Request, from: SocketAddr) {
    let Some(delay_ms) = admit(&shared, &request) else { return };
    tokio::time::sleep(Duration::from_millis(delay_ms)).await;
    let (reply, fault) = execute(&shared, &request);
    if let Ok(Value::Data(data)) = &reply {
        let transfer_ms = transfer_ms(&shared.config, data.len() as u64);
        tokio::time::sleep(Duration::from_millis(transfer_ms)).await;
    }
    if matches!(fault, Fault::AckLost | Fault::Partial { drop_reply: true, .. }) {
        return;
    }
    // A send error or a clogged link loses the reply; the client's time-out covers both.
    let _ = endpoint.send_to_raw(from, request.reply_tag, Box::new(reply)).await;
}

/// Takes a request off the wire: discards it if its client already gave up, otherwise counts
/// it and draws its latency (milliseconds before it is executed).
fn admit(shared: &Shared, request: &Request) -> Option<u64> {
    let mut state = shared.state();
    if state.pending.remove(&request.id) == Some(Pending::Abandoned) {
        state.stats.discarded_late += 1;
        drop(state);
        crate::trace!(
            shared.trace,
            OBJECT_STORE_NODE,
            "obj.discard",
            "req={} {} {}",
            request.id,
            request.op.name(),
            request.op
        );
        return None;
    }
    *state.stats.requests.entry(request.op.name().to_string()).or_insert(0) += 1;
    let (lo, hi) = shared.config.latency_ms;
    let latency_ms = state.rng.gen_range(lo.min(hi)..=lo.max(hi));
    let delay_ms = latency_ms
        .saturating_add(state.faults.extra_latency_ms)
        .saturating_add(transfer_ms(&shared.config, request.op.request_bytes()));
    Some(delay_ms.min(MAX_DELAY_MS))
}

fn transfer_ms(config: &ObjectStoreConfig, bytes: u64) -> u64 {
    match config.bytes_per_ms {
        0 => 0,
        rate => bytes.div_ceil(rate).min(MAX_DELAY_MS),
    }
}

/// Decides the fault, applies the operation (or the part of it the fault allows), records
/// the event, and returns the reply together with the decision.
fn execute(shared: &Shared, request: &Request) -> (Reply, Fault) {
    let mut guard = shared.state();
    let state = &mut *guard;
    let fault = decide_fault(state, &request.op);
    let reply = apply(state, &request.op, fault);
    count_fault(&mut state.stats, fault);
    drop(guard);
    crate::trace!(
        shared.trace,
        OBJECT_STORE_NODE,
        request.op.kind(),
        "req={} {} fault={} -> {}",
        request.id,
        request.op,
        fault,
        Outcome(&reply)
    );
    (reply, fault)
}

/// True with probability `p`, for any `p` (NaN and negatives never fire; `gen_bool` would
/// panic on them).
fn chance(rng: &mut ChaCha8Rng, p: f64) -> bool {
    p > 0.0 && rng.gen::<f64>() < p
}

fn decide_fault(state: &mut ServerState, op: &Op) -> Fault {
    if state.unavailable {
        return Fault::Unavailable;
    }
    let faults = state.faults;
    let rng = &mut state.rng;
    if chance(rng, faults.error_prob) {
        return Fault::Error;
    }
    if let Op::Size { .. } = op {
        if chance(rng, faults.size_fail_prob) {
            return Fault::SizeFail;
        }
    }
    if let Op::Append { key, offset, data } = op {
        // Only an append that would succeed can be torn; a mismatch fails cleanly anyway.
        let current = state.objects.get(key).map_or(0, |o| o.len() as u64);
        if !data.is_empty() && current == *offset && chance(rng, faults.partial_append_prob) {
            let prefix_len = rng.gen_range(0..data.len());
            return Fault::Partial { prefix_len, drop_reply: rng.gen_bool(0.5) };
        }
    }
    if chance(rng, faults.ack_lost_prob) {
        return Fault::AckLost;
    }
    Fault::None
}

fn count_fault(stats: &mut ObjectStoreStats, fault: Fault) {
    match fault {
        Fault::None => {}
        Fault::Unavailable => stats.unavailable_rejections += 1,
        Fault::Error => {
            engine::probe!("object-store.error");
            stats.errors_injected += 1;
        }
        Fault::SizeFail => {
            engine::probe!("object-store.size-failed");
            stats.errors_injected += 1;
            stats.size_failures += 1;
        }
        Fault::AckLost => {
            engine::probe!("object-store.ack-lost");
            stats.acks_lost += 1;
        }
        Fault::Partial { .. } => {
            engine::probe!("object-store.partial-append");
            stats.partial_appends += 1;
        }
    }
}

fn apply(state: &mut ServerState, op: &Op, fault: Fault) -> Reply {
    // The server is the authority on keys even though our client checks them first.
    op.validate()?;
    let key = op.key().to_string();
    let op_name = op.name().to_string();
    match fault {
        Fault::Unavailable => return Err(ObjectError::Unavailable { op: op_name, key }),
        Fault::Error => return Err(injected_io(op_name, key, "injected I/O error")),
        Fault::SizeFail => return Err(injected_io(op_name, key, "injected size query failure")),
        Fault::Partial { prefix_len, .. } => {
            if let Op::Append { data, .. } = op {
                let prefix = data.get(..prefix_len).unwrap_or_default();
                state.objects.entry(key.clone()).or_default().extend_from_slice(prefix);
            }
            return Err(injected_io(op_name, key, "connection reset during append"));
        }
        Fault::None | Fault::AckLost => {}
    }
    apply_op(&mut state.objects, op)
}

fn injected_io(op: String, key: String, message: &str) -> ObjectError {
    ObjectError::Io { op, key, message: message.to_string() }
}

/// The operation itself, with `LocalObjectStore`'s semantics.
fn apply_op(objects: &mut BTreeMap<String, Vec<u8>>, op: &Op) -> Reply {
    match op {
        Op::Put { key, data } => {
            objects.insert(key.clone(), data.to_vec());
            Ok(Value::Unit)
        }
        Op::Append { key, offset, data } => {
            let actual = objects.get(key).map_or(0, |o| o.len() as u64);
            if actual != *offset {
                return Err(ObjectError::OffsetMismatch { key: key.clone(), expected: *offset, actual });
            }
            let object = objects.entry(key.clone()).or_default();
            object.extend_from_slice(data);
            Ok(Value::Size(object.len() as u64))
        }
        Op::Get { key, offset, len } => get_range(objects, key, *offset, *len).map(Value::Data),
        Op::Size { key } => match objects.get(key) {
            Some(object) => Ok(Value::Size(object.len() as u64)),
            None => Err(ObjectError::NotFound { key: key.clone() }),
        },
        Op::List { prefix } => {
            Ok(Value::Keys(objects.keys().filter(|k| k.starts_with(prefix.as_str())).cloned().collect()))
        }
        Op::Delete { key } => {
            objects.remove(key);
            Ok(Value::Unit)
        }
    }
}

fn get_range(objects: &BTreeMap<String, Vec<u8>>, key: &str, offset: u64, len: u64) -> Result<Bytes, ObjectError> {
    let object = objects.get(key).ok_or_else(|| ObjectError::NotFound { key: key.to_string() })?;
    let size = object.len() as u64;
    let out_of_bounds = || ObjectError::RangeOutOfBounds { key: key.to_string(), offset, len, size };
    let end = offset.checked_add(len).filter(|end| *end <= size).ok_or_else(out_of_bounds)?;
    // Both bounds are <= size, which is a usize, so the conversions cannot fail; still no unwrap.
    let range = usize::try_from(offset).ok().zip(usize::try_from(end).ok()).ok_or_else(out_of_bounds)?;
    object.get(range.0..range.1).map(Bytes::copy_from_slice).ok_or_else(out_of_bounds)
}

// ---------------------------------------------------------------------------------------------
// Client

/// A broker's view of the store: implements the engine's `ObjectStore` seam over the
/// simulated network.
struct SimObjectClient {
    shared: Arc<Shared>,
    /// The node this client is meant to run on (trace label).
    node: String,
}

impl fmt::Debug for SimObjectClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimObjectClient").field("node", &self.node).field("server", &self.shared.server_addr).finish()
    }
}

impl SimObjectClient {
    async fn call(&self, op: Op) -> Reply {
        if let Err(e) = op.validate() {
            self.shared.state().stats.rejected_invalid += 1;
            crate::trace!(self.shared.trace, &self.node, "obj.reject", "{} {} -> err {e}", op.name(), op);
            return Err(e);
        }
        let (op_name, key) = (op.name(), op.key().to_string());
        let id = self.register();
        // The reply tag is the request's id, unique in the world: a late reply to a request
        // of an earlier incarnation of this node (a fresh client whose endpoint may get the
        // same port) can never be taken for the reply to a later one, as a new process's
        // connection never receives the old one's replies.
        let reply_tag = REPLY_TAG_BASE + id;
        let timeout = Duration::from_millis(self.shared.config.request_timeout_ms.min(MAX_DELAY_MS));
        let request = Request { id, reply_tag, op };
        match tokio::time::timeout(timeout, self.round_trip(request)).await {
            Ok(Some(reply)) => reply,
            Ok(None) | Err(_) => Err(self.give_up(id, op_name, key)),
        }
    }

    fn register(&self) -> u64 {
        let mut state = self.shared.state();
        let id = state.next_request_id;
        state.next_request_id += 1;
        state.pending.insert(id, Pending::Sent);
        id
    }

    /// Sends the request from a fresh endpoint bound on the calling node and awaits the reply.
    /// `None` when no reply can come (bind or receive failed); the caller then treats it as a
    /// time-out.
    async fn round_trip(&self, request: Request) -> Option<Reply> {
        let endpoint = Endpoint::bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0)).await.ok()?;
        let reply_tag = request.reply_tag;
        endpoint.send_to_raw(self.shared.server_addr, REQUEST_TAG, Box::new(request)).await.ok()?;
        let (payload, _) = endpoint.recv_from_raw(reply_tag).await.ok()?;
        match payload.downcast::<Reply>() {
            Ok(reply) => Some(*reply),
            Err(_) => Some(Err(ObjectError::Io {
                op: "reply".to_string(),
                key: String::new(),
                message: "malformed reply".to_string(),
            })),
        }
    }

    /// The request got no reply in time: `TimedOutOutcomeUnknown` if the server took it,
    /// otherwise `Unavailable`, and the server is told to discard it should it still arrive.
    fn give_up(&self, id: u64, op: &'static str, key: String) -> ObjectError {
        let mut state = self.shared.state();
        let reached_server = match state.pending.get_mut(&id) {
            Some(pending) => {
                *pending = Pending::Abandoned;
                false
            }
            None => true,
        };
        if reached_server {
            state.stats.timeouts_outcome_unknown += 1;
        } else {
            state.stats.timeouts_unavailable += 1;
        }
        drop(state);
        let outcome = if reached_server { "outcome_unknown" } else { "unavailable" };
        crate::trace!(self.shared.trace, &self.node, "obj.timeout", "req={id} {op} key={key:?} -> {outcome}");
        let op = op.to_string();
        if reached_server {
            ObjectError::TimedOutOutcomeUnknown { op, key }
        } else {
            ObjectError::Unavailable { op, key }
        }
    }
}

/// Maps a reply whose value has the wrong shape to an error instead of panicking.
fn unexpected(op: &str, key: &str, value: Value) -> ObjectError {
    ObjectError::Io { op: op.to_string(), key: key.to_string(), message: format!("unexpected reply {value:?}") }
}

impl ObjectStore for SimObjectClient {
    fn put<'a>(&'a self, key: &'a str, data: Bytes) -> BoxFuture<'a, Result<(), ObjectError>> {
        Box::pin(async move {
            match self.call(Op::Put { key: key.to_string(), data }).await? {
                Value::Unit => Ok(()),
                other => Err(unexpected("put", key, other)),
            }
        })
    }

    fn append<'a>(
        &'a self,
        key: &'a str,
        expected_offset: u64,
        data: Bytes,
    ) -> BoxFuture<'a, Result<u64, ObjectError>> {
        Box::pin(async move {
            match self.call(Op::Append { key: key.to_string(), offset: expected_offset, data }).await? {
                Value::Size(size) => Ok(size),
                other => Err(unexpected("append", key, other)),
            }
        })
    }

    fn get_range<'a>(&'a self, key: &'a str, offset: u64, len: u64) -> BoxFuture<'a, Result<Bytes, ObjectError>> {
        Box::pin(async move {
            match self.call(Op::Get { key: key.to_string(), offset, len }).await? {
                Value::Data(data) => Ok(data),
                other => Err(unexpected("get", key, other)),
            }
        })
    }

    fn size<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<u64, ObjectError>> {
        Box::pin(async move {
            match self.call(Op::Size { key: key.to_string() }).await? {
                Value::Size(size) => Ok(size),
                other => Err(unexpected("size", key, other)),
            }
        })
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<String>, ObjectError>> {
        Box::pin(async move {
            match self.call(Op::List { prefix: prefix.to_string() }).await? {
                Value::Keys(keys) => Ok(keys),
                other => Err(unexpected("list", prefix, other)),
            }
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), ObjectError>> {
        Box::pin(async move {
            match self.call(Op::Delete { key: key.to_string() }).await? {
                Value::Unit => Ok(()),
                other => Err(unexpected("delete", key, other)),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn objects(entries: &[(&str, &[u8])]) -> BTreeMap<String, Vec<u8>> {
        entries.iter().map(|(k, v)| (k.to_string(), v.to_vec())).collect()
    }

    #[test]
    fn store_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<SimObjectStore>();
        assert_send_sync::<SimObjectClient>();
    }

    #[test]
    fn get_range_checks_bounds_without_overflow() {
        let objs = objects(&[("a", b"hello")]);
        assert_eq!(get_range(&objs, "a", 1, 3).unwrap(), Bytes::from_static(b"ell"));
        assert_eq!(get_range(&objs, "a", 5, 0).unwrap(), Bytes::new());
        for (offset, len) in [(0, 6), (6, 0), (u64::MAX, 1), (1, u64::MAX), (u64::MAX, u64::MAX)] {
            assert!(
                matches!(get_range(&objs, "a", offset, len), Err(ObjectError::RangeOutOfBounds { .. })),
                "{offset}+{len}"
            );
        }
        assert!(matches!(get_range(&objs, "b", 0, 0), Err(ObjectError::NotFound { .. })));
    }

    #[test]
    fn chance_never_panics_on_odd_probabilities() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for p in [f64::NAN, -1.0, 0.0, f64::INFINITY, 2.0, f64::NEG_INFINITY] {
            let _ = chance(&mut rng, p);
        }
        assert!(!chance(&mut rng, 0.0));
        assert!(chance(&mut rng, 1.0));
        assert!(!chance(&mut rng, f64::NAN));
    }

    #[test]
    fn append_at_huge_offset_is_a_mismatch() {
        let mut objs = objects(&[("a", b"xy")]);
        let op = Op::Append { key: "a".into(), offset: u64::MAX, data: Bytes::from_static(b"z") };
        assert_eq!(
            apply_op(&mut objs, &op),
            Err(ObjectError::OffsetMismatch { key: "a".into(), expected: u64::MAX, actual: 2 })
        );
    }
}
