//! The guests a process runs, by name, and how new versions replace them.
//!
//! A guest name (the file stem: `ticks.wasm` is `ticks`) may serve several pipelines, each
//! with its own [`GuestSlot`], limits and config. A new version, from the watched directory
//! ([`super::watch`]) or the admin API, is compiled and checked once, off the hot path, and
//! set up for every pipeline (a 0.2.0 guest's `init` takes each pipeline's config), then
//! swapped into every slot of that name together; a version that fails anywhere is refused
//! with the reason and the running one stays.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use super::{Guest, GuestLimits, GuestSlot, LoadError, Runtime, Swapped};
use crate::model::{ConfigEntry, Deployment, ShadowReport};

/// Every guest of a process, by name.
pub struct GuestSet {
    runtime: Arc<Runtime>,
    guests: BTreeMap<String, Named>,
    /// Held while slots change, so all slots of a name move together and deploys of one
    /// name do not interleave. Compilation happens outside it.
    swapping: Mutex<()>,
}

impl std::fmt::Debug for GuestSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestSet")
            .field("guests", &self.guests.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// One guest name: where it was loaded from and the pipelines it serves.
#[derive(Debug)]
struct Named {
    file: PathBuf,
    /// sha256 of the file as it was loaded.
    loaded: String,
    uses: Vec<Use>,
}

/// One pipeline's use of a guest.
#[derive(Debug)]
struct Use {
    pipeline: String,
    topics: Vec<String>,
    slot: Arc<GuestSlot>,
}

/// A guest's state, for `GET /guests` and `weir guest list`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GuestStatus {
    /// Guest name.
    pub name: String,
    /// sha256 of the running version.
    pub version: String,
    /// sha256 of the version a rollback would return to.
    pub previous_version: Option<String>,
    /// When the running version was loaded (RFC 3339, UTC).
    pub loaded_at: String,
    /// Calls made by the running version, over all its pipelines.
    pub calls: u64,
    /// Of those, calls that failed.
    pub errors: u64,
    /// Swaps and rollbacks since start.
    pub swaps: u64,
    /// The file it is watched at.
    pub file: PathBuf,
    /// The pipelines it serves, with their topics.
    pub pipelines: Vec<PipelineUse>,
}

/// A pipeline served by a guest.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PipelineUse {
    /// Pipeline name.
    pub pipeline: String,
    /// Its topics.
    pub topics: Vec<String>,
    /// Calls made by the running version for this pipeline.
    pub calls: u64,
    /// Of those, calls that failed.
    pub errors: u64,
}

/// A version compiled, checked and set up for every pipeline of its guest in this
/// process, ready to swap in ([`GuestSet::install`]).
#[derive(Clone)]
pub struct Prepared {
    name: String,
    guests: Vec<Guest>,
}

impl Prepared {
    /// sha256 of the version.
    pub fn version(&self) -> &str {
        self.guests.first().map_or("", |g| g.id().version.as_str())
    }
}

/// How new guest versions reach the pipelines: in this process only ([`GuestSet`]), or
/// through the group's deployment store, to every member at one switch (`weir run`).
pub trait Deployer: Send + Sync {
    /// Deploys `bytes` as a new version of `name`; `origin` says who or what for logs and
    /// history (`file PATH` for a guest file). `Ok(None)`: that version is already
    /// running. Blocks until it is live.
    fn deploy(
        &self,
        name: &str,
        bytes: &[u8],
        origin: &str,
    ) -> Result<Option<Swapped>, DeployError>;
    /// Goes back to the version the last deploy of `name` replaced.
    fn rollback(&self, name: &str, origin: &str) -> Result<Swapped, DeployError>;
    /// Every version of `name` deployed, oldest first.
    fn history(&self, name: &str) -> Result<Vec<Deployment>, DeployError>;
    /// Runs `bytes` as the shadow candidate of `name` next to the live version, on the
    /// same batches, comparing outcomes without writing any. Its sha256.
    fn shadow(&self, name: &str, bytes: &[u8], origin: &str) -> Result<String, DeployError>;
    /// Makes the shadow candidate of `name` live (as a deploy does) and ends the shadow
    /// run. `Ok(None)`: it was live already.
    fn promote(&self, name: &str, origin: &str) -> Result<Option<Swapped>, DeployError>;
    /// Ends the shadow run of `name`, forgetting its differences.
    fn discard(&self, name: &str) -> Result<(), DeployError>;
    /// How the shadow candidate of `name` compares, with its latest `limit` differences.
    fn diff(&self, name: &str, limit: i64) -> Result<ShadowReport, DeployError>;
}

