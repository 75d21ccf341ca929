//! The JSON shapes of the REST API, mapped from domain types. Only this crate knows them.

use std::time::{Duration, UNIX_EPOCH};

use bazaar_store::{Money, Product, ProductWithVariants, Variant};
use serde::Serialize;
use utoipa::ToSchema;

/// An amount of money: integer minor units and an ISO 4217 code. Never a float.
#[derive(Debug, Serialize, ToSchema)]
pub struct MoneyBody {
    /// Minor units: 1999 is 19.99.
    #[schema(example = 1999)]
    pub amount: i64,
    #[schema(example = "USD")]
    pub currency: String,
}

impl From<Money> for MoneyBody {
    fn from(money: Money) -> Self {
        Self {
            amount: money.amount,
            currency: money.currency.as_str().to_owned(),
        }
    }
}

/// A product as listed.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProductSummary {
    /// A decimal string: 63-bit ids do not fit JavaScript numbers.
    #[schema(example = "1234567890123")]
    pub id: String,
    pub name: String,
    pub description: String,
    pub brand: String,
    pub category: String,
    /// The lowest price among the product's variants.
    pub price: MoneyBody,
    /// RFC 3339, UTC.
    pub created_at: String,
    pub updated_at: String,
}

impl From<Product> for ProductSummary {
    fn from(p: Product) -> Self {
        Self {
            id: p.id.to_string(),
            name: p.name,
            description: p.description,
            brand: p.brand,
            category: p.category,
            price: p.price.into(),
            created_at: rfc3339(p.created_at_ms),
            updated_at: rfc3339(p.updated_at_ms),
        }
    }
}

/// A product with its variants.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProductDetail {
    #[serde(flatten)]
    pub product: ProductSummary,
    pub variants: Vec<VariantBody>,
}

impl From<ProductWithVariants> for ProductDetail {
    fn from(p: ProductWithVariants) -> Self {
        Self {
            product: p.product.into(),
            variants: p.variants.into_iter().map(VariantBody::from).collect(),
        }
    }
}

/// A sellable colour/size of a product.
#[derive(Debug, Serialize, ToSchema)]
pub struct VariantBody {
    pub id: String,
    pub product_id: String,
    pub sku: String,
    pub color: String,
    pub size: String,
    pub price: MoneyBody,
    /// Units in stock now.
    pub stock_level: i64,
}

impl From<Variant> for VariantBody {
    fn from(v: Variant) -> Self {
        Self {
            id: v.id.to_string(),
            product_id: v.product_id.to_string(),
            sku: v.sku,
            color: v.color,
            size: v.size,
            price: v.price.into(),
            stock_level: v.stock_level,
        }
    }
}

/// A page of a listing.
#[derive(Debug, Serialize, ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass as `cursor` to get the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// Milliseconds since the epoch as RFC 3339 with milliseconds, UTC.
pub fn rfc3339(ms: i64) -> String {
    let at = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_millis(at).to_string()
}
