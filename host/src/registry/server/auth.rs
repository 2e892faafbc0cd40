//! HTTP basic authentication for the registry server: users with a password and a role,
//! read (every `GET`, subject lookups and compatibility checks) or write (everything).
//! Without credentials, or with wrong ones, a request gets Confluent's 401; a read-only
//! user's write gets 403 with Confluent's code 40301.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use subtle::ConstantTimeEq as _;

use super::error::ApiError;

/// What a user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Read schemas, subjects and settings; look schemas up; check compatibility.
    Read,
    /// Everything: register, delete, change settings.
    Write,
}

/// The users the server accepts.
#[derive(Clone, Default)]
pub struct Users {
    users: HashMap<String, (String, Role)>,
}

impl std::fmt::Debug for Users {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<(&String, Role)> = self.users.iter().map(|(n, (_, r))| (n, *r)).collect();
        f.debug_struct("Users").field("users", &names).finish()
    }
}

impl Users {
    /// Reads a users file: one `user:password:role` a line (role `read` or `write`; `#`
    /// comments). The password may hold colons; the role is the last field.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("the users file {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| anyhow::anyhow!("the users file {}: {e}", path.display()))
    }

    fn parse(text: &str) -> Result<Self, String> {
        let mut users = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let at = |why: &str| format!("line {}: {why}", n + 1);
            let (name, rest) = line
                .split_once(':')
                .ok_or_else(|| at("expected user:password:role"))?;
            let (password, role) = rest
                .rsplit_once(':')
                .ok_or_else(|| at("expected user:password:role"))?;
            let role = match role.trim() {
                "read" => Role::Read,
                "write" => Role::Write,
                other => return Err(at(&format!("role {other:?} is not read or write"))),
            };
            if name.is_empty() || password.is_empty() {
                return Err(at("the user and the password must not be empty"));
            }
            if users
                .insert(name.to_string(), (password.to_string(), role))
                .is_some()
            {
                return Err(at(&format!("user {name} is listed twice")));
            }
        }
        if users.is_empty() {
            return Err("no users in it".into());
        }
        Ok(Self { users })
    }

    /// The role of the user the `Authorization` header names, if its password is right.
    fn role(&self, authorization: Option<&str>) -> Option<Role> {
        let encoded = authorization?.strip_prefix("Basic ")?;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .ok()?;
        let decoded = String::from_utf8(decoded).ok()?;
        let (name, password) = decoded.split_once(':')?;
        let (expected, role) = self.users.get(name)?;
        bool::from(expected.as_bytes().ct_eq(password.as_bytes())).then_some(*role)
    }
}

/// Whether a request only reads: `GET`/`HEAD`, and the `POST`s that look up (a schema
/// under a subject) or check compatibility without changing anything.
fn reads_only(request: &Request) -> bool {
    let path = request.uri().path();
    match *request.method() {
        Method::GET | Method::HEAD => true,
        Method::POST => {
            path.starts_with("/compatibility/")
                || (path.starts_with("/subjects/") && path[10..].find('/').is_none())
        }
        _ => false,
    }
}

/// The middleware: lets a request through if its user may make it.
pub(super) async fn authenticate(
    State(users): State<Arc<Users>>,
    request: Request,
    next: Next,
) -> Response {
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match users.role(authorization) {
        None => {
            let mut response =
                ApiError::http(StatusCode::UNAUTHORIZED, "Unauthorized").into_response();
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Basic realm=\"weir registry\""),
            );
            response
        }
        Some(Role::Read) if !reads_only(&request) => ApiError::forbidden(format!(
            "User is denied operation Write on {}",
            request.uri().path()
        ))
        .into_response(),
        Some(_) => next.run(request).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_file_is_parsed_and_refused_naming_the_line() {
        let users = Users::parse("# users\nci:p:a:ss:write\n\nviewer:v:read\n").unwrap();
        let basic = |info: &str| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(info)
            )
        };
        assert_eq!(users.role(Some(&basic("ci:p:a:ss"))), Some(Role::Write));
        assert_eq!(users.role(Some(&basic("viewer:v"))), Some(Role::Read));
        assert_eq!(users.role(Some(&basic("viewer:wrong"))), None);
        assert_eq!(users.role(Some(&basic("nobody:v"))), None);
        assert_eq!(users.role(Some("Bearer x")), None);
        assert_eq!(users.role(None), None);
        assert!(!format!("{users:?}").contains("p:a:ss"));

        for (text, why) in [
            ("a:b\n", "line 1: expected user:password:role"),
            ("a:b:admin\n", "line 1: role \"admin\""),
            ("a:b:read\na:c:write\n", "line 2: user a is listed twice"),
            ("# none\n", "no users"),
        ] {
            let e = Users::parse(text).unwrap_err();
            assert!(e.contains(why), "{text:?}: {e}");
        }
    }
}
