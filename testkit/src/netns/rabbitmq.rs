//! A RabbitMQ node of a test's own inside a [`Host`]: its own node name, Mnesia directory, Erlang
//! cookie and ports, listening on the host's address, so that a partition can come between it and
//! its clients (the machine's shared RabbitMQ is never touched).

use super::Host;
use crate::process::{fail_if_exited, kill_child, kill_group, lock, own_temp_dir, remove_own_dir};
use crate::rabbitmq::{accepting_amqp, node_files, script, write_config};
use crate::redis::free_port;
use crate::wait::wait_for;
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

/// How long [`RabbitMqNode::start`] waits for AMQP to answer: the node boots in 5 to 10 s on an
/// idle machine, several times that on a busy one.
const READY_DEADLINE: Duration = Duration::from_secs(90);

/// A `rabbitmq-server` owned by a test, in a [`Host`]: node `sk_<hex>@localhost`, AMQP on a free
/// port of the host's address, the `guest` user allowed from any address (`loopback_users =
/// none`), no plugins, everything (Mnesia, logs, cookie) in a temporary directory of its own.
/// Killed (SIGKILL, with the Erlang VM's helpers) and its directory removed when dropped; the
/// host's `epmd` is stopped if no other node uses it, and goes with the [`Network`](super::Network)
/// otherwise.
///
/// The node name's host is `localhost`: the node and `rabbitmqctl` ([`ctl`](Self::ctl)) find each
/// other through the `epmd` of the host's own namespace, on its own loopback, which nothing
/// else shares (the machine's RabbitMQ and its `epmd` live in the root namespace).
///
/// ```ignore
/// let mq = RabbitMqNode::start(&net.host("mq")).await;
/// let conn = seckill_infra::broker::connect(&mq.url(), "test").await?;
/// ```
pub struct RabbitMqNode {
    host: Host,
    node: String,
    port: u16,
    /// The temporary directory: `home/` (the cookie), `mnesia/`, `log/`, the config files and
    /// `rabbitmq.log` (the node's output).
    root: PathBuf,
    child: Mutex<Option<Child>>,
}

impl RabbitMqNode {
    /// Starts the node in `host` and returns once an AMQP connection to [`url`](Self::url) from the
    /// test's namespace succeeds. Fails the test, with the node's log, if it exits first or is not
    /// ready within 90 s.
    pub async fn start(host: &Host) -> RabbitMqNode {
        RabbitMqNode::start_with_advanced_config(host, "").await
    }

    /// [`start`](Self::start) with `advanced` (Erlang terms, e.g.
    /// `[{rabbit, [{consumer_timeout, 3000}, {channel_tick_interval, 500}]}].`) as the node's
    /// `advanced.config`: the settings `rabbitmq.conf` cannot express, such as how often a channel
    /// checks its consumers' acknowledgement timeouts (once a minute by default). Empty: none.
    pub async fn start_with_advanced_config(host: &Host, advanced: &str) -> RabbitMqNode {
        let root = own_temp_dir("rabbitmq");
        std::fs::create_dir_all(root.join("home")).expect("creating the RabbitMQ home");
        write_config(&root, "loopback_users = none\n");
        if !advanced.trim().is_empty() {
            std::fs::write(root.join("advanced.config"), advanced)
                .expect("writing RabbitMQ's advanced.config");
        }
        let node = RabbitMqNode {
            host: host.clone(),
            node: format!("sk_{:08x}@localhost", rand::random::<u32>()),
            port: free_port(),
            root,
            child: Mutex::new(None),
        };
        // The default distribution port is the AMQP port + 20000, past 65535 for many free ports.
        let dist_port = free_port();
        let mut command = host.command(script("rabbitmq-server"));
        node.environment(&mut command);
        let r = &node.root;
        node_files(&mut command, r, r)
            .env("RABBITMQ_NODE_IP_ADDRESS", host.ip().to_string())
            .env("RABBITMQ_NODE_PORT", node.port.to_string())
            .env("RABBITMQ_DIST_PORT", dist_port.to_string())
            .current_dir(r)
            // The script forks the VM and stays as its parent: a group of their own lets the drop
            // kill both at once.
            .process_group(0);
        let child = crate::process::try_spawn_command_logged(command, &node.log_path())
            .unwrap_or_else(|e| panic!("starting rabbitmq-server in {}: {e}", host.netns()));
        *lock(&node.child) = Some(child);
        node.wait_ready().await;
        node
    }

    pub fn host(&self) -> &Host {
        &self.host
    }

    /// The Erlang node's name, `sk_<hex>@localhost`.
    pub fn node_name(&self) -> &str {
        &self.node
    }

    /// The AMQP port on the host's address.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `amqp://guest:guest@<host ip>:<port>/%2f`: a `SECKILL_AMQP_URL`, reachable from the test
    /// and from every host.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@{}:{}/%2f", self.host.ip(), self.port)
    }

    /// The node's output (RabbitMQ's log goes there too).
    pub fn log_path(&self) -> PathBuf {
        self.root.join("rabbitmq.log")
    }

    /// `rabbitmqctl -n <node>`, inside the host, with the node's cookie: add the command and run
    /// it, e.g. `node.ctl().args(["list_queues"]).output()`. Each call starts an Erlang VM, about
    /// a second.
    pub fn ctl(&self) -> Command {
        let mut command = self.host.command(script("rabbitmqctl"));
        self.environment(&mut command);
        command.args(["-n", &self.node]);
        command
    }

    /// What the node and `rabbitmqctl` share: the cookie's home, the node's name, no system-wide
    /// environment file.
    fn environment(&self, command: &mut Command) {
        command
            .env("HOME", self.root.join("home"))
            .env("RABBITMQ_NODENAME", &self.node)
            .env(
                "RABBITMQ_CONF_ENV_FILE",
                self.root.join("rabbitmq-env.conf"),
            );
    }

    async fn wait_ready(&self) {
        let what = format!(
            "RabbitMQ node {} to accept AMQP on {}",
            self.node,
            self.url()
        );
        wait_for(&what, READY_DEADLINE, || {
            let who = format!("rabbitmq-server in {}", self.host.netns());
            fail_if_exited(&self.child, &who, "accepting AMQP", &self.log_path());
            accepting_amqp(self.url())
        })
        .await;
    }
}

impl Drop for RabbitMqNode {
    fn drop(&mut self) {
        // The script and the VM share the process group; the VM's port programs
        // (erl_child_setup, inet_gethost) exit with it.
        if let Some(pid) = lock(&self.child).as_ref().map(Child::id) {
            kill_group(pid);
        }
        kill_child(&mut self.child);
        // epmd daemonized itself out of the group. `epmd -kill` refuses while another node is
        // registered; the Network's drop ends it then.
        let _ = self
            .host
            .command("epmd")
            .arg("-kill")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        remove_own_dir(&self.root);
    }
}
