//! Feishu/Lark custom bot (自定义机器人). Body `{"msg_type":"text","content":{"text":…}}`.
//! With "签名校验" the body also carries `timestamp` (seconds, as a string) and `sign` =
//! base64(HMAC-SHA256(key = "{timestamp}\n{secret}", message = "")): unlike DingTalk the
//! string is the key and the message is empty. The answer is HTTP 200 with `code` 0 when
//! accepted (19021 for a bad signature; older deployments answer `StatusCode`).

use std::time::SystemTime;

use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use super::NotDelivered;

/// The body of one post, signed when a secret is set.
pub(super) fn body(secret: Option<&str>, text: &str, now: SystemTime) -> Value {
    let mut body = json!({"msg_type": "text", "content": {"text": text}});
    if let Some(secret) = secret {
        let timestamp = (super::unix_millis(now) / 1000).to_string();
        body["sign"] = Value::String(sign(secret, &timestamp));
        body["timestamp"] = Value::String(timestamp);
    }
    body
}

/// base64(HMAC-SHA256(key = "{timestamp}\n{secret}", message = "")).
fn sign(secret: &str, timestamp: &str) -> String {
    // HMAC accepts a key of any length, so this cannot fail.
    let mac = Hmac::<Sha256>::new_from_slice(format!("{timestamp}\n{secret}").as_bytes())
        .expect("HMAC takes any key");
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// Accepted when `code` (or the legacy `StatusCode`) is 0.
pub(super) fn accepted(answer: &str) -> Result<(), NotDelivered> {
    let parsed: Value = serde_json::from_str(answer).unwrap_or(Value::Null);
    if parsed.get("code").is_some() {
        super::zero_code(answer, "code", "msg")
    } else {
        super::zero_code(answer, "StatusCode", "StatusMessage")
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Computed with the Python sample of Feishu's documentation
    /// (`hmac.new("{ts}\n{secret}", b"", sha256)`, base64).
    #[test]
    fn the_signature_matches_the_vendors_sample() {
        assert_eq!(
            sign("SECexample0123456789", "1700000000"),
            "S7TuSij45SE3ul/eGkJ5Bwcxf8ZNyPIQzqpjNU85VYk="
        );
        let now = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_999);
        let signed = body(Some("SECexample0123456789"), "x", now);
        assert_eq!(signed["timestamp"], "1700000000");
        assert_eq!(
            signed["sign"],
            "S7TuSij45SE3ul/eGkJ5Bwcxf8ZNyPIQzqpjNU85VYk="
        );
    }

    #[test]
    fn a_nonzero_code_is_refused() {
        assert!(accepted(r#"{"code":0,"msg":"success","data":{}}"#).is_ok());
        assert!(accepted(r#"{"StatusCode":0,"StatusMessage":"success"}"#).is_ok());
        assert!(matches!(
            accepted(r#"{"code":19021,"msg":"sign match fail"}"#),
            Err(NotDelivered::Refused { code: 19021, .. })
        ));
    }
}
