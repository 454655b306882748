//! Slack incoming webhook. Body `{"text": …}`; Slack answers `ok` with HTTP 200, and an
//! HTTP error (400 `invalid_payload`, 404 `no_service`) when it refuses.

use serde_json::{Value, json};

/// The body of one post.
pub(super) fn body(text: &str) -> Value {
    json!({"text": text})
}
