//! Guest deploys for the whole group, through the deployment store in Postgres
//! ([`crate::sink::deployments`]).
//!
//! A deploy, from any member's admin API or guest directory watch:
//! 1. is compiled, checked and set up there (refused with the reason if it does not load);
//! 2. is stored as the guest's next version, *staged*, and the group is told (NOTIFY);
//! 3. every live member compiles and sets it up off its hot path and answers: ready, or
//!    why not. One refusal, or a member silent past [`ANSWER_TIMEOUT`], refuses the
//!    version everywhere, and the running one stays;
//! 4. once every live member is ready, one transaction *switches* the guest's live
//!    version. Every batch's transaction holds a share lock on that live version and
//!    commits only if it ran with it, so the switch waits for the batches in flight, and
//!    no batch after it commits with the old version on any member: a batch that ran
//!    with it is rolled back and read again with the new one. The switch records, per
//!    partition, the offset the new version runs from.
//!
//! A shadow candidate ([`Deployer::shadow`]) is stored beside the live version; every
//! member runs it next to the live one on the same batches ([`super::shadow`]), and a
//! promote deploys it as above.
//!
//! A member that starts (or restarts) runs the group's live version, whatever its files
//! hold; a guest file whose contents the group has never deployed (a new image, a changed
//! ConfigMap) is deployed like any other version, while one it deployed before (the
//! image's version after an admin deploy replaced it) is not. A member that cannot compile the live
//! version refuses to start, rather than serve another version.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::model::{Deployment, ShadowReport};
use crate::runtime::{DeployError, Deployer, GuestSet, Prepared, Swapped};
use crate::sink::deployments::{DeployKind, Deploying, Live, Store};

/// How long a deploy waits for every live member to answer.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

/// How often a member looks at the store when it hears nothing.
const BACKSTOP: Duration = Duration::from_secs(5);

/// This member's side of the group's deploys.
pub struct GroupDeploys {
    url: String,
    group: String,
    member: String,
    session: Duration,
    guests: Arc<GuestSet>,
    store: tokio::sync::Mutex<Option<Store>>,
    /// Versions compiled and set up here, by guest and sha256, so that a switch and a
    /// rollback swap in at once.
    prepared: Mutex<HashMap<(String, String), Prepared>>,
    wake: Arc<Notify>,
    handle: tokio::runtime::Handle,
}

impl std::fmt::Debug for GroupDeploys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupDeploys")
            .field("group", &self.group)
            .field("member", &self.member)
            .finish_non_exhaustive()
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(bytes))
}

fn unavailable(guest: &str, e: impl std::fmt::Display) -> DeployError {
    DeployError::Unavailable {
        guest: guest.to_string(),
        reason: format!("{e:#}"),
    }
}

