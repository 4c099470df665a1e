//! Liveness and readiness. `/health/live` answers while the process runs;
//! `/health/ready` (and grpc.health.v1) only while every dependency the
//! service needs (Postgres, Redis, Kafka) answers.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use futures::future::join_all;

/// One dependency that must answer for the service to be ready.
#[async_trait::async_trait]
pub trait ReadinessCheck: Send + Sync {
    fn name(&self) -> &'static str;
    async fn check(&self) -> Result<(), String>;
}

#[derive(Clone, Default)]
pub struct Readiness {
    checks: Vec<Arc<dyn ReadinessCheck>>,
}

const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

impl Readiness {
    pub fn add(&mut self, check: Arc<dyn ReadinessCheck>) {
        self.checks.push(check);
    }

    /// Runs every check concurrently; `Err` lists the failures.
    pub async fn evaluate(&self) -> Result<Vec<(&'static str, String)>, Vec<(&'static str, String)>> {
        let results = join_all(self.checks.iter().map(|c| async move {
            let outcome = match tokio::time::timeout(CHECK_TIMEOUT, c.check()).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e),
                Err(_) => Err("timed out".to_owned()),
            };
            (c.name(), outcome)
        }))
        .await;
        let failed = results.iter().any(|(_, r)| r.is_err());
        let report = results.into_iter().map(|(n, r)| (n, r.err().unwrap_or_else(|| "ok".to_owned()))).collect();
        if failed { Err(report) } else { Ok(report) }
    }
}

/// `/health/live`, `/health/ready`, `/metrics`.
pub fn ops_router(readiness: Readiness) -> axum::Router {
    axum::Router::new()
        .route("/health/live", get(|| async { Json(serde_json::json!({"status": "live"})) }))
        .route("/health/ready", get(ready))
        .route("/metrics", get(|| async { crate::metrics::render() }))
        .with_state(readiness)
}

async fn ready(State(readiness): State<Readiness>) -> impl IntoResponse {
    let (status, word, report) = match readiness.evaluate().await {
        Ok(r) => (StatusCode::OK, "ready", r),
        Err(r) => (StatusCode::SERVICE_UNAVAILABLE, "not_ready", r),
    };
    let checks: serde_json::Map<String, serde_json::Value> =
        report.into_iter().map(|(n, s)| (n.to_owned(), serde_json::Value::String(s))).collect();
    (status, Json(serde_json::json!({"status": word, "checks": checks})))
}

pub struct PostgresCheck(pub sqlx::PgPool);

#[async_trait::async_trait]
impl ReadinessCheck for PostgresCheck {
    fn name(&self) -> &'static str {
        "postgres"
    }
    async fn check(&self) -> Result<(), String> {
        sqlx::query("SELECT 1").execute(&self.0).await.map(|_| ()).map_err(|e| e.to_string())
    }
}

pub struct RedisCheck(pub fred::clients::Client);

#[async_trait::async_trait]
impl ReadinessCheck for RedisCheck {
    fn name(&self) -> &'static str {
        "redis"
    }
    async fn check(&self) -> Result<(), String> {
        use fred::interfaces::ClientLike;
        self.0.ping::<String>(None).await.map(|_| ()).map_err(|e| e.to_string())
    }
}

pub struct KafkaCheck(pub crate::kafka::Kafka);

#[async_trait::async_trait]
impl ReadinessCheck for KafkaCheck {
    fn name(&self) -> &'static str {
        "kafka"
    }
    async fn check(&self) -> Result<(), String> {
        self.0.check().await
    }
}
