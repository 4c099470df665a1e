//! The notification service: records a message for the customer when an
//! order is confirmed, cancelled or refunded, and lists them. Wiring only.

use std::sync::Arc;

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
    tonic::include_proto!("shopmesh.notification.v1");
    pub const DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("descriptor");
}

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();

pub static SERVICE: ServiceDef = ServiceDef {
    spec: ServiceSpec {
        name: "notification",
        needs: Needs { postgres: true, redis: false, kafka: true },
        grpc_services: &["shopmesh.notification.v1.NotificationService"],
        descriptor_sets: &[pb::DESCRIPTOR_SET],
        migrator: Some(&MIGRATOR),
        topics: &[topics::ORDER, topics::PAYMENT],
        db_settings: &[],
    },
    build: build_boxed,
};

fn build_boxed(rt: &mut ServiceRuntime) -> BoxFuture<'_, anyhow::Result<Routes>> {
    Box::pin(build(rt))
}

async fn build(rt: &mut ServiceRuntime) -> anyhow::Result<Routes> {
    rt.spawn_consumer(EventConsumer {
        name: events::CONSUMER.into(),
        topics: vec![topics::ORDER, topics::PAYMENT],
        handler: Arc::new(events::Notifier),
        pace: Pace::Relaxed,
    });
    let api = grpc::NotificationApi { pool: rt.pool().clone() };
    Ok(Routes::new(pb::notification_service_server::NotificationServiceServer::new(api)))
}
