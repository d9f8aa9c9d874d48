//! The commit-log record codec (RocketMQ V1 layout, big-endian, IPv4 hosts; reference §2.1)
//! and the one decoder the whole store uses: recovery, dispatch, reads and key queries.
//!
//! The decoder never panics on any input: every length is bounds-checked with checked
//! arithmetic, and anything that is not a whole, self-consistent record is `Corrupt` with a
//! reason. What counts as valid is checked again after every read (`decode`) as it was before
//! every write (`Message::encode_into`).

use std::fmt;

use crate::error::StoreError;

/// MAGICCODE of a V1 message record.
pub const MESSAGE_MAGIC: u32 = 0xDAA3_20A7;
/// MAGICCODE of the end-of-file blank record.
pub const BLANK_MAGIC: u32 = 0xCBD4_3194;
/// `[i32 remaining][i32 BLANK_MAGIC]`: the least space a file must keep for its blank.
pub const END_FILE_MIN_BLANK_BYTES: u64 = 8;
/// Record length without body, topic and properties (V1, IPv4): 91 bytes.
pub const FIXED_RECORD_BYTES: u64 = 91;
/// Property separators (`key\x01value\x02`).
pub const NAME_VALUE_SEPARATOR: char = '\u{1}';
pub const PROPERTY_SEPARATOR: char = '\u{2}';

pub const PROPERTY_KEYS: &str = "KEYS";
pub const PROPERTY_TAGS: &str = "TAGS";
pub const PROPERTY_UNIQ_KEY: &str = "UNIQ_KEY";
/// Read only by the miswired recovery check (#8032); the store never writes it.
pub const PROPERTY_DUP_INFO: &str = "DUP_INFO";

/// Largest topic (TOPICLEN is one signed byte in V1).
pub const MAX_TOPIC_BYTES: usize = 127;
/// Largest property block (PROPLEN is a signed short).
pub const MAX_PROPERTIES_BYTES: usize = i16::MAX as usize;

// Field offsets inside a record.
const OFF_TOTAL_SIZE: usize = 0;
const OFF_MAGIC: usize = 4;
const OFF_BODY_CRC: usize = 8;
const OFF_QUEUE_ID: usize = 12;
const OFF_FLAG: usize = 16;
const OFF_QUEUE_OFFSET: usize = 20;
const OFF_PHYSICAL_OFFSET: usize = 28;
const OFF_SYS_FLAG: usize = 36;
const OFF_BORN_TIMESTAMP: usize = 40;
const OFF_BORN_HOST: usize = 48;
/// STORETIMESTAMP's position (IPv4 born host); recovery peeks at it in a file's first record.
pub const OFF_STORE_TIMESTAMP: usize = 56;
const OFF_STORE_HOST: usize = 64;
const OFF_RECONSUME_TIMES: usize = 72;
const OFF_PREPARED_TX_OFFSET: usize = 76;
const OFF_BODY_LEN: usize = 84;

/// SYSFLAG bits 2–3: transaction type. Prepared and rollback messages are not dispatched
/// to consume queues nor to the index.
pub const SYSFLAG_TX_MASK: i32 = 0b1100;
pub const SYSFLAG_TX_PREPARED: i32 = 0b0100;
pub const SYSFLAG_TX_ROLLBACK: i32 = 0b1100;
/// Bits 4 and 5: IPv6 hosts, which this codec does not write (and rejects when read).
const SYSFLAG_IPV6_HOSTS: i32 = 0b11_0000;

/// `CRC32(body) & 0x7FFFFFFF`, as `UtilAll.crc32`.
pub fn body_crc(body: &[u8]) -> u32 {
    crc32fast::hash(body) & 0x7FFF_FFFF
}

/// Whether a message of queue offset `queue_offset` can sit at `phy_offset`: the queue's
/// earlier messages all lie below it, each longer than the fixed part of a record.
pub fn queue_offset_possible(queue_offset: u64, phy_offset: u64) -> bool {
    queue_offset <= phy_offset / FIXED_RECORD_BYTES
}

/// The record length of a message with these field lengths (`calMsgLength`).
pub fn record_len(body_bytes: usize, topic_bytes: usize, properties_bytes: usize) -> u64 {
    FIXED_RECORD_BYTES + body_bytes as u64 + topic_bytes as u64 + properties_bytes as u64
}

/// A commit-log message, as written and as decoded.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Message {
    pub queue_id: u32,
    pub flag: i32,
    pub queue_offset: u64,
    pub phy_offset: u64,
    pub sys_flag: i32,
    pub born_timestamp_ms: i64,
    pub born_host: [u8; 8],
    pub store_timestamp_ms: i64,
    pub store_host: [u8; 8],
    pub reconsume_times: i32,
    pub prepared_tx_offset: i64,
    pub body: Vec<u8>,
    pub topic: String,
    /// In on-disk order.
    pub properties: Vec<(String, String)>,
}

