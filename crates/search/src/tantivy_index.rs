//! The embedded search engine: a tantivy index in the data directory.
//!
//! ```text
//!  {root}/CURRENT            names the generation that serves ("g-1733155200000")
//!  {root}/g-1733155200000/   tantivy's files, and bazaar-search.json (the schema version)
//! ```
//!
//! A rebuild ([`SearchIndex::fresh`]) creates a new generation beside the serving one and
//! fills it while the old one keeps answering; [`SearchIndex::promote`] renames a new
//! `CURRENT` into place (atomic on POSIX) and removes the other generations. A process that
//! starts finds the generation `CURRENT` names; a missing one, or one of another schema
//! version, opens as a new empty generation that [`Opened::needs_rebuild`] reports.
//!
//! Text is read by [`crate::words`] before tantivy's tokenizer sees it, so a query and a
//! document are split the same way. Each query word must match some field: exactly (BM25,
//! boosted per field), within the [`Fuzziness`] edit distance, or — the last word, as typed so
//! far — as a prefix; inexact matches score a constant share of an exact one, so exact ones
//! rank first. The text score is then multiplied by [`Ranking::boost`] (stock, popularity).

use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use bazaar_domain::ProductId;
use serde_json::json;
use tantivy::aggregation::agg_req::Aggregations;
use tantivy::aggregation::agg_result::AggregationResults;
use tantivy::aggregation::{AggContextParams, AggregationCollector};
use tantivy::collector::{Count, TopDocs};
use tantivy::query::{
    AllQuery, BooleanQuery, BoostQuery, ConstScoreQuery, FuzzyTermQuery, Occur, Query, RangeQuery,
    TermQuery,
};
use tantivy::schema::{
    FAST, Field, INDEXED, IndexRecordOption, STORED, STRING, Schema, TextFieldIndexing,
    TextOptions, Value,
};
use tantivy::tokenizer::{LowerCaser, SimpleTokenizer, TextAnalyzer};
use tantivy::{
    DocAddress, DocId, Index, IndexReader, IndexWriter, Order, ReloadPolicy, Score, Searcher,
    SegmentReader, TantivyDocument, Term,
};

use crate::{
    CommitStats, FACET_VALUES, FacetCount, Facets, Fuzziness, Hit, MAX_QUERY_WORDS,
    MAX_SUGGESTIONS, MAX_WORD_CHARS, PRICE_BUCKETS, PriceBucket, ProductDoc, Ranking, SearchError,
    SearchIndex, SearchPage, SearchRequest, SearchSort, Suggestion, SuggestionKind, words,
};

/// Bumped whenever the fields or the way text is read change: an index of another version
/// is rebuilt, never read with the wrong schema.
pub const SCHEMA_VERSION: u32 = 1;

const META_FILE: &str = "bazaar-search.json";
const CURRENT_FILE: &str = "CURRENT";
const TOKENIZER: &str = "bazaar";

/// Separates a completion's key from its kind and display text in the `suggest` field.
const SUGGEST_SEP: char = '\u{1f}';
/// A completion's key starts at each of the first this many words of a name.
const SUGGEST_WORD_STARTS: usize = 6;

/// Settings of an index, fixed when it is opened.
#[derive(Debug, Clone)]
pub struct TantivyOptions {
    pub fuzziness: Fuzziness,
    pub ranking: Ranking,
    /// The indexing buffer (tantivy's writer heap), bytes; at least 15 MB.
    pub writer_memory: usize,
}

impl Default for TantivyOptions {
    fn default() -> Self {
        Self {
            fuzziness: Fuzziness::default(),
            ranking: Ranking::default(),
            writer_memory: 64 << 20,
        }
    }
}

/// An index opened at a root directory.
#[derive(Debug)]
pub struct Opened {
    pub index: TantivyIndex,
    /// `Some(why)` when no usable generation was there: the index is empty and should be
    /// rebuilt from the store.
    pub needs_rebuild: Option<String>,
}

#[derive(Debug, Clone, Copy)]
struct Fields {
    id: Field,
    /// The name as written, for display; `name` holds it as words, for matching.
    title: Field,
    name: Field,
    description: Field,
    brand_text: Field,
    category_text: Field,
    variant_text: Field,
    brand: Field,
    category: Field,
    color: Field,
    size: Field,
    price_min: Field,
    price_max: Field,
    currency: Field,
    in_stock: Field,
    views: Field,
    created: Field,
    suggest: Field,
}

