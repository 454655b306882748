//! WeCom (企业微信) group robot. Body `{"msgtype":"markdown","markdown":{"content":…}}`;
//! no signing (the `key` in the URL is the credential). The answer is HTTP 200 with
//! `errcode` 0 when accepted (93000 for a bad key, 45009 for the rate limit).

use serde_json::{Value, json};

/// The body of one post: the first line in bold, the rest as quoted lines.
pub(super) fn body(text: &str) -> Value {
    let mut lines = text.lines();
    let mut content = format!("**{}**", lines.next().unwrap_or_default());
    for line in lines {
        content.push_str("\n> ");
        content.push_str(line);
    }
    json!({"msgtype": "markdown", "markdown": {"content": content}})
}
