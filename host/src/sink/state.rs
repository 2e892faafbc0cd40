//! Guests' keyed state in Postgres (`weir_state`, created with weir's other tables): a
//! partition's entries read inside a batch's transaction, and a batch's writes made in it,
//! one statement each.

use crate::model::{StateStore, StateWrites};

use super::write::Conn;

const LOAD: &str = "SELECT key, value FROM weir_state
    WHERE group_id = $1 AND pipeline = $2 AND topic = $3 AND partition = $4";

/// Deletes and puts in one statement: the keys of the two are disjoint.
const WRITE: &str = "WITH gone AS (
        DELETE FROM weir_state
         WHERE group_id = $1 AND pipeline = $2 AND topic = $3 AND partition = $4
           AND key = ANY($5::bytea[]))
    INSERT INTO weir_state (group_id, pipeline, topic, partition, key, value)
    SELECT $1, $2, $3, $4, k, v FROM UNNEST($6::bytea[], $7::bytea[]) AS u(k, v)
    ON CONFLICT (group_id, pipeline, topic, partition, key)
    DO UPDATE SET value = EXCLUDED.value, updated_at = now()";

/// Whose state: a pipeline's, on a partition.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Owner<'a> {
    pub group: &'a str,
    pub pipeline: &'a str,
    pub topic: &'a str,
    pub partition: i32,
}

impl Conn {
    /// Every entry of the partition's state, as the open transaction sees it.
    pub(crate) async fn load_state(
        &mut self,
        owner: Owner<'_>,
    ) -> Result<StateStore, tokio_postgres::Error> {
        let statement = self.prepare(LOAD).await?;
        let rows = self
            .client
            .query(
                &statement,
                &[
                    &owner.group,
                    &owner.pipeline,
                    &owner.topic,
                    &owner.partition,
                ],
            )
            .await?;
        Ok(StateStore::from_entries(
            rows.into_iter()
                .map(|r| (r.get::<_, Vec<u8>>(0), r.get::<_, Vec<u8>>(1))),
        ))
    }

    /// Makes a batch's state writes in the open transaction.
    pub(crate) async fn write_state(
        &mut self,
        owner: Owner<'_>,
        writes: &StateWrites,
    ) -> Result<(), tokio_postgres::Error> {
        if writes.is_empty() {
            return Ok(());
        }
        let statement = self.prepare(WRITE).await?;
        let deletes: Vec<&[u8]> = writes.deletes.iter().map(Vec::as_slice).collect();
        let keys: Vec<&[u8]> = writes.puts.iter().map(|(k, _)| k.as_slice()).collect();
        let values: Vec<&[u8]> = writes.puts.iter().map(|(_, v)| v.as_slice()).collect();
        self.client
            .execute(
                &statement,
                &[
                    &owner.group,
                    &owner.pipeline,
                    &owner.topic,
                    &owner.partition,
                    &deletes,
                    &keys,
                    &values,
                ],
            )
            .await?;
        Ok(())
    }
}
