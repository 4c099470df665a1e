//! The `shopmesh` binary as a crash or a rollout meets it: inventory, run by
//! `shopmesh serve inventory` in its own process, is killed with SIGKILL,
//! once idle and once in the middle of a consumer batch, and every saga it
//! was part of still finishes, each effect applied once; stopped with
//! SIGTERM, it drains and exits cleanly. Order, killed while checkouts wait
//! on its database, leaves its clients' Idempotency-Keys to make their
//! retries place one order each. Payment, killed after its provider charged
//! and before its own commit, charges once.
//!
//! To stop a service inside a transaction, a test holds a lock on its outbox
//! and watches `pg_stat_activity` for the service's session waiting on it.

use std::path::Path;
use std::time::Duration;

use serde_json::json;
use shopmesh_integration_tests::shop::{SAGA, Shop, address, place_single_item_order};
use shopmesh_integration_tests::{SAGA_CONSUMERS, TestEnv, eventually};

const SHOPMESH: &str = env!("CARGO_BIN_EXE_shopmesh");

/// A shop with `def` as its own process, a book in stock (50), and Ivy,
/// whose first order has confirmed and been committed: the saga runs end
/// to end.
async fn shop_with_process(
    def: &'static shopmesh_platform::runtime::ServiceDef,
    configure: impl FnOnce(&mut TestEnv),
) -> (Shop, String, String) {
    let shop = Shop::start_with_processes(configure, Path::new(SHOPMESH), &[def]).await;
    let book = shop.product("BOOK-1", 1000, 50).await;
    let ivy = shop.customer("ivy@shop.test").await;
    let first = place_single_item_order(&shop, &ivy, &book).await;
    assert_eq!(shop.final_order(&ivy, &first).await["status"], "ORDER_STATUS_CONFIRMED");
    eventually("first order committed", SAGA, || async { (shop.stock(&book).await == (49, 49, 0)).then_some(()) })
        .await;
    (shop, book, ivy)
}

/// Inventory's consumer group and the topics it reads, as the saga lists them.
fn inventory_consumer() -> Vec<(&'static str, &'static [&'static str])> {
    SAGA_CONSUMERS.iter().copied().filter(|(group, _)| *group == "inventory").collect()
}

/// Takes `SHARE` on the service's outbox: its writers wait at their outbox
/// insert, inside their transaction, until the returned one ends.
async fn hold_outbox(db: &sqlx::PgPool) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut hold = db.begin().await.unwrap();
    sqlx::query("LOCK TABLE outbox IN SHARE MODE").execute(&mut *hold).await.unwrap();
    hold
}

/// The session of `service` that waits on a lock in a transaction that has
/// already written (it has a transaction id).
async fn waiting_after_writes(db: &sqlx::PgPool, service: &str) -> i32 {
    eventually(&format!("a {service} transaction waiting after its writes"), SAGA, || async {
        sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND application_name = $1 \
             AND wait_event_type = 'Lock' AND backend_xid IS NOT NULL",
        )
        .bind(service)
        .fetch_optional(db)
        .await
        .unwrap()
    })
    .await
}

/// Waits until the session `pid` is gone: Postgres ends the session of a
/// killed client, rolling back what it had not committed.
async fn session_ended(db: &sqlx::PgPool, pid: i32) {
    eventually(&format!("session {pid} ended"), SAGA, || async {
        let alive: bool = sqlx::query_scalar("SELECT EXISTS (SELECT FROM pg_stat_activity WHERE pid = $1)")
            .bind(pid)
            .fetch_one(db)
            .await
            .unwrap();
        (!alive).then_some(())
    })
    .await
}

