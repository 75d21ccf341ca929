//! Events as the outbox keeps them, and the payload of every event type.
//!
//! Every change to a product, a variant, stock, an order or a user writes its event to the
//! outbox of the shard it changed, in the transaction that makes the change: an event exists
//! if and only if its change committed. The relay publishes unpublished rows in id order under
//! a lease (so one process publishes a shard's rows at a time), and consumers record each
//! `event_id` they apply so a redelivery is applied once. `docs/events.md` documents
//! every payload; the builders here are the one place each is made, so every backend writes
//! the same JSON.
//!
//! # Ordering key
//!
//! An event's `key` is its aggregate: the product id for `product.*`, `variant.*` and every
//! `stock.*` event, the order id for `order.*`, the user id for `user.*`. Events of one key are
//! delivered in outbox id order, so a consumer sees one product's changes in the order they
//! committed.

use std::cell::RefCell;
use std::future::Future;

use serde::{Serialize, Serializer};

use crate::id::{OrderId, ProductId, UserId, VariantId};
use crate::identity::Role;
use crate::model::{Money, Product, ProductWithVariants, Variant};
use crate::orders::OrderRecord;

tokio::task_local! {
    /// The events written by store calls of the current task, while it is being captured.
    static WRITTEN: RefCell<Vec<WrittenEvent>>;
}

/// An event a store call wrote: which shard, which id. Written, not necessarily committed: a
/// transaction that rolled back leaves an id no outbox holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenEvent {
    pub shard: String,
    pub event_id: String,
}

/// Runs `future` and returns, with its output, the events that store calls made inside it
/// (in this task) wrote — what a request with synchronous side effects must apply. Calls
/// outside any capture record nothing.
pub async fn capturing_events<F: Future>(future: F) -> (F::Output, Vec<WrittenEvent>) {
    WRITTEN
        .scope(RefCell::new(Vec::new()), async {
            let output = future.await;
            (output, WRITTEN.with(|written| written.take()))
        })
        .await
}

/// Notes an event written by `shard`, if the current task is capturing.
pub(crate) fn note_written(shard: &str, event_id: &str) {
    let _ = WRITTEN.try_with(|written| {
        written.borrow_mut().push(WrittenEvent {
            shard: shard.to_owned(),
            event_id: event_id.to_owned(),
        });
    });
}

/// Every topic the store writes, besides the `order.*` ones of
/// [`OrderStatus::topic`](crate::OrderStatus::topic).
pub mod topic {
    pub const PRODUCT_CREATED: &str = "product.created";
    pub const PRODUCT_UPDATED: &str = "product.updated";
    pub const PRODUCT_DELETED: &str = "product.deleted";
    pub const VARIANT_CREATED: &str = "variant.created";
    pub const VARIANT_UPDATED: &str = "variant.updated";
    pub const VARIANT_DELETED: &str = "variant.deleted";
    /// A variant's on-hand stock was set by an edit (a restock or correction).
    pub const STOCK_CHANGED: &str = "stock.changed";
    /// Units were taken from on-hand stock and held for an order.
    pub const STOCK_RESERVED: &str = "stock.reserved";
    /// Held or committed units went back to on-hand stock.
    pub const STOCK_RELEASED: &str = "stock.released";
    pub const USER_CREATED: &str = "user.created";
    pub const USER_ROLE_CHANGED: &str = "user.role_changed";
}

/// An event written in the same transaction as the change it reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEvent {
    /// The row's position in its shard's outbox; increasing in commit order per key.
    pub id: i64,
    /// Globally unique (a UUIDv7 string): the deduplication id of the published message.
    pub event_id: String,
    pub topic: String,
    /// The ordering key: the aggregate the event is about (see the module documentation).
    pub key: String,
    /// A JSON object.
    pub payload: String,
    pub created_at_ms: i64,
}

/// What a shard's outbox still has to publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OutboxBacklog {
    pub unpublished: u64,
    /// When the oldest unpublished event was written; `None` when there is none.
    pub oldest_created_at_ms: Option<i64>,
}

/// An event about to be written: what the backend stores with a new `event_id` and time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NewEvent {
    pub(crate) topic: &'static str,
    pub(crate) key: String,
    /// The payload, already JSON.
    pub(crate) payload: String,
}

impl NewEvent {
    /// Payloads are serialised straight from borrowed structs, not built as `serde_json::Value`
    /// trees: seeding writes thousands of `product.created` events per transaction, and the
    /// tree's allocations tripled the cost of a bulk insert.
    fn new(topic: &'static str, key: u64, payload: &impl Serialize) -> Self {
        Self {
            topic,
            key: key.to_string(),
            payload: serde_json::to_string(payload)
                .expect("payloads are structs of strings, numbers and sequences"),
        }
    }
}

