//! Rate limiting against the real Redis at 127.0.0.1:6379; every test uses
//! its own key prefix so runs never share buckets.

mod support;

use std::sync::Arc;
use std::time::Duration;

use fred::prelude::*;
use http::StatusCode;
use shopmesh_gateway::ratelimit::{Bucket, Quota, RateLimitConfig, RateLimiter};
use shopmesh_gateway::{Gateway, GatewayConfig};
use support::*;

async fn redis() -> Client {
    let client = Builder::from_config(Config::from_url("redis://127.0.0.1:6379").unwrap()).build().unwrap();
    client.init().await.expect("Redis at 127.0.0.1:6379");
    client
}

fn config(login: Quota, anonymous: Quota) -> RateLimitConfig {
    RateLimitConfig {
        anonymous,
        login,
        key_prefix: format!("test:gw:{}", uuid::Uuid::now_v7()),
        redis_timeout: Duration::from_secs(1),
        ..RateLimitConfig::default()
    }
}

#[tokio::test]
async fn redis_bucket_trips_at_the_limit_and_refills() {
    let cfg = config(Quota::new(10, Duration::from_secs(60)), Quota::new(3, Duration::from_millis(600)));
    let limiter = RateLimiter::new(cfg, Some(redis().await));
    let mut remaining = Vec::new();
    for _ in 0..3 {
        let d = limiter.check(Bucket::Anonymous, "1.2.3.4").await;
        assert!(d.allowed);
        remaining.push(d.remaining);
    }
    assert_eq!(remaining, vec![2, 1, 0]);
    let d = limiter.check(Bucket::Anonymous, "1.2.3.4").await;
    assert!(!d.allowed);
    assert!(d.retry_after > Duration::ZERO && d.retry_after <= Duration::from_millis(200));
    // Another client has its own bucket.
    assert!(limiter.check(Bucket::Anonymous, "5.6.7.8").await.allowed);
    // One emission interval (200 ms) later there is room again.
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(limiter.check(Bucket::Anonymous, "1.2.3.4").await.allowed);
}

#[tokio::test]
async fn replicas_share_the_bucket() {
    let cfg = config(Quota::new(10, Duration::from_secs(60)), Quota::new(2, Duration::from_secs(60)));
    let a = RateLimiter::new(cfg.clone(), Some(redis().await));
    let b = RateLimiter::new(cfg, Some(redis().await));
    assert!(a.check(Bucket::Anonymous, "ip").await.allowed);
    assert!(b.check(Bucket::Anonymous, "ip").await.allowed);
    assert!(!a.check(Bucket::Anonymous, "ip").await.allowed);
}

#[tokio::test]
async fn flushed_script_cache_is_reloaded() {
    let cfg = config(Quota::new(10, Duration::from_secs(60)), Quota::new(5, Duration::from_secs(60)));
    let client = redis().await;
    let limiter = RateLimiter::new(cfg, Some(client.clone()));
    assert_eq!(limiter.check(Bucket::Anonymous, "ip").await.remaining, 4);
    client.script_flush(false).await.unwrap();
    let d = limiter.check(Bucket::Anonymous, "ip").await;
    assert!(d.allowed);
    assert_eq!(d.remaining, 3, "the Redis state survived, only the script was reloaded");
}

#[tokio::test]
async fn redis_down_falls_back_to_local_limits() {
    // Nothing listens on port 1; the client is never connected.
    let client = Builder::from_config(Config::from_url("redis://127.0.0.1:1").unwrap()).build().unwrap();
    let mut cfg = config(Quota::new(10, Duration::from_secs(60)), Quota::new(2, Duration::from_secs(60)));
    cfg.redis_timeout = Duration::from_millis(50);
    let limiter = RateLimiter::new(cfg, Some(client));
    assert!(limiter.check(Bucket::Anonymous, "ip").await.allowed);
    assert!(limiter.check(Bucket::Anonymous, "ip").await.allowed);
    assert!(!limiter.check(Bucket::Anonymous, "ip").await.allowed, "never fails open");
}

