//! Payment in the saga, over the real broker and Postgres: a reservation is
//! charged exactly once however often it arrives, a declined card is
//! announced, a cancellation refunds a capture, and a cancellation that
//! overtakes its reservation prevents the charge.

use std::time::Duration;

use prost::Message;
use rdkafka::consumer::Consumer;
use shopmesh_integration_tests::{TestEnv, drain, eventually, publish_event, publish_raw};
use shopmesh_platform::events::DomainEvent;
use shopmesh_platform::kafka::topics;
use shopmesh_platform::pb::common::v1::Money;
use shopmesh_platform::pb::events::v1 as ev;
use sqlx::PgPool;
use uuid::Uuid;

fn reserved(order: Uuid, user: Uuid, token: &str) -> ev::StockReserved {
    ev::StockReserved {
        order_id: order.to_string(),
        user_id: user.to_string(),
        total: Some(Money { currency_code: "USD".into(), amount_minor: 4200 }),
        payment_token: token.into(),
        lines: vec![],
    }
}

fn cancelled(order: Uuid, user: Uuid, reason: ev::CancelReason) -> ev::OrderCancelled {
    ev::OrderCancelled {
        order_id: order.to_string(),
        user_id: user.to_string(),
        reason: reason as i32,
        was_paid: false,
    }
}

fn envelopes(payloads: Vec<Vec<u8>>) -> Vec<ev::EventEnvelope> {
    payloads.iter().map(|p| ev::EventEnvelope::decode(p.as_slice()).unwrap()).collect()
}

fn of_type<E: DomainEvent>(envelopes: &[ev::EventEnvelope]) -> Vec<E> {
    envelopes.iter().filter(|e| e.r#type == E::TYPE).map(|e| E::decode(e.payload.as_slice()).unwrap()).collect()
}

async fn status(pool: &PgPool, order: Uuid) -> Option<String> {
    sqlx::query_scalar("SELECT status FROM payments WHERE order_id = $1").bind(order).fetch_optional(pool).await.ok()?
}

async fn wait_for_status(pool: &PgPool, order: Uuid, want: &str) {
    eventually(&format!("payment of {order} {want}"), Duration::from_secs(30), || async {
        (status(pool, order).await.as_deref() == Some(want)).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reservation_is_charged_once_declines_are_announced_and_cancellation_refunds() {
    let env = TestEnv::new();
    let _svc = env.launch(&shopmesh_payment::SERVICE).await;
    let pool = shopmesh_platform::db::connect(&env.database_url("payment").await, 2).await.unwrap();
    let kafka = env.kafka();
    let payments = env.observer(&kafka.config.topic(topics::PAYMENT));
    let user = Uuid::now_v7();

    // The same envelope twice (a redelivery) and a second reservation event: one charge.
    let paid = Uuid::now_v7();
    let bytes = publish_event(&kafka, "test", &reserved(paid, user, "tok_visa")).await;
    publish_raw(&kafka, topics::INVENTORY, &paid.to_string(), &bytes).await;
    publish_event(&kafka, "test", &reserved(paid, user, "tok_visa")).await;

    let declined = Uuid::now_v7();
    publish_event(&kafka, "test", &reserved(declined, user, "tok_chargeDeclined")).await;

    wait_for_status(&pool, paid, "CAPTURED").await;
    wait_for_status(&pool, declined, "DECLINED").await;

    // Customer cancels the confirmed order: payment refunds from its own record.
    publish_event(&kafka, "test", &cancelled(paid, user, ev::CancelReason::CustomerRequest)).await;
    wait_for_status(&pool, paid, "REFUNDED").await;

    let seen = envelopes(drain(&payments, Duration::from_secs(20), Duration::from_secs(3)).await);
    let captured = of_type::<ev::PaymentCaptured>(&seen);
    assert_eq!(captured.len(), 1, "charged exactly once: {captured:?}");
    assert_eq!(captured[0].order_id, paid.to_string());
    assert_eq!(captured[0].provider, "primary");
    assert_eq!(captured[0].amount.as_ref().map(|m| m.amount_minor), Some(4200));

    let declines = of_type::<ev::PaymentDeclined>(&seen);
    assert_eq!(declines.len(), 1, "{declines:?}");
    assert_eq!(
        (declines[0].order_id.as_str(), declines[0].reason.as_str()),
        (declined.to_string().as_str(), "card_declined")
    );

    let refunds = of_type::<ev::PaymentRefunded>(&seen);
    assert_eq!(refunds.len(), 1, "{refunds:?}");
    assert_eq!(refunds[0].payment_id, captured[0].payment_id);
    assert_eq!(refunds[0].user_id, user.to_string());

    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM payments").fetch_one(&pool).await.unwrap();
    assert_eq!(rows, 2, "one payment per order");
    payments.unsubscribe();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancellation_overtaking_its_reservation_prevents_the_charge() {
    let env = TestEnv::new();
    let _svc = env.launch(&shopmesh_payment::SERVICE).await;
    let pool = shopmesh_platform::db::connect(&env.database_url("payment").await, 2).await.unwrap();
    let kafka = env.kafka();
    let payments = env.observer(&kafka.config.topic(topics::PAYMENT));
    let (order, user) = (Uuid::now_v7(), Uuid::now_v7());

    // The order timed out before inventory's reservation reached payment.
    publish_event(&kafka, "test", &cancelled(order, user, ev::CancelReason::Timeout)).await;
    eventually("cancellation recorded", Duration::from_secs(30), || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM cancelled_orders WHERE order_id = $1")
            .bind(order)
            .fetch_one(&pool)
            .await
            .ok()?;
        (n == 1).then_some(())
    })
    .await;
    publish_event(&kafka, "test", &reserved(order, user, "tok_visa")).await;
    wait_for_status(&pool, order, "DECLINED").await;

    let seen = envelopes(drain(&payments, Duration::from_secs(20), Duration::from_secs(3)).await);
    assert!(of_type::<ev::PaymentCaptured>(&seen).is_empty(), "a cancelled order is never charged");
    let declines = of_type::<ev::PaymentDeclined>(&seen);
    assert_eq!(declines.len(), 1, "{declines:?}");
    assert_eq!(declines[0].reason, "order cancelled", "so inventory releases the stock");
    payments.unsubscribe();
}
