//! The Coinbase Exchange public websocket feed (`wss://ws-feed.exchange.coinbase.com`):
//! `ticker` and `heartbeat` channels, each ticker one tick on `tickers.crypto`.
//!
//! Read through [`run`](super::feed::run) (reconnects, the stale-feed watchdog, redeliveries dropped
//! by event id, malformed frames skipped). An update keeps its event id (derived from
//! product and trade id) across redeliveries. Jumps in a product's `sequence` are counted
//! and logged.

use std::collections::HashMap;

use serde_json::{Map, Value as Json, json};

use super::feed::{self, FeedMetrics, Protocol, Tick};

/// The topic Coinbase ticks go to.
pub const TOPIC: &str = "tickers.crypto";
/// The production feed.
pub const DEFAULT_URL: &str = "wss://ws-feed.exchange.coinbase.com";
/// The `source` field of every tick.
pub const SOURCE: &str = "coinbase";

/// The subscribe message for `products`.
pub fn subscribe_message(products: &[String]) -> String {
    json!({
        "type": "subscribe",
        "product_ids": products,
        "channels": ["ticker", "heartbeat"],
    })
    .to_string()
}

/// A frame of the feed, read.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// A ticker, as a `tickers.crypto` record, with its product's sequence number.
    Ticker {
        /// `product_id`.
        product: String,
        /// `sequence`, if given.
        sequence: Option<u64>,
        /// The tick.
        record: Map<String, Json>,
    },
    /// A heartbeat of `product`.
    Heartbeat {
        /// `product_id`.
        product: String,
        /// `sequence`, if given.
        sequence: Option<u64>,
    },
    /// The feed's acknowledgement of a subscription.
    Subscriptions,
    /// An error the feed reports (`{"type":"error","message":…}`).
    Error(String),
    /// A message type this reader does not use.
    Other(String),
}

/// The event id of `product`'s trade `trade_id`: the same for every delivery of it.
pub fn event_id(product: &str, trade_id: u64) -> uuid::Uuid {
    feed::event_id(&[
        b"coinbase/",
        product.as_bytes(),
        b"/",
        trade_id.to_string().as_bytes(),
    ])
}

fn string<'a>(m: &'a Map<String, Json>, field: &str) -> Result<&'a str, String> {
    match m.get(field) {
        Some(Json::String(s)) => Ok(s),
        Some(other) => Err(format!("field `{field}`: expected a string, found {other}")),
        None => Err(format!("field `{field}` is missing")),
    }
}

/// A decimal the feed sends as a string (`"64012.55"`), or as a number.
fn decimal(m: &Map<String, Json>, field: &str) -> Result<Option<f64>, String> {
    let v = match m.get(field) {
        None | Some(Json::Null) => return Ok(None),
        Some(Json::String(s)) => s
            .trim()
            .parse::<f64>()
            .map_err(|_| format!("field `{field}`: expected a decimal, found {s:?}"))?,
        Some(Json::Number(n)) => n.as_f64().unwrap_or(f64::NAN),
        Some(other) => {
            return Err(format!(
                "field `{field}`: expected a decimal, found {other}"
            ));
        }
    };
    if !v.is_finite() {
        return Err(format!("field `{field}`: not a finite number"));
    }
    Ok(Some(v))
}

fn required(m: &Map<String, Json>, field: &str) -> Result<f64, String> {
    decimal(m, field)?.ok_or_else(|| format!("field `{field}` is missing"))
}

fn integer(m: &Map<String, Json>, field: &str) -> Result<Option<u64>, String> {
    match m.get(field) {
        None | Some(Json::Null) => Ok(None),
        Some(Json::Number(n)) => n
            .as_u64()
            .map(Some)
            .ok_or_else(|| format!("field `{field}`: expected a whole number, found {n}")),
        Some(Json::String(s)) => s
            .parse::<u64>()
            .map(Some)
            .map_err(|_| format!("field `{field}`: expected a whole number, found {s:?}")),
        Some(other) => Err(format!(
            "field `{field}`: expected a whole number, found {other}"
        )),
    }
}

