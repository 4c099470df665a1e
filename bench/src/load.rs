//! Load generation and latency summaries.

use std::future::Future;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// Latencies in microseconds, 1 µs .. 60 s at 3 significant figures.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// What one load run measured.
pub struct Stats {
    pub requests: u64,
    pub errors: u64,
    pub elapsed: Duration,
    pub latency: Histogram<u64>,
}

impl Stats {
    pub fn rate(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    pub fn p50_ms(&self) -> f64 {
        self.quantile_ms(0.50)
    }

    pub fn p99_ms(&self) -> f64 {
        self.quantile_ms(0.99)
    }

    fn quantile_ms(&self, q: f64) -> f64 {
        if self.latency.is_empty() { 0.0 } else { self.latency.value_at_quantile(q) as f64 / 1000.0 }
    }

    pub fn line(&self, label: &str) -> String {
        format!(
            "{label}: {:.0} req/s  p50 {:.2} ms  p99 {:.2} ms  errors {}",
            self.rate(),
            self.p50_ms(),
            self.p99_ms(),
            self.errors
        )
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "requests": self.requests,
            "errors": self.errors,
            "seconds": self.elapsed.as_secs_f64(),
            "rps": self.rate(),
            "p50_ms": self.p50_ms(),
            "p99_ms": self.p99_ms(),
        })
    }
}

/// Closed loop: `concurrency` workers each send the next request as soon as
/// the previous one answered, for `duration`, after an unrecorded `warmup`
/// (connections and caches settle first). `op` returns whether it succeeded.
pub async fn closed_loop<F, Fut>(concurrency: usize, warmup: Duration, duration: Duration, op: F) -> Stats
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: Future<Output = bool> + Send,
{
    let start = Instant::now();
    let measure_from = start + warmup;
    let stop = measure_from + duration;
    let workers: Vec<_> = (0..concurrency.max(1))
        .map(|_| {
            let op = op.clone();
            tokio::spawn(async move {
                let mut latency = histogram();
                let (mut requests, mut errors) = (0u64, 0u64);
                loop {
                    let sent = Instant::now();
                    if sent >= stop {
                        break;
                    }
                    let ok = op().await;
                    // Only requests sent inside the window count, so the
                    // figures do not depend on how the warmup ended.
                    if sent >= measure_from {
                        requests += 1;
                        errors += u64::from(!ok);
                        latency.saturating_record(sent.elapsed().as_micros() as u64);
                    }
                }
                (requests, errors, latency)
            })
        })
        .collect();
    let mut total = Stats { requests: 0, errors: 0, elapsed: duration, latency: histogram() };
    for worker in workers {
        let (requests, errors, latency) = worker.await.expect("load worker panicked");
        total.requests += requests;
        total.errors += errors;
        total.latency.add(&latency).expect("same histogram bounds");
    }
    // The last requests may answer after `stop`; the window is what was timed.
    total.elapsed = Instant::now().saturating_duration_since(measure_from).max(duration);
    total
}
