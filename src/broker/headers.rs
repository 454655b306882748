//! Message headers as the service sees them ([`Headers`]): read and written by the retry
//! loop, turned into JSON to store a failed message and back to requeue it. The AMQP
//! table underneath stays in `broker`.

use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString};
use serde_json::{Map, Number, Value};

/// How many retries a message has been through.
pub const RETRY_COUNT: &str = "x-retry-count";
/// The error of the last failed attempt.
pub const LAST_ERROR: &str = "x-last-error";
/// When the message first failed, milliseconds since the Unix epoch.
pub const FIRST_FAILED_AT: &str = "x-first-failed-at";
/// A timer's deadline, microseconds since the Unix epoch on the database's clock: the
/// due consumer holds a timer that arrives ahead of it (`TIMER_LEAD`) until then.
pub const DUE_AT_US: &str = "x-due-at-us";
/// The broker's own dead-letter bookkeeping: never republished by us.
const BROKER_OWNED: [&str; 7] = [
    "x-death",
    "x-first-death-exchange",
    "x-first-death-queue",
    "x-first-death-reason",
    "x-last-death-exchange",
    "x-last-death-queue",
    "x-last-death-reason",
];

/// The headers of a message. Wraps the AMQP table, so a header keeps its exact AMQP type
/// from delivery to republish, while nothing outside `broker` handles AMQP types.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Headers(FieldTable);

impl Headers {
    /// An integer header, written by us or by another client in any integer width.
    pub fn integer(&self, key: &str) -> Option<i64> {
        integer(Some(&self.0), key)
    }

    /// A text header (a long or short string that is UTF-8).
    pub fn text(&self, key: &str) -> Option<String> {
        match self.0.inner().get(key)? {
            AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok().map(str::to_owned),
            AMQPValue::ShortString(s) => Some(s.to_string()),
            _ => None,
        }
    }

    /// Sets an integer header (a signed 64-bit AMQP integer).
    pub fn set_integer(&mut self, key: &str, value: i64) {
        self.0.insert(key.into(), AMQPValue::LongLongInt(value));
    }

    /// Sets a text header (an AMQP long string).
    pub fn set_text(&mut self, key: &str, value: &str) {
        self.0.insert(key.into(), long_string(value));
    }

    /// A copy with only the headers named in `known` (see [`known_only`]).
    pub fn known_only(&self, known: &[&str]) -> Headers {
        Headers(known_only(&self.0, known))
    }

    /// The headers as JSON, to store with a failed message (see [`to_json`]).
    pub fn to_json(&self) -> Value {
        to_json(&self.0)
    }

    /// Stored JSON headers back, for a requeue (see [`from_json_for_requeue`]).
    pub fn from_json_for_requeue(headers: &Value) -> Headers {
        Headers(from_json_for_requeue(headers))
    }

    /// The AMQP table, for a publish.
    pub(super) fn to_table(&self) -> FieldTable {
        self.0.clone()
    }

    /// Wraps a delivery's AMQP table.
    pub(super) fn from_table(table: FieldTable) -> Headers {
        Headers(table)
    }
}

/// A copy of `table` with only the headers named in `known`. A republished message
/// carries only what the service itself reads: a client's `CC`/`BCC` (which RabbitMQ
/// routes on) or any other header would otherwise be re-sent by the service, copying
/// the message wherever its publisher chose.
fn known_only(table: &FieldTable, known: &[&str]) -> FieldTable {
    let mut kept = FieldTable::default();
    for (key, value) in table.inner() {
        if known.contains(&key.as_str()) {
            kept.insert(key.clone(), value.clone());
        }
    }
    kept
}

/// Converts headers to JSON: numbers stay numbers, byte strings become text when UTF-8
/// and an array of bytes otherwise.
fn to_json(table: &FieldTable) -> Value {
    Value::Object(
        table
            .inner()
            .iter()
            .map(|(k, v)| (k.to_string(), value_to_json(v)))
            .collect(),
    )
}

fn value_to_json(value: &AMQPValue) -> Value {
    match value {
        AMQPValue::Boolean(b) => Value::Bool(*b),
        AMQPValue::ShortShortInt(n) => Value::from(*n),
        AMQPValue::ShortShortUInt(n) => Value::from(*n),
        AMQPValue::ShortInt(n) => Value::from(*n),
        AMQPValue::ShortUInt(n) => Value::from(*n),
        AMQPValue::LongInt(n) => Value::from(*n),
        AMQPValue::LongUInt(n) => Value::from(*n),
        AMQPValue::LongLongInt(n) => Value::from(*n),
        AMQPValue::Timestamp(n) => Value::from(*n),
        AMQPValue::Float(f) => Number::from_f64(f64::from(*f)).map_or(Value::Null, Value::Number),
        AMQPValue::Double(f) => Number::from_f64(*f).map_or(Value::Null, Value::Number),
        AMQPValue::DecimalValue(d) => Value::String(format!("{d:?}")),
        AMQPValue::ShortString(s) => Value::String(s.to_string()),
        AMQPValue::LongString(s) => bytes_to_json(s.as_bytes()),
        AMQPValue::ByteArray(b) => bytes_to_json(b.as_slice()),
        AMQPValue::FieldArray(a) => Value::Array(a.as_slice().iter().map(value_to_json).collect()),
        AMQPValue::FieldTable(t) => to_json(t),
        AMQPValue::Void => Value::Null,
    }
}

