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
        write_events: true,
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

/// `BAZAAR_TEST_REDIS_URL`, or `None` after saying loudly that `test` is skipped.
#[allow(
    dead_code,
    reason = "each test binary includes this module and uses a subset of it"
)]
pub(crate) fn redis_or_skip(test: &str) -> Option<String> {
    let url = std::env::var("BAZAAR_TEST_REDIS_URL").ok();
    if url.is_none() {
        eprintln!("SKIPPED {test}: BAZAAR_TEST_REDIS_URL is not set");
    }
    url
}

/// A name no other run uses: Redis keys and channels outlive a test process.
#[allow(
    dead_code,
    reason = "each test binary includes this module and uses a subset of it"
)]
pub(crate) fn unique(prefix: &str) -> String {
    format!(
        "{prefix}:{}:{}",
        std::process::id(),
        bazaar_store::id::wall_clock_ms()
    )
}
