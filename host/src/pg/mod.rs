//! How weir reaches Postgres, in one place for every connection it makes (the sink,
//! lookups, membership, deploys, migrations, the relay, the registry's store): the URL and
//! its TLS settings ([`PgConfig`]), what an error means ([`Class`]), and how long to wait
//! before trying again ([`Backoff`]).
//!
//! A URL is libpq's: `postgresql://user:password@host:port/db?sslmode=verify-full&…` or
//! the `key=value` form. `sslmode`, `sslrootcert`, `sslcert` and `sslkey` (see [`tls`])
//! come from the URL or else from libpq's `PGSSLMODE`, `PGSSLROOTCERT`, `PGSSLCERT` and
//! `PGSSLKEY`, and the password from `PGPASSWORD` when the URL has none, so that a
//! Kubernetes Secret can supply them without being written into a URL.

mod error;
mod retry;
pub mod tls;

use std::ffi::OsString;
use std::str::FromStr;
use std::time::Duration;

use tokio_postgres::Socket;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres_rustls::MakeRustlsConnect;

pub use error::{Class, classify, classify_code, error_text};
pub use retry::Backoff;
pub use tls::{SslMode, TlsSettings};

/// A connection's background half, to be polled (spawned) for the client to work.
pub type Connection =
    tokio_postgres::Connection<Socket, <MakeRustlsConnect as MakeTlsConnect<Socket>>::Stream>;

/// Where and how to connect: the parsed URL, its TLS, and a description without secrets.
#[derive(Clone)]
pub struct PgConfig {
    config: tokio_postgres::Config,
    tls: TlsSettings,
    connector: MakeRustlsConnect,
    target: String,
}

impl std::fmt::Debug for PgConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgConfig")
            .field("target", &self.target)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

impl PgConfig {
    /// Parses `url` for a connection named `application` (unless the URL names it), with
    /// a 5 s connect timeout unless the URL sets one. TLS files are read here: a missing
    /// one is an error now, not at the first connection.
    pub fn parse(url: &str, application: &str) -> Result<Self, String> {
        Self::parse_with(url, application, |name| std::env::var_os(name))
    }

    fn parse_with(
        url: &str,
        application: &str,
        env: impl Fn(&str) -> Option<OsString>,
    ) -> Result<Self, String> {
        let mut tls = TlsSettings::default();
        let mut given = Vec::new();
        let rest = split_tls(url, &mut |key, value| {
            if tls.set(key, value)? {
                given.push(key.to_string());
                Ok(true)
            } else {
                Ok(false)
            }
        })?;
        for (key, var) in [
            ("sslmode", "PGSSLMODE"),
            ("sslrootcert", "PGSSLROOTCERT"),
            ("sslcert", "PGSSLCERT"),
            ("sslkey", "PGSSLKEY"),
        ] {
            if !given.iter().any(|g| g == key)
                && let Some(value) = env(var)
            {
                let value = value
                    .into_string()
                    .map_err(|_| format!("{var} is not UTF-8"))?;
                tls.set(key, &value).map_err(|e| format!("{var}: {e}"))?;
            }
        }
        let mut config = tokio_postgres::Config::from_str(&rest)
            .map_err(|e| format!("the database URL is not a Postgres URL: {e}"))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        if config.get_application_name().is_none() {
            config.application_name(application);
        }
        if config.get_password().is_none()
            && let Some(password) = env("PGPASSWORD")
        {
            config.password(password.as_encoded_bytes());
        }
        config.ssl_mode(tls.mode.negotiation());
        let connector = MakeRustlsConnect::new(tls.client_config()?);
        let target = describe(&config);
        Ok(Self {
            config,
            tls,
            connector,
            target,
        })
    }

    /// Where this points, as `postgresql://user@host:port/db`, without the password.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// The TLS settings.
    pub fn tls(&self) -> &TlsSettings {
        &self.tls
    }

    /// The tokio-postgres configuration (for a pool's manager, say).
    pub fn config(&self) -> &tokio_postgres::Config {
        &self.config
    }

    /// Opens one connection; the caller polls (spawns) its [`Connection`].
    pub async fn connect(
        &self,
    ) -> Result<(tokio_postgres::Client, Connection), tokio_postgres::Error> {
        self.config.connect(self.connector.clone()).await
    }

