//! One error shape for every non-2xx answer, upstream or our own:
//! `{"code": <grpc code>, "message": "...", "details": [...]}`, with the HTTP
//! status grpc-gateway would use for that code.

use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use http::{HeaderValue, StatusCode, header};
use prost::Message as _;
use prost_reflect::{DescriptorPool, DynamicMessage};
use tonic::Code;
use tonic_types::StatusExt as _;

/// grpc-gateway's `HTTPStatusFromCode`.
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        // 499 is nginx's "client closed request"; it is a valid status code.
        Code::Cancelled => StatusCode::from_u16(499).expect("499 is in range"),
        Code::Unknown => StatusCode::INTERNAL_SERVER_ERROR,
        Code::InvalidArgument => StatusCode::BAD_REQUEST,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::FailedPrecondition => StatusCode::BAD_REQUEST,
        Code::Aborted => StatusCode::CONFLICT,
        Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// An error answer. Built by the gateway itself or from an upstream status.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: Code,
    pub message: String,
    pub details: Vec<serde_json::Value>,
    /// Overrides the mapped status where the gateway means something more
    /// precise than the gRPC code can say (405, 413).
    pub http_status: Option<StatusCode>,
    pub headers: Vec<(header::HeaderName, HeaderValue)>,
}

impl ApiError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), details: Vec::new(), http_status: None, headers: Vec::new() }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(Code::InvalidArgument, message)
    }

    pub fn not_found() -> Self {
        Self::new(Code::NotFound, "no route matches this path")
    }

    pub fn method_not_allowed(allowed: &[String]) -> Self {
        let mut e = Self::new(Code::Unimplemented, "method not allowed for this path");
        e.http_status = Some(StatusCode::METHOD_NOT_ALLOWED);
        if let Ok(v) = HeaderValue::from_str(&allowed.join(", ")) {
            e.headers.push((header::ALLOW, v));
        }
        e
    }

    pub fn payload_too_large(limit: usize) -> Self {
        let mut e = Self::new(Code::ResourceExhausted, format!("request body exceeds {limit} bytes"));
        e.http_status = Some(StatusCode::PAYLOAD_TOO_LARGE);
        // The rest of the body may be left unread (past the proxy's discard
        // bounds), so the connection can't carry another request: say so, or
        // a client may reuse it and lose the next one.
        e.headers.push((header::CONNECTION, HeaderValue::from_static("close")));
        e
    }

    pub fn unauthenticated(message: impl Into<String>) -> Self {
        let mut e = Self::new(Code::Unauthenticated, message);
        e.headers.push((header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer")));
        e
    }

    /// Maps an upstream status, decoding `grpc-status-details-bin` details
    /// to JSON with the pool when their types are known.
    pub fn from_status(status: &tonic::Status, pool: &DescriptorPool) -> Self {
        let mut e = Self::new(status.code(), status.message());
        if !status.details().is_empty()
            && let Ok(rpc) = RpcStatus::decode(status.details())
        {
            e.details = rpc.details.iter().map(|any| any_to_json(any, pool)).collect();
        }
        // An upstream saying when to retry (RetryInfo) says it to HTTP
        // clients too, in whole seconds rounded up.
        if let Some(delay) = status.get_details_retry_info().and_then(|r| r.retry_delay) {
            let secs = delay.as_secs() + u64::from(delay.subsec_nanos() > 0);
            e.headers.push((header::RETRY_AFTER, HeaderValue::from(secs.max(1))));
        }
        e
    }

    pub fn status(&self) -> StatusCode {
        self.http_status.unwrap_or_else(|| http_status(self.code))
    }

    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({
            "code": self.code as i32,
            "message": self.message,
            "details": self.details,
        })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status(), axum::Json(self.body())).into_response();
        for (name, value) in self.headers {
            resp.headers_mut().insert(name, value);
        }
        resp
    }
}

/// `google.rpc.Status` as carried in `grpc-status-details-bin`.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
    #[prost(message, repeated, tag = "3")]
    details: Vec<prost_types::Any>,
}

