//! Black-box tests of the HTTP API: each test starts the real application on port 0 with a
//! fresh data directory and talks to it over HTTP. The `http_postgres` binary runs the same
//! modules with every server on PostgreSQL.

mod cache;
mod catalog;
mod checkout;
mod demo;
mod errors;
mod events;
mod gateway;
mod graphql;
mod helpers;
mod ide;
mod identity;
mod lists;
mod observability;
mod orders;
mod permissions;
mod search;

/// This binary's servers keep their shards in SQLite files.
const ON_POSTGRES: bool = false;
