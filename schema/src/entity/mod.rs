//! sea-orm entities of the workers' database. Timestamps are milliseconds since the Unix epoch in
//! BIGINT columns: the same on PostgreSQL and MySQL, and what Redis and the messages carry.

pub mod inventory_history;
pub mod items;
pub mod orders;
pub mod payments;
