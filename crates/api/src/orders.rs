//! The cart, checkout and orders over REST. Permission checks happen in the shop's services.

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bazaar_shop::ShopError;
use bazaar_shop::address::{AddressInput, ShippingAddress};
use bazaar_shop::orders::{Cart, CartLine, CheckoutReply, CheckoutRequest, Order, OrderScope};
use bazaar_store::{OrderId, OrderLine, OrderStatus, StoredResponse, VariantId};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::body::JsonBody;
use crate::gate::Acting;
use crate::params::{Path, QueryParams};
use crate::problem::{ApiError, PROBLEM_JSON, Problem};
use crate::wire::{MoneyBody, MoneyInput, rfc3339};

/// The cart and order routes, with their OpenAPI descriptions.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(get_cart))
        .routes(routes!(add_to_cart))
        .routes(routes!(update_cart_item, remove_cart_item))
        .routes(routes!(checkout))
        .routes(routes!(list_orders))
        .routes(routes!(get_order))
        .routes(routes!(cancel_order))
        .routes(routes!(refund_order))
        .routes(routes!(ship_order))
        .routes(routes!(deliver_order))
}

/// A line of the cart, priced now.
#[derive(Debug, Serialize, ToSchema)]
pub struct CartLineBody {
    variant_id: String,
    product_id: String,
    name: String,
    sku: String,
    color: String,
    size: String,
    unit_price: MoneyBody,
    quantity: i64,
    line_total: MoneyBody,
    /// Units on hand as last read; checkout is what reserves them.
    available: i64,
}

impl From<CartLine> for CartLineBody {
    fn from(line: CartLine) -> Self {
        Self {
            variant_id: line.variant_id.to_string(),
            product_id: line.product_id.to_string(),
            name: line.name,
            sku: line.sku,
            color: line.color,
            size: line.size,
            unit_price: line.unit_price.into(),
            quantity: line.quantity,
            line_total: line.line_total.into(),
            available: line.available,
        }
    }
}

/// The caller's cart. Prices are the server's, in minor units.
#[derive(Debug, Serialize, ToSchema)]
pub struct CartBody {
    lines: Vec<CartLineBody>,
    total: MoneyBody,
}

impl From<Cart> for CartBody {
    fn from(cart: Cart) -> Self {
        Self {
            lines: cart.lines.into_iter().map(Into::into).collect(),
            total: cart.total.into(),
        }
    }
}

/// `POST /cart/items`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddItemBody {
    /// A variant id (decimal string).
    variant_id: String,
    /// 1 to 100.
    quantity: i64,
}

/// `PATCH /cart/items/{variant_id}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QuantityBody {
    /// 1 to 100.
    quantity: i64,
}

/// A shipping address. `country` is an ISO 3166-1 alpha-2 code.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddressBody {
    pub(crate) name: Option<String>,
    pub(crate) line1: Option<String>,
    pub(crate) line2: Option<String>,
    pub(crate) city: Option<String>,
    pub(crate) region: Option<String>,
    pub(crate) postal_code: Option<String>,
    #[schema(example = "US")]
    pub(crate) country: Option<String>,
}

impl From<ShippingAddress> for AddressBody {
    fn from(address: ShippingAddress) -> Self {
        Self {
            name: Some(address.name),
            line1: Some(address.line1),
            line2: address.line2,
            city: Some(address.city),
            region: address.region,
            postal_code: Some(address.postal_code),
            country: Some(address.country),
        }
    }
}

/// `POST /checkout`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckoutBody {
    shipping_address: Option<AddressBody>,
    /// The total you expect to pay: the cart's `total` as you last read it. If the cart now
    /// prices to anything else (a seller changed a price), the checkout is refused with 409
    /// `price-changed` and the new total, and nothing is reserved or charged.
    expected_total: Option<MoneyInput>,
}

/// One line of an order, at the price paid.
#[derive(Debug, Serialize, ToSchema)]
pub struct OrderLineBody {
    variant_id: String,
    product_id: String,
    seller_id: Option<String>,
    name: String,
    sku: String,
    unit_price: MoneyBody,
    quantity: i64,
    /// RFC 3339, once the seller shipped it.
    shipped_at: Option<String>,
}

