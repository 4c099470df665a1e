//! Calls upstream services: one lazily connected channel per proto service,
//! a codec for `DynamicMessage`, deadlines and forwarded metadata.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;

use bytes::Buf;
use http::HeaderMap;
use http::uri::PathAndQuery;
use prost::Message as _;
use prost_reflect::{DynamicMessage, MessageDescriptor, MethodDescriptor};
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::transport::{Channel, Endpoint};

/// Headers copied to upstream metadata: identity, tracing, idempotency.
pub const FORWARDED_HEADERS: &[&str] =
    &["authorization", "x-request-id", "traceparent", "tracestate", "idempotency-key"];

/// Encodes any `DynamicMessage`; decodes into the method's output type.
#[derive(Debug, Clone)]
pub struct DynamicCodec {
    output: MessageDescriptor,
}

impl DynamicCodec {
    pub fn new(output: MessageDescriptor) -> Self {
        Self { output }
    }
}

impl Codec for DynamicCodec {
    type Encode = DynamicMessage;
    type Decode = DynamicMessage;
    type Encoder = DynamicEncoder;
    type Decoder = DynamicDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        DynamicEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        DynamicDecoder(self.output.clone())
    }
}

#[derive(Debug)]
pub struct DynamicEncoder;

impl Encoder for DynamicEncoder {
    type Item = DynamicMessage;
    type Error = Status;

    fn encode(&mut self, item: Self::Item, dst: &mut EncodeBuf<'_>) -> Result<(), Self::Error> {
        item.encode(dst).map_err(|e| Status::internal(format!("encoding request: {e}")))
    }
}

#[derive(Debug)]
pub struct DynamicDecoder(MessageDescriptor);

impl Decoder for DynamicDecoder {
    type Item = DynamicMessage;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Self::Error> {
        let bytes = src.copy_to_bytes(src.remaining());
        DynamicMessage::decode(self.0.clone(), bytes)
            .map(Some)
            .map_err(|e| Status::internal(format!("decoding response: {e}")))
    }
}

#[derive(Debug, thiserror::Error)]
#[error("invalid upstream URI `{uri}` for {service}: {source}")]
pub struct UpstreamConfigError {
    pub service: String,
    pub uri: String,
    #[source]
    pub source: tonic::transport::Error,
}

/// Proto service full name → channel. Channels are created on first use
/// (creating one needs a Tokio runtime) and then shared by every request.
#[derive(Debug, Default)]
pub struct Upstreams {
    endpoints: HashMap<String, (Endpoint, OnceLock<Channel>)>,
}

impl Upstreams {
    pub fn new(uris: &HashMap<String, String>) -> Result<Self, UpstreamConfigError> {
        let mut endpoints = HashMap::new();
        for (service, uri) in uris {
            let endpoint = Endpoint::from_shared(uri.clone())
                .map_err(|source| UpstreamConfigError { service: service.clone(), uri: uri.clone(), source })?
                .connect_timeout(Duration::from_secs(3))
                .tcp_nodelay(true);
            endpoints.insert(service.clone(), (endpoint, OnceLock::new()));
        }
        Ok(Self { endpoints })
    }

    pub fn is_configured(&self, service: &str) -> bool {
        self.endpoints.contains_key(service)
    }

    fn channel(&self, service: &str) -> Option<Channel> {
        let (endpoint, cell) = self.endpoints.get(service)?;
        Some(cell.get_or_init(|| endpoint.connect_lazy()).clone())
    }

