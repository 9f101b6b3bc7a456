//! `id_hash(text)`: a 64-bit XXH3 hash of a string, so the dedupe can find the few repeated
//! event ids by grouping eight-byte integers instead of every id's bytes (`view_plan`).
//!
//! XXH3 is a specified algorithm with a fixed seed: every executor of a Ballista cluster
//! computes the same hash for the same id, whatever its build or CPU. A hash is only ever used
//! to pick candidates that are then compared exactly, so a collision costs time, never a count.

use arrow::array::{Array, ArrayRef, AsArray, UInt64Array};
use arrow::datatypes::DataType;
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use std::sync::Arc;
use twox_hash::XxHash3_64;

pub const NAME: &str = "id_hash";

/// The function, for `register_udf` and for plans.
pub fn id_hash() -> ScalarUDF {
    ScalarUDF::from(IdHash {
        signature: Signature::string(1, Volatility::Immutable),
    })
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct IdHash {
    signature: Signature,
}

/// The hash of one id.
pub fn hash_of(id: &str) -> u64 {
    XxHash3_64::oneshot(id.as_bytes())
}

fn hash_all<'a>(ids: impl Iterator<Item = Option<&'a str>>) -> ArrayRef {
    Arc::new(ids.map(|id| id.map(hash_of)).collect::<UInt64Array>())
}

impl ScalarUDFImpl for IdHash {
    fn name(&self) -> &str {
        NAME
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::UInt64)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let [ids] = args.args.as_slice() else {
            return Err(DataFusionError::Internal(format!(
                "{NAME} takes one argument, got {}",
                args.args.len()
            )));
        };
        let ids = ids.to_array(args.number_rows)?;
        let hashes = match ids.data_type() {
            DataType::Utf8 => hash_all(ids.as_string::<i32>().iter()),
            DataType::LargeUtf8 => hash_all(ids.as_string::<i64>().iter()),
            DataType::Utf8View => hash_all(ids.as_string_view().iter()),
            other => {
                return Err(DataFusionError::Plan(format!(
                    "{NAME} takes text, got {other}"
                )));
            }
        };
        Ok(ColumnarValue::Array(hashes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::SessionContext;

    #[test]
    fn the_hash_is_xxh3_with_seed_zero_for_every_string_type() {
        // XXH3-64 of the empty input with seed 0, from the algorithm's specification: a
        // changed hash function would split a cluster's executors.
        assert_eq!(hash_of(""), 0x2D06800538D394C2);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let hashes = runtime.block_on(async {
            let ctx = SessionContext::new();
            ctx.register_udf(id_hash());
            let sql = "SELECT id_hash(a), id_hash(arrow_cast(a, 'LargeUtf8')), \
                       id_hash(arrow_cast(a, 'Utf8View')) FROM (VALUES ('b1'), (NULL)) AS v(a)";
            ctx.sql(sql).await.unwrap().collect().await.unwrap()
        });
        let batch = &hashes[0];
        for column in batch.columns() {
            let column = column.as_primitive::<arrow::datatypes::UInt64Type>();
            assert_eq!(column.value(0), hash_of("b1"));
            assert!(column.is_null(1));
        }
    }
}
