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
    /// The registry gave a definite answer about the id that is not what was asked for: a
    /// 4xx other than 404, 408 and 429, or an answer that is not what the API returns.
    /// Retrying will not change it.
    #[error("schema registry {url} answered {request} with {status}: {detail}")]
    Rejected {
        /// The registry.
        url: String,
        /// The request (`GET /schemas/ids/7`).
        request: String,
        /// The HTTP status.
        status: u16,
        /// The registry's message, if any.
        detail: String,
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

    /// The subjects with a version (soft-deleted ones included) that uses this id.
    fn subjects_of(
        &self,
        id: SchemaId,
    ) -> impl Future<Output = Result<Vec<String>, RegistryError>> + Send;
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

#[derive(serde::Deserialize)]
struct SubjectVersion {
    subject: String,
}

/// Longest registry message kept in an error: a registry's answer is not ours to trust.
const MAX_DETAIL: usize = 512;

/// How to reach a registry that asks for more than plain HTTP: the CA certificates its
/// `https://` certificate is checked against (besides the system's), and Confluent's
/// credentials — `basic.auth.user.info` (`user:password`; an API key and secret on
/// Confluent Cloud) or a bearer token. Credentials in the URL (`https://user:pw@host`)
/// are used as basic auth when none are given.
#[derive(Clone, Default)]
pub struct RegistryAuth {
    /// A PEM file of CA certificates.
    pub ca: Option<std::path::PathBuf>,
    /// `user:password`.
    pub basic_user_info: Option<String>,
    /// A bearer token.
    pub bearer_token: Option<String>,
}

impl std::fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let user = self
            .basic_user_info
            .as_deref()
            .map(|info| info.split(':').next().unwrap_or(""));
        f.debug_struct("RegistryAuth")
            .field("ca", &self.ca)
            .field("basic_user", &user)
            .field(
                "bearer_token",
                &self.bearer_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// `url` without credentials, and the credentials (`user:password`, percent-decoded).
fn split_user_info(url: &str) -> (String, Option<String>) {
    let Some((scheme, rest)) = url.split_once("://") else {
        return (url.to_string(), None);
    };
    let host_end = rest.find('/').unwrap_or(rest.len());
    match rest[..host_end].rsplit_once('@') {
        Some((info, host)) => {
            let info = percent_encoding::percent_decode_str(info)
                .decode_utf8_lossy()
                .into_owned();
            (
                format!("{scheme}://{host}{}", &rest[host_end..]),
                Some(info),
            )
        }
        None => (url.to_string(), None),
    }
}

impl RegistryClient {
    /// A client of the registry at `url` (`http://host:8081`).
    pub fn new(url: &str) -> Result<Self, RegistryError> {
        Self::with_auth(url, &RegistryAuth::default())
    }

    /// A client of the registry at `url`, with TLS and credentials as `auth` says.
    pub fn with_auth(url: &str, auth: &RegistryAuth) -> Result<Self, RegistryError> {
        let (url, from_url) = split_user_info(url.trim_end_matches('/'));
        let setup = |detail: String| RegistryError::Unavailable {
            url: url.clone(),
            detail,
        };
        let timeout = Duration::from_secs(10);
        let mut roots = Vec::new();
        if let Some(path) = &auth.ca {
            let pem = std::fs::read(path)
                .map_err(|e| setup(format!("the registry's CA file {}: {e}", path.display())))?;
            roots = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| setup(format!("the registry's CA file {}: {e}", path.display())))?;
            if roots.is_empty() {
                return Err(setup(format!(
                    "the registry's CA file {} holds no certificate",
                    path.display()
                )));
            }
        }
        let mut headers = reqwest::header::HeaderMap::new();
        let authorization = match (
            &auth.bearer_token,
            auth.basic_user_info.as_ref().or(from_url.as_ref()),
        ) {
            (Some(token), _) => Some(format!("Bearer {token}")),
            (None, Some(info)) => {
                use base64::Engine as _;
                Some(format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(info)
                ))
            }
            (None, None) => None,
        };
        if let Some(value) = authorization {
            let mut value = reqwest::header::HeaderValue::from_str(&value).map_err(|_| {
                setup("the registry's credentials are not valid in a header".into())
            })?;
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        let builder = || {
            let mut b = reqwest::Client::builder()
                .timeout(timeout)
                .default_headers(headers.clone());
            for root in &roots {
                b = b.add_root_certificate(root.clone());
            }
            b
        };
        let http = builder()
            .build()
            .map_err(|e| setup(format!("cannot build an HTTP client: {e}")))?;
        let settings = SrSettings::new_builder(url.clone())
            .set_timeout(timeout)
            .build_with(builder())
            .map_err(|e| setup(e.to_string()))?;
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

    /// `GET path` about schema id `id`, with the body of a successful answer. A definite
    /// answer (any 4xx other than 408 and 429) is final: 404 is [`RegistryError::UnknownId`],
    /// others [`RegistryError::Rejected`]. Transport failures, 5xx, 408 and 429 mean the
    /// registry cannot answer now: [`RegistryError::Unavailable`].
    async fn get_about(&self, id: SchemaId, path: &str) -> Result<bytes::Bytes, RegistryError> {
        let unavailable = |detail: String| RegistryError::Unavailable {
            url: self.url.clone(),
            detail,
        };
        let response = self
            .http
            .get(format!("{}{path}", self.url))
            .header("Accept", "application/vnd.schemaregistry.v1+json")
            .send()
            .await
            .map_err(|e| unavailable(format!("GET {path}: {e}")))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| unavailable(format!("GET {path}: {status}, unreadable answer: {e}")))?;
        if status.is_success() {
            return Ok(body);
        }
        let detail = match serde_json::from_slice::<ErrorBody>(&body) {
            Ok(b) => format!("{} (error code {})", b.message, b.error_code),
            Err(_) => String::from_utf8_lossy(&body).into_owned(),
        };
        let detail = crate::text::truncate(detail.trim(), MAX_DETAIL);
        let code = status.as_u16();
        match code {
            404 => Err(RegistryError::UnknownId {
                id,
                url: self.url.clone(),
            }),
            408 | 429 => Err(unavailable(format!("GET {path}: {status}: {detail}"))),
            400..=499 => Err(RegistryError::Rejected {
                url: self.url.clone(),
                request: format!("GET {path}"),
                status: code,
                detail,
            }),
            _ => Err(unavailable(format!("GET {path}: {status}: {detail}"))),
        }
    }

    async fn fetch(&self, id: SchemaId) -> Result<Arc<RegisteredSchema>, RegistryError> {
        let path = format!("/schemas/ids/{id}");
        let body = self.get_about(id, &path).await?;
        let body: SchemaById =
            serde_json::from_slice(&body).map_err(|e| RegistryError::BadSchema {
                id,
                url: self.url.clone(),
                detail: format!("GET {path} answered something other than a schema: {e}"),
            })?;
        if let Some(t) = body.schema_type.filter(|t| t != "AVRO") {
            return Err(RegistryError::BadSchema {
                id,
                url: self.url.clone(),
                detail: format!("it is a {t} schema; weir decodes Avro"),
            });
        }
        self.parse(id, body.schema)
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

    async fn subjects_of(&self, id: SchemaId) -> Result<Vec<String>, RegistryError> {
        let path = format!("/schemas/ids/{id}/versions?deleted=true");
        let body = self.get_about(id, &path).await?;
        let versions: Vec<SubjectVersion> =
            serde_json::from_slice(&body).map_err(|e| RegistryError::Rejected {
                url: self.url.clone(),
                request: format!("GET {path}"),
                status: 200,
                detail: format!("not a list of subject versions: {e}"),
            })?;
        let mut subjects: Vec<String> = versions.into_iter().map(|v| v.subject).collect();
        subjects.dedup();
        Ok(subjects)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;
    use axum::routing::get;

    /// A registry that answers `GET /schemas/ids/{id}` with the status the id names.
    async fn answering() -> String {
        let app = axum::Router::new()
            .route(
                "/schemas/ids/{id}",
                get(
                    |axum::extract::Path(id): axum::extract::Path<u16>| async move {
                        let body = match id {
                            404 => String::from("<html>Not Found</html>"),
                            40403 => {
                                return (
                                    StatusCode::NOT_FOUND,
                                    r#"{"error_code":40403,"message":"Schema not found"}"#
                                        .to_string(),
                                );
                            }
                            code => format!(r#"{{"error_code":{code},"message":"status {code}"}}"#),
                        };
                        (StatusCode::from_u16(id).unwrap_or(StatusCode::OK), body)
                    },
                ),
            )
            .route("/schemas/ids/{id}/versions", get(|| async { "not a list" }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        url
    }

    #[tokio::test]
    async fn definite_answers_are_final_and_outages_are_retried() {
        let client = RegistryClient::new(&answering().await).unwrap();
        let answer = |id: u32| {
            let client = &client;
            async move { client.schema_by_id(SchemaId(id)).await.unwrap_err() }
        };
        // Any 404, with Confluent's code or without (a route the registry lacks): the id
        // is unknown.
        for id in [404, 40403] {
            let e = answer(id).await;
            assert!(matches!(e, RegistryError::UnknownId { .. }), "{id}: {e}");
            assert!(!e.is_retryable());
        }
        // Other definite answers: final too, with the registry's message.
        for id in [400, 401, 403, 422] {
            let e = answer(id).await;
            assert!(
                matches!(e, RegistryError::Rejected { status, .. } if status == id as u16),
                "{id}: {e}"
            );
            assert!(!e.is_retryable());
            assert!(e.to_string().contains(&format!("status {id}")), "{e}");
        }
        // Timeouts, throttling and server errors: the registry cannot answer now.
        for id in [408, 429, 500, 503] {
            let e = answer(id).await;
            assert!(e.is_retryable(), "{id}: {e}");
        }
        // An answer that is not the API's is not a reason to wait for ever.
        let e = client.subjects_of(SchemaId(1)).await.unwrap_err();
        assert!(!e.is_retryable(), "{e}");
        assert!(
            e.to_string().contains("not a list of subject versions"),
            "{e}"
        );
    }
}
