//! The REST/JSON edge of shopmesh. Every RPC with a `google.api.http`
//! annotation is exposed by transcoding JSON to gRPC using the embedded
//! descriptor set; there is no handler per RPC.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use shopmesh_gateway::{Gateway, GatewayConfig, edge_auth::DenyAll, serve};
//! let cfg = GatewayConfig::default();
//! let listener = tokio::net::TcpListener::bind(cfg.listen).await?;
//! let router = Gateway::new(cfg, None, Arc::new(DenyAll))?.router();
//! serve(listener, router, std::future::pending()).await?;
//! # Ok(()) }
//! ```

pub mod descriptors;
pub mod edge_auth;
pub mod errors;
pub mod middleware;
pub mod openapi;
mod proxy;
pub mod ratelimit;
pub mod routes;
pub mod settings;
pub mod transcode;
pub mod upstream;

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use prost_reflect::DescriptorPool;

use crate::descriptors::{DescriptorError, RpcBinding};
use crate::edge_auth::EdgeAuth;
use crate::ratelimit::{RateLimitConfig, RateLimiter};
use crate::routes::RouteTable;
use crate::upstream::{UpstreamConfigError, Upstreams};

pub use crate::edge_auth::{AuthRejection, Principal};

#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub listen: SocketAddr,
    /// Ops HTTP (`/metrics`, health), as every service has: metrics are not
    /// served on the public port.
    pub ops_listen: SocketAddr,
    /// Proto service full name (`shopmesh.catalog.v1.CatalogService`) →
    /// `http://host:port`.
    pub upstreams: HashMap<String, String>,
    /// Upper bound for every upstream call; a smaller `grpc-timeout` from
    /// the client wins.
    pub default_timeout: Duration,
    pub body_limit_bytes: usize,
    /// Empty or `*` allows any origin.
    pub cors_origins: Vec<String>,
    pub rate_limit: RateLimitConfig,
    /// Only behind a proxy that sets `X-Forwarded-For`; otherwise clients
    /// could pick their own rate-limit key.
    pub trust_forwarded_for: bool,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            ops_listen: SocketAddr::from(([0, 0, 0, 0], 9090)),
            upstreams: HashMap::new(),
            default_timeout: Duration::from_secs(10),
            body_limit_bytes: 1024 * 1024,
            cors_origins: Vec::new(),
            rate_limit: RateLimitConfig::default(),
            trust_forwarded_for: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(transparent)]
    Descriptors(#[from] DescriptorError),
    #[error(transparent)]
    Upstream(#[from] UpstreamConfigError),
    #[error("upstream configured for unknown service `{0}` (not in the descriptor set)")]
    UnknownService(String),
    #[error(transparent)]
    Cors(#[from] middleware::InvalidOrigin),
}

type MetricsRenderer = Arc<dyn Fn() -> String + Send + Sync>;

/// Everything a request needs, shared by all handlers.
pub(crate) struct Shared {
    pub(crate) pool: DescriptorPool,
    pub(crate) table: RouteTable<RpcBinding>,
    pub(crate) upstreams: Upstreams,
    pub(crate) auth: Arc<dyn EdgeAuth>,
    pub(crate) limiter: RateLimiter,
    pub(crate) default_timeout: Duration,
    pub(crate) body_limit: usize,
    pub(crate) trust_forwarded_for: bool,
    openapi: String,
    ready: Arc<AtomicBool>,
    metrics: MetricsRenderer,
}

pub struct Gateway {
    shared: Shared,
    cors: tower_http::cors::CorsLayer,
}

impl Gateway {
    /// Loads the descriptors, builds the route table and the OpenAPI
    /// document, and validates the upstream map. No I/O: channels connect
    /// on first use, and `redis` is used as given (already initialised).
    pub fn new(
        cfg: GatewayConfig,
        redis: Option<fred::clients::Client>,
        auth: Arc<dyn EdgeAuth>,
    ) -> Result<Self, GatewayError> {
        let pool = descriptors::load_pool()?;
        let table = descriptors::route_table(&pool)?;
        for service in cfg.upstreams.keys() {
            if pool.get_service_by_name(service).is_none() {
                return Err(GatewayError::UnknownService(service.clone()));
            }
        }
        let upstreams = Upstreams::new(&cfg.upstreams)?;
        for (_, _, binding) in table.iter() {
            if !upstreams.is_configured(binding.service_name()) {
                tracing::debug!(service = binding.service_name(), "no upstream configured; its routes answer 503");
            }
        }
        let openapi = openapi::document(&table).to_string();
        let cors = middleware::cors(&cfg.cors_origins)?;
        Ok(Self {
            shared: Shared {
                pool,
                table,
                upstreams,
                auth,
                limiter: RateLimiter::new(cfg.rate_limit, redis),
                default_timeout: cfg.default_timeout,
                body_limit: cfg.body_limit_bytes,
                trust_forwarded_for: cfg.trust_forwarded_for,
                openapi,
                ready: Arc::new(AtomicBool::new(true)),
                metrics: Arc::new(shopmesh_platform::metrics::render),
            },
            cors,
        })
    }

    /// What `/metrics` serves; the platform's Prometheus renderer unless
    /// replaced (tests, embedding).
    pub fn with_metrics_renderer(mut self, render: impl Fn() -> String + Send + Sync + 'static) -> Self {
        self.shared.metrics = Arc::new(render);
        self
    }

    /// Flip to false to fail `/health/ready` (e.g. when draining).
    pub fn ready_flag(&self) -> Arc<AtomicBool> {
        self.shared.ready.clone()
    }

    /// Method + path template of every transcoded route.
    pub fn routes(&self) -> Vec<(String, String)> {
        self.shared.table.iter().map(|(m, t, _)| (m.to_owned(), t.as_str().to_owned())).collect()
    }

    fn ops(&self) -> Ops {
        Ops { ready: self.shared.ready.clone(), metrics: self.shared.metrics.clone() }
    }

    /// The ops endpoints, for the ops listener: health and `/metrics`.
    pub fn ops_router(&self) -> Router {
        health(self.ops()).merge(Router::new().route("/metrics", get(metrics)).with_state(self.ops()))
    }

    /// The public router: health (for load balancers), the API description
    /// and every transcoded route. `/metrics` is on [`ops_router`](Self::ops_router) only.
    pub fn router(self) -> Router {
        let health = health(self.ops());
        let cors = self.cors;
        Router::new()
            .route("/openapi.json", get(openapi_json))
            .route("/docs", get(docs))
            .fallback(proxy::handle)
            .with_state(Arc::new(self.shared))
            .merge(health)
            .layer(axum::middleware::from_fn(middleware::access_log))
            .layer(cors)
            .layer(axum::middleware::from_fn(middleware::request_id))
    }
}

/// What the ops endpoints need.
#[derive(Clone)]
struct Ops {
    ready: Arc<AtomicBool>,
    metrics: MetricsRenderer,
}

/// `/health/live` and `/health/ready`, on both listeners.
fn health<S>(ops: Ops) -> Router<S> {
    Router::new()
        .route("/health/live", get(|| async { StatusCode::OK }))
        .route("/health/ready", get(ready))
        .with_state(ops)
}

async fn ready(State(ops): State<Ops>) -> StatusCode {
    if ops.ready.load(Ordering::Relaxed) { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }
}

async fn metrics(State(ops): State<Ops>) -> Response {
    let body = (ops.metrics)();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

async fn openapi_json(State(gw): State<Arc<Shared>>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], gw.openapi.clone()).into_response()
}

async fn docs() -> Html<&'static str> {
    Html(include_str!("../assets/docs.html"))
}

/// Serves with peer addresses (for per-IP rate limits) until `shutdown`
/// resolves, then drains in-flight requests.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    use axum::serve::ListenerExt;
    // Small responses must not wait for Nagle + delayed ACK (~40 ms).
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, router.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(shutdown)
        .await
}
