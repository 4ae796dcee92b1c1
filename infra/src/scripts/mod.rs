//! The Lua scripts of `lua/`, loaded with `include_str!`, and the decoding of their answers into
//! Rust types at once: no magic numbers travel further than these modules. One module per concern;
//! each adds its calls to [`Scripts`], which holds every script and the key layout.

mod leases;
mod purchase;
mod read_model;
mod rebuild;
mod shards;
mod stock;

pub use leases::*;
pub use purchase::*;
pub use read_model::*;
pub use rebuild::*;
pub use shards::*;
pub use stock::*;

use fred::prelude::*;
use fred::types::scripts::Script;
use seckill_schema::keys::Keys;

#[derive(Debug, thiserror::Error)]
#[error("unexpected answer from a Lua script: {0}")]
pub struct BadScriptReply(pub String);

#[derive(Debug, thiserror::Error)]
pub enum ScriptError {
    #[error(transparent)]
    Redis(#[from] fred::error::Error),
    #[error(transparent)]
    Reply(#[from] BadScriptReply),
    /// The gene's state is being rebuilt from the database: try again shortly.
    #[error("Redis is rebuilding the state of hash tag {{g{0}}} from the database")]
    Recovering(u8),
}

/// An integer of a script's answer, sent as a Redis integer or as a string.
fn int(v: Option<&Value>) -> Option<i64> {
    let v = v?;
    v.as_i64().or_else(|| v.as_string()?.parse().ok())
}

#[derive(Clone)]
pub struct Scripts {
    keys: Keys,
    purchase: Script,
    release: Script,
    mirror: Script,
    warm_item: Script,
    lease: Script,
    relay_lease: Script,
    lookup_order: Script,
    rebuild_item: Script,
    rebuild_orders: Script,
    rebuild_done: Script,
    rebuild_abort: Script,
    adjust_stock: Script,
    undo_adjustment: Script,
    item_settings: Script,
    transfer_out: Script,
    transfer_in: Script,
    transfer_done: Script,
    shard_state: Script,
    reshard: Script,
}

impl Scripts {
    pub fn new(keys: Keys) -> Self {
        Scripts {
            keys,
            purchase: Script::from_lua(PURCHASE),
            release: Script::from_lua(RELEASE),
            mirror: Script::from_lua(MIRROR),
            warm_item: Script::from_lua(WARM_ITEM),
            lease: Script::from_lua(LEASE),
            relay_lease: Script::from_lua(RELAY_LEASE),
            lookup_order: Script::from_lua(LOOKUP_ORDER),
            rebuild_item: Script::from_lua(REBUILD_ITEM),
            rebuild_orders: Script::from_lua(REBUILD_ORDERS),
            rebuild_done: Script::from_lua(REBUILD_DONE),
            rebuild_abort: Script::from_lua(REBUILD_ABORT),
            adjust_stock: Script::from_lua(ADJUST_STOCK),
            undo_adjustment: Script::from_lua(UNDO_ADJUSTMENT),
            item_settings: Script::from_lua(ITEM_SETTINGS),
            transfer_out: Script::from_lua(TRANSFER_OUT),
            transfer_in: Script::from_lua(TRANSFER_IN),
            transfer_done: Script::from_lua(TRANSFER_DONE),
            shard_state: Script::from_lua(SHARD_STATE),
            reshard: Script::from_lua(RESHARD),
        }
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_scripts_that_touch_a_record_start_with_its_field_names() {
        for script in [
            super::PURCHASE,
            super::MIRROR,
            super::RELEASE,
            super::REBUILD_ORDERS,
            super::LOOKUP_ORDER,
        ] {
            assert!(script.starts_with(include_str!("../../../lua/record.lua")));
        }
    }
}
