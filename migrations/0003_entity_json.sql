-- Orders and waybills as JSON exactly as the API shows them (serde's field names,
-- timestamps as chrono writes them: UTC, `Z`, no fraction, or 3 or 6 digits of it).
--
-- With these, a create writes its row, its timer and its `created` event in one
-- statement, and a batch of timeouts cancels its rows and writes their `cancelled`
-- events in one statement: one round trip each instead of BEGIN, two statements and
-- COMMIT. The store's tests check that an event built here equals the API's JSON.

-- Each function is one expression, so PostgreSQL inlines it into the statement's cached
-- plan; a function with a FROM clause would be parsed and planned again on every call.
create function api_time(t timestamptz) returns text language sql stable as $$
    select to_char(t at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS')
        || case when extract(microseconds from t)::bigint % 1000000 = 0 then ''
                when extract(microseconds from t)::bigint % 1000 = 0 then to_char(t at time zone 'UTC', '.MS')
                else to_char(t at time zone 'UTC', '.US') end
        || 'Z'
$$;

create function order_json(o orders) returns jsonb language sql stable as $$
    select jsonb_build_object(
        'id', o.id,
        'customer_id', o.customer_id,
        'amount_cents', o.amount_cents,
        'currency', o.currency,
        'items', o.items,
        'status', o.status,
        'created_at', api_time(o.created_at),
        'expires_at', api_time(o.expires_at),
        'paid_at', api_time(o.paid_at),
        'cancelled_at', api_time(o.cancelled_at),
        'cancel_reason', o.cancel_reason)
$$;

create function waybill_json(w waybills) returns jsonb language sql stable as $$
    select jsonb_build_object(
        'id', w.id,
        'order_id', w.order_id,
        'origin', w.origin,
        'destination', w.destination,
        'status', w.status,
        'carrier_id', w.carrier_id,
        'created_at', api_time(w.created_at),
        'expires_at', api_time(w.expires_at),
        'accepted_at', api_time(w.accepted_at),
        'cancelled_at', api_time(w.cancelled_at),
        'cancel_reason', w.cancel_reason)
$$;
