//! Notification over the real broker: order outcomes become one message each
//! (a redelivered event none extra), and a refund payment publishes reaches
//! the customer as "Refund issued".

use std::time::Duration;

use shopmesh_integration_tests::{TestEnv, eventually, publish_event, publish_raw};
use shopmesh_platform::events::DomainEvent;
use shopmesh_platform::pb::common::v1::Money;
use shopmesh_platform::pb::events::v1 as ev;
use sqlx::PgPool;
use uuid::Uuid;

/// (title, body) of `user`'s notifications, oldest first, once there are `n`.
async fn notifications(pool: &PgPool, user: Uuid, n: usize) -> Vec<(String, String)> {
    eventually(&format!("{n} notifications"), Duration::from_secs(30), || async {
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT title, body FROM notifications WHERE user_id = $1 ORDER BY created_at, id")
                .bind(user)
                .fetch_all(pool)
                .await
                .ok()?;
        (rows.len() >= n).then_some(rows)
    })
    .await
}

/// The notification service started on `env`, its database and the broker.
async fn notification_service(
    env: &TestEnv,
) -> (shopmesh_platform::runtime::Launched, PgPool, shopmesh_platform::kafka::Kafka) {
    let svc = env.launch(&shopmesh_notification::SERVICE).await;
    let pool = shopmesh_platform::db::connect(&env.database_url("notification").await, 2).await.unwrap();
    (svc, pool, env.kafka())
}

