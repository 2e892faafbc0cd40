//! The configuration file, `weir.yaml`: where Kafka, the schema registry and Postgres are,
//! and the pipelines (topic → guest → tables) to run.
//!
//! The file is a [tera](https://keats.github.io/tera/docs/) template, rendered before it is
//! parsed, Helm-style:
//!
//! - `{{ env(name="DATABASE_URL") }}` is an environment variable; loading fails, naming the
//!   variable and the file, when it is unset and the call gives no `default="…"`.
//! - With `--values FILE` (YAML), the file's contents are `values` (and `Values`):
//!   `{{ values.kafka.brokers | default(value="localhost:9092") }}`.
//! - The template is one file: `{% include %}`, `{% extends %}` and `{% import %}` are
//!   refused, and so is a macro that calls itself (directly or through other macros).
//! - Rendering is bounded, and past a bound loading fails naming it: 16 MiB of output,
//!   10 s, 1,000,000 numbers from all `range()` calls together, blocks (and brackets in one
//!   tag, and macros calling macros) 32 deep, 256 operators in one tag, and 100,000 macro
//!   calls made by one call of a macro.
//!
//! `weir config render` prints the rendered text; line numbers in messages refer to it
//! (they match the file as written wherever the template adds or removes no lines).
//!
//! Then it is parsed ([`load`]): unknown keys and wrong types are errors naming the key
//! and the line, and the result is checked as a whole (every guest file exists, no topic
//! feeds two pipelines, limits fit the runtime…). Relative paths are resolved against the
//! directory of the configuration file.
//!
//! # Format
//!
//! ```yaml
//! kafka:
//!   brokers: {{ env(name="KAFKA_BROKERS", default="localhost:9092") }}
//!   group_id: weir                 # consumer group (default weir)
//!   properties:                    # librdkafka properties for every Kafka client weir makes
//!     session.timeout.ms: 45000    # (default none)
//!     # security.protocol: SASL_SSL   # TLS and SASL: ssl.ca.location, sasl.mechanism…
//!     # sasl.username: weir
//!     # sasl.password: …           # from env(name="KAFKA_PASSWORD"), say; never logged
//! registry:
//!   url: {{ env(name="SCHEMA_REGISTRY_URL", default="http://localhost:8081") }}
//!   # ca: registry-ca.crt          # CAs for an https:// registry, besides the system's
//!   # basic_auth_user_info: …      # user:password (Confluent's basic.auth.user.info)
//!   # bearer_auth_token: …         # or a bearer token
//! database:
//!   url: {{ env(name="DATABASE_URL") }}   # libpq's URL or key=value form
//!   migrations: migrations         # optional; relative to this file
//!   sslmode: prefer                # disable, prefer (default), require, verify-ca, verify-full
//!   # sslrootcert: pg/ca.crt       # the CAs to trust (verify-ca, verify-full); relative to this file
//!   # sslcert: pg/tls.crt         # a client certificate, with its key
//!   # sslkey: pg/tls.key
//! http:
//!   listen: 0.0.0.0:9464           # /metrics, /healthz, /readyz (default 127.0.0.1:9464)
//!   max_connections: 64            # open connections at once; more are closed (default 64)
//!   header_timeout: 10s            # a request's headers, or an idle connection (default 10s)
//! decode:                          # bounds on decoding one message (these are the defaults)
//!   max_depth: 64                  # records, arrays and maps nested in one another
//!   max_bytes: 8MiB                # what one decoded message may take
//!   max_items: 1000000             # array and map items in one message
//!   max_batch_bytes: 64MiB         # decoded messages of a batch before it is split
//! runtime:
//!   max_stack: 512KiB              # native stack per guest call (default 512KiB)
//!   instances: 64                  # guest instances live at once (default 64)
//!   max_memory: 1GiB               # largest memory any guest may have (default 1GiB)
//!   compile_memory: 2GiB           # memory a guest's compilation may use (default 2GiB)
//!   compile_timeout: 60s           # how long it may take (default 60s)
//! guests:
//!   dir: guests                    # where bare guest names are found; relative to this file
//!   watch: true                    # swap in changed guest files while running (default)
//!   rescan: 1s                     # backstop rescan when no file events arrive (default 1s)
//! admin:                           # the admin API (GET/PUT /guests…); off without this
//!   listen: 127.0.0.1:9465
//!   token_file: /var/run/secrets/weir/admin-token   # the bearer token: a file…
//!   # token_env: WEIR_ADMIN_TOKEN                  # …or an environment variable
//!   max_body: 64MiB                # largest .wasm accepted (default 64MiB)
//!   max_connections: 8             # open connections at once (default 8)
//!   header_timeout: 10s            # a request's headers, or an idle connection (default 10s)
//!   request_timeout: 5m            # a whole request, body included (default 5m)
//! workers: 2                       # partitions processed at once (default: one per CPU)
//! pipelines:
//!   - name: stocks
//!     topic: tickers.stocks        # one topic…
//!     guest: ticks.wasm            # relative to guests.dir (else to this file), or absolute
//!     batch: {size: 500, linger: 100ms}       # the defaults
//!     limits: {deadline: 5s, max_memory: 64MiB} # per guest call (defaults 10s, 128MiB)
//!     config:                      # handed to the guest; scalars become text
//!       table: stock_ticks
//!     columns: schema              # check a column per value-schema field (default: exist)
//!     version_column: guest_version  # fill this column of every row with the guest's sha256
//!     dedup: {key: event_id, retention: 7d}  # drop messages whose field repeats (before the guest)
//!     subjects: topic              # schema ids must be registered under <topic>-value (the
//!                                  # default); or record, topic_record, or [subject, …]
//!     tables: [stock_ticks]        # the tables its guest writes, and may (default: config.table)
//!   - name: candles
//!     topics: [tickers.crypto, tickers.currency]   # …or several
//!     guest: candles.wasm          # (an absolute path works too)
//!     config: {interval: 1m, table: candles}
//!     tables: [candles]            # a row for any other table dead-letters its message
//!     state:                       # bounds on the guest's keyed state (these are the defaults)
//!       max_key: 1KiB              # one key
//!       max_value: 64KiB           # one value
//!       max_batch: 4MiB            # what one batch may write
//!       max_partition: 64MiB       # what one partition may hold (held in memory)
//!     lookups:                     # read-only queries the guest may run, by name ($1, $2… its parameters)
//!       rate: SELECT rate FROM fx_rates WHERE currency = $1
//!     topics_out:                  # the topics its guest may emit to (exactly once, through the outbox)
//!       - candles.clean            # fields encoded with the latest schema of candles.clean-value…
//!       - {topic: audit, subject: audit-events}   # …or of the subject given
//!     outbox: {max_pending: 100000}   # emits of one partition waiting to be produced before it pauses (the default)
//!     breaker:                     # a guest failing on too many messages pauses the pipeline (these are the defaults)
//!       failure_rate: 0.5          # share of the window's messages it failed on (trapped, out of time or memory)…
//!       min_failures: 10           # …once at least this many failed
//!       window: 100                # the last messages given to the guest version
//!       pause: 30s                 # before trying again, doubling on each trip in a row…
//!       max_pause: 5m              # …up to this
//!       # enabled: false           # every failure is isolated and dead-lettered instead
//! {% for p in values.extra_pipelines | default(value=[]) %}
//!   - name: {{ p.name }}
//!     topic: {{ p.topic }}
//!     guest: {{ p.guest }}
//!     tables: [{{ p.table }}]
//! {% endfor %}
//! ```
//!
//! Durations take a unit (`200ms`, `5s`, `1m`); sizes are bytes or take a unit (`64KiB`,
//! `64MiB`, `1GiB`, powers of 1024).

