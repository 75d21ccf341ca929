//! The store's one error type.

/// A boxed backend error, so that no backend's types leak into the public interface.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend failed or could not be reached; the detail is in `source`.
    #[error("shard `{shard}` failed")]
    Backend {
        shard: String,
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
}
