//! Accounts: sign-up, sign-in, refresh-token rotation, sign-out and profiles.
//!
//! # Where things live
//!
//! A user row lives on the shard that owns the user id. Its email is sealed (AEAD) and found
//! through a blind index: the directory shard maps `HMAC(normalised email)` to the user id,
//! and its primary key is what makes an email unique across shards. Sign-up claims the
//! directory entry first and writes the user row second; if the second step fails the claim
//! is released, and a claim whose user row never appeared is reclaimed after
//! [`ORPHAN_CLAIM_AFTER_MS`], so a crash between the steps cannot lock an email out for ever.
//!
//! # Tokens
//!
//! A refresh token is `{user id}.{session id}.{secret}`: the ids route it to the user's shard,
//! the 256-bit secret is what proves possession, and only its SHA-256 is stored. Each use
//! rotates it; a second use of the same token revokes the whole session (reuse detection).
//! Access tokens (JWTs) are minted by the gateway from what [`Session`] returns.

use std::sync::Arc;
use std::time::Duration;

use bazaar_store::prelude::*;
use bazaar_store::{
    EmailClaim, IdGenerator, RefreshOutcome, RefreshRecord, Role, SessionId, Store, UserId,
    UserRecord,
};

use bazaar_cache::Cached;

use crate::audit::Audit;
use crate::authz::{Action, Principal, authorize};
use crate::crypto::{BlindIndex, Passwords, PiiCipher, random_secret, token_hash};
use crate::error::ShopError;
use crate::{Actor, now_ms};

/// A directory claim older than this whose user row does not exist was left by a sign-up that
/// died half-way, and may be taken over.
pub const ORPHAN_CLAIM_AFTER_MS: i64 = 60_000;

/// Settings of the accounts service.
#[derive(Debug, Clone)]
pub struct AccountsConfig {
    /// How long a refresh token may wait to be used.
    pub refresh_ttl: Duration,
}

impl Default for AccountsConfig {
    fn default() -> Self {
        Self {
            refresh_ttl: Duration::from_secs(30 * 24 * 3600),
        }
    }
}

/// A user's full profile, decrypted: for the user and for admins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    pub id: UserId,
    pub email: String,
    pub phone: Option<String>,
    pub name: String,
    pub role: Role,
    pub created_at_ms: i64,
}

/// What anyone may see of a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicProfile {
    pub id: UserId,
    pub name: String,
    pub role: Role,
    pub created_at_ms: i64,
}

/// A profile as the asking principal may see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserView {
    Full(Profile),
    Public(PublicProfile),
}

/// A freshly started or rotated session: what the gateway turns into an access token, and the
/// refresh token to hand to the client once.
#[derive(Debug, Clone)]
pub struct Session {
    pub user: UserId,
    pub role: Role,
    pub session: SessionId,
    pub refresh_token: String,
}

/// Sign-up input, unvalidated.
#[derive(Debug, Clone)]
pub struct Signup {
    pub email: String,
    pub password: String,
    pub name: String,
    pub role: Option<String>,
}

/// Profile changes; `None` leaves a field alone, `Some(None)` clears the phone.
#[derive(Debug, Clone, Default)]
pub struct ProfilePatch {
    pub name: Option<String>,
    pub phone: Option<Option<String>>,
}

/// The accounts service. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Accounts {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Arc<Store>,
    passwords: Passwords,
    pii: PiiCipher,
    index: BlindIndex,
    ids: Arc<IdGenerator>,
    audit: Audit,
    config: AccountsConfig,
    /// Copies of user rows for profile reads (`GET /users/{id}`, `/users/me`), cache-aside
    /// by default. Credentials are never read from it: sign-in and API keys always go to
    /// the store.
    users: Option<UserCache>,
}

/// The user cache: sealed user rows, as stored, or their absence. In-process only (no
/// Redis tier): the rows hold password hashes, which stay out of shared caches.
pub type UserCache = Cached<UserId, Option<Arc<UserRecord>>>;

impl Accounts {
    pub fn new(
        store: Arc<Store>,
        passwords: Passwords,
        pii: PiiCipher,
        index: BlindIndex,
        ids: Arc<IdGenerator>,
        config: AccountsConfig,
        users: Option<UserCache>,
    ) -> Self {
        let audit = Audit::new(store.clone());
        Self {
            inner: Arc::new(Inner {
                store,
                passwords,
                pii,
                index,
                ids,
                audit,
                config,
                users,
            }),
        }
    }