mod de;
mod locate;
mod render;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::model::StateLimits;
use crate::runtime::{Compiler, GuestLimits, Isolation, PoolingConfig, RuntimeConfig};
use crate::serve::ListenerLimits;
use crate::source::SubjectStrategy;
use crate::source::avro::DecodeLimits;
pub use de::{format_size, parse_duration, parse_size};
use locate::Locator;
pub use render::{RENDER_MEMORY, render, render_isolated};

/// A loaded, checked configuration file.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Where Kafka is and how to consume.
    pub kafka: KafkaConfig,
    /// Where the schema registry is.
    pub registry: RegistryConfig,
    /// Where Postgres is.
    pub database: DatabaseConfig,
    /// The HTTP endpoints: metrics and probes.
    pub http: HttpConfig,
    /// Bounds on decoding messages.
    pub decode: DecodeConfig,
    /// Engine-wide guest runtime settings.
    pub runtime: RuntimeSettings,
    /// Where guests are found, and whether they are watched.
    pub guests: GuestsConfig,
    /// The admin API, if enabled.
    pub admin: Option<AdminConfig>,
    /// The pipelines, in file order; at least one.
    pub pipelines: Vec<PipelineConfig>,
    /// How many partitions' batches are processed at once, each worker with its own
    /// Postgres connection (default: the number of CPUs). A partition stays on one worker,
    /// so its batches commit in order.
    pub workers: usize,
    /// The configuration file (absolute).
    pub source: PathBuf,
}

/// `kafka:`: the brokers and the consumer.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers, `host:port[,host:port…]`.
    pub brokers: String,
    /// Consumer group id (default `weir`).
    #[serde(default = "default_group_id")]
    pub group_id: String,
    /// Extra librdkafka properties (`session.timeout.ms: 45000`), passed as they are.
    #[serde(default, deserialize_with = "de::string_map")]
    pub properties: BTreeMap<String, String>,
}

/// Kafka group settings that would make librdkafka join the broker's group; weir's group
/// is kept in Postgres, so these are not passed to its clients.
const GROUP_PROPERTIES: &[&str] = &["session.timeout.ms", "heartbeat.interval.ms"];

impl KafkaConfig {
    /// The brokers with the operator's properties (TLS, SASL…) that every Kafka client
    /// weir makes gets; not the group settings.
    pub fn clients(&self) -> crate::source::kafka::Kafka {
        crate::source::kafka::Kafka::with_properties(
            &self.brokers,
            self.properties
                .iter()
                .filter(|(k, _)| !GROUP_PROPERTIES.contains(&k.as_str())),
        )
    }
}

impl std::fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let properties: Vec<(String, String)> = self
            .properties
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("group_id", &self.group_id)
            .field("properties", &crate::source::kafka::Redacted(&properties))
            .finish()
    }
}

/// `registry:`: the Confluent-compatible schema registry.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// Base URL, `http://host:port` or `https://…`.
    pub url: String,
    /// A PEM file of CA certificates for an `https://` registry, relative to the
    /// configuration file.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// Basic auth `user:password` (Confluent's `basic.auth.user.info`).
    #[serde(default)]
    pub basic_auth_user_info: Option<String>,
    /// A bearer token (Confluent's `bearer.auth.token`).
    #[serde(default)]
    pub bearer_auth_token: Option<String>,
}

impl std::fmt::Debug for RegistryConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryConfig")
            .field("url", &self.url)
            .field("auth", &self.auth())
            .finish()
    }
}

impl RegistryConfig {
    /// TLS and credentials for the registry client.
    pub fn auth(&self) -> crate::registry::RegistryAuth {
        crate::registry::RegistryAuth {
            ca: self.ca.clone(),
            basic_user_info: self.basic_auth_user_info.clone(),
            bearer_token: self.bearer_auth_token.clone(),
        }
    }
}

/// `database:`: Postgres.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// Connection URL, `postgresql://user:password@host/db`.
    pub url: String,
    /// A directory of SQL migrations to apply at start, resolved relative to the
    /// configuration file's directory.
    #[serde(default)]
    pub migrations: Option<PathBuf>,
    /// libpq's `sslmode`; folded into `url` when loaded (the URL's own wins).
    #[serde(default)]
    pub sslmode: Option<String>,
    /// libpq's `sslrootcert`, relative to the configuration file; folded into `url`.
    #[serde(default)]
    pub sslrootcert: Option<PathBuf>,
    /// libpq's `sslcert`, relative to the configuration file; folded into `url`.
    #[serde(default)]
    pub sslcert: Option<PathBuf>,
    /// libpq's `sslkey`, relative to the configuration file; folded into `url`.
    #[serde(default)]
    pub sslkey: Option<PathBuf>,
}

/// `http:`: the endpoint serving `/metrics`, `/healthz` and `/readyz`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address to listen on (default `127.0.0.1:9464`).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Connections open at once; one more is closed as soon as it is accepted (default 64).
    #[serde(default = "default_http_connections")]
    pub max_connections: usize,
    /// How long a connection may take to send a request's headers, or stay idle between
    /// requests (default 10s).
    #[serde(default = "default_header_timeout", deserialize_with = "de::duration")]
    pub header_timeout: Duration,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            max_connections: default_http_connections(),
            header_timeout: default_header_timeout(),
        }
    }
}

impl HttpConfig {
    /// The limits the endpoint is served with. Its requests have no body to wait for.
    pub fn limits(&self) -> ListenerLimits {
        ListenerLimits {
            max_connections: self.max_connections,
            header_timeout: self.header_timeout,
            request_timeout: self.header_timeout,
        }
    }
}

/// `decode:`: bounds on decoding one message, the same for every pipeline. A message over
/// a bound is dead-lettered (stage `decode`) naming the setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecodeConfig {
    /// How deeply records, arrays and maps may nest (default 64, at most 1000).
    #[serde(default = "default_max_depth")]
    pub max_depth: usize,
    /// What one decoded message may take: its fields' names, text, bytes and the JSON
    /// text of its arrays and maps, and each field's in-memory size (default 8MiB).
    #[serde(default = "default_decode_max_bytes", deserialize_with = "de::size")]
    pub max_bytes: usize,
    /// Array and map items in one message, at any depth (default 1000000).
    #[serde(default = "default_max_items")]
    pub max_items: usize,
    /// Decoded messages a batch holds before the rest of it goes on as a batch of its own
    /// (default 64MiB): with `max_bytes`, what bounds a worker's decoded batches.
    #[serde(default = "default_max_batch_bytes", deserialize_with = "de::size")]
    pub max_batch_bytes: usize,
}

impl Default for DecodeConfig {
    fn default() -> Self {
        Self {
            max_depth: default_max_depth(),
            max_bytes: default_decode_max_bytes(),
            max_items: default_max_items(),
            max_batch_bytes: default_max_batch_bytes(),
        }
    }
}

impl DecodeConfig {
    /// The per-message limits.
    pub fn limits(&self) -> DecodeLimits {
        DecodeLimits {
            max_depth: self.max_depth,
            max_bytes: self.max_bytes,
            max_items: self.max_items,
        }
    }
}

