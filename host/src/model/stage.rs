//! Where a message was found bad, and the dead letter that keeps it.

use std::fmt;

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
    /// A message it emitted cannot be encoded, or goes to a topic its pipeline may not
    /// emit to.
    Encode,
    /// Postgres refused the rows it produced.
    Sink,
}

impl Stage {
    /// Every stage, in the order a message meets them.
    pub const ALL: [Stage; 6] = [
        Stage::Framing,
        Stage::Schema,
        Stage::Decode,
        Stage::Guest,
        Stage::Encode,
        Stage::Sink,
    ];

    /// The stage's name as stored in `dead_letters.stage` and used in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Framing => "framing",
            Stage::Schema => "schema",
            Stage::Decode => "decode",
            Stage::Guest => "guest",
            Stage::Encode => "encode",
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
#[derive(Debug, Clone, PartialEq)]
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
    /// Record headers.
    pub headers: Vec<super::Header>,
    /// Where it failed.
    pub stage: Stage,
    /// Why.
    pub error: String,
}
