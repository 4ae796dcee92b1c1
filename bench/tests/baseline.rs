//! The baseline measures both ceilings for real (oha and redis-benchmark must be installed, as
//! `scripts/services.sh` makes sure) and leaves no scratch keys behind.

use fred::prelude::*;

#[tokio::test]
async fn measures_the_bare_server_and_the_purchase_script() {
    let redis_url = seckill_infra::Config::from_env().unwrap().redis_url;
    let out = std::env::temp_dir().join(format!("seckill-bench-baseline-{}", std::process::id()));
    std::fs::create_dir_all(&out).unwrap();

    let b = seckill_bench::baseline::run(&redis_url, 500, 4, None, &out)
        .await
        .unwrap();
    assert_eq!(b.http.count(202), 500);
    assert!(b.http.requests_per_sec > 0.0 && b.http.p99_ms.is_some());
    assert!(b.redis.requests_per_sec > 0.0);
    // Every call was a new buyer of a stock that never runs out.
    assert_eq!(b.redis.purchases, 500);
    assert!(out.join("baseline-oha.json").exists());

    let redis = seckill_infra::redis::client(&redis_url).await.unwrap();
    let pattern = format!("bench_scratch_{}_*", std::process::id());
    let mut cursor = "0".to_owned();
    loop {
        let (next, left): (String, Vec<String>) = redis
            .custom(
                fred::cmd!("SCAN"),
                vec![cursor.as_str(), "MATCH", &pattern, "COUNT", "10000"],
            )
            .await
            .unwrap();
        assert!(left.is_empty(), "scratch keys left: {left:?}");
        if next == "0" {
            break;
        }
        cursor = next;
    }
    let _ = redis.quit().await;
    let _ = std::fs::remove_dir_all(&out);
}
