//! The GraphQL API: the seed's product query, a products connection, batched variant loads,
//! and depth and complexity limits.

use std::sync::Arc;

use async_graphql::ErrorExtensions;
use async_graphql::{
    Context, EmptySubscription, Enum, ID, InputObject, Object, Result, Scalar, ScalarType, Schema,
    SimpleObject, Value,
};
use axum::Extension;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use bazaar_shop::catalog::{NewProduct, NewVariant, ProductChanges, VariantChanges};
use bazaar_shop::orders::{Cart as ShopCart, CheckoutReply, Order as ShopOrder, OrderScope};
use bazaar_shop::params::{Cursor, Limit, PriceBound};
use bazaar_shop::{Actor, Catalog, ListRequest, Orders, ShopError};
use bazaar_store::{Money, OrderId, ProductId, ProductSort, ProductWithVariants, VariantId};

use crate::AppState;
use crate::cost::{Admission, Work};
use crate::gate::{Acting, Deferred};
use crate::problem::{ApiError, Problem};
use crate::wire::rfc3339;

/// The schema type served at `/graphql`.
pub type BazaarSchema = Schema<Query, Mutation, EmptySubscription>;

/// Limits that keep one query from doing unbounded work.
#[derive(Debug, Clone, Copy)]
pub struct GraphqlLimits {
    /// Deepest nesting of selections.
    pub max_depth: usize,
    /// Largest total cost, where a list field costs its page size times its children.
    pub max_complexity: usize,
}

impl Default for GraphqlLimits {
    fn default() -> Self {
        Self {
            max_depth: 10,
            max_complexity: 2_000,
        }
    }
}

/// Builds the schema with `limits`.
pub fn schema(limits: GraphqlLimits) -> BazaarSchema {
    Schema::build(Query, Mutation, EmptySubscription)
        .limit_depth(limits.max_depth)
        .limit_complexity(limits.max_complexity)
        .extension(crate::cost::Charging)
        .finish()
}

/// The root query.
#[derive(Debug)]
pub struct Query;

/// What a `search` costs beyond its page: counting and faceting every match.
const SEARCH_COST: usize = 50;

#[Object]
impl Query {
    /// Full-text search with filters, facets and sort, as `GET /search` (same parameters,
    /// same ranking, same errors): `first` 1–100 (default 20), `after` a `nextCursor`.
    /// Costs its page size times what it selects, plus a search's fixed share (the facets
    /// count every match), like `products`.
    #[graphql(complexity = "first.unwrap_or(20).max(1) as usize * child_complexity + SEARCH_COST")]
    async fn search(
        &self,
        ctx: &Context<'_>,
        query: Option<String>,
        filter: Option<SearchFilterInput>,
        #[graphql(default)] sort: SearchSortInput,
        first: Option<i32>,
        after: Option<String>,
    ) -> Result<SearchResultObject> {
        let mut params = crate::search::SearchParams::new();
        let mut cursor = None;
        let filter = filter.unwrap_or_default();
        let mut given: Vec<(&str, String)> = vec![("sort", sort.name().to_owned())];
        let texts = [
            ("query", query),
            ("category", filter.category),
            ("brand", filter.brand),
            ("color", filter.color),
            ("size", filter.size),
            ("after", after),
        ];
        given.extend(texts.into_iter().filter_map(|(name, v)| Some((name, v?))));
        let numbers = [
            ("minPrice", filter.min_price.map(i64::from)),
            ("maxPrice", filter.max_price.map(i64::from)),
            ("first", first.map(i64::from)),
        ];
        for (name, value) in numbers {
            if let Some(value) = value {
                let rest_name = match name {
                    "minPrice" => "min_price",
                    "maxPrice" => "max_price",
                    other => other,
                };
                given.push((rest_name, value.to_string()));
            }
        }
        if let Some(in_stock) = filter.in_stock {
            given.push(("in_stock", in_stock.to_string()));
        }
        for (name, value) in &given {
            params
                .set(name, value, &mut cursor)
                .map_err(problem_error)?;
        }
        let request = params
            .finish(cursor.as_deref(), "after")
            .map_err(problem_error)?;
        let page = ctx
            .data::<bazaar_shop::Search>()?
            .search(request.clone())
            .await
            .map_err(shop_error)?;
        Ok(SearchResultObject(crate::search::results(&request, page)))
    }

