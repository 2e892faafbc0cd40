//! The guest contract 0.2.0 end to end, with real compiled guests against tansu, weir's
//! registry and Postgres: configs refused before a batch reaches the guest, keyed state
//! exactly once through SIGKILLs, swaps and a partition moving between members, lookups
//! checked row by row against a SQL join, guests confined to their pipeline's tables,
//! record headers, a 0.1.0 guest running beside 0.2.0 ones, and emits produced exactly
//! once through SIGKILLs and while Kafka refuses the relay.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use apache_avro::types::Value as Avro;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use weir::model::{Batch, ConfigEntry, Message, Outcome, Schema, SchemaField, Value};
use weir::registry::{RegistryClient, frame_into};
use weir::runtime::{
    CallContext, GuestLimits, GuestSet, LoadError, Runtime, RuntimeConfig, TracingEvents,
    watch::Watcher,
};
use weir_tests::{
    Broker, KafkaProxy, Registry, TestDb, free_port, guest_path, kill9, query, query_one_i64, rt,
    run_sql, wait_until, weir_bin,
};

/// One message to produce: partition, key, the value's fields, headers.
struct Out {
    partition: i32,
    key: String,
    fields: Vec<(&'static str, Avro)>,
    headers: Vec<(&'static str, Option<Vec<u8>>)>,
}

/// Creates `topic` with `partitions`, registers `schema` under `<topic>-value`, and
/// produces `messages` in order.
fn produce(
    bootstrap: &str,
    registry: &str,
    topic: &str,
    partitions: i32,
    schema: &str,
    messages: Vec<Out>,
) {
    rt().block_on(async {
        weir::source::kafka::ensure_topics(bootstrap, &[topic.to_string()], partitions)
            .await
            .unwrap();
        let id = RegistryClient::new(registry)
            .unwrap()
            .register(&format!("{topic}-value"), schema)
            .await
            .unwrap();
        let parsed = apache_avro::Schema::parse_str(schema).unwrap();
        let writer = apache_avro::writer::datum::GenericDatumWriter::builder(&parsed)
            .build()
            .unwrap();
        let producer: FutureProducer = weir::source::kafka::client_config(bootstrap)
            .set("linger.ms", "10")
            .set("enable.idempotence", "true")
            .create()
            .unwrap();
        let mut pending = Vec::new();
        for m in messages {
            let fields = m
                .fields
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect();
            let body = writer.write_value_to_vec(Avro::Record(fields)).unwrap();
            let mut value = Vec::new();
            frame_into(id, &body, &mut value);
            let mut headers = OwnedHeaders::new();
            for (key, value) in &m.headers {
                headers = headers.insert(Header {
                    key,
                    value: value.as_deref(),
                });
            }
            let record = FutureRecord::to(topic)
                .partition(m.partition)
                .key(&m.key)
                .payload(&value)
                .headers(headers);
            pending.push(producer.send_result(record).map_err(|(e, _)| e).unwrap());
            if pending.len() >= 2000 {
                for f in pending.drain(..) {
                    f.await.unwrap().map_err(|(e, _)| e).unwrap();
                }
            }
        }
        for f in pending {
            f.await.unwrap().map_err(|(e, _)| e).unwrap();
        }
    })
}

/// Produces `make(0..chunk)` to `topic` (3 partitions, `schema`), then the rest of
/// `0..total` a chunk every 300 ms on a thread of its own: a stream arriving while weir
/// runs.
fn stream(
    bootstrap: &str,
    registry: &str,
    topic: &'static str,
    schema: &'static str,
    total: i64,
    chunk: i64,
    make: impl Fn(std::ops::Range<i64>) -> Vec<Out> + Send + 'static,
) -> std::thread::JoinHandle<()> {
    produce(bootstrap, registry, topic, 3, schema, make(0..chunk));
    let (bootstrap, registry) = (bootstrap.to_string(), registry.to_string());
    std::thread::spawn(move || {
        for start in (chunk..total).step_by(chunk as usize) {
            std::thread::sleep(Duration::from_millis(300));
            produce(
                &bootstrap,
                &registry,
                topic,
                3,
                schema,
                make(start..start + chunk),
            );
        }
    })
}

/// `weir run` processes over one database, registry and broker, with their configs and
/// logs in a directory of their own.
struct Run {
    dir: tempfile::TempDir,
    db: String,
    registry: String,
    brokers: String,
    group: String,
}

impl Run {
    fn new(db: &str, registry: &str, brokers: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("guests")).unwrap();
        Self {
            dir,
            db: db.into(),
            registry: registry.into(),
            brokers: brokers.into(),
            group: weir_tests::unique("group"),
        }
    }

    /// The watched guest directory.
    fn guests(&self) -> PathBuf {
        self.dir.path().join("guests")
    }

    /// Puts the built guest `fixture` in the guest directory as `name.wasm`, atomically.
    fn install(&self, fixture: &str, name: &str) {
        let tmp = self.guests().join(format!(".{name}.tmp"));
        std::fs::copy(guest_path(fixture), &tmp).unwrap();
        std::fs::rename(&tmp, self.guests().join(format!("{name}.wasm"))).unwrap();
    }

    /// A config for one process serving metrics on `port`, with these pipelines (YAML
    /// list items, indented by two).
    fn config(&self, port: u16, pipelines: &str) -> PathBuf {
        let path = self.dir.path().join(format!("weir-{port}.yaml"));
        std::fs::write(
            &path,
            format!(
                "kafka:\n  brokers: \"{}\"\n  group_id: \"{}\"\n  properties:\n    session.timeout.ms: \"3000\"\n    heartbeat.interval.ms: \"250\"\n\
                 registry:\n  url: \"{}\"\n\
                 database:\n  url: \"{}\"\n\
                 http:\n  listen: \"127.0.0.1:{port}\"\n\
                 guests:\n  dir: \"{}\"\n  watch: true\n  rescan: 200ms\n\
                 workers: 2\n\
                 pipelines:\n{pipelines}",
                self.brokers,
                self.group,
                self.registry,
                self.db,
                self.guests().display()
            ),
        )
        .unwrap();
        path
    }

    fn spawn(&self, port: u16, pipelines: &str) -> Child {
        let config = self.config(port, pipelines);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("run-{port}.log")))
            .unwrap();
        Command::new(weir_bin())
            .args(["run", "--config"])
            .arg(&config)
            .env("WEIR_LOG", "info,rdkafka=warn")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start weir run")
    }

    /// Runs `weir run` expecting it to refuse to start; returns what it printed.
    fn refused(&self, pipelines: &str) -> String {
        let config = self.config(free_port(), pipelines);
        let out = Command::new(weir_bin())
            .args(["run", "--config"])
            .arg(&config)
            .env("WEIR_LOG", "warn")
            .env("NO_COLOR", "1")
            .output()
            .unwrap();
        assert!(!out.status.success(), "weir run started with a bad config");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// Waits until the last process started on `port` watches its guest files.
    fn wait_watching(&self, port: u16) {
        let starts = |log: &str| log.matches("Running pipelines").count();
        let watching = |log: &str| log.matches("Watching guest files").count();
        wait_until(
            Duration::from_secs(60),
            Duration::from_millis(50),
            || {
                let log = self.log(port);
                starts(&log) > 0 && watching(&log) >= starts(&log)
            },
            || {
                format!(
                    "weir run on {port} does not watch its guests; logs:\n{}",
                    self.logs()
                )
            },
        );
    }

    fn log(&self, port: u16) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("run-{port}.log"))).unwrap_or_default()
    }

    fn logs(&self) -> String {
        let mut all = String::new();
        for entry in std::fs::read_dir(self.dir.path()).unwrap() {
            let p = entry.unwrap().path();
            if p.extension().is_some_and(|e| e == "log") {
                let text = std::fs::read_to_string(&p).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                all.push_str(&format!("--- {}\n", p.display()));
                // Every warning, error and panic, then the last lines.
                let tail = lines.len().saturating_sub(30);
                for (i, l) in lines.iter().enumerate() {
                    if i >= tail
                        || l.contains(" WARN ")
                        || l.contains(" ERROR ")
                        || l.contains("panicked")
                    {
                        all.push_str(l);
                        all.push('\n');
                    }
                }
            }
        }
        all
    }

    /// Sum of the group's stored next offsets of `topic` (0 before weir made its tables).
    fn committed(&self, topic: &str) -> i64 {
        let sql = format!(
            "SELECT coalesce(sum(next_offset), 0)::int8 FROM weir_offsets
              WHERE group_id = '{}' AND topic = '{topic}'",
            self.group
        );
        rt().block_on(async {
            let Ok((client, conn)) = tokio_postgres::connect(&self.db, tokio_postgres::NoTls).await
            else {
                return 0;
            };
            tokio::spawn(conn);
            client
                .query_one(&sql, &[])
                .await
                .map_or(0, |r| r.get::<_, i64>(0))
        })
    }

    /// Waits until `total` messages of `topic` are committed, failing if a process exits.
    fn wait_committed(&self, topic: &str, total: i64, children: &mut [&mut Child]) {
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let done = self.committed(topic);
            if done >= total {
                return;
            }
            for c in children.iter_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    panic!("weir run exited with {status}; logs:\n{}", self.logs());
                }
            }
            assert!(
                Instant::now() < deadline,
                "{done} of {total} messages of {topic} committed; logs:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

fn text(rows: &[tokio_postgres::Row], column: usize) -> Vec<Option<String>> {
    rows.iter().map(|r| r.get(column)).collect()
}

fn runtime() -> Arc<Runtime> {
    Arc::new(Runtime::new(RuntimeConfig::default(), Arc::new(TracingEvents::default())).unwrap())
}

fn config(pairs: &[(&str, &str)]) -> Vec<ConfigEntry> {
    pairs
        .iter()
        .map(|(k, v)| ConfigEntry {
            key: (*k).into(),
            value: (*v).into(),
        })
        .collect()
}

/// A one-message batch with field `n`.
fn one_message() -> Batch {
    Batch {
        topic: "t".into(),
        partition: 0,
        schemas: vec![Schema {
            id: None,
            fields: vec![SchemaField {
                name: "n".into(),
                kind: None,
                nullable: true,
            }],
        }],
        messages: vec![Message {
            offset: 0,
            timestamp_ms: 0,
            key: None,
            headers: Vec::new(),
            schema: Some(0),
            values: vec![Value::Int(7)],
        }],
    }
}

/// The tables a guest's output writes, in order.
fn tables_written(guest: &weir::runtime::Guest) -> Vec<String> {
    let call = guest.process(&one_message(), CallContext::default());
    let output = call.output.expect("the guest call succeeds");
    assert!(matches!(output.outcomes[0], Outcome::Actions(_)));
    output.tables.into_iter().map(|t| t.table).collect()
}

#[test]
fn a_refused_config_refuses_the_guest_at_load_at_a_file_swap_and_at_an_admin_deploy() {
    // At load: the guest's own message, naming the key; nothing is set up to serve.
    let picky = guest_path("fixture_picky");
    let mut set = GuestSet::new(runtime());
    let refusal = set
        .add(
            "prices",
            &["t".into()],
            &picky,
            GuestLimits::default(),
            config(&[("threshold", "lots")]),
        )
        .unwrap_err();
    assert!(matches!(refusal, LoadError::Config { .. }), "{refusal}");
    let text = refusal.to_string();
    assert!(
        text.contains("refused the config of pipeline prices")
            && text.contains("`threshold` = \"lots\" does not parse"),
        "{text}"
    );
    assert!(set.slot("prices").is_none());
    let missing = set
        .add(
            "prices",
            &["t".into()],
            &picky,
            GuestLimits::default(),
            vec![],
        )
        .unwrap_err()
        .to_string();
    assert!(missing.contains("`threshold` is required"), "{missing}");
    // Accepted, it serves with the value it was given.
    set.add(
        "prices",
        &["t".into()],
        &picky,
        GuestLimits::default(),
        config(&[("threshold", "2.5")]),
    )
    .unwrap();

    // A running guest whose config a new version refuses: on a file swap and through the
    // admin API, the new version is refused with its message and the old one serves on.
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("marker.wasm");
    std::fs::copy(guest_path("fixture_marker_a"), &file).unwrap();
    let mut set = GuestSet::new(runtime());
    set.add(
        "ticks",
        &["t".into()],
        &file,
        GuestLimits::default(),
        config(&[("threshold", "lots")]),
    )
    .unwrap();
    let set = Arc::new(set);
    let running = set.version("marker").unwrap();
    let _watcher = Watcher::start(set.clone(), set.clone(), Duration::from_millis(200)).unwrap();
    let tmp_file = tmp.path().join(".marker.tmp");
    std::fs::copy(&picky, &tmp_file).unwrap();
    std::fs::rename(&tmp_file, &file).unwrap();
    // The watcher tries the new file and refuses it; give it time to.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        set.version("marker").unwrap(),
        running,
        "the swap was refused"
    );
    let serving = set.slot("ticks").unwrap().current();
    assert_eq!(
        tables_written(&serving),
        ["marked"],
        "the old version serves on"
    );

    let token = tmp.path().join("token");
    std::fs::write(&token, "t0ken").unwrap();
    let runtime = rt();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    runtime.spawn(weir::admin::serve(
        listener,
        weir::admin::AdminState {
            guests: set.clone(),
            deployer: set.clone(),
            token: weir::admin::TokenSource::File(token),
            max_body: 16 << 20,
        },
        weir::config::HttpConfig::default().limits(),
        std::future::pending(),
    ));
    let (status, body) = runtime.block_on(async {
        let response = reqwest::Client::new()
            .put(format!("{base}/guests/marker"))
            .bearer_auth("t0ken")
            .body(std::fs::read(&picky).unwrap())
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    });
    assert_eq!(status, 422, "{body}");
    let message = serde_json::from_str::<weir::admin::ErrorReply>(&body)
        .unwrap()
        .message;
    assert!(
        message.contains("refused the config of pipeline ticks")
            && message.contains("`threshold` = \"lots\" does not parse"),
        "{message}"
    );
    assert_eq!(set.version("marker").unwrap(), running);
    assert_eq!(
        tables_written(&set.slot("ticks").unwrap().current()),
        ["marked"]
    );
}

