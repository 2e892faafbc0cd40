//! A market simulator: ticks for stocks, crypto and currency pairs.
//!
//! Each symbol follows a geometric random walk with its own drift and volatility; quotes
//! carry a bid/ask spread around the price and a growing day volume. Everything random
//! comes from one seeded generator, so a seed (with `--start-time`) gives the same ticks
//! every run.

use std::collections::HashMap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, LogNormal, StandardNormal};
use serde_json::{Map, Value as Json, json};

/// An asset class, with its topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AssetClass {
    /// Listed stocks, ETFs and indices: `tickers.stocks`.
    Stocks,
    /// Crypto assets: `tickers.crypto`.
    Crypto,
    /// FX pairs: `tickers.currency`.
    Currency,
}

impl AssetClass {
    /// All classes.
    pub const ALL: [AssetClass; 3] = [AssetClass::Stocks, AssetClass::Crypto, AssetClass::Currency];

    /// The Kafka topic of this class.
    pub fn topic(self) -> &'static str {
        match self {
            AssetClass::Stocks => "tickers.stocks",
            AssetClass::Crypto => "tickers.crypto",
            AssetClass::Currency => "tickers.currency",
        }
    }

    /// The class of a topic.
    pub fn from_topic(topic: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.topic() == topic)
    }

    /// Symbols simulated when none are given, with a starting price.
    pub fn default_symbols(self) -> &'static [(&'static str, f64)] {
        match self {
            AssetClass::Stocks => &[
                ("AAPL", 187.25),
                ("MSFT", 401.10),
                ("GOOGL", 165.30),
                ("AMZN", 180.40),
                ("NVDA", 880.05),
                ("TSLA", 175.80),
                ("JPM", 195.60),
                ("^GSPC", 5100.25),
            ],
            AssetClass::Crypto => &[
                ("BTC-USD", 64012.55),
                ("ETH-USD", 3101.20),
                ("SOL-USD", 145.32),
                ("XRP-USD", 0.5214),
                ("DOGE-USD", 0.1532),
            ],
            AssetClass::Currency => &[
                ("EURUSD=X", 1.0712),
                ("GBPUSD=X", 1.2534),
                ("USDJPY=X", 155.12),
                ("AUDUSD=X", 0.6541),
                ("USDCHF=X", 0.9123),
            ],
        }
    }

    /// Annualised volatility and drift.
    fn dynamics(self) -> (f64, f64) {
        match self {
            AssetClass::Stocks => (0.30, 0.08),
            AssetClass::Crypto => (0.70, 0.15),
            AssetClass::Currency => (0.08, 0.0),
        }
    }

    /// Half the relative bid/ask spread.
    fn half_spread(self) -> f64 {
        match self {
            AssetClass::Stocks => 0.000_1,
            AssetClass::Crypto => 0.000_2,
            AssetClass::Currency => 0.000_05,
        }
    }
}

/// One simulated symbol.
#[derive(Debug, Clone)]
pub struct Symbol {
    /// Its class.
    pub class: AssetClass,
    /// Ticker (`AAPL`, `BTC-USD`, `EURUSD=X`).
    pub name: String,
    /// Starting (previous close) price.
    pub open: f64,
}

impl Symbol {
    /// Parses `NAME` or `NAME=PRICE`; a name without a known price starts at 100.
    /// (`EURUSD=X` is a name: a price must parse as a number.)
    pub fn parse(class: AssetClass, spec: &str) -> Result<Self, String> {
        let spec = spec.trim();
        let (name, price) = match spec.rsplit_once('=') {
            Some((n, p)) if p.parse::<f64>().is_ok() => (n, Some(p.parse::<f64>().unwrap())),
            _ => (spec, None),
        };
        if name.is_empty() {
            return Err(format!("{spec:?}: empty symbol"));
        }
        let known = class
            .default_symbols()
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, p)| *p);
        let open = price.or(known).unwrap_or(100.0);
        if !(open.is_finite() && open > 0.0) {
            return Err(format!("{spec:?}: the starting price must be positive"));
        }
        Ok(Self {
            class,
            name: name.to_string(),
            open,
        })
    }
}

