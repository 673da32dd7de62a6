//! Micro-benchmarks of raft-core's storage hot paths, each over the real sled engine in a
//! temporary directory:
//!
//! - `log_append_durable`: a Raft log append up to its durable acknowledgement (write latency);
//! - `sm_apply`: applying committed entries to the MVCC state machine (write throughput);
//! - `mvcc_range`: serving Range reads from local state (read latency);
//! - `snapshot_build`: exporting the state machine as a snapshot (log compaction, catch-up).
//!
//! Run with `cargo bench -p raft-core --bench hot_paths`; `-- --test` runs each benchmark
//! once, which is how CI keeps them compiling and working.
//!
//! Under `cfg(madsim)` (the deterministic simulation build) there is no real tokio runtime and
//! nothing here means anything, so the target compiles to an empty `main`.

#[cfg(not(madsim))]
mod hot {
    use std::hint::black_box;
    use std::sync::Arc;

    use criterion::{BatchSize, BenchmarkId, Criterion, Throughput};
    use kv_api::etcdserverpb::{PutRequest, RangeRequest};
    use openraft::storage::{RaftLogStorageExt, RaftStateMachine};
    use openraft::{EntryPayload, RaftSnapshotBuilder};
    use raft_core::engine::{Engine, SledEngine};
    use raft_core::log_store::LogStore;
    use raft_core::request::RequestBatch;
    use raft_core::typ::{Entry, LogId};
    use raft_core::{KvStore, WriteRequest};
    use tempfile::TempDir;
    use tokio::runtime::Runtime;

    /// Batch sizes for the write paths: a lone write, a moderately loaded batcher, and half of
    /// the node's default batch bound (512 requests per entry).
    const BATCH_SIZES: [u64; 3] = [1, 16, 256];
    /// Bytes of every value written (keys are 16 bytes, see [`key`]).
    const VALUE_LEN: usize = 256;
    /// Live keys in the stores the read and snapshot benchmarks run against.
    const PRELOADED_KEYS: u64 = 10_000;
    /// Puts per entry while preloading (the size a busy batcher produces).
    const PRELOAD_PUTS_PER_ENTRY: u64 = 500;
    /// Keys per `range10` request.
    const RANGE_WIDTH: u64 = 10;

    /// The `i`th key: 16 bytes, and keys sort in `i` order so `[key(i), key(i + n))` holds n keys.
    fn key(i: u64) -> Vec<u8> {
        format!("key-{i:012}").into_bytes()
    }

    fn put(i: u64, fill: u8) -> WriteRequest {
        WriteRequest::Put(PutRequest { key: key(i), value: vec![fill; VALUE_LEN], ..Default::default() })
    }

    fn log_id(index: u64) -> LogId {
        raft_core::typ::log_id(1, 1, index)
    }

    fn entry(index: u64, requests: Vec<WriteRequest>) -> Entry {
        Entry { log_id: log_id(index), payload: EntryPayload::Normal(RequestBatch::new(&requests)) }
    }

    /// How a batch of `n` puts is laid out in Raft entries.
    #[derive(Clone, Copy)]
    enum Shape {
        /// `n` entries of one put each: unbatched client writes that openraft hands to storage
        /// together (`BatchConfig::max_requests = 1`, or a follower receiving a backlog).
        EntryPerPut,
        /// One entry carrying all `n` puts: what the node's batcher proposes under load.
        OneEntry,
    }

    impl Shape {
        fn name(self) -> &'static str {
            match self {
                Shape::EntryPerPut => "entry_per_put",
                Shape::OneEntry => "one_entry",
            }
        }

