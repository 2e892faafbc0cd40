//! weir's Confluent-compatible schema registry server, stored in Postgres.
//!
//! It serves the part of the Confluent Schema Registry REST API that serializers, AKHQ and
//! curl users touch, with Confluent's paths, JSON fields, status and error codes:
//!
//! - `GET /`, `GET /schemas/types`, `GET /contexts`
//! - `GET /subjects`, `GET|POST /subjects/{s}/versions`, `POST|DELETE /subjects/{s}`,
//!   `GET|DELETE /subjects/{s}/versions/{v}`, `GET /subjects/{s}/versions/{v}/schema`,
//!   `GET /subjects/{s}/versions/{v}/referencedby`
//! - `GET /schemas`, `GET /schemas/ids/{id}` and its `/schema`, `/subjects`, `/versions`
//! - `POST /compatibility/subjects/{s}/versions[/{v}]`
//! - `GET|PUT|DELETE /config[/{s}]`, `GET|PUT /mode`, `GET|PUT|DELETE /mode/{s}`
//!
//! Only Avro schemas are stored, without schema references; `IMPORT` mode is refused (the
//! registry assigns ids itself). Two schemas are the same schema when they are equal after
//! normalisation (see `schema.rs`); compatibility follows Avro Java's rules, which Confluent
//! uses (see `compat.rs`). Tables and locking are in `store.rs`, errors in `error.rs`.

mod auth;
mod compat;
mod error;
mod schema;
mod store;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use auth::{Role, Users};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderName, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde::de::{DeserializeOwned, IgnoredAny};
use serde_json::{Map, Value, json};
use tracing::Instrument;

use self::compat::{Level, Previous};
use self::error::ApiError;
use self::schema::{AVRO, ParsedSchema};
use self::store::{GLOBAL, Store, VersionRow};
use crate::serve::ListenerLimits;

/// The content type of every response, as Confluent sends it.
pub(crate) const CONTENT_TYPE: (HeaderName, &str) = (
    header::CONTENT_TYPE,
    "application/vnd.schemaregistry.v1+json",
);

const READWRITE: &str = "READWRITE";
const READONLY: &str = "READONLY";

/// How the registry server is bounded: its listener, request bodies, and how much CPU its
/// schema work may take at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    /// Connections, header and request timeouts.
    pub listener: ListenerLimits,
    /// Largest request body, in bytes (default 2 MiB): over it, 413.
    pub max_body: usize,
    /// Schema parses and compatibility checks run at once, off the async threads
    /// (default: one per CPU); more wait their turn.
    pub schema_work: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            listener: ListenerLimits {
                max_connections: 1024,
                header_timeout: Duration::from_secs(10),
                request_timeout: Duration::from_secs(60),
            },
            max_body: 2 << 20,
            schema_work: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}

/// What the handlers share: the store, and the permits for schema work.
pub(crate) struct Server {
    store: Store,
    schema_work: Arc<tokio::sync::Semaphore>,
}

impl Server {
    async fn client(&self) -> Result<deadpool_postgres::Client, ApiError> {
        self.store.client().await
    }

    /// Runs CPU work on schemas (parsing, normalising, checking compatibility) on the
    /// blocking pool, a permit at a time, so it never stalls the requests that only read.
    async fn schema_work<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        let _permit = self
            .schema_work
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| ApiError::store(format!("schema work is shut down: {e}")))?;
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|e| ApiError::store(format!("schema work failed: {e}")))
    }
}

/// The registry server: the Confluent Schema Registry REST API over Postgres tables.
pub struct RegistryServer {
    server: Arc<Server>,
    limits: ServerLimits,
    users: Option<Arc<Users>>,
}

impl RegistryServer {
    /// Connects to Postgres (retrying for about half a minute while it is not up yet) and
    /// creates the registry's tables if they are missing.
    pub async fn connect(database_url: &str) -> anyhow::Result<Self> {
        Ok(Self::with_store(
            Store::connect(database_url).await?,
            ServerLimits::default(),
        ))
    }

    fn with_store(store: Store, limits: ServerLimits) -> Self {
        Self {
            server: Arc::new(Server {
                store,
                schema_work: Arc::new(tokio::sync::Semaphore::new(limits.schema_work.max(1))),
            }),
            limits,
            users: None,
        }
    }

    /// Serves under `limits` instead of the defaults.
    pub fn with_limits(self, limits: ServerLimits) -> Self {
        let users = self.users;
        let server = match Arc::try_unwrap(self.server) {
            Ok(server) => Self::with_store(server.store, limits),
            Err(server) => Self {
                server,
                limits,
                users: None,
            },
        };
        Self { users, ..server }
    }