impl GroupDeploys {
    /// Brings `guests` (loaded from their files) to the group's live versions before
    /// anything is served: a guest the group has no version of yet is recorded as
    /// version 1; a file the group has not seen is deployed to the group; otherwise the
    /// live version replaces what the file holds. `member` must have joined the group.
    pub async fn start(
        url: &str,
        group: &str,
        member: &str,
        session: Duration,
        guests: Arc<GuestSet>,
    ) -> anyhow::Result<Arc<Self>> {
        let store = Store::connect(url, group).await?;
        let this = Arc::new(Self {
            url: url.to_string(),
            group: group.to_string(),
            member: member.to_string(),
            session,
            guests: guests.clone(),
            store: tokio::sync::Mutex::new(Some(store)),
            prepared: Mutex::new(HashMap::new()),
            wake: Arc::new(Notify::new()),
            handle: tokio::runtime::Handle::current(),
        });
        let mut new_files = Vec::new();
        for (name, file) in this.managed() {
            let bytes = std::fs::read(&file)
                .with_context(|| format!("cannot read guest {}", file.display()))?;
            let sha = sha256_hex(&bytes);
            let origin = format!("file {} at the group's first start", file.display());
            let (n, b, h) = (name.clone(), bytes.clone(), sha.clone());
            let (live, seen) = this
                .with_store(async move |s| {
                    let live = s.bootstrap(&n, &h, &b, &origin).await?;
                    let seen = s.seen(&n, &h).await?;
                    Ok((live, seen))
                })
                .await?;
            if live.sha256 == sha {
                continue;
            }
            this.adopt(&live).await.with_context(|| {
                format!(
                    "guest {name}: cannot run the group's live version {} ({}); refusing to serve rather than run another version",
                    live.version,
                    &live.sha256[..12]
                )
            })?;
            tracing::info!(guest = %name, version = live.version, sha256 = %live.sha256, file = %file.display(), "Running the group's live guest version, not the file's");
            if !seen {
                new_files.push((name, file, bytes));
            }
        }
        for (name, file, bytes) in new_files {
            let deploying = this.clone();
            let origin = format!("file {} at start", file.display());
            let deployed = tokio::task::spawn_blocking(move || {
                deploying.deploy_as(&name, &bytes, &origin, DeployKind::File)
            })
            .await?;
            if let Err(e) = deployed {
                tracing::warn!(file = %file.display(), error = %e, "A guest file the group has not run was not deployed; running the group's live version");
            }
        }
        Ok(this)
    }

    /// The guests deployed through the store: those loaded from files.
    fn managed(&self) -> Vec<(String, std::path::PathBuf)> {
        self.guests
            .files()
            .into_iter()
            .filter(|(_, f)| !f.to_string_lossy().starts_with("native:"))
            .collect()
    }

    /// Whether the versions of guest `name` are deployed through the store.
    pub fn manages(&self, name: &str) -> bool {
        self.managed().iter().any(|(n, _)| n == name)
    }

    /// Runs `f` with the store, connecting again if the connection was lost.
    async fn with_store<T>(
        &self,
        f: impl AsyncFnOnce(&mut Store) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let mut store = self.store.lock().await;
        if store.as_ref().is_none_or(Store::is_closed) {
            *store = Some(Store::connect(&self.url, &self.group).await?);
        }
        f(store.as_mut().expect("connected")).await
    }

    /// `bytes` of guest `name` compiled and set up here (once per sha256).
    async fn prepare(
        &self,
        name: &str,
        bytes: Vec<u8>,
        origin: &str,
    ) -> Result<Prepared, DeployError> {
        let key = (name.to_string(), sha256_hex(&bytes));
        if let Some(p) = self.lock_prepared().get(&key) {
            return Ok(p.clone());
        }
        let guests = self.guests.clone();
        let (n, o) = (name.to_string(), origin.to_string());
        let prepared = tokio::task::spawn_blocking(move || guests.prepare(&n, &bytes, &o))
            .await
            .map_err(|e| unavailable(name, e))??;
        let mut cache = self.lock_prepared();
        // Only the versions of each guest that may come back soon are kept.
        if cache.keys().filter(|(g, _)| g == name).count() >= 3 {
            let running = self.guests.version(name);
            cache.retain(|(g, sha), _| g != name || Some(sha) == running.as_ref());
        }
        cache.insert(key, prepared.clone());
        Ok(prepared)
    }

