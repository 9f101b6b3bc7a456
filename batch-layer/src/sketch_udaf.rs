//! `hll_sketch(value)`: the speed layer's HyperLogLog as a DataFusion aggregate, so that the
//! batch view's sketches are byte-for-byte the ones the speed layer would build from the same
//! events (same hash, same registers, same format).
//!
//! Grouped, it keeps one sketch per group and writes the emitted sketches into one buffer of
//! their size. Through DataFusion's adapter for plain accumulators, each group's 64 KiB of
//! registers went through a `ScalarValue` into an array grown by doubling: 9% of a full
//! recompute's profile (BENCHMARKS.md, issue 18).

use crate::aggregate_input::{first_argument, row_passes};
use arrow::array::{Array, ArrayRef, AsArray, BinaryArray, BooleanArray};
use arrow::buffer::{Buffer, NullBuffer, OffsetBuffer};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::utils::format_state_name;
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, EmitTo, GroupsAccumulator, Signature, Volatility,
};
use datafusion::scalar::ScalarValue;
use shared_schema::hll::Hll;
use std::sync::Arc;

pub const NAME: &str = "hll_sketch";

/// The aggregate, for `register_udaf` and for plans.
pub fn hll_sketch() -> AggregateUDF {
    AggregateUDF::from(HllSketch {
        signature: Signature::exact(vec![DataType::Utf8], Volatility::Immutable),
    })
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct HllSketch {
    signature: Signature,
}

impl AggregateUDFImpl for HllSketch {
    fn name(&self) -> &str {
        NAME
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Binary)
    }

    fn accumulator(&self, _: AccumulatorArgs<'_>) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(SketchAccumulator::default()))
    }

    fn state_fields(&self, args: StateFieldsArgs<'_>) -> Result<Vec<FieldRef>> {
        Ok(vec![Arc::new(Field::new(
            format_state_name(args.name, "sketch"),
            DataType::Binary,
            true,
        ))])
    }

    fn groups_accumulator_supported(&self, _: AccumulatorArgs<'_>) -> bool {
        true
    }

    fn create_groups_accumulator(
        &self,
        _: AccumulatorArgs<'_>,
    ) -> Result<Box<dyn GroupsAccumulator>> {
        Ok(Box::new(GroupSketches::default()))
    }
}

/// Each group's sketch; `None` until a value arrives (the aggregate of no values is null).
#[derive(Debug, Default)]
struct GroupSketches {
    groups: Vec<Option<Hll>>,
    /// Register and hash bytes over all groups, so `size` is not a walk over every group.
    held: usize,
}

impl GroupSketches {
    fn grow(&mut self, total_num_groups: usize) {
        if self.groups.len() < total_num_groups {
            self.groups.resize_with(total_num_groups, || None);
        }
    }

    /// Applies `change` to the sketch of `group`, keeping `held` up to date.
    fn change(&mut self, group: usize, change: impl FnOnce(&mut Hll)) {
        let sketch = self.groups[group].get_or_insert_with(Hll::default);
        let before = sketch.heap_bytes();
        change(sketch);
        self.held = self.held + sketch.heap_bytes() - before;
    }

    /// The sketches of `emit_to`, encoded into one binary array.
    fn emit(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        let taken = emit_to.take_needed(&mut self.groups);
        self.held -= taken.iter().flatten().map(Hll::heap_bytes).sum::<usize>();
        encode(&taken)
    }
}

impl GroupsAccumulator for GroupSketches {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        self.grow(total_num_groups);
        let values = cast(first(values)?, &DataType::Utf8)?;
        let values = values.as_string::<i32>();
        for (row, &group) in group_indices.iter().enumerate() {
            if row_passes(opt_filter, row) && values.is_valid(row) {
                let value = values.value(row);
                self.change(group, |sketch| sketch.insert(value));
            }
        }
        Ok(())
    }

    fn merge_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        total_num_groups: usize,
    ) -> Result<()> {
        self.grow(total_num_groups);
        let states = first(values)?.as_binary::<i32>();
        for (row, &group) in group_indices.iter().enumerate() {
            if states.is_valid(row) {
                let other = decode(states.value(row))?;
                self.change(group, |sketch| sketch.merge(&other));
            }
        }
        Ok(())
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        self.emit(emit_to)
    }

    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        Ok(vec![self.emit(emit_to)?])
    }

    /// Each row as its own group: a sketch of its one value, or null.
    fn convert_to_state(
        &self,
        values: &[ArrayRef],
        opt_filter: Option<&BooleanArray>,
    ) -> Result<Vec<ArrayRef>> {
        let values = cast(first(values)?, &DataType::Utf8)?;
        let values = values.as_string::<i32>();
        let sketches: Vec<Option<Hll>> = (0..values.len())
            .map(|row| {
                (row_passes(opt_filter, row) && values.is_valid(row)).then(|| {
                    let mut sketch = Hll::default();
                    sketch.insert(values.value(row));
                    sketch
                })
            })
            .collect();
        Ok(vec![encode(&sketches)?])
    }

    fn size(&self) -> usize {
        self.groups.capacity() * std::mem::size_of::<Option<Hll>>() + self.held
    }
}

