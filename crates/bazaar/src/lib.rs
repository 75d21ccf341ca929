//! The Bazaar binary's library half: configuration and the application lifecycle, kept out
//! of `main.rs` so that integration tests can start the real server in-process on port 0.
//!
//! # Layout
//!
//! * [`config`] — layered configuration (defaults, TOML, environment, flags).
//! * [`app`] — [`app::Application`]: open the store, seed, bind, serve, shut down.
//! * [`events`] — the queue the configuration names; the relay, consumer and event-statistics
//!   workers; which of them a process runs.
//! * [`search`] — this process's search index, its indexer and rebuilds, and
//!   `bazaar search reindex`.
//! * [`datadir`] — whether a data directory holds a store, for commands that need one.
//! * [`secrets`] — the key file (signing, encryption and blind-index keys) and rotation.
//! * [`seed`] — the `bazaar seed` command.
//! * [`lab`], [`tradeoff`] — `bazaar lab`: the load generator's command line, and the
//!   trade-offs measured side by side on in-process servers (`bazaar lab tradeoff`).

pub mod app;
pub mod config;
pub mod datadir;
pub mod events;
pub mod freshness;
pub mod lab;
pub mod node;
pub mod relevance;
pub mod resharding;
pub mod search;
pub mod secrets;
pub mod seed;
pub mod shards;
pub mod tradeoff;
pub mod workers;

pub use app::Application;
pub use config::Config;
