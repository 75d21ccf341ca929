//! The catalog service: what the API asks about products and variants.

use std::collections::HashMap;
use std::sync::Arc;

use bazaar_store::{
    Product, ProductFilter, ProductId, ProductQuery, ProductSort, ProductWithVariants, Store,
    StoreError, Variant, VariantId,
};

use crate::params::{Cursor, InvalidParam, Limit, PriceBound};

/// Why a catalog operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ShopError {
    /// A request parameter is invalid; `param` names it as the client spelled it.
    #[error("invalid `{param}`: {reason}")]
    InvalidParam {
        param: &'static str,
        reason: InvalidParam,
    },
    /// The storage layer failed; an internal error, not the client's.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A listing request, already parsed.
#[derive(Debug, Clone, Default)]
pub struct ListRequest {
    pub category: Option<String>,
    pub min_price: Option<PriceBound>,
    pub max_price: Option<PriceBound>,
    pub in_stock: Option<bool>,
    pub sort: ProductSort,
    pub cursor: Option<Cursor>,
    pub limit: Limit,
}

/// One page of products and the cursor of the next page, if there is one.
#[derive(Debug, Clone)]
pub struct Listing {
    pub items: Vec<Product>,
    pub next_cursor: Option<Cursor>,
}

/// Reads the catalog. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Catalog {
    store: Arc<Store>,
}

impl Catalog {
    pub fn new(store: Arc<Store>) -> Self {
        Self { store }
    }

    /// The store underneath, for health checks and shutdown.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// A product with its variants.
    pub async fn product(&self, id: ProductId) -> Result<Option<ProductWithVariants>, ShopError> {
        Ok(self.store.product_with_variants(id).await?)
    }

    /// Products by id, for batched loading; unknown ids are absent from the map.
    pub async fn products(
        &self,
        ids: &[ProductId],
    ) -> Result<HashMap<ProductId, Product>, ShopError> {
        Ok(self.store.products(ids).await?)
    }

    /// The variants of many products in one round trip per shard.
    pub async fn variants_of(
        &self,
        ids: &[ProductId],
    ) -> Result<HashMap<ProductId, Vec<Variant>>, ShopError> {
        Ok(self.store.variants_of(ids).await?)
    }

    /// One variant of a product; `None` if either does not exist or they do not belong
    /// together.
    pub async fn variant(
        &self,
        product: ProductId,
        variant: VariantId,
    ) -> Result<Option<Variant>, ShopError> {
        Ok(self.store.variant(product, variant).await?)
    }

    /// A page of products.
    pub async fn list(&self, request: &ListRequest) -> Result<Listing, ShopError> {
        if let (Some(min), Some(max)) = (request.min_price, request.max_price)
            && min > max
        {
            return Err(ShopError::InvalidParam {
                param: "min_price",
                reason: InvalidParam(format!(
                    "must not exceed max_price ({} > {})",
                    min.get(),
                    max.get()
                )),
            });
        }
        if let Some(cursor) = request.cursor
            && cursor.sort != request.sort
        {
            return Err(ShopError::InvalidParam {
                param: "cursor",
                reason: InvalidParam(
                    "the cursor belongs to a listing in another sort order; keep `sort` unchanged while paging"
                        .into(),
                ),
            });
        }
        let query = ProductQuery {
            filter: ProductFilter {
                category: request.category.clone(),
                min_price: request.min_price.map(PriceBound::get),
                max_price: request.max_price.map(PriceBound::get),
                in_stock: request.in_stock,
            },
            sort: request.sort,
            after: request.cursor.map(|c| c.key),
            limit: request.limit.get(),
        };
        let page = self.store.list_products(&query).await?;
        let next_cursor = if page.has_more {
            page.items.last().map(|last| Cursor {
                sort: request.sort,
                key: bazaar_store::SortKey::of(last),
            })
        } else {
            None
        };
        Ok(Listing {
            items: page.items,
            next_cursor,
        })
    }
}