fn usd(minor: i64) -> Option<Money> {
    Some(Money { currency_code: "USD".into(), amount_minor: minor })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_outcomes_notify_the_customer_once_each() {
    let env = TestEnv::new();
    let (_svc, pool, kafka) = notification_service(&env).await;
    let user = Uuid::now_v7();
    let order = Uuid::now_v7().to_string();

    let confirmed = ev::OrderConfirmed {
        order_id: order.clone(),
        user_id: user.to_string(),
        total: usd(1999),
        ..Default::default()
    };
    let bytes = publish_event(&kafka, "test", &confirmed).await;
    publish_raw(&kafka, ev::OrderConfirmed::TOPIC, &order, &bytes).await;
    let cancelled = ev::OrderCancelled {
        order_id: order.clone(),
        user_id: user.to_string(),
        reason: ev::CancelReason::OutOfStock as i32,
        was_paid: false,
    };
    publish_event(&kafka, "test", &cancelled).await;

    let rows = notifications(&pool, user, 2).await;
    // Give a duplicate time to show up if it were going to.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rows_after = notifications(&pool, user, 2).await;
    assert_eq!(rows, rows_after, "the redelivered confirmation added nothing");
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows[0].0, "Order confirmed");
    assert!(rows[0].1.contains("USD 19.99"), "{}", rows[0].1);
    assert_eq!(rows[1].0, "Order cancelled");
    assert!(rows[1].1.contains("out of stock"), "{}", rows[1].1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refund_by_payment_reaches_the_customer() {
    let env = TestEnv::new();
    let _payment = env.launch(&shopmesh_payment::SERVICE).await;
    let _notification = env.launch(&shopmesh_notification::SERVICE).await;
    let pool = shopmesh_platform::db::connect(&env.database_url("notification").await, 2).await.unwrap();
    let kafka = env.kafka();
    let (order, user) = (Uuid::now_v7(), Uuid::now_v7());

    publish_event(
        &kafka,
        "test",
        &ev::StockReserved {
            order_id: order.to_string(),
            user_id: user.to_string(),
            total: usd(1234),
            payment_token: "tok_visa".into(),
            lines: vec![],
        },
    )
    .await;
    let payment_db = shopmesh_platform::db::connect(&env.database_url("payment").await, 2).await.unwrap();
    eventually("capture", Duration::from_secs(30), || async {
        let status: Option<String> = sqlx::query_scalar("SELECT status FROM payments WHERE order_id = $1")
            .bind(order)
            .fetch_optional(&payment_db)
            .await
            .ok()?;
        (status.as_deref() == Some("CAPTURED")).then_some(())
    })
    .await;
    publish_event(
        &kafka,
        "test",
        &ev::OrderCancelled {
            order_id: order.to_string(),
            user_id: user.to_string(),
            reason: ev::CancelReason::CustomerRequest as i32,
            was_paid: true,
        },
    )
    .await;

    // Notification hears both the cancellation (order-events) and payment's refund (payment-events).
    let rows = notifications(&pool, user, 2).await;
    let refund = rows.iter().find(|(title, _)| title == "Refund issued").expect("refund notification");
    assert_eq!(refund.1, format!("We refunded USD 12.34 for your order {order}."));
    assert!(rows.iter().any(|(title, _)| title == "Order cancelled"), "{rows:?}");
}

/// A batch of one event type is stored in one statement: one message per
/// event, none for a copy already stored, and nothing at all if one event of
/// the batch can never be applied (the consumer then retries them singly).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_outcomes_is_stored_at_once_and_only_once() {
    use shopmesh_platform::consumer::{Consumed, EventHandler as _};
    use shopmesh_platform::events::{ReceivedEvent, envelope};

    let env = TestEnv::new();
    let pool = shopmesh_platform::db::connect(&env.database_url("notification").await, 2).await.unwrap();
    shopmesh_platform::db::migrate(&pool, Some(&shopmesh_notification::MIGRATOR)).await.unwrap();
    let confirmed = |user: &str| {
        let event = ev::OrderConfirmed {
            order_id: Uuid::now_v7().to_string(),
            user_id: user.to_owned(),
            total: usd(500),
            ..Default::default()
        };
        let bytes = prost::Message::encode_to_vec(&envelope("test", &event));
        ReceivedEvent::decode_envelope(&bytes, ev::OrderConfirmed::TOPIC, 0, 0).unwrap()
    };
    let apply = |events: Vec<ReceivedEvent>| {
        let pool = pool.clone();
        async move {
            let set: Vec<Consumed<'_>> =
                events.iter().map(|event| Consumed { event, span: tracing::Span::none() }).collect();
            let mut tx = pool.begin().await.unwrap();
            let applied = shopmesh_notification::events::Notifier.handle_set(&mut tx, &set).await;
            if applied.is_ok() {
                tx.commit().await.unwrap();
            }
            applied
        }
    };
    let users: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();
    let events: Vec<ReceivedEvent> = users.iter().map(|u| confirmed(&u.to_string())).collect();
    let count =
        || async { sqlx::query_scalar::<_, i64>("SELECT count(*) FROM notifications").fetch_one(&pool).await.unwrap() };

    apply(events.clone()).await.unwrap();
    assert_eq!(count().await, 3);
    for user in &users {
        let rows = notifications(&pool, *user, 1).await;
        assert_eq!(rows.len(), 1, "{rows:?}");
        assert_eq!(rows[0].0, "Order confirmed");
        assert!(rows[0].1.contains("USD 5.00"), "{}", rows[0].1);
    }
    apply(events.clone()).await.unwrap();
    assert_eq!(count().await, 3, "copies of stored events add nothing");

    let stranger = Uuid::now_v7();
    let broken = vec![confirmed(&stranger.to_string()), confirmed("not-a-user-id")];
    assert!(apply(broken).await.is_err(), "an event without a valid recipient fails the batch");
    assert_eq!(count().await, 3, "and the batch wrote nothing");
}

/// A message that can never apply (not an envelope; no valid recipient) is
/// dead-lettered at once, one that keeps failing after the configured
/// attempts (3 here); each lands on `<topic>.dlq` as it was, with the error
/// and its origin in headers, is counted in `/metrics`, and the consumer
/// goes on with the next message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_keeps_failing_is_dead_lettered_with_its_error_and_counted() {
    use rdkafka::Message as _;
    use rdkafka::message::Headers as _;

    let env = TestEnv::new();
    let (svc, pool, kafka) = notification_service(&env).await;
    let topic = kafka.config.topic(ev::OrderConfirmed::TOPIC);
    let dlq = env.observer(&format!("{topic}.dlq"));
    let confirmed = |user: &str| ev::OrderConfirmed {
        order_id: Uuid::now_v7().to_string(),
        user_id: user.to_owned(),
        total: usd(700),
        ..Default::default()
    };
    // The next dead letter: payload and headers.
    let next_dead_letter = || async {
        let msg = tokio::time::timeout(Duration::from_secs(30), dlq.recv()).await.expect("a dead letter").unwrap();
        let headers: std::collections::HashMap<String, String> = msg
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| (h.key.to_owned(), String::from_utf8_lossy(h.value.unwrap_or_default()).into()))
                    .collect()
            })
            .unwrap_or_default();
        (msg.payload().unwrap_or_default().to_vec(), headers)
    };

    publish_raw(&kafka, ev::OrderConfirmed::TOPIC, "garbage", b"\xff not an envelope").await;
    let (payload, headers) = next_dead_letter().await;
    assert_eq!(payload, b"\xff not an envelope", "dead-lettered as it was");
    assert_eq!(headers["dlq_attempts"], "1", "never worth a retry: {headers:?}");
    assert_eq!(headers["dlq_consumer"], "notification");
    assert_eq!(headers["dlq_original_topic"], topic);
    assert!(headers["dlq_original_offset"].parse::<i64>().is_ok(), "{headers:?}");
    assert!(!headers["dlq_error"].is_empty());

    let nobody = publish_event(&kafka, "test", &confirmed("not-a-user-id")).await;
    let (payload, headers) = next_dead_letter().await;
    assert_eq!(payload, nobody);
    assert_eq!(headers["dlq_attempts"], "1");
    assert!(headers["dlq_error"].contains("not-a-user-id"), "{headers:?}");

    // The consumer went on past both.
    let alice = Uuid::now_v7();
    publish_event(&kafka, "test", &confirmed(&alice.to_string())).await;
    assert_eq!(notifications(&pool, alice, 1).await.len(), 1);

    // A database that refuses bob's row: retried, then dead-lettered.
    let bob = Uuid::now_v7();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ALTER TABLE notifications ADD CONSTRAINT refuses_bob CHECK (user_id <> '{bob}') NOT VALID"
    )))
    .execute(&pool)
    .await
    .unwrap();
    let refused = publish_event(&kafka, "test", &confirmed(&bob.to_string())).await;
    let (payload, headers) = next_dead_letter().await;
    assert_eq!(payload, refused);
    assert_eq!(headers["dlq_attempts"], "3", "every attempt used: {headers:?}");
    assert!(headers["dlq_error"].contains("refuses_bob"), "{headers:?}");

    sqlx::query("ALTER TABLE notifications DROP CONSTRAINT refuses_bob").execute(&pool).await.unwrap();
    let carol = Uuid::now_v7();
    publish_event(&kafka, "test", &confirmed(&carol.to_string())).await;
    assert_eq!(notifications(&pool, carol, 1).await.len(), 1, "and went on after it");

    let metrics = reqwest::get(format!("http://{}/metrics", svc.http_addr)).await.unwrap().text().await.unwrap();
    let counted = metrics
        .lines()
        .find(|l| l.starts_with("consumer_dead_lettered_total") && l.contains("consumer=\"notification\""))
        .unwrap_or_else(|| panic!("no dead-letter count in {metrics}"));
    assert!(counted.contains("topic=\"order-events\"") && counted.ends_with(" 3"), "{counted}");
    // Each also by its type; the one that was no envelope has none.
    let undecodable = metrics
        .lines()
        .find(|l| l.starts_with("events_consumed_total") && l.contains("type=\"undecodable\""))
        .unwrap_or_else(|| panic!("no count of the undecodable message in {metrics}"));
    assert!(undecodable.contains("outcome=\"dead_lettered\"") && undecodable.ends_with(" 1"), "{undecodable}");
}
