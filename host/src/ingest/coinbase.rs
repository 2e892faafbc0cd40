//! The Coinbase Exchange public websocket feed (`wss://ws-feed.exchange.coinbase.com`):
//! `ticker` and `heartbeat` channels, each ticker one tick on `tickers.crypto`.
//!
//! The feed is read through reconnects: a dropped, failed or stale connection (nothing
//! received for `stale_after`) is opened again after a capped, jittered exponential
//! backoff and subscribed again. An update redelivered across a reconnect keeps its event
//! id (derived from product and trade id) and is dropped. Jumps in a product's `sequence`
//! are counted and logged; a frame that cannot be read is counted, logged with a sample,
//! and skipped.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Map, Value as Json, json};
use sha2::{Digest, Sha256};
use tokio_tungstenite::tungstenite::Message;

use super::feed::{FeedMetrics, RecentIds};
use super::{Producer, now_ms};
use crate::pg::Backoff;

/// The topic Coinbase ticks go to.
pub const TOPIC: &str = "tickers.crypto";
/// The production feed.
pub const DEFAULT_URL: &str = "wss://ws-feed.exchange.coinbase.com";
/// The `source` field of every tick.
pub const SOURCE: &str = "coinbase";

/// How the feed is read.
#[derive(Debug, Clone)]
pub struct CoinbaseConfig {
    /// The websocket URL.
    pub url: String,
    /// Products to subscribe to (`BTC-USD`).
    pub products: Vec<String>,
    /// Reconnect when nothing arrives for this long.
    pub stale_after: Duration,
    /// First reconnect delay.
    pub backoff_min: Duration,
    /// Longest reconnect delay.
    pub backoff_max: Duration,
    /// Event ids remembered to drop redeliveries.
    pub dedup_capacity: usize,
}

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
    let digest = Sha256::digest(format!("coinbase/{product}/{trade_id}").as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
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

/// What a run did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Ticks produced.
    pub produced: u64,
    /// Redelivered updates dropped.
    pub duplicates: u64,
}

/// The reader's state across connections.
struct Reader {
    config: CoinbaseConfig,
    metrics: Arc<FeedMetrics>,
    seen: RecentIds<uuid::Uuid>,
    sequences: HashMap<String, u64>,
    summary: Summary,
}

/// Why a connection ended.
enum End {
    Shutdown,
    Lost(String),
}

