//! `weir tail`: a topic's messages, decoded through the registry, as JSON lines.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use serde_json::json;

use super::ingest::shutdown_signal;
use super::jsonl::{key_json, message_json};
use crate::source::{
    Decoded, Decoder, KafkaSource, Shape, SourceConfig, StartFrom, SubjectStrategy,
};
use tokio_util::sync::CancellationToken;

/// Arguments of `weir tail`.
#[derive(Debug, Args)]
pub struct TailArgs {
    /// The topic.
    topic: String,
    #[command(flatten)]
    endpoints: super::Endpoints,
    /// Start with the oldest message instead of new ones.
    #[arg(long)]
    from_beginning: bool,
    /// Stop after this many messages.
    #[arg(long, short = 'n')]
    count: Option<u64>,
    /// The registry subjects the topic's schema ids must be registered under: `topic`
    /// (`<topic>-value`), `record` (the record's full name), `topic_record`, or a
    /// comma-separated list of subjects.
    #[arg(long, default_value = "topic")]
    subjects: String,
}

/// Runs `weir tail`.
pub async fn run(args: TailArgs) -> anyhow::Result<ExitCode> {
    let registry = Arc::new(args.endpoints.registry.client()?);
    let strategy = match args.subjects.as_str() {
        "topic" => SubjectStrategy::Topic,
        "record" => SubjectStrategy::Record,
        "topic_record" => SubjectStrategy::TopicRecord,
        list => SubjectStrategy::Subjects(list.split(',').map(|s| s.trim().to_string()).collect()),
    };
    // A signal stops the tail wherever it waits, the registry included.
    let stop = CancellationToken::new();
    tokio::spawn({
        let stop = stop.clone();
        async move {
            shutdown_signal().await;
            stop.cancel();
        }
    });
    let decoder = Decoder::new(registry)
        .with_strategy(&args.topic, strategy)
        .with_stop(stop.clone());
    let mut source = KafkaSource::new(&SourceConfig {
        kafka: args.endpoints.kafka()?,
        // A group of its own: tail never moves a pipeline's offsets.
        group_id: format!("weir-tail-{}", uuid::Uuid::new_v4().simple()),
        topics: vec![args.topic.clone()],
        batch_size: 500,
        linger: Duration::from_millis(50),
        start: if args.from_beginning {
            StartFrom::Earliest
        } else {
            StartFrom::Latest
        },
        properties: vec![("enable.auto.commit".into(), "false".into())],
        subscribe: true,
    })?;
    let mut printed = 0u64;
    let mut out = std::io::stdout();
    while args.count.is_none_or(|c| printed < c) {
        let batch = tokio::select! {
            _ = stop.cancelled() => break,
            batch = source.next_batch() => batch?,
        };
        let Ok(decoded) = decoder.decode_batch(&batch, Shape::Fields).await else {
            break;
        };
        for (raw, decoded) in batch.messages.iter().zip(decoded) {
            if args.count.is_some_and(|c| printed >= c) {
                break;
            }
            let line = match decoded {
                Decoded::Message(m) => message_json(&batch.topic, batch.partition, &m),
                Decoded::DeadLetter(d) => json!({
                    "topic": d.topic,
                    "partition": d.partition,
                    "offset": d.offset,
                    "timestamp_ms": raw.timestamp_ms,
                    "key": key_json(&d.key),
                    "dead_letter": { "stage": d.stage.as_str(), "error": d.error },
                }),
            };
            serde_json::to_writer(&mut out, &line)?;
            out.write_all(b"\n")?;
            printed += 1;
        }
        out.flush()?;
    }
    source.close(Duration::from_secs(5));
    Ok(ExitCode::SUCCESS)
}
