//! The checkout saga as a customer meets it: REST through the gateway in
//! front of every real service (auth, user, catalog, inventory, cart, order,
//! payment, notification) on the real Postgres, Redis and broker. Order →
//! inventory → payment run as choreographed events with compensation.

use std::time::Duration;

use rdkafka::Message as _;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::FutureRecord;
use serde_json::{Value, json};
use shopmesh_integration_tests::shop::{SAGA, Shop, address, history, place_single_item_order, url};
use shopmesh_integration_tests::{SAGA_CONSUMERS, TestEnv, eventually};
use shopmesh_platform::events::DomainEvent as _;
use shopmesh_platform::pb::events::v1::OrderCreated;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn happy_path_confirms_commits_stock_clears_cart_and_notifies() {
    let shop = Shop::start(|_| {}, true).await;
    let mug = shop.product("MUG-1", 1250, 10).await;
    let tee = shop.product("TEE-1", 1999, 5).await;
    let alice = shop.customer("alice@shop.test").await;
    shop.add_to_cart(&alice, &mug, 2).await;
    shop.add_to_cart(&alice, &tee, 1).await;

    let placed = shop.checkout(&alice, "tok_visa").await;
    assert_eq!(placed["status"], "ORDER_STATUS_PENDING");
    assert_eq!(placed["total"]["amountMinor"], (2 * 1250 + 1999).to_string());
    let id = placed["id"].as_str().unwrap();

    let order = shop.final_order(&alice, id).await;
    assert_eq!(order["status"], "ORDER_STATUS_CONFIRMED", "{order}");
    assert_eq!(history(&order), ["ORDER_STATUS_PENDING", "ORDER_STATUS_CONFIRMED"]);
    // Stock committed: on_hand decremented, nothing left reserved.
    eventually("stock committed", SAGA, || async { (shop.stock(&mug).await == (8, 8, 0)).then_some(()) }).await;
    eventually("stock committed", SAGA, || async { (shop.stock(&tee).await == (4, 4, 0)).then_some(()) }).await;
    eventually("cart cleared", SAGA, || async { (shop.cart_lines(&alice).await == 0).then_some(()) }).await;
    let payments = shop.payments(&alice, id).await;
    assert_eq!(payments.len(), 1);
    assert_eq!(payments[0]["status"], "PAYMENT_STATUS_CAPTURED");
    assert_eq!(payments[0]["amount"]["amountMinor"], (2 * 1250 + 1999).to_string());
    let notes = eventually("confirmation notice", SAGA, || async {
        let n = shop.notifications(&alice).await;
        (!n.is_empty()).then_some(n)
    })
    .await;
    assert_eq!(notes[0]["kind"], "NOTIFICATION_KIND_ORDER_CONFIRMED");
    assert_eq!(notes[0]["orderId"], id);
    // Another customer sees none of it.
    let bob = shop.customer("bob@shop.test").await;
    assert_eq!(shop.send(reqwest::Method::GET, &format!("/v1/orders/{id}"), &bob, None).await.status(), 404);
    assert!(shop.payments(&bob, id).await.is_empty());
    assert!(shop.notifications(&bob).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cart_refilled_while_the_order_ran_keeps_what_went_back_in() {
    let mut shop = Shop::start(|_| {}, true).await;
    let book = shop.product("BOOK-1", 1000, 10).await;
    let mug = shop.product("MUG-1", 500, 10).await;
    let eve = shop.customer("eve@shop.test").await;
    // A first order, so payment has joined its consumer group before it
    // stops (on Tansu, a group whose member stopped mid-join was seen stuck).
    let warm_up = place_single_item_order(&shop, &eve, &mug).await;
    assert_eq!(shop.final_order(&eve, &warm_up).await["status"], "ORDER_STATUS_CONFIRMED");
    eventually("cart emptied by the first order", SAGA, || async { (shop.cart_lines(&eve).await == 0).then_some(()) })
        .await;
    // Payment is down, so the next order waits while its buyer empties the
    // cart and puts a book back in, and a mug, to buy again.
    let payment = Shop::stop(&mut shop.payment).await;
    let waiting = place_single_item_order(&shop, &eve, &book).await;
    shop.ok(reqwest::Method::DELETE, "/v1/cart", &eve, None).await;
    shop.add_to_cart(&eve, &book, 1).await;
    shop.add_to_cart(&eve, &mug, 1).await;
    shop.payment = Some(shop.restart(&shopmesh_payment::SERVICE, payment).await);
    assert_eq!(shop.final_order(&eve, &waiting).await["status"], "ORDER_STATUS_CONFIRMED");
    shop.env.wait_consumers_caught_up(SAGA_CONSUMERS, SAGA).await;
    // Its confirmation took nothing that went in after it.
    assert_eq!(shop.cart_lines(&eve).await, 2);
    let again = shop.checkout(&eve, "tok_visa").await;
    assert_eq!(again["total"]["amountMinor"], "1500");
    assert_eq!(shop.final_order(&eve, again["id"].as_str().unwrap()).await["status"], "ORDER_STATUS_CONFIRMED");
    eventually("cart emptied by the last order", SAGA, || async { (shop.cart_lines(&eve).await == 0).then_some(()) })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn declined_card_cancels_and_restores_stock() {
    let shop = Shop::start(|_| {}, true).await;
    let lamp = shop.product("LAMP-1", 4500, 3).await;
    let carol = shop.customer("carol@shop.test").await;
    shop.add_to_cart(&carol, &lamp, 2).await;
    let id = shop.checkout(&carol, "tok_chargeDeclined").await["id"].as_str().unwrap().to_owned();

    let order = shop.final_order(&carol, &id).await;
    assert_eq!(order["status"], "ORDER_STATUS_CANCELLED");
    assert_eq!(order["cancelReason"], "CANCEL_REASON_PAYMENT_DECLINED");
    eventually("stock released", SAGA, || async { (shop.stock(&lamp).await == (3, 3, 0)).then_some(()) }).await;
    let payments = shop.payments(&carol, &id).await;
    assert_eq!(payments[0]["status"], "PAYMENT_STATUS_DECLINED");
    assert_eq!(shop.cart_lines(&carol).await, 1, "a failed checkout keeps the cart");
    eventually("cancellation notice", SAGA, || async {
        let n = shop.notifications(&carol).await;
        n.iter().any(|n| n["kind"] == "NOTIFICATION_KIND_ORDER_CANCELLED").then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn out_of_stock_cancels_without_charging() {
    let shop = Shop::start(|_| {}, true).await;
    let rare = shop.product("RARE-1", 99_00, 1).await;
    let dan = shop.customer("dan@shop.test").await;
    shop.add_to_cart(&dan, &rare, 2).await;
    let id = shop.checkout(&dan, "tok_visa").await["id"].as_str().unwrap().to_owned();

    let order = shop.final_order(&dan, &id).await;
    assert_eq!(order["status"], "ORDER_STATUS_CANCELLED");
    assert_eq!(order["cancelReason"], "CANCEL_REASON_OUT_OF_STOCK");
    assert_eq!(shop.stock(&rare).await, (1, 1, 0));
    shop.env.wait_consumers_caught_up(SAGA_CONSUMERS, SAGA).await;
    assert!(shop.payments(&dan, &id).await.is_empty(), "never charged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn customer_cancel_of_a_confirmed_order_refunds_and_restocks() {
    let shop = Shop::start(|_| {}, true).await;
    let pen = shop.product("PEN-1", 300, 10).await;
    let erin = shop.customer("erin@shop.test").await;
    shop.add_to_cart(&erin, &pen, 4).await;
    let id = shop.checkout(&erin, "tok_visa").await["id"].as_str().unwrap().to_owned();
    assert_eq!(shop.final_order(&erin, &id).await["status"], "ORDER_STATUS_CONFIRMED");
    eventually("committed", SAGA, || async { (shop.stock(&pen).await == (6, 6, 0)).then_some(()) }).await;

    let cancelled = shop.ok(reqwest::Method::POST, &format!("/v1/orders/{id}:cancel"), &erin, Some(json!({}))).await;
    assert_eq!(cancelled["order"]["status"], "ORDER_STATUS_CANCELLED");
    assert_eq!(cancelled["order"]["cancelReason"], "CANCEL_REASON_CUSTOMER_REQUEST");
    eventually("restocked", SAGA, || async { (shop.stock(&pen).await == (10, 10, 0)).then_some(()) }).await;
    eventually("refunded", SAGA, || async {
        let p = shop.payments(&erin, &id).await;
        (p.len() == 1 && p[0]["status"] == "PAYMENT_STATUS_REFUNDED").then_some(())
    })
    .await;
    eventually("refund noted on the order and notified", SAGA, || async {
        let order = shop.order(&erin, &id).await;
        let noted = order["history"].as_array().unwrap().iter().any(|h| h["note"] == "payment refunded");
        let notified = shop.notifications(&erin).await.iter().any(|n| n["kind"] == "NOTIFICATION_KIND_ORDER_REFUNDED");
        (noted && notified).then_some(())
    })
    .await;
    // Cancelling again changes nothing.
    let before = shop.order(&erin, &id).await;
    let again = shop.ok(reqwest::Method::POST, &format!("/v1/orders/{id}:cancel"), &erin, Some(json!({}))).await;
    assert_eq!(again["order"]["history"], before["history"]);
    assert_eq!(again["order"]["status"], "ORDER_STATUS_CANCELLED");
}

/// Customers cancelling after checkout at different points of the saga,
/// from right away (nothing charged yet) to after the confirmation (a
/// refund): each order ends cancelled by its customer, its stock comes back
/// and no payment is left captured.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancels_racing_the_saga_end_cancelled_restocked_and_never_charged() {
    let shop = Shop::start(|_| {}, true).await;
    let mat = shop.product("MAT-1", 1500, 8).await;
    let mut placed = Vec::new();
    for (n, delay_ms) in [0u64, 250, 1000, 2500].into_iter().enumerate() {
        let customer = shop.customer(&format!("racer{n}@shop.test")).await;
        shop.add_to_cart(&customer, &mat, 2).await;
        let id = shop.checkout(&customer, "tok_visa").await["id"].as_str().unwrap().to_owned();
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        let cancelled =
            shop.ok(reqwest::Method::POST, &format!("/v1/orders/{id}:cancel"), &customer, Some(json!({}))).await;
        assert_eq!(cancelled["order"]["status"], "ORDER_STATUS_CANCELLED", "{cancelled}");
        assert_eq!(cancelled["order"]["cancelReason"], "CANCEL_REASON_CUSTOMER_REQUEST");
        placed.push((customer, id));
    }

    eventually("all stock back", SAGA, || async { (shop.stock(&mat).await == (8, 8, 0)).then_some(()) }).await;
    shop.env.wait_consumers_caught_up(SAGA_CONSUMERS, SAGA).await;
    for (customer, id) in &placed {
        let order = shop.order(customer, id).await;
        assert_eq!(order["status"], "ORDER_STATUS_CANCELLED", "{order}");
        assert_eq!(order["cancelReason"], "CANCEL_REASON_CUSTOMER_REQUEST", "{order}");
        for p in shop.payments(customer, id).await {
            assert!(
                ["PAYMENT_STATUS_DECLINED", "PAYMENT_STATUS_REFUNDED"].contains(&p["status"].as_str().unwrap_or("")),
                "a cancelled order is never left charged: {p}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_order_stuck_pending_times_out_and_a_late_payment_is_never_kept() {
    // Payment is down: stock gets reserved, nobody charges, the order times out.
    let shop = Shop::start(|env| env.set("PENDING_TIMEOUT_MS", "2000"), false).await;
    let kit = shop.product("KIT-1", 2500, 5).await;
    let fay = shop.customer("fay@shop.test").await;
    shop.add_to_cart(&fay, &kit, 2).await;
    let id = shop.checkout(&fay, "tok_visa").await["id"].as_str().unwrap().to_owned();

    let order = shop.final_order(&fay, &id).await;
    assert_eq!(order["status"], "ORDER_STATUS_CANCELLED");
    assert_eq!(order["cancelReason"], "CANCEL_REASON_TIMEOUT");
    eventually("reservation released", SAGA, || async { (shop.stock(&kit).await == (5, 5, 0)).then_some(()) }).await;

    // Payment comes back and finds both StockReserved and OrderCancelled waiting.
    let payment = shop.env.launch(&shopmesh_payment::SERVICE).await;
    shop.env.wait_consumers_caught_up(SAGA_CONSUMERS, SAGA).await;
    let mut client = shopmesh_payment::pb::payment_service_client::PaymentServiceClient::new(
        shopmesh_platform::grpc::channel(&url(&payment)).unwrap(),
    );
    let mut req = tonic::Request::new(shopmesh_payment::pb::ListPaymentsRequest { order_id: id.clone(), page: None });
    req.metadata_mut().insert("authorization", format!("Bearer {fay}").parse().unwrap());
    let payments = client.list_payments(req).await.unwrap().into_inner().payments;
    for p in &payments {
        let status = shopmesh_payment::pb::PaymentStatus::try_from(p.status).unwrap();
        assert!(
            matches!(
                status,
                shopmesh_payment::pb::PaymentStatus::Declined | shopmesh_payment::pb::PaymentStatus::Refunded
            ),
            "a cancelled order is never left charged: {p:?}"
        );
    }
    assert_eq!(shop.order(&fay, &id).await["status"], "ORDER_STATUS_CANCELLED");
    assert_eq!(shop.stock(&kit).await, (5, 5, 0));
}

/// An admin cannot release or commit a reservation an order's checkout
/// holds: released under an order still being paid for, its units would be
/// sold twice. Cancelling the order is the way; a reservation an admin made
/// outside any checkout is still theirs to release.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_admin_cannot_settle_a_reservation_a_checkout_holds() {
    // Payment is down: the order waits with its stock reserved.
    let shop = Shop::start(|_| {}, false).await;
    let lamp = shop.product("LAMP-1", 4000, 5).await;
    let gus = shop.customer("gus@shop.test").await;
    shop.add_to_cart(&gus, &lamp, 2).await;
    let id = shop.checkout(&gus, "tok_visa").await["id"].as_str().unwrap().to_owned();
    eventually("stock reserved", SAGA, || async { (shop.stock(&lamp).await == (3, 5, 2)).then_some(()) }).await;

    let post = reqwest::Method::POST;
    for action in ["release", "commit"] {
        let path = format!("/v1/inventory/reservations/{id}:{action}");
        let refused = shop.send(post.clone(), &path, &shop.admin, Some(json!({}))).await;
        assert_eq!(refused.status(), 400, "{action}");
        let err: Value = refused.json().await.unwrap();
        assert_eq!(err["code"], 9, "FailedPrecondition: {err}");
        assert!(err["message"].as_str().unwrap().contains("belongs to an order's checkout"), "{err}");
    }
    assert_eq!(shop.stock(&lamp).await, (3, 5, 2), "nothing moved");

    let own = uuid::Uuid::now_v7();
    let lines = json!({"lines": [{"productId": lamp, "quantity": 1}]});
    shop.ok(post.clone(), &format!("/v1/inventory/reservations/{own}:reserve"), &shop.admin, Some(lines)).await;
    assert_eq!(shop.stock(&lamp).await, (2, 5, 3));
    shop.ok(post.clone(), &format!("/v1/inventory/reservations/{own}:release"), &shop.admin, Some(json!({}))).await;
    assert_eq!(shop.stock(&lamp).await, (3, 5, 2), "the admin's own reservation released");

    shop.ok(post, &format!("/v1/orders/{id}:cancel"), &gus, Some(json!({}))).await;
    assert_eq!(shop.final_order(&gus, &id).await["cancelReason"], "CANCEL_REASON_CUSTOMER_REQUEST");
    eventually("the checkout released its own", SAGA, || async {
        (shop.stock(&lamp).await == (5, 5, 0)).then_some(())
    })
    .await;
}

/// The order is cancelled while its payment is being captured, and the
/// capture reaches the order only afterwards: the money goes back, the
/// history says so, and the customer is told.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_payment_captured_after_the_order_was_cancelled_is_refunded() {
    let mut shop = Shop::start(|_| {}, true).await;
    let vase = shop.product("VASE-1", 3200, 4).await;
    let bowl = shop.product("BOWL-1", 900, 4).await;
    let ada = shop.customer("ada@shop.test").await;
    // Every consumer is in its group before anything stops.
    let first = place_single_item_order(&shop, &ada, &bowl).await;
    assert_eq!(shop.final_order(&ada, &first).await["status"], "ORDER_STATUS_CONFIRMED");
    shop.env.wait_consumers_caught_up(SAGA_CONSUMERS, SAGA).await;
    shop.ok(reqwest::Method::DELETE, "/v1/cart", &ada, None).await;
    shop.add_to_cart(&ada, &vase, 1).await;

    // Payment is away: the order waits with its stock reserved.
    let payment_addr = Shop::stop(&mut shop.payment).await;
    let id = shop.checkout(&ada, "tok_visa").await["id"].as_str().unwrap().to_owned();
    eventually("stock reserved", SAGA, || async { (shop.stock(&vase).await == (3, 4, 1)).then_some(()) }).await;
    // Order goes away; payment comes back and captures.
    let order_addr = Shop::stop(&mut shop.order).await;
    shop.payment = Some(shop.restart(&shopmesh_payment::SERVICE, payment_addr).await);
    eventually("captured", SAGA, || async {
        let payments = shop.payments(&ada, &id).await;
        (payments.first().is_some_and(|p| p["status"] == "PAYMENT_STATUS_CAPTURED")).then_some(())
    })
    .await;
    // The order times out before it hears of the capture.
    let pool = shopmesh_platform::db::connect(&shop.env.database_url("order").await, 1).await.unwrap();
    let outbox = shopmesh_platform::outbox::Outbox::new("order");
    let cancelled = shopmesh_order::events::cancel_timed_out(&pool, &outbox, Duration::ZERO).await.unwrap();
    assert_eq!(cancelled, 1);
    shop.order = Some(shop.restart(&shopmesh_order::SERVICE, order_addr).await);

    eventually("refunded", SAGA, || async {
        let payments = shop.payments(&ada, &id).await;
        (payments.len() == 1 && payments[0]["status"] == "PAYMENT_STATUS_REFUNDED").then_some(())
    })
    .await;
    let order = eventually("refund in the history", SAGA, || async {
        let order = shop.order(&ada, &id).await;
        (order["history"].as_array().unwrap().len() == 4).then_some(order)
    })
    .await;
    assert_eq!(order["status"], "ORDER_STATUS_CANCELLED");
    assert_eq!(order["cancelReason"], "CANCEL_REASON_TIMEOUT");
    let notes: Vec<&str> =
        order["history"].as_array().unwrap().iter().map(|h| h["note"].as_str().unwrap_or("")).collect();
    assert_eq!(notes[2], "payment captured after cancellation; refund follows", "{order}");
    assert!(notes[3].contains("refunded"), "{order}");
    eventually("stock back", SAGA, || async { (shop.stock(&vase).await == (4, 4, 0)).then_some(()) }).await;
    let kinds = eventually("refund notice", SAGA, || async {
        let kinds: Vec<String> =
            shop.notifications(&ada).await.iter().map(|n| n["kind"].as_str().unwrap().to_owned()).collect();
        kinds.contains(&"NOTIFICATION_KIND_ORDER_REFUNDED".to_owned()).then_some(kinds)
    })
    .await;
    assert!(kinds.contains(&"NOTIFICATION_KIND_ORDER_CANCELLED".to_owned()), "{kinds:?}");
    let payments = shop.payments(&ada, &id).await;
    assert_eq!((payments.len(), &payments[0]["status"]), (1, &json!("PAYMENT_STATUS_REFUNDED")), "charged once");
}

/// While orders pile up unsettled (payment is down here), checkout refuses
/// new ones at once with a 503 that says when to retry, instead of queueing
/// them behind the backlog toward the pending timeout. A retry of an order
/// already placed still gets its order, and once the backlog settles
/// checkout takes orders again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn checkout_refuses_new_orders_while_the_saga_is_behind_then_takes_them_again() {
    let shop = Shop::start(
        |env| {
            env.set("CHECKOUT_BACKLOG_LIMIT", "2");
            env.set("CHECKOUT_BACKLOG_AGE_MS", "0");
            // The waiting orders must outlast payment's return and group join.
            env.set("PENDING_TIMEOUT_MS", "300000");
        },
        false,
    )
    .await;
    let mug = shop.product("MUG-9", 800, 20).await;
    let ann = shop.customer("ann@shop.test").await;
    let ben = shop.customer("ben@shop.test").await;
    shop.add_to_cart(&ann, &mug, 1).await;
    shop.add_to_cart(&ben, &mug, 1).await;
    let body = json!({"paymentToken": "tok_visa", "shippingAddress": address()});
    let placed = shop.checkout_with_key(&ann, "ann-1", &body).await;
    assert_eq!(placed.status(), 200);
    let first = placed.json::<Value>().await.unwrap()["order"]["id"].as_str().unwrap().to_owned();
    shop.checkout(&ann, "tok_visa").await;
    let (order, _) = shop.order.as_ref().unwrap();
    let metrics = format!("http://{}/metrics", order.http_addr);
    eventually("both orders counted as waiting", SAGA, || async {
        let text = shop.http.get(&metrics).send().await.ok()?.text().await.ok()?;
        text.lines().any(|l| l == "orders_pending_late 2").then_some(())
    })
    .await;

    let refused = shop.send(reqwest::Method::POST, "/v1/orders", &ben, Some(body.clone())).await;
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "2");
    let err: Value = refused.json().await.unwrap();
    assert_eq!(err["code"], 14, "{err}");
    assert!(err["message"].as_str().unwrap().starts_with("checkout is busy"), "{err}");
    let replay = shop.checkout_with_key(&ann, "ann-1", &body).await;
    assert_eq!(replay.status(), 200, "a placed order's retry is answered while busy");
    assert_eq!(replay.json::<Value>().await.unwrap()["order"]["id"], first.as_str());
    let bens = shop.ok(reqwest::Method::GET, "/v1/orders", &ben, None).await;
    assert!(bens["orders"].as_array().is_none_or(Vec::is_empty), "nothing placed: {bens}");

    // Payment is back: the backlog settles and checkout opens again.
    let _payment = shop.env.launch(&shopmesh_payment::SERVICE).await;
    assert_eq!(shop.final_order(&ann, &first).await["status"], "ORDER_STATUS_CONFIRMED");
    let id = eventually("checkout open again", SAGA, || async {
        let resp = shop.send(reqwest::Method::POST, "/v1/orders", &ben, Some(body.clone())).await;
        match resp.status().as_u16() {
            503 => None,
            200 => Some(resp.json::<Value>().await.unwrap()["order"]["id"].as_str().unwrap().to_owned()),
            other => panic!("checkout answered {other}: {}", resp.text().await.unwrap()),
        }
    })
    .await;
    assert_eq!(shop.final_order(&ben, &id).await["status"], "ORDER_STATUS_CONFIRMED");
}

/// A primary that is down sends the charge to the secondary and, after
/// five outages, opens its breaker (seen in /metrics); a primary that took
/// the charge but never answered is asked again, not bypassed, so the
/// customer pays once, at the primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn charges_fail_over_when_the_primary_is_down_but_never_when_it_did_not_answer() {
    let shop = Shop::start(|_| {}, true).await;
    let kay = shop.customer("kay@shop.test").await;
    // A product per order: a confirmed order's late cart clear never takes the next one's line.
    let mut pens = Vec::new();
    for i in 0..7 {
        pens.push(shop.product(&format!("PEN-{i}"), 300, 5).await);
    }
    let checkout = async |pen: &str, card: &str| {
        shop.ok(reqwest::Method::DELETE, "/v1/cart", &kay, None).await;
        shop.add_to_cart(&kay, pen, 1).await;
        shop.checkout(&kay, card).await["id"].as_str().unwrap().to_owned()
    };

    let id = checkout(&pens[0], "tok_visa").await;
    let order = shop.final_order(&kay, &id).await;
    assert_eq!(order["status"], "ORDER_STATUS_CONFIRMED", "{order}");
    let payments = shop.payments(&kay, &id).await;
    assert_eq!(payments.len(), 1);
    assert_eq!(payments[0]["provider"], "primary");

    let lost = checkout(&pens[1], "tok_provider_timeout").await;
    assert_eq!(shop.final_order(&kay, &lost).await["status"], "ORDER_STATUS_CONFIRMED");
    let payments = shop.payments(&kay, &lost).await;
    assert_eq!(payments.len(), 1);
    assert_eq!(
        (&payments[0]["provider"], &payments[0]["status"]),
        (&json!("primary"), &json!("PAYMENT_STATUS_CAPTURED"))
    );

    let mut down = Vec::new();
    for pen in &pens[2..] {
        down.push(checkout(pen, "tok_provider_down").await);
    }
    for id in &down {
        assert_eq!(shop.final_order(&kay, id).await["status"], "ORDER_STATUS_CONFIRMED", "{id}");
        let payments = shop.payments(&kay, id).await;
        assert_eq!(payments.len(), 1);
        assert_eq!(payments[0]["provider"], "secondary", "{id}");
    }
    let metrics = payment_metrics(&shop).await;
    let line =
        |name: &str, label: &str| metrics.lines().find(|l| l.starts_with(name) && l.contains(label)).map(str::to_owned);
    // One failure for the lost answer and four outages open it (1).
    let breaker = line("payment_breaker_state", "provider=\"primary\"").unwrap_or_else(|| panic!("{metrics}"));
    assert!(breaker.ends_with(" 1"), "{breaker}");
    assert!(line("payment_charges_total", "outcome=\"no_answer\"").is_some(), "{metrics}");
}

/// A new customer buys one unit of a new product (3 in stock) paying with
/// `payment_token`, the order is confirmed, then they cancel it; returns
/// (customer token, product id, order id).
async fn confirmed_then_cancelled(
    shop: &Shop,
    email: &str,
    sku: &str,
    payment_token: &str,
) -> (String, String, String) {
    let product = shop.product(sku, 5400, 3).await;
    let customer = shop.customer(email).await;
    shop.add_to_cart(&customer, &product, 1).await;
    let id = shop.checkout(&customer, payment_token).await["id"].as_str().unwrap().to_owned();
    assert_eq!(shop.final_order(&customer, &id).await["status"], "ORDER_STATUS_CONFIRMED");
    shop.ok(reqwest::Method::POST, &format!("/v1/orders/{id}:cancel"), &customer, Some(json!({}))).await;
    (customer, product, id)
}

/// The payment service's `/metrics`.
async fn payment_metrics(shop: &Shop) -> String {
    let (running, _) = shop.payment.as_ref().unwrap();
    let metrics = shop.http.get(format!("http://{}/metrics", running.http_addr)).send().await.unwrap();
    metrics.text().await.unwrap()
}

/// A refund the provider cannot take during an outage is owed and shown as
/// pending, never dead-lettered with the money kept, and goes through once
/// the provider takes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refund_during_a_provider_outage_is_owed_then_paid_back() {
    let shop = Shop::start(|env| env.set("REFUND_RETRY_MS", "500"), true).await;
    let (lea, lamp, id) = confirmed_then_cancelled(&shop, "lea@shop.test", "LAMP-9", "tok_refund_outage").await;
    let status = async || shop.payments(&lea, &id).await[0]["status"].as_str().unwrap().to_owned();
    eventually("refund owed", SAGA, || async { (status().await == "PAYMENT_STATUS_REFUND_PENDING").then_some(()) })
        .await;
    eventually("refunded", SAGA, || async { (status().await == "PAYMENT_STATUS_REFUNDED").then_some(()) }).await;
    let order = eventually("refund in the history", SAGA, || async {
        let order = shop.order(&lea, &id).await;
        (order["history"].as_array().unwrap().last().unwrap()["note"] == "payment refunded").then_some(order)
    })
    .await;
    assert_eq!(order["cancelReason"], "CANCEL_REASON_CUSTOMER_REQUEST");
    eventually("refund notice", SAGA, || async {
        let notes = shop.notifications(&lea).await;
        notes.iter().any(|n| n["kind"] == "NOTIFICATION_KIND_ORDER_REFUNDED").then_some(())
    })
    .await;
    eventually("restocked", SAGA, || async { (shop.stock(&lamp).await == (3, 3, 0)).then_some(()) }).await;

    let metrics = payment_metrics(&shop).await;
    let deferred = metrics.lines().find(|l| l.starts_with("payment_refunds_deferred_total"));
    assert!(deferred.is_some_and(|l| l.ends_with(" 2")), "two attempts the provider did not take: {metrics}");
    assert!(!metrics.lines().any(|l| l.starts_with("consumer_dead_lettered_total")), "nothing dead-lettered");
}

/// A refund the provider refuses outright (a disputed charge) stays owed and
/// in sight, asked about hourly; the cancellation and the restock stand.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refund_the_provider_refuses_stays_owed_in_sight_and_the_cancellation_stands() {
    let shop = Shop::start(|_| {}, true).await;
    let (ida, lamp, id) = confirmed_then_cancelled(&shop, "ida@shop.test", "LAMP-7", "tok_refund_refused").await;
    let status = async || shop.payments(&ida, &id).await[0]["status"].as_str().unwrap().to_owned();
    eventually("refund owed", SAGA, || async { (status().await == "PAYMENT_STATUS_REFUND_PENDING").then_some(()) })
        .await;
    assert_eq!(shop.order(&ida, &id).await["cancelReason"], "CANCEL_REASON_CUSTOMER_REQUEST");
    eventually("restocked", SAGA, || async { (shop.stock(&lamp).await == (3, 3, 0)).then_some(()) }).await;

    let metrics = payment_metrics(&shop).await;
    let refused = metrics.lines().find(|l| l.starts_with("payment_refunds_refused_total"));
    assert!(refused.is_some_and(|l| l.ends_with(" 1")), "the refusal is counted: {metrics}");
    assert!(!metrics.lines().any(|l| l.starts_with("consumer_dead_lettered_total")), "nothing dead-lettered");
    assert_eq!(status().await, "PAYMENT_STATUS_REFUND_PENDING", "still owed, not marked refunded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idempotency_key_replays_the_same_order_and_refuses_a_different_body() {
    let shop = Shop::start(|_| {}, true).await;
    let cup = shop.product("CUP-1", 800, 10).await;
    let gus = shop.customer("gus@shop.test").await;
    shop.add_to_cart(&gus, &cup, 1).await;
    let body = json!({"paymentToken": "tok_visa", "shippingAddress": address()});
    let first: Value = shop.checkout_with_key(&gus, "checkout-42", &body).await.json().await.unwrap();
    let retry: Value = shop.checkout_with_key(&gus, "checkout-42", &body).await.json().await.unwrap();
    assert!(retry["order"].is_object(), "retry answered {retry}");
    assert_eq!(first["order"]["id"], retry["order"]["id"], "the retry returns the same order");
    let other = json!({"paymentToken": "tok_mastercard", "shippingAddress": address()});
    let resp = shop.checkout_with_key(&gus, "checkout-42", &other).await;
    assert_eq!(resp.status(), 409);
    let err: Value = resp.json().await.unwrap();
    assert!(err["message"].as_str().unwrap().contains("Idempotency-Key"), "{err}");
    let list = shop.ok(reqwest::Method::GET, "/v1/orders", &gus, None).await;
    assert_eq!(list["orders"].as_array().unwrap().len(), 1, "one order created");
    let id = first["order"]["id"].as_str().unwrap();
    assert_eq!(shop.final_order(&gus, id).await["status"], "ORDER_STATUS_CONFIRMED");
    assert_eq!(shop.payments(&gus, id).await.len(), 1);

    // Any client string: a UTF-8 key (sent as raw header bytes) works the same.
    let ida = shop.customer("ida@shop.test").await;
    shop.add_to_cart(&ida, &cup, 1).await;
    let key = "заказ-42 ✓";
    let first: Value = shop.checkout_with_key(&ida, key, &body).await.json().await.unwrap();
    let retry: Value = shop.checkout_with_key(&ida, key, &body).await.json().await.unwrap();
    assert!(first["order"].is_object(), "a UTF-8 key is taken: {first}");
    assert_eq!(first["order"]["id"], retry["order"]["id"], "and replays its order");
    assert_eq!(shop.checkout_with_key(&ida, key, &other).await.status(), 409);
}

/// The `field` a 400's BadRequest detail names.
async fn refused_field(resp: reqwest::Response) -> String {
    let status = resp.status();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(status, 400, "{body}");
    body["details"][0]["fieldViolations"][0]["field"]
        .as_str()
        .unwrap_or_else(|| panic!("no field in {body}"))
        .to_owned()
}

/// A checkout the shop cannot take is a 400 that says what to fix, and
/// places nothing: bad fields, someone else's saved address, a line the shop
/// stopped selling, a cart that costs nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_checkout_the_shop_cannot_take_is_a_400_saying_what_to_fix_and_places_nothing() {
    let shop = Shop::start(|_| {}, true).await;
    let mug = shop.product("MUG-400", 1250, 10).await;
    let pan = shop.product("PAN-400", 3000, 10).await;
    let sticker = shop.product("FREE-400", 0, 10).await;
    let dana = shop.customer("dana@shop.test").await;
    let erin = shop.customer("erin@shop.test").await;
    let save_address = |token: String, label: &'static str| {
        let shop = &shop;
        async move {
            let body = json!({"label": label, "postalAddress": address()});
            let saved = shop.ok(reqwest::Method::POST, "/v1/users/me/addresses", &token, Some(body)).await;
            saved["address"]["id"].as_str().unwrap().to_owned()
        }
    };
    let danas_home = save_address(dana.clone(), "home").await;
    let erins_home = save_address(erin.clone(), "home").await;
    shop.add_to_cart(&dana, &mug, 1).await;

    let with = |extra: Value| {
        let mut body = json!({"paymentToken": "tok_visa", "shippingAddress": address()});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        body.as_object_mut().unwrap().retain(|_, v| !v.is_null());
        body
    };
    let mut bad_country = address();
    bad_country["countryCode"] = json!("USA");
    let cases = [
        (with(json!({"paymentToken": null})), "payment_token"),
        (with(json!({"paymentToken": "4242 4242 4242 4242"})), "payment_token"),
        (with(json!({"shippingAddress": null})), "shipping_address_id"),
        (with(json!({"shippingAddress": bad_country})), "shipping_address.country_code"),
        (with(json!({"shippingAddress": null, "shippingAddressId": "home"})), "shipping_address_id"),
        (with(json!({"shippingAddress": null, "shippingAddressId": uuid::Uuid::now_v7()})), "shipping_address_id"),
        (with(json!({"shippingAddress": null, "shippingAddressId": erins_home})), "shipping_address_id"),
        (with(json!({"couponCode": "SAVE10"})), "coupon_code"),
    ];
    for (body, field) in cases {
        let resp = shop.send(reqwest::Method::POST, "/v1/orders", &dana, Some(body.clone())).await;
        assert_eq!(refused_field(resp).await, field, "{body}");
    }
    let long_key = "k".repeat(256);
    assert_eq!(
        refused_field(shop.checkout_with_key(&dana, &long_key, &with(json!({}))).await).await,
        "Idempotency-Key"
    );

    // A line the shop stopped selling shows apart in the cart, and checkout
    // names it until it is removed; nothing is ordered without it.
    shop.add_to_cart(&dana, &pan, 2).await;
    shop.ok(reqwest::Method::DELETE, &format!("/v1/products/{pan}"), &shop.admin, None).await;
    let cart = shop.ok(reqwest::Method::GET, "/v1/cart", &dana, None).await["cart"].clone();
    assert_eq!(cart["unavailableLines"], json!([{"productId": pan, "quantity": 2}]), "{cart}");
    assert_eq!(cart["total"]["amountMinor"], "1250", "{cart}");
    let resp = shop.send(reqwest::Method::POST, "/v1/orders", &dana, Some(with(json!({})))).await;
    assert_eq!(resp.status(), 400);
    let err: Value = resp.json().await.unwrap();
    assert!(err["message"].as_str().unwrap().contains(&pan), "{err}");
    let orders = shop.ok(reqwest::Method::GET, "/v1/orders", &dana, None).await;
    assert_eq!(orders["orders"], json!([]), "nothing placed by any refused checkout: {orders}");

    // Free alone cannot be charged; with it gone the saved address works.
    shop.ok(reqwest::Method::DELETE, "/v1/cart", &dana, None).await;
    shop.add_to_cart(&dana, &sticker, 1).await;
    let resp = shop.send(reqwest::Method::POST, "/v1/orders", &dana, Some(with(json!({})))).await;
    assert_eq!(resp.status(), 400);
    let err: Value = resp.json().await.unwrap();
    assert!(err["message"].as_str().unwrap().contains("zero"), "{err}");
    shop.add_to_cart(&dana, &mug, 1).await;
    let body = with(json!({"shippingAddress": null, "shippingAddressId": danas_home}));
    let placed = shop.ok(reqwest::Method::POST, "/v1/orders", &dana, Some(body)).await["order"].clone();
    // As saved, with the parts it has no value for written empty.
    let mut saved = address();
    for part in ["line2", "region", "phone"] {
        saved[part] = json!("");
    }
    assert_eq!(placed["shippingAddress"], saved, "{placed}");
    assert_eq!(placed["total"]["amountMinor"], "1250");
    let id = placed["id"].as_str().unwrap();
    assert_eq!(shop.final_order(&dana, id).await["status"], "ORDER_STATUS_CONFIRMED");
}

/// Ids and page tokens a client made up are 400s naming the field; another
/// customer's order is a 404 to read or cancel; the list pages newest first.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn made_up_ids_and_tokens_are_400s_and_other_customers_orders_404s() {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    let shop = Shop::start(|_| {}, true).await;
    let frank = shop.customer("frank@shop.test").await;
    let gina = shop.customer("gina@shop.test").await;
    let mut placed = Vec::new();
    // A product per order: a confirmed order's late cart clear never takes the next one's line.
    for i in 0..3 {
        let cup = shop.product(&format!("CUP-40{i}"), 800, 10).await;
        placed.push(place_single_item_order(&shop, &frank, &cup).await);
    }

    let get = async |path: &str, token: &str| shop.send(reqwest::Method::GET, path, token, None).await;
    assert_eq!(refused_field(get("/v1/orders/abc", &frank).await).await, "id");
    let cancel = async |path: &str, token: &str| shop.send(reqwest::Method::POST, path, token, None).await;
    assert_eq!(refused_field(cancel("/v1/orders/abc:cancel", &frank).await).await, "id");
    assert_eq!(get(&format!("/v1/orders/{}", placed[0]), &gina).await.status(), 404);
    assert_eq!(cancel(&format!("/v1/orders/{}:cancel", placed[0]), &gina).await.status(), 404);
    for id in &placed {
        assert_eq!(shop.final_order(&frank, id).await["status"], "ORDER_STATUS_CONFIRMED");
    }

    // Two at a time, newest first, each once.
    let mut seen = Vec::new();
    let mut tokens = Vec::new();
    let mut token = String::new();
    loop {
        let path = format!("/v1/orders?page.pageSize=2&page.pageToken={token}");
        let list = shop.ok(reqwest::Method::GET, &path, &frank, None).await;
        seen.extend(list["orders"].as_array().unwrap().iter().map(|o| o["id"].as_str().unwrap().to_owned()));
        token = list["page"]["nextPageToken"].as_str().unwrap_or("").to_owned();
        if token.is_empty() {
            break;
        }
        tokens.push(token.clone());
    }
    assert_eq!(seen, placed.iter().rev().cloned().collect::<Vec<_>>());
    assert_eq!(tokens.len(), 1);
    let token = &tokens[0];
    assert_eq!(refused_field(get("/v1/orders?page.pageSize=-1", &frank).await).await, "page.page_size");
    // Another customer's token, and a token with its time edited past what
    // the database can compare with.
    let resp = get(&format!("/v1/orders?page.pageToken={token}"), &gina).await;
    assert_eq!(refused_field(resp).await, "page.page_token");
    let mut cursor: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(token).unwrap()).unwrap();
    cursor["c"][0] = json!("-10000-01-01T00:00:00Z");
    let edited = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&cursor).unwrap());
    let resp = get(&format!("/v1/orders?page.pageToken={edited}"), &frank).await;
    assert_eq!(refused_field(resp).await, "page.page_token");

    assert_eq!(refused_field(get("/v1/payments?orderId=nope", &frank).await).await, "order_id");
    let payments = shop.ok(reqwest::Method::GET, "/v1/payments?page.pageSize=1", &frank, None).await;
    let token = payments["page"]["nextPageToken"].as_str().unwrap();
    let mut cursor: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(token).unwrap()).unwrap();
    cursor["c"][0] = json!("+20000-01-01T00:00:00Z");
    let edited = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&cursor).unwrap());
    let resp = get(&format!("/v1/payments?page.pageToken={edited}"), &frank).await;
    assert_eq!(refused_field(resp).await, "page.page_token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_retries_with_one_idempotency_key_create_one_order() {
    let shop = Shop::start(|_| {}, true).await;
    let cup = shop.product("CUP-1", 800, 10).await;
    let ivy = shop.customer("ivy@shop.test").await;
    shop.add_to_cart(&ivy, &cup, 1).await;
    let body = json!({"paymentToken": "tok_visa", "shippingAddress": address()});
    // Sent together, most race past the early replay check to the claim.
    let posts = (0..8).map(|_| shop.checkout_with_key(&ivy, "double-click", &body));
    let mut ids = Vec::new();
    for resp in futures::future::join_all(posts).await {
        assert_eq!(resp.status(), 200);
        let answer: Value = resp.json().await.unwrap();
        ids.push(answer["order"]["id"].as_str().unwrap().to_owned());
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "every retry answered with the one order: {ids:?}");
    let list = shop.ok(reqwest::Method::GET, "/v1/orders", &ivy, None).await;
    assert_eq!(list["orders"].as_array().unwrap().len(), 1, "one order created");
    let orders_db = shopmesh_platform::db::connect(&shop.env.database_url("order").await, 1).await.unwrap();
    let created: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE event_type = $1")
        .bind(OrderCreated::TYPE)
        .fetch_one(&orders_db)
        .await
        .unwrap();
    assert_eq!(created, 1, "one OrderCreated");
    assert_eq!(shop.final_order(&ivy, &ids[0]).await["status"], "ORDER_STATUS_CONFIRMED");
    assert_eq!(shop.payments(&ivy, &ids[0]).await.len(), 1);
}