    /// Completions of what has been typed so far, as `GET /search/suggest`.
    #[graphql(complexity = "first.unwrap_or(10).max(1) as usize * child_complexity")]
    async fn suggest(
        &self,
        ctx: &Context<'_>,
        query: String,
        first: Option<i32>,
    ) -> Result<Vec<SuggestionObject>> {
        if query.trim().is_empty() || query.chars().count() > 100 {
            return Err(problem_error(ApiError::param(
                "query",
                "expected 1 to 100 characters of text",
            )));
        }
        let limit = match first {
            None => bazaar_search::MAX_SUGGESTIONS,
            Some(n) => usize::try_from(n)
                .ok()
                .filter(|n| (1..=bazaar_search::MAX_SUGGESTIONS).contains(n))
                .ok_or_else(|| {
                    bad_arg(
                        "first",
                        &format!(
                            "expected 1 to {}, found {n}",
                            bazaar_search::MAX_SUGGESTIONS
                        ),
                    )
                })?,
        };
        let found = ctx
            .data::<bazaar_shop::Search>()?
            .suggest(&query, limit)
            .await
            .map_err(shop_error)?;
        Ok(found
            .into_iter()
            .map(|s| SuggestionObject(crate::search::SuggestionBody::from(s)))
            .collect())
    }

    /// The caller's cart, priced by the server.
    async fn cart(&self, ctx: &Context<'_>) -> Result<Cart> {
        let cart = ctx
            .data::<Orders>()?
            .cart(ctx.data::<Actor>()?)
            .await
            .map_err(shop_error)?;
        Ok(cart.into())
    }

    /// Orders, newest first: `MINE` (your purchases), `SELLING` (orders with your products)
    /// or `ALL` (admins); `first` 1–100, default 20.
    async fn orders(
        &self,
        ctx: &Context<'_>,
        #[graphql(default)] scope: Scope,
        #[graphql(default = 20)] first: i32,
    ) -> Result<Vec<Order>> {
        let limit = usize::try_from(first)
            .ok()
            .filter(|n| (1..=100).contains(n))
            .ok_or_else(|| bad_arg("first", &format!("expected 1 to 100, found {first}")))?;
        let orders = ctx
            .data::<Orders>()?
            .orders(ctx.data::<Actor>()?, scope.into(), None, limit)
            .await
            .map_err(shop_error)?;
        Ok(orders.into_iter().map(Order).collect())
    }

    /// One order, for its buyer, sellers with a line in it, and admins.
    async fn order(&self, ctx: &Context<'_>, id: ID) -> Result<Order> {
        let id: OrderId = parse_id("id", &id)?;
        let order = ctx
            .data::<Orders>()?
            .order(ctx.data::<Actor>()?, id)
            .await
            .map_err(shop_error)?;
        Ok(Order(order))
    }

    /// A product by id, with its variants loaded in the same round trip.
    async fn product(&self, ctx: &Context<'_>, id: ID) -> Result<Option<Product>> {
        let Ok(id) = id.parse::<ProductId>() else {
            return Err(async_graphql::Error::new(format!(
                "invalid `id`: expected a product id (a decimal string), found `{}`",
                id.as_str().chars().take(64).collect::<String>()
            )));
        };
        let catalog = ctx.data::<Catalog>()?;
        let found = catalog.product(id).await.map_err(shop_error)?;
        // One view per product per request, however many aliases read it.
        let first_read = ctx.data_opt::<ViewedProducts>().is_none_or(|v| v.first(id));
        if found.is_some() && first_read {
            catalog.record_view(id).await;
        }
        Ok(found.map(|p| Product {
            product: p.product.clone(),
            variants: Some(p.variants.clone()),
        }))
    }

    /// A page of products: `first` (1–100, default 20) after the `after` cursor.
    #[graphql(complexity = "first.unwrap_or(20).max(1) as usize * child_complexity")]
    async fn products(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
        filter: Option<ProductFilter>,
        #[graphql(default)] sort: Sort,
    ) -> Result<ProductConnection> {
        let limit = match first {
            None => Limit::DEFAULT,
            Some(n) => usize::try_from(n)
                .ok()
                .and_then(|n| Limit::new(n).ok())
                .ok_or_else(|| {
                    bad_arg("first", &format!("expected 1 to {}, found {n}", Limit::MAX))
                })?,
        };
        let cursor = after
            .map(|raw| Cursor::parse(&raw).map_err(|e| bad_arg("after", &e)))
            .transpose()?;
        let filter = filter.unwrap_or_default();
        let price = |name: &str, value: Option<i32>| {
            value
                .map(|n| PriceBound::new(i64::from(n)).map_err(|e| bad_arg(name, &e)))
                .transpose()
        };
        let request = ListRequest {
            category: filter.category,
            min_price: price("filter.minPrice", filter.min_price)?,
            max_price: price("filter.maxPrice", filter.max_price)?,
            in_stock: filter.in_stock,
            sort: sort.into(),
            cursor,
            limit,
        };
        let listing = ctx
            .data::<Catalog>()?
            .list(&request)
            .await
            .map_err(|e| match e {
                ShopError::InvalidParam { param, reason } => bad_arg(param, &reason),
                other => shop_error(other),
            })?;
        // Look ahead: if the query selects variants, fetch them for the whole page now, in one
        // round trip per shard, instead of one load per product.
        let wants_variants = ctx
            .look_ahead()
            .field("edges")
            .field("node")
            .field("variants")
            .exists();
        let mut variants = if wants_variants {
            let ids: Vec<ProductId> = listing.items.iter().map(|p| p.id).collect();
            Some(
                ctx.data::<Catalog>()?
                    .variants_of(&ids)
                    .await
                    .map_err(shop_error)?,
            )
        } else {
            None
        };
        let end_cursor = listing.items.last().map(|p| {
            Cursor {
                sort: request.sort,
                key: bazaar_store::SortKey::of(p),
            }
            .encode()
        });
        let edges = listing
            .items
            .into_iter()
            .map(|product| ProductEdge {
                cursor: Cursor {
                    sort: request.sort,
                    key: bazaar_store::SortKey::of(&product),
                }
                .encode(),
                node: Product {
                    variants: variants
                        .as_mut()
                        .map(|v| v.remove(&product.id).unwrap_or_default()),
                    product,
                },
            })
            .collect();
        Ok(ProductConnection {
            edges,
            page_info: PageInfo {
                has_next_page: listing.next_cursor.is_some(),
                end_cursor,
            },
        })
    }
}