const TRADE: &str = r#"{"type":"record","name":"Trade","namespace":"weir.test","fields":[
  {"name":"symbol","type":"string"},
  {"name":"price","type":"double"},
  {"name":"volume","type":"long"}]}"#;

const STATS_SQL: &str = "CREATE TABLE symbol_stats (symbol text PRIMARY KEY, trades int8,
    last_price float8, volume int8, version text);
    CREATE TABLE produced (seq int8 PRIMARY KEY, symbol text, price float8, volume int8)";

fn stats_pipeline() -> String {
    "  - name: stats\n    topic: trades\n    guest: stats.wasm\n    batch: {size: 100, linger: 20ms}\n    tables: [symbol_stats]\n".to_string()
}

#[test]
fn keyed_state_is_exactly_once_through_sigkills_swaps_and_a_partition_move() {
    let db = TestDb::new();
    run_sql(&db.url(), STATS_SQL);
    let registry = Registry::start(&db.url());
    let broker = Broker::start();
    const N: i64 = 45_000;
    const SYMBOLS: i64 = 24;
    let trade = |seq: i64| {
        let symbol = seq % SYMBOLS;
        (
            format!("S{symbol:02}"),
            (symbol % 3) as i32,
            100.0 + (seq * 7 % 1000) as f64 / 8.0,
            1 + seq * 13 % 50,
        )
    };
    let messages = move |seqs: std::ops::Range<i64>| {
        seqs.map(|seq| {
            let (symbol, partition, price, volume) = trade(seq);
            Out {
                partition,
                key: symbol.clone(),
                fields: vec![
                    ("symbol", Avro::String(symbol)),
                    ("price", Avro::Double(price)),
                    ("volume", Avro::Long(volume)),
                ],
                headers: Vec::new(),
            }
        })
        .collect::<Vec<_>>()
    };
    // The trades arrive as a stream, about 2,500 a second, while weir runs.
    let producer = stream(
        &broker.bootstrap,
        &registry.url,
        "trades",
        TRADE,
        N,
        750,
        messages,
    );
    let (seqs, rest): (Vec<i64>, Vec<_>) = (0..N).map(|s| (s, trade(s))).unzip();
    let symbols: Vec<String> = rest.iter().map(|t| t.0.clone()).collect();
    let prices: Vec<f64> = rest.iter().map(|t| t.2).collect();
    let volumes: Vec<i64> = rest.iter().map(|t| t.3).collect();
    rt().block_on(async {
        let (client, conn) = tokio_postgres::connect(&db.url(), tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client
            .execute(
                "INSERT INTO produced SELECT * FROM UNNEST($1::int8[], $2::text[], $3::float8[], $4::int8[])",
                &[&seqs, &symbols, &prices, &volumes],
            )
            .await
            .unwrap();
    });

    let run = Run::new(&db.url(), &registry.url, &broker.bootstrap);
    run.install("fixture_stats_a", "stats");
    let (port_a, port_b) = (free_port(), free_port());
    let mut a = run.spawn(port_a, &stats_pipeline());
    let mut seed = 0x5eedu64;
    let mut jitter = |hi: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        Duration::from_millis(seed % hi)
    };
    // Waits until `more` messages past `from` are committed.
    let progress = |from: i64, more: i64, children: &mut [&mut Child]| {
        run.wait_committed("trades", (from + more).min(N), children);
    };
    let mut version = 'a';
    let mut swaps = 0;
    for kill in 1..=10 {
        // Mid-stream: after some batches of this process, at a random moment.
        progress(run.committed("trades"), 600, &mut [&mut a]);
        if kill % 2 == 0 {
            // Five swaps between the two versions while the pipeline runs, picked up by
            // the watch.
            version = if version == 'a' { 'b' } else { 'a' };
            run.wait_watching(port_a);
            let before = run
                .log(port_a)
                .matches("Swapped in a new guest version")
                .count();
            run.install(&format!("fixture_stats_{version}"), "stats");
            wait_until(
                Duration::from_secs(60),
                Duration::from_millis(50),
                || {
                    run.log(port_a)
                        .matches("Swapped in a new guest version")
                        .count()
                        > before
                },
                || {
                    format!(
                        "the swap to {version} was not picked up; logs:\n{}",
                        run.logs()
                    )
                },
            );
            swaps += 1;
            progress(run.committed("trades"), 300, &mut [&mut a]);
        }
        std::thread::sleep(jitter(300));
        eprintln!("SIGKILL {kill} at {} committed", run.committed("trades"));
        kill9(&mut a);
        a = run.spawn(port_a, &stats_pipeline());
        if kill == 5 {
            // A second member: partitions move to it (their state read from Postgres
            // there); it dies, and they move back.
            progress(run.committed("trades"), 300, &mut [&mut a]);
            let mut b = run.spawn(port_b, &stats_pipeline());
            wait_until(
                Duration::from_secs(120),
                Duration::from_millis(100),
                || run.log(port_b).contains("Partition assigned"),
                || {
                    format!(
                        "no partition moved to the second member; logs:\n{}",
                        run.logs()
                    )
                },
            );
            progress(run.committed("trades"), 900, &mut [&mut a, &mut b]);
            eprintln!(
                "SIGKILL of the second member at {} committed",
                run.committed("trades")
            );
            kill9(&mut b);
        }
    }
    assert_eq!(swaps, 5);
    producer.join().unwrap();
    run.wait_committed("trades", N, &mut [&mut a]);
    std::thread::sleep(Duration::from_millis(500));
    kill9(&mut a);
    let log = run.logs();
    assert!(
        run.log(port_a)
            .contains("Partitions moved to another member"),
        "partitions moved from the first member to the second; logs:\n{log}"
    );

    // What the guest wrote from its state equals what SQL says of everything produced.
    let expected = query(
        &db.url(),
        "SELECT symbol, count(*)::int8, sum(volume)::int8,
                (array_agg(price ORDER BY seq DESC))[1]
           FROM produced GROUP BY symbol ORDER BY symbol",
    );
    let written = query(
        &db.url(),
        "SELECT symbol, trades, volume, last_price FROM symbol_stats ORDER BY symbol",
    );
    let rows = |rows: &[tokio_postgres::Row]| -> Vec<(String, i64, i64, f64)> {
        rows.iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect()
    };
    assert_eq!(rows(&written), rows(&expected));
    assert_eq!(written.len(), SYMBOLS as usize);
    // The state itself: one entry per symbol, on its partition, 24 bytes of three
    // little-endian numbers.
    let state = query(
        &db.url(),
        &format!(
            "SELECT convert_from(key, 'UTF8'), partition, value FROM weir_state
              WHERE group_id = '{}' AND pipeline = 'stats' ORDER BY 1",
            run.group
        ),
    );
    let decoded: Vec<(String, i64, i64, f64)> = state
        .iter()
        .map(|r| {
            let symbol: String = r.get(0);
            let partition: i32 = r.get(1);
            let v: Vec<u8> = r.get(2);
            assert_eq!(v.len(), 24, "{symbol}");
            let n = symbol[1..].parse::<i32>().unwrap();
            assert_eq!(partition, n % 3, "{symbol} on its partition");
            let word = |i: usize| <[u8; 8]>::try_from(&v[i * 8..i * 8 + 8]).unwrap();
            (
                symbol,
                i64::from_le_bytes(word(0)),
                i64::from_le_bytes(word(2)),
                f64::from_le_bytes(word(1)),
            )
        })
        .collect();
    assert_eq!(decoded, rows(&expected));
    let versions = text(
        &query(
            &db.url(),
            "SELECT DISTINCT version FROM symbol_stats ORDER BY 1",
        ),
        0,
    );
    assert!(
        versions
            .iter()
            .all(|v| matches!(v.as_deref(), Some("a" | "b"))),
        "{versions:?}"
    );
}

