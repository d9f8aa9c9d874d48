//! The commit log: the append path (RocketMQ `CommitLog.putMessage` / `doAppend`, §3.1),
//! the topic-queue offset table, and positioned reads of records for dispatch, reads and
//! recovery. Callers hold the store's commit-log lock around the methods taking `&mut self`;
//! reads take a `ReadView` under the lock and decode outside it.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::error::{Result, StoreError};
use crate::io::{BufferPool, Hold, Holds, IoError, Storage, StorageFile};
use crate::mapped_file::{MappedFile, PrepareRange};
use crate::mapped_file_queue::{DirSyncs, MappedFileQueue, SPARE_FILE_NAME};
use crate::message::{
    decode, decode_ref, encode_blank, is_dispatchable, peek_header, push_property, queue_offset_possible,
    DecodeOptions, Decoded, DecodedRef, Message, MessageRef, END_FILE_MIN_BLANK_BYTES, FIXED_RECORD_BYTES,
    MESSAGE_MAGIC, NAME_VALUE_SEPARATOR, PROPERTY_KEYS, PROPERTY_SEPARATOR, PROPERTY_TAGS, PROPERTY_UNIQ_KEY,
};

/// A message to append (owned; `put_request`'s argument).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PutRequest {
    pub topic: String,
    pub queue_id: u32,
    pub body: Vec<u8>,
    pub tags: Option<String>,
    /// Message keys (the KEYS property, space-separated on disk); each must be non-empty and
    /// free of spaces.
    pub keys: Vec<String>,
    pub flag: i32,
    pub sys_flag: i32,
    pub born_timestamp_ms: i64,
    pub born_host: [u8; 8],
    /// Further properties, written after KEYS, TAGS and UNIQ_KEY.
    pub extra_properties: Vec<(String, String)>,
}

impl PutRequest {
    pub fn new(topic: &str, queue_id: u32, body: &[u8]) -> PutRequest {
        PutRequest { topic: topic.to_string(), queue_id, body: body.to_vec(), ..PutRequest::default() }
    }

    /// The request borrowed as the append path takes it; `keys` holds the borrowed keys.
    pub fn as_put<'a>(&'a self, keys: &'a mut Vec<&'a str>) -> PutRef<'a> {
        keys.extend(self.keys.iter().map(String::as_str));
        PutRef {
            topic: &self.topic,
            queue_id: self.queue_id,
            body: &self.body,
            tags: self.tags.as_deref(),
            keys,
            flag: self.flag,
            sys_flag: self.sys_flag,
            born_timestamp_ms: self.born_timestamp_ms,
            born_host: self.born_host,
            extra_properties: &self.extra_properties,
        }
    }
}

/// A message to append, borrowing its parts: the append path copies the body once, into the
/// record (an owned request per put was an allocation and a copy of the body per message).
#[derive(Debug, Clone, Copy)]
pub struct PutRef<'a> {
    pub topic: &'a str,
    pub queue_id: u32,
    pub body: &'a [u8],
    pub tags: Option<&'a str>,
    /// As `PutRequest::keys`.
    pub keys: &'a [&'a str],
    pub flag: i32,
    pub sys_flag: i32,
    pub born_timestamp_ms: i64,
    pub born_host: [u8; 8],
    pub extra_properties: &'a [(String, String)],
}

impl PutRef<'_> {
    /// A message with only a topic, queue and body (and tags and keys, if given).
    pub fn new<'a>(
        topic: &'a str,
        queue_id: u32,
        body: &'a [u8],
        tags: Option<&'a str>,
        keys: &'a [&'a str],
    ) -> PutRef<'a> {
        PutRef {
            topic,
            queue_id,
            body,
            tags,
            keys,
            flag: 0,
            sys_flag: 0,
            born_timestamp_ms: 0,
            born_host: [0; 8],
            extra_properties: &[],
        }
    }

    /// Checks what the store requires of a request before taking any lock.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(StoreError::InvalidArgument(m));
        // Byte-wise (a multi-byte character fails as its first byte does): every put checks.
        let topic_ok = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'%' | b'|' | b'-' | b'_');
        let has_separator = |s: &str| s.bytes().any(|b| matches!(b, b'\x01' | b'\x02'));
        if self.topic.is_empty() || self.topic.len() > 127 || !self.topic.bytes().all(topic_ok) {
            return bad(format!("topic {:?} must be 1..=127 characters of [A-Za-z0-9%|_-]", self.topic));
        }
        if self.queue_id > i32::MAX as u32 {
            return bad(format!("queue id {} out of range", self.queue_id));
        }
        for k in self.keys {
            if k.is_empty() || k.contains(' ') || has_separator(k) {
                return bad(format!("key {k:?} is empty or contains a separator"));
            }
        }
        if let Some(t) = self.tags {
            if t.is_empty() || has_separator(t) {
                return bad(format!("tags {t:?} are empty or contain a separator"));
            }
        }
        Ok(())
    }
}

