//! A guest version deployed to a group, as its history shows it.

/// One deployed version, for `weir guest history`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Deployment {
    /// Its number (1, 2, …).
    pub version: i32,
    /// sha256 of the module.
    pub sha256: String,
    /// `file`, `admin`, `rollback` or `promote`.
    pub kind: String,
    /// Who or what deployed it.
    pub origin: String,
    /// The version live when it was deployed.
    pub previous: Option<i32>,
    /// `staged`, `live`, `superseded` or `refused`.
    pub status: String,
    /// Why it was refused.
    pub detail: Option<String>,
    /// When it was deployed (RFC 3339).
    pub deployed_at: String,
    /// When it went live.
    pub live_from: Option<String>,
    /// When a later version replaced it.
    pub live_until: Option<String>,
    /// Per partition, the offset it ran from.
    pub switches: Vec<Switch>,
}

/// The offset from which a version ran on a partition.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Switch {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// First offset processed by the version.
    pub from_offset: i64,
}

/// A shadow candidate of a guest and how its outcomes compared with the live version's,
/// for `weir guest diff`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ShadowReport {
    /// Guest name.
    pub guest: String,
    /// sha256 of the candidate.
    pub sha256: String,
    /// Who or what started it.
    pub origin: String,
    /// When it started (RFC 3339).
    pub started_at: String,
    /// Messages run by both versions and compared, over the group.
    pub compared: i64,
    /// Of those, messages whose outcomes differed.
    pub differing: i64,
    /// Batches not run by the candidate because it was still busy with earlier ones.
    pub skipped: i64,
    /// The latest differences, newest first.
    pub diffs: Vec<ShadowDiff>,
}

/// One message on which a shadow candidate's outcome differed from the live version's.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ShadowDiff {
    /// The pipeline.
    pub pipeline: String,
    /// The message's topic.
    pub topic: String,
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// What differed: `rows`, `emits` or `dead_letter` (comma-separated when several).
    pub kind: String,
    /// The live version's outcome, as text.
    pub live: String,
    /// The candidate's outcome, as text.
    pub candidate: String,
}
