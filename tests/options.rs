//! The options pipeline end to end: stock ticks → tansu → `weir run` (the tickers guest)
//! → `ticks_stocks`; then option trades → `weir run` (the options guest, pairing each
//! trade by lookup with the committed ticks) → `option_trades`, with `weir run` SIGKILLed
//! and restarted midway through the trades.
//!
//! The oracle is SQL over what was committed: each trade's underlying tick is the latest
//! `ticks_stocks` row of its underlying at or before its event time (ties to the later
//! offset); every good trade is one row (duplicates within and across runs dropped);
//! each hostile trade is one dead letter naming its rule and field; implied volatility
//! is the feed's where it gave one and otherwise reprices the trade (and recovers the
//! volatility the test priced it with), and delta is Black-Scholes's at it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use apache_avro::Schema;
use apache_avro::types::Value as Avro;
use apache_avro::writer::datum::GenericDatumWriter;
use options::model::{self, Right};
use serde_json::{Map, Value as Json, json};
use weir::registry::{RegisteredSchema, RegistryClient, frame_into};
use weir_tests::{
    Broker, GUEST_DIR, Registry, TestDb, free_port, kill9, query, repo_root, rt, wait_until,
    weir_bin,
};

const DAY_MS: i64 = 86_400_000;
const YEAR_MS: f64 = 365.25 * DAY_MS as f64;
const RATE: f64 = 0.045;

/// The lookups the options pipeline declares (as the guest's docs give them).
const UNDERLYING_SQL: &str = "SELECT event_id, event_time, price FROM ticks_stocks WHERE symbol = $1 AND event_time <= $2 ORDER BY event_time DESC, kafka_offset DESC LIMIT 1";
const RATE_SQL: &str = "SELECT rate FROM rates WHERE day <= $1 ORDER BY day DESC LIMIT 1";

fn count(url: &str, sql: &str) -> i64 {
    query(url, sql)[0].get::<_, i64>(0)
}

/// A tiny deterministic generator (xorshift), so a failure can be rerun.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// In [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// The OCC symbol of a contract.
fn occ(root: &str, expiry: i64, right: Right, strike: f64) -> String {
    let (y, m, d) = weir_guest::time::civil_from_days(expiry);
    let letter = if right == Right::Call { 'C' } else { 'P' };
    format!(
        "{root}{:02}{m:02}{d:02}{letter}{:08}",
        y % 100,
        (strike * 1000.0).round() as i64
    )
}

/// Avro of `schema` from JSON fields: what the options schema holds (its `date` field
/// too, which `weir ingest`'s encoder does not take), Confluent-framed with `id`.
fn encode(registered: &RegisteredSchema, record: &Map<String, Json>) -> Vec<u8> {
    fn value(schema: &Schema, v: &Json) -> Avro {
        match schema {
            Schema::Null => Avro::Null,
            Schema::String => Avro::String(v.as_str().expect("text").into()),
            Schema::Double => Avro::Double(v.as_f64().expect("number")),
            Schema::Long => Avro::Long(v.as_i64().expect("integer")),
            Schema::Int => Avro::Int(v.as_i64().expect("integer") as i32),
            Schema::Date => Avro::Date(v.as_i64().expect("days") as i32),
            Schema::TimestampMillis => Avro::TimestampMillis(v.as_i64().expect("millis")),
            Schema::Uuid(_) => Avro::Uuid(v.as_str().unwrap().parse().expect("a UUID")),
            Schema::Enum(e) => {
                let s = v.as_str().expect("a symbol");
                let i = e.symbols.iter().position(|x| x == s).expect("a symbol");
                Avro::Enum(i as u32, s.into())
            }
            Schema::Union(u) => {
                let variants = u.variants();
                if v.is_null() {
                    let i = variants.iter().position(|s| *s == Schema::Null).unwrap();
                    Avro::Union(i as u32, Box::new(Avro::Null))
                } else {
                    let i = variants.iter().position(|s| *s != Schema::Null).unwrap();
                    Avro::Union(i as u32, Box::new(value(&variants[i], v)))
                }
            }
            other => panic!("no test encoding for {other:?}"),
        }
    }
    let Schema::Record(rs) = &registered.schema else {
        panic!("a record schema")
    };
    let fields = rs
        .fields
        .iter()
        .map(|f| {
            let v = record.get(&f.name).cloned().unwrap_or(Json::Null);
            (f.name.clone(), value(&f.schema, &v))
        })
        .collect();
    let body = GenericDatumWriter::builder(&registered.schema)
        .build()
        .unwrap()
        .write_value_to_vec(Avro::Record(fields))
        .unwrap();
    let mut out = Vec::new();
    frame_into(registered.id, &body, &mut out);
    out
}