const QUOTE: &str = r#"{"type":"record","name":"Quote","namespace":"weir.test","fields":[
  {"name":"symbol","type":"string"}]}"#;

#[test]
fn lookups_pair_each_message_with_its_reference_row_and_cannot_write() {
    let db = TestDb::new();
    run_sql(
        &db.url(),
        "CREATE TABLE instruments (symbol text PRIMARY KEY, name text NOT NULL, weight numeric(8,3));
         INSERT INTO instruments
              SELECT 'Q' || n, 'instrument ' || n, n * 1.125 FROM generate_series(0, 39) AS n
               WHERE n % 5 <> 0;
         CREATE TABLE paired (symbol text, kafka_offset int8, found bool, name text,
             weight numeric(8,3));
         CREATE TABLE sent (kafka_offset int8 PRIMARY KEY, symbol text)",
    );
    let registry = Registry::start(&db.url());
    let broker = Broker::start();
    const N: i64 = 3000;
    let symbol = |i: i64| format!("Q{}", i * 7 % 45);
    let messages = (0..N)
        .map(|i| Out {
            partition: 0,
            key: symbol(i),
            fields: vec![("symbol", Avro::String(symbol(i)))],
            headers: Vec::new(),
        })
        .collect();
    produce(
        &broker.bootstrap,
        &registry.url,
        "quotes",
        1,
        QUOTE,
        messages,
    );
    let offsets: Vec<i64> = (0..N).collect();
    let symbols: Vec<String> = (0..N).map(symbol).collect();
    rt().block_on(async {
        let (client, conn) = tokio_postgres::connect(&db.url(), tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client
            .execute(
                "INSERT INTO sent SELECT * FROM UNNEST($1::int8[], $2::text[])",
                &[&offsets, &symbols],
            )
            .await
            .unwrap();
    });
    let run = Run::new(&db.url(), &registry.url, &broker.bootstrap);
    run.install("fixture_pair", "pair");
    let pipeline = |sql: &str| {
        format!(
            "  - name: pairs\n    topic: quotes\n    guest: pair.wasm\n    tables: [paired]\n    lookups:\n      ref: \"{sql}\"\n"
        )
    };
    // Lookups that cannot work are refused before anything is consumed.
    let refused = run.refused(&pipeline("DELETE FROM instruments WHERE symbol = $1"));
    assert!(
        refused.contains("pipeline pairs, lookup ref")
            && refused.contains("must start with SELECT"),
        "{refused}"
    );
    let refused = run.refused(&pipeline("SELECT nope FROM instruments WHERE symbol = $1"));
    assert!(
        refused.contains("lookup ref: Postgres refuses it") && refused.contains("nope"),
        "{refused}"
    );
    assert_eq!(run.committed("quotes"), 0);

    let mut child = run.spawn(
        free_port(),
        &pipeline("SELECT name, weight FROM instruments WHERE symbol = $1"),
    );
    run.wait_committed("quotes", N, &mut [&mut child]);
    kill9(&mut child);
    // (symbol, seq, found, name, weight) per quote.
    type Joined = (String, i64, bool, Option<String>, Option<String>);
    let joined = |sql: &str| -> Vec<Joined> {
        query(&db.url(), sql)
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
            .collect()
    };
    let expected = joined(
        "SELECT s.symbol, s.kafka_offset, i.symbol IS NOT NULL, i.name, i.weight::text
           FROM sent s LEFT JOIN instruments i USING (symbol) ORDER BY s.kafka_offset",
    );
    let got = joined(
        "SELECT symbol, kafka_offset, found, name, weight::text FROM paired ORDER BY kafka_offset",
    );
    assert_eq!(got.len(), N as usize);
    assert_eq!(got, expected);
    assert!(expected.iter().any(|r| !r.2) && expected.iter().any(|r| r.2));

    // A lookup whose SQL would write reads a read-only snapshot: Postgres refuses it, the
    // guest hears why (and dead-letters the message), and nothing is written.
    run_sql(&db.url(), "TRUNCATE paired");
    let before = query(&db.url(), "SELECT count(*)::int8 FROM instruments")[0].get::<_, i64>(0);
    let sneaky = pipeline(
        "WITH gone AS (DELETE FROM instruments WHERE symbol = $1 RETURNING name, weight) SELECT name, weight FROM gone",
    );
    let run2 = Run::new(&db.url(), &registry.url, &broker.bootstrap);
    run2.install("fixture_pair", "pair");
    let mut child = run2.spawn(free_port(), &sneaky);
    run2.wait_committed("quotes", N, &mut [&mut child]);
    kill9(&mut child);
    let after = query(&db.url(), "SELECT count(*)::int8 FROM instruments")[0].get::<_, i64>(0);
    assert_eq!(after, before, "a lookup deleted rows");
    let dead = query(
        &db.url(),
        &format!(
            "SELECT count(*)::int8, min(error) FROM dead_letters WHERE group_id = '{}'",
            run2.group
        ),
    );
    assert_eq!(dead[0].get::<_, i64>(0), N);
    let error: String = dead[0].get(1);
    assert!(error.contains("read-only transaction"), "{error}");
}

const NOTE: &str = r#"{"type":"record","name":"Note","namespace":"weir.test","fields":[
  {"name":"n","type":"long"},
  {"name":"target","type":["null","string"],"default":null}]}"#;