impl Deployer for GuestSet {
    fn deploy(
        &self,
        name: &str,
        bytes: &[u8],
        origin: &str,
    ) -> Result<Option<Swapped>, DeployError> {
        GuestSet::deploy(self, name, bytes, origin)
    }

    fn rollback(&self, name: &str, origin: &str) -> Result<Swapped, DeployError> {
        GuestSet::rollback(self, name, origin)
    }

    fn history(&self, name: &str) -> Result<Vec<Deployment>, DeployError> {
        Err(DeployError::NoHistory(name.to_string()))
    }

    fn shadow(&self, name: &str, _: &[u8], _: &str) -> Result<String, DeployError> {
        Err(DeployError::NoHistory(name.to_string()))
    }

    fn promote(&self, name: &str, _: &str) -> Result<Option<Swapped>, DeployError> {
        Err(DeployError::NoHistory(name.to_string()))
    }

    fn discard(&self, name: &str) -> Result<(), DeployError> {
        Err(DeployError::NoHistory(name.to_string()))
    }

    fn diff(&self, name: &str, _: i64) -> Result<ShadowReport, DeployError> {
        Err(DeployError::NoHistory(name.to_string()))
    }
}

/// A new version was not swapped in.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// No pipeline uses a guest of that name.
    #[error("no pipeline uses a guest named {0:?}")]
    Unknown(String),
    /// The module does not compile, fit the world, or fit a pipeline's limits.
    #[error(transparent)]
    Refused(#[from] LoadError),
    /// A rollback with nothing to go back to.
    #[error("guest {0:?} has no previous version to roll back to")]
    NoPrevious(String),
    /// A member of the group refused the version (it does not compile or set up there).
    #[error("member {member} of the group refused the new version of {guest}: {reason}")]
    RefusedByMember {
        /// Guest name.
        guest: String,
        /// The member.
        member: String,
        /// Why.
        reason: String,
    },
    /// Deploys reach this process only: no history or shadow runs are kept.
    #[error(
        "guest {0:?}: this process keeps no deploy store (`weir run` records deploys, their history and shadow runs in Postgres)"
    )]
    NoHistory(String),
    /// A shadow run of a guest that keeps state or runs lookups.
    #[error(
        "guest {0:?} keeps state or runs lookups: shadow runs are for guests without them (a candidate's state would need a store of its own); deploy it directly"
    )]
    ShadowUnsupported(String),
    /// No shadow candidate runs for the guest.
    #[error(
        "guest {0:?} has no shadow candidate running (start one with `weir guest deploy --shadow`)"
    )]
    NoShadow(String),
    /// Another deploy of the guest is under way.
    #[error("another deploy of guest {0:?} is under way; try again when it is done")]
    Busy(String),
    /// The group's deployment store could not be reached or did not answer in time.
    #[error("the deploy of {guest} did not complete: {reason}")]
    Unavailable {
        /// Guest name.
        guest: String,
        /// What went wrong.
        reason: String,
    },
}

impl GuestSet {
    /// An empty set loading with `runtime`.
    pub fn new(runtime: Arc<Runtime>) -> Self {
        Self {
            runtime,
            guests: BTreeMap::new(),
            swapping: Mutex::new(()),
        }
    }

    /// Loads the guest at `file` for `pipeline` (compiling it once per name), sets it up
    /// with the pipeline's limits and config (refused when its `init` refuses the config),
    /// and returns the slot the pipeline takes each batch's version from. Two different
    /// files with the same name are refused: a name must mean one guest.
    pub fn add(
        &mut self,
        pipeline: &str,
        topics: &[String],
        file: &Path,
        limits: GuestLimits,
        config: Vec<ConfigEntry>,
    ) -> Result<Arc<GuestSlot>, LoadError> {
        let name = super::guest_name(file);
        let guest = match self.guests.get(&name) {
            Some(named) if named.file != file => {
                return Err(LoadError::Limits {
                    guest: name.clone(),
                    detail: format!(
                        "two files have this guest name: {} and {}; rename one",
                        named.file.display(),
                        file.display()
                    ),
                });
            }
            Some(named) => named.uses[0].slot.current(),
            None => self.runtime.load_file(file, limits)?,
        };
        let guest = self.runtime.setup(&guest, pipeline, limits, config)?;
        Ok(self.add_use(file, pipeline, topics, guest))
    }

