//! The catalog service: what the API asks about products and variants.

use std::collections::HashMap;
use std::sync::Arc;

use bazaar_store::{
    Currency, IdGenerator, Money, Product, ProductFilter, ProductId, ProductPatch, ProductQuery,
    ProductSort, ProductWithVariants, Role, Shard, Store, StoreError, Variant, VariantId,
    VariantPatch, WriteOutcome,
};

use bazaar_cache::{Cached, WriteBack};

use crate::audit::Audit;
use crate::authz::{Action, Principal, authorize};
use crate::error::ShopError;
use crate::params::{Cursor, InvalidParam, Limit, PriceBound};
use crate::{Actor, now_ms};

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
    ids: Arc<IdGenerator>,
    audit: Audit,
    /// Products with their variants, `None` caching "no such product" briefly. Its
    /// strategy decides what a write does to it: drop the product (read-through,
    /// cache-aside) or store the written product (write-through); either way other
    /// processes are told.
    products: Option<ProductCache>,
    /// Views counted in memory and flushed in batches (write-back); `None` writes each view
    /// to the store as it happens.
    views: Option<Arc<WriteBack<ProductId>>>,
    /// The ISO 4217 codes a price may be in (`shop.currencies`): a well-formed code the shop
    /// does not sell in, such as `ZZZ`, is as wrong as a malformed one.
    currencies: Arc<[Currency]>,
}

/// The currencies a catalog accepts unless told otherwise.
pub const DEFAULT_CURRENCIES: [Currency; 3] = [Currency::USD, Currency::EUR, Currency::GBP];

/// The product cache: a product with its variants (shared, so a hit copies nothing), or its
/// absence.
pub type ProductCache = Cached<ProductId, Option<Arc<ProductWithVariants>>>;

impl Catalog {
    pub fn new(store: Arc<Store>, ids: Arc<IdGenerator>) -> Self {
        let audit = Audit::new(store.clone());
        Self {
            store,
            ids,
            audit,
            products: None,
            views: Some(Arc::default()),
            currencies: Arc::new(DEFAULT_CURRENCIES),
        }
    }

    /// Accepts prices only in `currencies` (instead of [`DEFAULT_CURRENCIES`]).
    pub fn with_currencies(mut self, currencies: &[Currency]) -> Self {
        self.currencies = currencies.into();
        self
    }

    /// Drops `id` from this process's product cache only: what another process's
    /// invalidation message asks for.
    pub fn forget(&self, id: ProductId) {
        if let Some(cache) = &self.products {
            cache.forget(&id);
        }
    }

    /// Writes every view to the store as it is recorded (write-through) instead of
    /// buffering views for [`Catalog::flush_views`] (write-back, the default).
    pub fn with_views_written_through(mut self) -> Self {
        self.views = None;
        self
    }

    /// Serves product reads through `cache`.
    pub fn with_product_cache(mut self, cache: ProductCache) -> Self {
        self.products = Some(cache);
        self
    }

    /// The store underneath, for health checks and shutdown.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// A product with its variants, through the product cache when there is one.
    pub async fn product(
        &self,
        id: ProductId,
    ) -> Result<Option<Arc<ProductWithVariants>>, ShopError> {
        let Some(cache) = &self.products else {
            return self.product_uncached(id).await;
        };
        let store = self.store.clone();
        cache
            .get(id, move || async move {
                store
                    .product_with_variants(id)
                    .await
                    .map(|p| p.map(Arc::new))
            })
            .await
            .map_err(|e| ShopError::Load(format!("product {id}: {e}")))
    }

    /// A product with its variants, straight from the store: for preconditions, which must
    /// compare with what is stored, not with what a cache remembers.
    pub async fn product_uncached(
        &self,
        id: ProductId,
    ) -> Result<Option<Arc<ProductWithVariants>>, ShopError> {
        Ok(self.store.product_with_variants(id).await?.map(Arc::new))
    }

    /// Counts one view of `product`. Written back (the default), it is acknowledged from
    /// memory and stored by the next [`Catalog::flush_views`]; written through, it is
    /// stored before this returns.
    /// A view that cannot be stored is logged, not failed: counting is no reason to refuse
    /// a read.
    pub async fn record_view(&self, product: ProductId) {
        let Some(buffer) = &self.views else {
            match self.store.add_views(&[(product, 1)]).await {
                // The stored count changed under the cached copy.
                Ok(()) => self.written(product, None).await,
                Err(error) => tracing::warn!(%error, %product, "could not store a view"),
            }
            return;
        };
        buffer.add(product, 1);
    }

