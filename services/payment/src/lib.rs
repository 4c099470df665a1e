//! The payment service: charges an order when its stock is reserved, refunds
//! it when the order is cancelled, and lets customers see their payments.
//! Wiring only.

use std::sync::Arc;
use std::time::Duration;

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
pub mod provider;
pub mod store;

pub mod pb {
    tonic::include_proto!("shopmesh.payment.v1");
    pub const DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("descriptor");
}

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();

pub static SERVICE: ServiceDef = ServiceDef {
    spec: ServiceSpec {
        name: "payment",
        needs: Needs { postgres: true, redis: false, kafka: true },
        grpc_services: &["shopmesh.payment.v1.PaymentService"],
        descriptor_sets: &[pb::DESCRIPTOR_SET],
        migrator: Some(&MIGRATOR),
        topics: &[topics::INVENTORY, topics::ORDER, topics::PAYMENT],
        db_settings: &[],
    },
    build: build_boxed,
};

fn build_boxed(rt: &mut ServiceRuntime) -> BoxFuture<'_, anyhow::Result<Routes>> {
    Box::pin(build(rt))
}

async fn build(rt: &mut ServiceRuntime) -> anyhow::Result<Routes> {
    let defaults = domain::BreakerConfig::default();
    let breaker = domain::BreakerConfig {
        failure_threshold: rt.config.source.parse_or("BREAKER_FAILURES", defaults.failure_threshold)?,
        open_for: rt.config.source.millis_or("BREAKER_OPEN_MS", defaults.open_for)?,
        success_threshold: rt.config.source.parse_or("BREAKER_SUCCESSES", defaults.success_threshold)?,
    };
    let refund_retry = rt.config.source.millis_or("REFUND_RETRY_MS", Duration::from_secs(2))?;
    let database_url = rt.config.database_url.clone().context("payment needs DATABASE_URL")?;
    let journal_pool = shopmesh_platform::db::connect_with(&database_url, "payment-journal", 2, &[]).await?;
    // The test providers' books, on connections of their own as a real
    // provider's would be. A simulator's books need not wait for the disk:
    // asynchronous commit keeps them visible at once, and only a crash of
    // Postgres itself could lose their last moments.
    let books = shopmesh_platform::db::connect_with(
        &database_url,
        "payment-test-provider",
        2,
        &[("synchronous_commit", "off")],
    )
    .await?;
    let router = Arc::new(provider::Router::test_mode(breaker, Some(books)));
    rt.spawn_consumer(EventConsumer {
        name: events::CONSUMER.into(),
        topics: vec![topics::INVENTORY, topics::ORDER],
        handler: Arc::new(events::SagaHandler {
            router: router.clone(),
            outbox: rt.outbox().clone(),
            journal_pool,
            refund_retry,
        }),
        pace: Pace::Prompt,
    });
    let retrier = events::RefundRetrier {
        pool: rt.pool().clone(),
        router,
        outbox: rt.outbox().clone(),
        first_retry: refund_retry,
    };
    let stop = rt.shutdown().clone();
    rt.spawn_task(events::run_refund_retrier(retrier, refund_retry, stop));
    let api = grpc::PaymentApi { pool: rt.pool().clone() };
    Ok(Routes::new(pb::payment_service_server::PaymentServiceServer::new(api)))
}
