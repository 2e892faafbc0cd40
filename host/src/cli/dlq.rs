//! `weir dlq`: the dead letters of a pipeline config's group — listed, shown in full,
//! and replayed to Kafka.
//!
//! A replay re-sends each letter's original key, headers and value, to its own topic and
//! partition (so its pipeline consumes it again) or to `--to-topic`. Exactly once without
//! Kafka transactions, as guests' emits are: one transaction marks the letters replayed
//! and queues their messages in the outbox, under a source partition of their own; the
//! relay then produces them (each with the header `weir-dlq-replay` = `<group>:<id>`) and
//! its recovery scan settles a replay that was interrupted, which the next `weir dlq
//! replay` finishes before it claims anything. Only one replay of a group runs at a time.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use serde_json::{Value as Json, json};

use super::jsonl::{headers_json, key_json, message_json};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::model::{Header, Stage};
use crate::relay::{Relay, RelayConfig};
use crate::sink::dead_letters::{Letter, LetterFilter, REPLAY_HEADER, REPLAY_SOURCE};
use crate::sink::{OutboxMessage, OutboxReader};
use crate::source::{Decoded, Decoder, RawBatch, RawMessage, Shape};

/// `weir dlq …`.
#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// List dead letters, newest first.
    List(ListArgs),
    /// Show dead letters in full, one JSON object a line: key, headers, error, and the
    /// value decoded through the registry when it decodes.
    Show(ShowArgs),
    /// Re-send dead letters' original key, headers and value to their topic (or
    /// `--to-topic`), each at most once, ever.
    Replay(ReplayArgs),
}

/// Whose dead letters: a pipeline config's database and group.
#[derive(Debug, Args)]
pub struct Group {
    /// The pipeline config (its database, group, Kafka and registry).
    #[arg(long, short = 'c')]
    config: PathBuf,
    /// Values for the config's template (YAML).
    #[arg(long)]
    values: Option<PathBuf>,
    /// Overrides the config's `database.url`.
    #[arg(long)]
    database_url: Option<String>,
}

/// Which dead letters.
#[derive(Debug, Args)]
pub struct Filter {
    /// These letters only (ids, as `weir dlq list` shows them); repeatable or
    /// comma-separated.
    #[arg(long = "id", value_delimiter = ',')]
    ids: Vec<i64>,
    /// Letters of this pipeline.
    #[arg(long)]
    pipeline: Option<String>,
    /// Letters from this topic.
    #[arg(long)]
    topic: Option<String>,
    /// Letters that failed at this stage.
    #[arg(long, value_parser = stage)]
    stage: Option<String>,
    /// Letters whose error contains this text (case-insensitive).
    #[arg(long)]
    error: Option<String>,
    /// Dead-lettered at or after: RFC 3339 (`2026-12-01T09:00:00Z`) or a time ago (`2h`).
    #[arg(long, value_parser = when)]
    since: Option<SystemTime>,
    /// Dead-lettered before: RFC 3339 or a time ago.
    #[arg(long, value_parser = when)]
    until: Option<SystemTime>,
}

/// Replayed or not.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum Status {
    /// Not replayed yet.
    Pending,
    /// Replayed.
    Replayed,
    /// Either.
    All,
}

/// Arguments of `weir dlq list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    group: Group,
    #[command(flatten)]
    filter: Filter,
    /// Replayed letters, pending ones, or all.
    #[arg(long, value_enum, default_value_t = Status::All)]
    status: Status,
    /// At most this many.
    #[arg(long, default_value_t = 50)]
    limit: i64,
    /// One JSON object a line instead of a table.
    #[arg(long)]
    json: bool,
}

/// Arguments of `weir dlq show`.
#[derive(Debug, Args)]
pub struct ShowArgs {
    #[command(flatten)]
    group: Group,
    #[command(flatten)]
    filter: Filter,
    /// Replayed letters, pending ones, or all.
    #[arg(long, value_enum, default_value_t = Status::All)]
    status: Status,
    /// At most this many.
    #[arg(long, default_value_t = 10)]
    limit: i64,
}

/// Arguments of `weir dlq replay`.
#[derive(Debug, Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    group: Group,
    #[command(flatten)]
    filter: Filter,
    /// Send to this topic instead of each letter's own (partitioned by key as Kafka's
    /// default partitioner does).
    #[arg(long)]
    to_topic: Option<String>,
    /// At most this many letters.
    #[arg(long)]
    limit: Option<i64>,
    /// Only list what would be replayed.
    #[arg(long)]
    dry_run: bool,
}

/// Runs `weir dlq …`.
pub async fn run(cmd: DlqCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        DlqCommand::List(args) => list(args).await,
        DlqCommand::Show(args) => show(args).await,
        DlqCommand::Replay(args) => replay(args).await,
    }
}

