//! The platform's I/O, shared by the layers: the Kafka event source and the profile changelog
//! reader, what Postgres keeps for them (positions, quarantine, the definitions registry,
//! coverage, liveness, speed state, view versions), the lake's object storage and view files,
//! Prometheus metrics and `/readyz`, and service bootstrap. The rules they apply live in the
//! pure core, `shared-schema`.

pub mod changelog;
pub mod commit_guard;
pub mod coverage;
pub mod db;
pub mod failpoint;
pub mod kafka;
pub mod liveness;
pub mod observe;
pub mod positions;
pub mod promotion;
pub mod quarantine;
pub mod readiness;
pub mod registry;
pub mod retry;
pub mod run_lock;
pub mod run_requests;
pub mod service;
pub mod speed_state;
pub mod storage;
pub mod telemetry;
pub mod versions;
pub mod view;
pub mod view_segments;
