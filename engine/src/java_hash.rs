//! Java's `String.hashCode` over UTF-16 code units, as the index file's key hash needs it
//! (the on-disk slot of a key must be the one RocketMQ would compute).

/// `s.hashCode()` in Java: `h = 31 * h + c` over UTF-16 code units, wrapping.
pub fn java_string_hash(s: &str) -> i32 {
    s.encode_utf16().fold(0i32, |h, c| h.wrapping_mul(31).wrapping_add(i32::from(c)))
}

/// RocketMQ's `indexKeyHashMethod`: `abs(hashCode)`, with `Integer.MIN_VALUE` mapped to 0
/// (Java's `Math.abs(MIN_VALUE)` is negative).
pub fn index_key_hash(key: &str) -> i32 {
    let h = java_string_hash(key);
    if h == i32::MIN {
        0
    } else {
        h.abs()
    }
}

/// The index key of a message key: `topic#key`.
pub fn index_key(topic: &str, key: &str) -> String {
    format!("{topic}#{key}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_java() {
        // Values computed with the JDK.
        assert_eq!(java_string_hash(""), 0);
        assert_eq!(java_string_hash("a"), 97);
        assert_eq!(java_string_hash("hello"), 99162322);
        assert_eq!(
            java_string_hash("TopicTest#KEY1"),
            "TopicTest#KEY1".encode_utf16().fold(0i32, |h, c| h.wrapping_mul(31).wrapping_add(c as i32))
        );
        // Supplementary characters hash as two surrogate code units.
        assert_eq!(java_string_hash("😀"), 0xD83Di32 * 31 + 0xDE00);
        // "polygenelubricants".hashCode() == Integer.MIN_VALUE
        assert_eq!(java_string_hash("polygenelubricants"), i32::MIN);
        assert_eq!(index_key_hash("polygenelubricants"), 0);
        assert_eq!(index_key_hash("Aa"), 2112);
    }
}
