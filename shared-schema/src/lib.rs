//! What every layer of the platform shares, written once: the event schema and its decoder, the
//! metric definitions and their merge arithmetic, bucket and cutover rules, the query merge,
//! sketches, sessions, watermarks and the configuration. Pure: no Kafka, Postgres, object
//! storage, Prometheus or HTTP here (that is `shared-io`), so every rule can be tested, and
//! read, without a running service. Keeping these here is what stops the batch and speed paths
//! from drifting apart.

pub mod alerts;
pub mod catalog;
pub mod config;
pub mod config_reference;
pub mod cutover;
pub mod definitions;
pub mod event;
pub mod fingerprint;
pub mod hll;
pub mod kafka_access;
pub mod liveness;
pub mod metrics;
pub mod profiles;
pub mod query;
pub mod series;
pub mod sessions;
pub mod sliding;
pub mod time;
pub mod validity;
pub mod varint;
pub mod watermark;

pub use catalog::MetricCatalog;
pub use config::PlatformConfig;
pub use event::Event;
pub use metrics::{MetricDef, Partial};
