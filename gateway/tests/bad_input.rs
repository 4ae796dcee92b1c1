//! Bad requests are refused with the contract's status and code, and sell nothing; the admin API
//! refuses missing or wrong tokens, bad items and duplicates.

mod common;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::{Resp, TestApp, now_unix};
use http::{Method, StatusCode};
use seckill_infra::auth::{Jwt, Tickets};
use seckill_schema::{ItemId, UserId};
use serde_json::{Value, json};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ITEM: u64 = 11;
const STOCK: i64 = 5;
/// The body limit of the contract.
const MAX_BODY: usize = 16 * 1024;

/// A purchase body padded with an ignored field to exactly `len` bytes.
fn padded(ticket: &str, len: usize) -> String {
    let head = format!(r#"{{"item_id":{ITEM},"quantity":1,"ticket":"{ticket}","pad":""#);
    let pad = len - head.len() - 2;
    let body = format!("{head}{}\"}}", "x".repeat(pad));
    assert_eq!(body.len(), len);
    body
}

/// A JWT whose header says `alg: none`, with no signature.
fn unsigned_jwt(user: u64) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let claims = URL_SAFE_NO_PAD
        .encode(json!({"sub": user.to_string(), "exp": now_unix() + 3600}).to_string());
    format!("{header}.{claims}.")
}

/// A JWT signed with the right secret but another algorithm or claims.
fn jwt_with(secret: &str, alg: jsonwebtoken::Algorithm, claims: Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(alg),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("signing")
}

