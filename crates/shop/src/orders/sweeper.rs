//! Settling an order's reservations to match its status, and the sweeper that expires unpaid
//! reservations and finishes checkouts a crash interrupted.

use bazaar_store::prelude::*;
use bazaar_store::{
    OrderId, OrderRecord, OrderStatus, ReserveOutcome, Settlement, Transition, TransitionOutcome,
    UserId, VariantId,
};
use futures::StreamExt;

use super::{Orders, ms, reasons, reservation_lines};
use crate::error::ShopError;
use crate::now_ms;
use crate::payments::{PaymentError, PaymentStatus};

impl Orders {
    /// Makes `record`'s reservations match its status (and, for a refund, makes sure the
    /// money went back), then marks it settled.
    pub async fn settle(&self, record: &OrderRecord) -> Result<(), ShopError> {
        let inner = &self.inner;
        let settlement = bazaar_store::orders::settlement_of(record.status);
        let settled = inner
            .store
            .settle_reservations(record, settlement, now_ms())
            .await;
        if settlement == Settlement::Release {
            // Released units are back on hand (committing moves none).
            self.stock_moved(record).await;
        }
        settled?;
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
        if settlement != Settlement::Hold {
            inner
                .store
                .for_user(record.buyer_id)
                .mark_settled(record.id, record.status, now_ms())
                .await?;
        }
        Ok(())
    }

    /// Tells the product cache that the stock of `order`'s products changed.
    pub(super) async fn stock_moved(&self, order: &OrderRecord) {
        self.inner
            .catalog
            .stock_changed(order.lines.iter().map(|l| l.product_id))
            .await;
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
                .await;
            self.stock_moved(record).await;
            let reserved = reserved?;
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
    ///
    /// While a shard move runs the pass is skipped (rows it would list may be mid-copy, or
    /// copies on a shard that does not serve them); the orders wait for the next pass after it.
    pub async fn sweep(&self) -> Result<usize, ShopError> {
        let inner = &self.inner;
        let Some(_maintenance) = inner.store.maintenance() else {
            return Ok(0);
        };
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