/// What inventory has applied, as its database holds it: inbox rows,
/// reservations, units on hand, units reserved.
async fn applied(db: &sqlx::PgPool) -> (i64, i64, i64, i64) {
    sqlx::query_as(
        "SELECT (SELECT count(*) FROM inbox), (SELECT count(*) FROM reservations), \
         (SELECT sum(on_hand)::BIGINT FROM stock), (SELECT sum(reserved)::BIGINT FROM stock)",
    )
    .fetch_one(db)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn inventory_killed_mid_batch_and_restarted_finishes_every_saga_once() {
    // Two consumer-group rejoins fit well inside the pending timeout.
    let (mut shop, book, ivy) =
        shop_with_process(&shopmesh_inventory::SERVICE, |env| env.set("PENDING_TIMEOUT_MS", "120000")).await;
    shop.env.wait_consumers_caught_up(&inventory_consumer(), SAGA).await;

    // Killed while idle: it never leaves its consumer group. Customers keep
    // checking out meanwhile.
    let inventory = shop.process(&shopmesh_inventory::SERVICE);
    inventory.kill().await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(place_single_item_order(&shop, &ivy, &book).await);
    }

    // While the test holds inventory's outbox, the restarted consumer's first
    // batch (the waiting OrderCreated events) stops at its outbox insert:
    // inbox rows and reservations written, nothing committed.
    let db = sqlx::PgPool::connect(&shop.env.database_url("inventory").await).await.unwrap();
    let before = applied(&db).await;
    let hold = hold_outbox(&db).await;
    let inventory = shop.process(&shopmesh_inventory::SERVICE);
    inventory.restart().await;
    let mid_batch = waiting_after_writes(&db, "inventory").await;
    inventory.kill().await;
    hold.rollback().await.unwrap();
    session_ended(&db, mid_batch).await;
    assert_eq!(applied(&db).await, before, "the killed batch left nothing behind");

    // A third process picks up where the first left off: each order reserved,
    // charged and committed once.
    inventory.restart().await;
    for id in &ids {
        assert_eq!(shop.final_order(&ivy, id).await["status"], "ORDER_STATUS_CONFIRMED", "order {id}");
        assert_eq!(shop.payments(&ivy, id).await.len(), 1, "charged exactly once: {id}");
    }
    eventually("all committed once", SAGA, || async { (shop.stock(&book).await == (44, 44, 0)).then_some(()) }).await;
    shop.env.wait_consumers_caught_up(&inventory_consumer(), SAGA).await;
    let (inbox, reservations, on_hand, reserved) = applied(&db).await;
    assert_eq!((reservations, on_hand, reserved), (6, 44, 0));
    // Per order: OrderCreated and OrderConfirmed.
    assert_eq!(inbox, 12, "each event applied once");
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_service_process_drains_on_sigterm_and_exits_cleanly() {
    // Inventory commits its consumer offsets only on its way out, so the
    // check below sees what shutdown committed.
    let (mut shop, book, ivy) = shop_with_process(&shopmesh_inventory::SERVICE, |env| {
        env.set("inventory.KAFKA_COMMIT_INTERVAL_MS", "3600000");
    })
    .await;

    // SIGTERM (what Kubernetes sends): it drains within its grace (5 s in
    // tests) and exits 0, its consumer's offsets committed on the way out.
    let inventory = shop.process(&shopmesh_inventory::SERVICE);
    let status = inventory.terminate(Duration::from_secs(15)).await;
    assert!(status.success(), "inventory exited with {status}");
    shop.env.wait_consumers_caught_up(&inventory_consumer(), Duration::from_secs(5)).await;

    // Started again, it takes the next order from where it stopped.
    let inventory = shop.process(&shopmesh_inventory::SERVICE);
    inventory.restart().await;
    let second = place_single_item_order(&shop, &ivy, &book).await;
    assert_eq!(shop.final_order(&ivy, &second).await["status"], "ORDER_STATUS_CONFIRMED");
    eventually("second order committed", SAGA, || async { (shop.stock(&book).await == (48, 48, 0)).then_some(()) })
        .await;
}

/// Checkouts cut off by a crash of the order service, retried by their
/// clients with the same Idempotency-Key once it is back, place exactly one
/// order each; one placed before the crash answers with that order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn checkouts_cut_off_by_an_order_crash_and_retried_with_their_keys_place_one_order_each() {
    let mut shop = Shop::start_with_processes(
        |env| {
            env.set("PENDING_TIMEOUT_MS", "120000");
            // Room for every checkout to reach the database at once.
            env.set("order.DB_MAX_CONNECTIONS", "8");
        },
        Path::new(SHOPMESH),
        &[&shopmesh_order::SERVICE],
    )
    .await;
    let mug = shop.product("MUG-1", 1200, 20).await;
    let body = json!({"paymentToken": "tok_visa", "shippingAddress": address()});
    let mut customers = Vec::new();
    for i in 0..4 {
        let token = shop.customer(&format!("c{i}@shop.test")).await;
        shop.add_to_cart(&token, &mug, 1).await;
        customers.push((token, format!("checkout-{i}")));
    }
    let placed_id = |resp: serde_json::Value| resp["order"]["id"].as_str().expect("an order id").to_owned();
    let (http, orders_url) = (shop.http.clone(), shop.at("/v1/orders"));
    let checkout = |(token, key): &(String, String)| {
        http.post(&orders_url).bearer_auth(token).header("Idempotency-Key", key).json(&body).send()
    };
    let first = checkout(&customers[0]).await.unwrap();
    assert_eq!(first.status(), 200);
    let first = placed_id(first.json().await.unwrap());
    assert_eq!(shop.final_order(&customers[0].0, &first).await["status"], "ORDER_STATUS_CONFIRMED");

    // Three more checkouts reach the order database and wait there (the
    // test holds its outbox); then the order service dies.
    let db = sqlx::PgPool::connect(&shop.env.database_url("order").await).await.unwrap();
    let hold = hold_outbox(&db).await;
    let cut_off: Vec<_> = customers[1..].iter().map(|c| tokio::spawn(checkout(c))).collect();
    eventually("three checkouts waiting in the order database", SAGA, || async {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'order' \
             AND wait_event_type = 'Lock'",
        )
        .fetch_one(&db)
        .await
        .unwrap();
        (waiting >= 3).then_some(())
    })
    .await;
    shop.process(&shopmesh_order::SERVICE).kill().await;
    for request in cut_off {
        let resp = request.await.unwrap().unwrap();
        assert_eq!(resp.status(), 503, "a checkout cut off by the crash: {}", resp.text().await.unwrap());
    }
    // Whether the database went on to place them is not the client's to
    // know: that is what its key is for.
    hold.rollback().await.unwrap();
    eventually("the dead service's sessions ended", SAGA, || async {
        let left: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'order'",
        )
        .fetch_one(&db)
        .await
        .unwrap();
        (left == 0).then_some(())
    })
    .await;
    db.close().await;

    shop.process(&shopmesh_order::SERVICE).restart().await;
    let mut ids = vec![first];
    for customer in &customers {
        let retried = checkout(customer).await.unwrap();
        assert_eq!(retried.status(), 200);
        let id = placed_id(retried.json().await.unwrap());
        if customer.1 == "checkout-0" {
            assert_eq!(id, ids[0], "the order placed before the crash");
        } else {
            ids.push(id.clone());
        }
        let again = checkout(customer).await.unwrap();
        assert_eq!(placed_id(again.json().await.unwrap()), id, "a retry answers with the same order");
    }
    for ((token, _), id) in customers.iter().zip(&ids) {
        assert_eq!(shop.final_order(token, id).await["status"], "ORDER_STATUS_CONFIRMED", "order {id}");
        let orders = shop.ok(reqwest::Method::GET, "/v1/orders", token, None).await;
        assert_eq!(orders["orders"].as_array().unwrap().len(), 1, "one order per customer: {orders}");
        assert_eq!(shop.payments(token, id).await.len(), 1, "charged exactly once: {id}");
    }
    eventually("four units sold", SAGA, || async { (shop.stock(&mug).await == (16, 16, 0)).then_some(()) }).await;
}

