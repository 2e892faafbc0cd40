//! Yahoo Finance's streaming quotes (`wss://streamer.finance.yahoo.com/?version=2`, the
//! endpoint yfinance's live streaming reads): a JSON `{"subscribe": [symbols]}`, renewed
//! every 15 s as the streamer expects, and each update a JSON frame whose `message` is a
//! base64-encoded protobuf `PricingData` (a bare base64 frame, as version 1 sends, is read
//! too). Each update becomes one tick on the topic of its quote type:
//!
//! | quote type | topic |
//! |---|---|
//! | EQUITY, ETF, INDEX, MUTUALFUND, FUTURE | `tickers.stocks` |
//! | CRYPTOCURRENCY | `tickers.crypto` |
//! | CURRENCY | `tickers.currency` |
//! | OPTION | `tickers.options` (keyed by the underlying) |
//!
//! An option's underlying, strike, expiry and call/put come from the update's
//! `underlyingSymbol`, `strikePrice`, `expireDate` and `optionsType`, or from its OCC
//! symbol where the update leaves them out; an option whose fields and symbol say nothing
//! usable, or contradict each other, is malformed. Other quote types are counted as
//! unrouted and logged once per symbol. A redelivered update carries the same bytes, so
//! its event id, made from them, is the same and [`run`](super::feed::run) drops it.

use std::collections::HashSet;
use std::time::Duration;

use base64::Engine as _;
use prost::Message as _;
use serde_json::{Map, Value as Json, json};

use super::feed::{self, FeedMetrics, Protocol, Tick};

/// The production streamer.
pub const DEFAULT_URL: &str = "wss://streamer.finance.yahoo.com/?version=2";
/// The `source` field of every tick.
pub const SOURCE: &str = "yahoo";
/// The topics Yahoo ticks go to.
pub const TOPICS: [&str; 4] = [
    "tickers.stocks",
    "tickers.crypto",
    "tickers.currency",
    super::options::TOPIC,
];

/// Yahoo's quote type of options.
pub const OPTION: i32 = 13;

/// Option roots of cash-settled index options, which are European style.
const EUROPEAN_ROOTS: [&str; 8] = ["SPX", "SPXW", "XSP", "NDX", "NDXP", "RUT", "VIX", "DJX"];
/// How often the subscription is sent again: the streamer drops a quiet one.
pub const RESUBSCRIBE: Duration = Duration::from_secs(15);

