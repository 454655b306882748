-- Steering deadlines: when a deadline was last moved, and the history of every move.
--
-- `extended_at` is when the entity's current deadline was set by an extension (null
-- while it still has the deadline it was created with). A reminder is owed for a
-- deadline only if its moment had not passed when that deadline was set.
alter table orders add column extended_at timestamptz;
alter table waybills add column extended_at timestamptz;

-- What happened to a deadline after creation, for the operator console: every
-- extension (old and new deadline) and every reminder. The creation itself is the
-- entity's own `created_at` and its first deadline (the oldest `old_expires_at`, or
-- `expires_at` when never extended).
create table deadline_history (
    id             bigserial   primary key,
    kind           text        not null check (kind in ('order', 'waybill')),
    entity_id      uuid        not null,
    event          text        not null check (event in ('extended', 'reminded')),
    at             timestamptz not null default now(),
    -- The deadline before an extension; null for a reminder.
    old_expires_at timestamptz,
    -- The deadline after an extension, or the one a reminder was sent for.
    expires_at     timestamptz not null,
    -- `api` for one entity's extension, `bulk` for the admin bulk extension, `timer`
    -- for a reminder (set per transaction with `order_timeout.deadline_source`).
    source         text        not null
);
create index deadline_history_entity on deadline_history (entity_id, id);

-- Written by a trigger so every statement that moves a deadline (one entity's
-- extension, a bulk extension) records it in its own transaction, and statements that
-- do not touch `expires_at` (creates, pays, cancels) pay nothing for it.
create function record_extension() returns trigger language plpgsql as $$
begin
    insert into deadline_history (kind, entity_id, event, old_expires_at, expires_at, source)
    values (tg_argv[0], new.id, 'extended', old.expires_at, new.expires_at,
            coalesce(nullif(current_setting('order_timeout.deadline_source', true), ''), 'api'));
    return null;
end $$;
create trigger orders_extension after update of expires_at on orders
    for each row when (old.expires_at is distinct from new.expires_at)
    execute function record_extension('order');
create trigger waybills_extension after update of expires_at on waybills
    for each row when (old.expires_at is distinct from new.expires_at)
    execute function record_extension('waybill');
