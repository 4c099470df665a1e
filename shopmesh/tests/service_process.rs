//! The `shopmesh` binary as a crash or a rollout meets it: inventory, run by
//! `shopmesh serve inventory` in its own process, is killed with SIGKILL,
//! once idle and once in the middle of a consumer batch, and every saga it
//! was part of still finishes, each effect applied once; stopped with
//! SIGTERM, it drains and exits cleanly.

use std::path::Path;
use std::time::Duration;

use shopmesh_integration_tests::eventually;
use shopmesh_integration_tests::shop::{SAGA, Shop, place_single_item_order};

const SHOPMESH: &str = env!("CARGO_BIN_EXE_shopmesh");

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
    let mut shop =
        Shop::start_with_inventory_process(|env| env.set("PENDING_TIMEOUT_MS", "120000"), Path::new(SHOPMESH)).await;
    let book = shop.product("BOOK-1", 1000, 50).await;
    let ivy = shop.customer("ivy@shop.test").await;
    let first = place_single_item_order(&shop, &ivy, &book).await;
    assert_eq!(shop.final_order(&ivy, &first).await["status"], "ORDER_STATUS_CONFIRMED");
    eventually("first order committed", SAGA, || async { (shop.stock(&book).await == (49, 49, 0)).then_some(()) })
        .await;
    shop.env.wait_consumers_caught_up(&[("inventory", &["order-events", "payment-events"])], SAGA).await;

    // Killed while idle: it never leaves its consumer group. Customers keep
    // checking out meanwhile.
    let inventory = shop.inventory_process.as_mut().expect("inventory runs as a process");
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
    let mut hold = db.begin().await.unwrap();
    sqlx::query("LOCK TABLE outbox IN SHARE MODE").execute(&mut *hold).await.unwrap();
    let inventory = shop.inventory_process.as_mut().unwrap();
    inventory.restart().await;
    let mid_batch: i32 = eventually("a consumer batch waiting mid-transaction", SAGA, || async {
        // A transaction id means it has written; the lock wait is ours.
        sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() \
             AND wait_event_type = 'Lock' AND backend_xid IS NOT NULL",
        )
        .fetch_optional(&db)
        .await
        .unwrap()
    })
    .await;
    inventory.kill().await;
    hold.rollback().await.unwrap();
    // Postgres rolls the batch back once it finds its client gone.
    eventually("the killed batch's session ended", SAGA, || async {
        let alive: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1)")
            .bind(mid_batch)
            .fetch_one(&db)
            .await
            .unwrap();
        (!alive).then_some(())
    })
    .await;
    assert_eq!(applied(&db).await, before, "the killed batch left nothing behind");

    // A third process picks up where the first left off: each order reserved,
    // charged and committed once.
    inventory.restart().await;
    for id in &ids {
        assert_eq!(shop.final_order(&ivy, id).await["status"], "ORDER_STATUS_CONFIRMED", "order {id}");
        assert_eq!(shop.payments(&ivy, id).await.len(), 1, "charged exactly once: {id}");
    }
    eventually("all committed once", SAGA, || async { (shop.stock(&book).await == (44, 44, 0)).then_some(()) }).await;
    shop.env.wait_consumers_caught_up(&[("inventory", &["order-events", "payment-events"])], SAGA).await;
    let (inbox, reservations, on_hand, reserved) = applied(&db).await;
    assert_eq!((reservations, on_hand, reserved), (6, 44, 0));
    // Per order: OrderCreated and OrderConfirmed.
    assert_eq!(inbox, 12, "each event applied once");
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_service_process_drains_on_sigterm_and_exits_cleanly() {
    let mut shop = Shop::start_with_inventory_process(|_| {}, Path::new(SHOPMESH)).await;
    let book = shop.product("BOOK-1", 1000, 50).await;
    let ivy = shop.customer("ivy@shop.test").await;
    let first = place_single_item_order(&shop, &ivy, &book).await;
    assert_eq!(shop.final_order(&ivy, &first).await["status"], "ORDER_STATUS_CONFIRMED");
    eventually("first order committed", SAGA, || async { (shop.stock(&book).await == (49, 49, 0)).then_some(()) })
        .await;

    // SIGTERM (what Kubernetes sends): it drains within its grace (5 s in
    // tests) and exits 0, its consumer's offsets committed on the way out.
    let inventory = shop.inventory_process.as_mut().expect("inventory runs as a process");
    let status = inventory.terminate(Duration::from_secs(15)).await;
    assert!(status.success(), "inventory exited with {status}");
    let saga_inventory: &[(&str, &[&str])] = &[("inventory", &["order-events", "payment-events"])];
    shop.env.wait_consumers_caught_up(saga_inventory, Duration::from_secs(5)).await;

    // Started again, it takes the next order from where it stopped.
    let inventory = shop.inventory_process.as_mut().unwrap();
    inventory.restart().await;
    let second = place_single_item_order(&shop, &ivy, &book).await;
    assert_eq!(shop.final_order(&ivy, &second).await["status"], "ORDER_STATUS_CONFIRMED");
    eventually("second order committed", SAGA, || async { (shop.stock(&book).await == (48, 48, 0)).then_some(()) })
        .await;
}
