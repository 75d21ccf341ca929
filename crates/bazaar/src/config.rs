//! Configuration: built-in defaults, then an optional TOML file, then `BAZAAR_*` environment
//! variables (`__` separates sections: `BAZAAR_HTTP__LISTEN`), then command-line flags.
//!
//! Unknown keys are errors, not silently ignored: a misspelt setting should stop start-up,
//! not run the system with the default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bazaar_telemetry::logging::LogFormat;
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// Everything Bazaar can be configured with. `bazaar config print` shows the effective values.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub http: HttpConfig,
    pub store: StoreConfig,
    pub catalog: CatalogConfig,
    pub graphql: GraphqlConfig,
    pub log: LogConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address and port to listen on; port 0 picks a free port.
    pub listen: SocketAddr,
    /// A request still running after this is answered with 408.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Largest accepted request body, in bytes.
    pub body_limit: usize,
    /// On SIGINT/SIGTERM, how long in-flight requests may take to finish.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            request_timeout: Duration::from_secs(30),
            body_limit: 1024 * 1024,
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Where the shard files live.
    pub data_dir: PathBuf,
    /// How many shards (SQLite files) the ring spreads the catalog over. Fixed once a data
    /// directory has been created.
    pub shards: usize,
    /// Virtual nodes per shard on the hash ring. Fixed once a data directory has been created.
    pub vnodes: u32,
    /// `full` (every commit is fsynced before it is acknowledged) or `normal` (WAL commits may
    /// be lost on power failure, never corrupted).
    pub durability: Durability,
    /// How long a query waits for a locked database before failing.
    #[serde(with = "humantime_serde")]
    pub busy_timeout: Duration,
    /// Connections per shard.
    pub max_connections: u32,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./bazaar-data"),
            shards: 4,
            vnodes: bazaar_ring::DEFAULT_VNODES,
            durability: Durability::Full,
            busy_timeout: Duration::from_secs(5),
            max_connections: 4,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    Full,
    Normal,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CatalogConfig {
    /// Demo products `serve` writes when the store is empty; 0 disables.
    pub demo_products: u64,
    /// Seed of the demo catalog's random stream.
    pub demo_seed: u64,
}

impl Default for CatalogConfig {
    fn default() -> Self {
        Self {
            demo_products: 1000,
            demo_seed: bazaar_shop::demo::DEFAULT_SEED,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GraphqlConfig {
    /// Deepest selection nesting a query may have.
    pub max_depth: usize,
    /// Largest cost a query may have (a list costs its page size times its children).
    pub max_complexity: usize,
}

impl Default for GraphqlConfig {
    fn default() -> Self {
        let limits = bazaar_api::graphql::GraphqlLimits::default();
        Self {
            max_depth: limits.max_depth,
            max_complexity: limits.max_complexity,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `pretty` for a terminal, `json` for machines.
    pub format: LogFormat,
    /// `RUST_LOG` syntax; `bazaar_api=debug` logs every request.
    pub filter: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Pretty,
            filter: "info".into(),
        }
    }
}

/// Settings given as command-line flags, which win over every other source.
#[derive(Debug, Default)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub demo_products: Option<u64>,
}

/// Why the configuration cannot be used. Its message names the key and the expected form.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(String);

impl Config {
    /// Loads defaults ← `file` ← environment ← `overrides`, then checks value ranges.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            if !file.is_file() {
                return Err(ConfigError(format!(
                    "config file {} does not exist",
                    file.display()
                )));
            }
            figment = figment.merge(Toml::file_exact(file));
        }
        // Only nested keys are settings (every setting lives in a section); this leaves
        // variables such as BAZAAR_TEST_POSTGRES_URL, meant for the test suite, alone.
        figment = figment.merge(
            Env::prefixed("BAZAAR_")
                .split("__")
                .filter(|key| key.as_str().contains('.')),
        );
        if let Some(listen) = overrides.listen {
            figment = figment.merge(Serialized::default("http.listen", listen));
        }
        if let Some(dir) = &overrides.data_dir {
            figment = figment.merge(Serialized::default("store.data_dir", dir));
        }
        if let Some(n) = overrides.demo_products {
            figment = figment.merge(Serialized::default("catalog.demo_products", n));
        }
        let config: Config = figment.extract().map_err(describe)?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let range = |key: &str, value: u64, low: u64, high: u64| {
            if (low..=high).contains(&value) {
                Ok(())
            } else {
                Err(ConfigError(format!(
                    "`{key}` is {value}; expected an integer from {low} to {high}"
                )))
            }
        };
        range("store.shards", self.store.shards as u64, 1, 256)?;
        range("store.vnodes", u64::from(self.store.vnodes), 1, 65_536)?;
        range(
            "store.max_connections",
            u64::from(self.store.max_connections),
            1,
            256,
        )?;
        range("http.body_limit", self.http.body_limit as u64, 1, 1 << 30)?;
        range("graphql.max_depth", self.graphql.max_depth as u64, 1, 1000)?;
        range(
            "graphql.max_complexity",
            self.graphql.max_complexity as u64,
            1,
            1_000_000,
        )?;
        if self.http.request_timeout.is_zero() {
            return Err(ConfigError(
                "`http.request_timeout` is 0; expected a duration such as `30s`".into(),
            ));
        }
        bazaar_telemetry::logging::validate_filter(&self.log.filter)
            .map_err(|e| ConfigError(format!("`log.filter`: {e}")))?;
        Ok(())
    }

    /// The effective configuration as TOML, with secret values replaced by `"[redacted]"`.
    pub fn to_redacted_toml(&self) -> String {
        let mut value = toml::Value::try_from(self).expect("the configuration serialises to TOML");
        redact(&mut value);
        toml::to_string_pretty(&value).expect("a TOML value prints")
    }
}

