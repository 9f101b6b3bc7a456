//! The end-to-end harness: real binaries against the real Postgres and broker that
//! `scripts/test.sh` starts, plus the pieces the demo event generator shares with the tests.
//!
//! Every scenario gets its own database, topic and lake directory, so scenarios can run side by
//! side on one pair of servers.

mod admin;
mod answers;
mod cluster;
pub mod compose_file;
pub mod grafana;
mod kafka;
mod paths;
mod platform;
mod service;
pub mod truth;

pub use admin::*;
pub use answers::*;
pub use cluster::*;
pub use kafka::*;
pub use paths::*;
pub use platform::*;
pub use service::*;
