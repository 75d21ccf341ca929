//! Carts, orders, reservations and idempotency records on PostgreSQL; their events go through
//! the outbox helpers of `events.rs`.
//!
//! Every transaction runs at READ COMMITTED, where each statement sees what was committed
//! before it started and a write waits for a row's lock, then re-checks its `WHERE` against the
//! row's newest version. So every check-then-act below is either a conditional write or a read
//! made while holding the row lock that every competing writer also takes first:
//!
//! * a cart's row lock, taken by the version bump ([`PostgresShard::bump_cart`]) at the start
//!   of every transaction that changes the cart's lines, guards the cart limits;
//! * an order's row lock (`SELECT … FOR UPDATE`) guards its transitions and shipments;
//! * stock rows are locked in variant order before any is decremented (no deadlocks between
//!   concurrent reservations), and each decrement is conditional on enough being on hand;
//! * a reservation moves with an update conditional on the state it was read in.
//!
//! The business decisions themselves are [`crate::orders`]'s, shared with SQLite.

use std::collections::HashMap;

use async_trait::async_trait;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row};

use super::{PostgresShard, id_array, sql_id};
use crate::error::StoreError;
use crate::events;
use crate::id::{OrderId, ProductId, UserId, VariantId};
use crate::model::Money;
use crate::orders::{
    CartChange, CartEdit, CartItem, IdempotencyClaim, IdempotencyRecord, OrderLine, OrderRecord,
    OrderStatus, ReservationLine, ReservationState, ReserveOutcome, Settlement, StartOutcome,
    StockAccount, StoredCart, StoredResponse, Transition, TransitionOutcome, parse_status,
    status_name,
};
use crate::shard::OrderShard;

// Column lists as macros, so `concat!` builds the `&'static str` statements sqlx prepares.
macro_rules! order_columns {
    () => {
        "id, buyer_id, status, total_amount, currency, address_ct, idempotency_key, \
         payment_ref, reason, settled, created_at, updated_at"
    };
}

macro_rules! line_columns {
    () => {
        "order_id, variant_id, product_id, seller_id, name, sku, unit_amount, currency, \
         quantity, shipped_at"
    };
}

/// A page of orders newest first: `{filter} AND id < {before} ORDER BY id DESC LIMIT {limit}`,
/// the last two naming their placeholders.
macro_rules! order_page {
    ($filter:literal, $before:literal, $limit:literal) => {
        concat!(
            "SELECT ",
            order_columns!(),
            " FROM orders WHERE ",
            $filter,
            " AND id < ",
            $before,
            " ORDER BY id DESC LIMIT ",
            $limit
        )
    };
}

/// The statements reading one order: plainly, or under its row lock.
const READ_ORDER: &str = concat!("SELECT ", order_columns!(), " FROM orders WHERE id = $1");
const LOCK_ORDER: &str = concat!(
    "SELECT ",
    order_columns!(),
    " FROM orders WHERE id = $1 FOR UPDATE"
);

impl PostgresShard {
    fn order_from(&self, row: &PgRow) -> Result<OrderRecord, StoreError> {
        let status: String = row.try_get("status")?;
        let currency: String = row.try_get("currency")?;
        Ok(OrderRecord {
            id: OrderId::new(self.id_from(row.try_get("id")?)?),
            buyer_id: UserId::new(self.id_from(row.try_get("buyer_id")?)?),
            status: parse_status(&status).map_err(|e| self.corrupt(e))?,
            total: Money {
                amount: row.try_get("total_amount")?,
                currency: self.currency_from(&currency)?,
            },
            address_ct: row.try_get("address_ct")?,
            idempotency_key: row.try_get("idempotency_key")?,
            payment_ref: row.try_get("payment_ref")?,
            reason: row.try_get("reason")?,
            settled: row.try_get("settled")?,
            created_at_ms: row.try_get("created_at")?,
            updated_at_ms: row.try_get("updated_at")?,
            lines: Vec::new(),
        })
    }