/// A fresh event id: UUIDv7, so ids sort roughly by creation time.
pub(crate) fn new_event_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// An id as events carry it: a decimal string (JavaScript cannot hold a 63-bit integer).
#[derive(Debug, Clone, Copy)]
struct Id(u64);

impl Serialize for Id {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&self.0)
    }
}

/// Money as events carry it: `{amount, currency}`, minor units.
#[derive(Debug, Serialize)]
struct MoneyJson<'a> {
    amount: i64,
    currency: &'a str,
}

impl<'a> From<&'a Money> for MoneyJson<'a> {
    fn from(money: &'a Money) -> Self {
        Self {
            amount: money.amount,
            currency: money.currency.as_str(),
        }
    }
}

#[derive(Debug, Serialize)]
struct VariantFields<'a> {
    variant_id: Id,
    sku: &'a str,
    color: &'a str,
    size: &'a str,
    price: MoneyJson<'a>,
    on_hand: i64,
}

impl<'a> From<&'a Variant> for VariantFields<'a> {
    fn from(variant: &'a Variant) -> Self {
        Self {
            variant_id: Id(variant.id.get()),
            sku: &variant.sku,
            color: &variant.color,
            size: &variant.size,
            price: (&variant.price).into(),
            on_hand: variant.stock_level,
        }
    }
}

#[derive(Debug, Serialize)]
struct ProductFields<'a> {
    product_id: Id,
    seller_id: Option<Id>,
    name: &'a str,
    description: &'a str,
    brand: &'a str,
    category: &'a str,
    price: MoneyJson<'a>,
    version: i64,
    created_at_ms: i64,
    updated_at_ms: i64,
}

impl<'a> From<&'a Product> for ProductFields<'a> {
    fn from(product: &'a Product) -> Self {
        Self {
            product_id: Id(product.id.get()),
            seller_id: product.seller_id.map(|s| Id(s.get())),
            name: &product.name,
            description: &product.description,
            brand: &product.brand,
            category: &product.category,
            price: (&product.price).into(),
            version: product.version,
            created_at_ms: product.created_at_ms,
            updated_at_ms: product.updated_at_ms,
        }
    }
}

/// `product.created`: the product as written, with its variants and their stock.
pub(crate) fn product_created(written: &ProductWithVariants) -> NewEvent {
    #[derive(Serialize)]
    struct Payload<'a> {
        #[serde(flatten)]
        product: ProductFields<'a>,
        variants: Vec<VariantFields<'a>>,
    }
    NewEvent::new(
        topic::PRODUCT_CREATED,
        written.product.id.get(),
        &Payload {
            product: (&written.product).into(),
            variants: written.variants.iter().map(VariantFields::from).collect(),
        },
    )
}

/// `product.updated`: the product's own fields after the edit, with its new version.
pub(crate) fn product_updated(after: &Product) -> NewEvent {
    NewEvent::new(
        topic::PRODUCT_UPDATED,
        after.id.get(),
        &ProductFields::from(after),
    )
}

/// `product.deleted`: the product, its variants and their stock are gone.
pub(crate) fn product_deleted(
    id: ProductId,
    seller: Option<UserId>,
    version: i64,
    variants: &[VariantId],
) -> NewEvent {
    #[derive(Serialize)]
    struct Payload {
        product_id: Id,
        seller_id: Option<Id>,
        version: i64,
        variant_ids: Vec<Id>,
    }
    NewEvent::new(
        topic::PRODUCT_DELETED,
        id.get(),
        &Payload {
            product_id: Id(id.get()),
            seller_id: seller.map(|s| Id(s.get())),
            version,
            variant_ids: variants.iter().map(|v| Id(v.get())).collect(),
        },
    )
}

/// The product's state after one of its variants changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Touched {
    /// The product's version after the change.
    pub(crate) version: i64,
    /// The product's "from" price after the change.
    pub(crate) price: Money,
}

/// What every `variant.*` payload starts with: whose variant, and the product after it.
#[derive(Debug, Serialize)]
struct TouchedFields<'a> {
    product_id: Id,
    product_version: i64,
    product_price: MoneyJson<'a>,
}

impl<'a> TouchedFields<'a> {
    fn new(product: ProductId, touched: &'a Touched) -> Self {
        Self {
            product_id: Id(product.get()),
            product_version: touched.version,
            product_price: (&touched.price).into(),
        }
    }
}

