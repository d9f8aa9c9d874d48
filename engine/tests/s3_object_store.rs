//! The S3 backend (`engine::io::s3`, real build, feature `s3`): the object-store conformance
//! suite and its bad-input cases against an S3-compatible server, and its typed errors against
//! a fake server on 127.0.0.1 that answers with errors, garbage or nothing at all.
//!
//! Tests named `s3_server_*` need a server and its bucket in the environment (`AWS_ENDPOINT_URL`,
//! `AWS_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `ROCKETSIM_S3_BUCKET`);
//! `scripts/s3-server.sh` starts one and runs them. The others need nothing.
#![cfg(all(feature = "s3", not(madsim)))]

#[path = "../../sim/tests/object_store_suite/mod.rs"]
mod object_store_suite;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use engine::io::object_store::{ObjectError, ObjectStore};
use engine::io::s3::{S3Config, S3ObjectStore};
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore as _, ObjectStoreExt as _};

/// The configuration from the environment, under a prefix of its own for this test.
fn server_config(test: &str) -> S3Config {
    let mut config = S3Config::from_env().unwrap_or_else(|e| {
        panic!("{e}: the s3_server_* tests need an S3-compatible server; scripts/s3-server.sh runs them")
    });
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    let unique = format!("{test}-{}-{nanos}", std::process::id());
    config.prefix = if config.prefix.is_empty() { unique } else { format!("{}/{unique}", config.prefix) };
    config
}

/// Every name stored under the config's prefix, as the bucket lists them.
async fn stored_names(config: &S3Config) -> Vec<String> {
    let client = config.client().unwrap();
    let metas: Vec<_> = client.list(Some(&Path::from(config.prefix.as_str()))).try_collect().await.unwrap();
    let mut names: Vec<String> = metas.into_iter().map(|m| m.location.to_string()).collect();
    names.sort();
    names
}

/// Writes `data` under `name` (below the prefix) directly, bypassing the store's layout rules.
async fn write_raw(config: &S3Config, name: &str, data: &'static [u8]) {
    let path = Path::from(format!("{}/{name}", config.prefix));
    config.client().unwrap().put(&path, Bytes::from_static(data).into()).await.unwrap();
}

fn assert_io_error<T: std::fmt::Debug>(got: Result<T, ObjectError>, contains: &str) {
    match &got {
        Err(ObjectError::Io { message, .. }) if message.contains(contains) => {}
        other => panic!("expected an Io error mentioning {contains:?}, got {other:?}"),
    }
}

#[tokio::test]
async fn s3_server_conforms() {
    let store: Arc<dyn ObjectStore> = Arc::new(S3ObjectStore::new(&server_config("conformance")).unwrap());
    object_store_suite::conformance(store).await;
}

#[tokio::test]
async fn s3_server_layout_is_one_chunk_per_append_named_by_offset() {
    let config = server_config("layout");
    let store = S3ObjectStore::new(&config).unwrap();
    store.check().await.unwrap();
    assert_eq!(store.append("log/x", 0, Bytes::from_static(b"abc")).await, Ok(3));
    assert_eq!(store.append("log/x", 3, Bytes::from_static(b"de")).await, Ok(5));
    let p = &config.prefix;
    assert_eq!(
        stored_names(&config).await,
        vec![format!("{p}/log/x/00000000000000000000"), format!("{p}/log/x/00000000000000000003")]
    );
    // A retried append (its acknowledgement lost) is refused and stores nothing more.
    let retried = store.append("log/x", 3, Bytes::from_static(b"de")).await;
    assert_eq!(retried, Err(ObjectError::OffsetMismatch { key: "log/x".into(), expected: 3, actual: 5 }));
    assert_eq!(stored_names(&config).await.len(), 2);
    assert_eq!(store.get_range("log/x", 1, 4).await, Ok(Bytes::from_static(b"bcde")), "a read spans chunks");
    assert_eq!(store.get_range("log/x", 4, 0).await, Ok(Bytes::new()), "an empty range inside a chunk");
    assert_eq!(S3ObjectStore::new(&config).unwrap().get_range("log/x", 1, 0).await, Ok(Bytes::new()));
    // put replaces every chunk with one; delete leaves nothing stored.
    store.put("log/x", Bytes::from_static(b"xy")).await.unwrap();
    assert_eq!(stored_names(&config).await, vec![format!("{p}/log/x/00000000000000000000")]);
    assert_eq!(store.get_range("log/x", 0, 2).await, Ok(Bytes::from_static(b"xy")));
    store.delete("log/x").await.unwrap();
    assert_eq!(stored_names(&config).await, Vec::<String>::new());
    // An empty object is its marker; appending to it starts at 0.
    store.put("log/e", Bytes::new()).await.unwrap();
    assert_eq!(stored_names(&config).await, vec![format!("{p}/log/e/created")]);
    assert_eq!(store.append("log/e", 0, Bytes::from_static(b"1")).await, Ok(1));
    assert_eq!(store.get_range("log/e", 0, 1).await, Ok(Bytes::from_static(b"1")));
}

