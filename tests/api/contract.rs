//! `openapi.yaml` as the oracle of every answer the tests receive. The file is the single
//! source of the HTTP contract (`/openapi.yaml` serves it verbatim); `TestApp::send`
//! hands each answer to [`Spec::check`], which finds the operation by method and path
//! template and fails the test unless the status is documented for it (or is one of the
//! answers the spec's description allows on any request), the documented headers are
//! there, the content type is documented and a JSON body matches the documented schema.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// The methods an operation of the spec can have (HEAD and OPTIONS are axum's own).
pub const METHODS: [Method; 5] = [
    Method::GET,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
];

/// An answer of the service, read whole.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// The body as received.
    pub text: String,
    /// The body as JSON; a string when it is not JSON, null when empty.
    pub body: Value,
}

impl Reply {
    /// Reads a response whole.
    pub async fn read(response: reqwest::Response) -> Self {
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.expect("body");
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|_| Value::String(text.clone()))
        };
        Self {
            status,
            headers,
            text,
            body,
        }
    }

    /// Status and body, the shape `TestApp::get`/`post` answer with.
    pub fn answer(self) -> (StatusCode, Value) {
        (self.status, self.body)
    }

    /// The media type of the body, without parameters ("" when none is declared).
    pub fn media_type(&self) -> &str {
        self.headers
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.split(';').next())
            .map(str::trim)
            .unwrap_or("")
    }
}

/// Answers the spec's description allows on requests besides each operation's statuses:
/// (status, error code, whether the operation must be a POST/DELETE or secured).
enum Anywhere {
    /// Any operation.
    All,
    /// A request that may carry a body (POST, DELETE).
    WithBody,
    /// An operation behind the admin token.
    Secured,
}

const ANYWHERE: [(u16, &str, Anywhere); 3] = [
    (408, "request_timeout", Anywhere::All),
    (415, "unsupported_media_type", Anywhere::WithBody),
    (429, "too_many_requests", Anywhere::Secured),
];

/// The parsed `openapi.yaml`, with a cache of its compiled schemas.
pub struct Spec {
    pub document: Value,
    validators: Mutex<HashMap<String, Arc<jsonschema::Validator>>>,
}

static SPEC: LazyLock<Spec> = LazyLock::new(|| {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.yaml");
    let text = std::fs::read_to_string(path).expect("read openapi.yaml");
    Spec {
        document: serde_norway::from_str(&text).expect("openapi.yaml is valid YAML"),
        validators: Mutex::default(),
    }
});

