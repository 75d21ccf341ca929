//! Orders after checkout: each principal's view of them, and the life-cycle changes —
//! cancel, refund, ship, deliver.

use bazaar_store::prelude::*;
use bazaar_store::{
    OrderId, OrderRecord, OrderStatus, Role, Transition, TransitionOutcome, UserId,
};

use super::{Order, OrderScope, Orders, reasons, view};
use crate::Actor;
use crate::address::ShippingAddress;
use crate::authz::{Action, Principal, authorize};
use crate::error::ShopError;
use crate::now_ms;

/// How much of an order a principal may see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Audience {
    /// The buyer or an admin: all of it.
    Whole,
    /// A seller with a line in it: only their part (see [`Order`]).
    Seller(UserId),
}

impl Audience {
    /// What `principal` may see of an order bought by `buyer` (who may see it at all is
    /// decided before, by `Action::ReadOrder`).
    fn of(principal: &Principal, buyer: UserId) -> Result<Self, ShopError> {
        if authorize(principal, Action::ReadBuyerDetails { buyer }).is_ok() {
            Ok(Self::Whole)
        } else {
            Ok(Self::Seller(principal.user_id()?))
        }
    }
}

impl Orders {
    pub(super) fn order_view(
        &self,
        record: &OrderRecord,
        audience: Audience,
    ) -> Result<Order, ShopError> {
        let text = self
            .inner
            .pii
            .open(&record.address_ct)
            .map_err(|e| ShopError::Corrupt(e.to_string()))?;
        let address: ShippingAddress =
            serde_json::from_str(&text).map_err(|e| ShopError::Corrupt(e.to_string()))?;
        let whole = |address: &ShippingAddress| {
            view(
                record,
                record.status,
                record.payment_ref.as_deref(),
                record.reason.as_deref(),
                address,
            )
        };
        Ok(match audience {
            Audience::Whole => whole(&address),
            Audience::Seller(seller) => seller_part(whole(&address.masked()), seller),
        })
    }

    /// Loads an order the actor may see, and how much of it; anyone else gets 404, so order
    /// ids reveal nothing.
    async fn visible(
        &self,
        actor: &Actor,
        id: OrderId,
    ) -> Result<(OrderRecord, Audience), ShopError> {
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
        let audience = Audience::of(&actor.principal, record.buyer_id)?;
        Ok((record, audience))
    }

    /// One order, as the actor may see it.
    pub async fn order(&self, actor: &Actor, id: OrderId) -> Result<Order, ShopError> {
        let (record, audience) = self.visible(actor, id).await?;
        self.order_view(&record, audience)
    }

    /// A page of orders, newest first, older than `before`, each as the actor may see it.
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
            .map(|r| self.order_view(r, Audience::of(&actor.principal, r.buyer_id)?))
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
        let (record, audience) = self.visible(actor, id).await?;
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
        self.order_view(&changed, audience)
    }

    /// Refunds a paid order (the buyer or an admin): the payment goes back, and its stock
    /// returns exactly once.
    pub async fn refund(&self, actor: &Actor, id: OrderId) -> Result<Order, ShopError> {
        let (record, audience) = self.visible(actor, id).await?;
        authorize(
            &actor.principal,
            Action::RefundOrder {
                buyer: record.buyer_id,
            },
        )?;
        self.refuse_unless(&record, OrderStatus::Paid, OrderStatus::Refunded)?;
        if record.lines.iter().any(|l| l.shipped_at_ms.is_some()) {
            // Partly shipped: what a seller sent is not coming back (the store checks it too).
            return Err(ShopError::InvalidTransition {
                from: OrderStatus::Shipped,
                to: OrderStatus::Refunded,
            });
        }
        let changed = self
            .change(&record, OrderStatus::Paid, OrderStatus::Refunded, None)
            .await?;
        self.settle(&changed).await?;
        self.order_view(&changed, audience)
    }

    /// Marks the caller's lines of a paid order shipped (a seller; an admin ships every
    /// line). The order becomes `shipped` once every line is.
    pub async fn ship(&self, actor: &Actor, id: OrderId) -> Result<Order, ShopError> {
        let (record, audience) = self.visible(actor, id).await?;
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
            TransitionOutcome::Done(record) => self.order_view(&record, audience),
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
        let (record, audience) = self.visible(actor, id).await?;
        authorize(&actor.principal, Action::DeliverOrder)?;
        self.refuse_unless(&record, OrderStatus::Shipped, OrderStatus::Delivered)?;
        let changed = self
            .change(&record, OrderStatus::Shipped, OrderStatus::Delivered, None)
            .await?;
        self.order_view(&changed, audience)
    }
}

/// A seller's part of a whole order: their lines, their subtotal, no buyer or payment.
fn seller_part(mut order: Order, seller: UserId) -> Order {
    order.lines.retain(|line| line.seller_id == Some(seller));
    order.total.amount = order
        .lines
        .iter()
        .map(|line| line.unit_price.amount.saturating_mul(line.quantity))
        .fold(0, i64::saturating_add);
    order.buyer_id = None;
    order.payment_ref = None;
    order
}
