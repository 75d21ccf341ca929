//! Access tokens: JWTs signed with HS256 under named, rotating keys.
//!
//! The algorithm is pinned: verification accepts HS256 only, so `alg: none` and algorithm
//! confusion are refused by construction. Each key has an id (`kid` in the header); the newest
//! key signs, and every configured key verifies, so a rotation keeps tokens signed by the old
//! key valid until they expire ([`AccessTokens::ttl`], 15 minutes by default) — after which
//! the old key can be dropped.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bazaar_shop::ShopError;
use bazaar_shop::accounts::Session;
use bazaar_store::{SessionId, UserId};
use jsonwebtoken::{
    Algorithm, DecodingKey, EncodingKey, Header, Validation, decode, decode_header, encode,
};
use serde::{Deserialize, Serialize};

/// One signing key.
#[derive(Clone)]
pub struct SigningKey {
    /// The `kid` tokens signed with it carry.
    pub id: String,
    pub secret: Vec<u8>,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("id", &self.id)
            .field("secret", &"[redacted]")
            .finish()
    }
}

/// The claims of an access token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    /// The user id.
    pub sub: String,
    /// The session id; checked against the store on every request.
    pub sid: String,
    pub iat: u64,
    pub nbf: u64,
    pub exp: u64,
}

impl Claims {
    pub fn user(&self) -> Result<UserId, ShopError> {
        self.sub
            .parse()
            .map_err(|_| ShopError::Unauthenticated("the access token names no valid user"))
    }

    pub fn session(&self) -> Result<SessionId, ShopError> {
        self.sid
            .parse()
            .map_err(|_| ShopError::Unauthenticated("the access token names no valid session"))
    }
}

/// Why a token was refused.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("token header names no key id")]
    NoKeyId,
    #[error("token was signed with unknown key `{0}`")]
    UnknownKey(String),
    #[error(transparent)]
    Invalid(#[from] jsonwebtoken::errors::Error),
}

/// Issues and verifies access tokens.
#[derive(Clone)]
pub struct AccessTokens {
    keys: Vec<(String, EncodingKey, DecodingKey)>,
    issuer: String,
    audience: String,
    ttl: Duration,
}

impl fmt::Debug for AccessTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessTokens")
            .field(
                "key_ids",
                &self.keys.iter().map(|k| &k.0).collect::<Vec<_>>(),
            )
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("ttl", &self.ttl)
            .finish()
    }
}

impl AccessTokens {
    /// `keys` oldest first: the last one signs, all verify.
    ///
    /// # Panics
    /// If `keys` is empty or a key's secret is empty (configuration errors caught at start-up:
    /// the secrets file's keys are 32 bytes).
    pub fn new(keys: &[SigningKey], issuer: &str, audience: &str, ttl: Duration) -> Self {
        assert!(!keys.is_empty(), "at least one access-token key is needed");
        // jsonwebtoken refuses an HMAC secret only when it is empty.
        const VALID: &str = "a non-empty HMAC secret is a valid key";
        Self {
            keys: keys
                .iter()
                .map(|k| {
                    assert!(!k.secret.is_empty(), "access-token key `{}` is empty", k.id);
                    (
                        k.id.clone(),
                        EncodingKey::from_secret(&k.secret).expect(VALID),
                        DecodingKey::from_secret(&k.secret).expect(VALID),
                    )
                })
                .collect(),
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            ttl,
        }
    }

    /// How long an access token lives.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// An access token for `session`, signed with the newest key.
    pub fn issue(&self, session: &Session) -> String {
        let now = unix_now();
        let claims = Claims {
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            sub: session.user.to_string(),
            sid: session.session.to_string(),
            iat: now,
            nbf: now,
            exp: now + self.ttl.as_secs(),
        };
        let (kid, key, _) = self.keys.last().expect("at least one key");
        let header = Header {
            kid: Some(kid.clone()),
            ..Header::new(Algorithm::HS256)
        };
        encode(&header, &claims, key).expect("HS256 signing of serialisable claims succeeds")
    }

    /// The claims of a valid token: right algorithm, known key, good signature, this issuer and
    /// audience, inside its `nbf`..`exp` window.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let header = decode_header(token)?;
        let kid = header.kid.ok_or(TokenError::NoKeyId)?;
        let (_, _, key) = self
            .keys
            .iter()
            .find(|k| k.0 == kid)
            .ok_or(TokenError::UnknownKey(kid))?;
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.validate_nbf = true;
        validation.leeway = 5;
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        Ok(decode::<Claims>(token, key, &validation)?.claims)
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bazaar_store::Role;

    fn key(id: &str, byte: u8) -> SigningKey {
        SigningKey {
            id: id.into(),
            secret: vec![byte; 32],
        }
    }