    /// The audit log these accounts write to.
    pub fn audit(&self) -> &Audit {
        &self.inner.audit
    }

    /// The key that throttles sign-in attempts for one account, without revealing its email.
    pub fn login_throttle_key(&self, email: &str) -> String {
        let index = self.inner.index.of(&normalise_email(email));
        let hex: String = index.iter().take(12).map(|b| format!("{b:02x}")).collect();
        format!("login:{hex}")
    }

    /// Registers a customer or seller and starts their first session.
    pub async fn signup(
        &self,
        actor: &Actor,
        input: Signup,
    ) -> Result<(Profile, Session), ShopError> {
        let email = parse_email(&input.email)?;
        let name = parse_name(&input.name)?;
        let role = match input.role.as_deref() {
            None | Some("customer") => Role::Customer,
            Some("seller") => Role::Seller,
            Some("admin") => {
                return Err(ShopError::field(
                    "role",
                    "admins are created with `bazaar admin create`, not over the API",
                ));
            }
            Some(other) => {
                return Err(ShopError::field(
                    "role",
                    format!("expected customer or seller, found `{other}`"),
                ));
            }
        };
        check_password(&input.password, &email)?;
        let profile = self
            .create_user(&email, &input.password, &name, role)
            .await?;
        self.inner
            .audit
            .record(
                actor,
                "signup",
                &format!("user:{}", profile.id),
                role.as_str(),
            )
            .await;
        tracing::info!(user = %profile.id, email = %mask_email(&email), %role, "account created");
        let session = self.start_session(profile.id, role).await?;
        Ok((profile, session))
    }

    /// Creates an administrator: for the command line only.
    pub async fn create_admin(
        &self,
        email: &str,
        password: &str,
        name: &str,
    ) -> Result<Profile, ShopError> {
        let email = parse_email(email)?;
        let name = parse_name(name)?;
        check_password(password, &email)?;
        let profile = self
            .create_user(&email, password, &name, Role::Admin)
            .await?;
        let cli = Actor {
            principal: Principal::Anonymous,
            request_id: None,
        };
        self.inner
            .audit
            .record_as(
                &cli,
                "cli",
                "admin.create",
                &format!("user:{}", profile.id),
                "",
            )
            .await;
        Ok(profile)
    }

    /// Creates one of the demo catalog's sellers under the id its products name as their
    /// owner (`demo::seller_ids`): for seeding only, never reachable over the API. Like any
    /// account, the password is hashed and the email sealed. An account already stored under
    /// `id` (a seed interrupted after its accounts were written) is left as it is.
    pub async fn create_demo_seller(
        &self,
        id: UserId,
        email: &str,
        password: &str,
        name: &str,
    ) -> Result<(), ShopError> {
        if self.inner.store.for_user(id).user(id).await?.is_some() {
            return Ok(());
        }
        let email = parse_email(email)?;
        let name = parse_name(name)?;
        check_password(password, &email)?;
        let profile = self
            .create_user_with_id(id, &email, password, &name, Role::Seller)
            .await?;
        let seed = Actor {
            principal: Principal::Anonymous,
            request_id: None,
        };
        self.inner
            .audit
            .record_as(
                &seed,
                "seed",
                "demo.seller.create",
                &format!("user:{}", profile.id),
                "",
            )
            .await;
        Ok(())
    }

    async fn create_user(
        &self,
        email: &str,
        password: &str,
        name: &str,
        role: Role,
    ) -> Result<Profile, ShopError> {
        self.create_user_with_id(self.inner.ids.user_id(), email, password, name, role)
            .await
    }

    async fn create_user_with_id(
        &self,
        id: UserId,
        email: &str,
        password: &str,
        name: &str,
        role: Role,
    ) -> Result<Profile, ShopError> {
        let inner = &self.inner;
        let index = inner.index.of(email);
        let now = now_ms();
        let directory = inner.store.directory();
        match directory.claim_email(&index, id, now).await? {
            EmailClaim::Claimed => {}
            EmailClaim::Taken { by, claimed_at_ms } => {
                let orphan = now - claimed_at_ms > ORPHAN_CLAIM_AFTER_MS
                    && inner.store.for_user(by).user(by).await?.is_none();
                if !orphan {
                    return Err(ShopError::Conflict(
                        "an account with this email already exists".into(),
                    ));
                }
                directory.release_email(&index, by).await?;
                if directory.claim_email(&index, id, now).await? != EmailClaim::Claimed {
                    return Err(ShopError::Conflict(
                        "an account with this email already exists".into(),
                    ));
                }
            }
        }
        let password_hash = self.hash_password(password).await?;
        let record = UserRecord {
            id,
            email_index: index.clone(),
            email_ct: inner.pii.seal(email),
            phone_ct: None,
            name: name.to_owned(),
            role,
            password_hash,
            created_at_ms: now,
            updated_at_ms: now,
        };
        if let Err(error) = inner.store.for_user(id).insert_user(&record).await {
            // Give the email back; if even that fails, the orphan rule frees it later.
            let _ = directory.release_email(&index, id).await;
            return Err(error.into());
        }
        self.profile_of(&record)
    }

