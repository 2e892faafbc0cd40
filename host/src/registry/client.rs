//! A client for any Confluent-compatible schema registry, caching schemas by id.
//!
//! Registration and subject lookups go through `schema_registry_converter`. Fetching by id,
//! the hot path of decoding, uses a thin client beside it: the decoder must tell "this id
//! does not exist" (the message is bad: dead-letter it) from "the registry cannot answer
//! now" (wait and retry), and `schema_registry_converter` reports a registry's 500 and 404
//! alike as non-retryable.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use apache_avro::Schema;
use schema_registry_converter::async_impl::schema_registry::{
    SrSettings, get_schema_by_subject, post_schema,
};
use schema_registry_converter::schema_registry_common::{
    SchemaType, SubjectNameStrategy, SuppliedSchema,
};

use super::SchemaId;

/// A registry request failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// The registry answered that no schema has this id.
    #[error(
        "schema id {id} not found in registry {url}: was it deleted, or written by another registry?"
    )]
    UnknownId {
        /// The id asked for.
        id: SchemaId,
        /// The registry.
        url: String,
    },
    /// The registry could not be reached or failed; worth retrying.
    #[error("schema registry {url} unavailable: {detail}")]
    Unavailable {
        /// The registry.
        url: String,
        /// What happened.
        detail: String,
    },
    /// The registry refused the request (an invalid or incompatible schema, a missing
    /// subject…); retrying will not help.
    #[error("schema registry {url} refused {what}: {detail}")]
    Refused {
        /// The registry.
        url: String,
        /// The request.
        what: String,
        /// The registry's message.
        detail: String,
    },
    /// The registry returned a schema weir cannot use.
    #[error("schema id {id} from registry {url} is not a usable Avro schema: {detail}")]
    BadSchema {
        /// The id.
        id: SchemaId,
        /// The registry.
        url: String,
        /// What is wrong.
        detail: String,
    },
}

impl RegistryError {
    /// Whether a retry may succeed (the registry is down or overloaded).
    pub fn is_retryable(&self) -> bool {
        matches!(self, RegistryError::Unavailable { .. })
    }
}

/// A registered schema: its id and the parsed Avro schema.
#[derive(Debug)]
pub struct RegisteredSchema {
    /// Global id.
    pub id: SchemaId,
    /// The schema as registered.
    pub text: String,
    /// Parsed.
    pub schema: Schema,
}

/// Where schemas come from, by id. The trait lets tests and tools stand in for a registry.
pub trait SchemaSource: Send + Sync {
    /// The schema with this id.
    fn schema_by_id(
        &self,
        id: SchemaId,
    ) -> impl Future<Output = Result<Arc<RegisteredSchema>, RegistryError>> + Send;
}

/// An HTTP client of a Confluent-compatible registry, with a cache of schemas by id (ids
/// are immutable, so entries never expire).
pub struct RegistryClient {
    url: String,
    http: reqwest::Client,
    settings: SrSettings,
    by_id: RwLock<HashMap<SchemaId, Arc<RegisteredSchema>>>,
}

impl std::fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryClient")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

#[derive(serde::Deserialize)]
struct SchemaById {
    schema: String,
    #[serde(rename = "schemaType", default)]
    schema_type: Option<String>,
}

#[derive(serde::Deserialize)]
struct ErrorBody {
    error_code: i64,
    message: String,
}

