//! Search, wired: this process's index under the data directory, the indexer that keeps it
//! fresh from the event stream, rebuilds, and `bazaar search reindex`.
//!
//! Every serving process keeps its own replica of the index (`{data_dir}/search/node-{n}`),
//! fed by a consumer group of its own (`search-node-{n}`), like its product cache. The group
//! outlives a clean stop, so a restarted process catches up from the events it missed; the
//! relay removes the group of a node that has been gone for [`ORPHAN_GROUP_AFTER`].
//!
//! The indexer acknowledges a change once it is applied to the index's buffer, before the
//! commit that makes it durable, so that one product's stream of stock changes never waits a
//! commit per change. What a crash can lose is therefore the last commit interval of
//! changes, and a process that finds its `RUNNING` marker left behind (it did not stop
//! cleanly), or no consumer group for an index it has, rebuilds the index in the background
//! while the old one keeps serving.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context;
use async_trait::async_trait;
use bazaar_queue::{Delivery, GroupSpec, Queue, Subscription};
use bazaar_search::SearchIndex;
use bazaar_search::fts5::Fts5Index;
use bazaar_search::tantivy_index::{TantivyIndex, TantivyOptions};
use bazaar_shop::Search;
use bazaar_shop::events::Envelope;
use bazaar_shop::search::SearchMetrics;
use bazaar_store::{ProductId, Store};
use bazaar_telemetry::Metrics;
use bazaar_worker::{WorkError, Worker};
use serde::{Deserialize, Serialize};

use crate::config::{Config, SearchEngine};

/// The consumer group of node `n` is `search-node-{n}`.
pub const GROUP_PREFIX: &str = "search-node-";

/// A search group whose node no process holds is removed once its oldest unsettled event is
/// this old: long enough for a restart or an upgrade, short enough that a node gone for good
/// does not keep every event.
pub const ORPHAN_GROUP_AFTER: Duration = Duration::from_secs(6 * 3600);

/// Left in an index directory while a process has it open; removed at a clean stop.
const RUNNING_MARKER: &str = "RUNNING";

/// The directory-shard entry `bazaar search reindex` writes: the request's id.
pub const REINDEX_KEY: &str = "search-reindex";
/// Each serving process's answer to it: `search-progress/node-{n}`.
pub const PROGRESS_PREFIX: &str = "search-progress/";

/// A process's progress on a reindex request.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Progress {
    pub request: String,
    /// `rebuilding`, `done` or `failed`.
    pub state: String,
    pub indexed: u64,
    pub total: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Where node `node`'s index lives.
pub fn index_root(config: &Config, node: &str) -> PathBuf {
    config.store.data_dir.join("search").join(node)
}

/// This process's search over its index, and why it must be rebuilt, if it must.
#[derive(Debug)]
pub struct Opened {
    pub search: Search,
    pub rebuild: Option<String>,
    root: PathBuf,
}

/// Opens `node`'s index, marking it open (see the module's documentation).
pub async fn open(
    config: &Config,
    store: &Arc<Store>,
    node: &str,
    metrics: &Metrics,
) -> anyhow::Result<Opened> {
    let root = index_root(config, node);
    let (index, mut rebuild) = open_index(config, &root).await?;
    let marker = root.join(RUNNING_MARKER);
    if rebuild.is_none() && marker.exists() {
        rebuild = Some(
            "the last process with this index did not stop cleanly; changes of its last moments may be missing".into(),
        );
    }
    std::fs::write(&marker, std::process::id().to_string())
        .with_context(|| format!("cannot write {}", marker.display()))?;
    let search = Search::new(index, store.clone(), SearchMetrics::register(metrics));
    if let Some(reason) = &rebuild {
        search.mark_stale(reason);
    }
    Ok(Opened {
        search,
        rebuild,
        root,
    })
}

async fn open_index(
    config: &Config,
    root: &Path,
) -> anyhow::Result<(Arc<dyn SearchIndex>, Option<String>)> {
    let settings = &config.search;
    match settings.engine {
        SearchEngine::Tantivy => {
            let options = TantivyOptions {
                fuzziness: settings.typo_tolerance,
                ranking: settings.ranking,
                writer_memory: settings.writer_memory_mb << 20,
            };
            let root = root.to_owned();
            let opened = tokio::task::spawn_blocking(move || TantivyIndex::open(&root, options))
                .await?
                .context(
                    "cannot open the search index (is another process using this node's index?)",
                )?;
            Ok((Arc::new(opened.index), opened.needs_rebuild))
        }
        SearchEngine::Fts5 => {
            std::fs::create_dir_all(root)?;
            let index = Fts5Index::open(&root.join("fts5.sqlite"), settings.ranking)
                .await
                .context("cannot open the FTS5 search index")?;
            let rebuild = (index.documents().await? == 0)
                .then(|| "the FTS5 baseline index is empty".to_owned());
            Ok((Arc::new(index), rebuild))
        }
    }
}