    /// Requires HTTP basic authentication by one of `users` for every request.
    pub fn with_users(mut self, users: Users) -> Self {
        self.users = Some(Arc::new(users));
        self
    }

    /// The HTTP routes.
    pub fn router(&self) -> Router {
        let router = Router::new()
            .route("/", get(root))
            .route("/contexts", get(contexts))
            .route("/subjects", get(list_subjects))
            .route("/subjects/{subject}", post(lookup).delete(delete_subject))
            .route(
                "/subjects/{subject}/versions",
                get(list_versions).post(register),
            )
            .route(
                "/subjects/{subject}/versions/{version}",
                get(get_version).delete(delete_version),
            )
            .route(
                "/subjects/{subject}/versions/{version}/schema",
                get(get_version_schema),
            )
            .route(
                "/subjects/{subject}/versions/{version}/referencedby",
                get(referenced_by),
            )
            .route("/schemas", get(list_schemas))
            .route("/schemas/types", get(schema_types))
            .route("/schemas/ids/{id}", get(schema_by_id))
            .route("/schemas/ids/{id}/schema", get(raw_schema_by_id))
            .route("/schemas/ids/{id}/subjects", get(id_subjects))
            .route("/schemas/ids/{id}/versions", get(id_versions))
            .route(
                "/compatibility/subjects/{subject}/versions",
                post(check_against_all),
            )
            .route(
                "/compatibility/subjects/{subject}/versions/{version}",
                post(check_against_version),
            )
            .route(
                "/config",
                get(get_global_config)
                    .put(put_global_config)
                    .delete(delete_global_config),
            )
            .route(
                "/config/{subject}",
                get(get_config).put(put_config).delete(delete_config),
            )
            .route("/mode", get(get_global_mode).put(put_global_mode))
            .route(
                "/mode/{subject}",
                get(get_mode).put(put_mode).delete(delete_mode),
            )
            .fallback(no_route)
            .method_not_allowed_fallback(method_not_allowed)
            .layer(DefaultBodyLimit::max(self.limits.max_body));
        let router = match &self.users {
            Some(users) => router.layer(middleware::from_fn_with_state(
                users.clone(),
                auth::authenticate,
            )),
            None => router,
        };
        router
            .layer(middleware::from_fn(log_request))
            .with_state(self.server.clone())
    }

    /// Serves on `listener` until `shutdown` resolves, then finishes the requests in flight.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        crate::serve::serve(
            "registry",
            listener,
            self.router(),
            self.limits.listener,
            shutdown,
        )
        .await?;
        Ok(())
    }
}

type Db = State<Arc<Server>>;
type Reply = Result<Response, ApiError>;

/// Logs each request at debug, and gives the warnings of failed ones the method and path.
async fn log_request(request: Request, next: Next) -> Response {
    let span = tracing::info_span!(
        "registry_request",
        method = %request.method(),
        path = %request.uri().path()
    );
    let started = Instant::now();
    let response = next.run(request).instrument(span.clone()).await;
    span.in_scope(|| {
        tracing::debug!(
            status = response.status().as_u16(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "Handled a registry request"
        )
    });
    response
}

/// A 200 response with a JSON body.
fn ok(body: Value) -> Response {
    (StatusCode::OK, [CONTENT_TYPE], body.to_string()).into_response()
}

/// A 200 response whose body is a schema's own text.
fn ok_text(text: String) -> Response {
    (StatusCode::OK, [CONTENT_TYPE], text).into_response()
}

/// The query parameters. Flags are true when they say `true` in any case (Python clients
/// send `True`), as in Jersey.
struct Params(HashMap<String, String>);

impl Params {
    fn flag(&self, name: &str) -> bool {
        self.0
            .get(name)
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
    }

    fn text(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Params {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let query = Query::<HashMap<String, String>>::try_from_uri(&parts.uri)
            .map_err(|e| ApiError::http(StatusCode::BAD_REQUEST, e.body_text()))?;
        Ok(Params(query.0))
    }
}

/// A JSON request body, accepted with any of the content types Confluent accepts (and
/// none), parsed into `T`. Bad JSON and unknown fields are refused with 422.
struct JsonBody<T>(T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        if let Some(value) = request.headers().get(header::CONTENT_TYPE) {
            let content_type = value.to_str().unwrap_or("");
            if !accepted_content_type(content_type) {
                return Err(ApiError::unsupported_media_type(content_type));
            }
        }
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|e| ApiError::http(e.status(), e.body_text()))?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::unprocessable(
                "The request body is empty: send a JSON object",
            ));
        }
        // Strictly: a key given twice or invalid UTF-8 is refused, not read one way here
        // and another by the next reader.
        let value = crate::json::from_slice(&bytes).map_err(|e| {
            ApiError::unprocessable(format!("Invalid JSON in the request body: {e}"))
        })?;
        serde_json::from_value(value)
            .map(JsonBody)
            .map_err(|e| ApiError::unprocessable(format!("Invalid JSON in the request body: {e}")))
    }
}