    /// Opens one connection and spawns its background half; when that ends, `what` (the
    /// connection's purpose) is logged at debug level with why.
    pub async fn connect_spawned(
        &self,
        what: &'static str,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (client, connection) = self.connect().await?;
        let target = self.target.clone();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(database = %target, error = %e, "Postgres connection for {what} ended");
            }
        });
        Ok(client)
    }

    /// A connection pool's manager for this configuration.
    pub fn pool_manager(
        &self,
        config: deadpool_postgres::ManagerConfig,
    ) -> deadpool_postgres::Manager {
        deadpool_postgres::Manager::from_config(self.config.clone(), self.connector.clone(), config)
    }

    /// Connects, trying again while Postgres is not reachable (class [`Class::Retry`]) for
    /// at most `attempts` tries; any other failure is returned at once, as one line naming
    /// the database.
    pub async fn connect_retrying(
        &self,
        what: &'static str,
        attempts: u32,
    ) -> Result<tokio_postgres::Client, String> {
        let mut backoff = Backoff::new();
        loop {
            match self.connect_spawned(what).await {
                Ok(client) => return Ok(client),
                Err(e) if backoff.attempts() + 1 < attempts && classify(&e) == Class::Retry => {
                    let delay = backoff.delay();
                    tracing::warn!(database = %self.target, attempt = backoff.attempts(),
                        retry_in = ?delay, error = %error_text(&e),
                        "Postgres is not reachable yet; retrying");
                    tokio::time::sleep(delay).await;
                }
                Err(e) => {
                    return Err(format!(
                        "cannot connect to {}: {}",
                        self.target,
                        error_text(&e)
                    ));
                }
            }
        }
    }
}

/// `url` with `params` (libpq's `key`, `value`) added, in the URL's own form:
/// percent-encoded query parameters of a `postgresql://` URL, quoted `key='value'` pairs
/// otherwise.
pub fn with_params(url: &str, params: &[(&str, &str)]) -> String {
    let mut url = url.trim().to_string();
    let is_url = is_url(&url);
    for (key, value) in params {
        if is_url {
            let sep = if url.contains('?') { '&' } else { '?' };
            let value =
                percent_encoding::utf8_percent_encode(value, percent_encoding::NON_ALPHANUMERIC);
            url = format!("{url}{sep}{key}={value}");
        } else {
            let value = value.replace('\\', "\\\\").replace('\'', "\\'");
            url = format!("{url} {key}='{value}'");
        }
    }
    url
}

/// Whether `url` is in the URL form (`postgresql://…`) rather than `key=value` pairs.
fn is_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// Where a Postgres config points, without the password.
fn describe(config: &tokio_postgres::Config) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(name) => name.clone(),
            tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .collect();
    let ports: Vec<String> = config.get_ports().iter().map(u16::to_string).collect();
    format!(
        "postgresql://{}@{}:{}/{}",
        config.get_user().unwrap_or(""),
        hosts.join(","),
        ports.join(","),
        config.get_dbname().unwrap_or("")
    )
}

