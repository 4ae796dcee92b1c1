//! sea-orm entities of the workers' database. Timestamps are milliseconds since the Unix epoch in
//! BIGINT columns: the same on PostgreSQL and MySQL, and what Redis and the messages carry.

pub mod inventory_history;
pub mod items;
pub mod orders;
pub mod payments;
pub mod redis_generations;

#[cfg(test)]
mod tests {
    use sea_orm::EntityName;

    #[test]
    fn each_table_constant_is_its_entity_s_name() {
        assert_eq!(super::orders::Entity.table_name(), super::orders::TABLE);
        assert_eq!(super::items::Entity.table_name(), super::items::TABLE);
        assert_eq!(super::payments::Entity.table_name(), super::payments::TABLE);
        assert_eq!(
            super::inventory_history::Entity.table_name(),
            super::inventory_history::TABLE
        );
        assert_eq!(
            super::redis_generations::Entity.table_name(),
            super::redis_generations::TABLE
        );
    }
}
