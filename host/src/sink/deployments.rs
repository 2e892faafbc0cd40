//! The group's guest deployments, in Postgres: every version deployed (module, sha256,
//! where it came from, when, the version live before it), the live version of each guest,
//! each member's answer to a staged version, and, per partition, the offset from which each
//! version is live. `crate::pipeline::deploys` runs the protocol; this is its SQL.
//!
//! The switch to a new version is one transaction that updates the guest's row in
//! `weir_live_guests`. Every batch's transaction takes a share lock on that row when it
//! begins and commits only if it ran with the version the row names (see `Conn::begin`),
//! so the switch waits for the batches in flight, and every batch after it runs the new
//! version: the offsets stored at the switch are where each partition changed version.

use std::time::Duration;

use anyhow::Context;
use tokio_postgres::Client;

use crate::model::{Deployment, ShadowDiff, ShadowReport, Switch};

/// The guest's live version, share-locked for the rest of a batch's transaction.
pub(crate) const LIVE_FOR_SHARE: &str =
    "SELECT sha256 FROM weir_live_guests WHERE group_id = $1 AND guest = $2 FOR SHARE";

/// The channel a deploy notifies (payload: the group id).
pub const CHANNEL: &str = "weir_deploys";

/// The most differences kept per shadow candidate (all are counted).
pub const MAX_DIFFS: i64 = 10_000;

/// Serialises deploys of one guest in one group (with the hash of `group/guest`).
const DEPLOY_LOCK: &str = "hashtext('weir.deploy')";

/// A guest's live version in the group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Live {
    /// Guest name.
    pub guest: String,
    /// Its deployment number (1, 2, …).
    pub version: i32,
    /// sha256 of the module.
    pub sha256: String,
}

/// Where a version came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeployKind {
    /// A guest file: at a member's start, or changed under the watch.
    File,
    /// The admin API.
    Admin,
    /// A rollback to an earlier version.
    Rollback,
    /// A shadow candidate promoted.
    Promote,
}

impl DeployKind {
    fn name(self) -> &'static str {
        match self {
            Self::File => "file",
            Self::Admin => "admin",
            Self::Rollback => "rollback",
            Self::Promote => "promote",
        }
    }
}

/// A member's answer to a staged version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The member.
    pub member: String,
    /// `None`: ready to run it; otherwise why it cannot.
    pub refusal: Option<String>,
}

/// A connection to the group's deployments.
pub struct Store {
    client: Client,
    group: String,
}

/// Connects to `url` as `application`.
async fn connect(url: &str, application: &str) -> anyhow::Result<Client> {
    let pg = crate::pg::PgConfig::parse(url, application).map_err(|e| anyhow::anyhow!(e))?;
    pg.connect_spawned("deployments").await.map_err(|e| {
        anyhow::anyhow!(
            "connecting to {} for {application}: {}",
            pg.target(),
            crate::pg::error_text(&e)
        )
    })
}