fn bad_arg(name: &str, reason: &dyn std::fmt::Display) -> async_graphql::Error {
    async_graphql::Error::new(format!("invalid `{name}`: {reason}"))
}

/// A failed operation as a GraphQL error, mapped exactly as REST maps it (`ApiError`, one
/// place): the problem's `detail` as the message, and in the extensions its `type` and
/// `status` as REST would answer, a machine-readable `code` (`UNAUTHENTICATED`, `FORBIDDEN`,
/// `NOT_FOUND`, `BAD_USER_INPUT`, `CONFLICT`, `CHECKOUT_IN_PROGRESS`, `PRICE_CHANGED`,
/// `OUT_OF_STOCK`, …, `INTERNAL`), and the problem's `param`, `variantId`, `orderId` and
/// `total` when it has them.
fn shop_error(error: ShopError) -> async_graphql::Error {
    problem_error(ApiError::from(error))
}

fn problem_error(error: ApiError) -> async_graphql::Error {
    let (problem, _) = error.into_problem();
    problem_to_graphql(&problem)
}

/// A problem document (fresh, or stored by an earlier checkout) as a GraphQL error.
fn problem_to_graphql(problem: &Problem) -> async_graphql::Error {
    let code = problem.graphql_code();
    async_graphql::Error::new(problem.detail.clone()).extend_with(|_, e| {
        e.set("code", code);
        e.set("type", problem.kind.as_str());
        e.set("status", problem.status);
        if let Some(param) = &problem.param {
            e.set("param", param.as_str());
        }
        if let Some(variant) = &problem.variant_id {
            e.set("variantId", variant.as_str());
        }
        if let Some(order) = &problem.order_id {
            e.set("orderId", order.as_str());
        }
        if let Some(total) = &problem.total {
            e.set("total", MoneyScalar::value(total.amount, &total.currency));
        }
    })
}

fn parse_id<T: std::str::FromStr>(name: &str, id: &ID) -> Result<T> {
    id.parse::<T>().map_err(|_| {
        bad_arg(
            name,
            &format!("expected an id (a decimal string), found `{}`", id.as_str()),
        )
    })
}

/// Sellers' and admins' catalog writes: the same operations, and so the same permission
/// checks, as the REST routes. `expectedVersion` (a product's `version`) plays the part of
/// `If-Match`.
#[derive(Debug)]
pub struct Mutation;

/// A shipping address. `country` is an ISO 3166-1 alpha-2 code.
#[derive(Debug, InputObject)]
pub struct AddressInput {
    name: Option<String>,
    line1: Option<String>,
    line2: Option<String>,
    city: Option<String>,
    region: Option<String>,
    postal_code: Option<String>,
    country: Option<String>,
}

impl From<AddressInput> for crate::orders::AddressBody {
    fn from(a: AddressInput) -> Self {
        Self {
            name: a.name,
            line1: a.line1,
            line2: a.line2,
            city: a.city,
            region: a.region,
            postal_code: a.postal_code,
            country: a.country,
        }
    }
}

/// A product to list.
#[derive(Debug, InputObject)]
pub struct NewProductInput {
    name: String,
    #[graphql(default)]
    description: String,
    brand: String,
    category: String,
    variants: Vec<NewVariantInput>,
}

