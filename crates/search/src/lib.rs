//! Product search: what a shopper types, answered from an index kept beside the store.
//!
//! [`SearchIndex`] is the layer's contract: documents in ([`ProductDoc`], one per product,
//! replaced whole), a [`SearchRequest`] out as a [`SearchPage`] of hits with facet counts, and
//! prefix [`Suggestion`]s. Writes are buffered until [`SearchIndex::commit`], which makes them
//! visible to searches all at once; the caller decides how often (`search.commit_interval`).
//!
//! - [`tantivy_index::TantivyIndex`] is the embedded engine: BM25 over the text fields with
//!   field boosts, typo tolerance by edit distance, boosts for stock and popularity, facets
//!   from fast-field aggregations. Its files live in one *generation* directory, named by the
//!   `CURRENT` file beside it, so a rebuild writes a new generation and swaps by one rename.
//! - [`fts5::Fts5Index`] is the baseline it is measured against: SQLite FTS5 with its `bm25()`,
//!   the search a small shop gets from its database — no typo tolerance, no boosts.
//!
//! Neither knows the store: the caller turns products into documents ([`ProductDoc::from`]), so
//! the index can be rebuilt from any source and an external engine (OpenSearch, Meilisearch)
//! could implement the same trait.

pub mod fts5;
pub mod tantivy_index;

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use bazaar_domain::{ProductId, ProductWithVariants};

/// What a product contributes to the index.
#[derive(Debug, Clone, PartialEq)]
pub struct ProductDoc {
    pub id: ProductId,
    pub name: String,
    pub description: String,
    pub brand: String,
    pub category: String,
    /// Distinct variant colours and sizes, in first-seen order.
    pub colors: Vec<String>,
    pub sizes: Vec<String>,
    /// The cheapest and dearest variant, in minor units of `currency`.
    pub price_min: i64,
    pub price_max: i64,
    pub currency: String,
    /// Whether any variant has stock on hand.
    pub in_stock: bool,
    /// Views recorded so far: the popularity signal.
    pub views: u64,
    pub created_at_ms: i64,
}

impl From<&ProductWithVariants> for ProductDoc {
    fn from(p: &ProductWithVariants) -> Self {
        let mut colors: Vec<String> = Vec::new();
        let mut sizes: Vec<String> = Vec::new();
        for v in &p.variants {
            if !colors.contains(&v.color) {
                colors.push(v.color.clone());
            }
            if !sizes.contains(&v.size) {
                sizes.push(v.size.clone());
            }
        }
        let prices = p.variants.iter().map(|v| v.price.amount);
        let product = &p.product;
        Self {
            id: product.id,
            name: product.name.clone(),
            description: product.description.clone(),
            brand: product.brand.clone(),
            category: product.category.clone(),
            colors,
            sizes,
            price_min: prices.clone().min().unwrap_or(product.price.amount),
            price_max: prices.max().unwrap_or(product.price.amount),
            currency: product.price.currency.to_string(),
            in_stock: p.variants.iter().any(|v| v.stock_level > 0),
            views: u64::try_from(product.view_count).unwrap_or(0),
            created_at_ms: product.created_at_ms,
        }
    }
}

/// How results are ordered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SearchSort {
    /// By score: BM25 with boosts (see `docs/search.md`).
    #[default]
    Relevance,
    PriceAsc,
    PriceDesc,
    Newest,
}

impl SearchSort {
    pub const NAMES: &'static str = "relevance, price_asc, price_desc or newest";

    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "relevance" => Self::Relevance,
            "price_asc" => Self::PriceAsc,
            "price_desc" => Self::PriceDesc,
            "newest" => Self::Newest,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Relevance => "relevance",
            Self::PriceAsc => "price_asc",
            Self::PriceDesc => "price_desc",
            Self::Newest => "newest",
        }
    }
}

/// Exact-match filters; every one given must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SearchFilter {
    pub category: Option<String>,
    pub brand: Option<String>,
    /// The product has a variant of this colour (or size).
    pub color: Option<String>,
    pub size: Option<String>,
    /// The product's lowest price is within these bounds, inclusive, in minor units.
    pub min_price: Option<i64>,
    pub max_price: Option<i64>,
    pub in_stock: Option<bool>,
}

/// One search.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SearchRequest {
    /// What the shopper typed; empty matches every product (a filtered browse).
    pub text: String,
    pub filter: SearchFilter,
    pub sort: SearchSort,
    /// Hits to skip (the cursor's position) and to return.
    pub offset: usize,
    pub limit: usize,
}

