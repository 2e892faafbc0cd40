//! The registry's errors, as Confluent reports them: an HTTP status and a body
//! `{"error_code": N, "message": "..."}` with Confluent's codes and wording.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::{CONTENT_TYPE, compat::Level};

/// A failed request.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    code: u32,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: u32, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    /// Confluent's error code.
    pub(crate) fn code(&self) -> u32 {
        self.code
    }

    /// The message.
    pub(crate) fn message(&self) -> &str {
        &self.message
    }

    /// An error whose code is its HTTP status, as Jersey reports them.
    pub(crate) fn http(status: StatusCode, message: impl Into<String>) -> Self {
        Self::new(status, u32::from(status.as_u16()), message)
    }

    /// 40401.
    pub(crate) fn subject_not_found(subject: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            40401,
            format!("Subject '{subject}' not found."),
        )
    }

    /// 40402.
    pub(crate) fn version_not_found(version: i32) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            40402,
            format!("Version {version} not found."),
        )
    }

    /// 40403, for a lookup by content.
    pub(crate) fn schema_not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, 40403, "Schema not found")
    }

    /// 40403, for a lookup by id (any integer, those no id can be included).
    pub(crate) fn schema_id_not_found(id: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            40403,
            format!("Schema {id} not found"),
        )
    }

    /// 40404.
    pub(crate) fn subject_soft_deleted(subject: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            40404,
            format!(
                "Subject '{subject}' was soft deleted.Set permanent=true to delete permanently"
            ),
        )
    }

    /// 40405.
    pub(crate) fn subject_not_soft_deleted(subject: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            40405,
            format!("Subject '{subject}' was not deleted first before being permanently deleted"),
        )
    }

    /// 40406.
    pub(crate) fn version_soft_deleted(subject: &str, version: i32) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            40406,
            format!(
                "Subject '{subject}' Version {version} was soft deleted.Set permanent=true to delete permanently"
            ),
        )
    }

    /// 40407.
    pub(crate) fn version_not_soft_deleted(subject: &str, version: i32) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            40407,
            format!(
                "Subject '{subject}' Version {version} was not deleted first before being permanently deleted"
            ),
        )
    }

    /// 40408.
    pub(crate) fn subject_compatibility_not_configured(subject: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            40408,
            format!("Subject '{subject}' does not have subject-level compatibility configured"),
        )
    }

    /// 40409.
    pub(crate) fn subject_mode_not_configured(subject: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            40409,
            format!("Subject '{subject}' does not have subject-level mode configured"),
        )
    }

    /// 409, with the compatibility messages.
    pub(crate) fn incompatible(subject: &str, messages: &[String]) -> Self {
        Self::new(
            StatusCode::CONFLICT,
            409,
            format!(
                "Schema being registered is incompatible with an earlier schema for subject \"{subject}\", details: [{}]",
                messages.join(", ")
            ),
        )
    }

    /// 42201.
    pub(crate) fn invalid_schema(detail: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            42201,
            format!("Invalid schema: {detail}"),
        )
    }

    /// 42201, for a schema type other than Avro.
    pub(crate) fn invalid_schema_type(schema_type: &str) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            42201,
            format!("Invalid schema type {schema_type}: this registry supports only AVRO"),
        )
    }

    /// 42202.
    pub(crate) fn invalid_version(version: &str) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            42202,
            format!(
                "The specified version '{version}' is not a valid version id. Allowed values are between [1, 2^31-1] and the string \"latest\""
            ),
        )
    }

    /// 42203.
    pub(crate) fn invalid_compatibility_level() -> Self {
        let names: Vec<String> = Level::ALL
            .iter()
            .map(|l| l.as_str().to_lowercase())
            .collect();
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            42203,
            format!(
                "Invalid compatibility level. Valid values are {}, and {}",
                names[..names.len() - 1].join(", "),
                names[names.len() - 1]
            ),
        )
    }

    /// 42204.
    pub(crate) fn invalid_mode() -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            42204,
            "Invalid mode. Valid values are READWRITE and READONLY (this registry does not support IMPORT).",
        )
    }

    /// 40301: the user may not do this.
    pub(crate) fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, 40301, message)
    }

    /// 42205.
    pub(crate) fn not_permitted(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, 42205, message)
    }

    /// 42205, for a subject in read-only mode.
    pub(crate) fn read_only(subject: &str) -> Self {
        Self::not_permitted(format!("Subject {subject} is in read-only mode"))
    }

    /// 42208.
    pub(crate) fn invalid_subject(subject: &str) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            42208,
            format!("The specified subject '{subject}' is not valid."),
        )
    }

    /// 422 with code 422: a body that is not the JSON the endpoint takes.
    pub(crate) fn unprocessable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, 422, message)
    }

    /// 50001: Postgres failed or is unreachable.
    pub(crate) fn store(detail: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            50001,
            format!("Error in the backend data store: {detail}"),
        )
    }

    /// 50002: Postgres did not answer in time.
    pub(crate) fn timeout(detail: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            50002,
            format!("Operation timed out: {detail}"),
        )
    }

    /// 404 with code 404: no such route (Jersey's words).
    pub(crate) fn no_route() -> Self {
        Self::new(StatusCode::NOT_FOUND, 404, "HTTP 404 Not Found")
    }

    /// 405 with code 405.
    pub(crate) fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            405,
            "HTTP 405 Method Not Allowed",
        )
    }

    /// 415 with code 415.
    pub(crate) fn unsupported_media_type(content_type: &str) -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            415,
            format!(
                "HTTP 415 Unsupported Media Type: {content_type} (send application/vnd.schemaregistry.v1+json or application/json)"
            ),
        )
    }
}

impl From<tokio_postgres::Error> for ApiError {
    fn from(e: tokio_postgres::Error) -> Self {
        let mut detail = e.to_string();
        if let Some(source) = std::error::Error::source(&e) {
            let source = source.to_string();
            if !detail.contains(&source) {
                detail = format!("{detail}: {source}");
            }
        }
        ApiError::store(detail)
    }
}

impl From<deadpool_postgres::PoolError> for ApiError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        match e {
            deadpool_postgres::PoolError::Backend(e) => e.into(),
            deadpool_postgres::PoolError::Timeout(kind) => {
                ApiError::timeout(format!("no Postgres connection ({kind:?} timed out)"))
            }
            other => ApiError::store(other),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(
                status = self.status.as_u16(),
                error_code = self.code,
                detail = %self.message,
                "Registry request failed in the backend"
            );
        } else {
            tracing::warn!(
                status = self.status.as_u16(),
                error_code = self.code,
                detail = %self.message,
                "Registry request refused"
            );
        }
        let body = serde_json::json!({"error_code": self.code, "message": self.message});
        (self.status, [CONTENT_TYPE], body.to_string()).into_response()
    }
}
