//! The decode stage: Confluent framing, the writer schema by id, Avro to typed fields.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::avro::{AvroDecoder, DecodeLimits};
use super::{RawBatch, RawMessage};
use crate::model::{Body, DeadLetter, Layout, Record, Schema, Stage};
use crate::registry::{RegistryError, SchemaId, SchemaSource, unframe};

/// How decoded values are shaped, for the contract of the guest that takes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// Values by position in their schema's layout ([`Body::Values`], guests of 0.2.0).
    Values,
    /// Named fields ([`Body::Fields`], guests of 0.1.0).
    Fields,
}

/// One message after decoding.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    /// Decoded into typed values.
    Message(Record),
    /// Bad input, to be dead-lettered.
    DeadLetter(DeadLetter),
}

/// Decoding stopped because the process is shutting down, while it waited for the schema
/// registry. Nothing of the batch was decoded for good: it is read again later.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("shutting down while waiting for the schema registry")]
pub struct Stopped;

/// Which registry subjects a topic's schema ids must be registered under: the binding that
/// keeps a schema registered anywhere from deciding how a topic is decoded.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SubjectStrategy {
    /// `<topic>-value` (Confluent's TopicNameStrategy, the default).
    #[default]
    Topic,
    /// The fully qualified name of the writer schema's record (RecordNameStrategy).
    Record,
    /// `<topic>-<record full name>` (TopicRecordNameStrategy).
    TopicRecord,
    /// Any of these subjects.
    Subjects(Vec<String>),
}

impl SubjectStrategy {
    /// The subjects a schema must be registered under to be used on `topic`, or why the
    /// schema cannot be.
    fn subjects(&self, topic: &str, schema: &apache_avro::Schema) -> Result<Vec<String>, String> {
        let record_name = || match schema {
            apache_avro::Schema::Record(r) => Ok(r.name.fullname(None)),
            _ => Err(
                "it is not a record schema, so it has no record name to find its subject by"
                    .to_string(),
            ),
        };
        Ok(match self {
            SubjectStrategy::Topic => vec![format!("{topic}-value")],
            SubjectStrategy::Record => vec![record_name()?],
            SubjectStrategy::TopicRecord => vec![format!("{topic}-{}", record_name()?)],
            SubjectStrategy::Subjects(list) => list.clone(),
        })
    }

    /// How the strategy is written in the configuration.
    pub fn describe(&self) -> String {
        match self {
            SubjectStrategy::Topic => "topic".into(),
            SubjectStrategy::Record => "record".into(),
            SubjectStrategy::TopicRecord => "topic_record".into(),
            SubjectStrategy::Subjects(list) => format!("[{}]", list.join(", ")),
        }
    }
}

/// Told when decoding waits for the schema registry, and when it stops waiting, so
/// readiness and metrics can show it.
pub trait DecodeEvents: Send + Sync {
    /// A partition's decoding waits for the registry (`Some(why)`), or no longer does
    /// (`None`).
    fn waiting(&self, topic: &str, partition: i32, why: Option<&str>);
}

/// A writer schema ready to decode with: the decoder and the layout of its values.
#[derive(Debug)]
pub struct Prepared {
    avro: AvroDecoder,
    layout: Arc<Layout>,
}

/// What a schema id resolves to for a topic within one batch.
type Resolved = Result<Arc<Prepared>, String>;

/// Decodes raw messages through a schema registry, caching prepared schemas by id.
pub struct Decoder<S> {
    registry: Arc<S>,
    prepared: Mutex<HashMap<SchemaId, Arc<Prepared>>>,
    /// (id, topic) pairs whose subject binding was confirmed; ids are immutable, and a
    /// binding once made is kept.
    bound: Mutex<HashSet<(SchemaId, String)>>,
    limits: DecodeLimits,
    max_batch_bytes: usize,
    strategies: HashMap<String, SubjectStrategy>,
    retry_min: Duration,
    retry_max: Duration,
    stop: CancellationToken,
    events: Option<Arc<dyn DecodeEvents>>,
}

impl<S: SchemaSource> Decoder<S> {
    /// A decoder over `registry`, with the default limits and the topic subject strategy.
    pub fn new(registry: Arc<S>) -> Self {
        Self {
            registry,
            prepared: Mutex::new(HashMap::new()),
            bound: Mutex::new(HashSet::new()),
            limits: DecodeLimits::default(),
            max_batch_bytes: usize::MAX,
            strategies: HashMap::new(),
            retry_min: Duration::from_millis(200),
            retry_max: Duration::from_secs(30),
            stop: CancellationToken::new(),
            events: None,
        }
    }

