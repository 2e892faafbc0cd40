//! The outbox: the messages a batch's guest emitted, stored in the batch's transaction
//! (`weir_outbox`), and what the relay needs to produce them exactly once — the rows of a
//! source partition in order, the batch being produced (`weir_relay`: its outbox ids and,
//! per destination partition, the offset the log ended at before it was produced), and
//! removing what was sent.

use tokio_postgres::{Client, GenericClient, ToStatement};

use super::write::Conn;
use crate::model::Header;

/// One message to produce, encoded and with its destination partition chosen.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxMessage {
    /// Destination topic.
    pub topic: String,
    /// Destination partition.
    pub partition: i32,
    /// Record key.
    pub key: Option<Vec<u8>>,
    /// Record headers, in order.
    pub headers: Vec<Header>,
    /// Record value; none for a tombstone.
    pub value: Option<Vec<u8>>,
}

/// An outbox row as the relay reads it.
#[derive(Debug, Clone)]
pub struct Pending {
    /// The row's id, unique in the database and increasing in a source partition.
    pub id: i64,
    /// The message.
    pub message: OutboxMessage,
}

/// The batch a relay is producing for a source partition, recorded before it produces.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InFlight {
    /// The outbox ids being produced.
    pub ids: Vec<i64>,
    /// Per destination partition, the log's end offset before the produce: the messages
    /// of this batch that reached it are at or after it.
    pub marks: Vec<(String, i32, i64)>,
}

pub(super) const INSERT: &str = "INSERT INTO weir_outbox
        (group_id, pipeline, topic, partition, \"offset\", to_topic, to_partition, key, headers, value)
    SELECT $1, $2, $3, $4, u.o, u.t, u.p, u.k, u.h, u.v
      FROM UNNEST($5::int8[], $6::text[], $7::int4[], $8::bytea[], $9::bytea[], $10::bytea[])
           WITH ORDINALITY AS u(o, t, p, k, h, v, n)
     ORDER BY u.n";

const READ: &str = "SELECT id, to_topic, to_partition, key, headers, value FROM weir_outbox
    WHERE group_id = $1 AND topic = $2 AND partition = $3 ORDER BY id LIMIT $4";

const COUNT: &str = "SELECT count(*), extract(epoch FROM now() - min(created_at))::float8
    FROM weir_outbox WHERE group_id = $1 AND topic = $2 AND partition = $3";

const IN_FLIGHT: &str = "SELECT ids, to_topics, to_partitions, from_offsets FROM weir_relay
    WHERE group_id = $1 AND topic = $2 AND partition = $3";

const BEGIN_FLIGHT: &str = "INSERT INTO weir_relay
        (group_id, topic, partition, ids, to_topics, to_partitions, from_offsets)
    VALUES ($1, $2, $3, $4, $5, $6, $7)
    ON CONFLICT (group_id, topic, partition) DO UPDATE
    SET ids = EXCLUDED.ids, to_topics = EXCLUDED.to_topics,
        to_partitions = EXCLUDED.to_partitions, from_offsets = EXCLUDED.from_offsets,
        updated_at = now()";

/// Removes the sent rows and the record of the batch in flight, in one statement.
const SENT: &str = "WITH gone AS (
        DELETE FROM weir_outbox
         WHERE group_id = $1 AND topic = $2 AND partition = $3 AND id = ANY($4::int8[]))
    DELETE FROM weir_relay WHERE group_id = $1 AND topic = $2 AND partition = $3";

impl Conn {
    /// Stores the emitted messages of a batch's committed messages, in order, in the
    /// open transaction: (source offset, message).
    pub(crate) async fn write_outbox(
        &mut self,
        group: &str,
        pipeline: &str,
        topic: &str,
        partition: i32,
        messages: &[(i64, &OutboxMessage)],
    ) -> Result<(), tokio_postgres::Error> {
        if messages.is_empty() {
            return Ok(());
        }
        let statement = self.prepare(INSERT).await?;
        store_outbox(
            &*self.client,
            &statement,
            group,
            pipeline,
            topic,
            partition,
            messages,
        )
        .await
    }
}

/// Stores `messages` in the outbox of source partition `topic`/`partition`, in order:
/// (source offset, message), with `insert` ([`INSERT`], or its prepared statement).
pub(super) async fn store_outbox<S: ToStatement + Send + Sync + ?Sized>(
    client: &impl GenericClient,
    insert: &S,
    group: &str,
    pipeline: &str,
    topic: &str,
    partition: i32,
    messages: &[(i64, &OutboxMessage)],
) -> Result<(), tokio_postgres::Error> {
    let offsets: Vec<i64> = messages.iter().map(|(o, _)| *o).collect();
    let topics: Vec<&str> = messages.iter().map(|(_, m)| m.topic.as_str()).collect();
    let partitions: Vec<i32> = messages.iter().map(|(_, m)| m.partition).collect();
    let keys: Vec<Option<&[u8]>> = messages.iter().map(|(_, m)| m.key.as_deref()).collect();
    let headers: Vec<Vec<u8>> = messages
        .iter()
        .map(|(_, m)| encode_headers(&m.headers))
        .collect();
    let values: Vec<Option<&[u8]>> = messages.iter().map(|(_, m)| m.value.as_deref()).collect();
    client
        .execute(
            insert,
            &[
                &group,
                &pipeline,
                &topic,
                &partition,
                &offsets,
                &topics,
                &partitions,
                &keys,
                &headers,
                &values,
            ],
        )
        .await?;
    Ok(())
}

