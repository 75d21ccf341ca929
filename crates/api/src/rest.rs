//! The catalog over REST: the seed's four read endpoints, and sellers' writes with `If-Match`
//! preconditions. Permission checks happen in the shop's catalog service.

use std::str::FromStr;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bazaar_shop::ListRequest;
use bazaar_shop::catalog::{NewProduct, NewVariant, ProductChanges, VariantChanges};
use bazaar_shop::params::{Cursor, Limit, PriceBound, parse_sort};
use bazaar_store::{ProductId, ProductWithVariants, VariantId};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::body::JsonBody;
use crate::gate::Acting;
use crate::params::{NoQuery, Path, QueryParams};
use crate::problem::{ApiError, Problem, WriteProblems};
use crate::wire::{MoneyInput, Page, ProductDetail, ProductSummary, VariantBody};

/// The catalog routes, with their OpenAPI descriptions.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_products, create_product))
        .routes(routes!(get_product, update_product, delete_product))
        .routes(routes!(list_variants, add_variant))
        .routes(routes!(get_variant, update_variant, delete_variant))
}

/// Lists products, newest first unless sorted otherwise.
#[utoipa::path(
    get,
    path = "/products",
    tag = "catalog",
    params(
        ("limit" = Option<u32>, Query, description = "Page size, 1–100 (default 20)"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"),
        ("category" = Option<String>, Query, description = "Only this category"),
        ("min_price" = Option<i64>, Query, description = "Lowest price, minor units, inclusive"),
        ("max_price" = Option<i64>, Query, description = "Highest price, minor units, inclusive"),
        ("in_stock" = Option<bool>, Query, description = "`true`: only products with stock; `false`: only sold out"),
        ("sort" = Option<String>, Query, description = "`newest` (default), `price_asc` or `price_desc`"),
    ),
    responses(
        (status = 200, description = "A page of products", body = inline(Page<ProductSummary>)),
        (status = 400, description = "A parameter is invalid; `param` names it", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn list_products(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let request = parse_list_request(query.as_deref().unwrap_or(""))?;
    let listing = state.catalog.list(&request).await?;
    let page = Page {
        items: listing
            .items
            .into_iter()
            .map(ProductSummary::from)
            .collect(),
        next_cursor: listing.next_cursor.map(|c| c.encode()),
    };
    Ok(json(&page))
}

fn parse_list_request(raw: &str) -> Result<ListRequest, ApiError> {
    let params = QueryParams::parse(
        raw,
        &[
            "limit",
            "cursor",
            "category",
            "min_price",
            "max_price",
            "in_stock",
            "sort",
        ],
    )?;
    let mut request = ListRequest::default();
    for (name, value) in params.iter() {
        let bad = |e: &dyn std::fmt::Display| ApiError::param(name, e);
        match name {
            "limit" => request.limit = Limit::parse(value).map_err(|e| bad(&e))?,
            "cursor" => request.cursor = Some(Cursor::parse(value).map_err(|e| bad(&e))?),
            "category" if !value.is_empty() && value.len() <= 64 => {
                request.category = Some(value.to_owned());
            }
            "category" => return Err(bad(&"expected a category name of 1 to 64 characters")),
            "min_price" => request.min_price = Some(PriceBound::parse(value).map_err(|e| bad(&e))?),
            "max_price" => request.max_price = Some(PriceBound::parse(value).map_err(|e| bad(&e))?),
            "in_stock" => {
                request.in_stock = Some(match value {
                    "true" => true,
                    "false" => false,
                    _ => return Err(bad(&format!("expected true or false, found `{value}`"))),
                });
            }
            "sort" => request.sort = parse_sort(value).map_err(|e| bad(&e))?,
            _ => unreachable!("QueryParams refuses names not listed above"),
        }
    }
    Ok(request)
}

/// A product with its variants.
#[utoipa::path(
    get,
    path = "/products/{id}",
    tag = "catalog",
    params(("id" = String, Path, description = "Product id (decimal string)")),
    responses(
        (status = 200, description = "The product", body = ProductDetail,
            headers(("etag" = String, description = "Entity tag for If-None-Match"))),
        (status = 304, description = "Unchanged since the If-None-Match tag"),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such product", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn get_product(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id: ProductId = parse_id("id", &id)?;
    let product = state
        .catalog
        .product(id)
        .await?
        .ok_or_else(|| not_found_product(id))?;
    state.catalog.record_view(id).await;
    let views = state.catalog.view_count(&product.product);
    Ok(json_with_etag_and_views(
        &ProductDetail::from(&*product),
        Some(views),
        &headers,
    ))
}

/// The variants of a product.
#[utoipa::path(
    get,
    path = "/products/{id}/variants",
    tag = "catalog",
    params(("id" = String, Path, description = "Product id (decimal string)")),
    responses(
        (status = 200, description = "Every variant of the product (at most a few dozen, so not paged)", body = inline(Page<VariantBody>)),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such product", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn list_variants(
    State(state): State<AppState>,
    Path(id): Path<String>,
    _: NoQuery,
) -> Result<Response, ApiError> {
    let id: ProductId = parse_id("id", &id)?;
    let product = state
        .catalog
        .product(id)
        .await?
        .ok_or_else(|| not_found_product(id))?;
    let page = Page {
        items: product
            .variants
            .iter()
            .cloned()
            .map(VariantBody::from)
            .collect(),
        next_cursor: None,
    };
    Ok(json(&page))
}

/// One variant of a product.
#[utoipa::path(
    get,
    path = "/products/{id}/variants/{variant_id}",
    tag = "catalog",
    params(
        ("id" = String, Path, description = "Product id (decimal string)"),
        ("variant_id" = String, Path, description = "Variant id (decimal string)"),
    ),
    responses(
        (status = 200, description = "The variant", body = VariantBody,
            headers(("etag" = String, description = "Entity tag for If-None-Match"))),
        (status = 304, description = "Unchanged since the If-None-Match tag"),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such variant of this product", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn get_variant(
    State(state): State<AppState>,
    Path((id, variant_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id: ProductId = parse_id("id", &id)?;
    let variant_id: VariantId = parse_id("variant_id", &variant_id)?;
    let variant = state
        .catalog
        .variant(id, variant_id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("product {id} has no variant {variant_id}")))?;
    Ok(json_with_etag(&VariantBody::from(variant), &headers))
}

fn parse_id<T: FromStr<Err = bazaar_store::id::InvalidId>>(
    param: &str,
    raw: &str,
) -> Result<T, ApiError> {
    raw.parse().map_err(|e| ApiError::param(param, e))
}

fn not_found_product(id: ProductId) -> ApiError {
    ApiError::NotFound(format!("no product with id {id}"))
}

/// `POST /products`: a product with at least one variant.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewProductBody {
    name: String,
    #[serde(default)]
    description: String,
    brand: String,
    category: String,
    variants: Vec<NewVariantBody>,
}

/// A variant to add.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewVariantBody {
    sku: String,
    color: String,
    size: String,
    price: MoneyInput,
    #[serde(default)]
    stock_level: i64,
}

/// `PATCH /products/{id}`: fields to change.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProductChangesBody {
    name: Option<String>,
    description: Option<String>,
    brand: Option<String>,
    category: Option<String>,
}

/// `PATCH /products/{id}/variants/{variant_id}`: fields to change.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VariantChangesBody {
    sku: Option<String>,
    color: Option<String>,
    size: Option<String>,
    price: Option<MoneyInput>,
    stock_level: Option<i64>,
}