    async fn hash_password(&self, password: &str) -> Result<String, ShopError> {
        let passwords = self.inner.passwords.clone();
        let password = password.to_owned();
        // Argon2 takes tens of milliseconds of CPU: keep it off the async worker threads.
        tokio::task::spawn_blocking(move || passwords.hash(&password))
            .await
            .map_err(|e| ShopError::Corrupt(format!("password hashing task failed: {e}")))
    }

    async fn verify_password(&self, password: &str, hash: Option<String>) -> bool {
        let passwords = self.inner.passwords.clone();
        let password = password.to_owned();
        tokio::task::spawn_blocking(move || match hash {
            Some(hash) => passwords.verify(&password, &hash),
            None => {
                passwords.verify_dummy(&password);
                false
            }
        })
        .await
        .unwrap_or(false)
    }

    /// Signs in. Unknown email and wrong password give the same error after the same work.
    pub async fn login(
        &self,
        actor: &Actor,
        email: &str,
        password: &str,
    ) -> Result<(Profile, Session), ShopError> {
        const REFUSED: &str = "invalid email or password";
        let inner = &self.inner;
        let normalised = normalise_email(email);
        let index = inner.index.of(&normalised);
        let user = match inner.store.directory().lookup_email(&index).await? {
            Some(id) => inner.store.for_user(id).user(id).await?,
            None => None,
        };
        let ok = self
            .verify_password(password, user.as_ref().map(|u| u.password_hash.clone()))
            .await;
        match user {
            Some(user) if ok => {
                inner
                    .audit
                    .record(actor, "login.success", &format!("user:{}", user.id), "")
                    .await;
                let session = self.start_session(user.id, user.role).await?;
                Ok((self.profile_of(&user)?, session))
            }
            user => {
                let target = user.map_or_else(
                    || "unknown account".to_owned(),
                    |u| format!("user:{}", u.id),
                );
                inner
                    .audit
                    .record(actor, "login.failure", &target, "")
                    .await;
                Err(ShopError::Unauthenticated(REFUSED))
            }
        }
    }

    async fn start_session(&self, user: UserId, role: Role) -> Result<Session, ShopError> {
        let session = self.inner.ids.session_id();
        let (token, record) = self.new_refresh(user, session);
        self.inner
            .store
            .for_user(user)
            .create_session(session, user, &record)
            .await?;
        Ok(Session {
            user,
            role,
            session,
            refresh_token: token,
        })
    }

    fn new_refresh(&self, user: UserId, session: SessionId) -> (String, RefreshRecord) {
        let secret = random_secret(32);
        let now = now_ms();
        let ttl = i64::try_from(self.inner.config.refresh_ttl.as_millis()).unwrap_or(i64::MAX);
        let record = RefreshRecord {
            token_hash: token_hash(&secret),
            session,
            issued_at_ms: now,
            expires_at_ms: now.saturating_add(ttl),
        };
        (format!("{user}.{session}.{secret}"), record)
    }

