//! The schema registry: the Confluent wire format, a caching client for any
//! Confluent-compatible registry, and weir's own registry server stored in Postgres.

pub mod client;
pub mod server;

use std::fmt;

pub use client::{RegisteredSchema, RegistryAuth, RegistryClient, RegistryError, SchemaSource};

/// A schema's global id in the registry, as carried in the Confluent wire format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SchemaId(pub u32);

impl fmt::Display for SchemaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The magic byte that starts a Confluent-framed value.
pub const MAGIC: u8 = 0;

/// A value is not in the Confluent wire format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    /// No value at all (a tombstone where a record was expected).
    #[error("the value is empty (null); a Confluent-framed Avro record was expected")]
    Empty,
    /// Shorter than the five-byte header.
    #[error(
        "the value is {0} bytes, shorter than the 5-byte Confluent header (magic byte 0, 4-byte schema id)"
    )]
    Short(usize),
    /// The first byte is not the magic byte.
    #[error(
        "the value starts with byte {0:#04x}, not the Confluent magic byte 0x00: it was not written by a schema-registry serializer"
    )]
    BadMagic(u8),
}

/// Splits a Confluent-framed value into its schema id and Avro body.
pub fn unframe(value: &[u8]) -> Result<(SchemaId, &[u8]), FramingError> {
    match value {
        [] => Err(FramingError::Empty),
        [m, ..] if *m != MAGIC => Err(FramingError::BadMagic(*m)),
        [_, a, b, c, d, body @ ..] => Ok((SchemaId(u32::from_be_bytes([*a, *b, *c, *d])), body)),
        short => Err(FramingError::Short(short.len())),
    }
}

/// Frames an Avro body with its schema id, into `out` (cleared first).
pub fn frame_into(id: SchemaId, body: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.reserve(5 + body.len());
    out.push(MAGIC);
    out.extend_from_slice(&id.0.to_be_bytes());
    out.extend_from_slice(body);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_bad_frames_say_why() {
        let mut framed = Vec::new();
        frame_into(SchemaId(0x0102_0304), b"avro", &mut framed);
        assert_eq!(framed, b"\0\x01\x02\x03\x04avro");
        assert_eq!(unframe(&framed), Ok((SchemaId(0x0102_0304), &b"avro"[..])));
        assert_eq!(unframe(b"\0\0\0\0\x07"), Ok((SchemaId(7), &b""[..])));
        assert_eq!(unframe(b""), Err(FramingError::Empty));
        assert_eq!(unframe(b"\0\0\x01"), Err(FramingError::Short(3)));
        assert_eq!(unframe(b"{\"json\":1}"), Err(FramingError::BadMagic(b'{')));
        assert!(
            FramingError::BadMagic(0x7b)
                .to_string()
                .contains("starts with byte 0x7b")
        );
    }
}
