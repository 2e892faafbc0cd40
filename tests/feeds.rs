//! The live feeds against websocket servers in the test that speak their protocols, a real
//! broker (tansu) and weir's registry:
//! - `weir ingest coinbase` and the Coinbase Exchange feed: every distinct update is exactly
//!   one message on tickers.crypto, through a dropped connection, a redelivery, a malformed
//!   frame, a sequence gap and a feed gone silent;
//! - `weir ingest yahoo` and Yahoo Finance's streamer, over TLS with a generated CA: each
//!   quote on the topic of its quote type (options on tickers.options), exactly once
//!   through a drop and a redelivery, with malformed frames skipped and counted.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use weir_tests::{Broker, Registry, TestDb, free_port, rt, wait_until, weir, weir_bin};

/// One step of a scripted connection.
#[derive(Clone)]
enum Step {
    /// Read the subscribe message and keep it.
    Subscribe,
    /// Send a text frame.
    Send(String),
    /// Drop the connection without a close handshake.
    Drop,
    /// Say nothing, and keep the connection open, for this long.
    Silent(Duration),
    /// Send a heartbeat for each product every 200 ms from now on.
    Heartbeats(Vec<(&'static str, u64)>),
}

/// A ticker as the Exchange feed sends it.
fn ticker(product: &str, sequence: u64, trade_id: u64, price: f64) -> String {
    json!({
        "type": "ticker",
        "sequence": sequence,
        "product_id": product,
        "price": format!("{price:.2}"),
        "open_24h": format!("{:.2}", price * 0.98),
        "volume_24h": "8123.41905112",
        "low_24h": format!("{:.2}", price * 0.97),
        "high_24h": format!("{:.2}", price * 1.01),
        "volume_30d": "312345.12345678",
        "best_bid": format!("{:.2}", price - 0.01),
        "best_bid_size": "0.41000000",
        "best_ask": format!("{:.2}", price + 0.01),
        "best_ask_size": "1.25000000",
        "side": "buy",
        "time": format!("2024-05-01T14:30:{:02}.250123Z", trade_id % 60),
        "trade_id": trade_id,
        "last_size": "0.01250000",
    })
    .to_string()
}

fn heartbeat(product: &str, sequence: u64) -> String {
    json!({
        "type": "heartbeat",
        "sequence": sequence,
        "last_trade_id": 1,
        "product_id": product,
        "time": "2024-05-01T14:30:00.000001Z",
    })
    .to_string()
}

fn subscriptions() -> String {
    json!({"type": "subscriptions", "channels": [
        {"name": "ticker", "product_ids": ["BTC-USD", "ETH-USD"]},
        {"name": "heartbeat", "product_ids": ["BTC-USD", "ETH-USD"]},
    ]})
    .to_string()
}

/// A websocket server on 127.0.0.1 playing one script per connection, in order; the
/// subscribe messages it read are kept.
struct FeedServer {
    url: String,
    subscribes: Arc<Mutex<Vec<Value>>>,
}

fn feed_server(rt: &tokio::runtime::Runtime, scripts: Vec<Vec<Step>>) -> FeedServer {
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let url = format!("ws://{}", listener.local_addr().unwrap());
    let subscribes = Arc::new(Mutex::new(Vec::new()));
    let kept = subscribes.clone();
    rt.spawn(async move {
        for script in scripts {
            let (tcp, _) = listener.accept().await.unwrap();
            let kept = kept.clone();
            tokio::spawn(async move {
                let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
                for step in script {
                    match step {
                        Step::Subscribe => loop {
                            match ws.next().await {
                                Some(Ok(Message::Text(t))) => {
                                    kept.lock()
                                        .unwrap()
                                        .push(serde_json::from_str(t.as_str()).unwrap());
                                    break;
                                }
                                Some(Ok(_)) => continue,
                                other => panic!("no subscribe message: {other:?}"),
                            }
                        },
                        Step::Send(text) => ws.send(Message::text(text)).await.unwrap(),
                        Step::Drop => return,
                        Step::Silent(d) => tokio::time::sleep(d).await,
                        Step::Heartbeats(products) => loop {
                            for (p, seq) in &products {
                                if ws.send(Message::text(heartbeat(p, *seq))).await.is_err() {
                                    return;
                                }
                            }
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        },
                    }
                }
                // Keep the connection open until the client goes.
                while let Some(Ok(_)) = ws.next().await {}
            });
        }
    });
    FeedServer { url, subscribes }
}

fn schemas_dir() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../schemas")
        .display()
        .to_string()
}

struct Services {
    _db: TestDb,
    registry: Registry,
    broker: Broker,
}

fn services() -> Services {
    let db = TestDb::new();
    let registry = Registry::start(&db.url());
    let broker = Broker::start();
    let out = weir(&[
        "schemas",
        "push",
        "--registry",
        &registry.url,
        &schemas_dir(),
    ]);
    assert!(out.status.success(), "{out:?}");
    Services {
        _db: db,
        registry,
        broker,
    }
}

struct Ingest {
    child: Child,
    log: PathBuf,
    http: String,
    _dir: tempfile::TempDir,
}

impl Ingest {
    /// `weir ingest coinbase` of BTC-USD and ETH-USD.
    fn start(s: &Services, url: &str, extra: &[&str]) -> Self {
        Self::feed(
            s,
            &["coinbase", "--products", "BTC-USD,ETH-USD"],
            url,
            extra,
        )
    }

