//! The outbox relay with several instances against one database (migrations/0004 and
//! 0030: the entities are split into partitions, each published by the one relay holding
//! its lease; rows are deleted only after the broker confirmed them): side by side under
//! load the instances share the partitions, nothing is lost and each entity's events keep
//! their order; a killed instance's partitions are taken over within seconds; a relay
//! killed between the broker's confirm and the delete leaves its rows to the next holder,
//! which publishes them again (duplicates, never a loss).

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;
use uuid::Uuid;

use serde_json::Value;

use crate::chaos::load::{Load, LoadShape, Outage, init_logs, verify};
use crate::chaos::{Binary, lease, wait_ready_at};
use crate::helpers::{TestApp, eventually, poll};

/// The live partition leases by holder: how many each relay holds now.
async fn partitions_held(app: &TestApp) -> HashMap<Uuid, i64> {
    let rows: Vec<(Uuid, i64)> = sqlx::query_as(
        "select holder, count(*) from outbox_lease where expires_at > now() group by holder",
    )
    .fetch_all(&app.pool)
    .await
    .expect("leases");
    rows.into_iter().collect()
}

/// How long settling may take after the load stops.
const SETTLE: Duration = Duration::from_secs(30);

/// Asserts that every entity's first `created` event came before its first later event
/// (paid, cancelled), and that every entity has a `created`. Returns how many entities
/// had both.
fn assert_each_entity_in_order(messages: &[(String, Value)]) -> usize {
    #[derive(Default)]
    struct Firsts {
        created: Option<usize>,
        later: Option<(usize, String)>,
    }
    let mut firsts: HashMap<String, Firsts> = HashMap::new();
    for (position, (key, body)) in messages.iter().enumerate() {
        let id = body["id"].as_str().unwrap_or_default().to_owned();
        let entry = firsts.entry(id).or_default();
        if key.ends_with(".created") {
            entry.created.get_or_insert(position);
        } else {
            entry.later.get_or_insert((position, key.clone()));
        }
    }
    let mut both = 0;
    for (id, first) in &firsts {
        let created = first
            .created
            .unwrap_or_else(|| panic!("entity {id}: events without a created event"));
        if let Some((later, key)) = &first.later {
            assert!(
                created < *later,
                "entity {id}: {key} (message {later}) published before its created event (message {created})"
            );
            both += 1;
        }
    }
    both
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_relaying_side_by_side_under_load_lose_nothing_and_keep_each_entitys_order() {
    init_logs();
    let app = TestApp::spawn().await;
    let events = app.observe_events().await;
    // A second queue bound to every event, read only at the end: the order in which the
    // events were published (the one `verify` reads is drained while it waits).
    let ordered = app.observe_events_as("events.ordered", "#").await;
    let second = app.spawn_instance(|_| {}).await;
    wait_ready_at(&app, &second.address, Duration::from_secs(15)).await;
    // Both relays run; whichever holds the lease publishes what both instances write.
    let load = Load::start(
        vec![app.instance.address.clone(), second.address.clone()],
        LoadShape::default(),
    );
    tokio::time::sleep(Duration::from_secs(6)).await;
    let stats = load.finish().await;
    stats.assert_http_never_failed();
    let verdict = verify(&app, "two relays", &events, &stats, &[], SETTLE).await;
    let published = app.drain(&ordered).await;
    let settled = assert_each_entity_in_order(&published);
    assert_eq!(
        settled, verdict.orders,
        "every order's created and final event, in order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_the_partitions_and_a_killed_ones_partitions_are_taken_over_within_seconds()
 {
    init_logs();
    let mut app = TestApp::spawn().await;
    let events = app.observe_events().await;
    let ordered = app.observe_events_as("events.ordered", "#").await;
    // Only the binary relays at first: the harness's instance only set things up.
    app.instance.stop().await.expect("stop the set-up instance");
    let killed = Binary::start(&app.env, &[("OUTBOX_PARTITIONS", "4")]);
    wait_ready_at(&app, &killed.address, Duration::from_secs(20)).await;
    let alone = eventually(Duration::from_secs(10), || async {
        partitions_held(&app).await.values().eq([&4])
    })
    .await;
    assert!(
        alone,
        "a lone relay did not take all 4 partitions: {:?}\n{}",
        partitions_held(&app).await,
        killed.log_tail()
    );
    let survivor = app.spawn_instance(|c| c.outbox_partitions = 4).await;
    wait_ready_at(&app, &survivor.address, Duration::from_secs(15)).await;
    let load = Load::start(
        vec![killed.address.clone(), survivor.address.clone()],
        LoadShape::default(),
    );
    let shared = eventually(Duration::from_secs(10), || async {
        let mut counts: Vec<i64> = partitions_held(&app).await.into_values().collect();
        counts.sort();
        counts == [2, 2]
    })
    .await;
    assert!(
        shared,
        "the two relays never held two partitions each: {:?}",
        partitions_held(&app).await
    );
    tokio::time::sleep(Duration::from_secs(2)).await;

    killed.signal("-KILL");
    let killed_at = app.db_now().await;
    let killed_instant = Instant::now();
    load.retarget(vec![survivor.address.clone()]);
    let taken_over = poll(Duration::from_secs(15), || async {
        let held = partitions_held(&app).await;
        (held.len() == 1 && held.values().eq([&4])).then(Instant::now)
    })
    .await
    .expect("the survivor never held all 4 partitions after the kill");
    let takeover = taken_over - killed_instant;
    println!(
        "partition takeover after a kill: {} ms",
        takeover.as_millis()
    );
    assert!(
        takeover < Duration::from_secs(8),
        "the killed instance's partitions were taken over only after {takeover:?}"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let stats = load.finish().await;
    stats.assert_always_answered_well();
    let outage = Outage {
        start: killed_at,
        end: killed_at,
    };
    let verdict = verify(
        &app,
        "partitioned relays, one killed",
        &events,
        &stats,
        &[outage],
        SETTLE,
    )
    .await;
    let published = app.drain(&ordered).await;
    let settled = assert_each_entity_in_order(&published);
    assert_eq!(
        settled, verdict.orders,
        "every order's created and final event, in order"
    );
}

/// Makes every `delete from outbox` hang inside the database while `relay_fault.hang`
/// is set: the relay that runs it has published its batch (deletes follow the
/// confirms) and is stopped right before the rows go.
async fn install_hanging_delete(app: &TestApp) {
    for statement in [
        "create table relay_fault (hang boolean not null)",
        "insert into relay_fault values (false)",
        "create function relay_fault_hang() returns trigger language plpgsql as $$
         begin
           if (select hang from relay_fault) then perform pg_sleep(60); end if;
           return null;
         end $$",
        "create trigger relay_fault before delete on outbox
         for each statement execute function relay_fault_hang()",
    ] {
        sqlx::query(statement)
            .execute(&app.pool)
            .await
            .expect("fault trigger");
    }
}

async fn set_hanging(app: &TestApp, hang: bool) {
    sqlx::query("update relay_fault set hang = $1")
        .bind(hang)
        .execute(&app.pool)
        .await
        .expect("set the fault");
}

/// The backend whose outbox delete hangs in the fault trigger, if any.
async fn hung_delete(app: &TestApp) -> Option<i32> {
    sqlx::query_scalar(
        "select pid from pg_stat_activity
          where datname = current_database() and wait_event = 'PgSleep'
            and query ilike 'delete from outbox%'",
    )
    .fetch_optional(&app.pool)
    .await
    .expect("pg_stat_activity")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_killed_between_the_confirm_and_the_delete_leaves_its_rows_to_the_next_holder_which_publishes_them_again()
 {
    init_logs();
    let mut app = TestApp::spawn().await;
    let events = app.observe_events().await;
    // Only the binary relays at first: the harness's instance only set things up.
    app.instance.stop().await.expect("stop the set-up instance");
    install_hanging_delete(&app).await;
    let killed = Binary::start(&app.env, &[]);
    wait_ready_at(&app, &killed.address, Duration::from_secs(20)).await;
    let held = eventually(Duration::from_secs(10), || async {
        lease(&app).await.is_some_and(|(_, live)| live)
    })
    .await;
    assert!(
        held,
        "the binary never took the lease: {}",
        killed.log_tail()
    );
    let (first_holder, _) = lease(&app).await.expect("lease");
    let survivor = app.spawn_instance(|_| {}).await;
    wait_ready_at(&app, &survivor.address, Duration::from_secs(15)).await;
    let load = Load::start(
        vec![killed.address.clone(), survivor.address.clone()],
        LoadShape::default(),
    );
    tokio::time::sleep(Duration::from_secs(3)).await;

    // The holder's next delete hangs: its batch is confirmed by the broker and still in
    // the outbox. It is killed there.
    set_hanging(&app, true).await;
    let pid = crate::helpers::poll(Duration::from_secs(10), || hung_delete(&app)).await;
    let Some(pid) = pid else {
        panic!("no relay delete reached the fault: {}", killed.log_tail())
    };
    killed.signal("-KILL");
    let killed_at = app.db_now().await;
    load.retarget(vec![survivor.address.clone()]);
    set_hanging(&app, false).await;
    // The dead client's backend would sleep on; its transaction deleted nothing.
    sqlx::query("select pg_terminate_backend($1)")
        .bind(pid)
        .execute(&app.pool)
        .await
        .expect("terminate the hung backend");
    tokio::time::sleep(Duration::from_secs(8)).await;
    let stats = load.finish().await;
    stats.assert_always_answered_well();
    assert!(
        stats
            .transport_errors
            .keys()
            .all(|target| *target == killed.address),
        "{:?}",
        stats.transport_errors
    );
    // The survivor takes the lease once the dead holder's expires.
    let outage = Outage {
        start: killed_at,
        end: killed_at,
    };
    let verdict = verify(
        &app,
        "relay killed before its delete",
        &events,
        &stats,
        &[outage],
        SETTLE,
    )
    .await;
    assert!(
        verdict.duplicate_events > 0,
        "the killed relay's confirmed batch was not published again: {verdict:?}"
    );
    let (holder, live) = lease(&app).await.expect("lease");
    assert!(
        holder != first_holder && live,
        "the survivor does not hold the lease"
    );
}
