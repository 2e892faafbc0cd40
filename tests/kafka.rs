//! Avro ticks through a real broker (tansu) and weir's registry (over real Postgres):
//! `weir schemas push`, `weir ingest simulate`/`replay`, `weir tail`, and the source's
//! decode stage with poison messages and a registry outage.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Map, Value, json};
use weir::ingest::simulate::{AssetClass, OptionsConfig, SimConfig, Simulator, Symbol};
use weir::model::Stage;
use weir::registry::{RegistryClient, SchemaId, frame_into};
use weir::source::{Decoded, Decoder, KafkaSource, Shape, SourceConfig, StartFrom};
use weir_tests::{Broker, Registry, TestDb, free_port, rt, weir};

fn schemas_dir() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../schemas")
        .display()
        .to_string()
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "weir failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn push(registry: &Registry) -> String {
    ok(weir(&[
        "schemas",
        "push",
        "--registry",
        &registry.url,
        &schemas_dir(),
    ]))
}

#[test]
fn schemas_pushed_twice_get_the_same_ids() {
    let db = TestDb::new();
    let registry = Registry::start(&db.url());
    let first = push(&registry);
    let second = push(&registry);
    assert_eq!(first, second);
    let lines: Vec<&str> = first.lines().collect();
    let topics = [
        "tickers.crypto",
        "tickers.crypto.clean",
        "tickers.currency",
        "tickers.currency.clean",
        "tickers.options",
        "tickers.stocks",
        "tickers.stocks.clean",
    ];
    assert_eq!(lines.len(), topics.len(), "{first}");
    for (line, topic) in lines.iter().zip(topics) {
        assert!(line.starts_with(&format!("{topic}-value\tid ")), "{line}");
    }
    // Different schemas, different ids.
    let mut ids: Vec<&str> = lines
        .iter()
        .map(|l| l.split('\t').nth(1).unwrap())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), topics.len(), "{first}");
}

const START: &str = "2024-05-01T14:30:00Z";
const START_MS: i64 = 1_714_573_800_000;

/// The ticks `weir ingest simulate --seed 11 --start-time START --rate 1000` produces, by
/// topic, in order.
fn expected_ticks(count: u64) -> BTreeMap<&'static str, Vec<Map<String, Value>>> {
    expected_ticks_every(count, 1)
}

/// The same with the simulated clock advancing `step_ms` per tick (`--tick-interval`).
fn expected_ticks_every(
    count: u64,
    step_ms: i64,
) -> BTreeMap<&'static str, Vec<Map<String, Value>>> {
    let mut sim = simulator();
    let mut by_topic: BTreeMap<&'static str, Vec<Map<String, Value>>> = BTreeMap::new();
    for i in 0..count as i64 {
        let (class, tick) = sim.next_tick(START_MS + i * step_ms, 0);
        by_topic.entry(class.topic()).or_default().push(tick);
    }
    by_topic
}

/// What the same command with `--options --option-share 0.3` produces, by topic, in order:
/// the simulated clock advances a millisecond per tick.
fn expected_with_options(count: u64) -> BTreeMap<&'static str, Vec<Map<String, Value>>> {
    let mut sim = simulator().with_options(OptionsConfig {
        share: 0.3,
        ..Default::default()
    });
    let mut by_topic: BTreeMap<&'static str, Vec<Map<String, Value>>> = BTreeMap::new();
    let mut ticks = 0;
    for _ in 0..count {
        let m = sim.next_message(START_MS + ticks, 0);
        if m.topic != "tickers.options" {
            ticks += 1;
        }
        by_topic.entry(m.topic).or_default().push(m.record);
    }
    by_topic
}

fn simulator() -> Simulator {
    Simulator::new(SimConfig {
        symbols: AssetClass::ALL
            .into_iter()
            .flat_map(|c| {
                c.default_symbols().iter().map(move |(n, p)| Symbol {
                    class: c,
                    name: n.to_string(),
                    open: *p,
                })
            })
            .collect(),
        seed: 11,
        late_fraction: 0.0,
        late_by_ms: 0,
        duplicate_fraction: 0.0,
        source: "simulator".into(),
    })
}