    /// Exchanges a refresh token for a new pair. Using a token twice ends its session.
    pub async fn refresh(&self, actor: &Actor, token: &str) -> Result<Session, ShopError> {
        const REFUSED: &str = "the refresh token is invalid, expired or revoked; sign in again";
        let mut parts = token.splitn(3, '.');
        let (Some(user), Some(session), Some(secret)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(ShopError::Unauthenticated(REFUSED));
        };
        let (Ok(user), Ok(session)) = (user.parse::<UserId>(), session.parse::<SessionId>()) else {
            return Err(ShopError::Unauthenticated(REFUSED));
        };
        let (next_token, next) = self.new_refresh(user, session);
        let shard = self.inner.store.for_user(user);
        match shard
            .rotate_refresh(&token_hash(secret), &next, now_ms())
            .await?
        {
            RefreshOutcome::Rotated {
                session,
                user: owner,
            } if owner == user => {
                let role = shard
                    .active_session(session)
                    .await?
                    .map(|(_, role)| role)
                    .ok_or(ShopError::Unauthenticated(REFUSED))?;
                Ok(Session {
                    user,
                    role,
                    session,
                    refresh_token: next_token,
                })
            }
            RefreshOutcome::Reused { session, user } => {
                tracing::warn!(%user, %session, "refresh token reused; session revoked");
                self.inner
                    .audit
                    .record(
                        actor,
                        "refresh.reuse",
                        &format!("session:{session}"),
                        &format!("user:{user}"),
                    )
                    .await;
                Err(ShopError::Unauthenticated(REFUSED))
            }
            _ => Err(ShopError::Unauthenticated(REFUSED)),
        }
    }

    /// Ends the principal's session: its access token stops working at once and its refresh
    /// tokens can no longer be used.
    pub async fn logout(&self, actor: &Actor) -> Result<(), ShopError> {
        authorize(&actor.principal, Action::Logout)?;
        if let Principal::User {
            id,
            credential: crate::authz::Credential::Session(session),
            ..
        } = &actor.principal
        {
            self.inner
                .store
                .for_user(*id)
                .revoke_session(*session, "logout", now_ms())
                .await?;
            self.inner
                .audit
                .record(actor, "logout", &format!("session:{session}"), "")
                .await;
        }
        Ok(())
    }

    /// The principal behind an access token, if its session is still active. The role is
    /// read from the user row, so a role change takes effect on the next request.
    pub async fn session_principal(
        &self,
        user: UserId,
        session: SessionId,
    ) -> Result<Option<Principal>, ShopError> {
        Ok(
            match self
                .inner
                .store
                .for_user(user)
                .active_session(session)
                .await?
            {
                Some((owner, role)) if owner == user => Some(Principal::User {
                    id: user,
                    role,
                    credential: crate::authz::Credential::Session(session),
                }),
                _ => None,
            },
        )
    }

    /// A user as `actor` may see them: in full for themselves and admins, public otherwise.
    pub async fn user(&self, actor: &Actor, id: UserId) -> Result<UserView, ShopError> {
        let record = self.record(id).await?;
        if authorize(&actor.principal, Action::ReadPrivateProfile { user: id }).is_ok() {
            Ok(UserView::Full(self.profile_of(&record)?))
        } else {
            Ok(UserView::Public(PublicProfile {
                id,
                name: record.name,
                role: record.role,
                created_at_ms: record.created_at_ms,
            }))
        }
    }

    /// The signed-in user's own profile.
    pub async fn me(&self, actor: &Actor) -> Result<Profile, ShopError> {
        let id = actor.principal.user_id()?;
        self.profile_of(&self.record(id).await?)
    }

    /// Changes the signed-in user's name or phone.
    pub async fn update_me(
        &self,
        actor: &Actor,
        patch: ProfilePatch,
    ) -> Result<Profile, ShopError> {
        let id = actor.principal.user_id()?;
        authorize(&actor.principal, Action::EditProfile { user: id })?;
        let mut record = self.record(id).await?;
        if let Some(name) = patch.name {
            record.name = parse_name(&name)?;
        }
        if let Some(phone) = patch.phone {
            record.phone_ct = phone
                .map(|p| parse_phone(&p).map(|p| self.inner.pii.seal(&p)))
                .transpose()?;
        }
        record.updated_at_ms = now_ms();
        self.save(&record).await?;
        self.profile_of(&record)
    }

    /// Changes a user's role; admins only. Audited.
    pub async fn set_role(
        &self,
        actor: &Actor,
        id: UserId,
        role: Role,
    ) -> Result<Profile, ShopError> {
        authorize(&actor.principal, Action::ChangeRole)?;
        let mut record = self.record(id).await?;
        let before = record.role;
        record.role = role;
        record.updated_at_ms = now_ms();
        self.save(&record).await?;
        self.inner
            .audit
            .record(
                actor,
                "role.change",
                &format!("user:{id}"),
                &format!("{before} -> {role}"),
            )
            .await;
        self.profile_of(&record)
    }

