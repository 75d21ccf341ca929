//! Cross-process invalidation over Redis pub/sub.
//!
//! Every process keeps its own in-process caches. When one of them writes, it drops the key
//! locally and publishes `(cache, key)` on a Redis channel; every other process subscribed to
//! the channel drops the key too. The staleness bound across processes becomes the pub/sub
//! delivery time (milliseconds) instead of the entries' TTL, which stays as the backstop for a
//! lost message (Redis pub/sub is fire-and-forget: a process that is disconnected when a
//! message is published never gets it).

use std::sync::Arc;

use futures::StreamExt;
use redis::AsyncCommands;

/// Publishes invalidations; implemented by [`RedisInvalidation`].
pub trait Invalidator: Send + Sync + std::fmt::Debug {
    /// Tells other processes that `key` of `cache` changed. Never blocks the caller.
    fn publish(&self, cache: &str, key: &str);
}

/// Why the invalidation channel could not be set up.
#[derive(Debug)]
pub struct InvalidationError(String);

impl std::fmt::Display for InvalidationError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cache invalidation over Redis: {}", self.0)
    }
}

impl std::error::Error for InvalidationError {}

/// Invalidation messages through one Redis channel. Messages read
/// `{origin}\t{cache}\t{key}`; a process ignores its own.
#[derive(Clone)]
pub struct RedisInvalidation {
    publisher: redis::aio::ConnectionManager,
    client: redis::Client,
    channel: String,
    origin: Arc<str>,
}

impl std::fmt::Debug for RedisInvalidation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisInvalidation")
            .field("channel", &self.channel)
            .field("origin", &self.origin)
            .finish()
    }
}

impl RedisInvalidation {
    /// Connects to `url` and uses `channel`.
    pub async fn connect(url: &str, channel: &str) -> Result<Self, InvalidationError> {
        let client = redis::Client::open(url).map_err(|e| InvalidationError(e.to_string()))?;
        let publisher = redis::aio::ConnectionManager::new(client.clone())
            .await
            .map_err(|e| InvalidationError(e.to_string()))?;
        Ok(Self {
            publisher,
            client,
            channel: channel.to_owned(),
            origin: uuid::Uuid::now_v7().to_string().into(),
        })
    }

    /// Subscribes and calls `handle(cache, key)` for every invalidation another process
    /// publishes, until the returned task is aborted. Reconnects after a lost connection.
    pub async fn subscribe(
        &self,
        handle: impl Fn(&str, &str) + Send + Sync + 'static,
    ) -> Result<tokio::task::JoinHandle<()>, InvalidationError> {
        let mut pubsub = self
            .client
            .get_async_pubsub()
            .await
            .map_err(|e| InvalidationError(e.to_string()))?;
        pubsub
            .subscribe(&self.channel)
            .await
            .map_err(|e| InvalidationError(e.to_string()))?;
        let (client, channel, origin) = (
            self.client.clone(),
            self.channel.clone(),
            self.origin.clone(),
        );
        Ok(tokio::spawn(async move {
            loop {
                let mut messages = pubsub.into_on_message();
                while let Some(message) = messages.next().await {
                    let Ok(payload) = message.get_payload::<String>() else {
                        continue;
                    };
                    let mut parts = payload.splitn(3, '\t');
                    if let (Some(from), Some(cache), Some(key)) =
                        (parts.next(), parts.next(), parts.next())
                        && from != &*origin
                    {
                        handle(cache, key);
                    }
                }
                // The stream ended: the connection dropped. Resubscribe, backing off.
                tracing::warn!(%channel, "cache invalidation subscription lost; reconnecting");
                loop {
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    if let Ok(mut fresh) = client.get_async_pubsub().await
                        && fresh.subscribe(&channel).await.is_ok()
                    {
                        pubsub = fresh;
                        break;
                    }
                }
            }
        }))
    }
}

impl Invalidator for RedisInvalidation {
    fn publish(&self, cache: &str, key: &str) {
        let mut connection = self.publisher.clone();
        let (channel, payload) = (
            self.channel.clone(),
            format!("{}\t{cache}\t{key}", self.origin),
        );
        tokio::spawn(async move {
            if let Err(error) = connection.publish::<_, _, ()>(&channel, payload).await {
                tracing::warn!(%error, "could not publish a cache invalidation; other processes rely on the TTL");
            }
        });
    }
}
