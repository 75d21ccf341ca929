//! Search over REST: `GET /search` (full text, filters, facets, sort, cursor pages) and
//! `GET /search/suggest` (prefix completions). GraphQL's `search` reads requests the same
//! way, through [`SearchParams`].

use axum::extract::{RawQuery, State};
use axum::response::Response;
use bazaar_search::{
    FacetCount, Facets, Hit, MAX_SUGGESTIONS, MAX_WINDOW, PriceBucket, SearchPage, SearchRequest,
    SearchSort, Suggestion, SuggestionKind,
};
use bazaar_shop::params::{Limit, PriceBound};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::params::QueryParams;
use crate::problem::{ApiError, Problem};
use crate::wire::MoneyBody;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(search))
        .routes(routes!(suggest))
}

/// The longest query text accepted, in characters.
pub const MAX_QUERY_CHARS: usize = 200;

/// One product found.
#[derive(Debug, Serialize, ToSchema)]
pub struct SearchHit {
    pub id: String,
    pub name: String,
    pub brand: String,
    pub category: String,
    /// The cheapest variant's price ("from").
    pub price: MoneyBody,
    /// The dearest variant's price.
    pub price_max: MoneyBody,
    pub in_stock: bool,
    /// The ranking score, with `sort=relevance`.
    pub score: Option<f32>,
}

impl From<Hit> for SearchHit {
    fn from(hit: Hit) -> Self {
        Self {
            id: hit.id.to_string(),
            name: hit.name,
            brand: hit.brand,
            category: hit.category,
            price: MoneyBody {
                amount: hit.price_min,
                currency: hit.currency.clone(),
            },
            price_max: MoneyBody {
                amount: hit.price_max,
                currency: hit.currency,
            },
            in_stock: hit.in_stock,
            score: hit.score,
        }
    }
}

/// How many matching products have a value.
#[derive(Debug, Serialize, ToSchema)]
pub struct FacetValue {
    pub value: String,
    pub count: u64,
}

/// A price bucket, `[from, to)` in minor units; `null` is open.
#[derive(Debug, Serialize, ToSchema)]
pub struct PriceRange {
    pub from: Option<i64>,
    pub to: Option<i64>,
    pub count: u64,
}

/// Counts over every matching product, not just the page.
#[derive(Debug, Serialize, ToSchema)]
pub struct FacetsBody {
    pub category: Vec<FacetValue>,
    pub brand: Vec<FacetValue>,
    pub color: Vec<FacetValue>,
    pub size: Vec<FacetValue>,
    pub price_ranges: Vec<PriceRange>,
}

fn values(counts: Vec<FacetCount>) -> Vec<FacetValue> {
    counts
        .into_iter()
        .map(|c| FacetValue {
            value: c.value,
            count: c.count,
        })
        .collect()
}

impl From<Facets> for FacetsBody {
    fn from(f: Facets) -> Self {
        Self {
            category: values(f.category),
            brand: values(f.brand),
            color: values(f.color),
            size: values(f.size),
            price_ranges: f
                .price_ranges
                .into_iter()
                .map(|PriceBucket { from, to, count }| PriceRange { from, to, count })
                .collect(),
        }
    }
}

/// A page of search results.
#[derive(Debug, Serialize, ToSchema)]
pub struct SearchResults {
    pub items: Vec<SearchHit>,
    /// Pass as `cursor` (with the same query) for the next page; `null` on the last one.
    pub next_cursor: Option<String>,
    pub facets: FacetsBody,
    /// Products matching in all.
    pub total: u64,
}

/// A search request as parsed from the edge, with what its next page's cursor needs.
#[derive(Debug, Clone, Default)]
pub struct SearchParams {
    pub request: SearchRequest,
}

impl SearchParams {
    pub fn new() -> Self {
        Self {
            request: SearchRequest {
                limit: Limit::DEFAULT.get(),
                ..SearchRequest::default()
            },
        }
    }

