//! DLedger's messages as bytes, for a byte stream between the members of a group and their
//! clients: Raft's votes and appends (with their entry batches), puts (acknowledged or
//! redirected to the leader) and gets of committed messages.
//!
//! A frame is `[payload length: u32][CRC32 of the payload: u32][payload]`, little-endian; the
//! payload is `[call id: u64][kind: u8][fields]`. The call id pairs a reply with its request on
//! a connection that carries many calls at once. Decoding bytes from the network never
//! panics and never allocates past what the frame holds: a frame over the size limit, a CRC
//! mismatch, an unknown kind, a truncated field or trailing bytes are `WireError`s.

use crate::store::StoredMessage;

use super::raft::{AppendReply, AppendRequest, MemberId, VoteReply, VoteRequest};

/// The frame header: payload length and payload CRC.
pub const FRAME_HEADER_BYTES: usize = 8;
/// The default limit on a frame's payload (an append batch or a get reply).
pub const MAX_FRAME_BYTES: usize = 64 << 20;

/// One message to put.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutMsg {
    pub topic: String,
    pub queue_id: u32,
    pub body: Vec<u8>,
    pub tags: Option<String>,
    pub keys: Vec<String>,
}

/// Where an acknowledged message sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    pub index: u64,
    pub term: u64,
    pub queue_offset: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Vote(VoteRequest),
    /// The request's header and the entries it announces, each whole as the leader's log holds it.
    Append(AppendRequest, Vec<Vec<u8>>),
    Put(Vec<PutMsg>),
    /// Up to `max` committed messages of a queue from `offset` on (leader only).
    Get {
        topic: String,
        queue_id: u32,
        offset: u64,
        max: usize,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Vote(VoteReply),
    Append(AppendReply),
    /// Per message: acknowledged on a majority's commit, or why not (outcome unknown).
    Put(Vec<Result<Ack, String>>),
    Get(Result<Vec<StoredMessage>, String>),
    /// Not the leader; the member it believes leads, if any.
    Redirect(Option<MemberId>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    Request(Request),
    Reply(Reply),
}

/// One frame: a request or the reply to the request of the same `id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub id: u64,
    pub body: Body,
}

