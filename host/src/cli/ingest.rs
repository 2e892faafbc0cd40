//! `weir ingest simulate`, `weir ingest replay`, and the live feeds `weir ingest coinbase`
//! and `weir ingest yahoo`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};

use crate::ingest::replay::{Format, Reader};
use crate::ingest::simulate::{AssetClass, OptionsConfig, SimConfig, Simulator, Symbol};
use crate::ingest::{Pacer, Producer, now_ms};
use crate::source::kafka::ensure_topics;

/// `weir ingest` subcommands.
#[derive(Debug, Subcommand)]
pub enum IngestCommand {
    /// Produce simulated ticks for stocks, crypto and currency pairs (and, with --options,
    /// option trades on the stocks).
    Simulate(SimulateArgs),
    /// Produce the ticks in a JSON lines or CSV file.
    Replay(ReplayArgs),
    /// Produce the Coinbase Exchange feed's tickers to tickers.crypto.
    Coinbase(CoinbaseArgs),
    /// Produce Yahoo Finance's streaming quotes to tickers.stocks, .crypto, .currency and
    /// .options.
    Yahoo(YahooArgs),
}

/// Where to produce.
#[derive(Debug, Args)]
pub struct Target {
    /// Kafka and the registry; each topic's subject `TOPIC-value` must be registered.
    #[command(flatten)]
    endpoints: super::Endpoints,
    /// Messages a second; `max` for as fast as possible.
    #[arg(long, default_value = "100", value_parser = parse_rate)]
    rate: Rate,
    /// Create missing topics with this many partitions (0: do not create).
    #[arg(long, default_value_t = 3)]
    partitions: i32,
}

/// A target rate.
#[derive(Debug, Clone, Copy)]
pub struct Rate(Option<f64>);

fn parse_rate(s: &str) -> Result<Rate, String> {
    if s.eq_ignore_ascii_case("max") {
        return Ok(Rate(None));
    }
    match s.parse::<f64>() {
        Ok(r) if r > 0.0 && r.is_finite() => Ok(Rate(Some(r))),
        _ => Err(format!(
            "{s:?} is not a rate: a positive number of messages a second, or max"
        )),
    }
}

/// Arguments of `weir ingest simulate`.
#[derive(Debug, Args)]
pub struct SimulateArgs {
    #[command(flatten)]
    target: Target,
    /// Stock symbols, `AAPL,MSFT` or with starting prices `AAPL=187.5`; `none` for none.
    #[arg(long, value_delimiter = ',')]
    stocks: Option<Vec<String>>,
    /// Crypto symbols (`BTC-USD,ETH-USD`); `none` for none.
    #[arg(long, value_delimiter = ',')]
    crypto: Option<Vec<String>>,
    /// FX pairs (`EURUSD=X,USDJPY=X`); `none` for none.
    #[arg(long, value_delimiter = ',')]
    currency: Option<Vec<String>>,
    /// Stop after this many messages.
    #[arg(long)]
    count: Option<u64>,
    /// Stop after this long (`30s`, `5m`).
    #[arg(long, value_parser = super::parse_duration)]
    duration: Option<Duration>,
    /// Seed of the random walk (and event ids); random when left out.
    #[arg(long)]
    seed: Option<u64>,
    /// Give events simulated times from this instant on (RFC 3339), advancing by one
    /// interval of the rate per tick (option trades fall between ticks), instead of the
    /// wall clock: with --seed, the same ticks every run.
    #[arg(long)]
    start_time: Option<String>,
    /// With --start-time: the event time between consecutive ticks, instead of one interval
    /// of the rate (`--rate max --count 12000 --tick-interval 100ms` is twenty minutes of
    /// history, produced at once).
    #[arg(long, value_parser = super::parse_duration, requires = "start_time")]
    tick_interval: Option<Duration>,
    /// Share of ticks that arrive late (event time set back by up to --late-by).
    #[arg(long, default_value_t = 0.0)]
    late_fraction: f64,
    /// How late a late tick may be.
    #[arg(long, default_value = "2m", value_parser = super::parse_duration)]
    late_by: Duration,
    /// Share of ticks sent twice with the same event id (a redelivering feed).
    #[arg(long, default_value_t = 0.0)]
    duplicate_fraction: f64,
    /// Also produce option trades on the stocks (not indices) to tickers.options, keyed by
    /// the underlying: contracts of the next four weekly and three monthly expiries,
    /// strikes within 20 % of the spot, priced with Black-Scholes at the underlying's
    /// latest simulated price (at least the exercise value: they are American). They draw from a random stream of their own: the ticks of a
    /// seed are the same with or without them. --late-fraction and --duplicate-fraction
    /// apply to them too.
    #[arg(long)]
    options: bool,
    /// Share of messages that are option trades (with --options).
    #[arg(long, default_value_t = 0.2, requires = "options")]
    option_share: f64,
    /// Risk-free rate option trades are priced with (continuously compounded, annualised;
    /// the default is that of the `rates` table).
    #[arg(long, default_value_t = crate::ingest::options::DEFAULT_RISK_FREE_RATE, requires = "options")]
    risk_free_rate: f64,
}

