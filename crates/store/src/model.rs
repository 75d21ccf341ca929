//! The catalog's entities as the store keeps them. The serde derives are for Bazaar's own
//! internal encodings (the Redis cache tier), not a wire format: only the `api` crate
//! decides what clients see.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::id::{ProductId, UserId, VariantId};

/// An ISO 4217 currency code: three upper-case ASCII letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Currency([u8; 3]);

impl TryFrom<String> for Currency {
    type Error = String;

    fn try_from(code: String) -> Result<Self, String> {
        code.parse()
    }
}

impl From<Currency> for String {
    fn from(currency: Currency) -> Self {
        currency.as_str().to_owned()
    }
}

impl Currency {
    /// US dollars, the demo catalog's currency.
    pub const USD: Self = Self(*b"USD");
    /// Euros.
    pub const EUR: Self = Self(*b"EUR");
    /// Pounds sterling.
    pub const GBP: Self = Self(*b"GBP");

    /// The code as a string slice.
    pub fn as_str(&self) -> &str {
        // Construction only admits ASCII letters.
        std::str::from_utf8(&self.0).unwrap_or("???")
    }
}

impl FromStr for Currency {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.as_bytes() {
            &[a, b, c] if [a, b, c].iter().all(u8::is_ascii_uppercase) => Ok(Self([a, b, c])),
            _ => Err(format!(
                "expected an ISO 4217 code such as USD, found `{s}`"
            )),
        }
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An amount of money in minor units (cents for USD); never a float.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Money {
    /// Minor units, e.g. 1999 for $19.99.
    pub amount: i64,
    pub currency: Currency,
}

impl Money {
    /// `amount` minor units of US dollars.
    pub const fn usd(amount: i64) -> Self {
        Self {
            amount,
            currency: Currency::USD,
        }
    }
}

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