/// `sketches` as a binary array, null where a group had no value, written into buffers of
/// their final size.
fn encode(sketches: &[Option<Hll>]) -> Result<ArrayRef> {
    let bytes = sketches.iter().flatten().map(Hll::encoded_len_bound).sum();
    let mut values = Vec::with_capacity(bytes);
    let mut offsets = Vec::with_capacity(sketches.len() + 1);
    offsets.push(0i32);
    for sketch in sketches {
        if let Some(sketch) = sketch {
            sketch.write_bytes(&mut values);
        }
        let end = i32::try_from(values.len()).map_err(|_| {
            DataFusionError::Execution(format!(
                "{NAME}: the sketches of one batch of {} groups exceed 2 GiB",
                sketches.len()
            ))
        })?;
        offsets.push(end);
    }
    let nulls = sketches
        .iter()
        .any(Option::is_none)
        .then(|| sketches.iter().map(Option::is_some).collect::<NullBuffer>());
    Ok(Arc::new(BinaryArray::new(
        OffsetBuffer::new(offsets.into()),
        Buffer::from_vec(values),
        nulls,
    )))
}

fn decode(bytes: &[u8]) -> Result<Hll> {
    Hll::from_bytes(bytes).map_err(|e| DataFusionError::Execution(e.to_string()))
}

fn first(values: &[ArrayRef]) -> Result<&ArrayRef> {
    first_argument(NAME, values)
}

/// One sketch, for plans that aggregate without grouping.
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
        let values = cast(first(values)?, &DataType::Utf8)?;
        let values = values.as_string::<i32>();
        for value in values.iter().flatten() {
            self.sketch().insert(value);
        }
        Ok(())
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let states = first(states)?.as_binary::<i32>();
        for bytes in states.iter().flatten() {
            let other = decode(bytes)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{RecordBatch, StringArray};
    use arrow::datatypes::Schema;
    use datafusion::prelude::{SessionConfig, SessionContext};
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    /// Each group's sketch bytes as the SQL aggregate gives them, over `rows` (group, value)
    /// split into batches of `batch_size` over `partitions` partitions.
    fn sketches_by_sql(
        rows: &[(String, Option<String>)],
        partitions: usize,
        batch_size: usize,
    ) -> BTreeMap<String, Option<Vec<u8>>> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(async {
            let config = SessionConfig::new()
                .with_target_partitions(partitions)
                .with_batch_size(batch_size);
            let ctx = SessionContext::new_with_config(config);
            ctx.register_udaf(hll_sketch());
            let schema = Arc::new(Schema::new(vec![
                Field::new("g", DataType::Utf8, false),
                Field::new("v", DataType::Utf8, true),
            ]));
            let batch = RecordBatch::try_new(
                schema,
                vec![
                    Arc::new(StringArray::from_iter_values(rows.iter().map(|r| &r.0))),
                    Arc::new(StringArray::from_iter(rows.iter().map(|r| r.1.as_deref()))),
                ],
            )
            .unwrap();
            let mut chunks: Vec<Vec<RecordBatch>> = (0..batch.num_rows())
                .step_by(batch_size)
                .map(|at| vec![batch.slice(at, batch_size.min(batch.num_rows() - at))])
                .collect();
            if chunks.is_empty() {
                chunks.push(Vec::new());
            }
            let table = datafusion::datasource::MemTable::try_new(batch.schema(), chunks).unwrap();
            ctx.register_table("t", Arc::new(table)).unwrap();
            let sql = "SELECT g, hll_sketch(v) AS s FROM t GROUP BY g";
            let mut out = BTreeMap::new();
            for batch in ctx.sql(sql).await.unwrap().collect().await.unwrap() {
                let groups = batch.column(0).as_string::<i32>();
                let sketches = batch.column(1).as_binary::<i32>();
                for row in 0..batch.num_rows() {
                    let sketch = sketches.is_valid(row).then(|| sketches.value(row).to_vec());
                    out.insert(groups.value(row).to_string(), sketch);
                }
            }
            out
        })
    }

    /// The same, one `Hll` per group as the speed layer builds it.
    fn sketches_directly(rows: &[(String, Option<String>)]) -> BTreeMap<String, Option<Vec<u8>>> {
        let mut sketches: BTreeMap<String, Option<Hll>> = BTreeMap::new();
        for (group, value) in rows {
            let sketch = sketches.entry(group.clone()).or_default();
            if let Some(value) = value {
                sketch.get_or_insert_with(Hll::default).insert(value);
            }
        }
        sketches
            .into_iter()
            .map(|(group, sketch)| (group, sketch.as_ref().map(Hll::to_bytes)))
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        /// Sparse and dense sketches alike (a group of more than `SPARSE_MAX` values goes
        /// dense), through partial and final aggregation or one, in any batches.
        #[test]
        fn grouped_sketches_are_the_speed_layers_bytes(
            rows in prop::collection::vec((0..4u8, prop::option::weighted(0.9, 0..3000u32)), 0..6000),
            partitions in 1..4usize,
            batch_size in 1..2000usize,
        ) {
            let rows: Vec<(String, Option<String>)> = rows
                .into_iter()
                .map(|(g, v)| (format!("g{g}"), v.map(|v| format!("u{v}"))))
                .collect();
            prop_assert_eq!(sketches_by_sql(&rows, partitions, batch_size), sketches_directly(&rows));
        }
    }
}
