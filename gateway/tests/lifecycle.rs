//! The gateway's operational surface: health, readiness and metrics, and a graceful shutdown that
//! lets in-flight requests finish before `run()` returns.

mod common;

use common::TestApp;
use http::StatusCode;
use seckill_testkit::wait_for;
use serde_json::json;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_metrics() {
    let app = TestApp::spawn().await;
    let health = app.http.get("/healthz", None).await;
    assert_eq!(health.status, StatusCode::OK, "{}", health.text());
    let ready = app.http.get("/readyz", None).await;
    assert_eq!(ready.status, StatusCode::OK, "{}", ready.text());
    let ready = ready.json();
    assert_eq!(ready["redis"], true, "{ready}");
    assert_eq!(ready["rabbitmq"], true, "{ready}");
    assert_eq!(ready["redis_durability"]["ok"], true, "{ready}");
    assert_eq!(ready["redis_recovering_genes"], json!([]), "{ready}");
    app.http
        .get_error("/no-such-route", StatusCode::NOT_FOUND, "not_found")
        .await;
    app.http
        .get_error(
            "/seckill",
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        )
        .await;
    // The OpenAPI document names every route of the contract, with its methods and securities.
    let doc = app.http.get("/openapi.json", None).await.json();
    assert!(
        doc["openapi"]
            .as_str()
            .unwrap_or_default()
            .starts_with("3.1"),
        "{doc}"
    );
    for (path, method) in [
        ("/items/{item_id}/ticket", "post"),
        ("/items/{item_id}", "get"),
        ("/items", "get"),
        ("/seckill", "post"),
        ("/orders", "get"),
        ("/orders/{order_id}", "get"),
        ("/orders/{order_id}/events", "get"),
        ("/orders/{order_id}/cancel", "post"),
        ("/orders/{order_id}/confirm", "post"),
        ("/orders/{order_id}/refund", "post"),
        ("/admin/orders/{order_id}/ship", "post"),
        ("/payment/callback", "post"),
        ("/admin/items", "post"),
        ("/admin/items/{item_id}", "get"),
        ("/admin/items", "get"),
        ("/admin/items/{item_id}", "patch"),
        ("/admin/items/{item_id}/end", "post"),
        ("/admin/items/{item_id}/history", "get"),
        ("/admin/orders/{order_id}", "get"),
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/metrics", "get"),
        ("/openapi.json", "get"),
    ] {
        assert!(
            doc["paths"][path][method].is_object(),
            "{method} {path} in the OpenAPI document"
        );
    }
    for scheme in ["user_jwt", "admin_token", "webhook_signature"] {
        assert!(
            doc["components"]["securitySchemes"][scheme].is_object(),
            "{scheme}"
        );
    }
    let page = &doc["paths"]["/items/{item_id}"]["get"];
    assert!(
        page.get("security").is_none()
            && page["responses"]["200"]["headers"]["Cache-Control"].is_object(),
        "GET /items/{{item_id}} is public and cacheable: {page}"
    );
    assert_eq!(
        doc["components"]["schemas"]["SaleState"]["enum"],
        json!(["upcoming", "live", "sold_out", "ended"]),
        "{doc}"
    );
    let seckill = &doc["paths"]["/seckill"]["post"]["responses"];
    for status in ["202", "400", "401", "404", "409", "413", "429", "503"] {
        assert!(
            seckill[status].is_object(),
            "POST /seckill documents {status}"
        );
    }

    // Purchases are counted by outcome, payment callbacks too, and readiness is a gauge.
    app.create_item(5, 1, 1).await;
    app.http.seckill(&app.purchase(1, 5)).await.accepted();
    app.http
        .seckill(&app.purchase(2, 5))
        .await
        .assert_error(StatusCode::CONFLICT, "sold_out");
    app.http
        .post_json(
            "/payment/callback",
            None,
            &json!({"payment_id": "p", "order_id": "1", "status": "SUCCEEDED", "amount_cents": 1}),
        )
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
    let metrics = app.http.get("/metrics", None).await;
    assert_eq!(metrics.status, StatusCode::OK);
    let text = metrics.text();
    for line in [
        "seckill_purchases_total{outcome=\"accepted\"} 1",
        "seckill_purchases_total{outcome=\"sold_out\"} 1",
        "seckill_purchases_total{outcome=\"recovering\"} 0",
        "seckill_payment_callbacks_total{outcome=\"invalid_signature\"} 1",
        "seckill_ready 1",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} in: {text}");
    }
    assert!(
        text.contains("seckill_http_requests_total"),
        "metrics: {text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("seckill_http_requests_total{")
                && l.contains("route=\"healthz\"")
                && l.contains("status=\"200\"")),
        "requests are counted by route and status: {text}"
    );
    app.stop().await.expect("run() returns Ok");
}

