//! The DLedger index: one 32-byte unit per entry at `index * 32` (`magic i32 | pos i64 |
//! size i32 | index i64 | term i64`, big-endian), so an entry is found by its index without
//! scanning the data. Derived from the data files: recovery checks it and rewrites it.

use super::entry::{EntryHeader, ENTRY_MAGIC};

pub const INDEX_UNIT_BYTES: u64 = 32;

/// One index unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexUnit {
    pub pos: u64,
    pub size_bytes: u32,
    pub index: u64,
    pub term: u64,
}

impl IndexUnit {
    pub fn of(h: &EntryHeader) -> IndexUnit {
        IndexUnit { pos: h.pos, size_bytes: h.size_bytes() as u32, index: h.index, term: h.term }
    }

    pub fn encode(&self) -> [u8; INDEX_UNIT_BYTES as usize] {
        let mut b = [0u8; INDEX_UNIT_BYTES as usize];
        b[0..4].copy_from_slice(&ENTRY_MAGIC.to_be_bytes());
        b[4..12].copy_from_slice(&(self.pos as i64).to_be_bytes());
        b[12..16].copy_from_slice(&(self.size_bytes as i32).to_be_bytes());
        b[16..24].copy_from_slice(&(self.index as i64).to_be_bytes());
        b[24..32].copy_from_slice(&(self.term as i64).to_be_bytes());
        b
    }

    /// `None` for anything but a unit as `encode` writes it (zeros, garbage, negative fields).
    pub fn decode(b: &[u8]) -> Option<IndexUnit> {
        let b: &[u8; INDEX_UNIT_BYTES as usize] = b.get(..INDEX_UNIT_BYTES as usize)?.try_into().ok()?;
        let i32_at = |o: usize| i32::from_be_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let u64_at = |o: usize| u64::try_from(i64::from_be_bytes(b[o..o + 8].try_into().ok()?)).ok();
        if i32_at(0) != ENTRY_MAGIC {
            return None;
        }
        Some(IndexUnit {
            pos: u64_at(4)?,
            size_bytes: u32::try_from(i32_at(12)).ok()?,
            index: u64_at(16)?,
            term: u64_at(24)?,
        })
    }

    /// Whether the unit describes the entry `h`.
    pub fn matches(&self, h: &EntryHeader) -> bool {
        *self == IndexUnit::of(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip_and_rejects() {
        let u = IndexUnit { pos: 1 << 33, size_bytes: 300, index: 12, term: 4 };
        assert_eq!(IndexUnit::decode(&u.encode()), Some(u));
        assert_eq!(IndexUnit::decode(&[0u8; 32]), None);
        assert_eq!(IndexUnit::decode(&u.encode()[..31]), None);
        let mut neg = u.encode();
        neg[16] = 0x80;
        assert_eq!(IndexUnit::decode(&neg), None);
    }

    proptest! {
        #[test]
        fn garbage_never_panics(b in proptest::collection::vec(any::<u8>(), 0..40)) {
            if let Some(u) = IndexUnit::decode(&b) {
                prop_assert_eq!(&u.encode()[..], &b[..32]);
            }
        }
    }
}