        /// Sizes worth measuring: one put in one entry is the same in both shapes.
        fn sizes(self) -> &'static [u64] {
            match self {
                Shape::EntryPerPut => &BATCH_SIZES,
                Shape::OneEntry => &BATCH_SIZES[1..],
            }
        }
    }

    /// Hands out consecutive log indexes and keys, so every batch continues the log and writes
    /// the next keys (wrapping over `key_space` to reach a steady state of overwrites).
    struct Feed {
        shape: Shape,
        next_index: u64,
        next_key: u64,
        key_space: u64,
    }

    impl Feed {
        fn new(shape: Shape, key_space: u64) -> Self {
            Feed { shape, next_index: 1, next_key: 0, key_space }
        }

        fn batch(&mut self, n: u64) -> Vec<Entry> {
            let puts: Vec<WriteRequest> = (0..n)
                .map(|_| {
                    let k = self.next_key;
                    self.next_key = (self.next_key + 1) % self.key_space;
                    put(k, 1)
                })
                .collect();
            let entries: Vec<Entry> = match self.shape {
                Shape::EntryPerPut => {
                    puts.into_iter().enumerate().map(|(i, p)| entry(self.next_index + i as u64, vec![p])).collect()
                }
                Shape::OneEntry => vec![entry(self.next_index, puts)],
            };
            self.next_index += entries.len() as u64;
            entries
        }
    }

    /// A single-threaded runtime to drive the async storage traits: the work is synchronous
    /// sled calls inside `async fn`s, so a scheduler would only add noise.
    fn runtime() -> Runtime {
        tokio::runtime::Builder::new_current_thread().build().expect("a current-thread runtime builds")
    }

    /// A fresh sled engine in its own temporary directory (dropped, and deleted, with the dir).
    fn open_engine() -> (TempDir, Arc<SledEngine>) {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let engine = SledEngine::open(dir.path()).expect("sled opens in an empty directory");
        (dir, Arc::new(engine))
    }

    /// A state machine holding [`PRELOADED_KEYS`] keys, each written twice (values filled with
    /// 1, then with 2) so reads at an older revision have history to search. Returns the store,
    /// the next free log index and the revision at which every key still held its first value.
    fn preloaded_store(rt: &Runtime) -> (TempDir, KvStore<SledEngine>, u64, i64) {
        let (dir, engine) = open_engine();
        let mut sm = KvStore::open(engine.clone()).expect("a fresh state machine opens");
        let mut index = 1;
        let mut first_round_revision = 0;
        for fill in [1u8, 2] {
            for chunk in 0..PRELOADED_KEYS.div_ceil(PRELOAD_PUTS_PER_ENTRY) {
                let start = chunk * PRELOAD_PUTS_PER_ENTRY;
                let end = (start + PRELOAD_PUTS_PER_ENTRY).min(PRELOADED_KEYS);
                let puts = (start..end).map(|i| put(i, fill)).collect();
                rt.block_on(sm.apply([entry(index, puts)])).expect("preload apply");
                index += 1;
            }
            if fill == 1 {
                first_round_revision = sm.meta().revision;
            }
        }
        // Start every benchmark from durable, settled state rather than from sled's dirty buffers.
        engine.flush().expect("flush after preload");
        (dir, sm, index, first_round_revision)
    }

    /// **Batch append + durable flush.** `LogStore::append` as openraft calls it for every entry
    /// the leader proposes and every AppendEntries a follower accepts, timed until its
    /// `LogFlushed` callback fires (through openraft's `blocking_append`, which builds that
    /// callback and waits on it). The callback fires only after the sled flush and the fsyncs,
    /// and no write is acknowledged to a client before it: this is the floor of write latency,
    /// and the cost that batching is meant to amortise over many writes.
    pub fn log_append(c: &mut Criterion) {
        let rt = runtime();
        let mut group = c.benchmark_group("log_append_durable");
        // Every iteration waits for at least one fsync; 20 samples keep a run to seconds.
        group.sample_size(20);
        for shape in [Shape::EntryPerPut, Shape::OneEntry] {
            for &n in shape.sizes() {
                let (_dir, engine) = open_engine();
                let mut log = LogStore::new(engine);
                let mut feed = Feed::new(shape, u64::MAX);
                group.throughput(Throughput::Elements(n));
                group.bench_with_input(BenchmarkId::new(shape.name(), n), &n, |b, &n| {
                    b.iter_batched(
                        || feed.batch(n),
                        |entries| rt.block_on(log.blocking_append(entries)).expect("durable append"),
                        BatchSize::SmallInput,
                    )
                });
            }
        }
        group.finish();
    }

    /// **State-machine apply.** `RaftStateMachine::apply` on `KvStore` as openraft calls it with
    /// newly committed entries: MVCC bookkeeping for every put (latest record, history version,
    /// revision index) in an overlay, then one atomic engine batch with the meta. Apply does not
    /// fsync, so this is CPU and sled-write cost; it bounds write throughput once fsyncs are
    /// batched, and a slow apply delays every later read that waits for its revision.
    pub fn sm_apply(c: &mut Criterion) {
        let rt = runtime();
        let mut group = c.benchmark_group("sm_apply");
        for shape in [Shape::EntryPerPut, Shape::OneEntry] {
            for &n in shape.sizes() {
                let (_dir, engine) = open_engine();
                let mut sm = KvStore::open(engine).expect("a fresh state machine opens");
                // Keys wrap over the preload size, so after warm-up most puts overwrite a key.
                let mut feed = Feed::new(shape, PRELOADED_KEYS);
                group.throughput(Throughput::Elements(n));
                group.bench_with_input(BenchmarkId::new(shape.name(), n), &n, |b, &n| {
                    b.iter_batched(
                        || feed.batch(n),
                        |entries| rt.block_on(sm.apply(entries)).expect("apply"),
                        BatchSize::SmallInput,
                    )
                });
            }
        }
        group.finish();
    }

    /// **MVCC range.** `KvStore::range`, which serves every Range once the read level is settled
    /// (linearizable reads after the read barrier, lease and serializable reads directly), over
    /// [`PRELOADED_KEYS`] keys with two versions each. `latest` reads the live-version tree;
    /// `at_revision` reads an older revision through the history tree's skip-scan (etcd clients
    /// do that for watches and consistent pagination).
    pub fn mvcc_range(c: &mut Criterion) {
        let rt = runtime();
        let (_dir, sm, _, old_revision) = preloaded_store(&rt);
        let mut group = c.benchmark_group("mvcc_range");
        // Requests spread over the keyspace with a stride, so consecutive reads hit different
        // pages rather than one hot key; built up front to time only the read.
        let spread = |revision: i64, width: u64| -> Vec<RangeRequest> {
            (0..1024u64)
                .map(|j| {
                    let i = (j * 7919) % (PRELOADED_KEYS - width);
                    let range_end = if width == 1 { Vec::new() } else { key(i + width) };
                    RangeRequest { key: key(i), range_end, revision, ..Default::default() }
                })
                .collect()
        };
        let cases = [
            ("get_latest", 0, 1, 2u8),
            ("range10_latest", 0, RANGE_WIDTH, 2),
            ("get_at_revision", old_revision, 1, 1),
            ("range10_at_revision", old_revision, RANGE_WIDTH, 1),
        ];
        for (name, revision, width, fill) in cases {
            let requests = spread(revision, width);
            // Check once, outside the timing, that each case reads what it claims to.
            let resp = sm.range(&requests[0]).expect("range");
            assert_eq!(resp.kvs.len() as u64, width, "{name}: every key of the range is live");
            assert!(resp.kvs.iter().all(|kv| kv.value[0] == fill), "{name}: the version of its revision");
            group.throughput(Throughput::Elements(width));
            let mut next = requests.iter().cycle();
            group.bench_function(name, |b| {
                b.iter(|| sm.range(black_box(next.next().expect("cycle never ends"))).expect("range"))
            });
        }
        group.finish();
    }

    /// **Snapshot build.** `RaftSnapshotBuilder::build_snapshot`, which openraft runs every
    /// `snapshot_count` (10,000) applied entries so the log can be purged, and whose result a
    /// lagging follower is sent. It streams the history up to the applied revision into the
    /// snapshot file (apply goes on meanwhile; the gate is held only to capture the position),
    /// fsyncs the file and makes it the current snapshot. Before each build one blank entry is
    /// applied outside the timing, as production builds after applying more entries;
    /// `export_only` builds again at an unchanged log id, which costs the same work without
    /// that setup.
    pub fn snapshot_build(c: &mut Criterion) {
        let rt = runtime();
        let (_dir, mut sm, mut next_index, _) = preloaded_store(&rt);
        let mut builder = sm.clone();
        rt.block_on(builder.build_snapshot()).expect("build snapshot");
        // The data goes to the snapshot file; openraft reads it back through this call.
        let mut current = rt.block_on(sm.get_current_snapshot()).expect("read snapshot").expect("a snapshot is stored");
        let size = current.snapshot.len().expect("snapshot size");
        let mut group = c.benchmark_group("snapshot_build");
        // Each build moves megabytes and fsyncs them; 10 samples is criterion's minimum.
        group.sample_size(10);
        group.throughput(Throughput::Bytes(size));
        group.bench_function(BenchmarkId::new("keys", PRELOADED_KEYS), |b| {
            b.iter_batched(
                || {
                    let blank = Entry { log_id: log_id(next_index), payload: EntryPayload::Blank };
                    next_index += 1;
                    rt.block_on(sm.apply([blank])).expect("apply a blank entry");
                },
                // Per-iteration setup: a batch of setups first would leave all but one build
                // with nothing new to store.
                |()| rt.block_on(builder.build_snapshot()).expect("build snapshot"),
                BatchSize::PerIteration,
            )
        });
        // The same build with nothing new applied in between.
        group.bench_function(BenchmarkId::new("export_only", PRELOADED_KEYS), |b| {
            b.iter(|| rt.block_on(builder.build_snapshot()).expect("build snapshot"))
        });
        group.finish();
    }

    criterion::criterion_group!(benches, log_append, sm_apply, mvcc_range, snapshot_build);
}

#[cfg(not(madsim))]
criterion::criterion_main!(hot::benches);

#[cfg(madsim)]
fn main() {}