impl From<NewVariantBody> for NewVariant {
    fn from(v: NewVariantBody) -> Self {
        Self {
            sku: v.sku,
            color: v.color,
            size: v.size,
            price_amount: v.price.amount,
            currency: v.price.currency,
            stock_level: v.stock_level,
        }
    }
}

/// Lists a new product. Sellers own what they list; admins add to the house catalog.
#[utoipa::path(
    post, path = "/products", tag = "catalog", request_body = NewProductBody,
    responses(
        (status = 201, description = "Created", body = ProductDetail, headers(("etag" = String), ("location" = String))),
        (status = 401, description = "Not signed in", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not a seller or admin", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A field is invalid; `param` names it", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []), ("api_key" = []))
)]
async fn create_product(
    State(state): State<AppState>,
    Acting(actor): Acting,
    JsonBody(body): JsonBody<NewProductBody>,
) -> Result<Response, ApiError> {
    let input = NewProduct {
        name: body.name,
        description: body.description,
        brand: body.brand,
        category: body.category,
        variants: body.variants.into_iter().map(NewVariant::from).collect(),
    };
    let created = state.catalog.create_product(&actor, input).await?;
    let location = format!("/products/{}", created.product.id);
    let mut response = json_with_etag(&ProductDetail::from(created), &HeaderMap::new());
    *response.status_mut() = StatusCode::CREATED;
    if let Ok(location) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// The precondition a write carries: `None` without `If-Match`, else the version whose
/// representation had the tag — or 412 if the current one does not.
async fn precondition(
    state: &AppState,
    id: ProductId,
    headers: &HeaderMap,
    tag_of: impl Fn(&ProductWithVariants) -> Option<String>,
) -> Result<Option<i64>, ApiError> {
    let Some(if_match) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let current = state
        .catalog
        .product_uncached(id)
        .await?
        .ok_or_else(|| not_found_product(id))?;
    let Some(tag) = tag_of(&current) else {
        return Err(ApiError::PreconditionFailed(
            "the resource no longer exists".into(),
        ));
    };
    let matches = if_match.to_str().is_ok_and(|value| {
        value
            .split(',')
            .map(str::trim)
            .any(|t| t == "*" || t == tag)
    });
    if matches {
        Ok(Some(current.product.version))
    } else {
        Err(ApiError::PreconditionFailed("the resource changed since it was read: its ETag is now different; GET it again and retry".into()))
    }
}

fn product_tag(product: &ProductWithVariants) -> Option<String> {
    Some(etag_of(&ProductDetail::from(product)))
}

/// Changes a product's own fields. Send `If-Match` with the ETag you read to refuse the
/// change if someone else changed the product since.
#[utoipa::path(
    patch, path = "/products/{id}", tag = "catalog", request_body = ProductChangesBody,
    params(("id" = String, Path, description = "Product id"), ("if-match" = Option<String>, Header, description = "ETag of the version you read")),
    responses(
        WriteProblems,
        (status = 200, description = "The updated product", body = ProductDetail, headers(("etag" = String))),
    ),
    security(("bearer" = []), ("api_key" = []))
)]
async fn update_product(
    State(state): State<AppState>,
    Acting(actor): Acting,
    Path(id): Path<String>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<ProductChangesBody>,
) -> Result<Response, ApiError> {
    let id: ProductId = parse_id("id", &id)?;
    let expected = precondition(&state, id, &headers, product_tag).await?;
    let changes = ProductChanges {
        name: body.name,
        description: body.description,
        brand: body.brand,
        category: body.category,
    };
    let updated = state
        .catalog
        .update_product(&actor, id, expected, changes)
        .await?;
    Ok(json_with_etag(
        &ProductDetail::from(updated),
        &HeaderMap::new(),
    ))
}