    /// Re-seals every user's personal data under the active key; returns how many rows moved.
    /// Refused while a shard move runs: a shard may hold a stale copy of a user then.
    pub async fn reencrypt_all(&self) -> Result<u64, ShopError> {
        let Some(_maintenance) = self.inner.store.maintenance() else {
            return Err(ShopError::Conflict(
                "a shard move is running (`bazaar shards add`); re-encrypt once it is done".into(),
            ));
        };
        let active = self.inner.pii.active_key();
        let mut moved = 0;
        for shard in self.inner.store.shards() {
            let mut after = None;
            loop {
                let batch = shard.users_after(after, 500).await?;
                let Some(last) = batch.last() else { break };
                after = Some(last.id);
                for mut user in batch {
                    let stale = PiiCipher::key_of(&user.email_ct) != Some(active)
                        || user
                            .phone_ct
                            .as_deref()
                            .is_some_and(|p| PiiCipher::key_of(p) != Some(active));
                    if !stale {
                        continue;
                    }
                    user.email_ct = self.inner.pii.seal(&self.open(&user.email_ct)?);
                    if let Some(phone) = &user.phone_ct {
                        user.phone_ct = Some(self.inner.pii.seal(&self.open(phone)?));
                    }
                    self.inner
                        .store
                        .for_user(user.id)
                        .update_user(&user)
                        .await?;
                    self.written(user).await;
                    moved += 1;
                }
            }
        }
        let cli = Actor {
            principal: Principal::Anonymous,
            request_id: None,
        };
        self.inner
            .audit
            .record_as(
                &cli,
                "cli",
                "privacy.reencrypt",
                &format!("key:{active}"),
                &format!("{moved} users"),
            )
            .await;
        Ok(moved)
    }

    /// A user row for profile reads, through the user cache when there is one. By default
    /// that cache is cache-aside: concurrent misses each read the store — profile reads are
    /// not hot enough for a stampede to matter, and the pattern is the seed's other one.
    async fn record(&self, id: UserId) -> Result<UserRecord, ShopError> {
        let found = match &self.inner.users {
            Some(cache) => {
                let store = self.inner.store.clone();
                cache
                    .get(id, move || async move {
                        store.for_user(id).user(id).await.map(|u| u.map(Arc::new))
                    })
                    .await
                    .map_err(|e| ShopError::Load(format!("user {id}: {e}")))?
                    .map(Arc::unwrap_or_clone)
            }
            None => self.inner.store.for_user(id).user(id).await?,
        };
        found.ok_or_else(|| ShopError::NotFound(format!("no user with id {id}")))
    }

    /// Writes a user row, then updates or drops its cached copies.
    async fn save(&self, record: &UserRecord) -> Result<(), ShopError> {
        self.inner
            .store
            .for_user(record.id)
            .update_user(record)
            .await?;
        self.written(record.clone()).await;
        Ok(())
    }

    /// Tells the user cache that `record` is now what the store holds.
    async fn written(&self, record: UserRecord) {
        if let Some(cache) = &self.inner.users {
            cache.written(record.id, Some(Some(Arc::new(record)))).await;
        }
    }

    /// Drops `id` from this process's user cache only: what another process's invalidation
    /// message asks for.
    pub fn forget(&self, id: UserId) {
        if let Some(cache) = &self.inner.users {
            cache.forget(&id);
        }
    }

    fn open(&self, sealed: &[u8]) -> Result<String, ShopError> {
        self.inner
            .pii
            .open(sealed)
            .map_err(|e| ShopError::Corrupt(e.to_string()))
    }

    fn profile_of(&self, record: &UserRecord) -> Result<Profile, ShopError> {
        Ok(Profile {
            id: record.id,
            email: self.open(&record.email_ct)?,
            phone: record
                .phone_ct
                .as_deref()
                .map(|p| self.open(p))
                .transpose()?,
            name: record.name.clone(),
            role: record.role,
            created_at_ms: record.created_at_ms,
        })
    }
}

/// Lower-cased and trimmed: `Ada@Example.COM ` and `ada@example.com` are one account.
pub fn normalise_email(raw: &str) -> String {
    raw.trim().to_lowercase()
}

fn parse_email(raw: &str) -> Result<String, ShopError> {
    let email = normalise_email(raw);
    let invalid = || ShopError::field("email", "expected an address such as name@example.com");
    let (local, domain) = email.split_once('@').ok_or_else(invalid)?;
    let domain_ok = domain.contains('.')
        && domain.split('.').all(|label| {
            !label.is_empty() && label.chars().all(|c| c.is_alphanumeric() || c == '-')
        });
    let local_ok = !local.is_empty()
        && local.len() <= 64
        && !local
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '@');
    if email.len() > 254 || !domain_ok || !local_ok {
        return Err(invalid());
    }
    Ok(email)
}