/// Knobs of the simulation.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Symbols to simulate.
    pub symbols: Vec<Symbol>,
    /// Seed of the random generator.
    pub seed: u64,
    /// Share of ticks whose event time is set back (late arrivals), 0..=1.
    pub late_fraction: f64,
    /// How far back at most a late tick's event time goes, ms.
    pub late_by_ms: i64,
    /// Share of ticks sent twice (the copy keeps the event id), 0..=1.
    pub duplicate_fraction: f64,
    /// `source` field value.
    pub source: String,
}

struct State {
    price: f64,
    last_ms: Option<i64>,
    volume: i64,
}

/// The next ticks of the simulated market.
pub struct Simulator {
    config: SimConfig,
    rng: ChaCha8Rng,
    states: Vec<State>,
    volume: HashMap<AssetClass, LogNormal<f64>>,
    recent: Vec<(AssetClass, Map<String, Json>)>,
}

/// Milliseconds in a (365.25-day) year, for annualised rates.
const YEAR_MS: f64 = 365.25 * 24.0 * 3600.0 * 1000.0;

impl Simulator {
    /// A simulator over `config.symbols`.
    pub fn new(config: SimConfig) -> Self {
        let states = config
            .symbols
            .iter()
            .map(|s| State {
                price: s.open,
                last_ms: None,
                volume: 0,
            })
            .collect();
        let volume = AssetClass::ALL
            .into_iter()
            .map(|c| {
                let (mu, sigma) = match c {
                    AssetClass::Stocks => (4.5, 1.0),
                    AssetClass::Crypto => (1.0, 1.5),
                    AssetClass::Currency => (0.0, 0.1),
                };
                (c, LogNormal::new(mu, sigma).expect("valid lognormal"))
            })
            .collect();
        Self {
            rng: ChaCha8Rng::seed_from_u64(config.seed),
            config,
            states,
            volume,
            recent: Vec::new(),
        }
    }

