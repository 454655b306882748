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

/// Records every key of a batch for its entity id in the caller's transaction, in two
/// statements, and tells for each (in order) whether it is fresh, a replay or a reuse. The
/// keys must differ from each other. A concurrent first use of a key blocks here until the
/// other transaction ends.
pub async fn claim_many(
    tx: &mut PgConnection,
    keys: &[(&IdempotencyKey, Uuid)],
) -> Result<Vec<Claim>, StoreError> {
    let scopes: Vec<&str> = keys.iter().map(|(k, _)| k.scope).collect();
    let names: Vec<&str> = keys.iter().map(|(k, _)| k.key.as_str()).collect();
    let hashes: Vec<&[u8]> = keys
        .iter()
        .map(|(k, _)| k.request_hash.as_slice())
        .collect();
    let ids: Vec<Uuid> = keys.iter().map(|(_, id)| *id).collect();
    let fresh: Vec<(String, String)> = sqlx::query_as(
        "insert into idempotency_keys (scope, key, request_hash, entity_id)
         select * from unnest($1::text[], $2::text[], $3::bytea[], $4::uuid[])
         on conflict do nothing
         returning scope, key",
    )
    .bind(&scopes)
    .bind(&names)
    .bind(&hashes)
    .bind(&ids)
    .fetch_all(&mut *tx)
    .await?;
    let fresh: std::collections::HashSet<(String, String)> = fresh.into_iter().collect();
    let is_fresh = |k: &IdempotencyKey| fresh.contains(&(k.scope.to_owned(), k.key.clone()));
    let (old_scopes, old_names): (Vec<&str>, Vec<&str>) = keys
        .iter()
        .filter(|(k, _)| !is_fresh(k))
        .map(|(k, _)| (k.scope, k.key.as_str()))
        .unzip();
    let mut earlier = std::collections::HashMap::new();
    if !old_names.is_empty() {
        let rows: Vec<(String, String, Vec<u8>, Uuid)> = sqlx::query_as(
            "select i.scope, i.key, i.request_hash, i.entity_id
             from idempotency_keys i join unnest($1::text[], $2::text[]) as k(scope, key)
                  on i.scope = k.scope and i.key = k.key",
        )
        .bind(&old_scopes)
        .bind(&old_names)
        .fetch_all(&mut *tx)
        .await?;
        for (scope, key, hash, id) in rows {
            earlier.insert((scope, key), (hash, id));
        }
    }
    Ok(keys
        .iter()
        .map(|(k, _)| {
            if is_fresh(k) {
                return Claim::Fresh;
            }
            match earlier.get(&(k.scope.to_owned(), k.key.clone())) {
                Some((hash, id)) if *hash == k.request_hash => Claim::Replay(*id),
                _ => Claim::Reused,
            }
        })
        .collect())
}
