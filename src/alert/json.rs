//! Plain JSON for any receiver (an alert router, a ticketing hook): the count, the
//! summary text, and each failure's fields (at most MAX_LISTED; `count` says how many).
//! Any 2xx answer counts as delivered.

use serde_json::{Value, json};

use super::Alert;

/// Most failures listed in one document.
const MAX_LISTED: usize = 100;

/// The body of one post.
pub(super) fn body(burst: &[Alert], text: &str) -> Value {
    let failures: Vec<Value> = burst
        .iter()
        .take(MAX_LISTED)
        .map(|alert| {
            json!({
                "queue": alert.queue,
                "message_id": alert.message_id,
                "error": alert.error,
            })
        })
        .collect();
    json!({
        "service": "order-timeout",
        "count": burst.len(),
        "text": text,
        "failures": failures,
    })
}