/// One update of the streamer: the `PricingData` message, field by field (numbers and
/// wire types as Yahoo's message definition has them; enums as their numbers).
#[derive(Clone, PartialEq, prost::Message)]
pub struct PricingData {
    /// The symbol (`AAPL`, `BTC-USD`, `EURUSD=X`).
    #[prost(string, tag = "1")]
    pub id: String,
    /// Last price.
    #[prost(float, tag = "2")]
    pub price: f32,
    /// Event time, milliseconds since the epoch.
    #[prost(sint64, tag = "3")]
    pub time: i64,
    /// Quote currency.
    #[prost(string, tag = "4")]
    pub currency: String,
    /// Exchange code.
    #[prost(string, tag = "5")]
    pub exchange: String,
    /// Quote type (see [`quote_type`]).
    #[prost(int32, tag = "6")]
    pub quote_type: i32,
    /// Market hours: 0 pre, 1 regular, 2 post, 3 extended.
    #[prost(int32, tag = "7")]
    pub market_hours: i32,
    /// Change since the previous close, in percent.
    #[prost(float, tag = "8")]
    pub change_percent: f32,
    /// Volume of the day.
    #[prost(sint64, tag = "9")]
    pub day_volume: i64,
    /// High of the day.
    #[prost(float, tag = "10")]
    pub day_high: f32,
    /// Low of the day.
    #[prost(float, tag = "11")]
    pub day_low: f32,
    /// Change since the previous close.
    #[prost(float, tag = "12")]
    pub change: f32,
    /// Short name.
    #[prost(string, tag = "13")]
    pub short_name: String,
    /// Option expiry.
    #[prost(sint64, tag = "14")]
    pub expire_date: i64,
    /// Opening price.
    #[prost(float, tag = "15")]
    pub open_price: f32,
    /// Previous close.
    #[prost(float, tag = "16")]
    pub previous_close: f32,
    /// Option strike.
    #[prost(float, tag = "17")]
    pub strike_price: f32,
    /// Option underlying.
    #[prost(string, tag = "18")]
    pub underlying_symbol: String,
    /// Option open interest.
    #[prost(sint64, tag = "19")]
    pub open_interest: i64,
    /// Option type: 0 call, 1 put.
    #[prost(int32, tag = "20")]
    pub options_type: i32,
    /// Mini option.
    #[prost(sint64, tag = "21")]
    pub mini_option: i64,
    /// Size of the last trade.
    #[prost(sint64, tag = "22")]
    pub last_size: i64,
    /// Best bid.
    #[prost(float, tag = "23")]
    pub bid: f32,
    /// Size at the best bid.
    #[prost(sint64, tag = "24")]
    pub bid_size: i64,
    /// Best ask.
    #[prost(float, tag = "25")]
    pub ask: f32,
    /// Size at the best ask.
    #[prost(sint64, tag = "26")]
    pub ask_size: i64,
    /// Decimal places to show.
    #[prost(sint64, tag = "27")]
    pub price_hint: i64,
    /// Crypto: volume over 24 hours.
    #[prost(sint64, tag = "28")]
    pub vol_24hr: i64,
    /// Crypto: volume in all currencies.
    #[prost(sint64, tag = "29")]
    pub vol_all_currencies: i64,
    /// Crypto: the base currency.
    #[prost(string, tag = "30")]
    pub from_currency: String,
    /// Crypto: the market of the last trade.
    #[prost(string, tag = "31")]
    pub last_market: String,
    /// Crypto: circulating supply.
    #[prost(double, tag = "32")]
    pub circulating_supply: f64,
    /// Market capitalisation.
    #[prost(double, tag = "33")]
    pub market_cap: f64,
}

/// The name of quote type `n` in weir's tick schemas, with its topic; `None` for the
/// types weir has no topic for.
pub fn quote_type(n: i32) -> Option<(&'static str, &'static str)> {
    Some(match n {
        8 => ("EQUITY", TOPICS[0]),
        20 => ("ETF", TOPICS[0]),
        9 => ("INDEX", TOPICS[0]),
        11 => ("MUTUALFUND", TOPICS[0]),
        18 => ("FUTURE", TOPICS[0]),
        41 => ("CRYPTOCURRENCY", TOPICS[1]),
        14 => ("CURRENCY", TOPICS[2]),
        _ => return None,
    })
}

fn market_hours(n: i32) -> &'static str {
    match n {
        0 => "PRE_MARKET",
        1 => "REGULAR_MARKET",
        2 => "POST_MARKET",
        3 => "EXTENDED_HOURS_MARKET",
        _ => "UNKNOWN",
    }
}

/// `v` as the decimal it was sent as: the shortest that reads back as the same `f32`
/// (187.2, not 187.1999969482422).
fn widen(v: f32) -> f64 {
    v.to_string().parse().unwrap_or(f64::from(v))
}

/// The subscribe message for `symbols`.
pub fn subscribe_message(symbols: &[String]) -> String {
    json!({ "subscribe": symbols }).to_string()
}

/// The event id of the update whose protobuf bytes are `bytes`.
pub fn event_id(bytes: &[u8]) -> uuid::Uuid {
    feed::event_id(&[b"yahoo/", bytes])
}

/// What one frame holds.
#[derive(Debug, Clone, PartialEq)]
pub enum Update {
    /// A tick for a topic.
    Tick(Tick),
    /// A quote of a type weir has no topic for: the symbol and the type's number.
    Unrouted(String, i32),
}

