//! A market simulator: ticks for stocks, crypto and currency pairs, and (with
//! [`Simulator::with_options`]) trades of options on the stocks.
//!
//! Each symbol follows a geometric random walk with its own drift and volatility; quotes
//! carry a bid/ask spread around the price and a growing day volume. Everything random
//! comes from one seeded generator, so a seed (with `--start-time`) gives the same ticks
//! every run.
//!
//! Option trades come from a second stream of the same seed, so the ticks are the same
//! with options or without. Each trade is of a contract listed on the day of its event
//! time (the next four Fridays and three monthlies, strikes within 20 % of the spot on
//! the usual grid), priced with Black-Scholes at the underlying's latest simulated price at
//! or before the trade (the price of the last tick produced with the greatest event time
//! not after it), the underlying's volatility with a skew by moneyness, and the risk-free
//! rate. A trade is always after a tick of its underlying, so a consumer pairing each
//! option with the latest underlying tick at or before it finds the one it was priced at
//! (a late tick produced after the trade aside).

use std::collections::{HashMap, VecDeque};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, LogNormal, StandardNormal};
use serde_json::{Map, Value as Json, json};

use super::options::{self, Contract, Right};

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

/// Knobs of the option trades ([`Simulator::with_options`]).
#[derive(Debug, Clone)]
pub struct OptionsConfig {
    /// Share of messages that are option trades, 0..=1.
    pub share: f64,
    /// Risk-free rate the trades are priced with (continuously compounded, annualised).
    pub rate: f64,
}

impl Default for OptionsConfig {
    fn default() -> Self {
        Self {
            share: 0.2,
            rate: options::DEFAULT_RISK_FREE_RATE,
        }
    }
}

/// One message to produce: its topic, key and record.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// The topic.
    pub topic: &'static str,
    /// The key: the symbol of a tick, the underlying of an option trade (so one
    /// underlying's trades stay in order on one partition).
    pub key: String,
    /// The record, by the topic's schema's field names.
    pub record: Map<String, Json>,
}

struct State {
    price: f64,
    last_ms: Option<i64>,
    volume: i64,
}

/// The option side of the simulation: its own random stream, the recent ticks of each
/// underlying, and each traded contract's volume and open interest.
struct Options {
    config: OptionsConfig,
    rng: ChaCha8Rng,
    /// Indices (into the symbols) of the underlyings options are listed on.
    underlyings: Vec<usize>,
    /// Per symbol index: its recent ticks as (event ms, price), by event time and, for
    /// equal times, in the order produced.
    history: HashMap<usize, VecDeque<(i64, f64)>>,
    contracts: HashMap<String, ContractState>,
    sizes: LogNormal<f64>,
    open_interest: LogNormal<f64>,
    recent: Vec<Map<String, Json>>,
}

struct ContractState {
    day: i64,
    volume: i64,
    open_interest: i64,
}

