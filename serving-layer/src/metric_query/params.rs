//! The query parameters of `GET /v1/metrics/{name}`, checked against the metric and the limits
//! before anything is read: every refusal is a 400 saying what is wrong.

use crate::error::ApiError;
use shared_schema::config::ServingConfig;
use shared_schema::metrics::{Dimension, MetricDef};
use shared_schema::query::SeriesQuery;
use shared_schema::time::{HumanDuration, Millis, bucket_ceil, parse_rfc3339};
use std::collections::HashMap;

#[derive(Clone)]
pub(crate) struct Request {
    /// As asked; the answer echoes it. `query.from` is the first point.
    pub from: Millis,
    pub query: SeriesQuery,
    pub step: HumanDuration,
    pub window: HumanDuration,
    pub group_by: Option<Dimension>,
}

pub(crate) fn parse_query(
    metric: &MetricDef,
    params: &HashMap<String, String>,
    limits: &ServingConfig,
) -> Result<Request, ApiError> {
    let time = |key: &str| -> Result<Millis, ApiError> {
        let text = params
            .get(key)
            .ok_or_else(|| ApiError::bad_request(format!("`{key}` is required (RFC 3339)")))?;
        parse_rfc3339(text).ok_or_else(|| {
            ApiError::bad_request(format!("`{key}` = `{text}` is not RFC 3339 with an offset"))
        })
    };
    let (from, to) = (time("from")?, time("to")?);
    if from >= to {
        return Err(ApiError::bad_request("`from` must be before `to`"));
    }
    let bucket = metric.bucket.millis();
    let duration = |key: &str, default: HumanDuration| -> Result<HumanDuration, ApiError> {
        let Some(text) = params.get(key) else {
            return Ok(default);
        };
        let d = HumanDuration::parse(text)
            .map_err(|e| ApiError::bad_request(format!("`{key}`: {e}")))?;
        if d.millis() % bucket != 0 {
            return Err(ApiError::bad_request(format!(
                "`{key}` = {d} is not a multiple of the bucket {}",
                metric.bucket
            )));
        }
        Ok(d)
    };
    let step = duration("step", metric.bucket)?;
    let window = duration("window", step)?;
    let dimension = |key: &str, name: &str| -> Result<(Dimension, usize), ApiError> {
        Dimension::from_name(name)
            .and_then(|d| metric.dimension_index(d).map(|i| (d, i)))
            .ok_or_else(|| {
                let known: Vec<&str> = metric.dimensions.iter().map(|d| d.name()).collect();
                ApiError::bad_request(format!(
                    "`{key}`: `{}` has no dimension `{name}` (it has: {})",
                    metric.name,
                    known.join(", ")
                ))
            })
    };
    let group_by = params
        .get("group_by")
        .map(|name| dimension("group_by", name))
        .transpose()?;
    let filter = match params.get("filter") {
        None => None,
        Some(text) => {
            let (name, value) = text
                .split_once(':')
                .ok_or_else(|| ApiError::bad_request("`filter` must be `<dimension>:<value>`"))?;
            Some((dimension("filter", name)?.1, value.to_string()))
        }
    };
    let query = SeriesQuery {
        // CONTRACT §4: the points start at the first bucket boundary at or after `from`.
        from: bucket_ceil(from, bucket),
        to,
        step: step.millis(),
        window: window.millis(),
        group_by: group_by.map(|(_, i)| i),
        filter,
    };
    crate::limits::check_query(&query, step, limits)?;
    Ok(Request {
        from,
        query,
        step,
        window,
        group_by: group_by.map(|(d, _)| d),
    })
}
