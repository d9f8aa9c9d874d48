//! The S3 backend of the object-store seam (cargo feature `s3`, real build only), on Apache
//! Arrow's `object_store` crate.
//!
//! S3 cannot append to an object, so an appendable object is a series of chunk objects:
//!
//! ```text
//! {prefix}/{key}/{offset:020}   one per append (and one per put), named by its starting offset
//! {prefix}/{key}/created        empty marker: the object exists even while it has no bytes
//! ```
//!
//! Every stored name is a key plus one last component that is ours, so a key never collides
//! with the chunks of another ("b/a" stores `b/a/000…0`, "b/a/000…0" stores
//! `b/a/000…0/000…0`), and the chunks of a key are exactly the objects directly below it.
//! Key components are stored percent-encoded as `object_store` encodes them.
//!
//! - An append creates its chunk with a conditional create (`If-None-Match: *`) after checking
//!   that the chunks end at the expected offset; a retried append after a lost acknowledgement
//!   finds the object longer (or its chunk name taken) and is refused with `OffsetMismatch`,
//!   so the same bytes are never stored twice.
//! - The size is the end of the chunks, which must follow each other from offset 0 without a gap
//!   or an overlap; chunks that do not join up are an error, never counted.
//! - A put deletes the chunks after the first (last first), then overwrites chunk 0; a delete
//!   removes every chunk (last first), then the marker. Stopped half-way, either leaves a
//!   prefix of the old object, never a mix of old and new bytes.
//!
//! One writer per key is assumed, as with the other backends: the conditional create protects
//! a writer against its own retries and against a second appender, not against a concurrent put
//! or delete of the same key.
//!
//! The store's futures need a tokio runtime with I/O and time enabled.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::TryStreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::client::{HttpError, HttpErrorKind};
use object_store::path::{Path, PathPart};
use object_store::{
    ClientOptions, GetOptions, ObjectMeta, ObjectStore as _, ObjectStoreExt as _, PutMode, PutOptions, PutResult,
    RetryConfig,
};

use super::object_store::{validate_key, ObjectError, ObjectStore};
use super::BoxFuture;

/// The environment variable naming the bucket (the AWS tools have none).
pub const BUCKET_VAR: &str = "ROCKETSIM_S3_BUCKET";
/// The environment variable with an optional key prefix inside the bucket.
pub const PREFIX_VAR: &str = "ROCKETSIM_S3_PREFIX";

/// Width of a chunk name: `u64::MAX` has 20 decimal digits, and equal widths sort by offset.
const CHUNK_NAME_DIGITS: usize = 20;
/// Name of the marker that makes an object exist before (or without) any bytes.
const MARKER_NAME: &str = "created";

/// A configuration that cannot be used: which variable, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum S3ConfigError {
    #[error("{var} is not set (S3 object store configuration)")]
    Missing { var: String },
    #[error("{var}={value:?} is invalid: {reason}")]
    Invalid { var: String, value: String, reason: String },
    #[error("cannot build the S3 client: {message}")]
    Client { message: String },
}

/// Where and as whom the store connects.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Config {
    /// `http(s)://host[:port]` of an S3-compatible service; `None` is AWS itself.
    pub endpoint: Option<String>,
    pub region: String,
    pub bucket: String,
    /// Keys are stored under this `/`-separated prefix of the bucket ("" for the bucket root).
    pub prefix: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    pub security_token: Option<String>,
    /// Deadline of one HTTP request; past it the request's outcome is unknown.
    pub request_timeout_ms: u64,
    /// Retries of a failed request inside the client (5xx answers, lost connections, and
    /// timeouts of requests that are safe to repeat).
    pub max_retries: usize,
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secret and the security token stay out of logs.
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("access_key_id", &self.access_key_id)
            .field("request_timeout_ms", &self.request_timeout_ms)
            .field("max_retries", &self.max_retries)
            .finish_non_exhaustive()
    }
}

impl S3Config {
    pub const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 30_000;
    pub const DEFAULT_MAX_RETRIES: usize = 3;

    /// Reads the configuration from the environment, as the AWS tools read it:
    /// `AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL` (optional), `AWS_REGION` or
    /// `AWS_DEFAULT_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
    /// `AWS_SESSION_TOKEN` (optional), plus [`BUCKET_VAR`] and [`PREFIX_VAR`] (optional).
    pub fn from_env() -> Result<S3Config, S3ConfigError> {
        S3Config::from_lookup(|var| std::env::var(var).ok())
    }

