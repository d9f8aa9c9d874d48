//! Append and ranged-read throughput of the object-store backends in one run: the S3 backend
//! (configured from the environment, see `engine::io::s3`) next to `LocalObjectStore` on a local
//! directory of the same machine.
//!
//! `scripts/s3-server.sh bench [--mb N] [--append-kb N] [--dir PATH]` starts a local S3-compatible
//! server and runs this; by hand, with the environment set:
//! `RUSTFLAGS="" cargo run --release --target-dir target/std -p engine --features s3 --example object_store_bench`
//! Options: `--mb N` (volume appended then read per backend, default 64), `--append-kb N` (size of
//! one append and of one read, default 1024), `--dir PATH` (the local store's directory).

#[cfg(madsim)]
fn main() {
    eprintln!("object_store_bench measures real backends: build it without --cfg madsim (RUSTFLAGS=\"\")");
    std::process::exit(2);
}

#[cfg(not(madsim))]
fn main() {
    real::main();
}

#[cfg(not(madsim))]
mod real {
    use std::path::PathBuf;
    use std::sync::Arc;
    use std::time::Instant;

    use bytes::Bytes;
    use engine::io::object_store::ObjectStore;
    use engine::io::real::LocalObjectStore;
    use engine::io::s3::S3ObjectStore;

    struct Args {
        mb: u64,
        append_kb: u64,
        dir: PathBuf,
    }

    fn args() -> Args {
        let mut a = Args { mb: 64, append_kb: 1024, dir: std::env::temp_dir().join("object-store-bench") };
        let v: Vec<String> = std::env::args().skip(1).collect();
        for pair in v.chunks(2) {
            let val = pair.get(1).cloned().unwrap_or_default();
            match pair[0].as_str() {
                "--mb" => a.mb = val.parse().expect("--mb N"),
                "--append-kb" => a.append_kb = val.parse().expect("--append-kb N"),
                "--dir" => a.dir = PathBuf::from(val),
                other => panic!("unknown option {other}"),
            }
        }
        assert!(a.mb > 0 && a.append_kb > 0, "--mb and --append-kb must be positive");
        a
    }

    fn line(backend: &str, what: &str, ops: u64, bytes: u64, secs: f64) {
        println!(
            "{backend:<8} {what:<12} {:>9.1} MiB/s {:>9.1} ops/s  ({ops} x {} KiB in {secs:.2} s)",
            bytes as f64 / secs / (1 << 20) as f64,
            ops as f64 / secs,
            (bytes / ops.max(1)) >> 10
        );
    }

    /// Appends `total` bytes to a fresh key in `append` pieces, then reads them back in ranges of
    /// the same size that start half a piece in, so that each read spans two appended pieces.
    async fn measure(backend: &str, store: Arc<dyn ObjectStore>, total: u64, append: u64) {
        let key = "bench/segment";
        store.delete(key).await.expect("delete");
        let piece: Vec<u8> = (0..append).map(|i| (i % 251) as u8).collect();
        let piece = Bytes::from(piece);
        let appends = total / append;
        let t = Instant::now();
        for i in 0..appends {
            let end = store.append(key, i * append, piece.clone()).await.expect("append");
            assert_eq!(end, (i + 1) * append);
        }
        line(backend, "append", appends, appends * append, t.elapsed().as_secs_f64());

        let size = store.size(key).await.expect("size");
        assert_eq!(size, appends * append);
        let reads = appends.saturating_sub(1).max(1);
        let t = Instant::now();
        let mut read_bytes = 0;
        for i in 0..reads {
            let offset = (i * append + append / 2).min(size - append.min(size));
            let got = store.get_range(key, offset, append.min(size)).await.expect("get_range");
            assert_eq!(got[0], ((offset % append) % 251) as u8, "read the bytes appended at {offset}");
            read_bytes += got.len() as u64;
        }
        line(backend, "ranged read", reads, read_bytes, t.elapsed().as_secs_f64());
        store.delete(key).await.expect("delete");
    }

    pub fn main() {
        let a = args();
        let total = a.mb << 20;
        let append = a.append_kb << 10;
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
        runtime.block_on(async {
            let s3 = S3ObjectStore::from_env().unwrap_or_else(|e| panic!("S3 configuration: {e}"));
            s3.check().await.unwrap_or_else(|e| panic!("S3 store unreachable: {e}"));
            let local = LocalObjectStore::new(&a.dir).expect("local store directory");
            println!("{} MiB per backend in {} KiB appends and reads", a.mb, a.append_kb);
            measure("local", Arc::new(local), total, append).await;
            measure("s3", Arc::new(s3), total, append).await;
        });
        let _ = std::fs::remove_dir_all(&a.dir);
    }
}