const HISTORY: &str = "SELECT version, sha256, kind, origin, previous, status, detail,
        to_char(deployed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'),
        to_char(live_from AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'),
        to_char(live_until AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')
   FROM weir_deployments WHERE group_id = $1 AND guest = $2 ORDER BY version";

impl Store {
    /// Connects for `group`, making weir's tables if they are missing.
    pub async fn connect(url: &str, group: &str) -> anyhow::Result<Self> {
        let client = connect(url, "weir-deploys").await?;
        super::create_system_tables(&client)
            .await
            .context("creating weir's tables")?;
        Ok(Self {
            client,
            group: group.to_string(),
        })
    }

    /// Whether the connection is gone.
    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// A connection that hears every deploy of the group: each notification wakes `wake`.
    pub async fn listen(
        url: &str,
        wake: std::sync::Arc<tokio::sync::Notify>,
    ) -> anyhow::Result<Client> {
        use futures::StreamExt as _;
        let (client, mut connection) = crate::pg::PgConfig::parse(url, "weir-deploys-listen")
            .map_err(|e| anyhow::anyhow!(e))?
            .connect()
            .await
            .context("connecting to Postgres to hear deploys")?;
        tokio::spawn(async move {
            let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(message) = messages.next().await {
                match message {
                    Ok(tokio_postgres::AsyncMessage::Notification(_)) => wake.notify_one(),
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!(error = %e, "Deploy notifications ended");
                        break;
                    }
                }
            }
            // Whoever waits finds the connection closed and listens again.
            wake.notify_one();
        });
        client
            .batch_execute(&format!("LISTEN {CHANNEL}"))
            .await
            .context("listening for deploys")?;
        Ok(client)
    }

    /// The live version of every guest of the group.
    pub async fn lives(&self) -> anyhow::Result<Vec<Live>> {
        let rows = self
            .client
            .query(
                "SELECT guest, version, sha256 FROM weir_live_guests WHERE group_id = $1",
                &[&self.group],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| Live {
                guest: r.get(0),
                version: r.get(1),
                sha256: r.get(2),
            })
            .collect())
    }

    /// The live version of `guest`.
    pub async fn live(&self, guest: &str) -> anyhow::Result<Option<Live>> {
        Ok(self.lives().await?.into_iter().find(|l| l.guest == guest))
    }

    /// Whether `sha256` was ever deployed as `guest` (and not refused).
    pub async fn seen(&self, guest: &str, sha256: &str) -> anyhow::Result<bool> {
        let row = self
            .client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM weir_deployments
                  WHERE group_id = $1 AND guest = $2 AND sha256 = $3 AND status <> 'refused')",
                &[&self.group, &guest, &sha256],
            )
            .await?;
        Ok(row.get(0))
    }

    /// Makes `module` the live version 1 of `guest` if the group has none yet, and returns
    /// the live version either way.
    pub async fn bootstrap(
        &mut self,
        guest: &str,
        sha256: &str,
        module: &[u8],
        origin: &str,
    ) -> anyhow::Result<Live> {
        let group = self.group.clone();
        let txn = self.client.transaction().await?;
        txn.execute(
            &format!("SELECT pg_advisory_xact_lock({DEPLOY_LOCK}, hashtext($1 || '/' || $2))"),
            &[&group, &guest],
        )
        .await?;
        let live = txn
            .query_opt(
                "SELECT version, sha256 FROM weir_live_guests WHERE group_id = $1 AND guest = $2",
                &[&group, &guest],
            )
            .await?;
        if let Some(row) = live {
            txn.commit().await?;
            return Ok(Live {
                guest: guest.to_string(),
                version: row.get(0),
                sha256: row.get(1),
            });
        }
        let version: i32 = txn
            .query_one(
                "SELECT coalesce(max(version), 0) + 1 FROM weir_deployments
                  WHERE group_id = $1 AND guest = $2",
                &[&group, &guest],
            )
            .await?
            .get(0);
        txn.execute(
            "INSERT INTO weir_deployments
                (group_id, guest, version, sha256, module, kind, origin, status, live_from)
             VALUES ($1, $2, $3, $4, $5, 'file', $6, 'live', now())",
            &[&group, &guest, &version, &sha256, &module, &origin],
        )
        .await?;
        txn.execute(
            "INSERT INTO weir_live_guests (group_id, guest, version, sha256) VALUES ($1, $2, $3, $4)",
            &[&group, &guest, &version, &sha256],
        )
        .await?;
        txn.commit().await?;
        Ok(Live {
            guest: guest.to_string(),
            version,
            sha256: sha256.to_string(),
        })
    }

    /// The module of version `version` of `guest`.
    pub async fn module(&self, guest: &str, version: i32) -> anyhow::Result<Vec<u8>> {
        let row = self
            .client
            .query_opt(
                "SELECT module FROM weir_deployments
                  WHERE group_id = $1 AND guest = $2 AND version = $3",
                &[&self.group, &guest, &version],
            )
            .await?
            .with_context(|| format!("version {version} of guest {guest} is not stored"))?;
        Ok(row.get(0))
    }

    /// The version a rollback of `guest` returns to: the one live before the live one.
    pub async fn previous(&self, guest: &str) -> anyhow::Result<Option<(i32, String)>> {
        let row = self
            .client
            .query_opt(
                "SELECT p.version, p.sha256 FROM weir_live_guests l
                   JOIN weir_deployments d ON d.group_id = l.group_id AND d.guest = l.guest
                        AND d.version = l.version
                   JOIN weir_deployments p ON p.group_id = d.group_id AND p.guest = d.guest
                        AND p.version = d.previous
                  WHERE l.group_id = $1 AND l.guest = $2",
                &[&self.group, &guest],
            )
            .await?;
        Ok(row.map(|r| (r.get(0), r.get(1))))
    }

    /// Versions of the group staged and not yet answered by `member`: (guest, version,
    /// sha256).
    pub async fn unanswered(&self, member: &str) -> anyhow::Result<Vec<(String, i32, String)>> {
        let rows = self
            .client
            .query(
                "SELECT d.guest, d.version, d.sha256 FROM weir_deployments d
                  WHERE d.group_id = $1 AND d.status = 'staged'
                    AND NOT EXISTS (SELECT 1 FROM weir_deploy_answers a
                                     WHERE a.group_id = d.group_id AND a.guest = d.guest
                                       AND a.version = d.version AND a.member_id = $2)
                  ORDER BY d.version",
                &[&self.group, &member],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect())
    }

    /// Records `member`'s answer to a staged version, and tells the group.
    pub async fn answer(
        &self,
        guest: &str,
        version: i32,
        member: &str,
        refusal: Option<&str>,
    ) -> anyhow::Result<()> {
        self.client
            .execute(
                "WITH a AS (
                   INSERT INTO weir_deploy_answers (group_id, guest, version, member_id, refusal)
                   VALUES ($1, $2, $3, $4, $5)
                   ON CONFLICT (group_id, guest, version, member_id)
                   DO UPDATE SET refusal = excluded.refusal, answered_at = now())
                 SELECT pg_notify($6, $1)",
                &[&self.group, &guest, &version, &member, &refusal, &CHANNEL],
            )
            .await?;
        Ok(())
    }

    /// The members heard from within `session`.
    pub async fn members(&self, session: Duration) -> anyhow::Result<Vec<String>> {
        let rows = self
            .client
            .query(
                "SELECT member_id FROM weir_members
                  WHERE group_id = $1 AND heartbeat_at > now() - make_interval(secs => $2)
                  ORDER BY member_id",
                &[&self.group, &session.as_secs_f64()],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// The answers to a staged version so far.
    pub async fn answers(&self, guest: &str, version: i32) -> anyhow::Result<Vec<Answer>> {
        let rows = self
            .client
            .query(
                "SELECT member_id, refusal FROM weir_deploy_answers
                  WHERE group_id = $1 AND guest = $2 AND version = $3",
                &[&self.group, &guest, &version],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| Answer {
                member: r.get(0),
                refusal: r.get(1),
            })
            .collect())
    }

    /// Every version of `guest`, oldest first, with the offsets each went live at.
    pub async fn history(&self, guest: &str) -> anyhow::Result<Vec<Deployment>> {
        let rows = self.client.query(HISTORY, &[&self.group, &guest]).await?;
        let switches = self
            .client
            .query(
                "SELECT version, topic, partition, from_offset FROM weir_switches
                  WHERE group_id = $1 AND guest = $2 ORDER BY version, topic, partition",
                &[&self.group, &guest],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| {
                let version: i32 = r.get(0);
                Deployment {
                    version,
                    sha256: r.get(1),
                    kind: r.get(2),
                    origin: r.get(3),
                    previous: r.get(4),
                    status: r.get(5),
                    detail: r.get(6),
                    deployed_at: r.get(7),
                    live_from: r.get(8),
                    live_until: r.get(9),
                    switches: switches
                        .iter()
                        .filter(|s| s.get::<_, i32>(0) == version)
                        .map(|s| Switch {
                            topic: s.get(1),
                            partition: s.get(2),
                            from_offset: s.get(3),
                        })
                        .collect(),
                }
            })
            .collect())
    }

    /// Makes `module` the shadow candidate of `guest` (replacing any other, with its
    /// differences), and tells the group.
    pub async fn set_shadow(
        &mut self,
        guest: &str,
        sha256: &str,
        module: &[u8],
        origin: &str,
    ) -> anyhow::Result<()> {
        let group = self.group.clone();
        let txn = self.client.transaction().await?;
        txn.execute(
            "DELETE FROM weir_shadow_diffs WHERE group_id = $1 AND guest = $2",
            &[&group, &guest],
        )
        .await?;
        txn.execute(
            "INSERT INTO weir_shadows (group_id, guest, sha256, module, origin)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (group_id, guest) DO UPDATE SET sha256 = $3, module = $4, origin = $5,
                 started_at = now(), compared = 0, differing = 0, skipped = 0",
            &[&group, &guest, &sha256, &module, &origin],
        )
        .await?;
        txn.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &group])
            .await?;
        txn.commit().await?;
        Ok(())
    }

    /// Ends the shadow run of `guest` (and forgets its differences), telling the group.
    /// False when there was none.
    pub async fn clear_shadow(&mut self, guest: &str) -> anyhow::Result<bool> {
        let group = self.group.clone();
        let txn = self.client.transaction().await?;
        let gone = txn
            .execute(
                "DELETE FROM weir_shadows WHERE group_id = $1 AND guest = $2",
                &[&group, &guest],
            )
            .await?;
        txn.execute(
            "DELETE FROM weir_shadow_diffs WHERE group_id = $1 AND guest = $2",
            &[&group, &guest],
        )
        .await?;
        txn.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &group])
            .await?;
        txn.commit().await?;
        Ok(gone > 0)
    }

    /// The shadow candidate of every guest of the group: (guest, sha256).
    pub async fn shadows(&self) -> anyhow::Result<Vec<(String, String)>> {
        let rows = self
            .client
            .query(
                "SELECT guest, sha256 FROM weir_shadows WHERE group_id = $1",
                &[&self.group],
            )
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// The shadow candidate of `guest`: (sha256, module).
    pub async fn shadow_module(&self, guest: &str) -> anyhow::Result<Option<(String, Vec<u8>)>> {
        let row = self
            .client
            .query_opt(
                "SELECT sha256, module FROM weir_shadows WHERE group_id = $1 AND guest = $2",
                &[&self.group, &guest],
            )
            .await?;
        Ok(row.map(|r| (r.get(0), r.get(1))))
    }

    /// Adds what this member compared of candidate `sha256` of `guest`: `compared`
    /// messages, `skipped` batches and `diffs` (only the first [`MAX_DIFFS`] of a guest's
    /// differences are kept; all are counted).
    pub async fn record_shadow(
        &mut self,
        guest: &str,
        sha256: &str,
        compared: i64,
        skipped: i64,
        diffs: &[ShadowDiff],
    ) -> anyhow::Result<()> {
        let group = self.group.clone();
        let differing = diffs.len() as i64;
        let txn = self.client.transaction().await?;
        let kept: i64 = match txn
            .query_opt(
                "UPDATE weir_shadows
                    SET compared = compared + $4, differing = differing + $5, skipped = skipped + $6
                  WHERE group_id = $1 AND guest = $2 AND sha256 = $3
                 RETURNING differing - $5",
                &[&group, &guest, &sha256, &compared, &differing, &skipped],
            )
            .await?
        {
            Some(row) => row.get(0),
            // Ended or replaced meanwhile.
            None => return Ok(()),
        };
        let room = (MAX_DIFFS - kept).clamp(0, differing) as usize;
        if room > 0 {
            let d = &diffs[..room];
            let col = |f: fn(&ShadowDiff) -> String| d.iter().map(f).collect::<Vec<String>>();
            let partitions: Vec<i32> = d.iter().map(|x| x.partition).collect();
            let offsets: Vec<i64> = d.iter().map(|x| x.offset).collect();
            txn.execute(
                "INSERT INTO weir_shadow_diffs
                    (group_id, guest, sha256, pipeline, topic, partition, \"offset\", kind, live, candidate)
                 SELECT $1, $2, $3, * FROM unnest($4::text[], $5::text[], $6::int[], $7::int8[],
                                                  $8::text[], $9::text[], $10::text[])",
                &[
                    &group,
                    &guest,
                    &sha256,
                    &col(|x| x.pipeline.clone()),
                    &col(|x| x.topic.clone()),
                    &partitions,
                    &offsets,
                    &col(|x| x.kind.clone()),
                    &col(|x| x.live.clone()),
                    &col(|x| x.candidate.clone()),
                ],
            )
            .await?;
        }
        txn.commit().await?;
        Ok(())
    }

    /// The shadow candidate of `guest` with its counts and latest `limit` differences.
    pub async fn shadow_report(
        &self,
        guest: &str,
        limit: i64,
    ) -> anyhow::Result<Option<ShadowReport>> {
        let Some(row) = self
            .client
            .query_opt(
                "SELECT sha256, origin,
                        to_char(started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'),
                        compared, differing, skipped
                   FROM weir_shadows WHERE group_id = $1 AND guest = $2",
                &[&self.group, &guest],
            )
            .await?
        else {
            return Ok(None);
        };
        let sha256: String = row.get(0);
        let diffs = self
            .client
            .query(
                "SELECT pipeline, topic, partition, \"offset\", kind, live, candidate
                   FROM weir_shadow_diffs WHERE group_id = $1 AND guest = $2 AND sha256 = $3
                  ORDER BY seen_at DESC, topic, partition, \"offset\" DESC LIMIT $4",
                &[&self.group, &guest, &sha256, &limit],
            )
            .await?
            .iter()
            .map(|r| ShadowDiff {
                pipeline: r.get(0),
                topic: r.get(1),
                partition: r.get(2),
                offset: r.get(3),
                kind: r.get(4),
                live: r.get(5),
                candidate: r.get(6),
            })
            .collect();
        Ok(Some(ShadowReport {
            guest: guest.to_string(),
            sha256,
            origin: row.get(1),
            started_at: row.get(2),
            compared: row.get(3),
            differing: row.get(4),
            skipped: row.get(5),
            diffs,
        }))
    }
}

/// One deploy of one guest, on a connection of its own that holds the guest's deploy lock
/// until it is dropped.
pub struct Deploying {
    client: Client,
    group: String,
    guest: String,
}

impl Deploying {
    /// Takes the deploy lock of `guest` in `group`; `Ok(None)` while another deploy of it
    /// is under way.
    pub async fn lock(url: &str, group: &str, guest: &str) -> anyhow::Result<Option<Self>> {
        let client = connect(url, "weir-deploy").await?;
        let locked: bool = client
            .query_one(
                &format!("SELECT pg_try_advisory_lock({DEPLOY_LOCK}, hashtext($1 || '/' || $2))"),
                &[&group, &guest],
            )
            .await?
            .get(0);
        Ok(locked.then(|| Self {
            client,
            group: group.to_string(),
            guest: guest.to_string(),
        }))
    }

    /// Stages `module` as the next version, answered by `member` (which checked it), and
    /// tells the group. Returns its number.
    pub async fn stage(
        &mut self,
        sha256: &str,
        module: &[u8],
        kind: DeployKind,
        origin: &str,
        member: &str,
    ) -> anyhow::Result<i32> {
        let txn = self.client.transaction().await?;
        let version: i32 = txn
            .query_one(
                "INSERT INTO weir_deployments
                    (group_id, guest, version, sha256, module, kind, origin, previous, status)
                 SELECT $1, $2, coalesce(max(d.version), 0) + 1, $3, $4, $5, $6,
                        (SELECT version FROM weir_live_guests WHERE group_id = $1 AND guest = $2),
                        'staged'
                   FROM weir_deployments d WHERE d.group_id = $1 AND d.guest = $2
                 RETURNING version",
                &[
                    &self.group,
                    &self.guest,
                    &sha256,
                    &module,
                    &kind.name(),
                    &origin,
                ],
            )
            .await?
            .get(0);
        txn.execute(
            "INSERT INTO weir_deploy_answers (group_id, guest, version, member_id)
             VALUES ($1, $2, $3, $4)",
            &[&self.group, &self.guest, &version, &member],
        )
        .await?;
        txn.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &self.group])
            .await?;
        txn.commit().await?;
        Ok(version)
    }

    /// Marks a staged version refused, saying why.
    pub async fn refuse(&self, version: i32, why: &str) -> anyhow::Result<()> {
        self.client
            .execute(
                "UPDATE weir_deployments SET status = 'refused', detail = $4
                  WHERE group_id = $1 AND guest = $2 AND version = $3 AND status = 'staged'",
                &[&self.group, &self.guest, &version, &why],
            )
            .await?;
        Ok(())
    }

    /// Makes a staged version live: waits for the batches in flight under the current
    /// version, records the offset each of `topics`' partitions switches at, and tells
    /// the group.
    pub async fn switch(&mut self, version: i32, topics: &[String]) -> anyhow::Result<Live> {
        let (group, guest) = (self.group.clone(), self.guest.clone());
        let txn = self.client.transaction().await?;
        let sha256: String = txn
            .query_opt(
                "SELECT sha256 FROM weir_deployments
                  WHERE group_id = $1 AND guest = $2 AND version = $3 AND status = 'staged'
                  FOR UPDATE",
                &[&group, &guest, &version],
            )
            .await?
            .with_context(|| format!("version {version} of guest {guest} is no longer staged"))?
            .get(0);
        // Waits for every batch holding the share lock; later batches wait for this.
        txn.execute(
            "INSERT INTO weir_live_guests AS l (group_id, guest, version, sha256)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (group_id, guest) DO UPDATE SET version = $3, sha256 = $4",
            &[&group, &guest, &version, &sha256],
        )
        .await?;
        txn.execute(
            "UPDATE weir_deployments SET status = 'superseded', live_until = now()
              WHERE group_id = $1 AND guest = $2 AND status = 'live'",
            &[&group, &guest],
        )
        .await?;
        txn.execute(
            "UPDATE weir_deployments SET status = 'live', live_from = now()
              WHERE group_id = $1 AND guest = $2 AND version = $3",
            &[&group, &guest, &version],
        )
        .await?;
        txn.execute(
            "INSERT INTO weir_switches (group_id, guest, version, topic, partition, from_offset)
             SELECT $1, $2, $3, topic, partition, next_offset FROM weir_offsets
              WHERE group_id = $1 AND topic = ANY($4)",
            &[&group, &guest, &version, &topics],
        )
        .await?;
        txn.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &group])
            .await?;
        txn.commit().await?;
        Ok(Live {
            guest,
            version,
            sha256,
        })
    }
}
