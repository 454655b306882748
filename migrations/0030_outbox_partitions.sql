-- Several relays publish the outbox side by side, each owning a share of the entities.
--
-- The entities are split into OUTBOX_PARTITIONS partitions by the last byte of their id
-- (random in a UUIDv7): an entity's rows are always in the same partition, so one relay
-- publishes all of them, in id order. Each partition has a lease (outbox_lease, from
-- migrations/0004); a relay holds at most its fair share, the partitions divided by the
-- relays alive (outbox_relays), gives up what is above it so a newcomer gets some, and
-- takes over the partitions of a relay that stopped renewing once their lease expired.

-- Which partition count a lease was taken under: relays configured with another count
-- (a rolling change of OUTBOX_PARTITIONS) take nothing while such a lease is live, so
-- two ways of splitting the entities never publish at the same time.
alter table outbox_lease add column partitions integer not null default 1;

-- Every relay, holding partitions or not, until when it counts as alive.
create table outbox_relays (
    holder     uuid        primary key,
    seen_until timestamptz not null
);

-- The partition of an entity when there are `partitions` of them (1..=256).
create function outbox_partition(entity_id uuid, partitions integer)
returns integer language sql immutable parallel safe
as $$ select get_byte(uuid_send(entity_id), 15) % partitions $$;

-- Renews `holder`'s leases, gives up those above its fair share, takes free or expired
-- ones up to it, and returns the partitions it holds, all until `ttl_ms` from now in
-- database time. One relay balances at a time (a transaction-level advisory lock), so
-- the checks and the takes that follow them see the same leases.
create function outbox_balance(holder_id uuid, partition_count integer, ttl_ms bigint)
returns integer[] language plpgsql
as $$
declare
    lease_until constant timestamptz := now() + ttl_ms * interval '1 millisecond';
    alive integer;
    fair integer;
    held integer[];
begin
    perform pg_advisory_xact_lock(hashtext('order_timeout.outbox_balance'));
    insert into outbox_relays (holder, seen_until) values (holder_id, lease_until)
        on conflict (holder) do update set seen_until = excluded.seen_until;
    delete from outbox_relays where seen_until < now() - interval '1 minute';
    if exists (select 1 from outbox_lease
               where partitions <> partition_count and expires_at > now()) then
        delete from outbox_lease where holder = holder_id;
        return '{}';
    end if;
    select count(*) into alive from outbox_relays where seen_until > now();
    fair := ceil(partition_count::numeric / greatest(alive, 1))::integer;
    delete from outbox_lease
    where holder = holder_id
      and (partition >= partition_count
           or partition in (select partition from outbox_lease where holder = holder_id
                            order by partition offset fair));
    update outbox_lease set expires_at = lease_until where holder = holder_id;
    insert into outbox_lease (partition, holder, expires_at, partitions)
    select p, holder_id, lease_until, partition_count
    from generate_series(0, partition_count - 1) as p
    where not exists (select 1 from outbox_lease l where l.partition = p and l.expires_at > now())
    order by p
    limit greatest(fair - (select count(*) from outbox_lease where holder = holder_id), 0)
    on conflict (partition) do update
        set holder = excluded.holder, expires_at = excluded.expires_at,
            partitions = excluded.partitions
        where outbox_lease.expires_at <= now();
    select coalesce(array_agg(partition order by partition), '{}') into held
    from outbox_lease where holder = holder_id;
    return held;
end
$$;