impl From<OrderLine> for OrderLineBody {
    fn from(line: OrderLine) -> Self {
        Self {
            variant_id: line.variant_id.to_string(),
            product_id: line.product_id.to_string(),
            seller_id: line.seller_id.map(|s| s.to_string()),
            name: line.name,
            sku: line.sku,
            unit_price: line.unit_price.into(),
            quantity: line.quantity,
            shipped_at: line.shipped_at_ms.map(rfc3339),
        }
    }
}

/// An order. A seller who is not its buyer sees only their part of it: their own lines,
/// `total` as the subtotal of those lines, the masked address, and no `buyer_id` or
/// `payment_ref`.
#[derive(Debug, Serialize, ToSchema)]
pub struct OrderBody {
    id: String,
    /// Absent in a seller's view.
    #[serde(skip_serializing_if = "Option::is_none")]
    buyer_id: Option<String>,
    /// `pending`, `paid`, `shipped`, `delivered`, `cancelled`, `expired` or `refunded`.
    status: String,
    total: MoneyBody,
    lines: Vec<OrderLineBody>,
    /// Why it was cancelled: `out_of_stock`, `payment_declined`, `payment_failed`,
    /// `interrupted`, `cancelled_by_buyer` or `reservation_expired`.
    reason: Option<String>,
    payment_ref: Option<String>,
    /// In full for the buyer and admins; sellers see the city, region, postal code and
    /// country only.
    shipping_address: AddressBody,
    created_at: String,
    updated_at: String,
}

impl From<Order> for OrderBody {
    fn from(order: Order) -> Self {
        Self {
            id: order.id.to_string(),
            buyer_id: order.buyer_id.map(|b| b.to_string()),
            status: status_wire_name(order.status).to_owned(),
            total: order.total.into(),
            lines: order.lines.into_iter().map(Into::into).collect(),
            reason: order.reason,
            payment_ref: order.payment_ref,
            shipping_address: order.shipping_address.into(),
            created_at: rfc3339(order.created_at_ms),
            updated_at: rfc3339(order.updated_at_ms),
        }
    }
}

/// A page of orders, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct OrderPage {
    items: Vec<OrderBody>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    next_cursor: Option<String>,
}

/// `GET /orders` parameters, for OpenAPI; they are read by [`QueryParams`], which refuses
/// any other parameter and any given twice.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(
    dead_code,
    reason = "a documentation type: only its derived OpenAPI parameters are used"
)]
pub struct OrderQuery {
    /// `mine` (default: your purchases), `selling` (orders with your products; sellers and
    /// admins) or `all` (admins).
    scope: Option<String>,
    /// `next_cursor` of the previous page: list orders older than its last.
    cursor: Option<String>,
    /// 1 to 100, default 20.
    limit: Option<String>,
}

/// How clients see an order's status, in REST bodies and GraphQL alike (the values the
/// OpenAPI document lists). Decided here, not by the store: a stored spelling may change
/// without changing the API, and the other way round.
pub(crate) fn status_wire_name(status: OrderStatus) -> &'static str {
    match status {
        OrderStatus::Pending => "pending",
        OrderStatus::Paid => "paid",
        OrderStatus::Shipped => "shipped",
        OrderStatus::Delivered => "delivered",
        OrderStatus::Cancelled => "cancelled",
        OrderStatus::Expired => "expired",
        OrderStatus::Refunded => "refunded",
    }
}

fn variant_param(raw: &str) -> Result<VariantId, ApiError> {
    raw.parse().map_err(|e| ApiError::param("variant_id", e))
}

fn order_param(raw: &str) -> Result<OrderId, ApiError> {
    raw.parse().map_err(|e| ApiError::param("id", e))
}

fn cart_response(cart: Cart) -> Response {
    axum::Json(CartBody::from(cart)).into_response()
}

