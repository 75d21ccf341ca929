//! The cryptography of identity: password hashing, sealing personal data, blind indexes and
//! token hashes. Every primitive comes from a RustCrypto crate; this module only chooses
//! parameters and formats.
//!
//! # Formats
//!
//! * Sealed personal data: `[key id: 1 byte][nonce: 24 bytes][XChaCha20-Poly1305 ciphertext]`.
//!   The key id lets old rows be read after a new key becomes active, and `bazaar privacy
//!   reencrypt` moves them to it. Random 192-bit nonces never repeat in practice.
//! * Blind index: HMAC-SHA256 of the normalised email under its own key, so equal emails can
//!   be found (uniqueness, login) without storing or revealing the email.
//! * Token hashes: SHA-256 of a random secret. Tokens carry 256 bits of entropy, so a fast
//!   hash is enough; passwords, which carry far less, get argon2id.

use std::collections::BTreeMap;
use std::fmt;

use argon2::{Algorithm, Argon2, Params, PasswordHasher as _, PasswordVerifier as _, Version};
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use rand::Rng;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// A 256-bit secret key. Its `Debug` never shows the bytes.
#[derive(Clone)]
pub struct SecretKey(Zeroizing<[u8; 32]>);

impl SecretKey {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// A fresh key from the operating system's CSPRNG.
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        Self::from_bytes(bytes)
    }

    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey([redacted])")
    }
}

/// Why sealed data could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("sealed data names key {0}, which is not configured")]
    UnknownKey(u8),
    #[error("sealed data is truncated or was not produced by this system")]
    Malformed,
    #[error("sealed data failed authentication: wrong key or tampered")]
    Tampered,
}

/// Seals and opens personal data with AEAD keys named by a one-byte id.
#[derive(Clone)]
pub struct PiiCipher {
    keys: BTreeMap<u8, XChaCha20Poly1305>,
    active: u8,
}

impl fmt::Debug for PiiCipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PiiCipher")
            .field("key_ids", &self.keys.keys().collect::<Vec<_>>())
            .field("active", &self.active)
            .finish()
    }
}

const NONCE_LEN: usize = 24;

impl PiiCipher {
    /// A cipher that seals with `active` and opens with any of `keys`.
    ///
    /// # Panics
    /// If `active` is not among `keys` (a configuration bug caught at start-up).
    pub fn new(keys: impl IntoIterator<Item = (u8, SecretKey)>, active: u8) -> Self {
        let keys: BTreeMap<u8, XChaCha20Poly1305> = keys
            .into_iter()
            .map(|(id, key)| (id, XChaCha20Poly1305::new(key.expose().into())))
            .collect();
        assert!(
            keys.contains_key(&active),
            "the active PII key {active} is not configured"
        );
        Self { keys, active }
    }

    /// The id of the key that seals.
    pub fn active_key(&self) -> u8 {
        self.active
    }

    pub fn seal(&self, plaintext: &str) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let ciphertext = self.keys[&self.active]
            .encrypt(&XNonce::from(nonce), plaintext.as_bytes())
            .expect("XChaCha20-Poly1305 encryption does not fail for in-memory data");
        let mut out = Vec::with_capacity(1 + NONCE_LEN + ciphertext.len());
        out.push(self.active);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ciphertext);
        out
    }

    pub fn open(&self, sealed: &[u8]) -> Result<String, CryptoError> {
        let (&key_id, rest) = sealed.split_first().ok_or(CryptoError::Malformed)?;
        if rest.len() < NONCE_LEN {
            return Err(CryptoError::Malformed);
        }
        let cipher = self
            .keys
            .get(&key_id)
            .ok_or(CryptoError::UnknownKey(key_id))?;
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| CryptoError::Malformed)?;
        let plaintext = cipher
            .decrypt(&XNonce::from(nonce), ciphertext)
            .map_err(|_| CryptoError::Tampered)?;
        String::from_utf8(plaintext).map_err(|_| CryptoError::Malformed)
    }

    /// The key id `sealed` was sealed with.
    pub fn key_of(sealed: &[u8]) -> Option<u8> {
        sealed.first().copied()
    }
}

/// Keyed hashes of normalised identifiers (emails) for lookups without plaintext.
#[derive(Clone)]
pub struct BlindIndex(SecretKey);