/// A variant to add. `price` is in minor units.
#[derive(Debug, InputObject)]
pub struct NewVariantInput {
    sku: String,
    color: String,
    size: String,
    price: i64,
    #[graphql(default_with = "String::from(\"USD\")")]
    currency: String,
    #[graphql(default)]
    stock_level: i64,
}

impl From<NewVariantInput> for NewVariant {
    fn from(v: NewVariantInput) -> Self {
        Self {
            sku: v.sku,
            color: v.color,
            size: v.size,
            price_amount: v.price,
            currency: v.currency,
            stock_level: v.stock_level,
        }
    }
}

/// Product fields to change.
#[derive(Debug, InputObject)]
pub struct ProductChangesInput {
    name: Option<String>,
    description: Option<String>,
    brand: Option<String>,
    category: Option<String>,
}

/// Variant fields to change. `price` is in minor units.
#[derive(Debug, InputObject)]
pub struct VariantChangesInput {
    sku: Option<String>,
    color: Option<String>,
    size: Option<String>,
    price: Option<i64>,
    currency: Option<String>,
    stock_level: Option<i64>,
}

fn with_variants(p: ProductWithVariants) -> Product {
    Product {
        product: p.product,
        variants: Some(p.variants),
    }
}

#[Object]
impl Mutation {
    /// Adds `quantity` (1–100) units of a variant to the caller's cart.
    async fn add_to_cart(&self, ctx: &Context<'_>, variant_id: ID, quantity: i64) -> Result<Cart> {
        let variant: VariantId = parse_id("variantId", &variant_id)?;
        let cart = ctx
            .data::<Orders>()?
            .add_to_cart(ctx.data::<Actor>()?, variant, quantity)
            .await
            .map_err(shop_error)?;
        Ok(cart.into())
    }

    /// Sets the quantity (1–100) of a line of the caller's cart.
    async fn update_cart_item(
        &self,
        ctx: &Context<'_>,
        variant_id: ID,
        quantity: i64,
    ) -> Result<Cart> {
        let variant: VariantId = parse_id("variantId", &variant_id)?;
        let cart = ctx
            .data::<Orders>()?
            .set_cart_quantity(ctx.data::<Actor>()?, variant, quantity)
            .await
            .map_err(shop_error)?;
        Ok(cart.into())
    }

    /// Removes a line from the caller's cart.
    async fn remove_from_cart(&self, ctx: &Context<'_>, variant_id: ID) -> Result<Cart> {
        let variant: VariantId = parse_id("variantId", &variant_id)?;
        let cart = ctx
            .data::<Orders>()?
            .remove_from_cart(ctx.data::<Actor>()?, variant)
            .await
            .map_err(shop_error)?;
        Ok(cart.into())
    }

    /// Turns the caller's cart into a paid order: the same checkout as `POST /checkout`, with
    /// the same `idempotencyKey` space (a key sent both ways is one request), the same cart
    /// claim (one cart becomes at most one order) and the same price guard (`expectedTotal`:
    /// the cart's `total` as last read; anything else is refused with `PRICE_CHANGED` before
    /// anything is reserved or charged).
    async fn checkout(
        &self,
        ctx: &Context<'_>,
        idempotency_key: String,
        shipping_address: AddressInput,
        expected_total: Option<MoneyScalar>,
    ) -> Result<Order> {
        let key = crate::orders::idempotency_key(&idempotency_key).map_err(problem_error)?;
        let expected = expected_total.map(|money| crate::wire::MoneyInput {
            amount: money.0.amount,
            currency: money.0.currency.as_str().to_owned(),
        });
        let request = crate::orders::checkout_request(key, shipping_address.into(), expected)
            .map_err(problem_error)?;
        let orders = ctx.data::<Orders>()?;
        let actor = ctx.data::<Actor>()?;
        match orders
            .checkout(actor, request, &crate::orders::render)
            .await
            .map_err(shop_error)?
        {
            CheckoutReply::Fresh(outcome) => Ok(Order((*outcome).map_err(shop_error)?)),
            // An earlier request with this key answered already (over REST or GraphQL): the
            // same outcome, read from what was stored.
            CheckoutReply::Replay(stored) => {
                if (200..300).contains(&stored.status) {
                    let id = crate::orders::stored_order_id(&stored)
                        .ok_or_else(|| shop_error(ShopError::Corrupt("a stored order".into())))?;
                    Ok(Order(orders.order(actor, id).await.map_err(shop_error)?))
                } else {
                    let problem: Problem = serde_json::from_slice(&stored.body)
                        .map_err(|e| shop_error(ShopError::Corrupt(e.to_string())))?;
                    Err(problem_to_graphql(&problem))
                }
            }
        }
    }