impl Spec {
    /// The repository's `openapi.yaml`, parsed once per test binary.
    pub fn get() -> &'static Spec {
        &SPEC
    }

    /// Every documented (method, path template), in document order.
    pub fn operations(&self) -> Vec<(Method, String)> {
        let paths = self.document["paths"].as_object().expect("paths");
        let mut operations = Vec::new();
        for (path, item) in paths {
            for method in &METHODS {
                if item.get(method.as_str().to_lowercase()).is_some() {
                    operations.push((method.clone(), path.clone()));
                }
            }
        }
        operations
    }

    /// The operation `method template`, if documented.
    pub fn operation(&self, method: &Method, template: &str) -> Option<&Value> {
        self.document["paths"]
            .get(template)?
            .get(method.as_str().to_lowercase())
    }

    /// The documented path template `path` (no query) falls under: the one with the most
    /// literal segments when several match (`/admin/failed-messages/requeue` over
    /// `/admin/failed-messages/{id}`).
    pub fn template_of(&self, path: &str) -> Option<&str> {
        let segments: Vec<&str> = path.split('/').collect();
        let paths = self.document["paths"].as_object().expect("paths");
        paths
            .keys()
            .filter_map(|template| {
                let parts: Vec<&str> = template.split('/').collect();
                if parts.len() != segments.len() {
                    return None;
                }
                let mut literals = 0;
                for (part, segment) in parts.iter().zip(&segments) {
                    if part.starts_with('{') {
                        if segment.is_empty() {
                            return None;
                        }
                    } else if part == segment {
                        literals += 1;
                    } else {
                        return None;
                    }
                }
                Some((literals, template.as_str()))
            })
            .max_by_key(|(literals, _)| *literals)
            .map(|(_, template)| template)
    }

    /// Follows local `$ref`s until a real object.
    pub fn resolve<'a>(&'a self, mut value: &'a Value) -> &'a Value {
        while let Some(reference) = value.get("$ref").and_then(Value::as_str) {
            let pointer = reference
                .strip_prefix('#')
                .unwrap_or_else(|| panic!("non-local $ref {reference}"));
            value = self
                .document
                .pointer(pointer)
                .unwrap_or_else(|| panic!("dangling $ref {reference}"));
        }
        value
    }

    /// The JSON example of an operation's request body, if it has one.
    pub fn request_example(&self, operation: &Value) -> Option<Value> {
        let body = self.resolve(operation.get("requestBody")?);
        body["content"]["application/json"].get("example").cloned()
    }

    /// What is wrong with `value` against `schema` (a schema of the document), by the
    /// `jsonschema` crate: draft 2020-12, the dialect of OpenAPI 3.1, with formats such as
    /// `uuid` and `date-time` checked. The document's `components` go along so local
    /// `$ref`s resolve. Compiled schemas are kept under `key`.
    pub fn schema_errors(&self, key: &str, schema: &Value, value: &Value) -> Vec<String> {
        let validator = self.validator(key, schema);
        validator
            .iter_errors(value)
            .map(|error| format!("body{}: {error}", error.instance_path()))
            .collect()
    }

    fn validator(&self, key: &str, schema: &Value) -> Arc<jsonschema::Validator> {
        let mut cache = self.validators.lock().expect("validators");
        if let Some(validator) = cache.get(key) {
            return validator.clone();
        }
        let mut root = json!({ "allOf": [schema] });
        root["components"] = self.document["components"].clone();
        let validator = jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .should_validate_formats(true)
            .build(&root)
            .unwrap_or_else(|e| panic!("{key}: the documented schema does not compile: {e}"));
        let validator = Arc::new(validator);
        cache.insert(key.to_owned(), validator.clone());
        validator
    }

    /// Checks `reply`, the answer to `method path`, against the spec; the error says
    /// what does not match.
    pub fn check(&self, method: &Method, path: &str, reply: &Reply) -> Result<(), String> {
        let what = format!("{method} {path} answered {} {}", reply.status, reply.text);
        let error_code = reply.body["error"]["code"].as_str().unwrap_or_default();
        let unknown_route = reply.status == StatusCode::NOT_FOUND
            && reply.body == json!({"error": {"code": "not_found", "message": "no such route"}});
        let Some(template) = self.template_of(path) else {
            return if unknown_route {
                Ok(())
            } else {
                Err(format!("{what}: not the answer to an unknown route"))
            };
        };
        if unknown_route {
            return Err(format!("{what}: {template} is documented but not routed"));
        }
        // HEAD is GET without the body (axum's own).
        let documented_as = if method == Method::HEAD {
            Method::GET
        } else {
            method.clone()
        };
        let Some(operation) = self.operation(&documented_as, template) else {
            return if reply.status == StatusCode::METHOD_NOT_ALLOWED
                && error_code == "method_not_allowed"
            {
                self.check_error(&format!("405 {template}"), reply, &what)
            } else {
                Err(format!(
                    "{what}: {method} {template} is not documented, yet not 405"
                ))
            };
        };
        let Some(response) = operation["responses"].get(reply.status.as_str()) else {
            return self.check_anywhere(method, operation, reply, &what);
        };
        let response = self.resolve(response);
        for (name, header) in response
            .get("headers")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            if self.resolve(header)["required"] == json!(true)
                && !reply.headers.contains_key(name.as_str())
            {
                return Err(format!("{what}: required header {name} is missing"));
            }
        }
        let Some(content) = response.get("content").and_then(Value::as_object) else {
            return if reply.text.is_empty() {
                Ok(())
            } else {
                Err(format!("{what}: a body where none is documented"))
            };
        };
        if method == Method::HEAD {
            return Ok(());
        }
        let Some(media) = content.get(reply.media_type()) else {
            return Err(format!(
                "{what}: content type {:?} is not documented",
                reply.media_type()
            ));
        };
        if reply.media_type() != "application/json" {
            return Ok(());
        }
        let key = format!("{documented_as} {template} {}", reply.status.as_u16());
        self.schema_match(&key, &media["schema"], reply, &what)
    }

    /// A status the operation does not list: one of the answers any request may get.
    fn check_anywhere(
        &self,
        method: &Method,
        operation: &Value,
        reply: &Reply,
        what: &str,
    ) -> Result<(), String> {
        let secured = operation.get("security").is_some();
        let allowed = ANYWHERE.iter().any(|(status, code, when)| {
            reply.status.as_u16() == *status
                && reply.body["error"]["code"] == *code
                && match when {
                    Anywhere::All => true,
                    Anywhere::WithBody => matches!(*method, Method::POST | Method::DELETE),
                    Anywhere::Secured => secured,
                }
        });
        if !allowed {
            return Err(format!(
                "{what}: status {} is not documented",
                reply.status.as_u16()
            ));
        }
        self.check_error(&format!("anywhere {}", reply.status.as_u16()), reply, what)
    }

    /// The body is a JSON `Error` of the spec.
    fn check_error(&self, key: &str, reply: &Reply, what: &str) -> Result<(), String> {
        if reply.media_type() != "application/json" {
            return Err(format!("{what}: an error that is not JSON"));
        }
        let schema = json!({"$ref": "#/components/schemas/Error"});
        self.schema_match(key, &schema, reply, what)
    }

    fn schema_match(
        &self,
        key: &str,
        schema: &Value,
        reply: &Reply,
        what: &str,
    ) -> Result<(), String> {
        if serde_json::from_str::<Value>(&reply.text).is_err() {
            return Err(format!("{what}: declared JSON, is not"));
        }
        let errors = self.schema_errors(key, schema, &reply.body);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{what}: does not match the documented schema:\n{}",
                errors.join("\n")
            ))
        }
    }
}