    fn session() -> Session {
        Session {
            user: UserId::new(7),
            role: Role::Customer,
            session: SessionId::new(9),
            refresh_token: String::new(),
        }
    }

    fn tokens(keys: &[SigningKey]) -> AccessTokens {
        AccessTokens::new(keys, "bazaar", "bazaar-api", Duration::from_secs(900))
    }

    fn b64(bytes: &[u8]) -> String {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    #[test]
    fn a_token_verifies_and_carries_the_session() {
        let tokens = tokens(&[key("k1", 1)]);
        let claims = tokens.verify(&tokens.issue(&session())).unwrap();
        assert_eq!((claims.sub.as_str(), claims.sid.as_str()), ("7", "9"));
        assert_eq!(claims.exp - claims.iat, 900);
    }

    #[test]
    #[should_panic(expected = "access-token key `k0` is empty")]
    fn an_empty_key_is_refused_when_the_tokens_are_built() {
        let empty = SigningKey {
            id: "k0".into(),
            secret: Vec::new(),
        };
        tokens(&[key("k1", 1), empty]);
    }

    #[test]
    fn rotation_signs_with_the_new_key_and_still_verifies_the_old() {
        let old = tokens(&[key("k1", 1)]);
        let rotated = tokens(&[key("k1", 1), key("k2", 2)]);
        let old_token = old.issue(&session());
        assert!(rotated.verify(&old_token).is_ok());
        let new_token = rotated.issue(&session());
        assert_eq!(
            decode_header(&new_token).unwrap().kid.as_deref(),
            Some("k2")
        );
        // Once the old key is dropped its tokens stop verifying.
        let retired = tokens(&[key("k2", 2)]);
        assert!(matches!(
            retired.verify(&old_token),
            Err(TokenError::UnknownKey(_))
        ));
    }

    #[test]
    fn forged_expired_and_misaddressed_tokens_are_refused() {
        let tokens = tokens(&[key("k1", 1)]);
        let good = tokens.issue(&session());
        let parts: Vec<&str> = good.split('.').collect();

        // alg: none, no signature.
        let none = format!(
            "{}.{}.",
            b64(br#"{"alg":"none","typ":"JWT","kid":"k1"}"#),
            parts[1]
        );
        assert!(tokens.verify(&none).is_err(), "alg none accepted");
        // HS512 header over the same payload.
        let hs512 = format!(
            "{}.{}.{}",
            b64(br#"{"alg":"HS512","typ":"JWT","kid":"k1"}"#),
            parts[1],
            parts[2]
        );
        assert!(tokens.verify(&hs512).is_err(), "another algorithm accepted");
        // A key the verifier does not have, under the same kid.
        let wrong_key = AccessTokens::new(
            &[key("k1", 9)],
            "bazaar",
            "bazaar-api",
            Duration::from_secs(900),
        );
        assert!(
            tokens.verify(&wrong_key.issue(&session())).is_err(),
            "wrong key accepted"
        );
        // A tampered payload keeps the old signature.
        let now = unix_now();
        let forged = format!(
            r#"{{"iss":"bazaar","aud":"bazaar-api","sub":"1","sid":"9","iat":{now},"nbf":{now},"exp":{}}}"#,
            now + 900
        );
        let tampered = format!("{}.{}.{}", parts[0], b64(forged.as_bytes()), parts[2]);
        assert!(
            tokens.verify(&tampered).is_err(),
            "tampered payload accepted"
        );
        // Expired.
        let expired = AccessTokens::new(&[key("k1", 1)], "bazaar", "bazaar-api", Duration::ZERO);
        let claims = Claims {
            exp: now - 60,
            nbf: now - 120,
            iat: now - 120,
            ..tokens.verify(&good).unwrap()
        };
        let header = Header {
            kid: Some("k1".into()),
            ..Header::new(Algorithm::HS256)
        };
        let stale = encode(
            &header,
            &claims,
            &EncodingKey::from_secret(&[1; 32]).unwrap(),
        )
        .unwrap();
        assert!(
            expired.verify(&stale).is_err() && tokens.verify(&stale).is_err(),
            "expired token accepted"
        );
        // Another audience.
        let elsewhere = AccessTokens::new(
            &[key("k1", 1)],
            "bazaar",
            "other-api",
            Duration::from_secs(900),
        );
        assert!(
            tokens.verify(&elsewhere.issue(&session())).is_err(),
            "wrong audience accepted"
        );
        // Not yet valid.
        let future = Claims {
            nbf: now + 3600,
            exp: now + 7200,
            ..claims
        };
        let early = encode(
            &header,
            &future,
            &EncodingKey::from_secret(&[1; 32]).unwrap(),
        )
        .unwrap();
        assert!(tokens.verify(&early).is_err(), "token before nbf accepted");
        // Garbage.
        assert!(tokens.verify("not.a.jwt").is_err());
    }
}
