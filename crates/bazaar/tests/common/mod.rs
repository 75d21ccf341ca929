//! Helpers shared by the tests that run the `bazaar` binary.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use bazaar_store::Store;

/// The binary under test, with none of the suite's own `BAZAAR_*` variables (such as
/// `BAZAAR_TEST_REDIS_URL`) leaking into its configuration.
pub(crate) fn bazaar() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_bazaar"));
    for (key, _) in std::env::vars() {
        if key.starts_with("BAZAAR_") {
            command.env_remove(key);
        }
    }
    command
}

/// Opens the default four-shard store in `dir` — from outside any server process, as an
/// operator's tool would (WAL lets it read while a server writes).
pub(crate) async fn open_data_dir(dir: &Path) -> Store {
    let config = bazaar_store::sqlite::SqliteConfig {
        data_dir: dir.to_owned(),
        durability: bazaar_store::sqlite::Durability::Normal,
        busy_timeout: Duration::from_secs(5),
        max_connections: 1,
    };
    Store::open_sqlite(
        &config,
        4,
        bazaar_ring::DEFAULT_VNODES,
        &bazaar_telemetry::Metrics::new(),
    )
    .await
    .expect("the data directory opens")
}
