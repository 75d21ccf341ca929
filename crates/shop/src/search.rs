//! Search as the API sees it: queries against this process's index, kept fresh from the
//! store by the indexer, and rebuilt from the store while the old index keeps serving.
//!
//! The index only ever learns *which* products changed (an event names one); it then reads
//! the product as the store has it now and replaces its document, or removes it if the
//! product is gone. So applying a change twice, late or out of order leaves the index as the
//! store is — which is what makes a rebuild beside live traffic correct: changes applied
//! while a rebuild scans are remembered and read again into the new index before it swaps
//! in (see [`Search::rebuild`]).

use std::collections::HashSet;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use arc_swap::ArcSwap;
use bazaar_search::{
    CommitStats, ProductDoc, SearchError, SearchIndex, SearchPage, SearchRequest, Suggestion,
};
use bazaar_store::{ProductId, ProductQuery, ProductSort, SortKey, Store};
use bazaar_telemetry::{LATENCY_BUCKETS, Metrics};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;

use crate::ShopError;

/// Products read per page while rebuilding.
const REBUILD_PAGE: usize = 1_000;

/// A rebuild commits its fresh index after about this many products.
const COMMIT_EVERY: u64 = 100_000;

/// A change committed this long before a rebuild's scan began is certainly in what the scan
/// reads: the allowance for clocks of the processes sharing a store disagreeing.
pub const CLOCK_ALLOWANCE_MS: i64 = 10_000;

/// Where the index is, as `/readyz` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IndexState {
    Ready,
    /// Being rebuilt: `indexed` of about `total` products so far; `reason` says why.
    Rebuilding {
        reason: String,
        indexed: u64,
        total: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

type FloatGauge = Gauge<f64, std::sync::atomic::AtomicU64>;

/// The search layer's metrics.
#[derive(Debug, Clone)]
pub struct SearchMetrics {
    queries: Family<KindLabel, Counter>,
    latency: Family<KindLabel, Histogram>,
    commit: Histogram,
    documents: Gauge,
    /// Age of the oldest change not yet applied (set by the indexer).
    pub lag: FloatGauge,
}

impl SearchMetrics {
    pub fn register(metrics: &Metrics) -> Self {
        let this = Self {
            queries: Family::default(),
            latency: Family::new_with_constructor(|| Histogram::new(LATENCY_BUCKETS)),
            commit: Histogram::new(LATENCY_BUCKETS),
            documents: Gauge::default(),
            lag: FloatGauge::default(),
        };
        let mut registry = metrics.registry();
        registry.register(
            "search_queries",
            "Search requests answered, by kind (search, suggest)",
            this.queries.clone(),
        );
        registry.register(
            "search_query_duration_seconds",
            "Time to answer a search request, by kind",
            this.latency.clone(),
        );
        registry.register(
            "search_commit_duration_seconds",
            "Time a commit of the search index takes",
            this.commit.clone(),
        );
        registry.register(
            "search_documents",
            "Products this process's search index holds",
            this.documents.clone(),
        );
        registry.register(
            "search_index_lag_seconds",
            "Age of the oldest catalog or stock change this process's index has not applied",
            this.lag.clone(),
        );
        this
    }

    fn observe(&self, kind: &'static str, started: Instant) {
        let label = KindLabel { kind };
        self.queries.get_or_create(&label).inc();
        self.latency
            .get_or_create(&label)
            .observe(started.elapsed().as_secs_f64());
    }
}

/// This process's search. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Search {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    index: ArcSwap<Arc<dyn SearchIndex>>,
    store: Arc<Store>,
    metrics: SearchMetrics,
    state: Mutex<IndexState>,
    /// While a rebuild scans: the products changed meanwhile, read again before the swap.
    touched: Mutex<Option<HashSet<ProductId>>>,
    /// Held by each application of changes and by a rebuild's final catch-up and swap, so
    /// no change lands in the old index after the catch-up read it.
    swap: tokio::sync::Mutex<()>,
    /// One rebuild at a time.
    rebuilding: tokio::sync::Mutex<()>,
    /// Changes committed before this (ms since the epoch) are in what the current or last
    /// rebuild read from the store: their events need not be applied. 0 before any rebuild.
    covered_before_ms: AtomicI64,
}