impl fmt::Debug for BlindIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BlindIndex([redacted])")
    }
}

impl BlindIndex {
    pub fn new(key: SecretKey) -> Self {
        Self(key)
    }

    pub fn of(&self, normalised: &str) -> Vec<u8> {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(self.0.expose())
            .expect("HMAC takes any key length");
        mac.update(normalised.as_bytes());
        mac.finalize().into_bytes().to_vec()
    }
}

/// SHA-256 of a high-entropy token secret.
pub fn token_hash(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

/// `bytes` random bytes, hex-encoded: token and key secrets.
pub fn random_secret(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// Constant-time equality for secrets' hashes.
pub fn same_hash(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// Argon2id cost parameters. The defaults are OWASP's first recommendation
/// (m = 19 MiB, t = 2, p = 1); configuration may raise them, never lower them below that.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArgonParams {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

impl ArgonParams {
    /// OWASP's minimum for argon2id.
    pub const OWASP_MINIMUM: Self = Self {
        memory_kib: 19 * 1024,
        iterations: 2,
        parallelism: 1,
    };

    /// Whether these parameters are at least as costly as OWASP's minimum.
    pub fn meets_owasp_minimum(&self) -> bool {
        self.memory_kib >= Self::OWASP_MINIMUM.memory_kib
            && self.iterations >= Self::OWASP_MINIMUM.iterations
            && self.parallelism >= 1
    }
}

impl Default for ArgonParams {
    fn default() -> Self {
        Self::OWASP_MINIMUM
    }
}

/// Hashes and verifies passwords with argon2id, keeping a hash of a random password for
/// unknown accounts so that "no such user" costs the same as "wrong password".
#[derive(Clone)]
pub struct Passwords {
    argon: Argon2<'static>,
    dummy_hash: String,
}

impl fmt::Debug for Passwords {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Passwords")
            .field("params", self.argon.params())
            .finish()
    }
}

impl Passwords {
    pub fn new(params: ArgonParams) -> Result<Self, String> {
        let params = Params::new(
            params.memory_kib,
            params.iterations,
            params.parallelism,
            None,
        )
        .map_err(|e| format!("invalid argon2 parameters: {e}"))?;
        let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let mut passwords = Self {
            argon,
            dummy_hash: String::new(),
        };
        passwords.dummy_hash = passwords.hash(&random_secret(16));
        Ok(passwords)
    }

    /// The PHC string of `password` under a fresh salt. CPU-heavy: call off the async threads.
    pub fn hash(&self, password: &str) -> String {
        let mut salt = [0u8; 16];
        rand::rng().fill_bytes(&mut salt);
        self.argon
            .hash_password_with_salt(password.as_bytes(), &salt)
            .expect("argon2 hashing of a valid input succeeds")
            .to_string()
    }

    /// Whether `password` matches `phc`. A malformed stored hash never matches.
    pub fn verify(&self, password: &str, phc: &str) -> bool {
        // Parses `phc` (a parse failure is an error, so never a match), then hashes with the
        // algorithm, version, parameters and salt it names.
        self.argon.verify_password(password.as_bytes(), phc).is_ok()
    }

    /// Spends the same work as a real verification against nothing: the unknown-account path.
    pub fn verify_dummy(&self, password: &str) {
        let _ = self.verify(password, &self.dummy_hash);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cipher(keys: &[u8], active: u8) -> PiiCipher {
        PiiCipher::new(
            keys.iter().map(|&id| (id, SecretKey::from_bytes([id; 32]))),
            active,
        )
    }

    #[test]
    fn sealed_data_opens_only_with_its_key_and_untampered() {
        let one = cipher(&[1], 1);
        let sealed = one.seal("ada@example.com");
        assert_eq!(one.open(&sealed).unwrap(), "ada@example.com");
        assert!(
            !sealed.windows(3).any(|w| w == b"ada"),
            "plaintext leaked into the sealed bytes"
        );
        assert_ne!(one.seal("ada@example.com"), sealed, "nonces are fresh");

        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(matches!(one.open(&tampered), Err(CryptoError::Tampered)));
        assert!(matches!(
            one.open(&sealed[..10]),
            Err(CryptoError::Malformed)
        ));
        assert!(matches!(
            cipher(&[2], 2).open(&sealed),
            Err(CryptoError::UnknownKey(1))
        ));
    }

    #[test]
    fn a_rotated_cipher_reads_old_data_and_seals_with_the_new_key() {
        let old = cipher(&[1], 1).seal("x");
        let rotated = cipher(&[1, 2], 2);
        assert_eq!(rotated.open(&old).unwrap(), "x");
        assert_eq!(PiiCipher::key_of(&rotated.seal("x")), Some(2));
    }

    #[test]
    fn blind_indexes_are_keyed_and_deterministic() {
        let a = BlindIndex::new(SecretKey::from_bytes([7; 32]));
        let b = BlindIndex::new(SecretKey::from_bytes([8; 32]));
        assert_eq!(a.of("ada@example.com"), a.of("ada@example.com"));
        assert_ne!(a.of("ada@example.com"), a.of("bob@example.com"));
        assert_ne!(a.of("ada@example.com"), b.of("ada@example.com"));
    }

    #[test]
    fn passwords_verify_and_hashes_are_argon2id_with_the_configured_cost() {
        let passwords = Passwords::new(ArgonParams {
            memory_kib: 8 * 1024,
            iterations: 1,
            parallelism: 1,
        })
        .unwrap();
        let hash = passwords.hash("correct horse battery");
        assert!(hash.starts_with("$argon2id$v=19$m=8192,t=1,p=1$"), "{hash}");
        assert!(passwords.verify("correct horse battery", &hash));
        assert!(!passwords.verify("correct horse battery!", &hash));
        assert!(!passwords.verify("anything", "not a phc string"));
        assert!(ArgonParams::default().meets_owasp_minimum());
        assert!(
            !ArgonParams {
                memory_kib: 1024,
                iterations: 2,
                parallelism: 1
            }
            .meets_owasp_minimum()
        );
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Values written by the crates this module used before (argon2 0.5, chacha20poly1305
    /// 0.10, hmac 0.12, sha2 0.10), produced with those crates: stored password hashes, sealed
    /// personal data, blind indexes and token hashes must survive a dependency upgrade.
    #[test]
    fn data_stored_with_the_previous_crypto_crates_still_verifies_and_opens() {
        const OLD_HASH: &str = "$argon2id$v=19$m=8192,t=1,p=1$BQUFBQUFBQUFBQUFBQUFBQ$\
                                zJzGPShHyM+Za2ht8eTZSGUDcA0g6w8jsMO2953zKBY";
        let passwords = Passwords::new(ArgonParams {
            memory_kib: 8 * 1024,
            iterations: 1,
            parallelism: 1,
        })
        .unwrap();
        assert!(passwords.verify("correct horse battery staple", OLD_HASH));
        assert!(!passwords.verify("correct horse battery stapler", OLD_HASH));
        let again = passwords
            .argon
            .hash_password_with_salt(b"correct horse battery staple", &[5; 16])
            .unwrap();
        assert_eq!(again.to_string(), OLD_HASH, "the PHC encoding is unchanged");

        let index = BlindIndex::new(SecretKey::from_bytes([7; 32])).of("ada@example.com");
        assert_eq!(
            hex(&index),
            "c7f22a2b3094d750db28d69f809d573dd31e83e3e055f10751bac935b296006f"
        );
        assert_eq!(
            hex(&token_hash("token-secret")),
            "f72d046e44f17abcd6793067e816c9041da17939a0bfeb8c0e3f86bef323eb81"
        );

        let sealed_hex = "01090909090909090909090909090909090909090909090909\
                          9289ded63bbe590f2341950d742184b2b79c0a7ee283f2d3404074b4c18f28";
        let sealed: Vec<u8> = (0..sealed_hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&sealed_hex[i..i + 2], 16).unwrap())
            .collect();
        assert_eq!(cipher(&[1], 1).open(&sealed).unwrap(), "ada@example.com");
    }

    #[test]
    fn debug_output_never_shows_key_material() {
        let key = SecretKey::from_bytes([0xAB; 32]);
        assert!(!format!("{key:?}").contains("171"));
        assert!(!format!("{:?}", cipher(&[1], 1)).contains("171"));
    }
}
