//! # order-timeout
//!
//! Makes "cancel it if nobody acted in time" reliable. Timers live in RabbitMQ, the
//! truth lives in PostgreSQL, and the database clock is the only clock.
//!
//! How an order travels from `POST /orders` to its cancellation:
//!
//! 1. [`api`] parses the request into [`domain`] values and hands it to the group-commit
//!    writer ([`store::batcher`]): requests that arrive while a write is in flight go into
//!    the next one, and one statement inserts every order of a batch (pending,
//!    `expires_at = now() + ORDER_TIMEOUT` in SQL) with one outbox row each carrying its
//!    timer and its `order.created` event ([`store::entities`], [`store::outbox`]).
//! 2. [`outbox`] (the relay, for the outbox partitions it holds), woken in-process after the commit,
//!    reads the rows without locking them and publishes the timer with `expiration` =
//!    milliseconds left into the cache bucket of its kind and timeout
//!    ([`broker::topology`]) and the event, waits for the publisher confirms, then deletes
//!    the rows.
//! 3. RabbitMQ expires the message at the head of the bucket and dead-letters it through
//!    the delay exchange into the due queue.
//! 4. [`timeouts`] consumes the due queue and cancels in one conditional UPDATE (still
//!    pending and due by the database's `now()`), writing `order.cancelled` to the outbox.
//! 5. Whatever did not go simply is routed by [`retry`]: early timers re-armed through
//!    fixed-TTL delay levels, transient failures through retry tiers, hopeless messages
//!    into `failed_messages` with an [`alert`], or the parking queue if even that fails.
//! 6. [`sweeper`] cancels whatever is overdue past a grace period, in case a timer was
//!    lost; [`broker`]'s supervisor reconnects when the broker goes away.
//!
//! [`startup`] wires the tasks together and stops them in order on shutdown.
//!
//! docs/architecture.md is the design at length: the rules that make this correct, the
//! queue topology, what runs where and the shutdown order.

pub mod alert;
pub mod api;
pub mod broker;
pub mod config;
pub mod domain;
pub mod drain;
pub mod liveness;
pub mod outbox;
pub mod retention;
pub mod retry;
pub mod startup;
pub mod store;
pub mod sweeper;
pub mod telemetry;
pub mod timeouts;
