//! Search relevance, measured: a judged query set over the demo catalog, scored by nDCG@10
//! and the zero-result rate, for the tantivy index and the SQLite FTS5 baseline on the same
//! documents (`bazaar lab relevance`, and a regression test).
//!
//! Each query carries its *intent* — the brand, product type, adjective, category, colour
//! or size the shopper means, whatever they typed (a typo, half a word). A product's grade
//! follows from the intent alone, never from any engine's answer:
//!
//! - 3: it has every attribute of the intent;
//! - 2: it is the product type meant and misses one other attribute;
//! - 1: it is the product type meant, or the brand meant in the category meant;
//! - 0: anything else, and anything a query's filter excludes.
//!
//! The grades are committed in `relevance/judgements.tsv` (query, product id, grade); a
//! test checks that the file is what the rules give for the demo catalog, so a change to the
//! catalog cannot silently change what is measured. Queries that should find nothing have
//! no judged products: they count in the zero-result figures, not in nDCG.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use bazaar_search::fts5::Fts5Index;
use bazaar_search::tantivy_index::{TantivyIndex, TantivyOptions};
use bazaar_search::{ProductDoc, Ranking, SearchFilter, SearchIndex, SearchRequest};
use bazaar_shop::demo::{DEFAULT_SEED, DemoCatalog};
use bazaar_store::ProductWithVariants;

/// The demo catalog the judgements are for: what `bazaar serve` loads by default.
pub const CATALOG_SIZE: usize = 1_000;

/// The committed judgements: `query id \t product id \t grade`, grades 1–3.
pub const JUDGEMENTS: &str = include_str!("relevance/judgements.tsv");

/// What a query is about.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Intent {
    pub brand: Option<String>,
    pub adjective: Option<String>,
    /// The product type, as the catalog names it (`Dutch Oven`).
    pub noun: Option<String>,
    pub category: Option<String>,
    pub color: Option<String>,
    pub size: Option<String>,
}

/// One judged query.
#[derive(Debug, Clone)]
pub struct JudgedQuery {
    pub id: &'static str,
    /// exact, brand-category, misspelling, partial, filters, category or nothing.
    pub kind: &'static str,
    pub text: &'static str,
    pub filter: SearchFilter,
    pub intent: Intent,
}