/// Deletes a product with its variants.
#[utoipa::path(
    delete, path = "/products/{id}", tag = "catalog",
    params(("id" = String, Path, description = "Product id"), ("if-match" = Option<String>, Header, description = "ETag of the version you read")),
    responses(
        WriteProblems,
        (status = 204, description = "Deleted"),
    ),
    security(("bearer" = []), ("api_key" = []))
)]
async fn delete_product(
    State(state): State<AppState>,
    Acting(actor): Acting,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let id: ProductId = parse_id("id", &id)?;
    let expected = precondition(&state, id, &headers, product_tag).await?;
    state.catalog.delete_product(&actor, id, expected).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Adds a variant to a product.
#[utoipa::path(
    post, path = "/products/{id}/variants", tag = "catalog", request_body = NewVariantBody,
    params(("id" = String, Path, description = "Product id"), ("if-match" = Option<String>, Header, description = "ETag of the product version you read")),
    responses(
        WriteProblems,
        (status = 201, description = "The new variant", body = VariantBody, headers(("etag" = String), ("location" = String))),
        (status = 409, description = "The product has the most variants allowed", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []), ("api_key" = []))
)]
async fn add_variant(
    State(state): State<AppState>,
    Acting(actor): Acting,
    Path(id): Path<String>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<NewVariantBody>,
) -> Result<Response, ApiError> {
    let id: ProductId = parse_id("id", &id)?;
    let expected = precondition(&state, id, &headers, product_tag).await?;
    let (product, variant_id) = state
        .catalog
        .add_variant(&actor, id, expected, body.into())
        .await?;
    let variant = product
        .variants
        .into_iter()
        .find(|v| v.id == variant_id)
        .ok_or_else(|| not_found_product(id))?;
    let mut response = json_with_etag(&VariantBody::from(variant), &HeaderMap::new());
    *response.status_mut() = StatusCode::CREATED;
    if let Ok(location) = HeaderValue::from_str(&format!("/products/{id}/variants/{variant_id}")) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// Changes a variant: its labels, price, or units in stock.
#[utoipa::path(
    patch, path = "/products/{id}/variants/{variant_id}", tag = "catalog", request_body = VariantChangesBody,
    params(
        ("id" = String, Path, description = "Product id"),
        ("variant_id" = String, Path, description = "Variant id"),
        ("if-match" = Option<String>, Header, description = "ETag of the variant version you read"),
    ),
    responses(
        WriteProblems,
        (status = 200, description = "The updated variant", body = VariantBody, headers(("etag" = String))),
    ),
    security(("bearer" = []), ("api_key" = []))
)]
async fn update_variant(
    State(state): State<AppState>,
    Acting(actor): Acting,
    Path((id, variant_id)): Path<(String, String)>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<VariantChangesBody>,
) -> Result<Response, ApiError> {
    let id: ProductId = parse_id("id", &id)?;
    let variant_id: VariantId = parse_id("variant_id", &variant_id)?;
    let expected = precondition(&state, id, &headers, |p| variant_tag(p, variant_id)).await?;
    let changes = VariantChanges {
        sku: body.sku,
        color: body.color,
        size: body.size,
        price_amount: body.price.as_ref().map(|p| p.amount),
        currency: body.price.map(|p| p.currency),
        stock_level: body.stock_level,
    };
    let product = state
        .catalog
        .update_variant(&actor, id, variant_id, expected, changes)
        .await?;
    let variant = product
        .variants
        .into_iter()
        .find(|v| v.id == variant_id)
        .ok_or_else(|| not_found_product(id))?;
    Ok(json_with_etag(
        &VariantBody::from(variant),
        &HeaderMap::new(),
    ))
}

