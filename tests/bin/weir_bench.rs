//! `weir-bench`: weir's whole path measured on this machine, next to its ceilings and to
//! the pipeline a user would write by hand.
//!
//! ```sh
//! make bench-e2e                                   # 1,000,000 ticks
//! cargo run --release -p weir-tests --bin weir-bench -- --records 10000
//! ```
//!
//! Against a tansu broker, weir's registry and Postgres started for the run, it preloads N
//! simulated stock ticks (the 18-field `tickers.stocks` Avro schema, 3 partitions), then
//! drains them, each in the same run:
//!
//! - **source ceiling**: consume and decode only (weir's Kafka source and decoder);
//! - **sink ceiling**: the same decoded rows written by weir's sink, batches of 500, with
//!   the offsets, no guest;
//! - **weir passthrough** and **weir market**: `weir run` (release build) with the
//!   `passthrough` guest (one row per tick) and with the `tickers` guest (rules, a tick
//!   row, 1/5/15-minute candle upserts), from start to the last offset committed;
//! - **baseline**: `tests/bench/baseline.py`, confluent-kafka's AvroDeserializer and
//!   psycopg inserting per message with a commit per batch (a virtualenv under
//!   `target/bench/pyenv`, installed from PyPI on first run).
//!
//! It prints one table (records/s, CPU seconds per million records, peak RSS) with the
//! ratios, and writes it as JSON (`--json`, default `target/bench/e2e.json`).

// The allocator `weir` itself uses, so the in-process measurements compare like with like.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use weir::ingest::simulate::{AssetClass, SimConfig, Simulator, Symbol};
use weir::model::{Action, Body, Row, Target, Write};
use weir::registry::RegistryClient;
use weir::sink::PipelineScope;
use weir::sink::{Sink, SinkBatch, SinkConfig, SinkItem};
use weir::source::{Decoded, Decoder, Shape};
use weir::source::{KafkaSource, SourceConfig, StartFrom};
use weir_tests::{Broker, GUEST_DIR, Registry, TestDb, repo_root, rt, run_sql, unique, wait_until};

const TOPIC: &str = "tickers.stocks";
const PARTITIONS: i32 = 3;
const BATCH: usize = 500;
/// How long a partition's batch may wait to fill: throughput runs, and latency runs.
const LINGER: &str = "50ms";
const LATENCY_LINGER: &str = "10ms";
/// Load offered before a latency run's measured part: the consumer's first fetches of a
/// new topic and the first batches are not steady state.
const WARMUP: Duration = Duration::from_secs(2);

/// The pipeline settings of the passthrough and market runs.
const PASSTHROUGH: &str = "    guest: passthrough.wasm\n    config:\n      table: tickers_stocks\n    tables: [tickers_stocks]\n    columns: schema\n";
const MARKET: &str = "    guest: tickers.wasm\n    config:\n      asset_class: stocks\n      max_lateness: \"off\"\n      max_future_skew: \"off\"\n    tables: [ticks_stocks, candles]\n";

struct Args {
    records: u64,
    baseline_records: u64,
    json: PathBuf,
    /// Configurations to measure (all when empty).
    only: Vec<String>,
    /// How long each latency run offers load.
    latency_seconds: f64,
}

/// The configurations `--only` can name.
const CONFIGURATIONS: &[&str] = &[
    "source",
    "sink",
    "passthrough",
    "native",
    "market",
    "baseline",
    "latency",
];

impl Args {
    fn measures(&self, configuration: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| o == configuration)
    }
}