/// A version of the options schema edited by `edit`, registered under the topic's
/// subject (compatibility NONE, as a producer with a lax registry would).
fn odd_schema(registry: &RegistryClient, edit: impl Fn(&mut Json)) -> RegisteredSchema {
    let text = std::fs::read_to_string(repo_root().join("schemas/tickers.options.avsc")).unwrap();
    let mut schema: Json = serde_json::from_str(&text).unwrap();
    edit(&mut schema);
    let text = schema.to_string();
    let id = rt().block_on(async {
        let set = reqwest::Client::new()
            .put(format!("{}/config/tickers.options-value", registry.url()))
            .json(&json!({"compatibility": "NONE"}))
            .send()
            .await
            .unwrap();
        assert!(set.status().is_success());
        registry
            .register("tickers.options-value", &text)
            .await
            .unwrap()
    });
    RegisteredSchema {
        id,
        schema: Schema::parse_str(&text).unwrap(),
        text,
    }
}

fn field_mut<'a>(schema: &'a mut Json, name: &str) -> &'a mut Map<String, Json> {
    schema["fields"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|f| f["name"] == name)
        .unwrap()
        .as_object_mut()
        .unwrap()
}

/// A stock tick: symbol, event time (ms), price, event id.
#[derive(Clone)]
struct Tick {
    symbol: &'static str,
    at: i64,
    price: f64,
    id: String,
}

impl Tick {
    fn record(&self, ingested: i64) -> Map<String, Json> {
        let Json::Object(t) = json!({
            "id": self.symbol, "exchange": "NMS", "quote_type": "EQUITY",
            "market_hours": "REGULAR_MARKET", "currency": "USD", "price": self.price,
            "change": 0.5, "change_percent": 0.2, "day_volume": 1000, "last_size": 10.0,
            "bid": self.price - 0.01, "ask": self.price + 0.01, "price_hint": 2,
            "event_time": self.at, "event_id": self.id, "ingestion_time": ingested,
            "source": "options-test",
        }) else {
            unreachable!()
        };
        t
    }
}

/// A good trade and what the test expects of its row. Trades are priced with
/// Black-Scholes, so they are European: their floor is the discounted intrinsic value.
#[derive(Clone)]
struct Trade {
    record: Map<String, Json>,
    id: String,
    right: Right,
    /// The underlying's price it is expected to pair with.
    spot: f64,
    /// The volatility it was priced with.
    sigma: f64,
    /// Whether the feed gave `implied_volatility`.
    feed_iv: bool,
    /// Time to expiry in years.
    years: f64,
}

#[allow(clippy::too_many_arguments)]
fn trade_record(
    underlying: &str,
    expiry: i64,
    right: Right,
    strike: f64,
    price: f64,
    at: i64,
    ingested: i64,
    iv: Option<f64>,
) -> Map<String, Json> {
    let Json::Object(t) = json!({
        "id": occ(underlying, expiry, right, strike), "underlying": underlying,
        "expiry": expiry, "strike": strike, "option_type": right.name(), "style": "EUROPEAN",
        "exchange": "OPRA", "currency": "USD", "price": price,
        "bid": (price - 0.05).max(0.0), "ask": price + 0.05, "last_size": 2.0,
        "volume": 1500, "open_interest": 42_000, "implied_volatility": iv,
        "event_time": at, "event_id": uuid::Uuid::new_v4().to_string(),
        "ingestion_time": ingested, "source": "options-test",
    }) else {
        unreachable!()
    };
    t
}

/// The services and the `weir run` processes of the test.
struct Setup {
    dir: tempfile::TempDir,
    db: TestDb,
    registry: Registry,
    broker: Broker,
    group: String,
    runs: usize,
}

