//! The group's messages (`wire`) over TCP, real build only: a `Client` carries any number of
//! concurrent calls on one connection (replies paired by call id), `serve` answers the
//! requests of every connection a listener accepts. Both ends write through one task per
//! connection that gathers every frame queued meanwhile into one `write` (many producers'
//! puts, or an append and its heartbeat, share a segment), with Nagle's delay off.
//!
//! A connection that delivers a malformed frame is closed: after a bad length or CRC the
//! stream cannot be resynchronised, and every call waiting on it fails rather than hangs.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

use super::wire::{
    decode_payload, encode_frame, payload_len, Body, Frame, Reply, Request, WireError, FRAME_HEADER_BYTES,
    MAX_FRAME_BYTES,
};

/// Why a call got no reply.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("malformed frame: {0}")]
    Wire(#[from] WireError),
    #[error("connection closed")]
    Closed,
    #[error("no reply within {0:?}")]
    Timeout(Duration),
}

/// Reads one frame; `Closed` at a clean end of stream between frames.
pub async fn read_frame(r: &mut BufReader<OwnedReadHalf>, buf: &mut Vec<u8>) -> Result<Frame, NetError> {
    let mut header = [0u8; FRAME_HEADER_BYTES];
    match r.read_exact(&mut header).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(NetError::Closed),
        Err(e) => return Err(e.into()),
    }
    let len = payload_len(&header, MAX_FRAME_BYTES)?;
    buf.clear();
    buf.resize(len, 0);
    r.read_exact(buf).await?;
    Ok(decode_payload(&header, buf)?)
}

/// Writes what is queued, gathering everything queued meanwhile into one write.
async fn write_frames(mut w: OwnedWriteHalf, mut rx: mpsc::UnboundedReceiver<Vec<u8>>) {
    let mut out = Vec::new();
    while let Some(first) = rx.recv().await {
        out.clear();
        out.extend_from_slice(&first);
        while let Ok(more) = rx.try_recv() {
            out.extend_from_slice(&more);
        }
        if w.write_all(&out).await.is_err() {
            return;
        }
    }
}

fn encoded(frame: &Frame) -> Vec<u8> {
    let mut out = Vec::new();
    encode_frame(frame, &mut out);
    out
}

type Pending = Arc<StdMutex<BTreeMap<u64, oneshot::Sender<Reply>>>>;

/// One open connection of a client.
struct Conn {
    tx: mpsc::UnboundedSender<Vec<u8>>,
    pending: Pending,
    dead: Arc<AtomicBool>,
}

impl Conn {
    async fn open(addr: SocketAddr) -> std::io::Result<Conn> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (r, w) = stream.into_split();
        let (tx, rx) = mpsc::unbounded_channel();
        let pending: Pending = Arc::default();
        let dead = Arc::new(AtomicBool::new(false));
        let d = dead.clone();
        tokio::spawn(async move {
            write_frames(w, rx).await;
            // A failed write: the next call opens a new connection.
            d.store(true, Ordering::SeqCst);
        });
        let (p, d) = (pending.clone(), dead.clone());
        tokio::spawn(async move {
            let mut r = BufReader::with_capacity(256 << 10, r);
            let mut buf = Vec::new();
            while let Ok(Frame { id, body: Body::Reply(reply) }) = read_frame(&mut r, &mut buf).await {
                let waiter = p.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
                if let Some(w) = waiter {
                    let _ = w.send(reply);
                }
            }
            // Closed, broken or a malformed frame: the waiting calls fail now, the next
            // ones open a new connection.
            d.store(true, Ordering::SeqCst);
            p.lock().unwrap_or_else(|e| e.into_inner()).clear();
        });
        Ok(Conn { tx, pending, dead })
    }
}

/// Calls to one address, over one connection opened on first use and again after it broke.
pub struct Client {
    addr: SocketAddr,
    conn: tokio::sync::Mutex<Option<Arc<Conn>>>,
    next_id: AtomicU64,
}

