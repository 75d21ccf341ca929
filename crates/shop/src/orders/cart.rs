//! The buyer's cart: lines kept on the buyer's shard, priced from the catalog on every read.

use std::sync::Arc;

use bazaar_store::prelude::*;
use bazaar_store::{
    CartChange, CartEdit, CartItem, Currency, Money, ProductId, ProductWithVariants, Variant,
    VariantId,
};

use super::{Cart, CartLine, Orders, not_in_cart, shopper};
use crate::error::ShopError;
use crate::{Actor, now_ms};

impl Orders {
    /// The caller's cart, priced now. Lines whose variant is no longer sold are left out.
    pub async fn cart(&self, actor: &Actor) -> Result<Cart, ShopError> {
        let me = shopper(actor)?;
        let items = self.inner.store.for_user(me).cart(me).await?.items;
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
                .map_or(Currency::USD, |l| l.unit_price.currency),
        };
        Ok(Cart { lines, total })
    }

    /// A variant and its product, through the product cache; `None` once either is no longer
    /// sold (such cart lines are neither shown nor checked out).
    pub(super) async fn on_sale(
        &self,
        product: ProductId,
        variant: VariantId,
    ) -> Result<Option<(Arc<ProductWithVariants>, Variant)>, ShopError> {
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
        for item in self.inner.store.for_user(me).cart(me).await?.items {
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
            CartChange::Busy(order) => Err(ShopError::CheckoutInProgress { order }),
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
        let edit = self
            .inner
            .store
            .for_user(me)
            .set_cart_quantity(me, variant, quantity)
            .await?;
        edited(edit, variant)?;
        self.cart(actor).await
    }

    /// Removes a line from the caller's cart.
    pub async fn remove_from_cart(
        &self,
        actor: &Actor,
        variant: VariantId,
    ) -> Result<Cart, ShopError> {
        let me = shopper(actor)?;
        let edit = self
            .inner
            .store
            .for_user(me)
            .remove_from_cart(me, variant)
            .await?;
        edited(edit, variant)?;
        self.cart(actor).await
    }
}

/// A cart edit's outcome as an error, if it failed. While a checkout holds the cart its lines
/// are being bought, and an edit accepted now would be silently undone when the paid order
/// clears them: it is refused instead.
fn edited(edit: CartEdit, variant: VariantId) -> Result<(), ShopError> {
    match edit {
        CartEdit::Done => Ok(()),
        CartEdit::NoSuchLine => Err(not_in_cart(variant)),
        CartEdit::Busy(order) => Err(ShopError::CheckoutInProgress { order }),
    }
}