impl Setup {
    fn start() -> Self {
        let db = TestDb::new();
        let registry = Registry::start(&db.url());
        let broker = Broker::start();
        registry.push_schemas();
        rt().block_on(weir::source::kafka::ensure_topics(
            &broker.bootstrap,
            &["tickers.stocks".to_string(), "tickers.options".to_string()],
            2,
        ))
        .unwrap();
        let setup = Self {
            dir: tempfile::tempdir().unwrap(),
            db,
            registry,
            broker,
            group: weir_tests::unique("options"),
            runs: 0,
        };
        setup.write_config();
        setup
    }

    fn url(&self) -> String {
        self.db.url()
    }

    /// A stocks pipeline as tests/demo/weir.yaml has it, and the options pipeline.
    fn write_config(&self) {
        let config = format!(
            r#"kafka:
  brokers: "{brokers}"
  group_id: "{group}"
  properties:
    session.timeout.ms: "6000"
    heartbeat.interval.ms: "1000"
registry:
  url: "{registry}"
database:
  url: "{db}"
  migrations: "{migrations}"
http:
  listen: "127.0.0.1:{http}"
guests:
  dir: "{guests}"
pipelines:
  - name: stocks
    topic: tickers.stocks
    guest: tickers.wasm
    batch: {{size: 100, linger: 50ms}}
    config:
      asset_class: stocks
    tables: [ticks_stocks, candles]
    version_column: guest_version
    dedup: {{key: event_id, retention: 7d}}
  - name: options
    topic: tickers.options
    guest: options.wasm
    batch: {{size: 16, linger: 50ms}}
    config:
      max_underlying_age: 1m
    lookups:
      underlying: "{underlying}"
      rate: "{rate}"
    tables: [option_trades]
    version_column: guest_version
    dedup: {{key: event_id, retention: 7d}}
"#,
            brokers = self.broker.bootstrap,
            group = self.group,
            registry = self.registry.url,
            db = self.url(),
            migrations = repo_root().join("schemas/postgres").display(),
            http = free_port(),
            guests = GUEST_DIR,
            underlying = UNDERLYING_SQL,
            rate = RATE_SQL,
        );
        std::fs::write(self.dir.path().join("weir.yaml"), config).unwrap();
    }

    fn spawn(&mut self) -> Child {
        self.runs += 1;
        let log =
            std::fs::File::create(self.dir.path().join(format!("run-{}.log", self.runs))).unwrap();
        Command::new(weir_bin())
            .args(["run", "--config"])
            .arg(self.dir.path().join("weir.yaml"))
            .env("WEIR_LOG", "info,rdkafka=warn")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start weir run")
    }

    fn logs(&self) -> String {
        let mut all = String::new();
        for n in 1..=self.runs {
            let text = std::fs::read_to_string(self.dir.path().join(format!("run-{n}.log")))
                .unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            all.push_str(&format!("--- run {n}\n"));
            for l in &lines[lines.len().saturating_sub(30)..] {
                all.push_str(l);
                all.push('\n');
            }
        }
        all
    }

    /// Sends `(topic, key, payload)` and waits for the deliveries.
    fn send(&self, registry: &RegistryClient, messages: &[(&str, String, Vec<u8>)]) {
        rt().block_on(async {
            let mut producer = weir::ingest::Producer::connect(
                &self.broker.bootstrap,
                registry,
                &["tickers.stocks".to_string()],
            )
            .await
            .unwrap();
            for (topic, key, payload) in messages {
                producer.send_bytes(topic, key, payload).await.unwrap();
            }
            producer.finish().await.unwrap();
        });
    }