/// Text when the bytes are UTF-8 without NUL (PostgreSQL's jsonb cannot hold a NUL),
/// else the bytes as numbers: either way storable, and nothing is lost.
fn bytes_to_json(bytes: &[u8]) -> Value {
    match std::str::from_utf8(bytes) {
        Ok(text) if !text.contains('\0') => Value::String(text.to_owned()),
        _ => Value::Array(bytes.iter().map(|b| Value::from(*b)).collect()),
    }
}

/// Converts stored JSON headers back, leaving out the broker's dead-letter bookkeeping
/// and our retry count (a requeue starts the retries afresh).
fn from_json_for_requeue(headers: &Value) -> FieldTable {
    let mut table = FieldTable::default();
    if let Value::Object(map) = headers {
        for (key, value) in map {
            if key == RETRY_COUNT || key == FIRST_FAILED_AT || BROKER_OWNED.contains(&key.as_str())
            {
                continue;
            }
            table.insert(key.as_str().into(), json_to_value(value));
        }
    }
    table
}

fn json_to_value(value: &Value) -> AMQPValue {
    match value {
        Value::Null => AMQPValue::Void,
        Value::Bool(b) => AMQPValue::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => AMQPValue::LongLongInt(i),
            None => AMQPValue::Double(n.as_f64().unwrap_or_default()),
        },
        Value::String(s) => long_string(s),
        Value::Array(items) => AMQPValue::FieldArray(FieldArray::from(
            items.iter().map(json_to_value).collect::<Vec<_>>(),
        )),
        Value::Object(map) => AMQPValue::FieldTable(object_to_table(map)),
    }
}

fn object_to_table(map: &Map<String, Value>) -> FieldTable {
    let mut table = FieldTable::default();
    for (key, value) in map {
        table.insert(key.as_str().into(), json_to_value(value));
    }
    table
}

/// A text header value.
fn long_string(text: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(text.as_bytes().to_vec()))
}

/// Reads an integer header written by us or by another client in any integer width.
fn integer(table: Option<&FieldTable>, key: &str) -> Option<i64> {
    match table?.inner().get(key)? {
        AMQPValue::ShortShortInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortShortUInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortUInt(n) => Some(i64::from(*n)),
        AMQPValue::LongInt(n) => Some(i64::from(*n)),
        AMQPValue::LongUInt(n) => Some(i64::from(*n)),
        AMQPValue::LongLongInt(n) => Some(*n),
        AMQPValue::Timestamp(n) => i64::try_from(*n).ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_survive_a_round_trip_without_broker_bookkeeping() {
        let mut table = FieldTable::default();
        table.insert("x-tenant".into(), long_string("acme"));
        table.insert("x-retry-count".into(), AMQPValue::LongLongInt(3));
        table.insert(
            "x-death".into(),
            AMQPValue::FieldArray(FieldArray::default()),
        );
        table.insert("n".into(), AMQPValue::LongInt(7));
        let json = to_json(&table);
        assert_eq!(json["x-tenant"], "acme");
        let back = from_json_for_requeue(&json);
        assert!(back.inner().get("x-death").is_none());
        assert!(back.inner().get("x-retry-count").is_none());
        assert_eq!(integer(Some(&back), "n"), Some(7));
    }

    #[test]
    fn only_known_headers_are_kept_for_a_republish() {
        let mut table = FieldTable::default();
        table.insert("CC".into(), long_string("elsewhere"));
        table.insert("BCC".into(), long_string("elsewhere"));
        table.insert(RETRY_COUNT.into(), AMQPValue::LongLongInt(2));
        let kept = known_only(&table, &[RETRY_COUNT, LAST_ERROR]);
        assert_eq!(kept.inner().len(), 1);
        assert_eq!(integer(Some(&kept), RETRY_COUNT), Some(2));
    }

    #[test]
    fn non_utf8_header_bytes_are_kept_as_numbers() {
        let mut table = FieldTable::default();
        table.insert(
            "raw".into(),
            AMQPValue::LongString(LongString::from(vec![0xff, 0x00])),
        );
        assert_eq!(to_json(&table)["raw"], serde_json::json!([255, 0]));
        table.insert("nul".into(), long_string("a\0b"));
        assert_eq!(to_json(&table)["nul"], serde_json::json!([97, 0, 98]));
    }
}