impl Message {
    pub fn property(&self, key: &str) -> Option<&str> {
        self.properties.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    pub fn tags(&self) -> Option<&str> {
        self.property(PROPERTY_TAGS)
    }

    /// The KEYS property split on spaces (RocketMQ's `KEY_SEPARATOR`).
    pub fn keys(&self) -> Vec<&str> {
        split_keys(self.property(PROPERTY_KEYS)).collect()
    }

    pub fn uniq_key(&self) -> Option<&str> {
        self.property(PROPERTY_UNIQ_KEY)
    }

    /// Prepared and rollback transactional messages are not dispatched (§3.3).
    pub fn is_dispatchable(&self) -> bool {
        is_dispatchable(self.sys_flag)
    }

    pub fn properties_len(&self) -> usize {
        self.properties.iter().map(|(k, v)| k.len() + v.len() + 2).sum()
    }

    /// The encoded length of this message.
    pub fn record_len(&self) -> u64 {
        record_len(self.body.len(), self.topic.len(), self.properties_len())
    }

    /// The PROPERTIES field as it goes to disk.
    fn properties_text(&self) -> Result<String, StoreError> {
        let mut text = String::with_capacity(self.properties_len());
        for (k, v) in &self.properties {
            let has_sep = |s: &str| s.contains(NAME_VALUE_SEPARATOR) || s.contains(PROPERTY_SEPARATOR);
            if k.is_empty() || has_sep(k) || has_sep(v) {
                return Err(StoreError::InvalidArgument(format!("property {k:?} contains a separator or is empty")));
            }
            push_property(&mut text, k, v);
        }
        Ok(text)
    }

    /// Checks what the decoder will check, before anything is written.
    pub fn validate(&self) -> Result<(), StoreError> {
        self.as_ref(&self.properties_text()?).validate()
    }

    /// This message with its PROPERTIES field given as on disk.
    fn as_ref<'a>(&'a self, properties: &'a str) -> MessageRef<'a> {
        MessageRef {
            queue_id: self.queue_id,
            flag: self.flag,
            queue_offset: self.queue_offset,
            phy_offset: self.phy_offset,
            sys_flag: self.sys_flag,
            born_timestamp_ms: self.born_timestamp_ms,
            born_host: self.born_host,
            store_timestamp_ms: self.store_timestamp_ms,
            store_host: self.store_host,
            reconsume_times: self.reconsume_times,
            prepared_tx_offset: self.prepared_tx_offset,
            body: &self.body,
            topic: &self.topic,
            properties,
        }
    }

    /// Appends the encoded record to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), StoreError> {
        self.as_ref(&self.properties_text()?).encode_into(out)
    }

    pub fn encode(&self) -> Result<Vec<u8>, StoreError> {
        let mut out = Vec::new();
        self.encode_into(&mut out)?;
        Ok(out)
    }
}

/// Prepared and rollback transactional messages are not dispatched (§3.3).
pub fn is_dispatchable(sys_flag: i32) -> bool {
    let tx = sys_flag & SYSFLAG_TX_MASK;
    tx != SYSFLAG_TX_PREPARED && tx != SYSFLAG_TX_ROLLBACK
}

/// The keys of a KEYS property value, split on spaces (RocketMQ's `KEY_SEPARATOR`).
/// The properties dispatch reads (`MessageRef::dispatch_properties`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DispatchProperties<'a> {
    pub tags: Option<&'a str>,
    /// The KEYS property as stored (space-separated).
    pub keys: Option<&'a str>,
    pub uniq_key: Option<&'a str>,
}

impl<'a> DispatchProperties<'a> {
    /// The keys the index holds the message under: UNIQ_KEY, then each KEYS token.
    pub fn index_keys(&self) -> impl Iterator<Item = &'a str> {
        self.uniq_key.into_iter().chain(split_keys(self.keys))
    }
}

pub fn split_keys(keys: Option<&str>) -> impl Iterator<Item = &str> {
    keys.unwrap_or("").split(' ').filter(|s| !s.is_empty())
}

/// Appends `name\x01value\x02` to a PROPERTIES field.
pub fn push_property(text: &mut String, name: &str, value: &str) {
    text.push_str(name);
    text.push(NAME_VALUE_SEPARATOR);
    text.push_str(value);
    text.push(PROPERTY_SEPARATOR);
}

/// The `name\x01value` pairs of a PROPERTIES field, scanned byte by byte (dispatch looks up
/// TAGS, KEYS and UNIQ_KEY of every message). Pieces without a name-value separator are
/// skipped; a field without the final separator has no pairs.
#[derive(Debug, Clone)]
pub struct PropertyPairs<'a> {
    /// What is left to scan, without the field's final separator; None once done.
    rest: Option<&'a str>,
}

impl<'a> Iterator for PropertyPairs<'a> {
    type Item = (&'a str, &'a str);

