-- Reminders before a deadline (ORDER_REMIND_BEFORE / WAYBILL_REMIND_BEFORE).
--
-- `reminded_for` is the deadline an `*.expiring` event was last written for. The
-- reminder is one conditional UPDATE (`reminded_for is distinct from expires_at`), so
-- a duplicate or a re-armed copy of a timer never sends a second one for the same
-- deadline, and an extension (a new `expires_at`) makes one more due.
alter table orders add column reminded_for timestamptz;
alter table waybills add column reminded_for timestamptz;

-- Every reminder goes into the deadline's history, in the reminder's own statement.
create function record_reminder() returns trigger language plpgsql as $$
begin
    insert into deadline_history (kind, entity_id, event, expires_at, source)
    values (tg_argv[0], new.id, 'reminded', new.reminded_for, 'timer');
    return null;
end $$;
create trigger orders_reminder after update of reminded_for on orders
    for each row when (old.reminded_for is distinct from new.reminded_for)
    execute function record_reminder('order');
create trigger waybills_reminder after update of reminded_for on waybills
    for each row when (old.reminded_for is distinct from new.reminded_for)
    execute function record_reminder('waybill');