    /// As [`S3Config::from_env`], reading variables through `lookup`; an empty value is unset.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<S3Config, S3ConfigError> {
        let get = |var: &str| lookup(var).filter(|v| !v.is_empty());
        let first_of = |vars: &[&str]| vars.iter().find_map(|var| get(var).map(|v| (var.to_string(), v)));
        let require = |vars: &[&str]| first_of(vars).ok_or_else(|| S3ConfigError::Missing { var: vars.join(" or ") });
        let (_, region) = require(&["AWS_REGION", "AWS_DEFAULT_REGION"])?;
        let (_, bucket) = require(&[BUCKET_VAR])?;
        let (_, access_key_id) = require(&["AWS_ACCESS_KEY_ID"])?;
        let (_, secret_access_key) = require(&["AWS_SECRET_ACCESS_KEY"])?;
        let config = S3Config {
            endpoint: first_of(&["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"]).map(|(_, v)| v),
            region,
            bucket,
            prefix: get(PREFIX_VAR).unwrap_or_default(),
            access_key_id,
            secret_access_key,
            security_token: get("AWS_SESSION_TOKEN"),
            request_timeout_ms: S3Config::DEFAULT_REQUEST_TIMEOUT_MS,
            max_retries: S3Config::DEFAULT_MAX_RETRIES,
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks the shape of every field, naming the variable it is read from.
    pub fn validate(&self) -> Result<(), S3ConfigError> {
        let invalid = |var: &str, value: &str, reason: &str| {
            Err(S3ConfigError::Invalid { var: var.into(), value: value.into(), reason: reason.into() })
        };
        if let Some(endpoint) = &self.endpoint {
            let host = endpoint.strip_prefix("http://").or_else(|| endpoint.strip_prefix("https://"));
            if host.is_none_or(|h| h.is_empty() || h.starts_with('/')) {
                return invalid("AWS_ENDPOINT_URL", endpoint, "not an http:// or https:// URL with a host");
            }
        }
        if !self.region.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return invalid("AWS_REGION", &self.region, "only letters, digits and '-'");
        }
        if let Err(reason) = check_bucket_name(&self.bucket) {
            return invalid(BUCKET_VAR, &self.bucket, reason);
        }
        if !self.prefix.is_empty() {
            if let Err(e) = validate_key(&self.prefix) {
                let reason = match e {
                    ObjectError::InvalidKey { reason, .. } => reason,
                    other => other.to_string(),
                };
                return invalid(PREFIX_VAR, &self.prefix, &reason);
            }
        }
        if self.request_timeout_ms == 0 {
            return invalid("request_timeout_ms", "0", "must be positive");
        }
        Ok(())
    }

    /// An `object_store` client for this configuration (also for tools that inspect the layout).
    pub fn client(&self) -> Result<AmazonS3, S3ConfigError> {
        self.validate()?;
        let allow_http = self.endpoint.as_deref().is_some_and(|e| e.starts_with("http://"));
        let options = ClientOptions::new()
            .with_allow_http(allow_http)
            .with_timeout(Duration::from_millis(self.request_timeout_ms))
            .with_connect_timeout(Duration::from_millis(self.request_timeout_ms));
        let retry = RetryConfig { max_retries: self.max_retries, ..RetryConfig::default() };
        let mut builder = AmazonS3Builder::new()
            .with_region(&self.region)
            .with_bucket_name(&self.bucket)
            .with_access_key_id(&self.access_key_id)
            .with_secret_access_key(&self.secret_access_key)
            .with_client_options(options)
            .with_retry(retry);
        if let Some(endpoint) = &self.endpoint {
            // S3-compatible services are addressed by path (`endpoint/bucket/key`).
            builder = builder.with_endpoint(endpoint).with_virtual_hosted_style_request(false);
        }
        if let Some(token) = &self.security_token {
            builder = builder.with_token(token);
        }
        builder.build().map_err(|e| S3ConfigError::Client { message: e.to_string() })
    }
}

/// S3's bucket naming rules (3-63 of lowercase letters, digits, '.', '-'; alphanumeric ends).
fn check_bucket_name(bucket: &str) -> Result<(), &'static str> {
    if !(3..=63).contains(&bucket.len()) {
        return Err("a bucket name has 3 to 63 characters");
    }
    if !bucket.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-') {
        return Err("a bucket name has only lowercase letters, digits, '.' and '-'");
    }
    let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    if !alnum(bucket.chars().next()) || !alnum(bucket.chars().last()) {
        return Err("a bucket name starts and ends with a letter or digit");
    }
    Ok(())
}

/// One stored chunk of an object.
#[derive(Debug, Clone)]
struct Chunk {
    offset: u64,
    size_bytes: u64,
    path: Path,
    /// As the server reported it (listing or put); `None` when it reported none.
    e_tag: Option<String>,
}

impl Chunk {
    fn end(&self) -> u64 {
        self.offset.saturating_add(self.size_bytes)
    }
}

