//! The catalog's entities: a product and its sellable variants. The serde derives are for
//! Bazaar's own internal encodings (the Redis cache tier), not a wire format: only the `api`
//! crate decides what clients see.

use serde::{Deserialize, Serialize};

use crate::id::{ProductId, UserId, VariantId};
use crate::money::Money;

/// A product as listed: everything but its variants.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Product {
    pub id: ProductId,
    pub name: String,
    pub description: String,
    pub brand: String,
    pub category: String,
    /// The lowest price among the product's variants ("from $x").
    pub price: Money,
    /// Milliseconds since the Unix epoch, UTC.
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    /// The seller who may edit it; `None` for the house catalog, which only admins edit.
    pub seller_id: Option<UserId>,
    /// Edits so far (product or variant fields, not stock): what preconditions compare.
    pub version: i64,
    /// Views flushed to the store so far (the catalog adds the ones still buffered).
    pub view_count: i64,
}

/// A sellable version of a product, with its stock.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Variant {
    pub id: VariantId,
    pub product_id: ProductId,
    pub sku: String,
    pub color: String,
    pub size: String,
    pub price: Money,
    /// Units on hand; never negative (a database constraint).
    pub stock_level: i64,
}

/// A product with all of its variants, as one unit of writing and of detailed reading.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProductWithVariants {
    pub product: Product,
    pub variants: Vec<Variant>,
}