/// The next ticks of the simulated market.
pub struct Simulator {
    config: SimConfig,
    rng: ChaCha8Rng,
    states: Vec<State>,
    volume: HashMap<AssetClass, LogNormal<f64>>,
    recent: Vec<(AssetClass, Map<String, Json>)>,
    options: Option<Options>,
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
            options: None,
        }
    }

    /// Adds option trades on the stocks (not indices) to [`next_message`](Self::next_message).
    /// Their randomness is a stream of its own: the ticks stay those of the same seed
    /// without options.
    pub fn with_options(mut self, config: OptionsConfig) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(self.config.seed);
        rng.set_stream(1);
        let underlyings = self
            .config
            .symbols
            .iter()
            .enumerate()
            .filter(|(_, s)| optionable(s))
            .map(|(i, _)| i)
            .collect();
        self.options = Some(Options {
            config,
            rng,
            underlyings,
            history: HashMap::new(),
            contracts: HashMap::new(),
            sizes: LogNormal::new(1.0, 1.0).expect("valid lognormal"),
            open_interest: LogNormal::new(6.0, 1.2).expect("valid lognormal"),
            recent: Vec::new(),
        });
        self
    }

    /// Whether any simulated symbol has options listed on it.
    pub fn has_optionable(symbols: &[Symbol]) -> bool {
        symbols.iter().any(optionable)
    }

    /// The next message: with options on, an option trade with probability
    /// [`OptionsConfig::share`] (once an underlying has ticked before `clock_ms`), else a
    /// tick as [`next_tick`](Self::next_tick) makes it. An option trade's event time is
    /// `clock_ms - 1` (set back when late), so a tick made later at `clock_ms` or after
    /// (not late) falls after it; pass the clock the next tick would get.
    pub fn next_message(&mut self, clock_ms: i64, ingestion_ms: i64) -> Message {
        let option = match &mut self.options {
            Some(o) => o.rng.random_bool(o.config.share.clamp(0.0, 1.0)),
            None => false,
        };
        if option && let Some(record) = self.option_trade(clock_ms, ingestion_ms) {
            return Message {
                topic: options::TOPIC,
                key: record["underlying"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                record,
            };
        }
        let (class, record) = self.next_tick(clock_ms, ingestion_ms);
        Message {
            topic: class.topic(),
            key: record["id"].as_str().unwrap_or_default().to_string(),
            record,
        }
    }

    /// A trade of an option on an underlying that ticked at or before `clock_ms - 1`;
    /// `None` when none has.
    fn option_trade(&mut self, clock_ms: i64, ingestion_ms: i64) -> Option<Map<String, Json>> {
        let config = &self.config;
        let o = self.options.as_mut()?;
        if !o.recent.is_empty() && o.rng.random_bool(config.duplicate_fraction.clamp(0.0, 1.0)) {
            let i = o.rng.random_range(0..o.recent.len());
            return Some(o.recent[i].clone());
        }
        let on_time = clock_ms - 1;
        let eligible: Vec<usize> = o
            .underlyings
            .iter()
            .copied()
            .filter(|i| {
                o.history
                    .get(i)
                    .and_then(|h| h.front())
                    .is_some_and(|(t, _)| *t <= on_time)
            })
            .collect();
        if eligible.is_empty() {
            return None;
        }
        let i = eligible[o.rng.random_range(0..eligible.len())];
        let late = config.late_fraction > 0.0
            && config.late_by_ms > 0
            && o.rng.random_bool(config.late_fraction.clamp(0.0, 1.0));
        let history = &o.history[&i];
        let mut event_ms = on_time;
        if late {
            event_ms -= o.rng.random_range(1..=config.late_by_ms);
        }
        // Never before the underlying's first tick (that is kept).
        event_ms = event_ms.max(history.front().map_or(event_ms, |(t, _)| *t));
        let spot = price_at(history, event_ms)?;
        let symbol = &config.symbols[i];

        let today = event_ms.div_euclid(options::DAY_MS);
        let expiries = options::expiries_after(today);
        // Near expiries trade most.
        let u: f64 = o.rng.random();
        let expiry = expiries[((u * u * expiries.len() as f64) as usize).min(expiries.len() - 1)];
        let z: f64 = StandardNormal.sample(&mut o.rng);
        let strike = pick_strike(spot, z);
        let right = if o.rng.random_bool(0.5) {
            Right::Call
        } else {
            Right::Put
        };
        let contract = Contract {
            root: options::root(&symbol.name),
            expiry,
            right,
            strike,
        };
        let sigma = smile(volatility(&symbol.name), spot, strike);
        let t = options::years_to_expiry(expiry, event_ms);
        // An American contract is worth at least what exercising it now pays: deep in the
        // money, a put's Black-Scholes value (a European's) falls below that floor.
        let european = options::black_scholes(right, spot, strike, t, o.config.rate, sigma);
        let exercise = options::exercise_value(right, spot, strike);
        let floored = exercise > european;
        let price = cents(european.max(exercise)).max(0.01);
        let half_spread = (price * 0.02 * (0.5 + o.rng.random::<f64>())).max(0.01);
        let (bid, ask) = (
            cents((price - half_spread).max(0.0)),
            cents(price + half_spread),
        );
        let size = (o.sizes.sample(&mut o.rng).ceil() as i64).max(1);
        let id = contract.symbol();
        if !o.contracts.contains_key(&id) {
            let open_interest = o.open_interest.sample(&mut o.rng).round() as i64;
            o.contracts.insert(
                id.clone(),
                ContractState {
                    day: today,
                    volume: 0,
                    open_interest,
                },
            );
        }
        let state = o.contracts.get_mut(&id).expect("inserted");
        if today > state.day {
            // A new session: part of yesterday's volume opened positions.
            state.open_interest += state.volume / 2;
            state.volume = 0;
            state.day = today;
        }
        state.volume += size;
        // The feed's volatility is the one priced with; none for a price at the exercise
        // floor, which that volatility does not give.
        let implied_volatility = o
            .rng
            .random_bool(0.5)
            .then(|| (sigma * 1e6).round() / 1e6)
            .filter(|_| !floored);
        let mut uuid_bytes = [0u8; 16];
        o.rng.fill(&mut uuid_bytes);
        let event_id = uuid::Builder::from_random_bytes(uuid_bytes).into_uuid();

        let mut r = Map::new();
        r.insert("id".into(), json!(id));
        r.insert("underlying".into(), json!(symbol.name));
        r.insert("expiry".into(), json!(expiry));
        r.insert("strike".into(), json!(strike));
        r.insert("option_type".into(), json!(right.name()));
        r.insert("style".into(), json!("AMERICAN"));
        r.insert("exchange".into(), json!("OPR"));
        r.insert("currency".into(), json!("USD"));
        r.insert("price".into(), json!(price));
        r.insert("bid".into(), json!(bid));
        r.insert("ask".into(), json!(ask));
        r.insert("last_size".into(), json!(size as f64));
        r.insert("volume".into(), json!(state.volume));
        r.insert("open_interest".into(), json!(state.open_interest));
        r.insert("implied_volatility".into(), json!(implied_volatility));
        r.insert("event_time".into(), json!(event_ms));
        r.insert("event_id".into(), json!(event_id.to_string()));
        r.insert("ingestion_time".into(), json!(ingestion_ms));
        r.insert("source".into(), json!(config.source));
        if config.duplicate_fraction > 0.0 {
            if o.recent.len() >= 64 {
                let j = o.rng.random_range(0..o.recent.len());
                o.recent[j] = r.clone();
            } else {
                o.recent.push(r.clone());
            }
        }
        Some(r)
    }

    /// Keeps tick (`event_ms`, `price`) of symbol `i` for pricing its options, and forgets
    /// ticks no option trade can be priced at any more.
    fn remember(&mut self, i: usize, event_ms: i64, price: f64) {
        let late_by = self.config.late_by_ms.max(0);
        let Some(o) = &mut self.options else { return };
        if !o.underlyings.contains(&i) {
            return;
        }
        let history = o.history.entry(i).or_default();
        let at = history.partition_point(|(t, _)| *t <= event_ms);
        history.insert(at, (event_ms, price));
        // Trades are at most `late_by` (and a millisecond) before the newest tick.
        let horizon = history.back().map_or(event_ms, |(t, _)| *t) - late_by - 2;
        while history.len() >= 2 && history[1].0 <= horizon {
            history.pop_front();
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
        // Options are priced at the price the tick shows.
        self.remember(i, event_ms, round(price));
        (class, r)
    }
}

/// Whether options are listed on `symbol`: stocks, not indices, whose strikes fit the
/// OCC symbol's eight digits.
fn optionable(symbol: &Symbol) -> bool {
    symbol.class == AssetClass::Stocks && !symbol.name.starts_with('^') && symbol.open < 50_000.0
}

/// The price of the last tick at or before `event_ms` in `history`.
fn price_at(history: &VecDeque<(i64, f64)>, event_ms: i64) -> Option<f64> {
    let at = history.partition_point(|(t, _)| *t <= event_ms);
    at.checked_sub(1).map(|i| history[i].1)
}

/// The at-the-money volatility of options on `underlying` (annualised).
pub fn volatility(underlying: &str) -> f64 {
    match underlying {
        "AAPL" => 0.24,
        "MSFT" => 0.22,
        "GOOGL" => 0.28,
        "AMZN" => 0.30,
        "NVDA" => 0.48,
        "TSLA" => 0.55,
        "JPM" => 0.20,
        _ => 0.30,
    }
}

/// The volatility of strike `strike` with the underlying at `spot`: `atm` with a mild
/// equity skew (low strikes dearer) and smile, by log-moneyness.
pub fn smile(atm: f64, spot: f64, strike: f64) -> f64 {
    let x = (strike / spot).ln();
    (atm * (1.0 - 0.6 * x + 1.2 * x * x)).max(0.05)
}

/// The strike grid's step near `spot`.
fn strike_step(spot: f64) -> f64 {
    match spot {
        s if s < 5.0 => 0.5,
        s if s < 25.0 => 1.0,
        s if s < 200.0 => 2.5,
        s if s < 1000.0 => 5.0,
        _ => 10.0,
    }
}

/// A listed strike near `spot` (`z` standard normal draws how far): on the step grid,
/// within 20 % of the spot.
fn pick_strike(spot: f64, z: f64) -> f64 {
    let step = strike_step(spot);
    let target = spot * (1.0 + (0.07 * z).clamp(-0.2, 0.2));
    let (lo, hi) = ((spot * 0.8 / step).ceil(), (spot * 1.2 / step).floor());
    let n = if lo <= hi {
        (target / step).round().clamp(lo, hi)
    } else {
        (spot / step).round().max(1.0)
    };
    (n * step * 1000.0).round() / 1000.0
}

fn cents(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
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

    fn with_options(seed: u64) -> Simulator {
        Simulator::new(config(seed)).with_options(OptionsConfig::default())
    }

    /// The messages of `sim` with the clock advancing `step_ms` per tick, as the CLI does.
    fn run(sim: &mut Simulator, n: usize, step_ms: i64) -> Vec<Message> {
        let mut ticks = 0;
        (0..n)
            .map(|_| {
                let m = sim.next_message(T0 + ticks * step_ms, 0);
                if m.topic != options::TOPIC {
                    ticks += 1;
                }
                m
            })
            .collect()
    }

    fn days(ms: i64) -> i64 {
        ms.div_euclid(options::DAY_MS)
    }

    #[test]
    fn ticks_are_the_same_with_options_or_without() {
        let plain: Vec<Message> = {
            let mut sim = Simulator::new(config(5));
            run(&mut sim, 3000, 10)
        };
        let mut sim = with_options(5);
        let all = run(&mut sim, 3750, 10);
        let ticks: Vec<&Message> = all.iter().filter(|m| m.topic != options::TOPIC).collect();
        let options = all.len() - ticks.len();
        assert!((600..900).contains(&options), "{options} option trades");
        let n = ticks.len().min(plain.len());
        assert!(n > 2800);
        assert!(ticks[..n].iter().zip(&plain[..n]).all(|(a, b)| *a == b));
        // And the same seed gives the same trades.
        assert_eq!(
            run(&mut with_options(5), 500, 10),
            run(&mut with_options(5), 500, 10)
        );
        assert_ne!(
            run(&mut with_options(5), 500, 10),
            run(&mut with_options(6), 500, 10)
        );
    }

    /// Each option trade, with the underlying tick a consumer pairs it with: the latest one
    /// produced before it with an event time at or before the trade's.
    type Record = Map<String, Json>;

    fn paired(messages: &[Message]) -> Vec<(&Record, &Record)> {
        let mut latest: HashMap<&str, Vec<&Map<String, Json>>> = HashMap::new();
        let mut out = Vec::new();
        for m in messages {
            if m.topic == options::TOPIC {
                let at = m.record["event_time"].as_i64().unwrap();
                let ticks = &latest[m.record["underlying"].as_str().unwrap()];
                let tick = ticks
                    .iter()
                    .filter(|t| t["event_time"].as_i64().unwrap() <= at)
                    .max_by_key(|t| t["event_time"].as_i64().unwrap())
                    .expect("a tick at or before the trade");
                out.push((&m.record, *tick));
            } else {
                latest
                    .entry(m.record["id"].as_str().unwrap())
                    .or_default()
                    .push(&m.record);
            }
        }
        out
    }

    fn check_trades(messages: &[Message], rate: f64) -> usize {
        let pairs = paired(messages);
        let mut with_iv = 0;
        for (o, tick) in &pairs {
            let at = o["event_time"].as_i64().unwrap();
            let spot = tick["price"].as_f64().unwrap();
            let strike = o["strike"].as_f64().unwrap();
            let expiry = o["expiry"].as_i64().unwrap() as i32;
            assert!(options::expiry_close_ms(expiry) > at, "{o:?}");
            assert!(
                i64::from(expiry) > days(at),
                "expires after the trade's day: {o:?}"
            );
            // The symbol says what the fields say.
            let c = Contract::parse(o["id"].as_str().unwrap()).expect("an OCC symbol");
            let right = match o["option_type"].as_str().unwrap() {
                "CALL" => Right::Call,
                "PUT" => Right::Put,
                other => panic!("{other}"),
            };
            assert_eq!(
                (c.root.as_str(), c.expiry, c.right, c.strike),
                (o["underlying"].as_str().unwrap(), expiry, right, strike)
            );
            assert!(
                (strike / spot - 1.0).abs() <= 0.2 + 1e-9,
                "{strike} vs {spot}"
            );
            let sigma = smile(volatility(&c.root), spot, strike);
            let t = options::years_to_expiry(expiry, at);
            let european = options::black_scholes(right, spot, strike, t, rate, sigma);
            let exercise = options::exercise_value(right, spot, strike);
            let model = european.max(exercise);
            if let Some(iv) = o["implied_volatility"].as_f64() {
                assert!((iv - sigma).abs() < 1e-6);
                assert!(european >= exercise, "no volatility at the floor: {o:?}");
                with_iv += 1;
            } else {
                assert!(o["implied_volatility"].is_null());
            }
            let price = o["price"].as_f64().unwrap();
            assert!(
                (price - model).abs() <= 0.005 + 1e-9 || (price == 0.01 && model < 0.01),
                "{price} vs the model's {model}: {o:?} at {tick:?}"
            );
            let (bid, ask) = (o["bid"].as_f64().unwrap(), o["ask"].as_f64().unwrap());
            assert!(bid <= price && price <= ask && bid >= 0.0, "{o:?}");
            assert!(o["last_size"].as_f64().unwrap() >= 1.0);
            assert!(o["volume"].as_i64().unwrap() >= 1);
            assert!(o["open_interest"].as_i64().unwrap() >= 0);
            assert_eq!(
                (o["style"].as_str(), o["currency"].as_str()),
                (Some("AMERICAN"), Some("USD"))
            );
        }
        assert!(
            with_iv > pairs.len() / 3 && with_iv < pairs.len() * 2 / 3,
            "{with_iv}"
        );
        pairs.len()
    }

    #[test]
    fn option_trades_are_priced_at_the_underlyings_latest_tick() {
        let mut sim = with_options(9);
        let messages = run(&mut sim, 4000, 7);
        assert!(check_trades(&messages, options::DEFAULT_RISK_FREE_RATE) > 500);
        // Over days (weekly expiries roll), with another rate.
        let mut sim = Simulator::new(config(10)).with_options(OptionsConfig {
            share: 0.5,
            rate: 0.01,
        });
        let messages = run(&mut sim, 3000, 600_000);
        assert!(check_trades(&messages, 0.01) > 1000);
        let expiries: std::collections::BTreeSet<_> = messages
            .iter()
            .filter(|m| m.topic == options::TOPIC)
            .map(|m| m.record["expiry"].as_i64().unwrap())
            .collect();
        assert!(expiries.len() > 6, "{expiries:?}");
        // No index options, every stock has some, and keys are underlyings.
        let underlyings: std::collections::BTreeSet<_> = messages
            .iter()
            .filter(|m| m.topic == options::TOPIC)
            .inspect(|m| assert_eq!(m.key, m.record["underlying"].as_str().unwrap()))
            .map(|m| m.key.clone())
            .collect();
        assert_eq!(underlyings.len(), 7, "{underlyings:?}");
        assert!(!underlyings.contains("^GSPC"));
    }

    #[test]
    fn volume_grows_per_contract() {
        let mut sim = Simulator::new(config(4)).with_options(OptionsConfig {
            share: 0.6,
            ..Default::default()
        });
        let mut last: HashMap<String, (i64, i64)> = HashMap::new();
        let mut repeated = 0;
        for m in run(&mut sim, 4000, 10) {
            if m.topic != options::TOPIC {
                continue;
            }
            let r = &m.record;
            let (volume, oi) = (
                r["volume"].as_i64().unwrap(),
                r["open_interest"].as_i64().unwrap(),
            );
            let size = r["last_size"].as_f64().unwrap() as i64;
            if let Some((v, o)) = last.insert(r["id"].as_str().unwrap().into(), (volume, oi)) {
                assert_eq!((volume, oi), (v + size, o), "{r:?}");
                repeated += 1;
            } else {
                assert_eq!(volume, size);
            }
        }
        assert!(
            repeated > 100,
            "{repeated} trades of a contract traded before"
        );
    }

    #[test]
    fn late_and_duplicate_option_trades_still_follow_a_tick() {
        let mut c = config(12);
        c.late_fraction = 0.2;
        c.late_by_ms = 120_000;
        c.duplicate_fraction = 0.1;
        let mut sim = Simulator::new(c).with_options(OptionsConfig {
            share: 0.4,
            ..Default::default()
        });
        let messages = run(&mut sim, 6000, 50);
        // Duplicates are copies: pair only the first of each event id.
        let mut seen = std::collections::HashSet::new();
        let firsts: Vec<Message> = messages
            .iter()
            .filter(|m| seen.insert(m.record["event_id"].as_str().unwrap().to_string()))
            .cloned()
            .collect();
        let dups = messages.len() - firsts.len();
        assert!(dups > 300, "{dups}");
        check_trades(&firsts, options::DEFAULT_RISK_FREE_RATE);
        let mut clock = T0;
        let mut late = 0;
        let mut ticks = 0;
        for m in &firsts {
            if m.topic == options::TOPIC {
                if m.record["event_time"].as_i64().unwrap() < clock - 60_000 {
                    late += 1;
                }
            } else {
                ticks += 1;
                clock = T0 + ticks * 50;
            }
        }
        assert!(late > 100, "{late} option trades more than a minute late");
    }

    #[test]
    fn options_need_a_stock_that_ticked() {
        let mut c = config(1);
        c.symbols
            .retain(|s| s.class != AssetClass::Stocks || s.name == "^GSPC");
        assert!(!Simulator::has_optionable(&c.symbols));
        let mut sim = Simulator::new(c).with_options(OptionsConfig {
            share: 1.0,
            ..Default::default()
        });
        assert!(
            run(&mut sim, 200, 10)
                .iter()
                .all(|m| m.topic != options::TOPIC)
        );
        // With share 1 the first message is a tick, then trades on what has ticked.
        let mut c = config(1);
        c.symbols.retain(|s| s.name == "AAPL");
        let mut sim = Simulator::new(c).with_options(OptionsConfig {
            share: 1.0,
            ..Default::default()
        });
        let first = sim.next_message(T0, 0);
        assert_eq!(first.topic, "tickers.stocks");
        let next = sim.next_message(T0, 0);
        assert_eq!(
            next.topic, "tickers.stocks",
            "the trade would be before the tick"
        );
        let trade = sim.next_message(T0 + 10, 0);
        assert_eq!(trade.topic, options::TOPIC);
        assert_eq!(trade.record["event_time"], T0 + 9);
    }

    #[test]
    fn strikes_sit_on_the_grid_near_the_spot() {
        for (spot, z, want) in [
            (187.25, 0.0, 187.5),
            (187.25, 10.0, 222.5),
            (187.25, -10.0, 150.0),
            (880.05, 0.3, 900.0),
            (3.2, 0.0, 3.0),
            (0.4, 0.0, 0.5),
        ] {
            assert_eq!(pick_strike(spot, z), want, "{spot} {z}");
        }
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