impl Search {
    pub fn new(index: Arc<dyn SearchIndex>, store: Arc<Store>, metrics: SearchMetrics) -> Self {
        Self {
            inner: Arc::new(Inner {
                index: ArcSwap::from_pointee(index),
                store,
                metrics,
                state: Mutex::new(IndexState::Ready),
                touched: Mutex::new(None),
                swap: tokio::sync::Mutex::new(()),
                rebuilding: tokio::sync::Mutex::new(()),
                covered_before_ms: AtomicI64::new(0),
            }),
        }
    }

    pub fn metrics(&self) -> &SearchMetrics {
        &self.inner.metrics
    }

    /// The index serving now.
    pub fn index(&self) -> Arc<dyn SearchIndex> {
        Arc::clone(&self.inner.index.load())
    }

    pub fn state(&self) -> IndexState {
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set_state(&self, state: IndexState) {
        *self
            .inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = state;
    }

    /// Marks the index as waiting for a rebuild, so `/readyz` says so from the start.
    pub fn mark_stale(&self, reason: &str) {
        self.set_state(IndexState::Rebuilding {
            reason: reason.to_owned(),
            indexed: 0,
            total: 0,
        });
    }

    /// Anyone may search the catalog: it is public, like the listing.
    pub async fn search(&self, request: SearchRequest) -> Result<SearchPage, ShopError> {
        let started = Instant::now();
        let page = self.index().search(request).await?;
        self.inner.metrics.observe("search", started);
        Ok(page)
    }

    pub async fn suggest(&self, prefix: &str, limit: usize) -> Result<Vec<Suggestion>, ShopError> {
        let started = Instant::now();
        let found = self.index().suggest(prefix.to_owned(), limit).await?;
        self.inner.metrics.observe("suggest", started);
        Ok(found)
    }

    /// Whether a change committed at `committed_at_ms` is already in what a rebuild read (so
    /// its event can be acknowledged without reading the product again): after seeding a
    /// million products, the start-up rebuild reads them once, not once more per event.
    pub fn covers(&self, committed_at_ms: i64) -> bool {
        committed_at_ms < self.inner.covered_before_ms.load(Ordering::Acquire)
    }

    /// Reads each product as the store has it now and replaces its document, or removes the
    /// document of a product that is gone. Visible after the next [`commit`](Self::commit).
    pub async fn apply(&self, ids: &[ProductId]) -> Result<(), ShopError> {
        if ids.is_empty() {
            return Ok(());
        }
        let _swap = self.inner.swap.lock().await;
        if let Some(touched) = self
            .inner
            .touched
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_mut()
        {
            touched.extend(ids.iter().copied());
        }
        write_current(&self.inner.store, self.index().as_ref(), ids).await
    }

    /// Reports the serving index's document count (`bazaar_search_documents`).
    pub async fn report_documents(&self) -> Result<u64, ShopError> {
        let documents = self.index().documents().await?;
        self.inner
            .metrics
            .documents
            .set(i64::try_from(documents).unwrap_or(i64::MAX));
        Ok(documents)
    }

    /// Makes applied changes visible.
    pub async fn commit(&self) -> Result<CommitStats, ShopError> {
        let started = Instant::now();
        let stats = self.index().commit().await?;
        self.inner
            .metrics
            .commit
            .observe(started.elapsed().as_secs_f64());
        self.inner
            .metrics
            .documents
            .set(i64::try_from(stats.documents).unwrap_or(i64::MAX));
        Ok(stats)
    }

    /// Rebuilds the index from the store: a fresh index is filled page by page while this
    /// one keeps serving, the products changed meanwhile are read again, and the fresh one
    /// swaps in and is promoted (it serves after a restart too). `progress` hears
    /// `(indexed, total)` after every page. Returns the documents indexed.
    pub async fn rebuild(
        &self,
        reason: &str,
        mut progress: impl FnMut(u64, u64) + Send,
    ) -> Result<u64, ShopError> {
        let _one = self.inner.rebuilding.lock().await;
        let total = self.inner.store.count_products().await?;
        let mut report = |indexed: u64| {
            self.set_state(IndexState::Rebuilding {
                reason: reason.to_owned(),
                indexed,
                total,
            });
            progress(indexed, total);
        };
        report(0);
        // Set before the scan begins: every change committed before it is read by the scan.
        let covered = crate::now_ms() - CLOCK_ALLOWANCE_MS;
        let previously = self
            .inner
            .covered_before_ms
            .fetch_max(covered, Ordering::AcqRel);
        *self
            .inner
            .touched
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(HashSet::new());
        let result = self.fill(&mut report).await;
        let fresh = match result {
            Ok(fresh) => fresh,
            Err(error) => {
                *self
                    .inner
                    .touched
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = None;
                // Nothing was swapped in: the serving index still needs every change.
                self.inner
                    .covered_before_ms
                    .store(previously, Ordering::Release);
                self.set_state(IndexState::Rebuilding {
                    reason: format!("{reason}; the last rebuild failed: {error}"),
                    indexed: 0,
                    total,
                });
                return Err(error);
            }
        };
        let (fresh, indexed) = fresh;
        {
            let _swap = self.inner.swap.lock().await;
            let touched = self
                .inner
                .touched
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take()
                .unwrap_or_default();
            let touched: Vec<ProductId> = touched.into_iter().collect();
            for chunk in touched.chunks(REBUILD_PAGE) {
                write_current(&self.inner.store, fresh.as_ref(), chunk).await?;
            }
            let stats = fresh.commit().await?;
            fresh.promote().await?;
            self.inner.index.store(Arc::new(fresh));
            self.inner
                .metrics
                .documents
                .set(i64::try_from(stats.documents).unwrap_or(i64::MAX));
        }
        self.set_state(IndexState::Ready);
        Ok(indexed)
    }

    /// A fresh index with every product in the store, committed.
    async fn fill(
        &self,
        report: &mut (impl FnMut(u64) + Send),
    ) -> Result<(Arc<dyn SearchIndex>, u64), ShopError> {
        let fresh = self.index().fresh().await?;
        let store = &self.inner.store;
        let mut after: Option<SortKey> = None;
        let mut indexed = 0u64;
        loop {
            let page = store
                .list_products(&ProductQuery {
                    filter: Default::default(),
                    sort: ProductSort::Newest,
                    after,
                    limit: REBUILD_PAGE,
                })
                .await?;
            let ids: Vec<ProductId> = page.items.iter().map(|p| p.id).collect();
            let mut variants = store.variants_of(&ids).await?;
            let docs: Vec<ProductDoc> = page
                .items
                .iter()
                .map(|product| {
                    ProductDoc::from(&bazaar_store::ProductWithVariants {
                        product: product.clone(),
                        variants: variants.remove(&product.id).unwrap_or_default(),
                    })
                })
                .collect();
            indexed += docs.len() as u64;
            fresh.upsert(docs).await?;
            if indexed % COMMIT_EVERY < REBUILD_PAGE as u64 {
                // Bounds what an engine buffers (FTS5 holds writes until a commit).
                fresh.commit().await?;
            }
            report(indexed);
            after = page.items.last().map(SortKey::of);
            if !page.has_more {
                break;
            }
        }
        fresh.commit().await?;
        Ok((fresh, indexed))
    }
}

/// Writes each product's current document into `index`, or deletes it if the product is gone.
async fn write_current(
    store: &Store,
    index: &dyn SearchIndex,
    ids: &[ProductId],
) -> Result<(), ShopError> {
    let mut wanted: Vec<ProductId> = ids.to_vec();
    wanted.sort_unstable();
    wanted.dedup();
    let mut products = store.products(&wanted).await?;
    let present: Vec<ProductId> = wanted
        .iter()
        .copied()
        .filter(|id| products.contains_key(id))
        .collect();
    let mut variants = store.variants_of(&present).await?;
    let gone: Vec<ProductId> = wanted
        .iter()
        .copied()
        .filter(|id| !products.contains_key(id))
        .collect();
    let docs: Vec<ProductDoc> = present
        .iter()
        .filter_map(|id| {
            let product = products.remove(id)?;
            Some(ProductDoc::from(&bazaar_store::ProductWithVariants {
                product,
                variants: variants.remove(id).unwrap_or_default(),
            }))
        })
        .collect();
    if !docs.is_empty() {
        index.upsert(docs).await?;
    }
    if !gone.is_empty() {
        index.delete(gone).await?;
    }
    Ok(())
}

impl From<SearchError> for ShopError {
    fn from(error: SearchError) -> Self {
        Self::Search(error.to_string())
    }
}
