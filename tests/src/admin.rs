//! The admin run endpoints, as the scenarios that request batch runs over HTTP call them.

use crate::Platform;
use anyhow::Result;
use serde_json::Value;

/// `POST /v1/admin/runs` with `token`, and `body` if any: the status and the answer (null if
/// the answer is not JSON).
pub async fn request_run(
    platform: &Platform,
    token: &str,
    body: Option<&Value>,
) -> Result<(u16, Value)> {
    let mut request = platform
        .http
        .post(format!("http://{}/v1/admin/runs", platform.listen_addr))
        .bearer_auth(token);
    if let Some(body) = body {
        request = request.json(body);
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    Ok((status, response.json().await.unwrap_or_default()))
}

/// `GET /v1/admin/runs/{id}` with `token`.
pub async fn run_status(platform: &Platform, token: &str, id: u64) -> Result<Value> {
    Ok(platform
        .http
        .get(format!(
            "http://{}/v1/admin/runs/{id}",
            platform.listen_addr
        ))
        .bearer_auth(token)
        .send()
        .await?
        .json()
        .await?)
}
