//! The serving layer: an HTTP API that answers every query from one consistent snapshot of the
//! cutover T, the promoted batch view and the speed layer's rows, merged by
//! `shared_schema::query::assemble`, which enforces the split.

pub mod alerts;
mod api;
mod dashboard;
mod divergence;
mod freshness;
mod snapshot;

pub use api::{AppState, Group, MergedPoint, merged_points, router};
pub use snapshot::ViewCache;
