//! The admin API: list guests, deploy a new version, roll one back. Off unless `admin:`
//! is configured; on its own address; every request needs `Authorization: Bearer TOKEN`.
//!
//! - `GET /guests`: every guest (name, version sha256, previous version, loaded at, calls,
//!   errors, swaps, pipelines) and, per topic, the guest serving it.
//! - `PUT /guests/{name}` with a `.wasm` body: compile, check and swap it in at each
//!   pipeline's next batch. 200 with the old and new version; 404 for a name no pipeline
//!   uses; 422 with the reason if the module is refused (the running version stays); 413
//!   above `admin.max_body`.
//! - `POST /guests/{name}/rollback`: back to the version the last swap replaced; 409 when
//!   there is none.
//! - `GET /guests/{name}/history`: every version deployed to the group, oldest first, with
//!   where it came from, when it was live, and the offset it ran from on each partition.
//! - `PUT /guests/{name}/shadow` with a `.wasm` body: run it as the shadow candidate on
//!   every member, next to the live version on the same batches; its outcomes are
//!   compared with the live version's and never written. 422 when refused (it does not
//!   load, or the guest keeps state or runs lookups).
//! - `GET /guests/{name}/diff?limit=N`: the candidate, the messages compared and
//!   differing, batches skipped while it was busy, and the latest N differences (100).
//! - `POST /guests/{name}/promote`: make the candidate live, as a deploy does, and end the
//!   shadow run. `DELETE /guests/{name}/shadow`: end it. 404 when none runs.
//!
//! Under `weir run`, a deploy or rollback reaches the whole group (see
//! [`crate::pipeline::deploys`]): the answer comes once the version is live on every
//! member; 422 when a member refuses it, 409 while another deploy of the guest is under
//! way, 503 when the group's store or a member does not answer.
//!
//! Errors are JSON `{"error_code": STATUS, "message": "…"}`. A missing or wrong token is
//! 401 and changes nothing. The token is never logged.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::config::AdminConfig;
use crate::model::{Deployment, ShadowReport};
use crate::runtime::{DeployError, Deployer, GuestSet, GuestStatus, Swapped};
use crate::serve::ListenerLimits;

/// Where the bearer token comes from. Read at each request, so a rotated secret file
/// takes effect without a restart.
#[derive(Debug, Clone)]
pub enum TokenSource {
    /// A file holding the token (surrounding whitespace ignored).
    File(PathBuf),
    /// An environment variable holding the token.
    Env(String),
}

impl TokenSource {
    /// The source `admin:` names.
    pub fn from_config(admin: &AdminConfig) -> Self {
        match (&admin.token_file, &admin.token_env) {
            (Some(file), _) => Self::File(file.clone()),
            (None, Some(var)) => Self::Env(var.clone()),
            (None, None) => Self::Env(String::new()),
        }
    }

    /// The token now. The error names the file or variable, never the token.
    pub fn read(&self) -> anyhow::Result<Token> {
        let text = match self {
            Self::File(path) => std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the admin token file {}", path.display()))?,
            Self::Env(var) => std::env::var(var)
                .with_context(|| format!("the admin token variable {var} is not set"))?,
        };
        let token = text.trim();
        anyhow::ensure!(
            !token.is_empty(),
            "the admin token ({}) is empty",
            self.describe()
        );
        Ok(Token(token.to_string()))
    }

    fn describe(&self) -> String {
        match self {
            Self::File(path) => format!("file {}", path.display()),
            Self::Env(var) => format!("variable {var}"),
        }
    }
}

/// A bearer token. Its `Debug` does not show it.
#[derive(Clone)]
pub struct Token(String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl Token {
    /// The token, for a client to send.
    pub fn expose(&self) -> &str {
        &self.0
    }

    fn matches(&self, presented: &str) -> bool {
        self.0.as_bytes().ct_eq(presented.as_bytes()).into()
    }
}

/// What the admin API serves.
#[derive(Clone)]
pub struct AdminState {
    /// The guests it manages.
    pub guests: Arc<GuestSet>,
    /// How their new versions are deployed (`weir run`: to the whole group).
    pub deployer: Arc<dyn Deployer>,
    /// Where the token comes from.
    pub token: TokenSource,
    /// Largest body accepted, in bytes.
    pub max_body: usize,
}

impl std::fmt::Debug for AdminState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminState")
            .field("guests", &self.guests)
            .field("token", &self.token)
            .field("max_body", &self.max_body)
            .finish_non_exhaustive()
    }
}

/// `GET /guests`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestList {
    /// Every guest.
    pub guests: Vec<GuestStatus>,
    /// Per topic, the guest serving it.
    pub topics: Vec<TopicGuest>,
}