/// The race the test above can only provoke, made certain: a checkout whose
/// Idempotency-Key another request holds writes no order, line, history row
/// or event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkout_that_loses_its_idempotency_key_writes_nothing() {
    let (_env, pool, outbox) = order_store().await;
    let place = |user: &'static str, key: &'static str| place_cups(&pool, &outbox, user, Some(key));
    let counts = || async {
        let mut out = Vec::new();
        for table in ["orders", "order_lines", "order_status_history", "outbox", "idempotency_keys"] {
            let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
                .fetch_one(&pool)
                .await
                .unwrap();
            out.push(n);
        }
        out
    };

    let first = place("user-1", "k1").await;
    assert!(first.is_some(), "a fresh key is claimed");
    assert_eq!(counts().await, vec![1, 1, 1, 1, 1]);
    assert_eq!(place("user-1", "k1").await, None, "the held key is lost");
    assert_eq!(counts().await, vec![1, 1, 1, 1, 1], "and nothing was written");
    assert!(place("user-2", "k1").await.is_some(), "keys are per user");
    assert!(place("user-1", "k2").await.is_some(), "another key is another order");
    assert_eq!(counts().await, vec![3, 3, 3, 3, 3]);
}

/// An Idempotency-Key is kept 24 hours: within them it answers with its
/// order; after them it is forgotten, taken over by a new order, and swept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_is_kept_a_day_then_taken_over_and_swept() {
    use shopmesh_order::store::{self, IdempotentHit};

    let (_env, pool, outbox) = order_store().await;
    let first = place_cups(&pool, &outbox, "user-1", Some("k1")).await.expect("claimed");
    let hit = |pool: sqlx::PgPool| async move {
        let mut conn = pool.acquire().await.unwrap();
        store::find_idempotency_key(&mut conn, "user-1", "k1", "same-request").await.unwrap()
    };
    let age_key = |hours: i32| {
        sqlx::query("UPDATE idempotency_keys SET created_at = now() - make_interval(hours => $1)")
            .bind(hours)
            .execute(&pool)
    };

    age_key(23).await.unwrap();
    assert!(matches!(hit(pool.clone()).await, Some(IdempotentHit::SameRequest(id)) if id == first));
    assert_eq!(place_cups(&pool, &outbox, "user-1", Some("k1")).await, None, "still held at 23 h");

    age_key(25).await.unwrap();
    assert!(hit(pool.clone()).await.is_none(), "forgotten after 24 h");
    let second = place_cups(&pool, &outbox, "user-1", Some("k1")).await.expect("an expired key is taken over");
    assert_ne!(second, first);
    assert!(matches!(hit(pool.clone()).await, Some(IdempotentHit::SameRequest(id)) if id == second));

    age_key(25).await.unwrap();
    assert_eq!(store::delete_expired_idempotency_keys(&pool).await.unwrap(), 1);
    let keys: i64 = sqlx::query_scalar("SELECT count(*) FROM idempotency_keys").fetch_one(&pool).await.unwrap();
    assert_eq!(keys, 0);
}

