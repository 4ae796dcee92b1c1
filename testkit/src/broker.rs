//! RabbitMQ as a test sees it: how many messages a queue holds, and a queue of the test's own that
//! sees what an exchange routes.

use lapin::options::{QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;

/// Messages ready in `queue`, by a passive declare on a connection of its own; `None` when there is
/// no such queue.
pub async fn queue_depth(amqp_url: &str, queue: &str) -> Option<u32> {
    let conn = seckill_infra::broker::connect(amqp_url, "test-probe")
        .await
        .expect("connecting to RabbitMQ");
    let ch = conn.create_channel().await.expect("opening a channel");
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let declared = ch
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await;
    let _ = conn.close(200, "bye".into()).await;
    declared.ok().map(|q| q.message_count())
}

/// Declares a queue of the test's own on `channel`, exclusive and auto-deleted, bound to `exchange`
/// with `routing_key`; returns its name. It holds every message so routed from now on.
pub async fn bind_own_queue(channel: &lapin::Channel, exchange: &str, routing_key: &str) -> String {
    let queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("declaring the test's own queue");
    let name = queue.name().to_string();
    channel
        .queue_bind(
            name.as_str().into(),
            exchange.into(),
            routing_key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("binding the test's own queue");
    name
}