#[tokio::test]
async fn s3_server_keys_are_stored_percent_encoded() {
    // The conformance suite round-trips keys with reserved characters; here, how they are stored.
    let config = server_config("chars");
    let store = S3ObjectStore::new(&config).unwrap();
    for key in ["sp/a%b", "sp/100%25", "sp/é"] {
        store.put(key, Bytes::from_static(b"x")).await.unwrap();
    }
    assert_eq!(store.list("sp/").await, Ok(vec!["sp/100%25".into(), "sp/a%b".into(), "sp/é".into()]));
    let p = &config.prefix;
    let chunk0 = |name: &str| format!("{p}/sp/{name}/00000000000000000000");
    assert_eq!(stored_names(&config).await, vec![chunk0("%C3%A9"), chunk0("100%2525"), chunk0("a%25b")]);
}

#[tokio::test]
async fn s3_server_remembered_chunks_follow_changes_made_elsewhere() {
    // Two stores on one prefix: `b` changes what `a` remembers, as another process would.
    let config = server_config("elsewhere");
    let a = S3ObjectStore::new(&config).unwrap();
    let b = S3ObjectStore::new(&config).unwrap();
    let bytes = |s: &'static str| Bytes::from_static(s.as_bytes());
    assert_eq!(a.append("k", 0, bytes("abc")).await, Ok(3));
    assert_eq!(a.append("k", 3, bytes("de")).await, Ok(5));
    assert_eq!(a.get_range("k", 0, 5).await, Ok(bytes("abcde")));
    // A put elsewhere replaces chunk 0 and deletes chunk 3: `a` must not read either as it was.
    b.put("k", bytes("xyz")).await.unwrap();
    assert_eq!(a.get_range("k", 0, 3).await, Ok(bytes("xyz")), "a replaced chunk is read anew");
    assert_eq!(
        a.get_range("k", 0, 5).await,
        Err(ObjectError::RangeOutOfBounds { key: "k".into(), offset: 0, len: 5, size: 3 })
    );
    assert_eq!(
        a.append("k", 5, bytes("q")).await,
        Err(ObjectError::OffsetMismatch { key: "k".into(), expected: 5, actual: 3 })
    );
    // `a` continues what it remembers; a put elsewhere removes its last chunk: its next append
    // is refused rather than stored past a gap.
    assert_eq!(a.append("k", 3, bytes("12")).await, Ok(5));
    b.put("k", bytes("long enough")).await.unwrap();
    assert_eq!(
        a.append("k", 5, bytes("!")).await,
        Err(ObjectError::OffsetMismatch { key: "k".into(), expected: 5, actual: 11 })
    );
    assert_eq!(a.size("k").await, Ok(11));
    assert_eq!(a.get_range("k", 0, 11).await, Ok(bytes("long enough")));
    // A delete elsewhere: `a` reads nothing it remembers.
    b.delete("k").await.unwrap();
    assert_eq!(a.get_range("k", 0, 4).await, Err(ObjectError::NotFound { key: "k".into() }));
    assert_eq!(
        a.append("k", 11, bytes("!")).await,
        Err(ObjectError::OffsetMismatch { key: "k".into(), expected: 11, actual: 0 })
    );
    assert_eq!(stored_names(&config).await, Vec::<String>::new(), "nothing was stored past a gap");
}