#[test]
fn guests_are_confined_to_their_tables_headers_arrive_and_0_1_0_runs_beside_0_2_0() {
    let db = TestDb::new();
    run_sql(
        &db.url(),
        "CREATE TABLE fixture (n int8, target text, kafka_offset int8, header_key text,
             header_value bytea, position int8);
         CREATE TABLE victim (n int8, target text);
         CREATE TABLE old_rows (n int8, target text)",
    );
    let registry = Registry::start(&db.url());
    let broker = Broker::start();
    let note = |n: i64, target: Option<&str>| Out {
        partition: 0,
        key: n.to_string(),
        fields: vec![
            ("n", Avro::Long(n)),
            (
                "target",
                match target {
                    Some(t) => Avro::Union(1, Box::new(Avro::String(t.into()))),
                    None => Avro::Union(0, Box::new(Avro::Null)),
                },
            ),
        ],
        headers: Vec::new(),
    };
    let hostile = [
        "weir_offsets",
        "dead_letters",
        "weir_state",
        "victim",
        "public.weir_offsets",
    ];
    let mut intruder = Vec::new();
    for n in 0..200 {
        intruder.push(note(n, hostile.get(n as usize % 20).copied()));
    }
    produce(
        &broker.bootstrap,
        &registry.url,
        "intruder",
        1,
        NOTE,
        intruder,
    );
    produce(
        &broker.bootstrap,
        &registry.url,
        "victim",
        1,
        NOTE,
        (0..100).map(|n| note(n, None)).collect(),
    );
    produce(
        &broker.bootstrap,
        &registry.url,
        "old",
        1,
        NOTE,
        (0..100).map(|n| note(n, None)).collect(),
    );
    let mut with_headers = Vec::new();
    for n in 0..30i64 {
        let mut m = note(n, None);
        m.headers = match n % 3 {
            0 => Vec::new(),
            1 => vec![("trace", Some(format!("t{n}").into_bytes()))],
            _ => vec![
                ("trace", Some(vec![0, 159, 146, 150])),
                ("empty", None),
                ("trace", Some(b"again".to_vec())),
            ],
        };
        with_headers.push(m);
    }
    produce(
        &broker.bootstrap,
        &registry.url,
        "headers",
        1,
        NOTE,
        with_headers,
    );

    let run = Run::new(&db.url(), &registry.url, &broker.bootstrap);
    run.install("fixture_trespass", "trespass");
    run.install("passthrough", "passthrough");
    run.install("fixture_v1_passthrough", "old");
    run.install("fixture_headers", "headers");
    let pipelines = "  - name: intruder\n    topic: intruder\n    guest: trespass.wasm\n    tables: [fixture]\n\
                     \x20 - name: victim\n    topic: victim\n    guest: passthrough.wasm\n    config: {table: victim}\n\
                     \x20 - name: old\n    topic: old\n    guest: old.wasm\n    config: {table: old_rows}\n\
                     \x20 - name: headers\n    topic: headers\n    guest: headers.wasm\n    tables: [fixture]\n";
    // A pipeline may not declare weir's own tables.
    let refused = run.refused(
        "  - name: greedy\n    topic: intruder\n    guest: trespass.wasm\n    tables: [fixture, weir_offsets]\n",
    );
    assert!(refused.contains("one of weir's own tables"), "{refused}");

    let mut child = run.spawn(free_port(), pipelines);
    for (topic, n) in [
        ("intruder", 200),
        ("victim", 100),
        ("old", 100),
        ("headers", 30),
    ] {
        run.wait_committed(topic, n, &mut [&mut child]);
    }
    kill9(&mut child);

    // Every hostile action was dead-lettered, naming the table and the pipeline; the
    // intruder's other messages were written.
    let dead = query(
        &db.url(),
        &format!(
            "SELECT \"offset\", stage, error FROM dead_letters WHERE group_id = '{}' ORDER BY 1",
            run.group
        ),
    );
    assert_eq!(
        dead.len(),
        hostile.len() * 10,
        "one dead letter per hostile message"
    );
    for row in &dead {
        let (offset, stage, error): (i64, String, String) = (row.get(0), row.get(1), row.get(2));
        let table = hostile[offset as usize % 20];
        assert_eq!(stage, "sink");
        assert!(
            error.contains(&format!("pipeline intruder may not write table {table}")),
            "{error}"
        );
    }
    let fixture_rows = |sql: &str| query(&db.url(), sql)[0].get::<_, i64>(0);
    assert_eq!(
        fixture_rows("SELECT count(*)::int8 FROM fixture WHERE header_key IS NULL"),
        200 - hostile.len() as i64 * 10
    );
    // weir's own tables hold only what weir wrote, and the other pipeline is whole.
    let offsets = query(
        &db.url(),
        &format!(
            "SELECT topic, next_offset FROM weir_offsets WHERE group_id = '{}' ORDER BY 1",
            run.group
        ),
    );
    let offsets: BTreeMap<String, i64> = offsets.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        offsets,
        BTreeMap::from([
            ("headers".to_string(), 30),
            ("intruder".to_string(), 200),
            ("old".to_string(), 100),
            ("victim".to_string(), 100)
        ])
    );
    assert_eq!(fixture_rows("SELECT count(*)::int8 FROM weir_offsets"), 4);
    assert_eq!(fixture_rows("SELECT count(*)::int8 FROM weir_state"), 0);
    assert_eq!(fixture_rows("SELECT count(*)::int8 FROM victim"), 100);
    assert_eq!(
        fixture_rows("SELECT count(DISTINCT n)::int8 FROM victim"),
        100
    );

    // The 0.1.0 guest ran beside the 0.2.0 ones.
    assert_eq!(
        fixture_rows("SELECT count(DISTINCT n)::int8 FROM old_rows"),
        100
    );

    // Headers reached the guest, in order, repeated keys and null values included.
    let headers = query(
        &db.url(),
        "SELECT kafka_offset, position, header_key, header_value FROM fixture
          WHERE header_key IS NOT NULL ORDER BY kafka_offset, position",
    );
    let got: Vec<(i64, i64, String, Option<Vec<u8>>)> = headers
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    let mut want = Vec::new();
    for n in 0..30i64 {
        match n % 3 {
            0 => {}
            1 => want.push((n, 0, "trace".into(), Some(format!("t{n}").into_bytes()))),
            _ => {
                want.push((n, 0, "trace".into(), Some(vec![0, 159, 146, 150])));
                want.push((n, 1, "empty".into(), None));
                want.push((n, 2, "trace".into(), Some(b"again".to_vec())));
            }
        }
    }
    assert_eq!(got, want);
}