fn parse_args() -> Args {
    let mut records = 1_000_000u64;
    let mut baseline_records = None;
    let mut json = repo_root().join("target/bench/e2e.json");
    let mut only = Vec::new();
    let mut latency_seconds = 10.0;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .unwrap_or_else(|| fail(&format!("{name} needs a value")))
        };
        match a.as_str() {
            "--records" => records = number(&value("--records"), "--records"),
            "--baseline-records" => {
                baseline_records = Some(number(&value("--baseline-records"), "--baseline-records"))
            }
            "--json" => json = PathBuf::from(value("--json")),
            "--latency-seconds" => {
                latency_seconds = number(&value("--latency-seconds"), "--latency-seconds") as f64
            }
            "--only" => {
                for name in value("--only").split(',') {
                    if !CONFIGURATIONS.contains(&name) {
                        fail(&format!(
                            "--only {name:?}: not one of {}",
                            CONFIGURATIONS.join(", ")
                        ));
                    }
                    only.push(name.to_string());
                }
            }
            "-h" | "--help" => {
                println!(
                    "weir-bench [--records N (1000000)] [--baseline-records N (min(N, 100000))] [--json FILE] [--latency-seconds S (10)] [--only {}]",
                    CONFIGURATIONS.join(",")
                );
                std::process::exit(0);
            }
            other => fail(&format!("unknown argument {other:?} (see --help)")),
        }
    }
    if records == 0 {
        fail("--records must be at least 1");
    }
    Args {
        records,
        baseline_records: baseline_records
            .unwrap_or(records.min(100_000))
            .min(records),
        json,
        only,
        latency_seconds,
    }
}

fn number(text: &str, name: &str) -> u64 {
    text.replace('_', "")
        .parse()
        .unwrap_or_else(|_| fail(&format!("{name} {text:?} is not a whole number")))
}

fn fail(message: &str) -> ! {
    eprintln!("weir-bench: {message}");
    std::process::exit(2)
}

/// One measured configuration.
struct Measurement {
    name: &'static str,
    records: u64,
    seconds: f64,
    cpu_seconds: Option<f64>,
    peak_rss_bytes: Option<u64>,
}

impl Measurement {
    fn rate(&self) -> f64 {
        self.records as f64 / self.seconds
    }
}

/// CPU seconds (user + system) of this process so far.
fn own_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    cpu_from_stat(&stat)
}

fn cpu_from_stat(stat: &str) -> f64 {
    // Fields after the command name (which may hold spaces) start at ") ".
    let rest = stat.rsplit_once(") ").map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the name and state.
    (ticks(11) + ticks(12)) / clock_ticks()
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// (CPU seconds, peak RSS) of a running child, read before it is stopped.
fn child_usage(pid: u32) -> (Option<f64>, Option<u64>) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok();
    let rss = status.and_then(|s| {
        s.lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .map(|kb| kb * 1024)
    });
    (stat.map(|s| cpu_from_stat(&s)), rss)
}

/// The release `weir` binary, built if needed.
fn weir_release() -> PathBuf {
    let status = Command::new("cargo")
        .args(["build", "--release", "-q", "-p", "weir"])
        .current_dir(repo_root())
        .status()
        .expect("run cargo build");
    assert!(status.success(), "cargo build --release -p weir failed");
    repo_root().join("target/release/weir")
}

/// Produces `n` simulated stock ticks to TOPIC, as fast as the broker takes them.
fn preload(broker: &Broker, registry: &str, n: u64) -> f64 {
    rt().block_on(async {
        weir::source::kafka::ensure_topics(&broker.bootstrap, &[TOPIC.to_string()], PARTITIONS)
            .await
            .expect("create the topic");
        let client = RegistryClient::new(registry).unwrap();
        let mut producer =
            weir::ingest::Producer::connect(&broker.bootstrap, &client, &[TOPIC.to_string()])
                .await
                .expect("connect the producer");
        let mut sim = simulator();
        let start = Instant::now();
        // Simulated times a millisecond apart, inside a regular session (bid/ask present).
        let t0 = 1_763_650_800_000i64;
        for i in 0..n {
            let at = t0 + i as i64;
            let (_, tick) = sim.next_tick(at, at + 2);
            let key = tick["id"].as_str().unwrap_or_default().to_string();
            producer
                .send(TOPIC, &key, &tick)
                .await
                .expect("deliver")
                .expect("a simulated tick fits its schema");
        }
        producer.finish().await.expect("every tick delivered");
        start.elapsed().as_secs_f64()
    })
}

/// The broker, the registry's URL and the database URL.
type Services<'a> = (&'a Broker, &'a str, &'a str);

/// Stock ticks, the same sequence every run, without late or duplicate ones.
fn simulator() -> Simulator {
    let symbols = AssetClass::Stocks
        .default_symbols()
        .iter()
        .map(|(name, open)| Symbol {
            class: AssetClass::Stocks,
            name: name.to_string(),
            open: *open,
        })
        .collect();
    Simulator::new(SimConfig {
        symbols,
        seed: 42,
        late_fraction: 0.0,
        late_by_ms: 0,
        duplicate_fraction: 0.0,
        source: "bench".into(),
    })
}