/// Arguments of `weir ingest replay`.
#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// The file: JSON lines, or CSV with a header row.
    file: PathBuf,
    #[command(flatten)]
    target: Target,
    /// Topic of records that name none in a `topic` field.
    #[arg(long)]
    topic: Option<String>,
    /// File format; by default from the extension (.csv is CSV, else JSON lines).
    #[arg(long, value_enum)]
    format: Option<Format>,
}

/// What every live feed (`weir ingest coinbase`, `weir ingest yahoo`) takes.
#[derive(Debug, Args)]
pub struct FeedArgs {
    /// Kafka and the registry; the feed's topics' `TOPIC-value` subjects must be registered.
    #[command(flatten)]
    endpoints: super::Endpoints,
    /// Reconnect when the feed sends nothing for this long.
    #[arg(long, default_value = "30s", value_parser = super::parse_duration)]
    stale_after: Duration,
    /// First delay before reconnecting; it doubles (with jitter) up to --backoff-max.
    #[arg(long, default_value = "500ms", value_parser = super::parse_duration)]
    backoff_min: Duration,
    /// Longest delay before reconnecting.
    #[arg(long, default_value = "30s", value_parser = super::parse_duration)]
    backoff_max: Duration,
    /// Event ids remembered to drop updates redelivered across a reconnect.
    #[arg(long, default_value_t = 100_000)]
    dedup_window: usize,
    /// Serve /metrics and /healthz on this address (`127.0.0.1:9102`).
    #[arg(long)]
    http: Option<std::net::SocketAddr>,
    /// Create the feed's topics if missing with this many partitions (0: do not create).
    #[arg(long, default_value_t = 3)]
    partitions: i32,
    /// CA certificates (PEM) to trust for `wss://`, besides the system's.
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// Serve the control endpoint (POST /start, POST /stop, GET /status) on this address;
    /// off without it. Every request needs `Authorization: Bearer TOKEN`.
    #[arg(long, requires = "control_token")]
    control: Option<std::net::SocketAddr>,
    /// The control endpoint's bearer token: a file holding it…
    #[arg(long, group = "control_token")]
    control_token_file: Option<PathBuf>,
    /// …or an environment variable holding it.
    #[arg(long, group = "control_token")]
    control_token_env: Option<String>,
}

/// Arguments of `weir ingest coinbase`.
#[derive(Debug, Args)]
pub struct CoinbaseArgs {
    #[command(flatten)]
    feed: FeedArgs,
    /// Products to subscribe to.
    #[arg(long, value_delimiter = ',', default_value = "BTC-USD,ETH-USD")]
    products: Vec<String>,
    /// The feed's websocket URL.
    #[arg(long, default_value = crate::ingest::coinbase::DEFAULT_URL)]
    url: String,
}

