//! Steering a deadline: how long to extend it by, and which pending entities a bulk
//! extension touches. Parsed from request bodies; the bounds come from MAX_TIMEOUT.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use super::EntityKind;
use super::fields::{CustomerId, FieldError, reject_unknown};

/// A whole number of seconds from 1 to MAX_TIMEOUT: a timeout or an extension.
pub fn parse_seconds(field: &str, value: Option<&Value>, max: Duration) -> Result<u64, FieldError> {
    let max_seconds = max.as_secs().max(1);
    let message = || format!("must be an integer from 1 to {max_seconds} (MAX_TIMEOUT)");
    match value {
        None | Some(Value::Null) => Err(FieldError::new(field, "is required")),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(seconds) if (1..=max_seconds).contains(&seconds) => Ok(seconds),
            _ => Err(FieldError::new(field, message())),
        },
        Some(_) => Err(FieldError::new(field, message())),
    }
}

/// Takes the optional `timeout_seconds` (1..=MAX_TIMEOUT) out of a create body: the
/// entity's own timeout, and the rest of the body for the entity's parser. A body that
/// is not an object is handed on as it is (its parser names the problem).
pub fn take_timeout(body: &Value, max: Duration) -> Result<(Option<Duration>, Value), FieldError> {
    let Value::Object(fields) = body else {
        return Ok((None, body.clone()));
    };
    let mut rest = fields.clone();
    let timeout = match rest.remove("timeout_seconds") {
        None | Some(Value::Null) => None,
        value => Some(Duration::from_secs(parse_seconds(
            "timeout_seconds",
            value.as_ref(),
            max,
        )?)),
    };
    Ok((timeout, Value::Object(rest)))
}

/// The body of `POST /orders/{id}/extend` and `POST /waybills/{id}/extend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extension {
    /// Seconds added to the current deadline.
    pub seconds: u64,
}

impl Extension {
    /// Parses `{"seconds": n}`; n may not exceed MAX_TIMEOUT (the new deadline's bound
    /// from now is checked in SQL, against the deadline as it is).
    pub fn parse(body: &Value, max: Duration) -> Result<Self, FieldError> {
        let Value::Object(fields) = body else {
            return Err(FieldError::new("body", "must be a JSON object"));
        };
        reject_unknown(fields, &["seconds"])?;
        Ok(Self {
            seconds: parse_seconds("seconds", fields.get("seconds"), max)?,
        })
    }
}

/// The body of `POST /admin/deadlines/extend`: which pending entities, by how much.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BulkExtension {
    /// Orders or waybills.
    pub kind: EntityKind,
    /// Seconds added to each matching deadline.
    pub seconds: u64,
    /// Only this customer's orders.
    pub customer_id: Option<CustomerId>,
    /// Only this order's waybills.
    pub order_id: Option<Uuid>,
    /// Only deadlines before this moment (e.g. the end of a provider's outage window).
    pub expires_before: Option<DateTime<Utc>>,
    /// Count what would be extended, change nothing.
    pub dry_run: bool,
}

