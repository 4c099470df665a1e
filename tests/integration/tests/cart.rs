//! Cart: each caller sees only their own cart; lines are checked and priced
//! against the catalog; the Redis copy can vanish without losing a cart; an
//! OrderConfirmed takes what was bought out of the buyer's cart.

use std::time::Duration;

use fred::prelude::*;
use shopmesh_cart::pb;
use shopmesh_cart::pb::cart_service_client::CartServiceClient;
use shopmesh_catalog::pb as catalog_pb;
use shopmesh_catalog::pb::catalog_service_client::CatalogServiceClient;
use shopmesh_integration_tests::tokens::{TestIssuer, authed};
use shopmesh_integration_tests::{TestEnv, eventually, publish_event, publish_raw, redis_url};
use shopmesh_platform::events::DomainEvent as _;
use shopmesh_platform::outbox::Outbox;
use shopmesh_platform::pb::common::v1::Money;
use shopmesh_platform::pb::events::v1::{OrderConfirmed, OrderLine};
use tonic::Code;
use tonic::transport::Channel;

struct Setup {
    env: TestEnv,
    issuer: TestIssuer,
    cart: CartServiceClient<Channel>,
    catalog: CatalogServiceClient<Channel>,
    /// sku → product id of the seeded demo catalog.
    ids: std::collections::HashMap<String, String>,
}

async fn setup() -> Setup {
    let mut env = TestEnv::new();
    let issuer = TestIssuer::start().await;
    issuer.configure(&mut env);
    let catalog_svc = env.launch(&shopmesh_catalog::SERVICE).await;
    let pool = shopmesh_platform::db::connect(&env.database_url("catalog").await, 2).await.unwrap();
    let seeded = shopmesh_catalog::seed_demo_catalog(&pool, &Outbox::new("catalog")).await.unwrap();
    env.set("CATALOG_URL", format!("http://{}", catalog_svc.grpc_addr));
    let cart_svc = env.launch(&shopmesh_cart::SERVICE).await;
    let channel = |addr| shopmesh_platform::grpc::channel(&format!("http://{addr}")).unwrap();
    Setup {
        cart: CartServiceClient::new(channel(cart_svc.grpc_addr)),
        catalog: CatalogServiceClient::new(channel(catalog_svc.grpc_addr)),
        ids: seeded.products.into_iter().map(|(sku, id)| (sku, id.to_string())).collect(),
        env,
        issuer,
    }
}

fn usd(amount_minor: i64) -> Option<Money> {
    Some(Money { currency_code: "USD".into(), amount_minor })
}

fn line(product_id: &str, quantity: i32) -> OrderLine {
    OrderLine { product_id: product_id.into(), quantity, unit_price: usd(100) }
}

impl Setup {
    fn id(&self, sku: &str) -> String {
        self.ids[sku].clone()
    }

    async fn add(&self, token: &str, product_id: &str, quantity: i32) -> Result<pb::Cart, tonic::Status> {
        let req = authed(pb::AddItemRequest { product_id: product_id.into(), quantity }, token);
        Ok(self.cart.clone().add_item(req).await?.into_inner().cart.unwrap())
    }

    async fn get(&self, token: &str) -> pb::Cart {
        self.cart
            .clone()
            .get_cart(authed(pb::GetCartRequest::default(), token))
            .await
            .unwrap()
            .into_inner()
            .cart
            .unwrap()
    }
}