/// Arguments of `weir ingest yahoo`.
#[derive(Debug, Args)]
pub struct YahooArgs {
    #[command(flatten)]
    feed: FeedArgs,
    /// Symbols to subscribe to, as Yahoo Finance names them (`AAPL,BTC-USD,EURUSD=X`).
    #[arg(long, value_delimiter = ',', required = true)]
    symbols: Vec<String>,
    /// The streamer's websocket URL.
    #[arg(long, default_value = crate::ingest::yahoo::DEFAULT_URL)]
    url: String,
}

/// Runs a `weir ingest` command.
pub async fn run(cmd: IngestCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        IngestCommand::Simulate(args) => simulate(args).await,
        IngestCommand::Replay(args) => replay(args).await,
        IngestCommand::Coinbase(args) => {
            let products = names(&args.products, "--products")?;
            let coinbase = crate::ingest::coinbase::Coinbase::new(products);
            live(
                args.feed,
                args.url,
                &[crate::ingest::coinbase::TOPIC],
                coinbase,
            )
            .await
        }
        IngestCommand::Yahoo(args) => {
            let symbols = names(&args.symbols, "--symbols")?;
            let yahoo = crate::ingest::yahoo::Yahoo::new(symbols);
            live(args.feed, args.url, &crate::ingest::yahoo::TOPICS, yahoo).await
        }
    }
}

/// The names given to a feed's `flag`, trimmed; at least one.
fn names(given: &[String], flag: &str) -> anyhow::Result<Vec<String>> {
    let names: Vec<String> = given
        .iter()
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect();
    anyhow::ensure!(!names.is_empty(), "{flag}: none given");
    Ok(names)
}

/// Reads a live feed at `url` with `protocol` into `topics` until SIGTERM or SIGINT.
async fn live<P: crate::ingest::feed::Protocol>(
    args: FeedArgs,
    url: String,
    topics: &[&str],
    protocol: P,
) -> anyhow::Result<ExitCode> {
    use crate::ingest::feed::{self, Control, FeedConfig, FeedMetrics};
    use anyhow::Context as _;
    anyhow::ensure!(
        !args.stale_after.is_zero(),
        "--stale-after must be longer than 0"
    );
    let metrics = FeedMetrics::new(topics);
    let control = Control::new(&url);
    // Listen before connecting anywhere: a taken port or a missing token is refused at once.
    let (stop_control, control_stopped) = tokio::sync::oneshot::channel::<()>();
    let control_server = match args.control {
        Some(addr) => {
            let token = match (args.control_token_file, args.control_token_env) {
                (Some(file), _) => crate::admin::TokenSource::File(file),
                (None, Some(var)) => crate::admin::TokenSource::Env(var),
                (None, None) => {
                    anyhow::bail!("--control needs --control-token-file or --control-token-env")
                }
            };
            token.read().context("--control")?;
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| anyhow::anyhow!("cannot listen on {addr} (--control): {e}"))?;
            tracing::info!(address = %addr, "Serving the control endpoint");
            let router = feed::control_router(control.clone(), metrics.clone(), token);
            Some(tokio::spawn(crate::serve::serve(
                "control",
                listener,
                router,
                crate::config::HttpConfig::default().limits(),
                async {
                    let _ = control_stopped.await;
                },
            )))
        }
        None => None,
    };
    let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let http = match args.http {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| anyhow::anyhow!("cannot listen on {addr} (--http): {e}"))?;
            tracing::info!(address = %addr, "Serving /metrics and /healthz");
            Some(tokio::spawn(feed::serve(
                listener,
                metrics.clone(),
                async {
                    let _ = http_stopped.await;
                },
            )))
        }
        None => None,
    };
    let kafka = args.endpoints.kafka()?;
    let topics: Vec<String> = topics.iter().map(|t| t.to_string()).collect();
    if args.partitions > 0 {
        ensure_topics(&kafka, &topics, args.partitions).await?;
    }
    let registry = args.endpoints.registry.client()?;
    let producer = Producer::connect(&kafka, &registry, &topics).await?;
    let config = FeedConfig {
        url,
        stale_after: args.stale_after,
        backoff_min: args.backoff_min,
        backoff_max: args.backoff_max,
        dedup_capacity: args.dedup_window,
        ca_file: args.ca_file,
    };
    let result = feed::run(
        protocol,
        config,
        producer,
        metrics,
        control,
        shutdown_signal(),
    )
    .await;
    let _ = stop_http.send(());
    let _ = stop_control.send(());
    if let Some(http) = http {
        let _ = http.await;
    }
    if let Some(control) = control_server {
        let _ = control.await;
    }
    let summary = result?;
    eprintln!(
        "ingest: {} ticks produced, {} redeliveries dropped",
        summary.produced, summary.duplicates
    );
    Ok(ExitCode::SUCCESS)
}