/// Consume-and-decode only, with weir's source and decoder.
fn source_ceiling(broker: &Broker, registry: &str, n: u64) -> (Measurement, Vec<SinkBatch>) {
    rt().block_on(async {
        let mut source = KafkaSource::new(&SourceConfig {
            kafka: weir::source::kafka::Kafka::new(&broker.bootstrap),
            group_id: unique("bench-source"),
            topics: vec![TOPIC.to_string()],
            batch_size: BATCH,
            linger: Duration::from_millis(50),
            start: StartFrom::Earliest,
            properties: vec![],
            subscribe: true,
        })
        .expect("a Kafka source");
        let decoder = Decoder::new(Arc::new(RegistryClient::new(registry).unwrap()));
        let cpu = own_cpu_seconds();
        let mut start = None;
        let mut decoded = 0u64;
        let mut batches = Vec::new();
        while decoded < n {
            let batch = tokio::time::timeout(Duration::from_secs(60), source.next_batch())
                .await
                .unwrap_or_else(|_| panic!("no messages for 60 s after {decoded} of {n}"))
                .expect("a batch");
            start.get_or_insert_with(Instant::now);
            let out = decoder.decode_batch(&batch, Shape::Values).await.unwrap();
            let mut items = Vec::with_capacity(out.len());
            // The passthrough guest's rows: every field, into the sink-ceiling table, one
            // target per writer schema.
            let mut targets: Vec<Target> = Vec::new();
            let mut by_layout = std::collections::HashMap::new();
            for (raw, d) in batch.messages.iter().zip(out) {
                let Decoded::Message(m) = d else {
                    panic!("a preloaded tick did not decode")
                };
                let Body::Values { layout, values } = m.body else {
                    panic!("a preloaded tick is not a record")
                };
                decoded += 1;
                let target = *by_layout.entry(Arc::as_ptr(&layout)).or_insert_with(|| {
                    targets.push(Target {
                        table: "sink_ceiling".into(),
                        columns: layout
                            .schema()
                            .fields
                            .iter()
                            .map(|f| f.name.clone())
                            .collect(),
                        write: Write::Insert,
                    });
                    targets.len() as u32 - 1
                });
                items.push(SinkItem::Actions {
                    offset: raw.offset,
                    key: None,
                    value: None,
                    headers: Vec::new(),
                    actions: vec![Action::Write(Row { target, values })],
                    emits: Vec::new(),
                });
            }
            batches.push(SinkBatch {
                topic: batch.topic.clone(),
                partition: batch.partition,
                start_offset: batch.messages[0].offset,
                next_offset: batch.next_offset().unwrap(),
                guest_version: None,
                version_column: None,
                scope: Arc::new(PipelineScope {
                    pipeline: "sink-ceiling".into(),
                    tables: ["sink_ceiling".to_string()].into(),
                }),
                targets,
                items,
                dedup: None,
                state: None,
                barrier: None,
            });
        }
        let seconds = start.map_or(0.0, |s| s.elapsed().as_secs_f64());
        (
            Measurement {
                name: "source ceiling (consume + decode)",
                records: decoded,
                seconds,
                cpu_seconds: Some(own_cpu_seconds() - cpu),
                peak_rss_bytes: None,
            },
            batches,
        )
    })
}

/// The decoded rows written by weir's sink alone, batch by batch, with their offsets.
fn sink_ceiling(database_url: &str, batches: &[SinkBatch]) -> Measurement {
    rt().block_on(async {
        let sink = Sink::connect(SinkConfig {
            database_url: database_url.to_string(),
            group_id: unique("bench-sink"),
        })
        .await
        .expect("connect the sink");
        let cpu = own_cpu_seconds();
        let start = Instant::now();
        let mut records = 0u64;
        for batch in batches {
            let report = sink.write_batch(batch).await.expect("a batch commits");
            assert!(report.dead_letters.is_empty(), "rows refused: {report:?}");
            records += batch.items.len() as u64;
        }
        Measurement {
            name: "sink ceiling (weir sink, COPY + offsets)",
            records,
            seconds: start.elapsed().as_secs_f64(),
            cpu_seconds: Some(own_cpu_seconds() - cpu),
            peak_rss_bytes: None,
        }
    })
}