fn schema() -> (Schema, Fields) {
    let mut b = Schema::builder();
    let text = || {
        TextOptions::default().set_indexing_options(
            TextFieldIndexing::default()
                .set_tokenizer(TOKENIZER)
                .set_index_option(IndexRecordOption::WithFreqsAndPositions),
        )
    };
    let fields = Fields {
        id: b.add_u64_field("id", INDEXED | STORED | FAST),
        title: b.add_text_field("title", STORED),
        name: b.add_text_field("name", text()),
        description: b.add_text_field("description", text()),
        brand_text: b.add_text_field("brand_text", text()),
        category_text: b.add_text_field("category_text", text()),
        variant_text: b.add_text_field("variant_text", text()),
        brand: b.add_text_field("brand", STRING | STORED | FAST),
        category: b.add_text_field("category", STRING | STORED | FAST),
        color: b.add_text_field("color", STRING | FAST),
        size: b.add_text_field("size", STRING | FAST),
        price_min: b.add_i64_field("price_min", INDEXED | STORED | FAST),
        price_max: b.add_i64_field("price_max", STORED),
        currency: b.add_text_field("currency", STRING | STORED),
        in_stock: b.add_bool_field("in_stock", INDEXED | STORED | FAST),
        views: b.add_u64_field("views", FAST),
        created: b.add_i64_field("created", FAST),
        suggest: b.add_text_field("suggest", STRING),
    };
    (b.build(), fields)
}

/// The embedded index. Cheap to clone: clones share the index.
#[derive(Debug, Clone)]
pub struct TantivyIndex {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    generation: String,
    reader: IndexReader,
    writer: Mutex<IndexWriter>,
    fields: Fields,
    options: TantivyOptions,
    /// Writes since the last commit: (upserted, deleted).
    pending: Mutex<(u64, u64)>,
    /// Searches running at once, at most one per core: beyond that a search waits for a
    /// turn instead of adding a thread, so an overload queues rather than exhausting memory.
    turns: Arc<tokio::sync::Semaphore>,
    /// The completion table of the latest commit.
    completions: Mutex<Option<Arc<Completions>>>,
}

/// Every `suggest` term with its document frequency (deleted documents included), sorted.
#[derive(Debug)]
struct Completions {
    terms: Vec<(String, u64)>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TantivyIndex")
            .field("root", &self.root)
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

impl TantivyIndex {
    /// Opens the generation `CURRENT` names under `root`, or starts an empty one (reported in
    /// [`Opened::needs_rebuild`]) when there is none or it has another schema version.
    pub fn open(root: &Path, options: TantivyOptions) -> Result<Opened, SearchError> {
        std::fs::create_dir_all(root)?;
        let current = std::fs::read_to_string(root.join(CURRENT_FILE)).ok();
        let problem = match current.as_deref().map(str::trim) {
            None => Some("there is no search index yet".to_owned()),
            Some(generation) => match check_version(&root.join(generation)) {
                Ok(()) => {
                    let index = Self::at(root, generation, options.clone(), false)?;
                    return Ok(Opened {
                        index,
                        needs_rebuild: None,
                    });
                }
                Err(error) => Some(error.to_string()),
            },
        };
        let index = Self::create_generation(root, options)?;
        index.make_current()?;
        Ok(Opened {
            index,
            needs_rebuild: problem,
        })
    }

    /// A new empty generation under `root`, not serving until [`Self::make_current`].
    pub fn create_generation(root: &Path, options: TantivyOptions) -> Result<Self, SearchError> {
        let mut stamp = now_ms();
        let generation = loop {
            let name = format!("g-{stamp}");
            if !root.join(&name).exists() {
                break name;
            }
            stamp += 1;
        };
        Self::at(root, &generation, options, true)
    }

    fn at(
        root: &Path,
        generation: &str,
        options: TantivyOptions,
        create: bool,
    ) -> Result<Self, SearchError> {
        let dir = root.join(generation);
        let (schema, fields) = schema();
        let index = if create {
            std::fs::create_dir_all(&dir)?;
            std::fs::write(
                dir.join(META_FILE),
                json!({ "schema_version": SCHEMA_VERSION }).to_string(),
            )?;
            Index::create_in_dir(&dir, schema)?
        } else {
            let index = Index::open_in_dir(&dir)?;
            if index.schema() != schema {
                return Err(SearchError::Version {
                    path: dir.display().to_string(),
                    found: "an unknown schema".into(),
                    wanted: SCHEMA_VERSION,
                });
            }
            index
        };
        index.tokenizers().register(
            TOKENIZER,
            TextAnalyzer::builder(SimpleTokenizer::default())
                .filter(LowerCaser)
                .build(),
        );
        let writer = index.writer_with_num_threads(1, options.writer_memory.max(15 << 20))?;
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()?;
        Ok(Self {
            inner: Arc::new(Inner {
                root: root.to_owned(),
                generation: generation.to_owned(),
                reader,
                writer: Mutex::new(writer),
                fields,
                options,
                pending: Mutex::new((0, 0)),
                completions: Mutex::new(None),
                turns: Arc::new(tokio::sync::Semaphore::new(
                    std::thread::available_parallelism().map_or(2, |n| n.get()),
                )),
            }),
        })
    }

    /// The generation's directory.
    pub fn directory(&self) -> PathBuf {
        self.inner.root.join(&self.inner.generation)
    }

    /// Bytes the serving generation's files take on disk.
    pub fn size_on_disk(&self) -> u64 {
        std::fs::read_dir(self.directory())
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0)
    }

