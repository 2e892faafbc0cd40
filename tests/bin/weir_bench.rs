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

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use weir::ingest::simulate::{AssetClass, SimConfig, Simulator, Symbol};
use weir::registry::RegistryClient;
use weir::runtime::types::{Action, InsertRow};
use weir::sink::{Sink, SinkBatch, SinkConfig, SinkItem};
use weir::source::{Decoded, Decoder};
use weir::source::{KafkaSource, SourceConfig, StartFrom};
use weir_tests::{Broker, GUEST_DIR, Registry, TestDb, repo_root, rt, run_sql, unique};

const TOPIC: &str = "tickers.stocks";
const PARTITIONS: i32 = 3;
const BATCH: usize = 500;

struct Args {
    records: u64,
    baseline_records: u64,
    json: PathBuf,
}

fn parse_args() -> Args {
    let mut records = 1_000_000u64;
    let mut baseline_records = None;
    let mut json = repo_root().join("target/bench/e2e.json");
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
            "-h" | "--help" => {
                println!(
                    "weir-bench [--records N (1000000)] [--baseline-records N (min(N, 100000))] [--json FILE]"
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
        let symbols = AssetClass::Stocks
            .default_symbols()
            .iter()
            .map(|(name, open)| Symbol {
                class: AssetClass::Stocks,
                name: name.to_string(),
                open: *open,
            })
            .collect();
        let mut sim = Simulator::new(SimConfig {
            symbols,
            seed: 42,
            late_fraction: 0.0,
            late_by_ms: 0,
            duplicate_fraction: 0.0,
            source: "bench".into(),
        });
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

/// Consume-and-decode only, with weir's source and decoder.
fn source_ceiling(broker: &Broker, registry: &str, n: u64) -> (Measurement, Vec<SinkBatch>) {
    rt().block_on(async {
        let mut source = KafkaSource::new(&SourceConfig {
            brokers: broker.bootstrap.clone(),
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
            let out = decoder.decode_batch(&batch).await;
            let mut items = Vec::with_capacity(out.len());
            for (raw, d) in batch.messages.iter().zip(out) {
                let Decoded::Message(m) = d else {
                    panic!("a preloaded tick did not decode")
                };
                decoded += 1;
                // The passthrough guest's row: every field, into the sink-ceiling table.
                items.push(SinkItem::Actions {
                    offset: raw.offset,
                    key: None,
                    value: None,
                    actions: vec![Action::Insert(InsertRow {
                        table: "sink_ceiling".into(),
                        row: m.fields,
                    })],
                });
            }
            batches.push(SinkBatch {
                topic: batch.topic.clone(),
                partition: batch.partition,
                start_offset: batch.messages[0].offset,
                next_offset: batch.next_offset().unwrap(),
                guest_version: None,
                version_column: None,
                items,
                dedup: None,
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

/// `weir run` with one pipeline on TOPIC, from its start until every record is committed.
#[allow(clippy::too_many_arguments)]
fn weir_run(
    name: &'static str,
    weir: &Path,
    dir: &Path,
    broker: &Broker,
    registry: &str,
    database_url: &str,
    pipeline: &str,
    n: u64,
) -> Measurement {
    let group = unique("bench-weir");
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
             pipelines:\n  - name: bench\n    topic: {TOPIC}\n    batch:\n      size: {BATCH}\n      linger: 50ms\n{pipeline}",
            broker.bootstrap,
            repo_root().join("schemas/postgres").display(),
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.join(format!("{group}.log"))).unwrap();
    let start = Instant::now();
    let mut child: Child = Command::new(weir)
        .args(["run", "--config"])
        .arg(&config)
        .env("WEIR_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start weir run");
    let log_path = dir.join(format!("{group}.log"));
    // Waits until `done`, failing if weir run exits or an hour passes.
    let mut wait = |what: &str, poll: Duration, done: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(3600);
        while !done() {
            if let Ok(Some(status)) = child.try_wait() {
                let text = std::fs::read_to_string(&log_path).unwrap_or_default();
                panic!("weir run ({name}) exited with {status}:\n{text}");
            }
            assert!(Instant::now() < deadline, "{name}: not {what} in an hour");
            std::thread::sleep(poll);
        }
    };
    // Drain time counts from ready (Postgres connected, partitions assigned, guest
    // compiled): the start-up is reported apart.
    wait("ready", Duration::from_millis(10), &|| ready(port));
    let startup = start.elapsed().as_secs_f64();
    let start = Instant::now();
    wait("drained", Duration::from_millis(20), &|| {
        weir_tests::committed_offsets(database_url, &group) >= n as i64
    });
    let seconds = start.elapsed().as_secs_f64();
    let (cpu_seconds, peak_rss_bytes) = child_usage(child.id());
    let _ = child.kill();
    let _ = child.wait();
    eprintln!("  {name}: ready after {startup:.2} s");
    Measurement {
        name,
        records: n,
        seconds,
        cpu_seconds,
        peak_rss_bytes,
    }
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
    let dir = tempfile::tempdir().unwrap();

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
    eprintln!("Measuring the source ceiling");
    let (source, batches) = source_ceiling(&broker, &registry.url, args.records);
    results.push(source);
    eprintln!("Measuring the sink ceiling");
    results.push(sink_ceiling(&url, &batches));
    drop(batches);
    eprintln!("Measuring weir run with passthrough");
    results.push(weir_run(
        "weir passthrough",
        &weir,
        dir.path(),
        &broker,
        &registry.url,
        &url,
        "    guest: passthrough.wasm\n    config:\n      table: tickers_stocks\n    tables: [tickers_stocks]\n    columns: schema\n",
        args.records,
    ));
    eprintln!("Measuring weir run with the market guest");
    results.push(weir_run(
        "weir market (ticks + 3 candle intervals)",
        &weir,
        dir.path(),
        &broker,
        &registry.url,
        &url,
        "    guest: tickers.wasm\n    config:\n      asset_class: stocks\n      max_lateness: \"off\"\n      max_future_skew: \"off\"\n    tables: [ticks_stocks, candles]\n",
        args.records,
    ));
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

    report(&args, produce_seconds, &results);
}

fn report(args: &Args, produce_seconds: f64, results: &[Measurement]) {
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
        ("weir passthrough / baseline", weir / rate("baseline")),
        ("weir market / weir passthrough", rate("weir market") / weir),
    ];
    println!();
    for (name, r) in ratios {
        println!("{name:<46} {r:>10.2}");
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
    });
    if let Some(parent) = args.json.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(&args.json, serde_json::to_string_pretty(&json).unwrap()).unwrap();
    println!("written to {}", args.json.display());
}
