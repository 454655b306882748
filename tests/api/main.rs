//! Integration tests against the real PostgreSQL and RabbitMQ of this machine. Each test
//! has its own database and queue prefix, so they run in parallel.

mod helpers;
mod proxy;

mod alerts;
mod broker_nodes;
mod broker_publish;
mod cache_queues;
mod chaos;
mod console;
mod deadlines;
mod dirty_db;
mod failures;
mod hostile;
mod http_contract;
mod openapi;
mod outbox_relay;
mod packaging;
mod prometheus;
mod quorum;
mod reminders;
mod timers;