    async fn create_product(&self, ctx: &Context<'_>, input: NewProductInput) -> Result<Product> {
        let input = NewProduct {
            name: input.name,
            description: input.description,
            brand: input.brand,
            category: input.category,
            variants: input.variants.into_iter().map(NewVariant::from).collect(),
        };
        let created = ctx
            .data::<Catalog>()?
            .create_product(ctx.data::<Actor>()?, input)
            .await
            .map_err(shop_error)?;
        Ok(with_variants(created))
    }

    async fn update_product(
        &self,
        ctx: &Context<'_>,
        id: ID,
        input: ProductChangesInput,
        expected_version: Option<i64>,
    ) -> Result<Product> {
        let id: ProductId = parse_id("id", &id)?;
        let changes = ProductChanges {
            name: input.name,
            description: input.description,
            brand: input.brand,
            category: input.category,
        };
        let updated = ctx
            .data::<Catalog>()?
            .update_product(ctx.data::<Actor>()?, id, expected_version, changes)
            .await
            .map_err(shop_error)?;
        Ok(with_variants(updated))
    }

    async fn delete_product(
        &self,
        ctx: &Context<'_>,
        id: ID,
        expected_version: Option<i64>,
    ) -> Result<bool> {
        let id: ProductId = parse_id("id", &id)?;
        ctx.data::<Catalog>()?
            .delete_product(ctx.data::<Actor>()?, id, expected_version)
            .await
            .map_err(shop_error)?;
        Ok(true)
    }

    async fn add_variant(
        &self,
        ctx: &Context<'_>,
        product_id: ID,
        input: NewVariantInput,
        expected_version: Option<i64>,
    ) -> Result<Variant> {
        let id: ProductId = parse_id("productId", &product_id)?;
        let (product, variant) = ctx
            .data::<Catalog>()?
            .add_variant(ctx.data::<Actor>()?, id, expected_version, input.into())
            .await
            .map_err(shop_error)?;
        product
            .variants
            .into_iter()
            .find(|v| v.id == variant)
            .map(Variant)
            .ok_or_else(|| shop_error(ShopError::Corrupt("the new variant vanished".into())))
    }

    async fn update_variant(
        &self,
        ctx: &Context<'_>,
        product_id: ID,
        variant_id: ID,
        input: VariantChangesInput,
        expected_version: Option<i64>,
    ) -> Result<Variant> {
        let id: ProductId = parse_id("productId", &product_id)?;
        let variant: VariantId = parse_id("variantId", &variant_id)?;
        let changes = VariantChanges {
            sku: input.sku,
            color: input.color,
            size: input.size,
            price_amount: input.price,
            currency: input.currency,
            stock_level: input.stock_level,
        };
        let product = ctx
            .data::<Catalog>()?
            .update_variant(ctx.data::<Actor>()?, id, variant, expected_version, changes)
            .await
            .map_err(shop_error)?;
        product
            .variants
            .into_iter()
            .find(|v| v.id == variant)
            .map(Variant)
            .ok_or_else(|| shop_error(ShopError::Corrupt("the variant vanished".into())))
    }

    async fn delete_variant(
        &self,
        ctx: &Context<'_>,
        product_id: ID,
        variant_id: ID,
        expected_version: Option<i64>,
    ) -> Result<bool> {
        let id: ProductId = parse_id("productId", &product_id)?;
        let variant: VariantId = parse_id("variantId", &variant_id)?;
        ctx.data::<Catalog>()?
            .delete_variant(ctx.data::<Actor>()?, id, variant, expected_version)
            .await
            .map_err(shop_error)?;
        Ok(true)
    }
}

/// Filters for `products`.
#[derive(Debug, Default, InputObject)]
pub struct ProductFilter {
    category: Option<String>,
    /// Minor units, inclusive.
    min_price: Option<i32>,
    /// Minor units, inclusive.
    max_price: Option<i32>,
    in_stock: Option<bool>,
}

/// Filters for `search`: values as the facets show them.
#[derive(Debug, Default, InputObject)]
pub struct SearchFilterInput {
    category: Option<String>,
    brand: Option<String>,
    color: Option<String>,
    size: Option<String>,
    /// Minor units, inclusive, of the cheapest variant.
    min_price: Option<i32>,
    max_price: Option<i32>,
    in_stock: Option<bool>,
}

/// Orders for `search`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Enum)]
#[graphql(name = "SearchSort")]
pub enum SearchSortInput {
    #[default]
    Relevance,
    PriceAsc,
    PriceDesc,
    Newest,
}

impl SearchSortInput {
    fn name(self) -> &'static str {
        match self {
            Self::Relevance => "relevance",
            Self::PriceAsc => "price_asc",
            Self::PriceDesc => "price_desc",
            Self::Newest => "newest",
        }
    }
}

/// A page of search results with facet counts over every match.
#[derive(Debug)]
pub struct SearchResultObject(crate::search::SearchResults);