    fn next(&mut self) -> Option<(&'a str, &'a str)> {
        let (end, name_value) = (PROPERTY_SEPARATOR as u8, NAME_VALUE_SEPARATOR as u8);
        loop {
            let rest = self.rest?;
            // Both separators are ASCII: every position found is a character boundary.
            let (piece, tail) = match rest.bytes().position(|b| b == end) {
                Some(i) => (&rest[..i], Some(&rest[i + 1..])),
                None => (rest, None),
            };
            self.rest = tail;
            if let Some(i) = piece.bytes().position(|b| b == name_value) {
                return Some((&piece[..i], &piece[i + 1..]));
            }
        }
    }
}

/// A record's fields borrowed from the bytes they were decoded from, or from the request
/// they are encoded from: the form the hot paths use (append and dispatch copy nothing but
/// the record itself). `Message` is the owned form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageRef<'a> {
    pub queue_id: u32,
    pub flag: i32,
    pub queue_offset: u64,
    pub phy_offset: u64,
    pub sys_flag: i32,
    pub born_timestamp_ms: i64,
    pub born_host: [u8; 8],
    pub store_timestamp_ms: i64,
    pub store_host: [u8; 8],
    pub reconsume_times: i32,
    pub prepared_tx_offset: i64,
    pub body: &'a [u8],
    pub topic: &'a str,
    /// PROPERTIES as on disk: `name\x01value\x02` per property.
    pub properties: &'a str,
}

impl<'a> MessageRef<'a> {
    /// The properties in on-disk order (of a well-formed PROPERTIES field: see `check_properties`).
    pub fn property_pairs(&self) -> PropertyPairs<'a> {
        PropertyPairs { rest: self.properties.strip_suffix(PROPERTY_SEPARATOR) }
    }

    pub fn property(&self, key: &str) -> Option<&'a str> {
        self.property_pairs().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    pub fn tags(&self) -> Option<&'a str> {
        self.property(PROPERTY_TAGS)
    }

    pub fn keys(&self) -> impl Iterator<Item = &'a str> {
        split_keys(self.property(PROPERTY_KEYS))
    }

    pub fn uniq_key(&self) -> Option<&'a str> {
        self.property(PROPERTY_UNIQ_KEY)
    }

    /// TAGS, KEYS and UNIQ_KEY in one pass (each the first of its name, as `property`
    /// finds it): dispatch needs all three, and three passes were ~10% of its samples.
    pub fn dispatch_properties(&self) -> DispatchProperties<'a> {
        let mut p = DispatchProperties::default();
        for (name, value) in self.property_pairs() {
            let slot = match name {
                PROPERTY_TAGS => &mut p.tags,
                PROPERTY_KEYS => &mut p.keys,
                PROPERTY_UNIQ_KEY => &mut p.uniq_key,
                _ => continue,
            };
            slot.get_or_insert(value);
        }
        p
    }

    pub fn is_dispatchable(&self) -> bool {
        is_dispatchable(self.sys_flag)
    }

    pub fn record_len(&self) -> u64 {
        record_len(self.body.len(), self.topic.len(), self.properties.len())
    }

    /// Checks what the decoder will check, before anything is written.
    pub fn validate(&self) -> Result<(), StoreError> {
        let bad = |m: String| Err(StoreError::InvalidArgument(m));
        if self.topic.is_empty() || self.topic.len() > MAX_TOPIC_BYTES {
            return bad(format!("topic length {} not in 1..={MAX_TOPIC_BYTES}", self.topic.len()));
        }
        if self.queue_id > i32::MAX as u32 || self.queue_offset > i64::MAX as u64 || self.phy_offset > i64::MAX as u64 {
            return bad("queue id or offset out of range".to_string());
        }
        if self.sys_flag & SYSFLAG_IPV6_HOSTS != 0 {
            return bad("IPv6 hosts are not supported".to_string());
        }
        if check_properties(self.properties).is_err() {
            return bad(format!("properties {:?}: a property contains a separator or is empty", self.properties));
        }
        if self.properties.len() > MAX_PROPERTIES_BYTES {
            return bad(format!("properties of {} bytes exceed {MAX_PROPERTIES_BYTES}", self.properties.len()));
        }
        if self.record_len() > i32::MAX as u64 {
            return bad("record too large".to_string());
        }
        Ok(())
    }

    /// Appends the encoded record to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), StoreError> {
        self.validate()?;
        self.encode_validated_into(out);
        Ok(())
    }

    /// `encode_into` for a record `validate` has already passed (the append path checks
    /// before it chooses a file; checking again per put was ~1% of the producer's samples).
    pub fn encode_validated_into(&self, out: &mut Vec<u8>) {
        debug_assert!(self.validate().is_ok(), "encoding a record that fails validation");
        let start = out.len();
        let total = self.record_len() as i32;
        out.reserve(total as usize);
        out.extend_from_slice(&total.to_be_bytes());
        out.extend_from_slice(&MESSAGE_MAGIC.to_be_bytes());
        out.extend_from_slice(&body_crc(self.body).to_be_bytes());
        out.extend_from_slice(&(self.queue_id as i32).to_be_bytes());
        out.extend_from_slice(&self.flag.to_be_bytes());
        out.extend_from_slice(&(self.queue_offset as i64).to_be_bytes());
        out.extend_from_slice(&(self.phy_offset as i64).to_be_bytes());
        out.extend_from_slice(&self.sys_flag.to_be_bytes());
        out.extend_from_slice(&self.born_timestamp_ms.to_be_bytes());
        out.extend_from_slice(&self.born_host);
        out.extend_from_slice(&self.store_timestamp_ms.to_be_bytes());
        out.extend_from_slice(&self.store_host);
        out.extend_from_slice(&self.reconsume_times.to_be_bytes());
        out.extend_from_slice(&self.prepared_tx_offset.to_be_bytes());
        out.extend_from_slice(&(self.body.len() as i32).to_be_bytes());
        out.extend_from_slice(self.body);
        out.push(self.topic.len() as u8);
        out.extend_from_slice(self.topic.as_bytes());
        out.extend_from_slice(&(self.properties.len() as i16).to_be_bytes());
        out.extend_from_slice(self.properties.as_bytes());
        debug_assert_eq!((out.len() - start) as u64, self.record_len());
    }

    pub fn to_owned(&self) -> Message {
        Message {
            queue_id: self.queue_id,
            flag: self.flag,
            queue_offset: self.queue_offset,
            phy_offset: self.phy_offset,
            sys_flag: self.sys_flag,
            born_timestamp_ms: self.born_timestamp_ms,
            born_host: self.born_host,
            store_timestamp_ms: self.store_timestamp_ms,
            store_host: self.store_host,
            reconsume_times: self.reconsume_times,
            prepared_tx_offset: self.prepared_tx_offset,
            body: self.body.to_vec(),
            topic: self.topic.to_string(),
            properties: self.property_pairs().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        }
    }
}

