-- Orders: the truth about every order and its payment deadline.
create table orders (
    id            uuid primary key,
    customer_id   text        not null,
    amount_cents  bigint      not null check (amount_cents > 0),
    currency      text        not null check (currency ~ '^[A-Z]{3}$'),
    items         jsonb,
    status        text        not null default 'pending'
                  check (status in ('pending', 'paid', 'cancelled')),
    created_at    timestamptz not null default now(),
    expires_at    timestamptz not null,
    paid_at       timestamptz,
    cancelled_at  timestamptz,
    cancel_reason text check (cancel_reason in ('payment_timeout', 'customer_request'))
);
-- The sweeper and the dashboards look for pending rows by deadline.
create index orders_pending_deadline on orders (expires_at) where status = 'pending';
-- Listing is newest first (uuid v7 ids are time ordered), optionally by customer or status.
create index orders_customer_id on orders (customer_id, id desc);
create index orders_status_id on orders (status, id desc);

-- Waybills: the truth about every waybill and its acceptance deadline.
create table waybills (
    id            uuid primary key,
    order_id      uuid,
    origin        text        not null,
    destination   text        not null,
    status        text        not null default 'pending'
                  check (status in ('pending', 'accepted', 'cancelled')),
    carrier_id    text,
    created_at    timestamptz not null default now(),
    expires_at    timestamptz not null,
    accepted_at   timestamptz,
    cancelled_at  timestamptz,
    cancel_reason text check (cancel_reason in ('acceptance_timeout', 'shipper_request'))
);
create index waybills_pending_deadline on waybills (expires_at) where status = 'pending';
create index waybills_order_id on waybills (order_id, id desc);
create index waybills_status_id on waybills (status, id desc);

-- Idempotency keys of create requests: the same key and body replay the same entity.
create table idempotency_keys (
    scope        text        not null,
    key          text        not null,
    request_hash bytea       not null,
    entity_id    uuid        not null,
    created_at   timestamptz not null default now(),
    primary key (scope, key)
);

-- Transactional outbox: timers and domain events written with the entity, published later.
create table outbox (
    id           bigserial   primary key,
    topic        text        not null check (topic in ('timer', 'event')),
    -- For a timer the cache bucket (`order.1800000`), for an event its routing key.
    routing_key  text        not null,
    entity_id    uuid        not null,
    payload      jsonb       not null,
    -- For a timer: the deadline, so the relay computes the milliseconds left in database time.
    due_at       timestamptz,
    created_at   timestamptz not null default now(),
    published_at timestamptz
);
create index outbox_unpublished on outbox (id) where published_at is null;

-- Wake the relays of every instance as soon as rows commit.
create function outbox_notify() returns trigger language plpgsql as $$
begin
    perform pg_notify('outbox', '');
    return null;
end $$;
create trigger outbox_notify after insert on outbox
    for each statement execute function outbox_notify();

-- Messages whose handling failed for good, kept for an operator to requeue or discard.
create table failed_messages (
    id              uuid        primary key,
    queue           text        not null,
    exchange        text        not null,
    routing_key     text        not null,
    headers         jsonb       not null,
    body            bytea       not null,
    message_id      text,
    error           text        not null,
    error_class     text        not null,
    attempts        integer     not null,
    first_failed_at timestamptz not null,
    last_failed_at  timestamptz not null,
    status          text        not null default 'pending'
                    check (status in ('pending', 'requeued', 'discarded')),
    resolved_at     timestamptz
);
create index failed_messages_status_id on failed_messages (status, id desc);
create index failed_messages_queue_id on failed_messages (queue, id desc);