impl Group {
    /// The config, and a connection to its database with weir's tables in place.
    async fn open(&self) -> anyhow::Result<(Config, tokio_postgres::Client)> {
        let mut config = crate::config::load(&self.config, self.values.as_deref())?;
        if let Some(url) = &self.database_url {
            config.database.url = url.clone();
        }
        let client = crate::pg::PgConfig::parse(&config.database.url, "weir dlq")
            .map_err(|e| anyhow::anyhow!(e))?
            .connect_spawned("weir dlq")
            .await
            .map_err(|e| {
                anyhow::anyhow!("cannot connect to Postgres: {}", crate::pg::error_text(&e))
            })?;
        crate::sink::create_system_tables(&client)
            .await
            .map_err(|e| {
                anyhow::anyhow!("cannot create weir's tables: {}", crate::pg::error_text(&e))
            })?;
        Ok((config, client))
    }
}

impl Filter {
    fn with(&self, status: Status) -> LetterFilter {
        LetterFilter {
            pipeline: self.pipeline.clone(),
            topic: self.topic.clone(),
            stage: self.stage.clone(),
            error: self.error.clone(),
            since: self.since,
            until: self.until,
            ids: self.ids.clone(),
            replayed: match status {
                Status::Pending => Some(false),
                Status::Replayed => Some(true),
                Status::All => None,
            },
        }
    }
}