    /// Reads one parameter (`name` as the client spelled it). The cursor is checked against
    /// the sort in [`Self::finish`], since parameters come in any order.
    pub fn set(
        &mut self,
        name: &str,
        value: &str,
        cursor: &mut Option<String>,
    ) -> Result<(), ApiError> {
        let bad = |detail: &dyn std::fmt::Display| ApiError::param(name, detail);
        let request = &mut self.request;
        let filter = &mut request.filter;
        match name {
            "q" | "query" => {
                if value.chars().count() > MAX_QUERY_CHARS {
                    return Err(bad(&format!(
                        "expected at most {MAX_QUERY_CHARS} characters"
                    )));
                }
                if value.chars().any(char::is_control) {
                    return Err(bad(&"control characters are not allowed"));
                }
                request.text = value.to_owned();
            }
            "category" | "brand" | "color" | "size" => {
                if value.is_empty() || value.chars().count() > 64 || value.contains('\0') {
                    return Err(bad(&format!(
                        "expected a {name} of 1 to 64 characters, as the facets show it"
                    )));
                }
                let slot = match name {
                    "category" => &mut filter.category,
                    "brand" => &mut filter.brand,
                    "color" => &mut filter.color,
                    _ => &mut filter.size,
                };
                *slot = Some(value.to_owned());
            }
            "min_price" => {
                filter.min_price = Some(PriceBound::parse(value).map_err(|e| bad(&e))?.get())
            }
            "max_price" => {
                filter.max_price = Some(PriceBound::parse(value).map_err(|e| bad(&e))?.get())
            }
            "in_stock" => {
                filter.in_stock = Some(match value {
                    "true" => true,
                    "false" => false,
                    _ => {
                        return Err(bad(&format!(
                            "expected true or false, found `{}`",
                            shown(value)
                        )));
                    }
                });
            }
            "sort" => {
                request.sort = SearchSort::parse(value).ok_or_else(|| {
                    bad(&format!(
                        "expected {}, found `{}`",
                        SearchSort::NAMES,
                        shown(value)
                    ))
                })?;
            }
            "limit" | "first" => request.limit = Limit::parse(value).map_err(|e| bad(&e))?.get(),
            "cursor" | "after" => *cursor = Some(value.to_owned()),
            _ => return Err(bad(&"unknown parameter")),
        }
        Ok(())
    }

    /// Checks what depends on several parameters: the price bounds' order and the cursor
    /// (which must come from a page of the same sort). `cursor_param` names it in errors.
    pub fn finish(
        mut self,
        cursor: Option<&str>,
        cursor_param: &str,
    ) -> Result<SearchRequest, ApiError> {
        let filter = &self.request.filter;
        if let (Some(min), Some(max)) = (filter.min_price, filter.max_price)
            && min > max
        {
            return Err(ApiError::param(
                "min_price",
                format!("{min} is above max_price {max}"),
            ));
        }
        if let Some(cursor) = cursor {
            self.request.offset = read_cursor(cursor, self.request.sort)
                .map_err(|detail| ApiError::param(cursor_param, detail))?;
        }
        if self.request.offset + self.request.limit > MAX_WINDOW + 100 {
            return Err(ApiError::param(
                cursor_param,
                format!("results beyond the first {MAX_WINDOW} are not served; narrow the search"),
            ));
        }
        Ok(self.request)
    }
}

fn shown(value: &str) -> String {
    value.chars().take(40).collect()
}

/// A cursor is `{sort}:{offset}`: where the next page starts, in that sort. Clients treat it
/// as opaque.
pub fn next_cursor(request: &SearchRequest, page: &SearchPage) -> Option<String> {
    let next = request.offset + page.hits.len();
    (u64::try_from(next).unwrap_or(u64::MAX) < page.total
        && !page.hits.is_empty()
        && next < MAX_WINDOW)
        .then(|| format!("{}:{next}", request.sort.as_str()))
}

fn read_cursor(cursor: &str, sort: SearchSort) -> Result<usize, String> {
    let malformed = || {
        format!(
            "expected the `next_cursor` of an earlier page, found `{}`",
            shown(cursor)
        )
    };
    let (sort_name, offset) = cursor.split_once(':').ok_or_else(malformed)?;
    let issued = SearchSort::parse(sort_name).ok_or_else(malformed)?;
    if issued != sort {
        return Err(format!(
            "the cursor belongs to a search sorted by {}, not {}; start again without it",
            issued.as_str(),
            sort.as_str()
        ));
    }
    let offset: usize = offset
        .parse()
        .ok()
        .filter(|o| *o <= MAX_WINDOW && !offset.starts_with('+'))
        .ok_or_else(malformed)?;
    Ok(offset)
}

pub fn results(request: &SearchRequest, page: SearchPage) -> SearchResults {
    let next_cursor = next_cursor(request, &page);
    SearchResults {
        next_cursor,
        total: page.total,
        facets: page.facets.into(),
        items: page.hits.into_iter().map(SearchHit::from).collect(),
    }
}

