//! Operations: what an operator sees and configures around the pipeline,
//! and the only HTTP code. [`metrics`] builds the Prometheus registry (read
//! from the stages' own counters at scrape time, plus [`latency`]
//! histograms); [`http`] serves `/metrics`, `/healthz` and `/readyz`;
//! [`logging`] sets up the log lines; [`auth`] holds the bearer tokens of the
//! Flight port and [`tls`] its certificates. Nothing here is on the put or
//! flush path except recording into counters.

pub mod auth;
pub mod http;
pub mod latency;
pub mod logging;
pub mod metrics;
pub mod tls;
