//! Order service: checkout, order queries and cancellation, and the order's
//! part of the choreographed checkout saga.

pub mod backlog;
pub mod domain;
pub mod events;
mod grpc;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use shopmesh_platform::config::Needs;
use shopmesh_platform::consumer::EventConsumer;
use shopmesh_platform::grpc::{TracePropagation, channel};
use shopmesh_platform::kafka::{Pace, topics};
use shopmesh_platform::runtime::{ServiceDef, ServiceRuntime, ServiceSpec};
use tonic::service::Routes;

pub mod pb {
    tonic::include_proto!("shopmesh.order.v1");
    pub const DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("descriptor");
}

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();

pub static SERVICE: ServiceDef = ServiceDef {
    spec: ServiceSpec {
        name: "order",
        needs: Needs { postgres: true, redis: false, kafka: true },
        grpc_services: &["shopmesh.order.v1.OrderService"],
        descriptor_sets: &[pb::DESCRIPTOR_SET],
        migrator: Some(&MIGRATOR),
        topics: &[topics::ORDER, topics::INVENTORY, topics::PAYMENT],
        // Orders are partitioned by month but looked up by id, so a custom
        // plan prunes nothing and re-plans every partition on each call.
        db_settings: &[("plan_cache_mode", "force_generic_plan")],
    },
    build: build_boxed,
};

fn build_boxed(rt: &mut ServiceRuntime) -> BoxFuture<'_, anyhow::Result<Routes>> {
    Box::pin(build(rt))
}

async fn build(rt: &mut ServiceRuntime) -> anyhow::Result<Routes> {
    let cfg = &rt.config.source;
    let sweep = events::SweepConfig {
        // Too short cancels orders before they can be paid; too long holds
        // their stock for days.
        pending_timeout: cfg.millis_within(
            "PENDING_TIMEOUT_MS",
            Duration::from_secs(60),
            Duration::from_secs(1)..=Duration::from_secs(24 * 3600),
        )?,
        interval: cfg.millis_within(
            "SWEEP_INTERVAL_MS",
            Duration::from_secs(1),
            Duration::from_millis(10)..=Duration::from_secs(60),
        )?,
    };
    // Late: pending for a while no healthy saga takes. At most half the
    // timeout, so what is admitted keeps time to settle before it. 0 as the
    // limit turns admission control off.
    let most_late = sweep.pending_timeout / 2;
    let backlog = backlog::Backlog::new(
        cfg.parse_or("CHECKOUT_BACKLOG_LIMIT", 50u32)?,
        cfg.millis_within(
            "CHECKOUT_BACKLOG_AGE_MS",
            Duration::from_secs(10).min(most_late),
            Duration::ZERO..=most_late,
        )?,
    );
    let cart = channel(&cfg.require("CART_URL")?)?;
    let catalog = channel(&cfg.require("CATALOG_URL")?)?;
    let users = channel(&cfg.require("USER_URL")?)?;
    store::ensure_partitions(rt.pool(), chrono::Utc::now(), 3).await?;

    let outbox = rt.outbox().clone();
    rt.spawn_consumer(EventConsumer {
        name: "order".into(),
        topics: vec![topics::INVENTORY, topics::PAYMENT],
        handler: Arc::new(events::SagaHandler { outbox: outbox.clone() }),
        pace: Pace::Prompt,
    });
    let (pool, stop) = (rt.pool().clone(), rt.shutdown().clone());
    rt.spawn_task(events::run_sweeper(pool, outbox.clone(), sweep, stop));
    let (pool, stop) = (rt.pool().clone(), rt.shutdown().clone());
    rt.spawn_task(backlog.clone().run_counter(pool, stop));

    let api = grpc::OrderApi {
        pool: rt.pool().clone(),
        outbox,
        backlog,
        cart: shopmesh_cart::pb::cart_service_client::CartServiceClient::with_interceptor(cart, TracePropagation),
        catalog: shopmesh_catalog::pb::catalog_service_client::CatalogServiceClient::with_interceptor(
            catalog,
            TracePropagation,
        ),
        users: shopmesh_user::pb::user_service_client::UserServiceClient::with_interceptor(users, TracePropagation),
    };
    Ok(Routes::new(pb::order_service_server::OrderServiceServer::new(api)))
}