/// The least `runtime.compile_memory`: the compiling process's own code and threads.
const MIN_COMPILE_MEMORY: usize = 256 << 20;

/// The deepest `decode.max_depth` allowed: decoding recurses once per level, and this
/// keeps it well inside a thread's stack.
pub const MAX_DECODE_DEPTH: usize = 1000;

/// `runtime:`: settings of the guest runtime, shared by all guests.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeSettings {
    /// Native stack a guest call may use, in bytes (default 512KiB).
    #[serde(default = "default_max_stack", deserialize_with = "de::size")]
    pub max_stack: usize,
    /// Guest instances that may be live at once, across all guests (default 64).
    #[serde(default = "default_instances")]
    pub instances: u32,
    /// Size of each pooled memory slot: no guest's `limits.max_memory` may exceed it
    /// (default 1GiB).
    #[serde(default = "default_runtime_max_memory", deserialize_with = "de::size")]
    pub max_memory: usize,
    /// Memory the process compiling a guest may use (default 2GiB). `weir run`
    /// compiles each new guest version in a child process capped at this, so a module
    /// that takes more to compile is refused instead of taking the pipelines' memory.
    #[serde(default = "default_compile_memory", deserialize_with = "de::size")]
    pub compile_memory: usize,
    /// How long compiling a guest may take (default 60s).
    #[serde(default = "default_compile_timeout", deserialize_with = "de::duration")]
    pub compile_timeout: Duration,
}

impl Default for RuntimeSettings {
    fn default() -> Self {
        Self {
            max_stack: default_max_stack(),
            instances: default_instances(),
            max_memory: default_runtime_max_memory(),
            compile_memory: default_compile_memory(),
            compile_timeout: default_compile_timeout(),
        }
    }
}

/// `guests:`: where guest components are found.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestsConfig {
    /// Directory where relative guest file names are looked up, resolved relative to the
    /// configuration file's directory.
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// Whether guest files are watched and new versions swapped in while running
    /// (default true).
    #[serde(default = "default_true")]
    pub watch: bool,
    /// How often guest files are looked at even without file events (default 1s).
    #[serde(default = "default_rescan", deserialize_with = "de::duration")]
    pub rescan: Duration,
}

impl Default for GuestsConfig {
    fn default() -> Self {
        Self {
            dir: None,
            watch: true,
            rescan: default_rescan(),
        }
    }
}

/// `admin:`: the admin API (list, deploy and roll back guests), on its own address and
/// behind a bearer token. Off unless configured.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// A file holding the bearer token (read at start and at each request, so a rotated
    /// Secret takes effect), resolved relative to the configuration file's directory.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// An environment variable holding the bearer token.
    #[serde(default)]
    pub token_env: Option<String>,
    /// Largest request body (a .wasm module) accepted (default 64MiB).
    #[serde(default = "default_max_body", deserialize_with = "de::size")]
    pub max_body: usize,
    /// Connections open at once; one more is closed as soon as it is accepted (default 8).
    #[serde(default = "default_admin_connections")]
    pub max_connections: usize,
    /// How long a connection may take to send a request's headers, or stay idle between
    /// requests (default 10s).
    #[serde(default = "default_header_timeout", deserialize_with = "de::duration")]
    pub header_timeout: Duration,
    /// How long a whole request may take, its body included (default 5m).
    #[serde(
        default = "default_admin_request_timeout",
        deserialize_with = "de::duration"
    )]
    pub request_timeout: Duration,
}

impl AdminConfig {
    /// The limits the admin API is served with.
    pub fn limits(&self) -> ListenerLimits {
        ListenerLimits {
            max_connections: self.max_connections,
            header_timeout: self.header_timeout,
            request_timeout: self.request_timeout,
        }
    }
}

/// One pipeline: topics → guest → tables.
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineConfig {
    /// Unique name, for logs and metrics.
    pub name: String,
    /// The topics it consumes; no topic feeds two pipelines.
    pub topics: Vec<String>,
    /// The guest component (absolute path; the file exists).
    pub guest: PathBuf,
    /// Most messages per guest call.
    pub batch_size: usize,
    /// How long to wait for a batch to fill before processing what there is.
    pub linger: Duration,
    /// CPU deadline and memory cap of each guest call.
    pub limits: GuestLimits,
    /// Settings handed to the guest (`config:`), as text.
    pub guest_config: BTreeMap<String, String>,
    /// The tables this pipeline writes, checked at start: its guest may write these and
    /// no others.
    pub tables: Vec<String>,
    /// What to check of their columns at start.
    pub columns: ColumnCheck,
    /// A column of every table written that the sink fills with the sha256 of the guest
    /// version that produced the row.
    pub version_column: Option<String>,
    /// Drop messages whose key field repeats one already processed.
    pub dedup: Option<DedupConfig>,
    /// The registry subjects its topics' schema ids must be registered under.
    pub subjects: SubjectStrategy,
    /// Bounds on the guest's keyed state.
    pub state: StateLimits,
    /// Named read-only queries its guest may run: name → SQL.
    pub lookups: BTreeMap<String, String>,
    /// The topics its guest may emit to, each with the subject whose latest schema
    /// encodes emitted fields (default `<topic>-value`).
    pub topics_out: BTreeMap<String, String>,
    /// The most emitted messages of one source partition waiting in the outbox; past it
    /// the partition pauses until the relay catches up.
    pub outbox_max_pending: u64,
    /// When a guest failing on many messages stops the pipeline.
    pub breaker: BreakerConfig,
}

/// `breaker:` of a pipeline (see [`crate::pipeline::breaker`]).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerConfig {
    /// Off: every failed message is isolated and dead-lettered.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// The share of the window's messages the guest failed on that trips it.
    #[serde(default = "default_failure_rate")]
    pub failure_rate: f64,
    /// The fewest failed messages that trip it.
    #[serde(default = "default_min_failures")]
    pub min_failures: usize,
    /// The last messages of a guest version the rate is measured over.
    #[serde(default = "default_breaker_window")]
    pub window: usize,
    /// How long the pipeline pauses after a trip; doubles on each trip in a row.
    #[serde(default = "default_breaker_pause", deserialize_with = "de::duration")]
    pub pause: Duration,
    /// The longest pause.
    #[serde(
        default = "default_breaker_max_pause",
        deserialize_with = "de::duration"
    )]
    pub max_pause: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            failure_rate: default_failure_rate(),
            min_failures: default_min_failures(),
            window: default_breaker_window(),
            pause: default_breaker_pause(),
            max_pause: default_breaker_max_pause(),
        }
    }
}

const fn default_failure_rate() -> f64 {
    0.5
}
const fn default_min_failures() -> usize {
    10
}
const fn default_breaker_window() -> usize {
    100
}
const fn default_breaker_pause() -> Duration {
    Duration::from_secs(30)
}
const fn default_breaker_max_pause() -> Duration {
    Duration::from_secs(300)
}

/// The default of `outbox.max_pending`.
pub const DEFAULT_OUTBOX_MAX_PENDING: u64 = 100_000;

/// `dedup:` of a pipeline: a message whose `key` field equals that of a message processed
/// before (in this batch, or committed within `retention`) is dropped before the guest
/// sees it, exactly once: the keys are remembered in the batch's transaction.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DedupConfig {
    /// The field of the message value that identifies it (`event_id`).
    pub key: String,
    /// How long a key is remembered (default 7d).
    #[serde(default = "default_retention", deserialize_with = "de::duration")]
    pub retention: Duration,
}

