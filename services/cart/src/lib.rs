//! The cart service: each user's cart, written through Redis to Postgres
//! (the source of truth), priced from the catalog on every read, emptied
//! when their order is confirmed. Wiring only.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures::future::BoxFuture;
use shopmesh_catalog::cache::Breaker;
use shopmesh_platform::config::Needs;
use shopmesh_platform::consumer::EventConsumer;
use shopmesh_platform::grpc::{TracePropagation, channel};
use shopmesh_platform::kafka::{Pace, topics};
use shopmesh_platform::money::Currency;
use shopmesh_platform::runtime::{ServiceDef, ServiceRuntime, ServiceSpec};
use tonic::service::Routes;

pub mod cache;
pub mod domain;
pub mod events;
pub mod grpc;
pub mod store;

pub mod pb {
    tonic::include_proto!("shopmesh.cart.v1");
    pub const DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("descriptor");
}

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();

pub static SERVICE: ServiceDef = ServiceDef {
    spec: ServiceSpec {
        name: "cart",
        needs: Needs { postgres: true, redis: true, kafka: true },
        grpc_services: &["shopmesh.cart.v1.CartService"],
        descriptor_sets: &[pb::DESCRIPTOR_SET],
        migrator: Some(&MIGRATOR),
        topics: &[topics::ORDER],
        db_settings: &[],
    },
    build: build_boxed,
};

fn build_boxed(rt: &mut ServiceRuntime) -> BoxFuture<'_, anyhow::Result<Routes>> {
    Box::pin(build(rt))
}

async fn build(rt: &mut ServiceRuntime) -> anyhow::Result<Routes> {
    let source = &rt.config.source;
    let catalog_url = source.require("CATALOG_URL")?;
    let ttl = source.millis_or("CART_TTL_MS", Duration::from_secs(7 * 24 * 3600))?;
    let currency = source.get("DEFAULT_CURRENCY").unwrap_or_else(|| "USD".into());
    let default_currency =
        Currency::parse(&currency).map_err(|e| anyhow::anyhow!("cart config DEFAULT_CURRENCY: {e}"))?;
    let catalog = shopmesh_catalog::pb::catalog_service_client::CatalogServiceClient::with_interceptor(
        channel(&catalog_url).with_context(|| format!("CATALOG_URL {catalog_url:?}"))?,
        TracePropagation,
    );

    let prefix = rt.config.redis.as_ref().map(|r| r.key_prefix.clone()).unwrap_or_default();
    let breaker = Breaker::new(source.millis_or("CACHE_COOL_OFF_MS", Duration::from_secs(5))?);
    let cache = cache::CartCache::new(rt.redis().clone(), &prefix, ttl, breaker);
    rt.spawn_task(cache.clone().repair(rt.pool().clone(), rt.shutdown().clone()));
    rt.spawn_consumer(EventConsumer {
        name: events::CONSUMER.into(),
        topics: vec![topics::ORDER],
        handler: Arc::new(events::CheckoutClearer::new(cache.clone())),
        // Prompt: a customer who has just bought expects those lines gone.
        pace: Pace::Prompt,
    });
    let api = grpc::CartApi { pool: rt.pool().clone(), cache, catalog, default_currency };
    Ok(Routes::new(pb::cart_service_server::CartServiceServer::new(api)))
}