/// Searches the catalog: every word must match a product's name, brand, category, variant
/// colours or sizes, or description — exactly, within the typo tolerance (5+ letters: one
/// edit, 9+: two), or, for the last word, as a prefix. Ranked by BM25 with field boosts, then
/// stock and popularity (`docs/search.md`). Results are as fresh as the last index commit
/// (`search.commit_interval`, default 1 s).
#[utoipa::path(
    get,
    path = "/search",
    tag = "catalog",
    params(
        ("q" = Option<String>, Query, description = "What to look for (up to 200 characters); empty or absent matches every product"),
        ("category" = Option<String>, Query, description = "Only this category, as the facets show it"),
        ("brand" = Option<String>, Query, description = "Only this brand, as the facets show it"),
        ("color" = Option<String>, Query, description = "Only products with a variant of this colour"),
        ("size" = Option<String>, Query, description = "Only products with a variant of this size"),
        ("min_price" = Option<i64>, Query, description = "Lowest price at least this, minor units"),
        ("max_price" = Option<i64>, Query, description = "Lowest price at most this, minor units"),
        ("in_stock" = Option<bool>, Query, description = "`true`: only products with stock; `false`: only sold out"),
        ("sort" = Option<String>, Query, description = "`relevance` (default), `price_asc`, `price_desc` or `newest`"),
        ("limit" = Option<u32>, Query, description = "Page size, 1–100 (default 20)"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page (same query and sort)"),
    ),
    responses(
        (status = 200, description = "Matching products, facet counts and the total", body = SearchResults),
        (status = 400, description = "A parameter is invalid; `param` names it", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn search(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let params = QueryParams::parse(
        query.as_deref().unwrap_or(""),
        &[
            "q",
            "category",
            "brand",
            "color",
            "size",
            "min_price",
            "max_price",
            "in_stock",
            "sort",
            "limit",
            "cursor",
        ],
    )?;
    let mut parsed = SearchParams::new();
    let mut cursor = None;
    for (name, value) in params.iter() {
        parsed.set(name, value, &mut cursor)?;
    }
    let request = parsed.finish(cursor.as_deref(), "cursor")?;
    let page = state.search.search(request.clone()).await?;
    Ok(crate::rest::json(&results(&request, page)))
}

/// A completion.
#[derive(Debug, Serialize, ToSchema)]
pub struct SuggestionBody {
    pub text: String,
    /// `product` (a product name) or `brand`.
    pub kind: &'static str,
    /// Products it finds.
    pub count: u64,
}

impl From<Suggestion> for SuggestionBody {
    fn from(s: Suggestion) -> Self {
        Self {
            text: s.text,
            kind: match s.kind {
                SuggestionKind::Product => "product",
                SuggestionKind::Brand => "brand",
            },
            count: s.count,
        }
    }
}

/// Completions of what has been typed so far.
#[derive(Debug, Serialize, ToSchema)]
pub struct Suggestions {
    pub items: Vec<SuggestionBody>,
}

/// Autocomplete: up to 10 product names and brands that start with `q` (or have a word that
/// does), those finding most products first.
#[utoipa::path(
    get,
    path = "/search/suggest",
    tag = "catalog",
    params(
        ("q" = String, Query, description = "What has been typed so far (1 to 100 characters)"),
        ("limit" = Option<u32>, Query, description = "Completions, 1–10 (default 10)"),
    ),
    responses(
        (status = 200, description = "Completions", body = Suggestions),
        (status = 400, description = "A parameter is invalid; `param` names it", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn suggest(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let params = QueryParams::parse(query.as_deref().unwrap_or(""), &["q", "limit"])?;
    let prefix = params.get("q").unwrap_or("");
    if prefix.trim().is_empty()
        || prefix.chars().count() > 100
        || prefix.chars().any(char::is_control)
    {
        return Err(ApiError::param("q", "expected 1 to 100 characters of text"));
    }
    let limit = match params.get("limit") {
        None => MAX_SUGGESTIONS,
        Some(raw) => raw
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_SUGGESTIONS).contains(n))
            .ok_or_else(|| {
                ApiError::param(
                    "limit",
                    format!("expected a whole number from 1 to {MAX_SUGGESTIONS}"),
                )
            })?,
    };
    let found = state.search.suggest(prefix, limit).await?;
    Ok(crate::rest::json(&Suggestions {
        items: found.into_iter().map(SuggestionBody::from).collect(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_belong_to_their_sort_and_stay_in_the_window() {
        assert_eq!(read_cursor("relevance:20", SearchSort::Relevance), Ok(20));
        assert!(
            read_cursor("relevance:20", SearchSort::PriceAsc)
                .unwrap_err()
                .contains("sorted by relevance")
        );
        for bad in [
            "",
            "relevance",
            "relevance:-1",
            "relevance:+5",
            "relevance:x",
            "nope:1",
            "relevance:10001",
        ] {
            assert!(read_cursor(bad, SearchSort::Relevance).is_err(), "{bad}");
        }
    }

    #[test]
    fn parameters_are_named_in_errors() {
        let mut p = SearchParams::new();
        let mut cursor = None;
        let error = p.set("sort", "cheapest", &mut cursor).unwrap_err();
        assert!(format!("{error:?}").contains("sort"));
        assert!(p.set("q", &"x".repeat(201), &mut cursor).is_err());
        assert!(p.set("in_stock", "yes", &mut cursor).is_err());
        assert!(p.set("brand", "", &mut cursor).is_err());
        p.set("min_price", "500", &mut cursor).unwrap();
        p.set("max_price", "100", &mut cursor).unwrap();
        let error = p.finish(None, "cursor").unwrap_err();
        assert!(format!("{error:?}").contains("min_price"), "{error:?}");
    }
}