    fn line_from(&self, row: &PgRow) -> Result<(OrderId, OrderLine), StoreError> {
        let currency: String = row.try_get("currency")?;
        let order = OrderId::new(self.id_from(row.try_get("order_id")?)?);
        let line = OrderLine {
            variant_id: VariantId::new(self.id_from(row.try_get("variant_id")?)?),
            product_id: ProductId::new(self.id_from(row.try_get("product_id")?)?),
            seller_id: row
                .try_get::<Option<i64>, _>("seller_id")?
                .map(|raw| self.id_from(raw).map(UserId::new))
                .transpose()?,
            name: row.try_get("name")?,
            sku: row.try_get("sku")?,
            unit_price: Money {
                amount: row.try_get("unit_amount")?,
                currency: self.currency_from(&currency)?,
            },
            quantity: row.try_get("quantity")?,
            shipped_at_ms: row.try_get("shipped_at")?,
        };
        Ok((order, line))
    }

    /// A read-only transaction whose statements all see one snapshot: orders are read in two
    /// statements (the rows, then their lines), which under READ COMMITTED could otherwise
    /// see an order as paid and its lines as shipped by a commit in between. Dropped without
    /// a commit, which ends it.
    async fn snapshot(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, StoreError> {
        Ok(self
            .pool
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await?)
    }

    /// Orders from `rows` with their lines, read in one more query.
    async fn with_lines(
        &self,
        conn: &mut PgConnection,
        rows: Vec<PgRow>,
    ) -> Result<Vec<OrderRecord>, StoreError> {
        let mut orders = rows
            .iter()
            .map(|row| self.order_from(row))
            .collect::<Result<Vec<_>, _>>()?;
        if orders.is_empty() {
            return Ok(orders);
        }
        let ids = id_array(orders.iter().map(|o| o.id.get()));
        let lines = sqlx::query(concat!(
            "SELECT ",
            line_columns!(),
            " FROM order_lines WHERE order_id = ANY($1) ORDER BY order_id, variant_id"
        ))
        .bind(ids)
        .fetch_all(&mut *conn)
        .await?;
        let mut by_order: HashMap<OrderId, Vec<OrderLine>> = HashMap::new();
        for row in &lines {
            let (order, line) = self.line_from(row)?;
            by_order.entry(order).or_default().push(line);
        }
        for order in &mut orders {
            order.lines = by_order.remove(&order.id).unwrap_or_default();
        }
        Ok(orders)
    }

    /// One order with its lines; `sql` is [`READ_ORDER`] or [`LOCK_ORDER`]. Under the lock the
    /// lines are stable too: every writer of an order's lines locks the order row first.
    async fn read_order(
        &self,
        conn: &mut PgConnection,
        sql: &'static str,
        id: OrderId,
    ) -> Result<Option<OrderRecord>, StoreError> {
        let rows = sqlx::query(sql)
            .bind(sql_id(id.get()))
            .fetch_all(&mut *conn)
            .await?;
        Ok(self.with_lines(conn, rows).await?.pop())
    }

    /// Runs an `order_page!` statement; `bind` fills the filter's parameter, if it has one.
    async fn order_page(
        &self,
        sql: &'static str,
        bind: Option<i64>,
        before: Option<OrderId>,
        limit: usize,
    ) -> Result<Vec<OrderRecord>, StoreError> {
        let mut conn = self.snapshot().await?;
        let mut query = sqlx::query(sql);
        if let Some(value) = bind {
            query = query.bind(value);
        }
        let rows = query
            .bind(before.map_or(i64::MAX, |id| sql_id(id.get())))
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&mut *conn)
            .await?;
        self.with_lines(&mut conn, rows).await
    }