fn parse_name(raw: &str) -> Result<String, ShopError> {
    let name = raw.trim();
    if name.is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
        return Err(ShopError::field(
            "name",
            "expected 1 to 100 printable characters",
        ));
    }
    Ok(name.to_owned())
}

fn parse_phone(raw: &str) -> Result<String, ShopError> {
    let phone: String = raw
        .chars()
        .filter(|c| !matches!(c, ' ' | '-' | '(' | ')'))
        .collect();
    let digits = phone.strip_prefix('+').unwrap_or("");
    if (8..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()) {
        Ok(phone)
    } else {
        Err(ShopError::field(
            "phone",
            "expected an international number such as +44 20 7946 0958",
        ))
    }
}

/// Passwords common enough to be tried first by any attacker, whatever their length.
const COMMON_PASSWORDS: &[&str] = &[
    "password1234",
    "123456789012",
    "qwertyuiopas",
    "passwordpassword",
    "iloveyou1234",
    "letmeinplease",
    "administrator",
    "welcome12345",
    "correcthorsebatterystaple",
];

/// NIST SP 800-63B style rules: length over composition, no known-bad passwords.
fn check_password(password: &str, email: &str) -> Result<(), ShopError> {
    let weak = |reason: &str| Err(ShopError::field("password", reason.to_owned()));
    let length = password.chars().count();
    if length < 12 {
        return weak("too short: use at least 12 characters (a few unrelated words work well)");
    }
    if length > 128 {
        return weak("too long: use at most 128 characters");
    }
    let lower = password.to_lowercase();
    if COMMON_PASSWORDS.contains(&lower.as_str()) {
        return weak("too common: it appears in lists of breached passwords");
    }
    let distinct: std::collections::HashSet<char> = password.chars().collect();
    if distinct.len() < 5 {
        return weak("too repetitive: use at least 5 different characters");
    }
    let local = email.split('@').next().unwrap_or("");
    if local.len() >= 4 && lower.contains(local) {
        return weak("too guessable: it contains your email address");
    }
    Ok(())
}

/// `a***@example.com`: enough to tell accounts apart in a log, not enough to contact anyone.
pub fn mask_email(email: &str) -> String {
    match email.split_once('@') {
        Some((local, domain)) => {
            let first: String = local.chars().take(1).collect();
            format!("{first}***@{domain}")
        }
        None => "***".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_normalised_and_validated() {
        assert_eq!(
            parse_email("  Ada@Example.COM ").unwrap(),
            "ada@example.com"
        );
        for bad in [
            "",
            "ada",
            "ada@",
            "@example.com",
            "ada@example",
            "a da@example.com",
            "ada@exa mple.com",
            "ada@@example.com",
            "ada@.com",
        ] {
            assert!(parse_email(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn weak_passwords_are_refused_with_a_reason() {
        let reason = |p: &str| match check_password(p, "ada.lovelace@example.com") {
            Err(ShopError::InvalidField { field, reason }) if field == "password" => reason,
            other => panic!("{p}: {other:?}"),
        };
        assert!(reason("short").contains("too short"));
        assert!(reason("Password1234").contains("too common"));
        assert!(reason("aaaaaaaaaaaaaaaa").contains("too repetitive"));
        assert!(reason("my-ada.lovelace-pass").contains("email"));
        assert!(reason(&"x1".repeat(70)).contains("too long"));
        assert!(check_password("velvet-otter-cinnamon", "ada@example.com").is_ok());
    }

    #[test]
    fn phones_and_names() {
        assert_eq!(parse_phone("+44 20 7946 0958").unwrap(), "+442079460958");
        assert!(parse_phone("020 7946 0958").is_err());
        assert!(parse_phone("+12").is_err());
        assert!(parse_name("  ").is_err());
        assert!(parse_name("Ada\u{7}").is_err());
        assert_eq!(parse_name(" Ada ").unwrap(), "Ada");
    }

    #[test]
    fn masked_emails_keep_only_the_first_letter_and_domain() {
        assert_eq!(mask_email("ada@example.com"), "a***@example.com");
        assert_eq!(mask_email("nonsense"), "***");
    }
}
