//! The object-store conformance suite, written once over `Arc<dyn engine::io::ObjectStore>`.
//!
//! Included as a module by every test that runs a backend through it: the local and simulated
//! backends in `sim/tests/object_store_conformance.rs`, the S3 backend in
//! `engine/tests/s3_object_store.rs` (real build, feature `s3`). It needs only `engine` and
//! `bytes`, and expects an empty store.

use std::sync::Arc;

use bytes::Bytes;
use engine::io::object_store::{validate_key, ObjectError, ObjectStore};

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn not_found(key: &str) -> ObjectError {
    ObjectError::NotFound { key: key.to_string() }
}

/// The suite's sections in the order they run; each starts from the store the one before left.
pub const SECTIONS: [&str; 8] = [
    "empty_store",
    "put_get_size",
    "append_semantics",
    "list_semantics",
    "delete_semantics",
    "invalid_keys",
    "key_shapes",
    "large_object",
];

/// The suite. Panics (with the step) on the first difference from the specified behaviour.
/// Prints one line per section passed (shown with `--nocapture`), which the S3 script counts.
pub async fn conformance(store: Arc<dyn ObjectStore>) {
    println!("conformance: {} sections", SECTIONS.len());
    for section in SECTIONS {
        let s = &*store;
        match section {
            "empty_store" => empty_store(s).await,
            "put_get_size" => put_get_size(s).await,
            "append_semantics" => append_semantics(s).await,
            "list_semantics" => list_semantics(s).await,
            "delete_semantics" => delete_semantics(s).await,
            "invalid_keys" => invalid_keys(s).await,
            "key_shapes" => key_shapes(s).await,
            "large_object" => large_object(s).await,
            other => unreachable!("section {other} has no body"),
        }
        println!("conformance section {section}: ok");
    }
}

async fn empty_store(s: &dyn ObjectStore) {
    assert_eq!(s.size("a/b").await, Err(not_found("a/b")));
    assert_eq!(s.get_range("a/b", 0, 0).await, Err(not_found("a/b")));
    assert_eq!(s.list("").await, Ok(vec![]));
    assert_eq!(s.delete("a/b").await, Ok(()), "deleting a missing object succeeds");
}

async fn put_get_size(s: &dyn ObjectStore) {
    s.put("seg/a", b("hello")).await.unwrap();
    assert_eq!(s.size("seg/a").await, Ok(5));
    assert_eq!(s.get_range("seg/a", 0, 5).await, Ok(b("hello")));
    assert_eq!(s.get_range("seg/a", 1, 3).await, Ok(b("ell")));
    assert_eq!(s.get_range("seg/a", 5, 0).await, Ok(Bytes::new()), "empty range at the end");
    assert_eq!(s.get_range("seg/a", 2, 0).await, Ok(Bytes::new()), "empty range inside");
    for (offset, len) in [(4, 2), (6, 0), (0, 6), (u64::MAX, 1), (1, u64::MAX), (u64::MAX, u64::MAX)] {
        assert_eq!(
            s.get_range("seg/a", offset, len).await,
            Err(ObjectError::RangeOutOfBounds { key: "seg/a".into(), offset, len, size: 5 }),
            "range {offset}+{len}"
        );
    }
    // put replaces, also with a shorter and with an empty object.
    s.put("seg/a", b("xy")).await.unwrap();
    assert_eq!(s.size("seg/a").await, Ok(2));
    assert_eq!(s.get_range("seg/a", 0, 2).await, Ok(b("xy")));
    s.put("seg/empty", Bytes::new()).await.unwrap();
    assert_eq!(s.size("seg/empty").await, Ok(0));
    assert_eq!(s.get_range("seg/empty", 0, 0).await, Ok(Bytes::new()));
}

async fn append_semantics(s: &dyn ObjectStore) {
    let mismatch =
        |key: &str, expected: u64, actual: u64| Err(ObjectError::OffsetMismatch { key: key.into(), expected, actual });
    assert_eq!(s.append("log/1", 7, b("abc")).await, mismatch("log/1", 7, 0), "a missing object has size 0");
    assert_eq!(s.size("log/1").await, Err(not_found("log/1")), "a refused append creates nothing");
    assert_eq!(s.append("log/1", 0, b("abc")).await, Ok(3), "offset 0 creates");
    assert_eq!(s.append("log/1", 3, b("de")).await, Ok(5));
    assert_eq!(s.append("log/1", 3, b("de")).await, mismatch("log/1", 3, 5), "a retried append is detected");
    assert_eq!(s.append("log/1", 0, b("zz")).await, mismatch("log/1", 0, 5));
    assert_eq!(s.append("log/1", u64::MAX, b("z")).await, mismatch("log/1", u64::MAX, 5));
    assert_eq!(s.append("log/1", 5, Bytes::new()).await, Ok(5), "an empty append is a no-op");
    assert_eq!(s.get_range("log/1", 0, 5).await, Ok(b("abcde")));
    assert_eq!(s.append("log/empty", 0, Bytes::new()).await, Ok(0), "an empty append at 0 creates");
    assert_eq!(s.size("log/empty").await, Ok(0));
    // Appending to an object made by put continues it.
    s.put("log/2", b("12")).await.unwrap();
    assert_eq!(s.append("log/2", 2, b("34")).await, Ok(4));
    assert_eq!(s.get_range("log/2", 0, 4).await, Ok(b("1234")));
}