fn symbols(class: AssetClass, given: &Option<Vec<String>>) -> anyhow::Result<Vec<Symbol>> {
    match given {
        None => Ok(class
            .default_symbols()
            .iter()
            .map(|(n, p)| Symbol {
                class,
                name: n.to_string(),
                open: *p,
            })
            .collect()),
        Some(list) if list.len() == 1 && list[0].eq_ignore_ascii_case("none") => Ok(vec![]),
        Some(list) => list
            .iter()
            .filter(|s| !s.trim().is_empty())
            .map(|s| Symbol::parse(class, s).map_err(|e| anyhow::anyhow!("--{}: {e}", flag(class))))
            .collect(),
    }
}

fn flag(class: AssetClass) -> &'static str {
    match class {
        AssetClass::Stocks => "stocks",
        AssetClass::Crypto => "crypto",
        AssetClass::Currency => "currency",
    }
}

async fn prepare(target: &Target, topics: &[String]) -> anyhow::Result<Producer> {
    let kafka = target.endpoints.kafka()?;
    if target.partitions > 0 {
        ensure_topics(&kafka, topics, target.partitions).await?;
    }
    let registry = target.endpoints.registry.client()?;
    Producer::connect(&kafka, &registry, topics).await
}

async fn simulate(args: SimulateArgs) -> anyhow::Result<ExitCode> {
    let mut all = Vec::new();
    for (class, given) in [
        (AssetClass::Stocks, &args.stocks),
        (AssetClass::Crypto, &args.crypto),
        (AssetClass::Currency, &args.currency),
    ] {
        all.extend(symbols(class, given)?);
    }
    anyhow::ensure!(!all.is_empty(), "no symbols to simulate");
    for (name, f) in [
        ("--late-fraction", args.late_fraction),
        ("--duplicate-fraction", args.duplicate_fraction),
    ] {
        anyhow::ensure!(
            (0.0..=1.0).contains(&f),
            "{name} must be between 0 and 1, not {f}"
        );
    }
    let start_ms = match &args.start_time {
        Some(t) => Some(
            humantime::parse_rfc3339_weak(t)
                .map_err(|e| anyhow::anyhow!("--start-time {t:?}: {e}"))?
                .duration_since(std::time::UNIX_EPOCH)?
                .as_millis() as i64,
        ),
        None => None,
    };
    if args.options {
        anyhow::ensure!(
            (0.0..=1.0).contains(&args.option_share),
            "--option-share must be between 0 and 1, not {}",
            args.option_share
        );
        anyhow::ensure!(
            args.risk_free_rate.is_finite() && args.risk_free_rate.abs() < 1.0,
            "--risk-free-rate is a fraction a year (0.045 is 4.5 %), not {}",
            args.risk_free_rate
        );
        anyhow::ensure!(
            Simulator::has_optionable(&all),
            "--options needs stocks to list options on (indices have none): see --stocks"
        );
    }
    let mut topics: Vec<String> = all.iter().map(|s| s.class.topic().to_string()).collect();
    if args.options {
        topics.push(crate::ingest::options::TOPIC.to_string());
    }
    topics.sort();
    topics.dedup();
    let mut producer = prepare(&args.target, &topics).await?;
    let seed = args.seed.unwrap_or_else(|| now_ms() as u64);
    tracing::info!(
        seed,
        symbols = all.len(),
        options = args.options,
        "Simulating ticks"
    );
    let mut sim = Simulator::new(SimConfig {
        symbols: all,
        seed,
        late_fraction: args.late_fraction,
        late_by_ms: args.late_by.as_millis() as i64,
        duplicate_fraction: args.duplicate_fraction,
        source: "simulator".into(),
    });
    if args.options {
        sim = sim.with_options(OptionsConfig {
            share: args.option_share,
            rate: args.risk_free_rate,
        });
    }
    let mut pacer = Pacer::new(args.target.rate.0);
    let step_ms = args
        .tick_interval
        .unwrap_or_else(|| pacer.interval())
        .as_secs_f64()
        * 1000.0;
    let deadline = args.duration.map(|d| std::time::Instant::now() + d);
    let mut sent = 0u64;
    // The simulated clock advances one interval per tick: option trades fall between ticks,
    // so the ticks of a seed keep their times with or without --options.
    let mut ticks = 0u64;
    let stop = shutdown_signal();
    tokio::pin!(stop);
    loop {
        if args.count.is_some_and(|c| sent >= c)
            || deadline.is_some_and(|d| std::time::Instant::now() >= d)
        {
            break;
        }
        tokio::select! {
            _ = &mut stop => break,
            _ = pacer.tick() => {}
        }
        let now = now_ms();
        let event_ms = start_ms.map_or(now, |s| s + (ticks as f64 * step_ms) as i64);
        let message = sim.next_message(event_ms, now);
        if message.topic != crate::ingest::options::TOPIC {
            ticks += 1;
        }
        if let Err(e) = producer
            .send(message.topic, &message.key, &message.record)
            .await?
        {
            anyhow::bail!(
                "simulated message does not fit the registered schema of {}: {e}",
                message.topic
            );
        }
        sent += 1;
        producer.report();
    }
    producer.finish().await?;
    Ok(ExitCode::SUCCESS)
}