/// Reads one text frame; `ingestion_ms` is when it arrived.
pub fn parse(text: &str, ingestion_ms: i64) -> Result<Frame, String> {
    let value: Json = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let Json::Object(m) = value else {
        return Err("not a JSON object".into());
    };
    let kind = string(&m, "type")?;
    match kind {
        "ticker" => ticker(&m, ingestion_ms),
        "heartbeat" => Ok(Frame::Heartbeat {
            product: string(&m, "product_id")?.to_string(),
            sequence: integer(&m, "sequence")?,
        }),
        "subscriptions" => Ok(Frame::Subscriptions),
        "error" => Ok(Frame::Error(format!(
            "{}{}",
            m.get("message")
                .and_then(Json::as_str)
                .unwrap_or("(no message)"),
            m.get("reason")
                .and_then(Json::as_str)
                .map(|r| format!(": {r}"))
                .unwrap_or_default()
        ))),
        other => Ok(Frame::Other(other.to_string())),
    }
}

fn ticker(m: &Map<String, Json>, ingestion_ms: i64) -> Result<Frame, String> {
    let product = string(m, "product_id")?;
    let trade_id =
        integer(m, "trade_id")?.ok_or_else(|| "field `trade_id` is missing".to_string())?;
    let time = string(m, "time")?;
    let event_ms = humantime::parse_rfc3339_weak(time)
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as i64)
        .ok_or_else(|| format!("field `time`: expected an RFC 3339 time, found {time:?}"))?;
    let price = required(m, "price")?;
    let bid = required(m, "best_bid")?;
    let ask = required(m, "best_ask")?;
    let open = decimal(m, "open_24h")?.filter(|o| *o > 0.0);
    let volume = decimal(m, "volume_24h")?;
    let last_size = decimal(m, "last_size")?;
    let currency = product.rsplit_once('-').map(|(_, q)| q.to_string());
    let change = open.map(|o| price - o);

    let mut r = Map::new();
    r.insert("id".into(), json!(product));
    r.insert("exchange".into(), json!("COINBASE"));
    r.insert("quote_type".into(), json!("CRYPTOCURRENCY"));
    r.insert("market_hours".into(), json!("REGULAR_MARKET"));
    r.insert("currency".into(), json!(currency));
    r.insert("price".into(), json!(price));
    r.insert("change".into(), json!(change));
    r.insert(
        "change_percent".into(),
        json!(open.zip(change).map(|(o, c)| c / o * 100.0)),
    );
    r.insert("day_volume".into(), json!(volume.map(|v| v.round() as i64)));
    r.insert("last_size".into(), json!(last_size));
    r.insert("bid".into(), json!(bid));
    r.insert("ask".into(), json!(ask));
    r.insert("event_time".into(), json!(event_ms));
    r.insert(
        "event_id".into(),
        json!(event_id(product, trade_id).to_string()),
    );
    r.insert("ingestion_time".into(), json!(ingestion_ms));
    r.insert("source".into(), json!(SOURCE));
    Ok(Frame::Ticker {
        product: product.to_string(),
        sequence: integer(m, "sequence")?,
        record: r,
    })
}

/// The Coinbase protocol for [`run`](super::feed::run): its subscription, and each ticker one tick,
/// with the jumps in each product's `sequence` counted.
pub struct Coinbase {
    products: Vec<String>,
    /// The last sequence number seen per product.
    sequences: HashMap<String, u64>,
}

impl Coinbase {
    /// Reading `products`.
    pub fn new(products: Vec<String>) -> Self {
        Self {
            products,
            sequences: HashMap::new(),
        }
    }

    fn sequence(&mut self, product: &str, sequence: Option<u64>, metrics: &FeedMetrics) {
        let Some(seq) = sequence else { return };
        let Some(last) = self.sequences.get_mut(product) else {
            self.sequences.insert(product.to_string(), seq);
            return;
        };
        if seq > *last + 1 {
            let gaps = metrics.sequence_gap();
            // Logged, but not without end on a feed that skips a lot.
            if gaps <= 10 || gaps.is_power_of_two() {
                tracing::warn!(
                    product,
                    expected = *last + 1,
                    got = seq,
                    missing = seq - *last - 1,
                    gaps_so_far = gaps,
                    "Sequence gap"
                );
            }
        }
        *last = (*last).max(seq);
    }
}

impl Protocol for Coinbase {
    fn subscribe(&self) -> String {
        subscribe_message(&self.products)
    }

