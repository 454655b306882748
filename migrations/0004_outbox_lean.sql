-- A leaner outbox: one row per change, never rewritten, deleted once published.
--
-- Before: a create wrote two rows (its timer and its `created` event), the relay locked
-- both with FOR UPDATE SKIP LOCKED, held the locks while it waited for the broker's
-- confirms, then UPDATEd both (two more row versions) and the sweeper deleted them a day
-- later, at most 10,000 per tick. Now:
-- * one row carries everything a change publishes: a timer (bucket, deadline, body), an
--   event (routing key, body), or both (a create);
-- * the relay reads rows without locking them, publishes, and after the broker confirmed
--   deletes them in one statement. Only the relay holding the lease (outbox_lease below)
--   publishes, so no row lock is ever held across broker I/O and another instance takes
--   over when the lease is not renewed.
--
-- Hook for other kinds of timers (reminders, per-entity timeouts): write a row with
-- `timer_bucket` (names the cache queue `<prefix>.cache.<bucket>`: one queue per delay, so
-- timers of one bucket expire in order), `due_at` (the relay sets the message's expiration
-- to the time left in database time) and `timer_body` (what the due consumer receives).
alter table outbox rename to outbox_before_0004;
alter index outbox_pkey rename to outbox_before_0004_pkey;
alter sequence outbox_id_seq rename to outbox_before_0004_id_seq;

create table outbox (
    -- The publish order. Rows of one entity are written by transactions that follow
    -- each other (each change needs the previous one committed), so their ids ascend.
    id           bigserial   primary key,
    -- The entity concerned: message ids, logs, the console's lookup.
    entity_id    uuid        not null,
    -- A timer: its cache bucket (`order.1800000`), its deadline, its message body.
    timer_bucket text,
    due_at       timestamptz,
    timer_body   jsonb,
    -- An event: its routing key (`order.created`) and body (the entity as the API shows it).
    event_key    text,
    payload      jsonb,
    -- When the change was written: the console shows the age of the backlog.
    created_at   timestamptz not null default now(),
    check ((timer_bucket is null) = (due_at is null) and (timer_bucket is null) = (timer_body is null)),
    check ((event_key is null) = (payload is null)),
    check (timer_bucket is not null or event_key is not null)
);

-- Unpublished rows of the old shape keep their order: timers and events as they were.
insert into outbox (entity_id, timer_bucket, due_at, timer_body, event_key, payload, created_at)
select entity_id,
       case when topic = 'timer' then routing_key end,
       case when topic = 'timer' then due_at end,
       case when topic = 'timer' then payload end,
       case when topic = 'event' then routing_key end,
       case when topic = 'event' then payload end,
       created_at
from outbox_before_0004 where published_at is null order by id;
drop table outbox_before_0004;

-- No index besides the primary key: every index entry is written per change and read
-- almost never (the console's lookup of one entity scans the backlog, which is small).

-- Rows are deleted as fast as they are written: vacuum the dead ones by count, not by a
-- fraction of a table that is nearly empty, so the table and its index stay small.
alter table outbox set (
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 20000,
    autovacuum_vacuum_insert_scale_factor = 0,
    autovacuum_vacuum_insert_threshold = 20000,
    autovacuum_vacuum_cost_delay = 0
);

-- Which instance's relay publishes, until when. The holder renews it before every batch;
-- a holder that dies or freezes (SIGSTOP, a black-holed network) stops renewing and any
-- other instance takes it over once `expires_at` passed, in database time. `partition`
-- leaves room for several relays each owning a share of the entities; today there is one.
create table outbox_lease (
    partition  integer     primary key,
    holder     uuid        not null,
    expires_at timestamptz not null
);
