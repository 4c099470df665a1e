//! The shared runtime of every shopmesh service, written once: configuration,
//! telemetry, Postgres/Redis/Kafka wiring, the transactional outbox and the
//! inbox, health and metrics endpoints, and graceful shutdown.
//!
//! A service's `serve` is a few lines: build its tonic routes, hand them to
//! [`runtime::ServiceRuntime`], register its consumers, and serve.

pub mod address;
pub mod auth;
pub mod config;
pub mod consumer;
pub mod db;
pub mod dlq;
pub mod events;
pub mod grpc;
pub mod health;
pub mod inbox;
pub mod kafka;
pub mod metrics;
pub mod money;
pub mod outbox;
pub mod paging;
pub mod redis;
pub mod runtime;
pub mod shutdown;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;

/// Generated protobuf types shared by every service.
pub mod pb {
    pub mod common {
        pub mod v1 {
            tonic::include_proto!("shopmesh.common.v1");
        }
    }
    pub mod events {
        pub mod v1 {
            tonic::include_proto!("shopmesh.events.v1");
        }
    }
    /// Encoded descriptor set of the shared packages (for reflection).
    pub const DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("descriptor");
}