/// The end-of-file blank record for `remaining_bytes` left in the file.
pub fn encode_blank(remaining_bytes: u64) -> [u8; 8] {
    let mut b = [0u8; 8];
    b[..4].copy_from_slice(&(remaining_bytes.min(i32::MAX as u64) as i32).to_be_bytes());
    b[4..].copy_from_slice(&BLANK_MAGIC.to_be_bytes());
    b
}

/// Why bytes are not a valid record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CorruptReason {
    /// Fewer than 8 bytes, or fewer than TOTALSIZE.
    Truncated {
        have_bytes: u64,
        need_bytes: u64,
    },
    /// Neither message nor blank magic (a zeroed tail lands here).
    BadMagic(u32),
    /// TOTALSIZE below the fixed part or above the limit.
    BadTotalSize(i64),
    /// The field lengths do not add up to TOTALSIZE.
    LengthMismatch {
        total: u64,
        computed: u64,
    },
    BadFieldLength(&'static str),
    BodyCrcMismatch {
        stored: u32,
        computed: u32,
    },
    /// PHYSICALOFFSET is not where the record sits.
    PhysicalOffsetMismatch {
        stored: i64,
        expected: u64,
    },
    NegativeField(&'static str),
    Ipv6Hosts,
    BadUtf8(&'static str),
    BadProperties,
    /// A blank whose declared length is not what is left in the file.
    BlankMisplaced {
        declared: i64,
        left: u64,
    },
    /// The DUP_INFO property is missing or malformed (`checkDupInfo`).
    DupInfoMissing,
    /// QUEUEOFFSET (a header field no CRC covers) is larger than the log before the record
    /// could hold messages of its queue: every earlier message of the queue lies below
    /// PHYSICALOFFSET and takes more than `FIXED_RECORD_BYTES`. A flipped high bit lands here;
    /// dispatching it would fill the consume queue with blank units towards it.
    ImpossibleQueueOffset {
        queue_offset: u64,
        phy_offset: u64,
    },
}

impl fmt::Display for CorruptReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// A corrupt record: the reason, and the size the record declared (usable only by the
/// catalogued skip-instead-of-truncate bug, #467).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Corruption {
    pub reason: CorruptReason,
    pub declared_size: Option<u32>,
}

/// What the bytes at a position are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// A whole, self-consistent message of `size` bytes.
    Valid(Message, u32),
    /// The end-of-file blank: the rest of the file is padding.
    Blank {
        declared_bytes: u32,
    },
    Corrupt(Corruption),
}

impl Decoded {
    pub fn is_valid(&self) -> bool {
        matches!(self, Decoded::Valid(..))
    }
}

/// `Decoded`, borrowing the message from the decoded bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodedRef<'a> {
    Valid(MessageRef<'a>, u32),
    Blank { declared_bytes: u32 },
    Corrupt(Corruption),
}

impl DecodedRef<'_> {
    pub fn to_owned(&self) -> Decoded {
        match self {
            DecodedRef::Valid(m, size) => Decoded::Valid(m.to_owned(), *size),
            DecodedRef::Blank { declared_bytes } => Decoded::Blank { declared_bytes: *declared_bytes },
            DecodedRef::Corrupt(c) => Decoded::Corrupt(c.clone()),
        }
    }
}

