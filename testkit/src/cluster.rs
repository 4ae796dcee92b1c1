//! A Redis Cluster of a test's own, made of [`RedisServer`] cluster nodes.

use crate::redis::{READY_DEADLINE, RedisOptions, RedisServer};
use crate::resp::{Resp, command};
use crate::wait::wait_for;

/// A Redis Cluster owned by a test: `redis-server` nodes ([`RedisOptions::cluster`]) on free
/// ports of 127.0.0.1, the 16384 slots shared evenly by the primaries, each primary with its
/// replicas. Every node is killed and its directory removed when the cluster is dropped.
///
/// ```ignore
/// let cluster = RedisCluster::start(3, 1).await;
/// let client = seckill_infra::redis::client(&cluster.url()).await?;
/// let first = &cluster.primaries()[0];
/// let its_replica = &cluster.replicas_of(0)[0];
/// ```
pub struct RedisCluster {
    /// The primaries, then the replicas of the first primary, of the second, …
    nodes: Vec<RedisServer>,
    primaries: usize,
}

impl RedisCluster {
    /// [`start_with`](Self::start_with) every node on [`RedisOptions::default`].
    pub async fn start(primaries: usize, replicas_per_primary: usize) -> RedisCluster {
        RedisCluster::start_with(primaries, replicas_per_primary, |_| RedisOptions::default()).await
    }

    /// Starts `primaries` primaries and `replicas_per_primary` replicas of each, node `i` on
    /// `options(i).cluster()` (nodes `0..primaries` are the primaries, then come the replicas of
    /// primary 0, of primary 1, …), and makes them one cluster: `CLUSTER ADDSLOTSRANGE` on each
    /// primary, `CLUSTER MEET` from the first node, `CLUSTER REPLICATE` on each replica. (Not
    /// `redis-cli --cluster create`, which wants at least three primaries.) Returns once every
    /// node reports `cluster_state:ok` and every primary has its replicas online; fails the test
    /// if that takes more than 20 s a step.
    pub async fn start_with(
        primaries: usize,
        replicas_per_primary: usize,
        mut options: impl FnMut(usize) -> RedisOptions,
    ) -> RedisCluster {
        assert!(primaries > 0, "a cluster needs a primary");
        let count = primaries * (1 + replicas_per_primary);
        let mut nodes = Vec::with_capacity(count);
        for i in 0..count {
            nodes.push(RedisServer::start_ready(options(i).cluster()).await);
        }
        let cluster = RedisCluster { nodes, primaries };

        const SLOTS: usize = 16384;
        for (p, primary) in cluster.primaries().iter().enumerate() {
            let from = (p * SLOTS / primaries).to_string();
            let to = ((p + 1) * SLOTS / primaries - 1).to_string();
            cluster_ok(primary, &["CLUSTER", "ADDSLOTSRANGE", &from, &to]).await;
        }
        let first = &cluster.nodes[0];
        for node in &cluster.nodes[1..] {
            let port = node.port().to_string();
            let bus = node.cluster_bus_port().expect("a cluster node").to_string();
            cluster_ok(first, &["CLUSTER", "MEET", "127.0.0.1", &port, &bus]).await;
        }
        for (p, primary) in cluster.primaries().iter().enumerate() {
            let id = match command(primary.port(), &["CLUSTER", "MYID"]).await {
                Some(Resp::Bulk(Some(id))) => id,
                other => panic!("CLUSTER MYID on port {}: {other:?}", primary.port()),
            };
            for replica in cluster.replicas_of(p) {
                // A node may only follow a primary it has heard of (by gossip, after the MEETs).
                let what = format!("the node on port {} to follow its primary", replica.port());
                wait_for(&what, READY_DEADLINE, || {
                    let id = id.clone();
                    async move {
                        let reply = command(replica.port(), &["CLUSTER", "REPLICATE", &id]).await;
                        matches!(reply, Some(Resp::Simple(ok)) if ok == "OK").then_some(())
                    }
                })
                .await;
            }
        }
        for node in &cluster.nodes {
            let what = format!(
                "the node on port {} to report cluster_state:ok",
                node.port()
            );
            wait_for(&what, READY_DEADLINE, || async move {
                let info = match command(node.port(), &["CLUSTER", "INFO"]).await? {
                    Resp::Bulk(info) => info?,
                    _ => return None,
                };
                info.contains("cluster_state:ok").then_some(())
            })
            .await;
        }
        for primary in cluster.primaries() {
            primary.wait_replicas_online(replicas_per_primary).await;
        }
        cluster
    }

    /// `redis-cluster://127.0.0.1:<port>?node=127.0.0.1:<port>&…`, naming every primary: a
    /// `SECKILL_REDIS_URL` for the cluster.
    pub fn url(&self) -> String {
        let mut ports = self.primaries().iter().map(RedisServer::port);
        let first = ports.next().expect("a cluster has a primary");
        let nodes: Vec<String> = ports.map(|p| format!("node=127.0.0.1:{p}")).collect();
        if nodes.is_empty() {
            format!("redis-cluster://127.0.0.1:{first}")
        } else {
            format!("redis-cluster://127.0.0.1:{first}?{}", nodes.join("&"))
        }
    }

    /// Every node: the primaries, then the replicas of each in turn.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// The primaries, in the order of the slots they serve.
    pub fn primaries(&self) -> &[RedisServer] {
        &self.nodes[..self.primaries]
    }

    /// The replicas of primary `p` (an index into [`primaries`](Self::primaries)).
    pub fn replicas_of(&self, p: usize) -> &[RedisServer] {
        assert!(p < self.primaries, "primary {p} of {}", self.primaries);
        let per = (self.nodes.len() - self.primaries) / self.primaries;
        let from = self.primaries + p * per;
        &self.nodes[from..from + per]
    }
}

/// Sends a command that must answer `+OK` to a cluster node; fails the test otherwise.
async fn cluster_ok(node: &RedisServer, args: &[&str]) {
    let reply = command(node.port(), args).await;
    assert!(
        matches!(&reply, Some(Resp::Simple(ok)) if ok == "OK"),
        "{} on port {}: {reply:?}",
        args.join(" "),
        node.port()
    );
}
