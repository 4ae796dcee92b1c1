//! Parsing a request at the edge: the body (bounded), JSON, who sends it (the user's bearer token,
//! the operators' admin token), path ids and the per-user rate limit. Every handler imports these;
//! none imports the router.

use crate::error::ApiError;
use crate::state::State;
use bytes::Bytes;
use http::{HeaderMap, Request, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use seckill_schema::UserId;
use serde::Deserialize;

pub const MAX_BODY: usize = 16 * 1024;

/// How long a client may take to send its body once the head arrived. hyper's header-read timeout
/// covers the head only; a body shorter than its `Content-Length` would otherwise hold the
/// connection until the client gives up.
pub const BODY_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Reads the whole body, at most 16 KiB, within [`BODY_READ_TIMEOUT`].
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
    // A body that came with its head completes at the first poll: no timer is made for it (a
    // tokio `Sleep`, even one never armed, costs a clock read and a runtime handle's clone).
    let mut collect = std::pin::pin!(Limited::new(body, MAX_BODY).collect());
    let collected = match futures_util::poll!(collect.as_mut()) {
        std::task::Poll::Ready(collected) => collected,
        std::task::Poll::Pending => tokio::time::timeout(BODY_READ_TIMEOUT, collect)
            .await
            .map_err(|_| ApiError::BodyTimeout(BODY_READ_TIMEOUT))?,
    };
    match collected {
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
    serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(json_error_message(&e)))
}

/// serde's message in the API's words: it names the field and what was expected, but serde also
/// names Rust types ("expected struct NewItem", "u64"), which are no business of a client.
fn json_error_message(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let at = format!("line {} column {}", e.line(), e.column());
    match e.classify() {
        Category::Syntax | Category::Eof | Category::Io => {
            format!("the body is not valid JSON ({at})")
        }
        Category::Data => {
            let raw = e.to_string();
            let raw = raw
                .rsplit_once(" at line ")
                .map_or(raw.as_str(), |(m, _)| m);
            let mut msg = raw.to_owned();
            for (rust, api) in [
                ("u64", "a non-negative integer"),
                ("u32", "a positive integer below 2^32"),
                ("i64", "an integer"),
                ("i32", "an integer"),
                ("a borrowed string", "a string"),
            ] {
                msg = msg.replace(&format!("expected {rust}"), &format!("expected {api}"));
            }
            if let Some(i) = msg.find("expected struct ") {
                msg.truncate(i);
                msg.push_str("expected a JSON object");
            }
            if msg.contains("enum ") || msg.contains("struct ") || msg.contains("::") {
                msg = "a field has the wrong type or value".to_owned();
            }
            format!("invalid JSON body: {msg} ({at})")
        }
    }
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

/// Constant time: how much of a guess matches must not show in how long the answer takes.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub fn require_admin(state: &State, headers: &HeaderMap) -> Result<(), ApiError> {
    match bearer(headers) {
        Some(t) if constant_time_eq(t.as_bytes(), state.config.admin_token.as_bytes()) => Ok(()),
        _ => Err(ApiError::Unauthorized(
            "the admin token is missing or wrong",
        )),
    }
}

/// An item id of a path, as the database keeps it: anything else is an unknown item.
pub fn item_id(raw: &str) -> Result<i64, ApiError> {
    raw.parse::<u64>()
        .ok()
        .and_then(|id| i64::try_from(id).ok())
        .ok_or(ApiError::NotFound("unknown_item", "no such item"))
}

/// An operator's request naming an item: the admin token checked first, then the item's id.
pub fn admin_item_id(state: &State, headers: &HeaderMap, raw: &str) -> Result<i64, ApiError> {
    require_admin(state, headers)?;
    item_id(raw)
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