    /// `weir ingest <feed…>` reading `url`.
    fn feed(s: &Services, feed: &[&str], url: &str, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("ingest.log");
        let http = format!("127.0.0.1:{}", free_port());
        let child = Command::new(weir_bin())
            .arg("ingest")
            .args(feed)
            .args([
                "--url",
                url,
                "--brokers",
                &s.broker.bootstrap,
                "--registry",
                &s.registry.url,
                "--partitions",
                "1",
                "--backoff-min",
                "100ms",
                "--backoff-max",
                "1s",
                "--http",
                &http,
            ])
            .args(extra)
            .env("NO_COLOR", "1")
            .env("WEIR_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Self {
            child,
            log,
            http,
            _dir: dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `/metrics`, as name (with labels) → value.
    fn metrics(&self, rt: &tokio::runtime::Runtime) -> Option<Vec<(String, f64)>> {
        let text = rt
            .block_on(async {
                reqwest::get(format!("http://{}/metrics", self.http))
                    .await?
                    .text()
                    .await
            })
            .ok()?;
        Some(
            text.lines()
                .filter(|l| !l.starts_with('#'))
                .filter_map(|l| l.rsplit_once(' '))
                .filter_map(|(n, v)| Some((n.to_string(), v.parse().ok()?)))
                .collect(),
        )
    }

    fn metric(&self, rt: &tokio::runtime::Runtime, name: &str) -> f64 {
        self.metrics(rt)
            .and_then(|m| m.into_iter().find(|(n, _)| n == name).map(|(_, v)| v))
            .unwrap_or(-1.0)
    }

    /// SIGTERM; it must exit 0.
    fn stop(mut self) -> String {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let exited = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "weir ingest coinbase did not exit on SIGTERM:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        let log = self.log();
        assert!(exited.success(), "exit status {exited}: {log}");
        log
    }
}

impl Drop for Ingest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How many messages `topic` holds: read from the beginning until 2 s pass quietly.
fn messages_on_topic(s: &Services, topic: &str) -> usize {
    let consumer: BaseConsumer = weir::source::kafka::client_config(&s.broker.bootstrap)
        .set("group.id", weir_tests::unique("feeds"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut list = rdkafka::TopicPartitionList::new();
    list.add_partition_offset(topic, 0, rdkafka::Offset::Beginning)
        .unwrap();
    consumer.assign(&list).unwrap();
    let mut n = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut quiet = std::time::Instant::now();
    while quiet.elapsed() < Duration::from_secs(2) {
        assert!(std::time::Instant::now() < deadline, "read {n} so far");
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            m.unwrap();
            n += 1;
            quiet = std::time::Instant::now();
        }
    }
    n
}

fn tail(s: &Services, topic: &str, count: usize) -> Vec<Value> {
    let out = weir(&[
        "tail",
        topic,
        "--brokers",
        &s.broker.bootstrap,
        "--registry",
        &s.registry.url,
        "--from-beginning",
        "--count",
        &count.to_string(),
    ]);
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

const BTC: &str = "BTC-USD";
const ETH: &str = "ETH-USD";

#[test]
fn every_update_once_through_a_drop_a_redelivery_a_gap_and_a_bad_frame() {
    let rt = rt();
    let s = services();
    let server = feed_server(
        &rt,
        vec![
            vec![
                Step::Subscribe,
                Step::Send(subscriptions()),
                Step::Send(ticker(BTC, 100, 1, 64000.10)),
                Step::Send(ticker(ETH, 500, 11, 3100.20)),
                Step::Send(heartbeat(BTC, 100)),
                Step::Send(r#"{"type":"ticker","product_id":"BTC-USD","price":"64000.1","#.into()),
                Step::Send(ticker(BTC, 101, 2, 64000.20)),
                // 501 and 502 never arrive: a gap.
                Step::Send(ticker(ETH, 503, 12, 3100.30)),
                Step::Send(ticker(BTC, 102, 3, 64000.30)),
                Step::Drop,
            ],
            vec![
                Step::Subscribe,
                Step::Send(subscriptions()),
                // Sent before the drop already: the same event, dropped.
                Step::Send(ticker(BTC, 102, 3, 64000.30)),
                Step::Send(ticker(ETH, 504, 13, 3100.40)),
                Step::Send(ticker(BTC, 103, 4, 64000.40)),
                Step::Heartbeats(vec![(BTC, 103), (ETH, 504)]),
            ],
        ],
    );
    let ingest = Ingest::start(&s, &server.url, &[]);
    let produced = "weir_ingest_produced_total{topic=\"tickers.crypto\"}";
    wait_until(
        Duration::from_secs(30),
        Duration::from_millis(100),
        || ingest.metric(&rt, produced) >= 7.0,
        || {
            format!(
                "7 ticks not produced: {:?}\n{}",
                ingest.metrics(&rt),
                ingest.log()
            )
        },
    );
    // A moment for anything extra to show.
    std::thread::sleep(Duration::from_millis(500));
    let m = |name| ingest.metric(&rt, name);
    assert_eq!(m(produced), 7.0, "{}", ingest.log());
    assert!(m("weir_ingest_reconnects_total") >= 1.0);
    assert_eq!(m("weir_ingest_decode_errors_total"), 1.0);
    assert_eq!(m("weir_ingest_sequence_gaps_total"), 1.0);
    assert_eq!(m("weir_ingest_duplicates_total"), 1.0);
    assert!(m("weir_ingest_messages_received_total") >= 16.0);
    assert!(m("weir_ingest_seconds_since_last_message") >= 0.0);
    let healthz = rt
        .block_on(async {
            reqwest::get(format!("http://{}/healthz", ingest.http))
                .await?
                .text()
                .await
        })
        .unwrap();
    assert_eq!(healthz, "ok");
    let log = ingest.stop();
    assert!(log.contains("Skipping a malformed feed message"), "{log}");
    assert!(log.contains("Sequence gap"), "{log}");

    let subscribes = server.subscribes.lock().unwrap().clone();
    assert_eq!(subscribes.len(), 2, "subscribed again after the reconnect");
    for sub in &subscribes {
        assert_eq!(
            *sub,
            json!({"type":"subscribe","product_ids":[BTC, ETH],"channels":["ticker","heartbeat"]})
        );
    }

    assert_eq!(
        messages_on_topic(&s, "tickers.crypto"),
        7,
        "each update exactly once"
    );
    let lines = tail(&s, "tickers.crypto", 7);
    let want = [
        (BTC, 1, 64000.10),
        (ETH, 11, 3100.20),
        (BTC, 2, 64000.20),
        (ETH, 12, 3100.30),
        (BTC, 3, 64000.30),
        (ETH, 13, 3100.40),
        (BTC, 4, 64000.40),
    ];
    for (line, (product, trade_id, price)) in lines.iter().zip(want) {
        assert_eq!(line["key"], product);
        let f = &line["fields"];
        assert_eq!(f["id"], product, "{line}");
        assert_eq!(f["source"], "coinbase");
        assert_eq!(f["quote_type"], "CRYPTOCURRENCY");
        assert_eq!(f["currency"], "USD");
        assert_eq!(f["price"], price);
        assert_eq!(
            f["bid"].as_f64().unwrap(),
            format!("{:.2}", price - 0.01).parse::<f64>().unwrap()
        );
        assert_eq!(
            f["ask"].as_f64().unwrap(),
            format!("{:.2}", price + 0.01).parse::<f64>().unwrap()
        );
        assert_eq!(f["last_size"], 0.0125);
        assert_eq!(f["day_volume"], 8123);
        assert_eq!(
            f["event_id"],
            weir::ingest::coinbase::event_id(product, trade_id).to_string()
        );
        assert_eq!(
            f["event_time"]["$timestamp"],
            format!("2024-05-01T14:30:{:02}.250000Z", trade_id % 60)
        );
        assert!(f["ingestion_time"]["$timestamp"].is_string(), "{line}");
    }
}

#[test]
fn a_silent_feed_is_reconnected_by_the_watchdog() {
    let rt = rt();
    let s = services();
    let server = feed_server(
        &rt,
        vec![
            vec![
                Step::Subscribe,
                Step::Send(subscriptions()),
                Step::Send(ticker(BTC, 7, 70, 64000.10)),
                Step::Silent(Duration::from_secs(60)),
            ],
            vec![
                Step::Subscribe,
                Step::Send(subscriptions()),
                Step::Send(ticker(BTC, 8, 71, 64000.20)),
                Step::Heartbeats(vec![(BTC, 8)]),
            ],
        ],
    );
    let ingest = Ingest::start(&s, &server.url, &["--stale-after", "1s"]);
    wait_until(
        Duration::from_secs(30),
        Duration::from_millis(100),
        || ingest.metric(&rt, "weir_ingest_produced_total{topic=\"tickers.crypto\"}") >= 2.0,
        || {
            format!(
                "the silent feed was not left: {:?}\n{}",
                ingest.metrics(&rt),
                ingest.log()
            )
        },
    );
    assert_eq!(ingest.metric(&rt, "weir_ingest_reconnects_total"), 1.0);
    assert_eq!(ingest.metric(&rt, "weir_ingest_sequence_gaps_total"), 0.0);
    let log = ingest.stop();
    assert!(log.contains("sent nothing for 1s"), "{log}");
    assert_eq!(server.subscribes.lock().unwrap().len(), 2);
    assert_eq!(messages_on_topic(&s, "tickers.crypto"), 2);
}

/// A protobuf field key: `field` number and wire type.
fn key(out: &mut Vec<u8>, field: u32, wire: u8) {
    varint(out, u64::from(field) << 3 | u64::from(wire));
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A Yahoo `PricingData` message, encoded field by field as the streamer sends it:
/// string id (1), float price (2), sint64 time (3), string currency (4), string exchange
/// (5), enum quoteType (6), enum marketHours (7), float bid (23), float ask (25), sint64
/// lastSize (22), sint64 dayVolume (9).
#[allow(clippy::too_many_arguments)]
fn pricing(
    id: &str,
    price: f32,
    time: i64,
    quote_type: u64,
    bid: f32,
    ask: f32,
    size: i64,
) -> Vec<u8> {
    let mut out = Vec::new();
    let string = |out: &mut Vec<u8>, field: u32, s: &str| {
        key(out, field, 2);
        varint(out, s.len() as u64);
        out.extend_from_slice(s.as_bytes());
    };
    let float = |out: &mut Vec<u8>, field: u32, v: f32| {
        key(out, field, 5);
        out.extend_from_slice(&v.to_le_bytes());
    };
    let sint = |out: &mut Vec<u8>, field: u32, v: i64| {
        key(out, field, 0);
        varint(out, ((v << 1) ^ (v >> 63)) as u64);
    };
    string(&mut out, 1, id);
    float(&mut out, 2, price);
    sint(&mut out, 3, time);
    string(&mut out, 4, "USD");
    string(&mut out, 5, "NMS");
    key(&mut out, 6, 0);
    varint(&mut out, quote_type);
    key(&mut out, 7, 0);
    varint(&mut out, 1);
    sint(&mut out, 9, 1_000_000);
    sint(&mut out, 22, size);
    float(&mut out, 23, bid);
    float(&mut out, 25, ask);
    out
}

/// A streamer frame (version 2): JSON with the base64 message.
fn yahoo_frame(pricing: &[u8]) -> String {
    use base64::Engine as _;
    json!({
        "type": "pricing",
        "message": base64::engine::general_purpose::STANDARD.encode(pricing),
    })
    .to_string()
}

#[test]
fn yahoo_quotes_reach_the_topic_of_their_type_once_over_tls() {
    let rt = rt();
    let s = services();
    let t0 = 1_764_748_800_000_i64;
    let aapl = yahoo_frame(&pricing("AAPL", 187.25, t0, 8, 187.2, 187.3, 100));
    let btc = yahoo_frame(&pricing(
        "BTC-USD",
        64012.5,
        t0 + 1,
        41,
        64010.0,
        64015.0,
        2,
    ));
    let eur = yahoo_frame(&pricing("EURUSD=X", 1.0825, t0 + 2, 14, 1.0824, 1.0826, 0));
    // An option: strike, expiry and call/put only in its OCC symbol, the underlying and
    // the open interest as fields (18, 19) after the rest.
    let mut option = pricing("AAPL260116C00200000", 4.1, t0 + 3, 13, 4.0, 4.2, 1);
    key(&mut option, 18, 2);
    varint(&mut option, 4);
    option.extend_from_slice(b"AAPL");
    key(&mut option, 19, 0);
    varint(&mut option, 2 * 5400);
    let option = yahoo_frame(&option);
    let msft = yahoo_frame(&pricing("MSFT", 415.5, t0 + 4, 8, 415.4, 415.6, 50));
    let server = feed_server(
        &rt,
        vec![
            vec![
                Step::Subscribe,
                Step::Send(aapl.clone()),
                Step::Send(btc),
                Step::Send(r#"{"type":"pricing","message":"not base64!"}"#.into()),
                Step::Send(eur),
                Step::Send(option),
                Step::Drop,
            ],
            // After the reconnect: AAPL again (a redelivery), then MSFT.
            vec![Step::Subscribe, Step::Send(aapl), Step::Send(msft)],
        ],
    );
    // TLS in front of the server, with a certificate of a CA made here.
    let ca = weir_tests::TestCa::new();
    let (cert, key) = ca.issue("localhost", &["DNS:localhost", "IP:127.0.0.1"]);
    let port = free_port();
    let tls =
        weir_tests::TlsTerminator::start(port, server.url.trim_start_matches("ws://"), &cert, &key);
    let url = format!("wss://localhost:{port}/?version=2");
    let ca_file = ca.cert();
    let ingest = Ingest::feed(
        &s,
        &["yahoo", "--symbols", "AAPL,BTC-USD,EURUSD=X,MSFT"],
        &url,
        &["--ca-file", ca_file.to_str().unwrap()],
    );
    wait_until(
        Duration::from_secs(60),
        Duration::from_millis(200),
        || {
            ingest.metric(&rt, "weir_ingest_duplicates_total") >= 1.0
                && ingest.metric(&rt, "weir_ingest_produced_total{topic=\"tickers.stocks\"}") >= 2.0
        },
        || format!("metrics: {:?}\nlog:\n{}", ingest.metrics(&rt), ingest.log()),
    );
    let m = |name: &str| ingest.metric(&rt, name);
    assert_eq!(
        m("weir_ingest_produced_total{topic=\"tickers.crypto\"}"),
        1.0
    );
    assert_eq!(
        m("weir_ingest_produced_total{topic=\"tickers.currency\"}"),
        1.0
    );
    assert_eq!(m("weir_ingest_decode_errors_total"), 1.0);
    assert_eq!(
        m("weir_ingest_produced_total{topic=\"tickers.options\"}"),
        1.0
    );
    assert_eq!(m("weir_ingest_unrouted_total"), 0.0);
    assert!(m("weir_ingest_reconnects_total") >= 1.0);
    ingest.stop();
    drop(tls);
    let subscribes = server.subscribes.lock().unwrap().clone();
    assert_eq!(subscribes.len(), 2, "subscribed, and again after the drop");
    for sub in &subscribes {
        assert_eq!(
            sub,
            &json!({"subscribe": ["AAPL", "BTC-USD", "EURUSD=X", "MSFT"]})
        );
    }
    assert_eq!(
        messages_on_topic(&s, "tickers.stocks"),
        2,
        "AAPL once, MSFT"
    );
    assert_eq!(messages_on_topic(&s, "tickers.crypto"), 1);
    assert_eq!(messages_on_topic(&s, "tickers.currency"), 1);
    let stocks = tail(&s, "tickers.stocks", 2);
    let aapl = stocks
        .iter()
        .find(|l| l["fields"]["id"] == "AAPL")
        .expect("AAPL");
    let v = &aapl["fields"];
    assert_eq!(v["quote_type"], "EQUITY");
    assert_eq!(v["market_hours"], "REGULAR_MARKET");
    assert_eq!(aapl["key"], "AAPL");
    assert_eq!(v["price"], 187.25);
    assert_eq!(v["bid"], 187.2);
    assert_eq!(v["ask"], 187.3);
    assert_eq!(v["last_size"], 100.0);
    assert_eq!(v["day_volume"], 1_000_000);
    assert_eq!(v["source"], "yahoo");
    let btc = &tail(&s, "tickers.crypto", 1)[0]["fields"];
    assert_eq!(
        (btc["id"].as_str(), btc["quote_type"].as_str()),
        (Some("BTC-USD"), Some("CRYPTOCURRENCY"))
    );
    let eur = &tail(&s, "tickers.currency", 1)[0]["fields"];
    assert_eq!(
        (eur["id"].as_str(), eur["quote_type"].as_str()),
        (Some("EURUSD=X"), Some("CURRENCY"))
    );
    assert_eq!(messages_on_topic(&s, "tickers.options"), 1);
    let line = &tail(&s, "tickers.options", 1)[0];
    assert_eq!(line["key"], "AAPL", "keyed by the underlying");
    let o = &line["fields"];
    assert_eq!(o["id"], "AAPL260116C00200000");
    assert_eq!(o["underlying"], "AAPL");
    assert_eq!(o["expiry"], 20_469, "2026-01-16, days since the epoch");
    assert_eq!(o["strike"], 200.0);
    assert_eq!(o["option_type"], "CALL");
    assert_eq!(o["style"], "AMERICAN");
    assert_eq!(
        (o["price"].as_f64(), o["bid"].as_f64()),
        (Some(4.1), Some(4.0))
    );
    assert_eq!(o["ask"], 4.2);
    assert_eq!(o["last_size"], 1.0);
    assert_eq!(o["volume"], 1_000_000);
    assert_eq!(o["open_interest"], 5400);
    assert_eq!(o["implied_volatility"], Value::Null);
    assert_eq!(o["currency"], "USD");
    assert_eq!(o["source"], "yahoo");
}

/// `POST`s (or `GET`s) `path` of the control endpoint at `addr`, with `token` if given:
/// (status, body as JSON or null).
fn control(
    rt: &tokio::runtime::Runtime,
    addr: &str,
    get: bool,
    path: &str,
    token: Option<&str>,
) -> (u16, Value) {
    rt.block_on(async {
        let client = reqwest::Client::new();
        let url = format!("http://{addr}{path}");
        let mut request = if get {
            client.get(url)
        } else {
            client.post(url)
        };
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    })
}

#[test]
fn the_control_endpoint_stops_and_starts_the_feed_and_refuses_without_the_token() {
    let rt = rt();
    let s = services();
    let server = feed_server(
        &rt,
        vec![
            vec![
                Step::Subscribe,
                Step::Send(ticker(BTC, 1, 1, 64000.10)),
                Step::Heartbeats(vec![(BTC, 1)]),
            ],
            vec![
                Step::Subscribe,
                Step::Send(ticker(BTC, 2, 2, 64000.20)),
                Step::Heartbeats(vec![(BTC, 2)]),
            ],
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "feed-token\n").unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let ingest = Ingest::start(
        &s,
        &server.url,
        &[
            "--control",
            &addr,
            "--control-token-file",
            token_file.to_str().unwrap(),
        ],
    );
    let produced = |ingest: &Ingest| {
        ingest.metric(&rt, "weir_ingest_produced_total{topic=\"tickers.crypto\"}")
    };
    let status = || control(&rt, &addr, true, "/status", Some("feed-token")).1;
    wait_until(
        Duration::from_secs(60),
        Duration::from_millis(100),
        || produced(&ingest) == 1.0 && status()["connected"] == true,
        || format!("status {}; log:\n{}", status(), ingest.log()),
    );
    assert_eq!(status()["state"], "running");

    // Refused without the token, or with another one, and nothing changes.
    for token in [None, Some("wrong")] {
        assert_eq!(
            control(&rt, &addr, false, "/stop", token).0,
            401,
            "{token:?}"
        );
        assert_eq!(
            control(&rt, &addr, true, "/status", token).0,
            401,
            "{token:?}"
        );
    }
    assert_eq!(status()["state"], "running");

    let (code, body) = control(&rt, &addr, false, "/stop", Some("feed-token"));
    assert_eq!(
        (code, &body),
        (200, &json!({"state": "stopped", "changed": true}))
    );
    wait_until(
        Duration::from_secs(10),
        Duration::from_millis(100),
        || status()["connected"] == false,
        || format!("still connected: {}", status()),
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(status()["state"], "stopped");
    assert_eq!(
        server.subscribes.lock().unwrap().len(),
        1,
        "not connected again"
    );
    assert_eq!(produced(&ingest), 1.0);

    let (code, body) = control(&rt, &addr, false, "/start", Some("feed-token"));
    assert_eq!(
        (code, &body),
        (200, &json!({"state": "running", "changed": true}))
    );
    wait_until(
        Duration::from_secs(30),
        Duration::from_millis(100),
        || produced(&ingest) == 2.0 && status()["connected"] == true,
        || format!("status {}; log:\n{}", status(), ingest.log()),
    );
    assert_eq!(server.subscribes.lock().unwrap().len(), 2);
    assert_eq!(status()["reconnects"], 0, "a stop is not a lost connection");
    ingest.stop();
    assert_eq!(messages_on_topic(&s, "tickers.crypto"), 2);
}