/// A `weir run` config with one pipeline, `bench`, on `topic`; its path and HTTP port.
fn write_config(
    dir: &Path,
    group: &str,
    services: Services,
    topic: &str,
    linger: &str,
    pipeline: &str,
) -> (PathBuf, u16) {
    let (broker, registry, database_url) = services;
    let port = weir_tests::free_port();
    let config = dir.join(format!("{group}.yaml"));
    std::fs::write(
        &config,
        format!(
            "kafka:\n  brokers: \"{}\"\n  group_id: \"{group}\"\n\
             registry:\n  url: \"{registry}\"\n\
             database:\n  url: \"{database_url}\"\n  migrations: \"{}\"\n\
             http:\n  listen: \"127.0.0.1:{port}\"\n\
             guests:\n  dir: \"{GUEST_DIR}\"\n  watch: false\n\
             pipelines:\n  - name: bench\n    topic: {topic}\n    batch:\n      size: {BATCH}\n      linger: {linger}\n{pipeline}",
            broker.bootstrap,
            repo_root().join("schemas/postgres").display(),
        ),
    )
    .unwrap();
    (config, port)
}

/// A `weir run` (release binary) started on a config, stopped when dropped.
struct WeirRun {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl WeirRun {
    fn start(name: &'static str, weir: &Path, config: &Path) -> Self {
        let log = config.with_extension("log");
        let child = Command::new(weir)
            .args(["run", "--config"])
            .arg(config)
            .env("WEIR_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start weir run");
        eprintln!("  {name}: weir run is pid {}", child.id());
        Self { name, child, log }
    }