fn query(
    id: &'static str,
    kind: &'static str,
    text: &'static str,
    intent: &[(&str, &'static str)],
) -> JudgedQuery {
    let mut i = Intent::default();
    for (key, value) in intent {
        let slot = match *key {
            "brand" => &mut i.brand,
            "adjective" => &mut i.adjective,
            "noun" => &mut i.noun,
            "category" => &mut i.category,
            "color" => &mut i.color,
            "size" => &mut i.size,
            other => unreachable!("no intent attribute `{other}`"),
        };
        *slot = Some((*value).to_owned());
    }
    JudgedQuery {
        id,
        kind,
        text,
        filter: SearchFilter::default(),
        intent: i,
    }
}

fn filtered(mut q: JudgedQuery, filter: SearchFilter) -> JudgedQuery {
    // What a filter asks for is part of what the shopper means.
    q.intent.color = filter.color.clone().or(q.intent.color);
    q.intent.size = filter.size.clone().or(q.intent.size);
    q.intent.category = filter.category.clone().or(q.intent.category);
    q.filter = filter;
    q
}

fn only(color: Option<&str>, size: Option<&str>, category: Option<&str>) -> SearchFilter {
    SearchFilter {
        color: color.map(str::to_owned),
        size: size.map(str::to_owned),
        category: category.map(str::to_owned),
        ..SearchFilter::default()
    }
}

/// The judged query set: 66 queries.
pub fn queries() -> Vec<JudgedQuery> {
    let n = "noun";
    let b = "brand";
    let a = "adjective";
    let c = "category";
    vec![
        // Exact product names.
        query(
            "exact-01",
            "exact",
            "Copperleaf Classic Dutch Oven",
            &[(b, "Copperleaf"), (a, "Classic"), (n, "Dutch Oven")],
        ),
        query(
            "exact-02",
            "exact",
            "Meridian Compact Lip Balm",
            &[(b, "Meridian"), (a, "Compact"), (n, "Lip Balm")],
        ),
        query(
            "exact-03",
            "exact",
            "Atlas Classic Table Lamp",
            &[(b, "Atlas"), (a, "Classic"), (n, "Table Lamp")],
        ),
        query(
            "exact-04",
            "exact",
            "Verdant Compact Smartwatch",
            &[(b, "Verdant"), (a, "Compact"), (n, "Smartwatch")],
        ),
        query(
            "exact-05",
            "exact",
            "Lumen Ultra Slip-Ons",
            &[(b, "Lumen"), (a, "Ultra"), (n, "Slip-Ons")],
        ),
        query(
            "exact-06",
            "exact",
            "Tidewater Pro Throw Blanket",
            &[(b, "Tidewater"), (a, "Pro"), (n, "Throw Blanket")],
        ),
        query(
            "exact-07",
            "exact",
            "Acme Classic Headphones",
            &[(b, "Acme"), (a, "Classic"), (n, "Headphones")],
        ),
        query(
            "exact-08",
            "exact",
            "Kestrel Weatherproof Jacket",
            &[(b, "Kestrel"), (a, "Weatherproof"), (n, "Jacket")],
        ),
        query(
            "exact-09",
            "exact",
            "Verdant Modern Chef's Knife",
            &[(b, "Verdant"), (a, "Modern"), (n, "Chef's Knife")],
        ),
        query(
            "exact-10",
            "exact",
            "Harbor & Pine Vintage Shampoo",
            &[(b, "Harbor & Pine"), (a, "Vintage"), (n, "Shampoo")],
        ),
        query(
            "exact-11",
            "exact",
            "Fjordline Heritage Yoga Mat",
            &[(b, "Fjordline"), (a, "Heritage"), (n, "Yoga Mat")],
        ),
        query(
            "exact-12",
            "exact",
            "harbor & pine rugged kite",
            &[(b, "Harbor & Pine"), (a, "Rugged"), (n, "Kite")],
        ),
        // Brand and product type, or brand and category.
        query(
            "brand-01",
            "brand-category",
            "atlas curtains",
            &[(b, "Atlas"), (n, "Curtains")],
        ),
        query(
            "brand-02",
            "brand-category",
            "lumen headphones",
            &[(b, "Lumen"), (n, "Headphones")],
        ),
        query(
            "brand-03",
            "brand-category",
            "northwind jacket",
            &[(b, "Northwind"), (n, "Jacket")],
        ),
        query(
            "brand-04",
            "brand-category",
            "acme sneakers",
            &[(b, "Acme"), (n, "Sneakers")],
        ),
        query(
            "brand-05",
            "brand-category",
            "copperleaf kitchen",
            &[(b, "Copperleaf"), (c, "kitchen")],
        ),
        query(
            "brand-06",
            "brand-category",
            "solace footwear",
            &[(b, "Solace"), (c, "footwear")],
        ),
        query(
            "brand-07",
            "brand-category",
            "kestrel electronics",
            &[(b, "Kestrel"), (c, "electronics")],
        ),
        query(
            "brand-08",
            "brand-category",
            "fjordline toys",
            &[(b, "Fjordline"), (c, "toys")],
        ),
        query(
            "brand-09",
            "brand-category",
            "brightwell kettle",
            &[(b, "Brightwell"), (n, "Kettle")],
        ),
        query(
            "brand-10",
            "brand-category",
            "ember backpack",
            &[(b, "Ember"), (n, "Backpack")],
        ),
        query(
            "brand-11",
            "brand-category",
            "quill board game",
            &[(b, "Quill"), (n, "Board Game")],
        ),
        query(
            "brand-12",
            "brand-category",
            "oakridge beauty",
            &[(b, "Oakridge"), (c, "beauty")],
        ),
        // Misspellings.
        query("typo-01", "misspelling", "curtians", &[(n, "Curtains")]),
        query("typo-02", "misspelling", "hedphones", &[(n, "Headphones")]),
        query("typo-03", "misspelling", "sneekers", &[(n, "Sneakers")]),
        query("typo-04", "misspelling", "backpak", &[(n, "Backpack")]),
        query(
            "typo-05",
            "misspelling",
            "moisturizer",
            &[(n, "Moisturiser")],
        ),
        query("typo-06", "misspelling", "smartwach", &[(n, "Smartwatch")]),
        query(
            "typo-07",
            "misspelling",
            "kestral boots",
            &[(b, "Kestrel"), (n, "Boots")],
        ),
        query(
            "typo-08",
            "misspelling",
            "tidewatter sandals",
            &[(b, "Tidewater"), (n, "Sandals")],
        ),
        query(
            "typo-09",
            "misspelling",
            "brightwel kettle",
            &[(b, "Brightwell"), (n, "Kettle")],
        ),
        query(
            "typo-10",
            "misspelling",
            "bluetooth speeker",
            &[(n, "Bluetooth Speaker")],
        ),
        query("typo-11", "misspelling", "sunscren", &[(n, "Sunscreen")]),
        query(
            "typo-12",
            "misspelling",
            "weatherprof jacket",
            &[(a, "Weatherproof"), (n, "Jacket")],
        ),
        // Partial words, as typed so far.
        query("partial-01", "partial", "headph", &[(n, "Headphones")]),
        query("partial-02", "partial", "curt", &[(n, "Curtains")]),
        query("partial-03", "partial", "sneak", &[(n, "Sneakers")]),
        query("partial-04", "partial", "backp", &[(n, "Backpack")]),
        query("partial-05", "partial", "moistur", &[(n, "Moisturiser")]),
        query(
            "partial-06",
            "partial",
            "lumen head",
            &[(b, "Lumen"), (n, "Headphones")],
        ),
        query("partial-07", "partial", "dutch ov", &[(n, "Dutch Oven")]),
        query("partial-08", "partial", "yoga m", &[(n, "Yoga Mat")]),
        query(
            "partial-09",
            "partial",
            "atlas cardi",
            &[(b, "Atlas"), (n, "Cardigan")],
        ),
        query("partial-10", "partial", "smartw", &[(n, "Smartwatch")]),
        // Text with colour, size and category filters.
        filtered(
            query("filter-01", "filters", "hoodie", &[(n, "Hoodie")]),
            only(Some("navy"), None, None),
        ),
        filtered(
            query("filter-02", "filters", "", &[]),
            only(Some("black"), Some("XL"), Some("apparel")),
        ),
        filtered(
            query("filter-03", "filters", "boots", &[(n, "Boots")]),
            only(None, Some("42"), None),
        ),
        filtered(
            query("filter-04", "filters", "t-shirt", &[(n, "T-Shirt")]),
            only(Some("red"), Some("M"), None),
        ),
        filtered(
            query("filter-05", "filters", "dutch oven", &[(n, "Dutch Oven")]),
            only(Some("grey"), None, None),
        ),
        filtered(
            query("filter-06", "filters", "tablet", &[(n, "Tablet")]),
            only(None, Some("128GB"), None),
        ),
        filtered(
            query("filter-07", "filters", "face serum", &[(n, "Face Serum")]),
            only(None, Some("50ml"), None),
        ),
        filtered(
            query("filter-08", "filters", "rug", &[(n, "Rug")]),
            only(Some("olive"), Some("Large"), None),
        ),
        filtered(
            query("filter-09", "filters", "atlas", &[(b, "Atlas")]),
            only(Some("red"), None, Some("footwear")),
        ),
        filtered(
            query("filter-10", "filters", "kettle", &[(n, "Kettle")]),
            only(Some("black"), None, Some("kitchen")),
        ),
        // A category or a kind of product.
        query(
            "category-01",
            "category",
            "electronics",
            &[(c, "electronics")],
        ),
        query(
            "category-02",
            "category",
            "vintage hoodie",
            &[(a, "Vintage"), (n, "Hoodie")],
        ),
        query(
            "category-03",
            "category",
            "organic curtains",
            &[(a, "Organic"), (n, "Curtains")],
        ),
        query(
            "category-04",
            "category",
            "eau de parfum",
            &[(n, "Eau de Parfum")],
        ),
        // Nothing in the catalog answers these.
        query("nothing-01", "nothing", "laptop", &[]),
        query("nothing-02", "nothing", "iphone charger", &[]),
        query("nothing-03", "nothing", "zzqx", &[]),
        query("nothing-04", "nothing", "refrigerator", &[]),
        query("nothing-05", "nothing", "atlas laptop", &[]),
        query("nothing-06", "nothing", "lawn mower", &[]),
    ]
}

/// The lab's `search` workload: each judged query as a query string (its filters included),
/// then every word of the demo catalog's product names, brands and colours as a one-word
/// search, each URL-encoded.
pub fn workload_queries() -> Vec<String> {
    let mut out: Vec<String> = queries()
        .iter()
        .map(|q| {
            let f = &q.filter;
            let mut parts = vec![format!("q={}", encode(q.text))];
            for (name, value) in [
                ("color", &f.color),
                ("size", &f.size),
                ("category", &f.category),
            ] {
                if let Some(value) = value {
                    parts.push(format!("{name}={}", encode(value)));
                }
            }
            parts.join("&")
        })
        .collect();
    out.extend(vocabulary().iter().map(|w| format!("q={}", encode(w))));
    out
}

/// The lab's `suggest` workload: the first 1 to 6 characters of each word of the demo
/// catalog's names and colours, as typed, URL-encoded.
pub fn suggest_queries() -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for word in vocabulary() {
        let chars: Vec<char> = word.chars().collect();
        for n in 1..=chars.len().min(6) {
            let query = format!("q={}", encode(&chars[..n].iter().collect::<String>()));
            if !out.contains(&query) {
                out.push(query);
            }
        }
    }
    out
}

/// Every word of the demo catalog's names and colours, first seen first.
fn vocabulary() -> Vec<String> {
    let mut words: Vec<String> = Vec::new();
    for p in catalog() {
        let colors = p.variants.iter().map(|v| v.color.clone());
        for word in p.product.name.split(' ').map(str::to_owned).chain(colors) {
            if !words.contains(&word) {
                words.push(word);
            }
        }
    }
    words
}

fn encode(text: &str) -> String {
    let mut out = String::new();
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(char::from(byte));
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

/// The demo catalog the set is judged on.
pub fn catalog() -> Vec<ProductWithVariants> {
    let mut demo = DemoCatalog::new(DEFAULT_SEED);
    (0..CATALOG_SIZE).map(|_| demo.next_product()).collect()
}

/// A product's grade for a query, by the rules at the top of this module.
pub fn grade(query: &JudgedQuery, p: &ProductWithVariants) -> u8 {
    let intent = &query.intent;
    let product = &p.product;
    let filter = &query.filter;
    let passes = filter
        .color
        .as_ref()
        .is_none_or(|c| p.variants.iter().any(|v| &v.color == c))
        && filter
            .size
            .as_ref()
            .is_none_or(|s| p.variants.iter().any(|v| &v.size == s))
        && filter
            .category
            .as_ref()
            .is_none_or(|c| &product.category == c);
    if !passes {
        return 0;
    }
    let noun = intent
        .noun
        .as_ref()
        .map(|n| product.name.ends_with(&format!(" {n}")));
    let checks = [
        intent.brand.as_ref().map(|b| &product.brand == b),
        intent
            .adjective
            .as_ref()
            .map(|a| product.name.split(' ').any(|w| w == a)),
        noun,
        intent.category.as_ref().map(|c| &product.category == c),
        intent
            .color
            .as_ref()
            .map(|c| p.variants.iter().any(|v| &v.color == c)),
        intent
            .size
            .as_ref()
            .map(|s| p.variants.iter().any(|v| &v.size == s)),
    ];
    let asked = checks.iter().flatten().count();
    let held = checks.iter().flatten().filter(|held| **held).count();
    if asked == 0 {
        return 0;
    }
    let brand_in_category = intent.brand.as_ref().is_some_and(|b| &product.brand == b)
        && intent
            .category
            .as_ref()
            .is_some_and(|c| &product.category == c);
    if held == asked {
        3
    } else if noun == Some(true) && held + 1 == asked {
        2
    } else if noun == Some(true) || brand_in_category {
        1
    } else {
        0
    }
}

/// The judgements as the rules give them, in the committed file's format.
pub fn judgements_from_rules() -> String {
    let products = catalog();
    let mut out = String::from(
        "# query\tproduct_id\tgrade  (made by bazaar::relevance::grade; see its docs)\n",
    );
    for q in queries() {
        for p in &products {
            let g = grade(&q, p);
            if g > 0 {
                out.push_str(&format!("{}\t{}\t{g}\n", q.id, p.product.id));
            }
        }
    }
    out
}

/// The committed judgements: query id → product id → grade.
pub fn judgements() -> HashMap<String, HashMap<u64, u8>> {
    let mut out: HashMap<String, HashMap<u64, u8>> = HashMap::new();
    for line in JUDGEMENTS
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let mut parts = line.split('\t');
        let (Some(q), Some(id), Some(g)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if let (Ok(id), Ok(g)) = (id.parse(), g.parse()) {
            out.entry(q.to_owned()).or_default().insert(id, g);
        }
    }
    out
}

/// nDCG@k of `ranked` product ids against `judged` grades (exponential gain).
pub fn ndcg(ranked: &[u64], judged: &HashMap<u64, u8>, k: usize) -> f64 {
    let gain = |g: u8| f64::from((1u32 << g) - 1);
    let dcg: f64 = ranked
        .iter()
        .take(k)
        .enumerate()
        .map(|(i, id)| gain(judged.get(id).copied().unwrap_or(0)) / ((i + 2) as f64).log2())
        .sum();
    let mut ideal: Vec<u8> = judged.values().copied().collect();
    ideal.sort_unstable_by(|a, b| b.cmp(a));
    let idcg: f64 = ideal
        .iter()
        .take(k)
        .enumerate()
        .map(|(i, g)| gain(*g) / ((i + 2) as f64).log2())
        .sum();
    if idcg == 0.0 { 0.0 } else { dcg / idcg }
}

/// One engine's scores on the judged set.
#[derive(Debug, Clone, PartialEq)]
pub struct Scores {
    pub engine: &'static str,
    /// Mean nDCG@10 over the queries with judged products.
    pub ndcg10: f64,
    /// Share of queries with judged products that found nothing (lower is better).
    pub zero_result_rate: f64,
    /// Share of the queries that should find nothing that found nothing (higher is better).
    pub correct_empty_rate: f64,
    /// Mean nDCG@10 per kind of query.
    pub by_kind: Vec<(&'static str, f64)>,
}

/// Scores `index` (already filled with the judged catalog) on the judged set.
pub async fn score(index: &dyn SearchIndex) -> anyhow::Result<Scores> {
    let judged = judgements();
    let mut ndcgs = Vec::new();
    let mut by_kind: Vec<(&'static str, Vec<f64>)> = Vec::new();
    let (mut zero, mut empty_asked, mut empty_right) = (0usize, 0usize, 0usize);
    for q in queries() {
        let page = index
            .search(SearchRequest {
                text: q.text.to_owned(),
                filter: q.filter.clone(),
                limit: 10,
                ..SearchRequest::default()
            })
            .await?;
        let ranked: Vec<u64> = page.hits.iter().map(|h| h.id.get()).collect();
        match judged.get(q.id) {
            Some(grades) if !grades.is_empty() => {
                let score = ndcg(&ranked, grades, 10);
                ndcgs.push(score);
                match by_kind.iter_mut().find(|(k, _)| *k == q.kind) {
                    Some((_, scores)) => scores.push(score),
                    None => by_kind.push((q.kind, vec![score])),
                }
                if ranked.is_empty() {
                    zero += 1;
                }
            }
            _ => {
                empty_asked += 1;
                if ranked.is_empty() {
                    empty_right += 1;
                }
            }
        }
    }
    let mean = |v: &[f64]| {
        if v.is_empty() {
            0.0
        } else {
            // `+ 0.0` turns a -0.0 sum into 0.0.
            v.iter().sum::<f64>() / v.len() as f64 + 0.0
        }
    };
    Ok(Scores {
        engine: index.engine(),
        ndcg10: mean(&ndcgs),
        zero_result_rate: zero as f64 / ndcgs.len().max(1) as f64,
        correct_empty_rate: empty_right as f64 / empty_asked.max(1) as f64,
        by_kind: by_kind.into_iter().map(|(k, v)| (k, mean(&v))).collect(),
    })
}

/// Both engines, each filled with the judged catalog in `dir` and ranking by `ranking`, scored.
pub async fn evaluate(dir: &Path, ranking: Ranking) -> anyhow::Result<Vec<Scores>> {
    let docs: Vec<ProductDoc> = catalog().iter().map(ProductDoc::from).collect();
    let options = TantivyOptions {
        ranking,
        ..TantivyOptions::default()
    };
    let tantivy = TantivyIndex::open(&dir.join("tantivy"), options)?.index;
    let fts5 = Fts5Index::open(&dir.join("fts5.sqlite"), ranking).await?;
    let engines: [Arc<dyn SearchIndex>; 2] = [Arc::new(tantivy), Arc::new(fts5)];
    let mut out = Vec::new();
    for index in engines {
        index.upsert(docs.clone()).await?;
        index.commit().await?;
        out.push(score(index.as_ref()).await?);
    }
    Ok(out)
}

/// `bazaar lab relevance`: prints both engines' scores, or writes the judgements.
pub async fn command(
    write_judgements: Option<&Path>,
    may_miss: Option<usize>,
) -> anyhow::Result<()> {
    if let Some(path) = write_judgements {
        std::fs::write(path, judgements_from_rules())?;
        println!(
            "wrote the judgements for {} queries to {}",
            queries().len(),
            path.display()
        );
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let mut ranking = Ranking::default();
    if let Some(may_miss) = may_miss {
        ranking.may_miss = may_miss;
    }
    let scores = evaluate(dir.path(), ranking).await?;
    println!(
        "Search relevance: {} judged queries over the first {CATALOG_SIZE} demo products\n",
        queries().len()
    );
    println!(
        "{:<10} {:>8} {:>11} {:>14}",
        "engine", "nDCG@10", "zero-result", "correct-empty"
    );
    for s in &scores {
        println!(
            "{:<10} {:>8.3} {:>10.1}% {:>13.1}%",
            s.engine,
            s.ndcg10,
            s.zero_result_rate * 100.0,
            s.correct_empty_rate * 100.0
        );
    }
    println!("\nnDCG@10 by kind of query:");
    for (i, (kind, _)) in scores[0].by_kind.iter().enumerate() {
        let row: Vec<String> = scores
            .iter()
            .map(|s| format!("{}: {:.3}", s.engine, s.by_kind[i].1))
            .collect();
        println!("  {kind:<15} {}", row.join("   "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The figure committed in bench/RESULTS.md; the index may not fall more than 0.02 below.
    const COMMITTED_NDCG10: f64 = 0.900;
    /// Of the six queries that should find nothing, `atlas laptop` finds Atlas products
    /// (`search.ranking.may_miss` = 1 lets a product miss one of two words).
    const COMMITTED_CORRECT_EMPTY: f64 = 5.0 / 6.0;

    #[test]
    fn the_committed_judgements_are_what_the_rules_give() {
        assert_eq!(
            JUDGEMENTS,
            judgements_from_rules(),
            "regenerate with `cargo run -p bazaar -- lab relevance --write-judgements`"
        );
        let set = queries();
        assert!(set.len() >= 60);
        let ids: std::collections::HashSet<_> = set.iter().map(|q| q.id).collect();
        assert_eq!(ids.len(), set.len(), "query ids are unique");
        let judged = judgements();
        for q in &set {
            let has = judged.get(q.id).is_some_and(|g| !g.is_empty());
            assert_eq!(
                has,
                q.kind != "nothing",
                "{}: judged products iff it should find some",
                q.id
            );
            if q.kind == "exact" {
                assert!(
                    judged[q.id].values().any(|g| *g == 3),
                    "{} names a product in the catalog",
                    q.id
                );
            }
        }
    }

    #[test]
    fn ndcg_is_one_for_the_ideal_order_and_less_otherwise() {
        let judged: HashMap<u64, u8> = [(1, 3), (2, 2), (3, 1)].into();
        assert!((ndcg(&[1, 2, 3], &judged, 10) - 1.0).abs() < 1e-9);
        assert!(ndcg(&[3, 2, 1], &judged, 10) < 1.0);
        assert!(ndcg(&[9, 8], &judged, 10).abs() < 1e-9);
    }

    #[tokio::test]
    async fn search_relevance_holds_its_committed_figure_and_beats_the_baseline() {
        let dir = tempfile::tempdir().unwrap();
        let scores = evaluate(dir.path(), Ranking::default()).await.unwrap();
        let (tantivy, fts5) = (&scores[0], &scores[1]);
        println!("{scores:#?}");
        assert!(
            tantivy.ndcg10 >= COMMITTED_NDCG10 - 0.02,
            "nDCG@10 fell to {:.3} from the committed {COMMITTED_NDCG10:.3}",
            tantivy.ndcg10
        );
        assert!(tantivy.ndcg10 > fts5.ndcg10, "{tantivy:?} vs {fts5:?}");
        assert!(tantivy.zero_result_rate <= fts5.zero_result_rate);
        assert!(
            tantivy.correct_empty_rate >= COMMITTED_CORRECT_EMPTY - 1e-9,
            "{tantivy:?}"
        );
    }
}
