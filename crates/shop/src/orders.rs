//! Carts, checkout and the order life cycle.
//!
//! # Checkout is a saga
//!
//! A cart's products may live on several shards and the buyer's orders on another, so a
//! checkout cannot be one transaction. It is a sequence of local transactions, each
//! idempotent, with the **order row on the buyer's shard as the truth**:
//!
//! 1. the order is written `pending` with its lines, its `order.created` event and the claim
//!    on the request's `Idempotency-Key` — one transaction on the buyer's shard;
//! 2. stock is reserved on each product's shard — one all-or-nothing transaction per shard,
//!    a conditional decrement that never takes stock below zero;
//! 3. payment is authorised and captured, the order id being the provider's idempotency key;
//! 4. the order becomes `paid`, in the same transaction as the stored response, the event and
//!    the cart's cleanup;
//! 5. the reservations are committed and the order marked settled.
//!
//! If stock runs out or payment fails, the order becomes `cancelled` (with its stored
//! response) and its reservations are released. If the process dies anywhere, the order is
//! left unsettled; the sweeper finds it after `stale_after` and finishes it: a pending order
//! whose payment the provider reports captured is completed, any other is cancelled and its
//! stock released; a settled status is made true on the product shards. No step can be lost:
//! each one either happened (and is visible in a row) or is redone.

use std::sync::Arc;
use std::time::Duration;

use bazaar_cache::Cache;
use bazaar_store::{
    CartChange, CartItem, IdGenerator, IdempotencyClaim, IdempotencyRecord, Money, OrderId,
    OrderLine, OrderRecord, OrderStatus, ProductId, ReservationLine, ReserveOutcome, Role,
    StartOutcome, Store, StoredResponse, Transition, TransitionOutcome, UserId, VariantId,
};
use futures::StreamExt;

use crate::address::{AddressInput, ShippingAddress};
use crate::authz::{Action, Principal, authorize};
use crate::catalog::Catalog;
use crate::crypto::PiiCipher;
use crate::error::ShopError;
use crate::payments::{PaymentError, PaymentProvider, PaymentStatus};
use crate::{Actor, now_ms};

/// Limits and timings of carts and orders.
#[derive(Debug, Clone)]
pub struct OrdersConfig {
    /// How long stock stays held for an unpaid order before the sweeper returns it.
    pub reservation_ttl: Duration,
    /// How long an `Idempotency-Key` is remembered.
    pub idempotency_ttl: Duration,
    /// An order left unsettled this long belongs to a checkout that died; the sweeper
    /// finishes it. Must exceed the longest payment call.
    pub stale_after: Duration,
    /// How long a request waits for another request with the same key to finish.
    pub idempotency_wait: Duration,
    /// Units of one variant a cart line may hold.
    pub max_quantity: i64,
    /// Lines a cart may hold.
    pub max_lines: i64,
}

impl Default for OrdersConfig {
    fn default() -> Self {
        Self {
            reservation_ttl: Duration::from_secs(15 * 60),
            idempotency_ttl: Duration::from_secs(24 * 3600),
            stale_after: Duration::from_secs(30),
            idempotency_wait: Duration::from_secs(10),
            max_quantity: 100,
            max_lines: 50,
        }
    }
}

/// One line of a cart, priced now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CartLine {
    pub variant_id: VariantId,
    pub product_id: ProductId,
    pub name: String,
    pub sku: String,
    pub color: String,
    pub size: String,
    pub unit_price: Money,
    pub quantity: i64,
    pub line_total: Money,
    /// Units on hand as last read (possibly from the product cache).
    pub available: i64,
}

/// A buyer's cart, priced by the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cart {
    pub lines: Vec<CartLine>,
    /// The sum of the lines; zero USD when empty.
    pub total: Money,
}

/// An order as one principal may see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    pub id: OrderId,
    pub buyer_id: UserId,
    pub status: OrderStatus,
    pub total: Money,
    pub lines: Vec<OrderLine>,
    /// Why it was cancelled, if it was.
    pub reason: Option<String>,
    pub payment_ref: Option<String>,
    /// In full for the buyer and admins; masked for sellers.
    pub shipping_address: ShippingAddress,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// Which orders a listing shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OrderScope {
    /// The caller's own purchases.
    #[default]
    Mine,
    /// Orders with a line the caller sells (sellers and admins).
    Selling,
    /// Every order (admins).
    All,
}

/// A checkout request, parsed at the edge.
#[derive(Debug, Clone)]
pub struct CheckoutRequest {
    pub idempotency_key: String,
    /// A hash of the request body: a key reused with another body is refused.
    pub request_hash: Vec<u8>,
    pub shipping_address: AddressInput,
}

/// What a checkout answers: a fresh outcome, or the stored response of an earlier request
/// with the same key.
#[derive(Debug)]
pub enum CheckoutReply {
    Fresh(Box<Result<Order, ShopError>>),
    Replay(StoredResponse),
}

