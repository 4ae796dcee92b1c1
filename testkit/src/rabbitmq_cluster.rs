//! A RabbitMQ cluster of a test's own, on this machine's loopback: three `rabbitmq-server` nodes
//! (or as many as asked) with node names, ports, data, logs, configuration and Erlang cookie of
//! their own, joined into one cluster, for the tests that kill, stop and restart broker nodes
//! under a running system. The machine's shared node (`rabbit@…` on 5672/25672) is never touched.
//!
//! Unlike [`RabbitMqNode`](crate::RabbitMqNode), which boots inside a network namespace with an
//! `epmd` of its own, these nodes live in the root namespace on 127.0.0.1 and register with the
//! machine's `epmd` (port 4369; a node starts one if none runs, and it is left running). Their names
//! (`skq<hex>_<n>@localhost`) are distinct from the shared node's and from any other test's.

use crate::process::{
    fail_if_exited, kill_group, lock, log_tail, own_temp_dir, remove_own_dir,
    try_spawn_command_logged,
};
use crate::rabbitmq::{accepting_amqp, node_files, script, write_config};
use crate::wait::wait_for;
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a node gets to accept AMQP after it is started: 5 to 15 s on an idle machine, several
/// times that on a busy one.
const READY_DEADLINE: Duration = Duration::from_secs(90);
/// How long one `rabbitmqctl` call may take (each starts an Erlang VM, about a second).
const CTL_DEADLINE: Duration = Duration::from_secs(60);
/// Ports the nodes never take: epmd, the shared node's AMQP, management and distribution ports,
/// and the range RabbitMQ's CLI tools take their own distribution port from (25672 + 10000 and
/// the ten above: a node given one of these fails to listen while a `rabbitmqctl` runs), and the
/// other shared servers'.
const RESERVED: [(u16, u16); 6] = [
    (4369, 4369),
    (5672, 5672),
    (15672, 15672),
    (25672, 25672),
    (35672, 35682),
    (26379, 26379),
];
/// Erlang VM flags for every node: no busy-waiting schedulers, so that three idle nodes leave the
/// machine's cores to the system under test.
const ERL_ARGS: &str = "+sbwt none +sbwtdcpu none +sbwtdio none";

/// A RabbitMQ cluster owned by a test: nodes `skq<hex>_1@localhost`, `…_2`, `…_3` on free ports of
/// 127.0.0.1 (AMQP and distribution), each with its Mnesia directory, logs and output under one
/// temporary directory, sharing a configuration (`loopback_users = none`, distribution on
/// 127.0.0.1), no plugins and an Erlang cookie of the test's own. Every node is killed (SIGKILL,
/// with the Erlang VM's helpers) and the directory removed when the cluster is dropped (set
/// `SECKILL_KEEP_TEST_DATA` to keep it).
///
/// Nodes are numbered from 0 in the methods: node `i` is named `…_<i + 1>`.
///
/// ```ignore
/// let cluster = RabbitMqCluster::start().await;
/// env.config.amqp_url = cluster.url(); // every node, comma-separated
/// let (busiest, _) = cluster.busiest(&format!("{}.", env.config.namespace)).await;
/// cluster.kill(busiest);
/// cluster.stop_app(other).await;
/// cluster.start_app(other).await;
/// cluster.restart(busiest).await;
/// ```
pub struct RabbitMqCluster {
    tag: String,
    /// `home/` (the cookie), `rabbitmq.conf`, `enabled_plugins`, `rabbitmq-env.conf`, and a
    /// directory per node (`node<i>/`: `mnesia/`, `log/`, `output.log`).
    root: PathBuf,
    nodes: Vec<Node>,
}

struct Node {
    name: String,
    port: u16,
    dist_port: u16,
    dir: PathBuf,
    /// The `rabbitmq-server` script, leader of a process group with the VM it starts.
    child: Mutex<Option<Child>>,
}

impl RabbitMqCluster {
    /// Starts a three-node cluster and returns once every node runs in it and accepts AMQP.
    pub async fn start() -> RabbitMqCluster {
        RabbitMqCluster::start_nodes(3).await
    }