    /// Waits until `done`, failing if weir run exits or an hour passes.
    fn wait(&mut self, what: &str, poll: Duration, done: &dyn Fn() -> bool) {
        let (name, child, log) = (self.name, &mut self.child, &self.log);
        wait_until(
            Duration::from_secs(3600),
            poll,
            || {
                if let Ok(Some(status)) = child.try_wait() {
                    let text = std::fs::read_to_string(log).unwrap_or_default();
                    panic!("weir run ({name}) exited with {status}:\n{text}");
                }
                done()
            },
            || format!("{name}: not {what} in an hour"),
        );
    }
}

impl Drop for WeirRun {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `weir run` with one pipeline on TOPIC, from ready until every record is committed.
fn weir_run(
    name: &'static str,
    weir: &Path,
    dir: &Path,
    services: Services,
    pipeline: &str,
    n: u64,
) -> Measurement {
    let database_url = services.2;
    let group = unique("bench-weir");
    let (config, port) = write_config(dir, &group, services, TOPIC, LINGER, pipeline);
    let start = Instant::now();
    let mut run = WeirRun::start(name, weir, &config);
    // Drain time counts from ready (Postgres connected, partitions assigned, guest
    // compiled): the start-up is reported apart.
    run.wait("ready", Duration::from_millis(10), &|| ready(port));
    let startup = start.elapsed().as_secs_f64();
    let start = Instant::now();
    run.wait("drained", Duration::from_millis(20), &|| {
        weir_tests::committed_offsets(database_url, &group) >= n as i64
    });
    let seconds = start.elapsed().as_secs_f64();
    let (cpu_seconds, peak_rss_bytes) = child_usage(run.child.id());
    eprintln!("  {name}: ready after {startup:.2} s");
    Measurement {
        name,
        records: n,
        seconds,
        cpu_seconds,
        peak_rss_bytes,
    }
}

/// The same pipeline as `weir passthrough`, run in this process by weir's runner with the
/// passthrough transform compiled in ([`weir_tests::native`]) instead of its `.wasm`.
fn native_run(dir: &Path, services: Services, n: u64) -> Measurement {
    let database_url = services.2;
    let group = unique("bench-native");
    let (path, _) = write_config(dir, &group, services, TOPIC, LINGER, PASSTHROUGH);
    let config = weir::config::load(&path, None).expect("the bench config loads");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let health = Arc::new(weir::metrics::Health::default());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = {
        let health = health.clone();
        runtime.spawn(async move {
            let metrics = weir::metrics::Metrics::new();
            let wasm = Arc::new(weir::runtime::Runtime::new(
                config.runtime_config(),
                metrics.events(),
            )?);
            let mut guests = weir::runtime::GuestSet::new(wasm);
            let native = weir_tests::native::Native::<passthrough::Passthrough>::default();
            guests.add_guest(
                "bench",
                &[TOPIC.to_string()],
                weir::runtime::Guest::native(
                    "passthrough",
                    Arc::new(native),
                    weir::pipeline::guest_config(&config.pipelines[0]),
                ),
            );
            let guests = Arc::new(guests);
            let runner = weir::pipeline::Runner::start(&config, &guests, metrics, health).await?;
            runner
                .run(async {
                    let _ = stopped.await;
                })
                .await
        })
    };
    let wait = |what: &str, done: &dyn Fn() -> bool| {
        wait_until(
            Duration::from_secs(3600),
            Duration::from_millis(10),
            || {
                assert!(!running.is_finished(), "the native run stopped early");
                done()
            },
            || format!("native: not {what} in an hour"),
        );
    };
    wait("ready", &|| health.ready().is_ok());
    let cpu = own_cpu_seconds();
    let start = Instant::now();
    wait("drained", &|| {
        weir_tests::committed_offsets(database_url, &group) >= n as i64
    });
    let seconds = start.elapsed().as_secs_f64();
    let cpu_seconds = own_cpu_seconds() - cpu;
    let _ = stop.send(());
    runtime
        .block_on(running)
        .expect("the native run's task")
        .expect("the native run");
    Measurement {
        name: "native (passthrough compiled into the host)",
        records: n,
        seconds,
        cpu_seconds: Some(cpu_seconds),
        peak_rss_bytes: None,
    }
}

/// Latency produce → committed row of `weir run` with passthrough at a fixed offered
/// rate (open loop) for `seconds`.
struct Latency {
    rate: f64,
    records: u64,
    /// Microseconds.
    histogram: hdrhistogram::Histogram<u64>,
}

/// Offers ticks to a topic of its own at `rate` per second, on a schedule that does not
/// wait for weir (a late send keeps its scheduled time, so a stall shows in the numbers
/// instead of slowing the load). Each tick's `event_time` is its scheduled time; a
/// trigger on `weir_offsets` notifies the bench of each commit, and a row's latency is
/// the time its batch's commit was seen minus its scheduled time.
fn latency(weir: &Path, dir: &Path, services: Services, rate: f64, seconds: f64) -> Latency {
    let (broker, registry, database_url) = services;
    let topic = format!("bench.latency.{}", rate as u64);
    let table = format!("latency_{}", rate as u64);
    let group = unique("bench-latency");
    rt().block_on(async {
        weir::source::kafka::ensure_topics(
            &broker.bootstrap,
            std::slice::from_ref(&topic),
            PARTITIONS,
        )
        .await
        .expect("create the latency topic");
        let client = RegistryClient::new(registry).unwrap();
        let schema = client.latest(&format!("{TOPIC}-value")).await.unwrap();
        client
            .register(&format!("{topic}-value"), &schema.text)
            .await
            .expect("register the latency topic's schema");
    });
    run_sql(
        database_url,
        &format!(
            "CREATE TABLE {table} (LIKE tickers_stocks);
             ALTER TABLE {table} ADD COLUMN kafka_topic text, ADD COLUMN kafka_partition integer,
                 ADD COLUMN kafka_offset bigint, ADD COLUMN kafka_timestamp timestamptz;
             CREATE OR REPLACE FUNCTION bench_commit() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 PERFORM pg_notify('bench_commit', NEW.group_id || ' ' || NEW.partition || ' ' || NEW.next_offset);
                 RETURN NULL;
             END $$;
             CREATE OR REPLACE TRIGGER bench_commit AFTER INSERT OR UPDATE OF next_offset ON weir_offsets
                 FOR EACH ROW EXECUTE FUNCTION bench_commit();"
        ),
    );
    let pipeline = format!(
        "    guest: passthrough.wasm\n    config:\n      table: {table}\n      include_metadata: \"true\"\n    tables: [{table}]\n"
    );
    let (config, port) = write_config(dir, &group, services, &topic, LATENCY_LINGER, &pipeline);
    let mut run = WeirRun::start("weir passthrough (latency)", weir, &config);
    run.wait("ready", Duration::from_millis(10), &|| ready(port));

    // Commits as they are seen: (partition, next offset, wall clock µs).
    let commits: Arc<std::sync::Mutex<Vec<(i32, i64, i64)>>> = Arc::default();
    // A runtime of its own, kept until the end: the listening connection runs on it.
    let listening = rt();
    let listener = listening.block_on(async {
        let (client, mut connection) = tokio_postgres::connect(database_url, tokio_postgres::NoTls)
            .await
            .expect("connect to listen");
        let commits = commits.clone();
        let group = group.clone();
        let task = tokio::spawn(async move {
            while let Some(message) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                if let Ok(tokio_postgres::AsyncMessage::Notification(n)) = message {
                    let at = now_us();
                    let fields: Vec<&str> = n.payload().split(' ').collect();
                    if fields.len() == 3 && fields[0] == group {
                        commits.lock().unwrap().push((
                            fields[1].parse().unwrap(),
                            fields[2].parse().unwrap(),
                            at,
                        ));
                    }
                }
            }
        });
        client.batch_execute("LISTEN bench_commit").await.unwrap();
        (client, task)
    });

