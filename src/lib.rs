//! percore: a thread-per-core dispatcher of AI inference jobs.
//!
//! A fleet of IoT devices is grouped into classes; each class is served by a model
//! on compute nodes. One **job** for one device fetches its raw data from a data
//! source (unary gRPC), sends it to a compute node of its class (KServe v2
//! `ModelInfer`), and hands the result to a writer that persists it. percore runs
//! one pinned glommio executor per core ("shard"); each owns a disjoint slice of
//! the devices and its own HTTP/2 connections, and shares nothing on the per-job
//! path with other shards.
//!
//! # Layout
//!
//! Follow one job from tick to row by reading the modules in this order:
//!
//! - [`config`]: the TOML file → parsed → validated → typed [`config::Config`],
//!   one file per section of it, each with its runtime types, its tables as
//!   written and the checks between them: `mod.rs` (`Config`, its loading and
//!   reload, the top level), `class.rs` (`[[classes]]` with its output,
//!   parameters and contract), `endpoint.rs` (where a class's calls go:
//!   `data_sources`, `compute_nodes` or a `gateway` with its routing headers,
//!   `authority`, `[classes.tls]`, `[classes.source_tls]`), `metadata.rs`
//!   (`token_env`, `[classes.metadata]`), `upstream.rs` (`[classes.upstream]`: balancing,
//!   limits, retries, hedging, probes, ejection), `batching.rs`
//!   (`[classes.batching]`: rows per call, linger), `devices.rs`, `sink.rs` (SQLite
//!   and the spill journal's keys), `postgres.rs`, `grpc.rs`; unit tests in
//!   `tests.rs`. [`diagnostic`]: the [`diagnostic::ConfigError`] every start-up
//!   file reports, naming file, line and field, and the TOML text it points into;
//!   below `config`, `devices` and `tuning`, which all raise it, so none of them
//!   imports another for it. [`tuning`]: the per-host file and
//!   the host it runs on — [`tuning::file`] parses it (shard CPUs or a count, SMT, the
//!   coordinator/sink/admin CPUs, NUMA nodes, isolation, limits, `[executor]`, `[http2]`,
//!   `[socket]`; errors name file and line), [`tuning::host`] reads a host's facts from
//!   `/sys` and `/proc` under a root tests point at a fake tree, [`tuning::check`] judges
//!   a file against them (`percore tune check`, and the refusal at load and start-up),
//!   [`tuning::generate`] writes one from the topology, [`tuning::pin`] pins the
//!   threads around the shards. [`devices`]: the fleet
//!   (CSV or generated), the stable hash that places a device on a shard.
//!   [`placement`]: which owner a device belongs to, a small trait with its
//!   algorithms beside it — `Modulo` (an instance's shards) and `Rendezvous`
//!   (highest random weight over named owners: a cluster's live instances).
//!   `config/cluster.rs` reads `[cluster]`: etcd membership or a static split.
//! - [`dispatcher`]: the coordinator, on the calling thread, never on a shard; a
//!   run is three files: `start` (splits the fleet over shards, opens the sink,
//!   makes every channel, starts the shards), `supervise` (status, metrics, the
//!   interval log in `per_second`, a stop, a sink failure that stops the run at
//!   once, a live reload, a membership change and registered compute nodes in
//!   `reloader`) and `shutdown` (joins, CPU, merged statistics, every result
//!   accounted for). `ownership` holds which device runs here on which shard
//!   (static split, or rendezvous over the live instances) and turns a
//!   membership change into each shard's gains and losses (handover: losses at
//!   once, gains after the safety delay).
//!   [`reload`]: a live reload (SIGHUP) merged into the running config — the
//!   fleet only grows, classes matched by name, compute node names only grow —
//!   as one message per shard.
//! - [`cluster`]: several instances sharing a fleet through etcd — the control
//!   plane's etcd work, on a thread of its own with a current-thread tokio
//!   runtime (never on a shard): `event` (the one interface to the
//!   coordinator: members, a class's nodes, etcd's reachability), `keys` (the
//!   layout under `/percore/<cluster>/`), `etcd` (the v3 client over tonic,
//!   stubs from `proto/etcd_rpc.proto`), `session` (register under a lease,
//!   renew it, watch, ride out outages, resynchronise), `membership` (a
//!   dispatcher's registration), `nodes` (a compute node's, checked), `join`
//!   (a run joins its cluster), `backoff`, and the commands around it:
//!   `announce` with `readiness` (`percore announce`) and `status`.
//! - [`shard`]: the per-core loop. Owns its devices, schedule, connections,
//!   counters; fires ticks, starts jobs, batches results to the sink. Its
//!   devices sit in [`shard::slots`], one slot each with a generation, so they
//!   can join and leave while it runs without a job of a device that left
//!   touching the one that took its slot.
//!   [`inbox`]: the coordinator's messages taken off their channel as they
//!   arrive, so a shard loop sleeps until its next due time or a message.
//! - [`tick`]: the tick grid (a pure function of device id and period) and the
//!   per-shard schedule that fires it, changed in batches (devices out and in).
//! - [`job`]: one job — Fetch, then ModelInfer, under one deadline, each call one
//!   or more attempts (retries on other replicas, hedges) — ending in a
//!   [`record::JobRecord`]: ok, failed with a reason, or skipped with a reason,
//!   with the replica that answered and the attempts made, keyed by the device's
//!   id ([`record::DeviceId`]) and the tick. Its `batch` module
//!   ([`job::Batcher`], one per class and shard when the class batches)
//!   gathers jobs' checked inputs into one ModelInfer, stacked along the first
//!   dimension, and splits the answer back into each job's rows.
//! - [`endpoint`]: a node as the config names it, carried to the pool: host as
//!   written, port, `http`/`https`, TLS settings, `:authority`
//!   ([`endpoint::Endpoint`]); [`endpoint::resolve`] looks names up at every
//!   connect, off the shard (the executor's blocking thread);
//!   [`endpoint::tls`] reads CAs, client certificates and keys (and the mock
//!   nodes' server side) into rustls configurations, one per shard.
//! - [`upstream`]: a shard's way to the nodes: connection pools per node
//!   ([`upstream::pool`]), a class's never-empty replica set per role
//!   ([`upstream::set`]: picks, admission, outcomes, ejection), the balancer
//!   trait and its algorithms ([`upstream::balance`]: weighted round-robin, P2C
//!   over peak EWMA), per-replica health ([`upstream::health`]), the retry
//!   budget ([`upstream::retry`]) and the readiness probes ([`upstream::probe`]).
//! - [`grpc`]: gRPC on `h2`: message framing, status trailers, the unary client
//!   and the server the mock nodes use; [`grpc::tls`] puts TLS under the write
//!   coalescing (h2 → coalescing → TLS → TCP), requires ALPN `h2` and puts TLS
//!   failures in words. [`tensor`]: KServe v2 tensor checks.
//!   [`contract`]: a class's model contract — inputs and outputs by name,
//!   datatype and shape, from the config or the server's `ModelMetadata` —
//!   checked by the probes against each replica and by every job on what it
//!   sends and gets.
//! - [`sink`]: the `Sink` trait and its errors (transient or permanent); the
//!   one row shape every backend writes ([`sink::row`]); the run's id on every
//!   row and its `runs` row ([`sink::run`]); the SQLite implementation and the
//!   PostgreSQL one ([`sink::postgres`]: binary COPY into a staging table, then
//!   `INSERT … ON CONFLICT DO NOTHING`, schema checked at start, reconnects;
//!   its `sslmode` TLS on rustls in [`sink::postgres::tls`]);
//!   [`sink::writer`], the thread that groups batches into transactions,
//!   retries transient errors, tells the coordinator and ends the run's row;
//!   and [`sink::journal`], the spill journal on local disk (segmented,
//!   checksummed records; torn tails cut) the writer puts batches in while the
//!   database cannot take them and replays, in order, once it can — a leftover
//!   one first, at start.
//! - [`stats`]: per-shard counters and HDR histograms (totals, per class, per
//!   second; ok jobs' stages, failed jobs' time to failure apart, skipped
//!   ticks' lag) and each shard's view of its replicas, merged off the shards.
//!   [`failures`]: the failure breakdown a shard records beside them — failed
//!   jobs and skipped ticks by stage and bounded reason class, with the most
//!   frequent exact reasons and an example device. [`summary`]: the end-of-run table,
//!   `--summary-json` and the run as a report [`report::Recording`]. [`cpu`]:
//!   per-thread CPU accounting.
//! - [`report`]: report files (`.hgrm`, the HdrHistogram interval log,
//!   `summary.json`, a self-contained `report.html`), reading them back, and
//!   comparing two runs; [`report::stages`] writes `bench --stages`'s
//!   `stages.html`. [`admin`]: `/metrics` (OpenMetrics, rendered by
//!   [`admin::exposition`]) and `/healthz` (503 while the sink fails) from a
//!   thread of its own, reading the newest snapshot.
//!   [`console`]: stdout and stderr written without ever failing the process.
//! - [`mock`]: built-in data-source and compute nodes with service times, error,
//!   hang and reset rates, protocol faults (garbage, HTTP/1.1, cut frames,
//!   oversized replies), KServe readiness and `grpc.health.v1`, all switchable
//!   at run time through [`mock::MockControl`]; real tensors in
//!   [`mock::content`] (any datatype and shape, several named inputs, content
//!   a documented function of device, tick and index: [`mock::tensor_content`])
//!   and [`mock::compute`] (`max-l2`, `echo`, requested outputs, typed
//!   contents, `ModelMetadata`). [`demo`]: the self-contained demo run.
//!   [`mod@bench`]: closed- and open-loop load levels and sweeps. [`bench::search`]: the
//!   search for the highest rate under a latency bound (warm-up, rising then
//!   bisecting, close levels run again, the answer's confidence), generic over
//!   what runs a level so it is unit-tested on made-up ones. [`bench::stages`]:
//!   `bench --stages`, each stage alone (fetch, infer on a cached payload, the
//!   sink on synthetic rows, the whole job) searched in turn, and the verdict on
//!   which limits the pipeline; its page is [`report::stages`].
//! - [`runtime`]: the only module that names glommio (executors, tasks, timers,
//!   TCP), so the runtime could be swapped; an executor starts with the tuning's
//!   [`runtime::ExecutorTuning`] (ring depth, spin, preempt timer) and keeps its
//!   connection options ([`runtime::NetTuning`]: socket options, HTTP/2 windows)
//!   executor-local, read where sockets and h2 connections are made;
//!   [`runtime::watch`]: stall reports with backtraces and the executor's own
//!   counters, which each shard logs and publishes. [`error`]: the job error
//!   taxonomy.
//! - [`proto`]: prost messages generated from `proto/` at build time.
//!
//! # Threads
//!
//! One coordinator (the caller of [`dispatcher::run`]), one executor thread per
//! shard CPU, one sink writer thread, the admin thread when metrics are served,
//! the cluster thread when `[cluster] etcd` is set,
//! and, in demos and benchmarks, mock-node executors. Between them only bounded
//! flume channels, created at start-up.