async fn list_semantics(s: &dyn ObjectStore) {
    let all = ["log/1", "log/2", "log/empty", "seg/a", "seg/empty"];
    assert_eq!(s.list("").await, Ok(all.iter().map(|k| k.to_string()).collect()));
    assert_eq!(s.list("log/").await, Ok(vec!["log/1".into(), "log/2".into(), "log/empty".into()]));
    assert_eq!(s.list("log/e").await, Ok(vec!["log/empty".into()]), "a prefix may end mid-component");
    assert_eq!(s.list("se").await, Ok(vec!["seg/a".into(), "seg/empty".into()]));
    assert_eq!(s.list("zzz").await, Ok(vec![]));
    assert_eq!(s.list("log/1/").await, Ok(vec![]));
    // Sorted by key, not by creation order or depth.
    s.put("b/z", b("1")).await.unwrap();
    s.put("b/a/c", b("1")).await.unwrap();
    s.put("b/a0", b("1")).await.unwrap();
    assert_eq!(s.list("b/").await, Ok(vec!["b/a/c".into(), "b/a0".into(), "b/z".into()]));
}

async fn delete_semantics(s: &dyn ObjectStore) {
    s.delete("seg/a").await.unwrap();
    assert_eq!(s.size("seg/a").await, Err(not_found("seg/a")));
    assert_eq!(s.get_range("seg/a", 0, 0).await, Err(not_found("seg/a")));
    assert_eq!(s.delete("seg/a").await, Ok(()), "deleting twice succeeds");
    assert_eq!(s.list("seg/").await, Ok(vec!["seg/empty".into()]));
    assert_eq!(s.append("seg/a", 0, b("new")).await, Ok(3), "a deleted key starts over at 0");
    // A key that is only a prefix of other keys is not an object.
    assert_eq!(s.size("b/a").await, Err(not_found("b/a")));
    assert_eq!(s.delete("b/a").await, Ok(()));
    assert_eq!(s.list("b/a/").await, Ok(vec!["b/a/c".into()]), "deleting a prefix deletes nothing");
    // Below an object is nothing either.
    assert_eq!(s.size("b/z/x").await, Err(not_found("b/z/x")));
    assert_eq!(s.get_range("b/z/x", 0, 0).await, Err(not_found("b/z/x")));
    assert_eq!(s.delete("b/z/x").await, Ok(()));
}

async fn invalid_keys(s: &dyn ObjectStore) {
    let before = s.list("").await.unwrap();
    for key in ["", "/a", "a/", "a//b", "a/./b", "../x", "a/..", ".", "a\\b", "a\0b", "/", "x.tmp-put"] {
        let err = validate_key(key).expect_err(key);
        assert!(matches!(err, ObjectError::InvalidKey { .. }), "{key:?}");
        assert_eq!(s.put(key, b("x")).await, Err(err.clone()), "put {key:?}");
        assert_eq!(s.append(key, 0, b("x")).await, Err(err.clone()), "append {key:?}");
        assert_eq!(s.get_range(key, 0, 0).await, Err(err.clone()), "get {key:?}");
        assert_eq!(s.size(key).await, Err(err.clone()), "size {key:?}");
        assert_eq!(s.delete(key).await, Err(err.clone()), "delete {key:?}");
    }
    assert_eq!(s.list("").await.unwrap(), before, "invalid requests change nothing");
}

async fn key_shapes(s: &dyn ObjectStore) {
    // Dots, unicode, spaces and one key per extension of the same stem (the real backend's
    // temporary files must not collide or show); characters that S3 and URLs treat specially,
    // and a key that looks percent-encoded already (the S3 backend encodes and decodes keys).
    let keys = [
        "k/seg.log",
        "k/seg.idx",
        "k/seg",
        "k/..x",
        "k/ü ñ",
        "k/a.b.c",
        "k/a%b",
        "k/100%25",
        "k/tab\there",
        "k/q?x=1#f",
        "k/{x}[y]",
        "k/~^|<>\"`",
        "k/é/ü",
    ];
    for (i, key) in keys.iter().enumerate() {
        s.put(key, Bytes::from(vec![i as u8; i + 1])).await.unwrap();
    }
    let mut sorted: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
    sorted.sort();
    assert_eq!(s.list("k/").await, Ok(sorted));
    for (i, key) in keys.iter().enumerate() {
        assert_eq!(s.get_range(key, 0, i as u64 + 1).await, Ok(Bytes::from(vec![i as u8; i + 1])), "{key}");
    }
}

async fn large_object(s: &dyn ObjectStore) {
    let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    s.put("big/1", Bytes::from(data.clone())).await.unwrap();
    assert_eq!(s.append("big/1", 1_000_000, Bytes::from(data.clone())).await, Ok(2_000_000));
    let got = s.get_range("big/1", 999_990, 20).await.unwrap();
    assert_eq!(&got[..10], &data[999_990..]);
    assert_eq!(&got[10..], &data[..10]);
}