/// A tick as `weir tail` prints its fields, from the record the simulator made.
fn as_tailed(tick: &Map<String, Value>, fields: &Map<String, Value>) -> Map<String, Value> {
    let mut want = Map::new();
    for (name, got) in fields {
        let v = match (name.as_str(), tick.get(name)) {
            // Not deterministic: when it was produced.
            ("ingestion_time", _) => got.clone(),
            ("event_time", Some(ms)) => {
                let t = std::time::UNIX_EPOCH + Duration::from_millis(ms.as_u64().unwrap());
                json!({ "$timestamp": humantime::format_rfc3339_micros(t).to_string() })
            }
            (_, Some(v)) => v.clone(),
            (_, None) => Value::Null,
        };
        want.insert(name.clone(), v);
    }
    want
}

#[test]
fn simulate_then_tail_round_trips_every_field() {
    simulate_and_tail(&[], expected_ticks(300));
}

#[test]
fn simulate_with_a_tick_interval_spaces_the_simulated_clock() {
    // 300 ticks 100 ms apart in event time: half a minute of history at --rate 1000.
    let expected = expected_ticks_every(300, 100);
    let last = expected
        .values()
        .flatten()
        .map(|t| t["event_time"].as_i64().unwrap())
        .max();
    assert_eq!(last, Some(START_MS + 299 * 100));
    simulate_and_tail(&["--tick-interval", "100ms"], expected);
}

#[test]
fn simulate_with_options_then_tail_round_trips_every_field() {
    let expected = expected_with_options(300);
    let options = &expected["tickers.options"];
    assert!(options.len() > 50, "{} option trades", options.len());
    // The ticks are those of the same seed without options.
    let plain = expected_ticks(300);
    for (topic, ticks) in &expected {
        if let Some(without) = plain.get(topic) {
            assert_eq!(ticks[..], without[..ticks.len()], "{topic}");
        }
    }
    simulate_and_tail(&["--options", "--option-share", "0.3"], expected);
}

/// `weir ingest simulate --seed 11 --start-time START --rate 1000 --count N` with `extra`
/// flags, then `weir tail` of each topic: each message as `expected` has it.
fn simulate_and_tail(extra: &[&str], expected: BTreeMap<&'static str, Vec<Map<String, Value>>>) {
    let db = TestDb::new();
    let registry = Registry::start(&db.url());
    let broker = Broker::start();
    push(&registry);
    let count: usize = expected.values().map(Vec::len).sum();
    let count = count.to_string();
    let mut args = vec![
        "ingest",
        "simulate",
        "--brokers",
        &broker.bootstrap,
        "--registry",
        &registry.url,
        "--seed",
        "11",
        "--start-time",
        START,
        "--rate",
        "1000",
        "--count",
        &count,
        "--partitions",
        "1",
    ];
    args.extend_from_slice(extra);
    ok(weir(&args));
    for (topic, ticks) in &expected {
        let out = ok(weir(&[
            "tail",
            topic,
            "--brokers",
            &broker.bootstrap,
            "--registry",
            &registry.url,
            "--from-beginning",
            "--count",
            &ticks.len().to_string(),
        ]));
        let lines: Vec<Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), ticks.len(), "{topic}");
        for (i, (line, tick)) in lines.iter().zip(ticks).enumerate() {
            assert_eq!(line["topic"], *topic);
            assert_eq!(line["offset"], i as i64);
            let key = if *topic == "tickers.options" {
                &tick["underlying"]
            } else {
                &tick["id"]
            };
            assert_eq!(line["key"], *key, "the key is the symbol or the underlying");
            assert!(line["schema_id"].as_u64().is_some(), "{line}");
            let fields = line["fields"].as_object().unwrap();
            let schema_fields =
                std::fs::read_to_string(format!("{}/{topic}.avsc", schemas_dir())).unwrap();
            let schema: Value = serde_json::from_str(&schema_fields).unwrap();
            let names: Vec<&str> = schema["fields"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f["name"].as_str().unwrap())
                .collect();
            assert_eq!(fields.keys().map(String::as_str).collect::<Vec<_>>(), names);
            assert_eq!(*fields, as_tailed(tick, fields), "{topic} offset {i}");
            assert!(fields["ingestion_time"]["$timestamp"].is_string());
        }
    }
}

