//! End to end through the router against a real gRPC upstream.

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use http::StatusCode;
use prost::Message as _;
use serde_json::json;
use shopmesh_gateway::ratelimit::RateLimitConfig;
use shopmesh_gateway::{Gateway, GatewayConfig};
use support::*;
use tonic::Status;

fn handler<F, Fut>(f: F) -> Handler
where
    F: Fn(prost_reflect::DynamicMessage, tonic::metadata::MetadataMap) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<prost_reflect::DynamicMessage, Status>> + Send + 'static,
{
    Arc::new(move |m, md| f(m, md).boxed())
}

fn md_str(md: &tonic::metadata::MetadataMap, key: &str) -> String {
    md.get(key).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned()
}

async fn gateway() -> axum::Router {
    let mut handlers: HashMap<String, Handler> = HashMap::new();
    handlers.insert(
        "shopmesh.catalog.v1.CatalogService/GetProduct".into(),
        handler(|req, md| async move {
            let id = json_of(&req)["id"].as_str().unwrap_or_default().to_owned();
            match id.as_str() {
                "missing" => Err(Status::not_found("product missing not found")),
                "slow" => {
                    tokio::time::sleep(Duration::from_secs(3)).await;
                    Err(Status::internal("too late"))
                }
                "detailed" => {
                    let detail = prost_types::Any {
                        type_url: "type.googleapis.com/shopmesh.common.v1.Money".into(),
                        value: msg("shopmesh.common.v1.Money", json!({"currency_code": "EUR"})).encode_to_vec(),
                    };
                    let status = RpcStatus { code: 9, message: "no".into(), details: vec![detail] };
                    Err(Status::with_details(
                        tonic::Code::FailedPrecondition,
                        "price changed",
                        status.encode_to_vec().into(),
                    ))
                }
                _ => Ok(msg(
                    "shopmesh.catalog.v1.GetProductResponse",
                    json!({"product": {
                        "id": id,
                        "name": "Shoe",
                        "description": md_str(&md, "x-request-id"),
                        "price": {"currency_code": "USD", "amount_minor": 1999},
                    }}),
                )),
            }
        }),
    );
    handlers.insert(
        "shopmesh.catalog.v1.CatalogService/ListProducts".into(),
        handler(|req, _| async move {
            let r = json_of(&req);
            Ok(msg(
                "shopmesh.catalog.v1.ListProductsResponse",
                json!({
                    "products": [{"name": r["q"], "category": r["category"]}],
                    "page": {"next_page_token": r["page"]["page_token"]},
                }),
            ))
        }),
    );
    handlers.insert(
        "shopmesh.catalog.v1.CatalogService/UpdateProduct".into(),
        handler(|req, md| async move {
            let r = json_of(&req);
            let mut product = r["product"].clone();
            product["id"] = r["id"].clone();
            product["description"] = r["update_mask"].clone();
            product["sku"] = md_str(&md, "authorization").into();
            Ok(msg("shopmesh.catalog.v1.UpdateProductResponse", json!({"product": product})))
        }),
    );
    handlers.insert(
        "shopmesh.order.v1.OrderService/CancelOrder".into(),
        handler(|req, md| async move {
            let r = json_of(&req);
            Ok(msg(
                "shopmesh.order.v1.CancelOrderResponse",
                json!({"order": {
                    "id": r["id"],
                    "status": "ORDER_STATUS_CANCELLED",
                    "coupon_code": md_str(&md, "idempotency-key"),
                }}),
            ))
        }),
    );
    handlers.insert(
        "shopmesh.auth.v1.AuthService/Login".into(),
        handler(|req, _| async move {
            let r = json_of(&req);
            Ok(msg(
                "shopmesh.auth.v1.LoginResponse",
                json!({"tokens": {"access_token": format!("token-for-{}", r["email"].as_str().unwrap()), "token_type": "Bearer", "expires_in": 900}}),
            ))
        }),
    );
    let addr = spawn_upstream(handlers).await;
    let upstream = format!("http://{addr}");
    let mut cfg = GatewayConfig::default();
    for svc in ["shopmesh.catalog.v1.CatalogService", "shopmesh.order.v1.OrderService", "shopmesh.auth.v1.AuthService"]
    {
        cfg.upstreams.insert(svc.into(), upstream.clone());
    }
    // Nothing listens on port 1: an unreachable upstream.
    cfg.upstreams.insert("shopmesh.user.v1.UserService".into(), "http://127.0.0.1:1".into());
    cfg.default_timeout = Duration::from_secs(2);
    cfg.rate_limit = RateLimitConfig { enabled: false, ..RateLimitConfig::default() };
    Gateway::new(cfg, None, Arc::new(StaticAuth)).unwrap().router()
}