/// The order service's store on a fresh database, partitions made.
async fn order_store() -> (TestEnv, sqlx::PgPool, shopmesh_platform::outbox::Outbox) {
    let env = TestEnv::new();
    let pool = shopmesh_platform::db::connect(&env.database_url("order").await, 2).await.unwrap();
    shopmesh_platform::db::migrate(&pool, Some(&shopmesh_order::MIGRATOR)).await.unwrap();
    shopmesh_order::store::ensure_partitions(&pool, chrono::Utc::now(), 1).await.unwrap();
    (env, pool, shopmesh_platform::outbox::Outbox::new("order"))
}

/// Places a two-cup order for `user` straight through the order store,
/// claiming `key` if given. `None` when another request holds the key.
async fn place_cups(
    pool: &sqlx::PgPool,
    outbox: &shopmesh_platform::outbox::Outbox,
    user: &str,
    key: Option<&str>,
) -> Option<uuid::Uuid> {
    use shopmesh_order::domain::OrderLine;
    use shopmesh_order::store::{self, KeyClaim, NewOrder};
    use shopmesh_platform::money::{Currency, Money};

    let usd = |minor| Money::new(Currency::parse("USD").unwrap(), minor);
    let lines = [OrderLine {
        product_id: "p-1".into(),
        sku: "CUP-1".into(),
        name: "Cup".into(),
        unit_price: usd(800),
        quantity: 2,
    }];
    let order = NewOrder {
        id: uuid::Uuid::now_v7(),
        user_id: user,
        lines: &lines,
        total: usd(1600),
        shipping_address: &Default::default(),
        coupon_code: "",
        cart_version: 1,
    };
    let event = outbox.row(
        &OrderCreated { order_id: order.id.to_string(), user_id: user.into(), ..Default::default() },
        &tracing::Span::current(),
    );
    let claim = key.map(|key| KeyClaim { key, request_hash: "same-request" });
    store::place_order(pool, &order, claim, &event).await.unwrap().map(|o| o.id)
}