#[Object(name = "SearchResult")]
impl SearchResultObject {
    async fn items(&self) -> Vec<SearchHitObject<'_>> {
        self.0.items.iter().map(SearchHitObject).collect()
    }
    /// Pass as `after` for the next page; null on the last one.
    async fn next_cursor(&self) -> Option<&str> {
        self.0.next_cursor.as_deref()
    }
    /// Products matching in all.
    async fn total(&self) -> u64 {
        self.0.total
    }
    async fn facets(&self) -> SearchFacetsObject<'_> {
        SearchFacetsObject(&self.0.facets)
    }
}

/// One product found.
#[derive(Debug)]
pub struct SearchHitObject<'a>(&'a crate::search::SearchHit);

#[Object(name = "SearchHit")]
impl SearchHitObject<'_> {
    async fn id(&self) -> ID {
        ID(self.0.id.clone())
    }
    async fn name(&self) -> &str {
        &self.0.name
    }
    async fn brand(&self) -> &str {
        &self.0.brand
    }
    async fn category(&self) -> &str {
        &self.0.category
    }
    /// The cheapest variant's price.
    async fn price(&self) -> MoneyScalar {
        money(&self.0.price)
    }
    async fn price_max(&self) -> MoneyScalar {
        money(&self.0.price_max)
    }
    async fn in_stock(&self) -> bool {
        self.0.in_stock
    }
    async fn score(&self) -> Option<f32> {
        self.0.score
    }
}

fn money(body: &crate::wire::MoneyBody) -> MoneyScalar {
    MoneyScalar(Money {
        amount: body.amount,
        currency: body.currency.parse().unwrap_or(bazaar_store::Currency::USD),
    })
}

/// Facet counts.
#[derive(Debug)]
pub struct SearchFacetsObject<'a>(&'a crate::search::FacetsBody);

#[Object(name = "SearchFacets")]
impl SearchFacetsObject<'_> {
    async fn category(&self) -> Vec<FacetValueObject<'_>> {
        self.0.category.iter().map(FacetValueObject).collect()
    }
    async fn brand(&self) -> Vec<FacetValueObject<'_>> {
        self.0.brand.iter().map(FacetValueObject).collect()
    }
    async fn color(&self) -> Vec<FacetValueObject<'_>> {
        self.0.color.iter().map(FacetValueObject).collect()
    }
    async fn size(&self) -> Vec<FacetValueObject<'_>> {
        self.0.size.iter().map(FacetValueObject).collect()
    }
    async fn price_ranges(&self) -> Vec<PriceRangeObject<'_>> {
        self.0.price_ranges.iter().map(PriceRangeObject).collect()
    }
}

#[derive(Debug)]
pub struct FacetValueObject<'a>(&'a crate::search::FacetValue);

#[Object(name = "FacetValue")]
impl FacetValueObject<'_> {
    async fn value(&self) -> &str {
        &self.0.value
    }
    async fn count(&self) -> u64 {
        self.0.count
    }
}

/// `[from, to)` in minor units; null is open.
#[derive(Debug)]
pub struct PriceRangeObject<'a>(&'a crate::search::PriceRange);

#[Object(name = "PriceRange")]
impl PriceRangeObject<'_> {
    async fn from(&self) -> Option<i64> {
        self.0.from
    }
    async fn to(&self) -> Option<i64> {
        self.0.to
    }
    async fn count(&self) -> u64 {
        self.0.count
    }
}

/// An autocomplete completion.
#[derive(Debug)]
pub struct SuggestionObject(crate::search::SuggestionBody);

#[Object(name = "Suggestion")]
impl SuggestionObject {
    async fn text(&self) -> &str {
        &self.0.text
    }
    /// `product` or `brand`.
    async fn kind(&self) -> &str {
        self.0.kind
    }
    async fn count(&self) -> u64 {
        self.0.count
    }
}

/// Orders for `products`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Enum)]
pub enum Sort {
    #[default]
    Newest,
    PriceAsc,
    PriceDesc,
}

impl From<Sort> for ProductSort {
    fn from(sort: Sort) -> Self {
        match sort {
            Sort::Newest => Self::Newest,
            Sort::PriceAsc => Self::PriceAsc,
            Sort::PriceDesc => Self::PriceDesc,
        }
    }
}

/// A page of products, Relay style.
#[derive(Debug, SimpleObject)]
pub struct ProductConnection {
    edges: Vec<ProductEdge>,
    page_info: PageInfo,
}

#[derive(Debug, SimpleObject)]
pub struct ProductEdge {
    cursor: String,
    node: Product,
}

#[derive(Debug, SimpleObject)]
pub struct PageInfo {
    has_next_page: bool,
    end_cursor: Option<String>,
}

