//! The catalog's write inputs and outcomes. The entities themselves (products, variants,
//! money) are `bazaar-domain`'s, re-exported here so the store's interface reads as one.

pub use bazaar_domain::catalog::{Product, ProductWithVariants, Variant};
pub use bazaar_domain::money::{Currency, Money};

/// Changes to a product's own fields; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProductPatch {
    pub name: Option<String>,
    pub description: Option<String>,
    pub brand: Option<String>,
    pub category: Option<String>,
}

/// Changes to a variant; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VariantPatch {
    pub sku: Option<String>,
    pub color: Option<String>,
    pub size: Option<String>,
    pub price: Option<Money>,
    /// Sets the units on hand (a restock or correction by the seller).
    pub stock_level: Option<i64>,
}

/// What a conditional catalog write found.
#[derive(Debug, Clone, PartialEq)]
pub enum WriteOutcome {
    /// Written; the product as it now is (absent after a delete).
    Done(Option<ProductWithVariants>),
    /// The product (or the variant under it) does not exist.
    NotFound,
    /// The product's version is no longer the one the caller read.
    VersionMismatch { current: i64 },
}