/// Lookups by id read the month their id's time stamp names; an order whose
/// `created_at` lies elsewhere (the service's and the database's clocks
/// apart) is still found, locked and changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_stored_days_from_its_ids_time_is_still_found_and_changed() {
    use shopmesh_order::domain::{OrderStatus, PaymentState};
    use shopmesh_order::store::{self, Change};

    let (_env, pool, outbox) = order_store().await;
    let id = place_cups(&pool, &outbox, "user-1", None).await.expect("placed");
    assert!(store::load_order(&pool, id, Some("user-1")).await.unwrap().is_some(), "found in its month");
    assert!(store::load_order(&pool, uuid::Uuid::now_v7(), None).await.unwrap().is_none(), "an unknown id is none");

    // Outside the id's window (perhaps in last month's partition), as a
    // database clock two days behind the service's would have put it.
    sqlx::query("UPDATE orders SET created_at = created_at - interval '2 days' WHERE id = $1")
        .bind(id)
        .execute(&pool)
        .await
        .unwrap();
    let moved = store::load_order(&pool, id, Some("user-1")).await.unwrap().expect("still found");
    assert!(chrono::Utc::now() - moved.created_at > chrono::Duration::days(1));
    assert!(store::load_order(&pool, id, Some("user-2")).await.unwrap().is_none(), "still only its owner's");

    let mut tx = pool.begin().await.unwrap();
    let locked = store::lock_order(&mut tx, id).await.unwrap().expect("still locked");
    let confirm =
        Change { status: OrderStatus::Confirmed, reason: None, payment: PaymentState::Held, note: "payment captured" };
    store::apply_change(&mut tx, &locked, &confirm, None).await.unwrap();
    tx.commit().await.unwrap();
    let changed = store::load_order(&pool, id, None).await.unwrap().unwrap();
    assert_eq!(changed.status, OrderStatus::Confirmed);
    assert_eq!(changed.payment, PaymentState::Held);
    assert_eq!(changed.history.len(), 2);
}