/// Known types become their JSON mapping plus `@type`; unknown ones keep
/// the raw bytes so nothing is silently dropped.
fn any_to_json(any: &prost_types::Any, pool: &DescriptorPool) -> serde_json::Value {
    let type_name = any.type_url.rsplit('/').next().unwrap_or_default();
    let known = pool
        .get_message_by_name(type_name)
        .and_then(|desc| DynamicMessage::decode(desc, any.value.as_slice()).ok())
        .and_then(|msg| serde_json::to_value(&msg).ok());
    match known {
        Some(serde_json::Value::Object(mut obj)) => {
            obj.insert("@type".into(), any.type_url.clone().into());
            return serde_json::Value::Object(obj);
        }
        // Well-known types map to non-objects (Duration is "3s"); the
        // protobuf JSON mapping wraps those in `value`.
        Some(other) => return serde_json::json!({"@type": any.type_url, "value": other}),
        None => {}
    }
    serde_json::json!({
        "@type": any.type_url,
        "value": base64::engine::general_purpose::STANDARD.encode(&any.value),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_mapping_matches_grpc_gateway() {
        let table = [
            (Code::Ok, 200),
            (Code::Cancelled, 499),
            (Code::Unknown, 500),
            (Code::InvalidArgument, 400),
            (Code::DeadlineExceeded, 504),
            (Code::NotFound, 404),
            (Code::AlreadyExists, 409),
            (Code::PermissionDenied, 403),
            (Code::Unauthenticated, 401),
            (Code::ResourceExhausted, 429),
            (Code::FailedPrecondition, 400),
            (Code::Aborted, 409),
            (Code::OutOfRange, 400),
            (Code::Unimplemented, 501),
            (Code::Internal, 500),
            (Code::Unavailable, 503),
            (Code::DataLoss, 500),
        ];
        for (code, http) in table {
            assert_eq!(http_status(code).as_u16(), http, "{code:?}");
        }
    }

    #[test]
    fn gateway_errors_use_their_own_status() {
        let e = ApiError::method_not_allowed(&["GET".into(), "POST".into()]);
        assert_eq!(e.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(e.body()["code"], 12);
        assert_eq!(e.headers[0].1, "GET, POST");
        let e = ApiError::payload_too_large(10);
        assert_eq!(e.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert!(e.headers.iter().any(|(n, v)| n == header::CONNECTION && v == "close"));
        assert_eq!(e.body()["code"], 8);
        assert_eq!(ApiError::not_found().body()["code"], 5);
        assert_eq!(ApiError::bad_request("x").status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn status_details_are_decoded() {
        let pool = DescriptorPool::global();
        let inner = prost_types::Duration { seconds: 3, nanos: 0 };
        let details = RpcStatus {
            code: 8,
            message: "slow down".into(),
            details: vec![
                prost_types::Any {
                    type_url: "type.googleapis.com/google.protobuf.Duration".into(),
                    value: inner.encode_to_vec(),
                },
                prost_types::Any { type_url: "type.googleapis.com/acme.Unknown".into(), value: vec![1, 2] },
            ],
        };
        let status = tonic::Status::with_details(Code::ResourceExhausted, "slow down", details.encode_to_vec().into());
        let e = ApiError::from_status(&status, &pool);
        assert_eq!(e.status(), StatusCode::TOO_MANY_REQUESTS);
        let body = e.body();
        assert_eq!(body["message"], "slow down");
        assert_eq!(body["details"][0]["@type"], "type.googleapis.com/google.protobuf.Duration");
        assert_eq!(body["details"][0]["value"], "3s");
        assert_eq!(body["details"][1]["value"], "AQI=");
    }

    #[test]
    fn an_upstream_retry_delay_becomes_retry_after() {
        let pool = DescriptorPool::global();
        let busy = shopmesh_platform::grpc::busy("busy", std::time::Duration::from_millis(1500));
        let e = ApiError::from_status(&busy, &pool);
        assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(e.headers.iter().any(|(n, v)| n == header::RETRY_AFTER && v == "2"), "{:?}", e.headers);
        let plain = ApiError::from_status(&tonic::Status::unavailable("down"), &pool);
        assert!(plain.headers.is_empty());
    }
}
