//! The key file: access-token signing keys, personal-data encryption keys and the blind-index
//! key, kept apart from the configuration so that `config print` and logs never touch them.
//!
//! On first start the file is created with fresh random keys and mode 0600. Rotation
//! appends a key and keeps the old ones for as long as data or tokens may still need them:
//! `bazaar keys rotate-jwt` (old access-token keys are dropped once every token they signed
//! has expired) and `bazaar privacy rotate-key` (a new encryption key, then every user row is
//! re-sealed under it).

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bazaar_gateway::tokens::SigningKey;
use bazaar_shop::crypto::{BlindIndex, PiiCipher, SecretKey};
use serde::{Deserialize, Serialize};

use crate::config::Config;

/// The key file's content.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Secrets {
    /// Oldest first; the last one signs.
    pub jwt_keys: Vec<JwtKey>,
    pub pii_keys: Vec<PiiKey>,
    pub active_pii_key: u8,
    pub blind_index_key: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtKey {
    pub id: String,
    pub secret: String,
    pub created_at_ms: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PiiKey {
    pub id: u8,
    pub key: String,
}

/// Where the key file of `config` is.
pub fn path(config: &Config) -> PathBuf {
    config
        .auth
        .secrets_file
        .clone()
        .unwrap_or_else(|| config.store.data_dir.join("secrets.toml"))
}

fn fresh_key() -> String {
    STANDARD.encode(SecretKey::generate().expose())
}

fn decode_key(what: &str, encoded: &str) -> anyhow::Result<SecretKey> {
    let bytes = STANDARD
        .decode(encoded)
        .with_context(|| format!("{what} is not base64"))?;
    let bytes: [u8; 32] = bytes
        .try_into()
        .map_err(|_| anyhow::anyhow!("{what} must be 32 bytes"))?;
    Ok(SecretKey::from_bytes(bytes))
}

impl Secrets {
    fn generate() -> Self {
        Self {
            jwt_keys: vec![JwtKey {
                id: jwt_key_id(),
                secret: fresh_key(),
                created_at_ms: bazaar_shop::now_ms(),
            }],
            pii_keys: vec![PiiKey {
                id: 1,
                key: fresh_key(),
            }],
            active_pii_key: 1,
            blind_index_key: fresh_key(),
        }
    }

    /// Reads the key file, creating it with fresh keys if it does not exist.
    pub fn load_or_create(path: &Path) -> anyhow::Result<Self> {
        if path.exists() {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read key file {}", path.display()))?;
            let secrets: Self = toml::from_str(&text)
                .with_context(|| format!("key file {} is malformed", path.display()))?;
            secrets
                .validate()
                .with_context(|| format!("key file {} is invalid", path.display()))?;
            return Ok(secrets);
        }
        let secrets = Self::generate();
        secrets.save(path)?;
        tracing::info!(path = %path.display(), "created a key file with fresh keys");
        Ok(secrets)
    }

    /// Writes the file atomically (temporary file, then rename) with mode 0600.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let text = format!(
            "# Bazaar's keys. Keep this file secret and backed up: without it, stored personal\n\
             # data cannot be decrypted and every session ends.\n{}",
            toml::to_string_pretty(self).context("keys serialise")?
        );
        let temporary = path.with_extension("toml.tmp");
        {
            use std::io::Write;
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut file = options
                .open(&temporary)
                .with_context(|| format!("cannot write {}", temporary.display()))?;
            file.write_all(text.as_bytes())?;
            file.sync_all()?;
        }
        std::fs::rename(&temporary, path)
            .with_context(|| format!("cannot replace {}", path.display()))?;
        Ok(())
    }

    fn validate(&self) -> anyhow::Result<()> {
        if self.jwt_keys.is_empty() {
            bail!("it holds no access-token key");
        }
        for key in &self.jwt_keys {
            decode_key(&format!("access-token key `{}`", key.id), &key.secret)?;
        }
        for key in &self.pii_keys {
            decode_key(&format!("personal-data key {}", key.id), &key.key)?;
        }
        if !self.pii_keys.iter().any(|k| k.id == self.active_pii_key) {
            bail!(
                "the active personal-data key {} is not in the file",
                self.active_pii_key
            );
        }
        decode_key("the blind-index key", &self.blind_index_key)?;
        Ok(())
    }

    pub fn signing_keys(&self) -> anyhow::Result<Vec<SigningKey>> {
        self.jwt_keys
            .iter()
            .map(|k| {
                Ok(SigningKey {
                    id: k.id.clone(),
                    secret: decode_key("access-token key", &k.secret)?.expose().to_vec(),
                })
            })
            .collect()
    }

    pub fn pii_cipher(&self) -> anyhow::Result<PiiCipher> {
        let keys = self
            .pii_keys
            .iter()
            .map(|k| Ok((k.id, decode_key("personal-data key", &k.key)?)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(PiiCipher::new(keys, self.active_pii_key))
    }

    pub fn blind_index(&self) -> anyhow::Result<BlindIndex> {
        Ok(BlindIndex::new(decode_key(
            "blind-index key",
            &self.blind_index_key,
        )?))
    }

    /// Adds a new signing key and drops keys whose every token has expired: a key can go once
    /// its successor has been signing for longer than `access_ttl_ms`.
    pub fn rotate_jwt(&mut self, access_ttl_ms: i64) -> String {
        let now = bazaar_shop::now_ms();
        let id = jwt_key_id();
        self.jwt_keys.push(JwtKey {
            id: id.clone(),
            secret: fresh_key(),
            created_at_ms: now,
        });
        let keep_from = (1..self.jwt_keys.len())
            .rev()
            .find(|&i| now - self.jwt_keys[i].created_at_ms > access_ttl_ms)
            .unwrap_or(0);
        self.jwt_keys.drain(..keep_from);
        id
    }

    /// Adds a new personal-data key and makes it the active one; returns its id.
    pub fn rotate_pii(&mut self) -> anyhow::Result<u8> {
        let id = self
            .pii_keys
            .iter()
            .map(|k| k.id)
            .max()
            .unwrap_or(0)
            .checked_add(1)
            .context("all 255 key ids are used")?;
        self.pii_keys.push(PiiKey {
            id,
            key: fresh_key(),
        });
        self.active_pii_key = id;
        Ok(id)
    }
}

fn jwt_key_id() -> String {
    format!("k{}", bazaar_shop::now_ms())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_file_is_created_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets.toml");
        let created = Secrets::load_or_create(&path).unwrap();
        let loaded = Secrets::load_or_create(&path).unwrap();
        assert_eq!(created.blind_index_key, loaded.blind_index_key);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        std::fs::write(&path, "jwt_keys = []\n").unwrap();
        assert!(
            Secrets::load_or_create(&path).is_err(),
            "a broken key file must stop start-up"
        );
    }

    #[test]
    fn rotating_keeps_keys_until_their_tokens_have_expired() {
        let mut secrets = Secrets::generate();
        secrets.jwt_keys[0].created_at_ms -= 10_000;
        secrets.rotate_jwt(60_000);
        assert_eq!(
            secrets.jwt_keys.len(),
            2,
            "the old key's tokens may still be alive"
        );
        // Pretend the second key has been signing for longer than a token lives.
        secrets.jwt_keys[1].created_at_ms -= 120_000;
        secrets.rotate_jwt(60_000);
        assert_eq!(secrets.jwt_keys.len(), 2, "the first key is retired");
        assert_eq!(secrets.rotate_pii().unwrap(), 2);
        assert_eq!(secrets.active_pii_key, 2);
        assert!(secrets.pii_cipher().is_ok());
    }
}