    /// Makes this generation the one `CURRENT` names (write a temporary file, fsync, rename),
    /// then removes every other generation.
    pub fn make_current(&self) -> Result<(), SearchError> {
        self.inner.make_current()
    }

    fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Inner) -> Result<T, SearchError> + Send + 'static,
    ) -> impl std::future::Future<Output = Result<T, SearchError>> + Send + 'static {
        let inner = self.inner.clone();
        async move {
            tokio::task::spawn_blocking(move || work(&inner))
                .await
                .map_err(|e| SearchError::Engine(format!("an index task failed: {e}")))?
        }
    }

    async fn turn(&self) -> Result<tokio::sync::OwnedSemaphorePermit, SearchError> {
        self.inner
            .turns
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| SearchError::Engine("the index is closed".into()))
    }

    /// A search, on the calling thread.
    pub fn search_now(&self, request: &SearchRequest) -> Result<SearchPage, SearchError> {
        self.inner.search(request)
    }

    /// Completions, on the calling thread.
    pub fn suggest_now(&self, prefix: &str, limit: usize) -> Result<Vec<Suggestion>, SearchError> {
        self.inner.suggest(prefix, limit)
    }
}

fn check_version(dir: &Path) -> Result<(), SearchError> {
    let path = dir.join(META_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| SearchError::Version {
        path: dir.display().to_string(),
        found: format!("none ({e})"),
        wanted: SCHEMA_VERSION,
    })?;
    let found = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v.get("schema_version").and_then(serde_json::Value::as_u64));
    if found == Some(u64::from(SCHEMA_VERSION)) {
        Ok(())
    } else {
        Err(SearchError::Version {
            path: dir.display().to_string(),
            found: found.map_or_else(|| "unreadable".to_owned(), |v| v.to_string()),
            wanted: SCHEMA_VERSION,
        })
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Inner {
    fn make_current(&self) -> Result<(), SearchError> {
        let root = &self.root;
        let temporary = root.join(format!("{CURRENT_FILE}.tmp"));
        {
            use std::io::Write;
            let mut file = std::fs::File::create(&temporary)?;
            file.write_all(self.generation.as_bytes())?;
            file.sync_all()?;
        }
        std::fs::rename(&temporary, root.join(CURRENT_FILE))?;
        if let Ok(dir) = std::fs::File::open(root) {
            // The rename itself is durable once the directory is synced.
            let _ = dir.sync_all();
        }
        for entry in std::fs::read_dir(root)?.filter_map(Result::ok) {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with("g-") && name != self.generation.as_str() {
                // A reader of the old generation keeps its open files; Unix removes them
                // when the last one closes.
                if let Err(error) = std::fs::remove_dir_all(entry.path()) {
                    tracing::warn!(%error, generation = %name, "could not remove an old search index generation");
                }
            }
        }
        Ok(())
    }

    fn writer(&self) -> std::sync::MutexGuard<'_, IndexWriter> {
        self.writer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn document(&self, doc: &ProductDoc) -> TantivyDocument {
        let f = &self.fields;
        let mut d = TantivyDocument::default();
        d.add_u64(f.id, doc.id.get());
        d.add_text(f.title, &doc.name);
        d.add_text(f.name, words(&doc.name).join(" "));
        d.add_text(f.description, words(&doc.description).join(" "));
        d.add_text(f.brand_text, words(&doc.brand).join(" "));
        d.add_text(f.category_text, words(&doc.category).join(" "));
        let variant_words: Vec<String> = doc
            .colors
            .iter()
            .chain(&doc.sizes)
            .flat_map(|value| words(value))
            .collect();
        d.add_text(f.variant_text, variant_words.join(" "));
        d.add_text(f.brand, &doc.brand);
        d.add_text(f.category, &doc.category);
        for color in &doc.colors {
            d.add_text(f.color, color);
        }
        for size in &doc.sizes {
            d.add_text(f.size, size);
        }
        d.add_i64(f.price_min, doc.price_min);
        d.add_i64(f.price_max, doc.price_max);
        d.add_text(f.currency, &doc.currency);
        d.add_bool(f.in_stock, doc.in_stock);
        d.add_u64(f.views, doc.views);
        d.add_i64(f.created, doc.created_at_ms);
        // Completions: the name from each of its first words, and the brand.
        let name_words: Vec<&str> = doc.name.split_whitespace().collect();
        for start in 0..name_words.len().min(SUGGEST_WORD_STARTS) {
            let key = name_words[start..].join(" ").to_lowercase();
            d.add_text(f.suggest, format!("{key}{SUGGEST_SEP}p{}", doc.name));
        }
        if !doc.brand.is_empty() {
            d.add_text(
                f.suggest,
                format!("{}{SUGGEST_SEP}b{}", doc.brand.to_lowercase(), doc.brand),
            );
        }
        d
    }

    fn upsert(&self, docs: &[ProductDoc]) -> Result<(), SearchError> {
        let writer = self.writer();
        for doc in docs {
            writer.delete_term(Term::from_field_u64(self.fields.id, doc.id.get()));
            writer.add_document(self.document(doc))?;
        }
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .0 += docs.len() as u64;
        Ok(())
    }

    fn delete(&self, ids: &[ProductId]) -> Result<(), SearchError> {
        let writer = self.writer();
        for id in ids {
            writer.delete_term(Term::from_field_u64(self.fields.id, id.get()));
        }
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .1 += ids.len() as u64;
        Ok(())
    }

    fn commit(&self) -> Result<CommitStats, SearchError> {
        let (upserted, deleted) = {
            let mut writer = self.writer();
            writer.commit()?;
            std::mem::take(&mut *self.pending.lock().unwrap_or_else(PoisonError::into_inner))
        };
        self.reader.reload()?;
        // The completion table of the new generation, built here (on the indexer's thread)
        // rather than by the first completion asked for after the commit.
        self.completions(&self.reader.searcher())?;
        Ok(CommitStats {
            upserted,
            deleted,
            documents: self.reader.searcher().num_docs(),
        })
    }

    /// The query for `request`'s text and filters.
    fn query(&self, request: &SearchRequest) -> Box<dyn Query> {
        let f = &self.fields;
        let r = &self.options.ranking;
        let mut clauses: Vec<(Occur, Box<dyn Query>)> = Vec::new();
        let typed: Vec<String> = words(&request.text)
            .into_iter()
            .take(MAX_QUERY_WORDS)
            .map(|w| w.chars().take(MAX_WORD_CHARS).collect())
            .collect();
        let text_fields = [
            (f.name, r.name_boost),
            (f.brand_text, r.brand_boost),
            (f.category_text, r.category_boost),
            (f.variant_text, r.variant_boost),
            (f.description, r.description_boost),
        ];
        let mut word_clauses: Vec<(Occur, Box<dyn Query>)> = Vec::new();
        for (position, word) in typed.iter().enumerate() {
            let last = position + 1 == typed.len();
            let distance = self.options.fuzziness.distance(word.chars().count());
            let mut alternatives: Vec<(Occur, Box<dyn Query>)> = Vec::new();
            for (field, boost) in text_fields {
                let term = Term::from_field_text(field, word);
                alternatives.push((
                    Occur::Should,
                    Box::new(BoostQuery::new(
                        Box::new(TermQuery::new(term.clone(), IndexRecordOption::WithFreqs)),
                        boost,
                    )),
                ));
                if field == f.description {
                    // Descriptions repeat every name's words; inexact matches there only
                    // add noise.
                    continue;
                }
                let inexact = boost * r.inexact_factor;
                if distance > 0 {
                    alternatives.push((
                        Occur::Should,
                        Box::new(ConstScoreQuery::new(
                            Box::new(FuzzyTermQuery::new(term.clone(), distance, true)),
                            inexact,
                        )),
                    ));
                }
                if last && word.chars().count() >= 2 {
                    alternatives.push((
                        Occur::Should,
                        Box::new(ConstScoreQuery::new(
                            Box::new(FuzzyTermQuery::new_prefix(term, 0, true)),
                            inexact,
                        )),
                    ));
                }
            }
            word_clauses.push((Occur::Should, Box::new(BooleanQuery::new(alternatives))));
        }
        if !word_clauses.is_empty() {
            let required = crate::required_words(word_clauses.len(), r.may_miss);
            clauses.push((
                Occur::Must,
                Box::new(BooleanQuery::with_minimum_required_clauses(
                    word_clauses,
                    required,
                )),
            ));
        }
        let filter = &request.filter;
        let exact = |field: Field, value: &str| -> Box<dyn Query> {
            Box::new(TermQuery::new(
                Term::from_field_text(field, value),
                IndexRecordOption::Basic,
            ))
        };
        let mut filters: Vec<Box<dyn Query>> = Vec::new();
        if let Some(v) = &filter.category {
            filters.push(exact(f.category, v));
        }
        if let Some(v) = &filter.brand {
            filters.push(exact(f.brand, v));
        }
        if let Some(v) = &filter.color {
            filters.push(exact(f.color, v));
        }
        if let Some(v) = &filter.size {
            filters.push(exact(f.size, v));
        }
        if filter.min_price.is_some() || filter.max_price.is_some() {
            let bound = |value: Option<i64>| {
                value.map_or(Bound::Unbounded, |v| {
                    Bound::Included(Term::from_field_i64(f.price_min, v))
                })
            };
            filters.push(Box::new(RangeQuery::new(
                bound(filter.min_price),
                bound(filter.max_price),
            )));
        }
        if let Some(v) = filter.in_stock {
            filters.push(Box::new(TermQuery::new(
                Term::from_field_bool(f.in_stock, v),
                IndexRecordOption::Basic,
            )));
        }
        for query in filters {
            // Filters decide membership only: a constant zero adds nothing to the score.
            clauses.push((Occur::Must, Box::new(ConstScoreQuery::new(query, 0.0))));
        }
        if typed.is_empty() {
            clauses.push((
                Occur::Must,
                Box::new(ConstScoreQuery::new(Box::new(AllQuery), 1.0)),
            ));
        }
        Box::new(BooleanQuery::new(clauses))
    }

    fn search(&self, request: &SearchRequest) -> Result<SearchPage, SearchError> {
        let searcher = self.reader.searcher();
        let query = self.query(request);
        let top = TopDocs::with_limit(request.limit.max(1)).and_offset(request.offset);
        let aggregations = facet_aggregations();
        let (hits, total, facets) = match request.sort {
            SearchSort::Relevance => {
                let ranking = self.options.ranking;
                let collector = top.tweak_score(move |segment: &SegmentReader| {
                    let fast = segment.fast_fields();
                    let in_stock = fast
                        .bool("in_stock")
                        .ok()
                        .map(|c| c.first_or_default_col(false));
                    let views = fast.u64("views").ok().map(|c| c.first_or_default_col(0));
                    move |doc: DocId, score: Score| {
                        let stocked = in_stock.as_ref().is_some_and(|c| c.get_val(doc));
                        let viewed = views.as_ref().map_or(0, |c| c.get_val(doc));
                        score * ranking.boost(stocked, viewed)
                    }
                });
                let (top, total, facets) =
                    searcher.search(&query, &(collector, Count, aggregations))?;
                (
                    self.hits(&searcher, top.into_iter().map(|(s, a)| (Some(s), a)))?,
                    total,
                    facets,
                )
            }
            SearchSort::PriceAsc | SearchSort::PriceDesc | SearchSort::Newest => {
                let (field, order) = match request.sort {
                    SearchSort::PriceAsc => ("price_min", Order::Asc),
                    SearchSort::PriceDesc => ("price_min", Order::Desc),
                    _ => ("created", Order::Desc),
                };
                let collector = top.order_by_fast_field::<i64>(field, order);
                let (top, total, facets) =
                    searcher.search(&query, &(collector, Count, aggregations))?;
                (
                    self.hits(&searcher, top.into_iter().map(|(_, a)| (None, a)))?,
                    total,
                    facets,
                )
            }
        };
        Ok(SearchPage {
            hits,
            total: total as u64,
            facets: read_facets(&facets),
        })
    }

    fn hits(
        &self,
        searcher: &Searcher,
        found: impl Iterator<Item = (Option<Score>, DocAddress)>,
    ) -> Result<Vec<Hit>, SearchError> {
        let f = &self.fields;
        found
            .map(|(score, address)| {
                let doc: TantivyDocument = searcher.doc(address)?;
                let text = |field| {
                    doc.get_first(field)
                        .and_then(|v| v.as_str())
                        .unwrap_or_default()
                        .to_owned()
                };
                let int = |field| doc.get_first(field).and_then(|v| v.as_i64()).unwrap_or(0);
                let id = doc
                    .get_first(f.id)
                    .and_then(|v| v.as_u64())
                    .map(ProductId::new)
                    .ok_or_else(|| SearchError::Engine("a document without an id".into()))?;
                Ok(Hit {
                    id,
                    name: text(f.title),
                    brand: text(f.brand),
                    category: text(f.category),
                    price_min: int(f.price_min),
                    price_max: int(f.price_max),
                    currency: text(f.currency),
                    in_stock: doc
                        .get_first(f.in_stock)
                        .and_then(|v| v.as_bool())
                        .unwrap_or(false),
                    score,
                })
            })
            .collect()
    }

    /// Builds the `suggest` field's terms with their document frequencies, sorted, for
    /// `searcher` and makes it the table completions use: once per commit, by the commit (a
    /// scan of the field's term dictionary in every segment, about 0.1 s at a million
    /// products), so that a completion is a binary search and a scan of the prefix's range.
    /// Until it is built the previous table serves; the counts shown are taken from the
    /// current searcher wherever a segment has deletions, so a deleted product never shows.
    fn completions(&self, searcher: &Searcher) -> Result<Arc<Completions>, SearchError> {
        let mut counts: std::collections::HashMap<String, u64> = Default::default();
        for segment in searcher.segment_readers() {
            let inverted = segment.inverted_index(self.fields.suggest)?;
            let mut stream = inverted.terms().stream()?;
            while stream.advance() {
                if let Ok(term) = std::str::from_utf8(stream.key()) {
                    *counts.entry(term.to_owned()).or_default() +=
                        u64::from(stream.value().doc_freq);
                }
            }
        }
        let mut terms: Vec<(String, u64)> = counts.into_iter().collect();
        terms.sort_unstable();
        let table = Arc::new(Completions { terms });
        // Built without the lock held: completions meanwhile use the previous table.
        *self
            .completions
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(table.clone());
        Ok(table)
    }

    /// The latest completion table, built now if there is none yet (an index just opened).
    fn current_completions(&self, searcher: &Searcher) -> Result<Arc<Completions>, SearchError> {
        let cached = self
            .completions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        match cached {
            Some(table) => Ok(table),
            None => self.completions(searcher),
        }
    }

    fn suggest(&self, prefix: &str, limit: usize) -> Result<Vec<Suggestion>, SearchError> {
        let key: String = prefix
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .to_lowercase()
            .chars()
            .take(100)
            .collect();
        let limit = limit.clamp(1, MAX_SUGGESTIONS);
        if key.is_empty() {
            return Ok(Vec::new());
        }
        let searcher = self.reader.searcher();
        let table = self.current_completions(&searcher)?;
        let start = table
            .terms
            .partition_point(|(term, _)| term.as_str() < key.as_str());
        let candidates = table.terms[start..]
            .iter()
            .take_while(|(term, _)| term.starts_with(&key))
            .map(|(term, count)| (term.clone(), *count));
        let mut ranked: Vec<(String, u64)> = candidates.collect();
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        // Document frequencies count deleted documents until a merge; where a segment has
        // deletions the count is taken exactly, so a deleted product is never suggested.
        let exact = searcher
            .segment_readers()
            .iter()
            .any(|segment| segment.num_deleted_docs() > 0);
        let mut out: Vec<Suggestion> = Vec::new();
        for (term, approximate) in ranked {
            if out.len() >= limit {
                break;
            }
            let Some((_, rest)) = term.split_once(SUGGEST_SEP) else {
                continue;
            };
            let (kind, text) = match rest.split_at_checked(1) {
                Some(("b", text)) => (SuggestionKind::Brand, text),
                Some((_, text)) => (SuggestionKind::Product, text),
                None => continue,
            };
            if out.iter().any(|s| s.text == text && s.kind == kind) {
                continue;
            }
            let count = if exact {
                searcher.search(
                    &TermQuery::new(
                        Term::from_field_text(self.fields.suggest, &term),
                        IndexRecordOption::Basic,
                    ),
                    &Count,
                )? as u64
            } else {
                approximate
            };
            if count > 0 {
                out.push(Suggestion {
                    text: text.to_owned(),
                    kind,
                    count,
                });
            }
        }
        out.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.text.cmp(&b.text)));
        out.truncate(limit);
        Ok(out)
    }
}

