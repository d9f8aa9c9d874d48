//! Java's `String.hashCode` over UTF-16 code units, as the index file's key hash needs it
//! (the on-disk slot of a key must be the one RocketMQ would compute).

/// `s.hashCode()` in Java: `h = 31 * h + c` over UTF-16 code units, wrapping.
pub fn java_string_hash(s: &str) -> i32 {
    java_hash_from(0, s)
}

/// Continues a `String.hashCode` over `s`: the hash of a concatenation, part by part.
fn java_hash_from(h: i32, s: &str) -> i32 {
    let step = |h: i32, c: i32| h.wrapping_mul(31).wrapping_add(c);
    if s.is_ascii() {
        // ASCII is one UTF-16 unit per byte: no UTF-8 decoding on dispatch's path (keys and
        // topics are ASCII in practice).
        s.bytes().fold(h, |h, b| step(h, i32::from(b)))
    } else {
        s.encode_utf16().fold(h, |h, c| step(h, i32::from(c)))
    }
}

/// RocketMQ's `indexKeyHashMethod`: `abs(hashCode)`, with `Integer.MIN_VALUE` mapped to 0
/// (Java's `Math.abs(MIN_VALUE)` is negative).
pub fn index_key_hash(key: &str) -> i32 {
    abs_hash(java_string_hash(key))
}

fn abs_hash(h: i32) -> i32 {
    if h == i32::MIN {
        0
    } else {
        h.abs()
    }
}

/// `index_key_hash` of a message key's index key `topic#key`, without building it.
pub fn index_key_hash_of(topic: &str, key: &str) -> i32 {
    IndexKeyHasher::new(topic).hash(key)
}

/// `index_key_hash_of` for many keys of one topic: the `topic#` part is hashed once.
pub struct IndexKeyHasher(i32);

impl IndexKeyHasher {
    pub fn new(topic: &str) -> IndexKeyHasher {
        IndexKeyHasher(java_hash_from(java_hash_from(0, topic), "#"))
    }

    pub fn hash(&self, key: &str) -> i32 {
        abs_hash(java_hash_from(self.0, key))
    }
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
        assert_eq!(index_key_hash_of("TopicTest", "KEY1"), index_key_hash("TopicTest#KEY1"));
        assert_eq!(index_key_hash_of("T😀", "k"), index_key_hash("T😀#k"));
    }

    proptest::proptest! {
        #[test]
        fn topic_key_hash_is_the_hash_of_the_joined_key(topic in "\\PC{0,12}", key in "\\PC{0,12}") {
            proptest::prop_assert_eq!(index_key_hash_of(&topic, &key), index_key_hash(&format!("{topic}#{key}")));
            let utf16: i32 = format!("{topic}#{key}").encode_utf16().fold(0i32, |h, c| h.wrapping_mul(31).wrapping_add(i32::from(c)));
            proptest::prop_assert_eq!(index_key_hash(&format!("{topic}#{key}")), abs_hash(utf16));
        }
    }
}
