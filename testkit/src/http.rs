//! A test's HTTP call to the system under test.

/// Sends `req` (it must be answered: `what` names it if not) and reads the answer's status and JSON
/// body, `Null` when the body is not JSON.
pub async fn answer(req: reqwest::RequestBuilder, what: &str) -> (u16, serde_json::Value) {
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("{what}: no answer: {e}"));
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or_default())
}