/// Bytes that are not a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("frame of {size_bytes} bytes exceeds the limit of {limit_bytes}")]
    TooLarge { size_bytes: u64, limit_bytes: u64 },
    #[error("frame CRC mismatch: header says {expected:#010x}, payload has {actual:#010x}")]
    CrcMismatch { expected: u32, actual: u32 },
    #[error("frame ends inside {what}")]
    Truncated { what: &'static str },
    #[error("unknown {what} tag {tag}")]
    UnknownTag { what: &'static str, tag: u8 },
    #[error("{what} is not UTF-8")]
    BadUtf8 { what: &'static str },
    #[error("{what} out of range: {value}")]
    BadValue { what: &'static str, value: u64 },
    #[error("{bytes} bytes after the message")]
    Trailing { bytes: usize },
}

// Kinds of payload.
const VOTE_REQUEST: u8 = 1;
const APPEND_REQUEST: u8 = 2;
const PUT_REQUEST: u8 = 3;
const GET_REQUEST: u8 = 4;
const VOTE_REPLY: u8 = 11;
const APPEND_REPLY: u8 = 12;
const PUT_REPLY: u8 = 13;
const GET_REPLY: u8 = 14;
const REDIRECT_REPLY: u8 = 15;

/// Appends `frame`, header included, to `out`.
pub fn encode_frame(frame: &Frame, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0u8; FRAME_HEADER_BYTES]);
    let mut w = Writer(out);
    w.u64(frame.id);
    match &frame.body {
        Body::Request(r) => w.request(r),
        Body::Reply(r) => w.reply(r),
    }
    let payload = &out[start + FRAME_HEADER_BYTES..];
    let len = u32::try_from(payload.len()).expect("a frame under 4 GiB");
    let crc = crc32fast::hash(payload);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// The payload length a frame header announces, checked against `limit_bytes` before anything
/// is allocated for it.
pub fn payload_len(header: &[u8; FRAME_HEADER_BYTES], limit_bytes: usize) -> Result<usize, WireError> {
    let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes"));
    if len as u64 > limit_bytes as u64 {
        return Err(WireError::TooLarge { size_bytes: u64::from(len), limit_bytes: limit_bytes as u64 });
    }
    Ok(len as usize)
}

/// Decodes a payload under its header (whose length `payload` must already have).
pub fn decode_payload(header: &[u8; FRAME_HEADER_BYTES], payload: &[u8]) -> Result<Frame, WireError> {
    let expected = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
    let actual = crc32fast::hash(payload);
    if expected != actual {
        return Err(WireError::CrcMismatch { expected, actual });
    }
    let mut r = Reader(payload);
    let id = r.u64("call id")?;
    let kind = r.u8("kind")?;
    let body = match kind {
        VOTE_REQUEST => Body::Request(Request::Vote(VoteRequest {
            term: r.u64("term")?,
            candidate: r.u32("candidate")?,
            last: r.opt_pair("last entry")?,
        })),
        APPEND_REQUEST => {
            let request = AppendRequest {
                term: r.u64("term")?,
                leader: r.u32("leader")?,
                prev: r.opt_pair("prev entry")?,
                entries: r.usize("entry count")?,
                leader_commit: r.opt_u64("leader commit")?,
            };
            let entries = r.list("entries", |r| r.bytes("entry"))?;
            Body::Request(Request::Append(request, entries))
        }
        PUT_REQUEST => Body::Request(Request::Put(r.list("put", Reader::put_msg)?)),
        GET_REQUEST => Body::Request(Request::Get {
            topic: r.string("topic")?,
            queue_id: r.u32("queue id")?,
            offset: r.u64("offset")?,
            max: r.usize("max")?,
        }),
        VOTE_REPLY => Body::Reply(Reply::Vote(VoteReply {
            term: r.u64("term")?,
            from: r.u32("from")?,
            granted: r.bool("granted")?,
        })),
        APPEND_REPLY => Body::Reply(Reply::Append(AppendReply {
            term: r.u64("term")?,
            from: r.u32("from")?,
            matched: r.opt_u64("matched")?,
            success: r.bool("success")?,
            next_hint: r.u64("next hint")?,
        })),
        PUT_REPLY => Body::Reply(Reply::Put(r.list("put result", |r| {
            r.result("put result", |r| {
                Ok(Ack { index: r.u64("index")?, term: r.u64("term")?, queue_offset: r.u64("queue offset")? })
            })
        })?)),
        GET_REPLY => Body::Reply(Reply::Get(r.result("get result", |r| r.list("message", Reader::stored))?)),
        REDIRECT_REPLY => Body::Reply(Reply::Redirect(r.opt("leader", |r| r.u32("leader"))?)),
        tag => return Err(WireError::UnknownTag { what: "message kind", tag }),
    };
    if !r.0.is_empty() {
        return Err(WireError::Trailing { bytes: r.0.len() });
    }
    Ok(Frame { id, body })
}

/// Decodes the first frame of `buf`: `Ok(None)` if `buf` does not hold all of it yet, else the
/// frame and the bytes it took.
pub fn decode_frame(buf: &[u8], limit_bytes: usize) -> Result<Option<(Frame, usize)>, WireError> {
    let Some(header) = buf.first_chunk::<FRAME_HEADER_BYTES>() else { return Ok(None) };
    let len = payload_len(header, limit_bytes)?;
    let Some(payload) = buf[FRAME_HEADER_BYTES..].get(..len) else { return Ok(None) };
    Ok(Some((decode_payload(header, payload)?, FRAME_HEADER_BYTES + len)))
}

struct Writer<'a>(&'a mut Vec<u8>);

impl Writer<'_> {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn i64(&mut self, v: i64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bool(&mut self, v: bool) {
        self.u8(u8::from(v));
    }
    fn len(&mut self, n: usize) {
        self.u32(u32::try_from(n).expect("a length under 4 GiB"));
    }
    fn bytes(&mut self, b: &[u8]) {
        self.len(b.len());
        self.0.extend_from_slice(b);
    }
    fn str(&mut self, s: &str) {
        self.bytes(s.as_bytes());
    }
    fn opt<T>(&mut self, v: Option<T>, f: impl FnOnce(&mut Self, T)) {
        match v {
            None => self.u8(0),
            Some(v) => {
                self.u8(1);
                f(self, v);
            }
        }
    }
    fn list<T>(&mut self, items: &[T], mut f: impl FnMut(&mut Self, &T)) {
        self.len(items.len());
        for i in items {
            f(self, i);
        }
    }
    fn result<T>(&mut self, v: &Result<T, String>, f: impl FnOnce(&mut Self, &T)) {
        match v {
            Ok(v) => {
                self.u8(0);
                f(self, v);
            }
            Err(e) => {
                self.u8(1);
                self.str(e);
            }
        }
    }
    fn pair(&mut self, (a, b): (u64, u64)) {
        self.u64(a);
        self.u64(b);
    }

    fn request(&mut self, r: &Request) {
        match r {
            Request::Vote(v) => {
                self.u8(VOTE_REQUEST);
                self.u64(v.term);
                self.u32(v.candidate);
                self.opt(v.last, Self::pair);
            }
            Request::Append(a, entries) => {
                self.u8(APPEND_REQUEST);
                self.u64(a.term);
                self.u32(a.leader);
                self.opt(a.prev, Self::pair);
                self.u64(a.entries as u64);
                self.opt(a.leader_commit, Self::u64);
                self.list(entries, |w, e| w.bytes(e));
            }
            Request::Put(msgs) => {
                self.u8(PUT_REQUEST);
                self.list(msgs, |w, m| {
                    w.str(&m.topic);
                    w.u32(m.queue_id);
                    w.bytes(&m.body);
                    w.opt(m.tags.as_deref(), Self::str);
                    w.list(&m.keys, |w, k| w.str(k));
                });
            }
            Request::Get { topic, queue_id, offset, max } => {
                self.u8(GET_REQUEST);
                self.str(topic);
                self.u32(*queue_id);
                self.u64(*offset);
                self.u64(*max as u64);
            }
        }
    }

    fn reply(&mut self, r: &Reply) {
        match r {
            Reply::Vote(v) => {
                self.u8(VOTE_REPLY);
                self.u64(v.term);
                self.u32(v.from);
                self.bool(v.granted);
            }
            Reply::Append(a) => {
                self.u8(APPEND_REPLY);
                self.u64(a.term);
                self.u32(a.from);
                self.opt(a.matched, Self::u64);
                self.bool(a.success);
                self.u64(a.next_hint);
            }
            Reply::Put(results) => {
                self.u8(PUT_REPLY);
                self.list(results, |w, r| {
                    w.result(r, |w, a| {
                        w.u64(a.index);
                        w.u64(a.term);
                        w.u64(a.queue_offset);
                    })
                });
            }
            Reply::Get(r) => {
                self.u8(GET_REPLY);
                self.result(r, |w, msgs| w.list(msgs, Self::stored));
            }
            Reply::Redirect(leader) => {
                self.u8(REDIRECT_REPLY);
                self.opt(*leader, Self::u32);
            }
        }
    }

    fn stored(&mut self, m: &StoredMessage) {
        self.str(&m.topic);
        self.u32(m.queue_id);
        self.u64(m.queue_offset);
        self.u64(m.phy_offset);
        self.u32(m.size_bytes);
        self.i64(m.store_timestamp_ms);
        self.i64(m.born_timestamp_ms);
        self.bytes(&m.body);
        self.opt(m.tags.as_deref(), Self::str);
        self.list(&m.keys, |w, k| w.str(k));
        self.opt(m.uniq_key.as_deref(), Self::str);
        self.list(&m.properties, |w, (k, v)| {
            w.str(k);
            w.str(v);
        });
    }
}

