//! The Redis copy against the real Redis: an older version never replaces
//! a newer one, and reads renew the TTL.

use std::time::Duration;

use fred::prelude::*;
use shopmesh_cart::cache::CartCache;
use shopmesh_cart::domain::{Cart, Quantity};
use shopmesh_catalog::cache::Breaker;

async fn redis() -> Client {
    let url = shopmesh_platform::testing::redis_url();
    let client = Builder::from_config(Config::from_url(&url).unwrap()).build().unwrap();
    client.init().await.unwrap();
    client
}

fn cart(version: i64, quantity: i32) -> Cart {
    let now = chrono::Utc::now();
    let mut cart = Cart::empty(now);
    cart.add(uuid::Uuid::now_v7(), Quantity::parse("quantity", quantity).unwrap(), now).unwrap();
    cart.version = version;
    cart
}

#[tokio::test]
async fn older_versions_never_replace_newer_ones() {
    let redis = redis().await;
    let prefix = format!("t{}:", uuid::Uuid::now_v7().simple());
    let cache = CartCache::new(redis.clone(), &prefix, Duration::from_secs(600), Breaker::new(Duration::from_secs(1)));
    let user = "user-1";

    assert_eq!(cache.get(user).await, None);
    let v2 = cart(2, 2);
    cache.put(user, &v2).await;
    cache.put(user, &cart(1, 1)).await;
    assert_eq!(cache.get(user).await, Some(v2), "a slow writer's older copy is refused");
    let v3 = cart(3, 3);
    cache.put(user, &v3).await;
    assert_eq!(cache.get(user).await, Some(v3.clone()));
    cache.put(user, &v3).await;
    assert_eq!(cache.get(user).await, Some(v3), "same version rewrites idempotently");

    let key = cache.key(user);
    assert!(key.starts_with(&prefix));
    redis.expire::<(), _>(&key, 5, None).await.unwrap();
    cache.get(user).await.unwrap();
    assert!(redis.ttl::<i64, _>(&key).await.unwrap() > 500, "reading renews the TTL");
    redis.del::<i64, _>(&key).await.unwrap();
}
