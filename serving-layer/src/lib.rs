//! The serving layer: an HTTP API that answers every query from one consistent snapshot of the
//! cutover T, the promoted batch view and the speed layer's rows, merged by
//! `shared_schema::query::assemble`, which enforces the split.

mod admin;
pub mod alerts;
mod answer_cache;
mod api;
mod auth;
mod cors;
mod dashboard;
mod divergence;
mod encoding;
mod freshness;
mod generation_cache;
pub mod http_metrics;
#[cfg(test)]
mod http_tests;
mod limits;
pub mod openapi;
pub mod reader;
mod snapshot;
mod stall_alert;
mod state_changes;
mod versions;

pub use api::{AppState, Group, MergedPoint, merged_points, router};
pub use snapshot::ViewCache;
pub use state_changes::StateGeneration;