/// What is left of a payload.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], WireError> {
        if self.0.len() < n {
            return Err(WireError::Truncated { what });
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], WireError> {
        Ok(self.take(N, what)?.try_into().expect("N bytes"))
    }
    fn u8(&mut self, what: &'static str) -> Result<u8, WireError> {
        Ok(self.array::<1>(what)?[0])
    }
    fn u32(&mut self, what: &'static str) -> Result<u32, WireError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    fn u64(&mut self, what: &'static str) -> Result<u64, WireError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }
    fn i64(&mut self, what: &'static str) -> Result<i64, WireError> {
        Ok(i64::from_le_bytes(self.array(what)?))
    }
    fn usize(&mut self, what: &'static str) -> Result<usize, WireError> {
        let v = self.u64(what)?;
        usize::try_from(v).map_err(|_| WireError::BadValue { what, value: v })
    }
    fn bool(&mut self, what: &'static str) -> Result<bool, WireError> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(WireError::BadValue { what, value: u64::from(v) }),
        }
    }
    fn bytes(&mut self, what: &'static str) -> Result<Vec<u8>, WireError> {
        let n = self.u32(what)? as usize;
        Ok(self.take(n, what)?.to_vec())
    }
    fn string(&mut self, what: &'static str) -> Result<String, WireError> {
        String::from_utf8(self.bytes(what)?).map_err(|_| WireError::BadUtf8 { what })
    }
    fn opt<T>(
        &mut self,
        what: &'static str,
        f: impl FnOnce(&mut Self) -> Result<T, WireError>,
    ) -> Result<Option<T>, WireError> {
        match self.u8(what)? {
            0 => Ok(None),
            1 => f(self).map(Some),
            tag => Err(WireError::UnknownTag { what, tag }),
        }
    }
    fn opt_u64(&mut self, what: &'static str) -> Result<Option<u64>, WireError> {
        self.opt(what, |r| r.u64(what))
    }
    fn opt_pair(&mut self, what: &'static str) -> Result<Option<(u64, u64)>, WireError> {
        self.opt(what, |r| Ok((r.u64(what)?, r.u64(what)?)))
    }
    fn opt_string(&mut self, what: &'static str) -> Result<Option<String>, WireError> {
        self.opt(what, |r| r.string(what))
    }
    /// A counted list. The count is not trusted for the allocation: every item takes at least
    /// one byte, so a count past the bytes left fails as truncated, not as a huge `Vec`.
    fn list<T>(
        &mut self,
        what: &'static str,
        mut f: impl FnMut(&mut Self) -> Result<T, WireError>,
    ) -> Result<Vec<T>, WireError> {
        let n = self.u32(what)? as usize;
        if n > self.0.len() {
            return Err(WireError::Truncated { what });
        }
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(f(self)?);
        }
        Ok(out)
    }
    fn result<T>(
        &mut self,
        what: &'static str,
        f: impl FnOnce(&mut Self) -> Result<T, WireError>,
    ) -> Result<Result<T, String>, WireError> {
        match self.u8(what)? {
            0 => f(self).map(Ok),
            1 => Ok(Err(self.string(what)?)),
            tag => Err(WireError::UnknownTag { what, tag }),
        }
    }

    fn put_msg(&mut self) -> Result<PutMsg, WireError> {
        Ok(PutMsg {
            topic: self.string("topic")?,
            queue_id: self.u32("queue id")?,
            body: self.bytes("body")?,
            tags: self.opt_string("tags")?,
            keys: self.list("keys", |r| r.string("key"))?,
        })
    }

    fn stored(&mut self) -> Result<StoredMessage, WireError> {
        Ok(StoredMessage {
            topic: self.string("topic")?,
            queue_id: self.u32("queue id")?,
            queue_offset: self.u64("queue offset")?,
            phy_offset: self.u64("physical offset")?,
            size_bytes: self.u32("size")?,
            store_timestamp_ms: self.i64("store timestamp")?,
            born_timestamp_ms: self.i64("born timestamp")?,
            body: self.bytes("body")?,
            tags: self.opt_string("tags")?,
            keys: self.list("keys", |r| r.string("key"))?,
            uniq_key: self.opt_string("unique key")?,
            properties: self.list("properties", |r| Ok((r.string("property")?, r.string("property")?)))?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn text() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9 _%-]{0,12}"
    }

    fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(any::<u8>(), 0..max)
    }

    fn pair() -> impl Strategy<Value = Option<(u64, u64)>> {
        proptest::option::of((any::<u64>(), any::<u64>()))
    }

    fn put_msg() -> impl Strategy<Value = PutMsg> {
        (text(), any::<u32>(), bytes(64), proptest::option::of(text()), proptest::collection::vec(text(), 0..3))
            .prop_map(|(topic, queue_id, body, tags, keys)| PutMsg { topic, queue_id, body, tags, keys })
    }

    fn stored() -> impl Strategy<Value = StoredMessage> {
        (
            (text(), any::<u32>(), any::<u64>(), any::<u64>(), any::<u32>(), any::<i64>(), any::<i64>()),
            (bytes(64), proptest::option::of(text()), proptest::collection::vec(text(), 0..3)),
            (proptest::option::of(text()), proptest::collection::vec((text(), text()), 0..3)),
        )
            .prop_map(
                |((topic, queue_id, queue_offset, phy_offset, size_bytes, st, bt), (body, tags, keys), (u, p))| {
                    StoredMessage {
                        topic,
                        queue_id,
                        queue_offset,
                        phy_offset,
                        size_bytes,
                        store_timestamp_ms: st,
                        born_timestamp_ms: bt,
                        body,
                        tags,
                        keys,
                        uniq_key: u,
                        properties: p,
                    }
                },
            )
    }

    fn request() -> impl Strategy<Value = Request> {
        prop_oneof![
            (any::<u64>(), any::<u32>(), pair()).prop_map(|(term, candidate, last)| Request::Vote(VoteRequest {
                term,
                candidate,
                last
            })),
            (
                any::<u64>(),
                any::<u32>(),
                pair(),
                proptest::option::of(any::<u64>()),
                proptest::collection::vec(bytes(80), 0..4)
            )
                .prop_map(|(term, leader, prev, leader_commit, entries)| {
                    let request = AppendRequest { term, leader, prev, entries: entries.len(), leader_commit };
                    Request::Append(request, entries)
                }),
            proptest::collection::vec(put_msg(), 0..4).prop_map(Request::Put),
            (text(), any::<u32>(), any::<u64>(), any::<u32>())
                .prop_map(|(topic, queue_id, offset, max)| Request::Get { topic, queue_id, offset, max: max as usize }),
        ]
    }

    fn reply() -> impl Strategy<Value = Reply> {
        let ack = (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(index, term, queue_offset)| Ack {
            index,
            term,
            queue_offset,
        });
        prop_oneof![
            (any::<u64>(), any::<u32>(), any::<bool>()).prop_map(|(term, from, granted)| Reply::Vote(VoteReply {
                term,
                from,
                granted
            })),
            (any::<u64>(), any::<u32>(), proptest::option::of(any::<u64>()), any::<bool>(), any::<u64>()).prop_map(
                |(term, from, matched, success, next_hint)| Reply::Append(AppendReply {
                    term,
                    from,
                    matched,
                    success,
                    next_hint
                })
            ),
            proptest::collection::vec(prop_oneof![ack.prop_map(Ok), text().prop_map(Err)], 0..4).prop_map(Reply::Put),
            prop_oneof![proptest::collection::vec(stored(), 0..3).prop_map(Ok), text().prop_map(Err)]
                .prop_map(Reply::Get),
            proptest::option::of(any::<u32>()).prop_map(Reply::Redirect),
        ]
    }

    fn frame() -> impl Strategy<Value = Frame> {
        (any::<u64>(), prop_oneof![request().prop_map(Body::Request), reply().prop_map(Body::Reply)])
            .prop_map(|(id, body)| Frame { id, body })
    }

    /// A frame around `payload` with a correct length and CRC: garbage past the CRC check.
    fn sealed(payload: &[u8]) -> Vec<u8> {
        let mut out = (payload.len() as u32).to_le_bytes().to_vec();
        out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
        out.extend_from_slice(payload);
        out
    }

    proptest! {
        #[test]
        fn frames_round_trip(frames in proptest::collection::vec(frame(), 1..4)) {
            let mut buf = Vec::new();
            for f in &frames {
                encode_frame(f, &mut buf);
            }
            let mut at = 0;
            for f in &frames {
                let (got, n) = decode_frame(&buf[at..], MAX_FRAME_BYTES).unwrap().expect("whole frame");
                prop_assert_eq!(&got, f);
                at += n;
            }
            prop_assert_eq!(at, buf.len());
        }

        #[test]
        fn a_prefix_asks_for_more(f in frame(), cut in any::<prop::sample::Index>()) {
            let mut buf = Vec::new();
            encode_frame(&f, &mut buf);
            let cut = cut.index(buf.len());
            prop_assert_eq!(decode_frame(&buf[..cut], MAX_FRAME_BYTES), Ok(None));
        }

        #[test]
        fn any_bytes_decode_or_fail_typed(b in bytes(300)) {
            let _ = decode_frame(&b, 1 << 10);
        }

        #[test]
        fn any_sealed_payload_decodes_or_fails_typed(kind in 0u8..20, tail in bytes(300)) {
            let mut payload = 7u64.to_le_bytes().to_vec();
            payload.push(kind);
            payload.extend_from_slice(&tail);
            match decode_frame(&sealed(&payload), MAX_FRAME_BYTES) {
                Ok(Some((f, n))) => {
                    prop_assert_eq!(n, payload.len() + FRAME_HEADER_BYTES);
                    let mut again = Vec::new();
                    encode_frame(&f, &mut again);
                    prop_assert_eq!(&again[FRAME_HEADER_BYTES..], &payload[..], "only canonical bytes decode");
                }
                Ok(None) => prop_assert!(false, "a sealed frame is whole"),
                Err(_) => {}
            }
        }

        #[test]
        fn a_flipped_bit_is_caught(f in frame(), at in any::<prop::sample::Index>(), bit in 0u8..8) {
            let mut buf = Vec::new();
            encode_frame(&f, &mut buf);
            let at = FRAME_HEADER_BYTES + at.index(buf.len() - FRAME_HEADER_BYTES);
            buf[at] ^= 1 << bit;
            let got = decode_frame(&buf, MAX_FRAME_BYTES);
            prop_assert!(matches!(got, Err(WireError::CrcMismatch { .. })), "{:?}", got);
        }
    }

    #[test]
    fn typed_errors_on_malformed_frames() {
        let mut header = [0u8; FRAME_HEADER_BYTES];
        header[..4].copy_from_slice(&(MAX_FRAME_BYTES as u32 + 1).to_le_bytes());
        assert!(matches!(payload_len(&header, MAX_FRAME_BYTES), Err(WireError::TooLarge { .. })));
        let mut p = 1u64.to_le_bytes().to_vec();
        p.push(99);
        assert_eq!(
            decode_frame(&sealed(&p), MAX_FRAME_BYTES),
            Err(WireError::UnknownTag { what: "message kind", tag: 99 })
        );
        // A put announcing 2^32-1 messages in a few bytes: truncated, without allocating them.
        let mut p = 1u64.to_le_bytes().to_vec();
        p.push(PUT_REQUEST);
        p.extend_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode_frame(&sealed(&p), MAX_FRAME_BYTES), Err(WireError::Truncated { what: "put" }));
        // A redirect with a trailing byte.
        let mut p = 1u64.to_le_bytes().to_vec();
        p.extend_from_slice(&[REDIRECT_REPLY, 0, 0]);
        assert_eq!(decode_frame(&sealed(&p), MAX_FRAME_BYTES), Err(WireError::Trailing { bytes: 1 }));
        // A vote reply whose `granted` is neither 0 nor 1.
        let mut p = 1u64.to_le_bytes().to_vec();
        p.push(VOTE_REPLY);
        p.extend_from_slice(&[0; 12]);
        p.push(2);
        assert_eq!(decode_frame(&sealed(&p), MAX_FRAME_BYTES), Err(WireError::BadValue { what: "granted", value: 2 }));
    }
}
