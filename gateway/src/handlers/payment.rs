//! `POST /payment/callback`: the payment provider's webhook. The signature is checked in constant
//! time over the raw body; the result is published durably (broker-confirmed) before `200`; the
//! workers apply it once per `payment_id`.

use crate::api::{PaymentCallback, Received};
use crate::error::{ApiError, json};
use crate::reader::{self, Prefer, Reader};
use crate::request::{parse_json, read_body};
use crate::state::State;
use http::{Request, StatusCode};
use hyper::body::Incoming;
use seckill_infra::auth::SignatureError;
use seckill_schema::snowflake::now_ms;
use seckill_schema::{Message, PaymentEvent};
use std::sync::Arc;

#[utoipa::path(post, path = "/payment/callback", tag = "payment provider",
    summary = "The payment provider's webhook",
    request_body = crate::api::PaymentCallback,
    security(("webhook_signature" = [])),
    responses(
        (status = 200, description = "Durably recorded (also for the same callback again)", body = crate::api::Received),
        crate::api::BodyErrors,
        (status = 401, description = "unauthorized: missing, bad or stale signature", body = crate::api::ErrorBody),
        (status = 404, description = "not_found: unknown order", body = crate::api::ErrorBody),
        (status = 503, description = "unavailable", body = crate::api::ErrorBody),
    ))]
pub async fn callback(
    state: &Arc<State>,
    req: Request<Incoming>,
) -> Result<http::Response<crate::error::Body>, ApiError> {
    let (parts, body) = read_body(req).await?;
    let header = parts
        .headers
        .get("x-seckill-signature")
        .map(|v| v.to_str().unwrap_or(""));
    state
        .webhook
        .verify(header, &body, state.clock.now_secs())
        .map_err(|e| {
            ApiError::Unauthorized(match e {
                SignatureError::Missing => "the X-Seckill-Signature header is missing",
                SignatureError::Malformed => "the X-Seckill-Signature header is malformed",
                SignatureError::Stale => "the signature's timestamp is outside the 300 s tolerance",
                SignatureError::Mismatch => "the signature does not match",
            })
        })?;
    let cb: PaymentCallback = parse_json(&body)?;
    if cb.payment_id.is_empty()
        || cb.payment_id.len() > 64
        || !cb
            .payment_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
    {
        return Err(ApiError::BadRequest(
            "payment_id must be 1 to 64 letters, digits or - _ . :".into(),
        ));
    }
    if reader::read(state, cb.order_id, Reader::Anyone, Prefer::ReadModel)
        .await?
        .is_none()
    {
        return Err(ApiError::NotFound("not_found", "no such order"));
    }
    let event = PaymentEvent {
        payment_id: cb.payment_id,
        order_id: cb.order_id,
        status: cb.status,
        amount_cents: cb.amount_cents,
        received_at_ms: now_ms() as i64,
    };
    state
        .parts
        .publisher
        .publish(&Message::PaymentResult {
            events: vec![event],
        })
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "publishing PAYMENT_RESULT failed");
            ApiError::Unavailable("RabbitMQ")
        })?;
    Ok(json(StatusCode::OK, &Received { received: true }))
}