/// Where the money is follows what payment reported, in whatever order the
/// reports arrive: a capture heard only after its refund (it sat on the
/// dead-letter topic and was replayed) changes nothing, so the order never
/// claims money it gave back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capture_replayed_after_its_refund_leaves_the_order_refunded() {
    use shopmesh_order::domain::{OrderInput, OrderStatus, PaymentState};
    use shopmesh_order::events::advance;
    use shopmesh_order::store;

    let (_env, pool, outbox) = order_store().await;
    let notes_after = |inputs: Vec<OrderInput>| {
        let (pool, outbox) = (pool.clone(), outbox.clone());
        async move {
            let id = place_cups(&pool, &outbox, "user-1", None).await.expect("placed");
            for input in inputs {
                let mut tx = pool.begin().await.unwrap();
                advance(&mut tx, &outbox, id, input).await.unwrap();
                tx.commit().await.unwrap();
            }
            let order = store::load_order(&pool, id, None).await.unwrap().unwrap();
            let notes: Vec<String> = order.history.iter().skip(2).map(|h| h.note.clone()).collect();
            (order.status, order.payment, notes)
        }
    };
    use OrderInput::*;
    // In order: the late capture is noted as held, then as refunded.
    let (status, payment, notes) = notes_after(vec![TimedOut, PaymentCaptured, PaymentRefunded]).await;
    assert_eq!((status, payment), (OrderStatus::Cancelled, PaymentState::Refunded));
    assert_eq!(notes, ["payment captured after cancellation; refund follows", "payment refunded"]);
    // The refund first: the capture replayed after it, and a second refund
    // message, leave the history and the state as the refund left them.
    let (status, payment, notes) = notes_after(vec![TimedOut, PaymentRefunded, PaymentCaptured, PaymentRefunded]).await;
    assert_eq!((status, payment), (OrderStatus::Cancelled, PaymentState::Refunded));
    assert_eq!(notes, ["payment refunded"]);
    // A confirmed order keeps its capture through duplicates of it.
    let (status, payment, notes) = notes_after(vec![PaymentCaptured, PaymentCaptured]).await;
    assert_eq!((status, payment), (OrderStatus::Confirmed, PaymentState::Held));
    assert!(notes.is_empty(), "{notes:?}");
}