/// The deepest position a cursor may reach: deeper pages are refused, as search engines do
/// (Elasticsearch's `max_result_window`), since each costs a sort of every hit before it.
pub const MAX_WINDOW: usize = 10_000;

/// One product found.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    pub id: ProductId,
    pub name: String,
    pub brand: String,
    pub category: String,
    pub price_min: i64,
    pub price_max: i64,
    pub currency: String,
    pub in_stock: bool,
    /// The ranking score (only with [`SearchSort::Relevance`]).
    pub score: Option<f32>,
}

/// How many of the matching products have a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FacetCount {
    pub value: String,
    pub count: u64,
}

/// A price bucket: `[from, to)` in minor units, either end open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriceBucket {
    pub from: Option<i64>,
    pub to: Option<i64>,
    pub count: u64,
}

/// The price buckets every search counts, in minor units: under 25, 25–50, 50–100, 100–250,
/// 250 and over.
pub const PRICE_BUCKETS: &[i64] = &[2_500, 5_000, 10_000, 25_000];

/// Facet counts over every product the search matched (not just the page).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facets {
    pub category: Vec<FacetCount>,
    pub brand: Vec<FacetCount>,
    pub color: Vec<FacetCount>,
    pub size: Vec<FacetCount>,
    pub price_ranges: Vec<PriceBucket>,
}

/// Values shown per facet, most frequent first (ties by value).
pub const FACET_VALUES: usize = 20;

/// A page of results.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchPage {
    pub hits: Vec<Hit>,
    /// Products matching in all (the page is a window onto them).
    pub total: u64,
    pub facets: Facets,
}

/// What a completion completes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SuggestionKind {
    Product,
    Brand,
}

/// One autocomplete completion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suggestion {
    pub text: String,
    pub kind: SuggestionKind,
    /// Products it would find.
    pub count: u64,
}

/// Completions returned at most.
pub const MAX_SUGGESTIONS: usize = 10;

/// How far a typed word may be from an indexed one and still match
/// (`search.typo_tolerance`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Fuzziness {
    /// Words at least this long match within one edit (0 turns typo tolerance off).
    pub one_edit_from: usize,
    /// Words at least this long match within two edits.
    pub two_edits_from: usize,
}

impl Default for Fuzziness {
    fn default() -> Self {
        Self {
            one_edit_from: 5,
            two_edits_from: 9,
        }
    }
}

impl Fuzziness {
    /// The edits allowed for a word of `chars` characters.
    pub fn distance(self, chars: usize) -> u8 {
        if self.one_edit_from == 0 || chars < self.one_edit_from {
            0
        } else if chars < self.two_edits_from {
            1
        } else {
            2
        }
    }
}

/// The ranking's knobs (`search.ranking.*`; `docs/search.md` gives the formula).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Ranking {
    pub name_boost: f32,
    pub brand_boost: f32,
    pub category_boost: f32,
    pub variant_boost: f32,
    pub description_boost: f32,
    /// A fuzzy or prefix match scores this share of an exact one.
    pub inexact_factor: f32,
    /// Words of a query of two or more that a product may miss and still match (0: every
    /// word must match). Products matching more words score higher, by BM25's sum.
    pub may_miss: usize,
    /// A product with stock scores `1 + in_stock_boost` times one without.
    pub in_stock_boost: f32,
    /// Each tenfold of views adds this share: `1 + popularity_boost × log10(1 + views)`.
    pub popularity_boost: f32,
}

impl Default for Ranking {
    fn default() -> Self {
        Self {
            name_boost: 3.0,
            brand_boost: 2.0,
            category_boost: 1.5,
            variant_boost: 1.0,
            description_boost: 0.5,
            inexact_factor: 0.3,
            may_miss: 1,
            in_stock_boost: 0.25,
            popularity_boost: 0.1,
        }
    }
}

impl Ranking {
    /// The multiplier applied to a product's text score.
    pub fn boost(&self, in_stock: bool, views: u64) -> f32 {
        let stock = if in_stock {
            1.0 + self.in_stock_boost
        } else {
            1.0
        };
        stock * (1.0 + self.popularity_boost * ((1 + views) as f32).log10())
    }
}

/// What went wrong in the index.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    /// The engine failed (I/O, a corrupt segment, a panicked indexing thread).
    #[error("search index: {0}")]
    Engine(String),
    /// The index on disk was written by another version of Bazaar's schema.
    #[error("the search index at {path} has schema version {found}, this build uses {wanted}")]
    Version {
        path: String,
        found: String,
        wanted: u32,
    },
}