/// What is stored for one key: its marker and its chunks, sorted by offset.
#[derive(Debug, Default)]
struct Stored {
    marker: Option<Path>,
    chunks: Vec<Chunk>,
}

impl Stored {
    fn exists(&self) -> bool {
        self.marker.is_some() || !self.chunks.is_empty()
    }

    /// The end of the chunks, which must join up from offset 0.
    fn size(&self, key: &str) -> Result<u64, ObjectError> {
        let mut end = 0u64;
        for chunk in &self.chunks {
            if chunk.offset != end {
                let how = if chunk.offset > end { "leaves a gap after" } else { "overlaps" };
                return Err(layout_err(
                    "size",
                    key,
                    format!("chunks do not join up: the chunk at offset {} {how} the end {end}", chunk.offset),
                ));
            }
            end = chunk.offset.checked_add(chunk.size_bytes).ok_or_else(|| {
                layout_err("size", key, format!("the chunk at offset {} ends past 2^64", chunk.offset))
            })?;
        }
        Ok(end)
    }

    /// The chunks after the first and then the first: deleting in this order leaves a prefix of
    /// the object at every step.
    fn chunks_last_first(&self) -> impl Iterator<Item = &Chunk> {
        self.chunks.iter().rev()
    }
}

/// The chunks overlapping `[offset, end)`, of chunks sorted by offset.
fn pieces_of(chunks: &[Chunk], offset: u64, end: u64) -> Vec<Chunk> {
    if offset >= end {
        // An empty range reads nothing (an empty ranged GET is an error on S3).
        return Vec::new();
    }
    chunks.iter().filter(|c| c.offset < end && c.end() > offset).cloned().collect()
}

/// Whether two ETags name the same content; unknown (`None`) matches anything, and the quotes
/// and weak prefix servers differ on are ignored.
fn same_e_tag(a: Option<&str>, b: Option<&str>) -> bool {
    let bare = |t: &str| t.trim_start_matches("W/").trim_matches('"').to_string();
    match (a, b) {
        (Some(a), Some(b)) => bare(a) == bare(b),
        _ => true,
    }
}

/// The name of the chunk starting at `offset`.
fn chunk_name(offset: u64) -> String {
    format!("{offset:0width$}", width = CHUNK_NAME_DIGITS)
}

/// The offset a chunk name stands for; `None` for anything else.
fn parse_chunk_name(name: &str) -> Option<u64> {
    if name.len() != CHUNK_NAME_DIGITS || !name.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    name.parse().ok()
}

fn layout_err(op: &str, key: &str, message: String) -> ObjectError {
    ObjectError::Io { op: op.to_string(), key: key.to_string(), message }
}

/// Maps a client error to the seam's error for `op` on `key`.
fn map_err(op: &str, key: &str, e: object_store::Error) -> ObjectError {
    let (op, key) = (op.to_string(), key.to_string());
    if let Some(kind) = http_error_kind(&e) {
        match kind {
            // Never connected: the request was not sent.
            HttpErrorKind::Connect => return ObjectError::Unavailable { op, key },
            // Sent, and then no answer: the server may have applied it.
            HttpErrorKind::Timeout | HttpErrorKind::Request | HttpErrorKind::Interrupted => {
                return ObjectError::TimedOutOutcomeUnknown { op, key }
            }
            _ => {}
        }
    }
    let message = e.to_string();
    let refused = matches!(e, object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. })
        // The client types a refusal only on some requests (not on lists); S3's error codes
        // in the answer's body name it on all.
        || ACCESS_REFUSED_CODES.iter().any(|code| message.contains(&format!("<Code>{code}</Code>")));
    let message = if refused {
        format!("access refused; check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY: {message}")
    } else {
        message
    };
    ObjectError::Io { op, key, message }
}

/// S3 error codes of a refused identity or signature.
const ACCESS_REFUSED_CODES: [&str; 4] = ["AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken"];

/// The transport failure under a client error, if the request failed before a response.
fn http_error_kind(e: &object_store::Error) -> Option<HttpErrorKind> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(http) = err.downcast_ref::<HttpError>() {
            return Some(http.kind());
        }
        source = err.source();
    }
    None
}

fn is_already_there(e: &object_store::Error) -> bool {
    matches!(e, object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. })
}

/// The most keys whose chunks a store remembers; past it, one is forgotten for each new one.
const KNOWN_KEYS_MAX: usize = 1024;