/// Turns a checkout outcome into the bytes a client receives, so that exactly those bytes
/// can be stored for replay. The API layer provides it: only it knows the wire format.
pub type Render<'a> = &'a (dyn Fn(&Result<Order, ShopError>) -> StoredResponse + Sync);

/// Carts, checkout and orders. Cheap to clone.
#[derive(Clone)]
pub struct Orders {
    inner: Arc<Inner>,
    /// Which product each variant belongs to: a fact that never changes, so it is cached
    /// without expiry (absence is not cached).
    variant_products: Option<Cache<VariantId, Option<ProductId>>>,
}

struct Inner {
    store: Arc<Store>,
    catalog: Catalog,
    payments: Arc<dyn PaymentProvider>,
    pii: PiiCipher,
    ids: Arc<IdGenerator>,
    config: OrdersConfig,
}

impl std::fmt::Debug for Orders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Orders")
            .field("payments", &self.inner.payments)
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

/// The reasons orders are cancelled for, as stored.
pub mod reasons {
    pub const OUT_OF_STOCK: &str = "out_of_stock";
    pub const PAYMENT_DECLINED: &str = "payment_declined";
    pub const PAYMENT_FAILED: &str = "payment_failed";
    pub const INTERRUPTED: &str = "interrupted";
    pub const BY_BUYER: &str = "cancelled_by_buyer";
    pub const RESERVATION_EXPIRED: &str = "reservation_expired";
}

