//! A guest version deployed to a group, as its history shows it.

/// One deployed version, for `weir guest history`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Deployment {
    /// Its number (1, 2, …).
    pub version: i32,
    /// sha256 of the module.
    pub sha256: String,
    /// `file`, `admin` or `rollback`.
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
