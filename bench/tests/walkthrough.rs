//! The README's "Try it in a minute" block, run as written against a gateway and workers of this
//! test's own: a user token, an item, a purchase, the order, a signed payment and the order's
//! events. The README stays true, or this fails.

mod common;

use common::InProcess;
use seckill_testkit::wait_for;
use std::path::Path;
use std::time::Duration;

/// The block between the README's walkthrough markers, without its fences.
fn walkthrough() -> String {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .expect("the README");
    let start = readme
        .find("<!-- walkthrough:start -->")
        .expect("the walkthrough's start marker");
    let end = readme
        .find("<!-- walkthrough:end -->")
        .expect("the walkthrough's end marker");
    let block = &readme[start..end];
    let body = block
        .split_once("```sh\n")
        .and_then(|(_, rest)| rest.rsplit_once("```"))
        .map(|(body, _)| body)
        .expect("a ```sh block between the markers");
    body.to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_walkthrough_runs_as_written() {
    let (mut env, running) = InProcess::on_fresh_env().await;
    let (config, gateway) = (env.config.clone(), running.gateway.clone());

    let bench = Path::new(env!("CARGO_BIN_EXE_seckill-bench"));
    let run = tokio::process::Command::new("bash")
        .arg("-c")
        .arg(walkthrough())
        .env("GW", &gateway)
        .env("BIN", bench.parent().unwrap())
        .env("SECKILL_JWT_SECRET", &config.jwt_secret)
        .env("SECKILL_ADMIN_TOKEN", &config.admin_token)
        .env("SECKILL_WEBHOOK_SECRET", &config.webhook_secret)
        .output()
        .await
        .expect("bash runs");
    let out = String::from_utf8_lossy(&run.stdout).into_owned();
    let err = String::from_utf8_lossy(&run.stderr);
    let shown = format!("stdout:\n{out}\nstderr:\n{err}");

    // Each step answered as the README says.
    assert!(out.contains(r#""name":"Lucky cat""#), "the item: {shown}");
    let order = out
        .lines()
        .find_map(|l| l.strip_prefix("order "))
        .filter(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()))
        .unwrap_or_else(|| panic!("the purchase's order id: {shown}"))
        .to_owned();
    assert!(
        out.contains(&format!(r#""order_id":"{order}","user_id":42"#)),
        "the order: {shown}"
    );
    assert!(out.contains(r#"{"received":true}"#), "the payment: {shown}");
    assert!(out.contains("event: order"), "the events: {shown}");

    // And the payment took effect.
    let token =
        seckill_infra::auth::Jwt::new(&config.jwt_secret).mint(seckill_schema::UserId(42), 600);
    let http = reqwest::Client::new();
    wait_for(
        "the walkthrough's order to be PAID",
        Duration::from_secs(30),
        || {
            let (http, gateway, order, token) = (&http, &gateway, &order, &token);
            async move {
                let body: serde_json::Value = http
                    .get(format!("{gateway}/orders/{order}"))
                    .bearer_auth(token)
                    .send()
                    .await
                    .ok()?
                    .json()
                    .await
                    .ok()?;
                (body["status"] == "PAID").then_some(())
            }
        },
    )
    .await;

    running.workers_task.stop().await.unwrap();
    running.gateway_task.stop().await.unwrap();
    env.cleanup().await;
}
