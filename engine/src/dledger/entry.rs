//! The DLedger entry codec (§2.5): a 48-byte header around one commit-log record.
//!
//! Header, big-endian: `magic i32 | size i32 | index i64 | term i64 | pos i64 | channel i32 |
//! chain CRC i32 | body CRC i32 | body length i32`, then the body. `size` counts the header;
//! `pos` is the entry's absolute position in the log, and the record inside has
//! `PHYSICALOFFSET = pos + 48`. A data file ends in a blank `[-1][remaining]` (magic first,
//! unlike the commit log's). The chain CRC folds the previous entry's chain CRC with this
//! entry's header fields and body CRC: the header has no CRC of its own, and equal chain CRCs
//! at one index mean the same history up to it (what Raft's log matching relies on).
//!
//! `decode_entry` is the one decoder of entries: it never panics on any bytes.

use std::fmt;

/// Header bytes; the body (and the record's PHYSICALOFFSET) starts here.
pub const ENTRY_HEADER_BYTES: u64 = 48;
/// The magic of every entry (DLedger's `CURRENT_MAGIC`).
pub const ENTRY_MAGIC: i32 = 1;
/// The magic of the end-of-file blank.
pub const BLANK_MAGIC: i32 = -1;
/// A blank is its magic and the bytes it covers; every entry leaves room for one after it.
pub const BLANK_BYTES: u64 = 8;
/// The channel every entry is written with (DLedger's default).
pub const DEFAULT_CHANNEL: i32 = 0;

const OFF_MAGIC: usize = 0;
const OFF_SIZE: usize = 4;
const OFF_INDEX: usize = 8;
const OFF_TERM: usize = 16;
const OFF_POS: usize = 24;
const OFF_CHANNEL: usize = 32;
const OFF_CHAIN_CRC: usize = 36;
const OFF_BODY_CRC: usize = 40;
const OFF_BODY_LEN: usize = 44;
const HEADER: usize = ENTRY_HEADER_BYTES as usize;

/// An entry's header fields (size is `ENTRY_HEADER_BYTES + body_len`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryHeader {
    pub index: u64,
    pub term: u64,
    pub pos: u64,
    pub channel: i32,
    pub chain_crc: u32,
    pub body_crc: u32,
    pub body_len: u32,
}

impl EntryHeader {
    pub fn size_bytes(&self) -> u64 {
        ENTRY_HEADER_BYTES + u64::from(self.body_len)
    }

    /// Where the entry's record starts (its PHYSICALOFFSET).
    pub fn body_pos(&self) -> u64 {
        self.pos + ENTRY_HEADER_BYTES
    }

    /// The position right after the entry.
    pub fn end_pos(&self) -> u64 {
        self.pos + self.size_bytes()
    }

    /// Writes the header into `out[..48]`.
    pub fn write_to(&self, out: &mut [u8]) {
        assert!(out.len() >= HEADER, "an entry header needs {HEADER} bytes");
        let size = i32::try_from(self.size_bytes()).expect("entry sizes are bounded by the file size");
        out[OFF_MAGIC..OFF_SIZE].copy_from_slice(&ENTRY_MAGIC.to_be_bytes());
        out[OFF_SIZE..OFF_INDEX].copy_from_slice(&size.to_be_bytes());
        out[OFF_INDEX..OFF_TERM].copy_from_slice(&(self.index as i64).to_be_bytes());
        out[OFF_TERM..OFF_POS].copy_from_slice(&(self.term as i64).to_be_bytes());
        out[OFF_POS..OFF_CHANNEL].copy_from_slice(&(self.pos as i64).to_be_bytes());
        out[OFF_CHANNEL..OFF_CHAIN_CRC].copy_from_slice(&self.channel.to_be_bytes());
        out[OFF_CHAIN_CRC..OFF_BODY_CRC].copy_from_slice(&self.chain_crc.to_be_bytes());
        out[OFF_BODY_CRC..OFF_BODY_LEN].copy_from_slice(&self.body_crc.to_be_bytes());
        out[OFF_BODY_LEN..HEADER].copy_from_slice(&self.body_len.to_be_bytes());
    }
}

/// The chain CRC of an entry: the previous entry's chain CRC (0 before the first entry),
/// folded with this entry's index, term, position, channel, body length and body CRC.
pub fn chain_crc(
    prev_chain_crc: u32,
    index: u64,
    term: u64,
    pos: u64,
    channel: i32,
    body_len: u32,
    body_crc: u32,
) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&prev_chain_crc.to_be_bytes());
    h.update(&index.to_be_bytes());
    h.update(&term.to_be_bytes());
    h.update(&pos.to_be_bytes());
    h.update(&channel.to_be_bytes());
    h.update(&body_len.to_be_bytes());
    h.update(&body_crc.to_be_bytes());
    h.finalize()
}