    /// Unary call with a hard deadline. Transport failures, before or during
    /// the call, come back as `Unavailable`, the deadline as `DeadlineExceeded`.
    pub async fn unary(
        &self,
        method: &MethodDescriptor,
        request: DynamicMessage,
        metadata: MetadataMap,
        timeout: Duration,
    ) -> Result<DynamicMessage, Status> {
        let service = method.parent_service().full_name();
        let channel = self
            .channel(service)
            .ok_or_else(|| Status::unavailable(format!("no upstream configured for {service}")))?;
        let path = PathAndQuery::try_from(format!("/{service}/{}", method.name()))
            .map_err(|e| Status::internal(format!("bad method path: {e}")))?;
        let mut req = tonic::Request::new(request);
        *req.metadata_mut() = metadata;
        req.set_timeout(timeout);
        let call = async {
            let mut grpc = tonic::client::Grpc::new(channel);
            grpc.ready().await.map_err(|e| Status::unavailable(format!("upstream {service} not ready: {e}")))?;
            grpc.unary(req, path, DynamicCodec::new(method.output()))
                .await
                .map(tonic::Response::into_inner)
                .map_err(|s| connection_lost(service, s))
        };
        let started = std::time::Instant::now();
        let expired = || Status::deadline_exceeded(format!("upstream {service} did not answer within {timeout:?}"));
        match tokio::time::timeout(timeout, call).await {
            // tonic enforces the grpc-timeout we set itself and reports it
            // as Cancelled; to the client it is a deadline.
            Ok(Err(s)) if s.code() == tonic::Code::Cancelled && started.elapsed() >= timeout => Err(expired()),
            // As a gRPC client's own deadline would: an answer that arrives
            // late is not passed on. Timers fire on millisecond ticks, so a
            // sub-millisecond deadline can outlive a fast call.
            Ok(_) if started.elapsed() >= timeout => Err(expired()),
            Ok(result) => result,
            Err(_) => Err(expired()),
        }
    }
}

/// tonic reports a connection that broke mid-call (the upstream crashed or
/// was cut off) as `Unknown` with the transport error as its source; the
/// gRPC spec calls that `Unavailable`: the client may retry, with its
/// idempotency key where the call had effects.
fn connection_lost(service: &str, status: Status) -> Status {
    let transport = std::error::Error::source(&status).is_some_and(|e| e.is::<tonic::transport::Error>());
    if status.code() == tonic::Code::Unknown && transport {
        Status::unavailable(format!("upstream {service} connection lost: {}", status.message()))
    } else {
        status
    }
}

/// Copies the forwarded headers into gRPC metadata; invalid values are
/// dropped rather than failing the request.
pub fn forward_metadata(headers: &HeaderMap) -> MetadataMap {
    let mut md = MetadataMap::new();
    for name in FORWARDED_HEADERS {
        for value in headers.get_all(*name) {
            if let Ok(v) = MetadataValue::try_from(value.as_bytes()) {
                md.append(*name, v);
            }
        }
    }
    // The gateway's own span (a child of the caller's traceparent) becomes
    // the upstream call's parent; without a span the caller's header stays.
    shopmesh_platform::telemetry::inject_grpc(&mut md);
    md
}

/// The effective deadline: the smaller of our default and the client's
/// `grpc-timeout`, if it sent a valid one.
pub fn effective_timeout(headers: &HeaderMap, default: Duration) -> Duration {
    headers
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(shopmesh_platform::grpc::parse_grpc_timeout)
        .map_or(default, |t| t.min(default))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeout_is_the_smaller_one() {
        let default = Duration::from_secs(10);
        let mut h = HeaderMap::new();
        assert_eq!(effective_timeout(&h, default), default);
        h.insert("grpc-timeout", "500m".parse().unwrap());
        assert_eq!(effective_timeout(&h, default), Duration::from_millis(500));
        h.insert("grpc-timeout", "1H".parse().unwrap());
        assert_eq!(effective_timeout(&h, default), default);
        h.insert("grpc-timeout", "junk".parse().unwrap());
        assert_eq!(effective_timeout(&h, default), default);
    }

    #[test]
    fn only_listed_headers_are_forwarded() {
        let mut h = HeaderMap::new();
        h.insert("authorization", "Bearer t".parse().unwrap());
        h.insert("traceparent", "00-abc-def-01".parse().unwrap());
        h.insert("idempotency-key", "k1".parse().unwrap());
        h.insert("cookie", "secret".parse().unwrap());
        let md = forward_metadata(&h);
        assert_eq!(md.get("authorization").unwrap(), "Bearer t");
        assert_eq!(md.get("idempotency-key").unwrap(), "k1");
        assert!(md.get("traceparent").is_some());
        assert!(md.get("cookie").is_none());
    }

    #[test]
    fn bad_upstream_uri_is_a_config_error() {
        let mut m = HashMap::new();
        m.insert("a.B".to_owned(), "not a uri\n".to_owned());
        assert!(Upstreams::new(&m).is_err());
    }
}