fn accepted_content_type(content_type: &str) -> bool {
    let mime = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    mime.is_empty()
        || mime == "application/json"
        || mime == "application/octet-stream"
        || (mime.starts_with("application/") && mime.ends_with("+json"))
}

/// The body of a registration, a lookup or a compatibility check. Fields Confluent accepts
/// but weir has no use for (metadata, rule sets, tags) are accepted and ignored.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct SchemaRequest {
    schema: Option<String>,
    schema_type: Option<String>,
    references: Option<Vec<Value>>,
    version: Option<i64>,
    id: Option<i64>,
    #[serde(rename = "metadata")]
    _metadata: Option<IgnoredAny>,
    #[serde(rename = "ruleSet")]
    _rule_set: Option<IgnoredAny>,
    #[serde(rename = "schemaTagsToAdd")]
    _schema_tags_to_add: Option<IgnoredAny>,
    #[serde(rename = "schemaTagsToRemove")]
    _schema_tags_to_remove: Option<IgnoredAny>,
    #[serde(rename = "propagateSchemaTags")]
    _propagate_schema_tags: Option<IgnoredAny>,
}

impl SchemaRequest {
    /// The schema text, once the type and references are known to be ones weir stores.
    fn text(&self) -> Result<&str, ApiError> {
        if let Some(schema_type) = &self.schema_type
            && !schema_type.eq_ignore_ascii_case(AVRO)
        {
            return Err(ApiError::invalid_schema_type(schema_type));
        }
        if self.references.as_ref().is_some_and(|r| !r.is_empty()) {
            return Err(ApiError::invalid_schema(
                "schema references are not supported by this registry; define the referenced types inline",
            ));
        }
        match self.schema.as_deref() {
            Some(text) if !text.trim().is_empty() => Ok(text),
            _ => Err(ApiError::invalid_schema("the request has no \"schema\"")),
        }
    }

    /// Parses the schema strictly, as schema work.
    async fn parse(&self, server: &Server) -> Result<Arc<ParsedSchema>, ApiError> {
        let text = self.text()?.to_string();
        server
            .schema_work(move || schema::parse(&text))
            .await?
            .map(Arc::new)
            .map_err(ApiError::invalid_schema)
    }
}

/// A version in a path: a number from 1, or `latest` (also `-1`).
#[derive(Clone, Copy)]
enum VersionSpec {
    Latest,
    Number(i32),
}

impl VersionSpec {
    fn parse(text: &str) -> Result<Self, ApiError> {
        let trimmed = text.trim();
        if trimmed.eq_ignore_ascii_case("latest") {
            return Ok(VersionSpec::Latest);
        }
        match trimmed.parse::<i32>() {
            Ok(-1) => Ok(VersionSpec::Latest),
            Ok(n) if n > 0 => Ok(VersionSpec::Number(n)),
            _ => Err(ApiError::invalid_version(text)),
        }
    }

    /// The number Confluent puts in "Version N not found." (`-1` for latest).
    fn number(self) -> i32 {
        match self {
            VersionSpec::Latest => -1,
            VersionSpec::Number(n) => n,
        }
    }
}

/// Picks a version among `rows` (oldest first), as a read does: soft-deleted versions only
/// when asked for. 40401 when the subject has no such versions at all, 40402 when it has
/// others.
fn find_version<'a>(
    subject: &str,
    rows: &'a [VersionRow],
    spec: VersionSpec,
    include_deleted: bool,
) -> Result<&'a VersionRow, ApiError> {
    let mut visible = rows.iter().filter(|r| include_deleted || !r.deleted);
    let found = match spec {
        VersionSpec::Latest => visible.clone().next_back(),
        VersionSpec::Number(n) => visible.clone().find(|r| r.version == n),
    };
    match found {
        Some(row) => Ok(row),
        None if visible.next().is_none() => Err(ApiError::subject_not_found(subject)),
        None => Err(ApiError::version_not_found(spec.number())),
    }
}

/// A subject version as Confluent returns it (`schemaType` only when not Avro).
fn version_json(subject: &str, row: &VersionRow) -> Value {
    let mut body = Map::new();
    body.insert("subject".into(), subject.into());
    body.insert("version".into(), row.version.into());
    body.insert("id".into(), row.id.into());
    if row.schema_type != AVRO {
        body.insert("schemaType".into(), row.schema_type.clone().into());
    }
    body.insert("schema".into(), row.schema.clone().into());
    Value::Object(body)
}