/// A topic and the guest serving it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicGuest {
    /// Topic.
    pub topic: String,
    /// Pipeline consuming it.
    pub pipeline: String,
    /// Guest name.
    pub guest: String,
    /// sha256 of the running version.
    pub version: String,
    /// When that version was loaded.
    pub loaded_at: String,
    /// Calls by that version in this pipeline.
    pub calls: u64,
    /// Failed calls by that version in this pipeline.
    pub errors: u64,
}

/// A swap's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwapReply {
    /// Guest name.
    pub name: String,
    /// Whether the running version changed (false: that version was already running).
    pub changed: bool,
    /// sha256 of the version replaced (the running one if nothing changed).
    pub old_version: String,
    /// sha256 of the version now running.
    pub version: String,
}

/// An error's body, as the registry's: `{"error_code": 422, "message": "…"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    /// The HTTP status.
    pub error_code: u16,
    /// What went wrong.
    pub message: String,
}

/// Longest message an error body carries.
const MAX_MESSAGE: usize = 4096;

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    let body = ErrorReply {
        error_code: status.as_u16(),
        message: crate::text::truncate(&message.into(), MAX_MESSAGE),
    };
    (status, axum::Json(body)).into_response()
}

/// `response`, for a request whose body was left unread: the connection cannot carry
/// another request, so say so, or a client may reuse it and see its next request fail.
fn closing(mut response: Response) -> Response {
    response.headers_mut().insert(
        header::CONNECTION,
        header::HeaderValue::from_static("close"),
    );
    response
}

/// The admin routes, behind the token check.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/guests", get(list))
        .route("/guests/{name}", axum::routing::put(deploy))
        .route("/guests/{name}/rollback", post(rollback))
        .route("/guests/{name}/history", get(history))
        .route(
            "/guests/{name}/shadow",
            axum::routing::put(shadow).delete(discard),
        )
        .route("/guests/{name}/promote", post(promote))
        .route("/guests/{name}/diff", get(diff))
        .layer(DefaultBodyLimit::max(state.max_body))
        .layer(middleware::from_fn_with_state(state.token.clone(), bearer))
        .with_state(state)
}

/// Serves the admin API on `listener`, under `limits`, until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AdminState,
    limits: ListenerLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    crate::serve::serve("admin", listener, router(state), limits, shutdown)
        .await
        .context("serving the admin API")
}

/// Lets a request through only with the bearer token `token` holds now (the admin API's
/// check, and that of a live feed's control endpoint); else a 401 that closes the
/// connection, or a 503 when the server has no token to check against.
pub async fn bearer(
    State(token): State<TokenSource>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Response {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let expected = match token.read() {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "Refused a request: no bearer token to check it against");
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the admin token is not available on the server",
            );
        }
    };
    match presented {
        Some(p) if expected.matches(p) => next.run(request).await,
        _ => {
            tracing::warn!(method = %request.method(), path = %request.uri().path(), token_given = presented.is_some(), "Refused a request: missing or wrong bearer token");
            let mut response = closing(error(
                StatusCode::UNAUTHORIZED,
                "missing or wrong bearer token: send Authorization: Bearer TOKEN",
            ));
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer realm=\"weir-admin\""),
            );
            response
        }
    }
}

async fn list(State(state): State<AdminState>) -> Response {
    let guests = state.guests.status();
    let mut topics: Vec<TopicGuest> = guests
        .iter()
        .flat_map(|g| {
            g.pipelines.iter().flat_map(move |p| {
                p.topics.iter().map(move |t| TopicGuest {
                    topic: t.clone(),
                    pipeline: p.pipeline.clone(),
                    guest: g.name.clone(),
                    version: g.version.clone(),
                    loaded_at: g.loaded_at.clone(),
                    calls: p.calls,
                    errors: p.errors,
                })
            })
        })
        .collect();
    topics.sort_by(|a, b| a.topic.cmp(&b.topic));
    axum::Json(GuestList { guests, topics }).into_response()
}

async fn deploy(
    State(state): State<AdminState>,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match module(&state, body) {
        Ok(b) => b,
        Err(response) => return *response,
    };
    tracing::info!(guest = %name, bytes = body.len(), "Admin API: deploying a new guest version");
    let guest = name.clone();
    answer("deploying", &state, move |d| {
        d.deploy(&guest, &body, "admin API")
    })
    .await
    .map(|swapped| swap_reply(&state, name, swapped))
    .into_response()
}

/// Runs `f` with the deployer off the async threads (compiling is CPU work, and a group
/// deploy waits for every member); an error comes as its answer.
async fn answer<T: Send + 'static>(
    what: &str,
    state: &AdminState,
    f: impl FnOnce(&dyn Deployer) -> Result<T, DeployError> + Send + 'static,
) -> Result<T, Response> {
    let deployer = state.deployer.clone();
    match tokio::task::spawn_blocking(move || f(&*deployer)).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(deploy_error(e)),
        Err(e) => Err(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("{what} failed: {e}"),
        )),
    }
}