/// Turns figment's error into one line per problem, naming the key, where the value came
/// from, and the form that was expected.
fn describe(error: figment::Error) -> ConfigError {
    let lines: Vec<String> = error
        .into_iter()
        .map(|e| {
            let key = e.path.join(".");
            let origin = match &e.metadata {
                Some(m) if m.name.contains("environment") && !key.is_empty() => {
                    format!(
                        " (from environment variable BAZAAR_{})",
                        key.replace('.', "__").to_uppercase()
                    )
                }
                Some(m) => match &m.source {
                    Some(source) => format!(" (from {source})"),
                    None => format!(" (from {})", m.name),
                },
                None => String::new(),
            };
            let expected = expected_form(&key)
                .map(|form| format!(" (write it as {form})"))
                .unwrap_or_default();
            let key = if key.is_empty() {
                "<root>".to_owned()
            } else {
                key
            };
            format!("`{key}`{origin}: {}{expected}", e.kind)
        })
        .collect();
    ConfigError(lines.join("; "))
}

/// The accepted form of keys whose type alone does not say it.
fn expected_form(key: &str) -> Option<&'static str> {
    Some(match key {
        "http.listen" => "a socket address such as 127.0.0.1:8080",
        "http.request_timeout" | "http.shutdown_grace" | "store.busy_timeout" => {
            "a duration such as 30s, 500ms or 2m"
        }
        "store.durability" => "`full` or `normal`",
        "log.format" => "`pretty` or `json`",
        "store.data_dir" => "a directory path",
        _ => return None,
    })
}

/// Key names whose values are secrets wherever they appear.
const SECRET_WORDS: &[&str] = &["password", "secret", "token", "key", "credentials"];

fn redact(value: &mut toml::Value) {
    if let toml::Value::Table(table) = value {
        for (key, value) in table.iter_mut() {
            let is_secret = key.split('_').any(|word| SECRET_WORDS.contains(&word));
            let has_userinfo = value
                .as_str()
                .is_some_and(|s| s.contains("://") && s.contains('@'));
            if is_secret || has_userinfo {
                *value = toml::Value::String("[redacted]".into());
            } else {
                redact(value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_and_credentials_in_urls_are_redacted() {
        let mut value: toml::Value = toml::from_str(
            r#"
            [store]
            shards = 4
            postgres_url = "postgres://bazaar:hunter2@db:5432/bazaar"
            [auth]
            jwt_secret = "s3cr3t"
            api_key = "k"
            keyspace = "public"
            "#,
        )
        .unwrap();
        redact(&mut value);
        let text = toml::to_string(&value).unwrap();
        assert!(
            !text.contains("hunter2") && !text.contains("s3cr3t"),
            "{text}"
        );
        assert!(text.contains("api_key = \"[redacted]\""), "{text}");
        assert!(text.contains("keyspace = \"public\""), "{text}");
        assert!(text.contains("shards = 4"), "{text}");
    }
}
