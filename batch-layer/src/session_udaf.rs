//! `session_starts(event_time_ms, gap_ms)`: the session starts of one key's events, as an
//! aggregate grouped by the key. It applies `shared_schema::sessions::starts`, the rule the speed
//! layer applies, to each key's times sorted on their own.
//!
//! It replaces a `lag()` window, which sorted every event of the lake by (key, time) in one
//! global sort: the batch run's largest cost after the dedupe (BENCHMARKS.md, issue 18). Grouping
//! hashes the key instead of comparing it, and each key's few times sort in cache. Its state
//! between the partial and final aggregation is each key's times, unsorted.

use crate::aggregate_input::{first_argument, row_passes};
use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Int64Array, LargeListArray};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::{DataType, Field, FieldRef, Int64Type};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::utils::format_state_name;
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, EmitTo, GroupsAccumulator, Signature, Volatility,
};
use datafusion::physical_expr::expressions::Literal;
use datafusion::scalar::ScalarValue;
use shared_schema::sessions::starts;
use shared_schema::time::Millis;
use std::sync::Arc;

pub const NAME: &str = "session_starts";

/// The aggregate, for `register_udaf` and for plans.
pub fn session_starts() -> AggregateUDF {
    AggregateUDF::from(SessionStarts {
        signature: Signature::exact(
            vec![DataType::Int64, DataType::Int64],
            Volatility::Immutable,
        ),
    })
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct SessionStarts {
    signature: Signature,
}

/// A list of event times: the state and the result.
fn times_type() -> DataType {
    DataType::LargeList(Arc::new(Field::new_list_field(DataType::Int64, true)))
}

/// The gap, which must be a constant: one session rule per plan.
fn gap_of(args: &AccumulatorArgs<'_>) -> Result<Millis> {
    let constant = args
        .exprs
        .get(1)
        .and_then(|e| e.downcast_ref::<Literal>())
        .map(Literal::value);
    match constant {
        Some(ScalarValue::Int64(Some(gap))) if *gap > 0 => Ok(*gap),
        other => Err(DataFusionError::Plan(format!(
            "{NAME}: the gap must be a positive BIGINT constant, got {other:?}"
        ))),
    }
}

impl AggregateUDFImpl for SessionStarts {
    fn name(&self) -> &str {
        NAME
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(times_type())
    }

    fn accumulator(&self, args: AccumulatorArgs<'_>) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(KeyTimes {
            gap: gap_of(&args)?,
            times: Vec::new(),
        }))
    }

    fn state_fields(&self, args: StateFieldsArgs<'_>) -> Result<Vec<FieldRef>> {
        Ok(vec![Arc::new(Field::new(
            format_state_name(args.name, "times"),
            times_type(),
            true,
        ))])
    }

    fn groups_accumulator_supported(&self, _: AccumulatorArgs<'_>) -> bool {
        true
    }

    fn create_groups_accumulator(
        &self,
        args: AccumulatorArgs<'_>,
    ) -> Result<Box<dyn GroupsAccumulator>> {
        Ok(Box::new(GroupTimes {
            gap: gap_of(&args)?,
            groups: Vec::new(),
            held: 0,
        }))
    }
}

/// Each group's times, pushed as they come.
#[derive(Debug)]
struct GroupTimes {
    gap: Millis,
    groups: Vec<Vec<Millis>>,
    /// Times held over all groups, so `size` is not a walk over every group at every batch.
    held: usize,
}

impl GroupTimes {
    fn grow(&mut self, total_num_groups: usize) {
        if self.groups.len() < total_num_groups {
            self.groups.resize_with(total_num_groups, Vec::new);
        }
    }

    fn take(&mut self, emit_to: EmitTo) -> Vec<Vec<Millis>> {
        let taken = emit_to.take_needed(&mut self.groups);
        self.held -= taken.iter().map(Vec::len).sum::<usize>();
        taken
    }
}

