//! The catalog's write inputs and outcomes. The entities themselves (products, variants,
//! money) are `bazaar-domain`'s, re-exported here so the store's interface reads as one.

pub use bazaar_domain::catalog::{Product, ProductWithVariants, Variant};
pub use bazaar_domain::money::{Currency, Money};

use crate::id::{ProductId, VariantId};

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

impl WriteOutcome {
    /// What a version-checked write that changed no row reports, given the version stored now
    /// (`None`: no such product). Backends call it after a conditional write matched nothing,
    /// or with the version read under the product's lock before writing.
    pub(crate) fn refused(current: Option<i64>) -> Self {
        match current {
            None => Self::NotFound,
            Some(current) => Self::VersionMismatch { current },
        }
    }

    /// `Some(outcome)` if a write expecting `expected` must not proceed over the product at
    /// `current` (read under a lock the write holds until it commits); `None` lets it proceed.
    pub(crate) fn precondition(current: Option<i64>, expected: i64) -> Option<Self> {
        match current {
            Some(current) if current == expected => None,
            other => Some(Self::refused(other)),
        }
    }
}

/// What a variant edit does to the variant's stock, decided from the level it replaces.
#[derive(Debug)]
pub(crate) struct StockEdit {
    /// The level to write to the stock row, if it must be written.
    pub(crate) write: Option<i64>,
    /// The variant's level after the edit: what `variant.updated` reports.
    pub(crate) level: i64,
    /// `stock.changed`, written only when the level actually moved.
    pub(crate) changed: Option<crate::events::NewEvent>,
}

impl StockEdit {
    /// The edit of `variant` (of `product`) that asks for `requested` units on hand, over the
    /// stock row read as `before` (`None`: the variant has no stock row, which is left so).
    /// The caller must read `before` under the lock it then writes with.
    pub(crate) fn new(
        product: ProductId,
        variant: VariantId,
        requested: Option<i64>,
        before: Option<i64>,
    ) -> Self {
        match (requested, before) {
            (Some(after), Some(before)) => Self {
                write: Some(after),
                level: after,
                changed: (after != before)
                    .then(|| crate::events::stock_changed(product, variant, before, after)),
            },
            (_, before) => Self {
                write: None,
                level: before.unwrap_or(0),
                changed: None,
            },
        }
    }
}