/// `POST /seckill` with a chunked body, by hand, with a `Content-Length` too unless `only_chunked`.
/// The server may answer and close before reading it all, so write errors are expected. Returns
/// the whole answer, read until the server closes.
async fn post_chunked(app: &TestApp, body: &[u8], only_chunked: bool) -> String {
    let mut request = b"POST /seckill HTTP/1.1\r\nHost: 127.0.0.1\r\n\
        Content-Type: application/json\r\n"
        .to_vec();
    if !only_chunked {
        request.extend(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    request.extend(b"Transfer-Encoding: chunked\r\n\r\n");
    for chunk in body.chunks(4096) {
        request.extend(format!("{:x}\r\n", chunk.len()).as_bytes());
        request.extend(chunk);
        request.extend(b"\r\n");
    }
    request.extend(b"0\r\n\r\n");
    let mut conn = TcpStream::connect(app.addr()).await.expect("connecting");
    let _ = conn.write_all(&request).await;
    read_until_closed(&mut conn).await
}

/// Everything the gateway writes on `conn` until it closes it (within 15 s).
async fn read_until_closed(conn: &mut TcpStream) -> String {
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(15), conn.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => answer.extend(&buf[..n]),
            Err(_) => panic!(
                "the gateway kept the connection open; it wrote: {}",
                String::from_utf8_lossy(&answer)
            ),
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}

/// Sends raw bytes on a new connection and returns everything written back until close.
async fn raw_exchange(app: &TestApp, request: &[u8]) -> String {
    let mut conn = TcpStream::connect(app.addr()).await.expect("connecting");
    let _ = conn.write_all(request).await;
    read_until_closed(&mut conn).await
}

/// The JSON body of a raw answer.
fn raw_json(answer: &str) -> Value {
    let (_, body) = answer.split_once("\r\n\r\n").expect("a head and a body");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {answer}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_layer_answers_in_json_and_never_hangs() {
    let app = TestApp::spawn().await;
    // A malformed header and an oversized head: hyper's own answers, carrying the JSON error.
    let answer = raw_exchange(
        &app,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header: \x01\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert_eq!(raw_json(&answer)["error"], "bad_request");
    let big = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(512 * 1024)
    );
    let answer = raw_exchange(&app, big.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    assert_eq!(raw_json(&answer)["error"], "headers_too_large");

    // A body shorter than its Content-Length: answered 408 at the body's deadline, then closed.
    // A head that never ends, and a kept-alive connection that sends nothing more: closed at the
    // head's deadline (the connection's own coarse timer). All three wait at once.
    let started = std::time::Instant::now();
    let stalled_body = raw_exchange(
        &app,
        b"POST /seckill HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"item_id\"",
    );
    let stalled_head = raw_exchange(&app, b"POST /seckill HTTP/1.1\r\nHost: x\r\nContent-Le");
    let idle_after_one = raw_exchange(&app, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    let (answer, head, idle) = tokio::join!(stalled_body, stalled_head, idle_after_one);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert_eq!(raw_json(&answer)["error"], "request_timeout");
    assert!(!head.contains("HTTP/1.1 2"), "{head}");
    assert!(idle.starts_with("HTTP/1.1 200"), "{idle}");
    assert_eq!(idle.matches("HTTP/1.1").count(), 1, "{idle}");
    assert!(
        started.elapsed() < Duration::from_secs(14),
        "{:?}",
        started.elapsed()
    );

    // 405 names the allowed methods.
    let resp = app
        .http
        .send(Method::DELETE, "/seckill", &[], String::new())
        .await;
    assert_eq!(resp.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(resp.headers.get(http::header::ALLOW).unwrap(), "POST");
    let resp = app
        .http
        .send(Method::POST, "/orders/1", &[], String::new())
        .await;
    assert_eq!(resp.headers.get(http::header::ALLOW).unwrap(), "GET");

    // serde's messages without Rust's type names.
    for body in [r#""AAA""#, r#"{"item_id":"x"}"#, "[1]"] {
        let resp = app
            .http
            .create_item_raw(&app.config.admin_token, body.to_owned())
            .await;
        assert_eq!(resp.status, StatusCode::BAD_REQUEST, "{body}");
        let text = resp.text();
        for rust in ["struct", "enum", "NewItem", "Repr", "u64", "i64"] {
            assert!(!text.contains(rust), "{body}: {text}");
        }
    }
    app.stop().await.expect("run() returns Ok");
}

struct Case {
    what: &'static str,
    bearer: Option<String>,
    idempotency_key: Option<&'static str>,
    body: String,
    status: StatusCode,
    code: &'static str,
}

fn case(
    what: &'static str,
    body: impl Into<String>,
    status: StatusCode,
    code: &'static str,
) -> Case {
    Case {
        what,
        bearer: None,
        idempotency_key: None,
        body: body.into(),
        status,
        code,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_purchases_are_refused_and_sell_nothing() {
    let app = TestApp::with_item(ITEM, STOCK, 1).await;
    let config = &app.config;
    let good = app.ticket(1, ITEM);
    let tickets = Tickets::new(&config.ticket_secret);
    let future = now_unix() + 300;
    let bad = StatusCode::BAD_REQUEST;
    let unauthorized = StatusCode::UNAUTHORIZED;
    let with_ticket = |t: &str| json!({"item_id": ITEM, "ticket": t}).to_string();
    let with_bearer = |what, bearer: String| Case {
        bearer: Some(bearer),
        ..case(
            what,
            json!({"item_id": ITEM}).to_string(),
            unauthorized,
            "unauthorized",
        )
    };

    let cases = vec![
        case("malformed JSON", "{", bad, "bad_request"),
        case("an empty body", "", bad, "bad_request"),
        case("a JSON array", "[]", bad, "bad_request"),
        case("no item_id", json!({"ticket": good}).to_string(), bad, "bad_request"),
        case("item_id as a word", json!({"item_id": "eleven", "ticket": good}).to_string(), bad, "bad_request"),
        case("item_id as a fraction", json!({"item_id": 11.5, "ticket": good}).to_string(), bad, "bad_request"),
        case("a negative item_id", json!({"item_id": -11, "ticket": good}).to_string(), bad, "bad_request"),
        case("item_id over u64", format!(r#"{{"item_id":18446744073709551616,"ticket":"{good}"}}"#), bad, "bad_request"),
        case("quantity as a string", json!({"item_id": ITEM, "quantity": "1", "ticket": good}).to_string(), bad, "bad_request"),
        case("quantity 0", json!({"item_id": ITEM, "quantity": 0, "ticket": good}).to_string(), bad, "bad_request"),
        case("a negative quantity", json!({"item_id": ITEM, "quantity": -1, "ticket": good}).to_string(), bad, "bad_request"),
        case("quantity over u32", json!({"item_id": ITEM, "quantity": 4_294_967_296u64, "ticket": good}).to_string(), bad, "bad_request"),
        case("a fractional quantity", json!({"item_id": ITEM, "quantity": 1.5, "ticket": good}).to_string(), bad, "bad_request"),
        case("ticket as a number", json!({"item_id": ITEM, "ticket": 12345}).to_string(), bad, "bad_request"),
        Case {
            idempotency_key: Some("has spaces in it"),
            ..case("an Idempotency-Key with spaces", with_ticket(&good), bad, "bad_request")
        },
        case(
            "an unknown item",
            json!({"item_id": 999, "ticket": app.ticket(1, 999)}).to_string(),
            StatusCode::NOT_FOUND,
            "unknown_item",
        ),
        case(
            "an item id over i64",
            json!({"item_id": u64::MAX, "ticket": tickets.mint(UserId(1), ItemId(u64::MAX), future)}).to_string(),
            StatusCode::NOT_FOUND,
            "unknown_item",
        ),
        case("a 17 KiB body", padded(&good, 17 * 1024), StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
        case("no ticket and no token", json!({"item_id": ITEM}).to_string(), unauthorized, "unauthorized"),
        case("an empty ticket", with_ticket(""), unauthorized, "unauthorized"),
        case("a garbage ticket", with_ticket("garbage"), unauthorized, "unauthorized"),
        case(
            "a ticket forged with another secret",
            with_ticket(&Tickets::new("not-the-secret").mint(UserId(1), ItemId(ITEM), future)),
            unauthorized,
            "unauthorized",
        ),
        case("a ticket re-addressed to another user", with_ticket(&good.replacen("1.", "2.", 1)), unauthorized, "unauthorized"),
        case(
            "an expired ticket",
            with_ticket(&tickets.mint(UserId(1), ItemId(ITEM), now_unix() - 1)),
            unauthorized,
            "unauthorized",
        ),
        case("a ticket for another item", with_ticket(&app.ticket(1, ITEM + 1)), unauthorized, "unauthorized"),
        Case {
            // A bad ticket is not rescued by a good token.
            bearer: Some(app.jwt(1)),
            ..case("a bad ticket beside a good JWT", with_ticket("garbage"), unauthorized, "unauthorized")
        },
        with_bearer("a JWT signed with another secret", Jwt::new("not-the-secret").mint(UserId(1), 3600)),
        with_bearer("a JWT with alg none", unsigned_jwt(1)),
        with_bearer("an expired JWT", Jwt::new(&config.jwt_secret).mint(UserId(1), -3600)),
        with_bearer(
            "a JWT signed with HS512",
            jwt_with(&config.jwt_secret, jsonwebtoken::Algorithm::HS512, json!({"sub": "1", "exp": future})),
        ),
        with_bearer(
            "a JWT without exp",
            jwt_with(&config.jwt_secret, jsonwebtoken::Algorithm::HS256, json!({"sub": "1"})),
        ),
        with_bearer(
            "a JWT whose sub is not a user id",
            jwt_with(&config.jwt_secret, jsonwebtoken::Algorithm::HS256, json!({"sub": "alice", "exp": future})),
        ),
        with_bearer("a bearer that is not a JWT", "garbage".to_owned()),
        Case {
            bearer: Some(app.jwt(1)),
            ..case(
                "two units over a limit of one",
                json!({"item_id": ITEM, "quantity": 2}).to_string(),
                StatusCode::CONFLICT,
                "limit_reached",
            )
        },
    ];

    for c in &cases {
        let auth = c.bearer.as_ref().map(|t| format!("Bearer {t}"));
        let mut headers: Vec<(&str, &str)> = Vec::new();
        if let Some(a) = &auth {
            headers.push(("authorization", a.as_str()));
        }
        if let Some(k) = c.idempotency_key {
            headers.push(("idempotency-key", k));
        }
        let resp: Resp = app
            .http
            .send(Method::POST, "/seckill", &headers, c.body.clone())
            .await;
        assert_eq!(resp.status, c.status, "{}: {}", c.what, resp.text());
        assert_eq!(resp.error_code(), c.code, "{}: {}", c.what, resp.text());
        assert_eq!(
            resp.headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok()),
            Some("application/json"),
            "{}",
            c.what
        );
    }
    // Bodies come with Content-Length: a chunked one, of any size, is refused and its connection
    // closed, as is the request-smuggling shape with both headers.
    for body in [padded(&good, 17 * 1024), with_ticket(&good)] {
        let answer = post_chunked(&app, body.as_bytes(), true).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
        assert!(answer.contains("connection: close"), "{answer}");
        assert!(answer.ends_with("Content-Length\"}"), "{answer}");
    }
    let answer = post_chunked(&app, with_ticket(&good).as_bytes(), false).await;
    assert!(
        answer.starts_with("HTTP/1.1 400"),
        "Content-Length beside chunked: {answer}"
    );

    assert_eq!(app.remaining(ITEM).await, Some(STOCK), "nothing sold");
    assert!(
        common::recorded_orders(&app.redis, &app.keys)
            .await
            .is_empty()
    );
    assert_eq!(common::outbox_backlog(&app.redis, &app.keys).await, 0);

    // The control: the same ticket, in a body of exactly 16 KiB, buys.
    app.http
        .send(Method::POST, "/seckill", &[], padded(&good, MAX_BODY))
        .await
        .accepted();
    assert_eq!(app.remaining(ITEM).await, Some(STOCK - 1));
    app.stop().await.expect("run() returns Ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_refuses_bad_tokens_bad_items_and_duplicates() {
    let app = TestApp::spawn().await;
    let admin = app.config.admin_token.clone();
    let body = common::item_body(ITEM, STOCK, 1);

    // Tokens.
    for (what, auth) in [
        ("no token", None),
        ("a wrong token", Some("Bearer not-the-admin".to_owned())),
        ("a user's JWT", Some(format!("Bearer {}", app.jwt(1)))),
        (
            "the token under another scheme",
            Some(format!("Basic {admin}")),
        ),
        ("the token with a suffix", Some(format!("Bearer {admin}x"))),
    ] {
        let headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("authorization", a.as_str())).collect();
        let create = app
            .http
            .send(Method::POST, "/admin/items", &headers, body.to_string())
            .await;
        create.assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
        let read = app
            .http
            .send(Method::GET, &format!("/admin/items/{ITEM}"), &headers, "")
            .await;
        read.assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
        assert_eq!(
            app.remaining(ITEM).await,
            None,
            "{what}: nothing was warmed"
        );
    }

    // Bodies, each with an id of its own so that a wrongly created item would show.
    let mut next_id = 900;
    let mut bad_items = Vec::new();
    let mut with = |what: &'static str, edit: &dyn Fn(&mut Value)| {
        next_id += 1;
        let mut b = common::item_body(next_id, STOCK, 1);
        edit(&mut b);
        bad_items.push((what, next_id, b.to_string()));
    };
    with("a missing name", &|b| {
        b.as_object_mut().unwrap().remove("name");
    });
    with("a blank name", &|b| b["name"] = json!("   "));
    with("a 201-character name", &|b| {
        b["name"] = json!("n".repeat(201))
    });
    with("a missing stock", &|b| {
        b.as_object_mut().unwrap().remove("stock");
    });
    with("a negative stock", &|b| b["stock"] = json!(-1));
    with("a stock over 10^9", &|b| b["stock"] = json!(1_000_000_001));
    with("stock as a string", &|b| b["stock"] = json!("5"));
    with("a negative price", &|b| b["price_cents"] = json!(-1));
    with("per_user_limit 0", &|b| b["per_user_limit"] = json!(0));
    with("an unknown field", &|b| b["colour"] = json!("red"));
    with("starts_at not RFC 3339", &|b| {
        b["starts_at"] = json!("tomorrow")
    });
    with("ends_at before starts_at", &|b| {
        b["starts_at"] = json!("2030-01-02T00:00:00Z");
        b["ends_at"] = json!("2030-01-01T00:00:00Z");
    });
    with("ends_at equal to starts_at", &|b| {
        b["starts_at"] = json!("2030-01-01T00:00:00Z");
        b["ends_at"] = json!("2030-01-01T00:00:00Z");
    });
    bad_items.push(("item_id 0", 0, common::item_body(0, STOCK, 1).to_string()));
    bad_items.push(("malformed JSON", 0, "{\"item_id\": 950,".to_owned()));
    for (what, id, b) in &bad_items {
        let resp = app.http.create_item_raw(&admin, b.clone()).await;
        assert_eq!(
            resp.status,
            StatusCode::BAD_REQUEST,
            "{what}: {}",
            resp.text()
        );
        assert_eq!(resp.error_code(), "bad_request", "{what}");
        if *id != 0 {
            app.http
                .get(&format!("/admin/items/{id}"), Some(&admin))
                .await
                .assert_error(StatusCode::NOT_FOUND, "unknown_item");
            assert_eq!(app.remaining(*id).await, None, "{what}: nothing was warmed");
        }
    }

    // A good item, then the same id again.
    app.create_item_with(&body).await;
    app.http.seckill(&app.purchase(1, ITEM)).await.accepted();
    let mut again = body.clone();
    again["stock"] = json!(1000);
    app.http
        .create_item(&admin, &again)
        .await
        .assert_error(StatusCode::CONFLICT, "item_exists");
    assert_eq!(
        app.remaining(ITEM).await,
        Some(STOCK - 1),
        "a duplicate neither restocks nor resets the live count"
    );
    let item = app
        .http
        .get(&format!("/admin/items/{ITEM}"), Some(&admin))
        .await;
    assert_eq!(item.status, StatusCode::OK, "{}", item.text());
    let v = item.json();
    assert_eq!(v["stock"], STOCK, "{v}");
    assert_eq!(v["per_user_limit"], 1, "{v}");
    assert_eq!(v["redis"]["remaining"], STOCK - 1, "{v}");
    assert_eq!(v["db"]["available"], STOCK, "{v}");
    app.http
        .get("/admin/items/abc", Some(&admin))
        .await
        .assert_error(StatusCode::NOT_FOUND, "unknown_item");
    app.stop().await.expect("run() returns Ok");
}