/// What the decoder checks beyond the layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeOptions {
    pub check_crc: bool,
    /// RocketMQ 5.x `checkDupInfo` (only the #8032 switch turns it on).
    pub check_dup_info: bool,
    /// The absolute commit-log offset of the first byte; PHYSICALOFFSET must equal it.
    pub expected_phy_offset: Option<u64>,
    /// Bytes from the record start to the end of its file: a blank must declare exactly
    /// this, and no record may be longer.
    pub bytes_left_in_file: Option<u64>,
    pub max_record_bytes: u64,
}

impl Default for DecodeOptions {
    fn default() -> DecodeOptions {
        DecodeOptions {
            check_crc: true,
            check_dup_info: false,
            expected_phy_offset: None,
            bytes_left_in_file: None,
            max_record_bytes: i32::MAX as u64,
        }
    }
}

/// A bounds-checked big-endian cursor.
struct Cursor<'a> {
    buf: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn bytes(&self, at: usize, len: usize) -> Option<&'a [u8]> {
        self.buf.get(at..at.checked_add(len)?)
    }
    fn i32(&self, at: usize) -> Option<i32> {
        Some(i32::from_be_bytes(self.bytes(at, 4)?.try_into().ok()?))
    }
    fn u32(&self, at: usize) -> Option<u32> {
        Some(u32::from_be_bytes(self.bytes(at, 4)?.try_into().ok()?))
    }
    fn i64(&self, at: usize) -> Option<i64> {
        Some(i64::from_be_bytes(self.bytes(at, 8)?.try_into().ok()?))
    }
    fn i16(&self, at: usize) -> Option<i16> {
        Some(i16::from_be_bytes(self.bytes(at, 2)?.try_into().ok()?))
    }
    fn host(&self, at: usize) -> Option<[u8; 8]> {
        self.bytes(at, 8)?.try_into().ok()
    }
}

/// Reads the 8-byte prefix every record starts with: `(TOTALSIZE, MAGICCODE)`.
pub fn peek_header(buf: &[u8]) -> Option<(i32, u32)> {
    let c = Cursor { buf };
    Some((c.i32(OFF_TOTAL_SIZE)?, c.u32(OFF_MAGIC)?))
}

/// Decodes the record at the start of `buf` (which may hold more bytes after it).
pub fn decode(buf: &[u8], opts: &DecodeOptions) -> Decoded {
    decode_ref(buf, opts).to_owned()
}

/// `decode` without copying the message out of `buf`.
pub fn decode_ref<'a>(buf: &'a [u8], opts: &DecodeOptions) -> DecodedRef<'a> {
    match decode_inner(buf, opts) {
        Ok(d) => d,
        Err(c) => DecodedRef::Corrupt(c),
    }
}

fn corrupt(reason: CorruptReason, declared_size: Option<u32>) -> Corruption {
    Corruption { reason, declared_size }
}

fn decode_inner<'a>(buf: &'a [u8], opts: &DecodeOptions) -> Result<DecodedRef<'a>, Corruption> {
    let have = buf.len() as u64;
    let Some((total, magic)) = peek_header(buf) else {
        return Err(corrupt(CorruptReason::Truncated { have_bytes: have, need_bytes: 8 }, None));
    };
    if magic == BLANK_MAGIC {
        return decode_blank(total, opts);
    }
    if magic != MESSAGE_MAGIC {
        return Err(corrupt(CorruptReason::BadMagic(magic), None));
    }
    let limit = opts.max_record_bytes.min(opts.bytes_left_in_file.unwrap_or(u64::MAX));
    if total < FIXED_RECORD_BYTES as i32 || total as u64 > limit {
        return Err(corrupt(CorruptReason::BadTotalSize(i64::from(total)), None));
    }
    let total_u = total as u32;
    let declared = Some(total_u);
    let Some(rec) = buf.get(..total_u as usize) else {
        return Err(corrupt(CorruptReason::Truncated { have_bytes: have, need_bytes: u64::from(total_u) }, declared));
    };
    let msg = decode_fields(rec, opts).map_err(|reason| corrupt(reason, declared))?;
    Ok(DecodedRef::Valid(msg, total_u))
}

fn decode_blank<'a>(total: i32, opts: &DecodeOptions) -> Result<DecodedRef<'a>, Corruption> {
    let declared = i64::from(total);
    if declared < END_FILE_MIN_BLANK_BYTES as i64 {
        return Err(corrupt(
            CorruptReason::BlankMisplaced { declared, left: opts.bytes_left_in_file.unwrap_or(0) },
            None,
        ));
    }
    if let Some(left) = opts.bytes_left_in_file {
        if declared as u64 != left {
            return Err(corrupt(CorruptReason::BlankMisplaced { declared, left }, None));
        }
    }
    Ok(DecodedRef::Blank { declared_bytes: total as u32 })
}