fn ms(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

impl Orders {
    pub fn new(
        store: Arc<Store>,
        catalog: Catalog,
        payments: Arc<dyn PaymentProvider>,
        pii: PiiCipher,
        ids: Arc<IdGenerator>,
        config: OrdersConfig,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                catalog,
                payments,
                pii,
                ids,
                config,
            }),
            variant_products: None,
        }
    }

    /// Remembers which product each variant belongs to in `cache`.
    pub fn with_variant_cache(mut self, cache: Cache<VariantId, Option<ProductId>>) -> Self {
        self.variant_products = Some(cache);
        self
    }

    pub fn config(&self) -> &OrdersConfig {
        &self.inner.config
    }

    // ---------------------------------------------------------------------------------------
    // Carts

    /// The caller's cart, priced now. Lines whose variant is no longer sold are left out.
    pub async fn cart(&self, actor: &Actor) -> Result<Cart, ShopError> {
        let me = shopper(actor)?;
        let items = self.inner.store.for_user(me).cart(me).await?;
        let mut lines = Vec::with_capacity(items.len());
        for item in items {
            let Some((product, variant)) = self.on_sale(item.product_id, item.variant_id).await?
            else {
                continue;
            };
            lines.push(CartLine {
                variant_id: variant.id,
                product_id: product.product.id,
                name: product.product.name.clone(),
                sku: variant.sku.clone(),
                color: variant.color.clone(),
                size: variant.size.clone(),
                unit_price: variant.price,
                quantity: item.quantity,
                line_total: Money {
                    amount: variant.price.amount.saturating_mul(item.quantity),
                    currency: variant.price.currency,
                },
                available: variant.stock_level,
            });
        }
        let total = Money {
            amount: lines.iter().map(|l| l.line_total.amount).sum(),
            currency: lines
                .first()
                .map_or(bazaar_store::Currency::USD, |l| l.unit_price.currency),
        };
        Ok(Cart { lines, total })
    }

    /// A variant and its product, through the product cache; `None` once either is no longer
    /// sold (such cart lines are neither shown nor checked out).
    async fn on_sale(
        &self,
        product: ProductId,
        variant: VariantId,
    ) -> Result<
        Option<(
            Arc<bazaar_store::ProductWithVariants>,
            bazaar_store::Variant,
        )>,
        ShopError,
    > {
        let Some(product) = self.inner.catalog.product(product).await? else {
            return Ok(None);
        };
        let variant = product.variants.iter().find(|v| v.id == variant).cloned();
        Ok(variant.map(|variant| (product, variant)))
    }

    fn check_quantity(&self, quantity: i64) -> Result<(), ShopError> {
        let max = self.inner.config.max_quantity;
        if !(1..=max).contains(&quantity) {
            return Err(ShopError::field(
                "quantity",
                format!("must be a whole number from 1 to {max}, found {quantity}"),
            ));
        }
        Ok(())
    }

    async fn product_of(&self, variant: VariantId) -> Result<Option<ProductId>, ShopError> {
        let Some(cache) = &self.variant_products else {
            return Ok(self.inner.store.variant_product(variant).await?);
        };
        let store = self.inner.store.clone();
        cache
            .get_or_try_load(variant, move || async move {
                store.variant_product(variant).await
            })
            .await
            .map_err(|e| ShopError::Load(format!("variant {variant}: {e}")))
    }

    /// Adds `quantity` units of `variant` to the caller's cart.
    pub async fn add_to_cart(
        &self,
        actor: &Actor,
        variant: VariantId,
        quantity: i64,
    ) -> Result<Cart, ShopError> {
        let me = shopper(actor)?;
        self.check_quantity(quantity)?;
        let unknown = || ShopError::NotFound(format!("no variant with id {variant}"));
        let product_id = self.product_of(variant).await?.ok_or_else(unknown)?;
        let (_, sold) = self
            .on_sale(product_id, variant)
            .await?
            .ok_or_else(unknown)?;
        // One currency per cart: compare with the first line still on sale.
        for item in self.inner.store.for_user(me).cart(me).await? {
            if let Some((_, line)) = self.on_sale(item.product_id, item.variant_id).await? {
                if line.price.currency != sold.price.currency {
                    return Err(ShopError::field(
                        "variant_id",
                        format!(
                            "is priced in {} but the cart holds {}; check out separately",
                            sold.price.currency, line.price.currency
                        ),
                    ));
                }
                break;
            }
        }
        let item = CartItem {
            variant_id: variant,
            product_id,
            quantity,
            added_at_ms: now_ms(),
        };
        let (max_quantity, max_lines) =
            (self.inner.config.max_quantity, self.inner.config.max_lines);
        match self
            .inner
            .store
            .for_user(me)
            .add_to_cart(me, &item, max_quantity, max_lines)
            .await?
        {
            CartChange::Done { .. } => self.cart(actor).await,
            CartChange::TooMany { quantity } => Err(ShopError::field(
                "quantity",
                format!("the line would hold {quantity} units; at most {max_quantity} per line"),
            )),
            CartChange::TooManyLines => Err(ShopError::field(
                "variant_id",
                format!("the cart already holds {max_lines} lines, the most it may"),
            )),
        }
    }

    /// Sets the quantity of a line of the caller's cart.
    pub async fn set_cart_quantity(
        &self,
        actor: &Actor,
        variant: VariantId,
        quantity: i64,
    ) -> Result<Cart, ShopError> {
        let me = shopper(actor)?;
        self.check_quantity(quantity)?;
        if !self
            .inner
            .store
            .for_user(me)
            .set_cart_quantity(me, variant, quantity)
            .await?
        {
            return Err(not_in_cart(variant));
        }
        self.cart(actor).await
    }

    /// Removes a line from the caller's cart.
    pub async fn remove_from_cart(
        &self,
        actor: &Actor,
        variant: VariantId,
    ) -> Result<Cart, ShopError> {
        let me = shopper(actor)?;
        if !self
            .inner
            .store
            .for_user(me)
            .remove_from_cart(me, variant)
            .await?
        {
            return Err(not_in_cart(variant));
        }
        self.cart(actor).await
    }

    // ---------------------------------------------------------------------------------------
    // Checkout

    /// Turns the caller's cart into a paid order (see the module documentation).
    pub async fn checkout(
        &self,
        actor: &Actor,
        request: CheckoutRequest,
        render: Render<'_>,
    ) -> Result<CheckoutReply, ShopError> {
        let me = shopper(actor)?;
        let key = request.idempotency_key.as_str();
        let buyer_shard = self.inner.store.for_user(me);
        if let Some(existing) = buyer_shard.idempotency(me, key).await?
            && existing.expires_at_ms > now_ms()
        {
            return self
                .replay(me, existing, &request.request_hash, render)
                .await;
        }
        let now = now_ms();
        let (order, address) = match self.prepare(me, request.shipping_address, now).await {
            Ok(prepared) => prepared,
            Err(error) => {
                // A request with the same key may have finished (and emptied the cart) since
                // the lookup above: then its response is the answer, not this error.
                return match buyer_shard.idempotency(me, key).await? {
                    Some(existing) => {
                        self.replay(me, existing, &request.request_hash, render)
                            .await
                    }
                    None => Err(error),
                };
            }
        };
        let claim = IdempotencyClaim {
            key: key.to_owned(),
            request_hash: request.request_hash.clone(),
            expires_at_ms: now.saturating_add(ms(self.inner.config.idempotency_ttl)),
        };
        if let StartOutcome::Duplicate(existing) =
            buyer_shard.start_order(&order, Some(&claim)).await?
        {
            // Another request with this key won the race to start.
            return self
                .replay(me, existing, &request.request_hash, render)
                .await;
        }
        Ok(CheckoutReply::Fresh(Box::new(
            self.run_saga(order, address, key, render).await,
        )))
    }

    /// The pending order for the cart, validated and priced.
    async fn prepare(
        &self,
        me: UserId,
        address: AddressInput,
        now: i64,
    ) -> Result<(OrderRecord, ShippingAddress), ShopError> {
        let address = address.validate()?;
        let items = self.inner.store.for_user(me).cart(me).await?;
        if items.is_empty() {
            return Err(ShopError::field(
                "cart",
                "is empty; add items with POST /cart/items first",
            ));
        }
        let order = self.price_order(me, &items, &address, now).await?;
        Ok((order, address))
    }

    /// The pending order for `items`, priced from the catalog.
    async fn price_order(
        &self,
        me: UserId,
        items: &[CartItem],
        address: &ShippingAddress,
        now: i64,
    ) -> Result<OrderRecord, ShopError> {
        let mut lines = Vec::with_capacity(items.len());
        for item in items {
            let Some((product, variant)) = self.on_sale(item.product_id, item.variant_id).await?
            else {
                continue;
            };
            lines.push(OrderLine {
                variant_id: variant.id,
                product_id: product.product.id,
                seller_id: product.product.seller_id,
                name: product.product.name.clone(),
                sku: variant.sku.clone(),
                unit_price: variant.price,
                quantity: item.quantity,
                shipped_at_ms: None,
            });
        }
        let Some(first) = lines.first() else {
            return Err(ShopError::field(
                "cart",
                "holds nothing that is still sold; add items with POST /cart/items first",
            ));
        };
        let currency = first.unit_price.currency;
        if lines.iter().any(|l| l.unit_price.currency != currency) {
            return Err(ShopError::Conflict(
                "the cart mixes currencies; check out each currency separately".into(),
            ));
        }
        let amount = lines
            .iter()
            .try_fold(0i64, |sum, l| {
                l.unit_price
                    .amount
                    .checked_mul(l.quantity)
                    .and_then(|line| sum.checked_add(line))
            })
            .ok_or_else(|| ShopError::field("cart", "the total is too large"))?;
        let sealed = self
            .inner
            .pii
            .seal(&serde_json::to_string(address).expect("an address serialises"));
        Ok(OrderRecord {
            id: self.inner.ids.order_id(),
            buyer_id: me,
            status: OrderStatus::Pending,
            total: Money { amount, currency },
            address_ct: sealed,
            idempotency_key: None,
            payment_ref: None,
            reason: None,
            settled: false,
            created_at_ms: now,
            updated_at_ms: now,
            lines,
        })
    }

    /// Steps 2–5 of the saga for an order just written `pending`.
    async fn run_saga(
        &self,
        order: OrderRecord,
        address: ShippingAddress,
        key: &str,
        render: Render<'_>,
    ) -> Result<Order, ShopError> {
        let inner = &self.inner;
        let now = now_ms();
        let reservations = reservation_lines(&order);
        let expires = now.saturating_add(ms(inner.config.reservation_ttl));
        let reserved = inner
            .store
            .reserve(order.id, order.buyer_id, &reservations, expires, now)
            .await;
        match reserved {
            Ok(ReserveOutcome::Reserved) => {}
            Ok(ReserveOutcome::OutOfStock {
                variant,
                wanted,
                available,
            }) => {
                let error = ShopError::OutOfStock {
                    variant,
                    wanted,
                    available,
                };
                return self
                    .abandon(&order, reasons::OUT_OF_STOCK, error, key, render)
                    .await;
            }
            Err(error) => {
                // Unknown which shards held stock: leave the order to the sweeper, which
                // cancels it and releases whatever was held.
                return Err(error.into());
            }
        }
        let payment_ref = match self.take_payment(&order).await {
            Ok(reference) => reference,
            Err((reason, error)) => {
                return self.abandon(&order, reason, error, key, render).await;
            }
        };
        let paid = view(
            &order,
            OrderStatus::Paid,
            Some(&payment_ref),
            None,
            &address,
        );
        let response = self.seal(&render(&Ok(paid.clone())));
        let variants: Vec<VariantId> = order.lines.iter().map(|l| l.variant_id).collect();
        let outcome = inner
            .store
            .for_user(order.buyer_id)
            .transition(&Transition {
                order: order.id,
                buyer: order.buyer_id,
                from: &[OrderStatus::Pending],
                to: OrderStatus::Paid,
                now_ms: now_ms(),
                reason: None,
                payment_ref: Some(&payment_ref),
                respond: Some((key, &response)),
                clear_cart: &variants,
            })
            .await?;
        match outcome {
            TransitionOutcome::Done(record) => {
                // Commit the held stock; a failure here leaves the order unsettled for the
                // sweeper, and the buyer has paid either way.
                if let Err(error) = self.settle(&record).await {
                    tracing::warn!(%error, order = %record.id, "settling a paid order failed; the sweeper will retry");
                }
                Ok(paid)
            }
            TransitionOutcome::Refused(status) => {
                // The sweeper expired or cancelled the order while payment was taken: give the
                // money back (settling a cancelled or expired order does not refund).
                if let Err(error) = inner.payments.refund(order.id).await {
                    tracing::error!(%error, order = %order.id, "refunding a payment for an order that expired during checkout failed");
                }
                let outcome = Err(ShopError::Conflict(format!(
                    "the checkout took too long and the order was {status}; the payment was refunded"
                )));
                self.store_response(order.buyer_id, key, &render(&outcome))
                    .await;
                outcome
            }
            TransitionOutcome::NotFound => Err(ShopError::Corrupt(format!(
                "order {} vanished during checkout",
                order.id
            ))),
        }
    }

    /// Authorises and captures the order's total. On failure, the reason to cancel with and
    /// the error to answer; an authorisation that was taken is voided.
    async fn take_payment(&self, order: &OrderRecord) -> Result<String, (&'static str, ShopError)> {
        let payments = &self.inner.payments;
        let declined = |message: String| {
            (
                reasons::PAYMENT_DECLINED,
                ShopError::PaymentDeclined(message),
            )
        };
        let failed = |message: String| {
            (
                reasons::PAYMENT_FAILED,
                ShopError::PaymentUnavailable(message),
            )
        };
        let reference = match payments.authorize(order.id, order.total).await {
            Ok(reference) => reference,
            Err(PaymentError::Declined(message)) => return Err(declined(message)),
            Err(error) => match payments.status(order.id).await {
                Ok(PaymentStatus::Authorized { reference }) => reference,
                Ok(PaymentStatus::Captured { reference }) => return Ok(reference),
                Ok(_) => return Err(failed(error.to_string())),
                Err(status_error) => {
                    // Whether the authorisation took is unknown; void it to be sure.
                    let _ = payments.void(order.id).await;
                    return Err(failed(format!("{error}; then {status_error}")));
                }
            },
        };
        match payments.capture(order.id).await {
            Ok(()) => Ok(reference),
            Err(PaymentError::Declined(message)) => {
                let _ = payments.void(order.id).await;
                Err(declined(message))
            }
            Err(error) => match payments.status(order.id).await {
                Ok(PaymentStatus::Captured { .. }) => Ok(reference),
                _ => {
                    let _ = payments.void(order.id).await;
                    Err(failed(error.to_string()))
                }
            },
        }
    }

    /// Cancels a checkout that could not complete, storing `error` as its response, and
    /// releases whatever stock it held.
    async fn abandon(
        &self,
        order: &OrderRecord,
        reason: &str,
        error: ShopError,
        key: &str,
        render: Render<'_>,
    ) -> Result<Order, ShopError> {
        let failed = Err(error);
        let response = self.seal(&render(&failed));
        let outcome = self
            .inner
            .store
            .for_user(order.buyer_id)
            .transition(&Transition {
                order: order.id,
                buyer: order.buyer_id,
                from: &[OrderStatus::Pending],
                to: OrderStatus::Cancelled,
                now_ms: now_ms(),
                reason: Some(reason),
                payment_ref: None,
                respond: Some((key, &response)),
                clear_cart: &[],
            })
            .await?;
        let record = match outcome {
            TransitionOutcome::Done(record) => record,
            // Expired by the sweeper meanwhile: it settles the order itself.
            TransitionOutcome::Refused(_) | TransitionOutcome::NotFound => return failed,
        };
        if let Err(error) = self.settle(&record).await {
            tracing::warn!(%error, order = %record.id, "releasing a cancelled order's stock failed; the sweeper will retry");
        }
        failed
    }

    /// A response as stored: its body sealed, since an order's body holds the shipping
    /// address (personal data is never at rest in clear).
    fn seal(&self, response: &StoredResponse) -> StoredResponse {
        StoredResponse {
            status: response.status,
            body: self
                .inner
                .pii
                .seal(&String::from_utf8_lossy(&response.body)),
        }
    }

    fn open(&self, stored: StoredResponse) -> Result<StoredResponse, ShopError> {
        let body = self
            .inner
            .pii
            .open(&stored.body)
            .map_err(|e| ShopError::Corrupt(format!("a stored response: {e}")))?;
        Ok(StoredResponse {
            status: stored.status,
            body: body.into_bytes(),
        })
    }

    async fn store_response(&self, buyer: UserId, key: &str, response: &StoredResponse) {
        if let Err(error) = self
            .inner
            .store
            .for_user(buyer)
            .complete_idempotency(buyer, key, &self.seal(response))
            .await
        {
            tracing::warn!(%error, "storing an idempotent response failed");
        }
    }

    /// Answers a request whose key is already claimed: refuse another body, replay a stored
    /// response, or wait for the first request to finish.
    async fn replay(
        &self,
        me: UserId,
        mut record: IdempotencyRecord,
        request_hash: &[u8],
        render: Render<'_>,
    ) -> Result<CheckoutReply, ShopError> {
        if record.request_hash != request_hash {
            return Err(ShopError::IdempotencyKeyReused);
        }
        let shard = self.inner.store.for_user(me);
        let started = tokio::time::Instant::now();
        loop {
            if let Some(response) = record.response {
                return Ok(CheckoutReply::Replay(self.open(response)?));
            }
            // The first request is still running — or died; once its order is settled (by the
            // sweeper, after a crash), answer from the order.
            if let Some(order_id) = record.order_id
                && let Some(order) = shard.order(order_id).await?
                && order.settled
                && now_ms() - record.created_at_ms > ms(self.inner.config.stale_after)
            {
                let outcome = match order.status {
                    OrderStatus::Cancelled | OrderStatus::Expired => Err(ShopError::Conflict(
                        "the checkout was interrupted and cancelled; nothing was charged; check out again with a new Idempotency-Key".into(),
                    )),
                    _ => self.order_view(&order, true),
                };
                let response = render(&outcome);
                self.store_response(me, &record.key, &response).await;
                return Ok(CheckoutReply::Replay(response));
            }
            if started.elapsed() >= self.inner.config.idempotency_wait {
                return Err(ShopError::IdempotencyInProgress);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
            record = shard.idempotency(me, &record.key).await?.ok_or_else(|| {
                ShopError::Conflict("the idempotency record expired; retry".into())
            })?;
        }
    }

    // ---------------------------------------------------------------------------------------
    // Orders

    fn order_view(&self, record: &OrderRecord, full_address: bool) -> Result<Order, ShopError> {
        let text = self
            .inner
            .pii
            .open(&record.address_ct)
            .map_err(|e| ShopError::Corrupt(e.to_string()))?;
        let address: ShippingAddress =
            serde_json::from_str(&text).map_err(|e| ShopError::Corrupt(e.to_string()))?;
        let address = if full_address {
            address
        } else {
            address.masked()
        };
        Ok(view(
            record,
            record.status,
            record.payment_ref.as_deref(),
            record.reason.as_deref(),
            &address,
        ))
    }

    /// Loads an order the actor may see, with the address as they may see it; anyone else
    /// gets 404, so order ids reveal nothing.
    async fn visible(&self, actor: &Actor, id: OrderId) -> Result<(OrderRecord, bool), ShopError> {
        let me = actor.principal.user_id()?;
        let hint = match &actor.principal {
            Principal::User {
                role: Role::Customer,
                ..
            } => Some(me),
            _ => None,
        };
        let missing = || ShopError::NotFound(format!("no order with id {id}"));
        let record = self
            .inner
            .store
            .order(id, hint)
            .await?
            .ok_or_else(missing)?;
        let sells_in_it = record.lines.iter().any(|l| l.seller_id == Some(me));
        authorize(
            &actor.principal,
            Action::ReadOrder {
                buyer: record.buyer_id,
                sells_in_it,
            },
        )
        .map_err(|_| missing())?;
        let full = authorize(
            &actor.principal,
            Action::ReadBuyerDetails {
                buyer: record.buyer_id,
            },
        )
        .is_ok();
        Ok((record, full))
    }

    /// One order.
    pub async fn order(&self, actor: &Actor, id: OrderId) -> Result<Order, ShopError> {
        let (record, full) = self.visible(actor, id).await?;
        self.order_view(&record, full)
    }

    /// A page of orders, newest first, older than `before`.
    pub async fn orders(
        &self,
        actor: &Actor,
        scope: OrderScope,
        before: Option<OrderId>,
        limit: usize,
    ) -> Result<Vec<Order>, ShopError> {
        let me = actor.principal.user_id()?;
        authorize(&actor.principal, Action::ListOrders { scope })?;
        let records = match scope {
            OrderScope::Mine => {
                self.inner
                    .store
                    .for_user(me)
                    .orders_of_buyer(me, before, limit)
                    .await?
            }
            OrderScope::Selling => {
                self.inner
                    .store
                    .orders_everywhere(Some(me), before, limit)
                    .await?
            }
            OrderScope::All => {
                self.inner
                    .store
                    .orders_everywhere(None, before, limit)
                    .await?
            }
        };
        records
            .iter()
            .map(|r| {
                let full = authorize(
                    &actor.principal,
                    Action::ReadBuyerDetails { buyer: r.buyer_id },
                )
                .is_ok();
                self.order_view(r, full)
            })
            .collect()
    }

    async fn change(
        &self,
        record: &OrderRecord,
        from: OrderStatus,
        to: OrderStatus,
        reason: Option<&str>,
    ) -> Result<OrderRecord, ShopError> {
        let outcome = self
            .inner
            .store
            .for_user(record.buyer_id)
            .transition(&Transition {
                order: record.id,
                buyer: record.buyer_id,
                from: &[from],
                to,
                now_ms: now_ms(),
                reason,
                payment_ref: None,
                respond: None,
                clear_cart: &[],
            })
            .await?;
        match outcome {
            TransitionOutcome::Done(record) => Ok(record),
            TransitionOutcome::Refused(status) => {
                Err(ShopError::InvalidTransition { from: status, to })
            }
            TransitionOutcome::NotFound => Err(ShopError::NotFound(format!(
                "no order with id {}",
                record.id
            ))),
        }
    }

    fn refuse_unless(
        &self,
        record: &OrderRecord,
        from: OrderStatus,
        to: OrderStatus,
    ) -> Result<(), ShopError> {
        if record.status == from {
            Ok(())
        } else {
            Err(ShopError::InvalidTransition {
                from: record.status,
                to,
            })
        }
    }

    /// Cancels a pending order (the buyer or an admin); its stock goes back.
    pub async fn cancel(&self, actor: &Actor, id: OrderId) -> Result<Order, ShopError> {
        let (record, full) = self.visible(actor, id).await?;
        authorize(
            &actor.principal,
            Action::CancelOrder {
                buyer: record.buyer_id,
            },
        )?;
        self.refuse_unless(&record, OrderStatus::Pending, OrderStatus::Cancelled)?;
        let changed = self
            .change(
                &record,
                OrderStatus::Pending,
                OrderStatus::Cancelled,
                Some(reasons::BY_BUYER),
            )
            .await?;
        self.settle(&changed).await?;
        self.order_view(&changed, full)
    }

    /// Refunds a paid order (the buyer or an admin): the payment goes back, and its stock
    /// returns exactly once.
    pub async fn refund(&self, actor: &Actor, id: OrderId) -> Result<Order, ShopError> {
        let (record, full) = self.visible(actor, id).await?;
        authorize(
            &actor.principal,
            Action::RefundOrder {
                buyer: record.buyer_id,
            },
        )?;
        self.refuse_unless(&record, OrderStatus::Paid, OrderStatus::Refunded)?;
        let changed = self
            .change(&record, OrderStatus::Paid, OrderStatus::Refunded, None)
            .await?;
        self.settle(&changed).await?;
        self.order_view(&changed, full)
    }

    /// Marks the caller's lines of a paid order shipped (a seller; an admin ships every
    /// line). The order becomes `shipped` once every line is.
    pub async fn ship(&self, actor: &Actor, id: OrderId) -> Result<Order, ShopError> {
        let (record, full) = self.visible(actor, id).await?;
        let me = actor.principal.user_id()?;
        let sells_in_it = record.lines.iter().any(|l| l.seller_id == Some(me));
        authorize(&actor.principal, Action::ShipOrder { sells_in_it })?;
        let lines_of = if sells_in_it { Some(me) } else { None };
        let outcome = self
            .inner
            .store
            .for_user(record.buyer_id)
            .ship_lines(id, lines_of, now_ms())
            .await?;
        match outcome {
            TransitionOutcome::Done(record) => self.order_view(&record, full),
            TransitionOutcome::Refused(OrderStatus::Paid) => Err(ShopError::Conflict(
                "your lines of this order are already shipped".into(),
            )),
            TransitionOutcome::Refused(status) => Err(ShopError::InvalidTransition {
                from: status,
                to: OrderStatus::Shipped,
            }),
            TransitionOutcome::NotFound => {
                Err(ShopError::NotFound(format!("no order with id {id}")))
            }
        }
    }

    /// Records delivery of a shipped order (admins).
    pub async fn deliver(&self, actor: &Actor, id: OrderId) -> Result<Order, ShopError> {
        let (record, full) = self.visible(actor, id).await?;
        authorize(&actor.principal, Action::DeliverOrder)?;
        self.refuse_unless(&record, OrderStatus::Shipped, OrderStatus::Delivered)?;
        let changed = self
            .change(&record, OrderStatus::Shipped, OrderStatus::Delivered, None)
            .await?;
        self.order_view(&changed, full)
    }

    // ---------------------------------------------------------------------------------------
    // Settling and sweeping

    /// Makes `record`'s reservations match its status (and, for a refund, makes sure the
    /// money went back), then marks it settled.
    pub async fn settle(&self, record: &OrderRecord) -> Result<(), ShopError> {
        let inner = &self.inner;
        let settlement = record.status.reservations();
        inner
            .store
            .settle_reservations(record, settlement, now_ms())
            .await?;
        if record.status == OrderStatus::Refunded {
            match inner.payments.refund(record.id).await {
                Ok(()) | Err(PaymentError::Declined(_)) => {}
                Err(error) => {
                    return Err(ShopError::PaymentUnavailable(format!(
                        "refunding order {}: {error}",
                        record.id
                    )));
                }
            }
        }
        if settlement != bazaar_store::Settlement::Hold {
            inner
                .store
                .for_user(record.buyer_id)
                .mark_settled(record.id, record.status, now_ms())
                .await?;
        }
        Ok(())
    }

    /// Finishes a checkout that died while its order was pending: completes it if the
    /// provider took the money and every line is (or can still be) reserved, otherwise
    /// cancels it, refunding or voiding whatever the provider holds.
    async fn recover_pending(&self, record: &OrderRecord) -> Result<(), ShopError> {
        let inner = &self.inner;
        let status = inner
            .payments
            .status(record.id)
            .await
            .map_err(|e| ShopError::PaymentUnavailable(e.to_string()))?;
        let shard = inner.store.for_user(record.buyer_id);
        if let PaymentStatus::Captured { reference } = &status {
            let lines = reservation_lines(record);
            let now = now_ms();
            let expires = now.saturating_add(ms(inner.config.reservation_ttl));
            let reserved = inner
                .store
                .reserve(record.id, record.buyer_id, &lines, expires, now)
                .await?;
            if reserved == ReserveOutcome::Reserved {
                let variants: Vec<VariantId> = record.lines.iter().map(|l| l.variant_id).collect();
                if let TransitionOutcome::Done(paid) = shard
                    .transition(&Transition {
                        order: record.id,
                        buyer: record.buyer_id,
                        from: &[OrderStatus::Pending],
                        to: OrderStatus::Paid,
                        now_ms: now_ms(),
                        reason: None,
                        payment_ref: Some(reference),
                        respond: None,
                        clear_cart: &variants,
                    })
                    .await?
                {
                    return self.settle(&paid).await;
                }
                return Ok(());
            }
            inner
                .payments
                .refund(record.id)
                .await
                .map_err(|e| ShopError::PaymentUnavailable(e.to_string()))?;
        } else if let PaymentStatus::Authorized { .. } = status {
            inner
                .payments
                .void(record.id)
                .await
                .map_err(|e| ShopError::PaymentUnavailable(e.to_string()))?;
        }
        if let TransitionOutcome::Done(cancelled) = shard
            .transition(&Transition {
                order: record.id,
                buyer: record.buyer_id,
                from: &[OrderStatus::Pending],
                to: OrderStatus::Cancelled,
                now_ms: now_ms(),
                reason: Some(reasons::INTERRUPTED),
                payment_ref: None,
                respond: None,
                clear_cart: &[],
            })
            .await?
        {
            self.settle(&cancelled).await?;
        }
        Ok(())
    }

    /// One pass of the sweeper: expires unpaid reservations, finishes checkouts that died,
    /// settles what is unsettled, and forgets expired idempotency keys. Returns how many
    /// orders it acted on. Errors are logged per order and retried on the next pass.
    pub async fn sweep(&self) -> Result<usize, ShopError> {
        let inner = &self.inner;
        let now = now_ms();
        let shards: Vec<_> = inner.store.shards().collect();
        let mut expired = Vec::new();
        for shard in &shards {
            expired.extend(shard.expired_reservations(now, SWEEP_BATCH).await?);
        }
        let stale_before = now.saturating_sub(ms(inner.config.stale_after));
        let mut unsettled = Vec::new();
        for shard in &shards {
            unsettled.extend(shard.unsettled_orders(stale_before, SWEEP_BATCH).await?);
            shard.purge_idempotency(now).await?;
        }
        let acted = expired.len() + unsettled.len();
        // Orders are independent: finish several at once, so a slow payment provider does
        // not make recovery after a crash take (orders × its latency).
        futures::stream::iter(expired)
            .for_each_concurrent(SWEEP_CONCURRENCY, |(order, buyer)| async move {
                if let Err(error) = self.expire(order, buyer).await {
                    tracing::warn!(%error, %order, "expiring a reservation failed; retrying next pass");
                }
            })
            .await;
        futures::stream::iter(unsettled)
            .for_each_concurrent(SWEEP_CONCURRENCY, |record| async move {
                let result = if record.status == OrderStatus::Pending {
                    self.recover_pending(&record).await
                } else {
                    self.settle(&record).await
                };
                if let Err(error) = result {
                    tracing::warn!(%error, order = %record.id, "finishing an unsettled order failed; retrying next pass");
                }
            })
            .await;
        Ok(acted)
    }

    /// Stock of `order` is held past its expiry: a pending order expires (and its stock
    /// returns); any other is settled as its status says.
    async fn expire(&self, order: OrderId, buyer: UserId) -> Result<(), ShopError> {
        let inner = &self.inner;
        let Some(record) = inner.store.order(order, Some(buyer)).await? else {
            return Ok(());
        };
        if record.status != OrderStatus::Pending {
            return self.settle(&record).await;
        }
        let outcome = inner
            .store
            .for_user(buyer)
            .transition(&Transition {
                order,
                buyer,
                from: &[OrderStatus::Pending],
                to: OrderStatus::Expired,
                now_ms: now_ms(),
                reason: Some(reasons::RESERVATION_EXPIRED),
                payment_ref: None,
                respond: None,
                clear_cart: &[],
            })
            .await?;
        match outcome {
            TransitionOutcome::Done(expired) => self.settle(&expired).await,
            _ => Ok(()),
        }
    }
}