/// Fills in the header of an entry whose body already follows it in `entry[48..]`.
pub fn seal_entry(entry: &mut [u8], index: u64, term: u64, pos: u64, prev_chain_crc: u32) -> EntryHeader {
    assert!(entry.len() >= HEADER, "an entry has a {HEADER}-byte header");
    let body_len = u32::try_from(entry.len() - HEADER).expect("entry sizes are bounded by the file size");
    let body_crc = crc32fast::hash(&entry[HEADER..]);
    let chain = chain_crc(prev_chain_crc, index, term, pos, DEFAULT_CHANNEL, body_len, body_crc);
    let h = EntryHeader { index, term, pos, channel: DEFAULT_CHANNEL, chain_crc: chain, body_crc, body_len };
    h.write_to(entry);
    h
}

/// The blank that ends a data file with `remaining_bytes` left (`remaining_bytes >= 8`).
pub fn encode_blank(remaining_bytes: u64) -> [u8; 8] {
    let mut b = [0u8; 8];
    b[..4].copy_from_slice(&BLANK_MAGIC.to_be_bytes());
    b[4..].copy_from_slice(&(remaining_bytes.min(i32::MAX as u64) as i32).to_be_bytes());
    b
}

/// Why bytes are not a valid entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryCorruptReason {
    /// Fewer bytes than the header, or than the entry's declared size.
    Truncated {
        have_bytes: u64,
        need_bytes: u64,
    },
    BadMagic(i32),
    /// The declared size is below the header, above the limit, or past the file's end.
    BadSize(i64),
    /// `size != 48 + body length`.
    BodyLengthMismatch {
        size: u64,
        body_len: i64,
    },
    /// Index, term or position is negative.
    NegativeField(&'static str),
    /// The entry is not where it says it is.
    PositionMismatch {
        stored: u64,
        expected: u64,
    },
    BodyCrcMismatch {
        stored: u32,
        computed: u32,
    },
    /// A blank whose declared length is not what is left in the file.
    BlankMisplaced {
        declared: i64,
        left: u64,
    },
}

impl fmt::Display for EntryCorruptReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// What the decoder checks beyond the layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryDecodeOptions {
    pub check_body_crc: bool,
    /// The absolute position of the first byte: the entry's `pos` must equal it.
    pub expected_pos: Option<u64>,
    /// Bytes from the entry start to its file's end: a blank must declare exactly this, and
    /// no entry may be longer.
    pub bytes_left_in_file: Option<u64>,
    pub max_entry_bytes: u64,
}

impl Default for EntryDecodeOptions {
    fn default() -> EntryDecodeOptions {
        EntryDecodeOptions {
            check_body_crc: true,
            expected_pos: None,
            bytes_left_in_file: None,
            max_entry_bytes: i32::MAX as u64,
        }
    }
}

/// A valid entry borrowed from the decoded bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryRef<'a> {
    pub header: EntryHeader,
    /// The commit-log record the entry carries.
    pub body: &'a [u8],
    /// The whole entry, header included.
    pub bytes: &'a [u8],
}

/// What the bytes at a position are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodedEntry<'a> {
    Entry(EntryRef<'a>),
    /// The end-of-file blank: the rest of the file is padding.
    Blank {
        remaining_bytes: u64,
    },
    /// Zero magic and zero size: nothing was ever written here (the log's end).
    End,
    Corrupt(EntryCorruptReason),
}