    /// Sets the backoff bounds used while the registry is unavailable.
    pub fn with_retry(mut self, min: Duration, max: Duration) -> Self {
        self.retry_min = min;
        self.retry_max = max.max(min);
        self
    }

    /// Decodes every message under `limits`, and hands out at most about
    /// `max_batch_bytes` of decoded messages at a time (see [`Decoder::decode_messages`]).
    pub fn with_limits(mut self, limits: DecodeLimits, max_batch_bytes: usize) -> Self {
        self.limits = limits;
        self.max_batch_bytes = max_batch_bytes.max(1);
        self
    }

    /// Uses `strategy` to bind `topic`'s messages to subjects (the default is
    /// [`SubjectStrategy::Topic`]).
    pub fn with_strategy(mut self, topic: &str, strategy: SubjectStrategy) -> Self {
        self.strategies.insert(topic.to_string(), strategy);
        self
    }

    /// Gives up waiting for the registry once `stop` is cancelled.
    pub fn with_stop(mut self, stop: CancellationToken) -> Self {
        self.stop = stop;
        self
    }

    /// Reports waits for the registry to `events`.
    pub fn with_events(mut self, events: Arc<dyn DecodeEvents>) -> Self {
        self.events = Some(events);
        self
    }

    /// Decodes a whole batch, in order (a budget's worth at a time).
    pub async fn decode_batch(
        &self,
        batch: &RawBatch,
        shape: Shape,
    ) -> Result<Vec<Decoded>, Stopped> {
        let mut out = Vec::with_capacity(batch.messages.len());
        while out.len() < batch.messages.len() {
            let part = self
                .decode_messages(
                    &batch.topic,
                    batch.partition,
                    &batch.messages[out.len()..],
                    shape,
                )
                .await?;
            out.extend(part);
        }
        Ok(out)
    }

    /// Decodes `messages` of one partition, shaped as `shape`, from the first, in order, and stops after the
    /// message that takes the decoded total past `max_batch_bytes`: the result holds at
    /// least one message (if there is one), and at most about `max_batch_bytes` plus one
    /// message's `max_bytes`. The caller goes on with the rest.
    ///
    /// While the registry cannot answer, this waits and retries with backoff (an outage
    /// delays, it loses nothing) until the registry answers or the stop token is
    /// cancelled.
    pub async fn decode_messages(
        &self,
        topic: &str,
        partition: i32,
        messages: &[RawMessage],
        shape: Shape,
    ) -> Result<Vec<Decoded>, Stopped> {
        // Within one batch an id resolves once: the same answer for every message, and
        // one registry request however many messages carry a bad id.
        let mut resolved: HashMap<SchemaId, Resolved> = HashMap::new();
        let mut out = Vec::new();
        let mut total = 0usize;
        for raw in messages {
            let (decoded, size) = self
                .decode_one(topic, partition, raw, shape, &mut resolved)
                .await?;
            out.push(decoded);
            total = total.saturating_add(size);
            if total > self.max_batch_bytes {
                break;
            }
        }
        Ok(out)
    }

    /// Decodes one message (waiting out registry outages), with its decoded size.
    async fn decode_one(
        &self,
        topic: &str,
        partition: i32,
        raw: &RawMessage,
        shape: Shape,
        resolved: &mut HashMap<SchemaId, Resolved>,
    ) -> Result<(Decoded, usize), Stopped> {
        let dead = |stage: Stage, error: String| {
            Decoded::DeadLetter(DeadLetter {
                topic: topic.to_string(),
                partition,
                offset: raw.offset,
                timestamp_ms: raw.timestamp_ms,
                key: raw.key.clone(),
                value: raw.value.clone(),
                headers: raw.headers.clone(),
                stage,
                error,
            })
        };
        let message = |body| {
            Decoded::Message(Record {
                offset: raw.offset,
                timestamp_ms: raw.timestamp_ms,
                key: raw.key.clone(),
                headers: raw.headers.clone(),
                body,
            })
        };
        // A tombstone has no fields to decode.
        let Some(value) = raw.value.as_deref() else {
            return Ok((message(Body::Tombstone), 0));
        };
        let (id, body) = match unframe(value) {
            Ok(framed) => framed,
            Err(e) => return Ok((dead(Stage::Framing, e.to_string()), 0)),
        };
        let decoder = match resolved.get(&id) {
            Some(r) => r.clone(),
            None => {
                let r = self.resolve(id, topic, partition).await?;
                resolved.insert(id, r.clone());
                r
            }
        };
        let decoder = match decoder {
            Ok(d) => d,
            Err(e) => return Ok((dead(Stage::Schema, e), 0)),
        };
        let decoded = match shape {
            Shape::Values => decoder.avro.decode_values(body).map(|(values, size)| {
                let layout = decoder.layout.clone();
                (Body::Values { layout, values }, size)
            }),
            Shape::Fields => decoder.avro.decode(body).map(|(fields, size)| {
                let schema_id = Some(id.0);
                (Body::Fields { schema_id, fields }, size)
            }),
        };
        Ok(match decoded {
            Ok((body, size)) => (message(body), size),
            Err(e) => (dead(Stage::Decode, format!("schema id {id}: {e}")), 0),
        })
    }

