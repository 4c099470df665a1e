//! The broker goes away for a while: checkout keeps working, the order's
//! events wait in its outbox, and once the broker is back they drain, the
//! saga finishes and nothing is applied twice. Real Tansu (a private one, so
//! the shared broker stays up for other tests), Postgres and Redis.

use std::time::Duration;

use shopmesh_integration_tests::SAGA_CONSUMERS;
use shopmesh_integration_tests::broker::PrivateBroker;
use shopmesh_integration_tests::eventually;
use shopmesh_integration_tests::shop::{SAGA, Shop, history};
use sqlx::Row;

const OUTAGE: Duration = Duration::from_secs(5);

/// (unpublished, total) outbox rows keyed by `key`, or all rows for `None`.
async fn outbox_rows(db: &sqlx::PgPool, key: Option<&str>) -> (i64, i64) {
    let row = sqlx::query(
        "SELECT count(*) FILTER (WHERE published_at IS NULL) AS unpublished, count(*) AS total
         FROM outbox WHERE $1::text IS NULL OR event_key = $1",
    )
    .bind(key)
    .fetch_one(db)
    .await
    .unwrap();
    (row.get("unpublished"), row.get("total"))
}

async fn order_status(db: &sqlx::PgPool, id: &str) -> String {
    sqlx::query_scalar("SELECT status FROM orders WHERE id = $1::uuid").bind(id).fetch_one(db).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_wait_in_the_outbox_while_the_broker_is_down_and_drain_when_it_returns() {
    let broker = PrivateBroker::start().await;
    let brokers = broker.brokers();
    // The default 60 s pending timeout outlasts the outage: the order must not
    // time out. Deliveries give up after 1.5 s, so the outage makes the relay
    // record failures and retry with backoff (not just librdkafka buffering).
    let shop = Shop::start(
        |env| {
            env.set("KAFKA_BROKERS", brokers);
            env.set("KAFKA_MESSAGE_TIMEOUT_MS", "1500");
            env.set("OUTBOX_MAX_BACKOFF_MS", "1000");
        },
        true,
    )
    .await;
    let orders_db = shopmesh_platform::db::connect(&shop.env.database_url("order").await, 1).await.unwrap();
    let mug = shop.product("MUG-1", 1250, 10).await;
    let alice = shop.customer("alice@shop.test").await;

    // The saga works on the private broker.
    shop.add_to_cart(&alice, &mug, 1).await;
    let first = shop.checkout(&alice, "tok_visa").await["id"].as_str().unwrap().to_owned();
    assert_eq!(shop.final_order(&alice, &first).await["status"], "ORDER_STATUS_CONFIRMED");
    shop.env.wait_consumers_caught_up(SAGA_CONSUMERS, SAGA).await;
    assert_eq!(shop.cart_lines(&alice).await, 0);

    broker.pause();
    shop.add_to_cart(&alice, &mug, 2).await;
    let placed = shop.checkout(&alice, "tok_visa").await;
    assert_eq!(placed["status"], "ORDER_STATUS_PENDING");
    let second = placed["id"].as_str().unwrap().to_owned();
    // OrderCreated is committed with the order but can't leave, and nothing moves.
    let down_since = tokio::time::Instant::now();
    while down_since.elapsed() < OUTAGE {
        let (unpublished, total) = outbox_rows(&orders_db, Some(&second)).await;
        assert!(unpublished >= 1 && unpublished == total, "{unpublished} of {total} rows unpublished");
        assert_eq!(order_status(&orders_db, &second).await, "PENDING");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let stuck: String = sqlx::query_scalar("SELECT event_type FROM outbox WHERE event_key = $1 ORDER BY seq LIMIT 1")
        .bind(&second)
        .fetch_one(&orders_db)
        .await
        .unwrap();
    assert_eq!(stuck, "shopmesh.events.v1.OrderCreated");
    let (attempts, last_error): (i32, Option<String>) =
        sqlx::query_as("SELECT attempts, last_error FROM outbox WHERE event_key = $1 ORDER BY seq LIMIT 1")
            .bind(&second)
            .fetch_one(&orders_db)
            .await
            .unwrap();
    assert!(
        attempts >= 1 && last_error.is_some(),
        "the relay tried, failed and kept the row: {attempts} {last_error:?}"
    );
    // The backlog shows in /metrics while the broker is down, not only once it drains.
    let (order, _) = shop.order.as_ref().unwrap();
    let metrics = format!("http://{}/metrics", order.http_addr);
    let gauge = |text: &str, name: &str| {
        let line = text.lines().find(|l| l.starts_with(&format!("{name}{{service=\"order\"}} ")))?;
        line.rsplit(' ').next()?.parse::<f64>().ok()
    };
    eventually("the outbox backlog reported during the outage", Duration::from_secs(15), || async {
        let text = shop.http.get(&metrics).send().await.ok()?.text().await.ok()?;
        let (pending, lag) = (gauge(&text, "outbox_pending")?, gauge(&text, "outbox_lag_seconds")?);
        (pending >= 1.0 && lag >= 1.0).then_some(())
    })
    .await;

    broker.resume();
    let order = shop.final_order(&alice, &second).await;
    assert_eq!(order["status"], "ORDER_STATUS_CONFIRMED", "{order}");
    assert_eq!(history(&order), ["ORDER_STATUS_PENDING", "ORDER_STATUS_CONFIRMED"]);
    // Every consumer group is back and has processed everything.
    shop.env.wait_consumers_caught_up(SAGA_CONSUMERS, SAGA).await;
    let (unpublished, total) = outbox_rows(&orders_db, Some(&second)).await;
    assert_eq!(unpublished, 0, "the order's outbox drained");
    assert!(total >= 2, "OrderCreated and OrderConfirmed: {total} rows");
    for service in ["order", "inventory", "payment"] {
        let db = shopmesh_platform::db::connect(&shop.env.database_url(service).await, 1).await.unwrap();
        assert_eq!(outbox_rows(&db, None).await.0, 0, "{service} outbox drained");
    }

    // Applied once each: one capture per order, stock committed once, one notice each.
    for id in [&first, &second] {
        let payments = shop.payments(&alice, id).await;
        assert_eq!(payments.len(), 1, "order {id}: {payments:?}");
        assert_eq!(payments[0]["status"], "PAYMENT_STATUS_CAPTURED");
    }
    assert_eq!(shop.stock(&mug).await, (7, 7, 0));
    assert_eq!(shop.cart_lines(&alice).await, 0);
    let notes = shop.notifications(&alice).await;
    let confirmed = notes.iter().filter(|n| n["kind"] == "NOTIFICATION_KIND_ORDER_CONFIRMED").count();
    assert_eq!(confirmed, 2, "{notes:?}");
}
