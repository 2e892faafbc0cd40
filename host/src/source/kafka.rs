//! Kafka client settings shared by every client weir makes: the consumer, the metadata,
//! lag and start-up clients, the relay's and ingest's producers, `weir tail`.

use std::fmt;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;

/// How to reach Kafka: the bootstrap servers, and the librdkafka properties every client
/// gets (`security.protocol`, `ssl.*`, `sasl.*`, timeouts…: `kafka.properties`).
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Kafka {
    /// Bootstrap servers, `host:port[,host:port…]`.
    pub brokers: String,
    /// librdkafka properties, applied after weir's defaults.
    pub properties: Vec<(String, String)>,
}

impl Kafka {
    /// `brokers` with no extra properties.
    pub fn new(brokers: &str) -> Self {
        Self {
            brokers: brokers.to_string(),
            properties: Vec::new(),
        }
    }

    /// `brokers` with `properties`.
    pub fn with_properties<K: ToString, V: ToString>(
        brokers: &str,
        properties: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        Self {
            brokers: brokers.to_string(),
            properties: properties
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    /// A client config with weir's defaults, then the properties.
    pub fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set("client.id", "weir")
            .set("socket.keepalive.enable", "true")
            // librdkafka logs through its own logger; keep it quiet unless asked.
            .set("log_level", "3");
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c
    }
}

impl From<&str> for Kafka {
    fn from(brokers: &str) -> Self {
        Self::new(brokers)
    }
}

impl From<&String> for Kafka {
    fn from(brokers: &String) -> Self {
        Self::new(brokers)
    }
}

impl From<&Kafka> for Kafka {
    fn from(kafka: &Kafka) -> Self {
        kafka.clone()
    }
}

impl fmt::Display for Kafka {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.brokers)
    }
}

impl fmt::Debug for Kafka {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kafka")
            .field("brokers", &self.brokers)
            .field("properties", &Redacted(&self.properties))
            .finish()
    }
}

/// Properties with the values of secret ones (passwords, keys, secrets, tokens) hidden.
pub struct Redacted<'a>(pub &'a [(String, String)]);

impl fmt::Debug for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = f.debug_map();
        for (k, v) in self.0 {
            if is_secret(k) {
                map.entry(k, &"<redacted>");
            } else {
                map.entry(k, v);
            }
        }
        map.finish()
    }
}

/// Whether a librdkafka property holds a secret (`sasl.password`, `ssl.key.password`,
/// `ssl.key.pem`, `sasl.oauthbearer.client.secret`, `sasl.jaas.config`…).
pub fn is_secret(key: &str) -> bool {
    [
        "password",
        "secret",
        "key.pem",
        "token",
        "jaas",
        "sasl.oauthbearer.config",
    ]
    .iter()
    .any(|word| key.contains(word))
}

/// A client context that keeps the last error librdkafka reported: when a call fails with
/// only "broker transport failure", this says why (an SSL handshake that failed on the
/// certificate, a SASL authentication refused).
#[derive(Default)]
pub struct LastError(std::sync::Mutex<Option<String>>);

impl LastError {
    /// The last error reported, if any.
    pub fn last(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl rdkafka::ClientContext for LastError {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        use rdkafka::config::RDKafkaLogLevel as L;
        tracing::debug!(?level, fac, message, "librdkafka");
        if matches!(level, L::Emerg | L::Alert | L::Critical | L::Error) {
            *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(message.to_string());
        }
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        tracing::debug!(%error, reason, "librdkafka reported an error");
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason.to_string());
    }
}

impl rdkafka::consumer::ConsumerContext for LastError {}

/// A client config for `brokers` with weir's defaults and no extra properties.
pub fn client_config(brokers: &str) -> ClientConfig {
    Kafka::new(brokers).client_config()
}

/// Creates the topics that do not exist yet, with `partitions` partitions each.
pub async fn ensure_topics(
    kafka: impl Into<Kafka>,
    topics: &[String],
    partitions: i32,
) -> anyhow::Result<()> {
    let kafka = kafka.into();
    let brokers = &kafka.brokers;
    let admin: AdminClient<DefaultClientContext> = kafka.client_config().create()?;
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(1)))
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for result in admin.create_topics(&new, &options).await? {
        match result {
            Ok(topic) => tracing::info!(topic, partitions, "Created topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => anyhow::bail!("cannot create topic {topic} on {brokers}: {code}"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_reach_the_client_and_secrets_stay_out_of_debug() {
        let kafka = Kafka::with_properties(
            "b:9093",
            [
                ("security.protocol", "SASL_SSL"),
                ("sasl.username", "weir"),
                ("sasl.password", "hunter2"),
                ("ssl.key.password", "k3y"),
            ],
        );
        let c = kafka.client_config();
        assert_eq!(c.get("bootstrap.servers"), Some("b:9093"));
        assert_eq!(c.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(c.get("sasl.password"), Some("hunter2"));
        let debug = format!("{kafka:?}");
        assert!(
            debug.contains("SASL_SSL") && debug.contains("\"weir\""),
            "{debug}"
        );
        assert!(
            !debug.contains("hunter2") && !debug.contains("k3y"),
            "{debug}"
        );
        assert_eq!(kafka.to_string(), "b:9093");
    }
}
