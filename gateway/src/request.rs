//! Parsing a request at the edge: the body (bounded), JSON, the bearer token, the user, path ids
//! and the per-user rate limit. Every route module imports these; none imports the router.

use crate::error::ApiError;
use crate::state::State;
use bytes::Bytes;
use http::{HeaderMap, Request, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use seckill_domain::UserId;
use serde::Deserialize;

pub const MAX_BODY: usize = 16 * 1024;

/// Reads the whole body, at most 16 KiB.
pub async fn read_body(req: Request<Incoming>) -> Result<(http::request::Parts, Bytes), ApiError> {
    let (parts, body) = req.into_parts();
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_BODY) {
        return Err(ApiError::PayloadTooLarge);
    }
    match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => Ok((parts, collected.to_bytes())),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(ApiError::PayloadTooLarge)
        }
        Err(_) => Err(ApiError::BadRequest("the body could not be read".into())),
    }
}

pub fn parse_json<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        let msg = e.to_string();
        // serde's message names the field and the expectation, never our internals.
        ApiError::BadRequest(format!("invalid JSON body: {msg}"))
    })
}

pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

pub fn user_from_jwt(state: &State, headers: &HeaderMap) -> Result<UserId, ApiError> {
    let token = bearer(headers).ok_or(ApiError::Unauthorized("a bearer token is required"))?;
    state
        .jwt
        .verify(token)
        .ok_or(ApiError::Unauthorized("the token is invalid or expired"))
}

pub fn parse_id<T: std::str::FromStr>(raw: &str, what: &'static str) -> Result<T, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::NotFound(what, "no such resource"))
}

pub fn rate_limit(state: &State, user: UserId) -> Result<(), ApiError> {
    state
        .limiter
        .check(user)
        .map_err(|retry_after_secs| ApiError::RateLimited { retry_after_secs })
}