fn facet_aggregations() -> AggregationCollector {
    let terms = |field: &str| json!({ "terms": { "field": field, "size": FACET_VALUES } });
    let mut ranges = Vec::new();
    let mut from: Option<i64> = None;
    for &to in PRICE_BUCKETS {
        ranges.push(match from {
            None => json!({ "to": to as f64 }),
            Some(from) => json!({ "from": from as f64, "to": to as f64 }),
        });
        from = Some(to);
    }
    if let Some(from) = from {
        ranges.push(json!({ "from": from as f64 }));
    }
    let request = json!({
        "category": terms("category"),
        "brand": terms("brand"),
        "color": terms("color"),
        "size": terms("size"),
        "price_ranges": { "range": { "field": "price_min", "ranges": ranges } },
    });
    let aggregations: Aggregations =
        serde_json::from_value(request).expect("the facet aggregations are well formed");
    AggregationCollector::from_aggs(aggregations, AggContextParams::default())
}

fn read_facets(results: &AggregationResults) -> Facets {
    let value = serde_json::to_value(results).unwrap_or_default();
    let buckets = |name: &str| -> Vec<serde_json::Value> {
        value
            .get(name)
            .and_then(|v| v.get("buckets"))
            .and_then(|b| b.as_array())
            .cloned()
            .unwrap_or_default()
    };
    let terms = |name: &str| {
        let mut counts: Vec<FacetCount> = buckets(name)
            .iter()
            .filter_map(|b| {
                Some(FacetCount {
                    value: b.get("key")?.as_str()?.to_owned(),
                    count: b.get("doc_count")?.as_u64()?,
                })
            })
            .filter(|c| c.count > 0)
            .collect();
        counts.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.value.cmp(&b.value)));
        counts
    };
    let price_ranges = buckets("price_ranges")
        .iter()
        .map(|b| PriceBucket {
            from: b
                .get("from")
                .and_then(serde_json::Value::as_f64)
                .map(|v| v as i64),
            to: b
                .get("to")
                .and_then(serde_json::Value::as_f64)
                .map(|v| v as i64),
            count: b
                .get("doc_count")
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0),
        })
        .collect();
    Facets {
        category: terms("category"),
        brand: terms("brand"),
        color: terms("color"),
        size: terms("size"),
        price_ranges,
    }
}