/// An S3 bucket (or an S3-compatible service) used as the object store.
///
/// It remembers the chunks it last saw for each key (from a listing whose chunks joined up, or
/// from its own appends), so that an append or a read need not list the key's chunks every time:
/// an append that continues the remembered end checks only the last chunk (`HEAD`, same ETag)
/// before its conditional create, and a read inside the remembered end fetches its chunks with
/// `If-Match` on their ETags. While an object only grows, the remembered chunks stay a prefix
/// of it; a put or delete made elsewhere replaces or removes a chunk, which these checks see,
/// and the store forgets the key and lists it again. `size` always lists.
#[derive(Debug, Clone)]
pub struct S3ObjectStore {
    client: Arc<AmazonS3>,
    /// The configured prefix as a path; every stored name starts with it.
    root: Path,
    /// Key -> its chunks as last seen, joined up from offset 0 (never empty).
    known: Arc<Mutex<BTreeMap<String, Vec<Chunk>>>>,
}

/// Why a chunk could not be read.
enum ReadFailure {
    /// The chunk is gone or is no longer the one listed: the chunk map is out of date.
    Changed(String),
    Failed(ObjectError),
}

impl S3ObjectStore {
    /// Builds the client; nothing is sent until the first request.
    pub fn new(config: &S3Config) -> Result<S3ObjectStore, S3ConfigError> {
        let client = Arc::new(config.client()?);
        Ok(S3ObjectStore { client, root: Path::from(config.prefix.as_str()), known: Arc::default() })
    }

    /// From the environment ([`S3Config::from_env`]).
    pub fn from_env() -> Result<S3ObjectStore, S3ConfigError> {
        S3ObjectStore::new(&S3Config::from_env()?)
    }

    /// Lists the store's prefix once, so that a wrong endpoint, bucket or credentials show up as
    /// an error now rather than at the first upload.
    pub async fn check(&self) -> Result<(), ObjectError> {
        let prefix = self.root_prefix();
        self.client
            .list_with_delimiter(prefix.as_ref())
            .await
            .map(|_| ())
            .map_err(|e| map_err("check", self.root.as_ref(), e))
    }

    fn root_prefix(&self) -> Option<Path> {
        (!self.root.as_ref().is_empty()).then(|| self.root.clone())
    }

    /// The directory holding a key's chunks.
    fn key_dir(&self, key: &str) -> Result<Path, ObjectError> {
        validate_key(key)?;
        Ok(self.root.parts().chain(key.split('/').map(PathPart::from)).collect())
    }

