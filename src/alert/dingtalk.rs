//! DingTalk custom robot (自定义机器人). Body `{"msgtype":"text","text":{"content":…}}`.
//! With the "加签" security setting the URL carries `timestamp` (milliseconds) and `sign`
//! = urlencode(base64(HMAC-SHA256(key = secret, message = "{timestamp}\n{secret}"))); the
//! robot refuses a post whose timestamp is more than an hour off. The answer is HTTP 200
//! with `errcode` 0 when accepted (310000 for a bad signature or a missing keyword).

use std::time::SystemTime;

use base64::Engine;
use hmac::{Hmac, Mac};
use reqwest::Url;
use serde_json::{Value, json};
use sha2::Sha256;

/// The signed URL (when a secret is set) and the body of one post.
pub(super) fn request(
    url: &Url,
    secret: Option<&str>,
    text: &str,
    now: SystemTime,
) -> (Url, Value) {
    let mut url = url.clone();
    if let Some(secret) = secret {
        let timestamp = super::unix_millis(now).to_string();
        // `append_pair` percent-encodes the value: the urlencode step of the signature.
        url.query_pairs_mut()
            .append_pair("timestamp", &timestamp)
            .append_pair("sign", &sign(secret, &timestamp));
    }
    (url, json!({"msgtype": "text", "text": {"content": text}}))
}

/// base64(HMAC-SHA256(secret, "{timestamp}\n{secret}")), before URL encoding.
fn sign(secret: &str, timestamp: &str) -> String {
    // HMAC accepts a key of any length, so this cannot fail.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(format!("{timestamp}\n{secret}").as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Computed with the Python sample of DingTalk's documentation
    /// (`hmac.new(secret, "{ts}\n{secret}", sha256)`, base64, `quote_plus`).
    #[test]
    fn the_signature_matches_the_vendors_sample() {
        assert_eq!(
            sign("SECexample0123456789", "1700000000000"),
            "figG6qqCA/lRh0hsGCW2zNtNV5znkAFut5BI0zKhqnQ="
        );
        let url = Url::parse("https://oapi.dingtalk.com/robot/send?access_token=abc").unwrap();
        let now = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_000);
        let (signed, _) = request(&url, Some("SECexample0123456789"), "x", now);
        assert_eq!(
            signed.query(),
            Some(
                "access_token=abc&timestamp=1700000000000&sign=figG6qqCA%2FlRh0hsGCW2zNtNV5znkAFut5BI0zKhqnQ%3D"
            )
        );
    }

    #[test]
    fn without_a_secret_the_url_is_left_alone() {
        let url = Url::parse("https://oapi.dingtalk.com/robot/send?access_token=abc").unwrap();
        let (same, body) = request(&url, None, "hello", SystemTime::now());
        assert_eq!(same, url);
        assert_eq!(
            body,
            json!({"msgtype": "text", "text": {"content": "hello"}})
        );
    }
}