/// A request's `.wasm` body, or the answer refusing it.
fn module(state: &AdminState, body: Result<Bytes, BytesRejection>) -> Result<Bytes, Box<Response>> {
    let body = match body {
        Ok(b) => b,
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return Err(Box::new(closing(error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the module is larger than admin.max_body ({} bytes)",
                    state.max_body
                ),
            ))));
        }
        Err(e) => return Err(Box::new(error(e.status(), e.body_text()))),
    };
    if body.is_empty() {
        return Err(Box::new(error(
            StatusCode::BAD_REQUEST,
            "empty body: send the .wasm component as the request body",
        )));
    }
    Ok(body)
}

/// `PUT /guests/{name}/shadow`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShadowStarted {
    /// Guest name.
    pub name: String,
    /// sha256 of the candidate.
    pub candidate: String,
    /// sha256 of the live version it runs next to.
    pub live: String,
}

async fn shadow(
    State(state): State<AdminState>,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match module(&state, body) {
        Ok(b) => b,
        Err(response) => return *response,
    };
    tracing::info!(guest = %name, bytes = body.len(), "Admin API: starting a shadow candidate");
    let guest = name.clone();
    answer("starting the shadow run", &state, move |d| {
        d.shadow(&guest, &body, "admin API shadow")
    })
    .await
    .map(|candidate| {
        axum::Json(ShadowStarted {
            live: state.guests.version(&name).unwrap_or_default(),
            name,
            candidate,
        })
    })
    .into_response()
}

async fn promote(State(state): State<AdminState>, Path(name): Path<String>) -> Response {
    let guest = name.clone();
    answer("promoting", &state, move |d| {
        d.promote(&guest, "admin API promote")
    })
    .await
    .map(|swapped| swap_reply(&state, name, swapped))
    .into_response()
}

/// `DELETE /guests/{name}/shadow`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShadowEnded {
    /// Guest name.
    pub name: String,
}

async fn discard(State(state): State<AdminState>, Path(name): Path<String>) -> Response {
    let guest = name.clone();
    answer("ending the shadow run", &state, move |d| d.discard(&guest))
        .await
        .map(|_| axum::Json(ShadowEnded { name }))
        .into_response()
}

/// `GET /guests/{name}/diff`'s query.
#[derive(Debug, Deserialize)]
struct DiffQuery {
    limit: Option<i64>,
}

async fn diff(
    State(state): State<AdminState>,
    Path(name): Path<String>,
    Query(q): Query<DiffQuery>,
) -> Response {
    let limit = q.limit.unwrap_or(100).clamp(0, 10_000);
    answer("reading the differences", &state, move |d| {
        d.diff(&name, limit)
    })
    .await
    .map(axum::Json::<ShadowReport>)
    .into_response()
}

async fn rollback(State(state): State<AdminState>, Path(name): Path<String>) -> Response {
    answer("rolling back", &state, move |d| {
        d.rollback(&name, "admin API rollback")
    })
    .await
    .map(|s| axum::Json(reply(s)))
    .into_response()
}

/// `GET /guests/{name}/history`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    /// Guest name.
    pub name: String,
    /// Every version deployed to the group, oldest first.
    pub versions: Vec<Deployment>,
}

async fn history(State(state): State<AdminState>, Path(name): Path<String>) -> Response {
    let guest = name.clone();
    answer("reading the history", &state, move |d| d.history(&guest))
        .await
        .map(|versions| axum::Json(History { name, versions }))
        .into_response()
}

/// The answer to a deploy or promote: the swap, or that the version already ran.
fn swap_reply(state: &AdminState, name: String, swapped: Option<Swapped>) -> axum::Json<SwapReply> {
    axum::Json(match swapped {
        Some(s) => reply(s),
        None => {
            let current = state.guests.version(&name).unwrap_or_default();
            SwapReply {
                name,
                changed: false,
                old_version: current.clone(),
                version: current,
            }
        }
    })
}

fn reply(s: Swapped) -> SwapReply {
    SwapReply {
        name: s.name,
        changed: true,
        old_version: s.old_version,
        version: s.new_version,
    }
}

fn deploy_error(e: DeployError) -> Response {
    let status = match &e {
        DeployError::Unknown(_) | DeployError::NoHistory(_) | DeployError::NoShadow(_) => {
            StatusCode::NOT_FOUND
        }
        DeployError::Refused(_)
        | DeployError::RefusedByMember { .. }
        | DeployError::ShadowUnsupported(_) => StatusCode::UNPROCESSABLE_ENTITY,
        DeployError::NoPrevious(_) | DeployError::Busy(_) => StatusCode::CONFLICT,
        DeployError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
    };
    error(status, e.to_string())
}
