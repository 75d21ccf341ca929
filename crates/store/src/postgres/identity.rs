//! The identity half of the PostgreSQL shard: users, sessions, API keys, the email directory,
//! the audit log and id generator leases.
//!
//! # Isolation
//!
//! READ COMMITTED throughout. What must be atomic is one conditional statement (the email
//! claim's primary key, the quota's conditional upsert, the generator lease's conditional
//! upsert) or a read under the rows' locks before the decision (`rotate_refresh` locks the
//! token and its session with `FOR UPDATE`); the rules themselves are in [`crate::identity`].

use std::str::FromStr;

use async_trait::async_trait;
use sqlx::Row;
use sqlx::postgres::PgRow;

use super::{PostgresShard, sql_id};
use crate::error::{BackendKind, StoreError};
use crate::events;
use crate::id::{ApiKeyId, SessionId, UserId};
use crate::identity::{
    self, ApiKeyRecord, AuditEvent, EmailClaim, PresentedToken, QuotaUse, RefreshOutcome,
    RefreshRecord, RefreshStep, Role, UserRecord,
};
use crate::shard::IdentityShard;

macro_rules! user_columns {
    () => {
        "id, email_index, email_ct, phone_ct, name, role, password_hash, created_at, updated_at"
    };
}

macro_rules! api_key_columns {
    () => {
        "id, user_id, name, secret_hash, daily_quota, created_at, revoked_at"
    };
}

/// How many times an email claim re-runs its conditional write after losing to a concurrent
/// claim that was released before its holder could be read, before giving up with a
/// retryable error.
const CLAIM_ATTEMPTS: usize = 16;

impl PostgresShard {
    fn user_from(&self, row: &PgRow) -> Result<UserRecord, StoreError> {
        let role: &str = row.try_get(5)?;
        Ok(UserRecord {
            id: UserId::new(self.id_from(row.try_get(0)?)?),
            email_index: row.try_get(1)?,
            email_ct: row.try_get(2)?,
            phone_ct: row.try_get(3)?,
            name: row.try_get(4)?,
            role: Role::from_str(role).map_err(|e| self.corrupt(e))?,
            password_hash: row.try_get(6)?,
            created_at_ms: row.try_get(7)?,
            updated_at_ms: row.try_get(8)?,
        })
    }

    fn api_key_from(&self, row: &PgRow) -> Result<ApiKeyRecord, StoreError> {
        Ok(ApiKeyRecord {
            id: ApiKeyId::new(self.id_from(row.try_get(0)?)?),
            user: UserId::new(self.id_from(row.try_get(1)?)?),
            name: row.try_get(2)?,
            secret_hash: row.try_get(3)?,
            daily_quota: row.try_get(4)?,
            created_at_ms: row.try_get(5)?,
            revoked_at_ms: row.try_get(6)?,
        })
    }

    /// A retryable failure of a claim that kept losing its row to concurrent writers.
    fn contended(&self, what: &str, attempts: usize) -> StoreError {
        StoreError::Backend {
            shard: self.name.clone(),
            kind: BackendKind::Transient,
            source: format!("{what}: still contended after {attempts} attempts").into(),
        }
    }
}

#[async_trait]
impl IdentityShard for PostgresShard {
    async fn claim_email(
        &self,
        email_index: &[u8],
        user: UserId,
        now_ms: i64,
    ) -> Result<EmailClaim, StoreError> {
        // The primary key serialises concurrent claims: an insert meeting an uncommitted claim
        // waits for it, and does nothing once it has committed. The holder is then read by a
        // second statement, whose snapshot includes that commit (one statement could not see
        // it: its snapshot predates the wait). If the holder released it in between, the
        // claim is simply tried again.
        let mut tx = self.pool.begin().await?;
        for _ in 0..CLAIM_ATTEMPTS {
            let claimed = sqlx::query(
                "INSERT INTO email_directory (email_index, user_id, claimed_at) \
                 VALUES ($1, $2, $3) ON CONFLICT (email_index) DO NOTHING",
            )
            .bind(email_index)
            .bind(sql_id(user.get()))
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
            if claimed.rows_affected() == 1 {
                tx.commit().await?;
                return Ok(EmailClaim::Claimed);
            }
            let holder = sqlx::query(
                "SELECT user_id, claimed_at FROM email_directory WHERE email_index = $1",
            )
            .bind(email_index)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(row) = holder {
                let claim = EmailClaim::Taken {
                    by: UserId::new(self.id_from(row.try_get(0)?)?),
                    claimed_at_ms: row.try_get(1)?,
                };
                tx.commit().await?;
                return Ok(claim);
            }
        }
        Err(self.contended("email claim", CLAIM_ATTEMPTS))
    }

