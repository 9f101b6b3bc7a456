//! Bearer tokens: `serving.admin_token` guards `/v1/admin/...`, `serving.read_token` (when set)
//! the read endpoints under `/v1/`. Tokens are compared in constant time, so the time a refusal
//! takes says nothing about how much of a guess was right.

use crate::error::ApiError;
use crate::state::AppState;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

/// Admin endpoints: 403 when no admin token is configured (disabled), 401 without the token.
pub async fn require_admin(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let Some(admin) = state.config.serving.admin_token.as_deref() else {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "admin_disabled",
            "admin endpoints are disabled: set serving.admin_token (PLATFORM_SERVING__ADMIN_TOKEN)",
        )
        .into_response();
    };
    if presented(request.headers()).is_some_and(|token| token_matches(token, admin)) {
        next.run(request).await
    } else {
        unauthorized("an admin endpoint needs `Authorization: Bearer <serving.admin_token>`")
    }
}

/// Read endpoints: open unless `serving.read_token` is set; then it, or the admin token.
pub async fn require_read(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let serving = &state.config.serving;
    let Some(read) = serving.read_token.as_deref() else {
        return next.run(request).await;
    };
    let allowed = presented(request.headers()).is_some_and(|token| {
        // Both comparisons run, so the time taken does not say which token was close.
        let is_read = token_matches(token, read);
        let is_admin = serving
            .admin_token
            .as_deref()
            .is_some_and(|admin| token_matches(token, admin));
        is_read | is_admin
    });
    if allowed {
        next.run(request).await
    } else {
        unauthorized("this endpoint needs `Authorization: Bearer <serving.read_token>`")
    }
}

/// The token of an `Authorization: Bearer <token>` header.
fn presented(headers: &HeaderMap) -> Option<&[u8]> {
    let value = headers.get(header::AUTHORIZATION)?.as_bytes();
    let scheme = value.get(..7)?;
    scheme
        .eq_ignore_ascii_case(b"bearer ")
        .then(|| value.get(7..))
        .flatten()
}

/// Constant time in the bytes compared; only a length difference returns early, and the
/// length of a token is no secret worth hiding.
fn token_matches(given: &[u8], expected: &str) -> bool {
    !expected.is_empty() && bool::from(given.ct_eq(expected.as_bytes()))
}

fn unauthorized(message: &str) -> Response {
    let mut response =
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message).into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn only_a_bearer_header_presents_a_token() {
        assert_eq!(presented(&headers("Bearer s3cret")), Some(&b"s3cret"[..]));
        assert_eq!(presented(&headers("bearer s3cret")), Some(&b"s3cret"[..]));
        assert_eq!(presented(&headers("Basic czNjcmV0")), None);
        assert_eq!(presented(&headers("Bearer")), None);
        assert_eq!(presented(&HeaderMap::new()), None);
    }

    #[test]
    fn tokens_match_exactly() {
        assert!(token_matches(b"s3cret", "s3cret"));
        assert!(!token_matches(b"s3cre", "s3cret"));
        assert!(!token_matches(b"s3cret!", "s3cret"));
        assert!(!token_matches(b"S3cret", "s3cret"));
        assert!(!token_matches(b"", ""), "an empty token never matches");
    }
}
