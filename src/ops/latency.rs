//! Latency histograms that the stages record into and the Prometheus
//! registry reads (`prometheus-client`'s histogram, seconds as Prometheus
//! asks).

use std::time::Duration;

use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};

/// A latency histogram in seconds: 20 buckets from 100 µs doubling to ~52 s.
#[derive(Debug, Clone)]
pub struct Latency(Histogram);

impl Default for Latency {
    fn default() -> Self {
        Latency(Histogram::new(exponential_buckets(1e-4, 2.0, 20)))
    }
}

impl Latency {
    pub fn observe(&self, elapsed: Duration) {
        self.0.observe(elapsed.as_secs_f64());
    }

    pub(crate) fn histogram(&self) -> &Histogram {
        &self.0
    }
}