/// `url` without the parameters `take` takes (it returns true for those), for
/// tokio-postgres, which knows only some of libpq's TLS parameters. Both forms of a URL:
/// `postgresql://…?a=b&c=d` (percent-encoded) and `a=b c='d e'` (quoted, `\`-escaped).
fn split_tls(
    url: &str,
    take: &mut dyn FnMut(&str, &str) -> Result<bool, String>,
) -> Result<String, String> {
    if is_url(url) {
        let Some((base, query)) = url.split_once('?') else {
            return Ok(url.to_string());
        };
        let mut kept = Vec::new();
        for param in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = param.split_once('=').unwrap_or((param, ""));
            let decode = |s: &str| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8()
                    .map(|s| s.into_owned())
                    .map_err(|_| format!("the database URL's {key:?} is not UTF-8"))
            };
            if !take(&decode(key)?, &decode(value)?)? {
                kept.push(param);
            }
        }
        return Ok(if kept.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", kept.join("&"))
        });
    }
    if url.contains("://") {
        // Not a Postgres URL: tokio-postgres says so.
        return Ok(url.to_string());
    }
    // key=value pairs: keep each pair's text as written unless it is taken.
    let mut kept = String::new();
    let mut rest = url.trim_start();
    while !rest.is_empty() {
        let start = rest;
        let eq = rest
            .find('=')
            .ok_or_else(|| format!("the database URL has {rest:?} without a value"))?;
        let key = rest[..eq].trim();
        rest = rest[eq + 1..].trim_start();
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let mut end = rest.len();
        if rest.starts_with('\'') {
            chars.next();
            let mut closed = false;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next().map(|(_, c)| c)),
                    '\'' => {
                        end = i + 1;
                        closed = true;
                        break;
                    }
                    c => value.push(c),
                }
            }
            if !closed {
                return Err(format!("the database URL's {key} has an unclosed quote"));
            }
        } else {
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next().map(|(_, c)| c)),
                    c if c.is_whitespace() => {
                        end = i;
                        break;
                    }
                    c => value.push(c),
                }
            }
        }
        let pair = &start[..start.len() - rest.len() + end];
        if !take(key, &value)? {
            kept.push_str(pair);
            kept.push(' ');
        }
        rest = rest[end..].trim_start();
    }
    Ok(kept.trim_end().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str, env: &[(&str, &str)]) -> Result<PgConfig, String> {
        let env: Vec<(String, OsString)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        PgConfig::parse_with(url, "weir", |name| {
            env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
        })
    }

    #[test]
    fn pgpassword_fills_a_url_without_a_password() {
        let c = parse(
            "postgresql://weir@db:5432/weir",
            &[("PGPASSWORD", "s3:cr/t@")],
        )
        .unwrap();
        assert_eq!(c.config().get_password(), Some(&b"s3:cr/t@"[..]));
        assert_eq!(c.config().get_application_name(), Some("weir"));
        assert!(c.config().get_connect_timeout().is_some());
        assert_eq!(c.target(), "postgresql://weir@db:5432/weir");

        // A password in the URL wins; no PGPASSWORD leaves none.
        let c = parse("postgresql://weir:inurl@db/weir", &[("PGPASSWORD", "env")]).unwrap();
        assert_eq!(c.config().get_password(), Some(&b"inurl"[..]));
        assert!(!format!("{c:?}").contains("inurl"), "{c:?}");
        let c = parse("postgresql://weir@db/weir?application_name=x", &[]).unwrap();
        assert_eq!(c.config().get_password(), None);
        assert_eq!(c.config().get_application_name(), Some("x"));

        let e = parse("http://nope", &[]).unwrap_err();
        assert!(e.contains("not a Postgres URL"), "{e}");
    }

    #[test]
    fn tls_parameters_come_from_the_url_or_the_environment() {
        let c = parse("postgresql://weir@db/weir", &[]).unwrap();
        assert_eq!(c.tls().mode, SslMode::Prefer);

        let c = parse(
            "postgresql://weir@db/weir?application_name=a&sslmode=disable&connect_timeout=3",
            &[("PGSSLMODE", "verify-full")],
        )
        .unwrap();
        assert_eq!(
            c.tls().mode,
            SslMode::Disable,
            "the URL wins over PGSSLMODE"
        );
        assert_eq!(c.config().get_application_name(), Some("a"));
        assert_eq!(
            c.config().get_connect_timeout(),
            Some(&Duration::from_secs(3))
        );

        let c = parse("postgresql://weir@db/weir", &[("PGSSLMODE", "require")]).unwrap();
        assert_eq!(c.tls().mode, SslMode::Require);
        assert_eq!(
            c.config().get_ssl_mode(),
            tokio_postgres::config::SslMode::Require
        );

        let c = parse("host=db user='we ir' sslmode=require dbname=x\\ y", &[]).unwrap();
        assert_eq!(c.tls().mode, SslMode::Require);
        assert_eq!(c.config().get_user(), Some("we ir"));
        assert_eq!(c.config().get_dbname(), Some("x y"));
    }

    #[test]
    fn params_are_added_in_the_urls_own_form() {
        let url = with_params(
            "postgresql://weir@db/weir?application_name=a",
            &[
                ("sslmode", "require"),
                ("sslrootcert", "/etc/ca dir/ca.pem"),
            ],
        );
        assert_eq!(
            url,
            "postgresql://weir@db/weir?application_name=a&sslmode=require&sslrootcert=%2Fetc%2Fca%20dir%2Fca%2Epem"
        );
        let mut tls = TlsSettings::default();
        let rest = split_tls(&url, &mut |k, v| tls.set(k, v)).unwrap();
        assert_eq!(rest, "postgresql://weir@db/weir?application_name=a");
        assert_eq!(tls.mode, SslMode::Require);
        assert_eq!(
            tls.rootcert.as_deref(),
            Some(std::path::Path::new("/etc/ca dir/ca.pem"))
        );
        let url = with_params(
            "host=db user=weir",
            &[("sslmode", "disable"), ("sslkey", "it's\\x")],
        );
        assert_eq!(
            url,
            "host=db user=weir sslmode='disable' sslkey='it\\'s\\\\x'"
        );
        let mut tls = TlsSettings::default();
        let rest = split_tls(&url, &mut |k, v| tls.set(k, v)).unwrap();
        assert_eq!(rest, "host=db user=weir");
        assert_eq!(tls.key.as_deref(), Some(std::path::Path::new("it's\\x")));
    }

    #[test]
    fn bad_tls_settings_are_refused_naming_what_is_wrong() {
        let e = parse("postgresql://db/x?sslmode=sometimes", &[]).unwrap_err();
        assert!(e.contains("sslmode \"sometimes\""), "{e}");
        let e = parse("postgresql://db/x?sslmode=verify-full", &[]).unwrap_err();
        assert!(e.contains("verify-full needs sslrootcert"), "{e}");
        let e = parse(
            "postgresql://db/x?sslmode=verify-ca&sslrootcert=/nowhere/ca.pem",
            &[],
        )
        .unwrap_err();
        assert!(e.contains("sslrootcert /nowhere/ca.pem"), "{e}");
        let e = parse("postgresql://db/x?sslcert=/a.pem", &[]).unwrap_err();
        assert!(e.contains("sslcert is given without sslkey"), "{e}");
        let e = parse("sslmode=verify-ca sslrootcert='/no where", &[]).unwrap_err();
        assert!(e.contains("unclosed quote"), "{e}");
    }
}