impl GroupsAccumulator for GroupTimes {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        self.grow(total_num_groups);
        let times = first(values)?.as_primitive::<Int64Type>();
        for (row, &group) in group_indices.iter().enumerate() {
            let passes = row_passes(opt_filter, row);
            if passes && times.is_valid(row) {
                self.groups[group].push(times.value(row));
                self.held += 1;
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
        let lists = first(values)?.as_list::<i64>();
        let offsets = lists.value_offsets();
        let flat = lists.values().as_primitive::<Int64Type>();
        for (row, &group) in group_indices.iter().enumerate() {
            if lists.is_valid(row) {
                let (from, to) = (offsets[row] as usize, offsets[row + 1] as usize);
                let times = &mut self.groups[group];
                let before = times.len();
                extend_valid(times, flat, from..to);
                self.held += times.len() - before;
            }
        }
        Ok(())
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        let gap = self.gap;
        let groups = self.take(emit_to);
        Ok(list_of(groups.into_iter().map(|mut times| {
            times.sort_unstable();
            starts(&times, gap)
        })))
    }

    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        Ok(vec![list_of(self.take(emit_to))])
    }

    /// Each row as its own group: a list of its one time, or none.
    fn convert_to_state(
        &self,
        values: &[ArrayRef],
        opt_filter: Option<&BooleanArray>,
    ) -> Result<Vec<ArrayRef>> {
        let times = first(values)?.as_primitive::<Int64Type>();
        Ok(vec![list_of((0..times.len()).map(|row| {
            let passes = row_passes(opt_filter, row);
            match passes && times.is_valid(row) {
                true => vec![times.value(row)],
                false => Vec::new(),
            }
        }))])
    }

    fn size(&self) -> usize {
        // Vectors grow by doubling: on average a third more than they hold.
        self.groups.capacity() * std::mem::size_of::<Vec<Millis>>()
            + self.held * std::mem::size_of::<Millis>() * 4 / 3
    }
}

/// One group's times, for plans that aggregate without grouping.
#[derive(Debug)]
struct KeyTimes {
    gap: Millis,
    times: Vec<Millis>,
}

impl Accumulator for KeyTimes {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let times = first(values)?.as_primitive::<Int64Type>();
        extend_valid(&mut self.times, times, 0..times.len());
        Ok(())
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let lists = first(states)?.as_list::<i64>();
        for list in lists.iter().flatten() {
            let times = list.as_primitive::<Int64Type>();
            extend_valid(&mut self.times, times, 0..times.len());
        }
        Ok(())
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        Ok(vec![ScalarValue::try_from_array(
            &list_of([self.times.clone()]),
            0,
        )?])
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        self.times.sort_unstable();
        ScalarValue::try_from_array(&list_of([starts(&self.times, self.gap)]), 0)
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self) + self.times.capacity() * std::mem::size_of::<Millis>()
    }
}

fn first(values: &[ArrayRef]) -> Result<&ArrayRef> {
    first_argument(NAME, values)
}

fn extend_valid(into: &mut Vec<Millis>, times: &Int64Array, rows: std::ops::Range<usize>) {
    if times.null_count() == 0 {
        into.extend_from_slice(&times.values()[rows]);
    } else {
        into.extend(rows.filter(|&i| times.is_valid(i)).map(|i| times.value(i)));
    }
}