async fn list(args: ListArgs) -> anyhow::Result<ExitCode> {
    let (config, client) = args.group.open().await?;
    let group = config.kafka.group_id.as_str();
    let (letters, total) = args
        .filter
        .with(args.status)
        .list(&client, group, args.limit)
        .await
        .context("reading dead letters")?;
    let mut out = std::io::stdout().lock();
    if args.json {
        for l in &letters {
            writeln!(out, "{}", summary_json(l))?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(
        out,
        "{:>8}  {:<20}  {:<12}  {:<28}  {:<7}  {:<8}  ERROR",
        "ID", "DEAD-LETTERED", "PIPELINE", "MESSAGE", "STAGE", "REPLAYED"
    )?;
    for l in &letters {
        writeln!(
            out,
            "{:>8}  {:<20}  {:<12}  {:<28}  {:<7}  {:<8}  {}",
            l.id,
            time_text(l.created_at),
            l.pipeline.as_deref().unwrap_or("-"),
            format!("{}[{}]@{}", l.topic, l.partition, l.offset),
            l.stage,
            if l.replayed.is_some() { "yes" } else { "no" },
            one_line(&l.error, 100),
        )?;
    }
    writeln!(
        out,
        "{} of {total} dead letter{} of group {group}",
        letters.len(),
        if total == 1 { "" } else { "s" }
    )?;
    Ok(ExitCode::SUCCESS)
}

async fn show(args: ShowArgs) -> anyhow::Result<ExitCode> {
    let (config, client) = args.group.open().await?;
    let (letters, _) = args
        .filter
        .with(args.status)
        .list(&client, &config.kafka.group_id, args.limit)
        .await
        .context("reading dead letters")?;
    let registry = Arc::new(crate::registry::RegistryClient::with_auth(
        &config.registry.url,
        &config.registry.auth(),
    )?);
    let mut decoder = Decoder::new(registry);
    for p in &config.pipelines {
        for t in &p.topics {
            decoder = decoder.with_strategy(t, p.subjects.clone());
        }
    }
    let mut out = std::io::stdout().lock();
    for l in &letters {
        let mut line = summary_json(l);
        line["headers"] = headers_json(&l.headers);
        line["guest_version"] = json!(l.guest_version);
        line["value"] = value_json(&decoder, l).await;
        writeln!(out, "{line}")?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn replay(args: ReplayArgs) -> anyhow::Result<ExitCode> {
    let (config, mut client) = args.group.open().await?;
    let group = config.kafka.group_id.clone();
    let filter = args.filter.with(Status::Pending);
    if args.dry_run {
        let (letters, total) = filter
            .list(&client, &group, args.limit.unwrap_or(i64::MAX))
            .await?;
        for l in letters.iter().rev() {
            println!("{}", summary_json(l));
        }
        println!(
            "would replay {} of {total} pending dead letters",
            letters.len()
        );
        return Ok(ExitCode::SUCCESS);
    }
    // One replay of a group at a time: the relay of its outbox must be the only one.
    let locked: bool = client
        .query_one(
            "SELECT pg_try_advisory_lock(hashtext('weir.dlq-replay'), hashtext($1))",
            &[&group],
        )
        .await?
        .get(0);
    anyhow::ensure!(
        locked,
        "another `weir dlq replay` of group {group} is running; try again when it is done"
    );
    let kafka = config.kafka.clients();
    let mut topics = filter.topics(&client, &group).await?;
    topics.extend(args.to_topic.iter().cloned());
    let counts = crate::relay::partition_counts(&kafka, topics.clone())
        .await
        .with_context(|| format!("reading the partitions of {}", topics.join(", ")))?;
    let missing: Vec<&str> = match &args.to_topic {
        Some(t) => vec![t.as_str()],
        None => topics.iter().map(String::as_str).collect(),
    }
    .into_iter()
    .filter(|t| !counts.contains_key(*t))
    .collect();
    anyhow::ensure!(
        missing.is_empty(),
        "cannot replay to {}: no such topic in {kafka} (replay those letters with --to-topic)",
        missing.join(", ")
    );
    let relay = Relay::new(
        RelayConfig {
            kafka: kafka.clone(),
            group: group.clone(),
            database_url: config.database.url.clone(),
        },
        Metrics::new(),
    )?;
    let lane = relay.assign((REPLAY_SOURCE.to_string(), 0), u64::MAX);
    let mut claimed = 0usize;
    let mut left = args.limit.unwrap_or(i64::MAX);
    while left > 0 {
        let letters = filter
            .claim(&mut client, &group, left.min(1000), |l| {
                message_of(l, &group, args.to_topic.as_deref(), &counts)
            })
            .await
            .context("claiming dead letters to replay")?;
        if letters.is_empty() {
            break;
        }
        claimed += letters.len();
        left -= letters.len() as i64;
        lane.committed(letters.len() as u64);
    }
    // Produced when the outbox of the replay source is empty and nothing is in flight.
    let reader = OutboxReader {
        client: &client,
        group: &group,
    };
    let mut said = std::time::Instant::now();
    let mut interrupted = std::pin::pin!(super::ingest::shutdown_signal());
    loop {
        let (depth, _) = reader.depth(REPLAY_SOURCE, 0).await?;
        if depth == 0 && reader.in_flight(REPLAY_SOURCE, 0).await?.is_none() {
            break;
        }
        if said.elapsed() > Duration::from_secs(10) {
            eprintln!(
                "{depth} replayed messages still to produce (Kafka at {kafka}); Ctrl-C leaves them to the next `weir dlq replay`"
            );
            said = std::time::Instant::now();
        }
        tokio::select! {
            _ = &mut interrupted => {
                relay.close(Duration::from_secs(5));
                anyhow::bail!("interrupted with {depth} replayed messages not yet produced; the next `weir dlq replay` of group {group} produces them");
            }
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
    relay.close(Duration::from_secs(5));
    match (claimed, &args.to_topic) {
        (0, _) => println!("nothing to replay"),
        (n, Some(t)) => println!("replayed {n} dead letter{} to {t}", plural(n)),
        (n, None) => println!("replayed {n} dead letter{} to their topics", plural(n)),
    }
    Ok(ExitCode::SUCCESS)
}

/// The message a letter is replayed as: its own key, headers and value, plus the replay
/// header; to its own partition, or to `to_topic`'s partition for its key.
fn message_of(
    l: &Letter,
    group: &str,
    to_topic: Option<&str>,
    counts: &std::collections::HashMap<String, i32>,
) -> OutboxMessage {
    let topic = to_topic.unwrap_or(&l.topic).to_string();
    let partitions = counts.get(&topic).copied().unwrap_or(l.partition + 1);
    let partition = match (&l.key, to_topic) {
        (_, None) if l.partition < partitions => l.partition,
        (Some(k), _) => crate::relay::partition_of(k, partitions),
        (None, _) => (l.id % i64::from(partitions)) as i32,
    };
    let mut headers = l.headers.clone();
    headers.retain(|h| h.key != crate::relay::OUTBOX_HEADER && h.key != REPLAY_HEADER);
    headers.push(Header {
        key: REPLAY_HEADER.to_string(),
        value: Some(format!("{group}:{}", l.id).into_bytes()),
    });
    OutboxMessage {
        topic,
        partition,
        key: l.key.clone(),
        headers,
        value: l.value.clone(),
    }
}

fn summary_json(l: &Letter) -> Json {
    json!({
        "id": l.id,
        "dead_lettered_at": time_text(l.created_at),
        "pipeline": l.pipeline,
        "topic": l.topic,
        "partition": l.partition,
        "offset": l.offset,
        "stage": l.stage,
        "error": l.error,
        "key": key_json(&l.key),
        "replayed_at": l.replayed.as_ref().map(|(at, _)| time_text(*at)),
        "replayed_to": l.replayed.as_ref().map(|(_, to)| to),
    })
}

/// The value's size and bytes (hex), and its fields when it decodes through the
/// registry, else why it does not.
async fn value_json(decoder: &Decoder<crate::registry::RegistryClient>, l: &Letter) -> Json {
    let Some(value) = &l.value else {
        return Json::Null;
    };
    let shown = &value[..value.len().min(256)];
    let mut out = json!({
        "bytes": value.len(),
        "hex": shown.iter().map(|b| format!("{b:02x}")).collect::<String>(),
    });
    let batch = RawBatch {
        topic: l.topic.clone(),
        partition: l.partition,
        messages: vec![RawMessage {
            offset: l.offset,
            timestamp_ms: 0,
            key: l.key.clone(),
            value: l.value.clone(),
            headers: l.headers.clone(),
        }],
        from: None,
    };
    match decoder.decode_batch(&batch, Shape::Fields).await {
        Ok(mut decoded) => match decoded.pop() {
            Some(Decoded::Message(m)) => {
                let m = message_json(&l.topic, l.partition, &m);
                out["schema_id"] = m["schema_id"].clone();
                out["fields"] = m["fields"].clone();
            }
            Some(Decoded::DeadLetter(d)) => {
                out["decode_error"] = json!(format!("{}: {}", d.stage, d.error));
            }
            None => {}
        },
        Err(e) => out["decode_error"] = json!(e.to_string()),
    }
    out
}

fn stage(s: &str) -> Result<String, String> {
    Stage::ALL
        .iter()
        .find(|st| st.as_str() == s)
        .map(|st| st.as_str().to_string())
        .ok_or_else(|| {
            let names: Vec<&str> = Stage::ALL.iter().map(|s| s.as_str()).collect();
            format!("expected one of {}", names.join(", "))
        })
}

/// RFC 3339, or a duration ago (`90s`, `2h`, `3days`).
fn when(s: &str) -> Result<SystemTime, String> {
    if let Ok(t) = humantime::parse_rfc3339_weak(s) {
        return Ok(t);
    }
    let ago = humantime::parse_duration(s).map_err(|_| {
        format!("expected RFC 3339 (2026-12-01T09:00:00Z) or a time ago (2h), not {s:?}")
    })?;
    SystemTime::now()
        .checked_sub(ago)
        .ok_or_else(|| format!("{s} ago is before the epoch"))
}

fn time_text(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// `s` on one line, cut to `max` characters.
fn one_line(s: &str, max: usize) -> String {
    let line: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    match line.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &line[..at]),
        None => line,
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_or_a_time_ago() {
        let t = when("2026-12-01T09:00:00Z").unwrap();
        assert_eq!(time_text(t), "2026-12-01T09:00:00Z");
        let ago = SystemTime::now()
            .duration_since(when("2h").unwrap())
            .unwrap();
        assert!((7199..=7201).contains(&ago.as_secs()), "{ago:?}");
        assert!(when("yesterday").unwrap_err().contains("RFC 3339"));
    }

    #[test]
    fn stages_are_checked_and_errors_kept_to_a_line() {
        assert_eq!(stage("sink").unwrap(), "sink");
        assert!(stage("sinks").unwrap_err().contains("framing"));
        assert_eq!(one_line("a\nb", 10), "a b");
        assert_eq!(one_line("abcdef", 3), "abc…");
    }

    #[test]
    fn a_letter_replays_to_its_partition_or_by_key_with_the_replay_header() {
        let letter = Letter {
            id: 41,
            pipeline: Some("p".into()),
            topic: "in".into(),
            partition: 2,
            offset: 7,
            stage: "sink".into(),
            error: "e".into(),
            guest_version: None,
            key: Some(b"AAPL".to_vec()),
            value: Some(b"v".to_vec()),
            headers: vec![
                Header {
                    key: "trace".into(),
                    value: Some(b"t".to_vec()),
                },
                Header {
                    key: crate::relay::OUTBOX_HEADER.into(),
                    value: Some(b"g:1".to_vec()),
                },
            ],
            created_at: SystemTime::now(),
            replayed: None,
        };
        let counts = [("in".to_string(), 3), ("retry".to_string(), 5)].into();
        let m = message_of(&letter, "g", None, &counts);
        assert_eq!((m.topic.as_str(), m.partition), ("in", 2));
        let keys: Vec<&str> = m.headers.iter().map(|h| h.key.as_str()).collect();
        assert_eq!(keys, ["trace", REPLAY_HEADER]);
        assert_eq!(m.headers[1].value.as_deref(), Some(&b"g:41"[..]));
        let m = message_of(&letter, "g", Some("retry"), &counts);
        assert_eq!(
            (m.topic.as_str(), m.partition),
            ("retry", crate::relay::partition_of(b"AAPL", 5))
        );
        assert_eq!((m.key, m.value), (letter.key.clone(), letter.value.clone()));
    }
}
