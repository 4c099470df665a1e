//! `ServiceRuntime`: what every service gets in one call — listeners,
//! migrated Postgres pool, Redis, Kafka with topics, token verifier, outbox
//! relay, consumers, grpc.health.v1, reflection (v1 and v1alpha), the ops
//! HTTP endpoints, and a graceful drain on shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tonic::service::Routes;

use crate::auth::{AuthLayer, HttpJwks, KeyProvider, TokenVerifier};
use crate::config::{Needs, ServiceConfig};
use crate::consumer::EventConsumer;
use crate::health::{KafkaCheck, PostgresCheck, Readiness, RedisCheck};
use crate::kafka::Kafka;
use crate::outbox::{Outbox, OutboxRelay, RelayConfig};
use crate::shutdown::Shutdown;

/// What a service is, statically.
pub struct ServiceSpec {
    /// Short name: "catalog". Scopes config (`SHOPMESH_CATALOG_*`) and the outbox source.
    pub name: &'static str,
    pub needs: Needs,
    /// Fully-qualified proto services it serves (reported by grpc.health.v1).
    pub grpc_services: &'static [&'static str],
    /// Encoded descriptor sets served by reflection.
    pub descriptor_sets: &'static [&'static [u8]],
    pub migrator: Option<&'static Migrator>,
    /// Logical topics it publishes or consumes (created if missing).
    pub topics: &'static [&'static str],
    /// Postgres settings for every connection of its pool, as (name, value).
    pub db_settings: &'static [(&'static str, &'static str)],
}

/// Builds a service's gRPC routes (and registers its consumers/tasks) on a started runtime.
pub type BuildFn = for<'a> fn(&'a mut ServiceRuntime) -> BoxFuture<'a, anyhow::Result<Routes>>;

/// A service as the `shopmesh` binary and the test harness see it.
pub struct ServiceDef {
    pub spec: ServiceSpec,
    pub build: BuildFn,
}

pub struct ServiceRuntime {
    pub spec: &'static ServiceSpec,
    pub config: ServiceConfig,
    db: Option<PgPool>,
    redis: Option<fred::clients::Client>,
    kafka: Option<Kafka>,
    verifier: Option<Arc<TokenVerifier>>,
    outbox: Outbox,
    shutdown: Shutdown,
    tasks: JoinSet<()>,
    grpc_listener: TcpListener,
    http_listener: TcpListener,
    readiness: Readiness,
    extra_http: axum::Router,
    /// Whether the inbox pruner runs (started with the first consumer).
    inbox_pruned: bool,
}

