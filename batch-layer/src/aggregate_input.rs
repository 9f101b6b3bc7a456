//! What the platform's aggregates (`session_starts`, `hll_sketch`) read from the arrays
//! DataFusion hands them: their one argument, and whether a row passes the aggregate's filter.

use arrow::array::{Array, ArrayRef, BooleanArray};
use datafusion::error::{DataFusionError, Result};

/// The first argument of aggregate `name`; an error, not a panic, if it was called without.
pub(crate) fn first_argument<'a>(name: &str, values: &'a [ArrayRef]) -> Result<&'a ArrayRef> {
    values
        .first()
        .ok_or_else(|| DataFusionError::Internal(format!("{name} called without arguments")))
}

/// Whether `row` counts under the aggregate's `FILTER (WHERE ...)`: no filter, or true there.
pub(crate) fn row_passes(opt_filter: Option<&BooleanArray>, row: usize) -> bool {
    opt_filter.is_none_or(|f| f.is_valid(row) && f.value(row))
}