/// The relay's statements, on a connection of its own.
pub struct OutboxReader<'c> {
    /// The connection.
    pub client: &'c Client,
    /// The consumer group whose outbox this is.
    pub group: &'c str,
}

impl OutboxReader<'_> {
    /// Up to `limit` unsent messages of a source partition, in order.
    pub async fn read(
        &self,
        topic: &str,
        partition: i32,
        limit: i64,
    ) -> Result<Vec<Pending>, tokio_postgres::Error> {
        let rows = self
            .client
            .query(READ, &[&self.group, &topic, &partition, &limit])
            .await?;
        rows.into_iter()
            .map(|r| {
                Ok(Pending {
                    id: r.get(0),
                    message: OutboxMessage {
                        topic: r.get(1),
                        partition: r.get(2),
                        key: r.get(3),
                        headers: decode_headers(r.get::<_, &[u8]>(4)).unwrap_or_default(),
                        value: r.get(5),
                    },
                })
            })
            .collect()
    }

    /// How many messages of a source partition are unsent, and the age in seconds of the
    /// oldest.
    pub async fn depth(
        &self,
        topic: &str,
        partition: i32,
    ) -> Result<(u64, Option<f64>), tokio_postgres::Error> {
        let row = self
            .client
            .query_one(COUNT, &[&self.group, &topic, &partition])
            .await?;
        Ok((row.get::<_, i64>(0) as u64, row.get(1)))
    }

    /// The batch a relay was producing for a source partition when it stopped, if any.
    pub async fn in_flight(
        &self,
        topic: &str,
        partition: i32,
    ) -> Result<Option<InFlight>, tokio_postgres::Error> {
        let Some(row) = self
            .client
            .query_opt(IN_FLIGHT, &[&self.group, &topic, &partition])
            .await?
        else {
            return Ok(None);
        };
        let topics: Vec<String> = row.get(1);
        let partitions: Vec<i32> = row.get(2);
        let offsets: Vec<i64> = row.get(3);
        Ok(Some(InFlight {
            ids: row.get(0),
            marks: topics
                .into_iter()
                .zip(partitions)
                .zip(offsets)
                .map(|((t, p), o)| (t, p, o))
                .collect(),
        }))
    }

    /// Records the batch about to be produced.
    pub async fn begin_flight(
        &self,
        topic: &str,
        partition: i32,
        flight: &InFlight,
    ) -> Result<(), tokio_postgres::Error> {
        let topics: Vec<&str> = flight.marks.iter().map(|m| m.0.as_str()).collect();
        let partitions: Vec<i32> = flight.marks.iter().map(|m| m.1).collect();
        let offsets: Vec<i64> = flight.marks.iter().map(|m| m.2).collect();
        self.client
            .execute(
                BEGIN_FLIGHT,
                &[
                    &self.group,
                    &topic,
                    &partition,
                    &flight.ids,
                    &topics,
                    &partitions,
                    &offsets,
                ],
            )
            .await?;
        Ok(())
    }

    /// Removes sent messages and the record of the batch in flight.
    pub async fn sent(
        &self,
        topic: &str,
        partition: i32,
        ids: &[i64],
    ) -> Result<(), tokio_postgres::Error> {
        self.client
            .execute(SENT, &[&self.group, &topic, &partition, &ids])
            .await?;
        Ok(())
    }
}

/// Headers as one value: per header, the key's length (u32 LE) and bytes, then the value's
/// length (i32 LE, -1 for none) and bytes. Postgres has no array of variable-length pairs
/// that UNNEST can take per row, so the outbox stores them as one `bytea`.
pub fn encode_headers(headers: &[Header]) -> Vec<u8> {
    let mut out = Vec::new();
    for h in headers {
        out.extend_from_slice(&(h.key.len() as u32).to_le_bytes());
        out.extend_from_slice(h.key.as_bytes());
        match &h.value {
            None => out.extend_from_slice(&(-1i32).to_le_bytes()),
            Some(v) => {
                out.extend_from_slice(&(v.len() as i32).to_le_bytes());
                out.extend_from_slice(v);
            }
        }
    }
    out
}

/// The headers [`encode_headers`] wrote; `None` if `bytes` is not such a value.
pub fn decode_headers(mut bytes: &[u8]) -> Option<Vec<Header>> {
    fn take<'a>(input: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        if input.len() < n {
            return None;
        }
        let (head, rest) = input.split_at(n);
        *input = rest;
        Some(head)
    }
    let mut headers = Vec::new();
    while !bytes.is_empty() {
        let n = u32::from_le_bytes(take(&mut bytes, 4)?.try_into().ok()?) as usize;
        let key = String::from_utf8(take(&mut bytes, n)?.to_vec()).ok()?;
        let n = i32::from_le_bytes(take(&mut bytes, 4)?.try_into().ok()?);
        let value = match n {
            -1 => None,
            n => Some(take(&mut bytes, usize::try_from(n).ok()?)?.to_vec()),
        };
        headers.push(Header { key, value });
    }
    Some(headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_with_empty_and_missing_values() {
        let headers = vec![
            Header {
                key: "trace".into(),
                value: Some(b"abc".to_vec()),
            },
            Header {
                key: "".into(),
                value: Some(Vec::new()),
            },
            Header {
                key: "none".into(),
                value: None,
            },
        ];
        assert_eq!(decode_headers(&encode_headers(&headers)), Some(headers));
        assert_eq!(decode_headers(&[]), Some(Vec::new()));
        assert_eq!(decode_headers(&[5, 0, 0, 0, b'a']), None);
    }
}
