//! `weir ingest coinbase` against a websocket server in the test that speaks the Coinbase
//! Exchange protocol, a real broker (tansu) and weir's registry: every distinct update is
//! exactly one message on tickers.crypto, through a dropped connection, a redelivery, a
//! malformed frame, a sequence gap and a feed gone silent.

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
    fn start(s: &Services, url: &str, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("ingest.log");
        let http = format!("127.0.0.1:{}", free_port());
        let child = Command::new(weir_bin())
            .args([
                "ingest",
                "coinbase",
                "--products",
                "BTC-USD,ETH-USD",
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

/// How many messages tickers.crypto holds: read from the beginning until 2 s pass quietly.
fn messages_on_topic(s: &Services) -> usize {
    let consumer: BaseConsumer = weir::source::kafka::client_config(&s.broker.bootstrap)
        .set("group.id", weir_tests::unique("feeds"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut list = rdkafka::TopicPartitionList::new();
    list.add_partition_offset("tickers.crypto", 0, rdkafka::Offset::Beginning)
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

fn tail(s: &Services, count: usize) -> Vec<Value> {
    let out = weir(&[
        "tail",
        "tickers.crypto",
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

    assert_eq!(messages_on_topic(&s), 7, "each update exactly once");
    let lines = tail(&s, 7);
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
    assert_eq!(messages_on_topic(&s), 2);
}
