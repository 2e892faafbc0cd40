//! The decode stage: Confluent framing, the writer schema by id, Avro to typed fields.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::avro::AvroDecoder;
use super::{RawBatch, RawMessage};
use crate::registry::{RegistryError, SchemaId, SchemaSource, unframe};
use crate::runtime::types::Message;

/// Where in the pipeline a message was found bad; the `stage` of a dead letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    /// Not in the Confluent wire format (magic byte, 4-byte schema id).
    Framing,
    /// The schema id is unknown to the registry, or its schema is unusable.
    Schema,
    /// The Avro body does not decode with its writer schema.
    Decode,
    /// The guest failed on it, or rejected it.
    Guest,
    /// Postgres refused the rows it produced.
    Sink,
}

impl Stage {
    /// The stage's name as stored in `dead_letters.stage` and used in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Framing => "framing",
            Stage::Schema => "schema",
            Stage::Decode => "decode",
            Stage::Guest => "guest",
            Stage::Sink => "sink",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A message that cannot go on, with everything needed to look at it later.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Record timestamp, ms.
    pub timestamp_ms: i64,
    /// Raw key.
    pub key: Option<Vec<u8>>,
    /// Raw value.
    pub value: Option<Vec<u8>>,
    /// Where it failed.
    pub stage: Stage,
    /// Why.
    pub error: String,
}

/// One message after decoding.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    /// Decoded into typed fields.
    Message(Message),
    /// Bad input, to be dead-lettered.
    DeadLetter(DeadLetter),
}

/// Decodes raw messages through a schema registry, caching prepared schemas by id.
pub struct Decoder<S> {
    registry: Arc<S>,
    prepared: Mutex<HashMap<SchemaId, Arc<AvroDecoder>>>,
    retry_min: Duration,
    retry_max: Duration,
}

impl<S: SchemaSource> Decoder<S> {
    /// A decoder over `registry`.
    pub fn new(registry: Arc<S>) -> Self {
        Self {
            registry,
            prepared: Mutex::new(HashMap::new()),
            retry_min: Duration::from_millis(200),
            retry_max: Duration::from_secs(30),
        }
    }

    /// Sets the backoff bounds used while the registry is unavailable.
    pub fn with_retry(mut self, min: Duration, max: Duration) -> Self {
        self.retry_min = min;
        self.retry_max = max.max(min);
        self
    }

    /// Decodes a batch, in order. While the registry cannot answer, this waits and
    /// retries (with backoff, logging each failure): an outage delays, it loses nothing.
    pub async fn decode_batch(&self, batch: &RawBatch) -> Vec<Decoded> {
        let mut out = Vec::with_capacity(batch.messages.len());
        for raw in &batch.messages {
            out.push(self.decode(&batch.topic, batch.partition, raw).await);
        }
        out
    }

    /// Decodes one message (waiting out registry outages).
    pub async fn decode(&self, topic: &str, partition: i32, raw: &RawMessage) -> Decoded {
        let dead = |stage: Stage, error: String| {
            Decoded::DeadLetter(DeadLetter {
                topic: topic.to_string(),
                partition,
                offset: raw.offset,
                timestamp_ms: raw.timestamp_ms,
                key: raw.key.clone(),
                value: raw.value.clone(),
                stage,
                error,
            })
        };
        let message = |schema_id: Option<SchemaId>, fields| {
            Decoded::Message(Message {
                topic: topic.to_string(),
                partition,
                offset: raw.offset,
                timestamp_ms: raw.timestamp_ms,
                key: raw.key.clone(),
                schema_id: schema_id.map(|s| s.0),
                fields,
            })
        };
        // A tombstone has no fields to decode.
        let Some(value) = raw.value.as_deref() else {
            return message(None, Vec::new());
        };
        let (id, body) = match unframe(value) {
            Ok(framed) => framed,
            Err(e) => return dead(Stage::Framing, e.to_string()),
        };
        let decoder = match self.prepared(id).await {
            Ok(d) => d,
            Err(e) => return dead(Stage::Schema, e.to_string()),
        };
        match decoder.decode(body) {
            Ok(fields) => message(Some(id), fields),
            Err(e) => dead(Stage::Decode, format!("schema id {id}: {e}")),
        }
    }

    /// The prepared decoder for `id`; retries for as long as the registry is unavailable.
    async fn prepared(&self, id: SchemaId) -> Result<Arc<AvroDecoder>, RegistryError> {
        if let Some(d) = self
            .prepared
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
        {
            return Ok(d.clone());
        }
        let mut delay = self.retry_min;
        let schema = loop {
            match self.registry.schema_by_id(id).await {
                Ok(s) => break s,
                Err(e) if e.is_retryable() => {
                    tracing::warn!(schema_id = %id, retry_in = ?delay, error = %e, "Schema registry unavailable; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(self.retry_max);
                }
                Err(e) => return Err(e),
            }
        };
        let decoder = Arc::new(AvroDecoder::new(&schema.schema));
        self.prepared
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, decoder.clone());
        Ok(decoder)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{RegisteredSchema, frame_into};
    use crate::runtime::types::{Field, Value};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A registry that knows schema 1 and fails the first `outages` calls as unavailable.
    struct FakeRegistry {
        outages: AtomicUsize,
        calls: AtomicUsize,
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
    }

    fn raw(offset: i64, value: Option<Vec<u8>>) -> RawMessage {
        RawMessage {
            offset,
            timestamp_ms: 5,
            key: Some(b"k".to_vec()),
            value,
        }
    }

    fn framed(id: u32, body: &[u8]) -> Option<Vec<u8>> {
        let mut v = Vec::new();
        frame_into(SchemaId(id), body, &mut v);
        Some(v)
    }

    #[tokio::test]
    async fn every_bad_message_becomes_a_dead_letter_with_its_stage() {
        let registry = Arc::new(FakeRegistry {
            outages: AtomicUsize::new(0),
            calls: AtomicUsize::new(0),
        });
        let decoder = Decoder::new(registry.clone());
        let batch = RawBatch {
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
        let out = decoder.decode_batch(&batch).await;
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
            m.fields,
            vec![Field {
                name: "n".into(),
                value: Value::Int(42)
            }]
        );
        assert_eq!((m.partition, m.offset, m.schema_id), (3, 0, Some(1)));
        let Decoded::DeadLetter(d) = &out[3] else {
            panic!()
        };
        assert!(d.error.contains("schema id 9 not found"), "{}", d.error);
        assert_eq!(d.value, framed(9, &[0x54]));
        let Decoded::Message(tombstone) = &out[5] else {
            panic!()
        };
        assert!(tombstone.fields.is_empty());
        // Schema 1 was fetched once, then cached.
        assert_eq!(registry.calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn registry_outage_delays_but_loses_nothing() {
        let registry = Arc::new(FakeRegistry {
            outages: AtomicUsize::new(3),
            calls: AtomicUsize::new(0),
        });
        let decoder = Decoder::new(registry.clone())
            .with_retry(Duration::from_millis(1), Duration::from_millis(5));
        let out = decoder.decode("t", 0, &raw(0, framed(1, &[0x54]))).await;
        assert!(matches!(out, Decoded::Message(_)), "{out:?}");
        assert_eq!(registry.calls.load(Ordering::SeqCst), 4);
    }
}
