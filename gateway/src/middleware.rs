//! Cross-cutting layers: request ids, CORS, and one access log line plus
//! metrics per request.

use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use http::{HeaderName, HeaderValue, Method};
use tower_http::cors::{AllowOrigin, Any, CorsLayer};
use tracing::Instrument;

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Set by handlers on the response so the access log can use the route
/// template (low cardinality) instead of the raw path, and the user id.
#[derive(Debug, Clone, Default)]
pub struct RouteLabel {
    pub route: String,
    pub user_id: Option<String>,
}

/// Keeps a sane client-supplied id, otherwise mints a UUIDv7 (time-ordered,
/// so ids sort like the logs); echoes it on the response.
pub async fn request_id(mut req: Request, next: Next) -> Response {
    let id = req.headers().get(&X_REQUEST_ID).filter(|v| is_acceptable_id(v)).cloned().unwrap_or_else(|| {
        HeaderValue::from_str(&uuid::Uuid::now_v7().to_string()).expect("a UUID is a valid header value")
    });
    req.headers_mut().insert(X_REQUEST_ID, id.clone());
    let mut resp = next.run(req).await;
    resp.headers_mut().insert(X_REQUEST_ID, id);
    resp
}

fn is_acceptable_id(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty() && b.len() <= 128 && b.iter().all(|c| c.is_ascii_graphic())
}

/// One server span per request (a child of the caller's `traceparent`, if
/// any); the upstream call injects this span's context, so the whole request
/// is one trace from the edge through the mesh.
pub async fn access_log(req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().clone();
    let matched = req.extensions().get::<MatchedPath>().map(|m| m.as_str().to_owned());
    let request_id = req.headers().get(&X_REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    // Named by method (the route template is known only after routing; it
    // is recorded as `http.route`, as the OTel HTTP conventions allow).
    let span = tracing::info_span!(
        "http.server",
        otel.name = %method,
        otel.kind = "server",
        http.request.method = %method,
        http.route = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
        request_id = %request_id,
        trace_id = tracing::field::Empty,
    );
    shopmesh_platform::telemetry::adopt_remote_parent(
        &span,
        &shopmesh_platform::telemetry::HeaderCarrier(req.headers()),
    );
    let resp = next.run(req).instrument(span.clone()).await;
    let elapsed = start.elapsed();
    let label = resp
        .extensions()
        .get::<RouteLabel>()
        .cloned()
        .unwrap_or_else(|| RouteLabel { route: matched.unwrap_or_else(|| "unmatched".into()), user_id: None });
    span.record("http.route", label.route.as_str());
    span.record("http.response.status_code", resp.status().as_u16());
    record(&method, &label, resp.status().as_u16(), elapsed, &request_id);
    resp
}

fn record(method: &Method, label: &RouteLabel, status: u16, elapsed: Duration, request_id: &str) {
    let latency_ms = elapsed.as_secs_f64() * 1000.0;
    tracing::info!(
        target: "shopmesh_gateway::access",
        method = %method,
        route = %label.route,
        status,
        latency_ms,
        user_id = label.user_id.as_deref().unwrap_or("-"),
        request_id,
        "request"
    );
    metrics::counter!(
        "gateway_requests_total",
        "method" => method.to_string(),
        "route" => label.route.clone(),
        "status" => status.to_string(),
    )
    .increment(1);
    metrics::histogram!(
        "gateway_request_duration_seconds",
        "method" => method.to_string(),
        "route" => label.route.clone(),
    )
    .record(elapsed.as_secs_f64());
}

#[derive(Debug, thiserror::Error)]
#[error("invalid CORS origin `{0}`")]
pub struct InvalidOrigin(pub String);

/// Empty or `*` allows any origin (dev); otherwise exactly the listed ones.
pub fn cors(origins: &[String]) -> Result<CorsLayer, InvalidOrigin> {
    let layer = CorsLayer::new()
        .allow_methods(Any)
        .allow_headers(Any)
        .expose_headers([
            X_REQUEST_ID,
            HeaderName::from_static("ratelimit-limit"),
            HeaderName::from_static("ratelimit-remaining"),
            HeaderName::from_static("ratelimit-reset"),
            http::header::RETRY_AFTER,
        ])
        .max_age(Duration::from_secs(600));
    if origins.is_empty() || origins.iter().any(|o| o == "*") {
        return Ok(layer.allow_origin(Any));
    }
    let list = origins
        .iter()
        .map(|o| HeaderValue::from_str(o).map_err(|_| InvalidOrigin(o.clone())))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(layer.allow_origin(AllowOrigin::list(list)))
}
