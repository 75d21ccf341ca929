//! The store's one error type, and the one conversion from backend errors into it.

/// A boxed backend error, so that no backend's types leak into the public interface.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend failed or could not be reached; `kind` says whether trying again can help,
    /// the detail is in `source`.
    #[error("shard `{shard}` failed ({kind})")]
    Backend {
        shard: String,
        kind: BackendKind,
        #[source]
        source: BoxError,
    },
    /// The data directory was created with a different layout than this configuration asks
    /// for; opening it would look for rows on the wrong shards.
    #[error("{0}")]
    Layout(String),
    /// A stored row violates an invariant the schema should have kept.
    #[error("shard `{shard}` holds an invalid row: {detail}")]
    Corrupt { shard: String, detail: String },
    /// A write was refused because it conflicts with existing data.
    #[error("conflict on shard `{shard}`: {detail}")]
    Conflict { shard: String, detail: String },
    /// The key's rows are being moved to a new shard and the move has held this write for
    /// [`HOLD_LIMIT`](crate::placement::HOLD_LIMIT): the mover is slow or died mid-range.
    /// Trying again later is safe; nothing was written.
    #[error("{0}")]
    Moving(String),
}

/// Whether a [`StoreError::Backend`] failure is worth another attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// The backend rolled the transaction back and nothing of it was applied: a serialization
    /// failure, a deadlock, a lock wait that gave up (SQLite's busy), or no connection free in
    /// the pool. Running the whole transaction again is safe.
    Transient,
    /// The connection broke while the call ran. A read can be run again; a write may or may
    /// not have committed, so only the caller (with an idempotency key) can decide.
    ConnectionLost,
    /// Anything else: bad SQL, a full disk, a refused login. Trying again will not help.
    Permanent,
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Transient => "transient, retryable",
            Self::ConnectionLost => "connection lost",
            Self::Permanent => "permanent",
        })
    }
}

impl StoreError {
    /// True if running the failed transaction again is safe and may succeed: it was rolled
    /// back whole ([`BackendKind::Transient`]).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::Backend {
                kind: BackendKind::Transient,
                ..
            }
        )
    }

    /// True if a read that failed this way may be run again: a retryable error or a broken
    /// connection (a read changes nothing, so its outcome is never in doubt).
    pub fn is_retryable_read(&self) -> bool {
        matches!(
            self,
            Self::Backend {
                kind: BackendKind::Transient | BackendKind::ConnectionLost,
                ..
            }
        )
    }

    /// Names the shard an error came from, where the backend could not: errors converted from
    /// a driver error with `?` carry an empty name until the store's per-shard wrapper stamps
    /// it.
    pub(crate) fn on_shard(mut self, name: &str) -> Self {
        match &mut self {
            Self::Backend { shard, .. }
            | Self::Corrupt { shard, .. }
            | Self::Conflict { shard, .. }
                if shard.is_empty() =>
            {
                name.clone_into(shard);
            }
            _ => {}
        }
        self
    }
}

/// SQLSTATE codes (PostgreSQL's, which SQLite's extended codes are mapped onto below) that mean
/// the transaction was rolled back and may be run again.
const RETRYABLE_SQLSTATES: &[&str] = &[
    "40001", // serialization_failure
    "40P01", // deadlock_detected
    "55P03", // lock_not_available
];

/// SQLite's primary result codes for a lock wait that gave up: `SQLITE_BUSY`, `SQLITE_LOCKED`.
const SQLITE_RETRYABLE: &[&str] = &["5", "6"];

/// SQLSTATE classes (the first two characters) of a connection that went away mid-call.
const CONNECTION_CLASSES: &[&str] = &["08", "57P"];

/// The one conversion from a driver error: constraint violations become
/// [`StoreError::Conflict`], everything else [`StoreError::Backend`] with its
/// [`BackendKind`]. The shard's name is filled in by the store's wrapper
/// ([`StoreError::on_shard`]), so backend code can simply use `?`.
impl From<sqlx::Error> for StoreError {
    fn from(source: sqlx::Error) -> Self {
        let kind = match &source {
            sqlx::Error::Database(db) => {
                if db.is_unique_violation()
                    || db.is_foreign_key_violation()
                    || db.is_check_violation()
                {
                    return Self::Conflict {
                        shard: String::new(),
                        detail: db.message().to_owned(),
                    };
                }
                let code = db.code().unwrap_or_default();
                // SQLite reports its extended code, whose primary code is the low byte; only
                // SQLite's: a SQLSTATE such as 22021 is digits too, and no SQLite code.
                let sqlite_primary = db
                    .as_error()
                    .downcast_ref::<sqlx::sqlite::SqliteError>()
                    .and_then(|_| code.parse::<i64>().ok())
                    .map(|extended| (extended & 0xff).to_string())
                    .unwrap_or_default();
                if RETRYABLE_SQLSTATES.contains(&code.as_ref())
                    || SQLITE_RETRYABLE.contains(&sqlite_primary.as_str())
                {
                    BackendKind::Transient
                } else if CONNECTION_CLASSES.iter().any(|c| code.starts_with(c)) {
                    BackendKind::ConnectionLost
                } else {
                    BackendKind::Permanent
                }
            }
            sqlx::Error::PoolTimedOut => BackendKind::Transient,
            sqlx::Error::Io(_) | sqlx::Error::Protocol(_) | sqlx::Error::WorkerCrashed => {
                BackendKind::ConnectionLost
            }
            _ => BackendKind::Permanent,
        };
        Self::Backend {
            shard: String::new(),
            kind,
            source: Box::new(source),
        }
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(source: sqlx::migrate::MigrateError) -> Self {
        match source {
            sqlx::migrate::MigrateError::Execute(e) => e.into(),
            other => Self::Backend {
                shard: String::new(),
                kind: BackendKind::Permanent,
                source: Box::new(other),
            },
        }
    }
}
