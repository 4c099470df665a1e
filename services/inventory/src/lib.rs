//! The inventory service: stock per product and all-or-nothing reservations
//! keyed by order id, reserved/released/committed by the checkout saga's
//! events and by admins over gRPC. Wiring only.
//!
//! Config (`SHOPMESH_INVENTORY_<KEY>`): `DEFAULT_LOW_STOCK_THRESHOLD` (5),
//! the threshold of products first stocked without one.

use std::sync::Arc;

use anyhow::Context as _;
use futures::future::BoxFuture;
use shopmesh_platform::config::Needs;
use shopmesh_platform::consumer::EventConsumer;
use shopmesh_platform::kafka::{Pace, topics};
use shopmesh_platform::runtime::{ServiceDef, ServiceRuntime, ServiceSpec};
use tonic::service::Routes;

pub mod domain;
pub mod events;
pub mod grpc;
pub mod store;

pub mod pb {
    tonic::include_proto!("shopmesh.inventory.v1");
    pub const DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("descriptor");
}

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();

pub static SERVICE: ServiceDef = ServiceDef {
    spec: ServiceSpec {
        name: "inventory",
        needs: Needs { postgres: true, redis: false, kafka: true },
        grpc_services: &["shopmesh.inventory.v1.InventoryService"],
        descriptor_sets: &[pb::DESCRIPTOR_SET],
        migrator: Some(&MIGRATOR),
        topics: &[topics::ORDER, topics::INVENTORY, topics::PAYMENT],
        db_settings: &[],
    },
    build: build_boxed,
};

fn build_boxed(rt: &mut ServiceRuntime) -> BoxFuture<'_, anyhow::Result<Routes>> {
    Box::pin(build(rt))
}

async fn build(rt: &mut ServiceRuntime) -> anyhow::Result<Routes> {
    let threshold = rt.config.source.parse_or("DEFAULT_LOW_STOCK_THRESHOLD", domain::DEFAULT_LOW_STOCK_THRESHOLD)?;
    let threshold = domain::Count::parse("DEFAULT_LOW_STOCK_THRESHOLD", threshold)
        .context("invalid SHOPMESH_INVENTORY_DEFAULT_LOW_STOCK_THRESHOLD")?
        .get();
    let store = store::Store::new(rt.pool().clone(), rt.outbox().clone(), threshold);
    rt.spawn_consumer(EventConsumer {
        name: events::CONSUMER.into(),
        topics: vec![topics::ORDER, topics::PAYMENT],
        handler: Arc::new(events::SagaHandler { store: store.clone() }),
        pace: Pace::Prompt,
    });
    Ok(Routes::new(pb::inventory_service_server::InventoryServiceServer::new(grpc::InventoryApi { store })))
}