/// Orders one sweeper pass takes from each shard, per kind of work.
const SWEEP_BATCH: usize = 500;

/// Orders the sweeper finishes at once.
const SWEEP_CONCURRENCY: usize = 16;

/// What to reserve for `order`: each line's units of its variant.
fn reservation_lines(order: &OrderRecord) -> Vec<ReservationLine> {
    order
        .lines
        .iter()
        .map(|l| ReservationLine {
            variant_id: l.variant_id,
            product_id: l.product_id,
            quantity: l.quantity,
        })
        .collect()
}

/// The shopper acting: any signed-in user.
fn shopper(actor: &Actor) -> Result<UserId, ShopError> {
    authorize(&actor.principal, Action::Shop)?;
    Ok(actor.principal.user_id()?)
}

fn not_in_cart(variant: VariantId) -> ShopError {
    ShopError::NotFound(format!("the cart has no line for variant {variant}"))
}

fn view(
    record: &OrderRecord,
    status: OrderStatus,
    payment_ref: Option<&str>,
    reason: Option<&str>,
    address: &ShippingAddress,
) -> Order {
    Order {
        id: record.id,
        buyer_id: record.buyer_id,
        status,
        total: record.total,
        lines: record.lines.clone(),
        reason: reason.map(str::to_owned),
        payment_ref: payment_ref.map(str::to_owned),
        shipping_address: address.clone(),
        created_at_ms: record.created_at_ms,
        updated_at_ms: record.updated_at_ms,
    }
}