    /// Moves a cart's version on, creating its row, unless a checkout holds the cart. Called
    /// FIRST in every transaction that changes the cart's lines: the upsert takes the cart
    /// row's lock whether or not its `WHERE` lets it update (PostgreSQL locks the conflicting
    /// row either way), so every later read of the cart in the transaction is one no
    /// concurrent cart change can make stale before commit. `Some(order)`: the cart is held by
    /// that pending order, and nothing was written.
    async fn bump_cart(
        &self,
        conn: &mut PgConnection,
        user: UserId,
    ) -> Result<Option<OrderId>, StoreError> {
        let bumped = sqlx::query(
            "INSERT INTO carts (user_id, version) VALUES ($1, 1) \
             ON CONFLICT (user_id) DO UPDATE SET version = carts.version + 1 \
             WHERE carts.checkout_order IS NULL",
        )
        .bind(sql_id(user.get()))
        .execute(&mut *conn)
        .await?;
        if bumped.rows_affected() == 1 {
            return Ok(None);
        }
        // We hold the row's lock, so the claim that refused the bump is still there.
        let holder: Option<i64> =
            sqlx::query_scalar("SELECT checkout_order FROM carts WHERE user_id = $1")
                .bind(sql_id(user.get()))
                .fetch_one(&mut *conn)
                .await?;
        let holder =
            holder.ok_or_else(|| self.corrupt("a cart refused its bump with no checkout"))?;
        Ok(Some(OrderId::new(self.id_from(holder)?)))
    }

    fn idempotency_from(&self, row: &PgRow) -> Result<IdempotencyRecord, StoreError> {
        let status: Option<i64> = row.try_get("status")?;
        let response = match status {
            Some(status) => Some(StoredResponse {
                status: u16::try_from(status)
                    .map_err(|_| self.corrupt(format!("HTTP status {status}")))?,
                body: row
                    .try_get::<Option<Vec<u8>>, _>("body")?
                    .unwrap_or_default(),
            }),
            None => None,
        };
        Ok(IdempotencyRecord {
            user_id: UserId::new(self.id_from(row.try_get("user_id")?)?),
            key: row.try_get("key")?,
            request_hash: row.try_get("request_hash")?,
            order_id: row
                .try_get::<Option<i64>, _>("order_id")?
                .map(|raw| self.id_from(raw).map(OrderId::new))
                .transpose()?,
            response,
            created_at_ms: row.try_get("created_at")?,
            expires_at_ms: row.try_get("expires_at")?,
        })
    }

    async fn read_idempotency(
        &self,
        conn: &mut PgConnection,
        user: UserId,
        key: &str,
    ) -> Result<Option<IdempotencyRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT user_id, key, request_hash, order_id, status, body, created_at, expires_at \
             FROM idempotency WHERE user_id = $1 AND key = $2",
        )
        .bind(sql_id(user.get()))
        .bind(key)
        .fetch_optional(conn)
        .await?;
        row.map(|row| self.idempotency_from(&row)).transpose()
    }

    /// Stores the response of `key`'s first request: a conditional write, so of two racing
    /// completions exactly one stores.
    async fn store_response(
        &self,
        conn: &mut PgConnection,
        user: UserId,
        key: &str,
        response: &StoredResponse,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE idempotency SET status = $1, body = $2 \
             WHERE user_id = $3 AND key = $4 AND status IS NULL",
        )
        .bind(i64::from(response.status))
        .bind(&response.body)
        .bind(sql_id(user.get()))
        .bind(key)
        .execute(conn)
        .await?;
        Ok(done.rows_affected() == 1)
    }
}

#[async_trait]
impl OrderShard for PostgresShard {
    async fn cart(&self, user: UserId) -> Result<StoredCart, StoreError> {
        // One statement, so the lines, the version and the claim are one snapshot.
        let rows = sqlx::query(
            "SELECT c.version, c.checkout_order, i.variant_id, i.product_id, i.quantity, \
             i.added_at FROM carts c LEFT JOIN cart_items i ON i.user_id = c.user_id \
             WHERE c.user_id = $1 ORDER BY i.added_at, i.variant_id",
        )
        .bind(sql_id(user.get()))
        .fetch_all(&self.pool)
        .await?;
        let mut cart = StoredCart::default();
        for row in &rows {
            cart.version = row.try_get(0)?;
            cart.checkout = row
                .try_get::<Option<i64>, _>(1)?
                .map(|raw| self.id_from(raw).map(OrderId::new))
                .transpose()?;
            let Some(variant) = row.try_get::<Option<i64>, _>(2)? else {
                continue; // a cart row with no lines
            };
            let get = |i: usize| row.try_get::<i64, _>(i);
            cart.items.push(CartItem {
                variant_id: VariantId::new(self.id_from(variant)?),
                product_id: ProductId::new(self.id_from(get(3)?)?),
                quantity: get(4)?,
                added_at_ms: get(5)?,
            });
        }
        Ok(cart)
    }