/// Payment killed after its provider took the money but before its own
/// transaction recorded it: the restarted service finds that charge at the
/// provider and records it; the customer is charged once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn payment_killed_between_the_providers_charge_and_its_commit_charges_once() {
    let (mut shop, book, ivy) =
        shop_with_process(&shopmesh_payment::SERVICE, |env| env.set("PENDING_TIMEOUT_MS", "120000")).await;

    // While the test holds payment's outbox, the next charge is taken by the
    // provider and then waits at PaymentCaptured's outbox insert.
    let db = sqlx::PgPool::connect(&shop.env.database_url("payment").await).await.unwrap();
    let hold = hold_outbox(&db).await;
    let order = place_single_item_order(&shop, &ivy, &book).await;
    let mid_batch = waiting_after_writes(&db, "payment").await;
    let provider_charges = || async {
        sqlx::query_as::<_, (String, String)>(
            "SELECT provider, provider_reference FROM test_provider_charges WHERE idempotency_key = $1",
        )
        .bind(&order)
        .fetch_all(&db)
        .await
        .unwrap()
    };
    let taken = provider_charges().await;
    assert_eq!(taken.len(), 1, "the provider has charged: {taken:?}");

    shop.process(&shopmesh_payment::SERVICE).kill().await;
    hold.rollback().await.unwrap();
    session_ended(&db, mid_batch).await;
    let recorded: i64 = sqlx::query_scalar("SELECT count(*) FROM payments WHERE order_id = $1::uuid")
        .bind(&order)
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(recorded, 0, "the payment's own record died with the process");

    shop.process(&shopmesh_payment::SERVICE).restart().await;
    assert_eq!(shop.final_order(&ivy, &order).await["status"], "ORDER_STATUS_CONFIRMED");
    let payments = shop.payments(&ivy, &order).await;
    assert_eq!(payments.len(), 1, "{payments:?}");
    assert_eq!(payments[0]["status"], "PAYMENT_STATUS_CAPTURED");
    assert_eq!(payments[0]["providerReference"], taken[0].1.as_str(), "the provider's charge, recorded");
    assert_eq!(provider_charges().await, taken, "the provider was not charged again");
    db.close().await;
}