/// A customer's orders page newest first across monthly partitions, each
/// exactly once, and never another customer's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customers_orders_page_newest_first_across_months() {
    use shopmesh_order::store;

    let (_env, pool, outbox) = order_store().await;
    let mut placed = Vec::new();
    for _ in 0..5 {
        placed.push(place_cups(&pool, &outbox, "user-1", None).await.expect("placed"));
    }
    place_cups(&pool, &outbox, "user-2", None).await.expect("placed");
    // The two oldest into last month's partition, an hour apart.
    for (hours, id) in [(2, placed[0]), (1, placed[1])] {
        sqlx::query(
            "UPDATE orders SET created_at = date_trunc('month', now()) - make_interval(hours => $2) WHERE id = $1",
        )
        .bind(id)
        .bind(hours)
        .execute(&pool)
        .await
        .unwrap();
    }

    let mut pages = Vec::new();
    let mut cursor = None;
    loop {
        let (orders, next) = store::list_orders(&pool, "user-1", cursor, 2).await.unwrap();
        pages.push(orders.iter().map(|o| o.id).collect::<Vec<_>>());
        match next {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    let newest_first: Vec<_> = placed.iter().rev().copied().collect();
    assert_eq!(pages, [&newest_first[0..2], &newest_first[2..4], &newest_first[4..5]]);
}

/// Every message on the saga's topics, as (topic, key, payload, headers).
async fn read_all(env: &TestEnv) -> Vec<(String, Vec<u8>, Vec<u8>, Option<rdkafka::message::OwnedHeaders>)> {
    let kafka = env.kafka();
    let topics: Vec<String> =
        ["order-events", "inventory-events", "payment-events"].iter().map(|t| kafka.config.topic(t)).collect();
    let consumer: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", shopmesh_integration_tests::kafka_brokers())
        .set("group.id", format!("t{}.replayer", env.id))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", "3000")
        .set("heartbeat.interval.ms", "1000")
        .create()
        .unwrap();
    let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer.subscribe(&refs).unwrap();
    let mut out = Vec::new();
    let mut wait = Duration::from_secs(15);
    while let Ok(Ok(m)) = tokio::time::timeout(wait, consumer.recv()).await {
        let detached = m.detach();
        out.push((
            detached.topic().to_owned(),
            detached.key().unwrap_or_default().to_vec(),
            detached.payload().unwrap_or_default().to_vec(),
            detached.headers().cloned(),
        ));
        wait = Duration::from_secs(3);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redelivering_every_saga_event_changes_nothing() {
    let shop = Shop::start(|_| {}, true).await;
    let hat = shop.product("HAT-1", 1500, 10).await;
    let hal = shop.customer("hal@shop.test").await;
    // One confirmed and then customer-cancelled order (reserve, capture, confirm,
    // commit, cancel, restock, refund), one declined order and one for more
    // than the shop has.
    shop.add_to_cart(&hal, &hat, 2).await;
    let a = shop.checkout(&hal, "tok_visa").await["id"].as_str().unwrap().to_owned();
    assert_eq!(shop.final_order(&hal, &a).await["status"], "ORDER_STATUS_CONFIRMED");
    shop.ok(reqwest::Method::POST, &format!("/v1/orders/{a}:cancel"), &hal, Some(json!({}))).await;
    shop.add_to_cart(&hal, &hat, 1).await;
    let b = shop.checkout(&hal, "tok_insufficient_funds").await["id"].as_str().unwrap().to_owned();
    assert_eq!(shop.final_order(&hal, &b).await["status"], "ORDER_STATUS_CANCELLED");
    shop.add_to_cart(&hal, &hat, 11).await;
    let c = shop.checkout(&hal, "tok_visa").await["id"].as_str().unwrap().to_owned();
    assert_eq!(shop.final_order(&hal, &c).await["cancelReason"], "CANCEL_REASON_OUT_OF_STOCK");
    shop.env.wait_consumers_caught_up(SAGA_CONSUMERS, SAGA).await;

    let snapshot = || async {
        (
            shop.stock(&hat).await,
            history(&shop.order(&hal, &a).await),
            history(&shop.order(&hal, &b).await),
            history(&shop.order(&hal, &c).await),
            shop.payments(&hal, &a).await,
            shop.payments(&hal, &b).await,
            shop.notifications(&hal).await.len(),
        )
    };
    let before = snapshot().await;
    assert_eq!(before.0, (10, 10, 0));

    // Publish every saga event a second time, as a broker redelivery would.
    let events = read_all(&shop.env).await;
    let types: std::collections::BTreeSet<String> = events
        .iter()
        .filter_map(|(_, _, payload, _)| {
            <shopmesh_platform::pb::events::v1::EventEnvelope as prost::Message>::decode(payload.as_slice())
                .ok()
                .map(|e| e.r#type)
        })
        .collect();
    for t in [
        "OrderCreated",
        "StockReserved",
        "PaymentCaptured",
        "OrderConfirmed",
        "StockCommitted",
        "OrderCancelled",
        "StockReleased",
        "PaymentRefunded",
        "PaymentDeclined",
        "StockReservationFailed",
    ] {
        assert!(types.contains(&format!("shopmesh.events.v1.{t}")), "{t} was published: {types:?}");
    }
    let producer = shop.env.kafka();
    for (topic, key, payload, headers) in &events {
        let mut record = FutureRecord::to(topic).key(key).payload(payload);
        if let Some(h) = headers {
            record = record.headers(h.clone());
        }
        producer.producer().send(record, Duration::from_secs(10)).await.unwrap();
    }
    shop.env.wait_consumers_caught_up(SAGA_CONSUMERS, SAGA).await;
    assert_eq!(snapshot().await, before, "duplicates were applied");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_consumer_stopped_mid_saga_and_restarted_finishes_it() {
    let mut shop = Shop::start(|_| {}, true).await;
    let book = shop.product("BOOK-1", 1000, 50).await;
    let ivy = shop.customer("ivy@shop.test").await;
    let mut ids = Vec::new();
    ids.push(place_single_item_order(&shop, &ivy, &book).await);
    // Payment is working: it has captured the first order.
    assert_eq!(shop.final_order(&ivy, &ids[0]).await["status"], "ORDER_STATUS_CONFIRMED");
    // It stops while the next checkouts are flowing in, and its process is gone…
    let (running, stop) = shop.payment.take().unwrap();
    ids.push(place_single_item_order(&shop, &ivy, &book).await);
    stop.trigger();
    for _ in 0..3 {
        ids.push(place_single_item_order(&shop, &ivy, &book).await);
    }
    running.task.await.unwrap().unwrap();
    let addr = running.grpc_addr;
    // …then a new one starts on the same address and finishes every saga,
    // charging each order once.
    shop.payment = Some(shop.restart(&shopmesh_payment::SERVICE, addr).await);
    for id in &ids {
        assert_eq!(shop.final_order(&ivy, id).await["status"], "ORDER_STATUS_CONFIRMED", "order {id}");
        assert_eq!(shop.payments(&ivy, id).await.len(), 1, "charged exactly once: {id}");
    }
    eventually("all committed", SAGA, || async { (shop.stock(&book).await == (45, 45, 0)).then_some(()) }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_checkouts_for_ten_units_confirm_exactly_ten() {
    // Fifty customers sign up and log in from one test address: lift the
    // per-IP limits on both.
    let shop = Shop::start(
        |env| {
            env.set("RATE_LIMIT_LOGIN", "1000/60");
            env.set("RATE_LIMIT_SIGNUP", "1000/60");
        },
        true,
    )
    .await;
    let gem = shop.product("GEM-1", 5000, 10).await;
    let customers: Vec<String> = futures::future::join_all((0..50).map(|i| {
        let shop = &shop;
        let gem = gem.clone();
        async move {
            let token = shop.customer(&format!("buyer{i}@shop.test")).await;
            shop.add_to_cart(&token, &gem, 1).await;
            token
        }
    }))
    .await;
    let shop_ref = &shop;
    let placed: Vec<(String, String)> = futures::future::join_all(customers.iter().map(|token| async move {
        (token.clone(), shop_ref.checkout(token, "tok_visa").await["id"].as_str().unwrap().to_owned())
    }))
    .await;

    let mut confirmed = 0;
    for (token, id) in &placed {
        let order = shop.final_order(token, id).await;
        let payments = shop.payments(token, id).await;
        match order["status"].as_str().unwrap() {
            "ORDER_STATUS_CONFIRMED" => {
                confirmed += 1;
                assert_eq!(payments.len(), 1);
                assert_eq!(payments[0]["status"], "PAYMENT_STATUS_CAPTURED");
            }
            _ => {
                assert_eq!(order["cancelReason"], "CANCEL_REASON_OUT_OF_STOCK", "{order}");
                assert!(
                    payments.iter().all(|p| p["status"] != "PAYMENT_STATUS_CAPTURED"),
                    "a cancelled order is refunded or never charged: {payments:?}"
                );
            }
        }
    }
    assert_eq!(confirmed, 10);
    eventually("sold out, nothing negative", SAGA, || async { (shop.stock(&gem).await == (0, 0, 0)).then_some(()) })
        .await;
}

/// A cart copy in Redis that missed the buyer's last change (a replica's
/// cache write that was lost) does not decide what checkout bills: checkout
/// reads the cart from Postgres.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn checkout_bills_the_saved_cart_even_when_its_cached_copy_is_stale() {
    use fred::prelude::*;
    let shop = Shop::start(|_| {}, true).await;
    let tent = shop.product("TENT-3", 10000, 5).await;
    let lamp = shop.product("LAMP-3", 2500, 5).await;
    let kai = shop.customer("kai@shop.test").await;
    shop.add_to_cart(&kai, &tent, 1).await;
    shop.add_to_cart(&kai, &lamp, 1).await;
    let cart = shop.ok(reqwest::Method::GET, "/v1/cart", &kai, None).await["cart"].clone();
    let key = format!("t{}:cart:{}", shop.env.id, cart["userId"].as_str().unwrap());
    let redis =
        Builder::from_config(Config::from_url(&shopmesh_platform::testing::redis_url()).unwrap()).build().unwrap();
    redis.init().await.unwrap();
    let both: String = redis.get(&key).await.unwrap();

    // The lamp comes out, and the copy saying it is still in comes back.
    shop.ok(reqwest::Method::DELETE, &format!("/v1/cart/items/{lamp}"), &kai, None).await;
    let _: () = redis.set(&key, both, None, None, false).await.unwrap();
    assert_eq!(shop.cart_lines(&kai).await, 2, "a plain view is served from the (stale) copy");

    let placed = shop.checkout(&kai, "tok_visa").await;
    assert_eq!(placed["total"]["amountMinor"], "10000", "only the tent is billed: {placed}");
    assert_eq!(placed["lines"].as_array().map(Vec::len), Some(1), "{placed}");
    let id = placed["id"].as_str().unwrap();
    assert_eq!(shop.final_order(&kai, id).await["status"], "ORDER_STATUS_CONFIRMED");
}