/// The indexer and the rebuild worker of this process, over its own consumer group.
pub async fn workers(
    config: &Config,
    opened: &Opened,
    store: &Arc<Store>,
    queue: &Arc<dyn Queue>,
    node: &str,
) -> anyhow::Result<Vec<Arc<dyn Worker>>> {
    let group = format!("search-{node}");
    let existed = queue.stats().await?.iter().any(|g| g.group == group);
    let subscription = queue
        .declare(&GroupSpec {
            name: group.clone(),
            lease: Duration::from_secs(30),
            max_attempts: 1_000,
        })
        .await
        .with_context(|| format!("cannot declare the consumer group `{group}`"))?;
    let mut rebuild = opened.rebuild.clone();
    if rebuild.is_none() && !existed {
        rebuild = Some(format!(
            "the events since this index was last written were not kept (no consumer group `{group}`)"
        ));
        opened
            .search
            .mark_stale(rebuild.as_deref().unwrap_or_default());
    }
    let rebuilder = Arc::new(Rebuilder {
        search: opened.search.clone(),
        store: store.clone(),
        node: node.to_owned(),
        wanted: Mutex::new(rebuild),
        last_request: Mutex::new(store.directory().meta(REINDEX_KEY).await?),
    });
    Ok(vec![
        Arc::new(Indexer {
            search: opened.search.clone(),
            subscription,
            queue: queue.clone(),
            group,
            commit_interval: config.search.commit_interval,
            marker: opened.root.join(RUNNING_MARKER),
        }),
        rebuilder,
    ])
}

/// Event types that change what the index holds of a product.
fn wanted(topic: &str) -> bool {
    ["product.", "variant.", "stock."]
        .iter()
        .any(|prefix| topic.starts_with(prefix))
}

/// Applies catalog and stock changes, committing once per `commit_interval`.
#[derive(Debug)]
struct Indexer {
    search: Search,
    subscription: Box<dyn Subscription>,
    queue: Arc<dyn Queue>,
    group: String,
    commit_interval: Duration,
    marker: PathBuf,
}

/// Deliveries received per call.
const RECEIVE: usize = 500;

#[async_trait]
impl Worker for Indexer {
    fn name(&self) -> &'static str {
        "search-indexer"
    }

    fn interval(&self) -> Duration {
        Duration::from_millis(10)
    }

    fn runs_at_start(&self) -> bool {
        true
    }

    async fn run_once(&self) -> Result<(), WorkError> {
        let started = Instant::now();
        let mut applied = 0usize;
        while started.elapsed() < self.commit_interval {
            let wait = (self.commit_interval - started.elapsed()).min(Duration::from_millis(100));
            let deliveries = self.subscription.receive(RECEIVE, wait).await?;
            if deliveries.is_empty() {
                continue;
            }
            let ids: Vec<ProductId> = deliveries
                .iter()
                .filter_map(product_of)
                .filter(|(_, committed_at_ms)| !self.search.covers(*committed_at_ms))
                .map(|(id, _)| id)
                .collect();
            if let Err(error) = self.search.apply(&ids).await {
                for delivery in &deliveries {
                    self.subscription
                        .nack(delivery, Duration::from_millis(500))
                        .await?;
                }
                return Err(error.into());
            }
            for delivery in &deliveries {
                self.subscription.ack(delivery).await?;
            }
            applied += ids.len();
        }
        if applied > 0 {
            self.search.commit().await?;
        } else {
            self.search.report_documents().await?;
        }
        let lag = self
            .queue
            .stats()
            .await?
            .into_iter()
            .find(|g| g.group == self.group)
            .and_then(|g| g.oldest_age)
            .map_or(0.0, |age| age.as_secs_f64());
        self.search.metrics().lag.set(lag);
        Ok(())
    }

    async fn drain(&self) -> Result<(), WorkError> {
        self.search.commit().await?;
        // Committed and stopping cleanly: the next start need not rebuild.
        let _ = std::fs::remove_file(&self.marker);
        Ok(())
    }
}