    /// Starts `count` nodes at once, then joins the second and later ones to the first
    /// (`rabbitmqctl stop_app`, `join_cluster <first>`, `start_app`), one after the other. Fails
    /// the test, with the node's log, if a node exits or is not ready within 90 s, or a join
    /// fails.
    pub async fn start_nodes(count: usize) -> RabbitMqCluster {
        assert!(count >= 1, "a cluster of no node");
        let tag = format!("skq{:08x}", rand::random::<u32>());
        let root = own_temp_dir("rabbitmq-cluster");
        let home = root.join("home");
        std::fs::create_dir_all(&home).expect("creating the cluster's home");
        let cookie: String = (0..20)
            .map(|_| char::from(b'A' + rand::random_range(0..26u8)))
            .collect();
        let cookie_path = home.join(".erlang.cookie");
        std::fs::write(&cookie_path, cookie).expect("writing the Erlang cookie");
        std::fs::set_permissions(&cookie_path, std::fs::Permissions::from_mode(0o400))
            .expect("making the Erlang cookie private");
        write_config(
            &root,
            "loopback_users = none\ndistribution.listener.interface = 127.0.0.1\n",
        );
        let mut taken = Vec::new();
        let nodes = (1..=count)
            .map(|n| {
                let dir = root.join(format!("node{n}"));
                std::fs::create_dir_all(&dir).expect("creating a node's directory");
                Node {
                    name: format!("{tag}_{n}@localhost"),
                    port: cluster_port(&mut taken),
                    dist_port: cluster_port(&mut taken),
                    dir,
                    child: Mutex::new(None),
                }
            })
            .collect();
        let cluster = RabbitMqCluster { tag, root, nodes };
        for i in 0..count {
            cluster.boot(i);
        }
        for i in 0..count {
            cluster.wait_amqp(i).await;
        }
        let first = cluster.nodes[0].name.clone();
        for i in 1..count {
            cluster.ctl_ok(i, &["stop_app"]).await;
            cluster.ctl_ok(i, &["join_cluster", &first]).await;
            cluster.ctl_ok(i, &["start_app"]).await;
        }
        let running = cluster
            .ctl_ok(0, &["eval", "rabbit_nodes:all_running()."])
            .await;
        for node in &cluster.nodes {
            assert!(
                running.contains(&node.name),
                "{} is not among the running nodes of the cluster: {running}",
                node.name
            );
        }
        for i in 0..count {
            cluster.wait_amqp(i).await;
        }
        cluster
    }

    /// How many nodes the cluster has.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The `skq<hex>` every node's name starts with.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// Node `i`'s Erlang name, `skq<hex>_<i + 1>@localhost`.
    pub fn node_name(&self, i: usize) -> &str {
        &self.nodes[i].name
    }

    /// The index of the node called `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// Node `i`'s AMQP port on 127.0.0.1.
    pub fn port(&self, i: usize) -> u16 {
        self.nodes[i].port
    }

    /// Node `i`'s distribution port.
    pub fn dist_port(&self, i: usize) -> u16 {
        self.nodes[i].dist_port
    }

