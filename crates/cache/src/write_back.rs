//! Write-back: writes acknowledged from memory and flushed to the source of truth later.
//!
//! Each key's pending writes coalesce (for counters: they add up), and a flush hands them
//! all to a sink in one batch. The owner flushes every `delay` and on graceful shutdown, so
//! the **crash-loss window** is one delay: a `kill -9` loses at most the writes made since the
//! last flush, and never a write that was flushed. A failed flush keeps its writes pending,
//! to be retried with the next.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Mutex, PoisonError};

/// Pending counter increments, by key.
#[derive(Debug)]
pub struct WriteBack<K> {
    /// A `std` mutex: held to add or to swap the map out, never across an await.
    pending: Mutex<HashMap<K, i64>>,
}

impl<K> Default for WriteBack<K> {
    fn default() -> Self {
        Self {
            pending: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Hash + Eq + Clone> WriteBack<K> {
    /// Adds `delta` to `key`'s pending total; acknowledged at once.
    pub fn add(&self, key: K, delta: i64) {
        *self
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(key)
            .or_insert(0) += delta;
    }

    /// What `key` has pending (not yet flushed).
    pub fn pending(&self, key: &K) -> i64 {
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .copied()
            .unwrap_or(0)
    }

    /// Keys with writes pending.
    pub fn len(&self) -> usize {
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Hands every pending write to `sink` in one batch. Writes made while the sink runs stay
    /// pending for the next flush; if the sink fails, the batch is merged back and the error
    /// returned. Returns the keys flushed.
    pub async fn flush<F, Fut, E>(&self, sink: F) -> Result<Vec<(K, i64)>, E>
    where
        F: FnOnce(Vec<(K, i64)>) -> Fut,
        Fut: Future<Output = Result<(), E>>,
    {
        let batch: Vec<(K, i64)> = {
            let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
            std::mem::take(&mut *pending)
                .into_iter()
                .filter(|(_, delta)| *delta != 0)
                .collect()
        };
        if batch.is_empty() {
            return Ok(batch);
        }
        match sink(batch.clone()).await {
            Ok(()) => Ok(batch),
            Err(error) => {
                for (key, delta) in batch {
                    self.add(key, delta);
                }
                Err(error)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;
    use proptest::test_runner::{Config, RngSeed};

    use super::WriteBack;

    #[derive(Debug, Clone)]
    enum Step {
        Add(u8, i64),
        Flush { fail: bool },
    }

    fn steps() -> impl Strategy<Value = Vec<Step>> {
        prop::collection::vec(
            prop_oneof![
                4 => (0u8..8, 1i64..5).prop_map(|(k, d)| Step::Add(k, d)),
                1 => any::<bool>().prop_map(|fail| Step::Flush { fail }),
            ],
            1..200,
        )
    }

    proptest! {
        #![proptest_config(Config { cases: 64, rng_seed: RngSeed::Fixed(0x0B4C), ..Config::default() })]

        /// Whatever the interleaving of writes, flushes and failed flushes, after the final
        /// (shutdown) flush the store holds exactly the sum of every write, and before it
        /// store + pending always equals that sum.
        #[test]
        fn after_the_final_flush_the_store_holds_every_write(steps in steps()) {
            let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
            runtime.block_on(async {
                let buffer = WriteBack::<u8>::default();
                let mut store: HashMap<u8, i64> = HashMap::new();
                let mut written: HashMap<u8, i64> = HashMap::new();
                for step in &steps {
                    match *step {
                        Step::Add(key, delta) => {
                            buffer.add(key, delta);
                            *written.entry(key).or_default() += delta;
                        }
                        Step::Flush { fail } => {
                            let had_pending = !buffer.is_empty();
                            let result = buffer
                                .flush(|batch| {
                                    let store = &mut store;
                                    async move {
                                        if fail {
                                            return Err("store down");
                                        }
                                        for (key, delta) in batch {
                                            *store.entry(key).or_default() += delta;
                                        }
                                        Ok(())
                                    }
                                })
                                .await;
                            prop_assert_eq!(result.is_err(), fail && had_pending, "only a failing sink with work fails");
                        }
                    }
                    for (key, total) in &written {
                        let stored = store.get(key).copied().unwrap_or(0);
                        prop_assert_eq!(stored + buffer.pending(key), *total, "a write was lost or doubled");
                    }
                }
                buffer
                    .flush(|batch| {
                        let store = &mut store;
                        async move {
                            for (key, delta) in batch {
                                *store.entry(key).or_default() += delta;
                            }
                            Ok::<(), &str>(())
                        }
                    })
                    .await
                    .unwrap();
                prop_assert_eq!(&store, &written);
                prop_assert!(buffer.is_empty());
                Ok(())
            })?;
        }
    }
}