pub mod admin;
pub mod bench;
pub mod cluster;
pub mod config;
pub mod console;
pub mod contract;
pub mod cpu;
pub mod demo;
pub mod devices;
pub mod diagnostic;
pub mod dispatcher;
pub mod endpoint;
pub mod error;
pub mod failures;
pub mod grpc;
pub mod inbox;
pub mod job;
pub mod mock;
pub mod placement;
pub mod record;
pub mod reload;
pub mod report;
pub mod runtime;
pub mod shard;
pub mod sink;
pub mod stats;
pub mod summary;
pub mod tensor;
pub mod tick;
pub mod tuning;
pub mod upstream;

/// Messages generated from `proto/` by prost at build time.
pub mod proto {
    /// KServe v2 / Open Inference Protocol (`inference.GRPCInferenceService`).
    pub mod inference {
        include!(concat!(env!("OUT_DIR"), "/inference.rs"));
    }
    /// percore's data-source service (`percore.source.v1.DataSource`).
    pub mod source {
        include!(concat!(env!("OUT_DIR"), "/percore.source.v1.rs"));
    }
    /// The standard gRPC health check (`grpc.health.v1.Health/Check`).
    pub mod health {
        include!(concat!(env!("OUT_DIR"), "/grpc.health.v1.rs"));
    }
    /// The spill journal's record payload (`percore.journal.v1.Batch`): rows
    /// of the `jobs` table, written by [`crate::sink::journal`].
    pub mod journal {
        include!(concat!(env!("OUT_DIR"), "/percore.journal.v1.rs"));
    }
    /// etcd's v3 API (`etcdserverpb`: KV, Watch, Lease, Cluster), messages and
    /// tonic client stubs, for [`crate::cluster`].
    #[allow(clippy::all, missing_docs)]
    pub mod etcd {
        include!(concat!(env!("OUT_DIR"), "/etcdserverpb.rs"));
    }
}