    /// `amqp://guest:guest@127.0.0.1:<port>/%2f` of node `i`.
    pub fn node_url(&self, i: usize) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.nodes[i].port)
    }

    /// Every node's URL, comma-separated: a `SECKILL_AMQP_URL` for the cluster.
    pub fn url(&self) -> String {
        (0..self.len())
            .map(|i| self.node_url(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Node `i`'s output (RabbitMQ's log goes there too), across its restarts.
    pub fn log_path(&self, i: usize) -> PathBuf {
        self.nodes[i].dir.join("output.log")
    }

    /// Is node `i`'s VM running (not killed)? Its RabbitMQ application may be stopped.
    pub fn is_running(&self, i: usize) -> bool {
        lock(&self.nodes[i].child)
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// SIGKILLs node `i`'s VM (with the script that started it and the VM's helpers: they share
    /// a process group) and reaps it. Its connections break at once; its data stays for
    /// [`restart`](Self::restart).
    pub fn kill(&self, i: usize) {
        let mut slot = lock(&self.nodes[i].child);
        if let Some(mut child) = slot.take() {
            kill_group(child.id());
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts node `i` again from its data (killing it first if it runs) and returns once it
    /// accepts AMQP: it rejoins the cluster by itself.
    pub async fn restart(&self, i: usize) {
        self.kill(i);
        // The machine's epmd forgets a node when its connection closes; a node that registers
        // its name before that fails to start.
        let name = self.nodes[i].name.clone();
        let short = name.split('@').next().unwrap_or_default().to_owned();
        wait_for(
            &format!("epmd to forget {name}"),
            Duration::from_secs(20),
            || {
                let short = short.clone();
                async move {
                    let out = tokio::process::Command::new("epmd")
                        .arg("-names")
                        .output()
                        .await
                        .ok()?;
                    let listed = String::from_utf8_lossy(&out.stdout)
                        .lines()
                        .any(|l| l.starts_with(&format!("name {short} at port")));
                    (!listed).then_some(())
                }
            },
        )
        .await;
        self.boot(i);
        self.wait_amqp(i).await;
    }

    /// `rabbitmqctl stop_app` on node `i`: the VM stays up, in the cluster, while RabbitMQ stops
    /// (closing its connections; its quorum queue members go offline).
    pub async fn stop_app(&self, i: usize) {
        self.ctl_ok(i, &["stop_app"]).await;
    }

    /// `rabbitmqctl start_app` on node `i`, then waits until it accepts AMQP.
    pub async fn start_app(&self, i: usize) {
        self.ctl_ok(i, &["start_app"]).await;
        self.wait_amqp(i).await;
    }

    /// Each queue's leader (its name → the leader's node name), from `rabbitmqctl list_queues
    /// name leader` asked of the first node that answers. Quorum queues only have leaders;
    /// others show an empty leader.
    pub async fn leaders(&self) -> BTreeMap<String, String> {
        let mut errors = Vec::new();
        for i in 0..self.len() {
            if !self.is_running(i) {
                continue;
            }
            let listed = self
                .ctl(
                    i,
                    &["list_queues", "name", "leader", "-q", "--no-table-headers"],
                )
                .await;
            match listed {
                Ok(out) => {
                    return out
                        .lines()
                        .filter_map(|l| {
                            let (queue, leader) = l.split_once('\t')?;
                            Some((queue.trim().to_owned(), leader.trim().to_owned()))
                        })
                        .collect();
                }
                Err(e) => errors.push(e),
            }
        }
        panic!(
            "no node of the cluster listed its queues: {}",
            errors.join("; ")
        )
    }

    /// How many of the queues whose names start with `prefix` each node leads, by node index.
    pub async fn leader_counts(&self, prefix: &str) -> Vec<usize> {
        let mut counts = vec![0; self.len()];
        for (queue, leader) in self.leaders().await {
            if let (true, Some(i)) = (queue.starts_with(prefix), self.index_of(&leader)) {
                counts[i] += 1;
            }
        }
        counts
    }

    /// The node that leads the most queues whose names start with `prefix` (the lowest index on
    /// a tie), and how many it leads.
    pub async fn busiest(&self, prefix: &str) -> (usize, usize) {
        let counts = self.leader_counts(prefix).await;
        let most = counts.iter().copied().max().unwrap_or(0);
        let i = counts.iter().position(|c| *c == most).unwrap_or(0);
        (i, most)
    }

    /// `rabbitmqctl -n <node i> <args>`, with the cluster's cookie, within 60 s: its standard
    /// output, or what went wrong.
    pub async fn ctl(&self, i: usize, args: &[&str]) -> Result<String, String> {
        let mut command = tokio::process::Command::from(self.ctl_command(i));
        command.args(args).kill_on_drop(true);
        let what = format!("rabbitmqctl -n {} {}", self.nodes[i].name, args.join(" "));
        match tokio::time::timeout(CTL_DEADLINE, command.output()).await {
            Err(_) => Err(format!("{what}: no answer within {CTL_DEADLINE:?}")),
            Ok(Err(e)) => Err(format!("{what}: {e}")),
            Ok(Ok(out)) if out.status.success() => {
                Ok(String::from_utf8_lossy(&out.stdout).into_owned())
            }
            Ok(Ok(out)) => Err(format!(
                "{what}: {}: {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )),
        }
    }

    /// `rabbitmqctl -n <node i>` with the cluster's cookie, for the caller to add a command to.
    pub fn ctl_command(&self, i: usize) -> Command {
        let mut command = Command::new(script("rabbitmqctl"));
        self.shared_environment(&mut command);
        command.args(["-n", &self.nodes[i].name]);
        command
    }

    /// [`ctl`](Self::ctl), failing the test with node `i`'s log if it fails.
    async fn ctl_ok(&self, i: usize, args: &[&str]) -> String {
        match self.ctl(i, args).await {
            Ok(out) => out,
            Err(e) => panic!("{e}\nthe node's log:\n{}", log_tail(&self.log_path(i))),
        }
    }

    /// What the nodes and `rabbitmqctl` share: the cookie's home, no system-wide environment file.
    fn shared_environment(&self, command: &mut Command) {
        command
            .env("HOME", self.root.join("home"))
            .env(
                "RABBITMQ_CONF_ENV_FILE",
                self.root.join("rabbitmq-env.conf"),
            )
            .env_remove("RABBITMQ_NODENAME")
            .env_remove("RABBITMQ_ERLANG_COOKIE")
            .env_remove("ERL_FLAGS");
    }

    /// Spawns node `i`'s `rabbitmq-server`, its output appended to its log.
    fn boot(&self, i: usize) {
        let node = &self.nodes[i];
        let d = &node.dir;
        let mut command = Command::new(script("rabbitmq-server"));
        self.shared_environment(&mut command);
        node_files(&mut command, &self.root, d)
            .env("RABBITMQ_NODENAME", &node.name)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", node.port.to_string())
            .env("RABBITMQ_DIST_PORT", node.dist_port.to_string())
            .env("RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS", ERL_ARGS)
            .current_dir(d)
            // The script forks the VM and stays as its parent: a group of their own lets a kill
            // reach both, and the VM's helpers, at once.
            .process_group(0);
        let child = try_spawn_command_logged(command, &self.log_path(i))
            .unwrap_or_else(|e| panic!("starting rabbitmq-server for {}: {e}", node.name));
        *lock(&node.child) = Some(child);
    }

    /// Waits until node `i` accepts an AMQP connection; fails the test with its log if it exits
    /// first or is not ready within 90 s.
    async fn wait_amqp(&self, i: usize) {
        let url = self.node_url(i);
        let what = format!(
            "RabbitMQ node {} to accept AMQP on {url}",
            self.nodes[i].name
        );
        let who = format!("rabbitmq-server {}", self.nodes[i].name);
        wait_for(&what, READY_DEADLINE, || {
            fail_if_exited(
                &self.nodes[i].child,
                &who,
                "accepting AMQP",
                &self.log_path(i),
            );
            accepting_amqp(url.clone())
        })
        .await;
    }
}

impl Drop for RabbitMqCluster {
    fn drop(&mut self) {
        for i in 0..self.len() {
            self.kill(i);
        }
        remove_own_dir(&self.root);
    }
}

/// A port for a node: free on 127.0.0.1, below the kernel's ephemeral range (so that no outgoing
/// connection takes it as its source port while its node is down for a restart), none of the
/// reserved ones, and not taken by another node of the cluster.
fn cluster_port(taken: &mut Vec<u16>) -> u16 {
    let ephemeral_low: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768);
    let high = ephemeral_low.max(12_000);
    let started = Instant::now();
    loop {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no free port for a RabbitMQ node below {high}"
        );
        let port = rand::random_range(10_000..high);
        let reserved = RESERVED
            .iter()
            .any(|(low, high)| (*low..=*high).contains(&port));
        if reserved || taken.contains(&port) {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            taken.push(port);
            return port;
        }
    }
}