    fn read(
        &mut self,
        text: &str,
        ingestion_ms: i64,
        metrics: &FeedMetrics,
    ) -> Result<Vec<Tick>, String> {
        Ok(match parse(text, ingestion_ms)? {
            Frame::Ticker {
                product,
                sequence,
                record,
            } => {
                self.sequence(&product, sequence, metrics);
                let event_id = record["event_id"]
                    .as_str()
                    .and_then(|s| uuid::Uuid::parse_str(s).ok())
                    .unwrap_or_default();
                vec![Tick {
                    topic: TOPIC,
                    key: product,
                    event_id,
                    record,
                }]
            }
            Frame::Heartbeat { product, sequence } => {
                self.sequence(&product, sequence, metrics);
                Vec::new()
            }
            Frame::Subscriptions => {
                tracing::debug!("Subscription acknowledged");
                Vec::new()
            }
            Frame::Error(message) => {
                tracing::warn!(%message, "The feed reports an error");
                Vec::new()
            }
            Frame::Other(kind) => {
                tracing::debug!(kind, "Ignoring a message type");
                Vec::new()
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ticker as the Exchange feed sends it.
    const TICKER: &str = r#"{"type":"ticker","sequence":37475248783,"product_id":"ETH-USD","price":"1285.22","open_24h":"1310.79","volume_24h":"245532.79269678","low_24h":"1280.52","high_24h":"1313.8","volume_30d":"9788783.60117027","best_bid":"1285.04","best_bid_size":"0.46688654","best_ask":"1285.27","best_ask_size":"1.56637040","side":"buy","time":"2022-10-19T23:28:22.061769Z","trade_id":370843401,"last_size":"11.4396987"}"#;

    #[test]
    fn a_ticker_becomes_a_crypto_tick() {
        let Frame::Ticker {
            product,
            sequence,
            record,
        } = parse(TICKER, 7).unwrap()
        else {
            panic!("not a ticker")
        };
        assert_eq!(product, "ETH-USD");
        assert_eq!(sequence, Some(37475248783));
        assert_eq!(record["id"], "ETH-USD");
        assert_eq!(record["currency"], "USD");
        assert_eq!(record["price"], 1285.22);
        assert_eq!(record["bid"], 1285.04);
        assert_eq!(record["ask"], 1285.27);
        assert_eq!(record["last_size"], 11.4396987);
        assert_eq!(record["day_volume"], 245533);
        assert!((record["change"].as_f64().unwrap() - (1285.22 - 1310.79)).abs() < 1e-9);
        assert_eq!(record["event_time"], 1_666_222_102_061i64);
        assert_eq!(record["ingestion_time"], 7);
        assert_eq!(record["source"], "coinbase");
        assert_eq!(
            record["event_id"],
            event_id("ETH-USD", 370843401).to_string()
        );
        assert_ne!(event_id("ETH-USD", 1), event_id("BTC-USD", 1));
        assert_eq!(event_id("ETH-USD", 1), event_id("ETH-USD", 1));
    }

    #[test]
    fn other_frames_and_malformed_ones() {
        assert_eq!(
            parse(
                r#"{"type":"heartbeat","sequence":90,"last_trade_id":20,"product_id":"BTC-USD","time":"2014-11-07T08:19:28.464459Z"}"#,
                0
            ),
            Ok(Frame::Heartbeat {
                product: "BTC-USD".into(),
                sequence: Some(90)
            })
        );
        assert_eq!(
            parse(r#"{"type":"subscriptions","channels":[]}"#, 0),
            Ok(Frame::Subscriptions)
        );
        assert!(matches!(
            parse(r#"{"type":"error","message":"Failed to subscribe","reason":"x"}"#, 0),
            Ok(Frame::Error(m)) if m == "Failed to subscribe: x"
        ));
        assert!(parse(r#"{"type":"ticker","product_id":"BTC-USD","pri"#, 0).is_err());
        let no_bid = TICKER.replace(r#""best_bid":"1285.04","#, "");
        assert!(parse(&no_bid, 0).unwrap_err().contains("best_bid"));
        let bad_price = TICKER.replace(r#""price":"1285.22""#, r#""price":"cheap""#);
        assert!(parse(&bad_price, 0).unwrap_err().contains("price"));
        assert!(parse("[1]", 0).is_err());
    }

    #[test]
    fn subscribe_names_products_and_channels() {
        let v: Json =
            serde_json::from_str(&subscribe_message(&["BTC-USD".into(), "ETH-USD".into()]))
                .unwrap();
        assert_eq!(
            v,
            json!({"type":"subscribe","product_ids":["BTC-USD","ETH-USD"],"channels":["ticker","heartbeat"]})
        );
    }
}
