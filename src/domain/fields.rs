//! Parsers that turn untrusted request values into domain values ("parse, don't
//! validate"): once a `Currency` exists it is three upper-case letters, and a failed
//! parse names the field that was wrong.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A request field that failed to parse, with a message a client developer can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    /// The JSON path of the field, e.g. `items[2].quantity`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl FieldError {
    /// A field error for `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Longest free-text identifier or place name we store.
const MAX_TEXT: usize = 200;

/// A required, trimmed, non-empty string of at most 200 characters without control characters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RequiredText(String);

impl RequiredText {
    /// Parses the JSON value of `field`.
    pub fn parse(field: &str, value: Option<&Value>) -> Result<Self, FieldError> {
        let text = match value {
            None | Some(Value::Null) => return Err(FieldError::new(field, "is required")),
            Some(Value::String(text)) => text.trim(),
            Some(_) => return Err(FieldError::new(field, "must be a string")),
        };
        if text.is_empty() {
            return Err(FieldError::new(field, "must not be empty"));
        }
        if text.chars().count() > MAX_TEXT {
            return Err(FieldError::new(
                field,
                format!("must be at most {MAX_TEXT} characters"),
            ));
        }
        if text.chars().any(char::is_control) {
            return Err(FieldError::new(
                field,
                "must not contain control characters",
            ));
        }
        if text.chars().any(is_invisible) {
            return Err(FieldError::new(
                field,
                "must not contain invisible characters (bidi overrides, zero-width)",
            ));
        }
        Ok(Self(text.to_owned()))
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Whether `c` is an invisible formatting character: bidi embeddings, overrides and
/// isolates (which reorder what an operator reads, e.g. in the console), zero-width
/// characters and joiners, the byte-order mark, soft hyphen, invisible operators, line
/// and paragraph separators, and tag characters. Two ids that look alike must be alike.
pub fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{061C}'
            | '\u{115F}'
            | '\u{1160}'
            | '\u{180E}'
            | '\u{200B}'..='\u{200F}'
            | '\u{2028}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}'
            | '\u{3164}'
            | '\u{FEFF}'
            | '\u{FFA0}'
            | '\u{FFF9}'..='\u{FFFB}'
            | '\u{E0000}'..='\u{E007F}'
    )
}

/// Who placed an order.
pub type CustomerId = RequiredText;
/// The carrier that accepted a waybill.
pub type CarrierId = RequiredText;
/// Where a waybill starts or ends.
pub type Place = RequiredText;

/// An ISO-4217 currency code: three upper-case ASCII letters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Currency(String);

impl Currency {
    /// Parses the JSON value of `field`.
    pub fn parse(field: &str, value: Option<&Value>) -> Result<Self, FieldError> {
        match value {
            Some(Value::String(code))
                if code.len() == 3 && code.bytes().all(|b| b.is_ascii_uppercase()) =>
            {
                Ok(Self(code.clone()))
            }
            None | Some(Value::Null) => Err(FieldError::new(field, "is required")),
            Some(_) => Err(FieldError::new(
                field,
                "must be an ISO-4217 code of three upper-case letters",
            )),
        }
    }

    /// The code.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A strictly positive amount in minor units (cents), as an integer so no rounding happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Money(i64);

impl Money {
    /// Parses the JSON value of `field`: an integer greater than zero.
    pub fn parse(field: &str, value: Option<&Value>) -> Result<Self, FieldError> {
        match value {
            None | Some(Value::Null) => Err(FieldError::new(field, "is required")),
            Some(Value::Number(n)) => match n.as_i64() {
                Some(cents) if cents > 0 => Ok(Self(cents)),
                _ => Err(FieldError::new(
                    field,
                    "must be an integer greater than 0 and below 2^63",
                )),
            },
            Some(_) => Err(FieldError::new(field, "must be an integer number of cents")),
        }
    }

    /// The amount in cents.
    pub fn cents(self) -> i64 {
        self.0
    }
}

/// One line of an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineItem {
    /// The product's stock-keeping unit.
    pub sku: RequiredText,
    /// How many units, at least one.
    pub quantity: i64,
    /// Price of one unit in cents.
    pub unit_price_cents: i64,
}

/// Most lines an order may have; bodies are limited anyway, this keeps sums far from overflow.
const MAX_ITEMS: usize = 500;

/// The optional line items of an order; their total is known to fit in an `i64`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Items(Vec<LineItem>);

