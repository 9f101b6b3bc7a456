//! What every layer of the platform shares, written once: the event schema and its decoder, the
//! metric definitions and their merge arithmetic, bucket and cutover rules, the configuration,
//! and the plumbing to Postgres and Kafka. Keeping these here is what stops the batch and speed
//! paths from drifting apart.

pub mod alerts;
pub mod changelog;
pub mod commit_guard;
pub mod config;
pub mod coverage;
pub mod cutover;
pub mod db;
pub mod event;
pub mod failpoint;
pub mod fingerprint;
pub mod hll;
pub mod kafka;
pub mod liveness;
pub mod metrics;
pub mod observe;
pub mod positions;
pub mod profiles;
pub mod promotion;
pub mod quarantine;
pub mod query;
pub mod readiness;
pub mod registry;
pub mod retry;
pub mod run_lock;
pub mod run_requests;
pub mod service;
pub mod sessions;
pub mod sliding;
pub mod speed_state;
pub mod storage;
pub mod telemetry;
pub mod time;
pub mod validity;
pub mod versions;
pub mod view;
pub mod watermark;

pub use config::PlatformConfig;
pub use event::Event;
pub use metrics::{MetricCatalog, MetricDef, Partial};
