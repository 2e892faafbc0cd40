//! The dead letters of a group as people act on them (`weir dlq`): selected by pipeline,
//! topic, stage, time or error text, and claimed for a replay — each letter marked
//! replayed and its message queued in the outbox in one transaction, so that a replay
//! never sends a letter twice and the relay produces what was queued exactly once.

use std::time::SystemTime;

use tokio_postgres::Client;

use super::outbox::{INSERT, OutboxMessage, store_outbox};
use crate::model::Header;

/// The outbox's source partition of replayed letters: a name Kafka cannot give a topic
/// (`:` is not allowed in topic names), so it is never a pipeline's.
pub const REPLAY_SOURCE: &str = "weir:dlq-replay";
/// The header a replayed message carries: `<group>:<dead letter id>`.
pub const REPLAY_HEADER: &str = "weir-dlq-replay";

/// Which dead letters.
#[derive(Debug, Clone, Default)]
pub struct LetterFilter {
    /// Of this pipeline.
    pub pipeline: Option<String>,
    /// From this topic.
    pub topic: Option<String>,
    /// Failed at this stage.
    pub stage: Option<String>,
    /// Whose error contains this text, case-insensitively.
    pub error: Option<String>,
    /// Dead-lettered at or after.
    pub since: Option<SystemTime>,
    /// Dead-lettered before.
    pub until: Option<SystemTime>,
    /// These ids only (none: any).
    pub ids: Vec<i64>,
    /// Replayed (`Some(true)`), not yet (`Some(false)`), or either.
    pub replayed: Option<bool>,
}

/// One dead letter.
#[derive(Debug, Clone)]
pub struct Letter {
    /// Its id.
    pub id: i64,
    /// The pipeline it failed in (none for letters written before weir recorded it).
    pub pipeline: Option<String>,
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Where it failed.
    pub stage: String,
    /// Why.
    pub error: String,
    /// sha256 of the guest that ran it.
    pub guest_version: Option<String>,
    /// Raw key.
    pub key: Option<Vec<u8>>,
    /// Raw value.
    pub value: Option<Vec<u8>>,
    /// Record headers.
    pub headers: Vec<Header>,
    /// When it was dead-lettered.
    pub created_at: SystemTime,
    /// When it was replayed, and to which topic.
    pub replayed: Option<(SystemTime, String)>,
}

const COLUMNS: &str = "id, pipeline, topic, partition, \"offset\", stage, error, guest_version,
    key, value, headers, created_at, replayed_at, replayed_to";

/// The filter's conditions; `$1` is the group, `$2`…`$9` the filter's fields.
const WHERE: &str = "group_id = $1
    AND ($2::text IS NULL OR pipeline = $2)
    AND ($3::text IS NULL OR topic = $3)
    AND ($4::text IS NULL OR stage = $4)
    AND ($5::text IS NULL OR strpos(lower(error), lower($5)) > 0)
    AND ($6::timestamptz IS NULL OR created_at >= $6)
    AND ($7::timestamptz IS NULL OR created_at < $7)
    AND (cardinality($8::int8[]) = 0 OR id = ANY($8))
    AND ($9::bool IS NULL OR (replayed_at IS NOT NULL) = $9)";

const MARK: &str = "UPDATE dead_letters AS d SET replayed_at = now(), replayed_to = u.t
      FROM UNNEST($2::int8[], $3::text[]) AS u(id, t)
     WHERE d.group_id = $1 AND d.id = u.id";

impl LetterFilter {
    /// Up to `limit` letters of `group`, newest first, and how many match in all.
    pub async fn list(
        &self,
        client: &Client,
        group: &str,
        limit: i64,
    ) -> Result<(Vec<Letter>, i64), tokio_postgres::Error> {
        let query = format!(
            "SELECT {COLUMNS}, count(*) OVER () FROM dead_letters WHERE {WHERE}
              ORDER BY id DESC LIMIT $10"
        );
        let rows = client.query(&query, &self.params(&group, &limit)).await?;
        let total = rows.first().map_or(0, |r| r.get::<_, i64>(14));
        Ok((rows.iter().map(letter).collect(), total))
    }

    /// The topics of the letters of `group` matching the filter, in name order.
    pub async fn topics(
        &self,
        client: &Client,
        group: &str,
    ) -> Result<Vec<String>, tokio_postgres::Error> {
        let query = format!("SELECT DISTINCT topic FROM dead_letters WHERE {WHERE} ORDER BY 1");
        Ok(client
            .query(&query, &self.params(&group, &0)[..9])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    /// In one transaction: up to `limit` letters of `group` matching the filter and not
    /// yet replayed (oldest first; letters another replay holds are skipped), each
    /// queued in the outbox as `to(letter)` says and marked replayed. Returns the letters
    /// claimed.
    pub async fn claim(
        &self,
        client: &mut Client,
        group: &str,
        limit: i64,
        to: impl Fn(&Letter) -> OutboxMessage,
    ) -> Result<Vec<Letter>, tokio_postgres::Error> {
        let mut pending = self.clone();
        pending.replayed = Some(false);
        let query = format!(
            "SELECT {COLUMNS} FROM dead_letters WHERE {WHERE}
              ORDER BY id LIMIT $10 FOR UPDATE SKIP LOCKED"
        );
        let txn = client.transaction().await?;
        let letters: Vec<Letter> = txn
            .query(&query, &pending.params(&group, &limit))
            .await?
            .iter()
            .map(letter)
            .collect();
        if letters.is_empty() {
            return Ok(letters);
        }
        let messages: Vec<OutboxMessage> = letters.iter().map(&to).collect();
        let queued: Vec<(i64, &OutboxMessage)> =
            letters.iter().map(|l| l.id).zip(messages.iter()).collect();
        store_outbox(&txn, INSERT, group, "", REPLAY_SOURCE, 0, &queued).await?;
        let ids: Vec<i64> = letters.iter().map(|l| l.id).collect();
        let topics: Vec<&str> = messages.iter().map(|m| m.topic.as_str()).collect();
        txn.execute(MARK, &[&group, &ids, &topics]).await?;
        txn.commit().await?;
        Ok(letters)
    }

    fn params<'a>(
        &'a self,
        group: &'a &'a str,
        limit: &'a i64,
    ) -> [&'a (dyn postgres_types::ToSql + Sync); 10] {
        [
            group,
            &self.pipeline,
            &self.topic,
            &self.stage,
            &self.error,
            &self.since,
            &self.until,
            &self.ids,
            &self.replayed,
            limit,
        ]
    }
}

fn letter(r: &tokio_postgres::Row) -> Letter {
    let headers: Option<Vec<u8>> = r.get(10);
    let replayed_at: Option<SystemTime> = r.get(12);
    let replayed_to: Option<String> = r.get(13);
    Letter {
        id: r.get(0),
        pipeline: r.get(1),
        topic: r.get(2),
        partition: r.get(3),
        offset: r.get(4),
        stage: r.get(5),
        error: r.get(6),
        guest_version: r.get(7),
        key: r.get(8),
        value: r.get(9),
        headers: headers
            .as_deref()
            .and_then(super::decode_headers)
            .unwrap_or_default(),
        created_at: r.get(11),
        replayed: replayed_at.map(|at| (at, replayed_to.unwrap_or_default())),
    }
}
