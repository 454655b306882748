-- A failed message's body is stored up to FAILED_MESSAGE_MAX_BODY bytes; body_size keeps
-- the size it had, so a cut body is visible as such (octet_length(body) < body_size)
-- and is never republished. A writer that does not know about the cut (an older
-- instance during a rolling upgrade) gets the stored length.
alter table failed_messages add column body_size bigint;
update failed_messages set body_size = octet_length(body);
alter table failed_messages alter column body_size set not null;

create function failed_messages_body_size() returns trigger language plpgsql as $$
begin
    if new.body_size is null then
        new.body_size := octet_length(new.body);
    end if;
    return new;
end;
$$;

create trigger failed_messages_body_size before insert on failed_messages
    for each row execute function failed_messages_body_size();