const EVENT: &str = r#"{"type":"record","name":"Event","namespace":"weir.test","fields":[
  {"name":"id","type":"string"},
  {"name":"symbol","type":"string"},
  {"name":"seq","type":"long"},
  {"name":"mode","type":["null","string"],"default":null}]}"#;

const RELAYED: &str = r#"{"type":"record","name":"Relayed","namespace":"weir.test","fields":[
  {"name":"id","type":"string"},
  {"name":"symbol","type":"string"},
  {"name":"seq","type":"long"}]}"#;

/// The relay fixture's table, its output topic (three partitions) and that topic's schema.
fn prepare_relay(db: &TestDb, registry: &Registry, bootstrap: &str) {
    run_sql(
        &db.url(),
        "CREATE TABLE relayed (id text NOT NULL, symbol text NOT NULL, seq int8 NOT NULL)",
    );
    rt().block_on(async {
        weir::source::kafka::ensure_topics(bootstrap, &["relayed.out".to_string()], 3)
            .await
            .unwrap();
        RegistryClient::new(&registry.url)
            .unwrap()
            .register("relayed.out-value", RELAYED)
            .await
            .unwrap();
    });
}

/// The `seq` of a message the relay fixture emitted (Confluent framing, RELAYED), checked
/// against its `id`.
fn relayed_seq(schema: &apache_avro::Schema, value: &[u8]) -> i64 {
    let mut body = &value[5..];
    let decoded = apache_avro::reader::datum::GenericDatumReader::builder(schema)
        .build()
        .and_then(|r| r.read_value(&mut body))
        .unwrap();
    let Avro::Record(fields) = decoded else {
        panic!("{decoded:?}")
    };
    let Avro::Long(seq) = fields[2].1 else {
        panic!("{fields:?}")
    };
    assert_eq!(fields[0].1, Avro::String(format!("e{seq}")));
    seq
}