/// Reads the feed into `producer` until `shutdown` completes, then delivers everything
/// queued.
pub async fn run(
    config: CoinbaseConfig,
    mut producer: Producer,
    metrics: Arc<FeedMetrics>,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<Summary> {
    anyhow::ensure!(!config.products.is_empty(), "no products to subscribe to");
    let tls = Arc::new(tls_config()?);
    let mut backoff = Backoff::between(config.backoff_min, config.backoff_max);
    let mut reader = Reader {
        seen: RecentIds::new(config.dedup_capacity),
        sequences: HashMap::new(),
        summary: Summary::default(),
        metrics,
        config,
    };
    tokio::pin!(shutdown);
    let mut first = true;
    loop {
        if !first {
            reader.metrics.reconnect();
        }
        first = false;
        let end = tokio::select! {
            _ = &mut shutdown => End::Shutdown,
            end = reader.connection(&mut producer, &tls, &mut backoff) => end?,
        };
        match end {
            End::Shutdown => break,
            End::Lost(why) => {
                let delay = backoff.delay();
                tracing::warn!(url = %reader.config.url, reason = %why, delay = ?delay, "Feed connection lost; reconnecting");
                tokio::select! {
                    _ = &mut shutdown => break,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
    let summary = reader.summary;
    tracing::info!(
        produced = summary.produced,
        duplicates = summary.duplicates,
        "Stopping; delivering what was received"
    );
    producer.finish().await?;
    Ok(summary)
}

fn tls_config() -> anyhow::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        tracing::debug!(error = %e, "Skipping a system CA certificate");
    }
    for cert in native.certs {
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        tracing::warn!(
            "No system CA certificates found: wss:// connections will fail (install ca-certificates)"
        );
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

impl Reader {
    /// One connection: connect, subscribe, read until it is lost. Only Kafka failing is
    /// an error.
    async fn connection(
        &mut self,
        producer: &mut Producer,
        tls: &Arc<rustls::ClientConfig>,
        backoff: &mut Backoff,
    ) -> anyhow::Result<End> {
        let url = self.config.url.clone();
        let stale = self.config.stale_after;
        let connect = tokio_tungstenite::connect_async_tls_with_config(
            url.as_str(),
            None,
            true,
            Some(tokio_tungstenite::Connector::Rustls(tls.clone())),
        );
        let mut ws = match tokio::time::timeout(stale, connect).await {
            Ok(Ok((ws, _))) => ws,
            Ok(Err(e)) => return Ok(End::Lost(format!("cannot connect: {e}"))),
            Err(_) => return Ok(End::Lost(format!("no connection within {stale:?}"))),
        };
        if let Err(e) = ws
            .send(Message::text(subscribe_message(&self.config.products)))
            .await
        {
            return Ok(End::Lost(format!("cannot subscribe: {e}")));
        }
        tracing::info!(url = %url, products = ?self.config.products, "Connected and subscribed");
        let mut working = false;
        loop {
            let next = match tokio::time::timeout(stale, ws.next()).await {
                Err(_) => {
                    return Ok(End::Lost(format!(
                        "the feed sent nothing for {stale:?} (--stale-after)"
                    )));
                }
                Ok(None) => return Ok(End::Lost("the feed closed the connection".into())),
                Ok(Some(Err(e))) => return Ok(End::Lost(format!("read error: {e}"))),
                Ok(Some(Ok(m))) => m,
            };
            self.metrics.received();
            if !working {
                // The connection works: the next failure starts the backoff afresh.
                working = true;
                backoff.reset();
            }
            let text = match &next {
                Message::Text(t) => t.as_str().to_string(),
                Message::Binary(b) => match std::str::from_utf8(b) {
                    Ok(t) => t.to_string(),
                    Err(_) => {
                        self.malformed("binary frame is not UTF-8", &format!("{b:?}"));
                        continue;
                    }
                },
                Message::Close(frame) => {
                    return Ok(End::Lost(format!(
                        "the feed closed the connection: {frame:?}"
                    )));
                }
                // Pings are answered by the websocket layer; they still show it is alive.
                _ => continue,
            };
            self.frame(producer, &text).await?;
            producer.report();
        }
    }

    fn malformed(&self, why: &str, sample: &str) {
        self.metrics.decode_error();
        let sample: String = sample.chars().take(200).collect();
        tracing::warn!(error = why, sample = %sample, "Skipping a malformed feed message");
    }

    fn sequence(&mut self, product: &str, sequence: Option<u64>) {
        let Some(seq) = sequence else { return };
        match self.sequences.get_mut(product) {
            Some(last) => {
                if seq > *last + 1 {
                    self.metrics.sequence_gap();
                    let gaps = self.metrics.totals()[3];
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
                if seq > *last {
                    *last = seq;
                }
            }
            None => {
                self.sequences.insert(product.to_string(), seq);
            }
        }
    }

    async fn frame(&mut self, producer: &mut Producer, text: &str) -> anyhow::Result<()> {
        let frame = match parse(text, now_ms()) {
            Ok(f) => f,
            Err(e) => {
                self.malformed(&e, text);
                return Ok(());
            }
        };
        match frame {
            Frame::Ticker {
                product,
                sequence,
                record,
            } => {
                self.sequence(&product, sequence);
                let id = record["event_id"]
                    .as_str()
                    .and_then(|s| uuid::Uuid::parse_str(s).ok())
                    .unwrap_or_default();
                if !self.seen.insert(id) {
                    self.summary.duplicates += 1;
                    self.metrics.duplicate();
                    tracing::debug!(product, %id, "Dropping a redelivered update");
                    return Ok(());
                }
                match producer.send(TOPIC, &product, &record).await? {
                    Ok(()) => {
                        self.summary.produced += 1;
                        self.metrics.produced(TOPIC);
                    }
                    Err(e) => self.malformed(
                        &format!("does not fit the registered schema of {TOPIC}: {e}"),
                        text,
                    ),
                }
            }
            Frame::Heartbeat { product, sequence } => self.sequence(&product, sequence),
            Frame::Subscriptions => tracing::debug!("Subscription acknowledged"),
            Frame::Error(message) => {
                tracing::warn!(%message, "The feed reports an error")
            }
            Frame::Other(kind) => tracing::debug!(kind, "Ignoring a message type"),
        }
        Ok(())
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