/// Where an appended message went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendResult {
    pub phy_offset: u64,
    pub queue_offset: u64,
    pub store_timestamp_ms: i64,
    pub size_bytes: u32,
    /// `phy_offset + size_bytes`: what must be durable before a sync-flush ack.
    pub end_offset: u64,
}

/// A file to read from, with a hold on it for as long as the view lives.
pub struct ReadView {
    pub file: Arc<dyn StorageFile>,
    pub from_offset: u64,
    /// Bytes of the file that may be read (the committed position).
    pub readable: u64,
    pub size: u64,
    _hold: Hold,
}

impl ReadView {
    /// Another hold on the viewed file, outliving the view.
    pub fn hold(&self) -> Hold {
        self._hold.clone_hold()
    }
}

/// A record read from a file, or "not all of it is readable yet".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordAt {
    Decoded(Decoded),
    NeedMore,
}

/// How many of the `avail` bytes from a record's start to decode, given its first 8 bytes
/// (`head`, None when fewer than 8 are available); None when the record is not all readable
/// yet. With `complete` (the file is readable to its end: recovery) a short record is decoded,
/// and so reported corrupt, instead of waited for.
pub fn decode_extent(head: Option<(i32, u32)>, avail: u64, complete: bool, max_record_bytes: u64) -> Option<u64> {
    let Some((total, magic)) = head.filter(|_| avail >= END_FILE_MIN_BLANK_BYTES) else {
        return complete.then_some(avail);
    };
    let sane = magic == MESSAGE_MAGIC && total >= FIXED_RECORD_BYTES as i32 && (total as u64) <= max_record_bytes;
    if !sane {
        // A blank or garbage: the header alone says which.
        return Some(END_FILE_MIN_BLANK_BYTES);
    }
    let total = total as u64;
    if total > avail {
        // Past the end of the file, or cut short: decode what is there to name the damage.
        return complete.then_some(avail.min(max_record_bytes));
    }
    Some(total)
}

/// Reads and decodes the record at `pos` of a file of `size` bytes of which `readable` may be
/// read. With `readable == size` (recovery) a short record is `Corrupt`, not `NeedMore`.
pub fn read_record(
    file: &dyn StorageFile,
    from_offset: u64,
    pos: u64,
    readable: u64,
    size: u64,
    opts: DecodeOptions,
) -> Result<RecordAt, IoError> {
    let mut buf = Vec::new();
    Ok(match read_record_ref(file, from_offset, pos, readable, size, opts, &mut buf)? {
        Some(d) => RecordAt::Decoded(d.to_owned()),
        None => RecordAt::NeedMore,
    })
}

/// `read_record` into `buf`, borrowing the message from it; None is `RecordAt::NeedMore`.
pub fn read_record_ref<'b>(
    file: &dyn StorageFile,
    from_offset: u64,
    pos: u64,
    readable: u64,
    size: u64,
    opts: DecodeOptions,
    buf: &'b mut Vec<u8>,
) -> Result<Option<DecodedRef<'b>>, IoError> {
    let opts = DecodeOptions {
        expected_phy_offset: Some(from_offset + pos),
        bytes_left_in_file: Some(size.saturating_sub(pos)),
        ..opts
    };
    let avail = readable.saturating_sub(pos);
    let head_bytes = END_FILE_MIN_BLANK_BYTES as usize;
    let peeked = if avail >= END_FILE_MIN_BLANK_BYTES {
        buf.resize(head_bytes, 0);
        file.read_at(pos, buf)?;
        peek_header(buf)
    } else {
        None
    };
    let Some(extent) = decode_extent(peeked, avail, readable >= size, opts.max_record_bytes) else {
        return Ok(None);
    };
    if peeked.is_none() || extent > END_FILE_MIN_BLANK_BYTES {
        buf.resize(extent as usize, 0);
        file.read_at(pos, buf)?;
    }
    Ok(Some(decode_ref(&buf[..extent as usize], &opts)))
}