/// Refuses names Confluent refuses: empty, with control characters, or reserved.
fn check_subject(subject: &str) -> Result<(), ApiError> {
    if subject.is_empty()
        || subject == GLOBAL
        || subject == "__EMPTY"
        || subject.chars().any(char::is_control)
    {
        return Err(ApiError::invalid_subject(subject));
    }
    Ok(())
}

/// Confluent's messages about `new` against the given versions (oldest first), under the
/// subject's compatibility level; empty when compatible. The parsing and checking run as
/// schema work, off the async threads.
async fn compatibility_messages(
    c: &impl deadpool_postgres::GenericClient,
    server: &Server,
    subject: &str,
    new: &Arc<ParsedSchema>,
    against: &[&VersionRow],
) -> Result<Vec<String>, ApiError> {
    let level = store::effective_config(c, subject).await?;
    if level == Level::None || against.is_empty() {
        return Ok(Vec::new());
    }
    let rows: Vec<VersionRow> = against.iter().map(|r| (*r).clone()).collect();
    let (subject, new) = (subject.to_string(), new.clone());
    server
        .schema_work(move || {
            let parsed = rows
                .iter()
                .map(|row| {
                    schema::parse_registered(&row.schema).map_err(|e| {
                        ApiError::store(format!(
                            "version {} of subject '{subject}' no longer parses as Avro: {e}",
                            row.version
                        ))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            // The old schema as registered, on one line, for the messages.
            let texts: Vec<String> = rows
                .iter()
                .map(|row| {
                    serde_json::from_str::<Value>(&row.schema)
                        .map_or_else(|_| row.schema.clone(), |v| v.to_string())
                })
                .collect();
            let previous: Vec<Previous<'_>> = rows
                .iter()
                .zip(parsed.iter().zip(&texts))
                .map(|(row, (schema, text))| Previous {
                    version: row.version,
                    schema,
                    text,
                })
                .collect();
            compat::check(level, &new.schema, &previous).map_err(ApiError::invalid_schema)
        })
        .await?
}

/// Whether writes to a subject are refused: its own mode, else the registry's.
async fn read_only(
    c: &impl deadpool_postgres::GenericClient,
    subject: &str,
) -> Result<bool, ApiError> {
    let mode = match store::mode(c, subject).await? {
        Some(mode) => Some(mode),
        None => store::mode(c, GLOBAL).await?,
    };
    Ok(mode.as_deref() == Some(READONLY))
}

async fn root() -> Response {
    ok(json!({}))
}

async fn contexts() -> Response {
    ok(json!(["."]))
}

async fn schema_types() -> Response {
    ok(json!([AVRO]))
}

async fn no_route() -> ApiError {
    ApiError::no_route()
}

async fn method_not_allowed() -> ApiError {
    ApiError::method_not_allowed()
}

/// `subjectPrefix`, where Confluent's `:*:` means every subject.
fn prefix(params: &Params) -> &str {
    match params.text("subjectPrefix") {
        Some(":*:") | None => "",
        Some(prefix) => prefix,
    }
}

async fn list_subjects(State(db): Db, params: Params) -> Reply {
    let client = db.client().await?;
    let subjects = store::subjects(
        &client,
        params.flag("deleted"),
        params.flag("deletedOnly"),
        prefix(&params),
    )
    .await?;
    Ok(ok(json!(subjects)))
}

async fn list_versions(State(db): Db, Path(subject): Path<String>, params: Params) -> Reply {
    let (deleted, deleted_only) = (params.flag("deleted"), params.flag("deletedOnly"));
    let client = db.client().await?;
    let rows = store::versions(&client, &subject).await?;
    if !rows.iter().any(|r| deleted || deleted_only || !r.deleted) {
        return Err(ApiError::subject_not_found(&subject));
    }
    let versions: Vec<i32> = rows
        .iter()
        .filter(|r| {
            if deleted_only {
                r.deleted
            } else {
                deleted || !r.deleted
            }
        })
        .map(|r| r.version)
        .collect();
    Ok(ok(json!(versions)))
}

async fn register(
    State(db): Db,
    Path(subject): Path<String>,
    JsonBody(request): JsonBody<SchemaRequest>,
) -> Reply {
    check_subject(&subject)?;
    let text = request.text()?;
    let parsed = request.parse(&db).await?;
    if request.id.is_some_and(|id| id >= 0) {
        return Err(ApiError::not_permitted(format!(
            "Subject {subject} is not in import mode: this registry assigns schema ids itself"
        )));
    }
    let mut client = db.client().await?;
    let tx = client.transaction().await?;
    store::lock(&tx).await?;
    if read_only(&tx, &subject).await? {
        return Err(ApiError::read_only(&subject));
    }
    let rows = store::versions(&tx, &subject).await?;
    let known_id = store::id_by_fingerprint(&tx, &parsed.fingerprint).await?;
    let live: Vec<&VersionRow> = rows.iter().filter(|r| !r.deleted).collect();
    if let Some(existing) = live.iter().rev().find(|r| Some(r.id) == known_id) {
        tracing::debug!(
            subject,
            version = existing.version,
            id = existing.id,
            "Schema already registered under the subject"
        );
        return Ok(ok(json!({"id": existing.id})));
    }
    let next_version = rows.last().map_or(1, |r| r.version + 1);
    if let Some(version) = request.version
        && version > 0
        && version != i64::from(next_version)
    {
        return Err(ApiError::not_permitted(format!(
            "Subject {subject} is not in import mode: the next version is {next_version}, not {version}"
        )));
    }
    let messages = compatibility_messages(&tx, &db, &subject, &parsed, &live).await?;
    if !messages.is_empty() {
        return Err(ApiError::incompatible(&subject, &messages));
    }
    let id = match known_id {
        Some(id) => id,
        None => {
            store::insert_schema(&tx, AVRO, text, &parsed.canonical, &parsed.fingerprint).await?
        }
    };
    store::insert_version(&tx, &subject, next_version, id).await?;
    tx.commit().await?;
    tracing::info!(subject, version = next_version, id, "Registered a schema");
    Ok(ok(json!({"id": id})))
}

async fn lookup(
    State(db): Db,
    Path(subject): Path<String>,
    params: Params,
    JsonBody(request): JsonBody<SchemaRequest>,
) -> Reply {
    let parsed = request.parse(&db).await?;
    let include_deleted = params.flag("deleted");
    let client = db.client().await?;
    let rows = store::versions(&client, &subject).await?;
    let known_id = store::id_by_fingerprint(&client, &parsed.fingerprint).await?;
    let mut visible = rows.iter().filter(|r| include_deleted || !r.deleted);
    if let Some(row) = visible.clone().rev().find(|r| Some(r.id) == known_id) {
        return Ok(ok(version_json(&subject, row)));
    }
    if visible.next().is_none() {
        return Err(ApiError::subject_not_found(&subject));
    }
    Err(ApiError::schema_not_found())
}

async fn get_version(
    State(db): Db,
    Path((subject, version)): Path<(String, String)>,
    params: Params,
) -> Reply {
    let spec = VersionSpec::parse(&version)?;
    let client = db.client().await?;
    let rows = store::versions(&client, &subject).await?;
    let row = find_version(&subject, &rows, spec, params.flag("deleted"))?;
    Ok(ok(version_json(&subject, row)))
}

async fn get_version_schema(
    State(db): Db,
    Path((subject, version)): Path<(String, String)>,
    params: Params,
) -> Reply {
    let spec = VersionSpec::parse(&version)?;
    let client = db.client().await?;
    let rows = store::versions(&client, &subject).await?;
    let row = find_version(&subject, &rows, spec, params.flag("deleted"))?;
    Ok(ok_text(row.schema.clone()))
}

/// Schema references are not supported, so nothing ever references a version.
async fn referenced_by(State(db): Db, Path((subject, version)): Path<(String, String)>) -> Reply {
    let spec = VersionSpec::parse(&version)?;
    let client = db.client().await?;
    let rows = store::versions(&client, &subject).await?;
    find_version(&subject, &rows, spec, true)?;
    Ok(ok(json!([])))
}

async fn delete_version(
    State(db): Db,
    Path((subject, version)): Path<(String, String)>,
    params: Params,
) -> Reply {
    let spec = VersionSpec::parse(&version)?;
    let permanent = params.flag("permanent");
    let mut client = db.client().await?;
    let tx = client.transaction().await?;
    store::lock(&tx).await?;
    if read_only(&tx, &subject).await? {
        return Err(ApiError::read_only(&subject));
    }
    let rows = store::versions(&tx, &subject).await?;
    // A soft delete of "latest" means the latest live version; a permanent one can only be
    // of a soft-deleted version, so there it means the latest of all.
    let row = find_version(
        &subject,
        &rows,
        spec,
        permanent || matches!(spec, VersionSpec::Number(_)),
    )?;
    if !permanent && row.deleted {
        return Err(ApiError::version_soft_deleted(&subject, row.version));
    }
    if permanent && !row.deleted {
        return Err(ApiError::version_not_soft_deleted(&subject, row.version));
    }
    if permanent {
        store::hard_delete(&tx, &subject, &[row.version]).await?;
    } else {
        store::soft_delete(&tx, &subject, &[row.version]).await?;
    }
    tx.commit().await?;
    tracing::info!(
        subject,
        version = row.version,
        id = row.id,
        permanent,
        "Deleted a subject version"
    );
    Ok(ok(json!(row.version)))
}

async fn delete_subject(State(db): Db, Path(subject): Path<String>, params: Params) -> Reply {
    let permanent = params.flag("permanent");
    let mut client = db.client().await?;
    let tx = client.transaction().await?;
    store::lock(&tx).await?;
    if read_only(&tx, &subject).await? {
        return Err(ApiError::read_only(&subject));
    }
    let rows = store::versions(&tx, &subject).await?;
    if rows.is_empty() {
        return Err(ApiError::subject_not_found(&subject));
    }
    let versions: Vec<i32> = if permanent {
        if rows.iter().any(|r| !r.deleted) {
            return Err(ApiError::subject_not_soft_deleted(&subject));
        }
        let all: Vec<i32> = rows.iter().map(|r| r.version).collect();
        store::hard_delete(&tx, &subject, &all).await?;
        // Nothing is left of the subject: its settings go too.
        store::delete_config(&tx, &subject).await?;
        store::delete_mode(&tx, &subject).await?;
        all
    } else {
        let live: Vec<i32> = rows
            .iter()
            .filter(|r| !r.deleted)
            .map(|r| r.version)
            .collect();
        if live.is_empty() {
            return Err(ApiError::subject_soft_deleted(&subject));
        }
        store::soft_delete(&tx, &subject, &live).await?;
        live
    };
    tx.commit().await?;
    tracing::info!(subject, ?versions, permanent, "Deleted a subject");
    Ok(ok(json!(versions)))
}

async fn list_schemas(State(db): Db, params: Params) -> Reply {
    let client = db.client().await?;
    let mut rows = store::all_versions(&client, params.flag("deleted"), prefix(&params)).await?;
    if params.flag("latestOnly") {
        // Rows come in subject then version order: keep each subject's last.
        let mut latest: Vec<(String, VersionRow)> = Vec::new();
        for (subject, row) in rows {
            match latest.last_mut() {
                Some((last, slot)) if *last == subject => *slot = row,
                _ => latest.push((subject, row)),
            }
        }
        rows = latest;
    }
    let body: Vec<Value> = rows
        .iter()
        .map(|(subject, row)| version_json(subject, row))
        .collect();
    Ok(ok(Value::Array(body)))
}

/// An id in a path. An integer that no id can be (negative, or past the 32-bit range ids
/// take) is a 40403 like any unknown id; anything but an integer is no route at all, as in
/// Jersey.
fn parse_id(text: &str) -> Result<i32, ApiError> {
    let text = text.trim();
    let digits = text.strip_prefix('-').unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ApiError::no_route());
    }
    match text.parse::<i32>() {
        Ok(id) if id >= 0 => Ok(id),
        _ => Err(ApiError::schema_id_not_found(crate::text::truncate(
            text, 32,
        ))),
    }
}

async fn schema_by_id(State(db): Db, Path(id): Path<String>) -> Reply {
    let id = parse_id(&id)?;
    let client = db.client().await?;
    let (schema_type, schema) = store::schema_by_id(&client, id)
        .await?
        .ok_or_else(|| ApiError::schema_id_not_found(id))?;
    let mut body = Map::new();
    if schema_type != AVRO {
        body.insert("schemaType".into(), schema_type.into());
    }
    body.insert("schema".into(), schema.into());
    Ok(ok(Value::Object(body)))
}

async fn raw_schema_by_id(State(db): Db, Path(id): Path<String>) -> Reply {
    let id = parse_id(&id)?;
    let client = db.client().await?;
    let (_, schema) = store::schema_by_id(&client, id)
        .await?
        .ok_or_else(|| ApiError::schema_id_not_found(id))?;
    Ok(ok_text(schema))
}

/// The subject versions that use an id (live ones unless `deleted=true`); 40403 when none
/// ever did or all were deleted for good.
async fn id_usages(db: &Server, id: &str, params: &Params) -> Result<Vec<store::Usage>, ApiError> {
    let id = parse_id(id)?;
    let client = db.client().await?;
    let usages = store::usages(&client, id).await?;
    if usages.is_empty() {
        return Err(ApiError::schema_id_not_found(id));
    }
    let include_deleted = params.flag("deleted");
    Ok(usages
        .into_iter()
        .filter(|u| include_deleted || !u.deleted)
        .collect())
}

async fn id_subjects(State(db): Db, Path(id): Path<String>, params: Params) -> Reply {
    let mut subjects: Vec<String> = id_usages(&db, &id, &params)
        .await?
        .into_iter()
        .map(|u| u.subject)
        .collect();
    subjects.dedup();
    Ok(ok(json!(subjects)))
}

async fn id_versions(State(db): Db, Path(id): Path<String>, params: Params) -> Reply {
    let versions: Vec<Value> = id_usages(&db, &id, &params)
        .await?
        .into_iter()
        .map(|u| json!({"subject": u.subject, "version": u.version}))
        .collect();
    Ok(ok(Value::Array(versions)))
}

/// What a compatibility check compares a schema with.
#[derive(Clone, Copy)]
enum Against {
    /// One live version (`latest`: none when nothing is registered, so anything passes).
    Version(VersionSpec),
    /// The live versions, as a registration would.
    All,
}

/// `{"is_compatible": …}`, with the messages when `verbose`. An invalid schema is a 42201,
/// or with `verbose` an incompatible answer that says why, as in Confluent.
async fn compatibility_answer(
    db: &Server,
    subject: &str,
    request: &SchemaRequest,
    against: Against,
    verbose: bool,
) -> Reply {
    let client = db.client().await?;
    let rows = store::versions(&client, subject).await?;
    let mut live = rows.iter().filter(|r| !r.deleted);
    let previous: Vec<&VersionRow> = match against {
        Against::All => live.collect(),
        Against::Version(VersionSpec::Latest) => live.next_back().into_iter().collect(),
        Against::Version(VersionSpec::Number(n)) => vec![
            live.find(|r| r.version == n)
                .ok_or_else(|| ApiError::version_not_found(n))?,
        ],
    };
    let messages = match request.parse(db).await {
        Ok(parsed) => compatibility_messages(&client, db, subject, &parsed, &previous).await?,
        Err(e) if verbose && e.code() == 42201 => vec![e.message().to_string()],
        Err(e) => return Err(e),
    };
    let mut body = json!({"is_compatible": messages.is_empty()});
    if verbose {
        body["messages"] = json!(messages);
    }
    Ok(ok(body))
}

async fn check_against_version(
    State(db): Db,
    Path((subject, version)): Path<(String, String)>,
    params: Params,
    JsonBody(request): JsonBody<SchemaRequest>,
) -> Reply {
    let against = Against::Version(VersionSpec::parse(&version)?);
    compatibility_answer(&db, &subject, &request, against, params.flag("verbose")).await
}

async fn check_against_all(
    State(db): Db,
    Path(subject): Path<String>,
    params: Params,
    JsonBody(request): JsonBody<SchemaRequest>,
) -> Reply {
    compatibility_answer(
        &db,
        &subject,
        &request,
        Against::All,
        params.flag("verbose"),
    )
    .await
}

/// The body of `PUT /config`. Confluent's other settings are accepted and ignored.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ConfigRequest {
    compatibility: Option<String>,
    compatibility_level: Option<String>,
    #[serde(rename = "normalize")]
    _normalize: Option<IgnoredAny>,
    #[serde(rename = "alias")]
    _alias: Option<IgnoredAny>,
    #[serde(rename = "validateFields")]
    _validate_fields: Option<IgnoredAny>,
    #[serde(rename = "validateRules")]
    _validate_rules: Option<IgnoredAny>,
    #[serde(rename = "compatibilityGroup")]
    _compatibility_group: Option<IgnoredAny>,
    #[serde(rename = "defaultMetadata")]
    _default_metadata: Option<IgnoredAny>,
    #[serde(rename = "overrideMetadata")]
    _override_metadata: Option<IgnoredAny>,
    #[serde(rename = "defaultRuleSet")]
    _default_rule_set: Option<IgnoredAny>,
    #[serde(rename = "overrideRuleSet")]
    _override_rule_set: Option<IgnoredAny>,
}

impl ConfigRequest {
    fn level(&self) -> Result<Level, ApiError> {
        self.compatibility
            .as_deref()
            .or(self.compatibility_level.as_deref())
            .and_then(Level::parse)
            .ok_or_else(ApiError::invalid_compatibility_level)
    }
}

fn config_json(level: Level) -> Response {
    ok(json!({"compatibilityLevel": level.as_str()}))
}

async fn get_global_config(State(db): Db) -> Reply {
    let client = db.client().await?;
    let level = store::config(&client, GLOBAL).await?;
    Ok(config_json(level.unwrap_or(Level::DEFAULT)))
}

async fn put_global_config(State(db): Db, JsonBody(request): JsonBody<ConfigRequest>) -> Reply {
    let level = request.level()?;
    let client = db.client().await?;
    store::set_config(&client, GLOBAL, level).await?;
    tracing::info!(
        compatibility = level.as_str(),
        "Set the registry's compatibility level"
    );
    Ok(ok(json!({"compatibility": level.as_str()})))
}

async fn delete_global_config(State(db): Db) -> Reply {
    let client = db.client().await?;
    let old = store::delete_config(&client, GLOBAL).await?;
    Ok(config_json(old.unwrap_or(Level::DEFAULT)))
}

async fn get_config(State(db): Db, Path(subject): Path<String>, params: Params) -> Reply {
    check_subject(&subject)?;
    let client = db.client().await?;
    if let Some(level) = store::config(&client, &subject).await? {
        return Ok(config_json(level));
    }
    if params.flag("defaultToGlobal") {
        let level = store::config(&client, GLOBAL).await?;
        return Ok(config_json(level.unwrap_or(Level::DEFAULT)));
    }
    Err(ApiError::subject_compatibility_not_configured(&subject))
}

async fn put_config(
    State(db): Db,
    Path(subject): Path<String>,
    JsonBody(request): JsonBody<ConfigRequest>,
) -> Reply {
    check_subject(&subject)?;
    let level = request.level()?;
    let client = db.client().await?;
    store::set_config(&client, &subject, level).await?;
    tracing::info!(
        subject,
        compatibility = level.as_str(),
        "Set a subject's compatibility level"
    );
    Ok(ok(json!({"compatibility": level.as_str()})))
}

async fn delete_config(State(db): Db, Path(subject): Path<String>) -> Reply {
    check_subject(&subject)?;
    let client = db.client().await?;
    if let Some(old) = store::delete_config(&client, &subject).await? {
        return Ok(config_json(old));
    }
    if store::versions(&client, &subject).await?.is_empty() {
        return Err(ApiError::subject_not_found(&subject));
    }
    Err(ApiError::subject_compatibility_not_configured(&subject))
}

/// The body of `PUT /mode`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ModeRequest {
    mode: Option<String>,
}

