//! Batch runs requested over HTTP, kept in Postgres (`run_requests`) so that a request survives
//! a restart of the serving layer that took it, and so that the batch layer, not the process
//! answering queries, runs it.
//!
//! The serving layer records a request ([`request`]) and reads it back ([`get`], [`list`]).
//! A batch runner ([`claim`]) marks the oldest one running and holds an advisory lock keyed by
//! its id on the claiming session for the whole run, then writes the outcome
//! ([`Claimed::finish`]). A runner that dies mid-run loses that session and its lock; the next
//! [`reap_abandoned`] (called before every claim, request and read) marks its request failed,
//! so none stays `running` forever.

use chrono::{DateTime, Utc};
use shared_schema::time::{Millis, to_datetime};
use sqlx::{Connection, PgConnection, PgPool};

/// First key of the advisory locks runners hold on the requests they run (`"runr"`); the
/// second is the request id.
const RUNNER_LOCK_KEY: i32 = 0x7275_6e72;

/// Requests kept for listing; older ones are only reachable by id.
const LISTED: i64 = 100;

const FIELDS: &str =
    "id, state, cutover, requested_at, started_at, finished_at, version, promoted_cutover, error";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    Requested,
    Running,
    Succeeded,
    Failed,
}

impl RunState {
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Requested => "requested",
            RunState::Running => "running",
            RunState::Succeeded => "succeeded",
            RunState::Failed => "failed",
        }
    }

    fn parse(text: &str) -> Option<RunState> {
        [
            RunState::Requested,
            RunState::Running,
            RunState::Succeeded,
            RunState::Failed,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }
}

