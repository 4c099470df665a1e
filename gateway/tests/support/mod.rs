//! A real gRPC upstream for gateway tests: a tonic server whose methods are
//! answered by closures over `DynamicMessage`, decoded with the gateway's
//! own codec. The gateway crate generates no Rust service code.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use futures::future::BoxFuture;
use prost_reflect::{DescriptorPool, DynamicMessage};
use shopmesh_gateway::edge_auth::{AuthRejection, EdgeAuth, Principal};
use shopmesh_gateway::upstream::DynamicCodec;
use tonic::Status;
use tonic::metadata::MetadataMap;

pub type Handler =
    Arc<dyn Fn(DynamicMessage, MetadataMap) -> BoxFuture<'static, Result<DynamicMessage, Status>> + Send + Sync>;

/// Serves `handlers` (keyed `pkg.Service/Method`) on a random port.
pub async fn spawn_upstream(handlers: HashMap<String, Handler>) -> SocketAddr {
    let pool = shopmesh_gateway::descriptors::load_pool().unwrap();
    let handlers = Arc::new(handlers);
    let app = axum::Router::new().fallback(move |req: Request| {
        let pool = pool.clone();
        let handlers = handlers.clone();
        async move { dispatch(pool, handlers, req).await }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_routes(tonic::service::Routes::from(app))
            .serve_with_incoming(incoming)
            .await
            .unwrap();
    });
    addr
}

async fn dispatch(pool: DescriptorPool, handlers: Arc<HashMap<String, Handler>>, req: Request) -> Response {
    let path = req.uri().path().trim_start_matches('/').to_owned();
    let (service, method) = path.split_once('/').unwrap_or_default();
    let method = pool.get_service_by_name(service).and_then(|s| s.methods().find(|m| m.name() == method));
    let (Some(method), Some(handler)) = (method, handlers.get(&path).cloned()) else {
        return Status::unimplemented(path).into_http::<Body>();
    };
    let mut grpc = tonic::server::Grpc::new(DynamicCodec::new(method.input()));
    let svc = tower::service_fn(move |r: tonic::Request<DynamicMessage>| {
        let handler = handler.clone();
        async move {
            let md = r.metadata().clone();
            handler(r.into_inner(), md).await.map(tonic::Response::new)
        }
    });
    grpc.unary(svc, req).await.map(Body::new)
}

/// Builds a message of `full_name` from proto3 JSON.
pub fn msg(full_name: &str, json: serde_json::Value) -> DynamicMessage {
    let pool = shopmesh_gateway::descriptors::load_pool().unwrap();
    let desc = pool.get_message_by_name(full_name).unwrap();
    DynamicMessage::deserialize(desc, json).unwrap()
}

/// Proto3 JSON of a message, field names as in the proto.
pub fn json_of(m: &DynamicMessage) -> serde_json::Value {
    m.serialize_with_options(
        serde_json::value::Serializer,
        &prost_reflect::SerializeOptions::new().use_proto_field_name(true),
    )
    .unwrap()
}

/// Accepts exactly one token.
pub struct StaticAuth;

pub const GOOD_TOKEN: &str = "good-token";

#[async_trait]
impl EdgeAuth for StaticAuth {
    async fn verify(&self, token: &str) -> Result<Principal, AuthRejection> {
        if token == GOOD_TOKEN {
            Ok(Principal { user_id: "user-1".into(), roles: vec!["customer".into()] })
        } else {
            Err(AuthRejection::Invalid("invalid token".into()))
        }
    }
}

/// Sends one request through the router with a fake peer address.
pub async fn call(
    router: &axum::Router,
    req: http::Request<Body>,
) -> (http::StatusCode, http::HeaderMap, serde_json::Value) {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let mut req = req;
    req.extensions_mut().insert(axum::extract::ConnectInfo(SocketAddr::from(([192, 0, 2, 7], 40000))));
    let resp = router.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, headers, json)
}

pub fn get(uri: &str) -> http::Request<Body> {
    http::Request::get(uri).body(Body::empty()).unwrap()
}

pub fn with_body(method: &str, uri: &str, body: impl Into<Body>) -> http::Request<Body> {
    http::Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(body.into())
        .unwrap()
}
