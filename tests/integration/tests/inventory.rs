//! Inventory against the real Postgres (and Kafka for the saga): reservations
//! never oversell under concurrency, are all-or-nothing and idempotent per
//! order id, release/commit move stock exactly once, and every change leaves
//! its events in the outbox.
//!
//! Admin RPCs need an admin token and the harness has no token helper yet,
//! so reservations are exercised through the store (the level the saga
//! consumer uses too); gRPC is checked for the public and refusal paths.

use std::time::Duration;

use prost::Message;
use shopmesh_integration_tests::{TestEnv, eventually, publish_event};
use shopmesh_inventory::domain::Reservation;
use shopmesh_inventory::domain::{
    Actor, CommitStep, Count, OrderId, ProductId, ReleaseMode, ReleaseStep, ReservationLines, ReservationStatus,
    StockLevel, StockTarget,
};
use shopmesh_inventory::events::OrderContext;
use shopmesh_inventory::pb::inventory_service_client::InventoryServiceClient;
use shopmesh_inventory::pb::{GetStockRequest, ReserveStockRequest, SetStockRequest};
use shopmesh_inventory::store::{ReserveRequest, SetStockError, Store};
use shopmesh_platform::events::DomainEvent;
use shopmesh_platform::outbox::Outbox;
use shopmesh_platform::pb::common::v1::Money;
use shopmesh_platform::pb::events::v1 as ev;
use sqlx::PgPool;
use uuid::Uuid;

async fn store(env: &TestEnv) -> (Store, PgPool) {
    let url = env.database_url("inventory").await;
    let pool = shopmesh_platform::db::connect(&url, 8).await.unwrap();
    shopmesh_platform::db::migrate(&pool, Some(&shopmesh_inventory::MIGRATOR)).await.unwrap();
    (Store::new(pool.clone(), Outbox::new("inventory"), 5), pool)
}

fn product() -> ProductId {
    ProductId::from_uuid(Uuid::new_v4())
}

fn order() -> OrderId {
    OrderId::from_uuid(Uuid::now_v7())
}

fn lines(l: &[(ProductId, i32)]) -> ReservationLines {
    let raw: Vec<(String, i32)> = l.iter().map(|(p, q)| (p.to_string(), *q)).collect();
    ReservationLines::parse(&raw).unwrap()
}

async fn set(store: &Store, p: ProductId, on_hand: i64) {
    let target = StockTarget { on_hand: Count::parse("on_hand", on_hand).unwrap(), low_stock_threshold: None };
    store.set_stock(p, target).await.unwrap();
}

async fn level(store: &Store, p: ProductId) -> StockLevel {
    store.get_stock(p).await.unwrap().expect("stocked").level
}

/// Reserves as the saga does on OrderCreated: the path that publishes the
/// outcome (StockReserved / StockReservationFailed) for payment and order.
async fn checkout(store: &Store, o: OrderId, l: &ReservationLines) -> Result<Reservation, sqlx::Error> {
    let priced = l
        .lines()
        .iter()
        .map(|line| ev::OrderLine {
            product_id: line.product_id.to_string(),
            quantity: line.quantity.get(),
            unit_price: Some(Money { currency_code: "USD".into(), amount_minor: 100 }),
        })
        .collect();
    let context = OrderContext {
        user_id: "user-1".into(),
        payment_token: "tok_visa".into(),
        lines: priced,
        ..Default::default()
    };
    let mut tx = store.pool().begin().await?;
    let reservation = store.reserve_in(&mut tx, o, l, Some(&context)).await?;
    tx.commit().await?;
    Ok(reservation)
}