/// A service started in the background (dev mode and tests).
pub struct Launched {
    pub name: &'static str,
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl ServiceRuntime {
    /// Binds listeners and connects everything the spec needs. Fails with a
    /// clear error if a dependency is misconfigured or a migration fails.
    pub async fn start(spec: &'static ServiceSpec, config: ServiceConfig, shutdown: Shutdown) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let name = spec.name;
        let grpc_listener = TcpListener::bind(config.grpc_addr)
            .await
            .with_context(|| format!("{name}: binding gRPC address {}", config.grpc_addr))?;
        let http_listener = TcpListener::bind(config.http_addr)
            .await
            .with_context(|| format!("{name}: binding HTTP address {}", config.http_addr))?;
        let mut readiness = Readiness::default();

        let db = match &config.database_url {
            Some(url) if spec.needs.postgres => {
                let pool = crate::db::connect_with(url, name, config.db_max_connections, spec.db_settings)
                    .await
                    .with_context(|| format!("{name}: connecting to postgres"))?;
                crate::db::migrate(&pool, spec.migrator)
                    .await
                    .with_context(|| format!("{name}: running migrations"))?;
                readiness.add(Arc::new(PostgresCheck(pool.clone())));
                Some(pool)
            }
            _ => None,
        };
        let redis = match &config.redis {
            Some(cfg) => {
                let client = crate::redis::connect(cfg).await.with_context(|| format!("{name}: redis config"))?;
                readiness.add(Arc::new(RedisCheck(client.clone())));
                Some(client)
            }
            None => None,
        };
        let kafka = match &config.kafka {
            Some(cfg) => {
                let kafka = Kafka::connect(cfg.clone(), name).with_context(|| format!("{name}: kafka config"))?;
                kafka.ensure_topics(spec.topics).await.with_context(|| format!("{name}: creating topics"))?;
                readiness.add(Arc::new(KafkaCheck(kafka.clone())));
                Some(kafka)
            }
            None => None,
        };
        let verifier = config.jwks_url.as_deref().map(|url| {
            Arc::new(TokenVerifier::new(
                Arc::new(HttpJwks::new(url)),
                &config.jwt_issuer,
                &config.jwt_audience,
                redis.clone(),
                config.redis.as_ref().map(|r| r.key_prefix.as_str()).unwrap_or(""),
            ))
        });
        crate::metrics::install();
        let mut runtime = Self {
            spec,
            outbox: Outbox::new(name),
            config,
            db,
            redis,
            kafka,
            verifier,
            shutdown,
            tasks: JoinSet::new(),
            grpc_listener,
            http_listener,
            readiness,
            extra_http: axum::Router::new(),
            inbox_pruned: false,
        };
        if let (Some(pool), Some(kafka)) = (runtime.db.clone(), runtime.kafka.clone()) {
            let relay_config = RelayConfig { max_backoff: kafka.config.outbox_max_backoff, ..RelayConfig::default() };
            let relay = OutboxRelay::new(pool, kafka, &runtime.outbox, relay_config);
            let stop = runtime.shutdown.clone();
            runtime.tasks.spawn(relay.run(stop));
        }
        Ok(runtime)
    }

    pub fn pool(&self) -> &PgPool {
        self.db.as_ref().expect("service spec declares it needs postgres")
    }

    pub fn redis(&self) -> &fred::clients::Client {
        self.redis.as_ref().expect("service spec declares it needs redis")
    }

    pub fn kafka(&self) -> &Kafka {
        self.kafka.as_ref().expect("service spec declares it needs kafka")
    }

    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    pub fn shutdown(&self) -> &Shutdown {
        &self.shutdown
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_listener.local_addr().expect("bound listener")
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_listener.local_addr().expect("bound listener")
    }

    /// The verifier requests are checked with, if one is configured.
    pub fn verifier(&self) -> Option<Arc<TokenVerifier>> {
        self.verifier.clone()
    }

    /// Replaces where verification keys come from (the auth service verifies
    /// with its own key store instead of fetching its own JWKS).
    pub fn set_key_provider(&mut self, provider: Arc<dyn KeyProvider>) {
        self.verifier = Some(Arc::new(TokenVerifier::new(
            provider,
            &self.config.jwt_issuer,
            &self.config.jwt_audience,
            self.redis.clone(),
            self.config.redis.as_ref().map(|r| r.key_prefix.as_str()).unwrap_or(""),
        )));
    }

    /// Extra routes on the ops HTTP server (e.g. auth's JWKS document).
    pub fn add_http_routes(&mut self, router: axum::Router) {
        let current = std::mem::take(&mut self.extra_http);
        self.extra_http = current.merge(router);
    }

    /// Runs `consumer` until shutdown.
    pub fn spawn_consumer(&mut self, consumer: EventConsumer) {
        let (pool, kafka, stop) = (self.pool().clone(), self.kafka().clone(), self.shutdown.clone());
        if !self.inbox_pruned {
            self.inbox_pruned = true;
            self.tasks.spawn(crate::inbox::run_pruner(pool.clone(), stop.clone()));
        }
        self.tasks.spawn(consumer.run(pool, kafka, self.outbox.clone(), stop));
    }

    /// Runs a background task that must watch `shutdown()` itself.
    pub fn spawn_task(&mut self, task: impl Future<Output = ()> + Send + 'static) {
        self.tasks.spawn(task);
    }

    /// Serves gRPC and ops HTTP until shutdown, then drains: stops accepting,
    /// finishes in-flight calls, lets the relay flush and consumers commit.
    pub async fn serve(mut self, routes: Routes) -> anyhow::Result<()> {
        let name = self.spec.name;
        let (reporter, health_service) = tonic_health::server::health_reporter();
        let mut reflection = tonic_reflection::server::Builder::configure();
        let mut reflection_alpha = tonic_reflection::server::Builder::configure();
        for set in self.spec.descriptor_sets.iter().chain([&crate::pb::DESCRIPTOR_SET]) {
            reflection = reflection.register_encoded_file_descriptor_set(set);
            reflection_alpha = reflection_alpha.register_encoded_file_descriptor_set(set);
        }
        reflection = reflection.register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
        reflection_alpha = reflection_alpha.register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
        let routes = routes
            .add_service(health_service)
            .add_service(reflection.build_v1()?)
            .add_service(reflection_alpha.build_v1alpha()?);

        let grpc_services = self.spec.grpc_services;
        // tonic-health starts "" as SERVING; nothing is until readiness says so.
        reporter.set_service_status("", tonic_health::ServingStatus::NotServing).await;
        for s in grpc_services {
            reporter.set_service_status(*s, tonic_health::ServingStatus::NotServing).await;
        }
        let readiness = self.readiness.clone();
        let health_stop = self.shutdown.clone();
        let health_task = tokio::spawn(track_health(reporter, grpc_services, readiness, health_stop));

        let grpc_stop = self.shutdown.clone();
        // Small unary responses must not wait for Nagle + delayed ACK (~40 ms).
        let incoming = tonic::transport::server::TcpIncoming::from(self.grpc_listener)
            .with_nodelay(Some(true))
            .with_keepalive(Some(Duration::from_secs(60)));
        let grpc = tonic::transport::Server::builder()
            .trace_fn(crate::grpc::server_span)
            .layer(crate::metrics::GrpcMetricsLayer)
            .layer(AuthLayer::new(self.verifier.clone()))
            .add_routes(routes)
            .serve_with_incoming_shutdown(incoming, async move { grpc_stop.wait().await });

        let http_stop = self.shutdown.clone();
        let ops = crate::health::ops_router(self.readiness.clone()).merge(self.extra_http);
        let http = axum::serve(self.http_listener, ops).with_graceful_shutdown(async move { http_stop.wait().await });

        tracing::info!(service = name, grpc = %self.config.grpc_addr, http = %self.config.http_addr, "serving");
        let mut tasks = std::mem::take(&mut self.tasks);
        let died = watch_tasks(name, &mut tasks, &self.shutdown);
        let (grpc_result, http_result, died) = tokio::join!(grpc, http, died);
        let _ = health_task.await;
        let grace = self.config.shutdown_grace;
        let drained = tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            tracing::warn!(
                service = name,
                grace_ms = grace.as_millis() as u64,
                "background tasks did not drain in time"
            );
            tasks.abort_all();
        }
        tracing::info!(service = name, "stopped");
        grpc_result?;
        http_result?;
        match died {
            Some(why) => Err(anyhow::anyhow!("{name}: a background task ended before shutdown ({why})")),
            None => Ok(()),
        }
    }
}