/// What `weir run` checks of a pipeline's tables' columns before it starts (`columns:`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ColumnCheck {
    /// Only that the tables exist: the guest decides the columns (the default).
    #[default]
    Exist,
    /// The guest writes each message's fields as columns (like `passthrough`): every field
    /// of the topics' latest value schemas needs a column of a compatible type.
    Schema,
}

impl Config {
    /// The guest runtime's settings: stack, and a pooling allocator sized from `runtime:`.
    /// Components compile in this process; see [`Config::isolated_compiler`].
    pub fn runtime_config(&self) -> RuntimeConfig {
        RuntimeConfig {
            max_wasm_stack: self.runtime.max_stack,
            pooling: Some(PoolingConfig {
                instances: self.runtime.instances,
                max_memory: self.runtime.max_memory,
            }),
            ..RuntimeConfig::default()
        }
    }

    /// Compiling in child processes of the `weir` binary `exe`, under `runtime:`'s
    /// compile budget.
    pub fn isolated_compiler(&self, exe: PathBuf) -> Compiler {
        Compiler::Isolated(Isolation {
            exe,
            max_memory: self.runtime.compile_memory,
            timeout: self.runtime.compile_timeout,
        })
    }
}

/// The configuration could not be loaded. Each message starts with the file and says
/// which key (and, where known, which line) is wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The configuration file could not be read.
    #[error("cannot read configuration file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The values file is missing, not YAML, or not a mapping.
    #[error("values file {path}: {detail}")]
    Values {
        /// The values file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The template does not parse or render (tera's message, with its line information).
    #[error("{path}: template: {detail}")]
    Template {
        /// The configuration file.
        path: PathBuf,
        /// tera's message and its causes.
        detail: String,
    },
    /// `env()` names an unset variable and gives no default.
    #[error(
        "{path}: environment variable {name} is not set{}; set it, or give env() a default: env(name=\"{name}\", default=\"…\")",
        at_line(*.line)
    )]
    EnvUnset {
        /// The configuration file.
        path: PathBuf,
        /// The variable.
        name: String,
        /// The line of the `env()` call, if found.
        line: Option<usize>,
    },
    /// Rendering in a child process failed: the child's message (which names the file).
    #[error("{0}")]
    Isolated(String),
    /// The rendered text is not YAML of the expected shape: an unknown key, a wrong type,
    /// a missing key (serde_yaml's message, with the key path and the line).
    #[error("{path}: {detail}")]
    Parse {
        /// The configuration file.
        path: PathBuf,
        /// What and where.
        detail: String,
    },
    /// A value is refused by the checks made after parsing.
    #[error("{path}: {key}: {message}{}", at_line(*.line))]
    Invalid {
        /// The configuration file.
        path: PathBuf,
        /// The key, like `pipelines[1] (crypto).batch.size`.
        key: String,
        /// What is wrong and what to do.
        message: String,
        /// The line in the rendered file, if found.
        line: Option<usize>,
    },
}

fn at_line(line: Option<usize>) -> String {
    line.map(|l| format!(" (line {l})")).unwrap_or_default()
}

/// Renders, parses and checks the configuration file at `path`, with the template values
/// in the YAML file `values`, if any.
pub fn load(path: &Path, values: Option<&Path>) -> Result<Config, ConfigError> {
    let text = render(path, values)?;
    parse(path, &text)
}

/// [`load`], rendering in a child process of the `weir` binary `exe`
/// ([`render_isolated`]).
pub fn load_isolated(
    path: &Path,
    values: Option<&Path>,
    exe: &Path,
) -> Result<Config, ConfigError> {
    let text = render_isolated(path, values, exe)?;
    parse(path, &text)
}

/// Parses and checks rendered configuration text; `path` is where it came from (for
/// messages, and the base of relative paths).
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
    let at = Locator::new(text);
    let file: ConfigFile = serde_yaml::from_str(text).map_err(|e| ConfigError::Parse {
        path: path.into(),
        detail: parse_detail(&e),
    })?;
    Checker { path, at }.check(file)
}

/// serde_yaml's message, with its position. serde_yaml leaves out a position at the very
/// start of the file (line 1, column 1), which is where an unknown first key is.
fn parse_detail(e: &serde_yaml::Error) -> String {
    let message = e.to_string();
    match e.location() {
        Some(l) if !message.contains(" at line ") => {
            format!("{message} at line {} column {}", l.line(), l.column())
        }
        _ => message,
    }
}

/// The file as written (the parts whose shape differs from [`Config`]).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    /// Kafka brokers and consumer settings.
    kafka: KafkaConfig,
    /// The schema registry.
    registry: RegistryConfig,
    /// Postgres.
    database: DatabaseConfig,
    /// The metrics and probes endpoint.
    #[serde(default)]
    http: HttpConfig,
    /// Bounds on decoding.
    #[serde(default)]
    decode: DecodeConfig,
    /// Guest runtime settings.
    #[serde(default)]
    runtime: RuntimeSettings,
    /// Where guests are found.
    #[serde(default)]
    guests: GuestsConfig,
    /// The admin API.
    #[serde(default)]
    admin: Option<AdminConfig>,
    /// The pipelines.
    pipelines: Vec<PipelineFile>,
    /// Partition workers.
    #[serde(default)]
    workers: Option<usize>,
}

/// One item of `pipelines:` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PipelineFile {
    /// Unique name.
    name: String,
    /// The one topic consumed (or use `topics`).
    #[serde(default)]
    topic: Option<String>,
    /// The topics consumed (or use `topic`).
    #[serde(default)]
    topics: Option<Vec<String>>,
    /// The guest component file.
    guest: PathBuf,
    /// Batching.
    #[serde(default)]
    batch: BatchFile,
    /// Per-call limits.
    #[serde(default)]
    limits: LimitsFile,
    /// Settings handed to the guest.
    #[serde(default, deserialize_with = "de::string_map")]
    config: BTreeMap<String, String>,
    /// The tables written (default: `config.table`).
    #[serde(default)]
    tables: Option<Vec<String>>,
    /// What to check of the tables' columns at start.
    #[serde(default)]
    columns: ColumnCheck,
    /// The column to fill with the guest version.
    #[serde(default)]
    version_column: Option<String>,
    /// Deduplication by a key field.
    #[serde(default)]
    dedup: Option<DedupConfig>,
    /// The subject strategy.
    #[serde(default, deserialize_with = "de::subjects")]
    subjects: SubjectStrategy,
    /// Bounds on the guest's keyed state.
    #[serde(default)]
    state: StateFile,
    /// Named read-only queries the guest may run.
    #[serde(default, deserialize_with = "de::string_map")]
    lookups: BTreeMap<String, String>,
    /// The topics the guest may emit to.
    #[serde(default)]
    topics_out: Vec<TopicOut>,
    /// Bounds on the outbox.
    #[serde(default)]
    outbox: OutboxFile,
    /// The guest breaker.
    #[serde(default)]
    breaker: BreakerConfig,
}

/// One item of `topics_out:`: a topic, or a topic and the subject to encode with.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum TopicOut {
    Topic(String),
    WithSubject { topic: String, subject: String },
}

/// `outbox:` of a pipeline.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OutboxFile {
    /// Most messages of one source partition waiting to be produced.
    #[serde(default = "default_outbox_max_pending")]
    max_pending: u64,
}