/// The caller's cart, priced now.
#[utoipa::path(
    get, path = "/cart", tag = "orders",
    responses(
        (status = 200, description = "The cart", body = CartBody),
        (status = 401, description = "Not signed in", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn get_cart(
    State(state): State<AppState>,
    Acting(actor): Acting,
) -> Result<Response, ApiError> {
    Ok(cart_response(state.orders.cart(&actor).await?))
}

/// Adds units of a variant to the cart (to its line, if it has one).
#[utoipa::path(
    post, path = "/cart/items", tag = "orders", request_body = AddItemBody,
    responses(
        (status = 200, description = "The cart after the change", body = CartBody),
        (status = 400, description = "`variant_id` is not an id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Not signed in", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such variant", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`quantity` out of range, or the cart is full", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn add_to_cart(
    State(state): State<AppState>,
    Acting(actor): Acting,
    JsonBody(body): JsonBody<AddItemBody>,
) -> Result<Response, ApiError> {
    let variant = variant_param(&body.variant_id)?;
    Ok(cart_response(
        state
            .orders
            .add_to_cart(&actor, variant, body.quantity)
            .await?,
    ))
}

/// Sets the quantity of a cart line.
#[utoipa::path(
    patch, path = "/cart/items/{variant_id}", tag = "orders", request_body = QuantityBody,
    params(("variant_id" = String, Path, description = "The line's variant id")),
    responses(
        (status = 200, description = "The cart after the change", body = CartBody),
        (status = 401, description = "Not signed in", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "The cart has no such line", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`quantity` out of range", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn update_cart_item(
    State(state): State<AppState>,
    Acting(actor): Acting,
    Path(variant_id): Path<String>,
    JsonBody(body): JsonBody<QuantityBody>,
) -> Result<Response, ApiError> {
    let variant = variant_param(&variant_id)?;
    Ok(cart_response(
        state
            .orders
            .set_cart_quantity(&actor, variant, body.quantity)
            .await?,
    ))
}

/// Removes a cart line.
#[utoipa::path(
    delete, path = "/cart/items/{variant_id}", tag = "orders",
    params(("variant_id" = String, Path, description = "The line's variant id")),
    responses(
        (status = 200, description = "The cart after the change", body = CartBody),
        (status = 401, description = "Not signed in", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "The cart has no such line", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn remove_cart_item(
    State(state): State<AppState>,
    Acting(actor): Acting,
    Path(variant_id): Path<String>,
) -> Result<Response, ApiError> {
    let variant = variant_param(&variant_id)?;
    Ok(cart_response(
        state.orders.remove_from_cart(&actor, variant).await?,
    ))
}

/// The bytes a checkout outcome is answered with — what is stored for replay.
pub(crate) fn render(outcome: &Result<Order, ShopError>) -> StoredResponse {
    match outcome {
        Ok(order) => StoredResponse {
            status: StatusCode::CREATED.as_u16(),
            body: serde_json::to_vec(&OrderBody::from(order.clone())).expect("an order serialises"),
        },
        Err(error) => {
            let (problem, _) = ApiError::of(error).into_problem();
            StoredResponse {
                status: problem.status,
                body: serde_json::to_vec(&problem).expect("a problem serialises"),
            }
        }
    }
}

/// The id of the order a stored successful checkout answered with.
pub(crate) fn stored_order_id(response: &StoredResponse) -> Option<OrderId> {
    #[derive(Deserialize)]
    struct Stored {
        id: String,
    }
    let stored: Stored = serde_json::from_slice(&response.body).ok()?;
    stored.id.parse().ok()
}

fn stored(response: StoredResponse, replayed: bool) -> Response {
    let status = StatusCode::from_u16(response.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let content_type = if status.is_success() {
        "application/json"
    } else {
        PROBLEM_JSON
    };
    let mut reply = (status, response.body).into_response();
    let headers = reply.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if replayed {
        headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    reply
}

/// The longest `Idempotency-Key` accepted.
const MAX_KEY_LEN: usize = 255;

/// An `Idempotency-Key` as sent (header or GraphQL argument), checked.
pub(crate) fn idempotency_key(raw: &str) -> Result<String, ApiError> {
    if (1..=MAX_KEY_LEN).contains(&raw.len()) && raw.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(raw.to_owned())
    } else {
        Err(ApiError::param(
            "Idempotency-Key",
            format!("expected 1 to {MAX_KEY_LEN} visible ASCII characters"),
        ))
    }
}

/// A checkout request as REST and GraphQL both make it, so the same key with the same
/// address and expected total is the same request whichever way it arrives.
pub(crate) fn checkout_request(
    key: String,
    address: AddressBody,
    expected_total: Option<MoneyInput>,
) -> Result<CheckoutRequest, ApiError> {
    let expected = expected_total
        .as_ref()
        .map(|money| money.parse("expected_total"))
        .transpose()?;
    // The body as the server understood it, in a canonical form: a retry that differs only
    // in whitespace or key order is the same request.
    let canonical = serde_json::to_vec(&(&address, &expected_total)).expect("a body serialises");
    Ok(CheckoutRequest {
        idempotency_key: key,
        request_hash: Sha256::digest(&canonical).to_vec(),
        shipping_address: AddressInput {
            name: address.name,
            line1: address.line1,
            line2: address.line2,
            city: address.city,
            region: address.region,
            postal_code: address.postal_code,
            country: address.country,
        },
        expected_total: expected,
    })
}

/// Turns the cart into a paid order: reserves stock for every line, takes payment, and
/// answers with the order. Requires an `Idempotency-Key` header: the same key with the same
/// body answers the same response, even when both arrive at once; with another body, 422.
#[utoipa::path(
    post, path = "/checkout", tag = "orders", request_body = CheckoutBody,
    params(("Idempotency-Key" = String, Header, description = "A unique key per checkout attempt, e.g. a UUID (1 to 255 visible ASCII characters)")),
    responses(
        (status = 201, description = "Paid", body = OrderBody),
        (status = 400, description = "No or malformed `Idempotency-Key`", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Not signed in", body = Problem, content_type = "application/problem+json"),
        (status = 402, description = "The payment was declined; no stock was kept", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`out-of-stock` (naming `variant_id`; nothing was charged); `checkout-in-progress`: another checkout of this cart (another key) is running; `price-changed`: the cart no longer totals `expected_total` (the problem's `total` is the new one; nothing was reserved or charged); `cart-changed`; or `idempotency-in-progress`: a request with this key is still running", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A missing or invalid address field (`param` names it), an empty cart, or the key reused with another body", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The payment provider failed; nothing was charged", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn checkout(
    State(state): State<AppState>,
    Acting(actor): Acting,
    headers: HeaderMap,
    JsonBody(body): JsonBody<CheckoutBody>,
) -> Result<Response, ApiError> {
    let key = headers.get("idempotency-key").ok_or_else(|| {
        ApiError::param(
            "Idempotency-Key",
            "this header is required: send a unique key (such as a UUID) per checkout attempt",
        )
    })?;
    let key = idempotency_key(key.to_str().unwrap_or("\u{fffd}"))?;
    let address = body
        .shipping_address
        .ok_or_else(|| ApiError::InvalidField {
            field: "shipping_address".into(),
            detail: "is required".into(),
        })?;
    let request = checkout_request(key, address, body.expected_total)?;
    match state.orders.checkout(&actor, request, &render).await? {
        CheckoutReply::Fresh(outcome) => match *outcome {
            Ok(order) => {
                Ok((StatusCode::CREATED, axum::Json(OrderBody::from(order))).into_response())
            }
            Err(error) => Err(error.into()),
        },
        CheckoutReply::Replay(response) => Ok(stored(response, true)),
    }
}

/// Orders, newest first: your purchases, the orders you sell in, or (admins) all.
#[utoipa::path(
    get, path = "/orders", tag = "orders", params(OrderQuery),
    responses(
        (status = 200, description = "A page of orders", body = OrderPage),
        (status = 400, description = "A parameter is invalid", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Not signed in", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The scope is not yours to list", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn list_orders(
    State(state): State<AppState>,
    Acting(actor): Acting,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let query = QueryParams::parse(
        query.as_deref().unwrap_or(""),
        &["scope", "cursor", "limit"],
    )?;
    let scope = match query.get("scope") {
        None | Some("mine") => OrderScope::Mine,
        Some("selling") => OrderScope::Selling,
        Some("all") => OrderScope::All,
        Some(other) => {
            return Err(ApiError::param(
                "scope",
                format!("expected `mine`, `selling` or `all`, found `{other}`"),
            ));
        }
    };
    // The cursor is the id of the previous page's last order: opaque to clients, and stable
    // because ids only grow with time.
    let before = query
        .get("cursor")
        .map(|raw| {
            raw.parse::<OrderId>()
                .map_err(|e| ApiError::param("cursor", e))
        })
        .transpose()?;
    let limit = match query.get("limit") {
        None => 20,
        Some(raw) => raw
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=100).contains(n))
            .ok_or_else(|| ApiError::param("limit", format!("expected 1 to 100, found `{raw}`")))?,
    };
    let orders = state.orders.orders(&actor, scope, before, limit).await?;
    let next_cursor = (orders.len() == limit)
        .then(|| orders.last().map(|o| o.id.to_string()))
        .flatten();
    Ok(axum::Json(OrderPage {
        items: orders.into_iter().map(Into::into).collect(),
        next_cursor,
    })
    .into_response())
}

fn order_response(order: Order) -> Response {
    axum::Json(OrderBody::from(order)).into_response()
}

/// One order: for its buyer, sellers with a line in it, and admins.
#[utoipa::path(
    get, path = "/orders/{id}", tag = "orders",
    params(("id" = String, Path, description = "Order id")),
    responses(
        (status = 200, description = "The order", body = OrderBody),
        (status = 401, description = "Not signed in", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such order visible to you", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn get_order(
    State(state): State<AppState>,
    Acting(actor): Acting,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(order_response(
        state.orders.order(&actor, order_param(&id)?).await?,
    ))
}

/// Cancels a pending order (its buyer or an admin); its stock returns.
#[utoipa::path(
    post, path = "/orders/{id}/cancel", tag = "orders",
    params(("id" = String, Path, description = "Order id")),
    responses(
        (status = 200, description = "Cancelled", body = OrderBody),
        (status = 401, description = "Not signed in", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not the buyer or an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such order visible to you", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`invalid-transition`: only pending orders can be cancelled", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn cancel_order(
    State(state): State<AppState>,
    Acting(actor): Acting,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(order_response(
        state.orders.cancel(&actor, order_param(&id)?).await?,
    ))
}

/// Refunds a paid order (its buyer or an admin): the payment and the stock go back.
#[utoipa::path(
    post, path = "/orders/{id}/refund", tag = "orders",
    params(("id" = String, Path, description = "Order id")),
    responses(
        (status = 200, description = "Refunded", body = OrderBody),
        (status = 401, description = "Not signed in", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not the buyer or an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such order visible to you", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`invalid-transition`: only paid orders can be refunded", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn refund_order(
    State(state): State<AppState>,
    Acting(actor): Acting,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(order_response(
        state.orders.refund(&actor, order_param(&id)?).await?,
    ))
}

/// Marks your lines of a paid order shipped (sellers; admins ship every line). The order is
/// `shipped` once every line is.
#[utoipa::path(
    post, path = "/orders/{id}/ship", tag = "orders",
    params(("id" = String, Path, description = "Order id")),
    responses(
        (status = 200, description = "Lines shipped", body = OrderBody),
        (status = 401, description = "Not signed in", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "You sell nothing in this order", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such order visible to you", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Not paid, or your lines are already shipped", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn ship_order(
    State(state): State<AppState>,
    Acting(actor): Acting,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(order_response(
        state.orders.ship(&actor, order_param(&id)?).await?,
    ))
}

/// Records that a shipped order was delivered (admins).
#[utoipa::path(
    post, path = "/orders/{id}/deliver", tag = "orders",
    params(("id" = String, Path, description = "Order id")),
    responses(
        (status = 200, description = "Delivered", body = OrderBody),
        (status = 401, description = "Not signed in", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such order visible to you", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`invalid-transition`: only shipped orders can be delivered", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn deliver_order(
    State(state): State<AppState>,
    Acting(actor): Acting,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(order_response(
        state.orders.deliver(&actor, order_param(&id)?).await?,
    ))
}