/// Decodes a record whose TOTALSIZE bytes are exactly `rec`.
fn decode_fields<'a>(rec: &'a [u8], opts: &DecodeOptions) -> Result<MessageRef<'a>, CorruptReason> {
    let c = Cursor { buf: rec };
    let short = |f: &'static str| CorruptReason::BadFieldLength(f);
    let stored_crc = c.u32(OFF_BODY_CRC).ok_or(short("crc"))?;
    let queue_id = c.i32(OFF_QUEUE_ID).ok_or(short("queue id"))?;
    let queue_offset = c.i64(OFF_QUEUE_OFFSET).ok_or(short("queue offset"))?;
    let phy_offset = c.i64(OFF_PHYSICAL_OFFSET).ok_or(short("physical offset"))?;
    let sys_flag = c.i32(OFF_SYS_FLAG).ok_or(short("sys flag"))?;
    if queue_id < 0 {
        return Err(CorruptReason::NegativeField("queue id"));
    }
    if queue_offset < 0 {
        return Err(CorruptReason::NegativeField("queue offset"));
    }
    if phy_offset < 0 {
        return Err(CorruptReason::NegativeField("physical offset"));
    }
    if sys_flag & SYSFLAG_IPV6_HOSTS != 0 {
        return Err(CorruptReason::Ipv6Hosts);
    }
    if let Some(expected) = opts.expected_phy_offset {
        if phy_offset as u64 != expected {
            return Err(CorruptReason::PhysicalOffsetMismatch { stored: phy_offset, expected });
        }
    }
    if !queue_offset_possible(queue_offset as u64, phy_offset as u64) {
        return Err(CorruptReason::ImpossibleQueueOffset {
            queue_offset: queue_offset as u64,
            phy_offset: phy_offset as u64,
        });
    }
    let body_len = c.i32(OFF_BODY_LEN).ok_or(short("body length"))?;
    let body_len = usize::try_from(body_len).map_err(|_| short("body length"))?;
    let body_at = OFF_BODY_LEN + 4;
    let body = c.bytes(body_at, body_len).ok_or(short("body"))?;
    let topic_len_at = body_at.checked_add(body_len).ok_or(short("body"))?;
    let topic_len = c.bytes(topic_len_at, 1).ok_or(short("topic length"))?[0] as i8;
    let topic_len = usize::try_from(topic_len).map_err(|_| short("topic length"))?;
    let topic = c.bytes(topic_len_at + 1, topic_len).ok_or(short("topic"))?;
    let props_len_at = topic_len_at + 1 + topic_len;
    let props_len = c.i16(props_len_at).ok_or(short("properties length"))?;
    let props_len = usize::try_from(props_len).map_err(|_| short("properties length"))?;
    let props = c.bytes(props_len_at + 2, props_len).ok_or(short("properties"))?;
    let computed = record_len(body_len, topic_len, props_len);
    if computed != rec.len() as u64 {
        return Err(CorruptReason::LengthMismatch { total: rec.len() as u64, computed });
    }
    if opts.check_crc {
        let computed = body_crc(body);
        if computed != stored_crc {
            return Err(CorruptReason::BodyCrcMismatch { stored: stored_crc, computed });
        }
    }
    let topic = std::str::from_utf8(topic).map_err(|_| CorruptReason::BadUtf8("topic"))?;
    if topic.is_empty() {
        return Err(CorruptReason::BadFieldLength("topic"));
    }
    let properties = std::str::from_utf8(props).map_err(|_| CorruptReason::BadUtf8("properties"))?;
    check_properties(properties)?;
    let msg = MessageRef {
        queue_id: queue_id as u32,
        flag: c.i32(OFF_FLAG).ok_or(short("flag"))?,
        queue_offset: queue_offset as u64,
        phy_offset: phy_offset as u64,
        sys_flag,
        born_timestamp_ms: c.i64(OFF_BORN_TIMESTAMP).ok_or(short("born timestamp"))?,
        born_host: c.host(OFF_BORN_HOST).ok_or(short("born host"))?,
        store_timestamp_ms: c.i64(OFF_STORE_TIMESTAMP).ok_or(short("store timestamp"))?,
        store_host: c.host(OFF_STORE_HOST).ok_or(short("store host"))?,
        reconsume_times: c.i32(OFF_RECONSUME_TIMES).ok_or(short("reconsume times"))?,
        prepared_tx_offset: c.i64(OFF_PREPARED_TX_OFFSET).ok_or(short("prepared tx offset"))?,
        body,
        topic,
        properties,
    };
    if opts.check_dup_info && !properties.is_empty() {
        let dup = msg.property(PROPERTY_DUP_INFO);
        if dup.is_none_or(|d| d.split('_').count() != 2) {
            return Err(CorruptReason::DupInfoMissing);
        }
    }
    Ok(msg)
}