/// The product an event is about and when its change committed; an event without a product
/// is acknowledged and skipped.
fn product_of(delivery: &Delivery) -> Option<(ProductId, i64)> {
    if !wanted(&delivery.message.topic) {
        return None;
    }
    let envelope = Envelope::from_json(&delivery.message.payload).ok();
    let id = envelope
        .as_ref()
        .and_then(|e| e.data_str("product_id"))
        .and_then(|id| id.parse().ok());
    let Some(id) = id else {
        tracing::warn!(
            topic = %delivery.message.topic,
            id = %delivery.message.id,
            "a catalog event without a valid `product_id`; the search index skips it"
        );
        return None;
    };
    // An unreadable time counts as now: the change is applied.
    let committed_at_ms = envelope
        .and_then(|e| e.committed_at())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(i64::MAX, |d| {
            i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
        });
    Some((id, committed_at_ms))
}

/// Rebuilds the index when it must (at start-up) or is asked to (`bazaar search reindex`).
#[derive(Debug)]
struct Rebuilder {
    search: Search,
    store: Arc<Store>,
    node: String,
    /// Why a rebuild is due, if one is.
    wanted: Mutex<Option<String>>,
    /// The last reindex request seen, so each is served once.
    last_request: Mutex<Option<String>>,
}

#[async_trait]
impl Worker for Rebuilder {
    fn name(&self) -> &'static str {
        "search-rebuild"
    }

    fn interval(&self) -> Duration {
        Duration::from_secs(1)
    }

    fn runs_at_start(&self) -> bool {
        true
    }

    async fn run_once(&self) -> Result<(), WorkError> {
        let request = self.store.poll_meta(REINDEX_KEY).await?;
        let asked = {
            let mut last = self
                .last_request
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let new = request.is_some() && *last != request;
            *last = request.clone();
            new
        };
        let reason = if asked {
            Some("`bazaar search reindex` asked for it".to_owned())
        } else {
            self.wanted
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take()
        };
        let Some(reason) = reason else {
            return Ok(());
        };
        tracing::info!(%reason, "rebuilding the search index; the current one serves meanwhile");
        let key = format!("{PROGRESS_PREFIX}{}", self.node);
        let request = request.filter(|_| asked);
        let directory = self.store.directory();
        let started = Instant::now();
        let (progress_tx, progress_rx) = tokio::sync::watch::channel((0u64, 0u64));
        let rebuild = self.search.rebuild(&reason, move |indexed, total| {
            let _ = progress_tx.send((indexed, total));
        });
        // While it runs, the asker hears how far it got twice a second.
        let publish = async {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let Some(request) = &request else { continue };
                let (indexed, total) = *progress_rx.borrow();
                let progress = Progress {
                    request: request.clone(),
                    state: "rebuilding".into(),
                    indexed,
                    total,
                    error: None,
                };
                if let Err(error) = directory
                    .set_meta(&key, &serde_json::to_string(&progress).unwrap_or_default())
                    .await
                {
                    tracing::warn!(%error, "could not record the search rebuild's progress");
                }
            }
        };
        let result = tokio::select! {
            result = rebuild => result,
            () = publish => unreachable!("publishing progress never ends"),
        };
        let latest = *progress_rx.borrow();
        // Progress is published between pages by polling `latest`; the final state here.
        if let Some(request) = &request {
            let progress = Progress {
                request: request.clone(),
                state: if result.is_ok() { "done" } else { "failed" }.into(),
                indexed: latest.0,
                total: latest.1,
                error: result.as_ref().err().map(ToString::to_string),
            };
            directory
                .set_meta(&key, &serde_json::to_string(&progress).unwrap_or_default())
                .await?;
        }
        match result {
            Ok(documents) => {
                tracing::info!(documents, elapsed = ?started.elapsed(), "the search index was rebuilt and swapped in");
                Ok(())
            }
            Err(error) => {
                // Tried again on the next pass, until one succeeds.
                *self.wanted.lock().unwrap_or_else(PoisonError::into_inner) = Some(reason);
                Err(error.into())
            }
        }
    }
}