/// Payloads of type `E` in the outbox, oldest first.
async fn outboxed<E: DomainEvent>(pool: &PgPool) -> Vec<E> {
    let rows: Vec<Vec<u8>> = sqlx::query_scalar("SELECT envelope FROM outbox WHERE event_type = $1 ORDER BY seq")
        .bind(E::TYPE)
        .fetch_all(pool)
        .await
        .unwrap();
    rows.iter()
        .map(|b| E::decode(ev::EventEnvelope::decode(b.as_slice()).unwrap().payload.as_slice()).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_reservations_for_the_last_ten_units_reserve_exactly_ten() {
    let env = TestEnv::new();
    let (store, pool) = store(&env).await;
    let p = product();
    set(&store, p, 10).await;

    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { checkout(&store, order(), &lines(&[(p, 1)])).await.unwrap().status })
        })
        .collect();
    let mut reserved = 0;
    for t in tasks {
        if t.await.unwrap() == ReservationStatus::Reserved {
            reserved += 1;
        }
    }
    assert_eq!(reserved, 10);
    assert_eq!(level(&store, p).await, StockLevel { on_hand: 10, reserved: 10, low_stock_threshold: 5 });
    let statuses: Vec<(String, i64)> =
        sqlx::query_as("SELECT status, count(*) FROM reservations GROUP BY status ORDER BY status")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(statuses, vec![("REJECTED".to_owned(), 40), ("RESERVED".to_owned(), 10)]);
    assert_eq!(outboxed::<ev::StockReserved>(&pool).await.len(), 10);
    let failed = outboxed::<ev::StockReservationFailed>(&pool).await;
    assert_eq!(failed.len(), 40);
    assert!(failed.iter().all(|f| f.short_product_ids == vec![p.to_string()]));
    // 10 → 0 crosses the threshold of 5 once, on the way from 5 to 4.
    let low = outboxed::<ev::LowStock>(&pool).await;
    assert_eq!(low, vec![ev::LowStock { product_id: p.to_string(), available: 4, threshold: 5 }]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_reservation_outside_checkout_starts_no_payment() {
    let env = TestEnv::new();
    let (store, pool) = store(&env).await;
    let (p, scarce) = (product(), product());
    set(&store, p, 10).await;
    let reserved = store.reserve(order(), &lines(&[(p, 2)])).await.unwrap();
    assert_eq!(reserved.status, ReservationStatus::Reserved);
    assert_eq!(level(&store, p).await.reserved, 2, "stock is still held");
    let rejected = store.reserve(order(), &lines(&[(scarce, 1)])).await.unwrap();
    assert_eq!(rejected.status, ReservationStatus::Rejected);
    // No StockReserved without a payment token, no failure for a saga that doesn't exist.
    assert!(outboxed::<ev::StockReserved>(&pool).await.is_empty());
    assert!(outboxed::<ev::StockReservationFailed>(&pool).await.is_empty());
}

/// An admin settles their own reservations, never a checkout's: neither
/// one already made (released under an order being paid for, its units
/// would sell twice) nor one still on its way (a tombstone would leave the
/// order's checkout nothing to reserve).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_settles_only_reservations_made_outside_checkout() {
    let env = TestEnv::new();
    let (store, _pool) = store(&env).await;
    let p = product();
    set(&store, p, 10).await;
    let paid_for = order();
    checkout(&store, paid_for, &lines(&[(p, 2)])).await.unwrap();
    let release = store.release(paid_for, ReleaseMode::KeepCommitted, Actor::Admin).await.unwrap();
    assert_eq!(release.step, ReleaseStep::RefuseCheckout);
    assert_eq!(store.commit(paid_for, Actor::Admin).await.unwrap().step, CommitStep::RefuseCheckout);
    assert_eq!(level(&store, p).await, StockLevel { on_hand: 10, reserved: 2, low_stock_threshold: 5 });

    let on_its_way = order();
    let release = store.release(on_its_way, ReleaseMode::KeepCommitted, Actor::Admin).await.unwrap();
    assert_eq!((release.step, release.reservation), (ReleaseStep::NotFound, None));
    let reserved = checkout(&store, on_its_way, &lines(&[(p, 1)])).await.unwrap();
    assert_eq!(reserved.status, ReservationStatus::Reserved, "no tombstone was left in its way");

    let own = order();
    store.reserve(own, &lines(&[(p, 3)])).await.unwrap();
    assert_eq!(store.commit(own, Actor::Admin).await.unwrap().step, CommitStep::Commit);
    assert_eq!(level(&store, p).await, StockLevel { on_hand: 7, reserved: 3, low_stock_threshold: 5 });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crossing_multi_line_reservations_do_not_deadlock() {
    let env = TestEnv::new();
    let (store, _pool) = store(&env).await;
    let (a, b) = (product(), product());
    set(&store, a, 100).await;
    set(&store, b, 100).await;
    // Half list A first, half B first: merged lines lock in product order.
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let store = store.clone();
            let l = if i % 2 == 0 { lines(&[(a, 1), (b, 2)]) } else { lines(&[(b, 2), (a, 1)]) };
            tokio::spawn(async move { checkout(&store, order(), &l).await })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().expect("no deadlock or other error").status, ReservationStatus::Reserved);
    }
    assert_eq!(level(&store, a).await.reserved, 40);
    assert_eq!(level(&store, b).await.reserved, 80);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserving_the_same_order_twice_changes_stock_once() {
    let env = TestEnv::new();
    let (store, pool) = store(&env).await;
    let p = product();
    set(&store, p, 20).await;
    let o = order();

    let first = checkout(&store, o, &lines(&[(p, 3), (p, 2)])).await.unwrap();
    assert_eq!(first.status, ReservationStatus::Reserved);
    assert_eq!(first.lines.len(), 1, "duplicate product lines merged");
    assert_eq!(first.lines[0].quantity.get(), 5);
    // A retry — even with different lines — gets the original back.
    let again = checkout(&store, o, &lines(&[(p, 7)])).await.unwrap();
    assert_eq!(again, first);
    assert_eq!(level(&store, p).await.reserved, 5);
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM reservations").fetch_one(&pool).await.unwrap();
    assert_eq!(count, 1);
    let events = outboxed::<ev::StockReserved>(&pool).await;
    assert_eq!(events.len(), 1, "the retry publishes nothing new");
    assert_eq!(events[0].order_id, o.to_string());
    assert_eq!(events[0].lines.len(), 1);
    assert_eq!(events[0].lines[0].quantity, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reservation_with_one_short_line_reserves_nothing() {
    let env = TestEnv::new();
    let (store, pool) = store(&env).await;
    let (plenty, scarce, unknown) = (product(), product(), product());
    set(&store, plenty, 50).await;
    set(&store, scarce, 1).await;
    let o = order();

    let r = checkout(&store, o, &lines(&[(plenty, 10), (scarce, 2), (unknown, 1)])).await.unwrap();
    assert_eq!(r.status, ReservationStatus::Rejected);
    let mut expected = vec![scarce, unknown];
    expected.sort();
    assert_eq!(r.short_product_ids, expected);
    assert_eq!(level(&store, plenty).await.reserved, 0);
    assert_eq!(level(&store, scarce).await.reserved, 0);
    assert_eq!(store.get_stock(unknown).await.unwrap(), None, "reserving never creates stock");
    let failed = outboxed::<ev::StockReservationFailed>(&pool).await;
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].short_product_ids, expected.iter().map(ToString::to_string).collect::<Vec<_>>());
    assert_eq!(failed[0].reason, "insufficient stock");
    assert!(outboxed::<ev::StockReserved>(&pool).await.is_empty());
    // Rejected is final for the order: nothing to release, nothing to commit.
    assert_eq!(
        store.release(o, ReleaseMode::KeepCommitted, Actor::Checkout).await.unwrap().step,
        ReleaseStep::AlreadySettled
    );
    assert_eq!(store.commit(o, Actor::Checkout).await.unwrap().step, CommitStep::Refuse(ReservationStatus::Rejected));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_returns_stock_once_and_a_late_reserve_after_release_is_refused() {
    let env = TestEnv::new();
    let (store, pool) = store(&env).await;
    let p = product();
    set(&store, p, 10).await;
    let o = order();
    checkout(&store, o, &lines(&[(p, 4)])).await.unwrap();
    assert_eq!(level(&store, p).await.available(), 6);

    let released = store.release(o, ReleaseMode::KeepCommitted, Actor::Checkout).await.unwrap();
    assert_eq!(released.step, ReleaseStep::ReturnReserved);
    assert_eq!(released.reservation.unwrap().status, ReservationStatus::Released);
    assert_eq!(level(&store, p).await, StockLevel { on_hand: 10, reserved: 0, low_stock_threshold: 5 });
    let again = store.release(o, ReleaseMode::KeepCommitted, Actor::Checkout).await.unwrap();
    assert_eq!(again.step, ReleaseStep::AlreadySettled);
    assert_eq!(level(&store, p).await.reserved, 0, "released once");
    assert_eq!(outboxed::<ev::StockReleased>(&pool).await, vec![ev::StockReleased { order_id: o.to_string() }]);

    // Released before it was ever reserved: the tombstone makes the late reserve a no-op.
    let cancelled_early = order();
    let tomb = store.release(cancelled_early, ReleaseMode::RestockCommitted, Actor::Checkout).await.unwrap();
    assert_eq!(tomb.step, ReleaseStep::Tombstone);
    assert_eq!(tomb.reservation.unwrap().status, ReservationStatus::Released);
    let late = checkout(&store, cancelled_early, &lines(&[(p, 1)])).await.unwrap();
    assert_eq!(late.status, ReservationStatus::Released);
    assert!(late.lines.is_empty());
    assert_eq!(level(&store, p).await.reserved, 0);
    assert_eq!(outboxed::<ev::StockReleased>(&pool).await.len(), 1, "tombstones publish nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_ships_stock_and_cancelling_a_committed_order_restocks() {
    let env = TestEnv::new();
    let (store, pool) = store(&env).await;
    let p = product();
    set(&store, p, 10).await;
    let o = order();
    checkout(&store, o, &lines(&[(p, 3)])).await.unwrap();

    let committed = store.commit(o, Actor::Checkout).await.unwrap();
    assert_eq!(committed.step, CommitStep::Commit);
    assert_eq!(committed.reservation.unwrap().status, ReservationStatus::Committed);
    assert_eq!(level(&store, p).await, StockLevel { on_hand: 7, reserved: 0, low_stock_threshold: 5 });
    assert_eq!(store.commit(o, Actor::Checkout).await.unwrap().step, CommitStep::AlreadyCommitted);
    assert_eq!(level(&store, p).await.on_hand, 7, "committed once");
    assert_eq!(outboxed::<ev::StockCommitted>(&pool).await, vec![ev::StockCommitted { order_id: o.to_string() }]);

    // Shipped stock isn't released by a plain release...
    let refused = store.release(o, ReleaseMode::KeepCommitted, Actor::Checkout).await.unwrap();
    assert_eq!(refused.step, ReleaseStep::RefuseCommitted);
    assert_eq!(refused.reservation.unwrap().status, ReservationStatus::Committed);
    // ...but a cancelled confirmed order puts it back on hand.
    let restocked = store.release(o, ReleaseMode::RestockCommitted, Actor::Checkout).await.unwrap();
    assert_eq!(restocked.step, ReleaseStep::Restock);
    assert_eq!(level(&store, p).await, StockLevel { on_hand: 10, reserved: 0, low_stock_threshold: 5 });
    assert_eq!(outboxed::<ev::StockReleased>(&pool).await.len(), 1);
    assert_eq!(store.commit(o, Actor::Checkout).await.unwrap().step, CommitStep::Refuse(ReservationStatus::Released));
    assert_eq!(store.commit(order(), Actor::Checkout).await.unwrap().step, CommitStep::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_stock_refuses_below_reserved_and_alerts_low_stock_once_per_crossing() {
    let env = TestEnv::new();
    let (store, pool) = store(&env).await;
    let p = product();
    set(&store, p, 10).await;
    checkout(&store, order(), &lines(&[(p, 4)])).await.unwrap();

    let target = StockTarget { on_hand: Count::parse("on_hand", 3).unwrap(), low_stock_threshold: None };
    match store.set_stock(p, target).await {
        Err(SetStockError::Refused(r)) => assert_eq!(r.field, "on_hand"),
        other => panic!("expected refusal, got {other:?}"),
    }
    assert_eq!(level(&store, p).await.on_hand, 10, "refusal changed nothing");
    assert!(outboxed::<ev::LowStock>(&pool).await.is_empty());

    set(&store, p, 8).await; // available 4 < 5: crossing
    set(&store, p, 7).await; // still low: no second alert
    set(&store, p, 30).await; // restocked
    let target = StockTarget {
        on_hand: Count::parse("on_hand", 30).unwrap(),
        low_stock_threshold: Some(Count::parse("low_stock_threshold", 40).unwrap()),
    };
    store.set_stock(p, target).await.unwrap(); // threshold raised above available: crossing
    let low = outboxed::<ev::LowStock>(&pool).await;
    assert_eq!(
        low,
        vec![
            ev::LowStock { product_id: p.to_string(), available: 4, threshold: 5 },
            ev::LowStock { product_id: p.to_string(), available: 26, threshold: 40 },
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_get_stock_is_public_and_admin_rpcs_need_a_token() {
    let env = TestEnv::new();
    let svc = env.launch(&shopmesh_inventory::SERVICE).await;
    let (store, _pool) = store(&env).await;
    let p = product();
    set(&store, p, 12).await;
    let channel = shopmesh_platform::grpc::channel(&format!("http://{}", svc.grpc_addr)).unwrap();
    let mut client = InventoryServiceClient::new(channel);

    let stock = client.get_stock(GetStockRequest { product_id: p.to_string() }).await.unwrap().into_inner();
    let stock = stock.stock.unwrap();
    assert_eq!((stock.available, stock.on_hand, stock.reserved, stock.low_stock_threshold), (12, 12, 0, 5));

    let unknown = client.get_stock(GetStockRequest { product_id: Uuid::new_v4().to_string() }).await.unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);
    let invalid = client.get_stock(GetStockRequest { product_id: "sku-1".into() }).await.unwrap_err();
    assert_eq!(invalid.code(), tonic::Code::InvalidArgument);
    assert!(invalid.message().starts_with("product_id"), "{}", invalid.message());

    let set = client.set_stock(SetStockRequest { product_id: p.to_string(), on_hand: 1, low_stock_threshold: None });
    assert_eq!(set.await.unwrap_err().code(), tonic::Code::Unauthenticated);
    let reserve = client.reserve_stock(ReserveStockRequest { order_id: order().to_string(), lines: vec![] });
    assert_eq!(reserve.await.unwrap_err().code(), tonic::Code::Unauthenticated);
    assert_eq!(level(&store, p).await.on_hand, 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_of_reservations_decides_each_order_in_turn() {
    let env = TestEnv::new();
    let (store, pool) = store(&env).await;
    let (p, q) = (product(), product());
    set(&store, p, 5).await;
    set(&store, q, 1).await;
    let earlier = order();
    store.reserve(earlier, &lines(&[(q, 1)])).await.unwrap();
    let (a, b, c) = (order(), order(), order());
    let (two_p, two_p_one_q) = (lines(&[(p, 2)]), lines(&[(p, 2), (q, 1)]));
    let context = OrderContext { user_id: "user-1".into(), payment_token: "tok_visa".into(), ..Default::default() };
    let span = tracing::Span::none();
    let request = |order_id, lines| ReserveRequest { order_id, lines, order: Some(&context), span: &span };

    let mut tx = pool.begin().await.unwrap();
    let done = store
        .reserve_all_in(
            &mut tx,
            &[
                request(a, &two_p),
                request(earlier, &two_p),
                request(b, &two_p),
                request(a, &two_p_one_q),
                request(c, &two_p_one_q),
            ],
        )
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let statuses: Vec<ReservationStatus> = done.iter().map(|r| r.status).collect();
    use ReservationStatus::*;
    // a and b fit; c finds one unit of p left and q held by `earlier`. An
    // order reserved before (`earlier`) or earlier in the set (a) is answered
    // with what it already has.
    assert_eq!(statuses, [Reserved, Reserved, Reserved, Reserved, Rejected]);
    assert_eq!(done[3], done[0], "a's second request gets a's reservation");
    assert_eq!(done[1].lines, lines(&[(q, 1)]).lines(), "earlier keeps its own lines");
    let mut short = done[4].short_product_ids.clone();
    short.sort();
    assert_eq!(short, {
        let mut both = vec![p, q];
        both.sort();
        both
    });
    assert_eq!(level(&store, p).await, StockLevel { on_hand: 5, reserved: 4, low_stock_threshold: 5 });
    assert_eq!(level(&store, q).await.reserved, 1);
    let reserved: Vec<String> = outboxed::<ev::StockReserved>(&pool).await.into_iter().map(|e| e.order_id).collect();
    assert_eq!(reserved, [a.to_string(), b.to_string()], "one outcome per new reservation, in order");
    let failed = outboxed::<ev::StockReservationFailed>(&pool).await;
    assert_eq!(failed.iter().map(|e| e.order_id.clone()).collect::<Vec<_>>(), [c.to_string()]);
    for o in [a, b, c] {
        assert_eq!(store.get_reservation(o).await.unwrap().as_ref(), done.iter().find(|r| r.order_id == o));
    }

    // Committing as a set: each order gets its own step; only the held ones ship.
    let unknown = order();
    let mut tx = pool.begin().await.unwrap();
    let outcomes = store
        .commit_all_in(&mut tx, &[(a, &span), (c, &span), (b, &span), (unknown, &span), (a, &span)], Actor::Checkout)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let steps: Vec<CommitStep> = outcomes.iter().map(|o| o.step).collect();
    assert_eq!(
        steps,
        [
            CommitStep::Commit,
            CommitStep::Refuse(Rejected),
            CommitStep::Commit,
            CommitStep::NotFound,
            CommitStep::AlreadyCommitted
        ]
    );
    assert_eq!(level(&store, p).await, StockLevel { on_hand: 1, reserved: 0, low_stock_threshold: 5 });
    let committed: Vec<String> = outboxed::<ev::StockCommitted>(&pool).await.into_iter().map(|e| e.order_id).collect();
    assert_eq!(committed, [a.to_string(), b.to_string()]);
}

async fn wait_status(store: &Store, o: OrderId, status: ReservationStatus) {
    eventually(&format!("order {o} {}", status.as_str()), Duration::from_secs(30), || async move {
        let r = store.get_reservation(o).await.ok()??;
        (r.status == status).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saga_events_reserve_commit_release_and_restock() {
    let env = TestEnv::new();
    let _svc = env.launch(&shopmesh_inventory::SERVICE).await;
    let (store, pool) = store(&env).await;
    let (p, q) = (product(), product());
    set(&store, p, 10).await;
    set(&store, q, 1).await;
    let price = Money { currency_code: "USD".into(), amount_minor: 1999 };
    let line = |product: ProductId, quantity| ev::OrderLine {
        product_id: product.to_string(),
        quantity,
        unit_price: Some(price.clone()),
    };

    // OrderCreated → reserved, with payment's fields passed through.
    let o = order();
    let created = ev::OrderCreated {
        order_id: o.to_string(),
        user_id: "user-1".into(),
        lines: vec![line(p, 2)],
        total: Some(Money { currency_code: "USD".into(), amount_minor: 3998 }),
        payment_token: "tok_visa".into(),
    };
    publish_event(&env.kafka(), "order", &created).await;
    wait_status(&store, o, ReservationStatus::Reserved).await;
    let reserved = outboxed::<ev::StockReserved>(&pool).await;
    assert_eq!(reserved.len(), 1);
    assert_eq!(
        reserved[0],
        ev::StockReserved {
            order_id: o.to_string(),
            lines: created.lines.clone(),
            user_id: "user-1".into(),
            total: created.total.clone(),
            payment_token: "tok_visa".into(),
        }
    );

    // OrderConfirmed → committed; a customer cancellation afterwards restocks.
    publish_event(&env.kafka(), "order", &ev::OrderConfirmed { order_id: o.to_string(), ..Default::default() }).await;
    wait_status(&store, o, ReservationStatus::Committed).await;
    assert_eq!(level(&store, p).await, StockLevel { on_hand: 8, reserved: 0, low_stock_threshold: 5 });
    let cancel = ev::OrderCancelled {
        order_id: o.to_string(),
        reason: ev::CancelReason::CustomerRequest.into(),
        was_paid: true,
        ..Default::default()
    };
    publish_event(&env.kafka(), "order", &cancel).await;
    wait_status(&store, o, ReservationStatus::Released).await;
    assert_eq!(level(&store, p).await, StockLevel { on_hand: 10, reserved: 0, low_stock_threshold: 5 });

    // Short stock → StockReservationFailed naming the product.
    let short = order();
    let created_short =
        ev::OrderCreated { order_id: short.to_string(), lines: vec![line(p, 1), line(q, 2)], ..Default::default() };
    publish_event(&env.kafka(), "order", &created_short).await;
    wait_status(&store, short, ReservationStatus::Rejected).await;
    let failed = outboxed::<ev::StockReservationFailed>(&pool).await;
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].short_product_ids, vec![q.to_string()]);

    // PaymentDeclined → released.
    let declined = order();
    publish_event(
        &env.kafka(),
        "order",
        &ev::OrderCreated { order_id: declined.to_string(), lines: vec![line(p, 3)], ..Default::default() },
    )
    .await;
    wait_status(&store, declined, ReservationStatus::Reserved).await;
    assert_eq!(level(&store, p).await.reserved, 3);
    publish_event(
        &env.kafka(),
        "payment",
        &ev::PaymentDeclined { order_id: declined.to_string(), ..Default::default() },
    )
    .await;
    wait_status(&store, declined, ReservationStatus::Released).await;
    assert_eq!(level(&store, p).await.reserved, 0);

    // Cancelled before created (same partition, so in this order): the
    // tombstone makes the OrderCreated reserve nothing.
    let early = order();
    publish_event(&env.kafka(), "order", &ev::OrderCancelled { order_id: early.to_string(), ..Default::default() })
        .await;
    let created_early = ev::OrderCreated { order_id: early.to_string(), lines: vec![line(p, 1)], ..Default::default() };
    publish_event(&env.kafka(), "order", &created_early).await;
    let inbox_has_all = || {
        let pool = pool.clone();
        async move {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM inbox WHERE consumer = 'inventory' AND event_type = 'shopmesh.events.v1.OrderCreated'",
            )
            .fetch_one(&pool)
            .await
            .ok()?;
            (n == 4).then_some(())
        }
    };
    eventually("late OrderCreated handled", Duration::from_secs(30), inbox_has_all).await;
    let r = store.get_reservation(early).await.unwrap().unwrap();
    assert_eq!(r.status, ReservationStatus::Released);
    assert!(r.lines.is_empty());
    assert_eq!(level(&store, p).await.reserved, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_of_order_events_settles_as_one_by_one_would() {
    let env = TestEnv::new();
    let stop = env.shutdown.child();
    let running = env.launch_stoppable(&shopmesh_inventory::SERVICE, stop.clone()).await;
    let (store, pool) = store(&env).await;
    let (p, plenty, warm_up) = (product(), product(), product());
    set(&store, p, 2).await;
    set(&store, plenty, 10).await;
    set(&store, warm_up, 1).await;
    let created = |o: OrderId, product: ProductId| {
        let line = ev::OrderLine { product_id: product.to_string(), quantity: 1, ..Default::default() };
        ev::OrderCreated { order_id: o.to_string(), lines: vec![line], ..Default::default() }
    };
    // The first instance has joined its group and is consuming (a stop
    // mid-join can leave Tansu's group waiting on the departed member)…
    let first = order();
    publish_event(&env.kafka(), "order", &created(first, warm_up)).await;
    wait_status(&store, first, ReservationStatus::Reserved).await;
    // …then it is down while two orders arrive and are confirmed, and four
    // more compete for two units, so on restart all come as one backlog.
    stop.trigger();
    running.task.await.unwrap().unwrap();
    let confirmed: Vec<OrderId> = (0..2).map(|_| order()).collect();
    let competing: Vec<OrderId> = (0..4).map(|_| order()).collect();
    for o in &confirmed {
        publish_event(&env.kafka(), "order", &created(*o, plenty)).await;
    }
    for o in &competing {
        publish_event(&env.kafka(), "order", &created(*o, p)).await;
    }
    for o in &confirmed {
        publish_event(&env.kafka(), "order", &ev::OrderConfirmed { order_id: o.to_string(), ..Default::default() })
            .await;
    }
    let _restarted = env.launch(&shopmesh_inventory::SERVICE).await;
    for o in &confirmed {
        wait_status(&store, *o, ReservationStatus::Committed).await;
    }
    let mut statuses = Vec::new();
    for o in &competing {
        let settled = eventually("a reservation", Duration::from_secs(30), || async {
            store.get_reservation(*o).await.unwrap().map(|r| r.status)
        })
        .await;
        statuses.push(settled);
    }
    statuses.sort_by_key(|s| s.as_str());
    // Two units for four orders: which two get them depends on partition order.
    use ReservationStatus::*;
    assert_eq!(statuses, [Rejected, Rejected, Reserved, Reserved]);
    assert_eq!(level(&store, p).await, StockLevel { on_hand: 2, reserved: 2, low_stock_threshold: 5 });
    assert_eq!(level(&store, plenty).await, StockLevel { on_hand: 8, reserved: 0, low_stock_threshold: 5 });
    assert_eq!(outboxed::<ev::StockReserved>(&pool).await.len(), 5, "the warm-up, two confirmed, two competing");
    assert_eq!(outboxed::<ev::StockReservationFailed>(&pool).await.len(), 2);
    assert_eq!(outboxed::<ev::StockCommitted>(&pool).await.len(), 2);
}

/// Two replicas each apply a batch of two steps whose products cross: one
/// releases an order holding `a` then reserves `b`, the other releases an
/// order holding `b` then reserves `a`. Step by step (each step locking its
/// own rows in order) the second steps deadlock; with the batch's locks
/// taken up front the second batch waits for the first and both apply.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_batches_with_crossing_steps_wait_for_each_other_instead_of_deadlocking() {
    use shopmesh_platform::consumer::EventHandler as _;
    use shopmesh_platform::events::ReceivedEvent;

    let env = TestEnv::new();
    let (store, _pool) = store(&env).await;
    let (a, b) = (product(), product());
    set(&store, a, 10).await;
    set(&store, b, 10).await;
    let (holds_a, holds_b) = (order(), order());
    checkout(&store, holds_a, &lines(&[(a, 1)])).await.unwrap();
    checkout(&store, holds_b, &lines(&[(b, 1)])).await.unwrap();

    fn received<E: DomainEvent>(event: &E) -> ReceivedEvent {
        let envelope = shopmesh_platform::events::envelope("test", event);
        ReceivedEvent::decode_envelope(&envelope.encode_to_vec(), E::TOPIC, 0, 0).unwrap()
    }
    let cancel = |o: OrderId| received(&ev::OrderCancelled { order_id: o.to_string(), ..Default::default() });
    let create = |o: OrderId, p: ProductId| {
        let line = ev::OrderLine { product_id: p.to_string(), quantity: 1, ..Default::default() };
        received(&ev::OrderCreated { order_id: o.to_string(), lines: vec![line], ..Default::default() })
    };
    let first = [cancel(holds_a), create(order(), b)];
    let second = [cancel(holds_b), create(order(), a)];

    let handler = std::sync::Arc::new(shopmesh_inventory::events::SagaHandler { store: store.clone() });
    let first_step_done = std::sync::Arc::new(tokio::sync::Notify::new());
    let second_step_done = std::sync::Arc::new(tokio::sync::Notify::new());
    // Applies `batch` as the consumer does, pausing after its first step
    // until the other batch has taken its first step (or 500 ms passed).
    let apply = |batch: [ReceivedEvent; 2],
                 done: std::sync::Arc<tokio::sync::Notify>,
                 other: std::sync::Arc<tokio::sync::Notify>,
                 go_first: bool| {
        let (handler, pool) = (handler.clone(), store.pool().clone());
        tokio::spawn(async move {
            if !go_first {
                other.notified().await;
            }
            let mut tx = pool.begin().await?;
            handler
                .lock_batch(&mut tx, &[&batch[0], &batch[1]])
                .await
                .map_err(|e| sqlx::Error::Protocol(e.to_string()))?;
            handler.handle(&mut tx, &batch[0]).await.map_err(|e| sqlx::Error::Protocol(e.to_string()))?;
            done.notify_one();
            if go_first {
                let _ = tokio::time::timeout(Duration::from_millis(500), other.notified()).await;
            }
            handler.handle(&mut tx, &batch[1]).await.map_err(|e| sqlx::Error::Protocol(e.to_string()))?;
            tx.commit().await
        })
    };
    let one = apply(first, first_step_done.clone(), second_step_done.clone(), true);
    let two = apply(second, second_step_done, first_step_done, false);
    one.await.unwrap().expect("first batch applied");
    two.await.unwrap().expect("second batch applied");

    // Each released one unit and reserved one of the other product.
    assert_eq!(level(&store, a).await.reserved, 1);
    assert_eq!(level(&store, b).await.reserved, 1);
    for o in [holds_a, holds_b] {
        assert_eq!(store.get_reservation(o).await.unwrap().unwrap().status, ReservationStatus::Released);
    }
}