impl Items {
    /// Parses the JSON value of `field`: absent or null means no items.
    pub fn parse(field: &str, value: Option<&Value>) -> Result<Option<Self>, FieldError> {
        let list = match value {
            None | Some(Value::Null) => return Ok(None),
            Some(Value::Array(list)) => list,
            Some(_) => return Err(FieldError::new(field, "must be a list of items")),
        };
        if list.is_empty() || list.len() > MAX_ITEMS {
            return Err(FieldError::new(
                field,
                format!("must hold 1 to {MAX_ITEMS} items when given"),
            ));
        }
        let items = list
            .iter()
            .enumerate()
            .map(|(i, item)| parse_item(&format!("{field}[{i}]"), item))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some(Self(items)))
    }

    /// The sum of quantity × unit price, or `None` when it overflows.
    pub fn total_cents(&self) -> Option<i64> {
        self.0.iter().try_fold(0i64, |sum, item| {
            item.quantity
                .checked_mul(item.unit_price_cents)
                .and_then(|line| sum.checked_add(line))
        })
    }

    /// The lines.
    pub fn lines(&self) -> &[LineItem] {
        &self.0
    }
}

fn parse_item(path: &str, value: &Value) -> Result<LineItem, FieldError> {
    let Value::Object(item) = value else {
        return Err(FieldError::new(
            path,
            "must be an object with sku, quantity, unit_price_cents",
        ));
    };
    if let Some(unknown) = item
        .keys()
        .find(|k| !matches!(k.as_str(), "sku" | "quantity" | "unit_price_cents"))
    {
        return Err(FieldError::new(
            format!("{path}.{unknown}"),
            "is not a known field",
        ));
    }
    let sku = RequiredText::parse(&format!("{path}.sku"), item.get("sku"))?;
    let quantity = positive_int(&format!("{path}.quantity"), item.get("quantity"), 1)?;
    let unit_price_cents = positive_int(
        &format!("{path}.unit_price_cents"),
        item.get("unit_price_cents"),
        0,
    )?;
    Ok(LineItem {
        sku,
        quantity,
        unit_price_cents,
    })
}

fn positive_int(field: &str, value: Option<&Value>, min: i64) -> Result<i64, FieldError> {
    match value.and_then(Value::as_i64) {
        Some(n) if n >= min => Ok(n),
        _ if value.is_none() => Err(FieldError::new(field, "is required")),
        _ => Err(FieldError::new(
            field,
            format!("must be an integer of at least {min}"),
        )),
    }
}

/// Rejects fields a client sent that we do not know, so a typo is not silently ignored.
pub fn reject_unknown(
    body: &serde_json::Map<String, Value>,
    known: &[&str],
) -> Result<(), FieldError> {
    match body.keys().find(|k| !known.contains(&k.as_str())) {
        Some(unknown) => Err(FieldError::new(unknown.as_str(), "is not a known field")),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn currency_must_be_three_upper_case_letters() {
        assert!(Currency::parse("currency", Some(&json!("EUR"))).is_ok());
        for bad in [json!("eur"), json!("EURO"), json!(978), json!("ÉUR")] {
            let error = Currency::parse("currency", Some(&bad)).unwrap_err();
            assert_eq!(error.field, "currency");
        }
    }

    #[test]
    fn money_is_a_positive_integer() {
        assert_eq!(
            Money::parse("amount_cents", Some(&json!(1))).map(Money::cents),
            Ok(1)
        );
        for bad in [
            json!(0),
            json!(-5),
            json!(1.5),
            json!("10"),
            json!(u64::MAX),
        ] {
            assert!(Money::parse("amount_cents", Some(&bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn items_report_the_path_of_the_bad_field() {
        let items = json!([{"sku": "a", "quantity": 1, "unit_price_cents": 5}, {"sku": "b", "quantity": 0, "unit_price_cents": 5}]);
        let error = Items::parse("items", Some(&items)).unwrap_err();
        assert_eq!(error.field, "items[1].quantity");
    }

    #[test]
    fn item_totals_detect_overflow() {
        let items = json!([{"sku": "a", "quantity": i64::MAX, "unit_price_cents": 2}]);
        let parsed = Items::parse("items", Some(&items)).unwrap().unwrap();
        assert_eq!(parsed.total_cents(), None);
    }

    #[test]
    fn text_is_trimmed_and_bounded() {
        assert_eq!(
            RequiredText::parse("f", Some(&json!("  x ")))
                .unwrap()
                .as_str(),
            "x"
        );
        assert!(RequiredText::parse("f", Some(&json!("   "))).is_err());
        assert!(RequiredText::parse("f", Some(&json!("a\u{0}b"))).is_err());
        for invisible in ["a\u{202E}b", "a\u{200B}b", "\u{FEFF}ab", "a\u{2066}b"] {
            assert!(
                RequiredText::parse("f", Some(&json!(invisible))).is_err(),
                "{invisible:?}"
            );
        }
        assert!(RequiredText::parse("f", Some(&json!("Zürich 東京 🚚"))).is_ok());
        assert!(RequiredText::parse("f", Some(&json!("x".repeat(201)))).is_err());
    }
}