/// The UNIQ_KEY the store assigns: hex of STOREHOST and the physical offset (RocketMQ's
/// store-side message id), 32 characters.
pub fn uniq_key(store_host: &[u8; 8], phy_offset: u64) -> String {
    let mut s = String::with_capacity(2 * HEX_DIGITS);
    push_hex16(&mut s, u64::from_be_bytes(*store_host));
    push_hex16(&mut s, phy_offset);
    s
}

const HEX_DIGITS: usize = 16;

/// `v` as 16 upper-case hex digits.
fn hex16(v: u64) -> [u8; HEX_DIGITS] {
    const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = [0u8; HEX_DIGITS];
    for (i, d) in out.iter_mut().enumerate() {
        *d = DIGITS[((v >> ((HEX_DIGITS - 1 - i) * 4)) & 0xF) as usize];
    }
    out
}

/// Appends `v` as 16 upper-case hex digits (`hex16`) without checking them as UTF-8 again.
fn push_hex16(out: &mut String, v: u64) {
    let digits = hex16(v);
    debug_assert!(digits.is_ascii());
    // SAFETY: hex digits are ASCII, so the string stays UTF-8.
    unsafe { out.as_mut_vec() }.extend_from_slice(&digits);
}

/// Writes the PROPERTIES field of a put: KEYS, TAGS, UNIQ_KEY, then the request's own. The
/// UNIQ_KEY's physical-offset half is written as zeros: its range in `out` is returned, for
/// `set_uniq_phy` once the record has a place (its length does not depend on it).
fn put_properties(out: &mut String, req: &PutRef<'_>, store_host: &[u8; 8]) -> std::ops::Range<usize> {
    out.clear();
    if !req.keys.is_empty() {
        out.push_str(PROPERTY_KEYS);
        out.push(NAME_VALUE_SEPARATOR);
        for (i, k) in req.keys.iter().enumerate() {
            if i > 0 {
                out.push(' ');
            }
            out.push_str(k);
        }
        out.push(PROPERTY_SEPARATOR);
    }
    if let Some(t) = req.tags {
        push_property(out, PROPERTY_TAGS, t);
    }
    out.push_str(PROPERTY_UNIQ_KEY);
    out.push(NAME_VALUE_SEPARATOR);
    push_hex16(out, u64::from_be_bytes(*store_host));
    let phy_at = out.len();
    push_hex16(out, 0);
    out.push(PROPERTY_SEPARATOR);
    for (k, v) in req.extra_properties {
        push_property(out, k, v);
    }
    phy_at..phy_at + HEX_DIGITS
}

/// Puts `phy_offset` into the UNIQ_KEY that `put_properties` wrote.
fn set_uniq_phy(out: &mut String, phy_hex: std::ops::Range<usize>, phy_offset: u64) {
    assert!(out.get(phy_hex.clone()).is_some_and(|d| d.len() == HEX_DIGITS && d.is_ascii()), "UNIQ_KEY digits");
    // SAFETY: 16 ASCII digits replace 16 ASCII digits (checked above): the string stays UTF-8.
    let bytes = unsafe { out.as_mut_vec() };
    bytes[phy_hex].copy_from_slice(&hex16(phy_offset));
}

/// Makes `key` the key of a topic's queue, reusing its allocation: the maps keyed by queue
/// (the topic-queue table, the consume queues) look up by an owned key, on every put and
/// every dispatched message.
pub(crate) fn fill_queue_key(key: &mut (String, u32), topic: &str, queue_id: u32) {
    key.0.clear();
    key.0.push_str(topic);
    key.1 = queue_id;
}

/// What the store decides about a put's record.
#[derive(Clone, Copy)]
struct Placement {
    queue_offset: u64,
    phy_offset: u64,
    store_ts_ms: i64,
    store_host: [u8; 8],
}