/// `variant.created` / `variant.updated`: the variant after the change, with its stock.
pub(crate) fn variant_written(created: bool, after: &Variant, touched: Touched) -> NewEvent {
    #[derive(Serialize)]
    struct Payload<'a> {
        #[serde(flatten)]
        product: TouchedFields<'a>,
        #[serde(flatten)]
        variant: VariantFields<'a>,
    }
    let topic = if created {
        topic::VARIANT_CREATED
    } else {
        topic::VARIANT_UPDATED
    };
    NewEvent::new(
        topic,
        after.product_id.get(),
        &Payload {
            product: TouchedFields::new(after.product_id, &touched),
            variant: after.into(),
        },
    )
}

/// `variant.deleted`: the variant and its stock are gone.
pub(crate) fn variant_deleted(
    product: ProductId,
    variant: VariantId,
    touched: Touched,
) -> NewEvent {
    #[derive(Serialize)]
    struct Payload<'a> {
        #[serde(flatten)]
        product: TouchedFields<'a>,
        variant_id: Id,
    }
    NewEvent::new(
        topic::VARIANT_DELETED,
        product.get(),
        &Payload {
            product: TouchedFields::new(product, &touched),
            variant_id: Id(variant.get()),
        },
    )
}

/// `stock.changed`: an edit set a variant's on-hand stock from `before` to `after`.
pub(crate) fn stock_changed(
    product: ProductId,
    variant: VariantId,
    before: i64,
    after: i64,
) -> NewEvent {
    #[derive(Serialize)]
    struct Payload {
        product_id: Id,
        variant_id: Id,
        on_hand_before: i64,
        on_hand: i64,
    }
    NewEvent::new(
        topic::STOCK_CHANGED,
        product.get(),
        &Payload {
            product_id: Id(product.get()),
            variant_id: Id(variant.get()),
            on_hand_before: before,
            on_hand: after,
        },
    )
}

#[derive(Debug, Serialize)]
struct StockMove<'a> {
    order_id: Id,
    variant_id: Id,
    product_id: Id,
    quantity: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    from: Option<&'a str>,
}

/// `stock.reserved`: `quantity` units of `variant` are held for `order`.
pub(crate) fn stock_reserved(
    order: OrderId,
    product: ProductId,
    variant: VariantId,
    quantity: i64,
) -> NewEvent {
    NewEvent::new(
        topic::STOCK_RESERVED,
        product.get(),
        &StockMove {
            order_id: Id(order.get()),
            variant_id: Id(variant.get()),
            product_id: Id(product.get()),
            quantity,
            from: None,
        },
    )
}

/// `stock.released`: `quantity` units of `variant` held or committed (`from`) for `order` are
/// back on hand.
pub(crate) fn stock_released(
    order: OrderId,
    product: ProductId,
    variant: VariantId,
    quantity: i64,
    from: &str,
) -> NewEvent {
    NewEvent::new(
        topic::STOCK_RELEASED,
        product.get(),
        &StockMove {
            order_id: Id(order.get()),
            variant_id: Id(variant.get()),
            product_id: Id(product.get()),
            quantity,
            from: Some(from),
        },
    )
}

/// The `order.*` event of `order`, now `order.status`.
pub(crate) fn order_changed(order: &OrderRecord) -> NewEvent {
    #[derive(Serialize)]
    struct Payload<'a> {
        order_id: Id,
        buyer_id: Id,
        status: &'a str,
        total: MoneyJson<'a>,
        reason: Option<&'a str>,
    }
    NewEvent::new(
        crate::orders::status_topic(order.status),
        order.id.get(),
        &Payload {
            order_id: Id(order.id.get()),
            buyer_id: Id(order.buyer_id.get()),
            status: crate::orders::status_name(order.status),
            total: (&order.total).into(),
            reason: order.reason.as_deref(),
        },
    )
}

/// `user.created`: the id and role only. Events leave the store's protection (queues, logs,
/// other services), so no user event carries personal data, sealed or not.
pub(crate) fn user_created(user: UserId, role: Role) -> NewEvent {
    #[derive(Serialize)]
    struct Payload {
        user_id: Id,
        role: &'static str,
    }
    NewEvent::new(
        topic::USER_CREATED,
        user.get(),
        &Payload {
            user_id: Id(user.get()),
            role: role.as_str(),
        },
    )
}

/// `user.role_changed`: the stored role was `from` and is now `to`.
pub(crate) fn user_role_changed(user: UserId, from: Role, to: Role) -> NewEvent {
    #[derive(Serialize)]
    struct Payload {
        user_id: Id,
        from: &'static str,
        to: &'static str,
    }
    NewEvent::new(
        topic::USER_ROLE_CHANGED,
        user.get(),
        &Payload {
            user_id: Id(user.get()),
            from: from.as_str(),
            to: to.as_str(),
        },
    )
}
