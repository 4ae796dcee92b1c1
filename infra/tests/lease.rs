//! Snowflake node leases against the real Redis: two live processes never share a node id, a
//! renewal keeps it, and a successor starts past its predecessor's ids.

use seckill_infra::scripts::Scripts;
use seckill_schema::Keys;
use seckill_schema::snowflake::{millis_of, node_of};
use seckill_testkit::{Backend, TestEnv};

#[tokio::test]
async fn live_processes_never_share_a_node_id() {
    let env = TestEnv::new(Backend::Postgres);
    let redis = seckill_infra::redis::pool(&env.config.redis_url, 1)
        .await
        .unwrap();
    let scripts = Scripts::new(Keys::new(&env.config.namespace));
    let mut nodes = std::collections::HashSet::new();
    let mut gens = Vec::new();
    for i in 0..20 {
        let g = seckill_infra::lease::acquire(&scripts, &redis, &format!("process-{i}"))
            .await
            .unwrap();
        assert!(nodes.insert(g.node()), "node {} leased twice", g.node());
        gens.push(g);
    }
    // Renewing by the holder keeps the lease; another token is refused.
    let held = gens[0].node();
    assert!(
        scripts
            .lease(redis.next(), held, "process-0", 15_000, 0)
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        scripts
            .lease(redis.next(), held, "intruder", 15_000, 0)
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn a_successor_never_repeats_its_predecessors_ids() {
    let env = TestEnv::new(Backend::Postgres);
    let redis = seckill_infra::redis::pool(&env.config.redis_url, 1)
        .await
        .unwrap();
    let scripts = Scripts::new(Keys::new(&env.config.namespace));
    // A predecessor on node 7 recorded a high-water mark a minute ahead of our clock.
    let ahead = seckill_schema::snowflake::now_ms() + 60_000;
    assert!(
        scripts
            .lease(redis.next(), 7, "old", 1, ahead)
            .await
            .unwrap()
            .is_some()
    );
    // Its lease has lapsed (1 ms TTL): a new process may take node 7, and starts past `ahead`.
    let hwm = seckill_testkit::wait_for(
        "the old lease to lapse",
        std::time::Duration::from_secs(5),
        || async {
            scripts
                .lease(redis.next(), 7, "new", 15_000, 0)
                .await
                .unwrap()
        },
    )
    .await;
    assert!(hwm >= ahead);
    let g = seckill_schema::snowflake::Snowflake::new(7);
    g.start_after(hwm);
    let id = g.next(0);
    assert_eq!(node_of(id), 7);
    assert!(millis_of(id) > ahead);
}
