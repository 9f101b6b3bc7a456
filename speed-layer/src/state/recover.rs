//! Starting from the log: the horizons below which nothing is kept, and loading the state.

use super::SpeedState;
use super::store::{self, LoadStateError};
use crate::SpeedLayer;
use chrono::{DateTime, Utc};
use shared_schema::time::Millis;
use std::time::Instant;

/// Below `ids`, a duplicate may be counted again: its bucket lies before the cutover, which
/// the batch view answers. Below `sessions`, no session start at or after `ids` depends on an
/// event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Horizons {
    pub ids: Millis,
    pub sessions: Millis,
}

impl Horizons {
    /// Nothing promoted yet: everything is kept.
    pub(crate) const NONE: Horizons = Horizons {
        ids: Millis::MIN,
        sessions: Millis::MIN,
    };
}

impl SpeedLayer {
    /// The horizons for a cutover `T` (none: nothing is promoted): T minus the grace period,
    /// and that minus the longest session gap.
    pub(crate) fn horizons(&self, cutover: Option<DateTime<Utc>>) -> Horizons {
        let Some(cutover) = cutover else {
            return Horizons::NONE;
        };
        let ids = cutover.timestamp_millis() - self.config.speed.retention_grace.millis();
        Horizons {
            ids,
            sessions: ids - self.catalog.max_session_gap(),
        }
    }

    /// Builds the state from the id log. With `import_legacy`, first moves an earlier version's
    /// rows into it (in `run` only: a replay builds a log of its own from the bus). The import
    /// takes the log head, so it must not run while the caller holds it.
    pub(crate) async fn load_state(
        &self,
        import_legacy: bool,
    ) -> Result<SpeedState, LoadStateError> {
        let started = Instant::now();
        let live = self
            .ownership
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .fencing;
        let imported = if import_legacy && live {
            super::legacy::import(&self.pool).await?
        } else {
            0
        };
        let cutover: Option<DateTime<Utc>> =
            sqlx::query_scalar("SELECT cutover FROM serving_state WHERE id = 1")
                .fetch_optional(&self.pool)
                .await?
                .flatten();
        let horizons = self.horizons(cutover);
        let state = store::load(&self.pool, horizons.ids, horizons.sessions).await?;
        tracing::info!(
            ids = state.ids(),
            bytes = state.bytes(),
            imported,
            seconds = started.elapsed().as_secs_f64(),
            "loaded the speed state from the id log"
        );
        Ok(state)
    }
}
