//! Messages between the brokers of the group and their clients over madsim's network: one
//! request tag every broker listens on, a fresh reply tag per call, `Box<dyn Any>` payloads
//! (no serialisation in a simulation), time-outs on the caller's side. A request a broker
//! cannot answer as leader is answered with a redirect.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use engine::dledger::raft::{AppendReply, AppendRequest, VoteReply, VoteRequest};
use engine::StoredMessage;
use madsim::net::Endpoint;

/// One message to put: the broker scenario's.
pub use crate::broker::rpc::PutMsg;

/// The tag brokers receive requests on.
pub const REQUEST_TAG: u64 = 1;
pub const BROKER_PORT: u16 = 9000;

#[derive(Debug, Clone)]
pub enum Request {
    Vote(VoteRequest),
    Append(AppendRequest, Vec<Vec<u8>>),
    Put(Vec<PutMsg>),
    Get { topic: String, queue_id: u32, offset: u64, max: usize },
}

/// Where an acknowledged message sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    pub index: u64,
    pub term: u64,
    pub queue_offset: u64,
}

#[derive(Debug, Clone)]
pub enum Reply {
    Vote(VoteReply),
    Append(AppendReply),
    /// Per message: acknowledged on a majority's commit, or why not (outcome unknown).
    Put(Vec<Result<Ack, String>>),
    Get(Result<Vec<StoredMessage>, String>),
    /// Not the leader; the member it believes leads (1-based), if any.
    Redirect(Option<u32>),
}

#[derive(Debug, Clone)]
pub struct Envelope {
    pub reply_tag: u64,
    pub request: Request,
}

/// A caller's endpoint: any number of concurrent calls, each with its own reply tag.
pub struct Caller {
    ep: Endpoint,
    /// Reply tags are `caller << 40 | counter`.
    caller: u64,
    next: AtomicU64,
}

impl Caller {
    pub async fn new(caller: u64) -> std::io::Result<Caller> {
        Ok(Caller { ep: Endpoint::bind("0.0.0.0:0").await?, caller, next: AtomicU64::new(0) })
    }

    /// Sends `request` to `to` and waits up to `timeout` for the reply; `None`: no reply.
    pub async fn call(&self, to: SocketAddr, request: Request, timeout: Duration) -> Option<Reply> {
        let reply_tag = (self.caller << 40) | (self.next.fetch_add(1, Ordering::Relaxed) + 1);
        let env = Envelope { reply_tag, request };
        self.ep.send_to_raw(to, REQUEST_TAG, Box::new(env)).await.ok()?;
        let (payload, _) = tokio::time::timeout(timeout, self.ep.recv_from_raw(reply_tag)).await.ok()?.ok()?;
        payload.downcast::<Reply>().ok().map(|b| *b)
    }
}