    /// The prepared decoder for `id` on `topic`, or why the id cannot be used there (the
    /// registry does not know it, its schema is unusable, or it is not registered under
    /// the topic's subjects).
    async fn resolve(
        &self,
        id: SchemaId,
        topic: &str,
        partition: i32,
    ) -> Result<Resolved, Stopped> {
        let registered = match self
            .retrying(topic, partition, id, || self.registry.schema_by_id(id))
            .await?
        {
            Ok(s) => s,
            Err(e) => return Ok(Err(e.to_string())),
        };
        let strategy = self.strategies.get(topic).cloned().unwrap_or_default();
        let key = (id, topic.to_string());
        if !self
            .bound
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&key)
        {
            let wanted = match strategy.subjects(topic, &registered.schema) {
                Ok(w) => w,
                Err(e) => {
                    return Ok(Err(format!(
                        "schema id {id} cannot be used on topic {topic} with subject strategy {}: {e}",
                        strategy.describe()
                    )));
                }
            };
            let subjects = match self
                .retrying(topic, partition, id, || self.registry.subjects_of(id))
                .await?
            {
                Ok(s) => s,
                Err(e) => {
                    return Ok(Err(format!(
                        "cannot tell which subjects schema id {id} is registered under: {e}"
                    )));
                }
            };
            if !subjects.iter().any(|s| wanted.contains(s)) {
                return Ok(Err(format!(
                    "schema id {id} is registered under {}, not under {} (subject strategy {}): a message on topic {topic} must be written with a schema of its subject",
                    if subjects.is_empty() {
                        "no subject".to_string()
                    } else {
                        format!("subject(s) {}", subjects.join(", "))
                    },
                    wanted.join(" or "),
                    strategy.describe()
                )));
            }
            self.bound
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(key);
        }
        let cached = self
            .prepared
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .cloned();
        if let Some(d) = cached {
            return Ok(Ok(d));
        }
        let decoder = match AvroDecoder::new(&registered.schema, self.limits) {
            Ok(avro) => {
                let layout = Arc::new(Layout::new(Schema {
                    id: Some(id.0),
                    fields: avro.fields().to_vec(),
                }));
                Arc::new(Prepared { avro, layout })
            }
            Err(e) => return Ok(Err(format!("schema id {id} cannot be decoded: {e}"))),
        };
        self.prepared
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, decoder.clone());
        Ok(Ok(decoder))
    }

    /// Runs a registry request until it gets an answer: a transport failure, a 5xx, 408 or
    /// 429 is waited out with backoff (reported as waiting), a definite answer is returned.
    async fn retrying<T, F: Future<Output = Result<T, RegistryError>>>(
        &self,
        topic: &str,
        partition: i32,
        id: SchemaId,
        request: impl Fn() -> F,
    ) -> Result<Result<T, RegistryError>, Stopped> {
        let mut backoff = crate::pg::Backoff::between(self.retry_min, self.retry_max);
        let mut waited = false;
        let result = loop {
            let answer = tokio::select! {
                biased;
                _ = self.stop.cancelled() => return Err(Stopped),
                answer = request() => answer,
            };
            match answer {
                Err(e) if e.is_retryable() => {
                    let delay = backoff.delay();
                    tracing::warn!(topic, partition, schema_id = %id, retry_in = ?delay, error = %e, "Schema registry unavailable; the partition waits and retries");
                    if let Some(events) = &self.events {
                        events.waiting(topic, partition, Some(&e.to_string()));
                    }
                    waited = true;
                    tokio::select! {
                        biased;
                        _ = self.stop.cancelled() => return Err(Stopped),
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
                answer => break answer,
            }
        };
        if waited && let Some(events) = &self.events {
            events.waiting(topic, partition, None);
        }
        Ok(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Body, Field, Value};
    use crate::registry::{RegisteredSchema, frame_into};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A registry that knows schema 1 (registered under `subjects`) and fails the first
    /// `outages` calls as unavailable.
    struct FakeRegistry {
        outages: AtomicUsize,
        calls: AtomicUsize,
        subjects: Vec<String>,
    }

    fn fake(outages: usize, subjects: &[&str]) -> Arc<FakeRegistry> {
        Arc::new(FakeRegistry {
            outages: AtomicUsize::new(outages),
            calls: AtomicUsize::new(0),
            subjects: subjects.iter().map(|s| s.to_string()).collect(),
        })
    }

    impl SchemaSource for FakeRegistry {
        async fn schema_by_id(&self, id: SchemaId) -> Result<Arc<RegisteredSchema>, RegistryError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if self.outages.load(Ordering::SeqCst) > 0 {
                self.outages.fetch_sub(1, Ordering::SeqCst);
                return Err(RegistryError::Unavailable {
                    url: "fake".into(),
                    detail: "down".into(),
                });
            }
            if id != SchemaId(1) {
                return Err(RegistryError::UnknownId {
                    id,
                    url: "fake".into(),
                });
            }
            let text = r#"{"type":"record","name":"R","fields":[{"name":"n","type":"long"}]}"#;
            Ok(Arc::new(RegisteredSchema {
                id,
                text: text.into(),
                schema: apache_avro::Schema::parse_str(text).unwrap(),
            }))
        }

        async fn subjects_of(&self, _: SchemaId) -> Result<Vec<String>, RegistryError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            Ok(self.subjects.clone())
        }
    }

    fn raw(offset: i64, value: Option<Vec<u8>>) -> RawMessage {
        RawMessage {
            offset,
            timestamp_ms: 5,
            key: Some(b"k".to_vec()),
            value,
            headers: Vec::new(),
        }
    }

    fn framed(id: u32, body: &[u8]) -> Option<Vec<u8>> {
        let mut v = Vec::new();
        frame_into(SchemaId(id), body, &mut v);
        Some(v)
    }

    #[tokio::test]
    async fn every_bad_message_becomes_a_dead_letter_with_its_stage() {
        let registry = fake(0, &["t-value"]);
        let decoder = Decoder::new(registry.clone());
        let batch = RawBatch {
            from: None,
            topic: "t".into(),
            partition: 3,
            messages: vec![
                raw(0, framed(1, &[0x54])), // long 42, zig-zag
                raw(1, Some(b"{\"n\":42}".to_vec())),
                raw(2, Some(vec![0, 0])),
                raw(3, framed(9, &[0x54])),
                raw(4, framed(1, &[])),
                raw(5, None),
                raw(6, framed(1, &[0x02])),
            ],
        };
        let out = decoder.decode_batch(&batch, Shape::Fields).await.unwrap();
        let stages: Vec<Option<Stage>> = out
            .iter()
            .map(|d| match d {
                Decoded::DeadLetter(d) => Some(d.stage),
                Decoded::Message(_) => None,
            })
            .collect();
        assert_eq!(
            stages,
            [
                None,
                Some(Stage::Framing),
                Some(Stage::Framing),
                Some(Stage::Schema),
                Some(Stage::Decode),
                None,
                None
            ]
        );
        let Decoded::Message(m) = &out[0] else {
            panic!()
        };
        assert_eq!(
            m.body,
            Body::Fields {
                schema_id: Some(1),
                fields: vec![Field {
                    name: "n".into(),
                    value: Value::Int(42)
                }]
            }
        );
        assert_eq!(m.offset, 0);
        let Decoded::DeadLetter(d) = &out[3] else {
            panic!()
        };
        assert!(d.error.contains("schema id 9 not found"), "{}", d.error);
        assert_eq!(d.value, framed(9, &[0x54]));
        let Decoded::Message(tombstone) = &out[5] else {
            panic!()
        };
        assert_eq!(tombstone.body, Body::Tombstone);
        // Decoded for a 0.2.0 guest: values by position in the schema's layout.
        let out = decoder.decode_batch(&batch, Shape::Values).await.unwrap();
        let Decoded::Message(m) = &out[0] else {
            panic!()
        };
        let Body::Values { layout, values } = &m.body else {
            panic!("{:?}", m.body)
        };
        assert_eq!(values, &[Value::Int(42)]);
        assert_eq!(layout.schema().id, Some(1));
        assert_eq!(layout.schema().fields[0].name, "n");
        // Each batch asks for its ids once (the registry client caches them), and schema 1's
        // subjects were asked once, the binding then kept.
        assert_eq!(registry.calls.load(Ordering::SeqCst), 5);
    }

    #[tokio::test]
    async fn registry_outage_delays_but_loses_nothing() {
        let registry = fake(3, &["t-value"]);
        let decoder = Decoder::new(registry.clone())
            .with_retry(Duration::from_millis(1), Duration::from_millis(5));
        let out = decoder
            .decode_messages("t", 0, &[raw(0, framed(1, &[0x54]))], Shape::Fields)
            .await
            .unwrap();
        assert!(matches!(out[..], [Decoded::Message(_)]), "{out:?}");
        assert_eq!(registry.calls.load(Ordering::SeqCst), 5);
    }

    #[tokio::test]
    async fn a_stop_ends_the_wait_for_the_registry() {
        let stop = CancellationToken::new();
        let decoder = Decoder::new(fake(usize::MAX, &["t-value"]))
            .with_retry(Duration::from_millis(1), Duration::from_millis(5))
            .with_stop(stop.clone());
        let one = [raw(0, framed(1, &[0x54]))];
        let waiting = decoder.decode_messages("t", 0, &one, Shape::Fields);
        let stopper = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            stop.cancel();
        };
        let (out, ()) = tokio::join!(waiting, stopper);
        assert_eq!(out, Err(Stopped));
    }

    fn stage_of(d: &Decoded) -> Option<(Stage, &str)> {
        match d {
            Decoded::DeadLetter(d) => Some((d.stage, d.error.as_str())),
            Decoded::Message(_) => None,
        }
    }

    #[tokio::test]
    async fn schema_ids_must_be_registered_under_the_topics_subjects() {
        async fn decode(subjects: &[&str], topic: &str, strategy: SubjectStrategy) -> Vec<Decoded> {
            let decoder = Decoder::new(fake(0, subjects)).with_strategy(topic, strategy);
            decoder
                .decode_messages(topic, 0, &[raw(0, framed(1, &[0x54]))], Shape::Fields)
                .await
                .unwrap()
        }
        // The default: <topic>-value.
        let out = decode(&["t-value"], "t", SubjectStrategy::Topic).await;
        assert_eq!(stage_of(&out[0]), None);
        let out = decode(&["t-value"], "u", SubjectStrategy::Topic).await;
        let (stage, error) = stage_of(&out[0]).unwrap();
        assert_eq!(stage, Stage::Schema);
        assert!(
            error.contains("schema id 1 is registered under subject(s) t-value, not under u-value (subject strategy topic)"),
            "{error}"
        );
        // The record's full name, alone or after the topic.
        let out = decode(&["R"], "t", SubjectStrategy::Record).await;
        assert_eq!(stage_of(&out[0]), None);
        let out = decode(&["t-value"], "t", SubjectStrategy::Record).await;
        assert_eq!(stage_of(&out[0]).unwrap().0, Stage::Schema);
        let out = decode(&["t-R"], "t", SubjectStrategy::TopicRecord).await;
        assert_eq!(stage_of(&out[0]), None);
        // A list.
        let list = SubjectStrategy::Subjects(vec!["a".into(), "b".into()]);
        let out = decode(&["x", "b"], "t", list.clone()).await;
        assert_eq!(stage_of(&out[0]), None);
        let out = decode(&[], "t", list).await;
        let (_, error) = stage_of(&out[0]).unwrap();
        assert!(
            error.contains("registered under no subject, not under a or b"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn a_batch_past_its_decoded_budget_is_handed_out_in_parts() {
        // Each message decodes to one field, `n`, of about 60 bytes.
        let messages: Vec<RawMessage> = (0..10).map(|i| raw(i, framed(1, &[0x54]))).collect();
        let decoder = Decoder::new(fake(0, &["t-value"])).with_limits(DecodeLimits::default(), 150);
        let first = decoder
            .decode_messages("t", 0, &messages, Shape::Fields)
            .await
            .unwrap();
        assert!(
            (2..10).contains(&first.len()),
            "the first part stops after the message passing the budget: {}",
            first.len()
        );
        let rest = decoder
            .decode_messages("t", 0, &messages[first.len()..], Shape::Fields)
            .await
            .unwrap();
        assert_eq!(rest.len(), first.len().min(10 - first.len()));
        // A whole batch still comes out whole, in order.
        let batch = RawBatch {
            from: None,
            topic: "t".into(),
            partition: 0,
            messages,
        };
        let all = decoder.decode_batch(&batch, Shape::Fields).await.unwrap();
        let offsets: Vec<i64> = all
            .iter()
            .map(|d| match d {
                Decoded::Message(m) => m.offset,
                Decoded::DeadLetter(d) => panic!("{d:?}"),
            })
            .collect();
        assert_eq!(offsets, (0..10).collect::<Vec<_>>());
    }
}
