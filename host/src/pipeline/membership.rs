//! Group membership and partition leases, kept in Postgres.
//!
//! weir's offsets live in Postgres, so its group does too: every `weir run` of a group
//! heartbeats a row in `weir_members`; all members compute the same spread of the
//! partitions over the live members (sorted, round robin), and each takes a lease in
//! `weir_leases` on its share. A member that dies stops renewing; its leases expire after
//! the session timeout and the survivors take its partitions. A member gives a partition up
//! as soon as the spread moves it elsewhere, between two batches, so a partition is served
//! by one member at a time; and should two ever overlap (a member stalled past its lease),
//! the offset compare-and-set in the sink still lets only one commit each batch.
//!
//! This does not depend on the broker's group coordinator, whose behaviour after members
//! die differs between Kafka-compatible brokers.

use std::collections::BTreeSet;
use std::time::Duration;

use tokio_postgres::Client;

/// A partition: topic and number.
pub type Partition = (String, i32);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS weir_members (
    group_id     text        NOT NULL,
    member_id    text        NOT NULL,
    heartbeat_at timestamptz NOT NULL,
    PRIMARY KEY (group_id, member_id)
);
CREATE TABLE IF NOT EXISTS weir_leases (
    group_id   text        NOT NULL,
    topic      text        NOT NULL,
    partition  int         NOT NULL,
    member_id  text        NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (group_id, topic, partition)
);";

/// This process's membership of a group.
pub struct Membership {
    url: String,
    client: Option<Client>,
    group: String,
    member: String,
    session: Duration,
}

impl Membership {
    /// Joins `group`; a member silent for `session` is considered gone.
    pub async fn join(url: &str, group: &str, session: Duration) -> anyhow::Result<Self> {
        let mut m = Self {
            url: url.to_string(),
            client: None,
            group: group.to_string(),
            member: uuid::Uuid::new_v4().to_string(),
            session,
        };
        let client = m.client().await?;
        // Serialised: concurrent CREATE TABLE IF NOT EXISTS can still collide.
        client
            .batch_execute(&format!(
                "BEGIN; SELECT pg_advisory_xact_lock(7340034); {SCHEMA} COMMIT;"
            ))
            .await?;
        tracing::info!(group, member = %m.member, "Joined group");
        Ok(m)
    }

    /// This member's id.
    pub fn id(&self) -> &str {
        &self.member
    }

    async fn client(&mut self) -> anyhow::Result<&Client> {
        if self.client.as_ref().is_none_or(|c| c.is_closed()) {
            let client = crate::pg::PgConfig::parse(&self.url, "weir-membership")
                .map_err(|e| anyhow::anyhow!(e))?
                .connect_spawned("membership")
                .await?;
            self.client = Some(client);
        }
        Ok(self.client.as_ref().expect("connected"))
    }

    /// Renews this member and its leases, and returns the partitions it holds now out of
    /// `all`. Partitions the spread gives to others are released.
    pub async fn heartbeat(&mut self, all: &[Partition]) -> anyhow::Result<BTreeSet<Partition>> {
        let result = self.try_heartbeat(all).await;
        if result.is_err() {
            // Reconnect next time.
            self.client = None;
        }
        result
    }

    async fn try_heartbeat(&mut self, all: &[Partition]) -> anyhow::Result<BTreeSet<Partition>> {
        let session_ms = self.session.as_millis() as i64;
        let (group, member) = (self.group.clone(), self.member.clone());
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO weir_members (group_id, member_id, heartbeat_at) VALUES ($1, $2, now())
                 ON CONFLICT (group_id, member_id) DO UPDATE SET heartbeat_at = now()",
                &[&group, &member],
            )
            .await?;
        client
            .execute(
                "DELETE FROM weir_members WHERE group_id = $1
                 AND heartbeat_at < now() - $2::bigint * interval '1 millisecond'",
                &[&group, &session_ms],
            )
            .await?;
        let members: Vec<String> = client
            .query(
                "SELECT member_id FROM weir_members WHERE group_id = $1 ORDER BY member_id",
                &[&group],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let mut sorted: Vec<&Partition> = all.iter().collect();
        sorted.sort();
        let mine: BTreeSet<Partition> = spread(&sorted, &members, &member);

        // Give up what the spread moved elsewhere.
        let held: Vec<(String, i32)> = client
            .query(
                "SELECT topic, partition FROM weir_leases WHERE group_id = $1 AND member_id = $2",
                &[&group, &member],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        for (topic, partition) in &held {
            if !mine.contains(&(topic.clone(), *partition)) {
                client
                    .execute(
                        "DELETE FROM weir_leases WHERE group_id = $1 AND topic = $2 AND partition = $3 AND member_id = $4",
                        &[&group, topic, partition, &member],
                    )
                    .await?;
            }
        }
        // Take or renew the rest: free, expired, or already ours.
        let mut owned = BTreeSet::new();
        for (topic, partition) in &mine {
            let got = client
                .query_opt(
                    "INSERT INTO weir_leases AS l (group_id, topic, partition, member_id, expires_at)
                     VALUES ($1, $2, $3, $4, now() + $5::bigint * interval '1 millisecond')
                     ON CONFLICT (group_id, topic, partition) DO UPDATE
                       SET member_id = EXCLUDED.member_id, expires_at = EXCLUDED.expires_at
                       WHERE l.member_id = EXCLUDED.member_id OR l.expires_at < now()
                     RETURNING partition",
                    &[&group, topic, partition, &member, &session_ms],
                )
                .await?;
            if got.is_some() {
                owned.insert((topic.clone(), *partition));
            }
        }
        Ok(owned)
    }

    /// Leaves the group: releases every lease so others take over at once.
    pub async fn leave(&mut self) {
        let (group, member) = (self.group.clone(), self.member.clone());
        if let Ok(client) = self.client().await {
            let _ = client
                .execute(
                    "DELETE FROM weir_leases WHERE group_id = $1 AND member_id = $2",
                    &[&group, &member],
                )
                .await;
            let _ = client
                .execute(
                    "DELETE FROM weir_members WHERE group_id = $1 AND member_id = $2",
                    &[&group, &member],
                )
                .await;
        }
        tracing::info!(group, member, "Left group");
    }
}

/// The partitions `me` should serve when `partitions` (sorted) are spread round robin over
/// `members` (sorted). A member not (yet) listed gets none.
fn spread(partitions: &[&Partition], members: &[String], me: &str) -> BTreeSet<Partition> {
    let Some(index) = members.iter().position(|m| m == me) else {
        return BTreeSet::new();
    };
    partitions
        .iter()
        .enumerate()
        .filter(|(i, _)| i % members.len() == index)
        .map(|(_, p)| (*p).clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_is_round_robin_and_covers_everything_once() {
        let parts: Vec<Partition> = (0..7).map(|p| ("t".to_string(), p)).collect();
        let refs: Vec<&Partition> = parts.iter().collect();
        let members = vec!["a".to_string(), "b".to_string(), "c".to_string()];
        let shares: Vec<BTreeSet<Partition>> =
            members.iter().map(|m| spread(&refs, &members, m)).collect();
        assert_eq!(shares[0].len(), 3);
        assert_eq!(shares[1].len(), 2);
        assert_eq!(shares[2].len(), 2);
        let all: BTreeSet<Partition> = shares.into_iter().flatten().collect();
        assert_eq!(all.len(), 7);
        assert!(spread(&refs, &members, "stranger").is_empty());
    }
}