#[test]
fn replay_reports_a_bad_line_and_produces_a_good_file() {
    let db = TestDb::new();
    let registry = Registry::start(&db.url());
    let broker = Broker::start();
    push(&registry);
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("ticks.csv");
    std::fs::write(
        &csv,
        "topic,id,quote_type,market_hours,price,bid,ask,event_time,event_id\n\
         tickers.crypto,BTC-USD,CRYPTOCURRENCY,REGULAR_MARKET,64000.5,64000,64001,2024-05-01T14:30:00Z,9f1c2a7e-0b1d-4a7e-8c55-0d3c1b6f2a01\n\
         tickers.crypto,ETH-USD,CRYPTOCURRENCY,REGULAR_MARKET,cheap,1,2,2024-05-01T14:30:01Z,9f1c2a7e-0b1d-4a7e-8c55-0d3c1b6f2a02\n",
    )
    .unwrap();
    let args = |file: &str| {
        vec![
            "ingest".to_string(),
            "replay".into(),
            file.into(),
            "--brokers".into(),
            broker.bootstrap.clone(),
            "--registry".into(),
            registry.url.clone(),
            "--rate".into(),
            "max".into(),
        ]
    };
    let out = weir(
        &args(csv.to_str().unwrap())
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("ticks.csv:3: field `price`: expected a number, found \"cheap\""),
        "{stderr}"
    );

    let jsonl = dir.path().join("ticks.jsonl");
    std::fs::write(
        &jsonl,
        r#"{"topic":"tickers.currency","id":"EURUSD=X","quote_type":"CURRENCY","market_hours":"REGULAR_MARKET","price":1.0712,"bid":1.0711,"ask":1.0713,"event_time":"2024-05-01T14:30:00.250Z","event_id":"9f1c2a7e-0b1d-4a7e-8c55-0d3c1b6f2a03"}"#,
    )
    .unwrap();
    ok(weir(
        &args(jsonl.to_str().unwrap())
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    ));
    let out = ok(weir(&[
        "tail",
        "tickers.currency",
        "--brokers",
        &broker.bootstrap,
        "--registry",
        &registry.url,
        "--from-beginning",
        "--count",
        "1",
    ]));
    let line: Value = serde_json::from_str(out.trim()).unwrap();
    let fields = &line["fields"];
    assert_eq!(fields["id"], "EURUSD=X");
    assert_eq!(fields["bid"], 1.0711);
    assert_eq!(fields["day_volume"], Value::Null);
    assert_eq!(
        fields["event_time"],
        json!({"$timestamp": "2024-05-01T14:30:00.250000Z"})
    );
    assert_eq!(fields["source"], "replay:ticks.jsonl");

    // Option trades: a date as text or days, keyed by the underlying.
    let options = dir.path().join("options.csv");
    std::fs::write(
        &options,
        "id,underlying,expiry,strike,option_type,style,price,volume,event_time,event_id\n\
         AAPL240621C00190000,AAPL,2024-06-21,190,CALL,AMERICAN,4.35,12,2024-05-01T14:30:00Z,9f1c2a7e-0b1d-4a7e-8c55-0d3c1b6f2a04\n\
         AAPL240621P00180000,AAPL,19895,180,PUT,AMERICAN,1.2,,2024-05-01T14:30:01Z,9f1c2a7e-0b1d-4a7e-8c55-0d3c1b6f2a05\n",
    )
    .unwrap();
    let mut replay = args(options.to_str().unwrap());
    replay.extend(["--topic".into(), "tickers.options".into()]);
    ok(weir(&replay.iter().map(String::as_str).collect::<Vec<_>>()));
    let out = ok(weir(&[
        "tail",
        "tickers.options",
        "--brokers",
        &broker.bootstrap,
        "--registry",
        &registry.url,
        "--from-beginning",
        "--count",
        "2",
    ]));
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{out}");
    for (line, (id, kind)) in lines.iter().zip([
        ("AAPL240621C00190000", "CALL"),
        ("AAPL240621P00180000", "PUT"),
    ]) {
        assert_eq!(line["key"], "AAPL");
        let f = &line["fields"];
        assert_eq!(
            (f["id"].as_str(), f["option_type"].as_str()),
            (Some(id), Some(kind))
        );
        assert_eq!(f["expiry"], 19_895, "2024-06-21");
        assert_eq!(f["underlying"], "AAPL");
        assert_eq!(f["implied_volatility"], Value::Null);
        assert_eq!(f["source"], "replay:options.csv");
    }
    assert_eq!(lines[0]["fields"]["volume"], 12);
    assert_eq!(lines[1]["fields"]["volume"], Value::Null);
}