impl Default for OutboxFile {
    fn default() -> Self {
        Self {
            max_pending: DEFAULT_OUTBOX_MAX_PENDING,
        }
    }
}

fn default_outbox_max_pending() -> u64 {
    DEFAULT_OUTBOX_MAX_PENDING
}

/// `state:` of a pipeline.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    /// Bytes of one key (default 1KiB).
    #[serde(default = "default_state_key", deserialize_with = "de::size")]
    max_key: usize,
    /// Bytes of one value (default 64KiB).
    #[serde(default = "default_state_value", deserialize_with = "de::size")]
    max_value: usize,
    /// Bytes one batch may write (default 4MiB).
    #[serde(default = "default_state_batch", deserialize_with = "de::size")]
    max_batch: usize,
    /// Bytes one partition may hold (default 64MiB).
    #[serde(default = "default_state_partition", deserialize_with = "de::size")]
    max_partition: usize,
}

impl Default for StateFile {
    fn default() -> Self {
        Self {
            max_key: default_state_key(),
            max_value: default_state_value(),
            max_batch: default_state_batch(),
            max_partition: default_state_partition(),
        }
    }
}

fn default_state_key() -> usize {
    StateLimits::default().max_key
}
fn default_state_value() -> usize {
    StateLimits::default().max_value
}
fn default_state_batch() -> usize {
    StateLimits::default().max_batch
}
fn default_state_partition() -> usize {
    StateLimits::default().max_partition
}

/// `batch:` of a pipeline.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchFile {
    /// Most messages per guest call (default 500).
    #[serde(default = "default_batch_size")]
    size: usize,
    /// Longest wait for a batch to fill (default 100ms).
    #[serde(default = "default_linger", deserialize_with = "de::duration")]
    linger: Duration,
}

impl Default for BatchFile {
    fn default() -> Self {
        Self {
            size: default_batch_size(),
            linger: default_linger(),
        }
    }
}

/// `limits:` of a pipeline.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsFile {
    /// CPU deadline of one guest call (default 10s).
    #[serde(default = "default_deadline", deserialize_with = "de::duration")]
    deadline: Duration,
    /// Memory cap of one guest call (default 128MiB).
    #[serde(default = "default_guest_max_memory", deserialize_with = "de::size")]
    max_memory: usize,
}

impl Default for LimitsFile {
    fn default() -> Self {
        Self {
            deadline: default_deadline(),
            max_memory: default_guest_max_memory(),
        }
    }
}

const fn default_true() -> bool {
    true
}
const fn default_rescan() -> Duration {
    Duration::from_secs(1)
}
const fn default_retention() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}
const fn default_max_body() -> usize {
    64 << 20
}
const fn default_http_connections() -> usize {
    64
}
const fn default_admin_connections() -> usize {
    8
}
const fn default_header_timeout() -> Duration {
    Duration::from_secs(10)
}
const fn default_admin_request_timeout() -> Duration {
    Duration::from_secs(300)
}
fn default_max_depth() -> usize {
    DecodeLimits::default().max_depth
}
fn default_decode_max_bytes() -> usize {
    DecodeLimits::default().max_bytes
}
fn default_max_items() -> usize {
    DecodeLimits::default().max_items
}
const fn default_max_batch_bytes() -> usize {
    64 << 20
}
fn default_group_id() -> String {
    "weir".into()
}
fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9464))
}
const fn default_max_stack() -> usize {
    512 << 10
}
const fn default_instances() -> u32 {
    64
}
const fn default_runtime_max_memory() -> usize {
    1 << 30
}
const fn default_compile_memory() -> usize {
    2 << 30
}
const fn default_compile_timeout() -> Duration {
    Duration::from_secs(60)
}
const fn default_batch_size() -> usize {
    500
}
const fn default_linger() -> Duration {
    Duration::from_millis(100)
}
fn default_deadline() -> Duration {
    GuestLimits::default().deadline
}
fn default_guest_max_memory() -> usize {
    GuestLimits::default().max_memory
}

/// The checks made after parsing, and path resolution.
struct Checker<'a> {
    path: &'a Path,
    at: Locator<'a>,
}

type Checked<T> = Result<T, ConfigError>;