fn relay_pipeline() -> String {
    "  - name: relay\n    topic: events\n    guest: relay.wasm\n    batch: {size: 200, linger: 20ms}\n    tables: [relayed]\n    topics_out: [relayed.out]\n    config: {topic: relayed.out}\n".to_string()
}

/// Every message of `topic` (`partitions` of them) from the beginning, as a
/// `read_committed` consumer sees them, read until the log is quiet for three seconds past
/// each partition's reported end (tansu reports an end that lags its last batch):
/// (partition, key, value, headers).
type Read = (i32, Vec<u8>, Vec<u8>, Vec<(String, Vec<u8>)>);
fn read_topic(bootstrap: &str, topic: &str, partitions: i32) -> Vec<Read> {
    use rdkafka::Message as _;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Headers as _;
    let consumer: BaseConsumer = weir::source::kafka::client_config(bootstrap)
        .set("group.id", weir_tests::unique("reader"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .unwrap();
    let mut list = rdkafka::TopicPartitionList::new();
    let mut ends = Vec::new();
    for p in 0..partitions {
        list.add_partition_offset(topic, p, rdkafka::Offset::Beginning)
            .unwrap();
        ends.push(
            consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .unwrap()
                .1,
        );
    }
    consumer.assign(&list).unwrap();
    let mut next = vec![0i64; partitions as usize];
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut quiet = Instant::now();
    while next.iter().zip(&ends).any(|(n, e)| n < e) || quiet.elapsed() < Duration::from_secs(3) {
        assert!(
            Instant::now() < deadline,
            "{topic} read to {next:?} of {ends:?}"
        );
        let Some(m) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        quiet = Instant::now();
        let m = m.unwrap();
        next[m.partition() as usize] = m.offset() + 1;
        let headers = m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                    .collect()
            })
            .unwrap_or_default();
        out.push((
            m.partition(),
            m.key().unwrap_or_default().to_vec(),
            m.payload().unwrap_or_default().to_vec(),
            headers,
        ));
    }
    out
}

#[test]
fn emits_reach_their_topic_exactly_once_through_sigkills_and_bad_ones_dead_letter() {
    let db = TestDb::new();
    let registry = Registry::start(&db.url());
    let broker = Broker::start();
    prepare_relay(&db, &registry, &broker.bootstrap);
    const N: i64 = 12_000;
    const SYMBOLS: i64 = 8;
    // Two messages in every thousand are poison: the emit of one cannot be encoded (no
    // `seq`), the other goes to a topic the pipeline does not list.
    let mode = |i: i64| match i % 1000 {
        500 => Some("missing"),
        700 => Some("elsewhere"),
        _ => None,
    };
    let events = move |range: std::ops::Range<i64>| {
        range
            .map(|i| {
                let symbol = i % SYMBOLS;
                Out {
                    partition: (symbol % 3) as i32,
                    key: format!("S{symbol}"),
                    fields: vec![
                        ("id", Avro::String(format!("e{i}"))),
                        ("symbol", Avro::String(format!("S{symbol}"))),
                        ("seq", Avro::Long(i)),
                        (
                            "mode",
                            match mode(i) {
                                Some(m) => Avro::Union(1, Box::new(Avro::String(m.into()))),
                                None => Avro::Union(0, Box::new(Avro::Null)),
                            },
                        ),
                    ],
                    headers: Vec::new(),
                }
            })
            .collect::<Vec<_>>()
    };
    let producer = stream(
        &broker.bootstrap,
        &registry.url,
        "events",
        EVENT,
        N,
        1000,
        events,
    );

    let run = Run::new(&db.url(), &registry.url, &broker.bootstrap);
    run.install("fixture_relay", "relay");
    let port = free_port();
    let mut a = run.spawn(port, &relay_pipeline());
    let mut seed = 0xfeedu64;
    for kill in 1..=10 {
        run.wait_committed(
            "events",
            (run.committed("events") + 300).min(N),
            &mut [&mut a],
        );
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_millis(seed % 400));
        eprintln!("SIGKILL {kill} at {} committed", run.committed("events"));
        kill9(&mut a);
        a = run.spawn(port, &relay_pipeline());
    }
    producer.join().unwrap();
    run.wait_committed("events", N, &mut [&mut a]);
    // The outbox drains.
    let pending = || {
        query(
            &db.url(),
            &format!(
                "SELECT count(*)::int8 FROM weir_outbox WHERE group_id = '{}'",
                run.group
            ),
        )[0]
        .get::<_, i64>(0)
    };
    wait_until(
        Duration::from_secs(120),
        Duration::from_millis(200),
        || pending() == 0,
        || {
            format!(
                "{} emits still in the outbox; logs:\n{}",
                pending(),
                run.logs()
            )
        },
    );
    std::thread::sleep(Duration::from_millis(500));
    kill9(&mut a);

    let good: Vec<i64> = (0..N).filter(|i| mode(*i).is_none()).collect();
    // Exactly one row per good message, none for poison.
    let rows = query(
        &db.url(),
        "SELECT seq, count(*)::int8 FROM relayed GROUP BY seq ORDER BY seq",
    );
    let rows: Vec<(i64, i64)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(rows.len(), good.len(), "one row per message");
    assert!(
        rows.iter()
            .zip(&good)
            .all(|((seq, n), g)| seq == g && *n == 1)
    );

    // Exactly one emitted message per good message, each carrying its outbox id, in
    // input order per key, and on the partition Kafka's partitioner gives its key.
    let schema = apache_avro::Schema::parse_str(RELAYED).unwrap();
    let mut seen: BTreeMap<i64, usize> = BTreeMap::new();
    let mut last_by_key: BTreeMap<Vec<u8>, i64> = BTreeMap::new();
    for (partition, key, value, headers) in read_topic(&broker.bootstrap, "relayed.out", 3) {
        assert_eq!(partition, weir::relay::partition_of(&key, 3));
        assert!(headers.iter().any(|(k, _)| k == weir::relay::OUTBOX_HEADER));
        let offset = headers
            .iter()
            .find(|(k, _)| k == "source-offset")
            .expect("the guest's header");
        assert!(
            std::str::from_utf8(&offset.1)
                .unwrap()
                .parse::<i64>()
                .is_ok()
        );
        let seq = relayed_seq(&schema, &value);
        *seen.entry(seq).or_default() += 1;
        if let Some(before) = last_by_key.insert(key.clone(), seq) {
            assert!(before < seq, "key {key:?}: {seq} after {before}");
        }
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "emitted more than once: {twice:?}; logs:\n{}",
        run.logs()
    );
    let missing: Vec<_> = good.iter().filter(|g| !seen.contains_key(g)).collect();
    assert!(
        missing.is_empty(),
        "never emitted: {missing:?}; logs:\n{}",
        run.logs()
    );
    assert_eq!(seen.len(), good.len());

    // Poison: dead-lettered at stage encode, naming the field or the topic.
    let letters = query(
        &db.url(),
        "SELECT \"offset\", stage, error FROM dead_letters ORDER BY error",
    );
    assert_eq!(letters.len() as i64, N / 1000 * 2);
    for l in &letters {
        assert_eq!(l.get::<_, &str>(1), "encode");
        let error: &str = l.get(2);
        assert!(
            error.contains("field `seq` is required but missing")
                || error.contains(
                    "pipeline relay may not emit to topic not.listed: it is not among the pipeline's topics_out (relayed.out)"
                ),
            "{error}"
        );
    }
}