    fn lock_prepared(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Prepared>> {
        self.prepared.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes the live version run here (compiling it if it was not prepared).
    async fn adopt(&self, live: &Live) -> anyhow::Result<()> {
        if self.guests.version(&live.guest).as_deref() == Some(live.sha256.as_str()) {
            return Ok(());
        }
        let key = (live.guest.clone(), live.sha256.clone());
        let cached = self.lock_prepared().get(&key).cloned();
        let origin = format!("group deploy {} of {}", live.version, live.guest);
        let prepared = match cached {
            Some(p) => p,
            None => {
                let (guest, version) = (live.guest.clone(), live.version);
                let module = self
                    .with_store(async move |s| s.module(&guest, version).await)
                    .await?;
                self.prepare(&live.guest, module, &origin).await?
            }
        };
        self.guests.install(prepared, &origin);
        Ok(())
    }

    /// Brings guest `name` to the group's live version: a batch found it ran with an
    /// older one.
    pub async fn catch_up(&self, name: &str) -> anyhow::Result<()> {
        let guest = name.to_string();
        let live = self
            .with_store(async move |s| s.live(&guest).await)
            .await?
            .with_context(|| format!("the group has no live version of guest {name}"))?;
        self.adopt(&live).await
    }

    /// Answers staged versions and follows switches until `stop`: woken by the group's
    /// notifications, and every [`BACKSTOP`] in case one was missed.
    pub fn follow(self: &Arc<Self>, stop: CancellationToken) {
        let this = self.clone();
        tokio::spawn(async move {
            let mut listening: Option<tokio_postgres::Client> = None;
            loop {
                if listening.as_ref().is_none_or(|c| c.is_closed()) {
                    listening = match Store::listen(&this.url, this.wake.clone()).await {
                        Ok(c) => Some(c),
                        Err(e) => {
                            tracing::warn!(error = %format!("{e:#}"), "Cannot hear the group's deploys; looking every few seconds");
                            None
                        }
                    };
                }
                if let Err(e) = this.follow_once().await {
                    tracing::warn!(error = %format!("{e:#}"), "Cannot follow the group's deploys; trying again");
                }
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = this.wake.notified() => {}
                    () = tokio::time::sleep(BACKSTOP) => {}
                }
            }
        });
    }

    async fn follow_once(&self) -> anyhow::Result<()> {
        let member = self.member.clone();
        let staged = self
            .with_store(async move |s| s.unanswered(&member).await)
            .await?;
        for (guest, version, sha) in staged {
            let refusal = if self.manages(&guest) {
                let g = guest.clone();
                let module = self
                    .with_store(async move |s| s.module(&g, version).await)
                    .await?;
                let origin = format!("group deploy {version} of {guest} (staged)");
                match self.prepare(&guest, module, &origin).await {
                    Ok(_) => None,
                    Err(e) => Some(e.to_string()),
                }
            } else {
                None
            };
            tracing::info!(guest = %guest, version, sha256 = %sha, ready = refusal.is_none(), "Answered a staged guest version");
            let (g, m) = (guest.clone(), self.member.clone());
            self.with_store(async move |s| s.answer(&g, version, &m, refusal.as_deref()).await)
                .await?;
        }
        let lives = self.with_store(async |s| s.lives().await).await?;
        for live in lives.iter().filter(|l| self.manages(&l.guest)) {
            if let Err(e) = self.adopt(live).await {
                tracing::error!(guest = %live.guest, version = live.version, error = %format!("{e:#}"), "Cannot run the group's live guest version; its batches wait");
            }
        }
        self.follow_shadows().await
    }

    /// Runs here the shadow candidates the group runs, and no others.
    async fn follow_shadows(&self) -> anyhow::Result<()> {
        let shadows = self.with_store(async |s| s.shadows().await).await?;
        for (name, _) in self.managed() {
            let wanted = shadows.iter().find(|(g, _)| *g == name).map(|(_, sha)| sha);
            let running = self.guests.shadow_version(&name);
            match wanted {
                None => {
                    self.guests.clear_shadow(&name);
                }
                Some(sha) if running.as_ref() != Some(sha) => {
                    let guest = name.clone();
                    let Some((sha, module)) = self
                        .with_store(async move |s| s.shadow_module(&guest).await)
                        .await?
                    else {
                        continue;
                    };
                    let origin = format!("group shadow candidate {} of {name}", &sha[..12]);
                    let started = match self.prepare(&name, module, &origin).await {
                        Ok(p) => self.guests.install_shadow(p, &origin),
                        Err(e) => Err(e),
                    };
                    if let Err(e) = started {
                        tracing::warn!(guest = %name, sha256 = %sha, error = %e, "Cannot run the group's shadow candidate here; the live version is unaffected");
                    }
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// The whole deploy (see the module's docs).
    fn deploy_as(
        &self,
        name: &str,
        bytes: &[u8],
        origin: &str,
        kind: DeployKind,
    ) -> Result<Option<Swapped>, DeployError> {
        self.handle
            .block_on(self.deploy_async(name, bytes, origin, kind))
    }

    async fn deploy_async(
        &self,
        name: &str,
        bytes: &[u8],
        origin: &str,
        kind: DeployKind,
    ) -> Result<Option<Swapped>, DeployError> {
        if !self.manages(name) {
            return Err(DeployError::Unknown(name.to_string()));
        }
        let prepared = self.prepare(name, bytes.to_vec(), origin).await?;
        let sha = prepared.version().to_string();
        let guest = name.to_string();
        let live = self
            .with_store(async move |s| s.live(&guest).await)
            .await
            .map_err(|e| unavailable(name, e))?;
        if let Some(live) = &live
            && live.sha256 == sha
        {
            self.adopt(live).await.map_err(|e| unavailable(name, e))?;
            return Ok(None);
        }
        let mut deploying = Deploying::lock(&self.url, &self.group, name)
            .await
            .map_err(|e| unavailable(name, e))?
            .ok_or_else(|| DeployError::Busy(name.to_string()))?;
        let version = deploying
            .stage(&sha, bytes, kind, origin, &self.member)
            .await
            .map_err(|e| unavailable(name, e))?;
        tracing::info!(guest = name, version, sha256 = %sha, origin, "Staged a guest version; waiting for every member of the group");
        if let Err(e) = self.await_answers(name, version).await {
            let why = e.to_string();
            if let Err(e) = deploying.refuse(version, &why).await {
                tracing::warn!(guest = name, version, error = %format!("{e:#}"), "Cannot mark the refused version");
            }
            tracing::warn!(guest = name, version, reason = %why, "Guest version refused by the group; the running version stays");
            return Err(e);
        }
        let live = deploying
            .switch(version, &self.guests.topics(name))
            .await
            .map_err(|e| unavailable(name, e))?;
        let old = self.guests.version(name).unwrap_or_default();
        let origin = format!("{origin}, group version {}", live.version);
        self.guests.install(prepared, &origin);
        Ok(Some(Swapped {
            name: name.to_string(),
            old_version: old,
            new_version: sha,
        }))
    }

    /// Waits until every live member is ready to run `version` of `name`.
    async fn await_answers(&self, name: &str, version: i32) -> Result<(), DeployError> {
        let started = Instant::now();
        loop {
            let (guest, session) = (name.to_string(), self.session);
            let (members, answers) = self
                .with_store(async move |s| {
                    Ok((s.members(session).await?, s.answers(&guest, version).await?))
                })
                .await
                .map_err(|e| unavailable(name, e))?;
            if let Some(a) = answers.iter().find(|a| a.refusal.is_some()) {
                return Err(DeployError::RefusedByMember {
                    guest: name.to_string(),
                    member: a.member.clone(),
                    reason: a.refusal.clone().unwrap_or_default(),
                });
            }
            let silent: Vec<&String> = members
                .iter()
                .filter(|m| !answers.iter().any(|a| &a.member == *m))
                .collect();
            if silent.is_empty() {
                return Ok(());
            }
            if started.elapsed() > ANSWER_TIMEOUT {
                return Err(unavailable(
                    name,
                    format!(
                        "members {silent:?} did not answer within {ANSWER_TIMEOUT:?}; the version was not switched"
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Deployer for GroupDeploys {
    fn deploy(
        &self,
        name: &str,
        bytes: &[u8],
        origin: &str,
    ) -> Result<Option<Swapped>, DeployError> {
        let kind = if origin.starts_with("file ") {
            DeployKind::File
        } else {
            DeployKind::Admin
        };
        self.deploy_as(name, bytes, origin, kind)
    }

    fn rollback(&self, name: &str, origin: &str) -> Result<Swapped, DeployError> {
        if !self.manages(name) {
            return Err(DeployError::Unknown(name.to_string()));
        }
        let guest = name.to_string();
        let module =
            self.handle.block_on(
                self.with_store(async move |s| match s.previous(&guest).await? {
                    Some((version, _)) => Ok(Some((version, s.module(&guest, version).await?))),
                    None => Ok(None),
                }),
            );
        let (version, module) = module
            .map_err(|e| unavailable(name, e))?
            .ok_or_else(|| DeployError::NoPrevious(name.to_string()))?;
        let origin = format!("{origin}: back to group version {version}");
        self.deploy_as(name, &module, &origin, DeployKind::Rollback)?
            .ok_or_else(|| DeployError::NoPrevious(name.to_string()))
    }

    fn history(&self, name: &str) -> Result<Vec<Deployment>, DeployError> {
        if !self.manages(name) {
            return Err(DeployError::Unknown(name.to_string()));
        }
        let guest = name.to_string();
        self.handle
            .block_on(self.with_store(async move |s| s.history(&guest).await))
            .map_err(|e| unavailable(name, e))
    }

    fn shadow(&self, name: &str, bytes: &[u8], origin: &str) -> Result<String, DeployError> {
        if !self.manages(name) {
            return Err(DeployError::Unknown(name.to_string()));
        }
        self.handle.block_on(async {
            let prepared = self.prepare(name, bytes.to_vec(), origin).await?;
            let sha = prepared.version().to_string();
            // Refused here (state, lookups) before the group hears of it.
            self.guests.install_shadow(prepared, origin)?;
            let (guest, module, o, h) = (
                name.to_string(),
                bytes.to_vec(),
                origin.to_string(),
                sha.clone(),
            );
            if let Err(e) = self
                .with_store(async move |s| s.set_shadow(&guest, &h, &module, &o).await)
                .await
            {
                self.guests.clear_shadow(name);
                return Err(unavailable(name, e));
            }
            Ok(sha)
        })
    }

    fn promote(&self, name: &str, origin: &str) -> Result<Option<Swapped>, DeployError> {
        if !self.manages(name) {
            return Err(DeployError::Unknown(name.to_string()));
        }
        let guest = name.to_string();
        let (sha, module) = self
            .handle
            .block_on(self.with_store(async move |s| s.shadow_module(&guest).await))
            .map_err(|e| unavailable(name, e))?
            .ok_or_else(|| DeployError::NoShadow(name.to_string()))?;
        let origin = format!("{origin}: shadow candidate {}", &sha[..12]);
        let swapped = self.deploy_as(name, &module, &origin, DeployKind::Promote)?;
        self.discard(name)?;
        Ok(swapped)
    }

    fn discard(&self, name: &str) -> Result<(), DeployError> {
        if !self.manages(name) {
            return Err(DeployError::Unknown(name.to_string()));
        }
        let guest = name.to_string();
        let ended = self
            .handle
            .block_on(self.with_store(async move |s| s.clear_shadow(&guest).await))
            .map_err(|e| unavailable(name, e))?;
        self.guests.clear_shadow(name);
        if ended {
            Ok(())
        } else {
            Err(DeployError::NoShadow(name.to_string()))
        }
    }

    fn diff(&self, name: &str, limit: i64) -> Result<ShadowReport, DeployError> {
        if !self.manages(name) {
            return Err(DeployError::Unknown(name.to_string()));
        }
        let guest = name.to_string();
        self.handle
            .block_on(self.with_store(async move |s| s.shadow_report(&guest, limit).await))
            .map_err(|e| unavailable(name, e))?
            .ok_or_else(|| DeployError::NoShadow(name.to_string()))
    }
}