/// Reads one frame (JSON with a base64 `message`, or bare base64); `ingestion_ms` is
/// when it arrived.
pub fn parse(text: &str, ingestion_ms: i64) -> Result<Update, String> {
    let text = text.trim();
    let encoded = if text.starts_with('{') {
        let value: Json = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
        match value.get("message") {
            Some(Json::String(m)) => m.clone(),
            Some(other) => {
                return Err(format!(
                    "field `message`: expected base64 text, found {other}"
                ));
            }
            None => return Err("no field `message`".into()),
        }
    } else {
        text.to_string()
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded.as_bytes())
        .map_err(|e| format!("`message` is not base64: {e}"))?;
    let p = PricingData::decode(bytes.as_slice())
        .map_err(|e| format!("`message` is not a PricingData protobuf: {e}"))?;
    if p.id.is_empty() {
        return Err("PricingData without an id (field 1)".into());
    }
    if !(p.price.is_finite() && p.price > 0.0) {
        return Err(format!("PricingData of {}: no price (field 2)", p.id));
    }
    if p.time <= 0 {
        return Err(format!("PricingData of {}: no time (field 3)", p.id));
    }
    if p.quote_type == OPTION {
        return option(&p, &bytes, ingestion_ms).map(Update::Tick);
    }
    let Some((kind, topic)) = quote_type(p.quote_type) else {
        return Ok(Update::Unrouted(p.id, p.quote_type));
    };
    // Proto3 sends no field at its default: a 0 is "not given".
    let float = |v: f32| (v != 0.0 && v.is_finite()).then(|| widen(v));
    let int = |v: i64| (v != 0).then_some(v);
    let text = |v: &str| (!v.is_empty()).then(|| v.to_string());
    let event_id = event_id(&bytes);
    let mut r = Map::new();
    r.insert("id".into(), json!(p.id));
    r.insert("exchange".into(), json!(text(&p.exchange)));
    r.insert("quote_type".into(), json!(kind));
    r.insert("market_hours".into(), json!(market_hours(p.market_hours)));
    r.insert("currency".into(), json!(text(&p.currency)));
    r.insert("price".into(), json!(widen(p.price)));
    r.insert("change".into(), json!(float(p.change)));
    r.insert("change_percent".into(), json!(float(p.change_percent)));
    r.insert(
        "day_volume".into(),
        json!(int(p.day_volume).or(int(p.vol_24hr))),
    );
    r.insert(
        "last_size".into(),
        json!(int(p.last_size).map(|s| s as f64)),
    );
    r.insert("bid".into(), json!(float(p.bid)));
    r.insert("ask".into(), json!(float(p.ask)));
    r.insert(
        "price_hint".into(),
        json!(int(p.price_hint).and_then(|h| i32::try_from(h).ok())),
    );
    if topic == TOPICS[1] {
        r.insert(
            "circulating_supply".into(),
            json!((p.circulating_supply != 0.0).then_some(p.circulating_supply)),
        );
    }
    r.insert("event_time".into(), json!(p.time));
    r.insert("event_id".into(), json!(event_id.to_string()));
    r.insert("ingestion_time".into(), json!(ingestion_ms));
    r.insert("source".into(), json!(SOURCE));
    Ok(Update::Tick(Tick {
        topic,
        key: p.id,
        event_id,
        record: r,
    }))
}