    /// Serves `pipeline` with `guest` as it is (a [`Guest::native`] one, say): no file,
    /// nothing to watch or swap from disk.
    pub fn add_guest(
        &mut self,
        pipeline: &str,
        topics: &[String],
        guest: super::Guest,
    ) -> Arc<GuestSlot> {
        let file = PathBuf::from(format!("native:{}", guest.id().name));
        self.add_use(&file, pipeline, topics, guest)
    }

    fn add_use(
        &mut self,
        file: &Path,
        pipeline: &str,
        topics: &[String],
        guest: super::Guest,
    ) -> Arc<GuestSlot> {
        let name = guest.id().name.clone();
        let loaded = guest.id().version.clone();
        let slot = GuestSlot::new(&name, guest);
        self.guests
            .entry(name)
            .or_insert_with(|| Named {
                file: file.to_path_buf(),
                loaded,
                uses: Vec::new(),
            })
            .uses
            .push(Use {
                pipeline: pipeline.to_string(),
                topics: topics.to_vec(),
                slot: slot.clone(),
            });
        slot
    }

    /// The slot `pipeline` takes its guest from.
    pub fn slot(&self, pipeline: &str) -> Option<Arc<GuestSlot>> {
        self.guests
            .values()
            .flat_map(|n| &n.uses)
            .find(|u| u.pipeline == pipeline)
            .map(|u| u.slot.clone())
    }

    /// The guest names and the files they were loaded from.
    pub fn files(&self) -> Vec<(String, PathBuf)> {
        self.guests
            .iter()
            .map(|(name, n)| (name.clone(), n.file.clone()))
            .collect()
    }

    /// sha256 of `name`'s file as it was loaded at start.
    pub fn file_version(&self, name: &str) -> Option<String> {
        Some(self.guests.get(name)?.loaded.clone())
    }

    /// sha256 of the running version of `name`.
    pub fn version(&self, name: &str) -> Option<String> {
        let named = self.guests.get(name)?;
        Some(named.uses[0].slot.current().id().version.clone())
    }

    /// Compiles and checks `bytes` as a new version of `name` and swaps it into every
    /// pipeline using it, at each one's next batch, in this process only. `origin` says
    /// where it came from, for logs. `Ok(None)`: that version is already running.
    ///
    /// Slow (compilation): call it off the pipeline's thread.
    pub fn deploy(
        &self,
        name: &str,
        bytes: &[u8],
        origin: &str,
    ) -> Result<Option<Swapped>, DeployError> {
        let prepared = self.prepare(name, bytes, origin)?;
        Ok(self.install(prepared, origin))
    }

    /// Compiles and checks `bytes` as a new version of `name` and sets it up for every
    /// pipeline using it, without swapping it in. A refusal is logged and reported with
    /// `origin`.
    ///
    /// Slow (compilation): call it off the pipeline's thread.
    pub fn prepare(&self, name: &str, bytes: &[u8], origin: &str) -> Result<Prepared, DeployError> {
        let named = self
            .guests
            .get(name)
            .ok_or_else(|| DeployError::Unknown(name.to_string()))?;
        match self.compile(named, name, bytes) {
            Ok(guests) => Ok(Prepared {
                name: name.to_string(),
                guests,
            }),
            Err(e) => {
                tracing::warn!(guest = name, origin, reason = %e, "Refused a new guest version; the running version stays");
                self.runtime
                    .events()
                    .guest_refused(name, origin, &e.to_string());
                Err(e.into())
            }
        }
    }

    /// Swaps a prepared version into every pipeline using it, at each one's next batch.
    /// `None`: that version was already running.
    pub fn install(&self, prepared: Prepared, origin: &str) -> Option<Swapped> {
        let name = prepared.name.as_str();
        let named = self.guests.get(name)?;
        let _swapping = self.swapping.lock().unwrap_or_else(|e| e.into_inner());
        let mut swapped = None;
        for (u, guest) in named.uses.iter().zip(prepared.guests) {
            swapped = u.slot.swap(guest).or(swapped);
        }
        if let Some(s) = &swapped {
            tracing::info!(guest = name, origin, old = %s.old_version, new = %s.new_version, "Swapped in a new guest version; it runs from each pipeline's next batch");
            self.runtime.events().guest_swapped(s, origin);
        }
        swapped
    }