fn be_i32(b: &[u8], at: usize) -> Option<i32> {
    Some(i32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn be_i64(b: &[u8], at: usize) -> Option<i64> {
    Some(i64::from_be_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Reads `(magic, size)`, the 8 bytes every entry and blank starts with.
pub fn peek_entry(buf: &[u8]) -> Option<(i32, i32)> {
    Some((be_i32(buf, OFF_MAGIC)?, be_i32(buf, OFF_SIZE)?))
}

/// How many bytes to read at a position to decode what is there, given its first 8 bytes
/// (`None` if they are neither an entry nor a blank worth reading further).
pub fn entry_extent(magic: i32, size: i32, opts: &EntryDecodeOptions) -> Option<u64> {
    let size = u64::try_from(size).ok()?;
    let within_file = opts.bytes_left_in_file.is_none_or(|left| size <= left);
    (magic == ENTRY_MAGIC && size >= ENTRY_HEADER_BYTES && size <= opts.max_entry_bytes && within_file).then_some(size)
}

fn field(buf: &[u8], at: usize, name: &'static str) -> Result<u64, EntryCorruptReason> {
    let v = be_i64(buf, at)
        .ok_or(EntryCorruptReason::Truncated { have_bytes: buf.len() as u64, need_bytes: HEADER as u64 })?;
    u64::try_from(v).map_err(|_| EntryCorruptReason::NegativeField(name))
}

/// Decodes the entry (or blank) at the start of `buf`, which may hold more bytes after it.
pub fn decode_entry<'a>(buf: &'a [u8], opts: &EntryDecodeOptions) -> DecodedEntry<'a> {
    match decode_checked(buf, opts) {
        Ok(d) => d,
        Err(reason) => DecodedEntry::Corrupt(reason),
    }
}

fn decode_checked<'a>(buf: &'a [u8], opts: &EntryDecodeOptions) -> Result<DecodedEntry<'a>, EntryCorruptReason> {
    let have = buf.len() as u64;
    let (magic, size) =
        peek_entry(buf).ok_or(EntryCorruptReason::Truncated { have_bytes: have, need_bytes: BLANK_BYTES })?;
    if magic == 0 && size == 0 {
        return Ok(DecodedEntry::End);
    }
    if magic == BLANK_MAGIC {
        return match opts.bytes_left_in_file {
            Some(left) if i64::from(size) != left as i64 => {
                Err(EntryCorruptReason::BlankMisplaced { declared: i64::from(size), left })
            }
            _ if size < BLANK_BYTES as i32 => {
                Err(EntryCorruptReason::BlankMisplaced { declared: i64::from(size), left: have })
            }
            _ => Ok(DecodedEntry::Blank { remaining_bytes: size as u64 }),
        };
    }
    if magic != ENTRY_MAGIC {
        return Err(EntryCorruptReason::BadMagic(magic));
    }
    let size_bytes = entry_extent(magic, size, opts).ok_or(EntryCorruptReason::BadSize(i64::from(size)))?;
    if have < size_bytes {
        return Err(EntryCorruptReason::Truncated { have_bytes: have, need_bytes: size_bytes });
    }
    let index = field(buf, OFF_INDEX, "index")?;
    let term = field(buf, OFF_TERM, "term")?;
    let pos = field(buf, OFF_POS, "pos")?;
    if let Some(expected) = opts.expected_pos.filter(|&e| e != pos) {
        return Err(EntryCorruptReason::PositionMismatch { stored: pos, expected });
    }
    let word = |at| be_i32(buf, at).expect("within the header, which is within the entry");
    let body_len = word(OFF_BODY_LEN);
    if i64::from(body_len) + HEADER as i64 != size_bytes as i64 {
        return Err(EntryCorruptReason::BodyLengthMismatch { size: size_bytes, body_len: i64::from(body_len) });
    }
    let bytes = &buf[..size_bytes as usize];
    let body = &bytes[HEADER..];
    let body_crc = word(OFF_BODY_CRC) as u32;
    if opts.check_body_crc {
        let computed = crc32fast::hash(body);
        if computed != body_crc {
            return Err(EntryCorruptReason::BodyCrcMismatch { stored: body_crc, computed });
        }
    }
    let header = EntryHeader {
        index,
        term,
        pos,
        channel: word(OFF_CHANNEL),
        chain_crc: word(OFF_CHAIN_CRC) as u32,
        body_crc,
        body_len: body_len as u32,
    };
    Ok(DecodedEntry::Entry(EntryRef { header, body, bytes }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry(index: u64, term: u64, pos: u64, prev: u32, body: &[u8]) -> (Vec<u8>, EntryHeader) {
        let mut b = vec![0u8; HEADER];
        b.extend_from_slice(body);
        let h = seal_entry(&mut b, index, term, pos, prev);
        (b, h)
    }

    #[test]
    fn round_trip_and_chain() {
        let (b, h) = entry(7, 3, 4096, 0xABCD, b"record");
        assert_eq!(b.len() as u64, h.size_bytes());
        assert_eq!(h.body_pos(), 4096 + 48);
        let opts = EntryDecodeOptions { expected_pos: Some(4096), ..Default::default() };
        let DecodedEntry::Entry(e) = decode_entry(&b, &opts) else { panic!("valid entry") };
        assert_eq!(e.header, h);
        assert_eq!(e.body, b"record");
        assert_eq!(h.chain_crc, chain_crc(0xABCD, 7, 3, 4096, 0, 6, crc32fast::hash(b"record")));
        assert_ne!(h.chain_crc, entry(7, 3, 4096, 0xABCE, b"record").1.chain_crc, "the chain covers the past");
        assert_ne!(h.chain_crc, entry(7, 4, 4096, 0xABCD, b"record").1.chain_crc, "the chain covers the term");
    }

    #[test]
    fn damage_is_typed() {
        let (b, _) = entry(1, 1, 0, 0, b"abc");
        let d = EntryDecodeOptions::default();
        let mut flipped = b.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(matches!(
            decode_entry(&flipped, &d),
            DecodedEntry::Corrupt(EntryCorruptReason::BodyCrcMismatch { .. })
        ));
        assert!(matches!(decode_entry(&b[..50], &d), DecodedEntry::Corrupt(EntryCorruptReason::Truncated { .. })));
        let at = EntryDecodeOptions { expected_pos: Some(64), ..d };
        assert!(matches!(decode_entry(&b, &at), DecodedEntry::Corrupt(EntryCorruptReason::PositionMismatch { .. })));
        let tight = EntryDecodeOptions { bytes_left_in_file: Some(40), ..d };
        assert!(matches!(decode_entry(&b, &tight), DecodedEntry::Corrupt(EntryCorruptReason::BadSize(51))));
        let mut neg = b.clone();
        neg[OFF_TERM] = 0x80;
        assert_eq!(decode_entry(&neg, &d), DecodedEntry::Corrupt(EntryCorruptReason::NegativeField("term")));
        let mut len = b.clone();
        len[OFF_BODY_LEN + 3] = 4;
        assert!(matches!(decode_entry(&len, &d), DecodedEntry::Corrupt(EntryCorruptReason::BodyLengthMismatch { .. })));
        assert_eq!(decode_entry(&[0u8; 64], &d), DecodedEntry::End);
        let blank = encode_blank(100);
        let left = EntryDecodeOptions { bytes_left_in_file: Some(100), ..d };
        assert_eq!(decode_entry(&blank, &left), DecodedEntry::Blank { remaining_bytes: 100 });
        let wrong = EntryDecodeOptions { bytes_left_in_file: Some(99), ..d };
        assert!(matches!(
            decode_entry(&blank, &wrong),
            DecodedEntry::Corrupt(EntryCorruptReason::BlankMisplaced { .. })
        ));
    }

    proptest! {
        #[test]
        fn garbage_never_panics(
            buf in proptest::collection::vec(any::<u8>(), 0..200),
            left in proptest::option::of(0u64..300),
            pos in proptest::option::of(0u64..300),
            max in 0u64..400,
            crc in any::<bool>(),
        ) {
            let opts = EntryDecodeOptions { check_body_crc: crc, expected_pos: pos, bytes_left_in_file: left, max_entry_bytes: max };
            if let DecodedEntry::Entry(e) = decode_entry(&buf, &opts) {
                prop_assert!(e.header.size_bytes() <= buf.len() as u64);
                prop_assert!(e.header.size_bytes() <= max);
                prop_assert_eq!(e.bytes.len() as u64, e.header.size_bytes());
            }
        }

        #[test]
        fn flipped_entries_never_panic_and_crc_catches_body_flips(
            body in proptest::collection::vec(any::<u8>(), 0..100),
            index in 0u64..1 << 40, term in 0u64..1 << 20, pos in 0u64..1 << 40,
            at in any::<prop::sample::Index>(), bit in 0u8..8,
        ) {
            let (mut b, h) = entry(index, term, pos, 9, &body);
            let opts = EntryDecodeOptions { expected_pos: Some(pos), ..Default::default() };
            let orig = b.clone();
            prop_assert_eq!(decode_entry(&orig, &opts), DecodedEntry::Entry(EntryRef { header: h, body: &body, bytes: &orig }));
            let i = at.index(b.len());
            b[i] ^= 1 << bit;
            let d = decode_entry(&b, &opts);
            if i >= HEADER {
                prop_assert!(matches!(d, DecodedEntry::Corrupt(EntryCorruptReason::BodyCrcMismatch { .. })), "{:?}", d);
            }
            if let DecodedEntry::Entry(e) = d {
                // A header flip the decoder cannot see changes the chain CRC recovery checks.
                let chain = chain_crc(9, e.header.index, e.header.term, e.header.pos, e.header.channel, e.header.body_len, e.header.body_crc);
                prop_assert!(chain != e.header.chain_crc || e.header == h);
            }
        }
    }
}