/// How long `bazaar search reindex` waits for a serving process to take its request before
/// it rebuilds the indexes in the data directory itself.
const PICKUP_WAIT: Duration = Duration::from_secs(5);

/// `bazaar search reindex`: every serving process rebuilds its index from the store while
/// its old one serves, then swaps it in. With none running, the indexes under the data
/// directory are rebuilt here. Either way a progress bar follows it.
pub async fn reindex(config: &Config) -> anyhow::Result<()> {
    use indicatif::{ProgressBar, ProgressStyle};
    let store = Arc::new(crate::app::open_store(config, &Metrics::new()).await?);
    let directory = store.directory();
    let request = format!("{}-{}", bazaar_shop::now_ms(), std::process::id());
    directory.set_meta(REINDEX_KEY, &request).await?;
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} products {msg}",
        )
        .expect("the template is valid"),
    );
    bar.set_message("waiting for the serving processes");
    let asked = Instant::now();
    let answers = loop {
        let answers: Vec<(String, Progress)> = directory
            .metas(PROGRESS_PREFIX)
            .await?
            .into_iter()
            .filter_map(|(key, value)| {
                let progress: Progress = serde_json::from_str(&value).ok()?;
                let node = key.strip_prefix(PROGRESS_PREFIX)?.to_owned();
                (progress.request == request).then_some((node, progress))
            })
            .collect();
        if !answers.is_empty() {
            bar.set_length(answers.iter().map(|(_, p)| p.total).sum());
            bar.set_position(answers.iter().map(|(_, p)| p.indexed).sum());
            bar.set_message(format!("({} serving processes)", answers.len()));
        }
        // Every process polls once a second: after the pick-up wait, all live ones have said
        // something, so the ones that answered are the ones to wait for.
        let settled = answers.iter().all(|(_, p)| p.state != "rebuilding");
        if asked.elapsed() >= PICKUP_WAIT && (answers.is_empty() || settled) {
            break answers;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    bar.finish_and_clear();
    if answers.is_empty() {
        println!("no serving process took the request within {PICKUP_WAIT:?}; rebuilding here");
        let result = reindex_here(config, &store).await;
        store.close().await;
        return result;
    }
    store.close().await;
    let mut failed = Vec::new();
    for (node, progress) in &answers {
        match &progress.error {
            None => println!(
                "{node}: rebuilt and swapped in ({} products)",
                progress.indexed
            ),
            Some(error) => {
                println!("{node}: failed: {error}");
                failed.push(node.clone());
            }
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("the rebuild failed on {}", failed.join(", "))
    }
}

/// Rebuilds each index under `{data_dir}/search` (the next server's if there is none yet).
async fn reindex_here(config: &Config, store: &Arc<Store>) -> anyhow::Result<()> {
    use indicatif::{ProgressBar, ProgressStyle};
    let root = config.store.data_dir.join("search");
    let mut nodes: Vec<String> = std::fs::read_dir(&root)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.path().is_dir())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|name| name.starts_with("node-"))
                .collect()
        })
        .unwrap_or_default();
    if nodes.is_empty() {
        // The number the next server will lease: `node.id`, or the lowest live one.
        let n = config
            .node
            .id
            .map_or(*crate::node::LIVE_GENERATORS.start(), |id| id.get());
        nodes.push(format!("node-{n}"));
    }
    nodes.sort();
    for node in nodes {
        let dir = index_root(config, &node);
        let (index, _) = open_index(config, &dir).await.with_context(|| {
            format!(
                "{} is in use by a process that did not take the reindex request",
                dir.display()
            )
        })?;
        let search = Search::new(
            index,
            store.clone(),
            SearchMetrics::register(&Metrics::new()),
        );
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template(&format!(
                "{{spinner}} [{{elapsed_precise}}] {{wide_bar}} {{human_pos}}/{{human_len}} products ({node})"
            ))
            .expect("the template is valid"),
        );
        let started = Instant::now();
        let documents = search
            .rebuild("`bazaar search reindex`", |indexed, total| {
                bar.set_length(total);
                bar.set_position(indexed);
            })
            .await?;
        bar.finish_and_clear();
        // Rebuilt from the store: whatever an unclean stop lost is back.
        let _ = std::fs::remove_file(dir.join(RUNNING_MARKER));
        println!(
            "{node}: rebuilt {documents} products in {:.1}s ({})",
            started.elapsed().as_secs_f64(),
            dir.display()
        );
    }
    Ok(())
}