#[tokio::test]
async fn s3_server_concurrent_appends_at_one_offset_store_one() {
    let config = server_config("race");
    let store = Arc::new(S3ObjectStore::new(&config).unwrap());
    assert_eq!(store.append("r", 0, Bytes::from_static(b"abc")).await, Ok(3));
    let writers: Vec<_> = (0..4u8)
        .map(|i| {
            let store = Arc::clone(&store);
            tokio::spawn(async move { (i, store.append("r", 3, Bytes::from(vec![b'0' + i; 2])).await) })
        })
        .collect();
    let mut winners = Vec::new();
    for writer in writers {
        match writer.await.unwrap() {
            (i, Ok(5)) => winners.push(i),
            (_, Err(ObjectError::OffsetMismatch { expected: 3, actual: 5, .. })) => {}
            (i, other) => panic!("writer {i}: {other:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one append at offset 3 is stored: {winners:?}");
    let won = vec![b'0' + winners[0]; 2];
    assert_eq!(store.get_range("r", 3, 2).await, Ok(Bytes::from(won)));
    assert_eq!(stored_names(&config).await.len(), 2);
}

#[tokio::test]
async fn s3_server_chunks_that_do_not_join_up_are_typed_errors() {
    let config = server_config("gap");
    let store = S3ObjectStore::new(&config).unwrap();
    assert_eq!(store.append("g/x", 0, Bytes::from_static(b"abc")).await, Ok(3));
    // A stray chunk past a gap: never counted, every reader and writer refuses.
    write_raw(&config, "g/x/00000000000000000007", b"zz").await;
    assert_io_error(store.size("g/x").await, "leaves a gap after the end 3");
    assert_io_error(store.get_range("g/x", 0, 3).await, "leaves a gap");
    assert_io_error(store.append("g/x", 3, Bytes::from_static(b"de")).await, "leaves a gap");
    assert_eq!(stored_names(&config).await.len(), 2, "the refused append stored nothing");
    assert_eq!(store.list("g/").await, Ok(vec!["g/x".to_string()]));
    // A chunk overlapping the one before it.
    write_raw(&config, "g/y/00000000000000000000", b"abc").await;
    write_raw(&config, "g/y/00000000000000000001", b"zz").await;
    assert_io_error(store.size("g/y").await, "overlaps the end 3");
    // The first chunk missing.
    write_raw(&config, "g/z/00000000000000000004", b"zz").await;
    assert_io_error(store.size("g/z").await, "leaves a gap after the end 0");
    assert_io_error(store.append("g/z", 0, Bytes::from_static(b"abcd")).await, "leaves a gap");
    // delete still removes all of them, and the key starts over.
    for key in ["g/x", "g/y", "g/z"] {
        store.delete(key).await.unwrap();
        assert_eq!(store.size(key).await, Err(ObjectError::NotFound { key: key.into() }));
    }
    assert_eq!(stored_names(&config).await, Vec::<String>::new());
    // An object that is not a chunk of the layout.
    write_raw(&config, "odd/notes.txt", b"hello").await;
    assert_io_error(store.size("odd").await, "is not a chunk");
    assert_io_error(store.list("").await, "is not a chunk");
}

#[tokio::test]
async fn s3_server_missing_bucket_is_a_typed_error() {
    let mut config = server_config("nobucket");
    config.bucket = "rocketsim-no-such-bucket".into();
    let store = S3ObjectStore::new(&config).unwrap();
    assert_io_error(store.check().await, "NoSuchBucket");
    assert_io_error(store.size("a").await, "NoSuchBucket");
    assert_io_error(store.append("a", 0, Bytes::from_static(b"x")).await, "NoSuchBucket");
}

/// A fake S3 endpoint on 127.0.0.1 that answers each of at most `max_connections` connections
/// with `response` after reading the request head (or, with `None`, holds it open unanswered
/// for `hold`).
fn fake_server(response: Option<&'static str>, max_connections: usize, hold: Duration) -> S3Config {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming().take(max_connections) {
            let Ok(stream) = stream else { continue };
            std::thread::spawn(move || answer(stream, response, hold));
        }
    });
    S3Config {
        endpoint: Some(endpoint),
        region: "us-east-1".into(),
        bucket: "fake-bucket".into(),
        prefix: String::new(),
        access_key_id: "id".into(),
        secret_access_key: "secret".into(),
        security_token: None,
        request_timeout_ms: 500,
        max_retries: 0,
    }
}