async fn replay(args: ReplayArgs) -> anyhow::Result<ExitCode> {
    let format = args.format.unwrap_or_else(|| Format::for_path(&args.file));
    // Read everything first: a bad line is reported before anything is produced.
    let mut reader = Reader::open(&args.file, format)?;
    let mut records = Vec::new();
    while let Some(record) = reader.next_record() {
        let record = record?;
        let topic = record
            .topic
            .clone()
            .or_else(|| args.topic.clone())
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "{}:{}: the record names no topic; add a `topic` field or pass --topic",
                    args.file.display(),
                    record.line
                )
            })?;
        records.push((topic, record));
    }
    let mut topics: Vec<String> = records.iter().map(|(t, _)| t.clone()).collect();
    topics.sort();
    topics.dedup();
    anyhow::ensure!(!records.is_empty(), "{}: no records", args.file.display());
    let mut producer = prepare(&args.target, &topics).await?;
    let source = format!(
        "replay:{}",
        args.file
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("file")
    );
    // Encode everything before sending anything: a bad field stops the replay with its
    // line before a single message is produced.
    let mut encoded = Vec::with_capacity(records.len());
    for (topic, mut record) in records {
        // Fields a file may leave out: when it was read, and from where.
        let fields = &mut record.fields;
        fields
            .entry("ingestion_time")
            .or_insert_with(|| serde_json::json!(now_ms()));
        fields
            .entry("source")
            .or_insert_with(|| serde_json::json!(source));
        // Keys as the simulator's: the symbol, or an option's underlying.
        let key_field = if topic == crate::ingest::options::TOPIC {
            "underlying"
        } else {
            "id"
        };
        let key = fields
            .get(key_field)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string();
        let payload = producer
            .encode(&topic, fields)
            .map_err(|e| reader.error(record.line, e))?;
        encoded.push((topic, key, payload));
    }
    let mut pacer = Pacer::new(args.target.rate.0);
    for (topic, key, payload) in encoded {
        pacer.tick().await;
        producer.send_bytes(&topic, &key, &payload).await?;
        producer.report();
    }
    producer.finish().await?;
    Ok(ExitCode::SUCCESS)
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("install SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
