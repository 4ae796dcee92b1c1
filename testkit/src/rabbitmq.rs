//! What every RabbitMQ node of a test's own needs, inside a network namespace
//! ([`RabbitMqNode`](crate::RabbitMqNode)) or on loopback ([`RabbitMqCluster`](crate::RabbitMqCluster)):
//! Debian's real scripts, its configuration files, the environment that points a node at them and
//! at its own data, and the probe that says it accepts AMQP.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Where Debian's package keeps the real scripts; `/usr/sbin`'s wrappers `su` to the `rabbitmq`
/// user and to the system node's files, which a node of the test's own must not use.
const DEBIAN_SCRIPTS: &str = "/usr/lib/rabbitmq/bin";

/// A RabbitMQ script: Debian's real one, or whatever `PATH` has (a generic Unix install).
pub(crate) fn script(name: &str) -> PathBuf {
    let debian = Path::new(DEBIAN_SCRIPTS).join(name);
    if debian.exists() { debian } else { name.into() }
}

/// Writes into `dir` the configuration a node of the test's own reads instead of the system's:
/// no plugins, `conf` as its `rabbitmq.conf`, and an empty environment file.
pub(crate) fn write_config(dir: &Path, conf: &str) {
    let files = [
        // An empty list: no plugins, which a missing file would not mean.
        ("enabled_plugins", "[].\n"),
        ("rabbitmq.conf", conf),
        // Instead of /etc/rabbitmq/rabbitmq-env.conf, which names the system's node.
        ("rabbitmq-env.conf", ""),
    ];
    for (name, text) in files {
        std::fs::write(dir.join(name), text).expect("writing RabbitMQ's configuration");
    }
}

/// Points `command`, a `rabbitmq-server`, at the files [`write_config`] wrote in `config` (and an
/// `advanced.config` there, if any) and at a Mnesia directory, logs and pid file of its own in
/// `node`; its log goes to its output.
pub(crate) fn node_files<'a>(
    command: &'a mut Command,
    config: &Path,
    node: &Path,
) -> &'a mut Command {
    command
        .env("RABBITMQ_MNESIA_BASE", node.join("mnesia"))
        .env("RABBITMQ_LOG_BASE", node.join("log"))
        .env("RABBITMQ_LOGS", "-")
        .env(
            "RABBITMQ_ENABLED_PLUGINS_FILE",
            config.join("enabled_plugins"),
        )
        .env("RABBITMQ_CONFIG_FILE", config.join("rabbitmq.conf"))
        .env(
            "RABBITMQ_ADVANCED_CONFIG_FILE",
            config.join("advanced.config"),
        )
        .env("RABBITMQ_PID_FILE", node.join("rabbitmq.pid"))
}

/// `Some(())` once the node at `url` accepts an AMQP connection (opened, then closed), for
/// [`wait_for`](crate::wait_for).
pub(crate) async fn accepting_amqp(url: String) -> Option<()> {
    let conn = seckill_infra::broker::connect(&url, "testkit-ready")
        .await
        .ok()?;
    let _ = conn.close(200, "ready".into()).await;
    Some(())
}