fn quantities(cart: &pb::Cart) -> Vec<(String, i32)> {
    cart.lines.iter().map(|l| (l.sku.clone(), l.quantity)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn carts_are_per_user_validated_and_priced_from_the_catalog() {
    let s = setup().await;
    let alice = s.issuer.customer(&uuid::Uuid::now_v7().to_string());
    let bob = s.issuer.customer(&uuid::Uuid::now_v7().to_string());
    let (mug, knife) = (s.id("KIT-MUG-001"), s.id("KIT-KNIF-002"));

    assert_eq!(s.cart.clone().get_cart(pb::GetCartRequest::default()).await.unwrap_err().code(), Code::Unauthenticated);

    s.add(&alice, &mug, 2).await.unwrap();
    let cart = s.add(&alice, &knife, 1).await.unwrap();
    let cart = if cart.lines.len() == 2 { cart } else { panic!("{cart:?}") };
    s.add(&alice, &mug, 1).await.unwrap();
    let cart2 = s.get(&alice).await;
    assert_eq!(quantities(&cart2), vec![("KIT-MUG-001".into(), 3), ("KIT-KNIF-002".into(), 1)], "lines merge");
    assert_eq!(cart2.lines[0].name, "Stoneware Coffee Mug");
    assert_eq!(cart2.lines[0].unit_price, usd(1499));
    assert_eq!(cart2.lines[0].line_total, usd(3 * 1499));
    assert_eq!(cart2.total, usd(3 * 1499 + 7999));
    assert_eq!(cart2.item_count, 4);
    assert_eq!(cart.lines[1].line_total, usd(7999));

    // Bob's cart is his own.
    let bobs = s.get(&bob).await;
    assert!(bobs.lines.is_empty());
    assert_eq!(bobs.total, usd(0));

    // Validation.
    let e = s.add(&alice, &mug, 97).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "3 + 97 > 99");
    assert!(e.message().starts_with("quantity"), "{}", e.message());
    for q in [0, 100, -1] {
        assert_eq!(s.add(&alice, &mug, q).await.unwrap_err().code(), Code::InvalidArgument);
    }
    assert_eq!(s.add(&alice, "not-a-uuid", 1).await.unwrap_err().code(), Code::InvalidArgument);
    let unknown = uuid::Uuid::now_v7().to_string();
    let e = s.add(&alice, &unknown, 1).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert!(e.message().contains(&unknown), "{}", e.message());

    // Archived products can't be added, and drop out of the priced cart.
    let admin = s.issuer.admin("admin-1");
    let pan = s.id("KIT-PAN-003");
    s.add(&bob, &pan, 1).await.unwrap();
    s.catalog
        .clone()
        .archive_product(authed(catalog_pb::ArchiveProductRequest { id: pan.clone() }, &admin))
        .await
        .unwrap();
    let e = s.add(&alice, &pan, 1).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("Cast Iron Skillet"), "{}", e.message());
    let bobs = s.get(&bob).await;
    assert!(bobs.lines.is_empty());
    // Still shown, apart, so bob can see what went and remove it.
    assert_eq!(bobs.unavailable_lines, [pb::UnavailableLine { product_id: pan.clone(), quantity: 1 }]);
    assert_eq!(bobs.item_count, 0);

    // Current prices on every read.
    let req = catalog_pb::UpdateProductRequest {
        id: knife.clone(),
        product: Some(catalog_pb::Product { price: usd(6999), ..Default::default() }),
        update_mask: Some(prost_types::FieldMask { paths: vec!["price".into()] }),
    };
    s.catalog.clone().update_product(authed(req, &admin)).await.unwrap();
    assert_eq!(s.get(&alice).await.total, usd(3 * 1499 + 6999));

    // Update, remove, clear.
    let req = authed(pb::UpdateItemRequest { product_id: mug.clone(), quantity: 5 }, &alice);
    let cart = s.cart.clone().update_item(req).await.unwrap().into_inner().cart.unwrap();
    assert_eq!(quantities(&cart)[0], ("KIT-MUG-001".into(), 5));
    let req = authed(pb::UpdateItemRequest { product_id: s.id("BOOK-RUST-001"), quantity: 5 }, &alice);
    assert_eq!(s.cart.clone().update_item(req).await.unwrap_err().code(), Code::NotFound, "not in the cart");
    let req = authed(pb::RemoveItemRequest { product_id: knife.clone() }, &alice);
    let cart = s.cart.clone().remove_item(req).await.unwrap().into_inner().cart.unwrap();
    assert_eq!(quantities(&cart), vec![("KIT-MUG-001".into(), 5)]);
    let cart =
        s.cart.clone().clear_cart(authed(pb::ClearCartRequest {}, &alice)).await.unwrap().into_inner().cart.unwrap();
    assert!(cart.lines.is_empty());
    assert!(s.get(&alice).await.lines.is_empty());

    // At most 50 distinct lines.
    let mut skus: Vec<_> = s.ids.keys().filter(|k| *k != "KIT-PAN-003").cloned().collect();
    skus.sort();
    for sku in &skus[..50] {
        s.add(&alice, &s.id(sku), 1).await.unwrap();
    }
    assert_eq!(s.add(&alice, &s.id(&skus[50]), 1).await.unwrap_err().code(), Code::FailedPrecondition);
    drop(s.env);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cart_survives_losing_redis_and_is_cleared_by_order_confirmed() {
    let s = setup().await;
    let user = uuid::Uuid::now_v7().to_string();
    let token = s.issuer.customer(&user);
    s.add(&token, &s.id("OUT-TENT-001"), 1).await.unwrap();
    s.add(&token, &s.id("OUT-LAMP-005"), 2).await.unwrap();

    let redis = Builder::from_config(Config::from_url(&redis_url()).unwrap()).build().unwrap();
    redis.init().await.unwrap();
    let key = format!("t{}:cart:{user}", s.env.id);
    assert_eq!(redis.exists::<i64, _>(&key).await.unwrap(), 1, "written through to Redis");
    assert!(redis.ttl::<i64, _>(&key).await.unwrap() > 6 * 24 * 3600, "7-day TTL");
    // A read served from Redis renews the TTL: a cart in use never ages out.
    redis.expire::<i64, _>(&key, 60, None).await.unwrap();
    let cart = s.get(&token).await;
    assert_eq!(cart.lines.len(), 2);
    assert!(redis.ttl::<i64, _>(&key).await.unwrap() > 6 * 24 * 3600, "TTL renewed by the read");
    // Lose the Redis copy (only this test's keys: Redis is shared).
    redis.del::<i64, _>(&key).await.unwrap();

    let cart = s.get(&token).await;
    assert_eq!(quantities(&cart), vec![("OUT-TENT-001".into(), 1), ("OUT-LAMP-005".into(), 2)]);
    assert_eq!(redis.exists::<i64, _>(&key).await.unwrap(), 1, "repopulated from Postgres");

    // The buyer's order of everything in it is confirmed: their cart empties.
    let confirmed = OrderConfirmed {
        order_id: uuid::Uuid::now_v7().to_string(),
        user_id: user.clone(),
        total: usd(1),
        lines: vec![line(&s.id("OUT-TENT-001"), 1), line(&s.id("OUT-LAMP-005"), 2)],
        cart_version: cart.version,
    };
    publish_event(&s.env.kafka(), "order", &confirmed).await;
    // Nobody reads the cart meanwhile: what Redis holds next is the
    // consumer's own doing. It holds the new version's place inside its
    // transaction and puts the committed cart after the commit; the offset
    // is stored after that.
    s.env.wait_consumers_caught_up(&[("cart", &[OrderConfirmed::TOPIC])], Duration::from_secs(30)).await;
    let cached: String = redis.get(&key).await.unwrap();
    let (version, json) = cached.split_once('|').expect("<version>|<json>");
    assert!(version.parse::<i64>().unwrap() > cart.version, "the emptied cart's copy is back: {cached}");
    assert_eq!(serde_json::from_str::<serde_json::Value>(json).unwrap()["lines"], serde_json::json!([]));
    assert!(s.get(&token).await.lines.is_empty(), "cleared by OrderConfirmed");
    // Postgres agrees (not just the Redis copy).
    redis.del::<i64, _>(&key).await.unwrap();
    assert!(s.get(&token).await.lines.is_empty());
    drop(s.env);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_confirmed_keeps_what_was_added_after_checkout() {
    let s = setup().await;
    let user = uuid::Uuid::now_v7().to_string();
    let token = s.issuer.customer(&user);
    // Checked out: 2 tents and a lamp. Then, while the saga ran, one more
    // tent and a mug went in.
    s.add(&token, &s.id("OUT-TENT-001"), 2).await.unwrap();
    let checked_out = s.add(&token, &s.id("OUT-LAMP-005"), 1).await.unwrap().version;
    s.add(&token, &s.id("OUT-TENT-001"), 1).await.unwrap();
    s.add(&token, &s.id("KIT-MUG-001"), 1).await.unwrap();
    let confirmed = OrderConfirmed {
        order_id: uuid::Uuid::now_v7().to_string(),
        user_id: user.clone(),
        total: usd(1),
        lines: vec![line(&s.id("OUT-TENT-001"), 2), line(&s.id("OUT-LAMP-005"), 1)],
        cart_version: checked_out,
    };
    let sent = publish_event(&s.env.kafka(), "order", &confirmed).await;
    let left = vec![("OUT-TENT-001".to_string(), 1), ("KIT-MUG-001".to_string(), 1)];
    eventually("ordered lines taken out", Duration::from_secs(30), || {
        let (s, token, left) = (&s, token.clone(), left.clone());
        async move { (quantities(&s.get(&token).await) == left).then_some(()) }
    })
    .await;

    // The same event again, as a broker redelivery: nothing more goes.
    publish_raw(&s.env.kafka(), OrderConfirmed::TOPIC, &confirmed.order_id, &sent).await;
    s.env.wait_consumers_caught_up(&[("cart", &[OrderConfirmed::TOPIC])], Duration::from_secs(30)).await;
    assert_eq!(quantities(&s.get(&token).await), left, "a redelivered OrderConfirmed changed the cart");

    // From a producer that did not carry lines yet: the old rule, the whole
    // cart goes.
    let legacy = OrderConfirmed {
        order_id: uuid::Uuid::now_v7().to_string(),
        user_id: user.clone(),
        total: usd(1),
        lines: vec![],
        cart_version: 0,
    };
    publish_event(&s.env.kafka(), "order", &legacy).await;
    eventually("legacy OrderConfirmed empties the cart", Duration::from_secs(30), || {
        let (s, token) = (&s, token.clone());
        async move { s.get(&token).await.lines.is_empty().then_some(()) }
    })
    .await;
    drop(s.env);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_order_confirmed_spares_what_was_put_back_or_set_after_checkout() {
    let s = setup().await;
    let user = uuid::Uuid::now_v7().to_string();
    let token = s.issuer.customer(&user);
    let (book, tent) = (s.id("BOOK-RUST-001"), s.id("OUT-TENT-001"));
    // Checked out a book and two tents; before the order's confirmation
    // reached the cart, the customer took the book out and put one back,
    // and set the tents to one, to buy again.
    s.add(&token, &book, 1).await.unwrap();
    let checked_out = s.add(&token, &tent, 2).await.unwrap().version;
    let remove = pb::RemoveItemRequest { product_id: book.clone() };
    s.cart.clone().remove_item(authed(remove, &token)).await.unwrap();
    s.add(&token, &book, 1).await.unwrap();
    let set = pb::UpdateItemRequest { product_id: tent.clone(), quantity: 1 };
    s.cart.clone().update_item(authed(set, &token)).await.unwrap();
    let confirmed = OrderConfirmed {
        order_id: uuid::Uuid::now_v7().to_string(),
        user_id: user.clone(),
        total: usd(1),
        lines: vec![line(&book, 1), line(&tent, 2)],
        cart_version: checked_out,
    };
    publish_event(&s.env.kafka(), "order", &confirmed).await;
    s.env.wait_consumers_caught_up(&[("cart", &[OrderConfirmed::TOPIC])], Duration::from_secs(30)).await;
    let left = [("OUT-TENT-001".to_string(), 1), ("BOOK-RUST-001".to_string(), 1)];
    assert_eq!(quantities(&s.get(&token).await), left, "what was put back or set after checkout is gone");
    drop(s.env);
}

/// A writer that puts its copy only after its commit holds the version's
/// place first: readers miss (and go to Postgres) and cannot put an older
/// copy back in between; the writer's own copy then goes in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_version_keeps_older_copies_out_until_its_own_goes_in() {
    use shopmesh_cart::cache::CartCache;
    use shopmesh_cart::domain::Cart;
    let redis = Builder::from_config(Config::from_url(&redis_url()).unwrap()).build().unwrap();
    redis.init().await.unwrap();
    let prefix = format!("t{}:", uuid::Uuid::now_v7().simple());
    let breaker = shopmesh_catalog::cache::Breaker::new(Duration::from_secs(5));
    let cache = CartCache::new(redis.clone(), &prefix, Duration::from_secs(60), breaker);
    let cart = |version| Cart { version, ..Cart::empty(chrono::Utc::now()) };

    cache.put("u1", &cart(4)).await;
    assert_eq!(cache.get("u1").await.map(|c| c.version), Some(4));
    cache.hold("u1", 5).await;
    assert_eq!(cache.get("u1").await, None, "a held place reads as a miss, not as version 4");
    cache.put("u1", &cart(4)).await; // a reader's repopulate from before the commit
    assert_eq!(cache.get("u1").await, None, "version 4 cannot come back");
    cache.put("u1", &cart(5)).await; // the writer, after its commit
    assert_eq!(cache.get("u1").await.map(|c| c.version), Some(5));
    let _: i64 = redis.del(cache.key("u1")).await.unwrap();
}
