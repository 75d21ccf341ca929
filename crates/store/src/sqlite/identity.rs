//! The identity half of the SQLite shard: users, sessions, API keys, the email directory and
//! the audit log.

use std::str::FromStr;

use async_trait::async_trait;
use sqlx::Row;
use sqlx::sqlite::SqliteRow;

use super::{SqliteShard, sql_id};
use crate::error::StoreError;
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

impl SqliteShard {
    fn user_from(&self, row: &SqliteRow) -> Result<UserRecord, StoreError> {
        let role: String = row.try_get(5)?;
        Ok(UserRecord {
            id: UserId::new(self.id_from(row.try_get(0)?)?),
            email_index: row.try_get(1)?,
            email_ct: row.try_get(2)?,
            phone_ct: row.try_get(3)?,
            name: row.try_get(4)?,
            role: Role::from_str(&role).map_err(|e| self.corrupt(e))?,
            password_hash: row.try_get(6)?,
            created_at_ms: row.try_get(7)?,
            updated_at_ms: row.try_get(8)?,
        })
    }

    fn api_key_from(&self, row: &SqliteRow) -> Result<ApiKeyRecord, StoreError> {
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
}

#[async_trait]
impl IdentityShard for SqliteShard {
    async fn claim_email(
        &self,
        email_index: &[u8],
        user: UserId,
        now_ms: i64,
    ) -> Result<EmailClaim, StoreError> {
        // The primary key makes this the one place concurrent signups serialise. One write
        // transaction, so the holder read on a refused claim is the one that refused it (a
        // release between the two statements would otherwise leave nothing to read).
        let mut tx = self.write_tx().await?;
        let inserted = sqlx::query(
            "INSERT INTO email_directory (email_index, user_id, claimed_at) VALUES (?, ?, ?) \
             ON CONFLICT (email_index) DO NOTHING",
        )
        .bind(email_index)
        .bind(sql_id(user.get()))
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        let claim = if inserted.rows_affected() == 1 {
            EmailClaim::Claimed
        } else {
            let row = sqlx::query(
                "SELECT user_id, claimed_at FROM email_directory WHERE email_index = ?",
            )
            .bind(email_index)
            .fetch_one(&mut *tx)
            .await?;
            EmailClaim::Taken {
                by: UserId::new(self.id_from(row.try_get(0)?)?),
                claimed_at_ms: row.try_get(1)?,
            }
        };
        tx.commit().await?;
        Ok(claim)
    }

    async fn release_email(&self, email_index: &[u8], user: UserId) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM email_directory WHERE email_index = ? AND user_id = ?")
            .bind(email_index)
            .bind(sql_id(user.get()))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn lookup_email(&self, email_index: &[u8]) -> Result<Option<UserId>, StoreError> {
        let id: Option<i64> =
            sqlx::query_scalar("SELECT user_id FROM email_directory WHERE email_index = ?")
                .bind(email_index)
                .fetch_optional(&self.pool)
                .await?;
        id.map(|raw| self.id_from(raw).map(UserId::new)).transpose()
    }

    async fn insert_user(&self, user: &UserRecord) -> Result<(), StoreError> {
        let mut tx = self.write_tx().await?;
        sqlx::query(concat!(
            "INSERT INTO users (",
            user_columns!(),
            ") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
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
            " FROM users WHERE id = ?"
        ))
        .bind(sql_id(id.get()))
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| self.user_from(&row)).transpose()
    }