    /// Waits until the group has committed `messages` messages, failing if `run` exits.
    fn wait_committed(&self, messages: i64, run: &mut Child) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let done = weir_tests::committed_offsets(&self.url(), &self.group);
            if done >= messages {
                assert_eq!(done, messages, "more committed than produced");
                return;
            }
            if let Ok(Some(status)) = run.try_wait() {
                panic!("weir run exited with {status}; logs:\n{}", self.logs());
            }
            assert!(
                Instant::now() < deadline,
                "{done} of {messages} messages committed; logs:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

#[test]
fn option_trades_pair_with_the_committed_ticks_through_duplicates_hostile_input_and_a_sigkill() {
    let mut s = Setup::start();
    let url = s.url();
    let registry = RegistryClient::new(&s.registry.url).unwrap();
    let stocks = rt()
        .block_on(registry.latest("tickers.stocks-value"))
        .unwrap();
    let options = rt()
        .block_on(registry.latest("tickers.options-value"))
        .unwrap();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);

    let now = weir::ingest::now_ms();
    let base = (now / 1000 - 600) * 1000;
    let today = base.div_euclid(DAY_MS);

    // Stock ticks: every 2 s for 4 minutes per symbol, on a small random walk; one pair
    // with the same event time (the later offset wins); produced a little out of order,
    // a tenth of them after all the others (late), and one twice.
    let mut ticks: Vec<Tick> = Vec::new();
    for (symbol, open) in [("AAPL", 190.0), ("MSFT", 410.0)] {
        let mut price: f64 = open;
        for i in 0..=120 {
            price *= 1.0 + 0.002 * (rng.unit() - 0.5);
            ticks.push(Tick {
                symbol,
                at: base + i * 2_000,
                price: (price * 100.0).round() / 100.0,
                id: uuid::Uuid::new_v4().to_string(),
            });
        }
    }
    let tie = Tick {
        symbol: "AAPL",
        at: base + 100_000,
        price: 191.37,
        id: uuid::Uuid::new_v4().to_string(),
    };
    let mut order: Vec<Tick> = ticks.clone();
    for w in order.chunks_mut(5) {
        w.reverse();
    }
    let mut late = Vec::new();
    let mut i = 0;
    order.retain(|t| {
        i += 1;
        let keep = i % 10 != 3 || t.at == tie.at;
        if !keep {
            late.push(t.clone());
        }
        keep
    });
    order.extend(late);
    // The tie goes after the tick it ties with, so it has the higher offset.
    order.push(tie.clone());
    let dup = ticks[17].clone();
    order.push(dup);
    ticks.push(tie);
    let stock_messages: Vec<(&str, String, Vec<u8>)> = order
        .iter()
        .map(|t| {
            (
                "tickers.stocks",
                t.symbol.to_string(),
                weir::ingest::encode::Encoder::new(&stocks)
                    .unwrap()
                    .encode(&t.record(now))
                    .unwrap(),
            )
        })
        .collect();

    let mut run = s.spawn();
    s.send(&registry, &stock_messages);
    s.wait_committed(stock_messages.len() as i64, &mut run);
    let unique_ticks = ticks.len() as i64;
    assert_eq!(
        count(&url, "SELECT count(*) FROM ticks_stocks"),
        unique_ticks
    );

    // The price a trade at `at` pairs with: the latest tick at or before it, the later
    // produced (the higher offset: a symbol is one key, so one partition) among ties.
    let spot = |symbol: &str, at: i64| -> f64 {
        let mut best: Option<&Tick> = None;
        for t in &ticks {
            if t.symbol == symbol && t.at <= at && best.is_none_or(|b| t.at >= b.at) {
                best = Some(t);
            }
        }
        best.expect("a tick before the trade").price
    };

    // Good trades: two underlyings, two expiries, three strikes, calls and puts, at
    // random times within the ticks (every tenth exactly at a tick's time), priced with
    // Black-Scholes at the price they should pair with; the feed gives the volatility of
    // every third.
    let expiries = [today + 30, today + 58];
    let mut good: Vec<Trade> = Vec::new();
    for n in 0..160 {
        let (symbol, strikes, open) = if rng.below(2) == 0 {
            ("AAPL", [180.0, 190.0, 200.0], 190.0)
        } else {
            ("MSFT", [390.0, 410.0, 430.0], 410.0)
        };
        let e = rng.below(2);
        let expiry = expiries[e];
        let strike = strikes[rng.below(3)];
        let right = if rng.below(2) == 0 {
            Right::Call
        } else {
            Right::Put
        };
        let at = if n % 10 == 0 {
            base + 2_000 * (1 + rng.below(119) as i64)
        } else {
            base + 1_000 + (rng.unit() * 238_000.0) as i64
        };
        let s0 = spot(symbol, at);
        let sigma = 0.22 + 0.3 * (strike / open - 1.0f64).powi(2) + 0.02 * e as f64;
        let years = ((expiry * DAY_MS + 20 * 3_600_000) - at) as f64 / YEAR_MS;
        let price = model::price(right, s0, strike, years, RATE, sigma);
        let feed_iv = n % 3 == 0;
        let record = trade_record(
            symbol,
            expiry,
            right,
            strike,
            price,
            at,
            now,
            feed_iv.then_some(sigma),
        );
        good.push(Trade {
            id: record["event_id"].as_str().unwrap().to_string(),
            record,
            right,
            spot: s0,
            sigma,
            feed_iv,
            years,
        });
    }
    // A trade at the underlying's price: a call worth no more than the stock has no
    // Black-Scholes volatility; it is kept, with none.
    let uncomputable_record = {
        let at = base + 61_000;
        let s0 = spot("AAPL", at);
        trade_record("AAPL", expiries[0], Right::Call, 180.0, s0, at, now, None)
    };
    let uncomputable = uncomputable_record["event_id"]
        .as_str()
        .unwrap()
        .to_string();

    // One hostile trade per rule, each from a good one (AAPL, the first expiry, the 190
    // call at base + 50 s), encoded with the options schema or, for what it cannot carry,
    // an odd one.
    let no_strike = odd_schema(&registry, |s| {
        s["fields"]
            .as_array_mut()
            .unwrap()
            .retain(|f| f["name"] != "strike");
    });
    let text_price = odd_schema(&registry, |s| {
        field_mut(s, "price").insert("type".into(), json!("string"));
    });
    let plain_id = odd_schema(&registry, |s| {
        field_mut(s, "event_id").insert("type".into(), json!("string"));
    });
    let at = base + 50_000;
    let template = {
        let years = ((expiries[0] * DAY_MS + 20 * 3_600_000) - at) as f64 / YEAR_MS;
        let price = model::price(Right::Call, spot("AAPL", at), 190.0, years, RATE, 0.25);
        trade_record(
            "AAPL",
            expiries[0],
            Right::Call,
            190.0,
            price,
            at,
            now,
            None,
        )
    };
    let with = |edit: &dyn Fn(&mut Map<String, Json>)| {
        let mut t = template.clone();
        t.insert("event_id".into(), json!(uuid::Uuid::new_v4().to_string()));
        edit(&mut t);
        t
    };
    let set = |t: &mut Map<String, Json>, k: &str, v: Json| {
        t.insert(k.into(), v);
    };
    let yesterday = today - 1;
    let hostile: Vec<(&str, &str, &RegisteredSchema, Map<String, Json>)> = vec![
        ("required", "strike", &no_strike, with(&|_| {})),
        (
            "type",
            "price",
            &text_price,
            with(&|t| set(t, "price", json!("6.5"))),
        ),
        (
            "text_valid",
            "exchange",
            &options,
            with(&|t| set(t, "exchange", json!("OP\u{0}RA"))),
        ),
        (
            "event_id_uuid",
            "event_id",
            &plain_id,
            with(&|t| set(t, "event_id", json!("trade-42"))),
        ),
        (
            "option_type",
            "option_type",
            &options,
            with(&|t| set(t, "option_type", json!("UNKNOWN"))),
        ),
        (
            "underlying_format",
            "underlying",
            &options,
            with(&|t| set(t, "underlying", json!("aapl"))),
        ),
        (
            "contract_format",
            "id",
            &options,
            with(&|t| set(t, "id", json!("AAPL-JUNE-190-CALL"))),
        ),
        (
            "contract_matches",
            "strike",
            &options,
            with(&|t| set(t, "strike", json!(195.0))),
        ),
        (
            "price_positive",
            "price",
            &options,
            with(&|t| {
                set(t, "price", json!(-1.0));
                set(t, "bid", Json::Null);
            }),
        ),
        (
            "strike_positive",
            "strike",
            &options,
            with(&|t| {
                set(t, "strike", json!(0.0));
                set(t, "id", json!(occ("AAPL", expiries[0], Right::Call, 0.0)));
            }),
        ),
        (
            "bid_non_negative",
            "bid",
            &options,
            with(&|t| set(t, "bid", json!(-0.5))),
        ),
        (
            "ask_positive",
            "ask",
            &options,
            with(&|t| {
                set(t, "bid", Json::Null);
                set(t, "ask", json!(0.0));
            }),
        ),
        (
            "bid_le_ask",
            "bid",
            &options,
            with(&|t| {
                set(t, "bid", json!(9.0));
                set(t, "ask", json!(8.0));
            }),
        ),
        (
            "last_size_non_negative",
            "last_size",
            &options,
            with(&|t| set(t, "last_size", json!(-2.0))),
        ),
        (
            "volume_non_negative",
            "volume",
            &options,
            with(&|t| set(t, "volume", json!(-1))),
        ),
        (
            "open_interest_non_negative",
            "open_interest",
            &options,
            with(&|t| set(t, "open_interest", json!(-5))),
        ),
        (
            "implied_volatility_positive",
            "implied_volatility",
            &options,
            with(&|t| set(t, "implied_volatility", json!(-0.2))),
        ),
        (
            "time_range",
            "event_time",
            &options,
            // 10000-01-01T00:00:00Z.
            with(&|t| set(t, "event_time", json!(253_402_300_800_000_i64))),
        ),
        (
            "max_future_skew",
            "event_time",
            &options,
            with(&|t| set(t, "event_time", json!(now + 60_000))),
        ),
        (
            "max_lateness",
            "event_time",
            &options,
            with(&|t| set(t, "event_time", json!(now - 2 * 3_600_000))),
        ),
        (
            "time_to_expiry",
            "event_time",
            &options,
            with(&|t| {
                set(t, "expiry", json!(yesterday));
                set(t, "id", json!(occ("AAPL", yesterday, Right::Call, 190.0)));
            }),
        ),
        (
            "underlying_missing",
            "underlying",
            &options,
            with(&|t| {
                set(t, "underlying", json!("NVDA"));
                set(t, "id", json!(occ("NVDA", expiries[0], Right::Call, 190.0)));
            }),
        ),
        (
            "underlying_age",
            "underlying",
            &options,
            // 90 s after the last tick (at base + 240 s); max_underlying_age is 1m.
            with(&|t| set(t, "event_time", json!(base + 330_000))),
        ),
        (
            "price_below_intrinsic",
            "price",
            &options,
            with(&|t| {
                set(t, "strike", json!(180.0));
                set(t, "id", json!(occ("AAPL", expiries[0], Right::Call, 180.0)));
                set(t, "price", json!(1.0));
                set(t, "bid", json!(0.95));
                set(t, "ask", json!(1.05));
            }),
        ),
    ];

    // Sent out of order (shuffled), each hostile one among them, ten good ones twice; the
    // first half, then a SIGKILL once some are written, then the second half (with copies
    // of the first half's) and a restart.
    let mut messages: Vec<(&str, String, Vec<u8>)> = Vec::new();
    let mut hostile_payloads: Vec<(&str, &str, Vec<u8>)> = Vec::new();
    for t in &good {
        let key = t.record["underlying"].as_str().unwrap().to_string();
        messages.push(("tickers.options", key, encode(&options, &t.record)));
    }
    messages.push((
        "tickers.options",
        "AAPL".into(),
        encode(&options, &uncomputable_record),
    ));
    for i in (0..messages.len()).rev() {
        let j = rng.below(i + 1);
        messages.swap(i, j);
    }
    for (k, (rule, field, schema, record)) in hostile.iter().enumerate() {
        let payload = encode(schema, record);
        hostile_payloads.push((rule, field, payload.clone()));
        let key = record["underlying"].as_str().unwrap().to_string();
        messages.insert(k * 7 + 3, ("tickers.options", key, payload));
    }
    let half = messages.len() / 2;
    let mut first: Vec<_> = messages[..half].to_vec();
    let mut second: Vec<_> = messages[half..].to_vec();
    for i in 0..5 {
        // Within the same half, and across the kill.
        first.push(first[i * 3].clone());
        second.push(first[i * 5 + 1].clone());
    }
    // A hostile duplicate is dropped by event_id too (host dedup), not a second dead
    // letter: keep the copies good.
    let is_hostile = |p: &Vec<u8>| hostile_payloads.iter().any(|h| &h.2 == p);
    first.retain({
        let mut seen = BTreeSet::new();
        move |m| !is_hostile(&m.2) || seen.insert(m.2.clone())
    });
    let mut seen_hostile = BTreeSet::new();
    for m in first.iter().filter(|m| is_hostile(&m.2)) {
        seen_hostile.insert(m.2.clone());
    }
    second.retain(|m| !is_hostile(&m.2) || !seen_hostile.contains(&m.2));

    let tick_rows_before = count(&url, "SELECT count(*) FROM ticks_stocks");
    s.send(&registry, &first);
    wait_until(
        Duration::from_secs(60),
        Duration::from_millis(50),
        || query(&url, "SELECT count(*) FROM option_trades")[0].get::<_, i64>(0) > 0,
        || format!("no option trade written; logs:\n{}", s.logs()),
    );
    kill9(&mut run);
    let at_kill = count(&url, "SELECT count(*) FROM option_trades");
    eprintln!(
        "SIGKILL at {at_kill} option rows of {} good",
        good.len() + 1
    );
    s.send(&registry, &second);
    run = s.spawn();
    let total = (stock_messages.len() + first.len() + second.len()) as i64;
    s.wait_committed(total, &mut run);
    std::thread::sleep(Duration::from_millis(500));
    kill9(&mut run);
    assert_eq!(
        count(&url, "SELECT count(*) FROM ticks_stocks"),
        tick_rows_before,
        "no stock tick was written twice"
    );

    // Every row's underlying tick is the latest at or before its event time, by the
    // table's own tie-break.
    let mispaired: Vec<String> = query(
        &url,
        "SELECT o.event_id::text || ': ' || o.underlying_event_id::text || ' vs ' || coalesce(t.event_id::text, 'none')
           FROM option_trades o
           LEFT JOIN LATERAL (
                SELECT event_id, event_time, price FROM ticks_stocks s
                 WHERE s.symbol = o.underlying AND s.event_time <= o.event_time
                 ORDER BY s.event_time DESC, s.kafka_offset DESC LIMIT 1) t ON true
          WHERE t.event_id IS DISTINCT FROM o.underlying_event_id
             OR t.price IS DISTINCT FROM o.underlying_price
             OR t.event_time IS DISTINCT FROM o.underlying_event_time
             OR o.underlying_age_ms <> (extract(epoch FROM o.event_time - t.event_time) * 1000)::bigint
          LIMIT 10",
    )
    .iter()
    .map(|r| r.get(0))
    .collect();
    assert!(mispaired.is_empty(), "mispaired: {mispaired:?}");

    // Every good trade is one row; nothing else is.
    let ids: BTreeSet<String> = query(&url, "SELECT event_id::text FROM option_trades")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut want: BTreeSet<String> = good.iter().map(|t| t.id.clone()).collect();
    want.insert(uncomputable.clone());
    assert_eq!(
        count(&url, "SELECT count(*) FROM option_trades"),
        want.len() as i64
    );
    assert_eq!(ids, want, "one row per good trade");

    // Each hostile trade: one dead letter of stage guest naming its rule and field.
    let dead = query(
        &url,
        "SELECT error, value, stage, topic FROM dead_letters ORDER BY id",
    );
    assert_eq!(
        dead.len(),
        hostile.len(),
        "one dead letter per rule: {:?}",
        dead.iter()
            .map(|r| r.get::<_, String>(0))
            .collect::<Vec<_>>()
    );
    for (rule, field, payload) in &hostile_payloads {
        let row = dead
            .iter()
            .find(|r| r.get::<_, Option<Vec<u8>>>(1).as_deref() == Some(payload.as_slice()))
            .unwrap_or_else(|| panic!("no dead letter for the {rule} trade"));
        let error: String = row.get(0);
        assert!(
            error.contains(&format!("rule {rule}: field {field} ")),
            "the {rule} dead letter says {error:?}"
        );
        assert_eq!(row.get::<_, String>(2), "guest", "{rule}");
        assert_eq!(row.get::<_, String>(3), "tickers.options", "{rule}");
    }

    // Volatility and delta: the feed's where given; else one that reprices the trade and
    // is the volatility it was priced with.
    let rows = query(
        &url,
        "SELECT event_id::text, price, strike, underlying_price, rate, time_to_expiry,
                implied_volatility, iv_source, delta, moneyness, guest_version
           FROM option_trades",
    );
    let by_id: HashMap<&str, &Trade> = good.iter().map(|t| (t.id.as_str(), t)).collect();
    let mut sources: BTreeMap<String, usize> = BTreeMap::new();
    for r in &rows {
        let id: String = r.get(0);
        let (price, strike, s0, rate, years): (f64, f64, f64, f64, f64) =
            (r.get(1), r.get(2), r.get(3), r.get(4), r.get(5));
        let iv: Option<f64> = r.get(6);
        let source: String = r.get(7);
        let delta: Option<f64> = r.get(8);
        let moneyness: f64 = r.get(9);
        assert!(
            r.get::<_, Option<String>>(10).is_some(),
            "{id}: guest_version"
        );
        *sources.entry(source.clone()).or_default() += 1;
        assert_eq!(rate, RATE, "{id}: the default rate");
        assert!((moneyness - s0 / strike).abs() < 1e-12, "{id}: moneyness");
        if id == uncomputable {
            assert_eq!((iv, source.as_str(), delta), (None, "none", None), "{id}");
            continue;
        }
        let t = by_id[id.as_str()];
        assert_eq!(s0, t.spot, "{id}: the underlying price it was priced at");
        assert!((years - t.years).abs() < 1e-12, "{id}: time to expiry");
        let iv = iv.unwrap_or_else(|| panic!("{id}: no implied volatility"));
        if t.feed_iv {
            assert_eq!((iv, source.as_str()), (t.sigma, "feed"), "{id}");
        } else {
            assert_eq!(source, "computed", "{id}");
            assert!((iv - t.sigma).abs() < 1e-4, "{id}: {iv} vs {}", t.sigma);
            let back = model::price(t.right, s0, strike, years, rate, iv);
            assert!(
                (back - price).abs() < 1e-6,
                "{id}: reprices to {back}, not {price}"
            );
        }
        let want = model::delta(t.right, s0, strike, years, rate, iv);
        let delta = delta.unwrap_or_else(|| panic!("{id}: no delta"));
        assert!((delta - want).abs() < 1e-9, "{id}: delta {delta} vs {want}");
        match t.right {
            Right::Call => assert!(delta > 0.0 && delta < 1.0, "{id}: {delta}"),
            Right::Put => assert!(delta < 0.0 && delta > -1.0, "{id}: {delta}"),
        }
    }
    assert!(
        sources["feed"] > 0 && sources["computed"] > 0,
        "{sources:?}"
    );

    // The views: the chain is each contract's latest trade; the smile its calls' and
    // puts' volatilities per strike.
    let chain_diff = count(
        &url,
        "WITH ranked AS (
             SELECT *, row_number() OVER (
                 PARTITION BY underlying, expiry, strike, option_type
                 ORDER BY event_time DESC, kafka_partition DESC, kafka_offset DESC) AS n
               FROM option_trades),
         latest AS (SELECT underlying, expiry, strike, option_type, event_id, price,
                           implied_volatility, delta FROM ranked WHERE n = 1),
         chain AS (SELECT underlying, expiry, strike, option_type, event_id, price,
                          implied_volatility, delta FROM option_chain)
         SELECT count(*) FROM ((SELECT * FROM latest EXCEPT SELECT * FROM chain)
                               UNION ALL (SELECT * FROM chain EXCEPT SELECT * FROM latest)) d",
    );
    assert_eq!(
        chain_diff, 0,
        "option_chain is the latest trade per contract"
    );
    let contracts = count(
        &url,
        "SELECT count(DISTINCT (underlying, expiry, strike, option_type)) FROM option_trades",
    );
    assert_eq!(count(&url, "SELECT count(*) FROM option_chain"), contracts);
    let smile_diff = count(
        &url,
        "SELECT count(*) FROM option_smile s
          WHERE s.call_iv IS DISTINCT FROM (SELECT implied_volatility FROM option_chain c
                  WHERE (c.underlying, c.expiry, c.strike, c.option_type) = (s.underlying, s.expiry, s.strike, 'CALL'))
             OR s.put_iv IS DISTINCT FROM (SELECT implied_volatility FROM option_chain c
                  WHERE (c.underlying, c.expiry, c.strike, c.option_type) = (s.underlying, s.expiry, s.strike, 'PUT'))",
    );
    assert_eq!(smile_diff, 0, "option_smile has the chain's volatilities");
    assert_eq!(
        count(&url, "SELECT count(*) FROM option_smile"),
        count(
            &url,
            "SELECT count(DISTINCT (underlying, expiry, strike)) FROM option_trades"
        )
    );
}
