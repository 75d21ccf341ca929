//! Money: integer minor units with an ISO 4217 code, never a float.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An ISO 4217 currency code: three upper-case ASCII letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Currency([u8; 3]);

impl TryFrom<String> for Currency {
    type Error = String;

    fn try_from(code: String) -> Result<Self, String> {
        code.parse()
    }
}

impl From<Currency> for String {
    fn from(currency: Currency) -> Self {
        currency.as_str().to_owned()
    }
}

impl Currency {
    /// US dollars, the demo catalog's currency.
    pub const USD: Self = Self(*b"USD");
    /// Euros.
    pub const EUR: Self = Self(*b"EUR");
    /// Pounds sterling.
    pub const GBP: Self = Self(*b"GBP");

    /// The code as a string slice.
    pub fn as_str(&self) -> &str {
        // Construction only admits ASCII letters.
        std::str::from_utf8(&self.0).unwrap_or("???")
    }
}

impl FromStr for Currency {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.as_bytes() {
            &[a, b, c] if [a, b, c].iter().all(u8::is_ascii_uppercase) => Ok(Self([a, b, c])),
            _ => Err(format!(
                "expected an ISO 4217 code such as USD, found `{s}`"
            )),
        }
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An amount of money in minor units (cents for USD); never a float.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Money {
    /// Minor units, e.g. 1999 for $19.99.
    pub amount: i64,
    pub currency: Currency,
}

impl Money {
    /// `amount` minor units of US dollars.
    pub const fn usd(amount: i64) -> Self {
        Self {
            amount,
            currency: Currency::USD,
        }
    }
}
