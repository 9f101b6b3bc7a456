//! `hll_sketch(value)`: the speed layer's HyperLogLog as a DataFusion aggregate, so that the
//! batch view's sketches are byte-for-byte the ones the speed layer would build from the same
//! events (same hash, same registers, same format).

use arrow::array::{ArrayRef, AsArray};
use arrow::compute::cast;
use arrow::datatypes::DataType;
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::{Accumulator, AggregateUDF, Volatility, create_udaf};
use datafusion::scalar::ScalarValue;
use shared_schema::hll::Hll;
use std::sync::Arc;

pub const NAME: &str = "hll_sketch";

pub fn hll_sketch() -> AggregateUDF {
    create_udaf(
        NAME,
        vec![DataType::Utf8],
        Arc::new(DataType::Binary),
        Volatility::Immutable,
        Arc::new(|_| Ok(Box::new(SketchAccumulator::default()))),
        Arc::new(vec![DataType::Binary]),
    )
}

#[derive(Debug, Default)]
struct SketchAccumulator {
    sketch: Option<Hll>,
}

impl SketchAccumulator {
    fn sketch(&mut self) -> &mut Hll {
        self.sketch.get_or_insert_with(Hll::default)
    }

    fn value(&self) -> ScalarValue {
        ScalarValue::Binary(self.sketch.as_ref().map(Hll::to_bytes))
    }
}

impl Accumulator for SketchAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let Some(values) = values.first() else {
            return Ok(());
        };
        let values = cast(values, &DataType::Utf8)?;
        let values = values.as_string::<i32>();
        for value in values.iter().flatten() {
            self.sketch().insert(value);
        }
        Ok(())
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let Some(states) = states.first() else {
            return Ok(());
        };
        let states = states.as_binary::<i32>();
        for bytes in states.iter().flatten() {
            let other =
                Hll::from_bytes(bytes).map_err(|e| DataFusionError::Execution(e.to_string()))?;
            self.sketch().merge(&other);
        }
        Ok(())
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        Ok(vec![self.value()])
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        Ok(self.value())
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self) + self.sketch.as_ref().map_or(0, Hll::heap_bytes)
    }
}
