//! The user service: customer profiles (created from UserRegistered events)
//! and address books, each visible only to its owner. Wiring only.

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
    tonic::include_proto!("shopmesh.user.v1");
    pub const DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("descriptor");
}

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();

pub static SERVICE: ServiceDef = ServiceDef {
    spec: ServiceSpec {
        name: "user",
        // Redis: the token verifier checks the logout denylist.
        needs: Needs { postgres: true, redis: true, kafka: true },
        grpc_services: &["shopmesh.user.v1.UserService"],
        descriptor_sets: &[pb::DESCRIPTOR_SET],
        migrator: Some(&MIGRATOR),
        topics: &[topics::USER],
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
        topics: vec![topics::USER],
        handler: Arc::new(events::ProfileCreator),
        pace: Pace::Prompt,
    });
    let api = grpc::UserApi { pool: rt.pool().clone() };
    Ok(Routes::new(pb::user_service_server::UserServiceServer::new(api)))
}