/// Reads one CRLF-terminated line, within a deadline.
async fn read_line(conn: &mut BufReader<TcpStream>) -> String {
    let mut line = String::new();
    tokio::time::timeout(Duration::from_secs(10), conn.read_line(&mut line))
        .await
        .expect("a line within 10 s")
        .expect("reading from the gateway");
    line
}

/// Sends `what` (`bytes`), then reads the status line that answers it, which starts with
/// `status`.
async fn send_then_status(conn: &mut BufReader<TcpStream>, what: &str, bytes: &str, status: &str) {
    conn.get_mut()
        .write_all(bytes.as_bytes())
        .await
        .unwrap_or_else(|e| panic!("sending {what}: {e}"));
    let line = read_line(conn).await;
    assert!(line.starts_with(status), "got {line:?}");
}

/// Reads header lines up to the blank line; returns the Content-Length.
async fn read_headers(conn: &mut BufReader<TcpStream>) -> usize {
    let mut length = 0;
    loop {
        let line = read_line(conn).await;
        assert!(!line.is_empty(), "the connection closed inside the headers");
        let line = line.trim_end();
        if line.is_empty() {
            return length;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().expect("a numeric Content-Length");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_an_in_flight_purchase_finish_then_run_returns_ok() {
    const ITEM: u64 = 51;
    let mut app = TestApp::with_item(ITEM, 5, 1).await;
    let body = app.purchase(1, ITEM).to_string();

    let stream = TcpStream::connect(app.addr()).await.expect("connecting");
    let mut conn = BufReader::new(stream);
    let head = format!(
        "POST /seckill HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        body.len()
    );
    // hyper sends `100 Continue` when the handler starts reading the body: from here on the request
    // is in flight.
    send_then_status(&mut conn, "the head", &head, "HTTP/1.1 100").await;
    read_headers(&mut conn).await;

    let mut run = app.begin_shutdown();
    let addr = app.addr();
    wait_for(
        "the listener to close",
        Duration::from_secs(10),
        || async move { TcpStream::connect(addr).await.is_err().then_some(()) },
    )
    .await;
    // Without the wait, run() would be back within about a second (the relays' blocking read).
    // This bounds a wait for something that must not happen; DRAIN_TIMEOUT is far longer.
    let early = tokio::time::timeout(Duration::from_secs(2), &mut run).await;
    assert!(
        early.is_err(),
        "run() returned while a request was in flight: {early:?}"
    );

    send_then_status(&mut conn, "the body", &body, "HTTP/1.1 202").await;
    let length = read_headers(&mut conn).await;
    let mut answer = vec![0; length];
    conn.read_exact(&mut answer)
        .await
        .expect("reading the body");
    let answer: serde_json::Value = serde_json::from_slice(&answer).expect("a JSON body");
    assert_eq!(answer["status"], "PENDING", "{answer}");

    let result = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("run() returns once the request is answered")
        .expect("the gateway task does not panic");
    assert!(result.is_ok(), "run() returns Ok: {result:?}");
    assert_eq!(
        app.remaining(ITEM).await,
        Some(4),
        "the in-flight purchase sold"
    );
}