    let records = (rate * (seconds + WARMUP.as_secs_f64())) as u64;
    let start_us = rt().block_on(async {
        let client = RegistryClient::new(registry).unwrap();
        let mut producer = weir::ingest::Producer::connect(
            &broker.bootstrap,
            &client,
            std::slice::from_ref(&topic),
        )
        .await
        .expect("connect the producer");
        let mut sim = simulator();
        let start = tokio::time::Instant::now();
        let start_us = now_us();
        for i in 0..records {
            let offset = Duration::from_secs_f64(i as f64 / rate);
            tokio::time::sleep_until(start + offset).await;
            let at_ms = (start_us + offset.as_micros() as i64) / 1000;
            let (_, tick) = sim.next_tick(at_ms, at_ms);
            let key = tick["id"].as_str().unwrap_or_default().to_string();
            producer
                .send(&topic, &key, &tick)
                .await
                .expect("deliver")
                .expect("a simulated tick fits its schema");
        }
        producer.finish().await.expect("every tick delivered");
        start_us
    });
    run.wait("drained", Duration::from_millis(20), &|| {
        weir_tests::committed_offsets(database_url, &group) >= records as i64
    });
    drop(run);
    std::thread::sleep(Duration::from_millis(200));
    drop(listener);
    drop(listening);

    let mut by_partition: std::collections::HashMap<i32, Vec<(i64, i64)>> = Default::default();
    for (partition, next, at) in commits.lock().unwrap().iter() {
        by_partition
            .entry(*partition)
            .or_default()
            .push((*next, *at));
    }
    for list in by_partition.values_mut() {
        list.sort();
    }
    let rows = weir_tests::query(
        database_url,
        &format!(
            "SELECT kafka_partition, kafka_offset,
                    (extract(epoch FROM event_time) * 1000000)::bigint FROM {table}"
        ),
    );
    let mut histogram =
        hdrhistogram::Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).unwrap();
    for row in &rows {
        let (partition, offset, scheduled): (i32, i64, i64) = (row.get(0), row.get(1), row.get(2));
        let commits = &by_partition[&partition];
        // The first commit whose next offset is past this row's.
        let i = commits.partition_point(|(next, _)| *next <= offset);
        let at = commits
            .get(i)
            .map(|c| c.1)
            .expect("a commit covering every row");
        if scheduled >= start_us + WARMUP.as_micros() as i64 {
            histogram.saturating_record((at - scheduled).max(1) as u64);
        }
    }
    assert_eq!(rows.len() as u64, records, "every offered tick has its row");
    Latency {
        rate,
        records: histogram.len(),
        histogram,
    }
}

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