impl Placement {
    fn message<'a>(&self, req: &PutRef<'a>, properties: &'a str) -> MessageRef<'a> {
        MessageRef {
            queue_id: req.queue_id,
            flag: req.flag,
            queue_offset: self.queue_offset,
            phy_offset: self.phy_offset,
            sys_flag: req.sys_flag,
            born_timestamp_ms: req.born_timestamp_ms,
            born_host: req.born_host,
            store_timestamp_ms: self.store_ts_ms,
            store_host: self.store_host,
            reconsume_times: 0,
            prepared_tx_offset: 0,
            body: req.body,
            topic: req.topic,
            properties,
        }
    }
}

#[derive(Debug)]
pub struct CommitLog {
    queue: MappedFileQueue,
    topic_queue_table: BTreeMap<(String, u32), u64>,
    last_store_ts_ms: i64,
    /// The record being appended, and its PROPERTIES field (reused: no allocation per put).
    buf: Vec<u8>,
    props: String,
    /// A topic-queue key, rebuilt in place per put (the table's lookups need an owned key).
    key: (String, u32),
    /// Group commit: appends collect in a batch per file, written by `commit`.
    batch_appends: bool,
    pool: Option<BufferPool>,
    max_message_size_bytes: u64,
    store_host: [u8; 8],
    spare: Spare,
}

/// The spare file under preallocation (`StoreConfig::preallocate_commit_log`): the allocation
/// service prepares it, the roll to a new file takes it.
#[derive(Debug)]
enum Spare {
    /// Preallocation is off.
    Off,
    /// No spare, and nobody preparing one.
    Wanted,
    /// The allocation service is preparing one.
    Preparing,
    /// `SPARE_FILE_NAME`, zeros, `file_size` long (durable under sync flush, its blocks
    /// allocated otherwise).
    Ready,
}

impl CommitLog {
    pub fn new(
        queue: MappedFileQueue,
        pool: Option<BufferPool>,
        max_message_size_bytes: u64,
        store_host: [u8; 8],
    ) -> CommitLog {
        CommitLog {
            queue,
            topic_queue_table: BTreeMap::new(),
            last_store_ts_ms: 0,
            buf: Vec::new(),
            props: String::new(),
            key: (String::new(), 0),
            batch_appends: false,
            pool,
            max_message_size_bytes,
            store_host,
            spare: Spare::Off,
        }
    }

    /// Loads `dir` (see `MappedFileQueue::load`).
    pub fn load(
        storage: &dyn Storage,
        dir: std::path::PathBuf,
        file_size: u64,
        holds: Holds,
        dirs: Arc<DirSyncs>,
        pool: Option<BufferPool>,
        max_message_size_bytes: u64,
        store_host: [u8; 8],
    ) -> Result<(CommitLog, crate::mapped_file_queue::LoadRepairs)> {
        let (q, repairs) = MappedFileQueue::load(storage, dir, file_size, holds, dirs)?;
        Ok((CommitLog::new(q, pool, max_message_size_bytes, store_host), repairs))
    }

    pub fn queue(&self) -> &MappedFileQueue {
        &self.queue
    }
    pub fn queue_mut(&mut self) -> &mut MappedFileQueue {
        &mut self.queue
    }
    pub fn file_size(&self) -> u64 {
        self.queue.file_size()
    }
    pub fn max_offset(&self) -> u64 {
        self.queue.max_offset()
    }
    pub fn min_offset(&self) -> u64 {
        self.queue.min_offset()
    }
    pub fn last_store_ts_ms(&self) -> i64 {
        self.last_store_ts_ms
    }
    /// After recovery: the store timestamp of the last valid record (the clock floor).
    pub fn set_last_store_ts_ms(&mut self, ts: i64) {
        self.last_store_ts_ms = self.last_store_ts_ms.max(ts);
    }
    pub fn topic_queue_table(&self) -> &BTreeMap<(String, u32), u64> {
        &self.topic_queue_table
    }
    pub fn set_topic_queue_table(&mut self, table: BTreeMap<(String, u32), u64>) {
        self.topic_queue_table = table;
    }