/// What `/metrics` of the process serving on `port` says.
fn scrape(port: u16) -> String {
    rt().block_on(async {
        reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    })
}

#[test]
fn emits_back_up_in_the_outbox_while_kafka_refuses_the_relay_then_drain_exactly_once() {
    let db = TestDb::new();
    let registry = Registry::start(&db.url());
    // Every client reaches tansu through the proxy, which can cut off the relay alone:
    // the source keeps consuming and committing while nothing can be produced.
    let (proxy, listener) = KafkaProxy::bind();
    let broker = Broker::start_advertising(&proxy.addr);
    proxy.serve(listener, broker.bootstrap.clone());
    let bootstrap = proxy.addr.clone();
    prepare_relay(&db, &registry, &bootstrap);
    const N: i64 = 6_000;
    const BOUND: i64 = 400;
    let events = (0..N)
        .map(|i| Out {
            partition: (i % 3) as i32,
            key: format!("S{}", i % 8),
            fields: vec![
                ("id", Avro::String(format!("e{i}"))),
                ("symbol", Avro::String(format!("S{}", i % 8))),
                ("seq", Avro::Long(i)),
                ("mode", Avro::Union(0, Box::new(Avro::Null))),
            ],
            headers: Vec::new(),
        })
        .collect();
    produce(&bootstrap, &registry.url, "events", 3, EVENT, events);

    proxy.cut(weir::relay::RELAY_CLIENT_ID);
    let run = Run::new(&db.url(), &registry.url, &bootstrap);
    run.install("fixture_relay", "relay");
    let port = free_port();
    let pipeline = relay_pipeline() + &format!("    outbox: {{max_pending: {BOUND}}}\n");
    let mut a = run.spawn(port, &pipeline);
    let pending = || {
        query_one_i64(
            &db.url(),
            &format!(
                "SELECT count(*)::int8 FROM weir_outbox WHERE group_id = '{}'",
                run.group
            ),
        )
    };
    // Postgres keeps committing until each partition's outbox reaches its bound, then
    // the partitions pause.
    wait_until(
        Duration::from_secs(120),
        Duration::from_millis(200),
        || pending() >= 3 * BOUND && run.log(port).contains("The outbox is full; pausing"),
        || {
            format!(
                "the partitions did not pause ({} committed, {} held); logs:\n{}",
                run.committed("events"),
                pending(),
                run.logs()
            )
        },
    );
    std::thread::sleep(Duration::from_secs(2));
    let (held, committed) = (pending(), run.committed("events"));
    assert!(
        (3 * BOUND..3 * (BOUND + 2 * 200)).contains(&held),
        "{held} emits held for a bound of {BOUND} per partition"
    );
    assert_eq!(committed, held, "every committed message's emit is held");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(run.committed("events"), committed, "paused");
    let metrics = scrape(port);
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("weir_outbox_pending{") && !l.ends_with(" 0")),
        "{metrics}"
    );
    assert!(
        metrics.contains("weir_outbox_oldest_age_seconds{"),
        "{metrics}"
    );

    // Kafka takes the relay again: everything drains, exactly once.
    proxy.restore();
    run.wait_committed("events", N, &mut [&mut a]);
    wait_until(
        Duration::from_secs(120),
        Duration::from_millis(200),
        || pending() == 0,
        || {
            format!(
                "{} emits still in the outbox; logs:\n{}",
                pending(),
                run.logs()
            )
        },
    );
    let metrics = scrape(port);
    kill9(&mut a);
    assert!(
        metrics.contains("weir_produced_total{topic=\"relayed.out\"} 6000"),
        "{metrics}"
    );
    let mut seen: BTreeMap<i64, usize> = BTreeMap::new();
    let schema = apache_avro::Schema::parse_str(RELAYED).unwrap();
    for (_, _, value, _) in read_topic(&bootstrap, "relayed.out", 3) {
        *seen.entry(relayed_seq(&schema, &value)).or_default() += 1;
    }
    assert_eq!(seen.len() as i64, N, "every emit produced");
    assert!(seen.values().all(|n| *n == 1), "none twice");
}

const FLAG: &str = r#"{"type":"record","name":"Flag","namespace":"weir.test","fields":[
  {"name":"n","type":"long"},{"name":"misbehave","type":"boolean"}]}"#;

/// A `weir guest …` command against the admin API at `admin`; its output.
fn guest_admin(admin: &str, token: &Path, args: &[&str]) -> std::process::Output {
    let mut all = vec![
        "guest",
        args[0],
        "--admin",
        admin,
        "--token-file",
        token.to_str().unwrap(),
    ];
    all.extend(&args[1..]);
    weir_tests::weir(&all)
}

