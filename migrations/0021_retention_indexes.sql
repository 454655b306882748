-- Retention prunes idempotency keys by age and resolved failed messages by when they were
-- resolved, in batches: each batch finds its rows by index instead of a scan.
create index idempotency_keys_created_at on idempotency_keys (created_at);
create index failed_messages_resolved_at on failed_messages (resolved_at) where status <> 'pending';