    /// The next tick, as `(class, record)`, with event time near `event_ms` and ingestion
    /// time `ingestion_ms`.
    pub fn next_tick(
        &mut self,
        event_ms: i64,
        ingestion_ms: i64,
    ) -> (AssetClass, Map<String, Json>) {
        if !self.recent.is_empty()
            && self
                .rng
                .random_bool(self.config.duplicate_fraction.clamp(0.0, 1.0))
        {
            let i = self.rng.random_range(0..self.recent.len());
            return self.recent[i].clone();
        }
        let i = self.rng.random_range(0..self.config.symbols.len());
        let symbol = &self.config.symbols[i];
        let class = symbol.class;
        // Draw only when lateness is on, so the same seed gives the same ticks whatever
        // --late-by says.
        let late = self.config.late_fraction > 0.0
            && self.config.late_by_ms > 0
            && self
                .rng
                .random_bool(self.config.late_fraction.clamp(0.0, 1.0));
        let event_ms = if late {
            event_ms - self.rng.random_range(1..=self.config.late_by_ms)
        } else {
            event_ms
        };

        let state = &mut self.states[i];
        let (sigma, mu) = class.dynamics();
        // Geometric Brownian motion over the time since this symbol's last tick (at least
        // a millisecond, so consecutive ticks still move).
        let dt = (event_ms - state.last_ms.unwrap_or(event_ms - 1000)).max(1) as f64 / YEAR_MS;
        let z: f64 = StandardNormal.sample(&mut self.rng);
        state.price *= ((mu - sigma * sigma / 2.0) * dt + sigma * dt.sqrt() * z).exp();
        state.last_ms = Some(state.last_ms.map_or(event_ms, |l| l.max(event_ms)));
        let lots = self.volume[&class].sample(&mut self.rng).ceil() as i64;
        state.volume += lots.max(1);
        let price = state.price;
        let change = price - symbol.open;
        let half_spread = price * class.half_spread() * (0.5 + self.rng.random::<f64>());
        let hint = price_hint(class, price);
        let round = |x: f64| {
            let p = 10f64.powi(hint);
            (x * p).round() / p
        };
        let mut uuid_bytes = [0u8; 16];
        self.rng.fill(&mut uuid_bytes);
        let event_id = uuid::Builder::from_random_bytes(uuid_bytes).into_uuid();

        let (quote_type, exchange, currency) = match class {
            AssetClass::Stocks if symbol.name.starts_with('^') => {
                ("INDEX", "SNP", "USD".to_string())
            }
            AssetClass::Stocks => ("EQUITY", "NMS", "USD".to_string()),
            AssetClass::Crypto => (
                "CRYPTOCURRENCY",
                "CCC",
                symbol
                    .name
                    .rsplit_once('-')
                    .map_or("USD", |(_, q)| q)
                    .to_string(),
            ),
            AssetClass::Currency => (
                "CURRENCY",
                "CCY",
                symbol
                    .name
                    .trim_end_matches("=X")
                    .get(3..6)
                    .unwrap_or("USD")
                    .to_string(),
            ),
        };
        let mut r = Map::new();
        r.insert("id".into(), json!(symbol.name));
        r.insert("exchange".into(), json!(exchange));
        r.insert("quote_type".into(), json!(quote_type));
        r.insert("market_hours".into(), json!(market_hours(class, event_ms)));
        r.insert("currency".into(), json!(currency));
        r.insert("price".into(), json!(round(price)));
        r.insert("change".into(), json!(round(change)));
        r.insert(
            "change_percent".into(),
            json!((change / symbol.open * 100.0 * 1e4).round() / 1e4),
        );
        let (bid, ask) = (round(price - half_spread), round(price + half_spread));
        match class {
            AssetClass::Stocks => {
                r.insert("day_volume".into(), json!(state.volume));
                r.insert("last_size".into(), json!(lots.max(1) as f64));
                // Stocks quote bid/ask only in the regular session.
                if market_hours(class, event_ms) == "REGULAR_MARKET" {
                    r.insert("bid".into(), json!(bid));
                    r.insert("ask".into(), json!(ask));
                }
            }
            AssetClass::Crypto => {
                r.insert("day_volume".into(), json!(state.volume));
                r.insert("last_size".into(), json!(lots.max(1) as f64));
                r.insert("bid".into(), json!(bid));
                r.insert("ask".into(), json!(ask));
            }
            AssetClass::Currency => {
                r.insert("bid".into(), json!(bid));
                r.insert("ask".into(), json!(ask));
            }
        }
        r.insert("price_hint".into(), json!(hint));
        r.insert("event_time".into(), json!(event_ms));
        r.insert("event_id".into(), json!(event_id.to_string()));
        r.insert("ingestion_time".into(), json!(ingestion_ms));
        r.insert("source".into(), json!(self.config.source));

        if self.config.duplicate_fraction > 0.0 {
            if self.recent.len() >= 64 {
                let j = self.rng.random_range(0..self.recent.len());
                self.recent[j] = (class, r.clone());
            } else {
                self.recent.push((class, r.clone()));
            }
        }
        (class, r)
    }
}

fn price_hint(class: AssetClass, price: f64) -> i32 {
    match class {
        AssetClass::Currency if price > 20.0 => 3,
        AssetClass::Currency => 5,
        _ if price < 1.0 => 6,
        _ if price < 10.0 => 4,
        _ => 2,
    }
}