/// A PROPERTIES field is empty or `name\x01value\x02` pairs with non-empty names, no
/// separator inside a name or value.
fn check_properties(text: &str) -> Result<(), CorruptReason> {
    // Byte by byte (both separators are ASCII): every put and every decode checks.
    let (name_value, end) = (NAME_VALUE_SEPARATOR as u8, PROPERTY_SEPARATOR as u8);
    let b = text.as_bytes();
    if b.last().is_some_and(|&last| last != end) {
        return Err(CorruptReason::BadProperties);
    }
    let mut i = 0;
    while i < b.len() {
        // A name: non-empty, ended by the name-value separator. The last byte is `end`, so
        // every scan below stops inside `b`.
        let name_start = i;
        while b[i] != name_value && b[i] != end {
            i += 1;
        }
        if b[i] != name_value || i == name_start {
            return Err(CorruptReason::BadProperties);
        }
        i += 1;
        // A value, possibly empty, without a name-value separator.
        while b[i] != end {
            if b[i] == name_value {
                return Err(CorruptReason::BadProperties);
            }
            i += 1;
        }
        i += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn sample(phy: u64) -> Message {
        Message {
            queue_id: 3,
            flag: 0,
            queue_offset: (phy / FIXED_RECORD_BYTES).min(7),
            phy_offset: phy,
            sys_flag: 0,
            born_timestamp_ms: 1_700_000_000_000,
            born_host: [10, 0, 0, 1, 0, 0, 0x30, 0x39],
            store_timestamp_ms: 1_700_000_000_001,
            store_host: [127, 0, 0, 1, 0, 0, 0x28, 0x9B],
            reconsume_times: 0,
            prepared_tx_offset: 0,
            body: b"hello".to_vec(),
            topic: "TopicTest".to_string(),
            properties: vec![("KEYS".into(), "k1 k2".into()), ("TAGS".into(), "TagA".into())],
        }
    }

    #[test]
    fn layout_matches_rocketmq_v1() {
        let m = sample(1234);
        let b = m.encode().unwrap();
        assert_eq!(b.len() as u64, 91 + 5 + 9 + m.properties_len() as u64);
        assert_eq!(&b[4..8], &[0xDA, 0xA3, 0x20, 0xA7]);
        assert_eq!(i32::from_be_bytes(b[0..4].try_into().unwrap()) as usize, b.len());
        assert_eq!(i64::from_be_bytes(b[28..36].try_into().unwrap()), 1234);
        assert_eq!(i64::from_be_bytes(b[56..64].try_into().unwrap()), 1_700_000_000_001);
        assert_eq!(u32::from_be_bytes(b[8..12].try_into().unwrap()), crc32fast::hash(b"hello") & 0x7FFF_FFFF);
        assert!(b.ends_with(b"KEYS\x01k1 k2\x02TAGS\x01TagA\x02"));
        let d = decode(&b, &DecodeOptions { expected_phy_offset: Some(1234), ..Default::default() });
        assert_eq!(d, Decoded::Valid(m.clone(), b.len() as u32));
        assert_eq!(m.keys(), vec!["k1", "k2"]);
    }

    #[test]
    fn damage_is_reported_not_panicked() {
        let m = sample(0);
        let b = m.encode().unwrap();
        let o = DecodeOptions::default();
        assert!(matches!(
            decode(&b[..b.len() - 1], &o),
            Decoded::Corrupt(Corruption { reason: CorruptReason::Truncated { .. }, declared_size: Some(_) })
        ));
        let mut flipped = b.clone();
        flipped[OFF_BODY_LEN + 4] ^= 1;
        assert!(matches!(
            decode(&flipped, &o),
            Decoded::Corrupt(Corruption { reason: CorruptReason::BodyCrcMismatch { .. }, .. })
        ));
        assert!(decode(&flipped, &DecodeOptions { check_crc: false, ..o }).is_valid());
        assert!(matches!(
            decode(&[0u8; 200], &o),
            Decoded::Corrupt(Corruption { reason: CorruptReason::BadMagic(0), .. })
        ));
        let wrong_place = DecodeOptions { expected_phy_offset: Some(8), ..o };
        assert!(matches!(
            decode(&b, &wrong_place),
            Decoded::Corrupt(Corruption { reason: CorruptReason::PhysicalOffsetMismatch { .. }, .. })
        ));
        let dup = DecodeOptions { check_dup_info: true, ..o };
        assert!(matches!(decode(&b, &dup), Decoded::Corrupt(Corruption { reason: CorruptReason::DupInfoMissing, .. })));
    }

    #[test]
    fn blank_must_fill_the_rest_of_the_file() {
        let b = encode_blank(100);
        let o = DecodeOptions { bytes_left_in_file: Some(100), ..Default::default() };
        assert_eq!(decode(&b, &o), Decoded::Blank { declared_bytes: 100 });
        let o = DecodeOptions { bytes_left_in_file: Some(200), ..Default::default() };
        assert!(matches!(decode(&b, &o), Decoded::Corrupt(_)));
    }

    fn arb_message() -> impl Strategy<Value = Message> {
        let text = "[a-zA-Z0-9_ %|-]{1,20}";
        (
            (0u32..1000, any::<i32>(), 0u64..(1 << 40), 0u64..(1 << 40), any::<i64>(), any::<i64>()),
            (any::<[u8; 8]>(), any::<[u8; 8]>(), any::<i32>(), any::<i64>()),
            proptest::collection::vec(any::<u8>(), 0..300),
            "[a-zA-Z0-9_%|-]{1,40}",
            proptest::collection::vec(("[A-Z_]{1,8}", text), 0..4),
            prop_oneof![Just(0i32), Just(SYSFLAG_TX_PREPARED), Just(8), Just(SYSFLAG_TX_ROLLBACK), Just(1), Just(2)],
        )
            .prop_map(|((q, flag, qo, po, bt, st), (bh, sh, rt, pto), body, topic, props, sys_flag)| Message {
                queue_id: q,
                flag,
                queue_offset: qo % (po / FIXED_RECORD_BYTES + 1),
                phy_offset: po,
                sys_flag,
                born_timestamp_ms: bt,
                born_host: bh,
                store_timestamp_ms: st,
                store_host: sh,
                reconsume_times: rt,
                prepared_tx_offset: pto,
                body,
                topic,
                properties: props,
            })
    }

    /// The PROPERTIES rule as written before `check_properties` went byte by byte: the
    /// reference it must agree with.
    fn check_properties_by_split(text: &str) -> bool {
        if text.is_empty() {
            return true;
        }
        let Some(body) = text.strip_suffix(PROPERTY_SEPARATOR) else { return false };
        body.split(PROPERTY_SEPARATOR).all(|pair| {
            pair.split_once(NAME_VALUE_SEPARATOR)
                .is_some_and(|(k, v)| !k.is_empty() && !v.contains(NAME_VALUE_SEPARATOR))
        })
    }

    /// `property_pairs` as written before it went byte by byte: the reference it must agree with.
    fn property_pairs_by_split(text: &str) -> Vec<(&str, &str)> {
        text.strip_suffix(PROPERTY_SEPARATOR)
            .unwrap_or("")
            .split(PROPERTY_SEPARATOR)
            .filter_map(|p| p.split_once(NAME_VALUE_SEPARATOR))
            .collect()
    }

    proptest! {
        #[test]
        fn dispatch_properties_agree_with_property(
            m in arb_message(),
            pairs in proptest::collection::vec((prop_oneof![Just("TAGS"), Just("KEYS"), Just("UNIQ_KEY"), Just("X")], "[a-z ]{0,6}"), 0..6),
        ) {
            let mut text = String::new();
            for (name, value) in &pairs {
                push_property(&mut text, name, value);
            }
            let r = m.as_ref(&text);
            let p = r.dispatch_properties();
            prop_assert_eq!(p.tags, r.tags());
            prop_assert_eq!(p.keys, r.property(PROPERTY_KEYS));
            prop_assert_eq!(p.uniq_key, r.uniq_key());
            let expected: Vec<&str> = r.uniq_key().into_iter().chain(r.keys()).collect();
            prop_assert_eq!(p.index_keys().collect::<Vec<_>>(), expected);
        }

        #[test]
        fn property_pairs_agree_with_the_split_rule(text in "[aé\\x01\\x02]{0,12}") {
            let owned = sample(0);
            let m = MessageRef { properties: &text, ..owned.as_ref("") };
            prop_assert_eq!(m.property_pairs().collect::<Vec<_>>(), property_pairs_by_split(&text), "{:?}", text);
        }

        #[test]
        fn check_properties_agrees_with_the_split_rule(text in "[ab\\x01\\x02]{0,12}") {
            prop_assert_eq!(check_properties(&text).is_ok(), check_properties_by_split(&text), "{:?}", text);
        }

        #[test]
        fn round_trip(m in arb_message(), trailing in proptest::collection::vec(any::<u8>(), 0..16)) {
            let mut b = m.encode().unwrap();
            let len = b.len() as u32;
            b.extend_from_slice(&trailing);
            let o = DecodeOptions { expected_phy_offset: Some(m.phy_offset), ..Default::default() };
            prop_assert_eq!(decode(&b, &o), Decoded::Valid(m, len));
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512), crc in any::<bool>(), dup in any::<bool>(), left in proptest::option::of(0u64..1024)) {
            let o = DecodeOptions { check_crc: crc, check_dup_info: dup, bytes_left_in_file: left, ..Default::default() };
            let _ = decode(&bytes, &o);
        }

        #[test]
        fn mutated_records_never_panic_and_flips_are_caught(m in arb_message(), at in any::<prop::sample::Index>(), bit in 0u8..8, cut in any::<prop::sample::Index>()) {
            let good = m.encode().unwrap();
            let mut b = good.clone();
            let i = at.index(b.len());
            b[i] ^= 1 << bit;
            let o = DecodeOptions { expected_phy_offset: Some(m.phy_offset), ..Default::default() };
            let d = decode(&b, &o);
            // A flip in a checked field (header, body, lengths, topic, physical offset) must not
            // come back as the original message.
            if let Decoded::Valid(back, _) = &d {
                prop_assert!(back != &m || b == good);
            }
            let n = cut.index(b.len() + 1);
            let _ = decode(&b[..n], &o);
            if n < good.len() {
                prop_assert!(!decode(&good[..n], &o).is_valid());
            }
        }
    }
}
