-- One row per buyer's cart: a version bumped by every change to its lines, and the pending
-- order that has claimed it for checkout.
--
-- A checkout claims the cart in the transaction that starts its order, with a conditional
-- write (`UPDATE carts SET checkout_order = ? WHERE user_id = ? AND version = ? AND
-- checkout_order IS NULL`), so of any number of concurrent checkouts of one cart exactly one
-- starts an order, whatever the isolation level: the losers find the row claimed, or its
-- version moved on by the winner's payment emptying the cart. The claim is released when the
-- order leaves `pending`.
CREATE TABLE carts (
    user_id        INTEGER PRIMARY KEY,
    version        INTEGER NOT NULL DEFAULT 0,
    checkout_order INTEGER                       -- the pending order checking this cart out
) STRICT;

INSERT INTO carts (user_id) SELECT DISTINCT user_id FROM cart_items;
