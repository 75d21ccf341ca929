//! The black-box HTTP suite of `tests/http`, every server on PostgreSQL: each test creates its
//! own databases on the server named by `BAZAAR_TEST_POSTGRES_URL` and drops them at the end.
//! Without that variable the first test to start a server prints that the suite is skipped
//! and ends the process with success (see `helpers::spawn_app_with`): every test here needs
//! a server, so none would have anything to run.

#[path = "../http/cache.rs"]
mod cache;
#[path = "../http/catalog.rs"]
mod catalog;
#[path = "../http/checkout.rs"]
mod checkout;
#[path = "../http/demo.rs"]
mod demo;
#[path = "../http/errors.rs"]
mod errors;
#[path = "../http/events.rs"]
mod events;
#[path = "../http/gateway.rs"]
mod gateway;
#[path = "../http/graphql.rs"]
mod graphql;
#[path = "../http/helpers.rs"]
mod helpers;
#[path = "../http/ide.rs"]
mod ide;
#[path = "../http/identity.rs"]
mod identity;
#[path = "../http/lists.rs"]
mod lists;
#[path = "../http/observability.rs"]
mod observability;
#[path = "../http/orders.rs"]
mod orders;
#[path = "../http/permissions.rs"]
mod permissions;
#[path = "../http/search.rs"]
mod search;

/// This binary's servers keep their shards in PostgreSQL databases.
const ON_POSTGRES: bool = true;