impl From<tantivy::TantivyError> for SearchError {
    fn from(error: tantivy::TantivyError) -> Self {
        Self::Engine(error.to_string())
    }
}

impl From<sqlx::Error> for SearchError {
    fn from(error: sqlx::Error) -> Self {
        Self::Engine(error.to_string())
    }
}

impl From<std::io::Error> for SearchError {
    fn from(error: std::io::Error) -> Self {
        Self::Engine(error.to_string())
    }
}

/// What a commit did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommitStats {
    /// Documents added or replaced, and removed, since the previous commit.
    pub upserted: u64,
    pub deleted: u64,
    /// Searchable documents after it.
    pub documents: u64,
}

/// A product search index. Writes are buffered until [`commit`](SearchIndex::commit); a
/// search sees the last commit, never part of one. Every method may be called from many
/// tasks at once.
#[async_trait]
pub trait SearchIndex: Send + Sync + fmt::Debug {
    /// The engine's name (`tantivy`, `fts5`), for metrics and logs.
    fn engine(&self) -> &'static str;

    /// Adds each document, replacing any with the same product id.
    async fn upsert(&self, docs: Vec<ProductDoc>) -> Result<(), SearchError>;

    /// Removes the products' documents (absent ones are ignored).
    async fn delete(&self, ids: Vec<ProductId>) -> Result<(), SearchError>;

    /// Makes every write so far visible and durable.
    async fn commit(&self) -> Result<CommitStats, SearchError>;

    async fn search(&self, request: SearchRequest) -> Result<SearchPage, SearchError>;

    /// Up to `limit` (at most [`MAX_SUGGESTIONS`]) completions of `prefix`: product names
    /// and brands that start with it, or have a word that does, most products first.
    async fn suggest(&self, prefix: String, limit: usize) -> Result<Vec<Suggestion>, SearchError>;

    /// Searchable documents.
    async fn documents(&self) -> Result<u64, SearchError>;

    /// A new, empty index of the same kind and settings that does not serve yet: what a
    /// rebuild fills while this one keeps answering.
    async fn fresh(&self) -> Result<Arc<dyn SearchIndex>, SearchError>;

    /// Makes this index the one that serves from now on, also after a restart, and drops
    /// the ones it replaces (an external engine would swap an alias).
    async fn promote(&self) -> Result<(), SearchError>;

    /// Bytes the index takes on disk, when it can tell.
    fn size_on_disk(&self) -> Option<u64>;
}

/// Lowercases and splits text into the words both engines match on: runs of letters and
/// digits, apostrophes dropped (`Chef's` → `chefs`), so a query is read as the index was.
pub fn words(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    for c in text.chars() {
        if c.is_alphanumeric() {
            word.extend(c.to_lowercase());
        } else if c == '\'' || c == '’' {
            continue;
        } else if !word.is_empty() {
            out.push(std::mem::take(&mut word));
        }
    }
    if !word.is_empty() {
        out.push(word);
    }
    out
}

/// How many of a query's `n` words a product must match when `may_miss` of them may be
/// missing: at least one, whatever `may_miss` says.
pub fn required_words(n: usize, may_miss: usize) -> usize {
    n.saturating_sub(may_miss).max(1).min(n)
}

/// Words of a query at most: longer ones are cut, as are very long words.
pub const MAX_QUERY_WORDS: usize = 16;
pub const MAX_WORD_CHARS: usize = 40;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_read_as_the_index_reads_them() {
        assert_eq!(words("Chef's Knife"), ["chefs", "knife"]);
        assert_eq!(words("  T-Shirt, XL!"), ["t", "shirt", "xl"]);
        assert_eq!(words("Ünïcode ÉTÉ"), ["ünïcode", "été"]);
        assert!(words(" -- ").is_empty());
    }

    #[test]
    fn fuzziness_follows_word_length() {
        let f = Fuzziness::default();
        assert_eq!(
            [3, 4, 5, 8, 9, 20].map(|n| f.distance(n)),
            [0, 0, 1, 1, 2, 2]
        );
        let off = Fuzziness {
            one_edit_from: 0,
            two_edits_from: 0,
        };
        assert_eq!(off.distance(12), 0);
    }

    #[test]
    fn boosts_favour_stock_and_popularity() {
        let r = Ranking::default();
        assert!(r.boost(true, 0) > r.boost(false, 0));
        assert!(r.boost(false, 1000) > r.boost(false, 10));
        assert!((r.boost(false, 0) - 1.0).abs() < 1e-6);
    }
}