/// One request and what became of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRequest {
    pub id: i64,
    pub state: RunState,
    /// The cutover asked for; `None`: the latest boundary at which the lake is complete.
    pub cutover: Option<Millis>,
    pub requested_at: Millis,
    pub started_at: Option<Millis>,
    pub finished_at: Option<Millis>,
    /// Once succeeded: the promoted version and its cutover.
    pub version: Option<String>,
    pub promoted_cutover: Option<Millis>,
    /// Once failed: why.
    pub error: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum RunRequestError {
    /// Only one request is open at a time.
    #[error("batch run {id} is still {}", state.as_str())]
    InProgress { id: i64, state: RunState },
    #[error("could not record a batch run request: {0}")]
    Record(#[source] sqlx::Error),
    #[error("could not read batch run requests: {0}")]
    Read(#[source] sqlx::Error),
    #[error("batch run request {id} has an unknown state `{state}`")]
    UnknownState { id: i64, state: String },
    #[error("could not mark abandoned batch runs failed: {0}")]
    Reap(#[source] sqlx::Error),
    #[error("could not claim a batch run request: {0}")]
    Claim(#[source] sqlx::Error),
    #[error("could not record the outcome of batch run {id}: {source}")]
    Finish { id: i64, source: sqlx::Error },
}

type Row = (
    i64,
    String,
    Option<DateTime<Utc>>,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
    Option<String>,
    Option<DateTime<Utc>>,
    Option<String>,
);

fn from_row(row: Row) -> Result<RunRequest, RunRequestError> {
    let (id, state, cutover, requested_at, started_at, finished_at, version, promoted, error) = row;
    let millis = |t: Option<DateTime<Utc>>| t.map(|t| t.timestamp_millis());
    Ok(RunRequest {
        id,
        state: RunState::parse(&state).ok_or(RunRequestError::UnknownState { id, state })?,
        cutover: millis(cutover),
        requested_at: requested_at.timestamp_millis(),
        started_at: millis(started_at),
        finished_at: millis(finished_at),
        version,
        promoted_cutover: millis(promoted),
        error,
    })
}

/// Records a request for one run with `cutover`; refused while another is open.
pub async fn request(
    pool: &PgPool,
    cutover: Option<Millis>,
) -> Result<RunRequest, RunRequestError> {
    reap_abandoned(pool).await?;
    let inserted: Result<Row, sqlx::Error> = sqlx::query_as(&format!(
        "INSERT INTO run_requests (cutover) VALUES ($1) RETURNING {FIELDS}"
    ))
    .bind(cutover.map(to_datetime))
    .fetch_one(pool)
    .await;
    match inserted {
        Ok(row) => from_row(row),
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
            let open: Option<(i64, String)> = sqlx::query_as(
                "SELECT id, state FROM run_requests WHERE state IN ('requested', 'running')",
            )
            .fetch_optional(pool)
            .await
            .map_err(RunRequestError::Read)?;
            match open.and_then(|(id, state)| Some((id, RunState::parse(&state)?))) {
                Some((id, state)) => Err(RunRequestError::InProgress { id, state }),
                // It finished in between: one more try.
                None => Box::pin(request(pool, cutover)).await,
            }
        }
        Err(e) => Err(RunRequestError::Record(e)),
    }
}

/// Request `id`, if there is one.
pub async fn get(pool: &PgPool, id: i64) -> Result<Option<RunRequest>, RunRequestError> {
    reap_abandoned(pool).await?;
    let row: Option<Row> =
        sqlx::query_as(&format!("SELECT {FIELDS} FROM run_requests WHERE id = $1"))
            .bind(id)
            .fetch_optional(pool)
            .await
            .map_err(RunRequestError::Read)?;
    row.map(from_row).transpose()
}

/// The latest requests, newest first.
pub async fn list(pool: &PgPool) -> Result<Vec<RunRequest>, RunRequestError> {
    reap_abandoned(pool).await?;
    let rows: Vec<Row> = sqlx::query_as(&format!(
        "SELECT {FIELDS} FROM run_requests ORDER BY id DESC LIMIT $1"
    ))
    .bind(LISTED)
    .fetch_all(pool)
    .await
    .map_err(RunRequestError::Read)?;
    rows.into_iter().map(from_row).collect()
}

/// Marks failed every running request whose runner no longer holds its lock: the runner's
/// process or its Postgres session died before it reported. Returns how many.
pub async fn reap_abandoned(pool: &PgPool) -> Result<u64, RunRequestError> {
    let reaped = sqlx::query(
        "UPDATE run_requests r
         SET state = 'failed', finished_at = now(),
             error = 'its runner stopped before reporting an outcome (the batch process or its Postgres session died)'
         WHERE r.state = 'running' AND NOT EXISTS (
             SELECT 1 FROM pg_locks l
             WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
               AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
               AND l.classid = $1::oid AND l.objid = (r.id & 2147483647)::oid)",
    )
    .bind(i64::from(RUNNER_LOCK_KEY))
    .execute(pool)
    .await
    .map_err(RunRequestError::Reap)?
    .rows_affected();
    if reaped > 0 {
        tracing::warn!(reaped, "marked batch runs failed whose runner died");
    }
    Ok(reaped)
}

/// Whether a request waits to be run: a cheap check before [`claim`] opens a session.
pub async fn pending(pool: &PgPool) -> Result<bool, RunRequestError> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM run_requests WHERE state = 'requested')")
        .fetch_one(pool)
        .await
        .map_err(RunRequestError::Read)
}

/// A request this runner marked running; its session holds the request's lock until
/// [`Claimed::finish`].
pub struct Claimed {
    connection: PgConnection,
    pub id: i64,
    /// The cutover asked for.
    pub cutover: Option<Millis>,
}

/// Claims the oldest waiting request on a new session of `database_url`, if there is one.
pub async fn claim(database_url: &str) -> Result<Option<Claimed>, RunRequestError> {
    let mut connection = PgConnection::connect(database_url)
        .await
        .map_err(RunRequestError::Claim)?;
    let mut tx = connection.begin().await.map_err(RunRequestError::Claim)?;
    let claimed: Option<(i64, Option<DateTime<Utc>>)> = sqlx::query_as(
        "UPDATE run_requests SET state = 'running', started_at = now()
         WHERE id = (SELECT id FROM run_requests WHERE state = 'requested'
                     ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED)
         RETURNING id, cutover",
    )
    .fetch_optional(&mut *tx)
    .await
    .map_err(RunRequestError::Claim)?;
    let Some((id, cutover)) = claimed else {
        return Ok(None);
    };
    // Taken before the state commits, so no one sees it running without its lock.
    sqlx::query("SELECT pg_advisory_lock($1, ($2::bigint & 2147483647)::int)")
        .bind(RUNNER_LOCK_KEY)
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(RunRequestError::Claim)?;
    tx.commit().await.map_err(RunRequestError::Claim)?;
    Ok(Some(Claimed {
        connection,
        id,
        cutover: cutover.map(|t| t.timestamp_millis()),
    }))
}

impl Claimed {
    /// Records how the run ended: the promoted version and cutover, or why it failed. Written
    /// even if the request was meanwhile marked abandoned: the outcome is what happened.
    pub async fn finish(
        self,
        pool: &PgPool,
        outcome: Result<(String, Millis), String>,
    ) -> Result<(), RunRequestError> {
        let (state, version, cutover, error) = match outcome {
            Ok((version, cutover)) => (RunState::Succeeded, Some(version), Some(cutover), None),
            Err(error) => (RunState::Failed, None, None, Some(error)),
        };
        let written = sqlx::query(
            "UPDATE run_requests
             SET state = $2, finished_at = now(), version = $3, promoted_cutover = $4, error = $5
             WHERE id = $1",
        )
        .bind(self.id)
        .bind(state.as_str())
        .bind(version)
        .bind(cutover.map(to_datetime))
        .bind(error)
        .execute(pool)
        .await;
        // Ends the session and its lock: if the outcome was not written, the request is reaped.
        if let Err(e) = self.connection.close().await {
            tracing::warn!(id = self.id, error = %e, "could not close a batch runner's session");
        }
        written.map(drop).map_err(|source| RunRequestError::Finish {
            id: self.id,
            source,
        })
    }
}