impl Checker<'_> {
    fn invalid(
        &self,
        key: impl Into<String>,
        message: impl Into<String>,
        line: Option<usize>,
    ) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.into(),
            key: key.into(),
            message: message.into(),
            line,
        }
    }

    fn check(&self, file: ConfigFile) -> Checked<Config> {
        let source = std::path::absolute(self.path).map_err(|e| ConfigError::Read {
            path: self.path.into(),
            source: e,
        })?;
        let base = source.parent().map(Path::to_path_buf).unwrap_or_default();

        self.non_empty(&["kafka", "brokers"], &file.kafka.brokers)?;
        self.non_empty(&["kafka", "group_id"], &file.kafka.group_id)?;
        self.non_empty(&["registry", "url"], &file.registry.url)?;
        self.non_empty(&["database", "url"], &file.database.url)?;
        if !(file.registry.url.starts_with("http://") || file.registry.url.starts_with("https://"))
        {
            return Err(self.invalid(
                "registry.url",
                format!("{:?} is not an http:// or https:// URL", file.registry.url),
                self.at.top(&["registry", "url"]),
            ));
        }
        self.check_runtime(&file.runtime)?;
        self.check_decode(&file.decode)?;
        self.check_listener("http", file.http.max_connections, file.http.header_timeout)?;

        let mut database = file.database;
        database.migrations = match database.migrations {
            Some(dir) => Some(self.existing_dir(&["database", "migrations"], &base, &dir)?),
            None => None,
        };
        self.fold_tls(&mut database, &base)?;
        let guests = GuestsConfig {
            dir: match file.guests.dir {
                Some(dir) => Some(self.existing_dir(&["guests", "dir"], &base, &dir)?),
                None => None,
            },
            ..file.guests
        };
        if guests.rescan.is_zero() {
            return Err(self.invalid(
                "guests.rescan",
                "must be more than 0",
                self.at.top(&["guests", "rescan"]),
            ));
        }
        let admin = match file.admin {
            Some(admin) => Some(self.check_admin(admin, &base)?),
            None => None,
        };

        if file.pipelines.is_empty() {
            return Err(self.invalid(
                "pipelines",
                "no pipelines: add at least one (name, topic, guest)",
                self.at.top(&["pipelines"]),
            ));
        }
        let guest_base = guests.dir.as_deref().unwrap_or(&base);
        let pipelines = file
            .pipelines
            .into_iter()
            .enumerate()
            .map(|(i, p)| self.check_pipeline(i, p, guest_base, &file.runtime))
            .collect::<Checked<Vec<_>>>()?;
        self.check_across(&pipelines)?;

        Ok(Config {
            kafka: file.kafka,
            registry: RegistryConfig {
                ca: file.registry.ca.as_deref().map(|ca| resolve(&base, ca)),
                ..file.registry
            },
            database,
            http: file.http,
            decode: file.decode,
            runtime: file.runtime,
            guests,
            admin,
            pipelines,
            workers: match file.workers {
                Some(0) => {
                    return Err(self.invalid(
                        "workers",
                        "must be at least 1",
                        self.at.top(&["workers"]),
                    ));
                }
                Some(n) => n,
                None => std::thread::available_parallelism().map_or(1, |n| n.get()),
            },
            source,
        })
    }

    fn check_admin(&self, mut admin: AdminConfig, base: &Path) -> Checked<AdminConfig> {
        match (&admin.token_file, &admin.token_env) {
            (Some(_), Some(_)) => {
                return Err(self.invalid(
                    "admin",
                    "give token_file or token_env, not both",
                    self.at.top(&["admin", "token_env"]),
                ));
            }
            (None, None) => {
                return Err(self.invalid(
                    "admin",
                    "the admin API needs a bearer token: set token_file (a file holding it) or token_env (an environment variable holding it)",
                    self.at.top(&["admin"]),
                ));
            }
            (Some(file), None) => admin.token_file = Some(resolve(base, file)),
            (None, Some(var)) if var.trim().is_empty() => {
                return Err(self.invalid(
                    "admin.token_env",
                    "must name an environment variable",
                    self.at.top(&["admin", "token_env"]),
                ));
            }
            (None, Some(_)) => {}
        }
        if admin.max_body == 0 {
            return Err(self.invalid(
                "admin.max_body",
                "must be more than 0 bytes",
                self.at.top(&["admin", "max_body"]),
            ));
        }
        self.check_listener("admin", admin.max_connections, admin.header_timeout)?;
        if admin.request_timeout.is_zero() {
            return Err(self.invalid(
                "admin.request_timeout",
                "must be more than 0",
                self.at.top(&["admin", "request_timeout"]),
            ));
        }
        Ok(admin)
    }

    fn check_listener(&self, section: &str, connections: usize, header: Duration) -> Checked<()> {
        if connections == 0 {
            return Err(self.invalid(
                format!("{section}.max_connections"),
                "must be at least 1",
                self.at.top(&[section, "max_connections"]),
            ));
        }
        if header.is_zero() {
            return Err(self.invalid(
                format!("{section}.header_timeout"),
                "must be more than 0",
                self.at.top(&[section, "header_timeout"]),
            ));
        }
        Ok(())
    }

    fn check_decode(&self, d: &DecodeConfig) -> Checked<()> {
        let fail = |key: &str, message: String| {
            Err(self.invalid(
                format!("decode.{key}"),
                message,
                self.at.top(&["decode", key]),
            ))
        };
        if d.max_depth == 0 || d.max_depth > MAX_DECODE_DEPTH {
            return fail("max_depth", format!("must be from 1 to {MAX_DECODE_DEPTH}"));
        }
        if d.max_bytes == 0 {
            return fail("max_bytes", "must be more than 0 bytes".into());
        }
        if d.max_items == 0 {
            return fail("max_items", "must be at least 1".into());
        }
        if d.max_batch_bytes == 0 {
            return fail("max_batch_bytes", "must be more than 0 bytes".into());
        }
        Ok(())
    }

    fn non_empty(&self, keys: &[&str], value: &str) -> Checked<()> {
        if value.trim().is_empty() {
            return Err(self.invalid(keys.join("."), "must not be empty", self.at.top(keys)));
        }
        Ok(())
    }

    fn check_runtime(&self, r: &RuntimeSettings) -> Checked<()> {
        let fail = |key: &str, message: &str| {
            Err(self.invalid(
                format!("runtime.{key}"),
                message,
                self.at.top(&["runtime", key]),
            ))
        };
        if r.instances == 0 {
            return fail("instances", "must be at least 1");
        }
        if r.max_stack == 0 {
            return fail("max_stack", "must be more than 0 bytes");
        }
        if r.max_memory == 0 {
            return fail("max_memory", "must be more than 0 bytes");
        }
        if r.compile_memory < MIN_COMPILE_MEMORY {
            return fail(
                "compile_memory",
                "must be at least 256MiB (the compiler needs that much to start)",
            );
        }
        if r.compile_timeout.is_zero() {
            return fail("compile_timeout", "must be more than 0");
        }
        Ok(())
    }

    /// `dir` resolved against `base`; it must be an existing directory.
    /// Folds `database.ssl*` into the URL (where the URL does not set them already) and
    /// checks the result: a bad `sslmode` or an unreadable certificate is refused here.
    fn fold_tls(&self, database: &mut DatabaseConfig, base: &Path) -> Checked<()> {
        let mut params: Vec<(&str, String)> = Vec::new();
        if let Some(mode) = database.sslmode.take() {
            params.push(("sslmode", mode));
        }
        for (key, path) in [
            ("sslrootcert", database.sslrootcert.take()),
            ("sslcert", database.sslcert.take()),
            ("sslkey", database.sslkey.take()),
        ] {
            if let Some(path) = path {
                params.push((key, resolve(base, &path).display().to_string()));
            }
        }
        let given = |key: &str| database.url.contains(&format!("{key}="));
        let params: Vec<(&str, &str)> = params
            .iter()
            .filter(|(key, _)| !given(key))
            .map(|(key, value)| (*key, value.as_str()))
            .collect();
        database.url = crate::pg::with_params(&database.url, &params);
        if let Err(e) = crate::pg::PgConfig::parse(&database.url, "weir") {
            return Err(self.invalid("database.url", e, self.at.top(&["database", "url"])));
        }
        Ok(())
    }

    fn existing_dir(&self, keys: &[&str], base: &Path, dir: &Path) -> Checked<PathBuf> {
        let resolved = resolve(base, dir);
        if !resolved.is_dir() {
            let what = if resolved.exists() {
                "is not a directory"
            } else {
                "does not exist"
            };
            return Err(self.invalid(
                keys.join("."),
                format!("{} {what}", resolved.display()),
                self.at.top(keys),
            ));
        }
        Ok(resolved)
    }

    fn check_pipeline(
        &self,
        index: usize,
        p: PipelineFile,
        guest_base: &Path,
        runtime: &RuntimeSettings,
    ) -> Checked<PipelineConfig> {
        let key = |k: &str| {
            if p.name.is_empty() {
                format!("pipelines[{index}].{k}")
            } else {
                format!("pipelines[{index}] ({}).{k}", p.name)
            }
        };
        let line = |keys: &[&str]| self.at.pipeline(index, keys);

        if p.name.is_empty()
            || !p
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        {
            return Err(self.invalid(
                key("name"),
                format!(
                    "{:?} is not a pipeline name: use letters, digits, `_`, `-` and `.`",
                    p.name
                ),
                line(&["name"]),
            ));
        }

        let topics = match (p.topic, p.topics) {
            (Some(_), Some(_)) => {
                return Err(self.invalid(
                    key("topics"),
                    "give `topic` or `topics`, not both",
                    line(&["topics"]),
                ));
            }
            (Some(t), None) => vec![t],
            (None, Some(ts)) => ts,
            (None, None) => {
                return Err(self.invalid(
                    key("topics"),
                    "no topic: give `topic: NAME` or `topics: [A, B]`",
                    line(&[]),
                ));
            }
        };
        if topics.is_empty() {
            return Err(self.invalid(
                key("topics"),
                "is empty: list at least one topic",
                line(&["topics"]),
            ));
        }
        for (i, t) in topics.iter().enumerate() {
            if t.trim().is_empty() {
                return Err(self.invalid(
                    key("topics"),
                    "has an empty topic name",
                    line(&["topics"]),
                ));
            }
            if topics[..i].contains(t) {
                return Err(self.invalid(
                    key("topics"),
                    format!("lists {t} twice"),
                    self.at.pipeline_value(index, "topics", t),
                ));
            }
        }

        if p.batch.size == 0 {
            return Err(self.invalid(
                key("batch.size"),
                "must be at least 1",
                line(&["batch", "size"]),
            ));
        }
        if p.limits.deadline.is_zero() {
            return Err(self.invalid(
                key("limits.deadline"),
                "must be more than 0 (a guest call needs time to run)",
                line(&["limits", "deadline"]),
            ));
        }
        if p.limits.max_memory == 0 {
            return Err(self.invalid(
                key("limits.max_memory"),
                "must be more than 0 bytes",
                line(&["limits", "max_memory"]),
            ));
        }
        if p.limits.max_memory > runtime.max_memory {
            return Err(self.invalid(
                key("limits.max_memory"),
                format!(
                    "{} is more than runtime.max_memory ({}), the largest memory any guest may have; lower it or raise runtime.max_memory",
                    format_size(p.limits.max_memory),
                    format_size(runtime.max_memory)
                ),
                line(&["limits", "max_memory"]),
            ));
        }

        let guest = resolve(guest_base, &p.guest);
        if !guest.is_file() {
            let what = if guest.exists() {
                "is not a file"
            } else {
                "does not exist"
            };
            return Err(self.invalid(
                key("guest"),
                format!("{} {what}", guest.display()),
                line(&["guest"]),
            ));
        }

        let tables = match p.tables {
            Some(tables) => tables,
            None => p.config.get("table").cloned().into_iter().collect(),
        };
        if tables.is_empty() {
            return Err(self.invalid(
                key("tables"),
                "lists no tables (and config.table is not set): list the tables the guest writes, as it names them; it may write those and no others",
                line(&["tables"]).or_else(|| line(&[])),
            ));
        }
        if tables.iter().any(|t| t.trim().is_empty()) {
            return Err(self.invalid(key("tables"), "has an empty table name", line(&["tables"])));
        }
        if let Some(own) = tables.iter().find(|t| {
            let last = t.rsplit('.').next().unwrap_or(t).trim_matches('"');
            crate::sink::WEIR_TABLES
                .iter()
                .any(|w| w.eq_ignore_ascii_case(last))
        }) {
            return Err(self.invalid(
                key("tables"),
                format!("lists {own}, one of weir's own tables, which no pipeline may write"),
                line(&["tables"]),
            ));
        }
        for (name, size) in [
            ("max_key", p.state.max_key),
            ("max_value", p.state.max_value),
            ("max_batch", p.state.max_batch),
            ("max_partition", p.state.max_partition),
        ] {
            if size == 0 {
                return Err(self.invalid(
                    key(&format!("state.{name}")),
                    "must be more than 0 bytes",
                    line(&["state", name]),
                ));
            }
        }
        for (name, sql) in &p.lookups {
            if name.trim().is_empty() {
                return Err(self.invalid(
                    key("lookups"),
                    "has a lookup without a name",
                    line(&["lookups"]),
                ));
            }
            if sql.trim().is_empty() {
                return Err(self.invalid(
                    key(&format!("lookups.{name}")),
                    "has no SQL",
                    line(&["lookups", name]),
                ));
            }
        }

        let mut topics_out = BTreeMap::new();
        for out in p.topics_out {
            let (topic, subject) = match out {
                TopicOut::Topic(t) => {
                    let subject = format!("{t}-value");
                    (t, subject)
                }
                TopicOut::WithSubject { topic, subject } => (topic, subject),
            };
            if topic.trim().is_empty() || subject.trim().is_empty() {
                return Err(self.invalid(
                    key("topics_out"),
                    "has an empty topic or subject name",
                    line(&["topics_out"]),
                ));
            }
            if topics.contains(&topic) {
                return Err(self.invalid(
                    key("topics_out"),
                    format!(
                        "lists {topic}, which the pipeline consumes: its emits would feed it again"
                    ),
                    line(&["topics_out"]),
                ));
            }
            if topics_out.insert(topic.clone(), subject).is_some() {
                return Err(self.invalid(
                    key("topics_out"),
                    format!("lists {topic} twice"),
                    line(&["topics_out"]),
                ));
            }
        }
        if p.outbox.max_pending == 0 {
            return Err(self.invalid(
                key("outbox.max_pending"),
                "must be at least 1",
                line(&["outbox", "max_pending"]),
            ));
        }

        if let Some(column) = &p.version_column
            && column.trim().is_empty()
        {
            return Err(self.invalid(
                key("version_column"),
                "must name a column",
                line(&["version_column"]),
            ));
        }

        if let Some(dedup) = &p.dedup {
            if dedup.key.trim().is_empty() {
                return Err(self.invalid(
                    key("dedup.key"),
                    "must name a field",
                    line(&["dedup", "key"]),
                ));
            }
            if dedup.retention.is_zero() {
                return Err(self.invalid(
                    key("dedup.retention"),
                    "must be more than 0",
                    line(&["dedup", "retention"]),
                ));
            }
        }

        let b = &p.breaker;
        if !(b.failure_rate > 0.0 && b.failure_rate <= 1.0) {
            return Err(self.invalid(
                key("breaker.failure_rate"),
                "must be more than 0 and at most 1",
                line(&["breaker", "failure_rate"]),
            ));
        }
        if b.min_failures == 0 || b.min_failures > b.window {
            return Err(self.invalid(
                key("breaker.min_failures"),
                format!("must be from 1 to breaker.window ({})", b.window),
                line(&["breaker", "min_failures"]),
            ));
        }
        if b.pause.is_zero() || b.max_pause < b.pause {
            return Err(self.invalid(
                key("breaker.pause"),
                "must be more than 0 and at most breaker.max_pause",
                line(&["breaker", "pause"]),
            ));
        }

        Ok(PipelineConfig {
            name: p.name,
            topics,
            guest,
            batch_size: p.batch.size,
            linger: p.batch.linger,
            limits: GuestLimits {
                deadline: p.limits.deadline,
                max_memory: p.limits.max_memory,
            },
            guest_config: p.config,
            tables,
            columns: p.columns,
            version_column: p.version_column,
            dedup: p.dedup,
            subjects: p.subjects,
            state: StateLimits {
                max_key: p.state.max_key,
                max_value: p.state.max_value,
                max_batch: p.state.max_batch,
                max_partition: p.state.max_partition,
            },
            lookups: p.lookups,
            topics_out,
            outbox_max_pending: p.outbox.max_pending,
            breaker: p.breaker,
        })
    }

    /// Checks between pipelines: unique names, each topic routed once.
    fn check_across(&self, pipelines: &[PipelineConfig]) -> Checked<()> {
        let label = |i: usize| format!("pipelines[{i}] ({})", pipelines[i].name);
        let mut names: HashMap<&str, usize> = HashMap::new();
        let mut topics: HashMap<&str, usize> = HashMap::new();
        let mut guests: HashMap<String, usize> = HashMap::new();
        for (i, p) in pipelines.iter().enumerate() {
            let guest_name = crate::runtime::guest_name(&p.guest);
            match guests.get(&guest_name) {
                Some(&first) if pipelines[first].guest != p.guest => {
                    return Err(self.invalid(
                        format!("{}.guest", label(i)),
                        format!(
                            "{} has the guest name {guest_name:?}, as {} of {} does{}; a guest name (the file stem) must mean one file, since new versions are deployed by name",
                            p.guest.display(),
                            pipelines[first].guest.display(),
                            label(first),
                            at_line(self.at.pipeline(first, &["guest"]))
                        ),
                        self.at.pipeline(i, &["guest"]),
                    ));
                }
                Some(_) => {}
                None => {
                    guests.insert(guest_name, i);
                }
            }
            if let Some(&first) = names.get(p.name.as_str()) {
                return Err(self.invalid(
                    format!("pipelines[{i}].name"),
                    format!(
                        "{:?} is already the name of {}{}; pipeline names must be unique",
                        p.name,
                        label(first),
                        at_line(self.at.pipeline(first, &["name"]))
                    ),
                    self.at.pipeline(i, &["name"]),
                ));
            }
            names.insert(&p.name, i);
            for t in &p.topics {
                if let Some(&first) = topics.get(t.as_str()) {
                    let key = if p.topics.len() == 1 {
                        "topic"
                    } else {
                        "topics"
                    };
                    let first_key = if pipelines[first].topics.len() == 1 {
                        "topic"
                    } else {
                        "topics"
                    };
                    return Err(self.invalid(
                        format!("{}.{key}", label(i)),
                        format!(
                            "topic {t} is already routed to {}{}; a topic feeds one pipeline",
                            label(first),
                            at_line(self.at.pipeline_value(first, first_key, t))
                        ),
                        self.at.pipeline_value(i, key, t),
                    ));
                }
                topics.insert(t, i);
            }
        }
        Ok(())
    }
}