/// An option update as a `tickers.options` trade.
fn option(p: &PricingData, bytes: &[u8], ingestion_ms: i64) -> Result<Tick, String> {
    use super::options::{Contract, DAY_MS, Right};
    let occ = Contract::parse(&p.id);
    let underlying = match (p.underlying_symbol.trim(), &occ) {
        (u, _) if !u.is_empty() => u.to_string(),
        ("", Some(c)) => c.root.clone(),
        _ => {
            return Err(format!(
                "option {}: no underlyingSymbol (field 18) and not an OCC symbol",
                p.id
            ));
        }
    };
    let strike = match (p.strike_price, &occ) {
        (k, _) if k.is_finite() && k > 0.0 => widen(k),
        (_, Some(c)) if c.strike > 0.0 => c.strike,
        _ => return Err(format!("option {}: no strikePrice (field 17)", p.id)),
    };
    // expireDate is epoch seconds (milliseconds tolerated).
    let expiry = match (p.expire_date, &occ) {
        (e, _) if e > 0 => {
            let ms = if e > 100_000_000_000 { e } else { e * 1000 };
            i32::try_from(ms.div_euclid(DAY_MS))
                .map_err(|_| format!("option {}: expireDate {e} out of range", p.id))?
        }
        (_, Some(c)) => c.expiry,
        _ => return Err(format!("option {}: no expireDate (field 14)", p.id)),
    };
    // optionsType 0 (a call) is also what an update without the field decodes to: the
    // symbol's letter decides when there is one.
    let right = match (p.options_type, &occ) {
        (1, Some(c)) if c.right == Right::Call => {
            return Err(format!("option {}: optionsType put, symbol a call", p.id));
        }
        (_, Some(c)) => c.right,
        (0, None) => Right::Call,
        (1, None) => Right::Put,
        (n, None) => return Err(format!("option {}: optionsType {n} is not 0 or 1", p.id)),
    };
    if let Some(c) = &occ
        && (c.expiry != expiry || (c.strike - strike).abs() > 0.0005)
    {
        return Err(format!(
            "option {}: strikePrice {strike} or expireDate (day {expiry}) contradict the symbol",
            p.id
        ));
    }
    let root = occ
        .as_ref()
        .map_or(underlying.as_str(), |c| c.root.as_str());
    let style = if underlying.starts_with('^') || EUROPEAN_ROOTS.contains(&root) {
        "EUROPEAN"
    } else if p.currency.is_empty() || p.currency == "USD" {
        // US equity and ETF options.
        "AMERICAN"
    } else {
        "UNKNOWN"
    };
    let float = |v: f32| (v != 0.0 && v.is_finite()).then(|| widen(v));
    let int = |v: i64| (v != 0).then_some(v);
    let text = |v: &str| (!v.is_empty()).then(|| v.to_string());
    let event_id = event_id(bytes);
    let mut r = Map::new();
    r.insert("id".into(), json!(p.id));
    r.insert("underlying".into(), json!(underlying));
    r.insert("expiry".into(), json!(expiry));
    r.insert("strike".into(), json!(strike));
    r.insert("option_type".into(), json!(right.name()));
    r.insert("style".into(), json!(style));
    r.insert("exchange".into(), json!(text(&p.exchange)));
    r.insert("currency".into(), json!(text(&p.currency)));
    r.insert("price".into(), json!(widen(p.price)));
    r.insert("bid".into(), json!(float(p.bid)));
    r.insert("ask".into(), json!(float(p.ask)));
    r.insert(
        "last_size".into(),
        json!(int(p.last_size).map(|s| s as f64)),
    );
    r.insert("volume".into(), json!(int(p.day_volume)));
    r.insert("open_interest".into(), json!(int(p.open_interest)));
    // The streamer sends no implied volatility: the pipeline computes it.
    r.insert("implied_volatility".into(), Json::Null);
    r.insert("event_time".into(), json!(p.time));
    r.insert("event_id".into(), json!(event_id.to_string()));
    r.insert("ingestion_time".into(), json!(ingestion_ms));
    r.insert("source".into(), json!(SOURCE));
    Ok(Tick {
        topic: super::options::TOPIC,
        key: underlying,
        event_id,
        record: r,
    })
}

/// The Yahoo protocol for [`run`](super::feed::run).
pub struct Yahoo {
    symbols: Vec<String>,
    /// Symbols whose quote type was reported as unrouted already.
    unrouted: HashSet<String>,
}

impl Yahoo {
    /// Reading `symbols`.
    pub fn new(symbols: Vec<String>) -> Self {
        Self {
            symbols,
            unrouted: HashSet::new(),
        }
    }
}