impl Client {
    pub fn new(addr: SocketAddr) -> Client {
        Client { addr, conn: tokio::sync::Mutex::new(None), next_id: AtomicU64::new(1) }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    async fn conn(&self, timeout: Duration) -> Result<Arc<Conn>, NetError> {
        let mut g = self.conn.lock().await;
        if let Some(c) = g.as_ref().filter(|c| !c.dead.load(Ordering::SeqCst)) {
            return Ok(c.clone());
        }
        let c =
            tokio::time::timeout(timeout, Conn::open(self.addr)).await.map_err(|_| NetError::Timeout(timeout))??;
        let c = Arc::new(c);
        *g = Some(c.clone());
        Ok(c)
    }

    /// Sends `request` and waits up to `timeout` (connecting included) for its reply.
    pub async fn call(&self, request: Request, timeout: Duration) -> Result<Reply, NetError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let conn = self.conn(timeout).await?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        conn.pending.lock().unwrap_or_else(|e| e.into_inner()).insert(id, tx);
        if conn.dead.load(Ordering::SeqCst)
            || conn.tx.send(encoded(&Frame { id, body: Body::Request(request) })).is_err()
        {
            conn.pending.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
            return Err(NetError::Closed);
        }
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => Err(NetError::Closed),
            Err(_) => {
                conn.pending.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
                Err(NetError::Timeout(timeout))
            }
        }
    }
}

/// Answers the requests of every connection `listener` accepts, each in its own task;
/// `handle` returning `None` leaves a request unanswered (the caller times out).
pub async fn serve<H, F>(listener: TcpListener, handle: H)
where
    H: Fn(Request) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Option<Reply>> + Send + 'static,
{
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve_conn(stream, handle.clone()));
    }
}

async fn serve_conn<H, F>(stream: TcpStream, handle: H)
where
    H: Fn(Request) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Option<Reply>> + Send + 'static,
{
    let (r, w) = stream.into_split();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(write_frames(w, rx));
    let mut r = BufReader::with_capacity(256 << 10, r);
    let mut buf = Vec::new();
    loop {
        let frame = match read_frame(&mut r, &mut buf).await {
            Ok(f) => f,
            Err(NetError::Closed) => return,
            Err(e) => {
                tracing::warn!("closing a connection: {e}");
                return;
            }
        };
        // A reply sent to a server answers nothing of its own: dropped.
        let Body::Request(request) = frame.body else { continue };
        let (handle, tx) = (handle.clone(), tx.clone());
        tokio::spawn(async move {
            if let Some(reply) = handle(request).await {
                let _ = tx.send(encoded(&Frame { id: frame.id, body: Body::Reply(reply) }));
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dledger::raft::VoteReply;
    use crate::dledger::wire::PutMsg;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
    }

    /// Concurrent calls on one connection each get their own reply; garbage on a connection
    /// closes it without taking the server down.
    #[test]
    fn calls_pair_with_replies_and_garbage_closes_one_connection() {
        runtime().block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("addr");
            tokio::spawn(serve(listener, |req: Request| async move {
                match req {
                    Request::Put(msgs) => Some(Reply::Redirect(Some(msgs.len() as u32))),
                    Request::Vote(v) => Some(Reply::Vote(VoteReply { term: v.term, from: 9, granted: true })),
                    _ => None,
                }
            }));
            let client = Arc::new(Client::new(addr));
            let mut calls = Vec::new();
            for n in 0..20usize {
                let c = client.clone();
                calls.push(tokio::spawn(async move {
                    let msg = PutMsg { topic: "t".into(), queue_id: 0, body: vec![1; n], tags: None, keys: vec![] };
                    (n, c.call(Request::Put(vec![msg; n]), Duration::from_secs(5)).await)
                }));
            }
            for c in calls {
                let (n, reply) = c.await.expect("task");
                assert_eq!(reply.expect("reply"), Reply::Redirect(Some(n as u32)));
            }
            let unanswered = Request::Get { topic: "t".into(), queue_id: 0, offset: 0, max: 1 };
            let r = client.call(unanswered, Duration::from_millis(100)).await;
            assert!(matches!(r, Err(NetError::Timeout(_))), "{r:?}");

            let mut raw = TcpStream::connect(addr).await.expect("connect");
            raw.write_all(&[0xff; 64]).await.expect("write");
            let mut rest = Vec::new();
            assert_eq!(raw.read_to_end(&mut rest).await.expect("closed by the server"), 0);
            let vote = Request::Vote(crate::dledger::raft::VoteRequest { term: 3, candidate: 1, last: None });
            let r = client.call(vote, Duration::from_secs(5)).await.expect("the server still answers");
            assert_eq!(r, Reply::Vote(VoteReply { term: 3, from: 9, granted: true }));
        });
    }
}
