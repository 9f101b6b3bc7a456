//! How every Kafka client of the platform reaches the cluster: the bootstrap servers and the
//! librdkafka properties of `[kafka.properties]` (SASL, TLS, tuning), as Pinot passes its
//! `stream.kafka.consumer.prop.*` on. Pure data here; `shared_io::kafka` builds the clients.

use std::collections::BTreeMap;
use std::fmt;

/// Properties the platform sets itself because its guarantees depend on them; setting one in
/// `[kafka.properties]` is refused at start, naming the key to use instead.
const RESERVED: [(&str, &str); 8] = [
    ("bootstrap.servers", "KAFKA_BROKERS (kafka_brokers)"),
    (
        "group.id",
        "speed.group_id, lander.group_id or cdc.group_id",
    ),
    ("session.timeout.ms", "speed.session_timeout"),
    (
        "enable.auto.commit",
        "nothing: offsets are kept in Postgres",
    ),
    (
        "enable.auto.offset.store",
        "nothing: offsets are kept in Postgres",
    ),
    (
        "enable.partition.eof",
        "nothing: the consumers need partition ends",
    ),
    ("auto.offset.reset", "nothing: positions come from Postgres"),
    ("statistics.interval.ms", "nothing: the lag metrics need it"),
];

/// A property of `[kafka.properties]` the platform sets itself.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("kafka.properties.{key}: the platform sets this property itself; use {instead}")]
pub struct ReservedProperty {
    pub key: String,
    pub instead: &'static str,
}

/// librdkafka properties by name, as `[kafka.properties]` holds them. Its `Debug` prints no
/// value that may be a secret (`sasl.password`, `ssl.key.password`, ...), so neither the
/// configuration nor a client's access can log one.
#[derive(Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct ClientProperties(pub BTreeMap<String, String>);

impl fmt::Debug for ClientProperties {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(k, v)| {
                let secret = ["password", "secret", "token", "key.pem", "jaas"]
                    .iter()
                    .any(|s| k.to_lowercase().contains(s));
                (k, if secret { "<redacted>" } else { v.as_str() })
            }))
            .finish()
    }
}

/// Where and how to reach Kafka: what every client (consumer, producer, admin) is created from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KafkaAccess {
    pub brokers: String,
    /// librdkafka properties by their dotted names, applied after the platform's own tuning.
    pub properties: ClientProperties,
}

impl KafkaAccess {
    /// `brokers` with no further properties: tests and tools on a plain local broker.
    pub fn plain(brokers: &str) -> Self {
        KafkaAccess {
            brokers: brokers.to_string(),
            properties: ClientProperties::default(),
        }
    }

    /// From the configured servers and properties. A key may be written with underscores for
    /// dots (`sasl_mechanism`), as an environment variable must be: librdkafka's property names
    /// hold no underscores. The properties the platform sets itself are left out; loading the
    /// configuration refuses them first (see [`KafkaAccess::check`]).
    pub fn new(brokers: &str, properties: &ClientProperties) -> Self {
        KafkaAccess {
            brokers: brokers.to_string(),
            properties: ClientProperties(
                properties
                    .0
                    .iter()
                    .map(|(key, value)| (normalize(key), value.clone()))
                    .filter(|(key, _)| reserved(key).is_none())
                    .collect(),
            ),
        }
    }

    /// Refuses a property the platform sets itself, naming the key to use instead.
    pub fn check(properties: &ClientProperties) -> Result<(), ReservedProperty> {
        for key in properties.0.keys().map(|k| normalize(k)) {
            if let Some(instead) = reserved(&key) {
                return Err(ReservedProperty { key, instead });
            }
        }
        Ok(())
    }
}

fn normalize(key: &str) -> String {
    key.trim().to_lowercase().replace('_', ".")
}

fn reserved(key: &str) -> Option<&'static str> {
    RESERVED
        .iter()
        .find(|(reserved, _)| *reserved == key)
        .map(|(_, instead)| *instead)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(pairs: &[(&str, &str)]) -> ClientProperties {
        ClientProperties(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn underscores_stand_for_dots_as_in_environment_variables() {
        let access = KafkaAccess::new(
            "b:9092",
            &props(&[
                ("SASL_MECHANISM", "SCRAM-SHA-512"),
                ("security.protocol", "SASL_SSL"),
            ]),
        );
        assert_eq!(
            access.properties,
            props(&[
                ("sasl.mechanism", "SCRAM-SHA-512"),
                ("security.protocol", "SASL_SSL")
            ])
        );
    }

    #[test]
    fn the_platforms_own_properties_are_refused_naming_the_key_to_use() {
        let mine = props(&[("group_id", "mine"), ("client.id", "c")]);
        let err = KafkaAccess::check(&mine).unwrap_err();
        assert_eq!(err.key, "group.id");
        assert!(err.to_string().contains("speed.group_id"), "{err}");
        assert!(KafkaAccess::check(&props(&[("bootstrap.servers", "x")])).is_err());
        assert!(KafkaAccess::check(&props(&[("client.id", "c")])).is_ok());
        // Built without the check, a reserved key is left out rather than applied.
        assert_eq!(
            KafkaAccess::new("b:9092", &mine).properties,
            props(&[("client.id", "c")])
        );
    }

    #[test]
    fn secrets_are_not_printed() {
        let access = KafkaAccess::new(
            "b:9092",
            &props(&[("sasl.password", "hunter2"), ("sasl.username", "alice")]),
        );
        let shown = format!("{access:?}");
        assert!(
            !shown.contains("hunter2") && shown.contains("alice"),
            "{shown}"
        );
        // Nor the configuration holding them, as the environment spells the key.
        let mut config = crate::config::PlatformConfig::default();
        config.kafka.properties = props(&[("SASL_PASSWORD", "hunter2")]);
        let shown = format!("{config:?}");
        assert!(
            !shown.contains("hunter2") && shown.contains("SASL_PASSWORD"),
            "{shown}"
        );
    }
}
