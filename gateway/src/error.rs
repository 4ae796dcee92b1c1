//! The one mapping from failures to HTTP answers. Client errors are specific; server errors are
//! logged once, here, and answered without internal text.

use crate::api::ErrorBody;
use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;
use seckill_schema::{AdjustmentId, OrderId};

pub type Body = Full<Bytes>;

/// `Retry-After` of a bound reached: long enough for a crowd of clients not to come back at once.
const AT_CAPACITY_RETRY_SECS: u64 = 5;

/// `sold_out`'s message.
pub const SOLD_OUT: &str = "the item is sold out";
/// `409 sold_out`'s body, the commonest answer of a sale, written once instead of per answer (a
/// test holds it equal to what serde writes).
const SOLD_OUT_BODY: &str = r#"{"error":"sold_out","message":"the item is sold out"}"#;

/// What a route handler answers.
pub type Answer = Result<http::Response<Body>, ApiError>;

#[derive(Debug)]
pub enum ApiError {
    BadRequest(String),
    Unauthorized(&'static str),
    NotFound(&'static str, &'static str),
    PayloadTooLarge,
    Conflict(&'static str, &'static str),
    LimitReached(Option<OrderId>),
    RateLimited {
        retry_after_secs: u64,
    },
    /// The path exists; these are its methods (the `Allow` header).
    MethodNotAllowed(&'static str),
    /// The body did not arrive within this deadline; the connection is closed.
    BodyTimeout(std::time::Duration),
    /// `Transfer-Encoding` in a request (with or without `Content-Length`: the shape of request
    /// smuggling behind a proxy). Our bodies are small JSON sent with `Content-Length`; the
    /// connection is closed, since its framing cannot be trusted.
    TransferEncoding,
    /// A dependency is unreachable; the request changed nothing.
    Unavailable(&'static str),
    /// One of this gateway's bounds is reached (what, plural); retry after a moment.
    AtCapacity(&'static str),
    /// The purchase was sent to Redis and no answer came back: it may have sold. `GET
    /// /orders/{id}` tells once Redis answers again.
    OutcomeUnknown(OrderId),
    /// Redis lost this part of its state and it is being rebuilt from the database; nothing was
    /// changed.
    Recovering,
    /// Units are moving between a sharded item's shards (or one is being rebuilt) and kept moving
    /// while this request waited: nothing was sold; retry in a moment.
    Rebalancing,
    /// A stock adjustment reached Redis (or may have) and is not known to be in the database: the
    /// workers' reconciler finishes it, once, within a minute. Sending it again would be another.
    AdjustmentPending(AdjustmentId),
    /// Our fault. The error is logged, never shown.
    Internal(anyhow::Error),
}

impl ApiError {
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::NotFound(code, _) => code,
            ApiError::PayloadTooLarge => "payload_too_large",
            ApiError::Conflict(code, _) => code,
            ApiError::LimitReached(_) => "limit_reached",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::BodyTimeout(_) => "request_timeout",
            ApiError::TransferEncoding => "bad_request",
            ApiError::Unavailable(_) | ApiError::AtCapacity(_) | ApiError::Rebalancing => {
                "unavailable"
            }
            ApiError::OutcomeUnknown(_) => "outcome_unknown",
            ApiError::Recovering => "recovering",
            ApiError::AdjustmentPending(_) => "adjustment_pending",
            ApiError::Internal(_) => "internal",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) | ApiError::TransferEncoding => StatusCode::BAD_REQUEST,
            ApiError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::NotFound(..) => StatusCode::NOT_FOUND,
            ApiError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Conflict(..) | ApiError::LimitReached(_) => StatusCode::CONFLICT,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Unavailable(_)
            | ApiError::AtCapacity(_)
            | ApiError::OutcomeUnknown(_)
            | ApiError::Recovering
            | ApiError::Rebalancing
            | ApiError::AdjustmentPending(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn into_response(self) -> Response<Body> {
        if let ApiError::Conflict("sold_out", SOLD_OUT) = self {
            return json_bytes(
                StatusCode::CONFLICT,
                Bytes::from_static(SOLD_OUT_BODY.as_bytes()),
            );
        }
        let status = self.status();
        let code = self.code();
        let message: String = match &self {
            ApiError::BadRequest(m) => m.clone(),
            ApiError::Unauthorized(m) => (*m).to_owned(),
            ApiError::NotFound(_, m) | ApiError::Conflict(_, m) => (*m).to_owned(),
            ApiError::PayloadTooLarge => "the body is over 16 KiB".to_owned(),
            ApiError::LimitReached(_) => "this would exceed the item's per-user limit".to_owned(),
            ApiError::RateLimited { .. } => "too many requests; retry later".to_owned(),
            ApiError::MethodNotAllowed(allow) => {
                format!("method not allowed on this path; allowed: {allow}")
            }
            ApiError::BodyTimeout(deadline) => {
                format!("the body did not arrive within {} s", deadline.as_secs())
            }
            ApiError::TransferEncoding => {
                "Transfer-Encoding is not accepted; send the body with Content-Length".to_owned()
            }
            ApiError::Unavailable(what) => {
                tracing::warn!(dependency = what, "answering 503");
                format!("{what} is unavailable; nothing was changed, retry later")
            }
            ApiError::AtCapacity(what) => {
                format!("this server holds as many {what} as it may; retry later")
            }
            ApiError::OutcomeUnknown(id) => {
                tracing::warn!(order.id = %id, "answering 503 outcome_unknown");
                format!(
                    "the purchase was sent but its answer was lost; GET /orders/{id} tells whether \
                     it was sold once the service answers again, and a retry with the same \
                     Idempotency-Key returns it"
                )
            }
            ApiError::Recovering => "this item's state is being rebuilt after a storage failure; \
                nothing was changed, retry shortly"
                .to_owned(),
            ApiError::Rebalancing => "this item's units are moving between its shards; nothing \
                was sold, retry in a moment"
                .to_owned(),
            ApiError::AdjustmentPending(id) => {
                tracing::warn!(adjustment.id = %id, "answering 503 adjustment_pending");
                format!(
                    "the stock change (adjustment {id}) is not known to be finished; if it reached \
                     Redis, the workers finish it within a minute. Check the item's history before \
                     sending it again"
                )
            }
            ApiError::Internal(e) => {
                tracing::error!(error = ?e, "internal error");
                "internal error".to_owned()
            }
        };
        let order_id = match &self {
            ApiError::LimitReached(Some(id)) | ApiError::OutcomeUnknown(id) => Some(*id),
            _ => None,
        };
        let body = ErrorBody {
            error: code,
            message,
            order_id,
        };
        let mut resp = json(status, &body);
        let retry_after = match self {
            ApiError::RateLimited { retry_after_secs } => Some(retry_after_secs.max(1)),
            ApiError::Recovering | ApiError::Rebalancing | ApiError::OutcomeUnknown(_) => Some(1),
            ApiError::AtCapacity(_) => Some(AT_CAPACITY_RETRY_SECS),
            _ => None,
        };
        match self {
            ApiError::MethodNotAllowed(allow) => {
                resp.headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static(allow));
            }
            ApiError::BodyTimeout(_) | ApiError::TransferEncoding => {
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        if let Some(secs) = retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

impl ApiError {
    /// A database error: out of reach is a 503 (retry later), anything else is ours.
    pub fn from_db(e: sea_orm::DbErr) -> ApiError {
        if seckill_infra::db::is_connection_error(&e) {
            ApiError::Unavailable("the database")
        } else {
            ApiError::Internal(e.into())
        }
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> Self {
        ApiError::Internal(e)
    }
}

pub fn json<T: serde::Serialize + ?Sized>(status: StatusCode, value: &T) -> Response<Body> {
    let bytes = serde_json::to_vec(value).expect("response bodies serialize");
    json_bytes(status, Bytes::from(bytes))
}

/// A JSON body already serialized.
pub(crate) fn json_bytes(status: StatusCode, bytes: Bytes) -> Response<Body> {
    let mut resp = Response::new(Full::new(bytes));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn the_written_sold_out_body_is_what_serde_writes() {
        let body = ErrorBody {
            error: "sold_out",
            message: SOLD_OUT.to_owned(),
            order_id: None,
        };
        assert_eq!(SOLD_OUT_BODY, serde_json::to_string(&body).unwrap());
        let resp = ApiError::Conflict("sold_out", SOLD_OUT).into_response();
        assert_eq!(resp.status(), StatusCode::CONFLICT);
        assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/json");
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(bytes, SOLD_OUT_BODY.as_bytes());
    }
}