/// Money as `{"amount": <minor units>, "currency": "USD"}` — the same shape as REST, so the
/// seed's `price` needs no sub-selection.
#[derive(Debug, Clone, Copy)]
pub struct MoneyScalar(Money);

impl MoneyScalar {
    fn value(amount: i64, currency: &str) -> Value {
        let mut object = async_graphql::indexmap::IndexMap::new();
        object.insert(async_graphql::Name::new("amount"), Value::from(amount));
        object.insert(async_graphql::Name::new("currency"), Value::from(currency));
        Value::Object(object)
    }
}

#[Scalar(name = "Money")]
impl ScalarType for MoneyScalar {
    /// As an input (`expectedTotal`), the same object: `{amount: 2400, currency: "USD"}`.
    fn parse(value: Value) -> async_graphql::InputValueResult<Self> {
        let Value::Object(object) = &value else {
            return Err(async_graphql::InputValueError::expected_type(value));
        };
        let amount = match object.get("amount") {
            Some(Value::Number(n)) => n.as_i64(),
            _ => None,
        };
        let currency = match object.get("currency") {
            Some(Value::String(code)) => code.parse::<bazaar_store::Currency>().ok(),
            _ => None,
        };
        match (amount, currency, object.len()) {
            (Some(amount), Some(currency), 2) => Ok(Self(Money { amount, currency })),
            _ => Err(async_graphql::InputValueError::custom(
                "expected {amount: <minor units, an integer>, currency: <an ISO 4217 code>}",
            )),
        }
    }

    fn to_value(&self) -> Value {
        Self::value(self.0.amount, self.0.currency.as_str())
    }
}

/// A product. Its variants are loaded before the field is resolved — by `product(id)` in the
/// same round trip, by `products` for the whole page (one round trip per shard) when a look
/// ahead shows the query selects them. That beats a DataLoader here: no batching window to
/// wait for, and the batch is exactly the page.
#[derive(Debug)]
pub struct Product {
    product: bazaar_store::Product,
    variants: Option<Vec<bazaar_store::Variant>>,
}

#[Object]
impl Product {
    async fn id(&self) -> ID {
        ID(self.product.id.to_string())
    }
    async fn name(&self) -> &str {
        &self.product.name
    }
    async fn description(&self) -> &str {
        &self.product.description
    }
    async fn brand(&self) -> &str {
        &self.product.brand
    }
    async fn category(&self) -> &str {
        &self.product.category
    }
    /// The lowest price among the variants.
    async fn price(&self) -> MoneyScalar {
        MoneyScalar(self.product.price)
    }
    /// RFC 3339, UTC.
    async fn created_at(&self) -> String {
        rfc3339(self.product.created_at_ms)
    }
    /// The seller who lists it; null for the house catalog.
    async fn seller_id(&self) -> Option<ID> {
        self.product.seller_id.map(|s| ID(s.to_string()))
    }
    /// Edits so far; pass it as `expectedVersion` to make a write conditional.
    async fn version(&self) -> i64 {
        self.product.version
    }
    /// Views so far (eventually consistent: buffered views are flushed every second or so).
    async fn view_count(&self, ctx: &Context<'_>) -> Result<i64> {
        Ok(ctx.data::<Catalog>()?.view_count(&self.product))
    }
    async fn variants(&self, ctx: &Context<'_>) -> Result<Vec<Variant>> {
        if let Some(variants) = &self.variants {
            return Ok(variants.iter().cloned().map(Variant).collect());
        }
        // Only reached through a selection the look ahead did not recognise: still correct,
        // one round trip for this product.
        let catalog = ctx.data::<Catalog>()?;
        let mut loaded = catalog
            .variants_of(&[self.product.id])
            .await
            .map_err(shop_error)?;
        let variants = loaded.remove(&self.product.id);
        Ok(variants
            .unwrap_or_default()
            .into_iter()
            .map(Variant)
            .collect())
    }
}

/// A sellable colour/size of a product.
#[derive(Debug)]
pub struct Variant(bazaar_store::Variant);

#[Object]
impl Variant {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    async fn sku(&self) -> &str {
        &self.0.sku
    }
    async fn color(&self) -> &str {
        &self.0.color
    }
    async fn size(&self) -> &str {
        &self.0.size
    }
    async fn price(&self) -> MoneyScalar {
        MoneyScalar(self.0.price)
    }
    /// Units in stock now.
    async fn stock_level(&self) -> i64 {
        self.0.stock_level
    }
}

