//! The catalog service: products with public, Redis-cached reads and
//! full-text search, admin-only writes that publish product-events through
//! the outbox. Wiring only.

use std::time::Duration;

use futures::future::BoxFuture;
use shopmesh_platform::config::Needs;
use shopmesh_platform::kafka::topics;
use shopmesh_platform::runtime::{ServiceDef, ServiceRuntime, ServiceSpec};
use tonic::service::Routes;

pub mod cache;
pub mod domain;
pub mod events;
pub mod grpc;
pub mod seed;
pub mod store;

pub use seed::{SeedReport, demo_stock, seed_demo_catalog};

pub mod pb {
    tonic::include_proto!("shopmesh.catalog.v1");
    pub const DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("descriptor");
}

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();

pub static SERVICE: ServiceDef = ServiceDef {
    spec: ServiceSpec {
        name: "catalog",
        needs: Needs { postgres: true, redis: true, kafka: true },
        grpc_services: &["shopmesh.catalog.v1.CatalogService"],
        descriptor_sets: &[pb::DESCRIPTOR_SET],
        migrator: Some(&MIGRATOR),
        topics: &[topics::PRODUCT],
        db_settings: &[],
    },
    build: build_boxed,
};

fn build_boxed(rt: &mut ServiceRuntime) -> BoxFuture<'_, anyhow::Result<Routes>> {
    Box::pin(build(rt))
}

async fn build(rt: &mut ServiceRuntime) -> anyhow::Result<Routes> {
    let source = &rt.config.source;
    let product_ttl = source.millis_or("CACHE_PRODUCT_TTL_MS", Duration::from_secs(3600))?;
    let list_ttl = source.millis_or("CACHE_LIST_TTL_MS", Duration::from_secs(900))?;
    let prefix = rt.config.redis.as_ref().map(|r| r.key_prefix.clone()).unwrap_or_default();
    let breaker = cache::Breaker::new(source.millis_or("CACHE_COOL_OFF_MS", Duration::from_secs(5))?);
    let cache = cache::Cache::new(rt.redis().clone(), &prefix, product_ttl, list_ttl, breaker);

    let invalidator = events::CacheInvalidator {
        kafka: rt.kafka().clone(),
        cache: cache.clone(),
        shutdown: rt.shutdown().clone(),
        horizon: product_ttl.max(list_ttl) + Duration::from_secs(300),
    };
    rt.spawn_task(invalidator.run());

    let api = grpc::CatalogApi { pool: rt.pool().clone(), outbox: rt.outbox().clone(), cache };
    Ok(Routes::new(pb::catalog_service_server::CatalogServiceServer::new(api)))
}
