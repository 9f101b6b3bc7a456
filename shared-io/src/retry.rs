//! Retrying an operation that must not be given up on (a batch whose offsets are not stored
//! yet): a dependency being away delays the consumer, it never loses the batch.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Runs `operation` until it succeeds, sleeping with exponential backoff between attempts and
/// logging each failure as `what`.
pub async fn until_success<T, E, F, Fut>(what: &str, mut operation: F) -> T
where
    E: Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut backoff = FIRST_BACKOFF;
    loop {
        match operation().await {
            Ok(value) => return value,
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "{what} failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn retries_until_the_operation_succeeds() {
        let mut attempts = 0;
        let value = until_success("test", || {
            attempts += 1;
            let attempt = attempts;
            async move {
                if attempt < 4 {
                    Err("not yet")
                } else {
                    Ok(attempt)
                }
            }
        })
        .await;
        assert_eq!(value, 4);
    }
}