    /// The view count to show for `product`: what the store has plus what is still buffered.
    pub fn view_count(&self, product: &Product) -> i64 {
        let pending = self
            .views
            .as_ref()
            .map_or(0, |views| views.pending(&product.id));
        product.view_count + pending
    }

    /// Writes every buffered view to the store in one batch per shard, then drops the flushed
    /// products from the cache so their next read shows the stored count. Returns how many
    /// products' counts were written. On failure the views stay buffered for the next flush.
    pub async fn flush_views(&self) -> Result<usize, ShopError> {
        let Some(views) = &self.views else {
            return Ok(0);
        };
        let flushed = views
            .flush(|batch| async move { self.store.add_views(&batch).await })
            .await?;
        for (id, _) in &flushed {
            self.written(*id, None).await;
        }
        Ok(flushed.len())
    }

    /// The variants of many products in one round trip per shard.
    pub async fn variants_of(
        &self,
        ids: &[ProductId],
    ) -> Result<HashMap<ProductId, Vec<Variant>>, ShopError> {
        Ok(self.store.variants_of(ids).await?)
    }

    /// One variant of a product; `None` if either does not exist or they do not belong
    /// together. Served from the product (and so from its cache).
    pub async fn variant(
        &self,
        product: ProductId,
        variant: VariantId,
    ) -> Result<Option<Variant>, ShopError> {
        let found = self.product(product).await?;
        Ok(found.and_then(|p| p.variants.iter().find(|v| v.id == variant).cloned()))
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
        // Stored text never holds a NUL (writes refuse it), so no listing could match one;
        // and PostgreSQL cannot even be asked (its text type has no NUL).
        if request
            .category
            .as_deref()
            .is_some_and(|category| category.contains('\0'))
        {
            return Err(ShopError::InvalidParam {
                param: "category",
                reason: InvalidParam("must not contain a NUL character".into()),
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

/// A product to list, with at least one variant; unvalidated.
#[derive(Debug, Clone, Default)]
pub struct NewProduct {
    pub name: String,
    pub description: String,
    pub brand: String,
    pub category: String,
    pub variants: Vec<NewVariant>,
}

/// A variant to add; unvalidated.
#[derive(Debug, Clone, Default)]
pub struct NewVariant {
    pub sku: String,
    pub color: String,
    pub size: String,
    pub price_amount: i64,
    pub currency: String,
    pub stock_level: i64,
}

/// Changes to a variant; unvalidated. `None` leaves a field alone.
#[derive(Debug, Clone, Default)]
pub struct VariantChanges {
    pub sku: Option<String>,
    pub color: Option<String>,
    pub size: Option<String>,
    pub price_amount: Option<i64>,
    pub currency: Option<String>,
    pub stock_level: Option<i64>,
}

/// Most variants one product may have.
pub const MAX_VARIANTS: usize = 50;
/// Highest price accepted, in minor units (one million in the major unit).
pub const MAX_PRICE: i64 = 100_000_000;
/// Most units of one variant in stock.
pub const MAX_STOCK: i64 = 1_000_000;

fn text(
    field: impl Into<String>,
    value: &str,
    min: usize,
    max: usize,
) -> Result<String, ShopError> {
    let value = value.trim();
    let count = value.chars().count();
    if count < min || count > max || value.chars().any(|c| c.is_control() && c != '\n') {
        return Err(ShopError::field(
            field,
            format!("expected {min} to {max} printable characters"),
        ));
    }
    Ok(value.to_owned())
}

/// A price of `amount` minor units in `currency`, which must be one of `accepted` — unless it
/// is the variant's `current` currency, kept as it is (a seller changing only the amount is
/// not refused because the shop stopped accepting the currency it was listed in).
fn price(
    field: impl Into<String>,
    amount: i64,
    currency: &str,
    accepted: &[Currency],
    current: Option<Currency>,
) -> Result<Money, ShopError> {
    let field = field.into();
    if !(0..=MAX_PRICE).contains(&amount) {
        return Err(ShopError::field(
            format!("{field}.amount"),
            format!("expected minor units from 0 to {MAX_PRICE}"),
        ));
    }
    let currency: Currency = currency
        .parse()
        .map_err(|e: String| ShopError::field(format!("{field}.currency"), e))?;
    if !accepted.contains(&currency) && current != Some(currency) {
        let codes: Vec<&str> = accepted.iter().map(Currency::as_str).collect();
        return Err(ShopError::field(
            format!("{field}.currency"),
            format!(
                "the shop does not sell in {currency}; expected one of {}",
                codes.join(", ")
            ),
        ));
    }
    Ok(Money { amount, currency })
}

fn stock(field: impl Into<String>, units: i64) -> Result<i64, ShopError> {
    if (0..=MAX_STOCK).contains(&units) {
        Ok(units)
    } else {
        Err(ShopError::field(
            field,
            format!("expected 0 to {MAX_STOCK} units"),
        ))
    }
}

impl NewVariant {
    fn validate(
        &self,
        at: &str,
        id: VariantId,
        product: ProductId,
        currencies: &[Currency],
    ) -> Result<Variant, ShopError> {
        Ok(Variant {
            id,
            product_id: product,
            sku: text(format!("{at}sku"), &self.sku, 1, 64)?,
            color: text(format!("{at}color"), &self.color, 1, 40)?,
            size: text(format!("{at}size"), &self.size, 1, 40)?,
            price: price(
                format!("{at}price"),
                self.price_amount,
                &self.currency,
                currencies,
                None,
            )?,
            stock_level: stock(format!("{at}stock_level"), self.stock_level)?,
        })
    }
}

/// One conditional write to a product or its variants.
#[derive(Debug, Clone)]
enum Write {
    UpdateProduct(ProductPatch),
    DeleteProduct,
    InsertVariant(Variant),
    UpdateVariant(VariantId, VariantPatch),
    DeleteVariant(VariantId),
}

impl Write {
    fn action(&self) -> &'static str {
        match self {
            Self::UpdateProduct(_) => "product.update",
            Self::DeleteProduct => "product.delete",
            Self::InsertVariant(_) => "variant.create",
            Self::UpdateVariant(..) => "variant.update",
            Self::DeleteVariant(_) => "variant.delete",
        }
    }

    async fn apply(
        &self,
        shard: &dyn Shard,
        id: ProductId,
        version: i64,
    ) -> Result<WriteOutcome, StoreError> {
        let now = now_ms();
        match self {
            Self::UpdateProduct(patch) => shard.update_product(id, version, patch, now).await,
            Self::DeleteProduct => shard.delete_product(id, version, now).await,
            Self::InsertVariant(variant) => shard.insert_variant(variant, version, now).await,
            Self::UpdateVariant(variant, patch) => {
                shard
                    .update_variant(id, *variant, version, patch, now)
                    .await
            }
            Self::DeleteVariant(variant) => shard.delete_variant(id, *variant, version, now).await,
        }
    }
}

/// Changes to a product's own fields; unvalidated. `None` leaves a field alone.
#[derive(Debug, Clone, Default)]
pub struct ProductChanges {
    pub name: Option<String>,
    pub description: Option<String>,
    pub brand: Option<String>,
    pub category: Option<String>,
}

impl Catalog {
    /// Lists a new product. Sellers own what they list; admins list into the house catalog.
    pub async fn create_product(
        &self,
        actor: &Actor,
        input: NewProduct,
    ) -> Result<ProductWithVariants, ShopError> {
        authorize(&actor.principal, Action::CreateProduct)?;
        let seller = match &actor.principal {
            Principal::User {
                id,
                role: Role::Seller,
                ..
            } => Some(*id),
            _ => None,
        };
        if input.variants.is_empty() || input.variants.len() > MAX_VARIANTS {
            return Err(ShopError::field(
                "variants",
                format!("expected 1 to {MAX_VARIANTS} variants"),
            ));
        }
        let id = self.ids.product_id();
        let variants = input
            .variants
            .iter()
            .enumerate()
            .map(|(i, v)| {
                v.validate(
                    &format!("variants[{i}]."),
                    self.ids.variant_id(),
                    id,
                    &self.currencies,
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        let now = now_ms();
        let product = Product {
            id,
            name: text("name", &input.name, 1, 200)?,
            description: text("description", &input.description, 0, 5000)?,
            brand: text("brand", &input.brand, 1, 100)?,
            category: text("category", &input.category, 1, 64)?,
            price: variants
                .iter()
                .map(|v| v.price)
                .min_by_key(|p| p.amount)
                .expect("at least one variant"),
            created_at_ms: now,
            updated_at_ms: now,
            seller_id: seller,
            version: 1,
            view_count: 0,
        };
        let created = ProductWithVariants { product, variants };
        self.store
            .insert_products(vec![created.clone()], now)
            .await?;
        self.written(id, Some(Some(Arc::new(created.clone()))))
            .await;
        self.audit
            .record(actor, "product.create", &format!("product:{id}"), "")
            .await;
        Ok(created)
    }

    /// Changes a product's own fields. `expected_version` is the version the client's
    /// `If-Match` named; `None` applies the change to whatever is current.
    pub async fn update_product(
        &self,
        actor: &Actor,
        id: ProductId,
        expected_version: Option<i64>,
        changes: ProductChanges,
    ) -> Result<ProductWithVariants, ShopError> {
        let patch = ProductPatch {
            name: changes.name.map(|v| text("name", &v, 1, 200)).transpose()?,
            description: changes
                .description
                .map(|v| text("description", &v, 0, 5000))
                .transpose()?,
            brand: changes
                .brand
                .map(|v| text("brand", &v, 1, 100))
                .transpose()?,
            category: changes
                .category
                .map(|v| text("category", &v, 1, 64))
                .transpose()?,
        };
        self.write(actor, id, expected_version, Write::UpdateProduct(patch))
            .await?
            .ok_or_else(|| gone(id))
    }

    /// Deletes a product with its variants and stock.
    pub async fn delete_product(
        &self,
        actor: &Actor,
        id: ProductId,
        expected_version: Option<i64>,
    ) -> Result<(), ShopError> {
        self.write(actor, id, expected_version, Write::DeleteProduct)
            .await
            .map(drop)
    }

    /// Adds a variant to a product; returns the product and the new variant's id.
    pub async fn add_variant(
        &self,
        actor: &Actor,
        product: ProductId,
        expected_version: Option<i64>,
        input: NewVariant,
    ) -> Result<(ProductWithVariants, VariantId), ShopError> {
        let variant = input.validate("", self.ids.variant_id(), product, &self.currencies)?;
        let variant_id = variant.id;
        if let Some(current) = self.store.product_with_variants(product).await?
            && current.variants.len() >= MAX_VARIANTS
        {
            return Err(ShopError::Conflict(format!(
                "a product may have at most {MAX_VARIANTS} variants"
            )));
        }
        let updated = self
            .write(
                actor,
                product,
                expected_version,
                Write::InsertVariant(variant),
            )
            .await?;
        Ok((updated.ok_or_else(|| gone(product))?, variant_id))
    }

    /// Changes a variant of a product.
    pub async fn update_variant(
        &self,
        actor: &Actor,
        product: ProductId,
        variant: VariantId,
        expected_version: Option<i64>,
        changes: VariantChanges,
    ) -> Result<ProductWithVariants, ShopError> {
        let price = match (changes.price_amount, changes.currency) {
            (None, None) => None,
            (amount, currency) => {
                let current = self
                    .store
                    .variant(product, variant)
                    .await?
                    .ok_or_else(|| no_variant(product, variant))?;
                Some(price(
                    "price",
                    amount.unwrap_or(current.price.amount),
                    currency
                        .as_deref()
                        .unwrap_or(current.price.currency.as_str()),
                    &self.currencies,
                    Some(current.price.currency),
                )?)
            }
        };
        let patch = VariantPatch {
            sku: changes.sku.map(|v| text("sku", &v, 1, 64)).transpose()?,
            color: changes
                .color
                .map(|v| text("color", &v, 1, 40))
                .transpose()?,
            size: changes.size.map(|v| text("size", &v, 1, 40)).transpose()?,
            price,
            stock_level: changes
                .stock_level
                .map(|v| stock("stock_level", v))
                .transpose()?,
        };
        match self
            .write(
                actor,
                product,
                expected_version,
                Write::UpdateVariant(variant, patch),
            )
            .await
        {
            Ok(updated) => updated.ok_or_else(|| gone(product)),
            Err(ShopError::NotFound(_)) => Err(no_variant(product, variant)),
            Err(other) => Err(other),
        }
    }

    /// Removes a variant from a product.
    pub async fn delete_variant(
        &self,
        actor: &Actor,
        product: ProductId,
        variant: VariantId,
        expected_version: Option<i64>,
    ) -> Result<ProductWithVariants, ShopError> {
        match self
            .write(
                actor,
                product,
                expected_version,
                Write::DeleteVariant(variant),
            )
            .await
        {
            Ok(updated) => updated.ok_or_else(|| gone(product)),
            Err(ShopError::NotFound(_)) => Err(no_variant(product, variant)),
            Err(other) => Err(other),
        }
    }

    /// The one path of every catalog write: load the product, check the actor may edit it,
    /// apply the write at the expected (or current) version, and audit it — as an admin action
    /// when an admin edits a seller's product. Without a precondition, a concurrent edit is
    /// retried rather than reported. Returns the product after the write (`None` once deleted).
    async fn write(
        &self,
        actor: &Actor,
        id: ProductId,
        expected_version: Option<i64>,
        write: Write,
    ) -> Result<Option<ProductWithVariants>, ShopError> {
        for _attempt in 0..3 {
            let Some(current) = self.store.product_with_variants(id).await? else {
                return Err(ShopError::NotFound(format!("no product with id {id}")));
            };
            let owner = current.product.seller_id;
            authorize(&actor.principal, Action::EditProduct { owner })?;
            let version = match expected_version {
                Some(expected) if expected != current.product.version => {
                    return Err(ShopError::PreconditionFailed);
                }
                Some(expected) => expected,
                None => current.product.version,
            };
            let outcome = write.apply(&self.store.for_product(id), id, version).await;
            // Whatever happened, the cached copy may be stale now; when the write is known to
            // have produced `after`, a write-through cache stores it.
            let after = match &outcome {
                Ok(WriteOutcome::Done(after)) => Some(after.clone().map(Arc::new)),
                _ => None,
            };
            self.written(id, after).await;
            match outcome? {
                WriteOutcome::Done(after) => {
                    let on_behalf = matches!(&actor.principal,
                        Principal::User { id: me, role: Role::Admin, .. } if owner != Some(*me) && owner.is_some());
                    let action = if on_behalf {
                        format!("admin.{}", write.action())
                    } else {
                        write.action().to_owned()
                    };
                    self.audit
                        .record(actor, &action, &format!("product:{id}"), "")
                        .await;
                    return Ok(after);
                }
                WriteOutcome::NotFound => {
                    return Err(ShopError::NotFound(format!("no product with id {id}")));
                }
                WriteOutcome::VersionMismatch { .. } if expected_version.is_some() => {
                    return Err(ShopError::PreconditionFailed);
                }
                WriteOutcome::VersionMismatch { .. } => continue,
            }
        }
        Err(ShopError::Conflict(
            "the product is being edited concurrently; retry".into(),
        ))
    }
}

impl Catalog {
    /// Tells the product cache (in this process and, through the invalidation channel, in
    /// the others) that the stock of `products` changed: reservations, releases and refunds
    /// change stock without a catalog write, and a cached product would show the old level
    /// until its TTL ran out.
    pub async fn stock_changed(&self, products: impl IntoIterator<Item = ProductId>) {
        let mut products: Vec<ProductId> = products.into_iter().collect();
        products.sort_unstable();
        products.dedup();
        for id in products {
            self.written(id, None).await;
        }
    }

    /// Tells the product cache that `id` changed in the store, to `after` when known
    /// (`Some(None)`: deleted).
    async fn written(&self, id: ProductId, after: Option<Option<Arc<ProductWithVariants>>>) {
        if let Some(cache) = &self.products {
            cache.written(id, after).await;
        }
    }
}

fn gone(id: ProductId) -> ShopError {
    ShopError::NotFound(format!("no product with id {id}"))
}

fn no_variant(product: ProductId, variant: VariantId) -> ShopError {
    ShopError::NotFound(format!("product {product} has no variant {variant}"))
}