/// A list array with one (non-null) list per group.
fn list_of(groups: impl IntoIterator<Item = Vec<Millis>>) -> ArrayRef {
    let mut lengths = Vec::new();
    let mut values = Vec::new();
    for times in groups {
        lengths.push(times.len());
        values.extend(times);
    }
    Arc::new(LargeListArray::new(
        Arc::new(Field::new_list_field(DataType::Int64, true)),
        OffsetBuffer::from_lengths(lengths),
        Arc::new(Int64Array::from(values)),
        None,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{RecordBatch, StringArray};
    use arrow::datatypes::Schema;
    use datafusion::prelude::SessionContext;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    /// Session starts per key through SQL on a context with `partitions` target partitions
    /// and batches of `batch_size` rows, so partial, repartitioned and final aggregation all
    /// run.
    fn starts_by_sql(
        events: &[(String, Millis)],
        gap: Millis,
        partitions: usize,
        batch_size: usize,
    ) -> BTreeMap<String, Vec<Millis>> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(async {
            let config = datafusion::prelude::SessionConfig::new()
                .with_target_partitions(partitions)
                .with_batch_size(batch_size);
            let ctx = SessionContext::new_with_config(config);
            ctx.register_udaf(session_starts());
            let schema = Arc::new(Schema::new(vec![
                Field::new("k", DataType::Utf8, false),
                Field::new("t", DataType::Int64, false),
            ]));
            let batch = RecordBatch::try_new(
                schema,
                vec![
                    Arc::new(StringArray::from_iter_values(events.iter().map(|e| &e.0))),
                    Arc::new(Int64Array::from_iter_values(events.iter().map(|e| e.1))),
                ],
            )
            .unwrap();
            // Several batches, so the partial aggregation sees a key more than once.
            let chunks: Vec<_> = (0..batch.num_rows())
                .step_by(batch_size.max(1))
                .map(|at| batch.slice(at, batch_size.min(batch.num_rows() - at)))
                .collect();
            let mut partitions: Vec<Vec<RecordBatch>> =
                chunks.chunks(1).map(<[_]>::to_vec).collect();
            // No events: one empty partition, as a table needs one.
            if partitions.is_empty() {
                partitions.push(Vec::new());
            }
            let table =
                datafusion::datasource::MemTable::try_new(batch.schema(), partitions).unwrap();
            ctx.register_table("e", Arc::new(table)).unwrap();
            let sql = format!("SELECT k, session_starts(t, {gap}) AS s FROM e GROUP BY k");
            let mut out = BTreeMap::new();
            for batch in ctx.sql(&sql).await.unwrap().collect().await.unwrap() {
                let keys = batch.column(0).as_string::<i32>();
                let lists = batch.column(1).as_list::<i64>();
                for row in 0..batch.num_rows() {
                    let starts = lists.value(row);
                    out.insert(
                        keys.value(row).to_string(),
                        starts.as_primitive::<Int64Type>().values().to_vec(),
                    );
                }
            }
            out
        })
    }

    #[test]
    fn starts_follow_the_shared_rule_per_key() {
        let events: Vec<(String, Millis)> = [("a", 100), ("b", 0), ("a", 0), ("a", 30), ("b", 29)]
            .into_iter()
            .map(|(k, t)| (k.to_string(), t))
            .collect();
        let by_key = starts_by_sql(&events, 30, 2, 2);
        assert_eq!(by_key["a"], vec![0, 30, 100]);
        assert_eq!(by_key["b"], vec![0]);
    }

    #[test]
    fn the_gap_must_be_a_constant() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let error = runtime.block_on(async {
            let ctx = SessionContext::new();
            ctx.register_udaf(session_starts());
            ctx.sql("SELECT session_starts(t, t) FROM (VALUES (CAST(1 AS BIGINT))) AS v(t)")
                .await
                .unwrap()
                .collect()
                .await
                .unwrap_err()
        });
        assert!(error.to_string().contains("constant"), "{error}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn any_order_and_any_split_give_the_shared_rules_starts(
            events in prop::collection::vec((0..6u8, -500i64..500), 0..200),
            gap in 1i64..120,
            partitions in 1usize..4,
            batch_size in 1usize..40,
        ) {
            let events: Vec<(String, Millis)> =
                events.into_iter().map(|(k, t)| (format!("u{k}"), t)).collect();
            let mut expected: BTreeMap<String, Vec<Millis>> = BTreeMap::new();
            for (k, t) in &events {
                expected.entry(k.clone()).or_default().push(*t);
            }
            for times in expected.values_mut() {
                times.sort_unstable();
                *times = starts(times, gap);
            }
            prop_assert_eq!(starts_by_sql(&events, gap, partitions, batch_size), expected);
        }
    }
}
