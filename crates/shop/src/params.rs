//! Parsed request parameters: "parse, don't validate". Each `parse` names what it expected, and
//! the API layer adds which parameter it was.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bazaar_store::{ProductId, ProductSort, SortKey};

/// Why a parameter was rejected; the message says what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidParam(pub String);

/// A page size: 1 to [`Limit::MAX`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit(usize);

impl Limit {
    /// The largest page a client may ask for.
    pub const MAX: usize = 100;
    /// The page size when none is asked for.
    pub const DEFAULT: Self = Self(20);

    /// Parses a decimal page size.
    pub fn parse(raw: &str) -> Result<Self, InvalidParam> {
        raw.parse::<usize>()
            .ok()
            .and_then(|n| Self::new(n).ok())
            .ok_or_else(|| {
                InvalidParam(format!(
                    "expected an integer from 1 to {}, found `{}`",
                    Self::MAX,
                    clip(raw)
                ))
            })
    }

    /// Checks a numeric page size.
    pub fn new(n: usize) -> Result<Self, InvalidParam> {
        if (1..=Self::MAX).contains(&n) {
            Ok(Self(n))
        } else {
            Err(InvalidParam(format!(
                "expected an integer from 1 to {}, found {n}",
                Self::MAX
            )))
        }
    }

    pub fn get(self) -> usize {
        self.0
    }
}

impl Default for Limit {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// A price bound in minor units: a non-negative integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PriceBound(i64);

impl PriceBound {
    pub fn parse(raw: &str) -> Result<Self, InvalidParam> {
        match raw.parse::<i64>() {
            Ok(n) if n >= 0 && raw.bytes().all(|b| b.is_ascii_digit()) => Ok(Self(n)),
            _ => Err(InvalidParam(format!(
                "expected a non-negative integer amount in minor units (1999 for 19.99), found `{}`",
                clip(raw)
            ))),
        }
    }

    pub fn new(n: i64) -> Result<Self, InvalidParam> {
        if n >= 0 {
            Ok(Self(n))
        } else {
            Err(InvalidParam(format!(
                "expected a non-negative amount in minor units, found {n}"
            )))
        }
    }

    pub fn get(self) -> i64 {
        self.0
    }
}

/// Parses a sort order by its wire name.
pub fn parse_sort(raw: &str) -> Result<ProductSort, InvalidParam> {
    match raw {
        "newest" => Ok(ProductSort::Newest),
        "price_asc" => Ok(ProductSort::PriceAsc),
        "price_desc" => Ok(ProductSort::PriceDesc),
        _ => Err(InvalidParam(format!(
            "expected one of newest, price_asc, price_desc, found `{}`",
            clip(raw)
        ))),
    }
}

/// The wire name of a sort order.
pub fn sort_name(sort: ProductSort) -> &'static str {
    match sort {
        ProductSort::Newest => "newest",
        ProductSort::PriceAsc => "price_asc",
        ProductSort::PriceDesc => "price_desc",
    }
}

/// An opaque position in a sorted listing. Clients get it as `next_cursor` and hand it back
/// unchanged; its content (`v1:{sort}:{price}:{id}`, base64url) is not a contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub sort: ProductSort,
    pub key: SortKey,
}

impl Cursor {
    /// The cursor's wire form.
    pub fn encode(&self) -> String {
        let raw = format!(
            "v1:{}:{}:{}",
            sort_name(self.sort),
            self.key.price,
            self.key.id
        );
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// Parses a cursor handed back by a client.
    pub fn parse(raw: &str) -> Result<Self, InvalidParam> {
        let invalid =
            || InvalidParam("expected a cursor returned as next_cursor by this listing".into());
        if raw.len() > 128 {
            return Err(invalid());
        }
        let bytes = URL_SAFE_NO_PAD.decode(raw).map_err(|_| invalid())?;
        let text = String::from_utf8(bytes).map_err(|_| invalid())?;
        let mut parts = text.split(':');
        let (Some("v1"), Some(sort), Some(price), Some(id), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(invalid());
        };
        let sort = parse_sort(sort).map_err(|_| invalid())?;
        let price = price.parse::<i64>().map_err(|_| invalid())?;
        let id = id.parse::<ProductId>().map_err(|_| invalid())?;
        Ok(Self {
            sort,
            key: SortKey { price, id },
        })
    }
}

/// At most 64 characters of user input, for error messages.
fn clip(raw: &str) -> String {
    raw.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_outside_one_to_a_hundred_are_rejected() {
        assert_eq!(Limit::parse("1").unwrap().get(), 1);
        assert_eq!(Limit::parse("100").unwrap().get(), 100);
        for bad in ["0", "101", "-1", "ten", "", "1e2"] {
            let err = Limit::parse(bad).unwrap_err();
            assert!(err.0.contains("from 1 to 100"), "{bad}: {err}");
        }
    }

    #[test]
    fn prices_are_non_negative_integers() {
        assert_eq!(PriceBound::parse("1999").unwrap().get(), 1999);
        for bad in ["-1", "19.99", "+5", "", "abc", "99999999999999999999"] {
            assert!(PriceBound::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cursors_round_trip_and_garbage_is_rejected() {
        let cursor = Cursor {
            sort: ProductSort::PriceDesc,
            key: SortKey {
                price: 1299,
                id: ProductId::new(987_654_321),
            },
        };
        assert_eq!(Cursor::parse(&cursor.encode()), Ok(cursor));
        let forged = URL_SAFE_NO_PAD.encode("v1:newest:0:-5");
        for bad in ["", "!!!", "djE6bmV3ZXN0", forged.as_str(), &"A".repeat(200)] {
            assert!(Cursor::parse(bad).is_err(), "{bad}");
        }
    }
}