    async fn add_to_cart(
        &self,
        user: UserId,
        item: &CartItem,
        max_quantity: i64,
        max_lines: i64,
    ) -> Result<CartChange, StoreError> {
        let mut tx = self.pool.begin().await?;
        // First: the cart row's lock, which every cart change takes before it reads.
        if let Some(holder) = self.bump_cart(&mut tx, user).await? {
            return Ok(CartChange::Busy(holder));
        }
        let (user_id, variant_id) = (sql_id(user.get()), sql_id(item.variant_id.get()));
        let row = sqlx::query(
            "SELECT (SELECT quantity FROM cart_items WHERE user_id = $1 AND variant_id = $2), \
             (SELECT COUNT(*) FROM cart_items WHERE user_id = $1)",
        )
        .bind(user_id)
        .bind(variant_id)
        .fetch_one(&mut *tx)
        .await?;
        let current: Option<i64> = row.try_get(0)?;
        let lines: i64 = row.try_get(1)?;
        let quantity =
            match CartChange::decide(current, lines, item.quantity, max_quantity, max_lines) {
                CartChange::Done { quantity } => quantity,
                // Dropping the transaction takes back the version bump.
                refused => return Ok(refused),
            };
        sqlx::query(
            "INSERT INTO cart_items (user_id, variant_id, product_id, quantity, added_at) \
             VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (user_id, variant_id) DO UPDATE SET quantity = EXCLUDED.quantity",
        )
        .bind(user_id)
        .bind(variant_id)
        .bind(sql_id(item.product_id.get()))
        .bind(quantity)
        .bind(item.added_at_ms)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(CartChange::Done { quantity })
    }

