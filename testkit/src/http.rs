//! A test's HTTP call to the system under test.

use serde_json::Value;

/// Sends `req` (it must be answered: `what` names it if not) and reads the answer's status and
/// body: its JSON, `Null` when empty, or its text as a JSON string when it is not JSON.
pub async fn answer(req: reqwest::RequestBuilder, what: &str) -> (u16, Value) {
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("{what}: no answer: {e}"));
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    let body = match serde_json::from_str(&text) {
        Ok(json) => json,
        Err(_) if text.is_empty() => Value::Null,
        Err(_) => Value::String(text),
    };
    (status, body)
}
