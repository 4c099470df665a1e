//! Admission control for checkout. Every order waits on the saga until it
//! is CONFIRMED or CANCELLED; past what the saga can settle, more checkouts
//! only lengthen that wait for all of them, until orders reach the pending
//! timeout and are cancelled after their customers were told "placed".
//! A healthy saga settles an order in well under a second, so orders still
//! PENDING after `age` mean it is behind (or stuck: payment down, say).
//! While `limit` of them wait, new checkouts are refused at once
//! (`Unavailable`, retry shortly; HTTP 503 with `Retry-After`) and the
//! queue stops growing: an order placed waits about `age` plus the time
//! the late ones ahead of it take to settle, instead of ever longer. A few
//! stuck orders, fewer than `limit`, refuse nobody.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use shopmesh_platform::shutdown::Shutdown;
use sqlx::PgPool;
use tonic::Status;

use crate::store;

/// How often the backlog is counted (a bounded index read).
const COUNT_INTERVAL: Duration = Duration::from_millis(250);

/// What a refused client is told to wait before retrying.
const RETRY_AFTER: Duration = Duration::from_secs(2);

/// The last count of late orders, shared by the counter task and the
/// checkouts it admits. Every replica counts the shared table, so they
/// agree on it.
pub struct Backlog {
    /// 0: no limit (and no counting).
    limit: i64,
    /// How long an order may be PENDING before it counts as late.
    age: Duration,
    late: AtomicI64,
}

impl Backlog {
    pub fn new(limit: u32, age: Duration) -> Arc<Self> {
        Arc::new(Self { limit: limit.into(), age, late: AtomicI64::new(0) })
    }

    /// Whether a new checkout may be placed now.
    pub fn admit(&self) -> Result<(), Status> {
        let late = self.late.load(Ordering::Relaxed);
        if self.limit == 0 || late < self.limit {
            return Ok(());
        }
        metrics::counter!("checkouts_refused_total", "reason" => "backlog").increment(1);
        Err(shopmesh_platform::grpc::busy(
            format!(
                "checkout is busy: {late} orders have waited over {} ms to be confirmed; retry in {} s",
                self.age.as_millis(),
                RETRY_AFTER.as_secs()
            ),
            RETRY_AFTER,
        ))
    }

    /// Counts late orders every [`COUNT_INTERVAL`] until shutdown, and
    /// exports the count as `orders_pending_late` (capped at the limit). A
    /// failed count keeps the last one: the database being away refuses
    /// checkouts anyway.
    pub async fn run_counter(self: Arc<Self>, pool: PgPool, shutdown: Shutdown) {
        if self.limit == 0 {
            return;
        }
        loop {
            match store::count_pending_older_than(&pool, self.age, self.limit).await {
                Ok(n) => {
                    self.late.store(n, Ordering::Relaxed);
                    metrics::gauge!("orders_pending_late").set(n as f64);
                }
                Err(e) => tracing::warn!(error = %e, "counting pending orders failed"),
            }
            tokio::select! {
                _ = tokio::time::sleep(COUNT_INTERVAL) => {}
                _ = shutdown.wait() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkouts_are_refused_only_at_the_limit() {
        let backlog = Backlog::new(3, Duration::from_secs(10));
        backlog.late.store(2, Ordering::Relaxed);
        assert!(backlog.admit().is_ok());
        backlog.late.store(3, Ordering::Relaxed);
        let refused = backlog.admit().unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unavailable);
        assert!(refused.message().contains("3 orders have waited over 10000 ms"), "{}", refused.message());
        use tonic_types::StatusExt as _;
        assert_eq!(refused.get_details_retry_info().and_then(|r| r.retry_delay), Some(RETRY_AFTER));
    }

    #[test]
    fn no_limit_admits_everything() {
        let backlog = Backlog::new(0, Duration::ZERO);
        backlog.late.store(1_000_000, Ordering::Relaxed);
        assert!(backlog.admit().is_ok());
    }
}