    fn known_map(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Vec<Chunk>>> {
        // The map holds no invariant a panic could break half-way: use it as it is.
        self.known.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The last remembered chunk of `key` if the remembered chunks end at `end`.
    fn known_last_ending_at(&self, key: &str, end: u64) -> Option<Chunk> {
        self.known_map().get(key).and_then(|chunks| chunks.last()).filter(|last| last.end() == end).cloned()
    }

    /// The remembered chunks overlapping `[offset, end)`, if the remembered chunks reach `end`.
    fn known_pieces(&self, key: &str, offset: u64, end: u64) -> Option<Vec<Chunk>> {
        let map = self.known_map();
        let chunks = map.get(key)?;
        (chunks.last()?.end() >= end).then(|| pieces_of(chunks, offset, end))
    }

    /// Remembers a listing whose chunks join up, or forgets the key.
    fn remember(&self, key: &str, chunks: Option<&[Chunk]>) {
        let mut map = self.known_map();
        match chunks {
            Some(chunks) if !chunks.is_empty() => {
                if !map.contains_key(key) && map.len() >= KNOWN_KEYS_MAX {
                    map.pop_first();
                }
                map.insert(key.to_string(), chunks.to_vec());
            }
            _ => {
                map.remove(key);
            }
        }
    }

    /// Adds this store's new chunk if it continues the remembered chunks, or starts them (a
    /// chunk at 0 was created on an object checked to be empty).
    fn remember_appended(&self, key: &str, chunk: Chunk) {
        let mut map = self.known_map();
        if let Some(chunks) = map.get_mut(key) {
            if chunks.last().is_some_and(|last| last.end() == chunk.offset) {
                chunks.push(chunk);
            }
            return;
        }
        drop(map);
        if chunk.offset == 0 {
            self.remember(key, Some(&[chunk]));
        }
    }

    /// Everything stored for `key` (a list of the objects directly below its directory). The
    /// chunks are remembered when they join up.
    async fn stored(&self, op: &str, key: &str, dir: &Path) -> Result<Stored, ObjectError> {
        let listing = match self.client.list_with_delimiter(Some(dir)).await {
            Ok(listing) => listing,
            Err(e) => {
                self.remember(key, None);
                return Err(map_err(op, key, e));
            }
        };
        let mut stored = Stored::default();
        for meta in listing.objects {
            let name = meta.location.filename().unwrap_or_default();
            if name == MARKER_NAME {
                stored.marker = Some(meta.location);
            } else if let Some(offset) = parse_chunk_name(name) {
                stored.chunks.push(Chunk { offset, size_bytes: meta.size, path: meta.location, e_tag: meta.e_tag });
            } else {
                self.remember(key, None);
                return Err(layout_err(op, key, format!("stored object {} is not a chunk", meta.location)));
            }
        }
        stored.chunks.sort_by_key(|c| c.offset);
        self.remember(key, stored.size(key).is_ok().then_some(&stored.chunks[..]));
        Ok(stored)
    }

    /// The size of an existing object; `NotFound` when nothing is stored.
    async fn size_of(&self, op: &str, key: &str, dir: &Path) -> Result<u64, ObjectError> {
        let stored = self.stored(op, key, dir).await?;
        if !stored.exists() {
            return Err(ObjectError::NotFound { key: key.to_string() });
        }
        stored.size(key)
    }

    /// The size, 0 for a missing object (where an append at 0 creates it).
    async fn size_or_zero(&self, op: &str, key: &str, dir: &Path) -> Result<u64, ObjectError> {
        match self.size_of(op, key, dir).await {
            Err(ObjectError::NotFound { .. }) => Ok(0),
            other => other,
        }
    }

    async fn write(&self, path: &Path, data: Bytes, mode: PutMode) -> Result<PutResult, object_store::Error> {
        self.client.put_opts(path, data.into(), PutOptions { mode, ..PutOptions::default() }).await
    }

    async fn remove(&self, op: &str, key: &str, path: &Path) -> Result<(), ObjectError> {
        match self.client.delete(path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(map_err(op, key, e)),
        }
    }

    async fn put_now(&self, key: &str, data: Bytes) -> Result<(), ObjectError> {
        let dir = self.key_dir(key)?;
        let stored = self.stored("put", key, &dir).await?;
        // Forgotten until the put is through: a failed one leaves the object unknown.
        self.remember(key, None);
        if data.is_empty() {
            // Mark first: the object exists throughout and shrinks to empty.
            let marker = dir.clone().join(MARKER_NAME);
            self.write(&marker, Bytes::new(), PutMode::Overwrite).await.map_err(|e| map_err("put", key, e))?;
            for chunk in stored.chunks_last_first() {
                self.remove("put", key, &chunk.path).await?;
            }
            return Ok(());
        }
        for chunk in stored.chunks_last_first().filter(|c| c.offset != 0) {
            self.remove("put", key, &chunk.path).await?;
        }
        let first = dir.clone().join(chunk_name(0));
        let size_bytes = data.len() as u64;
        let put = self.write(&first, data, PutMode::Overwrite).await.map_err(|e| map_err("put", key, e))?;
        self.remember(key, Some(&[Chunk { offset: 0, size_bytes, path: first, e_tag: put.e_tag }]));
        Ok(())
    }

    async fn append_now(&self, key: &str, expected_offset: u64, data: Bytes) -> Result<u64, ObjectError> {
        let dir = self.key_dir(key)?;
        let len = data.len() as u64;
        if len > 0 {
            if let Some(last) = self.known_last_ending_at(key, expected_offset) {
                if self.is_unchanged(key, &last).await? {
                    return self.create_chunk(key, &dir, expected_offset, data).await;
                }
            }
        }
        let stored = self.stored("append", key, &dir).await?;
        let actual = if stored.exists() { stored.size(key)? } else { 0 };
        if actual != expected_offset {
            return Err(ObjectError::OffsetMismatch { key: key.to_string(), expected: expected_offset, actual });
        }
        match (len, stored.exists()) {
            (0, true) => Ok(expected_offset),
            // An empty append only has to make the object exist.
            (0, false) => self.create_marker(key, &dir).await.map(|()| 0),
            _ => self.create_chunk(key, &dir, expected_offset, data).await,
        }
    }

    /// Whether `chunk` is still stored as it was seen (same size, same ETag when both have one).
    async fn is_unchanged(&self, key: &str, chunk: &Chunk) -> Result<bool, ObjectError> {
        match self.client.head(&chunk.path).await {
            Ok(meta) => Ok(meta.size == chunk.size_bytes && same_e_tag(meta.e_tag.as_deref(), chunk.e_tag.as_deref())),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => {
                self.remember(key, None);
                Err(map_err("append", key, e))
            }
        }
    }

    /// Creates the chunk at `offset` unless the name is taken (by another append, or by this
    /// one retried inside the client after a lost answer): then reports where the object ends.
    async fn create_chunk(&self, key: &str, dir: &Path, offset: u64, data: Bytes) -> Result<u64, ObjectError> {
        let len = data.len() as u64;
        let end = offset
            .checked_add(len)
            .ok_or_else(|| layout_err("append", key, format!("{len} bytes at offset {offset} end past 2^64")))?;
        let path = dir.clone().join(chunk_name(offset));
        match self.write(&path, data, PutMode::Create).await {
            Ok(put) => {
                self.remember_appended(key, Chunk { offset, size_bytes: len, path, e_tag: put.e_tag });
                Ok(end)
            }
            Err(e) if is_already_there(&e) => {
                let actual = self.size_or_zero("append", key, dir).await?;
                Err(ObjectError::OffsetMismatch { key: key.to_string(), expected: offset, actual })
            }
            Err(e) => {
                self.remember(key, None);
                Err(map_err("append", key, e))
            }
        }
    }

    /// Makes an empty object exist; another append that made it first is as good.
    async fn create_marker(&self, key: &str, dir: &Path) -> Result<(), ObjectError> {
        match self.write(&dir.clone().join(MARKER_NAME), Bytes::new(), PutMode::Create).await {
            Ok(_) => Ok(()),
            Err(e) if is_already_there(&e) => match self.size_or_zero("append", key, dir).await? {
                0 => Ok(()),
                actual => Err(ObjectError::OffsetMismatch { key: key.to_string(), expected: 0, actual }),
            },
            Err(e) => Err(map_err("append", key, e)),
        }
    }

    async fn get_now(&self, key: &str, offset: u64, len: u64) -> Result<Bytes, ObjectError> {
        let dir = self.key_dir(key)?;
        if let Some(pieces) = offset.checked_add(len).and_then(|end| self.known_pieces(key, offset, end)) {
            match self.read_pieces(key, &pieces, offset, len).await {
                Ok(bytes) => return Ok(bytes),
                Err(ReadFailure::Failed(e)) => return Err(e),
                // Out of date: list the chunks again.
                Err(ReadFailure::Changed(_)) => self.remember(key, None),
            }
        }
        let stored = self.stored("get", key, &dir).await?;
        if !stored.exists() {
            return Err(ObjectError::NotFound { key: key.to_string() });
        }
        let size = stored.size(key)?;
        let end = match offset.checked_add(len) {
            Some(end) if end <= size => end,
            _ => return Err(ObjectError::RangeOutOfBounds { key: key.to_string(), offset, len, size }),
        };
        let pieces = pieces_of(&stored.chunks, offset, end);
        self.read_pieces(key, &pieces, offset, len).await.map_err(|failure| match failure {
            ReadFailure::Changed(why) => {
                self.remember(key, None);
                layout_err("get", key, format!("{why} while reading (a concurrent put or delete?)"))
            }
            ReadFailure::Failed(e) => e,
        })
    }

    /// Reads `[offset, offset + len)` from `pieces`, the chunks overlapping it, concurrently: a
    /// read spanning chunks costs one round trip, not one per chunk.
    async fn read_pieces(&self, key: &str, pieces: &[Chunk], offset: u64, len: u64) -> Result<Bytes, ReadFailure> {
        let end = offset + len;
        let reads = pieces.iter().map(|chunk| {
            let from = offset.max(chunk.offset) - chunk.offset;
            let to = end.min(chunk.end()) - chunk.offset;
            self.read_chunk(key, chunk, from..to)
        });
        let mut bytes = futures::future::try_join_all(reads).await?;
        Ok(match bytes.len() {
            0 => Bytes::new(),
            1 => bytes.swap_remove(0),
            _ => {
                let mut buf = BytesMut::with_capacity(usize::try_from(len).unwrap_or(0));
                bytes.iter().for_each(|b| buf.extend_from_slice(b));
                buf.freeze()
            }
        })
    }

    /// Reads `range` of one chunk, if it is still the chunk seen (its ETag) with the size seen.
    async fn read_chunk(&self, key: &str, chunk: &Chunk, range: Range<u64>) -> Result<Bytes, ReadFailure> {
        let want = range.end - range.start;
        let options = GetOptions::default().with_range(Some(range)).with_if_match(chunk.e_tag.as_deref());
        let got = match self.client.get_opts(&chunk.path, options).await {
            Ok(got) => got.bytes().await,
            Err(e) => Err(e),
        };
        let bytes = match got {
            Ok(bytes) => bytes,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(ReadFailure::Changed(format!("chunk {} vanished", chunk.path)));
            }
            Err(object_store::Error::Precondition { .. }) => {
                return Err(ReadFailure::Changed(format!("chunk {} was replaced", chunk.path)));
            }
            Err(e) => return Err(ReadFailure::Failed(map_err("get", key, e))),
        };
        if bytes.len() as u64 != want {
            let why = format!("chunk {} returned {} bytes where {want} were asked", chunk.path, bytes.len());
            return Err(ReadFailure::Changed(why));
        }
        Ok(bytes)
    }

    async fn list_now(&self, prefix: &str) -> Result<Vec<String>, ObjectError> {
        // The listing is by whole path components: list the prefix's directory and match the
        // rest (which may end mid-component) on the decoded keys.
        let dir_part = prefix.rsplit_once('/').map_or("", |(dir, _)| dir);
        let dir: Path =
            self.root.parts().chain(dir_part.split('/').filter(|p| !p.is_empty()).map(PathPart::from)).collect();
        let dir = (!dir.as_ref().is_empty()).then_some(dir);
        let metas: Vec<ObjectMeta> =
            self.client.list(dir.as_ref()).try_collect().await.map_err(|e| map_err("list", prefix, e))?;
        let mut keys = BTreeSet::new();
        for meta in metas {
            let key = self.key_of(prefix, &meta.location)?;
            if key.starts_with(prefix) {
                keys.insert(key);
            }
        }
        Ok(keys.into_iter().collect())
    }

    /// The key a stored chunk or marker belongs to.
    fn key_of(&self, prefix: &str, location: &Path) -> Result<String, ObjectError> {
        let bad = |why: &str| layout_err("list", prefix, format!("stored object {location} {why}"));
        let parts = location.prefix_match(&self.root).ok_or_else(|| bad("is outside the prefix"))?;
        let mut parts: Vec<String> = parts
            .map(|part| {
                percent_encoding::percent_decode_str(part.as_ref())
                    .decode_utf8()
                    .map(|s| s.into_owned())
                    .map_err(|_| bad("has a name that is not UTF-8"))
            })
            .collect::<Result<_, _>>()?;
        let name = parts.pop().unwrap_or_default();
        if name != MARKER_NAME && parse_chunk_name(&name).is_none() {
            return Err(bad("is not a chunk"));
        }
        if parts.is_empty() {
            return Err(bad("has no key"));
        }
        Ok(parts.join("/"))
    }

    async fn delete_now(&self, key: &str) -> Result<(), ObjectError> {
        let dir = self.key_dir(key)?;
        let stored = self.stored("delete", key, &dir).await?;
        self.remember(key, None);
        for chunk in stored.chunks_last_first() {
            self.remove("delete", key, &chunk.path).await?;
        }
        if let Some(marker) = &stored.marker {
            self.remove("delete", key, marker).await?;
        }
        Ok(())
    }
}

impl ObjectStore for S3ObjectStore {
    fn put<'a>(&'a self, key: &'a str, data: Bytes) -> BoxFuture<'a, Result<(), ObjectError>> {
        Box::pin(self.put_now(key, data))
    }