impl Protocol for Yahoo {
    fn subscribe(&self) -> String {
        subscribe_message(&self.symbols)
    }

    fn resubscribe_every(&self) -> Option<Duration> {
        Some(RESUBSCRIBE)
    }

    fn read(
        &mut self,
        text: &str,
        ingestion_ms: i64,
        metrics: &FeedMetrics,
    ) -> Result<Vec<Tick>, String> {
        Ok(match parse(text, ingestion_ms)? {
            Update::Tick(tick) => vec![tick],
            Update::Unrouted(symbol, kind) => {
                metrics.unrouted();
                if self.unrouted.insert(symbol.clone()) {
                    tracing::info!(
                        symbol,
                        quote_type = kind,
                        "Skipping quotes of a type weir has no topic for"
                    );
                }
                Vec::new()
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(p: &PricingData) -> String {
        let message = base64::engine::general_purpose::STANDARD.encode(p.encode_to_vec());
        json!({"type": "pricing", "message": message}).to_string()
    }

    fn quote(id: &str, quote_type: i32) -> PricingData {
        PricingData {
            id: id.into(),
            price: 187.25,
            time: 1_733_212_800_000,
            currency: "USD".into(),
            exchange: "NMS".into(),
            quote_type,
            market_hours: 1,
            change_percent: 0.5,
            day_volume: 1_000_000,
            change: 0.93,
            last_size: 100,
            bid: 187.2,
            ask: 187.3,
            price_hint: 2,
            ..Default::default()
        }
    }

    #[test]
    fn each_quote_type_goes_to_its_topic_with_its_fields() {
        let Update::Tick(t) = parse(&frame(&quote("AAPL", 8)), 7).unwrap() else {
            panic!("not a tick")
        };
        assert_eq!((t.topic, t.key.as_str()), ("tickers.stocks", "AAPL"));
        let r = &t.record;
        assert_eq!(r["quote_type"], "EQUITY");
        assert_eq!(r["market_hours"], "REGULAR_MARKET");
        assert_eq!(r["price"], 187.25);
        assert_eq!(r["bid"], 187.2);
        assert_eq!(r["change"], 0.93);
        assert_eq!(r["day_volume"], 1_000_000);
        assert_eq!(r["last_size"], 100.0);
        assert_eq!(r["price_hint"], 2);
        assert_eq!(r["event_time"], 1_733_212_800_000i64);
        assert_eq!(r["ingestion_time"], 7);
        assert_eq!(r["source"], "yahoo");
        assert!(!r.contains_key("circulating_supply"));
        for (kind, topic) in [
            (41, "tickers.crypto"),
            (14, "tickers.currency"),
            (20, "tickers.stocks"),
        ] {
            let Update::Tick(t) = parse(&frame(&quote("X", kind)), 0).unwrap() else {
                panic!("{kind}: not a tick")
            };
            assert_eq!(t.topic, topic, "{kind}");
        }
        assert_eq!(
            parse(&frame(&quote("AAPL250117B00200000", 15)), 0).unwrap(),
            Update::Unrouted("AAPL250117B00200000".into(), 15)
        );
    }

    #[test]
    fn options_go_to_tickers_options_with_fields_from_the_update_or_the_symbol() {
        let full = PricingData {
            price: 4.1,
            bid: 4.0,
            ask: 4.2,
            underlying_symbol: "AAPL".into(),
            strike_price: 200.0,
            expire_date: 1_737_072_000, // 2025-01-17
            options_type: 1,
            open_interest: 12_345,
            exchange: "OPR".into(),
            ..quote("AAPL250117P00200000", OPTION)
        };
        let Update::Tick(t) = parse(&frame(&full), 7).unwrap() else {
            panic!("not a tick")
        };
        assert_eq!((t.topic, t.key.as_str()), ("tickers.options", "AAPL"));
        let r = &t.record;
        let day = crate::ingest::options::days_from_civil(2025, 1, 17);
        assert_eq!(r["expiry"], day);
        assert_eq!(r["strike"], 200.0);
        assert_eq!(r["option_type"], "PUT");
        assert_eq!(r["style"], "AMERICAN");
        assert_eq!(r["price"], 4.1);
        assert_eq!(r["bid"], 4.0);
        assert_eq!(r["open_interest"], 12_345);
        assert_eq!(r["volume"], 1_000_000);
        assert_eq!(r["last_size"], 100.0);
        assert!(r["implied_volatility"].is_null());
        // Only the symbol: the rest comes from it.
        let bare = PricingData {
            price: 4.1,
            ..quote("SPXW250117C05000000", OPTION)
        };
        let Update::Tick(t) = parse(&frame(&bare), 0).unwrap() else {
            panic!()
        };
        let r = &t.record;
        assert_eq!(
            (r["underlying"].as_str(), t.key.as_str()),
            (Some("SPXW"), "SPXW")
        );
        assert_eq!(
            (r["strike"].as_f64(), r["option_type"].as_str()),
            (Some(5000.0), Some("CALL"))
        );
        assert_eq!(r["style"], "EUROPEAN");
        assert!(r["open_interest"].is_null());
        // Malformed: nothing usable, or a contradiction.
        assert!(
            parse(&frame(&quote("WEIRDOPTION", OPTION)), 0)
                .unwrap_err()
                .contains("underlyingSymbol")
        );
        let wrong = PricingData {
            strike_price: 210.0,
            ..full.clone()
        };
        assert!(parse(&frame(&wrong), 0).unwrap_err().contains("contradict"));
        let wrong = PricingData {
            id: "AAPL250117C00200000".into(),
            ..full
        };
        assert!(parse(&frame(&wrong), 0).unwrap_err().contains("put"));
    }

    #[test]
    fn a_redelivered_update_keeps_its_event_id_and_defaults_are_absent() {
        let a = frame(&quote("MSFT", 8));
        let ids: Vec<uuid::Uuid> = [&a, &a]
            .iter()
            .map(|f| match parse(f, 0).unwrap() {
                Update::Tick(t) => t.event_id,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(ids[0], ids[1]);
        let mut later = quote("MSFT", 8);
        later.time += 1;
        let Update::Tick(t) = parse(&frame(&later), 0).unwrap() else {
            panic!()
        };
        assert_ne!(t.event_id, ids[0], "another update, another id");
        let bare = PricingData {
            change: 0.0,
            bid: 0.0,
            day_volume: 0,
            ..quote("MSFT", 8)
        };
        let Update::Tick(t) = parse(&frame(&bare), 0).unwrap() else {
            panic!()
        };
        assert!(t.record["change"].is_null() && t.record["bid"].is_null());
        assert!(t.record["day_volume"].is_null());
        // Version 1 frames: the base64 alone.
        let v1 = base64::engine::general_purpose::STANDARD.encode(quote("MSFT", 8).encode_to_vec());
        assert!(matches!(parse(&v1, 0), Ok(Update::Tick(_))));
    }

    #[test]
    fn malformed_frames_say_what_is_wrong() {
        assert!(
            parse("{\"type\":\"pricing\"", 0)
                .unwrap_err()
                .contains("not JSON")
        );
        assert!(
            parse("{\"type\":\"pricing\"}", 0)
                .unwrap_err()
                .contains("message")
        );
        assert!(
            parse("{\"message\":\"***\"}", 0)
                .unwrap_err()
                .contains("not base64")
        );
        let junk = base64::engine::general_purpose::STANDARD.encode([0xff, 0xff, 0xff]);
        assert!(parse(&junk, 0).unwrap_err().contains("not a PricingData"));
        let no_price = PricingData {
            price: 0.0,
            ..quote("AAPL", 8)
        };
        assert!(
            parse(&frame(&no_price), 0)
                .unwrap_err()
                .contains("no price")
        );
        assert_eq!(
            subscribe_message(&["AAPL".into(), "BTC-USD".into()]),
            r#"{"subscribe":["AAPL","BTC-USD"]}"#
        );
    }
}