    /// From now on appends collect in batches that `commit` writes into the files, one write
    /// per group commit (sync flush).
    pub fn batch_appends(&mut self) {
        self.batch_appends = true;
    }

    /// From now on a new file is the spare that the allocation service keeps ready, when
    /// there is one (`StoreConfig::preallocate_commit_log`).
    pub fn use_spares(&mut self) {
        self.spare = Spare::Wanted;
    }

    /// Whether the allocation service should prepare a spare; if so, it is now preparing one
    /// and must call `spare_prepared` when done.
    pub fn start_preparing_spare(&mut self) -> bool {
        let wanted = self.wants_spare();
        if wanted {
            self.spare = Spare::Preparing;
        }
        wanted
    }

    /// Whether the allocation service has a spare to prepare: there is none, and the last
    /// file is at least half full (or there is no file). Not at once after a roll: under sync
    /// flush preparing writes a whole file, which would compete with the group commit's syncs
    /// for the disk long before the spare is needed.
    pub fn wants_spare(&self) -> bool {
        matches!(self.spare, Spare::Wanted) && self.queue.last().is_none_or(|f| 2 * f.wrote() >= f.size())
    }

    /// The allocation service's preparation ended: the spare is ready (`SPARE_FILE_NAME`), or
    /// wanted again after a failure.
    pub fn spare_prepared(&mut self, ready: bool) {
        debug_assert!(matches!(self.spare, Spare::Preparing));
        self.spare = if ready { Spare::Ready } else { Spare::Wanted };
    }

    /// The last file if it has room, else a new one after it.
    fn writable_file(&mut self, storage: &dyn Storage) -> Result<&mut MappedFile> {
        let batch = self.batch_appends;
        let file = self.writable_file_as_is(storage)?;
        if batch {
            file.batch_appends();
        }
        Ok(file)
    }

    fn writable_file_as_is(&mut self, storage: &dyn Storage) -> Result<&mut MappedFile> {
        let needs_new = self.queue.last().is_none_or(|f| f.is_full());
        if needs_new {
            let from = self.queue.last().map_or(0, |f| f.end_offset());
            return self.new_file(storage, from);
        }
        Ok(self.queue.last_mut().expect("checked"))
    }

    /// Creates the file starting at `from` (after the last one), from the spare if one is ready.
    fn new_file(&mut self, storage: &dyn Storage, from: u64) -> Result<&mut MappedFile> {
        let mut buffer = self.pool.as_ref().and_then(|p| p.borrow());
        if self.pool.is_some() && buffer.is_none() {
            // RocketMQ falls back to writing the file directly when the pool is empty.
            tracing::warn!("transient pool exhausted; file {from} is written directly");
            crate::probe!("commit-log.transient-pool-exhausted");
        }
        if matches!(self.spare, Spare::Ready) {
            self.spare = Spare::Wanted;
            let spare = self.queue.dir().join(SPARE_FILE_NAME);
            match self.queue.adopt_spare(storage, from, &spare, &mut buffer) {
                Ok(_) => {
                    crate::probe!("commit-log.spare-adopted");
                    return Ok(self.queue.last_mut().expect("just adopted"));
                }
                // Only slower: the file is created sparse instead.
                Err(e) => {
                    tracing::warn!(error = %e, "taking the spare commit-log file failed");
                    crate::probe!("commit-log.spare-adopt-failed");
                }
            }
        }
        self.queue.create_file(storage, from, buffer)
    }

    /// Whether no record was ever appended to the files there are (there may be none).
    pub fn is_empty(&self) -> bool {
        self.max_offset() == self.min_offset()
    }

    /// Makes the log, which must be empty, start at `from` (a file boundary): its files are
    /// removed and the first file is created there (a continued log, `Store::continue_from`).
    pub fn start_at(&mut self, storage: &dyn Storage, from: u64) -> Result<()> {
        assert!(self.is_empty(), "only an empty log can move its start");
        self.queue.destroy(storage)?;
        self.new_file(storage, from)?;
        Ok(())
    }

    /// Raises a queue's next queue offset to at least `floor`.
    pub fn raise_queue_offset(&mut self, topic: &str, queue_id: u32, floor: u64) {
        let next = self.topic_queue_table.entry((topic.to_string(), queue_id)).or_insert(0);
        *next = (*next).max(floor);
    }