#[tokio::test]
async fn login_route_has_a_stricter_bucket_with_headers() {
    let cfg = GatewayConfig {
        rate_limit: config(Quota::new(2, Duration::from_secs(60)), Quota::new(100, Duration::from_secs(60))),
        ..GatewayConfig::default()
    };
    let router = Gateway::new(cfg, Some(redis().await), Arc::new(StaticAuth)).unwrap().router();
    let login = || with_body("POST", "/v1/auth/login", r#"{"email":"a@b.c","password":"x"}"#);
    // No auth upstream is configured: allowed requests answer 503, which
    // still carries the rate-limit headers.
    let (status, headers, _) = call(&router, login()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers["ratelimit-limit"], "2");
    assert_eq!(headers["ratelimit-remaining"], "1");
    assert!(headers.contains_key("ratelimit-reset"));
    call(&router, login()).await;
    let (status, headers, body) = call(&router, login()).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(body["code"], 8);
    assert_eq!(headers["ratelimit-remaining"], "0");
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=30).contains(&retry), "{retry}");

    // Other routes use the general per-IP bucket.
    let (status, headers, _) = call(&router, get("/v1/products")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers["ratelimit-limit"], "100");
}

#[tokio::test]
async fn signing_up_has_its_own_strict_bucket_per_ip() {
    let mut rl = config(Quota::new(5, Duration::from_secs(60)), Quota::new(100, Duration::from_secs(60)));
    rl.signup = Quota::new(2, Duration::from_secs(600));
    let cfg = GatewayConfig { rate_limit: rl, ..GatewayConfig::default() };
    let router = Gateway::new(cfg, Some(redis().await), Arc::new(StaticAuth)).unwrap().router();
    let register = || with_body("POST", "/v1/auth/register", r#"{"email":"a@b.c","password":"x","name":"A"}"#);
    for remaining in ["1", "0"] {
        let (status, headers, _) = call(&router, register()).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "allowed (no auth upstream here)");
        assert_eq!(
            (headers["ratelimit-limit"].to_str().unwrap(), headers["ratelimit-remaining"].to_str().unwrap()),
            ("2", remaining)
        );
    }
    let (status, _, body) = call(&router, register()).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(body["code"], 8);
    // Logging in and browsing draw on their own buckets.
    let (status, headers, _) =
        call(&router, with_body("POST", "/v1/auth/login", r#"{"email":"a@b.c","password":"x"}"#)).await;
    assert_eq!((status, headers["ratelimit-limit"].to_str().unwrap()), (StatusCode::SERVICE_UNAVAILABLE, "5"));
    let (status, headers, _) = call(&router, get("/v1/products")).await;
    assert_eq!((status, headers["ratelimit-limit"].to_str().unwrap()), (StatusCode::SERVICE_UNAVAILABLE, "100"));
}

#[tokio::test]
async fn authenticated_users_are_limited_per_user() {
    let mut cfg = GatewayConfig::default();
    let mut rl = config(Quota::new(10, Duration::from_secs(60)), Quota::new(1, Duration::from_secs(60)));
    rl.authenticated = Quota::new(3, Duration::from_secs(60));
    cfg.rate_limit = rl;
    let router = Gateway::new(cfg, Some(redis().await), Arc::new(StaticAuth)).unwrap().router();
    let authed = || {
        let mut r = get("/v1/orders");
        r.headers_mut().insert("authorization", format!("Bearer {GOOD_TOKEN}").parse().unwrap());
        r
    };
    let (_, headers, _) = call(&router, authed()).await;
    assert_eq!(headers["ratelimit-limit"], "3");
    call(&router, authed()).await;
    call(&router, authed()).await;
    assert_eq!(call(&router, authed()).await.0, StatusCode::TOO_MANY_REQUESTS);
    // Anonymous traffic from the same IP is counted separately.
    let (status, headers, _) = call(&router, get("/v1/products")).await;
    assert_ne!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(headers["ratelimit-limit"], "1");
}
