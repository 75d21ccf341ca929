//! The JSON shapes of the REST API, mapped from domain types. Only this crate knows them.

use std::time::{Duration, UNIX_EPOCH};

use bazaar_shop::accounts::{Profile, PublicProfile};
use bazaar_shop::api_keys::ApiKeyInfo;
use bazaar_store::{AuditEvent, Currency, Money, Product, ProductWithVariants, Variant};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::problem::ApiError;

/// An amount of money: integer minor units and an ISO 4217 code. Never a float.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
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

/// Money in requests: `{"amount": 1999, "currency": "USD"}` — minor units and an ISO 4217
/// code, the shape of every money value Bazaar answers with.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MoneyInput {
    #[schema(example = 2400)]
    pub amount: i64,
    #[schema(example = "USD")]
    pub currency: String,
}

impl MoneyInput {
    /// The value, or a 422 naming `field` if the currency is not a code.
    pub fn parse(&self, field: &str) -> Result<Money, ApiError> {
        let currency =
            self.currency
                .parse::<Currency>()
                .map_err(|detail| ApiError::InvalidField {
                    field: format!("{field}.currency"),
                    detail,
                })?;
        Ok(Money {
            amount: self.amount,
            currency,
        })
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
    /// The seller who lists it; `null` for the house catalog.
    pub seller_id: Option<String>,
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
            seller_id: p.seller_id.map(|s| s.to_string()),
        }
    }
}

/// A product with its variants. `GET /products/{id}` adds `view_count` (views so far,
/// eventually consistent: buffered views are flushed every `cache.views.flush_interval`),
/// which is not part of the ETag.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProductDetail {
    #[serde(flatten)]
    pub product: ProductSummary,
    pub variants: Vec<VariantBody>,
}

impl From<&ProductWithVariants> for ProductDetail {
    fn from(p: &ProductWithVariants) -> Self {
        Self {
            product: p.product.clone().into(),
            variants: p.variants.iter().cloned().map(VariantBody::from).collect(),
        }
    }
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

/// A user's full profile: for the user and for admins.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserBody {
    pub id: String,
    pub email: String,
    pub phone: Option<String>,
    pub name: String,
    /// `customer`, `seller` or `admin`.
    pub role: String,
    pub created_at: String,
}

impl From<Profile> for UserBody {
    fn from(p: Profile) -> Self {
        Self {
            id: p.id.to_string(),
            email: p.email,
            phone: p.phone,
            name: p.name,
            role: p.role.as_str().to_owned(),
            created_at: rfc3339(p.created_at_ms),
        }
    }
}

/// What anyone may see of a user.
#[derive(Debug, Serialize, ToSchema)]
pub struct PublicUserBody {
    pub id: String,
    pub name: String,
    pub role: String,
    pub created_at: String,
}

impl From<PublicProfile> for PublicUserBody {
    fn from(p: PublicProfile) -> Self {
        Self {
            id: p.id.to_string(),
            name: p.name,
            role: p.role.as_str().to_owned(),
            created_at: rfc3339(p.created_at_ms),
        }
    }
}

/// A session's tokens, as returned by sign-up, sign-in and refresh.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokensBody {
    /// Present on sign-up and sign-in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<UserBody>,
    /// A JWT to send as `Authorization: Bearer <token>`.
    pub access_token: String,
    /// Opaque and single-use: exchange it at `/auth/refresh` for a new pair.
    pub refresh_token: String,
    /// Always `Bearer`.
    pub token_type: &'static str,
    /// Seconds until the access token expires.
    pub expires_in: u64,
}

/// A seller API key, without its secret.
#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKeyBody {
    pub id: String,
    pub name: String,
    pub daily_quota: i64,
    pub created_at: String,
    pub revoked_at: Option<String>,
}

impl From<ApiKeyInfo> for ApiKeyBody {
    fn from(k: ApiKeyInfo) -> Self {
        Self {
            id: k.id.to_string(),
            name: k.name,
            daily_quota: k.daily_quota,
            created_at: rfc3339(k.created_at_ms),
            revoked_at: k.revoked_at_ms.map(rfc3339),
        }
    }
}

/// A new API key: the only time its secret is shown.
#[derive(Debug, Serialize, ToSchema)]
pub struct NewApiKeyBody {
    #[serde(flatten)]
    pub key: ApiKeyBody,
    /// Send as `X-Api-Key` (or `Authorization: Bearer`). Shown once; store it now.
    pub secret: String,
}

/// A security event.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditEventBody {
    pub at: String,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub request_id: Option<String>,
    pub detail: String,
}

impl From<AuditEvent> for AuditEventBody {
    fn from(e: AuditEvent) -> Self {
        Self {
            at: rfc3339(e.at_ms),
            actor: e.actor,
            action: e.action,
            target: e.target,
            request_id: e.request_id,
            detail: e.detail,
        }
    }
}

/// Milliseconds since the epoch as RFC 3339 with milliseconds, UTC.
pub fn rfc3339(ms: i64) -> String {
    let at = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_millis(at).to_string()
}