    /// Appends one message (`doAppend`). The store timestamp is `now_ms` clamped to the
    /// previous one, so timestamps never decrease in log order even if the clock jumps back.
    pub fn append(&mut self, storage: &dyn Storage, req: &PutRef<'_>, now_ms: i64) -> Result<AppendResult> {
        let mut props = std::mem::take(&mut self.props);
        let r = self.append_with(storage, req, now_ms, &mut props);
        self.props = props;
        r
    }

    fn append_with(
        &mut self,
        storage: &dyn Storage,
        req: &PutRef<'_>,
        now_ms: i64,
        props: &mut String,
    ) -> Result<AppendResult> {
        let prev_ts_ms = self.last_store_ts_ms;
        let store_ts_ms = now_ms.max(prev_ts_ms);
        let counts = is_dispatchable(req.sys_flag);
        fill_queue_key(&mut self.key, req.topic, req.queue_id);
        let queue_offset = if counts { self.topic_queue_table.get(&self.key).copied().unwrap_or(0) } else { 0 };
        let at = Placement { queue_offset, phy_offset: 0, store_ts_ms, store_host: self.store_host };
        // The UNIQ_KEY has the same length wherever the record lands, so the length and the
        // checks are settled before a file is chosen.
        let phy_hex = put_properties(props, req, &at.store_host);
        let len = at.message(req, props).record_len();
        if len > self.max_message_size_bytes {
            return Err(StoreError::MessageTooLarge { size_bytes: len, limit_bytes: self.max_message_size_bytes });
        }
        at.message(req, props).validate()?;
        let phy = self.place(storage, len, prev_ts_ms, queue_offset, req.topic)?;
        let at = Placement { phy_offset: phy, ..at };
        set_uniq_phy(props, phy_hex, phy);
        self.buf.clear();
        at.message(req, props).encode_validated_into(&mut self.buf);
        debug_assert_eq!(self.buf.len() as u64, len);
        let file = self.queue.last_mut().expect("place leaves a writable file");
        file.append(&self.buf, store_ts_ms)?;
        if counts {
            match self.topic_queue_table.get_mut(&self.key) {
                Some(next) => *next = queue_offset + 1,
                None => {
                    self.topic_queue_table.insert(self.key.clone(), queue_offset + 1);
                }
            }
        }
        self.last_store_ts_ms = store_ts_ms;
        Ok(AppendResult {
            phy_offset: phy,
            queue_offset,
            store_timestamp_ms: store_ts_ms,
            size_bytes: len as u32,
            end_offset: phy + len,
        })
    }

    /// Finds room for a record of `len` bytes: ends the last file with a blank if it is too
    /// full (the blank carries the previous message's timestamp: the checkpoint takes a
    /// flushed file's last timestamp, and this message may never be written, a full disk, or
    /// may land in a file that is not durable yet). Returns the record's physical offset.
    fn place(
        &mut self,
        storage: &dyn Storage,
        len: u64,
        prev_ts_ms: i64,
        queue_offset: u64,
        topic: &str,
    ) -> Result<u64> {
        loop {
            let file = self.writable_file(storage)?;
            if len + END_FILE_MIN_BLANK_BYTES > file.remaining() {
                let blank = encode_blank(file.remaining());
                file.append(&blank, prev_ts_ms)?;
                file.fill_to_end();
                continue;
            }
            let phy = file.from_offset() + file.wrote();
            // The decoder would reject the record (see `queue_offset_possible`): refuse it
            // rather than acknowledge what recovery then cuts off.
            if !queue_offset_possible(queue_offset, phy) {
                return Err(StoreError::corrupt(
                    format!("topic queue table for {topic}"),
                    format!("queue offset {queue_offset} impossible at commit-log offset {phy}"),
                ));
            }
            return Ok(phy);
        }
    }

    /// A view of the file containing `phy` (None if no file does).
    pub fn view(&self, phy: u64) -> Option<ReadView> {
        let f = self.queue.find(phy)?;
        Some(ReadView {
            file: f.file().clone(),
            from_offset: f.from_offset(),
            readable: f.committed(),
            size: f.size(),
            _hold: f.hold(),
        })
    }

