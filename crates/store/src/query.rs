//! What a product listing asks of the store, and how results are ordered.

use std::cmp::Ordering;

use crate::id::ProductId;
use crate::model::Product;

/// The orders a product listing can be sorted in. Every order ends in the id, so it is total
/// and a cursor position is never ambiguous.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProductSort {
    /// Highest id (most recently created) first.
    #[default]
    Newest,
    /// Cheapest first, then by id.
    PriceAsc,
    /// Dearest first, then by id descending.
    PriceDesc,
}

/// A product's position in a sorted listing: what a cursor remembers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SortKey {
    /// Price in minor units (ignored by [`ProductSort::Newest`]).
    pub price: i64,
    pub id: ProductId,
}

impl SortKey {
    /// The key of `product`.
    pub fn of(product: &Product) -> Self {
        Self {
            price: product.price.amount,
            id: product.id,
        }
    }
}

impl ProductSort {
    /// Compares two positions in this order: `Less` means `a` is listed first.
    pub fn compare(self, a: &SortKey, b: &SortKey) -> Ordering {
        match self {
            Self::Newest => b.id.cmp(&a.id),
            Self::PriceAsc => (a.price, a.id).cmp(&(b.price, b.id)),
            Self::PriceDesc => (b.price, b.id).cmp(&(a.price, a.id)),
        }
    }
}

/// Filters a listing; every field narrows it, `None` means "any".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProductFilter {
    /// Exact category name.
    pub category: Option<String>,
    /// Lowest product price, inclusive, in minor units.
    pub min_price: Option<i64>,
    /// Highest product price, inclusive, in minor units.
    pub max_price: Option<i64>,
    /// `true`: only products with a variant in stock; `false`: only those with none.
    pub in_stock: Option<bool>,
}

/// One page of a listing: the products after `after` in `sort` order, at most `limit` of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductQuery {
    pub filter: ProductFilter,
    pub sort: ProductSort,
    /// Resume after this position; `None` starts at the beginning.
    pub after: Option<SortKey>,
    pub limit: usize,
}

/// A page of products and whether more follow it.
#[derive(Debug, Clone, PartialEq)]
pub struct ProductPage {
    pub items: Vec<Product>,
    pub has_more: bool,
}
