//! Idempotency keys of create requests: a retried POST returns what the first one made.

use sha2::{Digest, Sha256};
use sqlx::PgConnection;
use uuid::Uuid;

use super::StoreError;

/// The client's key, scoped to the resource it was used on.
#[derive(Debug, Clone)]
pub struct IdempotencyKey {
    /// `orders` or `waybills`: the same key may be used once per resource.
    pub scope: &'static str,
    /// The `Idempotency-Key` header value.
    pub key: String,
    /// Hash of the request body, to tell a replay from a reuse with another body.
    pub request_hash: Vec<u8>,
}

impl IdempotencyKey {
    /// Builds a key for a request body.
    pub fn new(scope: &'static str, key: String, body: &[u8]) -> Self {
        Self {
            scope,
            key,
            request_hash: Sha256::digest(body).to_vec(),
        }
    }
}

/// What the key says about this request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// First use: create the entity with this id.
    Fresh,
    /// Same key, same body: return the entity already created.
    Replay(Uuid),
    /// Same key, another body.
    Reused,
}

/// Records the key for `entity_id` in the caller's transaction, or reports an earlier use.
/// A concurrent first use blocks here until the other transaction ends.
pub async fn claim(
    tx: &mut PgConnection,
    key: &IdempotencyKey,
    entity_id: Uuid,
) -> Result<Claim, StoreError> {
    let inserted = sqlx::query(
        "insert into idempotency_keys (scope, key, request_hash, entity_id) values ($1, $2, $3, $4)
         on conflict do nothing",
    )
    .bind(key.scope)
    .bind(&key.key)
    .bind(&key.request_hash)
    .bind(entity_id)
    .execute(&mut *tx)
    .await?;
    if inserted.rows_affected() == 1 {
        return Ok(Claim::Fresh);
    }
    let (hash, existing): (Vec<u8>, Uuid) = sqlx::query_as(
        "select request_hash, entity_id from idempotency_keys where scope = $1 and key = $2",
    )
    .bind(key.scope)
    .bind(&key.key)
    .fetch_one(&mut *tx)
    .await?;
    Ok(if hash == key.request_hash {
        Claim::Replay(existing)
    } else {
        Claim::Reused
    })
}