impl RegistryClient {
    /// A client of the registry at `url` (`http://host:8081`).
    pub fn new(url: &str) -> Result<Self, RegistryError> {
        let url = url.trim_end_matches('/').to_string();
        let timeout = Duration::from_secs(10);
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| RegistryError::Unavailable {
                url: url.clone(),
                detail: format!("cannot build an HTTP client: {e}"),
            })?;
        let settings = SrSettings::new_builder(url.clone())
            .set_timeout(timeout)
            .build()
            .map_err(|e| RegistryError::Unavailable {
                url: url.clone(),
                detail: e.to_string(),
            })?;
        Ok(Self {
            url,
            http,
            settings,
            by_id: RwLock::new(HashMap::new()),
        })
    }

    /// The registry's base URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Registers `schema` under `subject` (or finds it there) and returns its id.
    pub async fn register(&self, subject: &str, schema: &str) -> Result<SchemaId, RegistryError> {
        let supplied = SuppliedSchema::new(None, SchemaType::Avro, schema.to_string());
        let registered = post_schema(&self.settings, subject.to_string(), supplied)
            .await
            .map_err(|e| self.src_error(format!("registering subject {subject}"), e))?;
        Ok(SchemaId(registered.id))
    }

    /// The latest schema registered under `subject`.
    pub async fn latest(&self, subject: &str) -> Result<Arc<RegisteredSchema>, RegistryError> {
        let strategy = SubjectNameStrategy::TopicNameStrategy(
            subject
                .strip_suffix("-value")
                .unwrap_or(subject)
                .to_string(),
            subject.ends_with("-key"),
        );
        let registered = get_schema_by_subject(&self.settings, &strategy)
            .await
            .map_err(|e| self.src_error(format!("the latest schema of subject {subject}"), e))?;
        let id = SchemaId(registered.id);
        let parsed = self.parse(id, registered.schema)?;
        self.by_id
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, parsed.clone());
        Ok(parsed)
    }

    fn src_error(
        &self,
        what: String,
        e: schema_registry_converter::error::SRCError,
    ) -> RegistryError {
        let detail = match &e.cause {
            Some(cause) => format!("{}: {cause}", e.error),
            None => e.error.clone(),
        };
        // Connection failures and 5xx answers are the registry's trouble, not the request's.
        if e.retriable || detail.contains("status 5") || detail.contains("error sending request") {
            RegistryError::Unavailable {
                url: self.url.clone(),
                detail,
            }
        } else {
            RegistryError::Refused {
                url: self.url.clone(),
                what,
                detail,
            }
        }
    }

    fn parse(&self, id: SchemaId, text: String) -> Result<Arc<RegisteredSchema>, RegistryError> {
        let schema = Schema::parse_str(&text).map_err(|e| RegistryError::BadSchema {
            id,
            url: self.url.clone(),
            detail: e.to_string(),
        })?;
        Ok(Arc::new(RegisteredSchema { id, text, schema }))
    }

    async fn fetch(&self, id: SchemaId) -> Result<Arc<RegisteredSchema>, RegistryError> {
        let unavailable = |detail: String| RegistryError::Unavailable {
            url: self.url.clone(),
            detail,
        };
        let response = self
            .http
            .get(format!("{}/schemas/ids/{id}", self.url))
            .header("Accept", "application/vnd.schemaregistry.v1+json")
            .send()
            .await
            .map_err(|e| unavailable(format!("GET /schemas/ids/{id}: {e}")))?;
        let status = response.status();
        if status.is_success() {
            let body: SchemaById = response.json().await.map_err(|e| {
                unavailable(format!("GET /schemas/ids/{id}: unreadable answer: {e}"))
            })?;
            if let Some(t) = body.schema_type.filter(|t| t != "AVRO") {
                return Err(RegistryError::BadSchema {
                    id,
                    url: self.url.clone(),
                    detail: format!("it is a {t} schema; weir decodes Avro"),
                });
            }
            return self.parse(id, body.schema);
        }
        let body = response.json::<ErrorBody>().await.ok();
        match (status.as_u16(), body) {
            (404, Some(b)) if b.error_code == 40403 => Err(RegistryError::UnknownId {
                id,
                url: self.url.clone(),
            }),
            (_, Some(b)) => Err(unavailable(format!(
                "GET /schemas/ids/{id}: {status}: {} (error code {})",
                b.message, b.error_code
            ))),
            (_, None) => Err(unavailable(format!("GET /schemas/ids/{id}: {status}"))),
        }
    }
}

impl SchemaSource for RegistryClient {
    async fn schema_by_id(&self, id: SchemaId) -> Result<Arc<RegisteredSchema>, RegistryError> {
        if let Some(s) = self
            .by_id
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
        {
            return Ok(s.clone());
        }
        let fetched = self.fetch(id).await?;
        self.by_id
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, fetched.clone());
        Ok(fetched)
    }
}