#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
    #[prost(message, repeated, tag = "3")]
    details: Vec<prost_types::Any>,
}

fn authed(mut req: http::Request<axum::body::Body>) -> http::Request<axum::body::Body> {
    req.headers_mut().insert("authorization", format!("Bearer {GOOD_TOKEN}").parse().unwrap());
    req
}

#[tokio::test]
async fn get_with_path_variable_round_trips() {
    let gw = gateway().await;
    let (status, headers, body) = call(&gw, get("/v1/products/p%201")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(headers["content-type"], "application/json");
    let request_id = headers["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(uuid::Uuid::parse_str(&request_id).unwrap().get_version_num(), 7);
    assert_eq!(
        body,
        json!({"product": {
            "id": "p 1",
            "name": "Shoe",
            // The generated request id reached the upstream as metadata.
            "description": request_id,
            "price": {"currencyCode": "USD", "amountMinor": "1999"},
            // Fields at their default are written too (a client never
            // meets a missing key for a field the contract has).
            "sku": "",
            "category": "",
            "imageUrl": "",
            "active": false,
            "attributes": {},
        }})
    );
}

#[tokio::test]
async fn client_request_id_is_kept() {
    let gw = gateway().await;
    let mut req = get("/v1/products/p1");
    req.headers_mut().insert("x-request-id", "abc-123".parse().unwrap());
    let (_, headers, body) = call(&gw, req).await;
    assert_eq!(headers["x-request-id"], "abc-123");
    assert_eq!(body["product"]["description"], "abc-123");
}

#[tokio::test]
async fn query_parameters_reach_nested_fields() {
    let gw = gateway().await;
    let (status, _, body) = call(&gw, get("/v1/products?q=red+shoes&category=men&page.pageToken=t2")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let product = json!({
        "name": "red shoes", "category": "men",
        "id": "", "sku": "", "description": "", "imageUrl": "", "active": false, "attributes": {},
    });
    assert_eq!(body, json!({"products": [product], "page": {"nextPageToken": "t2"}}));
    let (status, _, body) = call(&gw, get("/v1/products?bogus=1")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["code"], 3);
    assert!(body["message"].as_str().unwrap().contains("bogus"), "{body}");
}

#[tokio::test]
async fn upstream_status_maps_to_http() {
    let gw = gateway().await;
    let (status, _, body) = call(&gw, get("/v1/products/missing")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body, json!({"code": 5, "message": "product missing not found", "details": []}));

    let (status, _, body) = call(&gw, get("/v1/products/detailed")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["code"], 9);
    assert_eq!(
        body["details"],
        json!([{"@type": "type.googleapis.com/shopmesh.common.v1.Money", "currencyCode": "EUR"}])
    );
}

#[tokio::test]
async fn routing_errors() {
    let gw = gateway().await;
    let (status, _, body) = call(&gw, get("/v2/nothing")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["code"], 5);

    let (status, headers, body) = call(&gw, with_body("PUT", "/v1/products/p1", "{}")).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(headers["allow"], "DELETE, GET, PATCH");
    assert_eq!(body["code"], 12);
}

#[tokio::test]
async fn body_errors_are_400_naming_the_field() {
    let gw = gateway().await;
    let (status, _, body) = call(&gw, with_body("POST", "/v1/auth/login", r#"{"email": 5}"#)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["code"], 3);
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("`email`"), "{message}");

    let (status, _, body) =
        call(&gw, with_body("POST", "/v1/auth/login", r#"{"email": "a@b.c", "admin": true}"#)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["message"].as_str().unwrap().contains("admin"), "{body}");

    let (status, _, body) = call(&gw, with_body("POST", "/v1/auth/login", "{not json")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["message"].as_str().unwrap().contains("invalid JSON"), "{body}");
}

#[tokio::test]
async fn body_star_accepts_both_spellings_and_empty_body() {
    let gw = gateway().await;
    let (status, _, body) =
        call(&gw, with_body("POST", "/v1/auth/login", r#"{"email": "a@b.c", "password": "pw"}"#)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["tokens"]["accessToken"], "token-for-a@b.c");
    assert_eq!(body["tokens"]["expiresIn"], 900);

    // Empty body with `body: "*"` is `{}`; the path fills the id.
    let req = authed(with_body("POST", "/v1/orders/o-9:cancel", ""));
    let (status, _, body) = call(&gw, req).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["order"]["id"], "o-9");
    assert_eq!(body["order"]["status"], "ORDER_STATUS_CANCELLED");
}

#[tokio::test]
async fn body_over_the_limit_is_413() {
    let gw = gateway().await;
    let big = format!(r#"{{"email": "{}"}}"#, "x".repeat(1024 * 1024 + 10));
    let (status, _, body) = call(&gw, with_body("POST", "/v1/auth/login", big)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(body["code"], 8);
}

#[tokio::test]
async fn edge_auth_rejects_without_a_token() {
    let gw = gateway().await;
    let (status, headers, body) = call(&gw, with_body("POST", "/v1/orders/o1:cancel", "{}")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["code"], 16);
    assert_eq!(headers["www-authenticate"], "Bearer");

    let mut req = with_body("POST", "/v1/orders/o1:cancel", "{}");
    req.headers_mut().insert("authorization", "Bearer forged".parse().unwrap());
    assert_eq!(call(&gw, req).await.0, StatusCode::UNAUTHORIZED);

    let mut req = authed(with_body("POST", "/v1/orders/o1:cancel", "{}"));
    req.headers_mut().insert("idempotency-key", "idem-1".parse().unwrap());
    let (status, _, body) = call(&gw, req).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["order"]["couponCode"], "idem-1", "idempotency-key is forwarded");

    // Public route: a bad token does not block.
    let mut req = get("/v1/products/p1");
    req.headers_mut().insert("authorization", "Bearer stale".parse().unwrap());
    assert_eq!(call(&gw, req).await.0, StatusCode::OK);
}

#[tokio::test]
async fn patch_derives_update_mask_and_forwards_authorization() {
    let gw = gateway().await;
    let req = authed(with_body("PATCH", "/v1/products/p1", r#"{"name": "New", "imageUrl": "i.png"}"#));
    let (status, _, body) = call(&gw, req).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["product"]["id"], "p1");
    assert_eq!(body["product"]["imageUrl"], "i.png");
    assert_eq!(body["product"]["description"], "imageUrl,name");
    assert_eq!(body["product"]["sku"], format!("Bearer {GOOD_TOKEN}"));

    let req = authed(with_body("PATCH", "/v1/products/p1?update_mask=name", r#"{"name": "New", "sku": "s"}"#));
    let (_, _, body) = call(&gw, req).await;
    assert_eq!(body["product"]["description"], "name");
}

#[tokio::test]
async fn deadlines_and_unavailable_upstreams() {
    let gw = gateway().await;
    let mut req = get("/v1/products/slow");
    req.headers_mut().insert("grpc-timeout", "200m".parse().unwrap());
    let started = std::time::Instant::now();
    let (status, _, body) = call(&gw, req).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert_eq!(body["code"], 4);
    assert!(started.elapsed() < Duration::from_secs(2));

    // Configured default (2 s) also applies without a header.
    let (status, _, _) = call(&gw, get("/v1/products/slow")).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);

    // Inventory has no upstream configured.
    let (status, _, body) = call(&gw, get("/v1/inventory/p1")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["code"], 14);

    // Users point at a closed port.
    let (status, _, body) = call(&gw, authed(get("/v1/users/me"))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
}

/// An upstream that takes each call and then drops the connection with the
/// call unanswered, as a crashing service does.
async fn spawn_crashing_upstream() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                if let Ok(mut connection) = h2::server::handshake(socket).await {
                    let _request = connection.accept().await;
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn an_upstream_that_dies_mid_call_is_503_not_500() {
    let mut cfg = GatewayConfig::default();
    let crashing = spawn_crashing_upstream().await;
    cfg.upstreams.insert("shopmesh.catalog.v1.CatalogService".into(), format!("http://{crashing}"));
    cfg.rate_limit = RateLimitConfig { enabled: false, ..RateLimitConfig::default() };
    let gw = Gateway::new(cfg, None, Arc::new(StaticAuth)).unwrap().router();
    let (status, _, body) = call(&gw, get("/v1/products/p1")).await;
    // Whether the call took effect is unknown: a retryable 503, not a 500.
    assert_eq!((status, body["code"].as_i64()), (StatusCode::SERVICE_UNAVAILABLE, Some(14)), "{body}");
    assert!(body["message"].as_str().is_some_and(|m| m.contains("connection lost")), "{body}");
}

#[tokio::test]
async fn gateway_endpoints() {
    let gw = gateway().await;
    for path in shopmesh_gateway::edge_auth::PUBLIC_GATEWAY_PATHS {
        assert_eq!(call(&gw, get(path)).await.0, StatusCode::OK, "{path} needs no token");
    }
    let (status, _, doc) = call(&gw, get("/openapi.json")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(doc["openapi"], "3.0.3");
    assert!(doc["paths"]["/v1/products/{id}"]["get"].is_object());
    let (status, headers, page) = call(&gw, get("/docs")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers["content-type"].to_str().unwrap().starts_with("text/html"));
    let page = page.as_str().unwrap();
    assert!(page.contains("/openapi.json") && !page.contains("://cdn"));
}

#[tokio::test]
async fn ready_flag_controls_readiness() {
    let gateway = Gateway::new(GatewayConfig::default(), None, Arc::new(StaticAuth)).unwrap();
    let flag = gateway.ready_flag();
    let router = gateway.router();
    flag.store(false, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(call(&router, get("/health/ready")).await.0, StatusCode::SERVICE_UNAVAILABLE);
}

/// `/metrics` is served on the ops listener only: route names, statuses and
/// limiter counts are nobody's business at the public edge.
#[tokio::test]
async fn metrics_are_on_the_ops_router_and_not_at_the_public_edge() {
    let gateway = Gateway::new(GatewayConfig::default(), None, Arc::new(StaticAuth))
        .unwrap()
        .with_metrics_renderer(|| "gateway_requests_total 7\n".into());
    let ops = gateway.ops_router();
    let public = gateway.router();
    let (status, _, body) = call(&ops, get("/metrics")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, serde_json::Value::String("gateway_requests_total 7\n".into()));
    assert_eq!(call(&ops, get("/health/ready")).await.0, StatusCode::OK);
    assert_eq!(call(&public, get("/metrics")).await.0, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn cors_preflight_is_answered() {
    let gw = gateway().await;
    let req = http::Request::builder()
        .method("OPTIONS")
        .uri("/v1/orders")
        .header("origin", "http://localhost:3000")
        .header("access-control-request-method", "POST")
        .body(axum::body::Body::empty())
        .unwrap();
    let (status, headers, _) = call(&gw, req).await;
    assert!(status.is_success(), "{status}");
    assert_eq!(headers["access-control-allow-origin"], "*");
}

#[tokio::test]
async fn serve_accepts_connections_and_shuts_down() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = Gateway::new(GatewayConfig::default(), None, Arc::new(StaticAuth)).unwrap().router();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(shopmesh_gateway::serve(listener, router, async {
        let _ = rx.await;
    }));
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(b"GET /health/live HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await.unwrap();
    let mut out = String::new();
    conn.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    tx.send(()).unwrap();
    server.await.unwrap().unwrap();
}

/// A verifier that cannot reach its keys.
struct Unreachable;

#[async_trait::async_trait]
impl shopmesh_gateway::edge_auth::EdgeAuth for Unreachable {
    async fn verify(&self, _: &str) -> Result<shopmesh_gateway::Principal, shopmesh_gateway::AuthRejection> {
        Err(shopmesh_gateway::AuthRejection::Unavailable("JWKS unreachable".into()))
    }
}

#[tokio::test]
async fn verifier_outage_is_503_on_protected_routes_only() {
    let mut cfg = GatewayConfig::default();
    cfg.rate_limit.enabled = false;
    let router = Gateway::new(cfg, None, Arc::new(Unreachable)).unwrap().router();
    let mut req = with_body("POST", "/v1/orders/o1:cancel", "{}");
    req.headers_mut().insert("authorization", "Bearer t".parse().unwrap());
    let (status, _, body) = call(&router, req).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["code"], 14);
    // A public route treats the caller as anonymous (then 503: no upstream).
    let mut req = get("/v1/products");
    req.headers_mut().insert("authorization", "Bearer t".parse().unwrap());
    let (_, _, body) = call(&router, req).await;
    assert!(body["message"].as_str().unwrap().contains("no upstream"), "{body}");
}