    /// The next range of the last file to prepare ahead of the writer (see
    /// `MappedFile::next_range_to_prepare`).
    pub fn next_range_to_prepare(&mut self) -> Option<PrepareRange> {
        self.queue.last_mut()?.next_range_to_prepare()
    }

    /// The absolute end of what readers may see (committed bytes).
    pub fn readable_offset(&self) -> u64 {
        self.queue.max_committed_offset()
    }

    /// Whether appended bytes wait in a batch or write buffer for `commit`.
    pub fn has_uncommitted(&self) -> bool {
        self.readable_offset() < self.max_offset()
    }

    /// Commits write buffers and batches into their files. Returns whether anything moved.
    pub fn commit(&mut self, least_pages: u64, page: u64) -> Result<bool> {
        let mut any = false;
        for f in self.queue.files_mut() {
            if f.has_write_buffer() || f.has_uncommitted() {
                any |= f.commit(least_pages, page)?;
            }
        }
        Ok(any)
    }
}

/// Reads the message of `size` bytes at `phy` through a view, checking the body CRC.
pub fn read_message(view: &ReadView, phy: u64, size: u32, max_record_bytes: u64) -> Result<Message> {
    let what = || format!("commit log offset {phy}");
    let pos = phy - view.from_offset;
    if pos + u64::from(size) > view.readable {
        return Err(StoreError::corrupt(what(), format!("record of {size} bytes beyond readable {}", view.readable)));
    }
    let mut buf = vec![0u8; size as usize];
    view.file.read_at(pos, &mut buf)?;
    let opts = DecodeOptions {
        check_crc: true,
        check_dup_info: false,
        expected_phy_offset: Some(phy),
        bytes_left_in_file: Some(view.size - pos),
        max_record_bytes,
    };
    match decode(&buf, &opts) {
        Decoded::Valid(m, s) if s == size => Ok(m),
        Decoded::Valid(_, s) => Err(StoreError::corrupt(what(), format!("record is {s} bytes, unit says {size}"))),
        Decoded::Blank { .. } => Err(StoreError::corrupt(what(), "blank record")),
        Decoded::Corrupt(c) => Err(StoreError::corrupt(what(), c.reason.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniq_key_is_upper_hex_of_host_and_offset() {
        let host = [127, 0, 0, 1, 0, 0, 0x28, 0x9B];
        for phy in [0, 1, 0xABCDEF, u64::MAX] {
            let want = format!("{:016X}{:016X}", u64::from_be_bytes(host), phy);
            assert_eq!(uniq_key(&host, phy), want);
        }
    }

    /// The append path writes the record `Message::encode` would: the same properties in the
    /// same order (KEYS, TAGS, UNIQ_KEY, then the request's own).
    #[test]
    fn put_properties_match_the_owned_encoding() {
        let mut req = PutRequest::new("T", 1, b"body");
        req.keys = vec!["a".into(), "b".into()];
        req.tags = Some("TagA".into());
        req.extra_properties = vec![("X".into(), "y".into())];
        let mut keys = Vec::new();
        let req = req.as_put(&mut keys);
        let host = [1, 2, 3, 4, 5, 6, 7, 8];
        let mut text = String::new();
        let phy_hex = put_properties(&mut text, &req, &host);
        set_uniq_phy(&mut text, phy_hex, 4096);
        let m = Message {
            topic: "T".into(),
            queue_id: 1,
            body: b"body".to_vec(),
            properties: vec![
                (PROPERTY_KEYS.into(), "a b".into()),
                (PROPERTY_TAGS.into(), "TagA".into()),
                (PROPERTY_UNIQ_KEY.into(), uniq_key(&host, 4096)),
                ("X".into(), "y".into()),
            ],
            ..Message::default()
        };
        let owned = m.encode().unwrap();
        let at = Placement { queue_offset: 0, phy_offset: 0, store_ts_ms: 0, store_host: [0; 8] };
        let mut borrowed = Vec::new();
        at.message(&req, &text).encode_into(&mut borrowed).unwrap();
        // Born timestamp and hosts differ by construction; compare from the body on.
        let body_at = 84;
        assert_eq!(borrowed[body_at..], owned[body_at..]);
    }
}
