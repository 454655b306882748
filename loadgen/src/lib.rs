//! The one load generator of order-timeout, used by the benchmark (`bench/`) and by the
//! chaos tests (`tests/api/chaos`).
//!
//! - [`api`]: the HTTP client of the service (create, pay, `/metrics`), each answer
//!   with its status, error code and time.
//! - [`closed_loop`]: N workers each sending the next operation when the previous one
//!   answered, until a time, a count or a signal; latency histograms and percentiles.
//! - [`counters`]: the service's counters of `/metrics` that explain a phase.
//! - [`mix`]: the create-and-pay mix the chaos tests run through a fault, recording
//!   every answer, so a test can check afterwards that nothing was lost.

pub mod api;
pub mod closed_loop;
pub mod counters;
pub mod mix;

pub use api::{Answer, Api};
pub use closed_loop::{Latency, Stop, Throughput, closed_loop, histogram, record};
pub use counters::Counters;
pub use mix::{ANSWER_WITHIN, Load, LoadShape, Stats};