    fn append<'a>(
        &'a self,
        key: &'a str,
        expected_offset: u64,
        data: Bytes,
    ) -> BoxFuture<'a, Result<u64, ObjectError>> {
        Box::pin(self.append_now(key, expected_offset, data))
    }

    fn get_range<'a>(&'a self, key: &'a str, offset: u64, len: u64) -> BoxFuture<'a, Result<Bytes, ObjectError>> {
        Box::pin(self.get_now(key, offset, len))
    }

    fn size<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<u64, ObjectError>> {
        Box::pin(async move {
            let dir = self.key_dir(key)?;
            self.size_of("size", key, &dir).await
        })
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<String>, ObjectError>> {
        Box::pin(self.list_now(prefix))
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), ObjectError>> {
        Box::pin(self.delete_now(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(offset: u64, size_bytes: u64) -> Chunk {
        Chunk { offset, size_bytes, path: Path::from(chunk_name(offset)), e_tag: None }
    }

    fn stored(chunks: &[(u64, u64)]) -> Stored {
        Stored { marker: None, chunks: chunks.iter().map(|&(o, s)| chunk(o, s)).collect() }
    }

    #[test]
    fn chunk_names_round_trip_and_sort_by_offset() {
        for offset in [0, 1, 9, 10, 1 << 20, u64::MAX - 1, u64::MAX] {
            assert_eq!(parse_chunk_name(&chunk_name(offset)), Some(offset));
        }
        assert!(chunk_name(9) < chunk_name(10));
        assert_eq!(chunk_name(u64::MAX).len(), CHUNK_NAME_DIGITS);
        for name in ["", "created", "0", "0000000000000000000x", "+0000000000000000001", "000000000000000000000"] {
            assert_eq!(parse_chunk_name(name), None, "{name:?}");
        }
        // 20 digits above u64::MAX are not a chunk either.
        assert_eq!(parse_chunk_name("99999999999999999999"), None);
    }

    #[test]
    fn pieces_are_the_chunks_a_range_overlaps() {
        let chunks = stored(&[(0, 3), (3, 2), (5, 4)]).chunks;
        let offsets = |offset, end| pieces_of(&chunks, offset, end).iter().map(|c| c.offset).collect::<Vec<_>>();
        assert_eq!(offsets(0, 3), vec![0]);
        assert_eq!(offsets(2, 4), vec![0, 3]);
        assert_eq!(offsets(3, 9), vec![3, 5]);
        assert_eq!(offsets(4, 4), Vec::<u64>::new(), "an empty range needs no chunk");
        assert_eq!(offsets(0, 9), vec![0, 3, 5]);
    }

    #[test]
    fn e_tags_compare_without_quotes_and_weak_prefix() {
        assert!(same_e_tag(Some("\"abc\""), Some("abc")));
        assert!(same_e_tag(Some("W/\"abc\""), Some("\"abc\"")));
        assert!(!same_e_tag(Some("\"abc\""), Some("\"abd\"")));
        assert!(same_e_tag(None, Some("abc")), "an unknown ETag leaves the size to decide");
    }

    #[test]
    fn size_is_the_end_of_chunks_that_join_up() {
        assert_eq!(stored(&[]).size("k"), Ok(0));
        assert_eq!(stored(&[(0, 3), (3, 2), (5, 1 << 20)]).size("k"), Ok(5 + (1 << 20)));
        for (chunks, what) in [
            (&[(0, 3), (4, 1)][..], "leaves a gap"),
            (&[(1, 3)][..], "leaves a gap"),
            (&[(0, 3), (2, 2)][..], "overlaps"),
            (&[(0, u64::MAX), (u64::MAX, 1)][..], "past 2^64"),
        ] {
            let err = stored(chunks).size("k").unwrap_err();
            assert!(matches!(&err, ObjectError::Io { message, .. } if message.contains(what)), "{chunks:?}: {err}");
        }
    }

    #[test]
    fn config_from_lookup_reports_what_is_missing_or_wrong() {
        let full = [
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:9000"),
            ("AWS_DEFAULT_REGION", "us-east-1"),
            ("AWS_ACCESS_KEY_ID", "id"),
            ("AWS_SECRET_ACCESS_KEY", "secret"),
            (BUCKET_VAR, "rocketsim-test"),
            (PREFIX_VAR, "run/1"),
        ];
        let with = |changes: &[(&str, &str)]| {
            let mut vars: std::collections::BTreeMap<String, String> =
                full.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            for (k, v) in changes {
                vars.insert(k.to_string(), v.to_string());
            }
            S3Config::from_lookup(|var| vars.get(var).cloned())
        };
        let config = with(&[]).unwrap();
        assert_eq!(config.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(
            (config.region.as_str(), config.bucket.as_str(), config.prefix.as_str()),
            ("us-east-1", "rocketsim-test", "run/1")
        );
        assert!(!format!("{config:?}").contains("secret"), "the secret stays out of Debug");
        assert_eq!(with(&[("AWS_REGION", "eu-west-3")]).unwrap().region, "eu-west-3", "AWS_REGION wins");
        assert_eq!(with(&[("AWS_ENDPOINT_URL", "")]).unwrap().endpoint, None, "no endpoint is AWS");
        assert!(S3ObjectStore::new(&config).is_ok());

        let missing = |var: &str| Err(S3ConfigError::Missing { var: var.to_string() });
        assert_eq!(with(&[("AWS_DEFAULT_REGION", "")]), missing("AWS_REGION or AWS_DEFAULT_REGION"));
        assert_eq!(with(&[(BUCKET_VAR, "")]), missing(BUCKET_VAR));
        assert_eq!(with(&[("AWS_ACCESS_KEY_ID", "")]), missing("AWS_ACCESS_KEY_ID"));
        assert_eq!(with(&[("AWS_SECRET_ACCESS_KEY", "")]), missing("AWS_SECRET_ACCESS_KEY"));
        for (var, value) in [
            ("AWS_ENDPOINT_URL", "127.0.0.1:9000"),
            ("AWS_ENDPOINT_URL", "ftp://host"),
            ("AWS_ENDPOINT_URL", "http://"),
            ("AWS_DEFAULT_REGION", "us east"),
            (BUCKET_VAR, "Upper"),
            (BUCKET_VAR, "ab"),
            (BUCKET_VAR, "-bucket"),
            (BUCKET_VAR, "bucket/x"),
            (PREFIX_VAR, "a//b"),
            (PREFIX_VAR, "/a"),
        ] {
            let got = with(&[(var, value)]);
            assert!(
                matches!(&got, Err(S3ConfigError::Invalid { value: v, .. }) if v == value),
                "{var}={value:?}: {got:?}"
            );
        }
    }
}