    async fn update_user(&self, user: &UserRecord) -> Result<bool, StoreError> {
        let mut tx = self.write_tx().await?;
        // Every field but the role, returning the role as stored: the row's lock is taken and
        // the stored role read by one write, so the comparison below cannot be raced.
        let stored: Option<String> = sqlx::query_scalar(
            "UPDATE users SET email_index = ?, email_ct = ?, phone_ct = ?, name = ?, \
             password_hash = ?, updated_at = ? WHERE id = ? RETURNING role",
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
            let changed = sqlx::query("UPDATE users SET role = ? WHERE id = ? AND role = ?")
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
            " FROM users WHERE id > ? ORDER BY id LIMIT ?"
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
        let mut tx = self.write_tx().await?;
        sqlx::query("INSERT INTO sessions (id, user_id, created_at) VALUES (?, ?, ?)")
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
        let mut tx = self.write_tx().await?;
        let row = sqlx::query(
            "SELECT t.session_id, s.user_id, t.expires_at, t.used_at, s.revoked_at \
             FROM refresh_tokens t JOIN sessions s ON s.id = t.session_id WHERE t.token_hash = ?",
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
                sqlx::query("UPDATE sessions SET revoked_at = ?, revoked_reason = ? WHERE id = ?")
                    .bind(now_ms)
                    .bind(identity::REUSE_REASON)
                    .bind(sql_id(token.session.get()))
                    .execute(&mut *tx)
                    .await?;
            }
            RefreshStep::Rotate => {
                sqlx::query("UPDATE refresh_tokens SET used_at = ? WHERE token_hash = ?")
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
            "UPDATE sessions SET revoked_at = ?, revoked_reason = ? WHERE id = ? AND revoked_at IS NULL",
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
             WHERE s.id = ? AND s.revoked_at IS NULL",
        )
        .bind(sql_id(session.get()))
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let user: i64 = row.try_get(0)?;
        let role: String = row.try_get(1)?;
        let role = Role::from_str(&role).map_err(|e| self.corrupt(e))?;
        Ok(Some((UserId::new(self.id_from(user)?), role)))
    }

    async fn insert_api_key(&self, key: &ApiKeyRecord) -> Result<(), StoreError> {
        sqlx::query(concat!(
            "INSERT INTO api_keys (",
            api_key_columns!(),
            ") VALUES (?, ?, ?, ?, ?, ?, ?)"
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
            " FROM api_keys WHERE id = ?"
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
            " FROM api_keys WHERE user_id = ? ORDER BY id"
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
            "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND user_id = ? AND revoked_at IS NULL",
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
        // One statement: count the call only while under the quota. RETURNING yields no row
        // when the WHERE of the upsert refused it.
        let used: Option<i64> = sqlx::query_scalar(
            "INSERT INTO api_key_usage (key_id, day, used) VALUES (?, ?, 1) \
             ON CONFLICT (key_id, day) DO UPDATE SET used = used + 1 WHERE used < ? \
             RETURNING used",
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
            "INSERT INTO audit_events (at, actor, action, target, request_id, detail) VALUES (?, ?, ?, ?, ?, ?)",
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
            "SELECT at, actor, action, target, request_id, detail FROM audit_events ORDER BY id DESC LIMIT ?",
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
        let mut tx = self.write_tx().await?;
        let free: Option<i64> = sqlx::query_scalar(
            "WITH RECURSIVE n(g) AS (SELECT ? UNION ALL SELECT g + 1 FROM n WHERE g < ?) \
             SELECT g FROM n WHERE NOT EXISTS \
             (SELECT 1 FROM node_leases l WHERE l.generator = n.g AND l.expires_at > ?) \
             ORDER BY g LIMIT 1",
        )
        .bind(i64::from(*range.start()))
        .bind(i64::from(*range.end()))
        .bind(now_ms)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(generator) = free else {
            return Ok(None);
        };
        // Conditional: only a free or expired lease is taken over.
        let taken = sqlx::query(
            "INSERT INTO node_leases (generator, holder, expires_at) VALUES (?, ?, ?) \
             ON CONFLICT (generator) DO UPDATE SET holder = excluded.holder, \
             expires_at = excluded.expires_at WHERE node_leases.expires_at <= ?",
        )
        .bind(generator)
        .bind(holder)
        .bind(now_ms.saturating_add(ttl_ms))
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        if taken.rows_affected() != 1 {
            return Ok(None);
        }
        tx.commit().await?;
        let generator = u16::try_from(generator)
            .map_err(|_| self.corrupt(format!("generator number {generator}")))?;
        Ok(Some(generator))
    }

    async fn renew_generator(
        &self,
        generator: u16,
        holder: &str,
        now_ms: i64,
        ttl_ms: i64,
    ) -> Result<bool, StoreError> {
        let renewed =
            sqlx::query("UPDATE node_leases SET expires_at = ? WHERE generator = ? AND holder = ?")
                .bind(now_ms.saturating_add(ttl_ms))
                .bind(i64::from(generator))
                .bind(holder)
                .execute(&self.pool)
                .await?;
        Ok(renewed.rows_affected() == 1)
    }

    async fn release_generator(&self, generator: u16, holder: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM node_leases WHERE generator = ? AND holder = ?")
            .bind(i64::from(generator))
            .bind(holder)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn held_generators(&self, now_ms: i64) -> Result<Vec<u16>, StoreError> {
        let held: Vec<i64> = sqlx::query_scalar(
            "SELECT generator FROM node_leases WHERE expires_at > ? ORDER BY generator",
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
    conn: &mut sqlx::SqliteConnection,
    token: &RefreshRecord,
) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO refresh_tokens (token_hash, session_id, issued_at, expires_at) VALUES (?, ?, ?, ?)")
        .bind(&token.token_hash)
        .bind(sql_id(token.session.get()))
        .bind(token.issued_at_ms)
        .bind(token.expires_at_ms)
        .execute(conn)
        .await
        .map(drop)
}