/// Waits for shutdown; a background task (consumer, relay, sweeper) that
/// ends first, by panic or return, triggers it and is returned as the cause:
/// the service would otherwise keep answering, ready, with a saga step gone.
async fn watch_tasks(name: &str, tasks: &mut JoinSet<()>, shutdown: &Shutdown) -> Option<String> {
    let ended = tokio::select! {
        biased;
        _ = shutdown.wait() => return None,
        Some(ended) = tasks.join_next() => ended,
    };
    if shutdown.is_triggered() && !matches!(&ended, Err(e) if e.is_panic()) {
        return None; // it stopped because shutdown began
    }
    let why = match ended {
        Ok(()) => "it returned".to_owned(),
        Err(e) if e.is_panic() => {
            let panic = e.into_panic();
            let message = panic
                .downcast_ref::<&str>()
                .map(|m| (*m).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-text payload".to_owned());
            format!("it panicked: {message}")
        }
        Err(e) => e.to_string(),
    };
    tracing::error!(service = name, cause = %why, "a background task ended before shutdown; stopping the service");
    shutdown.trigger();
    Some(why)
}

/// Mirrors readiness into grpc.health.v1 until shutdown, then NOT_SERVING.
async fn track_health(
    reporter: tonic_health::server::HealthReporter,
    services: &'static [&'static str],
    readiness: Readiness,
    shutdown: Shutdown,
) {
    use tonic_health::ServingStatus;
    loop {
        let status =
            if readiness.evaluate().await.is_ok() { ServingStatus::Serving } else { ServingStatus::NotServing };
        // Named services first: a client that sees the overall status SERVING
        // can then also query any of them.
        for s in services {
            reporter.set_service_status(*s, status).await;
        }
        reporter.set_service_status("", status).await;
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            _ = shutdown.wait() => break,
        }
    }
    reporter.set_service_status("", ServingStatus::NotServing).await;
    for s in services {
        reporter.set_service_status(*s, ServingStatus::NotServing).await;
    }
}

/// Starts `def` and serves it until `shutdown` (one service per process).
pub async fn run(def: &'static ServiceDef, config: ServiceConfig, shutdown: Shutdown) -> anyhow::Result<()> {
    let mut runtime = ServiceRuntime::start(&def.spec, config, shutdown).await?;
    let routes = (def.build)(&mut runtime).await?;
    runtime.serve(routes).await
}

/// Starts `def` and serves it in the background; returns once it accepts
/// connections, with its bound addresses.
pub async fn launch(def: &'static ServiceDef, config: ServiceConfig, shutdown: Shutdown) -> anyhow::Result<Launched> {
    let mut runtime = ServiceRuntime::start(&def.spec, config, shutdown).await?;
    let routes = (def.build)(&mut runtime).await?;
    let (grpc_addr, http_addr) = (runtime.grpc_addr(), runtime.http_addr());
    let task = tokio::spawn(runtime.serve(routes));
    Ok(Launched { name: def.spec.name, grpc_addr, http_addr, task })
}