/// Removes a variant from a product.
#[utoipa::path(
    delete, path = "/products/{id}/variants/{variant_id}", tag = "catalog",
    params(
        ("id" = String, Path, description = "Product id"),
        ("variant_id" = String, Path, description = "Variant id"),
        ("if-match" = Option<String>, Header, description = "ETag of the variant version you read"),
    ),
    responses(
        WriteProblems,
        (status = 204, description = "Removed"),
    ),
    security(("bearer" = []), ("api_key" = []))
)]
async fn delete_variant(
    State(state): State<AppState>,
    Acting(actor): Acting,
    Path((id, variant_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let id: ProductId = parse_id("id", &id)?;
    let variant_id: VariantId = parse_id("variant_id", &variant_id)?;
    let expected = precondition(&state, id, &headers, |p| variant_tag(p, variant_id)).await?;
    state
        .catalog
        .delete_variant(&actor, id, variant_id, expected)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

fn variant_tag(product: &ProductWithVariants, variant: VariantId) -> Option<String> {
    let variant = product.variants.iter().find(|v| v.id == variant)?;
    Some(etag_of(&VariantBody::from(variant.clone())))
}

/// The strong ETag of a JSON representation: XXH3-64 of its bytes, so any change to any
/// field changes the tag.
pub fn etag_of<T: Serialize>(body: &T) -> String {
    tag_of_bytes(&serde_json::to_vec(body).unwrap_or_default())
}

fn tag_of_bytes(bytes: &[u8]) -> String {
    format!("\"{:016x}\"", xxhash_rust::xxh3::xxh3_64(bytes))
}

pub(crate) fn json<T: Serialize>(body: &T) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            bytes,
        )
            .into_response(),
        Err(e) => ApiError::Internal(Box::new(e)).into_response(),
    }
}