impl BulkExtension {
    /// Parses the body, naming the first wrong field; filters must fit the kind.
    pub fn parse(body: &Value, max: Duration) -> Result<Self, FieldError> {
        let Value::Object(fields) = body else {
            return Err(FieldError::new("body", "must be a JSON object"));
        };
        reject_unknown(
            fields,
            &[
                "kind",
                "seconds",
                "customer_id",
                "order_id",
                "expires_before",
                "dry_run",
            ],
        )?;
        let kind = match fields.get("kind") {
            None | Some(Value::Null) => return Err(FieldError::new("kind", "is required")),
            Some(Value::String(text)) if text == "order" => EntityKind::Order,
            Some(Value::String(text)) if text == "waybill" => EntityKind::Waybill,
            Some(_) => return Err(FieldError::new("kind", "must be \"order\" or \"waybill\"")),
        };
        let customer_id = match fields.get("customer_id") {
            None | Some(Value::Null) => None,
            Some(_) if kind == EntityKind::Waybill => {
                return Err(FieldError::new("customer_id", "filters orders only"));
            }
            value => Some(CustomerId::parse("customer_id", value)?),
        };
        let order_id = match fields.get("order_id") {
            None | Some(Value::Null) => None,
            Some(_) if kind == EntityKind::Order => {
                return Err(FieldError::new("order_id", "filters waybills only"));
            }
            Some(Value::String(id)) => Some(
                Uuid::parse_str(id).map_err(|_| FieldError::new("order_id", "must be a UUID"))?,
            ),
            Some(_) => return Err(FieldError::new("order_id", "must be a UUID string")),
        };
        let expires_before = match fields.get("expires_before") {
            None | Some(Value::Null) => None,
            Some(Value::String(text)) => Some(
                DateTime::parse_from_rfc3339(text)
                    .map_err(|_| {
                        FieldError::new("expires_before", "must be an RFC 3339 timestamp")
                    })?
                    .with_timezone(&Utc),
            ),
            Some(_) => {
                return Err(FieldError::new(
                    "expires_before",
                    "must be an RFC 3339 timestamp",
                ));
            }
        };
        let dry_run = match fields.get("dry_run") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(flag)) => *flag,
            Some(_) => return Err(FieldError::new("dry_run", "must be true or false")),
        };
        Ok(Self {
            kind,
            seconds: parse_seconds("seconds", fields.get("seconds"), max)?,
            customer_id,
            order_id,
            expires_before,
            dry_run,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const WEEK: Duration = Duration::from_secs(7 * 24 * 3600);

    fn field_of(body: Value) -> String {
        Extension::parse(&body, WEEK).unwrap_err().field
    }

    #[test]
    fn an_extension_is_a_whole_number_of_seconds_up_to_max_timeout() {
        assert_eq!(
            Extension::parse(&json!({"seconds": 60}), WEEK),
            Ok(Extension { seconds: 60 })
        );
        for bad in [
            json!({}),
            json!({"seconds": 0}),
            json!({"seconds": -5}),
            json!({"seconds": 1.5}),
            json!({"seconds": "60"}),
            json!({"seconds": 604_801}),
        ] {
            assert_eq!(field_of(bad), "seconds");
        }
        assert_eq!(field_of(json!({"seconds": 1, "minutes": 2})), "minutes");
        assert_eq!(field_of(json!([1])), "body");
    }

    #[test]
    fn a_create_body_gives_up_its_own_timeout_and_keeps_the_rest() {
        let body = json!({"customer_id": "c", "timeout_seconds": 90});
        let (timeout, rest) = take_timeout(&body, WEEK).unwrap();
        assert_eq!(timeout, Some(Duration::from_secs(90)));
        assert_eq!(rest, json!({"customer_id": "c"}));
        assert_eq!(take_timeout(&json!({"a": 1}), WEEK).unwrap().0, None);
        for bad in [json!(0), json!(604_801), json!("90"), json!(9.5)] {
            let error = take_timeout(&json!({ "timeout_seconds": bad }), WEEK).unwrap_err();
            assert_eq!(error.field, "timeout_seconds");
        }
    }

    #[test]
    fn bulk_filters_must_fit_the_kind() {
        let parse = |body: Value| BulkExtension::parse(&body, WEEK);
        let ok = parse(
            json!({"kind": "order", "seconds": 600, "customer_id": "c-1",
            "expires_before": "2026-11-26T20:00:00Z", "dry_run": true}),
        )
        .unwrap();
        assert_eq!(ok.kind, EntityKind::Order);
        assert!(ok.dry_run);
        let error = |body: Value| parse(body).unwrap_err().field;
        assert_eq!(error(json!({"seconds": 1})), "kind");
        assert_eq!(error(json!({"kind": "parcel", "seconds": 1})), "kind");
        assert_eq!(error(json!({"kind": "order"})), "seconds");
        assert_eq!(
            error(json!({"kind": "order", "seconds": 1, "order_id": "x"})),
            "order_id"
        );
        assert_eq!(
            error(json!({"kind": "waybill", "seconds": 1, "customer_id": "c"})),
            "customer_id"
        );
        assert_eq!(
            error(json!({"kind": "waybill", "seconds": 1, "order_id": "nope"})),
            "order_id"
        );
        assert_eq!(
            error(json!({"kind": "order", "seconds": 1, "expires_before": "tomorrow"})),
            "expires_before"
        );
        assert_eq!(
            error(json!({"kind": "order", "seconds": 1, "dry_run": "yes"})),
            "dry_run"
        );
    }
}
