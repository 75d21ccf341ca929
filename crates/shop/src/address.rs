//! Shipping addresses: validated at the edge, sealed at rest like other personal data.

use crate::error::ShopError;

/// A shipping address as the buyer gave it, after validation.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ShippingAddress {
    pub name: String,
    pub line1: String,
    pub line2: Option<String>,
    pub city: String,
    pub region: Option<String>,
    pub postal_code: String,
    /// ISO 3166-1 alpha-2, upper case.
    pub country: String,
}

/// An address as received, every field optional so that a missing one is named.
#[derive(Debug, Clone, Default)]
pub struct AddressInput {
    pub name: Option<String>,
    pub line1: Option<String>,
    pub line2: Option<String>,
    pub city: Option<String>,
    pub region: Option<String>,
    pub postal_code: Option<String>,
    pub country: Option<String>,
}

/// Every ISO 3166-1 alpha-2 code in use.
const COUNTRIES: &str = "AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI \
    BJ BL BM BN BO BQ BR BS BT BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY \
    CZ DE DJ DK DM DO DZ EC EE EG EH ER ES ET FI FJ FK FM FO FR GA GB GD GE GF GG GH GI GL GM GN \
    GP GQ GR GS GT GU GW GY HK HM HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM JO JP KE KG KH \
    KI KM KN KP KR KW KY KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML MM MN MO \
    MP MQ MR MS MT MU MV MW MX MY MZ NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL \
    PM PN PR PS PT PW PY QA RE RO RS RU RW SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV \
    SX SY SZ TC TD TF TG TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG UM US UY UZ VA VC VE VG VI VN \
    VU WF WS YE YT ZA ZM ZW";

fn required(field: &'static str, value: Option<String>, max: usize) -> Result<String, ShopError> {
    let value = value
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .ok_or_else(|| {
            ShopError::field(
                format!("shipping_address.{field}"),
                "is required and must not be blank",
            )
        })?;
    bounded(field, value, max)
}

fn optional(
    field: &'static str,
    value: Option<String>,
    max: usize,
) -> Result<Option<String>, ShopError> {
    value
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .map(|v| bounded(field, v, max))
        .transpose()
}

fn bounded(field: &'static str, value: String, max: usize) -> Result<String, ShopError> {
    if value.chars().count() > max {
        return Err(ShopError::field(
            format!("shipping_address.{field}"),
            format!("must be at most {max} characters"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(ShopError::field(
            format!("shipping_address.{field}"),
            "must not contain control characters",
        ));
    }
    Ok(value)
}

impl AddressInput {
    /// The address, or a 422 naming the first offending field
    /// (`shipping_address.country`, …).
    pub fn validate(self) -> Result<ShippingAddress, ShopError> {
        let country = required("country", self.country, 2)?.to_ascii_uppercase();
        if country.len() != 2 || !COUNTRIES.split_ascii_whitespace().any(|c| c == country) {
            return Err(ShopError::field(
                "shipping_address.country",
                format!("`{country}` is not an ISO 3166-1 alpha-2 country code such as US or DE"),
            ));
        }
        let postal_code = required("postal_code", self.postal_code, 16)?;
        if !postal_code
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == ' ' || c == '-')
        {
            return Err(ShopError::field(
                "shipping_address.postal_code",
                "may hold only letters, digits, spaces and hyphens",
            ));
        }
        Ok(ShippingAddress {
            name: required("name", self.name, 100)?,
            line1: required("line1", self.line1, 200)?,
            line2: optional("line2", self.line2, 200)?,
            city: required("city", self.city, 100)?,
            region: optional("region", self.region, 100)?,
            postal_code,
            country,
        })
    }
}

impl ShippingAddress {
    /// What a seller shipping a line sees: where to, not who or which door.
    pub fn masked(&self) -> Self {
        Self {
            name: mask(&self.name),
            line1: "***".into(),
            line2: None,
            city: self.city.clone(),
            region: self.region.clone(),
            postal_code: self.postal_code.clone(),
            country: self.country.clone(),
        }
    }
}

fn mask(text: &str) -> String {
    let first: String = text.chars().take(1).collect();
    format!("{first}***")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input() -> AddressInput {
        AddressInput {
            name: Some("Ada Lovelace".into()),
            line1: Some("12 St James's Square".into()),
            line2: None,
            city: Some("London".into()),
            region: None,
            postal_code: Some("SW1Y 4JH".into()),
            country: Some("gb".into()),
        }
    }

    fn field_of(error: ShopError) -> String {
        match error {
            ShopError::InvalidField { field, .. } => field,
            other => panic!("expected a field error, got {other:?}"),
        }
    }

    #[test]
    fn a_valid_address_is_normalised_and_bad_fields_are_named() {
        let address = input().validate().unwrap();
        assert_eq!(address.country, "GB");
        for (broken, field) in [
            (
                AddressInput {
                    country: Some("UK".into()),
                    ..input()
                },
                "shipping_address.country",
            ),
            (
                AddressInput {
                    country: None,
                    ..input()
                },
                "shipping_address.country",
            ),
            (
                AddressInput {
                    city: Some("  ".into()),
                    ..input()
                },
                "shipping_address.city",
            ),
            (
                AddressInput {
                    postal_code: Some("SW1Y;DROP".into()),
                    ..input()
                },
                "shipping_address.postal_code",
            ),
            (
                AddressInput {
                    name: Some("x".repeat(101)),
                    ..input()
                },
                "shipping_address.name",
            ),
        ] {
            assert_eq!(field_of(broken.validate().unwrap_err()), field);
        }
        assert_eq!(COUNTRIES.split_ascii_whitespace().count(), 249);
    }
}