async fn produce(broker: &Broker, topic: &str, values: Vec<Vec<u8>>) {
    weir::source::kafka::ensure_topics(&broker.bootstrap, &[topic.to_string()], 1)
        .await
        .unwrap();
    let producer: FutureProducer = weir::source::kafka::client_config(&broker.bootstrap)
        .create()
        .unwrap();
    for v in values {
        producer
            .send(
                FutureRecord::to(topic).key("k").payload(&v),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
}

fn source(broker: &Broker, topic: &str) -> KafkaSource {
    KafkaSource::new(&SourceConfig {
        kafka: weir::source::kafka::Kafka::new(&broker.bootstrap),
        group_id: weir_tests::unique("g"),
        topics: vec![topic.into()],
        batch_size: 100,
        linger: Duration::from_millis(100),
        start: StartFrom::Earliest,
        properties: vec![],
        subscribe: true,
    })
    .unwrap()
}

/// Reads and decodes until `n` messages came through.
async fn consume(
    source: &mut KafkaSource,
    decoder: &Decoder<RegistryClient>,
    n: usize,
) -> Vec<Decoded> {
    let mut out = Vec::new();
    while out.len() < n {
        let batch = tokio::time::timeout(Duration::from_secs(60), source.next_batch())
            .await
            .expect("a batch within a minute")
            .unwrap();
        out.extend(decoder.decode_batch(&batch, Shape::Values).await.unwrap());
    }
    out
}

const V1: &str = r#"{"type":"record","name":"P","fields":[{"name":"n","type":"long"}]}"#;
const V2: &str = r#"{"type":"record","name":"P","fields":[{"name":"n","type":"long"},{"name":"s","type":"string","default":"x"}]}"#;

fn body(schema: &str, fields: Vec<(&str, apache_avro::types::Value)>) -> Vec<u8> {
    let schema = apache_avro::Schema::parse_str(schema).unwrap();
    let record = apache_avro::types::Value::Record(
        fields
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
    );
    apache_avro::writer::datum::GenericDatumWriter::builder(&schema)
        .build()
        .unwrap()
        .write_value_to_vec(record)
        .unwrap()
}

fn framed(id: SchemaId, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    frame_into(id, body, &mut v);
    v
}

#[test]
fn poison_messages_become_dead_letters_with_their_stage() {
    let db = TestDb::new();
    let registry = Registry::start(&db.url());
    let broker = Broker::start();
    let rt = rt();
    rt.block_on(async {
        let client = Arc::new(RegistryClient::new(&registry.url).unwrap());
        let id = client.register("poison-value", V1).await.unwrap();
        let good = framed(
            id,
            &body(V1, vec![("n", apache_avro::types::Value::Long(7))]),
        );
        let mut truncated = good.clone();
        truncated.truncate(5);
        produce(
            &broker,
            "poison",
            vec![
                good.clone(),
                b"{\"n\": 7}".to_vec(),
                framed(SchemaId(987_654), &good[5..]),
                truncated,
                good,
            ],
        )
        .await;
        let decoder = Decoder::new(client);
        let out = consume(&mut source(&broker, "poison"), &decoder, 5).await;
        let summary: Vec<(i64, Option<Stage>)> = out
            .iter()
            .map(|d| match d {
                Decoded::Message(m) => (m.offset, None),
                Decoded::DeadLetter(d) => (d.offset, Some(d.stage)),
            })
            .collect();
        assert_eq!(
            summary,
            [
                (0, None),
                (1, Some(Stage::Framing)),
                (2, Some(Stage::Schema)),
                (3, Some(Stage::Decode)),
                (4, None)
            ]
        );
        let Decoded::DeadLetter(unknown) = &out[2] else {
            unreachable!()
        };
        assert!(
            unknown.error.contains("schema id 987654 not found"),
            "{}",
            unknown.error
        );
        assert_eq!(unknown.key.as_deref(), Some(&b"k"[..]));
        assert!(unknown.value.is_some(), "the raw bytes are kept");
    });
}

#[test]
fn a_registry_outage_during_consumption_delays_but_loses_nothing() {
    let db = TestDb::new();
    let port = free_port();
    let registry = Registry::start_on(&db.url(), port);
    let broker = Broker::start();
    let rt = rt();
    let client = Arc::new(RegistryClient::new(&registry.url).unwrap());
    let (v1, v2) = rt.block_on(async {
        (
            client.register("outage-value", V1).await.unwrap(),
            client.register("outage-value", V2).await.unwrap(),
        )
    });
    let decoder = Arc::new(
        Decoder::new(client).with_retry(Duration::from_millis(50), Duration::from_millis(400)),
    );
    let mut src = {
        let _in_runtime = rt.enter();
        source(&broker, "outage")
    };
    rt.block_on(async {
        let first: Vec<Vec<u8>> = (0..10)
            .map(|n| {
                framed(
                    v1,
                    &body(V1, vec![("n", apache_avro::types::Value::Long(n))]),
                )
            })
            .collect();
        produce(&broker, "outage", first).await;
        let out = consume(&mut src, &decoder, 10).await;
        assert!(out.iter().all(|d| matches!(d, Decoded::Message(_))));
    });

    // The registry goes away; messages with a schema the decoder has not seen arrive.
    drop(registry);
    let consumer = {
        let decoder = decoder.clone();
        rt.spawn(async move { consume(&mut src, &decoder, 10).await })
    };
    rt.block_on(async {
        let second: Vec<Vec<u8>> = (10..20)
            .map(|n| {
                framed(
                    v2,
                    &body(
                        V2,
                        vec![
                            ("n", apache_avro::types::Value::Long(n)),
                            ("s", apache_avro::types::Value::String(format!("m{n}"))),
                        ],
                    ),
                )
            })
            .collect();
        produce(&broker, "outage", second).await;
    });
    // While the registry is down, nothing comes out: not decoded, not dead-lettered.
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        !consumer.is_finished(),
        "messages came out while the registry was down"
    );
    let _registry = Registry::start_on(&db.url(), port);
    let out = rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(60), consumer).await })
        .expect("decoding resumes once the registry is back")
        .unwrap();
    let offsets: Vec<i64> = out
        .iter()
        .map(|d| match d {
            Decoded::Message(m) => {
                assert_eq!(m.schema_id(), Some(v2.0));
                m.offset
            }
            Decoded::DeadLetter(d) => panic!("dead-lettered during the outage: {d:?}"),
        })
        .collect();
    assert_eq!(offsets, (10..20).collect::<Vec<i64>>());
}