#[async_trait]
impl SearchIndex for TantivyIndex {
    fn engine(&self) -> &'static str {
        "tantivy"
    }

    async fn upsert(&self, docs: Vec<ProductDoc>) -> Result<(), SearchError> {
        self.blocking(move |inner| inner.upsert(&docs)).await
    }

    async fn delete(&self, ids: Vec<ProductId>) -> Result<(), SearchError> {
        self.blocking(move |inner| inner.delete(&ids)).await
    }

    async fn commit(&self) -> Result<CommitStats, SearchError> {
        self.blocking(Inner::commit).await
    }

    async fn search(&self, request: SearchRequest) -> Result<SearchPage, SearchError> {
        let _turn = self.turn().await?;
        self.blocking(move |inner| inner.search(&request)).await
    }

    async fn suggest(&self, prefix: String, limit: usize) -> Result<Vec<Suggestion>, SearchError> {
        let _turn = self.turn().await?;
        self.blocking(move |inner| inner.suggest(&prefix, limit))
            .await
    }

    async fn documents(&self) -> Result<u64, SearchError> {
        Ok(self.inner.reader.searcher().num_docs())
    }

    async fn fresh(&self) -> Result<Arc<dyn SearchIndex>, SearchError> {
        let (root, options) = (self.inner.root.clone(), self.inner.options.clone());
        let index = tokio::task::spawn_blocking(move || Self::create_generation(&root, options))
            .await
            .map_err(|e| SearchError::Engine(e.to_string()))??;
        Ok(Arc::new(index))
    }

    async fn promote(&self) -> Result<(), SearchError> {
        self.blocking(Inner::make_current).await
    }

    fn size_on_disk(&self) -> Option<u64> {
        Some(TantivyIndex::size_on_disk(self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SearchFilter;

    fn doc(
        id: u64,
        name: &str,
        brand: &str,
        category: &str,
        colors: &[&str],
        in_stock: bool,
    ) -> ProductDoc {
        ProductDoc {
            id: ProductId::new(id),
            name: name.into(),
            description: format!("The {name} by {brand}, made to last."),
            brand: brand.into(),
            category: category.into(),
            colors: colors.iter().map(|c| c.to_string()).collect(),
            sizes: vec!["M".into(), "L".into()],
            price_min: i64::try_from(id).unwrap() * 1_000,
            price_max: i64::try_from(id).unwrap() * 1_000 + 500,
            currency: "USD".into(),
            in_stock,
            views: 0,
            created_at_ms: i64::try_from(id).unwrap(),
        }
    }

    async fn filled(dir: &Path) -> TantivyIndex {
        let opened = TantivyIndex::open(dir, TantivyOptions::default()).unwrap();
        assert!(
            opened.needs_rebuild.is_some(),
            "a new directory has no index"
        );
        let index = opened.index;
        index
            .upsert(vec![
                doc(
                    1,
                    "Atlas Organic Curtains",
                    "Atlas",
                    "home",
                    &["navy"],
                    true,
                ),
                doc(2, "Acme Classic Curtain", "Acme", "home", &["red"], true),
                doc(
                    3,
                    "Lumen Pro Headphones",
                    "Lumen",
                    "electronics",
                    &["black", "navy"],
                    false,
                ),
                doc(
                    4,
                    "Atlas Rugged Boots",
                    "Atlas",
                    "footwear",
                    &["sand"],
                    true,
                ),
                doc(
                    5,
                    "Ember Curtains Deluxe",
                    "Ember",
                    "home",
                    &["navy"],
                    false,
                ),
            ])
            .await
            .unwrap();
        index.commit().await.unwrap();
        index
    }

    fn ask(text: &str) -> SearchRequest {
        SearchRequest {
            text: text.into(),
            limit: 10,
            ..SearchRequest::default()
        }
    }

    fn ids(page: &SearchPage) -> Vec<u64> {
        page.hits.iter().map(|h| h.id.get()).collect()
    }

    #[tokio::test]
    async fn exact_words_rank_above_typos_and_every_word_must_match() {
        let dir = tempfile::tempdir().unwrap();
        let index = filled(dir.path()).await;
        let page = index.search(ask("curtains")).await.unwrap();
        // "curtain" (one edit) matches, below both exact "curtains"; the sold-out exact one
        // still ranks above the fuzzy one.
        assert_eq!(page.total, 3);
        assert_eq!(ids(&page).last(), Some(&2), "{page:?}");
        let typo = index.search(ask("curtians")).await.unwrap();
        // A transposition is one edit from "curtains"; "curtain" is two away.
        assert_eq!(typo.total, 2);
        // Products matching both words first, then those missing one (`may_miss` = 1).
        let both = index.search(ask("atlas curtains")).await.unwrap();
        assert_eq!(ids(&both)[0], 1);
        assert_eq!(
            both.total, 4,
            "the Atlas boots and the other curtains follow"
        );
        assert_eq!(index.search(ask("laptop")).await.unwrap().total, 0);
        assert_eq!(index.search(ask("laptop charger")).await.unwrap().total, 0);
        // Four letters allow no edit.
        assert_eq!(index.search(ask("boats")).await.unwrap().total, 1);
        assert_eq!(index.search(ask("bots")).await.unwrap().total, 0);
        // The last word is read as a prefix.
        assert_eq!(ids(&index.search(ask("headph")).await.unwrap()), [3]);
    }

    #[tokio::test]
    async fn filters_facets_sorts_and_pages() {
        let dir = tempfile::tempdir().unwrap();
        let index = filled(dir.path()).await;
        let mut request = ask("");
        request.filter = SearchFilter {
            color: Some("navy".into()),
            ..SearchFilter::default()
        };
        request.sort = SearchSort::PriceDesc;
        let page = index.search(request.clone()).await.unwrap();
        assert_eq!(ids(&page), [5, 3, 1]);
        assert_eq!(
            page.facets.category,
            [
                FacetCount {
                    value: "home".into(),
                    count: 2
                },
                FacetCount {
                    value: "electronics".into(),
                    count: 1
                },
            ]
        );
        assert_eq!(
            page.facets.color[0],
            FacetCount {
                value: "navy".into(),
                count: 3
            }
        );
        assert_eq!(
            page.facets
                .price_ranges
                .iter()
                .map(|b| b.count)
                .sum::<u64>(),
            3
        );
        request.offset = 1;
        request.limit = 1;
        assert_eq!(ids(&index.search(request.clone()).await.unwrap()), [3]);
        request.filter.in_stock = Some(true);
        request.offset = 0;
        request.limit = 10;
        assert_eq!(ids(&index.search(request.clone()).await.unwrap()), [1]);
        request.filter = SearchFilter {
            min_price: Some(2_000),
            max_price: Some(4_000),
            ..SearchFilter::default()
        };
        request.sort = SearchSort::Newest;
        assert_eq!(ids(&index.search(request).await.unwrap()), [4, 3, 2]);
    }

    #[tokio::test]
    async fn replaced_and_deleted_documents_leave_results_and_suggestions() {
        let dir = tempfile::tempdir().unwrap();
        let index = filled(dir.path()).await;
        let suggestions = index.suggest("atl".into(), 10).await.unwrap();
        assert_eq!(
            suggestions[0],
            Suggestion {
                text: "Atlas".into(),
                kind: SuggestionKind::Brand,
                count: 2
            }
        );
        assert_eq!(suggestions.len(), 3, "{suggestions:?}");
        let words = index.suggest("curt".into(), 10).await.unwrap();
        assert!(
            words.iter().any(|s| s.text == "Ember Curtains Deluxe"),
            "{words:?}"
        );
        index.delete(vec![ProductId::new(4)]).await.unwrap();
        index
            .upsert(vec![doc(
                1,
                "Atlas Organic Drapes",
                "Atlas",
                "home",
                &["navy"],
                true,
            )])
            .await
            .unwrap();
        assert_eq!(
            index.search(ask("boots")).await.unwrap().total,
            1,
            "not visible before the commit"
        );
        let stats = index.commit().await.unwrap();
        assert_eq!((stats.upserted, stats.deleted, stats.documents), (1, 1, 4));
        assert_eq!(index.search(ask("boots")).await.unwrap().total, 0);
        assert_eq!(ids(&index.search(ask("drapes")).await.unwrap()), [1]);
        assert!(
            !ids(&index.search(ask("curtains")).await.unwrap()).contains(&1),
            "the replaced document is gone"
        );
        let suggestions = index.suggest("atlas".into(), 10).await.unwrap();
        assert!(
            suggestions
                .iter()
                .all(|s| s.text != "Atlas Rugged Boots" && s.text != "Atlas Organic Curtains"),
            "{suggestions:?}"
        );
        assert_eq!(suggestions[0].count, 1);
    }

    #[tokio::test]
    async fn a_rebuilt_generation_serves_after_a_restart_and_another_version_is_rebuilt() {
        let dir = tempfile::tempdir().unwrap();
        let index = filled(dir.path()).await;
        let next = index.fresh().await.unwrap();
        next.upsert(vec![doc(9, "Quill Kite", "Quill", "toys", &["red"], true)])
            .await
            .unwrap();
        next.commit().await.unwrap();
        assert_eq!(
            index.search(ask("kite")).await.unwrap().total,
            0,
            "the old one still serves"
        );
        next.promote().await.unwrap();
        drop((index, next));
        let reopened = TantivyIndex::open(dir.path(), TantivyOptions::default()).unwrap();
        assert!(reopened.needs_rebuild.is_none());
        assert_eq!(reopened.index.search(ask("kite")).await.unwrap().total, 1);
        let generations = std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with("g-")
            })
            .count();
        assert_eq!(generations, 1, "the replaced generation is removed");
        let meta = reopened.index.directory().join(META_FILE);
        drop(reopened);
        std::fs::write(&meta, r#"{"schema_version": 0}"#).unwrap();
        let again = TantivyIndex::open(dir.path(), TantivyOptions::default()).unwrap();
        let why = again.needs_rebuild.expect("another version is rebuilt");
        assert!(why.contains("schema version 0"), "{why}");
        assert_eq!(again.index.search(ask("kite")).await.unwrap().total, 0);
    }
}
