//! What a data directory holds, for the commands that work on an existing store.
//!
//! `serve` and `seed` create a store where there is none; every other command that takes a
//! `--data-dir` (`admin`, `keys`, `privacy`) changes one that must already exist. Run against
//! the wrong directory, they would otherwise create a fresh store and key file there and
//! report success — a rotated key no server will ever read, an admin in a store nobody
//! serves — so they check first and refuse, naming the directory.

use std::path::Path;

use crate::config::Config;
use crate::secrets;

/// The file every store in `dir` has. Shard 0 always exists (a store has at least one shard,
/// and shard 0 holds the directory of emails), so its absence means there is no store here.
fn first_shard(dir: &Path) -> std::path::PathBuf {
    dir.join("shard-0.sqlite")
}

/// Whether `dir` holds a store.
pub fn has_store(dir: &Path) -> bool {
    first_shard(dir).is_file()
}

/// Fails, saying which directory and what to do, unless `config`'s data directory holds a
/// store — and, when `needs_keys`, unless its key file exists too.
///
/// With the PostgreSQL backend the shards are databases, not files here: the data directory
/// still holds the key file that `serve` and `seed` create, so that file is what marks the
/// directory of a deployment and is required whatever `needs_keys` says (opening the store
/// then fails, naming the database, if one cannot be reached).
pub fn require_store(config: &Config, needs_keys: bool) -> Result<(), String> {
    let dir = &config.store.data_dir;
    if config.store.backend == crate::config::StoreBackend::Postgres {
        let keys = secrets::path(config);
        if !keys.is_file() {
            return Err(format!(
                "no Bazaar deployment in {}: with store.backend = \"postgres\" its data \
                 directory holds the key file {}, which does not exist; pass the --data-dir \
                 that `bazaar serve` or `bazaar seed` used",
                dir.display(),
                keys.display()
            ));
        }
        return Ok(());
    }
    if !has_store(dir) {
        return Err(format!(
            "no Bazaar store in {} ({} does not exist); pass the --data-dir of an existing store \
             (`bazaar serve` or `bazaar seed` creates one)",
            dir.display(),
            first_shard(dir).display()
        ));
    }
    let keys = secrets::path(config);
    if needs_keys && !keys.is_file() {
        return Err(format!(
            "the store in {} has no key file at {}; a fresh one would hold keys no server \
             reads, so none is created (set `auth.secrets_file` if the keys live elsewhere)",
            dir.display(),
            keys.display()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_without_a_first_shard_holds_no_store() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.store.data_dir = dir.path().join("nowhere");
        let refused = require_store(&config, false).unwrap_err();
        assert!(
            refused.contains(&config.store.data_dir.display().to_string()),
            "{refused}"
        );

        config.store.data_dir = dir.path().to_owned();
        std::fs::write(dir.path().join("shard-0.sqlite"), b"").unwrap();
        assert!(require_store(&config, false).is_ok());
        let refused = require_store(&config, true).unwrap_err();
        assert!(refused.contains("secrets.toml"), "{refused}");
        std::fs::write(dir.path().join("secrets.toml"), b"").unwrap();
        assert!(require_store(&config, true).is_ok());
    }

    #[test]
    fn on_postgres_the_key_file_marks_a_deployments_directory() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.store.backend = crate::config::StoreBackend::Postgres;
        config.store.data_dir = dir.path().to_owned();
        for needs_keys in [false, true] {
            let refused = require_store(&config, needs_keys).unwrap_err();
            assert!(refused.contains("secrets.toml"), "{refused}");
        }
        std::fs::write(dir.path().join("secrets.toml"), b"").unwrap();
        assert!(require_store(&config, false).is_ok());
        assert!(require_store(&config, true).is_ok());
    }
}