fn answer(mut stream: TcpStream, response: Option<&str>, hold: Duration) {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok();
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    match response {
        Some(response) => {
            stream.write_all(response.as_bytes()).ok();
        }
        None => std::thread::sleep(hold),
    }
}

fn http_response(status: &str, body: &str) -> &'static str {
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    Box::leak(response.into_boxed_str())
}

#[tokio::test]
async fn server_errors_are_typed_errors() {
    let body = "<?xml version=\"1.0\"?><Error><Code>InternalError</Code><Message>boom</Message></Error>";
    let store =
        S3ObjectStore::new(&fake_server(Some(http_response("500 Internal Server Error", body)), 16, Duration::ZERO))
            .unwrap();
    assert_io_error(store.size("a/b").await, "500");
    assert_io_error(store.append("a/b", 0, Bytes::from_static(b"x")).await, "500");
    assert_io_error(store.put("a/b", Bytes::from_static(b"x")).await, "500");
    assert_io_error(store.get_range("a/b", 0, 1).await, "500");
    assert_io_error(store.list("a/").await, "500");
    assert_io_error(store.delete("a/b").await, "500");
}

#[tokio::test]
async fn refused_credentials_are_typed_errors() {
    let body = "<?xml version=\"1.0\"?><Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>";
    let store =
        S3ObjectStore::new(&fake_server(Some(http_response("403 Forbidden", body)), 4, Duration::ZERO)).unwrap();
    assert_io_error(store.check().await, "check AWS_ACCESS_KEY_ID");
    assert_io_error(store.size("a").await, "check AWS_ACCESS_KEY_ID");
}

#[tokio::test]
async fn garbage_answers_are_typed_errors() {
    let store =
        S3ObjectStore::new(&fake_server(Some(http_response("200 OK", "\u{0}not xml<<")), 4, Duration::ZERO)).unwrap();
    let got = store.size("a").await;
    assert!(matches!(got, Err(ObjectError::Io { .. })), "{got:?}");
    let got = store.list("").await;
    assert!(matches!(got, Err(ObjectError::Io { .. })), "{got:?}");
}

#[tokio::test]
async fn timeouts_are_outcome_unknown() {
    // The server takes each request and never answers within the 500 ms deadline.
    let store = S3ObjectStore::new(&fake_server(None, 8, Duration::from_secs(3))).unwrap();
    let got = store.size("a").await;
    assert!(matches!(&got, Err(e) if e.outcome_unknown()), "{got:?}");
    let got = store.append("a", 0, Bytes::from_static(b"x")).await;
    assert_eq!(got, Err(ObjectError::TimedOutOutcomeUnknown { op: "append".into(), key: "a".into() }));
}

#[tokio::test]
async fn refused_connections_are_unavailable() {
    // A port that was just free: nothing listens there.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut config = fake_server(None, 0, Duration::ZERO);
    config.endpoint = Some(format!("http://127.0.0.1:{port}"));
    let store = S3ObjectStore::new(&config).unwrap();
    assert_eq!(store.size("a").await, Err(ObjectError::Unavailable { op: "size".into(), key: "a".into() }));
    let got = store.append("a", 0, Bytes::from_static(b"x")).await;
    assert_eq!(got, Err(ObjectError::Unavailable { op: "append".into(), key: "a".into() }));
}