impl ModeRequest {
    fn mode(&self) -> Result<&'static str, ApiError> {
        let mode = self.mode.as_deref().unwrap_or("").trim();
        if mode.eq_ignore_ascii_case(READWRITE) {
            Ok(READWRITE)
        } else if mode.eq_ignore_ascii_case(READONLY) {
            Ok(READONLY)
        } else if mode.eq_ignore_ascii_case("IMPORT") {
            Err(ApiError::not_permitted(
                "IMPORT mode is not supported: this registry assigns schema ids itself",
            ))
        } else {
            Err(ApiError::invalid_mode())
        }
    }
}

async fn get_global_mode(State(db): Db) -> Reply {
    let client = db.client().await?;
    let mode = store::mode(&client, GLOBAL).await?;
    Ok(ok(json!({"mode": mode.as_deref().unwrap_or(READWRITE)})))
}

async fn put_global_mode(State(db): Db, JsonBody(request): JsonBody<ModeRequest>) -> Reply {
    let mode = request.mode()?;
    let client = db.client().await?;
    store::set_mode(&client, GLOBAL, mode).await?;
    tracing::info!(mode, "Set the registry's mode");
    Ok(ok(json!({"mode": mode})))
}

async fn get_mode(State(db): Db, Path(subject): Path<String>, params: Params) -> Reply {
    check_subject(&subject)?;
    let client = db.client().await?;
    if let Some(mode) = store::mode(&client, &subject).await? {
        return Ok(ok(json!({"mode": mode})));
    }
    if params.flag("defaultToGlobal") {
        let mode = store::mode(&client, GLOBAL).await?;
        return Ok(ok(json!({"mode": mode.as_deref().unwrap_or(READWRITE)})));
    }
    Err(ApiError::subject_mode_not_configured(&subject))
}

async fn put_mode(
    State(db): Db,
    Path(subject): Path<String>,
    JsonBody(request): JsonBody<ModeRequest>,
) -> Reply {
    check_subject(&subject)?;
    let mode = request.mode()?;
    let client = db.client().await?;
    store::set_mode(&client, &subject, mode).await?;
    tracing::info!(subject, mode, "Set a subject's mode");
    Ok(ok(json!({"mode": mode})))
}

async fn delete_mode(State(db): Db, Path(subject): Path<String>) -> Reply {
    check_subject(&subject)?;
    let client = db.client().await?;
    if let Some(old) = store::delete_mode(&client, &subject).await? {
        return Ok(ok(json!({"mode": old})));
    }
    if store::versions(&client, &subject).await?.is_empty() {
        return Err(ApiError::subject_not_found(&subject));
    }
    Err(ApiError::subject_mode_not_configured(&subject))
}