/// `path` if absolute, else `base/path`; made absolute without touching the file system.
fn resolve(base: &Path, path: &Path) -> PathBuf {
    let joined = base.join(path);
    std::path::absolute(&joined).unwrap_or(joined)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "\
kafka:
  brokers: localhost:9092
registry:
  url: http://localhost:8081
database:
  url: postgresql://localhost/weir
pipelines:
  - name: stocks
    topic: tickers.stocks
    guest: g.wasm
    tables: [ticks]
";

    fn parse_in(dir: &Path, text: &str) -> Result<Config, ConfigError> {
        parse(&dir.join("weir.yaml"), text)
    }

    #[test]
    fn minimal_file_gets_the_defaults() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("g.wasm"), b"").unwrap();
        let c = parse_in(dir.path(), MINIMAL).unwrap();
        assert_eq!(c.kafka.group_id, "weir");
        assert_eq!(c.http.listen, "127.0.0.1:9464".parse().unwrap());
        assert_eq!(c.runtime, RuntimeSettings::default());
        let p = &c.pipelines[0];
        assert_eq!(p.topics, ["tickers.stocks"]);
        assert_eq!(p.batch_size, 500);
        assert_eq!(p.linger, Duration::from_millis(100));
        assert_eq!(p.limits, GuestLimits::default());
        assert_eq!(p.tables, ["ticks"]);
        assert_eq!(p.state, StateLimits::default());
        assert!(p.lookups.is_empty());
        assert!(p.guest.is_absolute() && p.guest.ends_with("g.wasm"));
        assert_eq!(
            c.workers,
            std::thread::available_parallelism().unwrap().get()
        );
        let rc = c.runtime_config();
        assert_eq!(rc.max_wasm_stack, 512 << 10);
        let pool = rc.pooling.unwrap();
        assert_eq!((pool.instances, pool.max_memory), (64, 1 << 30));
    }

    #[test]
    fn database_tls_settings_fold_into_the_url_and_bad_ones_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("g.wasm"), b"").unwrap();
        let with = |extra: &str| {
            MINIMAL.replace(
                "  url: postgresql://localhost/weir\n",
                &format!("  url: postgresql://localhost/weir\n{extra}"),
            )
        };
        let c = parse_in(dir.path(), &with("  sslmode: require\n")).unwrap();
        assert_eq!(
            c.database.url,
            "postgresql://localhost/weir?sslmode=require"
        );

        let err = parse_in(
            dir.path(),
            &with("  sslmode: verify-full\n  sslrootcert: pg/ca.crt\n"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("database.url") && err.contains("ca.crt"),
            "{err}"
        );
        let err = parse_in(dir.path(), &with("  sslmode: sometimes\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("sslmode \"sometimes\""), "{err}");
    }

    #[test]
    fn workers_are_read_and_zero_is_refused_with_its_line() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("g.wasm"), b"").unwrap();
        let c = parse_in(dir.path(), &format!("workers: 3\n{MINIMAL}")).unwrap();
        assert_eq!(c.workers, 3);
        let err = parse_in(dir.path(), &format!("{MINIMAL}workers: 0\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("workers: must be at least 1"), "{err}");
        assert!(err.contains("(line 12)"), "{err}");
    }

    #[test]
    fn the_breaker_is_on_by_default_and_bad_settings_are_refused_with_their_key() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("g.wasm"), b"").unwrap();
        let defaults = parse_in(dir.path(), MINIMAL).unwrap().pipelines.remove(0);
        assert_eq!(defaults.breaker, BreakerConfig::default());
        assert!(defaults.breaker.enabled);
        let text = format!(
            "{MINIMAL}    breaker: {{failure_rate: 0.9, window: 20, min_failures: 5, pause: 2s, max_pause: 1m}}\n"
        );
        let b = parse_in(dir.path(), &text)
            .unwrap()
            .pipelines
            .remove(0)
            .breaker;
        assert_eq!(
            (
                b.failure_rate,
                b.window,
                b.min_failures,
                b.pause,
                b.max_pause
            ),
            (0.9, 20, 5, Duration::from_secs(2), Duration::from_secs(60))
        );
        for (bad, says) in [
            (
                "{failure_rate: 1.5}",
                "breaker.failure_rate: must be more than 0 and at most 1",
            ),
            ("{failure_rate: 0}", "breaker.failure_rate"),
            (
                "{window: 5, min_failures: 6}",
                "breaker.min_failures: must be from 1 to breaker.window (5)",
            ),
            (
                "{pause: 10m}",
                "breaker.pause: must be more than 0 and at most breaker.max_pause",
            ),
        ] {
            let err = parse_in(dir.path(), &format!("{MINIMAL}    breaker: {bad}\n"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn topics_out_take_a_topic_or_a_topic_and_its_subject_and_refuse_the_input() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("g.wasm"), b"").unwrap();
        let text = format!(
            "{MINIMAL}    topics_out: [ticks.clean, {{topic: audit, subject: audit-events}}]\n    outbox: {{max_pending: 50}}\n"
        );
        let p = parse_in(dir.path(), &text).unwrap().pipelines.remove(0);
        assert_eq!(
            p.topics_out,
            BTreeMap::from([
                ("audit".to_string(), "audit-events".to_string()),
                ("ticks.clean".to_string(), "ticks.clean-value".to_string()),
            ])
        );
        assert_eq!(p.outbox_max_pending, 50);
        let defaults = parse_in(dir.path(), MINIMAL).unwrap().pipelines.remove(0);
        assert!(defaults.topics_out.is_empty());
        assert_eq!(defaults.outbox_max_pending, DEFAULT_OUTBOX_MAX_PENDING);
        let err = parse_in(
            dir.path(),
            &format!("{MINIMAL}    topics_out: [tickers.stocks]\n"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("lists tickers.stocks, which the pipeline consumes"),
            "{err}"
        );
    }

    #[test]
    fn unknown_keys_name_the_path_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let text = MINIMAL.replace("    topic:", "    topik:");
        let err = parse_in(dir.path(), &text).unwrap_err().to_string();
        assert!(
            err.contains("weir.yaml: pipelines[0]: unknown field `topik`"),
            "{err}"
        );
        assert!(err.contains("at line 9"), "{err}");
    }
}
