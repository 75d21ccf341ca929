//! Rows as stored, for moving an entity from one shard to another when a shard is added.
//!
//! An entity is what the ring places: a product (with its variants, stock and the
//! reservations held on them) or a user (with sessions, refresh tokens, API keys and their
//! usage, the cart, orders with their lines, and idempotency records). [`ENTITY_TABLES`] lists
//! each entity's tables, parents first, with the predicate that selects an entity's rows; a
//! backend exports those rows cell by cell, imports them into another shard of the same
//! backend, and deletes them from the old one. The rows are copied exactly, events included
//! nowhere: a move changes where a row lives, not what it says, so it writes no outbox event.
//!
//! What never moves: the directory shard's tables (emails, audit log, id generator leases,
//! processed events, the tally) and every shard's outbox, leases and metadata.

use serde::{Deserialize, Serialize};

/// What the ring places.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Entity {
    /// Placed by the product id's ring key.
    Product,
    /// Placed by the user id's ring key.
    User,
}

impl Entity {
    /// Both kinds, products first.
    pub const ALL: [Entity; 2] = [Entity::Product, Entity::User];

    /// The table whose primary key is the entity's id.
    pub fn root_table(self) -> &'static str {
        self.tables()[0].table
    }

    /// The entity's tables, parents before children.
    pub fn tables(self) -> &'static [TableOf] {
        match self {
            Entity::Product => &PRODUCT_TABLES,
            Entity::User => &USER_TABLES,
        }
    }

    /// The ring key of the entity with this id ([`crate::ProductId::ring_key`],
    /// [`crate::UserId::ring_key`]).
    pub fn ring_key(self, id: i64) -> [u8; 8] {
        let raw = u64::try_from(id).expect("ids are 63-bit");
        match self {
            Entity::Product => crate::ProductId::new(raw).ring_key(),
            Entity::User => crate::UserId::new(raw).ring_key(),
        }
    }
}

/// One table of an entity: its name and the SQL predicate that selects the rows of a set of
/// entities, with `{ids}` standing for the backend's "one of these ids" set expression.
#[derive(Debug, Clone, Copy)]
pub struct TableOf {
    pub table: &'static str,
    pub rows_of: &'static str,
}

const PRODUCT_TABLES: [TableOf; 4] = [
    TableOf {
        table: "products",
        rows_of: "id IN {ids}",
    },
    TableOf {
        table: "variants",
        rows_of: "product_id IN {ids}",
    },
    TableOf {
        table: "stock",
        rows_of: "variant_id IN (SELECT id FROM variants WHERE product_id IN {ids})",
    },
    TableOf {
        table: "reservations",
        rows_of: "product_id IN {ids}",
    },
];

const USER_TABLES: [TableOf; 10] = [
    TableOf {
        table: "users",
        rows_of: "id IN {ids}",
    },
    TableOf {
        table: "sessions",
        rows_of: "user_id IN {ids}",
    },
    TableOf {
        table: "refresh_tokens",
        rows_of: "session_id IN (SELECT id FROM sessions WHERE user_id IN {ids})",
    },
    TableOf {
        table: "api_keys",
        rows_of: "user_id IN {ids}",
    },
    TableOf {
        table: "api_key_usage",
        rows_of: "key_id IN (SELECT id FROM api_keys WHERE user_id IN {ids})",
    },
    TableOf {
        table: "carts",
        rows_of: "user_id IN {ids}",
    },
    TableOf {
        table: "cart_items",
        rows_of: "user_id IN {ids}",
    },
    TableOf {
        table: "orders",
        rows_of: "buyer_id IN {ids}",
    },
    TableOf {
        table: "order_lines",
        rows_of: "order_id IN (SELECT id FROM orders WHERE buyer_id IN {ids})",
    },
    TableOf {
        table: "idempotency",
        rows_of: "user_id IN {ids}",
    },
];

/// Every table an entity's rows live in, for the conformance suite's "nothing left behind".
pub const ENTITY_TABLES: [&[TableOf]; 2] = [&PRODUCT_TABLES, &USER_TABLES];

/// One stored value, typed as the backend stored it; `None` is SQL NULL.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Int(Option<i64>),
    Real(Option<f64>),
    Text(Option<String>),
    Bytes(Option<Vec<u8>>),
    Bool(Option<bool>),
}

/// The rows of one table: column names, then each row's cells in that order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TableRows {
    pub table: String,
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Cell>>,
}

/// The rows of a set of entities, one [`TableRows`] per table, parents first.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EntityRows {
    pub tables: Vec<TableRows>,
}

impl EntityRows {
    /// Rows over every table.
    pub fn row_count(&self) -> usize {
        self.tables.iter().map(|t| t.rows.len()).sum()
    }
}