    async fn set_cart_quantity(
        &self,
        user: UserId,
        variant: VariantId,
        quantity: i64,
    ) -> Result<CartEdit, StoreError> {
        let mut tx = self.pool.begin().await?;
        if let Some(holder) = self.bump_cart(&mut tx, user).await? {
            return Ok(CartEdit::Busy(holder));
        }
        let done = sqlx::query(
            "UPDATE cart_items SET quantity = $1 WHERE user_id = $2 AND variant_id = $3",
        )
        .bind(quantity)
        .bind(sql_id(user.get()))
        .bind(sql_id(variant.get()))
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            // Dropping the transaction takes back the version bump.
            return Ok(CartEdit::NoSuchLine);
        }
        tx.commit().await?;
        Ok(CartEdit::Done)
    }

    async fn remove_from_cart(
        &self,
        user: UserId,
        variant: VariantId,
    ) -> Result<CartEdit, StoreError> {
        let mut tx = self.pool.begin().await?;
        if let Some(holder) = self.bump_cart(&mut tx, user).await? {
            return Ok(CartEdit::Busy(holder));
        }
        let done = sqlx::query("DELETE FROM cart_items WHERE user_id = $1 AND variant_id = $2")
            .bind(sql_id(user.get()))
            .bind(sql_id(variant.get()))
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Ok(CartEdit::NoSuchLine);
        }
        tx.commit().await?;
        Ok(CartEdit::Done)
    }

    async fn variant_product(&self, variant: VariantId) -> Result<Option<ProductId>, StoreError> {
        let product: Option<i64> =
            sqlx::query_scalar("SELECT product_id FROM variants WHERE id = $1")
                .bind(sql_id(variant.get()))
                .fetch_optional(&self.pool)
                .await?;
        product
            .map(|raw| self.id_from(raw).map(ProductId::new))
            .transpose()
    }

    async fn start_order(
        &self,
        order: &OrderRecord,
        claim: Option<&IdempotencyClaim>,
        cart_version: Option<i64>,
    ) -> Result<StartOutcome, StoreError> {
        let mut tx = self.pool.begin().await?;
        let buyer = sql_id(order.buyer_id.get());
        if let Some(claim) = claim {
            // Atomic: a racing claim of the same key waits on this row's unique index entry,
            // then does nothing once this one commits.
            let claimed = sqlx::query(
                "INSERT INTO idempotency \
                 (user_id, key, request_hash, order_id, created_at, expires_at) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
            )
            .bind(buyer)
            .bind(&claim.key)
            .bind(&claim.request_hash)
            .bind(sql_id(order.id.get()))
            .bind(order.created_at_ms)
            .bind(claim.expires_at_ms)
            .execute(&mut *tx)
            .await?;
            if claimed.rows_affected() == 0 {
                // The winner has committed (the insert waited for it), so this statement,
                // with its own snapshot, sees its row.
                let existing = self
                    .read_idempotency(&mut tx, order.buyer_id, &claim.key)
                    .await?
                    .ok_or_else(|| self.corrupt("an idempotency claim vanished mid-transaction"))?;
                return Ok(StartOutcome::Duplicate(existing));
            }
        }
        if let Some(version) = cart_version {
            // The claim: one conditional write, re-checked after waiting for the row's lock,
            // so one checkout per cart version.
            let claimed = sqlx::query(
                "UPDATE carts SET checkout_order = $1 \
                 WHERE user_id = $2 AND version = $3 AND checkout_order IS NULL",
            )
            .bind(sql_id(order.id.get()))
            .bind(buyer)
            .bind(version)
            .execute(&mut *tx)
            .await?;
            if claimed.rows_affected() == 0 {
                let holder: Option<Option<i64>> =
                    sqlx::query_scalar("SELECT checkout_order FROM carts WHERE user_id = $1")
                        .bind(buyer)
                        .fetch_optional(&mut *tx)
                        .await?;
                // Dropping the transaction takes back the idempotency claim too.
                return Ok(match holder.flatten() {
                    Some(raw) => StartOutcome::CartBusy(OrderId::new(self.id_from(raw)?)),
                    None => StartOutcome::CartChanged,
                });
            }
        }
        sqlx::query(concat!(
            "INSERT INTO orders (",
            order_columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, false, $10, $11)"
        ))
        .bind(sql_id(order.id.get()))
        .bind(buyer)
        .bind(status_name(order.status))
        .bind(order.total.amount)
        .bind(order.total.currency.as_str())
        .bind(&order.address_ct)
        .bind(claim.map(|c| c.key.as_str()))
        .bind(order.payment_ref.as_deref())
        .bind(order.reason.as_deref())
        .bind(order.created_at_ms)
        .bind(order.updated_at_ms)
        .execute(&mut *tx)
        .await?;
        for line in &order.lines {
            sqlx::query(concat!(
                "INSERT INTO order_lines (",
                line_columns!(),
                ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, NULL)"
            ))
            .bind(sql_id(order.id.get()))
            .bind(sql_id(line.variant_id.get()))
            .bind(sql_id(line.product_id.get()))
            .bind(line.seller_id.map(|s| sql_id(s.get())))
            .bind(&line.name)
            .bind(&line.sku)
            .bind(line.unit_price.amount)
            .bind(line.unit_price.currency.as_str())
            .bind(line.quantity)
            .execute(&mut *tx)
            .await?;
        }
        self.write_event(&mut tx, events::order_changed(order), order.created_at_ms)
            .await?;
        tx.commit().await?;
        Ok(StartOutcome::Started)
    }

    async fn reserve(
        &self,
        order: OrderId,
        buyer: UserId,
        lines: &[ReservationLine],
        expires_at_ms: i64,
        now_ms: i64,
    ) -> Result<ReserveOutcome, StoreError> {
        let mut tx = self.pool.begin().await?;
        // Lock every stock row this reservation may touch, in variant order, before touching
        // any: two reservations of overlapping variants then queue instead of deadlocking.
        // The lines themselves are then taken in the caller's order (as SQLite does), so the
        // events come out in that order.
        let mut variants = id_array(lines.iter().map(|l| l.variant_id.get()));
        variants.sort_unstable();
        variants.dedup();
        sqlx::query(
            "SELECT variant_id FROM stock WHERE variant_id = ANY($1) \
             ORDER BY variant_id FOR UPDATE",
        )
        .bind(&variants)
        .fetch_all(&mut *tx)
        .await?;
        for line in lines {
            let taken = sqlx::query(
                "INSERT INTO reservations \
                 (order_id, variant_id, product_id, buyer_id, quantity, state, expires_at, \
                  updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
            )
            .bind(sql_id(order.get()))
            .bind(sql_id(line.variant_id.get()))
            .bind(sql_id(line.product_id.get()))
            .bind(sql_id(buyer.get()))
            .bind(line.quantity)
            .bind(ReservationState::Held.as_str())
            .bind(expires_at_ms)
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
            if taken.rows_affected() == 0 {
                // Reserved by an earlier attempt of this same order.
                continue;
            }
            // The conditional decrement: never below zero, whatever runs concurrently.
            let decremented = sqlx::query(
                "UPDATE stock SET on_hand = on_hand - $1 WHERE variant_id = $2 AND on_hand >= $1",
            )
            .bind(line.quantity)
            .bind(sql_id(line.variant_id.get()))
            .execute(&mut *tx)
            .await?;
            if decremented.rows_affected() == 0 {
                let available: Option<i64> =
                    sqlx::query_scalar("SELECT on_hand FROM stock WHERE variant_id = $1")
                        .bind(sql_id(line.variant_id.get()))
                        .fetch_optional(&mut *tx)
                        .await?;
                // Dropping the transaction rolls back every line held so far.
                return Ok(ReserveOutcome::OutOfStock {
                    variant: line.variant_id,
                    wanted: line.quantity,
                    available: available.unwrap_or(0),
                });
            }
            let event =
                events::stock_reserved(order, line.product_id, line.variant_id, line.quantity);
            self.write_event(&mut tx, event, now_ms).await?;
        }
        tx.commit().await?;
        Ok(ReserveOutcome::Reserved)
    }

    async fn settle_reservations(
        &self,
        order: OrderId,
        settlement: Settlement,
        now_ms: i64,
    ) -> Result<u64, StoreError> {
        let Some(to) = settlement.moves_to() else {
            return Ok(0);
        };
        let from: Vec<&str> = settlement.moves_from().iter().map(|s| s.as_str()).collect();
        let mut tx = self.pool.begin().await?;
        // Locked in variant order; a row a concurrent settler moved meanwhile is re-checked
        // against `state` after its lock is granted, and drops out.
        let rows = sqlx::query(
            "SELECT variant_id, product_id, quantity, state FROM reservations \
             WHERE order_id = $1 AND state = ANY($2) ORDER BY variant_id FOR UPDATE",
        )
        .bind(sql_id(order.get()))
        .bind(&from)
        .fetch_all(&mut *tx)
        .await?;
        let mut moved = 0;
        for row in &rows {
            let get = |i: usize| row.try_get::<i64, _>(i);
            let (variant, product, quantity) = (get(0)?, get(1)?, get(2)?);
            let state: String = row.try_get(3)?;
            // The state change guards the stock change: a unit moves at most once.
            let changed = sqlx::query(
                "UPDATE reservations SET state = $1, updated_at = $2 \
                 WHERE order_id = $3 AND variant_id = $4 AND state = $5",
            )
            .bind(to.as_str())
            .bind(now_ms)
            .bind(sql_id(order.get()))
            .bind(variant)
            .bind(&state)
            .execute(&mut *tx)
            .await?;
            if changed.rows_affected() == 0 {
                continue;
            }
            if settlement.restocks() {
                sqlx::query("UPDATE stock SET on_hand = on_hand + $1 WHERE variant_id = $2")
                    .bind(quantity)
                    .bind(variant)
                    .execute(&mut *tx)
                    .await?;
                let event = events::stock_released(
                    order,
                    ProductId::new(self.id_from(product)?),
                    VariantId::new(self.id_from(variant)?),
                    quantity,
                    &state,
                );
                self.write_event(&mut tx, event, now_ms).await?;
            }
            moved += 1;
        }
        tx.commit().await?;
        Ok(moved)
    }

    async fn transition(&self, change: &Transition<'_>) -> Result<TransitionOutcome, StoreError> {
        let mut tx = self.pool.begin().await?;
        // Under the order row's lock: a concurrent transition (or shipment) of this order
        // waits here, then reads the status this one wrote.
        let Some(mut order) = self.read_order(&mut tx, LOCK_ORDER, change.order).await? else {
            return Ok(TransitionOutcome::NotFound);
        };
        if let Some(refused) = change.refusal(&order) {
            return Ok(refused);
        }
        sqlx::query(
            "UPDATE orders SET status = $1, reason = COALESCE($2, reason), \
             payment_ref = COALESCE($3, payment_ref), settled = false, updated_at = $4 \
             WHERE id = $5",
        )
        .bind(status_name(change.to))
        .bind(change.reason)
        .bind(change.payment_ref)
        .bind(change.now_ms)
        .bind(sql_id(change.order.get()))
        .execute(&mut *tx)
        .await?;
        if change.releases_cart(order.status) {
            sqlx::query(
                "UPDATE carts SET checkout_order = NULL \
                 WHERE user_id = $1 AND checkout_order = $2",
            )
            .bind(sql_id(change.buyer.get()))
            .bind(sql_id(change.order.get()))
            .execute(&mut *tx)
            .await?;
        }
        change.apply(&mut order);
        self.write_event(&mut tx, events::order_changed(&order), change.now_ms)
            .await?;
        if let Some((key, response)) = change.respond {
            self.store_response(&mut tx, change.buyer, key, response)
                .await?;
        }
        if !change.clear_cart.is_empty() {
            // The bump (the cart row's lock) comes before the lines change, as in every cart
            // change. The claim was released above, so it cannot be refused.
            if let Some(holder) = self.bump_cart(&mut tx, change.buyer).await? {
                return Err(self.corrupt(format!(
                    "order {holder} claimed a cart inside another order's transaction"
                )));
            }
            sqlx::query("DELETE FROM cart_items WHERE user_id = $1 AND variant_id = ANY($2)")
                .bind(sql_id(change.buyer.get()))
                .bind(id_array(change.clear_cart.iter().map(|v| v.get())))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(TransitionOutcome::Done(order))
    }

    async fn mark_settled(
        &self,
        order: OrderId,
        status: OrderStatus,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE orders SET settled = true, updated_at = $1 \
             WHERE id = $2 AND status = $3 AND NOT settled",
        )
        .bind(now_ms)
        .bind(sql_id(order.get()))
        .bind(status_name(status))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn ship_lines(
        &self,
        order: OrderId,
        seller: Option<UserId>,
        now_ms: i64,
    ) -> Result<TransitionOutcome, StoreError> {
        let mut tx = self.pool.begin().await?;
        // Under the order row's lock, like a transition: a refund cannot slip in between the
        // status check and the shipment, nor two sellers' shipments both miss the last line.
        let Some(mut record) = self.read_order(&mut tx, LOCK_ORDER, order).await? else {
            return Ok(TransitionOutcome::NotFound);
        };
        if let Some(refused) = record.ship_refusal(seller) {
            return Ok(refused);
        }
        let shipped = sqlx::query(
            "UPDATE order_lines SET shipped_at = $1 WHERE order_id = $2 AND shipped_at IS NULL \
             AND ($3::BIGINT IS NULL OR seller_id = $3)",
        )
        .bind(now_ms)
        .bind(sql_id(order.get()))
        .bind(seller.map(|s| sql_id(s.get())))
        .execute(&mut *tx)
        .await?;
        if shipped.rows_affected() == 0 {
            // This seller's lines were shipped already.
            return Ok(TransitionOutcome::Refused(record.status));
        }
        if record.ship(seller, now_ms) {
            sqlx::query("UPDATE orders SET status = $1, updated_at = $2 WHERE id = $3")
                .bind(status_name(record.status))
                .bind(now_ms)
                .bind(sql_id(order.get()))
                .execute(&mut *tx)
                .await?;
            self.write_event(&mut tx, events::order_changed(&record), now_ms)
                .await?;
        }
        tx.commit().await?;
        Ok(TransitionOutcome::Done(record))
    }

    async fn order(&self, id: OrderId) -> Result<Option<OrderRecord>, StoreError> {
        let mut snapshot = self.snapshot().await?;
        self.read_order(&mut snapshot, READ_ORDER, id).await
    }

    async fn orders_of_buyer(
        &self,
        buyer: UserId,
        before: Option<OrderId>,
        limit: usize,
    ) -> Result<Vec<OrderRecord>, StoreError> {
        self.order_page(
            order_page!("buyer_id = $1", "$2", "$3"),
            Some(sql_id(buyer.get())),
            before,
            limit,
        )
        .await
    }

    async fn orders_of_seller(
        &self,
        seller: UserId,
        before: Option<OrderId>,
        limit: usize,
    ) -> Result<Vec<OrderRecord>, StoreError> {
        self.order_page(
            order_page!(
                "id IN (SELECT order_id FROM order_lines WHERE seller_id = $1)",
                "$2",
                "$3"
            ),
            Some(sql_id(seller.get())),
            before,
            limit,
        )
        .await
    }

    async fn all_orders(
        &self,
        before: Option<OrderId>,
        limit: usize,
    ) -> Result<Vec<OrderRecord>, StoreError> {
        self.order_page(order_page!("true", "$1", "$2"), None, before, limit)
            .await
    }

    async fn unsettled_orders(
        &self,
        updated_before_ms: i64,
        limit: usize,
    ) -> Result<Vec<OrderRecord>, StoreError> {
        let mut conn = self.snapshot().await?;
        let rows = sqlx::query(concat!(
            "SELECT ",
            order_columns!(),
            " FROM orders WHERE NOT settled AND updated_at < $1 ORDER BY updated_at LIMIT $2"
        ))
        .bind(updated_before_ms)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&mut *conn)
        .await?;
        self.with_lines(&mut conn, rows).await
    }

    async fn expired_reservations(
        &self,
        now_ms: i64,
        limit: usize,
    ) -> Result<Vec<(OrderId, UserId)>, StoreError> {
        let rows = sqlx::query(
            "SELECT DISTINCT order_id, buyer_id FROM reservations \
             WHERE state = $1 AND expires_at <= $2 LIMIT $3",
        )
        .bind(ReservationState::Held.as_str())
        .bind(now_ms)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let get = |i: usize| row.try_get::<i64, _>(i);
                Ok((
                    OrderId::new(self.id_from(get(0)?)?),
                    UserId::new(self.id_from(get(1)?)?),
                ))
            })
            .collect()
    }

    async fn idempotency(
        &self,
        user: UserId,
        key: &str,
    ) -> Result<Option<IdempotencyRecord>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        self.read_idempotency(&mut conn, user, key).await
    }

    async fn complete_idempotency(
        &self,
        user: UserId,
        key: &str,
        response: &StoredResponse,
    ) -> Result<bool, StoreError> {
        let mut conn = self.pool.acquire().await?;
        self.store_response(&mut conn, user, key, response).await
    }

    async fn purge_idempotency(&self, now_ms: i64) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM idempotency WHERE expires_at <= $1")
            .bind(now_ms)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    async fn stock_account(&self, variant: VariantId) -> Result<StockAccount, StoreError> {
        // One statement, so the three sums are one snapshot. SUM of BIGINT is NUMERIC in
        // PostgreSQL: cast back.
        let row = sqlx::query(
            "SELECT \
               (SELECT COALESCE(SUM(on_hand), 0)::BIGINT FROM stock WHERE variant_id = $1), \
               (SELECT COALESCE(SUM(quantity), 0)::BIGINT FROM reservations \
                 WHERE variant_id = $1 AND state = 'held'), \
               (SELECT COALESCE(SUM(quantity), 0)::BIGINT FROM reservations \
                 WHERE variant_id = $1 AND state = 'committed')",
        )
        .bind(sql_id(variant.get()))
        .fetch_one(&self.pool)
        .await?;
        let get = |i: usize| row.try_get::<i64, _>(i);
        Ok(StockAccount {
            on_hand: get(0)?,
            held: get(1)?,
            committed: get(2)?,
        })
    }
}
