//! The checkout saga (see the module documentation of `orders`): the order started with its
//! idempotency and cart claims, stock reserved, payment taken, the order paid and settled.

use std::time::Duration;

use bazaar_store::prelude::*;
use bazaar_store::{
    CartItem, IdempotencyClaim, IdempotencyRecord, Money, OrderLine, OrderRecord, OrderStatus,
    ReserveOutcome, StartOutcome, StoredResponse, Transition, TransitionOutcome, UserId, VariantId,
};

use super::lifecycle::Audience;
use super::{
    CheckoutReply, CheckoutRequest, Order, Orders, Render, ms, reasons, reservation_lines, shopper,
    view,
};
use crate::address::{AddressInput, ShippingAddress};
use crate::error::ShopError;
use crate::payments::{PaymentError, PaymentStatus};
use crate::{Actor, now_ms};

impl Orders {
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
        let prepared = self
            .prepare(me, request.shipping_address, request.expected_total, now)
            .await;
        let (order, address, cart_version) = match prepared {
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
        match buyer_shard
            .start_order(&order, Some(&claim), Some(cart_version))
            .await?
        {
            StartOutcome::Started => {}
            // Another request with this key won the race to start.
            StartOutcome::Duplicate(existing) => {
                return self
                    .replay(me, existing, &request.request_hash, render)
                    .await;
            }
            // Another checkout of this cart, with another key, holds it: one cart is one order.
            StartOutcome::CartBusy(holder) => {
                return Err(ShopError::CheckoutInProgress { order: holder });
            }
            // Most often another checkout of this cart was paid and emptied it meanwhile.
            StartOutcome::CartChanged => {
                let cart = buyer_shard.cart(me).await?;
                return Err(if cart.items.is_empty() {
                    empty_cart()
                } else {
                    ShopError::CartChanged
                });
            }
        }
        Ok(CheckoutReply::Fresh(Box::new(
            self.run_saga(order, address, key, render).await,
        )))
    }

    /// The pending order for the cart, validated and priced, with the cart version it was
    /// priced from.
    async fn prepare(
        &self,
        me: UserId,
        address: AddressInput,
        expected_total: Option<Money>,
        now: i64,
    ) -> Result<(OrderRecord, ShippingAddress, i64), ShopError> {
        let address = address.validate()?;
        let cart = self.inner.store.for_user(me).cart(me).await?;
        if cart.items.is_empty() {
            return Err(empty_cart());
        }
        if let Some(order) = cart.checkout {
            // Refused here already, before pricing; the claim in `start_order` is what
            // guarantees it.
            return Err(ShopError::CheckoutInProgress { order });
        }
        let order = self.price_order(me, &cart.items, &address, now).await?;
        if let Some(expected) = expected_total
            && expected != order.total
        {
            return Err(ShopError::PriceChanged {
                expected,
                total: order.total,
            });
        }
        Ok((order, address, cart.version))
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
        // Whatever happened, stock may have moved (an error may follow a commit).
        self.stock_moved(&order).await;
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
                    _ => self.order_view(&order, Audience::Whole),
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
}

fn empty_cart() -> ShopError {
    ShopError::field("cart", "is empty; add items with POST /cart/items first")
}