/// `POST /graphql`: a JSON GraphQL request.
pub async fn execute(
    State(state): State<AppState>,
    Acting(actor): Acting,
    deferred: Option<Extension<Deferred>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let deferred = deferred.map(|Extension(deferred)| deferred);
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    let request: Result<async_graphql::Request, ApiError> = if is_json {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::MalformedBody(format!("expected a GraphQL request object: {e}")))
    } else {
        Err(ApiError::UnsupportedMediaType {
            expected: "application/json",
        })
    };
    let mut request = match request {
        Ok(request) => request,
        Err(error) => {
            // Even a request that is not GraphQL at all costs its one read unit.
            let admission = Admission::new(state.gate.clone(), deferred, Work::Unknown);
            return admission.settled(error.into_response()).await;
        }
    };
    // Parsed once, here: the charge needs the operation, and the executor reuses the parse.
    let operation = request.operation_name.take();
    let work = request
        .parsed_query()
        .map_or(Work::Unknown, |doc| Work::of(doc, operation.as_deref()));
    request.operation_name = operation;
    let admission = Arc::new(Admission::new(state.gate.clone(), deferred, work));
    let response = state
        .schema
        .execute(
            request
                .data(state.catalog.clone())
                .data(state.search.clone())
                .data(state.orders.clone())
                .data(actor)
                .data(admission.clone())
                .data(ViewedProducts::default()),
        )
        .await;
    admission
        .settled(axum::Json(response).into_response())
        .await
}

/// The products one request has recorded a view of.
#[derive(Debug, Default)]
struct ViewedProducts(std::sync::Mutex<std::collections::HashSet<ProductId>>);

impl ViewedProducts {
    /// Whether this is the request's first read of `id` (and remembers it).
    fn first(&self, id: ProductId) -> bool {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(id)
    }
}

/// Which orders `orders` lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, async_graphql::Enum)]
pub enum Scope {
    #[default]
    Mine,
    Selling,
    All,
}

impl From<Scope> for OrderScope {
    fn from(scope: Scope) -> Self {
        match scope {
            Scope::Mine => Self::Mine,
            Scope::Selling => Self::Selling,
            Scope::All => Self::All,
        }
    }
}

/// A line of the cart, priced now.
#[derive(Debug, SimpleObject)]
pub struct CartLine {
    variant_id: ID,
    product_id: ID,
    name: String,
    sku: String,
    color: String,
    size: String,
    unit_price: MoneyScalar,
    quantity: i64,
    line_total: MoneyScalar,
    /// Units on hand as last read; checkout is what reserves them.
    available: i64,
}

/// The caller's cart.
#[derive(Debug, SimpleObject)]
pub struct Cart {
    lines: Vec<CartLine>,
    total: MoneyScalar,
}

impl From<ShopCart> for Cart {
    fn from(cart: ShopCart) -> Self {
        Self {
            lines: cart
                .lines
                .into_iter()
                .map(|l| CartLine {
                    variant_id: ID(l.variant_id.to_string()),
                    product_id: ID(l.product_id.to_string()),
                    name: l.name,
                    sku: l.sku,
                    color: l.color,
                    size: l.size,
                    unit_price: MoneyScalar(l.unit_price),
                    quantity: l.quantity,
                    line_total: MoneyScalar(l.line_total),
                    available: l.available,
                })
                .collect(),
            total: MoneyScalar(cart.total),
        }
    }
}

/// An order line, at the price paid.
#[derive(Debug, SimpleObject)]
pub struct OrderLine {
    variant_id: ID,
    product_id: ID,
    name: String,
    sku: String,
    unit_price: MoneyScalar,
    quantity: i64,
    /// RFC 3339, once shipped.
    shipped_at: Option<String>,
}

/// An order. The shipping address is REST-only (`GET /orders/{id}`).
#[derive(Debug)]
pub struct Order(ShopOrder);

#[Object]
impl Order {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }

    /// `pending`, `paid`, `shipped`, `delivered`, `cancelled`, `expired` or `refunded`.
    async fn status(&self) -> &str {
        crate::orders::status_wire_name(self.0.status)
    }

    async fn total(&self) -> MoneyScalar {
        MoneyScalar(self.0.total)
    }

    /// Why it was cancelled, if it was.
    async fn reason(&self) -> Option<&str> {
        self.0.reason.as_deref()
    }

    async fn lines(&self) -> Vec<OrderLine> {
        self.0
            .lines
            .iter()
            .map(|l| OrderLine {
                variant_id: ID(l.variant_id.to_string()),
                product_id: ID(l.product_id.to_string()),
                name: l.name.clone(),
                sku: l.sku.clone(),
                unit_price: MoneyScalar(l.unit_price),
                quantity: l.quantity,
                shipped_at: l.shipped_at_ms.map(crate::wire::rfc3339),
            })
            .collect()
    }

    /// RFC 3339, UTC.
    async fn created_at(&self) -> String {
        crate::wire::rfc3339(self.0.created_at_ms)
    }
}
