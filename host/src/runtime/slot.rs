//! A guest that can be replaced while a pipeline runs.
//!
//! Callers take the current [`Guest`] once per batch ([`GuestSlot::current`]) and use that
//! version for the whole batch, so a swap lands at the next batch boundary and never waits
//! for more than the batch in flight.

use std::sync::{Arc, RwLock};

use super::Guest;

/// The version of one guest name in use, with the one before it for rollback.
#[derive(Debug)]
pub struct GuestSlot {
    name: String,
    /// Swaps and rollbacks change it under the write lock, one at a time.
    state: RwLock<SlotState>,
    /// A candidate run next to the current version on the same batches, its outcomes
    /// compared and never written ([`crate::pipeline::shadow`]).
    shadow: RwLock<Option<Guest>>,
}

#[derive(Debug)]
struct SlotState {
    current: Guest,
    previous: Option<Guest>,
    swaps: u64,
}

/// A swap or rollback, for logs and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Swapped {
    /// Guest name.
    pub name: String,
    /// sha256 of the version replaced.
    pub old_version: String,
    /// sha256 of the version now in use.
    pub new_version: String,
}

impl GuestSlot {
    /// A slot holding `guest`, under `name`.
    pub fn new(name: &str, guest: Guest) -> Arc<Self> {
        Arc::new(Self {
            name: name.to_string(),
            state: RwLock::new(SlotState {
                current: guest,
                previous: None,
                swaps: 0,
            }),
            shadow: RwLock::new(None),
        })
    }

    /// The slot's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The version to run the next batch with.
    pub fn current(&self) -> Guest {
        self.state
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .current
            .clone()
    }

    /// Swaps in `guest` (already compiled and checked); the replaced version becomes the
    /// rollback target. Swapping in the version already current changes nothing.
    pub fn swap(&self, guest: Guest) -> Option<Swapped> {
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        if state.current.id().version == guest.id().version {
            return None;
        }
        Some(self.replace(&mut state, guest, "Swapped guest"))
    }

    /// Goes back to the version the last swap replaced; `None` when there is none.
    pub fn rollback(&self) -> Option<Swapped> {
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        let previous = state.previous.take()?;
        Some(self.replace(&mut state, previous, "Rolled guest back"))
    }

    /// Makes `guest` current, keeping the replaced version for rollback.
    fn replace(&self, state: &mut SlotState, guest: Guest, what: &str) -> Swapped {
        let old = std::mem::replace(&mut state.current, guest);
        let swapped = Swapped {
            name: self.name.clone(),
            old_version: old.id().version.clone(),
            new_version: state.current.id().version.clone(),
        };
        state.previous = Some(old);
        state.swaps += 1;
        tracing::debug!(guest = %self.name, old = %swapped.old_version, new = %swapped.new_version, "{what}");
        swapped
    }

    /// The limits calls run under (every version of a slot keeps the slot's limits).
    pub fn limits(&self) -> super::GuestLimits {
        self.current().limits()
    }

    /// sha256 of the version a rollback would return to.
    pub fn previous_version(&self) -> Option<String> {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        state.previous.as_ref().map(|g| g.id().version.clone())
    }

    /// The shadow candidate, if one runs.
    pub fn shadow(&self) -> Option<Guest> {
        self.shadow
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Starts running `guest` as the shadow candidate (`None`: stops).
    pub fn set_shadow(&self, guest: Option<Guest>) {
        *self.shadow.write().unwrap_or_else(|e| e.into_inner()) = guest;
    }

    /// Swaps and rollbacks so far.
    pub fn swaps(&self) -> u64 {
        self.state.read().unwrap_or_else(|e| e.into_inner()).swaps
    }
}