/// Whether `weir run`'s /readyz on `port` answers 200.
fn ready(port: u16) -> bool {
    use std::io::{Read as _, Write as _};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    if s.write_all(b"GET /readyz HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && &head[9..12] == b"200"
}

/// The Python of a virtualenv with the baseline's libraries, created on first use.
fn baseline_python() -> PathBuf {
    const REQUIREMENTS: [&str; 2] = [
        "confluent-kafka[avro,schemaregistry]>=2.10",
        "psycopg[binary]>=3.1",
    ];
    let venv = repo_root().join("target/bench/pyenv");
    let python = venv.join("bin/python");
    let marker = venv.join(".weir-installed");
    let want = REQUIREMENTS.join("\n");
    if std::fs::read_to_string(&marker).ok().as_deref() == Some(want.as_str()) && python.exists() {
        return python;
    }
    eprintln!(
        "Installing the baseline's Python libraries into {}",
        venv.display()
    );
    let ok = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "python3 -m venv {} failed", venv.display());
    let ok = Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .args(REQUIREMENTS)
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "pip could not install {REQUIREMENTS:?}");
    std::fs::write(&marker, want).unwrap();
    python
}

fn baseline(broker: &Broker, registry: &str, database_url: &str, n: u64) -> Measurement {
    let python = baseline_python();
    let out = Command::new(python)
        .arg(repo_root().join("tests/bench/baseline.py"))
        .args(["--brokers", &broker.bootstrap])
        .args(["--registry", registry])
        .args(["--database-url", database_url])
        .args(["--topic", TOPIC, "--table", "baseline_ticks"])
        .args(["--group", &unique("bench-baseline")])
        .args(["--records", &n.to_string(), "--batch", &BATCH.to_string()])
        .stderr(Stdio::inherit())
        .output()
        .expect("run the Python baseline");
    assert!(out.status.success(), "the Python baseline failed");
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("the baseline prints one JSON object");
    Measurement {
        name: "baseline (Python: confluent-kafka + psycopg)",
        records: report["records"].as_u64().unwrap(),
        seconds: report["seconds"].as_f64().unwrap(),
        cpu_seconds: report["cpu_seconds"].as_f64(),
        peak_rss_bytes: report["peak_rss_bytes"].as_u64(),
    }
}

fn main() {
    let args = parse_args();
    let weir = weir_release();
    let db = TestDb::new();
    let url = db.url();
    let registry = Registry::start(&url);
    let broker = Broker::start();
    // Configs and logs of the weir runs stay for a look afterwards.
    let dir = repo_root().join("target/bench/runs");
    std::fs::create_dir_all(&dir).unwrap();

    let out = Command::new(&weir)
        .args(["schemas", "push", "--registry", &registry.url])
        .arg(repo_root().join("schemas"))
        .env("WEIR_LOG", "warn")
        .output()
        .expect("weir schemas push");
    assert!(out.status.success(), "weir schemas push failed");
    let out = Command::new(&weir)
        .args(["migrate", "--database-url", &url])
        .arg(repo_root().join("schemas/postgres"))
        .env("WEIR_LOG", "warn")
        .output()
        .expect("weir migrate");
    assert!(
        out.status.success(),
        "weir migrate failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    run_sql(
        &url,
        "CREATE TABLE sink_ceiling (LIKE tickers_stocks);
         CREATE TABLE baseline_ticks (LIKE tickers_stocks);",
    );

    eprintln!(
        "Preloading {} ticks into {TOPIC} ({PARTITIONS} partitions)",
        args.records
    );
    let produce_seconds = preload(&broker, &registry.url, args.records);
    let mut results = Vec::new();
    if args.measures("source") || args.measures("sink") {
        eprintln!("Measuring the source ceiling");
        let (source, batches) = source_ceiling(&broker, &registry.url, args.records);
        results.push(source);
        if args.measures("sink") {
            eprintln!("Measuring the sink ceiling");
            results.push(sink_ceiling(&url, &batches));
        }
    }
    let services = (&broker, registry.url.as_str(), url.as_str());
    if args.measures("passthrough") {
        eprintln!("Measuring weir run with passthrough");
        results.push(weir_run(
            "weir passthrough",
            &weir,
            &dir,
            services,
            PASSTHROUGH,
            args.records,
        ));
    }
    if args.measures("native") {
        eprintln!("Measuring the runner with passthrough compiled in (native)");
        results.push(native_run(&dir, services, args.records));
    }
    if args.measures("market") {
        eprintln!("Measuring weir run with the market guest");
        results.push(weir_run(
            "weir market (ticks + 3 candle intervals)",
            &weir,
            &dir,
            services,
            MARKET,
            args.records,
        ));
    }
    if args.measures("baseline") {
        eprintln!(
            "Measuring the Python baseline on {} records",
            args.baseline_records
        );
        results.push(baseline(
            &broker,
            &registry.url,
            &url,
            args.baseline_records,
        ));
    }
    let mut latencies = Vec::new();
    if args.measures("latency") {
        let max = results
            .iter()
            .find(|m| m.name == "weir passthrough")
            .map(Measurement::rate);
        let mut rates = vec![25_000.0];
        match max {
            Some(max) => rates.push((max / 2.0).round()),
            None => eprintln!(
                "(50% of the maximum needs the passthrough run: --only passthrough,latency)"
            ),
        }
        for rate in rates {
            eprintln!(
                "Measuring latency at {rate:.0} records/s offered for {:.0} s",
                args.latency_seconds
            );
            latencies.push(latency(&weir, &dir, services, rate, args.latency_seconds));
        }
    }

    report(&args, produce_seconds, &results, &latencies);
}