    async fn release_email(&self, email_index: &[u8], user: UserId) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM email_directory WHERE email_index = $1 AND user_id = $2")
            .bind(email_index)
            .bind(sql_id(user.get()))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn lookup_email(&self, email_index: &[u8]) -> Result<Option<UserId>, StoreError> {
        let id: Option<i64> =
            sqlx::query_scalar("SELECT user_id FROM email_directory WHERE email_index = $1")
                .bind(email_index)
                .fetch_optional(&self.pool)
                .await?;
        id.map(|raw| self.id_from(raw).map(UserId::new)).transpose()
    }

    async fn insert_user(&self, user: &UserRecord) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(concat!(
            "INSERT INTO users (",
            user_columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
        ))
        .bind(sql_id(user.id.get()))
        .bind(&user.email_index)
        .bind(&user.email_ct)
        .bind(&user.phone_ct)
        .bind(&user.name)
        .bind(user.role.as_str())
        .bind(&user.password_hash)
        .bind(user.created_at_ms)
        .bind(user.updated_at_ms)
        .execute(&mut *tx)
        .await?;
        let event = events::user_created(user.id, user.role);
        self.write_event(&mut tx, event, user.created_at_ms).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn user(&self, id: UserId) -> Result<Option<UserRecord>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            user_columns!(),
            " FROM users WHERE id = $1"
        ))
        .bind(sql_id(id.get()))
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| self.user_from(&row)).transpose()
    }

    async fn update_user(&self, user: &UserRecord) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        // Every field but the role, returning the stored role: the write takes the row's lock
        // and reads the role (the newest committed one, after any wait) in one statement, so
        // no concurrent update can change it before the comparison below.
        let stored: Option<String> = sqlx::query_scalar(
            "UPDATE users SET email_index = $1, email_ct = $2, phone_ct = $3, name = $4, \
             password_hash = $5, updated_at = $6 WHERE id = $7 RETURNING role",
        )
        .bind(&user.email_index)
        .bind(&user.email_ct)
        .bind(&user.phone_ct)
        .bind(&user.name)
        .bind(&user.password_hash)
        .bind(user.updated_at_ms)
        .bind(sql_id(user.id.get()))
        .fetch_optional(&mut *tx)
        .await?;
        let Some(stored) = stored else {
            return Ok(false);
        };
        let from = Role::from_str(&stored).map_err(|e| self.corrupt(e))?;
        if let Some(event) = identity::role_change(user.id, from, user.role) {
            let changed = sqlx::query("UPDATE users SET role = $1 WHERE id = $2 AND role = $3")
                .bind(user.role.as_str())
                .bind(sql_id(user.id.get()))
                .bind(from.as_str())
                .execute(&mut *tx)
                .await?;
            if changed.rows_affected() != 1 {
                return Err(self.corrupt(format!(
                    "user {}'s role changed inside a transaction holding its row",
                    user.id
                )));
            }
            self.write_event(&mut tx, event, user.updated_at_ms).await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn users_after(
        &self,
        after: Option<UserId>,
        limit: usize,
    ) -> Result<Vec<UserRecord>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            user_columns!(),
            " FROM users WHERE id > $1 ORDER BY id LIMIT $2"
        ))
        .bind(after.map_or(0, |id| sql_id(id.get())))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|row| self.user_from(row)).collect()
    }

    async fn create_session(
        &self,
        session: SessionId,
        user: UserId,
        first: &RefreshRecord,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("INSERT INTO sessions (id, user_id, created_at) VALUES ($1, $2, $3)")
            .bind(sql_id(session.get()))
            .bind(sql_id(user.get()))
            .bind(first.issued_at_ms)
            .execute(&mut *tx)
            .await?;
        insert_refresh(&mut tx, first).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn rotate_refresh(
        &self,
        presented: &[u8],
        next: &RefreshRecord,
        now_ms: i64,
    ) -> Result<RefreshOutcome, StoreError> {
        let mut tx = self.pool.begin().await?;
        // The token's and its session's locks before the decision: two presentations of one
        // token queue here, and the second reads the `used_at` the first wrote, so it is seen
        // as a reuse. A revocation committing meanwhile is likewise waited for and seen.
        let row = sqlx::query(
            "SELECT t.session_id, s.user_id, t.expires_at, t.used_at, s.revoked_at \
             FROM refresh_tokens t JOIN sessions s ON s.id = t.session_id \
             WHERE t.token_hash = $1 FOR UPDATE OF t, s",
        )
        .bind(presented)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Ok(RefreshOutcome::Rejected);
        };
        let token = PresentedToken {
            session: SessionId::new(self.id_from(row.try_get(0)?)?),
            user: UserId::new(self.id_from(row.try_get(1)?)?),
            expires_at_ms: row.try_get(2)?,
            used: row.try_get::<Option<i64>, _>(3)?.is_some(),
            session_revoked: row.try_get::<Option<i64>, _>(4)?.is_some(),
        };
        let step = token.step(next.session, now_ms);
        match step {
            RefreshStep::Reject => return Ok(token.outcome(step)),
            RefreshStep::RevokeFamily => {
                sqlx::query(
                    "UPDATE sessions SET revoked_at = $1, revoked_reason = $2 WHERE id = $3",
                )
                .bind(now_ms)
                .bind(identity::REUSE_REASON)
                .bind(sql_id(token.session.get()))
                .execute(&mut *tx)
                .await?;
            }
            RefreshStep::Rotate => {
                sqlx::query("UPDATE refresh_tokens SET used_at = $1 WHERE token_hash = $2")
                    .bind(now_ms)
                    .bind(presented)
                    .execute(&mut *tx)
                    .await?;
                insert_refresh(&mut tx, next).await?;
            }
        }
        tx.commit().await?;
        Ok(token.outcome(step))
    }

    async fn revoke_session(
        &self,
        session: SessionId,
        reason: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let revoked = sqlx::query(
            "UPDATE sessions SET revoked_at = $1, revoked_reason = $2 \
             WHERE id = $3 AND revoked_at IS NULL",
        )
        .bind(now_ms)
        .bind(reason)
        .bind(sql_id(session.get()))
        .execute(&self.pool)
        .await?;
        Ok(revoked.rows_affected() == 1)
    }

    async fn active_session(
        &self,
        session: SessionId,
    ) -> Result<Option<(UserId, Role)>, StoreError> {
        let row = sqlx::query(
            "SELECT s.user_id, u.role FROM sessions s JOIN users u ON u.id = s.user_id \
             WHERE s.id = $1 AND s.revoked_at IS NULL",
        )
        .bind(sql_id(session.get()))
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let user: i64 = row.try_get(0)?;
        let role: &str = row.try_get(1)?;
        let role = Role::from_str(role).map_err(|e| self.corrupt(e))?;
        Ok(Some((UserId::new(self.id_from(user)?), role)))
    }

    async fn insert_api_key(&self, key: &ApiKeyRecord) -> Result<(), StoreError> {
        sqlx::query(concat!(
            "INSERT INTO api_keys (",
            api_key_columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7)"
        ))
        .bind(sql_id(key.id.get()))
        .bind(sql_id(key.user.get()))
        .bind(&key.name)
        .bind(&key.secret_hash)
        .bind(key.daily_quota)
        .bind(key.created_at_ms)
        .bind(key.revoked_at_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn api_key(&self, id: ApiKeyId) -> Result<Option<ApiKeyRecord>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            api_key_columns!(),
            " FROM api_keys WHERE id = $1"
        ))
        .bind(sql_id(id.get()))
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| self.api_key_from(&row)).transpose()
    }

    async fn api_keys_of(&self, user: UserId) -> Result<Vec<ApiKeyRecord>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            api_key_columns!(),
            " FROM api_keys WHERE user_id = $1 ORDER BY id"
        ))
        .bind(sql_id(user.get()))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|row| self.api_key_from(row)).collect()
    }

    async fn revoke_api_key(
        &self,
        user: UserId,
        id: ApiKeyId,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let revoked = sqlx::query(
            "UPDATE api_keys SET revoked_at = $1 \
             WHERE id = $2 AND user_id = $3 AND revoked_at IS NULL",
        )
        .bind(now_ms)
        .bind(sql_id(id.get()))
        .bind(sql_id(user.get()))
        .execute(&self.pool)
        .await?;
        Ok(revoked.rows_affected() == 1)
    }

    async fn consume_quota(
        &self,
        id: ApiKeyId,
        day: i64,
        quota: i64,
    ) -> Result<QuotaUse, StoreError> {
        // One statement: count the call only while under the quota. Concurrent first calls of
        // a day race on the primary key, and the loser's insert turns into the update; the
        // update waits for the row's lock and re-checks `used < quota` on the newest count,
        // so exactly `quota` calls are counted. No row comes back when the WHERE refused it.
        let used: Option<i64> = sqlx::query_scalar(
            "INSERT INTO api_key_usage (key_id, day, used) VALUES ($1, $2, 1) \
             ON CONFLICT (key_id, day) DO UPDATE SET used = api_key_usage.used + 1 \
             WHERE api_key_usage.used < $3 RETURNING used",
        )
        .bind(sql_id(id.get()))
        .bind(day)
        .bind(quota)
        .fetch_optional(&self.pool)
        .await?;
        Ok(QuotaUse::after_count(used, quota))
    }

    async fn append_audit(&self, event: &AuditEvent) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO audit_events (at, actor, action, target, request_id, detail) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(event.at_ms)
        .bind(&event.actor)
        .bind(&event.action)
        .bind(&event.target)
        .bind(&event.request_id)
        .bind(&event.detail)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn audit_events(&self, limit: usize) -> Result<Vec<AuditEvent>, StoreError> {
        let rows = sqlx::query(
            "SELECT at, actor, action, target, request_id, detail FROM audit_events \
             ORDER BY id DESC LIMIT $1",
        )
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(AuditEvent {
                    at_ms: row.try_get(0)?,
                    actor: row.try_get(1)?,
                    action: row.try_get(2)?,
                    target: row.try_get(3)?,
                    request_id: row.try_get(4)?,
                    detail: row.try_get(5)?,
                })
            })
            .collect()
    }

    async fn claim_generator(
        &self,
        holder: &str,
        range: std::ops::RangeInclusive<u16>,
        now_ms: i64,
        ttl_ms: i64,
    ) -> Result<Option<u16>, StoreError> {
        let mut tx = self.pool.begin().await?;
        // Each round: the lowest number no live lease holds in this statement's snapshot, then
        // a conditional upsert that takes it only if it is still free or expired (it waits for
        // a concurrent claimant of the same number and re-checks the expiry on its row). A
        // lost race means that number is now held and committed, so the next round's snapshot
        // skips it: at most one round per number in the range, plus the one that finds none.
        let rounds = usize::from(range.end().saturating_sub(*range.start())) + 2;
        for _ in 0..rounds {
            let free: Option<i64> = sqlx::query_scalar(
                "SELECT g FROM generate_series($1::BIGINT, $2::BIGINT) AS n(g) \
                 WHERE NOT EXISTS (SELECT 1 FROM node_leases l \
                                   WHERE l.generator = n.g AND l.expires_at > $3) \
                 ORDER BY g LIMIT 1",
            )
            .bind(i64::from(*range.start()))
            .bind(i64::from(*range.end()))
            .bind(now_ms)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(generator) = free else {
                tx.commit().await?;
                return Ok(None);
            };
            let taken = sqlx::query(
                "INSERT INTO node_leases (generator, holder, expires_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (generator) DO UPDATE SET holder = excluded.holder, \
                 expires_at = excluded.expires_at WHERE node_leases.expires_at <= $4",
            )
            .bind(generator)
            .bind(holder)
            .bind(now_ms.saturating_add(ttl_ms))
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
            if taken.rows_affected() == 1 {
                tx.commit().await?;
                let generator = u16::try_from(generator)
                    .map_err(|_| self.corrupt(format!("generator number {generator}")))?;
                return Ok(Some(generator));
            }
        }
        Err(self.contended("generator claim", rounds))
    }

    async fn renew_generator(
        &self,
        generator: u16,
        holder: &str,
        now_ms: i64,
        ttl_ms: i64,
    ) -> Result<bool, StoreError> {
        let renewed = sqlx::query(
            "UPDATE node_leases SET expires_at = $1 WHERE generator = $2 AND holder = $3",
        )
        .bind(now_ms.saturating_add(ttl_ms))
        .bind(i64::from(generator))
        .bind(holder)
        .execute(&self.pool)
        .await?;
        Ok(renewed.rows_affected() == 1)
    }

    async fn release_generator(&self, generator: u16, holder: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM node_leases WHERE generator = $1 AND holder = $2")
            .bind(i64::from(generator))
            .bind(holder)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn held_generators(&self, now_ms: i64) -> Result<Vec<u16>, StoreError> {
        let held: Vec<i64> = sqlx::query_scalar(
            "SELECT generator FROM node_leases WHERE expires_at > $1 ORDER BY generator",
        )
        .bind(now_ms)
        .fetch_all(&self.pool)
        .await?;
        Ok(held
            .into_iter()
            .filter_map(|g| u16::try_from(g).ok())
            .collect())
    }
}

async fn insert_refresh(
    conn: &mut sqlx::PgConnection,
    token: &RefreshRecord,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO refresh_tokens (token_hash, session_id, issued_at, expires_at) \
         VALUES ($1, $2, $3, $4)",
    )
    .bind(&token.token_hash)
    .bind(sql_id(token.session.get()))
    .bind(token.issued_at_ms)
    .bind(token.expires_at_ms)
    .execute(conn)
    .await
    .map(drop)
}
