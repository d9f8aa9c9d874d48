//! Client–broker messages over madsim's simulated network: one request tag the broker
//! listens on, a fresh reply tag per request, `Box<dyn Any>` payloads (no serialisation in a
//! simulation), client-side time-outs.

use std::net::SocketAddr;
use std::time::Duration;

use engine::StoredMessage;
use madsim::net::Endpoint;

use super::history::{Ack, MsgId};

/// The tag the broker receives requests on.
pub const REQUEST_TAG: u64 = 1;
pub const BROKER_PORT: u16 = 9000;

/// One message to put.
#[derive(Debug, Clone)]
pub struct PutMsg {
    pub id: MsgId,
    pub topic: String,
    pub queue_id: u32,
    pub body: Vec<u8>,
    pub tags: Option<String>,
    pub keys: Vec<String>,
}

#[derive(Debug, Clone)]
pub enum Request {
    /// Several puts, run concurrently on the broker (group commit can share syncs).
    Put(Vec<PutMsg>),
    Get {
        topic: String,
        queue_id: u32,
        offset: u64,
        max: usize,
    },
    /// Messages of `topic` with `key`, any store time (answered with `Reply::Get`).
    QueryKey {
        topic: String,
        key: String,
        max: usize,
    },
}

#[derive(Debug, Clone)]
pub struct Envelope {
    pub reply_tag: u64,
    pub request: Request,
}

#[derive(Debug, Clone)]
pub enum Reply {
    Put(Vec<Result<Ack, String>>),
    Get(Result<Vec<StoredMessage>, String>),
}

/// A client's endpoint and its reply-tag counter.
pub struct Client {
    ep: Endpoint,
    broker: SocketAddr,
    /// Reply tags are `client << 32 | counter`: unique per request.
    client: u64,
    next: u64,
}

impl Client {
    pub async fn new(client: u64, broker: SocketAddr) -> std::io::Result<Client> {
        let ep = Endpoint::bind("0.0.0.0:0").await?;
        Ok(Client { ep, broker, client, next: 0 })
    }

    /// Sends `request` and waits up to `timeout` for its reply; `None`: no reply in time
    /// (the outcome is unknown).
    pub async fn call(&mut self, request: Request, timeout: Duration) -> Option<Reply> {
        self.next += 1;
        let reply_tag = (self.client << 32) | self.next;
        let env = Envelope { reply_tag, request };
        self.ep.send_to_raw(self.broker, REQUEST_TAG, Box::new(env)).await.ok()?;
        let (payload, _) = tokio::time::timeout(timeout, self.ep.recv_from_raw(reply_tag)).await.ok()?.ok()?;
        payload.downcast::<Reply>().ok().map(|b| *b)
    }
}