fn report(args: &Args, produce_seconds: f64, results: &[Measurement], latencies: &[Latency]) {
    println!();
    println!(
        "{:<46} {:>10} {:>10} {:>14} {:>12}",
        "configuration", "records", "records/s", "CPU s / 1M", "peak RSS MiB"
    );
    for m in results {
        println!(
            "{:<46} {:>10} {:>10.0} {:>14} {:>12}",
            m.name,
            m.records,
            m.rate(),
            m.cpu_seconds
                .map_or("-".into(), |c| format!("{:.1}", c / m.records as f64 * 1e6)),
            m.peak_rss_bytes
                .map_or("-".into(), |b| format!("{:.0}", b as f64 / 1048576.0)),
        );
    }
    let rate = |prefix: &str| {
        results
            .iter()
            .find(|m| m.name.starts_with(prefix))
            .map(Measurement::rate)
            .unwrap_or(f64::NAN)
    };
    let weir = rate("weir passthrough");
    let ceiling = rate("source ceiling").min(rate("sink ceiling"));
    let ratios = [
        ("weir passthrough / lower ceiling", weir / ceiling),
        ("weir passthrough / native", weir / rate("native")),
        ("weir passthrough / baseline", weir / rate("baseline")),
        ("weir market / weir passthrough", rate("weir market") / weir),
    ];
    println!();
    for (name, r) in ratios {
        println!("{name:<46} {r:>10.2}");
    }
    if !latencies.is_empty() {
        println!();
        println!(
            "{:<46} {:>10} {:>10} {:>10} {:>10} {:>10}",
            "latency produce -> committed row", "records", "p50 ms", "p99 ms", "p99.9 ms", "max ms"
        );
        for l in latencies {
            let ms = |q: f64| l.histogram.value_at_quantile(q) as f64 / 1000.0;
            println!(
                "{:<46} {:>10} {:>10.1} {:>10.1} {:>10.1} {:>10.1}",
                format!("passthrough at {:.0} records/s offered", l.rate),
                l.records,
                ms(0.5),
                ms(0.99),
                ms(0.999),
                l.histogram.max() as f64 / 1000.0
            );
        }
    }
    println!(
        "\n(preloaded {} records in {produce_seconds:.1} s; {} cores)",
        args.records,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let json = json!({
        "records": args.records,
        "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "results": results.iter().map(|m| json!({
            "configuration": m.name,
            "records": m.records,
            "seconds": m.seconds,
            "records_per_second": m.rate(),
            "cpu_seconds": m.cpu_seconds,
            "peak_rss_bytes": m.peak_rss_bytes,
        })).collect::<Vec<_>>(),
        "ratios": ratios.iter().map(|(n, r)| (n.to_string(), json!(r))).collect::<serde_json::Map<_, _>>(),
        "latency": latencies.iter().map(|l| json!({
            "offered_records_per_second": l.rate,
            "records": l.records,
            "p50_ms": l.histogram.value_at_quantile(0.5) as f64 / 1000.0,
            "p99_ms": l.histogram.value_at_quantile(0.99) as f64 / 1000.0,
            "p99_9_ms": l.histogram.value_at_quantile(0.999) as f64 / 1000.0,
            "max_ms": l.histogram.max() as f64 / 1000.0,
        })).collect::<Vec<_>>(),
    });
    if let Some(parent) = args.json.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(&args.json, serde_json::to_string_pretty(&json).unwrap()).unwrap();
    println!("written to {}", args.json.display());
}
