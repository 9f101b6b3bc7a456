//! The serving layer: an HTTP API that answers every query from one consistent snapshot of the
//! cutover T, the promoted batch view and the speed layer's rows, merged by
//! `shared_schema::query::assemble`, which enforces the split.

mod admin;
pub mod alert_delivery;
mod alert_lifecycle;
mod alert_list;
pub mod alerts;
mod answer_cache;
mod auth;
mod cors;
mod dashboard;
mod divergence;
mod divergence_alert;
mod encoding;
mod error;
mod freshness;
mod generation_cache;
mod health;
pub mod http_metrics;
#[cfg(test)]
mod http_tests;
mod interval;
mod limits;
mod metric_list;
mod metric_query;
pub mod openapi;
pub mod reader;
mod router;
mod snapshot;
mod stall_alert;
mod state;
mod state_changes;
mod versions;
mod view_cache;

pub use metric_query::{PointsError, merged_points};
pub use router::router;
pub use shared_schema::query::{Group, MergedPoint};
pub use state::AppState;
pub use state_changes::StateGeneration;
pub use view_cache::{BatchView, ViewCache};