/// Serialises `body`, tags it with a strong ETag (XXH3-64 of the bytes, so any change to any
/// field changes the tag) and answers 304 when the client already holds that version.
fn json_with_etag<T: Serialize>(body: &T, request: &HeaderMap) -> Response {
    json_with_etag_and_views(body, None, request)
}

/// Like [`json_with_etag`], with a `view_count` member added after the tag is computed: a
/// statistic that changes on every read must not change the validator, or no `If-None-Match`
/// would ever match and every `If-Match` would fail.
fn json_with_etag_and_views<T: Serialize>(
    body: &T,
    views: Option<i64>,
    request: &HeaderMap,
) -> Response {
    let mut bytes = match serde_json::to_vec(body) {
        Ok(bytes) => bytes,
        Err(e) => return ApiError::Internal(Box::new(e)).into_response(),
    };
    let etag = HeaderValue::from_str(&tag_of_bytes(&bytes))
        .expect("hex digits in quotes are a valid header");
    if request
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .any(|value| if_none_match_hits(value.as_bytes(), etag.as_bytes()))
    {
        return Response::builder()
            .status(StatusCode::NOT_MODIFIED)
            .header(header::ETAG, etag)
            .body(Body::empty())
            .expect("a static response is valid");
    }
    if let Some(views) = views
        && bytes.last() == Some(&b'}')
    {
        // The body is a JSON object: insert the member before its closing brace.
        bytes.pop();
        bytes.extend_from_slice(format!(",\"view_count\":{views}}}").as_bytes());
    }
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (header::ETAG, etag),
        ],
        bytes,
    )
        .into_response()
}

/// RFC 9110 §13.1.2: `*` or a list of tags, compared weakly (a `W/` prefix is ignored).
fn if_none_match_hits(header: &[u8], etag: &[u8]) -> bool {
    let Ok(header) = std::str::from_utf8(header) else {
        return false;
    };
    let Ok(etag) = std::str::from_utf8(etag) else {
        return false;
    };
    header
        .split(',')
        .map(str::trim)
        .any(|tag| tag == "*" || tag.trim_start_matches("W/") == etag)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_none_match_compares_weakly_and_accepts_lists_and_star() {
        let tag = b"\"abc\"";
        assert!(if_none_match_hits(b"\"abc\"", tag));
        assert!(if_none_match_hits(b"W/\"abc\"", tag));
        assert!(if_none_match_hits(b"\"x\", \"abc\"", tag));
        assert!(if_none_match_hits(b"*", tag));
        assert!(!if_none_match_hits(b"\"abd\"", tag));
        assert!(!if_none_match_hits(b"abc", tag));
    }

    #[test]
    fn unknown_repeated_and_malformed_list_parameters_are_named() {
        let param_of = |q: &str| match parse_list_request(q) {
            Err(ApiError::InvalidParam { param, .. }) => param,
            other => panic!("{q}: {other:?}"),
        };
        assert_eq!(param_of("limit=0"), "limit");
        assert_eq!(param_of("limit=5&limit=6"), "limit");
        assert_eq!(param_of("colour=red"), "colour");
        assert_eq!(param_of("min_price=-3"), "min_price");
        assert_eq!(param_of("max_price=1.5"), "max_price");
        assert_eq!(param_of("in_stock=yes"), "in_stock");
        assert_eq!(param_of("sort=cheapest"), "sort");
        assert_eq!(param_of("cursor=zzz"), "cursor");
        assert_eq!(param_of("category="), "category");
        let ok = parse_list_request("limit=5&sort=price_asc&in_stock=true&category=home").unwrap();
        assert_eq!(ok.limit.get(), 5);
        assert_eq!(ok.in_stock, Some(true));
    }
}