/// The session of a quote at `event_ms` (US equity hours in UTC, ignoring holidays and
/// daylight saving; crypto and FX trade around the clock).
fn market_hours(class: AssetClass, event_ms: i64) -> &'static str {
    if class != AssetClass::Stocks {
        return "REGULAR_MARKET";
    }
    let day_ms = event_ms.rem_euclid(86_400_000);
    let minute = day_ms / 60_000;
    let weekday = (event_ms.div_euclid(86_400_000) + 4).rem_euclid(7); // 0 = Sunday
    if weekday == 0 || weekday == 6 {
        return "POST_MARKET";
    }
    match minute {
        m if (8 * 60..13 * 60 + 30).contains(&m) => "PRE_MARKET",
        m if (13 * 60 + 30..20 * 60).contains(&m) => "REGULAR_MARKET",
        _ => "POST_MARKET",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(seed: u64) -> SimConfig {
        SimConfig {
            symbols: AssetClass::ALL
                .into_iter()
                .flat_map(|c| {
                    c.default_symbols()
                        .iter()
                        .map(move |(n, _)| Symbol::parse(c, n).unwrap())
                })
                .collect(),
            seed,
            late_fraction: 0.0,
            late_by_ms: 0,
            duplicate_fraction: 0.0,
            source: "simulator".into(),
        }
    }

    const T0: i64 = 1_714_573_800_000; // 2024-05-01T14:30:00Z, a Wednesday, regular session

    #[test]
    fn same_seed_same_ticks() {
        let run = |seed| {
            let mut sim = Simulator::new(config(seed));
            (0..200)
                .map(|i| sim.next_tick(T0 + i, 0))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn ticks_are_plausible_quotes() {
        let mut sim = Simulator::new(config(1));
        for i in 0..5000 {
            let (class, t) = sim.next_tick(T0 + i * 10, T0 + i * 10 + 3);
            let price = t["price"].as_f64().unwrap();
            assert!(price > 0.0, "{t:?}");
            if let (Some(bid), Some(ask)) = (t.get("bid"), t.get("ask")) {
                assert!(bid.as_f64().unwrap() <= ask.as_f64().unwrap(), "{t:?}");
            }
            match class {
                AssetClass::Currency => assert!(t.get("day_volume").is_none()),
                AssetClass::Crypto => assert!(t.get("bid").is_some()),
                AssetClass::Stocks => assert_eq!(t["market_hours"], "REGULAR_MARKET"),
            }
            assert_eq!(t["event_time"], T0 + i * 10);
            assert_eq!(t["event_id"].as_str().unwrap().len(), 36);
        }
    }

    #[test]
    fn late_and_duplicate_ticks() {
        let mut c = config(3);
        c.late_fraction = 0.2;
        c.late_by_ms = 180_000;
        c.duplicate_fraction = 0.1;
        let mut sim = Simulator::new(c);
        let ticks: Vec<_> = (0..2000)
            .map(|i| sim.next_tick(T0 + i * 100, 0).1)
            .collect();
        let late = ticks
            .iter()
            .enumerate()
            .filter(|(i, t)| t["event_time"].as_i64().unwrap() < T0 + *i as i64 * 100 - 60_000)
            .count();
        assert!(late > 50, "{late} ticks more than a minute late");
        let mut ids: Vec<_> = ticks
            .iter()
            .map(|t| t["event_id"].as_str().unwrap())
            .collect();
        ids.sort();
        let total = ids.len();
        ids.dedup();
        assert!(total - ids.len() > 100, "{} duplicates", total - ids.len());
    }

    #[test]
    fn symbol_specs() {
        let s = Symbol::parse(AssetClass::Currency, "EURUSD=X").unwrap();
        assert_eq!((s.name.as_str(), s.open), ("EURUSD=X", 1.0712));
        let s = Symbol::parse(AssetClass::Stocks, "IBM=170.5").unwrap();
        assert_eq!((s.name.as_str(), s.open), ("IBM", 170.5));
        assert_eq!(
            Symbol::parse(AssetClass::Stocks, "XYZ").unwrap().open,
            100.0
        );
        assert!(Symbol::parse(AssetClass::Stocks, "BAD=-1").is_err());
    }

    #[test]
    fn sessions() {
        assert_eq!(market_hours(AssetClass::Stocks, T0), "REGULAR_MARKET");
        assert_eq!(
            market_hours(AssetClass::Stocks, T0 - 3 * 3_600_000),
            "PRE_MARKET"
        );
        assert_eq!(
            market_hours(AssetClass::Stocks, T0 + 7 * 3_600_000),
            "POST_MARKET"
        );
        assert_eq!(
            market_hours(AssetClass::Crypto, T0 + 7 * 3_600_000),
            "REGULAR_MARKET"
        );
    }
}
