//! Watching guest files for new versions.
//!
//! The directories holding the guests' files are watched (inotify on Linux) and, as a
//! backstop for file systems that report nothing, rescanned on an interval. A rescan looks
//! at each guest's file through any symlinks, so both ways a directory gets updated work:
//! a file replaced in place or renamed over, and the Kubernetes ConfigMap pattern where
//! `name.wasm` links to `..data/name.wasm` and the kubelet swaps the `..data` link to a
//! new directory atomically.
//!
//! A changed file is read once it has stopped changing, compiled and checked on the
//! watcher's own thread, and deployed by the [`Deployer`] given (in `weir run`, to the
//! whole group). A file that does not load
//! is refused (logged with the reason, counted) and not tried again until it changes; a
//! file that disappears leaves the running version in place.

use std::collections::{BTreeSet, HashMap};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use notify::Watcher as _;
use sha2::{Digest, Sha256};

use super::{Deployer, GuestSet};

/// How long a file must be left alone before it is read: writers that copy in place are
/// done by then.
const SETTLE: Duration = Duration::from_millis(150);

/// Watches the files of a [`GuestSet`]'s guests until dropped.
pub struct Watcher {
    wake: Sender<Wake>,
    thread: Option<JoinHandle<()>>,
    /// Kept alive for its events; `None` when the platform offers none.
    _events: Option<notify::RecommendedWatcher>,
}

impl std::fmt::Debug for Watcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watcher").finish_non_exhaustive()
    }
}

enum Wake {
    Changed,
    Stop,
}

impl Watcher {
    /// Starts watching every guest file of `set`, deploying new versions with `deployer`
    /// and rescanning at least every `rescan`. Files that changed since the set loaded
    /// them are picked up at once.
    pub fn start(
        set: Arc<GuestSet>,
        deployer: Arc<dyn Deployer>,
        rescan: Duration,
    ) -> std::io::Result<Self> {
        let (wake, woken) = mpsc::channel();
        let files = set.files();
        let dirs: BTreeSet<PathBuf> = files
            .iter()
            .filter_map(|(_, f)| f.parent().map(Path::to_path_buf))
            .collect();
        let events = {
            let wake = wake.clone();
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                if event.is_ok() {
                    let _ = wake.send(Wake::Changed);
                }
            })
        };
        let events = match events {
            Ok(mut watcher) => {
                for dir in &dirs {
                    if let Err(e) = watcher.watch(dir, notify::RecursiveMode::NonRecursive) {
                        tracing::warn!(dir = %dir.display(), error = %e, every = ?rescan, "Cannot watch the guest directory for changes; rescanning it on an interval only");
                    }
                }
                Some(watcher)
            }
            Err(e) => {
                tracing::warn!(error = %e, every = ?rescan, "No file change events here; rescanning guest directories on an interval only");
                None
            }
        };
        tracing::info!(dirs = ?dirs, guests = files.len(), "Watching guest files for new versions");
        let mut scanner = Scanner {
            set,
            deployer,
            seen: HashMap::new(),
        };
        let thread = std::thread::Builder::new()
            .name("weir-guest-watch".into())
            .spawn(move || {
                let mut wait = Duration::ZERO;
                loop {
                    match woken.recv_timeout(wait) {
                        Ok(Wake::Stop) | Err(RecvTimeoutError::Disconnected) => return,
                        Ok(Wake::Changed) => {
                            // A burst of events (a directory swap makes several) is one
                            // change: wait for it to end (or for a second, if events
                            // never stop).
                            let burst = std::time::Instant::now();
                            while burst.elapsed() < Duration::from_secs(1) {
                                match woken.recv_timeout(SETTLE / 3) {
                                    Ok(Wake::Changed) => {}
                                    Ok(Wake::Stop) | Err(RecvTimeoutError::Disconnected) => {
                                        return;
                                    }
                                    Err(RecvTimeoutError::Timeout) => break,
                                }
                            }
                        }
                        Err(RecvTimeoutError::Timeout) => {}
                    }
                    wait = if scanner.scan() { SETTLE } else { rescan };
                }
            })?;
        Ok(Self {
            wake,
            thread: Some(thread),
            _events: events,
        })
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.wake.send(Wake::Stop);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// What a file looked like, to notice that it changed without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fingerprint {
    dev: u64,
    ino: u64,
    len: u64,
    modified: Option<SystemTime>,
}

/// The last state seen of one guest's file.
#[derive(Debug, Default)]
struct Seen {
    /// `None`: missing or unreadable (already reported).
    fingerprint: Option<Fingerprint>,
    /// sha256 of the contents last read (loaded or refused).
    sha: Option<String>,
    /// Whether the file's absence or unreadability was reported.
    reported: bool,
}

struct Scanner {
    set: Arc<GuestSet>,
    deployer: Arc<dyn Deployer>,
    seen: HashMap<String, Seen>,
}

impl Scanner {
    /// Looks at every guest file once; true when one is still being written (look again
    /// soon).
    fn scan(&mut self) -> bool {
        let mut settling = false;
        for (name, file) in self.set.files() {
            let seen = self.seen.entry(name.clone()).or_default();
            let meta = match std::fs::metadata(&file) {
                Ok(m) => m,
                Err(e) => {
                    if !seen.reported {
                        tracing::warn!(guest = %name, file = %file.display(), error = %e, "Guest file is gone or unreadable; the running version stays");
                        seen.reported = true;
                    }
                    seen.fingerprint = None;
                    continue;
                }
            };
            let fingerprint = Fingerprint {
                dev: meta.dev(),
                ino: meta.ino(),
                len: meta.len(),
                modified: meta.modified().ok(),
            };
            if seen.fingerprint == Some(fingerprint) {
                continue;
            }
            if fingerprint
                .modified
                .and_then(|m| m.elapsed().ok())
                .is_some_and(|age| age < SETTLE)
            {
                settling = true;
                continue;
            }
            let bytes = match std::fs::read(&file) {
                Ok(b) => b,
                Err(e) => {
                    if !seen.reported {
                        tracing::warn!(guest = %name, file = %file.display(), error = %e, "Cannot read the guest file; the running version stays");
                        seen.reported = true;
                    }
                    continue;
                }
            };
            seen.fingerprint = Some(fingerprint);
            seen.reported = false;
            let sha = hex::encode(Sha256::digest(&bytes));
            if seen.sha.as_deref() == Some(sha.as_str()) {
                continue;
            }
            let first_look = seen.sha.is_none();
            seen.sha = Some(sha.clone());
            // At the first look, the file is what was loaded at start unless it changed
            // in between.
            if first_look && self.set.file_version(&name).as_deref() == Some(sha.as_str()) {
                continue;
            }
            // Refusals are logged and counted where they happen.
            if let Err(e) = self
                .deployer
                .deploy(&name, &bytes, &format!("file {}", file.display()))
            {
                tracing::debug!(guest = %name, error = %e, "The new file version was not deployed");
            }
        }
        settling
    }
}
