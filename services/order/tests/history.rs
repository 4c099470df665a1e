//! The order's status history against a real Postgres.

use std::time::Duration;

use chrono::{DateTime, Utc};
use shopmesh_order::domain::{CancelReason, OrderStatus, PaymentState};
use shopmesh_order::store::{self, Change};
use shopmesh_platform::testing::{ScratchDatabase, drop_databases};
use uuid::Uuid;

/// A consumer's batch transaction can begin before a customer's cancel and
/// then wait for the order's lock: its change follows the cancel, and its
/// history row must not be dated before it.
#[tokio::test]
async fn a_change_is_dated_when_made_not_when_its_transaction_began() {
    let ScratchDatabase { pool, name } = ScratchDatabase::create("order_test", &shopmesh_order::MIGRATOR).await;
    store::ensure_partitions(&pool, Utc::now(), 1).await.unwrap();
    let id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO orders (id, user_id, status, currency_code, total_minor, shipping_address, created_at, updated_at)
         VALUES ($1, 'user-1', 'PENDING', 'USD', 1200, '{}', now(), now())",
    )
    .bind(id)
    .execute(&pool)
    .await
    .unwrap();

    let mut batch = pool.begin().await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;

    let mut cancel = pool.begin().await.unwrap();
    let order = store::lock_order(&mut cancel, id).await.unwrap().unwrap();
    let cancelled = Change {
        status: OrderStatus::Cancelled,
        reason: Some(CancelReason::CustomerRequest),
        payment: PaymentState::Unpaid,
        note: "cancelled by the customer",
    };
    store::apply_change(&mut cancel, &order, &cancelled, None).await.unwrap();
    cancel.commit().await.unwrap();

    let order = store::lock_order(&mut batch, id).await.unwrap().unwrap();
    let late =
        Change { status: OrderStatus::Cancelled, reason: None, payment: PaymentState::Held, note: "late capture" };
    store::apply_change(&mut batch, &order, &late, None).await.unwrap();
    batch.commit().await.unwrap();

    let dates: Vec<DateTime<Utc>> =
        sqlx::query_scalar("SELECT changed_at FROM order_status_history WHERE order_id = $1 ORDER BY seq")
            .bind(id)
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(dates.len(), 2);
    assert!(dates[0] <= dates[1], "the later change is dated later: {dates:?}");
    let updated: DateTime<Utc> =
        sqlx::query_scalar("SELECT updated_at FROM orders WHERE id = $1").bind(id).fetch_one(&pool).await.unwrap();
    assert_eq!(updated, dates[1], "the order was last updated by its last change");
    pool.close().await;
    drop_databases([name]).await;
}