/// The shadow report of guest `marker`.
fn shadow_report(admin: &str, token: &Path) -> weir::model::ShadowReport {
    let out = guest_admin(
        admin,
        token,
        &["diff", "--json", "--limit", "10000", "marker"],
    );
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn shadow_candidates_are_compared_never_written_and_promoted_through_the_barrier() {
    let db = TestDb::new();
    let registry = Registry::start(&db.url());
    let broker = Broker::start();
    weir_tests::run_sql(
        &db.url(),
        "CREATE TABLE marked (kafka_partition int NOT NULL, kafka_offset bigint NOT NULL,
            marker text NOT NULL, batch_first bigint NOT NULL, batch_len int NOT NULL,
            guest_version text NOT NULL)",
    );
    const N: i64 = 20_000;
    // One message in a hundred makes the `spin` fixture loop to its deadline.
    let flags = |range: std::ops::Range<i64>| {
        range
            .map(|i| Out {
                partition: (i % 3) as i32,
                key: format!("k{}", i % 7),
                fields: vec![
                    ("n", Avro::Long(i)),
                    ("misbehave", Avro::Boolean(i % 100 == 50)),
                ],
                headers: Vec::new(),
            })
            .collect::<Vec<_>>()
    };
    let producer = stream(
        &broker.bootstrap,
        &registry.url,
        "flags",
        FLAG,
        N,
        250,
        flags,
    );
    let run = Run::new(&db.url(), &registry.url, &broker.bootstrap);
    run.install("fixture_marker_a", "marker");
    let token = run.dir.path().join("admin-token");
    std::fs::write(&token, "shadow-token").unwrap();
    let admin_port = free_port();
    let admin = format!("http://127.0.0.1:{admin_port}");
    let pipeline = format!(
        "  - name: flags\n    topic: flags\n    guest: marker.wasm\n    batch: {{size: 100, linger: 20ms}}\n    limits: {{deadline: 200ms}}\n    tables: [marked]\n    version_column: guest_version\nadmin:\n  listen: \"127.0.0.1:{admin_port}\"\n  token_file: \"{}\"\n",
        token.display()
    );
    let port = free_port();
    let mut child = run.spawn(port, &pipeline);
    run.wait_committed("flags", 500, &mut [&mut child]);
    let a = std::fs::read(guest_path("fixture_marker_a")).unwrap();
    let sha_a = weir_tests::sha(&a);
    let file = |name: &str, bytes: &[u8]| {
        let path = run.dir.path().join(format!("{name}.wasm"));
        std::fs::write(&path, bytes).unwrap();
        path.to_str().unwrap().to_string()
    };
    let shadow = |path: &str| {
        let out = guest_admin(&admin, &token, &["deploy", "--shadow", "marker", path]);
        assert!(out.status.success(), "{out:?}\n{}", run.logs());
    };
    // Until the candidate has compared `n` more messages than `from`.
    let compared = |from: i64, n: i64| {
        wait_until(
            Duration::from_secs(120),
            Duration::from_millis(200),
            || shadow_report(&admin, &token).compared >= from + n,
            || format!("the candidate compared too little; logs:\n{}", run.logs()),
        );
        shadow_report(&admin, &token)
    };

    // The same behaviour in other bytes: compared, no difference.
    let same = weir_tests::sha(&weir_tests::variant(&a, 1));
    shadow(&file("same", &weir_tests::variant(&a, 1)));
    let report = compared(0, 500);
    assert_eq!(report.sha256, same);
    assert_eq!((report.differing, report.diffs.len()), (0, 0), "{report:?}");

    // A candidate that loops to its deadline on some messages and writes another table on
    // the rest: every message it ran differs, the live pipeline goes on as before.
    shadow(&file(
        "spin",
        &std::fs::read(guest_path("fixture_spin")).unwrap(),
    ));
    let before = run.committed("flags");
    let report = compared(0, 300);
    assert_eq!(report.differing, report.compared, "{report:?}");
    assert!(
        report
            .diffs
            .iter()
            .all(|d| d.kind == "rows" || d.kind == "dead_letter"),
        "{report:?}"
    );
    run.wait_committed("flags", before + 1000, &mut [&mut child]);
    let out = guest_admin(&admin, &token, &["discard", "marker"]);
    assert!(out.status.success(), "{out:?}");
    let out = guest_admin(&admin, &token, &["diff", "marker"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no shadow candidate"),
        "{out:?}"
    );

    // A deliberate difference: marker "b" for "a", on every message, and nothing else.
    let b = std::fs::read(guest_path("fixture_marker_b")).unwrap();
    shadow(&file("b", &b));
    let report = compared(0, 500);
    assert_eq!(report.differing, report.compared, "{report:?}");
    assert_eq!(report.diffs.len() as i64, report.differing.min(10_000));
    for d in &report.diffs {
        assert_eq!(d.kind, "rows", "{d:?}");
        assert!(d.live.contains("marker=\"a\""), "{d:?}");
        assert_eq!(
            d.live.replace("marker=\"a\"", "marker=\"b\""),
            d.candidate,
            "{d:?}"
        );
    }
    let metrics = scrape(port);
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("weir_shadow_differences_total{guest=\"marker\",kind=\"rows\"}")),
        "{metrics}"
    );
    // Nothing the candidates made was written.
    let written = |sql: &str| query(&db.url(), sql)[0].get::<_, i64>(0);
    assert_eq!(
        written("SELECT count(*) FROM marked WHERE marker <> 'a'"),
        0
    );
    assert_eq!(
        written(&format!(
            "SELECT count(*) FROM marked WHERE guest_version <> '{sha_a}'"
        )),
        0
    );

    // Promoted through the barrier: every partition switches to "b" at a recorded offset;
    // then rolled back the same way, and more produced after it.
    let out = guest_admin(&admin, &token, &["promote", "marker"]);
    assert!(out.status.success(), "{out:?}\n{}", run.logs());
    let out = guest_admin(&admin, &token, &["diff", "marker"]);
    assert!(
        !out.status.success(),
        "the shadow run ended with the promote"
    );
    producer.join().unwrap();
    run.wait_committed("flags", N, &mut [&mut child]);
    let out = guest_admin(&admin, &token, &["rollback", "marker"]);
    assert!(out.status.success(), "{out:?}\n{}", run.logs());
    const MORE: i64 = 1500;
    produce(
        &broker.bootstrap,
        &registry.url,
        "flags",
        3,
        FLAG,
        flags(N..N + MORE),
    );
    run.wait_committed("flags", N + MORE, &mut [&mut child]);
    kill9(&mut child);
    let total = N + MORE;
    assert_eq!(written("SELECT count(*) FROM marked"), total);
    assert_eq!(
        written("SELECT count(DISTINCT (kafka_partition, kafka_offset)) FROM marked"),
        total
    );
    assert_eq!(written("SELECT count(*) FROM dead_letters"), 0);
    // Each row ran with the version live at its offset: "b" (version 2, the promoted
    // candidate) between its switch and the rollback's (version 3).
    let group = &run.group;
    assert_eq!(
        written(&format!(
            "SELECT count(*) FROM marked m
              WHERE m.marker <> coalesce((
                SELECT CASE s.version WHEN 2 THEN 'b' ELSE 'a' END FROM weir_switches s
                 WHERE s.group_id = '{group}' AND s.guest = 'marker'
                   AND s.partition = m.kafka_partition AND s.from_offset <= m.kafka_offset
                 ORDER BY s.version DESC LIMIT 1), 'a')"
        )),
        0
    );
    assert!(written("SELECT count(*) FROM marked WHERE marker = 'b'") > 0);
    let kinds: Vec<(i32, String, i64)> = query(
        &db.url(),
        &format!(
            "SELECT d.version, d.kind, (SELECT count(*) FROM weir_switches s
                 WHERE s.group_id = d.group_id AND s.guest = d.guest AND s.version = d.version)
               FROM weir_deployments d WHERE d.group_id = '{group}' ORDER BY 1"
        ),
    )
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect();
    assert_eq!(
        kinds,
        [
            (1, "file".to_string(), 0),
            (2, "promote".to_string(), 3),
            (3, "rollback".to_string(), 3)
        ]
    );
}