    /// Runs a prepared version as the shadow candidate of every pipeline using it, next to
    /// the live version. Refused for a guest whose candidate or live version keeps state
    /// or runs lookups: a candidate's state would need a store of its own.
    pub fn install_shadow(&self, prepared: Prepared, origin: &str) -> Result<(), DeployError> {
        let name = prepared.name.as_str();
        let named = self
            .guests
            .get(name)
            .ok_or_else(|| DeployError::Unknown(name.to_string()))?;
        for (u, guest) in named.uses.iter().zip(&prepared.guests) {
            let live = u.slot.current();
            if [guest, &live]
                .iter()
                .any(|g| g.uses_state() || g.uses_lookups())
            {
                return Err(DeployError::ShadowUnsupported(name.to_string()));
            }
        }
        let version = prepared.version().to_string();
        let _swapping = self.swapping.lock().unwrap_or_else(|e| e.into_inner());
        for (u, guest) in named.uses.iter().zip(prepared.guests) {
            u.slot.set_shadow(Some(guest));
        }
        tracing::info!(guest = name, origin, %version, "Running a shadow candidate next to the live version; its outcomes are compared, never written");
        Ok(())
    }

    /// Stops the shadow candidate of `name`, if one runs here. True if one did.
    pub fn clear_shadow(&self, name: &str) -> bool {
        let Some(named) = self.guests.get(name) else {
            return false;
        };
        let _swapping = self.swapping.lock().unwrap_or_else(|e| e.into_inner());
        let mut ran = false;
        for u in &named.uses {
            ran |= u.slot.shadow().is_some();
            u.slot.set_shadow(None);
        }
        if ran {
            tracing::info!(guest = name, "Stopped the shadow candidate");
        }
        ran
    }

    /// sha256 of the shadow candidate of `name` running here.
    pub fn shadow_version(&self, name: &str) -> Option<String> {
        let named = self.guests.get(name)?;
        Some(named.uses[0].slot.shadow()?.id().version.clone())
    }

    /// The topics of every pipeline using `name`.
    pub fn topics(&self, name: &str) -> Vec<String> {
        self.guests
            .get(name)
            .map(|n| n.uses.iter().flat_map(|u| u.topics.clone()).collect())
            .unwrap_or_default()
    }

    /// One guest per use, compiled once and set up with each use's limits and config.
    fn compile(&self, named: &Named, name: &str, bytes: &[u8]) -> Result<Vec<Guest>, LoadError> {
        let compiled = self
            .runtime
            .load(name, bytes, named.uses[0].slot.limits())?;
        named
            .uses
            .iter()
            .map(|u| {
                let running = u.slot.current();
                self.runtime.setup(
                    &compiled,
                    &u.pipeline,
                    running.limits(),
                    running.config().to_vec(),
                )
            })
            .collect()
    }

    /// Goes back to the version the last swap of `name` replaced, in every pipeline.
    pub fn rollback(&self, name: &str, origin: &str) -> Result<Swapped, DeployError> {
        let named = self
            .guests
            .get(name)
            .ok_or_else(|| DeployError::Unknown(name.to_string()))?;
        let _swapping = self.swapping.lock().unwrap_or_else(|e| e.into_inner());
        let mut swapped = None;
        for u in &named.uses {
            swapped = u.slot.rollback().or(swapped);
        }
        let s = swapped.ok_or_else(|| DeployError::NoPrevious(name.to_string()))?;
        tracing::info!(guest = name, origin, old = %s.old_version, new = %s.new_version, "Rolled a guest back to its previous version");
        self.runtime.events().guest_swapped(&s, origin);
        Ok(s)
    }

    /// Every guest's state.
    pub fn status(&self) -> Vec<GuestStatus> {
        self.guests
            .iter()
            .map(|(name, named)| {
                let pipelines: Vec<PipelineUse> = named
                    .uses
                    .iter()
                    .map(|u| {
                        let (calls, errors) = u.slot.current().stats();
                        PipelineUse {
                            pipeline: u.pipeline.clone(),
                            topics: u.topics.clone(),
                            calls,
                            errors,
                        }
                    })
                    .collect();
                let slot = &named.uses[0].slot;
                let current = slot.current();
                GuestStatus {
                    name: name.clone(),
                    version: current.id().version.clone(),
                    previous_version: slot.previous_version(),
                    loaded_at: rfc3339(current.loaded_at()),
                    calls: pipelines.iter().map(|p| p.calls).sum(),
                    errors: pipelines.iter().map(|p| p.errors).sum(),
                    swaps: slot.swaps(),
                    file: named.file.clone(),
                    pipelines,
                }
            })
            .collect()
    }
}

/// `2026-11-21T10:00:00.123Z`.
fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}
